"""The URL guard on random input: whatever a client sends as ``url``, ``URLGuard.check`` either
accepts it (an http/https ``httpx.URL`` with a host) or raises InvalidJob (URLRefused is one), which
the API turns into 422 naming ``url``. Anything else would be a 500.

Hypothesis generates plain text and URL-shaped strings (odd schemes, userinfo, IDNA-ish and numeric
hosts, IPv6 literals, zone ids, ports out of range, percent-escapes). No DNS: ``check`` never
resolves.
"""

from __future__ import annotations

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidJob
from pipeline.fetch.urlguard import URLGuard

GUARDS = [
    URLGuard(),
    URLGuard(["upstream:8081", "[::1]:*", "bücher.de", "*"]),
    URLGuard(allow_private_networks=True, allow_link_local=True),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LABEL = st.text(alphabet="abcxyzXN0129-_.%@:[]\\ \u00fc\u0080\u200d\u3002", max_size=12)
HOSTS = st.one_of(
    LABEL,
    st.builds(lambda rest: "xn--" + rest, LABEL),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.builds(lambda ip, zone: f"[{ip}%25{zone}]", st.ip_addresses(v=6), LABEL),
    st.integers(min_value=0, max_value=2**40).map(str),
    st.integers(min_value=0, max_value=2**32).map(hex),
    st.text(max_size=20),
)
URLS = st.builds(
    lambda scheme, sep, userinfo, host, port, path: f"{scheme}{sep}{userinfo}{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTP", "ftp", "", "h\u00fcttp", "javascript"]),
    st.sampled_from(["://", ":/", ":", "//", ":\\\\"]),
    st.sampled_from(["", "@", "u@", "u:p@", ":@", "a@b@"]),
    HOSTS,
    st.one_of(
        st.just(""),
        st.integers(min_value=-5, max_value=10**6).map(lambda p: f":{p}"),
        st.text(max_size=6).map(lambda t: ":" + t),
    ),
    st.one_of(st.just("/"), st.text(max_size=30).map(lambda t: "/" + t), st.just("?#")),
)


def _check_all(url: str) -> None:
    for guard in GUARDS:
        try:
            parsed = guard.check(url)
        except InvalidJob as exc:
            assert exc.field == "url"
            continue
        assert isinstance(parsed, httpx.URL)
        assert parsed.scheme in ("http", "https") and parsed.host
        assert not parsed.userinfo


@FUZZ
@given(st.text(max_size=200))
def test_any_text_is_accepted_or_invalid_job(url: str) -> None:
    """Arbitrary text never makes check() raise anything but InvalidJob/URLRefused."""
    _check_all(url)


@FUZZ
@given(URLS)
def test_url_shaped_strings_are_accepted_or_invalid_job(url: str) -> None:
    """URL-shaped strings (any scheme, userinfo, host spelling, port) never raise anything else."""
    _check_all(url)
