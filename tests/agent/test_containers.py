"""Containers through the agent, over real HTTPS with the pinned certificate, on the session's
private dockerd: run, inspect, logs (tail, timestamps, follow), stats, stop, start, restart,
remove, ports and volumes, and the failures that must leave nothing behind."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import psutil
import pytest

from engine.agent.client import AgentClient, AgentError
from engine.providers.local.dockerd import PrivateDaemon
from tests.support.agent import AgentProcess, Reports
from tests.support.docker import busybox_rootfs
from tests.support.wait import wait_until

LOOP = "trap 'exit 0' TERM; while true; do sleep 0.1; done"


def run(client: AgentClient, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = client.call("POST", "/v1/containers", json=body)
    return result


def logs(client: AgentClient, name: str, **params: Any) -> str:
    response = client.send("GET", f"/v1/containers/{name}/logs", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def logs_containing(client: AgentClient, name: str, text: str) -> str:
    """The container's logs once they contain `text`."""

    def read() -> str:
        current = logs(client, name)
        return current if text in current else ""

    result: str = wait_until(read, what=f"{text!r} in the logs of {name}")
    return result


def test_a_container_runs_logs_stops_starts_restarts_and_is_removed(
    client: AgentClient,
    busybox_image: str,
    cleanup: list[str],
    docker_client: Any,
    reports: tuple[Reports, str],
) -> None:
    name = "t-lifecycle"
    cleanup.append(name)
    command = ["sh", "-c", f"echo hello; sleep 0.2; echo oops >&2; {LOOP}"]
    created = run(
        client,
        image=busybox_image,
        name=name,
        command=command,
        env={"DB_PASSWORD": "hunter2-not-for-your-eyes"},
        labels={"app": "lifecycle"},
        restart_policy={"name": "on-failure", "maximum_retry_count": 2},
    )
    assert created["name"] == name
    assert created["state"]["running"] is True
    assert created["command"] == command
    assert created["labels"] == {"app": "lifecycle"}
    assert created["restart_policy"] == {"name": "on-failure", "maximum_retry_count": 2}
    assert created["env_names"] == ["DB_PASSWORD", "PATH"]
    assert "hunter2" not in json.dumps(created)
    raw = docker_client.api.inspect_container(name)
    assert raw["Id"] == created["id"]
    assert "DB_PASSWORD=hunter2-not-for-your-eyes" in raw["Config"]["Env"]

    text = logs_containing(client, name, "oops")
    assert text.splitlines() == ["hello", "oops"]
    assert logs(client, name, tail=1) == "oops\n"
    stamped = logs(client, name, timestamps="true").splitlines()
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (hello|oops)$", s) for s in stamped)
    assert logs(client, name, since="2999-01-01T00:00:00Z") == ""

    stopped = client.call("POST", f"/v1/containers/{name}/stop", params={"timeout_s": 5})
    assert stopped["state"]["running"] is False
    assert stopped["state"]["exit_code"] == 0  # the trap ran: a clean stop, not a kill
    no_stats = client.send("GET", f"/v1/containers/{name}/stats")
    assert no_stats.status_code == 409
    assert no_stats.json() == {
        "detail": f"container {name} is not running, so it has no statistics"
    }
    started = client.call("POST", f"/v1/containers/{name}/start")
    assert started["state"]["running"] is True
    restarted = client.call("POST", f"/v1/containers/{name}/restart", params={"timeout_s": 5})
    assert restarted["state"]["running"] is True
    assert restarted["state"]["started_at"] != started["state"]["started_at"]

    listed = {c.name: c for c in client.containers()}
    assert listed[name].state == "running"
    assert listed[name].image == busybox_image

    with pytest.raises(AgentError) as refused:
        client.call("DELETE", f"/v1/containers/{name}")
    assert refused.value.status == 409  # running: Docker wants it stopped or forced
    assert client.call("DELETE", f"/v1/containers/{name}", params={"force": True}) is None
    assert client.send("GET", f"/v1/containers/{name}").status_code == 404
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(name)

    received, _ = reports
    # Docker's own order of events for what was done above, delivered to the control plane.
    expected = ["start", "die", "start", "die", "start", "die"]
    wait_until(lambda: received.events_of(created["id"]) == expected, what="container events")
    dies = [e for e in received.events if e["container"]["id"] == created["id"]]
    assert {e["exit_code"] for e in dies if e["event"] == "die"} <= {0, 137}
    assert {e["oom_killed"] for e in dies} == {None, False}  # None: not a die
    assert all(e["container"]["name"] == name for e in dies)


def test_ports_and_volumes_work(
    client: AgentClient, busybox_image: str, cleanup: list[str], docker_client: Any, tmp_path: Path
) -> None:
    name, volume = "t-ports", f"t-vol-{secrets.token_hex(3)}"
    cleanup.append(name)
    (tmp_path / "hello").write_text("hi from the host\n")
    script = (
        "cat /in/hello; (touch /in/new 2>/dev/null && echo writable) || echo read-only; "
        "echo kept > /data/file; exec httpd -f -p 8080 -h /in"
    )
    try:
        created = run(
            client,
            image=busybox_image,
            name=name,
            command=["sh", "-c", script],
            ports=[{"container_port": 8080, "host_ip": "127.0.0.1"}],
            volumes=[
                {"source": str(tmp_path), "target": "/in", "read_only": True},
                {"source": volume, "target": "/data"},
            ],
        )
        binding = created["ports"][0]
        assert binding["container_port"] == 8080 and binding["host_ip"] == "127.0.0.1"
        assert binding["host_port"] > 0  # Docker chose a free one
        answer = wait_until(
            lambda: _get(f"http://127.0.0.1:{binding['host_port']}/hello"), what="httpd"
        )
        assert answer == "hi from the host\n"
        text = logs_containing(client, name, "read-only")
        assert text == "hi from the host\nread-only\n"
        assert not (tmp_path / "new").exists()
        mounts = {m["target"]: m for m in created["mounts"]}
        assert mounts["/in"] == {
            "type": "bind",
            "source": str(tmp_path),
            "target": "/in",
            "read_only": True,
        }
        assert mounts["/data"]["type"] == "volume" and mounts["/data"]["source"] == volume
        summary = next(c for c in client.containers() if c.name == name)
        assert summary.ports == (f"127.0.0.1:{binding['host_port']}->8080/tcp",)
    finally:
        docker_client.api.remove_container(name, force=True)
        docker_client.volumes.get(volume).remove()


def _get(url: str) -> str:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return ""
    return response.text if response.status_code == 200 else ""


def test_follow_streams_new_lines_as_they_come(
    client: AgentClient, busybox_image: str, cleanup: list[str]
) -> None:
    cleanup.append("t-follow")
    counting = "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done"
    run(client, image=busybox_image, name="t-follow", command=["sh", "-c", counting])
    seen = b""
    with client.stream("/v1/containers/t-follow/logs", params={"follow": True, "tail": 0}) as s:
        for chunk in s:
            seen += chunk
            if seen.count(b"\n") >= 5:
                break
    numbers = [int(n) for n in re.findall(rb"line-(\d+)", seen)]
    assert len(numbers) >= 5
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # live and in order
    assert client.health() == {"status": "ok"}


def test_a_follow_outlasts_dockers_call_timeout(
    make_agent: Callable[..., AgentProcess], busybox_image: str, cleanup: list[str]
) -> None:
    # Calls to Docker time out (here after 1 s); a follow must not, or a quiet container's
    # stream would end by itself.
    agent = make_agent(docker_timeout_s=1.0)
    cleanup.append("t-late")
    with AgentClient(agent.endpoint()) as client:
        script = "sleep 3; echo late; exec sleep 60"
        run(client, image=busybox_image, name="t-late", command=["sh", "-c", script])
        seen = b""
        with client.stream("/v1/containers/t-late/logs", params={"follow": True}) as s:
            for chunk in s:
                seen += chunk
                if b"late" in seen:
                    break
    assert seen == b"late\n"


def test_a_quiet_follow_is_let_go_when_the_client_hangs_up(
    make_agent: Callable[..., AgentProcess],
) -> None:
    # A follow on a container that prints nothing holds a connection to Docker. When the caller
    # hangs up, the agent must shut it, not wait for output that never comes. Counted on a
    # Docker engine of this test's own, whose only client is this agent: the engine's end of
    # each API connection carries the socket's path.
    root = Path(tempfile.mkdtemp(prefix="fa-"))  # short: socket paths have a length limit
    daemon = PrivateDaemon.start(root)
    try:
        with docker.APIClient(base_url=daemon.url) as setup:
            setup.import_image_from_data(busybox_rootfs(), repository="quiet", tag="1")
        engine = psutil.Process(daemon.process.pid)
        api_socket = str(daemon.root / "docker.sock")

        def api_connections() -> int:
            return sum(1 for c in engine.net_connections(kind="unix") if c.laddr == api_socket)

        agent = make_agent(docker_url=daemon.url)
        client = AgentClient(agent.endpoint())
        run(client, image="quiet:1", name="t-quiet", command=["sh", "-c", LOOP])
        with client.stream("/v1/containers/t-quiet/logs", params={"follow": True}):
            following = api_connections()
            client.close()
        wait_until(lambda: api_connections() == following - 1, what="the agent to let go")
        with AgentClient(agent.endpoint()) as again:
            assert again.health() == {"status": "ok"}
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_container_that_cannot_start_is_not_left_behind(
    client: AgentClient, busybox_image: str, docker_client: Any
) -> None:
    with pytest.raises(AgentError) as failed:
        run(client, image=busybox_image, name="t-broken", command=["/no/such/program"])
    assert failed.value.status in (400, 502)
    assert "no such file" in str(failed.value).lower()
    assert docker_client.containers.list(all=True, filters={"name": "t-broken"}) == []


def test_missing_images_and_names_in_use_are_refused_without_changes(
    client: AgentClient, busybox_image: str, cleanup: list[str], docker_client: Any
) -> None:
    with pytest.raises(AgentError) as missing:
        run(client, image="fleet-test/absent:1", name="t-absent")
    assert missing.value.status == 404
    assert "pull it first" in str(missing.value)
    assert docker_client.containers.list(all=True, filters={"name": "t-absent"}) == []

    cleanup.append("t-twice")
    first = run(client, image=busybox_image, name="t-twice", command=["true"], start=False)
    assert first["state"]["status"] == "created"
    with pytest.raises(AgentError) as conflict:
        run(client, image=busybox_image, name="t-twice", command=["true"])
    assert conflict.value.status == 409
    assert [c.id for c in docker_client.containers.list(all=True, filters={"name": "t-twice"})] == [
        first["id"]
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/containers/t-nope"),
        ("POST", "/v1/containers/t-nope/start"),
        ("POST", "/v1/containers/t-nope/stop"),
        ("POST", "/v1/containers/t-nope/restart"),
        ("DELETE", "/v1/containers/t-nope"),
        ("GET", "/v1/containers/t-nope/logs"),
        ("GET", "/v1/containers/t-nope/stats"),
    ],
)
def test_unknown_containers_are_404(client: AgentClient, method: str, path: str) -> None:
    response = client.send(method, path)
    assert response.status_code == 404
    assert "t-nope" in response.json()["detail"]
