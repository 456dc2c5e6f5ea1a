"""``ALLOWED_HOSTS``: which hosts (and ports) the service may fetch, parsed once.

Entries are comma-separated; each is one of

* ``host``        that host on its scheme's default port only (80 for http, 443 for https);
* ``host:port``   that host on exactly that port;
* ``host:*``      that host on any port;
* ``*``           any *public* host, on any port, besides the hosts listed.

IPv6 literals go in brackets (``[fd00::1]:8080``). Host names match exactly, case-insensitively,
without a trailing dot and in their ASCII (IDNA) form; an IP literal matches the same address in
any spelling (``127.0.0.1`` also matches ``127.1`` or ``0x7f000001``).

What must be true: an empty list means "any public host"; a non-empty list without ``*`` means
"only the hosts listed"; a host listed is permitted even when its address is internal (loopback,
private, ...): naming it is how an operator lets the service reach its own upstream. Cloud
metadata addresses are the exception, handled by the guard (``pipeline.fetch.urlguard``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

import httpx

ANY_PORT = -1  # ``host:*``
DEFAULT_PORT = 0  # bare ``host``: the scheme's default port
DEFAULT_PORTS = {"http": 80, "https": 443}

_PORT = re.compile(r"[0-9]{1,5}")
# what inet_aton (and so getaddrinfo) reads as IPv4: 1-4 parts, each decimal, 0x-hex or 0-octal
_INET_ATON = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def host_key(host: str) -> str:
    """The form hosts are compared in: an IP literal's canonical address, else the name lowered
    without its trailing dot (callers pass names in their ASCII/IDNA form)."""
    ip = literal_ip(host)
    if ip is not None:
        return str(ip)
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class AllowList:
    """The parsed ``ALLOWED_HOSTS``: ``entries`` maps a host key to the ports allowed for it
    (``DEFAULT_PORT``, ``ANY_PORT`` or port numbers); ``any_public`` is the ``*`` entry."""

    entries: dict[str, frozenset[int]]
    any_public: bool = False

    @property
    def restricts(self) -> bool:
        """Whether hosts not listed are refused (a non-empty list without ``*``)."""
        return bool(self.entries) and not self.any_public

    def permits(self, host: str, scheme: str, port: int | None) -> bool:
        """Whether ``host`` (ASCII form) on ``port`` (None: the scheme's default) is listed."""
        ports = self.entries.get(host_key(host))
        if ports is None:
            return False
        default = DEFAULT_PORTS.get(scheme)
        actual = default if port is None else port
        if ANY_PORT in ports or actual in ports:
            return True
        return DEFAULT_PORT in ports and actual == default


def parse_allowed_hosts(text: str) -> AllowList:
    """Parse ``ALLOWED_HOSTS``; raises ValueError (one line, naming the bad entry)."""
    entries: dict[str, set[int]] = {}
    any_public = False
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == "*":
            any_public = True
            continue
        host, port = _split(entry)
        entries.setdefault(host_key(host), set()).add(port)
    return AllowList({h: frozenset(p) for h, p in entries.items()}, any_public)


def _split(entry: str) -> tuple[str, int]:
    """``host[:port|:*]`` → (host, port code); IPv6 literals in brackets."""
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValueError(f"entry {entry!r}: an IPv6 address needs a closing ']'")
        host, rest = entry[1:close], entry[close + 1 :]
        if not isinstance(literal_ip(host), ipaddress.IPv6Address):
            raise ValueError(f"entry {entry!r}: not an IPv6 address in brackets")
        if rest and not rest.startswith(":"):
            raise ValueError(f"entry {entry!r}: expected ':port' after ']'")
        port = rest[1:] if rest else None
    else:
        if entry.count(":") > 1:
            raise ValueError(f"entry {entry!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
        host, _, port_text = entry.partition(":")
        port = port_text if ":" in entry else None
    if not host or any(c in host for c in "/?#@ "):
        raise ValueError(f"entry {entry!r}: expected host, host:port or host:*")
    return _ascii(entry, host), _port(entry, port)


def _ascii(entry: str, host: str) -> str:
    """A host name in the ASCII (IDNA) form job URLs are compared in."""
    if host.isascii():
        return host
    try:
        return httpx.URL(f"http://{host}/").raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):
        raise ValueError(f"entry {entry!r}: not a valid host name") from None


def _port(entry: str, text: str | None) -> int:
    if text is None:
        return DEFAULT_PORT
    if text == "*":
        return ANY_PORT
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"entry {entry!r}: the port must be 1-65535 or *")
    return int(text)
