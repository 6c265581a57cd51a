"""A TCP relay that holds what it carries for a while, so a benchmark can put a real network's
round trip (and, with --mbit, its bandwidth) between the engine and servers that answer over a
local bridge.

    python -m bench.relay ROUND_TRIP_MS [--mbit RATE] LISTEN_HOST:PORT=TARGET_HOST:PORT ...

Every chunk read from either side is written to the other half a round trip later, in order;
with --mbit, each direction of the link (every connection's traffic that way) carries at most
RATE megabits a second, so a chunk also waits for the chunks sent before it to have gone, as
on an uplink. A side that stops sending (closes, or shuts down writing) is shut down for
writing on the other once what it sent has been delivered, and a connection closes once both
sides have stopped. It prints "ready" once every listener is open and runs until it is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import time

CHUNK = 65536


class Link:
    """One direction of the relay's link: a chunk arrives `delay` seconds after it has gone,
    and goes once the chunks before it have, at `rate` bytes a second (0: at once)."""

    def __init__(self, delay: float, rate: float) -> None:
        self.delay = delay
        self.rate = rate
        self._free_at = 0.0

    def arrival(self, size: int) -> float:
        """When a chunk of `size` bytes handed to the link now arrives."""
        gone = time.monotonic()
        if self.rate:
            self._free_at = max(gone, self._free_at) + size / self.rate
            gone = self._free_at
        return gone + self.delay


async def _carry(source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: Link) -> None:
    """Copy `source` to `sink`, each chunk when `link` delivers it."""
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await held.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                sink.write_eof()
                return
            sink.write(data)
            await sink.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await source.read(CHUNK):
            held.put_nowait((link.arrival(len(data)), data))
    finally:
        held.put_nowait((link.arrival(0), b""))
        await delivering


async def _relay(
    client: asyncio.StreamReader,
    to_client: asyncio.StreamWriter,
    target: tuple[str, int],
    links: tuple[Link, Link],
) -> None:
    try:
        server, to_server = await asyncio.open_connection(*target)
    except OSError:
        to_client.close()
        return
    up, down = links
    await asyncio.gather(
        _carry(client, to_server, up), _carry(server, to_client, down), return_exceptions=True
    )
    to_server.close()
    to_client.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(round_trip_ms: float, mbit: float, routes: list[str]) -> None:
    delay = round_trip_ms / 2000
    rate = mbit * 1e6 / 8
    links = (Link(delay, rate), Link(delay, rate))
    listeners = []
    for route in routes:
        listen, _, target = route.partition("=")

        async def handle(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            target: tuple[str, int] = _address(target),
        ) -> None:
            await _relay(reader, writer, target, links)

        try:
            listeners.append(await asyncio.start_server(handle, *_address(listen)))
        except OSError as error:
            raise SystemExit(f"the relay cannot listen on {listen}: {error.strerror}") from None
    print("ready", flush=True)
    await asyncio.gather(*(listener.serve_forever() for listener in listeners))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round_trip_ms", type=float)
    parser.add_argument("--mbit", type=float, default=0.0, help="each direction's bandwidth")
    parser.add_argument("routes", nargs="+", metavar="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.round_trip_ms, arguments.mbit, arguments.routes))
