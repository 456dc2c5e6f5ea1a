"""``REDIS_URL`` forms, parsed once: a single Redis (``redis://``, ``rediss://``, ``unix://``, read
by redis-py itself) or a Sentinel-managed primary::

    redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]
    rediss+sentinel://...   the same, with TLS to the data nodes (the primary and its replicas)

The hosts are the Sentinels (port 26379 when left out; IPv6 in brackets); the user and password
(percent-encoded) are for the data nodes, not the Sentinels. Parsing needs no Redis library: the
settings validate the URL at start-up, and ``durable.connection`` builds the client from the
parsed form. A bad form raises ``ValueError`` with one line saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379
FORM = "redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]"
SERVICE = re.compile(r"^[A-Za-z0-9._-]+$")
HOST = re.compile(r"^[A-Za-z0-9.-]+$")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def display(self) -> str:
        """The URL with its password masked, for logs and error lines."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"{scheme}://{auth}{hosts}/{self.service}/{self.db}"


def describe(url: str) -> str:
    """``url`` for a log or error line: any password masked (``***``)."""
    if is_sentinel(url):
        try:
            return parse_sentinel(url).display()
        except ValueError:
            return url.split("://", 1)[0] + "://…"
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url.split("://", 1)[0] + "://…"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEMES)


def check(url: str) -> None:
    """Raise ValueError (one line) unless ``url`` is a REDIS_URL this project accepts."""
    if is_sentinel(url):
        parse_sentinel(url)
    elif not url.startswith(PLAIN_SCHEMES):
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
        )


def parse_sentinel(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` or ``rediss+sentinel://`` URL (ValueError names the fault)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise ValueError(f"must look like {FORM}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"takes no query or fragment; expected {FORM}")
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else (None, rest)
    hosts, slash, path = hostpart.partition("/")
    if not slash or not path:
        raise ValueError(f"names no service; expected {FORM}")
    username, password = _userinfo(userinfo)
    service, _, db_text = path.partition("/")
    if not SERVICE.match(service):
        raise ValueError(f"service name {service!r} is not valid (letters, digits, . _ -)")
    return SentinelURL(
        sentinels=tuple(_host_port(h) for h in hosts.split(",")),
        service=service,
        db=_db(db_text),
        username=username,
        password=password,
        tls=scheme == "rediss+sentinel",
    )


def _userinfo(userinfo: str | None) -> tuple[str | None, str | None]:
    if userinfo is None:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError(
            "credentials must be user:password@ or :password@ (a user alone is no login)"
        )
    return (unquote(user) or None), unquote(password)


def _host_port(item: str) -> tuple[str, int]:
    if not item:
        raise ValueError(f"has an empty Sentinel address; expected {FORM}")
    if item.startswith("["):
        host, bracket, tail = item[1:].partition("]")
        if not bracket or not host or (tail and not tail.startswith(":")):
            raise ValueError(f"Sentinel address {item!r} is not [IPv6]:PORT")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
        if not HOST.match(host):
            raise ValueError(f"Sentinel address {item!r} is not HOST:PORT")
    if port_text == "":
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"Sentinel address {item!r} has no valid port (1-65535)")
    return host, int(port_text)


def _db(text: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        raise ValueError(f"database {text!r} is not a number (…/SERVICE_NAME/DB)")
    return int(text)


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` (any accepted form but unix://)."""
    if is_sentinel(url):
        parsed = parse_sentinel(url)
        base = url.split("?", 1)[0]
        head = base[: base.rfind("/" + parsed.service) + 1 + len(parsed.service)]
        return f"{head}/{db}"
    scheme, sep, rest = url.partition("://")
    netloc, _, _ = rest.partition("/")
    return f"{scheme}{sep}{netloc}/{db}"


def db_of(url: str) -> int:
    """The database number ``url`` names (0 when none)."""
    if is_sentinel(url):
        return parse_sentinel(url).db
    _, _, rest = url.partition("://")
    _, _, path = rest.partition("/")
    path = path.split("?", 1)[0].strip("/")
    return int(path) if path.isdigit() else 0
