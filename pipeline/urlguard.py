"""Which URLs the service will fetch. Checked before any connection is opened.

Rules: only ``http`` and ``https``; a host is required; when ``ALLOWED_HOSTS`` is set, the host must
be in it; link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata addresses
(169.254.169.254, fd00:ec2::254) are refused unless ``ALLOW_LINK_LOCAL=true``. The address check
runs on the literal host at submit time and on every resolved address at fetch time, and the fetch
then connects to the address that was checked (no second DNS lookup to rebind).
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from pipeline.errors import InvalidJob, URLRefused
from pipeline.jobs import MAX_URL_LENGTH

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

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
    return parsed


def check_address(ip: IPAddress, *, allow_link_local: bool) -> None:
    """Refuse link-local and metadata addresses unless explicitly allowed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_link_local:
        return
    if ip in _METADATA:
        raise URLRefused(f"address {ip} is a cloud metadata endpoint (set ALLOW_LINK_LOCAL=true)")
    if ip.is_link_local:
        raise URLRefused(f"address {ip} is link-local (set ALLOW_LINK_LOCAL=true)")


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
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
