"""Which URLs the service will fetch: deny by default. Checked before any connection is opened.

URL rules: only ``http`` and ``https``; a host is required; no credentials (any ``user:pass@``,
even an empty ``@``, is refused: they would be logged, shown and sent on); a port, if given, is
1-65535; a host name is ASCII after IDNA encoding, with labels of 1-63 letters, digits, ``-`` or
``_`` (253 characters at most); anything that does not parse is ``InvalidJob`` naming ``url``,
never another exception.

Host rules (``ALLOWED_HOSTS``, parsed by ``pipeline.fetch.allowlist``): a host the list names (bare
``host``: its scheme's default port; ``host:port``; ``host:*``) is fetched even if its address is
internal. A non-empty list without ``*`` refuses every host it does not name. Otherwise (empty
list, or ``*``), any host whose every address is public is fetched.

Addresses refused unless a switch or the allow-list permits them (each check runs on the literal
host at submit time and on every resolved address at fetch time, and the fetch then connects to
the address that was checked: no second DNS lookup to rebind):

* cloud metadata — 169.254.169.254 (AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean),
  169.254.170.2 and 169.254.170.23 (AWS ECS/EKS credentials), fd00:ec2::254 and fd00:ec2::23
  (AWS IPv6), 100.100.100.200 (Alibaba Cloud). Only ``ALLOW_LINK_LOCAL=true`` permits them, even
  for a host on the allow-list.
* link-local — 169.254.0.0/16, fe80::/10. ``ALLOW_LINK_LOCAL`` or ``ALLOW_PRIVATE_NETWORKS``.
* internal — loopback 127.0.0.0/8 and ::1; private 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16
  (RFC 1918) and unique-local fc00::/7; shared address space (CGNAT) 100.64.0.0/10; deprecated
  site-local fec0::/10; local-use NAT64 64:ff9b:1::/48 (RFC 8215). ``ALLOW_PRIVATE_NETWORKS``.
* never routable to a server — unspecified 0.0.0.0/8 and ::; multicast 224.0.0.0/4 and ff00::/8;
  reserved 240.0.0.0/4 (with broadcast 255.255.255.255); IETF protocol assignments 192.0.0.0/24
  and 2001::/23; documentation 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32,
  3fff::/20; benchmarking 198.18.0.0/15 and 2001:2::/48; 6to4 relay anycast 192.88.99.0/24;
  discard-only 100::/64; SRv6 5f00::/16; every IPv6 address outside global unicast 2000::/3; and,
  as a last net, anything else ``ipaddress`` does not call global. Only a listed host gets these.

Every spelling is normalized first, as the resolver would read it: IPv4 in decimal, hex, octal or
short form (``http://2852039166/``, ``0x7f000001``, ``127.1``, ``0``), a trailing dot, and IPv4
carried in IPv6 — mapped ``::ffff:0:0/96``, compatible ``::/96``, SIIT ``::ffff:0:0:0/96``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32`` (server and client) — is judged by the
IPv4 it carries; in the local-use NAT64 prefix every RFC 6052 position is also checked for a
metadata address. ``localhost`` and ``*.localhost`` names are loopback (RFC 6761). A host with
percent-escapes is malformed. Redirects are never followed (the fetcher's client has
``follow_redirects=False``): a 3xx is the job's answer.

Refusal messages say what was refused (``address 10.0.0.1 is private``), never how the server is
configured.

Submit time is per job, and most jobs share a few origins: :meth:`URLGuard.verify` remembers, per
guard, the origins (``scheme://authority``, as written) it passed, in a small bounded cache, and
for a URL of printable ASCII whose origin passed it checks only the type and length. Every verdict
is a function of the origin alone for such a URL (the path, query and fragment of printable ASCII
cannot make httpx's parse fail); a refusal is never cached (each is judged afresh); the cache is
emptied when the guard's allow-list or switches are replaced. Nothing resolved is cached: DNS is
looked up at fetch time (:meth:`URLGuard.resolve`), every time.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import httpx

from pipeline.errors import InvalidJob, URLRefused
from pipeline.fetch.allowlist import (
    DEFAULT_PORTS,
    AllowList,
    IPAddress,
    literal_ip,
    parse_allowed_hosts,
)
from pipeline.jobs import MAX_URL_LENGTH

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["IPAddress", "URLGuard", "check_address", "embedded_ipv4", "literal_ip", "parse_url"]


class Kind(enum.Enum):
    """Why an address is not public, by which switch (if any) permits it."""

    METADATA = "metadata"  # ALLOW_LINK_LOCAL only
    LINK_LOCAL = "link-local"  # ALLOW_LINK_LOCAL or ALLOW_PRIVATE_NETWORKS
    INTERNAL = "internal"  # ALLOW_PRIVATE_NETWORKS
    UNROUTABLE = "unroutable"  # no switch: only a host on the allow-list


_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::254",
        "fd00:ec2::23",
        "100.100.100.200",
    )
)

_RANGES: list[tuple[str, str, Kind]] = [
    ("0.0.0.0/8", "unspecified", Kind.UNROUTABLE),
    ("10.0.0.0/8", "private", Kind.INTERNAL),
    ("100.64.0.0/10", "shared address space (CGNAT)", Kind.INTERNAL),
    ("127.0.0.0/8", "loopback", Kind.INTERNAL),
    ("169.254.0.0/16", "link-local", Kind.LINK_LOCAL),
    ("172.16.0.0/12", "private", Kind.INTERNAL),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)", Kind.UNROUTABLE),
    ("192.0.2.0/24", "reserved for documentation", Kind.UNROUTABLE),
    ("192.88.99.0/24", "reserved (6to4 relay anycast)", Kind.UNROUTABLE),
    ("192.168.0.0/16", "private", Kind.INTERNAL),
    ("198.18.0.0/15", "reserved for benchmarking", Kind.UNROUTABLE),
    ("198.51.100.0/24", "reserved for documentation", Kind.UNROUTABLE),
    ("203.0.113.0/24", "reserved for documentation", Kind.UNROUTABLE),
    ("224.0.0.0/4", "multicast", Kind.UNROUTABLE),
    ("240.0.0.0/4", "reserved", Kind.UNROUTABLE),
    ("::/128", "unspecified", Kind.UNROUTABLE),
    ("::1/128", "loopback", Kind.INTERNAL),
    ("64:ff9b:1::/48", "local-use NAT64", Kind.INTERNAL),
    ("100::/64", "reserved (discard-only)", Kind.UNROUTABLE),
    ("2001:2::/48", "reserved for benchmarking", Kind.UNROUTABLE),
    ("2001:db8::/32", "reserved for documentation", Kind.UNROUTABLE),
    ("2001::/23", "reserved (IETF protocol assignments)", Kind.UNROUTABLE),
    ("3fff::/20", "reserved for documentation", Kind.UNROUTABLE),
    ("5f00::/16", "reserved (SRv6)", Kind.UNROUTABLE),
    ("fc00::/7", "private (unique local)", Kind.INTERNAL),
    ("fe80::/10", "link-local", Kind.LINK_LOCAL),
    ("fec0::/10", "private (site-local)", Kind.INTERNAL),
    ("ff00::/8", "multicast", Kind.UNROUTABLE),
]
_NETWORKS = [(ipaddress.ip_network(net), what, kind) for net, what, kind in _RANGES]

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_TEREDO = ipaddress.ip_network("2001::/32")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_LOOPBACK = ipaddress.ip_address("127.0.0.1")

# a host name in ASCII: labels of letters, digits, '-' and '_' (seen in real names), 1-63 each
_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.IGNORECASE)
MAX_HOST_LENGTH = 253

# ``scheme://authority`` as httpx's URL_REGEX splits it (scheme, then everything up to / ? or #)
_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*")
ORIGIN_CACHE_SIZE = 1024  # origins a guard remembers as passed (oldest forgotten first)


def origin_of(url: str) -> str | None:
    """The ``scheme://authority`` prefix of a URL made of printable ASCII only, exactly as httpx and
    ``urlsplit`` split it; None for any other URL (it is then always checked in full). For such a
    URL, whether it parses, its scheme, host, port and userinfo — everything the guard and the flow
    key read — depend on this prefix alone."""
    if not (url.isascii() and url.isprintable()):
        return None
    m = _ORIGIN.match(url)
    return m.group() if m else None


def _own_kind(ip: IPAddress) -> tuple[Kind, str] | None:
    """Why ``ip`` itself (not what it carries) is not a public address; None if it is."""
    if ip in _METADATA:
        return Kind.METADATA, "a cloud metadata address"
    for network, what, kind in _NETWORKS:
        if ip.version == network.version and ip in network:
            return kind, what
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST:
        return Kind.UNROUTABLE, "reserved"
    if not ip.is_global:
        return Kind.UNROUTABLE, "not a public address"
    return None


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and is routed to (mapped, compatible, SIIT,
    NAT64, 6to4, Teredo server and client); empty if none."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED or ip in _SIIT or ip in _NAT64:
        return [low32]
    if ip in _COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return [low32]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip in _TEREDO and ip.teredo is not None:
        return list(ip.teredo)
    return []


def _nat64_local_candidates(ip: ipaddress.IPv6Address) -> Iterator[ipaddress.IPv4Address]:
    """Every IPv4 an address in 64:ff9b:1::/48 could carry (RFC 6052 prefix lengths 48-96)."""
    value = ip.packed
    yield ipaddress.IPv4Address(value[6:8] + value[9:11])  # /48 (octet 8 is the 'u' octet)
    yield ipaddress.IPv4Address(value[7:8] + value[9:12])  # /56
    yield ipaddress.IPv4Address(value[9:13])  # /64
    yield ipaddress.IPv4Address(value[12:16])  # /96


def _verdicts(ip: IPAddress) -> Iterator[tuple[Kind, str]]:
    """Every reason ``ip`` is not public, including those of the IPv4 it carries."""
    carried = embedded_ipv4(ip)
    for v4 in carried:
        own = _own_kind(v4)
        if own is not None:
            yield own[0], f"address {ip} carries IPv4 {v4}, which is {own[1]}"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL:
        for v4 in _nat64_local_candidates(ip):
            if v4 in _METADATA:
                yield Kind.METADATA, f"address {ip} carries {v4}, a cloud metadata address"
    if carried:
        return  # a translated address is judged by the IPv4 it carries
    own = _own_kind(ip)
    if own is not None:
        yield own[0], f"address {ip} is {own[1]}"


def _permitted(kind: Kind, *, allow_private_networks: bool, allow_link_local: bool) -> bool:
    if kind is Kind.METADATA:
        return allow_link_local
    if kind is Kind.LINK_LOCAL:
        return allow_link_local or allow_private_networks
    if kind is Kind.INTERNAL:
        return allow_private_networks
    return False


def check_address(
    ip: IPAddress,
    *,
    allow_private_networks: bool = False,
    allow_link_local: bool = False,
    listed: bool = False,
) -> None:
    """Raise URLRefused unless ``ip`` is public or a switch permits what it is. ``listed``: the
    host is on the allow-list, so only a metadata address (without ALLOW_LINK_LOCAL) is refused."""
    for kind, message in _verdicts(ip):
        if listed and kind is not Kind.METADATA:
            continue
        if not _permitted(
            kind, allow_private_networks=allow_private_networks, allow_link_local=allow_link_local
        ):
            raise URLRefused(message)


def _authority(url: str) -> str:
    """The raw authority of ``url`` (between ``//`` and the path), as a URL parser reads it."""
    _, sep, rest = url.partition("//")
    return re.split(r"[/?#]", rest, maxsplit=1)[0] if sep else ""


def parse_url(url: object) -> httpx.URL:
    """Parse and check the shape of a job URL; raises InvalidJob naming ``url`` (URLRefused for a
    scheme other than http/https), and no other exception, whatever the input."""
    if not isinstance(url, str) or not url:
        raise InvalidJob("url", "must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidJob("url", f"longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
        scheme, host, raw_host, port = parsed.scheme, parsed.host, parsed.raw_host, parsed.port
        has_userinfo = bool(parsed.userinfo) or "@" in _authority(url)
    except (httpx.InvalidURL, ValueError) as exc:  # idna's errors are ValueErrors (UnicodeError)
        raise InvalidJob("url", f"not a valid URL ({exc})") from None
    if scheme not in ("http", "https"):
        raise URLRefused(f"scheme {scheme!r} refused: only http and https")
    if has_userinfo:
        raise InvalidJob("url", "must not contain credentials (user:password@)")
    if not host:
        raise InvalidJob("url", "has no host")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidJob("url", "port must be 1-65535")
    if literal_ip(host) is None:
        _check_host_name(raw_host)
    return parsed


def _check_host_name(raw_host: bytes) -> None:
    try:
        name = raw_host.decode("ascii").rstrip(".")
    except UnicodeDecodeError:
        raise InvalidJob("url", "host is not a valid name") from None
    if "%" in name:
        raise InvalidJob("url", "host has percent-escapes")
    if len(name) > MAX_HOST_LENGTH or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise InvalidJob("url", "host is not a valid name")


def ascii_host(url: httpx.URL) -> str:
    """The host as resolvers and the allow-list see it: ASCII (IDNA), lower case."""
    return url.raw_host.decode("ascii").lower()


def _is_localhost(host: str) -> bool:
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


class URLGuard:
    """Applies the rules of this module with one allow-list and two switches."""

    def __init__(
        self,
        allowed_hosts: AllowList | Iterable[str] = (),
        *,
        allow_private_networks: bool = False,
        allow_link_local: bool = False,
    ) -> None:
        if isinstance(allowed_hosts, AllowList):
            self.allowed = allowed_hosts
        else:
            self.allowed = parse_allowed_hosts(",".join(allowed_hosts))
        self.allow_private_networks = allow_private_networks
        self.allow_link_local = allow_link_local
        self._passed: dict[str, None] = {}  # origins verify() passed, oldest first
        self._passed_for: tuple[AllowList, bool, bool] = self._config()

    def _config(self) -> tuple[AllowList, bool, bool]:
        return self.allowed, self.allow_private_networks, self.allow_link_local

    @classmethod
    def from_settings(cls, settings: Settings) -> URLGuard:
        """The guard ``settings`` describe (ALLOWED_HOSTS, ALLOW_PRIVATE_NETWORKS,
        ALLOW_LINK_LOCAL)."""
        return cls(
            settings.allow_list,
            allow_private_networks=settings.allow_private_networks,
            allow_link_local=settings.allow_link_local,
        )

    def _check(self, ip: IPAddress, *, listed: bool) -> None:
        check_address(
            ip,
            allow_private_networks=self.allow_private_networks,
            allow_link_local=self.allow_link_local,
            listed=listed,
        )

    def _listed(self, url: httpx.URL) -> bool:
        """Whether the allow-list names this host and port; URLRefused if it must and does not."""
        host = ascii_host(url)
        if self.allowed.permits(host, url.scheme, url.port):
            return True
        if self.allowed.restricts:
            port = url.port or DEFAULT_PORTS.get(url.scheme)
            raise URLRefused(f"host {host!r} on port {port} is not allowed")
        return False

    def check(self, url: object) -> httpx.URL:
        """Submit-time check: shape, scheme, allow-list, literal addresses. No DNS."""
        parsed = parse_url(url)
        listed = self._listed(parsed)
        host = ascii_host(parsed)
        ip = literal_ip(host)
        if ip is None and _is_localhost(host):
            ip = _LOOPBACK
        if ip is not None:
            self._check(ip, listed=listed)
        return parsed

    def verify(self, url: object) -> None:
        """Submit-time check, as :meth:`check` (same exceptions, same verdicts) without returning
        the parsed URL, and cheap for an origin already passed (see the module's doc)."""
        if isinstance(url, str) and 0 < len(url) <= MAX_URL_LENGTH:
            origin = origin_of(url)
            if origin is not None:
                passed = self._passed
                config = self._passed_for
                if (
                    config[0] is not self.allowed
                    or config[1] != self.allow_private_networks
                    or config[2] != self.allow_link_local
                ):
                    passed.clear()
                    self._passed_for = self._config()
                elif origin in passed:
                    return
                self.check(url)  # raises: nothing is remembered
                if len(passed) >= ORIGIN_CACHE_SIZE:
                    del passed[next(iter(passed))]
                passed[origin] = None
                return
        self.check(url)

    async def resolve(self, url: httpx.URL) -> IPAddress:
        """Fetch-time check: resolve the host, refuse if ANY address is refused, return one."""
        listed = self._listed(url)
        host = ascii_host(url)
        ip = literal_ip(host)
        if ip is not None:
            self._check(ip, listed=listed)
            return ip
        loop = asyncio.get_running_loop()
        port = url.port or DEFAULT_PORTS.get(url.scheme, 80)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError as exc:  # a name the resolver's codec refuses: no address
            raise OSError(f"cannot resolve {host}: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            try:
                self._check(address, listed=listed)
            except URLRefused as exc:
                what = exc.message.removeprefix("address ")
                raise URLRefused(f"{host} resolves to {what}") from None
        if not addresses:
            raise OSError(f"no address for {host}")
        return min(addresses, key=lambda a: a.version)  # IPv4 first, as most servers listen there
