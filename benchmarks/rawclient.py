"""A cheap HTTP/1.1 keep-alive client for ``POST /jobs``: the benchmarks' load, not the subject.

httpx costs a millisecond or more of CPU per request here; a load generator that costs as much as
the service it measures would be the bottleneck on a 2-core machine. This writes the request bytes
itself on one kept-alive connection and reads the answer by its Content-Length (what uvicorn sends
for our JSON answers); :class:`Pool` spreads requests over several connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

# uvicorn closes a kept-alive connection idle for 5 s (its timeout_keep_alive): one idle this
# long is opened afresh rather than found closed mid-request (on a busy machine a benchmark's
# phase between two uses of a client can last that long)
IDLE_REOPEN_S = 4.0


class RawClient:
    """One keep-alive connection; one request at a time."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._head = f"Host: {parts.netloc}\r\nContent-Type: application/json\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = 0.0  # time.monotonic() of the last answer

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is not None and time.monotonic() - self._used > IDLE_REOPEN_S:
            await self.close()
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """POST ``payload`` as JSON; returns (status, body)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        reader, writer = await self._connect()
        writer.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\n"
            + self._head
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await reader.readexactly(length) if length else b""
        self._used = time.monotonic()
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class Pool:
    """``size`` RawClients; :meth:`post` takes a free one (waits when all are busy)."""

    def __init__(self, base: str, size: int) -> None:
        self._free: asyncio.Queue[RawClient] = asyncio.Queue()
        self._all = [RawClient(base) for _ in range(size)]
        for c in self._all:
            self._free.put_nowait(c)

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        client = await self._free.get()
        try:
            return await client.post(path, payload)
        except BaseException:
            await client.close()
            raise
        finally:
            self._free.put_nowait(client)

    async def close(self) -> None:
        for c in self._all:
            await c.close()
