"""The embedded Redis stand-in: fakeredis's TCP server, run as its own process.

Used by the crash demo (and the tests, with a printed notice) where no ``redis-server`` is
installed. It keeps data only in memory: it survives a worker's death, not its own. It sets
TCP_NODELAY on accepted sockets (without it, small replies wait on Nagle's algorithm: ~21 jobs/s
instead of ~270 jobs/s measured with arq).

fakeredis has no ``INFO`` command, and arq's stock ``Worker`` sends ``INFO`` (server, memory,
clients) as its first call and dies on the error: the stand-in answers ``INFO`` itself, plainly —
what it emulates, that it keeps nothing on disk, how many clients and keys it holds — so every
crash-demo row runs on it.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import fakeredis
from fakeredis import TcpFakeServer
from fakeredis._commands import command
from fakeredis._socket import FakeSocket


def _info_sections(sock: Any) -> dict[str, dict[str, object]]:
    """What ``INFO`` says, by section: only what the stand-in knows to be true."""
    server = sock._server
    keyspace: dict[str, object] = {
        f"db{n}": f"keys={len(db)},expires={sum(1 for k in db if db[k].expireat is not None)}"
        for n, db in sorted(server.dbs.items())
        if len(db)
    }
    return {
        "server": {
            "redis_version": ".".join(map(str, (*server.version, 0, 0)[:3])),
            "redis_mode": "standalone",
            "executable": f"fakeredis {fakeredis.__version__} (the embedded stand-in)",
        },
        "clients": {"connected_clients": len(server.sockets)},
        "persistence": {"loading": 0, "aof_enabled": 0, "rdb_changes_since_last_save": 0},
        "keyspace": keyspace,
    }


def info_text(sock: Any, sections: tuple[bytes, ...]) -> bytes:
    """``INFO [section ...]`` as redis-server formats it: ``# Name`` headers, ``key:value``
    lines; a section the stand-in does not keep (memory, stats, ...) comes back empty."""
    known = _info_sections(sock)
    asked = [s.decode().lower() for s in sections]
    every = not asked or any(a in ("all", "everything", "default") for a in asked)
    lines: list[str] = []
    for name, fields in known.items():
        if every or name in asked:
            lines.append(f"# {name.capitalize()}")
            lines.extend(f"{k}:{v}" for k, v in fields.items())
            lines.append("")
    return "\r\n".join(lines).encode()


def _answer_info() -> None:
    """Teach this process's fakeredis sockets ``INFO`` (done once, by the server's constructor)."""
    if not hasattr(FakeSocket, "stand_in_info"):

        def stand_in_info(self: Any, *sections: bytes) -> bytes:
            return info_text(self, sections)

        FakeSocket.stand_in_info = command(name="INFO", fixed=(), repeat=(bytes,))(stand_in_info)  # type: ignore[attr-defined]


class FastTcpFakeServer(TcpFakeServer):
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _answer_info()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6390)
    args = parser.parse_args()
    server = FastTcpFakeServer((args.host, args.port))
    server.daemon_threads = True
    print(f"embedded redis ready: redis://{args.host}:{args.port}/0", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
