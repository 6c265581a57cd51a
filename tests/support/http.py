"""Run an ASGI app on a real uvicorn server in a thread, for one test.

It listens on loopback unless the test gives the address of a bridge it created itself (the
gateway of its private dockerd, so that containers can reach it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
