"""Request paths in normal form (RFC 3986 §6.2.2), and purge keys that use the same form."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.purge_listener import url_key
from edge.uri import UNRESERVED, normalise_path, remove_dot_segments


@pytest.mark.parametrize(("path", "normal"), [
    ("/b", "/b"),
    ("/a/../b", "/b"),
    ("/a/./b", "/a/b"),
    ("/./b", "/b"),
    ("/../b", "/b"),
    ("/../../b", "/b"),
    ("/a/b/../../b", "/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/..", "/"),
    ("//b", "//b"),
    ("/a/.b/..c/...", "/a/.b/..c/..."),  # dots that are not whole segments stay
    ("/%62", "/b"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2e/%62", "/b"),
    ("/%7e%41%2D%5f%2E", "/~A-_."),
    ("/a%2fb", "/a%2Fb"),  # reserved: only the case of its hex digits changes
    ("/a%2Fb/..", "/"),  # an encoded slash separates nothing: 'a%2Fb' is one segment
    ("/%3f%23%25%20", "/%3F%23%25%20"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/100%", "/100%"),
    ("/%zz/./a", "/%zz/a"),
    ("/%%341", "/%%341"),  # a stray '%': decoding '%34' would spell a new '%41'
    ("/%%3a/%2e", "/%%3A/%2E"),  # ... so only hex case is normalised, and '%2E' is no dot segment then
])
def test_normal_form(path: str, normal: str) -> None:
    assert normalise_path(path) == normal


def test_a_path_with_nothing_to_normalise_is_returned_as_it_is() -> None:
    path = "/static/js/app-3.js"
    assert normalise_path(path) is path


def test_remove_dot_segments_follows_rfc_3986_examples() -> None:
    # RFC 3986 §5.2.4 and §5.4.1's absolute-path results
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/b/c/./g") == "/b/c/g"
    assert remove_dot_segments("/b/c/../../../g") == "/g"


PATH_CHARS = st.sampled_from(["/", ".", "..", "%", "%2e", "%2E", "%2f", "%62", "%7e", "%41", "%3", "%zz", "a", "b",
                              "~", "-", "?", "é", "%c3%a9", "%25", "4", "1"])
PATHS = st.lists(PATH_CHARS, max_size=20).map("".join)


@given(PATHS)
def test_normalising_twice_changes_nothing(path: str) -> None:
    once = normalise_path(path)
    assert normalise_path(once) == once


@given(st.text(max_size=60))
def test_normalising_never_raises_and_is_idempotent_on_any_text(path: str) -> None:
    once = normalise_path(path)
    assert normalise_path(once) == once


@given(PATHS)
def test_an_absolute_path_stays_absolute_without_dot_segments(path: str) -> None:
    normal = normalise_path("/" + path)
    assert normal.startswith("/")
    assert not {".", ".."} & set(normal.split("/"))


@given(PATHS)
def test_no_unreserved_character_stays_encoded_and_reserved_ones_do(path: str) -> None:
    normal = normalise_path("/" + path)
    if not re.search(r"%(?![0-9A-Fa-f]{2})", normal):
        encoded = re.findall(r"%([0-9A-Fa-f]{2})", normal)
        assert all(h == h.upper() and chr(int(h, 16)) not in UNRESERVED for h in encoded)


@pytest.mark.parametrize(("value", "key"), [
    ("http://Shop.Example/a/../b", "shop.example/b"),
    ("http://shop.example/%62?x=%62", "shop.example/b?x=%62"),  # the query is keyed as sent
    ("http://shop.example", "shop.example/"),
    ("shop.example/a/./b?q=/../", "shop.example/a/b?q=/../"),
    ("Shop.Example/%7euser", "shop.example/~user"),
    ("shop.example", "shop.example"),
])
def test_purge_keys_use_the_normal_form(value: str, key: str) -> None:
    assert url_key(value) == key
