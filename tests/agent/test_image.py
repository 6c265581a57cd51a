"""The agent's image, installed on a local server the way the deploy installs it: config and
folders written, image loaded into the server's own Docker, started with the exact
`docker run` line from engine/install/agent.py. Then it answers over HTTPS at the server's address
with the certificate it made, heartbeats to a control plane on the host, reports OOM kills,
and runs a real `apt-get update` in the server's namespaces."""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker.errors
import pytest

from engine.agent.client import AgentClient
from engine.agent.endpoint import AgentEndpoint, fingerprint_of
from engine.agent.image import ensure_agent_image
from engine.install.agent import (
    CERT_PATH,
    CONFIG_DIR,
    CONFIG_PATH,
    HOST_DIRECTORIES,
    AgentSettings,
    agent_run_options,
    docker_run_argv,
    render_agent_config,
)
from engine.providers.local.dockerd import PrivateDaemon
from engine.providers.local.machines import MachineSpec, create_machine, write_seed
from engine.tokens import agent_token, heartbeat_token, token_sha256
from tests.support.agent import FLEET, Reports
from tests.support.http import serve
from tests.support.wait import wait_until

SERVER = "agent-1"


@dataclass
class Installed:
    machine: Any
    client: AgentClient
    endpoint: AgentEndpoint
    reports: Reports


def put_file(machine: Any, path: str, data: bytes, mode: int) -> None:
    """Copy bytes into the machine, as the deploy's upload over SSH would."""
    folder, name = path.rsplit("/", 1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    assert machine.put_archive(folder, buffer.getvalue())


def load_image(docker_client: Any, machine: Any, tag: str) -> None:
    """`docker save` here, `docker load` in the machine (there is no registry)."""
    with tempfile.TemporaryFile() as saved, tempfile.TemporaryFile() as wrapped:
        for chunk in docker_client.images.get(tag).save(named=True):
            saved.write(chunk)
        size = saved.tell()
        saved.seek(0)
        with tarfile.open(fileobj=wrapped, mode="w") as tar:
            info = tarfile.TarInfo("image.tar")
            info.size = size
            tar.addfile(info, saved)
        wrapped.seek(0)
        assert machine.put_archive("/tmp", wrapped)
    loaded = machine.exec_run(["docker", "load", "-i", "/tmp/image.tar"])
    assert loaded.exit_code == 0, loaded.output.decode()
    machine.exec_run(["rm", "/tmp/image.tar"])


def certificate(machine: Any) -> str:
    """The agent's certificate once it has made it (what the deploy reads over SSH)."""
    read = machine.exec_run(["cat", CERT_PATH])
    text = str(read.output.decode())
    return text if read.exit_code == 0 and "END CERTIFICATE" in text else ""


def run_in(machine: Any, *argv: str) -> str:
    result = machine.exec_run(list(argv))
    assert result.exit_code == 0, result.output.decode()
    return str(result.output.decode())


@pytest.fixture(scope="module")
def installed(
    docker_client: Any,
    dockerd: PrivateDaemon,
    golden_image: str,
    busybox_image: str,
    fleet_key: bytes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    image = ensure_agent_image(docker_client, say=print)
    seed = tmp_path_factory.mktemp("agent-server") / "seed"
    write_seed(seed, instance_id="i-agent-1", hostname=SERVER, user_data="#cloud-config\n{}\n")
    machine = create_machine(
        docker_client,
        MachineSpec(
            name=f"fleet-test-{SERVER}", hostname=SERVER, image=golden_image, seed_dir=seed
        ),
    )
    received = Reports(key=fleet_key)
    gateway = str(dockerd.subnet.network_address + 1)  # the host, on the test daemon's bridge
    try:
        assert b"status: done" in machine.exec_run(["cloud-init", "status", "--wait"]).output
        wait_until(lambda: machine.exec_run(["docker", "info"]).exit_code == 0, what="dockerd")
        load_image(docker_client, machine, image)
        load_image(docker_client, machine, busybox_image)
        with serve(received.app(), host=gateway) as control_plane:
            settings = AgentSettings(fleet=FLEET, server=SERVER, control_plane_url=control_plane)
            token = agent_token(fleet_key, FLEET, SERVER)
            config = render_agent_config(
                settings,
                token_sha256=token_sha256(token),
                heartbeat_token=heartbeat_token(fleet_key, FLEET, SERVER),
            )
            run_in(machine, "mkdir", "-p", "-m", "0700", *HOST_DIRECTORIES)
            put_file(machine, CONFIG_PATH, config.encode(), 0o600)
            run_in(machine, *docker_run_argv(agent_run_options(image, settings)))
            pem = wait_until(lambda: certificate(machine), what="the agent's certificate")
            machine.reload()
            endpoint = AgentEndpoint(
                server=SERVER,
                address=machine.attrs["NetworkSettings"]["IPAddress"],
                port=settings.port,
                fingerprint=fingerprint_of(pem),
                token=token,
            )
            with AgentClient(endpoint) as client:
                yield Installed(machine=machine, client=client, endpoint=endpoint, reports=received)
    finally:
        machine.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(f"fleet-test-{SERVER}-docker").remove()


def test_the_image_holds_only_what_the_agent_runs(docker_client: Any) -> None:
    image = docker_client.images.get(ensure_agent_image(docker_client, say=print))
    assert image.attrs["Size"] < 100 * 10**6
    assert len(image.attrs["RootFS"]["Layers"]) == 1
    probe = docker_client.containers.create(image.id)
    try:
        for needed in ("/usr/bin/python3", "/usr/bin/openssl", "/usr/bin/nsenter"):
            assert probe.get_archive(needed)
        for absent in ("/bin/sh", "/usr/bin/apt-get", "/usr/bin/dpkg", "/usr/share/doc"):
            with pytest.raises(docker.errors.NotFound):
                probe.get_archive(absent)
    finally:
        probe.remove()


def test_the_agent_answers_over_https_at_the_servers_address(installed: Installed) -> None:
    client = installed.client
    assert wait_until(lambda: _healthy(client), what="/v1/health") == {"status": "ok"}
    mode = run_in(installed.machine, "stat", "-c", "%a", f"{CONFIG_DIR}/tls/key.pem").strip()
    assert mode == "600"
    agent = next(c for c in client.containers() if c.name == "fleet-agent")
    assert agent.state == "running"
    details = client.call("GET", "/v1/containers/fleet-agent")
    assert details["restart_policy"]["name"] == "unless-stopped"
    assert details["labels"]["fleet-server"] == SERVER
    stats = client.call("GET", "/v1/containers/fleet-agent/stats")
    assert stats["memory_bytes"] > 10 * 2**20 and stats["pids"] >= 1
    metrics = client.metrics()
    assert metrics.cpu_per_core and metrics.memory_total_bytes > 0


def _healthy(client: AgentClient) -> dict[str, Any] | None:
    try:
        return client.health()
    except Exception:  # not listening yet
        return None


def test_heartbeats_reach_the_control_plane_with_the_pinned_fingerprint(
    installed: Installed,
) -> None:
    received = installed.reports
    beat = wait_until(lambda: received.heartbeats, what="a heartbeat", timeout_s=40)[0]
    assert received.rejected == []
    assert beat["server"] == SERVER
    assert beat["tls_fingerprint"] == installed.endpoint.fingerprint
    assert beat["agent"]["port"] == installed.endpoint.port
    assert "fleet-agent" in [c["name"] for c in beat["containers"]["items"]]


def test_an_oom_kill_is_reported_as_it_happens(installed: Installed, busybox_image: str) -> None:
    def run(name: str, script: str) -> str:
        created = installed.client.call(
            "POST",
            "/v1/containers",
            json={
                "image": busybox_image,
                "name": name,
                "command": ["sh", "-c", script],
                "memory_mb": 8,
            },
        )
        container_id: str = created["id"]
        return container_id

    greedy = "exec dd if=/dev/zero of=/dev/null bs=64M count=1"
    later = run("t-oom", f"sleep 1; {greedy}")
    at_once = run("t-oom-early", greedy)
    received = installed.reports

    def died(container_id: str) -> dict[str, Any] | None:
        return next(
            (
                e
                for e in list(received.events)
                if (e["container"]["id"], e["event"]) == (container_id, "die")
            ),
            None,
        )

    for container_id in (later, at_once):
        die = wait_until(lambda c=container_id: died(c), what=f"the die of {container_id[:12]}")
        assert (die["exit_code"], die["oom_killed"]) == (137, True)
    # Docker's own oom event comes when the kill is not in the container's first moments (a
    # kill right at the start may come before Docker listens: the kernel's log tells the agent).
    wait_until(lambda: "oom" in received.events_of(later), what="the oom event")
    assert received.events_of(later)[0] == "start"
    details = installed.client.call("GET", "/v1/containers/t-oom")
    assert details["state"]["oom_killed"] is True


def test_a_package_update_runs_in_the_servers_namespaces(installed: Installed) -> None:
    client = installed.client
    task = client.call("POST", "/v1/system/update")
    assert task["command"][:2] == ["nsenter", "--target"]

    def done() -> dict[str, Any] | None:
        current: dict[str, Any] = client.call("GET", f"/v1/tasks/{task['id']}")
        return current if current["state"] != "running" else None

    finished = wait_until(done, timeout_s=300, what="apt-get update")
    log = client.call("GET", f"/v1/tasks/{task['id']}/log")
    assert finished["state"] == "succeeded", log["text"][-2000:]
    assert "Reading package lists..." in log["text"]
    lists = run_in(installed.machine, "ls", "/var/lib/apt/lists")
    assert "_dists_bookworm_InRelease" in lists  # the server's files, not the agent's
