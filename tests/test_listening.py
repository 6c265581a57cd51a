"""The sockets the control plane, the agent and the tests' servers listen on give asyncio
connections with TCP_NODELAY: without it each uvicorn response (headers and body written
apart) waited ~40 ms for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from engine.controlplane.runner import listening_socket
from fleet_agent.__main__ import _listen as agent_listen


async def nodelay_of_accepted(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection asyncio accepts on `sock`, as uvicorn's transports see it."""
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    async with server:
        host, port = sock.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(seen, timeout=10)
        finally:
            writer.close()


@pytest.mark.parametrize(
    "listen",
    [lambda: listening_socket("127.0.0.1", 0), lambda: agent_listen("127.0.0.1", 0)],
    ids=["control-plane", "agent"],
)
def test_accepted_connections_send_without_delay(listen: Callable[[], socket.socket]) -> None:
    assert asyncio.run(nodelay_of_accepted(listen())) != 0
