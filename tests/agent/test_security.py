"""Only the holder of the server's token gets in; nothing is open but health; no CORS; the
token is stored as a digest only; mutating calls are audited without secrets."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.agent.client import AgentClient, pinned_ssl_context
from engine.tokens import agent_token, heartbeat_token
from tests.support.agent import FLEET, AgentProcess

ROUTES = [
    ("GET", "/v1/metrics"),
    ("GET", "/v1/containers"),
    ("POST", "/v1/containers"),
    ("GET", "/v1/containers/fleet-agent/logs"),
    ("DELETE", "/v1/containers/anything"),
    ("POST", "/v1/images/pull"),
    ("POST", "/v1/images/load"),
    ("POST", "/v1/containers/anything/probe"),
    ("POST", "/v1/system/reboot"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/no-such-route"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/health"),
]


def raw_client(agent: AgentProcess) -> httpx.Client:
    """A client on the pinned connection that sends whatever Authorization the test gives."""
    return httpx.Client(
        base_url=f"https://127.0.0.1:{agent.port}",
        verify=pinned_ssl_context(agent.fingerprint),
        trust_env=False,
    )


def wrong_authorizations(agent: AgentProcess, key: bytes) -> dict[str, dict[str, str]]:
    token = agent.token
    return {
        "none": {},
        "bearer without a token": {"Authorization": "Bearer"},
        "wrong token": {"Authorization": "Bearer " + "A" * len(token)},
        "right token, other scheme": {"Authorization": f"Basic {token}"},
        "token of another server": {"Authorization": f"Bearer {agent_token(key, FLEET, 'web-2')}"},
        "heartbeat token of this server": {
            "Authorization": f"Bearer {heartbeat_token(key, FLEET, 'web-1')}"
        },
        "token with a suffix": {"Authorization": f"Bearer {token}x"},
        "oversized": {"Authorization": "Bearer " + "x" * 5000},
    }


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_health_refuses_wrong_tokens_and_does_nothing(
    agent: AgentProcess, fleet_key: bytes, docker_client: Any, method: str, path: str
) -> None:
    containers = docker_client.api.containers(all=True)
    body = {"image": "fleet-test/anything:1", "name": "t-unauthorised"}
    with raw_client(agent) as http:
        for what, headers in wrong_authorizations(agent, fleet_key).items():
            response = http.request(
                method, path, headers=headers, json=body if method == "POST" else None
            )
            assert response.status_code == 401, what
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {
                "detail": "a valid bearer token is required",
                "code": "unauthenticated",
            }
    assert docker_client.api.containers(all=True) == containers


def test_health_is_the_only_open_route_and_says_nothing_else(agent: AgentProcess) -> None:
    with raw_client(agent) as http:
        response = http.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "server" not in response.headers  # no software banner


def test_there_is_no_interactive_documentation(client: AgentClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.send("GET", path).status_code == 404


def test_no_cors_headers_are_ever_sent(agent: AgentProcess, client: AgentClient) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = {**origin, "Access-Control-Request-Method": "DELETE"}
    with raw_client(agent) as http:
        answers = [
            http.options("/v1/containers", headers=preflight),
            http.get("/v1/health", headers=origin),
        ]
    answers += [
        client.send("OPTIONS", "/v1/containers", headers=preflight),
        client.send("GET", "/v1/containers", headers=origin),
    ]
    assert [a.status_code for a in answers] == [401, 200, 405, 200]
    for answer in answers:
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


def _client_context(
    *, ciphers: str | None = None, tls: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
) -> ssl.SSLContext:
    """A client that offers exactly TLS version `tls` and, for TLS 1.2, only `ciphers`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = tls
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def _handshake(agent: AgentProcess, context: ssl.SSLContext) -> tuple[str | None, str]:
    """The protocol and cipher a real handshake with the agent settles on."""
    with (
        socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version(), cipher[0]


# Every CBC suite OpenSSL has for TLS 1.2, with an ephemeral key exchange or without.
CBC_ONLY = "ECDHE+AES+SHA1:ECDHE+AES+SHA256:ECDHE+AES+SHA384:RSA+AES:!AESGCM:!AESCCM"


def test_tls_is_1_3_or_1_2_with_an_aead_cipher_and_never_cbc(agent: AgentProcess) -> None:
    offered = [c["name"] for c in _client_context(ciphers=CBC_ONLY).get_ciphers()]
    assert "ECDHE-ECDSA-AES128-SHA" in offered and "ECDHE-ECDSA-AES256-SHA384" in offered
    with pytest.raises(ssl.SSLError):
        _handshake(agent, _client_context(ciphers=CBC_ONLY))
    assert _handshake(agent, _client_context(tls=ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _handshake(agent, _client_context(ciphers=suite)) == ("TLSv1.2", suite)
    # The engine's own client, pinning the certificate, gets the best of them.
    assert _handshake(agent, pinned_ssl_context(agent.fingerprint))[0] == "TLSv1.3"


def test_the_agent_keeps_only_a_digest_of_its_token(agent: AgentProcess) -> None:
    token = agent.token
    config = json.loads(agent.config_path.read_text())
    assert token not in agent.config_path.read_text()
    assert config["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in agent.log_text()
    state = Path(agent.config["state_dir"])
    for path in state.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


def test_mutating_calls_and_refused_tokens_are_audited_without_secrets(
    agent: AgentProcess, client: AgentClient, busybox_image: str, cleanup: list[str]
) -> None:
    cleanup.append("t-audited")
    body = json.dumps(
        {
            "image": busybox_image,
            "name": "t-audited",
            "command": ["sh", "-c", "echo --password=sw0rdfish-in-argv"],
            "env": {"API_KEY": "sw0rdfish-in-env"},
            "start": False,
        }
    ).encode()
    headers = {"content-type": "application/json"}
    assert client.send("POST", "/v1/containers", content=body, headers=headers).status_code == 201
    assert client.send("DELETE", "/v1/containers/t-audited").status_code == 204
    assert client.send("GET", "/v1/containers").status_code == 200
    with raw_client(agent) as http:
        http.get("/v1/metrics", headers={"Authorization": "Bearer guessed-token-123"})

    text = (Path(agent.config["state_dir"]) / "audit.log").read_text()
    assert "sw0rdfish" not in text
    assert "guessed-token" not in text
    entries = agent.audit()
    create = next(e for e in entries if e["method"] == "POST" and e.get("name") == "t-audited")
    assert create["status"] == 201
    assert create["path"] == "/v1/containers"
    assert create["image"] == busybox_image
    assert create["remote"] == "127.0.0.1"
    assert create["body_sha256"] == hashlib.sha256(body).hexdigest()
    delete = next(e for e in entries if e["path"] == "/v1/containers/t-audited")
    assert (delete["method"], delete["status"]) == ("DELETE", 204)
    assert not [e for e in entries if e["method"] == "GET" and e["event"] == "call"]
    refused = [e for e in entries if e["event"] == "refused-token"]
    assert (refused[-1]["path"], refused[-1]["status"]) == ("/v1/metrics", 401)
