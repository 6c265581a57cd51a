"""What rollouts need of the agent: a health probe of a container (HTTP, TCP, a command),
an image archive streamed from the engine and loaded, and a pull with credentials that are
used once and written nowhere."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest

from engine.agent.client import AgentClient, AgentError
from tests.support.agent import AgentProcess
from tests.support.wait import wait_until

SERVE = "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"


@pytest.fixture
def web(client: AgentClient, busybox_image: str, cleanup: list[str]) -> str:
    """A running busybox httpd answering /healthz on port 8080 of its own address."""
    cleanup.append("t-probe-web")
    client.run_container(
        {"image": busybox_image, "name": "t-probe-web", "command": ["sh", "-c", SERVE]}
    )
    return "t-probe-web"


def probe(client: AgentClient, name: str, **check: Any) -> dict[str, Any]:
    return client.probe(name, {"timeout_s": 2.0, **check})


def test_an_http_probe_is_healthy_on_2xx_and_says_why_not_otherwise(
    client: AgentClient, web: str
) -> None:
    answer = wait_until(
        lambda: (a := probe(client, web, http={"path": "/healthz", "port": 8080}))["healthy"] and a,
        what="httpd to answer",
    )
    assert answer["detail"] == "HTTP 200" and answer["duration_ms"] >= 0
    missing = probe(client, web, http={"path": "/nothing-here", "port": 8080})
    assert (missing["healthy"], missing["detail"]) == (False, "HTTP 404")
    closed = probe(client, web, http={"path": "/", "port": 9})
    assert closed["healthy"] is False and "refused" in closed["detail"].lower()


def test_tcp_and_command_probes(client: AgentClient, web: str) -> None:
    wait_until(lambda: probe(client, web, tcp={"port": 8080})["healthy"], what="port 8080")
    assert probe(client, web, tcp={"port": 9})["healthy"] is False
    good = probe(client, web, command=["test", "-e", "/www/healthz"])
    assert (good["healthy"], good["detail"]) == (True, "exit code 0")
    bad = probe(client, web, command=["sh", "-c", "echo no healthz here; exit 3"])
    assert (bad["healthy"], bad["detail"]) == (False, "exit code 3: no healthz here")
    hung = client.probe(web, {"command": ["sleep", "30"], "timeout_s": 0.5})
    assert hung == {**hung, "healthy": False, "detail": "the command did not finish within 0.5 s"}


def test_a_stopped_container_is_unhealthy_at_once(client: AgentClient, web: str) -> None:
    client.stop_container(web, timeout_s=1)
    answer = probe(client, web, http={"path": "/healthz", "port": 8080})
    assert answer["healthy"] is False and answer["detail"].startswith("not running: exited")


def test_a_probe_takes_exactly_one_check(client: AgentClient, web: str) -> None:
    for body in ({}, {"tcp": {"port": 1}, "command": ["true"]}, {"http": {"port": 1, "path": "x"}}):
        with pytest.raises(AgentError) as info:
            client.probe(web, body)
        assert info.value.status == 422


def audited(agent: AgentProcess, path: str, after: int) -> dict[str, Any]:
    """The audit entry of the first call to `path` past the log's first `after` entries. It is
    written once the answer has gone out, so it is waited for: the last entry for `path` in the
    log may still be an earlier test's."""
    entries = wait_until(
        lambda: [e for e in agent.audit()[after:] if e["path"] == path],
        what=f"{path} in the audit log",
    )
    return dict(entries[0])


def test_an_archive_streamed_from_the_engine_is_loaded_and_audited(
    agent: AgentProcess, client: AgentClient, docker_client: Any, busybox_image: str
) -> None:
    copy = "fleet-test/loaded:1"
    docker_client.api.tag(busybox_image, "fleet-test/loaded", "1")
    archive = b"".join(docker_client.api.get_image(copy, chunk_size=64 * 1024))
    docker_client.api.remove_image(copy)
    assert copy not in {t for i in client.images() for t in i["tags"]}
    logged = len(agent.audit())
    assert client.load_image(
        iter([archive[i : i + 50_000] for i in range(0, len(archive), 50_000)])
    ) == [copy]
    assert copy in {t for i in client.images() for t in i["tags"]}
    entry = audited(agent, "/v1/images/load", logged)
    assert entry["status"] == 200 and entry["body_bytes"] == len(archive)
    assert entry["body_sha256"] == hashlib.sha256(archive).hexdigest()
    docker_client.api.remove_image(copy)


def test_a_damaged_archive_is_refused_and_loads_nothing(
    client: AgentClient, docker_client: Any
) -> None:
    before = docker_client.api.images()
    with pytest.raises(AgentError) as info:
        client.load_image([b"this is not a tar archive" * 100])
    assert info.value.status == 400
    assert docker_client.api.images() == before


def test_an_archive_over_the_limit_is_refused(
    make_agent: Callable[..., AgentProcess], docker_client: Any, busybox_image: str
) -> None:
    small = make_agent(max_image_bytes=1024 * 1024)
    before = docker_client.api.images()
    with AgentClient(small.endpoint()) as client:
        with pytest.raises(AgentError) as info:
            client.load_image(iter([os.urandom(256 * 1024)] * 8))  # chunked: no length known
        assert info.value.status == 413
        declared = client.send(
            "POST", "/v1/images/load", content=b"x" * (1024 * 1024 + 1)
        )  # the length is declared: refused before a byte is read
        assert (declared.status_code, declared.json()["code"]) == (413, "body_too_large")
    assert docker_client.api.images() == before


def test_pull_credentials_are_used_once_and_written_nowhere(
    agent: AgentProcess, client: AgentClient
) -> None:
    logged = len(agent.audit())
    with pytest.raises(AgentError) as info:
        client.pull_image(
            "127.0.0.1:9/acme/web:1", {"username": "ci", "password": "sw0rdfish-pull-token"}
        )
    assert info.value.status == 502
    assert "sw0rdfish" not in str(info.value)
    entry = audited(agent, "/v1/images/pull", logged)
    assert entry["image"] == "127.0.0.1:9/acme/web:1" and "auth" not in entry
    assert "sw0rdfish" not in (agent.folder / "state" / "audit.log").read_text()
    assert "sw0rdfish" not in agent.log_text()


def test_credentials_are_checked_like_every_body(client: AgentClient) -> None:
    response = client.send(
        "POST",
        "/v1/images/pull",
        json={"image": "acme/web:1", "auth": {"username": "ci", "token": "sw0rdfish"}},
    )
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert {tuple(e["loc"]) for e in errors} == {
        ("body", "auth", "token"),
        ("body", "auth", "password"),
    }
    assert not [e for e in errors if "input" in e]
    assert "sw0rdfish" not in response.text
