"""The engine's agent client: the pinned certificate is checked before the token leaves, errors
say what to do without the token, and `gather_metrics` isolates slow and dead agents."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.agent.client import (
    AgentClient,
    AgentError,
    ContainerSummary,
    HostMetrics,
    gather_metrics,
)
from engine.agent.endpoint import AgentEndpoint
from fleet_agent.tls import ensure_certificate
from tests.support.agent import AgentProcess
from tests.support.wait import wait_until

TOKEN = "a-token-that-must-not-leave-the-engine"


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A TLS server with a certificate of its own that records what clients send it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_certificate(cert, key, common_name="impostor")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        chunks = b""
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                while chunk := tls.recv(65536):
                    chunks += chunk
        except (OSError, ssl.SSLError):
            pass  # the client hung up abruptly: whatever came before is what counts
        finally:
            received.append(chunks)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    thread.join(timeout=15)
    listener.close()


def endpoint(port: int, *, fingerprint: str = "0" * 64, server: str = "web-1") -> AgentEndpoint:
    return AgentEndpoint(
        server=server, address="127.0.0.1", port=port, fingerprint=fingerprint, token=TOKEN
    )


def test_a_certificate_other_than_the_pinned_one_never_sees_the_token(
    impostor: tuple[int, list[bytes]],
) -> None:
    port, received = impostor
    with AgentClient(endpoint(port)) as client, pytest.raises(AgentError) as refused:
        client.health()
    message = str(refused.value)
    assert "presented a certificate other than the pinned one" in message
    assert f"web-1 at 127.0.0.1:{port}" in message
    assert TOKEN not in message
    wait_until(lambda: received, what="the impostor to see the connection end")
    assert received == [b""]  # handshake done, then closed: not one byte of HTTP


def test_the_real_agent_with_a_wrong_pin_is_refused_before_any_request(
    agent: AgentProcess,
) -> None:
    calls = len(agent.audit())
    with (
        AgentClient(agent.endpoint(fingerprint="f" * 64)) as client,
        pytest.raises(AgentError, match="other than the pinned one"),
    ):
        client.call("POST", "/v1/system/reboot")
    assert len(agent.audit()) == calls


def test_typed_answers_for_the_engine(client: AgentClient) -> None:
    metrics = client.metrics()
    assert isinstance(metrics, HostMetrics)
    assert len(metrics.cpu_per_core) >= 1
    assert metrics.memory_total_bytes > metrics.memory_used_bytes > 0
    assert metrics.disks and metrics.disks[0].total_bytes > 0
    assert all(isinstance(c, ContainerSummary) for c in client.containers())


def test_a_wrong_token_and_an_absent_agent_are_explained(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint(token=TOKEN)) as client, pytest.raises(AgentError) as refused:
        client.metrics()
    assert refused.value.status == 401
    assert "installed with another fleet key" in str(refused.value)
    assert TOKEN not in str(refused.value)

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with AgentClient(endpoint(port)) as client, pytest.raises(AgentError) as absent:
        client.metrics()
    assert str(absent.value).startswith(f"cannot reach the agent of web-1 at 127.0.0.1:{port}")


def test_gather_metrics_reports_each_agent_on_its_own(agent: AgentProcess) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        endpoints = [
            agent.endpoint(),
            endpoint(silent.getsockname()[1], server="web-2"),
            endpoint(closed_port, server="web-3"),
            AgentEndpoint(
                server="web-4",
                address="127.0.0.1",
                port=agent.port,
                fingerprint="e" * 64,
                token=agent.token,
            ),
            AgentEndpoint(
                server="web-5",
                address="127.0.0.1",
                port=agent.port,
                fingerprint=agent.fingerprint,
                token=agent.token,
            ),
        ]
        results = gather_metrics(endpoints, timeout_s=1.0)
    finally:
        silent.close()
    assert list(results) == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    for good in ("web-1", "web-5"):
        assert results[good].error is None
        assert results[good].metrics is not None and results[good].metrics.cpu_per_core
    assert results["web-2"].metrics is None
    assert "did not answer" in (results["web-2"].error or "")
    assert "cannot reach the agent of web-3" in (results["web-3"].error or "")
    assert "other than the pinned one" in (results["web-4"].error or "")
