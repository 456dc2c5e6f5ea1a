"""The URL guard, unit by unit: which URLs are refused, and that the check needs no connection.

No test here opens a connection to a refused address: the guard is called directly, and the one
fetch test uses an ``httpx.MockTransport`` that fails if anything reaches it. The end-to-end checks
through the API, inside a network namespace with only loopback, are in ``test_guard_netns.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest

from pipeline.errors import InvalidJob, URLRefused
from pipeline.handler import Fetcher
from pipeline.jobs import MAX_URL_LENGTH, Job, Status
from pipeline.settings import Settings
from pipeline.urlguard import URLGuard, check_address, literal_ip

GUARD = URLGuard(frozenset(), allow_link_local=False)
OPEN = URLGuard(frozenset(), allow_link_local=True)

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254/",
    "HTTP://169.254.169.254:80/",
    "http://user:pw@169.254.169.254/",
    "http://169.254.169.254./",  # trailing dot
    "http://2852039166/",  # decimal
    "http://0xA9FEA9FE/",  # hex
    "http://0xa9.0xfe.0xa9.0xfe/",  # hex parts
    "http://0251.0376.0251.0376/",  # octal parts (httpx refuses to parse it: also fine)
    "http://169.254.43518/",  # short form a.b.c
    "http://[fd00:ec2::254]/",  # AWS IPv6 metadata
    "http://[FD00:EC2:0:0:0:0:0:254]/",
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::169.254.169.254]/",  # IPv4-compatible
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
]
LINK_LOCAL_SPELLINGS = [
    "http://169.254.1.1/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[::ffff:169.254.0.1]/",
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS + LINK_LOCAL_SPELLINGS)
def test_link_local_and_metadata_refused_in_every_spelling(url: str) -> None:
    """Every spelling of a link-local or metadata address is refused at submit time, naming url."""
    with pytest.raises(InvalidJob) as caught:
        GUARD.check(url)
    assert caught.value.field == "url"


@pytest.mark.parametrize("url", ["http://169.254.169.254/", "http://[fd00:ec2::254]/"])
def test_allow_link_local_switch_permits_them(url: str) -> None:
    """ALLOW_LINK_LOCAL=true lets metadata and link-local addresses through."""
    assert OPEN.check(url).host


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)", "ws://x/"],
)
def test_only_http_and_https(url: str) -> None:
    """Any scheme but http and https is refused."""
    with pytest.raises(URLRefused, match="scheme"):
        GUARD.check(url)


@pytest.mark.parametrize(
    "url",
    ["", "http:/nohost", "http://", "not a url", "http://%31%36%39.254.169.254/", "x" * 3000],
)
def test_malformed_urls_are_invalid(url: str) -> None:
    """Empty, hostless, percent-escaped-host and oversized URLs are invalid, naming url."""
    with pytest.raises(InvalidJob) as caught:
        GUARD.check(url)
    assert caught.value.field == "url"


def test_url_length_limit_is_exact() -> None:
    """A URL of exactly MAX_URL_LENGTH characters passes; one more is refused."""
    base = "http://example.com/"
    GUARD.check(base + "a" * (MAX_URL_LENGTH - len(base)))
    with pytest.raises(InvalidJob, match="longer than"):
        GUARD.check(base + "a" * (MAX_URL_LENGTH - len(base) + 1))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "https://example.com:8443/x?y=1",
        "http://127.0.0.1:8081/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://upstream:8081/page",
    ],
)
def test_ordinary_urls_pass(url: str) -> None:
    """Public, private and loopback addresses and plain names pass (only link-local is refused)."""
    assert GUARD.check(url).host


def test_allowed_hosts_is_an_exact_allow_list() -> None:
    """With ALLOWED_HOSTS set, only those hosts pass, case-insensitively, and no look-alikes."""
    guard = URLGuard(frozenset({"upstream", "example.com"}), allow_link_local=False)
    guard.check("http://upstream:8081/x")
    guard.check("https://EXAMPLE.com/")
    for url in ["http://evil.com/", "http://example.com.evil.com/", "http://127.0.0.1/"]:
        with pytest.raises(URLRefused, match="ALLOWED_HOSTS"):
            guard.check(url)


def test_settings_allowed_hosts_parsing() -> None:
    """ALLOWED_HOSTS is split on commas, trimmed and lower-cased; empty means no list."""
    settings = Settings.from_env({"ALLOWED_HOSTS": " Upstream, example.com ,,"})
    assert settings.allowed_host_set == {"upstream", "example.com"}
    assert Settings.from_env({}).allowed_host_set == frozenset()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2852039166", "169.254.169.254"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("10.0.0.1.", "10.0.0.1"),
        ("example.com", None),
        ("cafe.bad", None),
        ("1.2.3.4.5", None),
    ],
)
def test_literal_ip_reads_what_the_resolver_reads(host: str, expected: str | None) -> None:
    """literal_ip reads every numeric form inet_aton accepts, and nothing else."""
    ip = literal_ip(host)
    assert (str(ip) if ip is not None else None) == expected


def test_check_address_refuses_embedded_ipv4() -> None:
    """An IPv6 address carrying a link-local IPv4 address is refused like the IPv4 itself."""
    for text in ["::ffff:169.254.1.1", "64:ff9b::169.254.1.1", "2002:a9fe:0101::"]:
        with pytest.raises(URLRefused):
            check_address(ipaddress.ip_address(text), allow_link_local=False)
    check_address(ipaddress.ip_address("::1"), allow_link_local=False)
    check_address(ipaddress.ip_address("::"), allow_link_local=False)


def tripwire(touched: list[httpx.Request]) -> httpx.AsyncClient:
    """A client whose transport records, and fails, any request that reaches it."""

    def transport(request: httpx.Request) -> httpx.Response:
        touched.append(request)
        raise AssertionError("the guard let a request through")

    return httpx.AsyncClient(transport=httpx.MockTransport(transport))


async def test_fetcher_refuses_before_any_connection() -> None:
    """A refused job fails with `refused:` on its first attempt and never reaches the transport."""
    touched: list[httpx.Request] = []
    async with Fetcher(Settings.from_env({}), client=tripwire(touched)) as fetch:
        for url in METADATA_SPELLINGS[:8] + LINK_LOCAL_SPELLINGS:
            outcome = await fetch(Job(url=url), 1)
            assert outcome.status is Status.FAILED
            assert outcome.error is not None and outcome.error.startswith("refused:"), outcome
            assert not outcome.retryable
    assert touched == []


async def test_fetcher_resolves_names_and_refuses_any_bad_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name is refused at fetch time if ANY address it resolves to is refused; none is dialled."""
    answers = {
        "meta.test": ["169.254.169.254"],
        "mixed.test": ["127.0.0.1", "169.254.1.1"],
        "v6meta.test": ["fd00:ec2::254"],
    }

    async def fake_getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(0, 0, 0, "", (addr, port)) for addr in answers[host]]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    touched: list[httpx.Request] = []
    async with Fetcher(Settings.from_env({}), client=tripwire(touched)) as fetch:
        for host in answers:
            outcome = await fetch(Job(url=f"http://{host}/"), 1)
            assert outcome.error is not None and outcome.error.startswith("refused:"), outcome
    assert touched == []


async def test_fetcher_does_not_follow_redirects() -> None:
    """The fetcher's own client never follows redirects (a 3xx to a metadata URL stays a 3xx)."""
    async with Fetcher(Settings.from_env({}, workers=25)) as fetcher:
        assert len(fetcher.clients) == 3  # every one of them
        for client in fetcher.clients:
            assert client.follow_redirects is False
            assert client.trust_env is False  # no proxy from the environment either
