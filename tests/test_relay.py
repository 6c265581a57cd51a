"""The benchmarks' relay (bench/relay.py), run as bench/install.py runs it, between a client
and an echo server on loopback: it carries every byte both ways, in order, never before the
round trip it was given has passed, never faster than the bandwidth it was given, and closes a
side once the other has closed."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROUND_TRIP_MS = 200


@pytest.fixture
def echo() -> Iterator[int]:
    """The port of a loopback server that sends back what it reads until its client closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    thread.join(timeout=10)


@contextlib.contextmanager
def _relay(echo: int, *options: str) -> Iterator[int]:
    """The port of a relay in front of `echo`, started as a process and stopped by its id."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.relay", str(ROUND_TRIP_MS), *options),
            f"127.0.0.1:{port}=127.0.0.1:{echo}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def relay(echo: int) -> Iterator[int]:
    with _relay(echo) as port:
        yield port


def _receive(connection: socket.socket, size: int) -> bytes:
    received = b""
    while len(received) < size and (data := connection.recv(65536)):
        received += data
    return received


def test_the_relay_carries_bytes_both_ways_in_order_after_the_round_trip(relay: int) -> None:
    message = bytes(range(256)) * 4096  # 1 MiB, many chunks
    with socket.create_connection(("127.0.0.1", relay), timeout=30) as connection:
        started = time.monotonic()
        connection.sendall(b"ping")
        assert _receive(connection, 4) == b"ping"
        assert time.monotonic() - started >= ROUND_TRIP_MS / 1000
        sender = threading.Thread(target=connection.sendall, args=(message,))
        sender.start()
        assert _receive(connection, len(message)) == message
        sender.join()


def test_the_relay_closes_the_client_once_the_server_has_closed(relay: int) -> None:
    with socket.create_connection(("127.0.0.1", relay), timeout=30) as connection:
        connection.sendall(b"last words")
        connection.shutdown(socket.SHUT_WR)
        assert _receive(connection, 1 << 20) == b"last words"


def test_the_relay_carries_no_more_than_its_bandwidth(echo: int) -> None:
    message = bytes(range(256)) * 2048  # 512 KiB: half a second each way at 8 Mbit/s
    with (
        _relay(echo, "--mbit", "8") as port,
        socket.create_connection(("127.0.0.1", port), timeout=30) as connection,
    ):
        started = time.monotonic()
        sender = threading.Thread(target=connection.sendall, args=(message,))
        sender.start()
        assert _receive(connection, len(message)) == message
        sender.join()
        assert time.monotonic() - started >= len(message) * 8 / 8e6
