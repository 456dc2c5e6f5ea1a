"""The URL guard, unit by unit: which URLs are refused, and that the check needs no connection.

No test here opens a connection to a refused address: the guard is called directly; the fetch
tests either use an ``httpx.MockTransport`` that fails if anything reaches it, or the real
transport (aiohttp, with the guard as its resolver) with the loop's ``sock_connect`` wrapped to
record every address dialled and refuse, unsent, any it was not told to allow
(``tests/support/local_servers.py``); names resolve through a scripted ``getaddrinfo``. The end-to-end
checks through the API, inside a network namespace with only loopback, are in
``test_guard_netns.py``; random inputs are in ``test_guard_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl

import httpx
import pytest
import trustme
import yarl

from pipeline.errors import InvalidJob, SettingsError, URLRefused
from pipeline.fetch.handler import Fetcher, _same_host
from pipeline.fetch.urlguard import URLGuard, check_address, literal_ip
from pipeline.jobs import MAX_URL_LENGTH, Job, Status
from pipeline.settings import Settings
from tests.support.local_servers import Dials, Lookups, ok, redirect, serve

GUARD = URLGuard()
OPEN = URLGuard(allow_link_local=True)
PRIVATE_OK = URLGuard(allow_private_networks=True)

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254/",
    "HTTP://169.254.169.254:80/",
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
    "http://[::ffff:0:a9fe:a9fe]/",  # SIIT (IPv4-translated)
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64, well-known prefix
    "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64, local-use prefix (RFC 8215), /96 position
    "http://[64:ff9b:1:a9fe:a9:fea9:fe00:0]/",  # local-use prefix, RFC 6052 /48 position
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
    "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",  # Teredo, client 169.254.169.254 (xor'd)
    "http://100.100.100.200/",  # Alibaba Cloud metadata
    "http://[::ffff:100.100.100.200]/",
    "http://169.254.170.2/v2/credentials",  # AWS ECS task credentials
]
LINK_LOCAL_SPELLINGS = [
    "http://169.254.1.1/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[::ffff:169.254.0.1]/",
]
INTERNAL_SPELLINGS = [
    "http://127.0.0.1:6379/",  # a Redis port on loopback
    "http://127.0.0.1:8000/jobs",  # the service itself
    "http://0x7f000001:8000/",
    "http://2130706433/",
    "http://127.1/",
    "http://localhost:6379/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://10.0.0.1/",
    "http://10.1.2.3:8080/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://[::ffff:192.168.1.1]/",
    "http://[fd00::1]/",
    "http://[fc00::1]/",
    "http://[fec0::1]/",  # site-local
    "http://100.64.0.1/",  # CGNAT
    "http://100.127.255.254/",
    "http://[64:ff9b:1::1]/",  # local-use NAT64
]
NEVER_ROUTABLE_SPELLINGS = [
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.0.8/",
    "http://192.0.2.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://198.18.0.1/",
    "http://198.19.255.1/",
    "http://[2001:db8::1]/",
    "http://[2001:2::1]/",
    "http://[100::1]/",
    "http://[4000::1]/",
]
PUBLIC_URLS = [
    "http://93.184.216.34/",
    "https://93.184.216.34:8443/x?y=1",
    "http://[2606:4700::1111]/",
    "http://[2606:4700:4700::1111]:8080/",
    "http://[::ffff:93.184.216.34]/",  # a public IPv4, mapped
    "http://[64:ff9b::5db8:d822]/",  # a public IPv4 behind NAT64
    "http://[2002:5db8:d822::1]/",  # 6to4 of a public IPv4
    "http://example.com/",
    "https://example.com:8443/x?y=1",
    "http://bücher.de/",  # IDNA
    "http://upstream:8081/page",  # a name: its addresses are checked at fetch time
    "http://under_score.example/",
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS + LINK_LOCAL_SPELLINGS)
def test_link_local_and_metadata_refused_in_every_spelling(url: str) -> None:
    """Every spelling of a link-local or metadata address is refused at submit time, naming url."""
    with pytest.raises(InvalidJob) as caught:
        GUARD.check(url)
    assert caught.value.field == "url"


@pytest.mark.parametrize("url", INTERNAL_SPELLINGS + NEVER_ROUTABLE_SPELLINGS)
def test_internal_addresses_refused_by_default_in_every_spelling(url: str) -> None:
    """Loopback, private, CGNAT, unspecified, multicast and reserved addresses are refused by
    default, however they are spelled, with a message saying what the address is."""
    with pytest.raises(URLRefused) as caught:
        GUARD.check(url)
    assert caught.value.message.startswith("address "), caught.value.message
    assert "ALLOW" not in caught.value.message  # says what was refused, not how to configure


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_public_addresses_and_names_pass(url: str) -> None:
    """Public addresses (also carried in IPv6) and plain names pass the submit-time check."""
    assert GUARD.check(url).host


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("http://127.0.0.1:6379/", "address 127.0.0.1 is loopback"),
        ("http://100.64.0.1/", "address 100.64.0.1 is shared address space (CGNAT)"),
        ("http://169.254.169.254/", "address 169.254.169.254 is a cloud metadata address"),
        ("http://[::ffff:10.0.0.1]/", "carries IPv4 10.0.0.1, which is private"),
    ],
)
def test_refusal_says_what_the_address_is(url: str, says: str) -> None:
    """The refusal names the address and what kind it is."""
    with pytest.raises(URLRefused, match=re.escape(says)):
        GUARD.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:s3cr3t@example.com/x",
        "http://user@example.com/",
        "http://:@example.com/",
        "http://@example.com/",
        "https://user:pw@93.184.216.34/",
        "http://user:pw@169.254.169.254/",
        "http://a@b@example.com/",
    ],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    """Any userinfo, even an empty one, is InvalidJob naming url: credentials are never stored."""
    with pytest.raises(InvalidJob, match="credentials") as caught:
        GUARD.check(url)
    assert caught.value.field == "url"


@pytest.mark.parametrize("url", ["http://xn--a/", "http://xn--/", "http://xn--zz-/", "http://h:0/"])
def test_bad_idna_and_ports_are_invalid_not_errors(url: str) -> None:
    """Hosts IDNA cannot decode and out-of-range ports are InvalidJob naming url."""
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


@pytest.mark.parametrize("url", INTERNAL_SPELLINGS + LINK_LOCAL_SPELLINGS)
def test_allow_private_networks_permits_internal_ranges(url: str) -> None:
    """ALLOW_PRIVATE_NETWORKS=true lets loopback, private, CGNAT and link-local addresses through."""
    assert PRIVATE_OK.check(url).host


@pytest.mark.parametrize("url", METADATA_SPELLINGS + NEVER_ROUTABLE_SPELLINGS)
def test_allow_private_networks_still_refuses_metadata_and_unroutable(url: str) -> None:
    """ALLOW_PRIVATE_NETWORKS=true never opens metadata, multicast or reserved addresses."""
    with pytest.raises(InvalidJob):
        PRIVATE_OK.check(url)


def test_bare_host_entry_means_the_default_port_only() -> None:
    """`host` permits that host on its scheme's default port (80/443) and no other port."""
    guard = URLGuard(["localhost", "example.com"])
    guard.check("http://localhost/x")
    guard.check("http://localhost:80/x")
    guard.check("https://localhost/x")
    guard.check("https://EXAMPLE.com/")
    for url in ["http://localhost:8000/", "http://localhost:6379/", "http://localhost:443/"]:
        with pytest.raises(URLRefused, match="not allowed"):
            guard.check(url)


def test_host_port_and_host_star_entries() -> None:
    """`host:port` permits exactly that port; `host:*` any port; IPv6 entries go in brackets."""
    guard = URLGuard(["127.0.0.1:8081", "upstream:*", "[::1]:9000"])
    guard.check("http://127.0.0.1:8081/x")
    guard.check("http://127.1:8081/x")  # the same address, spelled otherwise
    guard.check("http://upstream:1/")
    guard.check("http://upstream:65535/")
    guard.check("http://[::1]:9000/")
    for url in ["http://127.0.0.1:8082/", "http://127.0.0.1/", "http://[::1]:9001/"]:
        with pytest.raises(URLRefused):
            guard.check(url)


def test_a_list_without_star_refuses_every_other_host() -> None:
    """With ALLOWED_HOSTS set, only those hosts pass, case-insensitively, and no look-alikes."""
    guard = URLGuard(["upstream:8081", "example.com"])
    guard.check("http://upstream:8081/x")
    guard.check("https://EXAMPLE.com./")
    for url in ["http://evil.com/", "http://example.com.evil.com/", "http://93.184.216.34/"]:
        with pytest.raises(URLRefused, match="not allowed"):
            guard.check(url)


def test_star_entry_adds_any_public_host() -> None:
    """`*` beside listed hosts permits any public host too, but still no internal address."""
    guard = URLGuard(["127.0.0.1:8081", "*"])
    guard.check("http://127.0.0.1:8081/")
    guard.check("http://example.com:1234/")
    guard.check("http://93.184.216.34/")
    for url in ["http://127.0.0.1:8082/", "http://10.0.0.1/", "http://169.254.169.254/"]:
        with pytest.raises(URLRefused):
            guard.check(url)


def test_listed_metadata_address_still_needs_allow_link_local() -> None:
    """Naming a metadata address in ALLOWED_HOSTS is not enough: only ALLOW_LINK_LOCAL opens it."""
    with pytest.raises(URLRefused, match="metadata"):
        URLGuard(["169.254.169.254"]).check("http://169.254.169.254/")
    assert URLGuard(["169.254.169.254"], allow_link_local=True).check("http://169.254.169.254/")


def test_settings_allowed_hosts_parsing() -> None:
    """ALLOWED_HOSTS is split on commas, trimmed and lower-cased; empty means any public host."""
    allow = Settings.from_env(
        {"ALLOWED_HOSTS": " Upstream:8081, example.com ,,[::1]:*,*"}
    ).allow_list
    assert allow.entries == {
        "upstream": frozenset({8081}),
        "example.com": frozenset({0}),
        "::1": frozenset({-1}),
    }
    assert allow.any_public and not allow.restricts
    empty = Settings.from_env({}).allow_list
    assert empty.entries == {} and not empty.restricts


@pytest.mark.parametrize(
    "value", ["host:0", "host:99999", "host:x", "::1", "[::1", "[x]:80", "a/b"]
)
def test_invalid_allowed_hosts_entry_fails_at_start_up(value: str) -> None:
    """A malformed ALLOWED_HOSTS entry is a one-line SettingsError naming ALLOWED_HOSTS."""
    with pytest.raises(SettingsError, match="ALLOWED_HOSTS") as caught:
        Settings.from_env({"ALLOWED_HOSTS": value})
    assert "\n" not in str(caught.value)


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
    """An IPv6 address carrying a refused IPv4 address is refused like the IPv4 itself."""
    for text in [
        "::ffff:169.254.1.1",
        "64:ff9b::169.254.1.1",
        "2002:a9fe:0101::",
        "::ffff:10.0.0.1",
    ]:
        with pytest.raises(URLRefused):
            check_address(ipaddress.ip_address(text))
    for text in ["::ffff:169.254.169.254", "64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::"]:
        with pytest.raises(URLRefused, match="metadata"):
            check_address(ipaddress.ip_address(text), allow_private_networks=True)
    check_address(ipaddress.ip_address("::1"), allow_private_networks=True)
    check_address(ipaddress.ip_address("2606:4700::1111"))


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
        for url in METADATA_SPELLINGS + LINK_LOCAL_SPELLINGS + INTERNAL_SPELLINGS:
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
        "mixed.test": ["93.184.216.34", "169.254.1.1"],
        "v6meta.test": ["fd00:ec2::254"],
        "loopback.test": ["127.0.0.1"],
        "private.test": ["93.184.216.34", "10.0.0.7"],
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


async def test_listed_name_resolving_internal_is_fetched_but_metadata_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host on ALLOWED_HOSTS is fetched even though it resolves to a private address (compose's
    `upstream`); metadata stays refused. (That the connection then goes to the checked address is
    test_connection_goes_to_the_checked_address_though_the_name_rebinds, through the real
    transport.)"""
    answers = {"upstream.test": ["10.0.0.5"], "meta.test": ["169.254.169.254"]}

    async def fake_getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(0, 0, 0, "", (addr, port)) for addr in answers[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    settings = Settings.from_env({}, allowed_hosts="upstream.test:8081,meta.test:*")
    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    async with Fetcher(settings, client=client) as fetch:
        ok = await fetch(Job(url="http://upstream.test:8081/x"), 1)
        refused = await fetch(Job(url="http://meta.test:8081/x"), 1)
    assert ok.status is Status.DONE, ok
    assert [r.url.host for r in seen] == ["upstream.test"]
    assert refused.error is not None and "metadata" in refused.error, refused


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
        async with Fetcher(Settings.from_env({}, allowed_hosts="rebind.test:*")) as fetch:
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
        settings = Settings.from_env(
            {}, allowed_hosts=",".join(f"{h}:*" for h in [*spellings, "127.0.0.1"])
        )
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
    monkeypatch.setattr(
        "pipeline.fetch.handler.yarl.URL", lambda s: real(s).with_host("169.254.169.254")
    )
    with pytest.raises(URLRefused, match="parses as"):
        _same_host(httpx.URL("http://example.com/"))


async def test_redirect_to_metadata_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 302 to the metadata address is the job's answer; only the first server is dialled."""
    async with serve(redirect("http://169.254.169.254/latest/meta-data/")) as (port, _):
        dials = Dials(monkeypatch)
        async with Fetcher(Settings.from_env({}, allowed_hosts="127.0.0.1:*")) as fetch:
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
        settings = Settings.from_env({}, allowed_hosts="good.test:*,other.test:*")
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
