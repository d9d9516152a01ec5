"""Conformance runner: the public HTTP cache test suite (http-cache-tests) against our edge."""
