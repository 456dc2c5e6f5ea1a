"""A TCP proxy a test puts between processes and a server, to freeze the link on command.

``python -m apps.harness.tcp_proxy --target HOST:PORT [--port P]`` listens on ``127.0.0.1:P``
(0 = a free port), forwards every connection to the target, and prints
``tcp-proxy ready: 127.0.0.1:P -> HOST:PORT``. The link is a real stall, not a cut:

* ``SIGUSR1`` freezes it: from then on nothing is forwarded in either direction (bytes already
  read wait in the proxy, the rest in the kernel's buffers), new connections are accepted but not
  connected onward, and no connection is closed. Clients see a server that stopped answering.
  The proxy prints ``tcp-proxy frozen: N connections`` once the freeze is in effect.
* ``SIGUSR2`` thaws it: everything held is forwarded in order, waiting connections are connected,
  and it prints ``tcp-proxy thawed``.
* ``SIGTERM``/``SIGINT`` stop it (connections closed).

A connection whose either end closes is closed on the other side too (the server's death reaches
its clients). :class:`ProxyControl` drives a started proxy from a test: freeze/thaw by signal,
each waiting (bounded) for the proxy's acknowledgement line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

CHUNK = 64 * 1024


class Proxy:
    """The forwarding loop: one pair of pumps per connection, all behind one gate."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def freeze(self) -> None:
        self.flowing.clear()
        print(f"tcp-proxy frozen: {self.connections} connections", flush=True)

    def thaw(self) -> None:
        self.flowing.set()
        print("tcp-proxy thawed", flush=True)

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.writers.add(client_w)
        self.connections += 1
        try:
            await self.flowing.wait()  # a connection made while frozen waits, unconnected
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.writers.add(server_w)
            try:
                pumps = [
                    asyncio.create_task(self._pump(client_r, server_w)),
                    asyncio.create_task(self._pump(server_r, client_w)),
                ]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                self.writers.discard(server_w)
                server_w.close()
        finally:
            self.connections -= 1
            self.writers.discard(client_w)
            client_w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward until EOF or an error; never while frozen (a chunk read then waits here)."""
        with contextlib.suppress(OSError):
            while True:
                await self.flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    return
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()


async def run(port: int, target_host: str, target_port: int) -> None:
    proxy = Proxy(target_host, target_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.freeze)
    loop.add_signal_handler(signal.SIGUSR2, proxy.thaw)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    real_port = server.sockets[0].getsockname()[1]
    print(f"tcp-proxy ready: 127.0.0.1:{real_port} -> {target_host}:{target_port}", flush=True)
    async with server:
        await stop.wait()
        for writer in list(proxy.writers):
            writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 = a free one")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    asyncio.run(run(args.port, host or "127.0.0.1", int(port)))


if __name__ == "__main__":
    main()
