"""RFC 9111 caching policy for a shared cache, with the targeted fields of RFC 9213 and Edge Architecture 1.0.

Every time is explicit: a response arrives at T (request sent a little earlier) and `now` is T plus something.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.headers import AGE_INVALID, DELTA_SECONDS_MAX, EMPTY_DIRECTIVES, Headers, format_http_date, parse_directives
from edge.policy import (
    HOP_BY_HOP,
    NOT_MODIFIED_FIELDS,
    NOT_UPDATED_BY_304,
    TAG_FIELDS,
    TARGETED_FIELDS,
    CachePolicy,
    Freshness,
    Reuse,
    ReuseRules,
    assess,
    connection_listed,
    end_to_end,
    freshness_lifetime,
    governing_directives,
    initial_age,
    invalidates,
    may_serve_stale_on_error,
    merge_304,
    not_modified,
    request_directives,
    reuse,
    shared,
    stored_fields_to_drop,
    to_the_millisecond,
    uncacheable_reason,
    validators,
)

T = 1_000_000.0  # response_time of every response here
POLICY = CachePolicy()
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def fields(*lines: str) -> Headers:
    """Headers from "Name: value" lines."""
    pairs = []
    for line in lines:
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value.strip()))
    return Headers(pairs)


def date(t: float) -> str:
    return format_http_date(t)


def cc(text: str = ""):
    """Request directives from one Cache-Control line."""
    return parse_directives([text]) if text else EMPTY_DIRECTIVES


# -- governing_directives (RFC 9213 §2.2, Edge Architecture §2.3) -----------------

@pytest.mark.parametrize(
    ("response", "source", "values"),
    [
        (["Cache-Control: max-age=60"], "cache-control", {"max-age": "60"}),
        ([], "cache-control", {}),
        (["Cache-Control: max-age=60", "CDN-Cache-Control: max-age=10"], "cdn-cache-control", {"max-age": "10"}),
        (["Cache-Control: max-age=60", "Surrogate-Control: max-age=20"], "surrogate-control", {"max-age": "20"}),
        (["Surrogate-Control: max-age=20;edge", "Cache-Control: max-age=60"], "surrogate-control", {"max-age": "20"}),
        # CDN-Cache-Control comes first in our target list
        (["CDN-Cache-Control: max-age=10", "Surrogate-Control: max-age=20"], "cdn-cache-control", {"max-age": "10"}),
        # a targeted field with no valid directive is ignored
        (["CDN-Cache-Control: ", "Cache-Control: max-age=60"], "cache-control", {"max-age": "60"}),
        (["CDN-Cache-Control: @@@", "Cache-Control: max-age=60"], "cache-control", {"max-age": "60"}),
        (["CDN-Cache-Control: ,", "Surrogate-Control: max-age=20"], "surrogate-control", {"max-age": "20"}),
        # Surrogate-Control aimed only at another device is not ours
        (["Surrogate-Control: no-store;other", "Cache-Control: max-age=60"], "cache-control", {"max-age": "60"}),
        # RFC 9213 §3.1: an unregistered directive still makes the field non-empty, so it governs
        (["Cache-Control: no-store", "CDN-Cache-Control: none"], "cdn-cache-control", {"none": None}),
    ],
)
def test_governing_directives_prefer_targeted_fields(response, source, values):
    got_source, directives = governing_directives(fields(*response), POLICY)
    assert (got_source, directives.values) == (source, values)


def test_surrogate_control_device_is_the_policys():
    response = fields("Surrogate-Control: max-age=20;shield", "Cache-Control: max-age=60")
    assert governing_directives(response, POLICY)[0] == "cache-control"
    assert governing_directives(response, CachePolicy(device="shield")) == (
        "surrogate-control", parse_directives(["max-age=20"]))


# -- request_directives (RFC 9111 §5.2.1, §5.4) --------------------------------------

@pytest.mark.parametrize(
    ("request_lines", "values"),
    [
        ([], {}),
        (["Cache-Control: max-age=0"], {"max-age": "0"}),
        (["Pragma: no-cache"], {"no-cache": None}),  # §5.4: Pragma counts only without Cache-Control
        (["Pragma: No-Cache"], {"no-cache": None}),
        (["Pragma: x-foo, no-cache"], {"no-cache": None}),
        (["Pragma: x-foo"], {}),
        (["Pragma: no-cache=1"], {}),
        (["Pragma: no-cache", "Cache-Control: max-stale"], {"max-stale": None}),
    ],
)
def test_request_directives(request_lines, values):
    assert request_directives(fields(*request_lines)).values == values


# -- uncacheable_reason (RFC 9111 §3, shared cache) -----------------------------------

STORE = "Cache-Control: max-age=60"


@pytest.mark.parametrize(
    ("method", "status", "request_lines", "response", "reason"),
    [
        pytest.param("GET", 200, [], [STORE], None, id="plain-get-200"),
        # only GET is stored (deliberate)
        pytest.param("HEAD", 200, [], [STORE], "method", id="head"),
        pytest.param("POST", 200, [], [STORE], "method", id="post"),
        pytest.param("get", 200, [], [STORE], "method", id="methods-are-case-sensitive"),
        # §3: the status must be final; 206 and 304 are never stored (deliberate)
        pytest.param("GET", 100, [], [STORE], "status", id="1xx"),
        pytest.param("GET", 199, [], [STORE], "status", id="199"),
        pytest.param("GET", 206, [], [STORE], "status", id="206"),
        pytest.param("GET", 304, [], [STORE], "status", id="304"),
        pytest.param("GET", 299, [], [STORE], None, id="unknown-status-with-explicit-freshness"),
        pytest.param("GET", 599, [], [STORE], None, id="599"),
        pytest.param("GET", 600, [], [STORE], "status", id="600-is-not-http"),
        # §5.2.2.3 must-understand: store only statuses we understand; then no-store is ignored
        pytest.param("GET", 299, [], ["Cache-Control: max-age=60, must-understand"], "status",
                     id="must-understand-unknown-status"),
        pytest.param("GET", 418, [], ["Cache-Control: max-age=60, must-understand, no-store"], "status",
                     id="must-understand-418"),
        pytest.param("GET", 200, [], ["Cache-Control: max-age=60, must-understand, no-store"], None,
                     id="must-understand-overrides-no-store"),
        pytest.param("GET", 404, [], ["Cache-Control: must-understand, no-store"], None,
                     id="must-understand-overrides-no-store-heuristic"),
        # §3, §5.2.2.5 no-store
        pytest.param("GET", 200, [], ["Cache-Control: no-store, max-age=60"], "no-store", id="no-store"),
        pytest.param("GET", 200, [], ["Cache-Control: No-Store"], "no-store", id="no-store-any-case"),
        pytest.param("GET", 200, [], ["Cache-Control: max-age=60", "Cache-Control: no-store"], "no-store",
                     id="no-store-on-second-line"),
        # §5.2.1.5 request no-store
        pytest.param("GET", 200, ["Cache-Control: no-store"], [STORE], "request-no-store", id="request-no-store"),
        pytest.param("GET", 200, ["Cache-Control: no-cache"], [STORE], None, id="request-no-cache-may-store"),
        # §5.2.2.7 private: unqualified forbids shared storage; qualified only drops the fields
        pytest.param("GET", 200, [], ["Cache-Control: private, max-age=60"], "private", id="private"),
        pytest.param("GET", 200, [], ['Cache-Control: private="x-user", max-age=60'], None, id="private-qualified"),
        pytest.param("GET", 200, [], ['Cache-Control: private="", max-age=60'], "private", id="private-empty-list"),
        # §3.5 Authorization: only with public, s-maxage or must-revalidate
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], [STORE], "authorization", id="authorization"),
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], [], "authorization", id="authorization-heuristic"),
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], ["Cache-Control: public, max-age=60"], None,
                     id="authorization-public"),
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], ["Cache-Control: s-maxage=60"], None,
                     id="authorization-s-maxage"),
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], ["Cache-Control: must-revalidate, max-age=60"],
                     None, id="authorization-must-revalidate"),
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], ["CDN-Cache-Control: public, max-age=60"], None,
                     id="authorization-public-in-cdn-cache-control"),
        pytest.param("GET", 200, ["Authorization: Basic eDp5"], ["Cache-Control: private, public"], "private",
                     id="authorization-private-wins"),
        # Set-Cookie: not shared unless the operator says so (deliberate)
        pytest.param("GET", 200, [], [STORE, "Set-Cookie: id=1"], "set-cookie", id="set-cookie"),
        # Vary: * never matches a later request (deliberate: not stored)
        pytest.param("GET", 200, [], [STORE, "Vary: *"], "vary-star", id="vary-star"),
        pytest.param("GET", 200, [], [STORE, "Vary: Accept-Encoding, *"], "vary-star", id="vary-list-with-star"),
        pytest.param("GET", 200, [], [STORE, "Vary: Accept-Encoding"], None, id="vary-names"),
        # §3: some explicit freshness, or a heuristically cacheable status (RFC 9110 §15.1)
        pytest.param("GET", 200, [], [], None, id="200-heuristic"),
        pytest.param("GET", 404, [], [], None, id="404-heuristic"),
        pytest.param("GET", 501, [], [], None, id="501-heuristic"),
        pytest.param("GET", 302, [], [], "no-freshness", id="302-nothing-explicit"),
        pytest.param("GET", 500, [], ["Cache-Control: no-cache"], "no-freshness", id="500-no-cache-only"),
        pytest.param("GET", 302, [], ["Cache-Control: max-age=60"], None, id="302-max-age"),
        pytest.param("GET", 302, [], ["Cache-Control: s-maxage=60"], None, id="302-s-maxage"),
        pytest.param("GET", 302, [], ["Cache-Control: public"], None, id="302-public"),
        pytest.param("GET", 302, [], [f"Expires: {date(T + 60)}"], None, id="302-expires"),
        pytest.param("GET", 302, [], ["Surrogate-Control: max-age=60;edge"], None, id="302-surrogate-max-age"),
        # a targeted field replaces Cache-Control and Expires (RFC 9213 §2.2)
        pytest.param("GET", 302, [], ["CDN-Cache-Control: no-cache", f"Expires: {date(T + 60)}"], "no-freshness",
                     id="302-expires-ignored-under-targeted-field"),
        pytest.param("GET", 200, [], ["Cache-Control: no-store", "CDN-Cache-Control: max-age=60"], None,
                     id="cache-control-no-store-ignored-under-targeted-field"),
        pytest.param("GET", 200, [], ["Cache-Control: private", "CDN-Cache-Control: max-age=60"], None,
                     id="cache-control-private-ignored-under-targeted-field"),
        pytest.param("GET", 200, [], ["Cache-Control: no-store", "CDN-Cache-Control: none"], None,
                     id="rfc9213-example-only-cdn-may-store"),
        pytest.param("GET", 200, [], [STORE, "CDN-Cache-Control: no-store"], "no-store", id="cdn-no-store"),
        pytest.param("GET", 200, [], [STORE, "CDN-Cache-Control: private"], "private", id="cdn-private"),
        pytest.param("GET", 200, [], [STORE, "Surrogate-Control: no-store;edge"], "no-store", id="surrogate-no-store"),
        pytest.param("GET", 200, [], [STORE, "Surrogate-Control: no-store;other"], None,
                     id="surrogate-no-store-for-other-device"),
    ],
)
def test_uncacheable_reason(method, status, request_lines, response, reason):
    assert uncacheable_reason(method, status, fields(*request_lines), fields(*response), POLICY) == reason


# RFC 9110 §15.1: the heuristically cacheable statuses, and some that are not.
HEURISTIC = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]
NOT_HEURISTIC = [201, 202, 205, 207, 302, 303, 307, 400, 401, 403, 409, 500, 502, 503, 504]


@pytest.mark.parametrize("status", [s for s in HEURISTIC if s != 206])
def test_heuristically_cacheable_statuses_are_stored_without_explicit_freshness(status):
    assert uncacheable_reason("GET", status, fields(), fields(), POLICY) is None


@pytest.mark.parametrize("status", NOT_HEURISTIC)
def test_other_statuses_need_explicit_freshness_to_be_stored(status):
    assert uncacheable_reason("GET", status, fields(), fields(), POLICY) == "no-freshness"
    assert uncacheable_reason("GET", status, fields(), fields(STORE), POLICY) is None


# RFC 9111 §5.2.2.3: with must-understand, only statuses whose caching rules we implement are stored.
UNDERSTOOD = [200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308, 400, 404, 410, 417, 421, 422, 426,
              500, 501, 502, 503, 504, 505]
NOT_UNDERSTOOD = [207, 226, 299, 306, 418, 425, 429, 451, 506, 511, 599]


@pytest.mark.parametrize("status", UNDERSTOOD)
def test_must_understand_stores_understood_statuses(status):
    response = fields("Cache-Control: max-age=60, must-understand, no-store")
    assert uncacheable_reason("GET", status, fields(), response, POLICY) is None


@pytest.mark.parametrize("status", NOT_UNDERSTOOD)
def test_must_understand_refuses_other_statuses(status):
    response = fields("Cache-Control: max-age=60, must-understand, no-store")
    assert uncacheable_reason("GET", status, fields(), response, POLICY) == "status"
    assert uncacheable_reason("GET", status, fields(), fields(STORE), POLICY) is None


def test_set_cookie_responses_are_stored_when_the_policy_allows_it():
    response = fields(STORE, "Set-Cookie: id=1")
    assert uncacheable_reason("GET", 200, fields(), response, CachePolicy(cache_set_cookie=True)) is None


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(["CDN-Cache-Control: max-age=60"], id="cdn-cache-control"),
        pytest.param(["Surrogate-Control: max-age=60;edge"], id="surrogate-control"),
    ],
)
def test_authorization_needs_explicit_permission_in_a_targeted_field_too(response):
    # RFC 9111 §3.5 holds whichever field the directives come from
    assert uncacheable_reason("GET", 200, fields("Authorization: Basic eDp5"), fields(*response), POLICY) == (
        "authorization")


# -- freshness_lifetime (RFC 9111 §4.2.1, §4.2.2) --------------------------------------

@pytest.mark.parametrize(
    ("status", "response", "lifetime"),
    [
        pytest.param(200, ["Cache-Control: max-age=60"], 60.0, id="max-age"),
        pytest.param(200, ["Cache-Control: max-age=0"], 0.0, id="max-age-zero"),
        pytest.param(200, ["Cache-Control: max-age=99999999999"], float(DELTA_SECONDS_MAX), id="max-age-capped"),
        pytest.param(200, ["Cache-Control: max-age=60", "Cache-Control: public"], 60.0, id="max-age-other-line"),
        # §4.2.1: invalid freshness information is treated as stale
        pytest.param(200, ["Cache-Control: max-age=abc"], 0.0, id="max-age-invalid"),
        pytest.param(200, ["Cache-Control: max-age"], 0.0, id="max-age-without-value"),
        pytest.param(200, ["Cache-Control: max-age=-1"], 0.0, id="max-age-negative"),
        pytest.param(200, ["Cache-Control: max-age=60, max-age=120"], 0.0, id="max-age-conflicting"),
        pytest.param(200, ["Cache-Control: max-age=60, max-age=60"], 60.0, id="max-age-repeated-agreeing"),
        pytest.param(200, ["Cache-Control: s-maxage=60, s-maxage=1"], 0.0, id="s-maxage-conflicting"),
        pytest.param(200, ["Cache-Control: s-maxage=abc, max-age=60"], 0.0, id="s-maxage-invalid"),
        # §5.3: max-age and s-maxage beat Expires
        pytest.param(200, ["Cache-Control: max-age=60", f"Date: {date(T)}", f"Expires: {date(T + 3600)}"], 60.0,
                     id="max-age-beats-expires"),
        pytest.param(200, ["Cache-Control: s-maxage=60", f"Date: {date(T)}", f"Expires: {date(T + 3600)}"], 60.0,
                     id="s-maxage-beats-expires"),
        pytest.param(200, ["Cache-Control: max-age=abc", f"Date: {date(T)}", f"Expires: {date(T + 3600)}"], 0.0,
                     id="invalid-max-age-still-beats-expires"),
        # §4.2.1: Expires minus Date
        pytest.param(200, [f"Date: {date(T - 100)}", f"Expires: {date(T + 3500)}"], 3600.0, id="expires-minus-date"),
        pytest.param(200, [f"Expires: {date(T + 3600)}"], 3600.0, id="expires-minus-response-time-without-date"),
        pytest.param(200, ["Date: soon", f"Expires: {date(T + 3600)}"], 3600.0, id="expires-with-invalid-date"),
        pytest.param(200, [f"Date: {date(T - 100)}", f"Date: {date(T - 100)}", f"Expires: {date(T + 3600)}"],
                     3600.0, id="expires-with-repeated-date"),
        pytest.param(200, [f"Date: {date(T)}", f"Expires: {date(T - 60)}"], 0.0, id="expires-in-the-past"),
        # §5.3: an invalid Expires, such as "0", means already expired, and rules out heuristics
        pytest.param(200, ["Expires: 0", f"Last-Modified: {date(T - 10_000)}"], 0.0, id="expires-invalid"),
        pytest.param(200, [f"Expires: {date(T + 60)}", f"Expires: {date(T + 60)}"], 0.0, id="expires-repeated"),
        # §4.2.2: heuristic, a fraction of the time since Last-Modified
        pytest.param(200, [f"Date: {date(T)}", f"Last-Modified: {date(T - 1000)}"], 100.0, id="heuristic"),
        pytest.param(200, [f"Last-Modified: {date(T - 1000)}"], 100.0, id="heuristic-from-response-time"),
        pytest.param(200, [f"Date: {date(T - 500)}", f"Last-Modified: {date(T - 1000)}"], 50.0,
                     id="heuristic-from-date"),
        pytest.param(404, [f"Last-Modified: {date(T - 1000)}"], 100.0, id="heuristic-404"),
        pytest.param(302, [f"Last-Modified: {date(T - 1000)}"], 0.0, id="no-heuristic-for-302"),
        pytest.param(500, [f"Last-Modified: {date(T - 1000)}"], 0.0, id="no-heuristic-for-500"),
        # RFC 9111 §5.2.2.9: public with no explicit freshness is heuristically cacheable
        pytest.param(302, ["Cache-Control: public", f"Last-Modified: {date(T - 1000)}"], 100.0,
                     id="heuristic-302-public"),
        pytest.param(200, [f"Last-Modified: {date(T - 10_000_000)}"], 86400.0, id="heuristic-capped"),
        pytest.param(200, [f"Date: {date(T)}", f"Last-Modified: {date(T + 10)}"], 0.0,
                     id="heuristic-last-modified-after-date"),
        pytest.param(200, [f"Date: {date(T)}", f"Last-Modified: {date(T)}"], 0.0, id="heuristic-same-instant"),
        pytest.param(200, [f"Last-Modified: {date(T - 1000)}", f"Last-Modified: {date(T - 1000)}"], 0.0,
                     id="heuristic-repeated-last-modified"),
        pytest.param(200, [], 0.0, id="nothing"),
        # targeted fields (RFC 9213 §2.2): they replace Cache-Control and Expires
        pytest.param(200, ["Cache-Control: max-age=60", "CDN-Cache-Control: max-age=10"], 10.0, id="cdn-max-age"),
        pytest.param(200, ["CDN-Cache-Control: s-maxage=5, max-age=10"], 5.0, id="cdn-s-maxage"),
        pytest.param(200, ["Cache-Control: max-age=60", "CDN-Cache-Control: no-cache"], 0.0,
                     id="cdn-without-max-age-ignores-cache-control"),
        pytest.param(200, ["CDN-Cache-Control: public", f"Expires: {date(T + 60)}"], 0.0,
                     id="cdn-without-max-age-ignores-expires"),
        pytest.param(200, ["CDN-Cache-Control: public", f"Last-Modified: {date(T - 1000)}"], 0.0,
                     id="cdn-without-max-age-no-heuristic"),
        pytest.param(200, ["CDN-Cache-Control: max-age=10, max-age=20"], 0.0, id="cdn-max-age-conflicting"),
        pytest.param(200, ["Cache-Control: max-age=60", "Surrogate-Control: max-age=10;edge"], 10.0,
                     id="surrogate-max-age"),
        pytest.param(200, ["Surrogate-Control: max-age=10, max-age=30;edge"], 30.0, id="surrogate-targeted-wins"),
        # Edge Architecture has no s-maxage
        pytest.param(200, ["Surrogate-Control: s-maxage=5, max-age=10"], 10.0, id="surrogate-s-maxage-ignored"),
        pytest.param(200, ["Surrogate-Control: max-age=10;other", "Cache-Control: max-age=60"], 60.0,
                     id="surrogate-for-other-device"),
        pytest.param(200, ["Surrogate-Control: no-store;edge", f"Expires: {date(T + 60)}"], 0.0,
                     id="surrogate-ignores-expires"),
    ],
)
def test_freshness_lifetime(status, response, lifetime):
    assert freshness_lifetime(status, fields(*response), T, POLICY) == lifetime


@pytest.mark.parametrize(
    ("policy", "lifetime"),
    [
        (CachePolicy(heuristic_fraction=0.5), 500.0),
        (CachePolicy(heuristic_max=30.0), 30.0),
        (CachePolicy(heuristic_fraction=0.0), 0.0),
    ],
)
def test_heuristic_freshness_follows_the_policy(policy, lifetime):
    assert freshness_lifetime(200, fields(f"Last-Modified: {date(T - 1000)}"), T, policy) == lifetime


@pytest.mark.parametrize("status", HEURISTIC)
def test_heuristic_freshness_for_heuristically_cacheable_statuses(status):
    # RFC 9111 §4.2.2
    assert freshness_lifetime(status, fields(f"Last-Modified: {date(T - 1000)}"), T, POLICY) == 100.0


@pytest.mark.parametrize("status", NOT_HEURISTIC)
def test_no_heuristic_freshness_for_other_statuses(status):
    assert freshness_lifetime(status, fields(f"Last-Modified: {date(T - 1000)}"), T, POLICY) == 0.0


def test_s_maxage_overrides_max_age_for_shared_cache():
    # §5.2.2.10
    assert freshness_lifetime(200, fields("Cache-Control: max-age=600, s-maxage=30"), T, POLICY) == 30.0
    assert freshness_lifetime(200, fields("Cache-Control: s-maxage=600, max-age=30"), T, POLICY) == 600.0


# -- initial_age (RFC 9111 §4.2.3) ---------------------------------------------------

@pytest.mark.parametrize(
    ("response", "request_time", "age"),
    [
        pytest.param([], T, 0.0, id="nothing"),
        pytest.param([], T - 2, 2.0, id="response-delay"),
        pytest.param([], T + 2, 0.0, id="request-after-response-is-no-delay"),
        pytest.param(["Age: 10"], T, 10.0, id="age"),
        pytest.param(["Age: 10"], T - 2, 12.0, id="age-plus-response-delay"),
        pytest.param([f"Date: {date(T - 30)}"], T, 30.0, id="apparent-age"),
        pytest.param([f"Date: {date(T - 30)}", "Age: 10"], T - 2, 30.0, id="apparent-age-larger"),
        pytest.param([f"Date: {date(T - 5)}", "Age: 10"], T - 2, 12.0, id="corrected-age-larger"),
        pytest.param([f"Date: {date(T + 100)}"], T, 0.0, id="date-in-the-future"),
        pytest.param([f"Date: {date(T - 30)}", f"Date: {date(T - 30)}"], T, 0.0, id="repeated-date-ignored"),
        # deliberate: malformed or repeated Age makes the response stale at once
        pytest.param(["Age: ten"], T, AGE_INVALID, id="age-malformed"),
        pytest.param(["Age: 10", "Age: 10"], T, AGE_INVALID, id="age-repeated"),
        pytest.param([f"Date: {date(T - 30)}", "Age: -1"], T, AGE_INVALID, id="age-negative"),
    ],
)
def test_initial_age(response, request_time, age):
    assert initial_age(fields(*response), request_time, T) == age


# -- assess ---------------------------------------------------------------------------

def test_assess_combines_lifetime_age_and_time():
    f = assess(200, fields("Cache-Control: max-age=60", "Age: 5"), T - 1, T, POLICY)
    assert (f.lifetime, f.initial_age, f.response_time) == (60.0, 6.0, T)


def test_entries_with_the_same_lifetime_initial_age_or_reuse_rules_share_one_object_for_it():
    # Every stored entry holds its lifetime and its initial age: 24 bytes each unless shared. The initial
    # age, with the response delay in it, is kept to the millisecond, rounded up: few values, shared too.
    first = assess(200, fields("Cache-Control: max-age=3600"), T - 0.0004, T, POLICY)
    second = assess(200, fields("Cache-Control: max-age=3600"), T + 1.4993, T + 1.5, POLICY)
    assert first.lifetime is second.lifetime and first.lifetime == 3600.0
    assert first.initial_age is second.initial_age and first.initial_age == 0.001
    slow = assess(200, fields("Cache-Control: max-age=3600", "Age: 5"), T - 0.0123, T, POLICY)
    assert slow.initial_age == 5.013  # never younger than RFC 9111 §4.2.3 makes it
    assert to_the_millisecond(AGE_INVALID) == AGE_INVALID and to_the_millisecond(2.0) == 2.0
    assert to_the_millisecond(2.007) == 2.007 and to_the_millisecond(2.0071) == 2.008  # 2.007 * 1000 > 2007
    assert shared(float("2.5")) is shared(float("2.5")) and shared(float("1e9")) is shared(float("1e9"))
    # Four slots' worth of directives in one object, one per combination.
    assert first.rules is second.rules and first.rules == ReuseRules()
    swr = [assess(200, fields("Cache-Control: max-age=60, stale-while-revalidate=30"), T, T, POLICY) for _ in range(2)]
    assert swr[0].rules is swr[1].rules and swr[0].rules == ReuseRules(stale_while_revalidate=30.0)


@pytest.mark.parametrize(
    ("response", "flags"),
    [
        pytest.param(["Cache-Control: max-age=60"], {}, id="none"),
        # §5.2.2.4 no-cache: unqualified means always revalidate
        pytest.param(["Cache-Control: no-cache"], {"no_cache": True}, id="no-cache"),
        pytest.param(['Cache-Control: no-cache="set-cookie"'], {}, id="no-cache-qualified"),
        # §5.2.2.2, §5.2.2.8, §5.2.2.10: no stale serving
        pytest.param(["Cache-Control: must-revalidate"], {"must_revalidate": True}, id="must-revalidate"),
        pytest.param(["Cache-Control: proxy-revalidate"], {"must_revalidate": True}, id="proxy-revalidate"),
        pytest.param(["Cache-Control: s-maxage=60"], {"must_revalidate": True}, id="s-maxage"),
        pytest.param(["CDN-Cache-Control: s-maxage=60"], {"must_revalidate": True}, id="cdn-s-maxage"),
        pytest.param(["Surrogate-Control: s-maxage=60"], {}, id="surrogate-s-maxage-means-nothing"),
        pytest.param(["Cache-Control: must-revalidate", "CDN-Cache-Control: max-age=60"], {},
                     id="cache-control-ignored-under-targeted-field"),
        # RFC 5861
        pytest.param(["Cache-Control: max-age=1, stale-while-revalidate=30, stale-if-error=300"],
                     {"stale_while_revalidate": 30.0, "stale_if_error": 300.0}, id="rfc5861"),
        pytest.param(["Cache-Control: stale-while-revalidate=abc, stale-if-error=-1"], {}, id="rfc5861-invalid"),
        pytest.param(["Cache-Control: stale-while-revalidate, stale-if-error=0"], {}, id="rfc5861-empty-or-zero"),
        pytest.param(["Cache-Control: stale-while-revalidate=1, stale-if-error=1"],
                     {"stale_while_revalidate": 1.0, "stale_if_error": 1.0}, id="rfc5861-one-second"),
        pytest.param(["Surrogate-Control: max-age=1, stale-while-revalidate=30;edge"],
                     {"stale_while_revalidate": 30.0}, id="rfc5861-in-surrogate-control"),
    ],
)
def test_assess_flags(response, flags):
    f = assess(200, fields(*response), T, T, POLICY)
    expected = {"no_cache": False, "must_revalidate": False, "stale_while_revalidate": 0.0, "stale_if_error": 0.0}
    expected.update(flags)
    assert {name: getattr(f.rules, name) for name in expected} == expected


def test_malformed_age_makes_response_stale_at_once():
    f = assess(200, fields("Cache-Control: max-age=3600", "Age: soon"), T, T, POLICY)
    assert reuse(f, EMPTY_DIRECTIVES, T) is Reuse.VALIDATE


def test_freshness_age_and_ttl_count_resident_time():
    f = Freshness(lifetime=60.0, initial_age=10.0, response_time=T)
    assert (f.age(T), f.age(T + 5), f.age(T - 5)) == (10.0, 15.0, 10.0)  # a clock stepping back adds nothing
    assert (f.ttl(T), f.ttl(T + 50), f.ttl(T + 60)) == (50.0, 0.0, -10.0)


def test_thousands_of_digits_in_max_age_are_capped_not_an_error():
    huge = "9" * 5000
    f = assess(200, fields(f"Cache-Control: max-age={huge}"), T, T, POLICY)
    assert f.lifetime == float(DELTA_SECONDS_MAX)
    assert reuse(f, cc(f"max-age={huge}"), T + 1) is Reuse.FRESH


# -- reuse (RFC 9111 §4.2, §4.2.4, §5.2.1, §5.2.2; RFC 5861 §3) -----------------------

def fresh_for(lifetime: float, **flags) -> Freshness:
    """A response with `lifetime` seconds of freshness received at T with no age."""
    return Freshness(lifetime=lifetime, initial_age=0.0, response_time=T, rules=ReuseRules(**flags))


@pytest.mark.parametrize(
    ("freshness", "request_cc", "now", "soft_purged", "outcome"),
    [
        pytest.param(fresh_for(60), "", T + 10, False, Reuse.FRESH, id="fresh"),
        pytest.param(fresh_for(60), "", T + 59.9, False, Reuse.FRESH, id="fresh-just-before-lifetime"),
        # §4.2: fresh only while age < lifetime
        pytest.param(fresh_for(60), "", T + 60, False, Reuse.VALIDATE, id="stale-at-lifetime"),
        pytest.param(fresh_for(60), "", T + 61, False, Reuse.VALIDATE, id="stale"),
        pytest.param(fresh_for(0), "", T, False, Reuse.VALIDATE, id="zero-lifetime"),
        pytest.param(Freshness(60.0, 55.0, T), "", T + 10, False, Reuse.VALIDATE, id="initial-age-counts"),
        pytest.param(Freshness(60.0, 55.0, T), "", T + 4, False, Reuse.FRESH, id="initial-age-still-fresh"),
        pytest.param(Freshness(60.0, AGE_INVALID, T), "", T, False, Reuse.VALIDATE, id="invalid-age"),
        # §5.2.2.4 response no-cache, §5.2.1.4 request no-cache
        pytest.param(fresh_for(60, no_cache=True), "", T + 1, False, Reuse.VALIDATE, id="response-no-cache"),
        pytest.param(fresh_for(60), "no-cache", T + 1, False, Reuse.VALIDATE, id="request-no-cache"),
        pytest.param(fresh_for(60, stale_while_revalidate=30), "no-cache", T + 61, False, Reuse.VALIDATE,
                     id="request-no-cache-beats-swr"),
        pytest.param(fresh_for(60, no_cache=True), "max-stale", T + 61, False, Reuse.VALIDATE,
                     id="response-no-cache-beats-max-stale"),
        # §5.2.1.1 request max-age: age <= max-age
        pytest.param(fresh_for(60), "max-age=10", T + 10, False, Reuse.FRESH, id="request-max-age-equal"),
        pytest.param(fresh_for(60), "max-age=10", T + 11, False, Reuse.VALIDATE, id="request-max-age-exceeded"),
        pytest.param(fresh_for(60), "max-age=0", T + 1, False, Reuse.VALIDATE, id="request-max-age-zero"),
        pytest.param(fresh_for(60), "max-age=abc", T + 11, False, Reuse.FRESH, id="request-max-age-invalid-ignored"),
        pytest.param(fresh_for(60), "max-age=100, max-stale", T + 90, False, Reuse.STALE_ALLOWED,
                     id="request-max-age-with-max-stale"),
        pytest.param(fresh_for(60, stale_while_revalidate=100), "max-age=70", T + 80, False, Reuse.VALIDATE,
                     id="request-max-age-beats-swr"),
        # §5.2.1.3 min-fresh: lifetime - age >= min-fresh
        pytest.param(fresh_for(60), "min-fresh=50", T + 10, False, Reuse.FRESH, id="min-fresh-equal"),
        pytest.param(fresh_for(60), "min-fresh=51", T + 10, False, Reuse.VALIDATE, id="min-fresh-not-met"),
        pytest.param(fresh_for(60), "min-fresh=abc", T + 10, False, Reuse.FRESH, id="min-fresh-invalid-ignored"),
        pytest.param(fresh_for(60), "min-fresh=abc, max-stale", T + 70, False, Reuse.STALE_ALLOWED,
                     id="min-fresh-invalid-ignored-when-stale"),
        pytest.param(fresh_for(60), "min-fresh=0, max-stale", T + 70, False, Reuse.VALIDATE,
                     id="min-fresh-beats-max-stale"),
        # §5.2.1.2 max-stale
        pytest.param(fresh_for(60), "max-stale", T + 10_000, False, Reuse.STALE_ALLOWED, id="max-stale-any"),
        pytest.param(fresh_for(60), "max-stale=10", T + 70, False, Reuse.STALE_ALLOWED, id="max-stale-within"),
        pytest.param(fresh_for(60), "max-stale=10", T + 71, False, Reuse.VALIDATE, id="max-stale-exceeded"),
        pytest.param(fresh_for(60), "max-stale=abc", T + 61, False, Reuse.VALIDATE, id="max-stale-invalid"),
        pytest.param(fresh_for(60), "max-stale=", T + 61, False, Reuse.VALIDATE, id="max-stale-empty"),
        pytest.param(Freshness(60.0, AGE_INVALID, T), "max-stale", T, False, Reuse.STALE_ALLOWED,
                     id="max-stale-any-accepts-invalid-age"),
        # §5.2.2.2, §5.2.2.8, §5.2.2.10: once stale, validate, whatever the client accepts
        pytest.param(fresh_for(60, must_revalidate=True), "", T + 10, False, Reuse.FRESH,
                     id="must-revalidate-while-fresh"),
        pytest.param(fresh_for(60, must_revalidate=True), "max-stale", T + 61, False, Reuse.VALIDATE,
                     id="must-revalidate-beats-max-stale"),
        pytest.param(fresh_for(60, must_revalidate=True, stale_while_revalidate=30), "", T + 61, False,
                     Reuse.VALIDATE, id="must-revalidate-beats-swr"),
        # RFC 5861 §3 stale-while-revalidate
        pytest.param(fresh_for(60, stale_while_revalidate=30), "", T + 90, False, Reuse.STALE_WHILE_REVALIDATE,
                     id="swr-within"),
        pytest.param(fresh_for(60, stale_while_revalidate=30), "", T + 91, False, Reuse.VALIDATE,
                     id="swr-exceeded"),
        pytest.param(fresh_for(60), "", T + 60, False, Reuse.VALIDATE, id="no-swr-at-lifetime"),
        pytest.param(fresh_for(60, stale_while_revalidate=1), "", T + 61, False, Reuse.STALE_WHILE_REVALIDATE,
                     id="swr-one-second"),
        pytest.param(fresh_for(60, stale_while_revalidate=30), "max-stale=5", T + 80, False,
                     Reuse.STALE_WHILE_REVALIDATE, id="swr-beyond-max-stale"),
        pytest.param(fresh_for(60, stale_while_revalidate=30), "max-stale", T + 80, False, Reuse.STALE_ALLOWED,
                     id="max-stale-before-swr"),
        # soft purge: the stored response is stale now, whatever its lifetime
        pytest.param(fresh_for(60), "", T + 1, True, Reuse.VALIDATE, id="soft-purged"),
        pytest.param(fresh_for(60, stale_while_revalidate=30), "", T + 1, True, Reuse.STALE_WHILE_REVALIDATE,
                     id="soft-purged-swr"),
        pytest.param(fresh_for(60, stale_while_revalidate=30), "", T + 100, True, Reuse.VALIDATE,
                     id="soft-purged-swr-exceeded"),
        pytest.param(fresh_for(60), "max-stale=0", T + 1, True, Reuse.STALE_ALLOWED, id="soft-purged-max-stale"),
        pytest.param(fresh_for(60), "max-stale=0", T + 59.5, True, Reuse.STALE_ALLOWED,
                     id="soft-purged-max-stale-half-a-second-left"),
        pytest.param(fresh_for(60, must_revalidate=True, stale_while_revalidate=30), "max-stale", T + 1, True,
                     Reuse.VALIDATE, id="soft-purged-must-revalidate"),
    ],
)
def test_reuse(freshness, request_cc, now, soft_purged, outcome):
    assert reuse(freshness, cc(request_cc), now, soft_purged=soft_purged) is outcome


def test_reuse_honours_pragma_no_cache_request():
    # RFC 9111 §5.4
    request = request_directives(fields("Pragma: no-cache"))
    assert reuse(fresh_for(60), request, T + 1) is Reuse.VALIDATE


def test_assessed_response_reuse_end_to_end():
    f = assess(200, fields("Cache-Control: max-age=60, stale-while-revalidate=30", f"Date: {date(T - 10)}"),
               T, T, POLICY)
    assert [reuse(f, EMPTY_DIRECTIVES, T + dt) for dt in (0, 49, 50, 80, 81)] == [
        Reuse.FRESH, Reuse.FRESH, Reuse.STALE_WHILE_REVALIDATE, Reuse.STALE_WHILE_REVALIDATE, Reuse.VALIDATE]


# -- may_serve_stale_on_error (RFC 5861 §4) -----------------------------------------

@pytest.mark.parametrize(
    ("freshness", "request_cc", "now", "allowed"),
    [
        pytest.param(fresh_for(60, stale_if_error=300), "", T + 360, True, id="within-window"),
        pytest.param(fresh_for(60, stale_if_error=300), "", T + 361, False, id="window-exceeded"),
        pytest.param(fresh_for(60, stale_if_error=300), "", T + 10, True, id="still-fresh"),
        pytest.param(fresh_for(60), "", T + 61, False, id="no-window"),
        pytest.param(fresh_for(60, stale_if_error=1), "", T + 61, True, id="one-second-window"),
        pytest.param(fresh_for(60), "", T + 10, False, id="fresh-but-no-window"),
        pytest.param(fresh_for(60), "stale-if-error=100", T + 160, True, id="request-window"),
        pytest.param(fresh_for(60), "stale-if-error=100", T + 161, False, id="request-window-exceeded"),
        pytest.param(fresh_for(60, stale_if_error=300), "stale-if-error=10", T + 200, True,
                     id="request-window-does-not-shrink-response-window"),
        pytest.param(fresh_for(60, stale_if_error=10), "stale-if-error=300", T + 200, True,
                     id="request-window-extends"),
        pytest.param(fresh_for(60), "stale-if-error=abc", T + 61, False, id="request-window-invalid"),
        # RFC 9111 §4.2.4, §5.2.2.2: must-revalidate and no-cache forbid it (504 instead)
        pytest.param(fresh_for(60, stale_if_error=300, must_revalidate=True), "", T + 100, False,
                     id="must-revalidate"),
        pytest.param(fresh_for(60, stale_if_error=300, no_cache=True), "", T + 100, False, id="no-cache"),
        pytest.param(fresh_for(60, must_revalidate=True), "stale-if-error=300", T + 100, False,
                     id="must-revalidate-beats-request"),
        pytest.param(Freshness(60.0, AGE_INVALID, T, ReuseRules(stale_if_error=300)), "", T, False, id="invalid-age"),
    ],
)
def test_may_serve_stale_on_error(freshness, request_cc, now, allowed):
    assert may_serve_stale_on_error(freshness, cc(request_cc), now) is allowed


# -- merge_304 (RFC 9111 §3.2, §4.3.4) -----------------------------------------------

STORED = fields(
    "Content-Type: text/html",
    "Content-Length: 1000",
    "Content-Encoding: gzip",
    'ETag: "v1"',
    "Cache-Control: max-age=60",
    f"Date: {date(T - 1000)}",
    "X-Old: 1",
    "X-Old: 2",
)


def test_merge_304_replaces_updated_fields_and_keeps_the_rest():
    merged = merge_304(STORED, fields("Cache-Control: max-age=600", f"Date: {date(T)}", "X-New: n"))
    assert merged.get_all("cache-control") == ["max-age=600"]
    assert merged.get_all("date") == [date(T)]
    assert merged.get_all("x-new") == ["n"]
    assert merged.get_all("content-type") == ["text/html"]
    assert merged.get_all("x-old") == ["1", "2"]


def test_merge_304_replaces_every_line_of_a_repeated_field():
    merged = merge_304(STORED, fields("X-Old: 3"))
    assert merged.get_all("x-old") == ["3"]


def test_merge_304_keeps_every_line_the_304_sends():
    merged = merge_304(STORED, fields("X-Old: 3", "X-Old: 4"))
    assert merged.get_all("x-old") == ["3", "4"]


def test_merge_304_leaves_the_stored_headers_alone():
    before = list(STORED.items)
    merge_304(STORED, fields("Cache-Control: no-cache"))
    assert STORED.items == before


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("content-length", "0"),
        ("content-encoding", "br"),
        ("content-md5", "xxx"),
        ("content-range", "bytes 0-1/2"),
        ("etag", '"v2"'),
    ],
)
def test_merge_304_does_not_update_fields_describing_the_stored_body(name, value):
    stored = fields(f"{name}: stored")
    merged = merge_304(stored, fields(f"{name}: {value}"))
    assert merged.get_all(name) == ["stored"]


# RFC 9110 §7.6.1 (Connection and the fields it governs), §11.7 (proxy authentication: next hop only)
HOP_BY_HOP_NAMES = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                    "proxy-authenticate", "proxy-authorization", "proxy-authentication-info"]


@pytest.mark.parametrize("name", HOP_BY_HOP_NAMES)
def test_merge_304_never_stores_hop_by_hop_fields(name):
    merged = merge_304(STORED, fields(f"{name}: x", "X-New: n"))
    assert name not in merged
    assert merged.get("x-new") == "n"


def test_merge_304_never_stores_fields_the_connection_header_lists():
    # RFC 9110 §7.6.1
    merged = merge_304(STORED, fields("Connection: X-Hop, close", "X-Hop: 1", "X-New: n"))
    assert "x-hop" not in merged and "connection" not in merged
    assert merged.get("x-new") == "n"


def test_merge_304_takes_the_age_the_304_carries():
    stored = fields("Cache-Control: max-age=120", "Age: 100")
    assert merge_304(stored, fields("Age: 7")).get_all("age") == ["7"]


def test_merge_304_freshened_response_does_not_inherit_the_old_age():
    # RFC 9111 §5.1: Age counts from the last validation, which the 304 just was
    stored = fields("Cache-Control: max-age=120", "Age: 100", f"Date: {date(T - 1000)}")
    merged = merge_304(stored, fields(f"Date: {date(T)}"))
    assert assess(200, merged, T, T, POLICY).initial_age == 0.0


def test_merge_304_without_date_does_not_keep_the_first_responses_date():
    # The stored Date may be the one the edge added (RFC 9110 §6.6.1); kept, it would age the freshened response
    stored = fields("Cache-Control: max-age=120", f"Date: {date(T - 1000)}")
    merged = merge_304(stored, fields("Cache-Control: max-age=120"))
    assert assess(200, merged, T, T, POLICY).initial_age == 0.0


# -- validators (RFC 9111 §4.3.1) ----------------------------------------------------

@pytest.mark.parametrize(
    ("stored", "conditionals"),
    [
        ([], []),
        (['ETag: "v1"'], [("if-none-match", '"v1"')]),
        (['ETag: W/"v1"'], [("if-none-match", 'W/"v1"')]),
        ([f"Last-Modified: {date(T)}"], [("if-modified-since", date(T))]),
        ([f"Last-Modified: {date(T)}", 'ETag: "v1"'], [("if-none-match", '"v1"'), ("if-modified-since", date(T))]),
        (["ETag: ", "Last-Modified: "], []),
        ([f"Date: {date(T)}"], []),
    ],
)
def test_validators(stored, conditionals):
    assert validators(fields(*stored)) == conditionals


# -- not_modified (RFC 9111 §4.3.2, RFC 9110 §13.1.1–§13.1.3, §13.2.2) ---------------

LAST_MODIFIED = T - 1000


@pytest.mark.parametrize(
    ("request_lines", "stored", "satisfied"),
    [
        pytest.param([], ['ETag: "v1"'], False, id="unconditional"),
        pytest.param(['If-None-Match: "v1"'], ['ETag: "v1"'], True, id="inm-match"),
        pytest.param(['If-None-Match: "v2"'], ['ETag: "v1"'], False, id="inm-mismatch"),
        pytest.param(['If-None-Match: "v0", "v1"'], ['ETag: "v1"'], True, id="inm-list"),
        pytest.param(['If-None-Match: "v0"', 'If-None-Match: "v1"'], ['ETag: "v1"'], True, id="inm-lines"),
        pytest.param(['If-None-Match: "v1"', 'If-None-Match: "v0"'], ['ETag: "v1"'], True, id="inm-lines-first"),
        # §13.1.2: If-None-Match uses weak comparison
        pytest.param(['If-None-Match: W/"v1"'], ['ETag: "v1"'], True, id="inm-weak-request"),
        pytest.param(['If-None-Match: "v1"'], ['ETag: W/"v1"'], True, id="inm-weak-stored"),
        pytest.param(["If-None-Match: *"], ['ETag: "v1"'], True, id="inm-star"),
        pytest.param(["If-None-Match: *"], [], True, id="inm-star-without-etag"),
        pytest.param(['If-None-Match: "v1"'], [], False, id="inm-without-stored-etag"),
        pytest.param(['If-None-Match: "a,b"'], ['ETag: "a,b"'], True, id="inm-comma-in-etag"),
        pytest.param(['If-None-Match: "a"'], ['ETag: "a,b"'], False, id="inm-comma-in-etag-no-prefix-match"),
        # §13.2.2: If-None-Match takes precedence; If-Modified-Since is then ignored
        pytest.param(['If-None-Match: "v2"', f"If-Modified-Since: {date(T)}"],
                     ['ETag: "v1"', f"Last-Modified: {date(LAST_MODIFIED)}"], False, id="inm-beats-ims-miss"),
        pytest.param(['If-None-Match: "v1"', f"If-Modified-Since: {date(LAST_MODIFIED - 1)}"],
                     ['ETag: "v1"', f"Last-Modified: {date(LAST_MODIFIED)}"], True, id="inm-beats-ims-hit"),
        # §4.3.2: If-Modified-Since against Last-Modified, else Date, else the response time
        pytest.param([f"If-Modified-Since: {date(LAST_MODIFIED)}"], [f"Last-Modified: {date(LAST_MODIFIED)}"],
                     True, id="ims-equal"),
        pytest.param([f"If-Modified-Since: {date(LAST_MODIFIED + 1)}"], [f"Last-Modified: {date(LAST_MODIFIED)}"],
                     True, id="ims-later"),
        pytest.param([f"If-Modified-Since: {date(LAST_MODIFIED - 1)}"], [f"Last-Modified: {date(LAST_MODIFIED)}"],
                     False, id="ims-earlier"),
        pytest.param([f"If-Modified-Since: {date(LAST_MODIFIED)}"],
                     [f"Last-Modified: {date(LAST_MODIFIED)}", f"Date: {date(T)}"], True,
                     id="ims-prefers-last-modified-to-date"),
        pytest.param([f"If-Modified-Since: {date(T - 10)}"], [f"Date: {date(T - 20)}"], True, id="ims-date"),
        pytest.param([f"If-Modified-Since: {date(T - 30)}"], [f"Date: {date(T - 20)}"], False, id="ims-date-later"),
        pytest.param([f"If-Modified-Since: {date(T - 30)}"], ["Last-Modified: junk", f"Date: {date(T - 40)}"], True,
                     id="ims-invalid-last-modified-falls-back-to-date"),
        pytest.param([f"If-Modified-Since: {date(T)}"], [], True, id="ims-response-time"),
        pytest.param([f"If-Modified-Since: {date(T - 1)}"], [], False, id="ims-before-response-time"),
        # RFC 9110 §13.1.3: an invalid date is ignored
        pytest.param(["If-Modified-Since: yesterday"], [f"Last-Modified: {date(LAST_MODIFIED)}"], False,
                     id="ims-invalid"),
    ],
)
def test_not_modified(request_lines, stored, satisfied):
    assert not_modified(fields(*request_lines), fields(*stored), T) is satisfied


def test_not_modified_ignores_repeated_if_modified_since():
    # RFC 9110 §13.1.3: more than one member means the field is ignored
    request = fields(f"If-Modified-Since: {date(T)}", f"If-Modified-Since: {date(T - 5000)}")
    assert not_modified(request, fields(f"Last-Modified: {date(LAST_MODIFIED)}"), T) is False


def test_not_modified_with_backslash_in_an_earlier_entity_tag():
    # RFC 9110 §8.8.3: a backslash is an ordinary etagc
    assert not_modified(fields('If-None-Match: "a\\", "b"'), fields('ETag: "b"'), T) is True


def test_not_modified_responses_carry_the_fields_rfc_9110_requires():
    # RFC 9110 §15.4.5
    assert {"cache-control", "content-location", "date", "etag", "expires", "vary"} <= NOT_MODIFIED_FIELDS
    assert "last-modified" in NOT_MODIFIED_FIELDS  # allowed: it guides cache updates
    assert "content-length" not in NOT_MODIFIED_FIELDS


def test_targeted_and_tag_fields_are_the_ones_the_policy_reads():
    sources = {governing_directives(fields(f"{name}: max-age=1"), POLICY)[0] for name in TARGETED_FIELDS}
    assert TARGETED_FIELDS == ("cdn-cache-control", "surrogate-control") and sources == set(TARGETED_FIELDS)
    assert TAG_FIELDS == ("surrogate-key", "cache-tag")


# -- invalidates (RFC 9111 §4.4) -----------------------------------------------------

@pytest.mark.parametrize(
    ("method", "status", "invalidated"),
    [
        ("POST", 200, True),
        ("PUT", 201, True),
        ("DELETE", 204, True),
        ("PATCH", 303, True),
        ("POST", 399, True),
        ("FROBNICATE", 200, True),  # unknown methods count as unsafe
        ("get", 200, True),  # method names are case-sensitive, so "get" is not GET
        ("POST", 400, False),  # error statuses do not invalidate
        ("POST", 500, False),
        ("POST", 199, False),
        ("GET", 200, False),
        ("HEAD", 200, False),
        ("OPTIONS", 200, False),
        ("TRACE", 200, False),
    ],
)
def test_invalidates(method, status, invalidated):
    assert invalidates(method, status) is invalidated


# -- fields a shared cache does not keep (RFC 9111 §3.1, §5.2.2.4, §5.2.2.7; RFC 9110 §7.6.1) ----

@pytest.mark.parametrize(
    ("response", "dropped"),
    [
        pytest.param([], set(), id="nothing-extra"),
        pytest.param(["Connection: X-Hop, Close"], {"x-hop", "close"}, id="connection-listed"),
        pytest.param(["Connection: a", "Connection: b"], {"a", "b"}, id="connection-lines"),
        pytest.param(['Cache-Control: private="Set-Cookie, X-User"'], {"set-cookie", "x-user"}, id="private"),
        pytest.param(['Cache-Control: no-cache="X-Token"'], {"x-token"}, id="no-cache"),
        pytest.param(["Cache-Control: private, no-cache"], set(), id="unqualified"),
        pytest.param(['CDN-Cache-Control: private="X-User"'], {"x-user"}, id="targeted-field"),
        pytest.param(['Cache-Control: private="X-User"', "CDN-Cache-Control: max-age=60"], set(),
                     id="cache-control-ignored-under-targeted-field"),
    ],
)
def test_stored_fields_to_drop(response, dropped):
    assert stored_fields_to_drop(fields(*response), POLICY) == HOP_BY_HOP | frozenset(dropped)


def test_hop_by_hop_fields_are_the_rfc_9110_ones():
    assert HOP_BY_HOP == frozenset(HOP_BY_HOP_NAMES)


def test_connection_listed_names_are_lowercase():
    assert connection_listed(fields("Connection: Keep-Alive, X-A", "Connection: x-b")) == {"keep-alive", "x-a", "x-b"}


def test_end_to_end_drops_hop_by_hop_and_connection_listed_fields():
    headers = fields("Connection: X-Hop", "Keep-Alive: timeout=5", "Transfer-Encoding: chunked", "X-Hop: 1",
                     "Content-Type: text/plain", "X-Other: 2")
    assert end_to_end(headers).items == [("content-type", "text/plain"), ("x-other", "2")]


# -- properties: defined answers for any headers -------------------------------------------

any_text = st.text(max_size=24)
DIRECTIVE_NAMES = ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale", "min-fresh"]
DIRECTIVE_ARGS = ["0", "1", "60", "", "abc", "-1", '"60"', "99999999999", "1.5"]
directive = (
    st.sampled_from(["public", "private", "no-store", "no-cache", "must-revalidate", "proxy-revalidate",
                     "must-understand", "immutable", 'private="set-cookie"', 'no-cache="x-a"', "=", '"'])
    | st.builds(lambda n, v: f"{n}={v}", st.sampled_from(DIRECTIVE_NAMES), st.sampled_from(DIRECTIVE_ARGS))
)
directive_list = st.lists(directive, max_size=4).map(", ".join)
targeted_list = st.lists(
    st.builds(lambda d, t: d + t, directive, st.sampled_from(["", ";edge", ";other"])), max_size=4).map(", ".join)
http_date = st.integers(min_value=0, max_value=2_000_000).map(lambda dt: date(T - 1_000_000 + dt))
date_value = http_date | st.sampled_from(["0", "-1", "", "soon"]) | any_text
age_value = st.sampled_from(["0", "5", "1000", "-1", "", "1.5", str(2**40)]) | any_text

response_field = st.one_of(
    st.tuples(st.just("cache-control"), directive_list | any_text),
    st.tuples(st.just("cdn-cache-control"), directive_list | any_text),
    st.tuples(st.just("surrogate-control"), targeted_list | any_text),
    st.tuples(st.sampled_from(["date", "expires", "last-modified"]), date_value),
    st.tuples(st.just("age"), age_value),
    st.tuples(st.just("vary"), st.sampled_from(["*", "accept-encoding", "Accept, *", ""]) | any_text),
    st.tuples(st.sampled_from(["set-cookie", "connection", "etag", "x-a", "content-length"]), any_text),
)
response_headers = st.lists(response_field, max_size=6).map(Headers)
request_field = st.one_of(
    st.tuples(st.just("cache-control"), directive_list | any_text),
    st.tuples(st.just("pragma"), st.sampled_from(["no-cache", "x"]) | any_text),
    st.tuples(st.just("authorization"), any_text),
    st.tuples(st.just("if-none-match"), st.sampled_from(['"v1"', 'W/"v1"', "*", '"a", "b"']) | any_text),
    st.tuples(st.just("if-modified-since"), date_value),
)
request_headers = st.lists(request_field, max_size=4).map(Headers)
status_code = st.sampled_from([100, 200, 203, 204, 206, 299, 302, 304, 404, 418, 500, 501, 600]) | st.integers(0, 999)
methods = st.sampled_from(["GET", "HEAD", "POST", "get"])
offset = st.floats(min_value=-100.0, max_value=1e7, allow_nan=False)

REASONS = {None, "method", "status", "no-store", "request-no-store", "private", "authorization", "set-cookie",
           "vary-star", "no-freshness"}


@PROPERTY
@given(methods, status_code, request_headers, response_headers, st.booleans())
def test_uncacheable_reason_is_always_a_known_answer(method, status, request, response, cookies):
    reason = uncacheable_reason(method, status, request, response, CachePolicy(cache_set_cookie=cookies))
    assert reason in REASONS
    if method != "GET":
        assert reason == "method"
    if status in (206, 304) or status < 200:
        assert reason in ("method", "status")


@PROPERTY
@given(status_code, response_headers, st.floats(min_value=0.0, max_value=10.0), request_headers, offset, st.booleans())
def test_assess_and_reuse_give_defined_answers(status, response, delay, request, dt, soft_purged):
    f = assess(status, response, T - delay, T, POLICY)
    assert 0.0 <= f.lifetime <= float(DELTA_SECONDS_MAX)
    assert f.initial_age >= 0.0
    assert f.rules.stale_while_revalidate >= 0.0 and f.rules.stale_if_error >= 0.0
    directives = request_directives(request)
    now = T + dt
    outcome = reuse(f, directives, now, soft_purged=soft_purged)
    assert isinstance(outcome, Reuse)
    if outcome is Reuse.FRESH:
        assert f.ttl(now) > 0 and not soft_purged
    if f.rules.no_cache or "no-cache" in directives:
        assert outcome is Reuse.VALIDATE
    if f.rules.must_revalidate:
        assert outcome in (Reuse.FRESH, Reuse.VALIDATE)
    assert isinstance(may_serve_stale_on_error(f, directives, now), bool)


@PROPERTY
@given(response_headers, response_headers, request_headers)
def test_header_operations_give_defined_answers(stored, validation, request):
    merged = merge_304(stored, validation)
    added = {name for name, value in merged.items if (name, value) not in stored.items}
    assert not added & (HOP_BY_HOP | NOT_UPDATED_BY_304)
    assert stored_fields_to_drop(stored, POLICY) >= HOP_BY_HOP
    assert not HOP_BY_HOP & {k for k, _ in end_to_end(stored).items}
    assert isinstance(validators(stored), list)
    assert isinstance(not_modified(request, stored, T), bool)
    assert isinstance(freshness_lifetime(200, stored, T, POLICY), float)
    assert isinstance(governing_directives(stored, POLICY)[0], str)
