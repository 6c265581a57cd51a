"""A TCP relay that holds what it carries for a while, so a benchmark can put a real network's
round trip between the engine and servers that answer over a local bridge.

    python -m bench.relay ROUND_TRIP_MS LISTEN_HOST:PORT=TARGET_HOST:PORT ...

Every chunk read from either side is written to the other half a round trip later, in order;
a side that stops sending (closes, or shuts down writing) is shut down for writing on the other
once what it sent has been delivered, and a connection closes once both sides have stopped. It
prints "ready" once every listener is open and runs until it is stopped.
"""

from __future__ import annotations

import asyncio
import sys
import time

CHUNK = 65536


async def _carry(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float) -> None:
    """Copy `source` to `sink`, each chunk `delay` seconds after it was read."""
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
            held.put_nowait((time.monotonic() + delay, data))
    finally:
        held.put_nowait((time.monotonic() + delay, b""))
        await delivering


async def _relay(
    client: asyncio.StreamReader,
    to_client: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    try:
        server, to_server = await asyncio.open_connection(*target)
    except OSError:
        to_client.close()
        return
    await asyncio.gather(
        _carry(client, to_server, delay), _carry(server, to_client, delay), return_exceptions=True
    )
    to_server.close()
    to_client.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(round_trip_ms: float, routes: list[str]) -> None:
    delay = round_trip_ms / 2000
    listeners = []
    for route in routes:
        listen, _, target = route.partition("=")

        async def handle(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            target: tuple[str, int] = _address(target),
        ) -> None:
            await _relay(reader, writer, target, delay)

        try:
            listeners.append(await asyncio.start_server(handle, *_address(listen)))
        except OSError as error:
            raise SystemExit(f"the relay cannot listen on {listen}: {error.strerror}") from None
    print("ready", flush=True)
    await asyncio.gather(*(listener.serve_forever() for listener in listeners))


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), sys.argv[2:]))
