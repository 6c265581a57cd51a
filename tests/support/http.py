"""Run an ASGI app on a real uvicorn server in a thread, for one test.

It listens on loopback unless the test gives the address of a bridge it created itself (the
gateway of its private dockerd, so that containers can reach it).
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn

from engine.controlplane.runner import listening_socket


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """Serve `app` on `host` (a free port) and yield its base URL; stop and join on exit."""
    sock = listening_socket(host, 0, backlog=128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    scheme = "https" if "ssl_certfile" in config else "http"
    try:
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class _Cutting(socketserver.StreamRequestHandler):
    """Answers every request with `body`, but the first `cuts` answers end a few bytes into
    it, as a connection that drops part-way does."""

    body: ClassVar[bytes] = b""
    cuts: ClassVar[int] = 0
    answers: ClassVar[list[str]] = []

    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass  # the request's line and headers
        cut = len(self.answers) < self.cuts
        self.answers.append("cut" if cut else "whole")
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.body)}"
        )
        self.wfile.write(f"{head}\r\nConnection: close\r\n\r\n".encode())
        self.wfile.write(self.body[:10] if cut else self.body)


@dataclass(frozen=True)
class CuttingApi:
    url: str
    answers: list[str]  # what it answered, in order: "cut" or "whole"


@contextmanager
def cutting_api(body: bytes, cuts: int) -> Iterator[CuttingApi]:
    """A loopback API that answers every request with `body` but cuts its first `cuts`
    answers off."""
    _Cutting.body, _Cutting.cuts, _Cutting.answers = body, cuts, []
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Cutting) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host, port = server.server_address[:2]
        try:
            yield CuttingApi(url=f"http://{host}:{port}", answers=_Cutting.answers)
        finally:
            server.shutdown()
