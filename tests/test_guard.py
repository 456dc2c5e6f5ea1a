"""The URL guard, unit by unit: which URLs are refused, and that the check needs no connection.

No test here opens a connection to a refused address: the guard is called directly; the fetch
tests either use an ``httpx.MockTransport`` that fails if anything reaches it, or the real
transport (aiohttp, with the guard as its resolver) with the loop's ``sock_connect`` wrapped to
record every address dialled and refuse, unsent, any it was not told to allow
(``tests/local_servers.py``); names resolve through a scripted ``getaddrinfo``. The end-to-end
checks through the API, inside a network namespace with only loopback, are in
``test_guard_netns.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

import httpx
import pytest
import trustme
import yarl

from pipeline.errors import InvalidJob, URLRefused
from pipeline.handler import Fetcher, _same_host
from pipeline.jobs import MAX_URL_LENGTH, Job, Status
from pipeline.settings import Settings
from pipeline.urlguard import URLGuard, check_address, literal_ip
from tests.local_servers import Dials, Lookups, ok, redirect, serve

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


# --- the guard inside the real transport (aiohttp): resolver, pinning, literals, TLS -----------


async def test_resolver_refuses_a_bad_name_before_any_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real transport, a name with ANY refused address fails `refused:` on attempt 1,
    unretried, and nothing is dialled."""
    lookups = Lookups(
        monkeypatch,
        {
            "meta.test": [["169.254.169.254"]],
            "mixed.test": [["127.0.0.1", "169.254.1.1"]],
            "v6meta.test": [["fd00:ec2::254"]],
            "linklocal.test": [["169.254.7.7"]],
        },
    )
    dials = Dials(monkeypatch, allowed=[])
    async with Fetcher(Settings.from_env({})) as fetch:
        for host in lookups.answers:
            outcome = await fetch(Job(url=f"http://{host}:8080/x"), 1)
            assert outcome.error is not None and outcome.error.startswith("refused:"), outcome
            assert not outcome.retryable
            assert lookups.count(host) == 1
    assert dials.addresses == []


async def test_literal_refused_addresses_never_dialled(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp dials an IP literal without asking the resolver; the fetcher's own check refuses
    every refused spelling first, so nothing is dialled."""
    dials = Dials(monkeypatch, allowed=[])
    parsable = [u for u in METADATA_SPELLINGS if "0251." not in u]  # httpx refuses octal parts
    async with Fetcher(Settings.from_env({})) as fetch:
        for url in parsable + LINK_LOCAL_SPELLINGS:
            outcome = await fetch(Job(url=url), 1)
            assert outcome.error is not None and outcome.error.startswith("refused:"), outcome
    assert dials.addresses == []


async def test_connection_goes_to_the_checked_address_though_the_name_rebinds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One lookup per connection, and the connection goes to the address it returned: a name that
    answers 127.0.0.1 and then the metadata address reaches 127.0.0.1; the next connection asks
    again and is refused, undialled."""
    async with serve(ok(b"checked")) as (port, seen):
        lookups = Lookups(monkeypatch, {"rebind.test": [["127.0.0.1"], ["169.254.169.254"]]})
        dials = Dials(monkeypatch)
        async with Fetcher(Settings.from_env({}, allowed_hosts="rebind.test")) as fetch:
            first = await fetch(Job(url=f"http://rebind.test:{port}/a"), 1)
            assert first.ok and first.body == b"checked", first
            assert lookups.count("rebind.test") == 1  # no second lookup for that connection
            assert dials.addresses == [("127.0.0.1", port)]
            # the server closed that connection: the next fetch dials anew, resolving again
            second = await fetch(Job(url=f"http://rebind.test:{port}/b"), 1)
    assert second.error is not None and second.error.startswith("refused:"), second
    assert lookups.count("rebind.test") == 2
    assert dials.addresses == [("127.0.0.1", port)]
    assert seen.connections == 1
    assert b"host: rebind.test:%d" % port in seen.heads[0].lower()  # the name, not the address


async def test_other_spellings_of_an_address_dial_that_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2130706433, 0x7f.1 and 127.0.0.1. are fetched at 127.0.0.1 (the address the guard read),
    with the URL's own host in the Host header."""
    spellings = ["2130706433", "0x7f.1", "127.1", "127.0.0.1."]
    async with serve(ok()) as (port, seen):
        dials = Dials(monkeypatch)
        settings = Settings.from_env({}, allowed_hosts=",".join([*spellings, "127.0.0.1"]))
        async with Fetcher(settings) as fetch:
            for host in spellings:
                outcome = await fetch(Job(url=f"http://{host}:{port}/"), 1)
                assert outcome.ok, (host, outcome)
    assert dials.addresses == [("127.0.0.1", port)] * len(spellings)
    assert [h.lower().split(b"\r\n")[1] for h in seen.heads] == [
        b"host: %s:%d" % (h.encode(), port) for h in spellings
    ]


def test_same_host_accepts_one_host_in_both_parsers() -> None:
    """httpx and aiohttp (yarl) read the same host from ordinary, IDNA and IPv6 URLs."""
    for url in [
        "http://EXAMPLE.com/",
        "http://bücher.example/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",  # yarl writes ::ffff:7f00:1: the same address
        "http://a.b./",
    ]:
        _same_host(httpx.URL(url))


def test_same_host_refuses_a_parser_differential(monkeypatch: pytest.MonkeyPatch) -> None:
    """If aiohttp would read another host than the guard checked, the request is refused."""
    real = yarl.URL
    monkeypatch.setattr("pipeline.handler.yarl.URL", lambda s: real(s).with_host("169.254.169.254"))
    with pytest.raises(URLRefused, match="parses as"):
        _same_host(httpx.URL("http://example.com/"))


async def test_redirect_to_metadata_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 302 to the metadata address is the job's answer; only the first server is dialled."""
    async with serve(redirect("http://169.254.169.254/latest/meta-data/")) as (port, _):
        dials = Dials(monkeypatch)
        async with Fetcher(Settings.from_env({}, allowed_hosts="127.0.0.1")) as fetch:
            outcome = await fetch(Job(url=f"http://127.0.0.1:{port}/go"), 1)
    assert outcome.ok and outcome.http_status == 302
    assert dials.addresses == [("127.0.0.1", port)]


def test_tls_context_verifies_certificates_and_host_names() -> None:
    """The fetcher's TLS context requires a valid certificate chain and checks the host name."""
    fetcher = Fetcher(Settings.from_env({}, workers=25))
    assert fetcher.tls.verify_mode is ssl.CERT_REQUIRED
    assert fetcher.tls.check_hostname is True
    assert fetcher.tls.get_ca_certs() or fetcher.tls.cert_store_stats()["x509_ca"] > 0


@pytest.fixture
def tls_server_context() -> tuple[trustme.CA, ssl.SSLContext]:
    """A test CA and a server context holding its certificate for good.test only."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("good.test").configure_cert(server)
    return ca, server


async def test_tls_verified_against_the_host_name(
    monkeypatch: pytest.MonkeyPatch, tls_server_context: tuple[trustme.CA, ssl.SSLContext]
) -> None:
    """https://good.test (resolved to 127.0.0.1) is fetched with SNI good.test and its certificate
    verified; other.test on the same address and certificate fails the host-name check; and an
    untrusted CA fails the chain check. Neither failure reaches the server's HTTP handler."""
    ca, server_tls = tls_server_context
    async with serve(ok(b"secure"), tls=server_tls) as (port, seen):
        Lookups(monkeypatch, {"good.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        settings = Settings.from_env({}, allowed_hosts="good.test,other.test")
        async with Fetcher(settings) as fetch:
            ca.configure_trust(fetch.tls)
            good = await fetch(Job(url=f"https://good.test:{port}/"), 1)
            wrong_name = await fetch(Job(url=f"https://other.test:{port}/"), 1)
        async with Fetcher(settings) as untrusting:
            untrusted = await untrusting(Job(url=f"https://good.test:{port}/"), 1)
    assert good.ok and good.body == b"secure", good
    assert seen.server_names == ["good.test", "other.test", "good.test"]
    assert wrong_name.error is not None and wrong_name.error.startswith("network: ConnectError")
    assert "certificate" in wrong_name.error.lower() and "other.test" in wrong_name.error
    assert untrusted.error is not None and "certificate verify failed" in untrusted.error
    assert len(seen.heads) == 1  # only the good fetch got as far as HTTP
