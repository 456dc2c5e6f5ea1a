"""URLGuard.verify, the submit-time check with its per-origin cache: always the verdict of
check(), refusals never remembered, the cache emptied when the guard's settings are replaced."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidJob, URLRefused
from pipeline.fetch.allowlist import parse_allowed_hosts
from pipeline.fetch.urlguard import ORIGIN_CACHE_SIZE, URLGuard, origin_of
from pipeline.jobs import _url_flow_key, url_flow_key
from tests.test_guard_fuzz import URLS

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REMAINDERS = st.one_of(
    st.just(""),
    st.text(max_size=20).map(lambda t: "/" + t),
    st.text(max_size=10).map(lambda t: "?" + t),
    st.text(max_size=10).map(lambda t: "#" + t),
    st.sampled_from(["/\x00", "/a\tb", "/\ud800", "/ü", "/%zz", "/ ", "?\n"]),
)


def _verdict(call: object, url: str) -> tuple[str, str] | None:
    try:
        call(url)  # type: ignore[operator]
    except (InvalidJob, URLRefused) as exc:
        return type(exc).__name__, str(exc)
    return None


def _guards() -> list[URLGuard]:
    return [
        URLGuard(),
        URLGuard(["upstream:8081", "[::1]:*", "bücher.de", "127.0.0.1:9", "*"]),
        URLGuard(["127.0.0.1:9"]),
        URLGuard(allow_private_networks=True, allow_link_local=True),
    ]


@FUZZ
@given(URLS, st.lists(REMAINDERS, min_size=1, max_size=4))
def test_verify_agrees_with_check_on_a_warm_cache(url: str, remainders: list[str]) -> None:
    """The same origin with other paths, queries and fragments: verify() says what check() says,
    before and after the origin is remembered."""
    origin = origin_of(url)
    variants = [url, *((origin + r) for r in remainders if origin is not None)]
    for guard in _guards():
        for candidate in variants + variants:  # the second pass runs on a warm cache
            assert _verdict(guard.verify, candidate) == _verdict(guard.check, candidate), candidate


@FUZZ
@given(URLS, REMAINDERS)
def test_flow_key_cache_agrees_with_urlsplit(url: str, remainder: str) -> None:
    origin = origin_of(url)
    for candidate in [url, (origin or url) + remainder, url]:
        assert url_flow_key(candidate) == _url_flow_key(candidate), candidate


def test_a_refusal_is_never_remembered() -> None:
    guard = URLGuard()
    for _ in range(2):
        with pytest.raises(URLRefused):
            guard.verify("http://127.0.0.1:9/a")
    assert not guard._passed


def test_replacing_the_allow_list_empties_the_cache() -> None:
    guard = URLGuard(["127.0.0.1:9"])
    guard.verify("http://127.0.0.1:9/a")
    guard.allowed = parse_allowed_hosts("example.com")
    with pytest.raises(URLRefused, match="not allowed"):
        guard.verify("http://127.0.0.1:9/b")


def test_turning_a_switch_off_empties_the_cache() -> None:
    guard = URLGuard(allow_private_networks=True)
    guard.verify("http://10.0.0.1/a")
    guard.allow_private_networks = False
    with pytest.raises(URLRefused, match="private"):
        guard.verify("http://10.0.0.1/b")


def test_the_cache_is_bounded() -> None:
    guard = URLGuard()
    for i in range(ORIGIN_CACHE_SIZE + 50):
        guard.verify(f"http://h{i}.example.com/")
    assert len(guard._passed) == ORIGIN_CACHE_SIZE
    assert "http://h0.example.com" not in guard._passed


@pytest.mark.parametrize(
    "remainder", ["/ok", "", "?q", "#f", "/\x00", "/a\tb", "/\ud800", "/ü", "/ ", "?\n", "//x"]
)
def test_a_remembered_origin_still_checks_an_odd_remainder(remainder: str) -> None:
    guard = URLGuard(["127.0.0.1:9"])
    guard.verify("http://127.0.0.1:9/warm")
    url = "http://127.0.0.1:9" + remainder
    assert _verdict(guard.verify, url) == _verdict(URLGuard(["127.0.0.1:9"]).check, url)
