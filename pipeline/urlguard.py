"""Which URLs the service will fetch. Checked before any connection is opened.

Rules: only ``http`` and ``https``; a host is required; when ``ALLOWED_HOSTS`` is set, the host must
be in it; link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata addresses
(169.254.169.254, fd00:ec2::254) are refused unless ``ALLOW_LINK_LOCAL=true``. The address check
runs on the literal host at submit time and on every resolved address at fetch time, and the fetch
then connects to the address that was checked (no second DNS lookup to rebind). Redirects are never
followed (the fetcher's client has ``follow_redirects=False``): a 3xx is the job's answer.

Spellings of an address are normalized before the check, as the resolver would read them: IPv4 in
decimal, hex, octal or short form (``http://2852039166/``, ``0xA9FEA9FE``, ``169.254.43518``), a
trailing dot, and IPv4 carried inside IPv6 (``::ffff:a.b.c.d``, ``::a.b.c.d``, NAT64 ``64:ff9b::/96``,
6to4 ``2002::/16``). A host with percent-escapes is refused as malformed.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import httpx

from pipeline.errors import InvalidJob, URLRefused
from pipeline.jobs import MAX_URL_LENGTH

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# what inet_aton (and so getaddrinfo) reads as IPv4: 1-4 parts, each decimal, 0x-hex or 0-octal
_INET_ATON = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_url(url: object) -> httpx.URL:
    """Parse and check the shape of a job URL; raises InvalidJob naming ``url``."""
    if not isinstance(url, str) or not url:
        raise InvalidJob("url", "must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidJob("url", f"longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidJob("url", f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise URLRefused(f"scheme {parsed.scheme!r} refused: only http and https")
    if not parsed.host:
        raise InvalidJob("url", "has no host")
    if "%" in parsed.host and literal_ip(parsed.host) is None:
        raise InvalidJob("url", "host has percent-escapes")
    return parsed


def check_address(ip: IPAddress, *, allow_link_local: bool) -> None:
    """Refuse link-local and metadata addresses unless explicitly allowed."""
    if allow_link_local:
        return
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        check_address(embedded, allow_link_local=allow_link_local)
    if ip in _METADATA:
        raise URLRefused(f"address {ip} is a cloud metadata endpoint (set ALLOW_LINK_LOCAL=true)")
    if ip.is_link_local:
        raise URLRefused(f"address {ip} is link-local (set ALLOW_LINK_LOCAL=true)")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the system resolver accepts; None for a name."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _INET_ATON.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


class URLGuard:
    """Applies the rules of this module with one ``Settings``' allow-list and switch."""

    def __init__(self, allowed_hosts: frozenset[str], *, allow_link_local: bool) -> None:
        self.allowed_hosts = allowed_hosts
        self.allow_link_local = allow_link_local

    def check(self, url: object) -> httpx.URL:
        """Submit-time check: shape, scheme, allow-list, literal addresses. No DNS."""
        parsed = parse_url(url)
        host = parsed.host.lower()
        if self.allowed_hosts and host not in self.allowed_hosts:
            raise URLRefused(f"host {host!r} is not in ALLOWED_HOSTS")
        ip = literal_ip(host)
        if ip is not None:
            check_address(ip, allow_link_local=self.allow_link_local)
        return parsed

    async def resolve(self, url: httpx.URL) -> IPAddress:
        """Fetch-time check: resolve the host, refuse if ANY address is refused, return one."""
        import asyncio

        ip = literal_ip(url.host)
        if ip is not None:
            check_address(ip, allow_link_local=self.allow_link_local)
            return ip
        loop = asyncio.get_running_loop()
        port = url.port or (443 if url.scheme == "https" else 80)
        infos = await loop.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            check_address(address, allow_link_local=self.allow_link_local)
        if not addresses:
            raise OSError(f"no address for {url.host}")
        return min(addresses, key=lambda a: a.version)  # IPv4 first, as most servers listen there
