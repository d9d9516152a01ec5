"""The header parsers the cache reads: defined answers for well-formed and malformed field values."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge.headers import (
    AGE_INVALID,
    DELTA_SECONDS_MAX,
    EMPTY_DIRECTIVES,
    Directives,
    Headers,
    delta_seconds,
    format_http_date,
    normalise_selecting_value,
    parse_age,
    parse_directives,
    parse_entity_tags,
    parse_http_date,
    parse_range,
    parse_surrogate_control,
    parse_vary,
    single_date,
    split_list,
    surrogate_keys,
    weak_match,
)

# Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110 §5.6.7.
RFC_EXAMPLE_TIME = 784111777.0

# Deterministic and small, so the file runs in a few seconds and never flakes.
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

# Arbitrary text, plus text built from the characters these grammars care about.
HEADER_SYNTAX = ' \t,;="\\-/*:+W0123456789abcdefgmnostxyzGMTNovbytes'
any_text = st.text(max_size=40) | st.text(alphabet=HEADER_SYNTAX, max_size=40)
any_lines = st.lists(any_text, max_size=4)


# -- Headers ------------------------------------------------------------------

def test_headers_lowercase_names_and_keep_order_and_repeats():
    h = Headers([("Cache-Control", "a"), ("ETag", '"x"'), ("cache-control", "b")])
    assert h.items == [("cache-control", "a"), ("etag", '"x"'), ("cache-control", "b")]
    assert h.get_all("cache-control") == ["a", "b"]
    assert h.get("cache-control") == "a"


def test_headers_get_returns_default_when_absent():
    h = Headers([("a", "1")])
    assert h.get("b") is None
    assert h.get("b", "d") == "d"
    assert h.get_all("b") == []


def test_headers_contains_checks_names_only():
    h = Headers([("Vary", "accept")])
    assert "vary" in h
    assert "accept" not in h


def test_headers_remove_drops_every_line_of_the_named_fields_and_leaves_the_original():
    h = Headers([("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")])
    out = h.remove(["a", "c"])
    assert out.items == [("b", "2")]
    assert h.items == [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")]


def test_headers_replace_drops_every_old_line_and_appends_one():
    h = Headers([("a", "1"), ("b", "2"), ("a", "3")])
    h.replace("a", "9")
    assert h.items == [("b", "2"), ("a", "9")]


def test_headers_repr_shows_the_items():
    assert repr(Headers([("A", "1")])) == "Headers([('a', '1')])"


def test_headers_from_raw_decodes_latin1_lowercases_and_strips_surrounding_whitespace():
    # RFC 9110 §5.5: leading and trailing whitespace is not part of the field value.
    h = Headers.from_raw([(b"X-Name", b" \tcaf\xe9 \t"), (b"Age", b"5")])
    assert h.items == [("x-name", "caf\u00e9"), ("age", "5")]


def test_headers_raw_round_trips_latin1_bytes():
    raw = [(b"x-name", b"caf\xe9"), (b"etag", b'"1"')]
    assert Headers.from_raw(raw).raw() == raw


# -- split_list (RFC 9110 §5.6.1) ---------------------------------------------

@pytest.mark.parametrize(
    ("lines", "members"),
    [
        ([], []),
        ([""], []),
        (["a"], ["a"]),
        (["a, b"], ["a", "b"]),
        (["a", "b, c"], ["a", "b", "c"]),  # several lines are one list
        (["a,,b , ,"], ["a", "b"]),  # empty members are ignored
        ([" a ,\tb\t"], ["a", "b"]),
        (['no-cache="a, b", x'], ['no-cache="a, b"', "x"]),  # commas inside quotes stay
        ([r'x="a\", b", y'], [r'x="a\", b"', "y"]),  # an escaped quote does not end the string
        (["a\\,b"], ["a\\", "b"]),  # backslash escapes only inside quotes
        (['x="a, b'], ['x="a, b']),  # unterminated quote swallows the rest of the line
        (['x="a', "b, c"], ['x="a', "b", "c"]),  # ...but not the next line
    ],
)
def test_split_list_members(lines, members):
    assert split_list(lines) == members


# -- parse_directives (RFC 9111 §5.2) ------------------------------------------

@pytest.mark.parametrize(
    ("lines", "values"),
    [
        ([], {}),
        (["max-age=60"], {"max-age": "60"}),
        (["public, max-age=60"], {"public": None, "max-age": "60"}),
        (["Max-Age=60, NO-STORE"], {"max-age": "60", "no-store": None}),  # names are case-insensitive
        (["public", "max-age=60"], {"public": None, "max-age": "60"}),  # several lines are one list
        (['max-age="60"'], {"max-age": "60"}),  # §5.2: quoted-string form accepted
        (['private="Set-Cookie, X-A"'], {"private": "Set-Cookie, X-A"}),
        ([r'x="a\"b"'], {"x": 'a"b'}),  # quoted-pair unescaped
        (["max-age = 60"], {"max-age": "60"}),
        (["max-age="], {"max-age": ""}),  # present, empty argument
        (['no-cache="a'], {"no-cache": ""}),  # unterminated quote: present but unusable
        (["max-age=60, max-age=60"], {"max-age": "60"}),
        (["max-age=60, max-age=120"], {"max-age": "60"}),  # first occurrence wins
        (["=5, public"], {"public": None}),  # no name
        (["max age=5, public"], {"public": None}),  # not a token
        (["caf\u00e9, public"], {"public": None}),
        (["@x, {y}, public"], {"public": None}),
    ],
)
def test_parse_directives_values(lines, values):
    assert parse_directives(lines).values == values


@pytest.mark.parametrize(
    ("lines", "duplicated"),
    [
        (["max-age=60"], frozenset()),
        (["max-age=60, max-age=60"], frozenset()),  # repeated but agreeing
        (["max-age=60", 'max-age="60"'], frozenset()),  # same value, other form
        (["max-age=60, max-age=120"], frozenset({"max-age"})),  # §4.2.1: conflicting
        (["max-age=60", "MAX-AGE=5"], frozenset({"max-age"})),
        (["no-cache, no-cache=x"], frozenset({"no-cache"})),
    ],
)
def test_parse_directives_reports_conflicting_repeats(lines, duplicated):
    assert parse_directives(lines).duplicated == duplicated


def test_directives_membership_get_and_truthiness():
    d = parse_directives(["public, max-age=60"])
    assert "public" in d and "max-age" in d and "private" not in d
    assert d.get("max-age") == "60"
    assert d.get("public") is None
    assert d.get("private") is None
    assert d
    assert not EMPTY_DIRECTIVES
    assert not parse_directives(["@@"])


@pytest.mark.parametrize(
    ("line", "name", "seconds"),
    [
        ("max-age=60", "max-age", 60),
        ("max-age=60", "s-maxage", None),  # absent
        ("max-age", "max-age", -1),  # present without argument
        ("max-age=abc", "max-age", -1),
        ("max-age=-5", "max-age", -1),
        ('max-age="60"', "max-age", 60),
    ],
)
def test_directives_seconds(line, name, seconds):
    assert parse_directives([line]).seconds(name) == seconds


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ('private="Set-Cookie"', {"set-cookie"}),
        ('no-cache="Set-Cookie, X-Token"', {"set-cookie", "x-token"}),
        ('private=" A ,, b "', {"a", "b"}),
        ("private=X-Token", {"x-token"}),  # token form tolerated
        ("private", set()),  # unqualified
        ('private=""', set()),
        ("public", set()),  # absent
    ],
)
def test_directives_field_names_of_qualified_directive(line, names):
    name = line.partition("=")[0]
    assert parse_directives([line]).field_names(name) == frozenset(names)


# -- delta_seconds (RFC 9111 §1.2.2) -------------------------------------------

@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0),
        ("60", 60),
        ("0060", 60),
        (str(2**31 - 1), 2**31 - 1),
        (str(2**31), DELTA_SECONDS_MAX),
        ("99999999999999999999", DELTA_SECONDS_MAX),  # too large to represent becomes 2^31
        (None, -1),
        ("", -1),
        ("-1", -1),
        ("+1", -1),
        ("1.5", -1),
        ("1e3", -1),
        (" 1", -1),
        ("1 ", -1),
        ("1\n", -1),
        ("0x10", -1),
        ("\u0661", -1),  # non-ASCII digit
        ("\u00b2", -1),
    ],
)
def test_delta_seconds(value, seconds):
    assert delta_seconds(value) == seconds


def test_delta_seconds_with_thousands_of_digits_is_capped_not_an_error():
    # §1.2.2: too large to represent means 2^31 (int() alone refuses over 4300 digits)
    assert delta_seconds("1" * 5000) == DELTA_SECONDS_MAX


@pytest.mark.parametrize("value", ["000000000060", "0" * 5000 + "60"])
def test_delta_seconds_leading_zeros_do_not_count_towards_the_cap(value):
    # §1.2.2: delta-seconds is 1*DIGIT, so leading zeros are valid and change nothing
    assert delta_seconds(value) == 60


# -- parse_surrogate_control (Edge Architecture 1.0 §2.2, §2.3) ----------------

@pytest.mark.parametrize(
    ("lines", "values"),
    [
        (["max-age=60"], {"max-age": "60"}),
        (["max-age=60;edge"], {"max-age": "60"}),
        (["max-age=60;other"], {}),  # aimed at another device
        (["max-age=60;other, no-store"], {"no-store": None}),
        (["max-age=60, max-age=5;edge"], {"max-age": "5"}),  # targeted beats untargeted
        (["max-age=5;edge, max-age=60"], {"max-age": "5"}),  # whatever the order
        (["max-age=60 ; edge "], {"max-age": "60"}),
        (["no-store;other", "max-age=30;edge"], {"max-age": "30"}),
        (["max-age=60;edgex"], {}),  # the whole token must match
        ([], {}),
    ],
)
def test_parse_surrogate_control_keeps_untargeted_and_our_devices_directives(lines, values):
    assert parse_surrogate_control(lines, "edge").values == values


# -- HTTP dates (RFC 9110 §5.6.7) ----------------------------------------------

@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",  # ANSI C asctime(), which is UTC
        "  Sun, 06 Nov 1994 08:49:37 GMT  ",
    ],
)
def test_parse_http_date_reads_all_three_formats(value):
    assert parse_http_date(value) == RFC_EXAMPLE_TIME


@pytest.mark.parametrize(
    "value",
    [
        None, "", "0", "-1", "tomorrow", "Sun, 06 Nov", "Sun, 32 Foo 1994 25:61:61 GMT",
        "Sun, 31 Dec 1899 23:59:59 GMT",  # before 1900: nonsense for HTTP
        "Sat, 06 Nov 99999999999999999999 08:49:37 GMT",  # overflows a float time
    ],
)
def test_parse_http_date_is_none_for_invalid_dates(value):
    # RFC 9111 §5.3: an invalid Expires means "already expired", which callers decide.
    assert parse_http_date(value) is None


@pytest.mark.parametrize("timestamp", [0.0, RFC_EXAMPLE_TIME, 1_000_000.0, 4_102_444_800.0])
def test_format_http_date_is_imf_fixdate_and_round_trips(timestamp):
    text = format_http_date(timestamp)
    assert text.endswith(" GMT")
    assert parse_http_date(text) == timestamp


def test_parse_http_date_accepts_1900():
    assert parse_http_date("Mon, 01 Jan 1900 00:00:00 GMT") == -2208988800.0


def test_format_http_date_of_rfc_example():
    assert format_http_date(RFC_EXAMPLE_TIME) == "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], None),
        (["Sun, 06 Nov 1994 08:49:37 GMT"], RFC_EXAMPLE_TIME),
        (["Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"], None),  # repeated
        (["soon"], None),
    ],
)
def test_single_date(lines, expected):
    assert single_date(lines) == expected


# -- parse_age (RFC 9111 §5.1) -------------------------------------------------

@pytest.mark.parametrize(
    ("lines", "age"),
    [
        ([], 0.0),
        (["0"], 0.0),
        (["42"], 42.0),
        ([" 42 "], 42.0),
        (["007"], 7.0),
        ([str(2**40)], float(DELTA_SECONDS_MAX)),  # capped at 2^31
        (["5", "5"], AGE_INVALID),  # repeated: deliberately stale at once
        (["5, 5"], AGE_INVALID),
        (["-1"], AGE_INVALID),
        (["1.5"], AGE_INVALID),
        ([""], AGE_INVALID),
        (["abc"], AGE_INVALID),
        (["\u0661"], AGE_INVALID),
    ],
)
def test_parse_age(lines, age):
    assert parse_age(lines) == age


def test_parse_age_with_thousands_of_digits_is_capped_not_an_error():
    assert parse_age(["9" * 5000]) == float(DELTA_SECONDS_MAX)


def test_parse_age_leading_zeros_do_not_count_towards_the_cap():
    # §5.1: Age is delta-seconds
    assert parse_age(["000000000005"]) == 5.0


# -- parse_vary and selecting values (RFC 9111 §4.1) ---------------------------

@pytest.mark.parametrize(
    ("lines", "names"),
    [
        ([], ()),
        ([""], ()),
        (["Accept-Encoding"], ("accept-encoding",)),
        (["Accept-Language, accept-encoding", "ACCEPT-ENCODING"], ("accept-encoding", "accept-language")),
        (["*"], None),
        (["Accept, *"], None),
        (["accept", "*"], None),
        (["X-A=B"], None),  # names no field: a key written `x-a=b` would read back as field x-a, value b
        (["accept, x a"], None),
    ],
)
def test_parse_vary(lines, names):
    assert parse_vary(lines) == names


@pytest.mark.parametrize(
    ("name", "lines", "value"),
    [
        ("accept-encoding", [], None),
        ("accept-encoding", ["gzip, br"], "br,gzip"),
        ("accept-encoding", ["br", "GZIP"], "br,gzip"),
        ("accept-language", ["fr-CH, en;q=0.8"], "en;q=0.8,fr-ch"),
        ("accept-encoding", ["gzip; q=1.0"], "gzip;q=1.0"),  # whitespace is not significant
        ("accept", ["text/html, Application/JSON"], "text/html,Application/JSON"),  # order and case kept
        ("x-device", ["Mobile"], "Mobile"),
        ("x-device", [""], ""),  # present but empty differs from absent
    ],
)
def test_normalise_selecting_value(name, lines, value):
    assert normalise_selecting_value(name, lines) == value


# -- surrogate_keys -------------------------------------------------------------

@pytest.mark.parametrize(
    ("surrogate_key", "cache_tag", "tags"),
    [
        ([], [], set()),
        (["a b  c"], [], {"a", "b", "c"}),  # Surrogate-Key is space-separated
        (["a b", "c"], [], {"a", "b", "c"}),
        ([], ["a, b", "c"], {"a", "b", "c"}),  # Cache-Tag is comma-separated
        (["a,b"], [], {"a,b"}),  # a comma is part of a Surrogate-Key tag
        ([], ["a b"], {"a b"}),  # a space is part of a Cache-Tag tag
        (["a b"], ["b, c"], {"a", "b", "c"}),  # union of both fields
        (["ok \x00bad"], ["\x07"], {"ok"}),  # unprintable tags dropped
        (["x" * 1024 + " " + "y" * 1025], [], {"x" * 1024}),  # at most 1024 characters
    ],
)
def test_surrogate_keys(surrogate_key, cache_tag, tags):
    assert surrogate_keys(surrogate_key, cache_tag) == frozenset(tags)


def test_surrogate_keys_without_tags_share_one_empty_set():
    # every stored entry keeps its tag set, so the common empty one is shared
    assert surrogate_keys([], []) is surrogate_keys(["\x00"], []) is surrogate_keys([""], [","])


# -- entity tags (RFC 9110 §8.8.3, §13.1.2) --------------------------------------

@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ("*", None),
        (" * ", None),
        ('"a"', ['"a"']),
        ('"a", W/"b"', ['"a"', 'W/"b"']),
        ('"a,b", "c"', ['"a,b"', '"c"']),  # commas are allowed inside an opaque-tag
        ("", []),
        ('*, "a"', ["*", '"a"']),  # not a lone "*"
        ('"a", junk, "b"', ['"a"', "junk", '"b"']),  # a malformed member matches nothing but ends at its comma
        (' "a" ,, W/"b" ', ['"a"', 'W/"b"']),
        (',,"a"', ['"a"']),  # empty members are not tags
    ],
)
def test_parse_entity_tags(value, tags):
    assert parse_entity_tags(value) == tags


def test_parse_entity_tags_backslash_is_an_ordinary_etag_character():
    # RFC 9110 §8.8.3: a backslash is an ordinary etagc; an entity-tag has no escapes
    assert parse_entity_tags('"a\\", "b"') == ['"a\\"', '"b"']


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ('"1"', '"1"', True),
        ('W/"1"', '"1"', True),  # weak comparison ignores the weak indicator
        ('"1"', 'W/"1"', True),
        ('W/"1"', 'W/"1"', True),
        ('"1"', '"2"', False),
        ('W/"1"', 'W/"2"', False),
        ('w/"1"', '"1"', False),  # the weak indicator is case-sensitive
        ('"1"', '"1 "', False),
    ],
)
def test_weak_match(a, b, match):
    assert weak_match(a, b) is match


# -- parse_range (RFC 9110 §14.1.2, §14.2) ----------------------------------------

@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [
        ("bytes=0-499", 1000, (0, 499)),
        ("bytes=500-999", 1000, (500, 999)),
        ("bytes=0-0", 1000, (0, 0)),
        ("bytes=500-", 1000, (500, 999)),  # open end runs to the last byte
        ("bytes=500-5000", 1000, (500, 999)),  # last-pos past the end is clamped
        ("bytes=-200", 1000, (800, 999)),  # suffix: the final 200 bytes
        ("bytes=-2000", 1000, (0, 999)),  # suffix longer than the representation: all of it
        ("Bytes=0-1", 10, (0, 1)),  # range unit is case-insensitive
        (" bytes = 1 - 2 ", 10, (1, 2)),
        ("bytes=1000-", 1000, "unsatisfiable"),  # first-pos at or past the end
        ("bytes=2000-3000", 1000, "unsatisfiable"),
        ("bytes=-0", 1000, "unsatisfiable"),  # zero-length suffix
        ("bytes=0-", 0, "unsatisfiable"),  # nothing to send
        ("bytes=-5", 0, "unsatisfiable"),
        (None, 1000, None),
        ("", 1000, None),
        ("bytes=5-1", 1000, None),  # last-pos before first-pos: invalid, ignore the header
        ("bytes=0-1,5-6", 1000, None),  # several ranges: a full 200 answers
        ("bytes=0-1,", 1000, None),
        ("items=0-1", 1000, None),  # other units
        ("bytes 0-1", 1000, None),
        ("bytes=-", 1000, None),
        ("bytes=1", 1000, None),
        ("bytes=a-b", 1000, None),
        ("bytes=+1-2", 1000, None),
        ("bytes=1-2-3", 1000, None),
    ],
)
def test_parse_range(value, length, expected):
    assert parse_range(value, length) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("bytes=\u00b2-", id="superscript-two-first"),
        pytest.param("bytes=0-\u00b2", id="superscript-two-last"),
        pytest.param("bytes=\u0661-", id="arabic-indic-one"),
        pytest.param("bytes=" + "9" * 5000 + "-", id="thousands-of-digits"),
    ],
)
def test_parse_range_ignores_non_ascii_digits_and_never_raises(value):
    # RFC 9110 §14.1.1: first-pos and last-pos are ASCII DIGITs
    assert parse_range(value, 1000) in (None, "unsatisfiable")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=" + "9" * 30 + "-", "unsatisfiable"),
        ("bytes=0-" + "9" * 30, (0, 999)),
        ("bytes=-" + "9" * 30, (0, 999)),
    ],
)
def test_parse_range_with_huge_positions(value, expected):
    assert parse_range(value, 1000) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("bytes=" + "0" * 20 + "1-" + "0" * 20 + "2", (1, 2), id="both"),
        pytest.param("bytes=0-" + "0" * 20 + "2", (0, 2), id="last"),
        pytest.param("bytes=-" + "0" * 20 + "2", (998, 999), id="suffix"),
    ],
)
def test_parse_range_leading_zeros_keep_the_position(value, expected):
    # RFC 9110 §14.1.1: first-pos and last-pos are 1*DIGIT
    assert parse_range(value, 1000) == expected


# -- properties: a defined answer for any text ---------------------------------------

@PROPERTY
@given(any_lines)
@example(['"unterminated, x'])
@example(["\\"])
def test_split_list_members_are_stripped_and_non_empty(lines):
    members = split_list(lines)
    assert all(m and m == m.strip() for m in members)


@PROPERTY
@given(any_lines)
@example(['max-age="60'])
@example(["=, ==, ,="])
def test_parse_directives_never_raises_and_names_are_lowercase_tokens(lines):
    d = parse_directives(lines)
    assert isinstance(d, Directives)
    assert all(name and name == name.lower() for name in d.values)
    assert d.duplicated <= d.values.keys()
    for name in d.values:
        assert -1 <= d.seconds(name) <= DELTA_SECONDS_MAX
        assert isinstance(d.field_names(name), frozenset)


@PROPERTY
@given(st.none() | any_text)
def test_delta_seconds_is_minus_one_or_within_cap(value):
    assert -1 <= delta_seconds(value) <= DELTA_SECONDS_MAX


@PROPERTY
@given(any_lines, st.sampled_from(["edge", "other", ""]))
def test_parse_surrogate_control_never_raises(lines, device):
    assert isinstance(parse_surrogate_control(lines, device), Directives)


@PROPERTY
@given(st.none() | any_text)
@example("Sun, 06 Nov 1994 08:49:37 +9999")
@example("Sun, 06 Nov 99999999 08:49:37 GMT")
@example("31 Dec 1899 23:59:59 GMT")
def test_parse_http_date_is_none_or_a_time(value):
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)
    assert single_date([] if value is None else [value]) == result


@PROPERTY
@given(st.integers(min_value=0, max_value=253402300799))
def test_http_dates_round_trip(seconds):
    assert parse_http_date(format_http_date(seconds)) == seconds


@PROPERTY
@given(any_lines)
def test_parse_age_is_zero_a_capped_count_or_invalid(lines):
    age = parse_age(lines)
    assert age == AGE_INVALID or 0 <= age <= DELTA_SECONDS_MAX


@PROPERTY
@given(any_lines)
def test_parse_vary_is_star_or_sorted_lowercase_names(lines):
    names = parse_vary(lines)
    assert names is None or (list(names) == sorted(set(names)) and all(n == n.lower() for n in names))


@PROPERTY
@given(st.sampled_from(["accept-encoding", "accept-language", "accept", "x-device"]), any_lines)
def test_normalise_selecting_value_never_raises_and_ignores_whitespace(name, lines):
    value = normalise_selecting_value(name, lines)
    assert value is None or not any(ch.isspace() for ch in value)


@PROPERTY
@given(any_lines, any_lines)
def test_surrogate_keys_are_printable_bounded_tags(surrogate_key, cache_tag):
    tags = surrogate_keys(surrogate_key, cache_tag)
    assert all(t and t.isprintable() and len(t) <= 1024 for t in tags)


@PROPERTY
@given(any_text, any_text)
def test_entity_tag_parsing_and_weak_match_never_raise(value, other):
    tags = parse_entity_tags(value)
    assert tags is None or all(isinstance(t, str) for t in tags)
    assert weak_match(value, value)
    assert weak_match(value, other) == weak_match(other, value)


@PROPERTY
@given(st.none() | any_text, st.integers(min_value=0, max_value=10_000))
@example("bytes=0-", 0)
@example("bytes=-1", 1)
def test_parse_range_is_none_unsatisfiable_or_within_the_representation(value, length):
    result = parse_range(value, length)
    if isinstance(result, tuple):
        first, last = result
        assert 0 <= first <= last < length
    else:
        assert result in (None, "unsatisfiable")
