"""The install, for real: pyinfra over SSH into Debian 12 servers (golden-image containers
booted with cloud-init), with pinned host keys, run the way the install job runs it.

Four servers, booted with the engine's own user_data, share the module: `a` runs the agent
on the host network and gets the iptables firewall; `b` has nftables installed, sshd on port
2222 and publishes the agent's port through Docker; `c` is cut off the network in the middle
of its install; `d` is installed like `a`, with every fact the install keeps checked. The
test process is the control plane: it reaches the servers from its address on the test's own
bridge.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko
import pytest
from pyinfra.api import FactBase

from deploys import support
from deploys.agent import PARTIAL
from deploys.facts import RUN_HASH_LABEL, DockerContainer, DockerImageId, DockerVersion
from engine.errors import EngineError
from engine.install.model import (
    AgentRun,
    HostRequest,
    HostResult,
    ImageArchive,
    InstallHost,
    InstallSettings,
)
from engine.install.runner import install_hosts
from engine.install.sharing import image_archives
from engine.install.worker import run_request
from engine.model import DockerInstall, DockerSource, Install, SystemInstall
from engine.providers.local.dockerd import PrivateDaemon
from tests.support.targets import (
    AGENT_PORT,
    STAND_IN_PAGE,
    Target,
    agent_run,
    boot_targets,
    make_ssh_key,
    remove_targets,
)

TOKEN = "agent-token-" + secrets.token_hex(12)


@dataclass(frozen=True)
class FirstRun:
    results: dict[str, HostResult]
    logs: Path
    finished: list[str]


INSTALL = Install(
    docker=DockerInstall(source=DockerSource.DISTRO, log_max_size="20m", log_max_files=4),
    system=SystemInstall(
        timezone="Europe/Berlin",
        swap="1G",
        sysctl=(("net.core.somaxconn", "4096"), ("vm.swappiness", "10")),
    ),
)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ssh_key(tmp_path_factory.mktemp("ssh"))


@pytest.fixture(scope="module")
def servers(
    docker_client: Any, golden_image: str, key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Target]]:
    names = [f"inst-{letter}-{secrets.token_hex(2)}" for letter in "abcd"]
    # b's sshd listens on 2222 (set by its user_data), as `ssh.port` makes it.
    targets = boot_targets(
        docker_client,
        golden_image,
        names,
        key,
        tmp_path_factory.mktemp("seeds"),
        ssh_ports={names[1]: 2222},
    )
    try:
        by_role = dict(zip("abcd", targets, strict=True))
        # b gets nftables, so the firewall takes its nft form there.
        by_role["b"].run(
            "sh", "-c", "apt-get update -qq && apt-get install -y -qq nftables >/dev/null 2>&1"
        )
        yield by_role
    finally:
        remove_targets(docker_client, targets)


@pytest.fixture(scope="module")
def control_plane(dockerd: PrivateDaemon) -> str:
    """The test's own address on the bridge: the control plane the agents let in."""
    return str(dockerd.subnet.network_address + 1)


@pytest.fixture(scope="module")
def settings(dockerd: PrivateDaemon, control_plane: str) -> InstallSettings:
    return InstallSettings(install=INSTALL, control_plane=(control_plane,), docker_url=dockerd.url)


@pytest.fixture(scope="module")
def hosts(servers: dict[str, Target], key: Path, busybox_image: str) -> dict[str, Any]:
    image = busybox_image
    return {
        "a": servers["a"].host(key, agent=agent_run(image, token=TOKEN, network="host")),
        "b": servers["b"].host(key, agent=agent_run(image, token=TOKEN, network="publish")),
        "c": servers["c"].host(key, agent=agent_run(image, token=TOKEN, network="host")),
        "d": servers["d"].host(key, agent=agent_run(image, token=TOKEN, network="host")),
    }


@pytest.fixture(scope="module")
def fresh_dry_run(hosts: dict[str, Any], settings: InstallSettings) -> tuple[HostResult, ...]:
    return install_hosts([hosts["a"]], settings, dry_run=True)


def _cut_off_when_docker_is_configured(docker_client: Any, target: Target) -> threading.Thread:
    """Disconnect `target` from the network once its install has reached the Docker deploy."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # The golden image has a daemon.json of its own: wait for the install's settings.
            written = ["grep", "-q", '"20m"', "/etc/docker/daemon.json"]
            if target.container.exec_run(written).exit_code == 0:
                docker_client.networks.get("bridge").disconnect(target.container)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def first_run(
    fresh_dry_run: tuple[HostResult, ...],
    docker_client: Any,
    servers: dict[str, Target],
    hosts: dict[str, Any],
    settings: InstallSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> FirstRun:
    logs = tmp_path_factory.mktemp("install-logs")
    watcher = _cut_off_when_docker_is_configured(docker_client, servers["c"])
    finished: list[str] = []
    results = install_hosts(
        [hosts["a"], hosts["b"], hosts["c"]],
        settings,
        log_dir=logs,
        on_result=lambda result: finished.append(result.name),
    )
    watcher.join(timeout=10)
    return FirstRun(results=dict(zip("abc", results, strict=True)), logs=logs, finished=finished)


@pytest.fixture(scope="module")
def second_run(
    first_run: FirstRun,
    hosts: dict[str, Any],
    settings: InstallSettings,
) -> dict[str, HostResult]:
    return dict(zip("ab", install_hosts([hosts["a"], hosts["b"]], settings), strict=True))


def _connect(address: str, port: int, source: str | None = None) -> str:
    """open, refused or silent: what a TCP connection from `source` meets."""
    with socket.socket() as sock:
        sock.settimeout(2)
        if source:
            sock.bind((source, 0))
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "silent"
        return "open"


@pytest.fixture
def other_source(dockerd: PrivateDaemon) -> Iterator[str]:
    """A second address of the test's on its bridge: a source the agents must refuse."""
    address = str(dockerd.subnet.broadcast_address - 5)
    subprocess.run(
        ["ip", "addr", "add", f"{address}/{dockerd.subnet.prefixlen}", "dev", dockerd.bridge],
        check=True,
    )
    try:
        yield address
    finally:
        subprocess.run(
            ["ip", "addr", "del", f"{address}/{dockerd.subnet.prefixlen}", "dev", dockerd.bridge],
            check=False,
        )


def test_a_dry_run_lists_what_would_change_and_changes_nothing(
    fresh_dry_run: tuple[HostResult, ...], servers: dict[str, Target]
) -> None:
    (result,) = fresh_dry_run
    assert result.ok, result.error
    assert result.dry_run
    for name in (
        "system | Harden sshd",
        "system | Apply the host firewall",
        "docker | Write the Docker daemon settings",
        "agent | Deliver the agent image",
        "agent | Run the agent",
    ):
        assert name in result.changed
    assert "docker | Install Docker Engine (docker.io)" not in result.changed  # it is there
    a = servers["a"]
    assert "10-fleet.conf" not in a.run("ls", "/etc/ssh/sshd_config.d")
    assert "FLEET-INPUT" not in a.run("iptables", "-S")


def test_the_first_run_changes_things(first_run: FirstRun) -> None:
    results = first_run.results
    for role in "ab":
        result = results[role]
        assert result.ok, result.error
        assert not result.dry_run
        assert "system | Apply the host firewall" in result.changed
        assert "agent | Run the agent" in result.changed
        assert all(op.seconds >= 0 for op in result.operations)
        assert result.connect_seconds > 0


def test_every_fact_the_install_asks_for_is_read_ahead(first_run: FirstRun) -> None:
    for role in "ab":
        log = (first_run.logs / f"{first_run.results[role].name}.log").read_text()
        assert "no deploy lists the fact" not in log


def test_what_an_operation_says_it_cannot_change_reads_the_same_after_it(
    hosts: dict[str, Any],
    settings: InstallSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A fresh install that reads again, and compares, every answer it keeps across an
    operation because the operation says it cannot change it (deploys.support.CHECK_KEPT).
    Run here in the test's process: an operation that changes more than it says fails."""
    monkeypatch.setattr(support, "CHECK_KEPT", True)
    caplog.set_level(logging.INFO, logger=support.__name__)
    host = hosts["d"]
    archive = image_archives(settings.docker_url, [host.agent.image])[host.agent.image]
    # Docker's own settings as the golden image has them: Docker is not restarted, so the
    # answers of the Docker deploy are kept (and checked) too.
    keeps_docker = replace(
        settings, install=replace(INSTALL, docker=DockerInstall(source=DockerSource.DISTRO))
    )
    result = run_request(
        HostRequest(host=host, settings=keeps_docker, folder=str(tmp_path), archive=archive)
    )
    assert result.ok, result.error
    assert "agent | Run the agent" in result.changed
    checked = {
        name
        for r in caplog.records
        if r.getMessage().endswith(" read as before")
        for name in r.getMessage().split(" across ")[1].removesuffix(" read as before").split(", ")
    }
    assert checked == {
        "system | Set the time zone",
        "system | Apply kernel settings",
        "system | Configure unattended security upgrades",
        "system | Harden sshd",
        "docker | Let fleet use Docker",
        "agent | Write the agent's files",
        "agent | Deliver the agent image",
    }


def test_a_copy_the_server_refuses_fails_the_image_step_with_its_reason(
    first_run: FirstRun,
    hosts: dict[str, Any],
    settings: InstallSettings,
    servers: dict[str, Target],
    tmp_path: Path,
) -> None:
    """The agent image is copied beside the install (deploys.agent); when the server refuses
    what it was sent, the install fails at the image step and says why. Run in the test's
    process against an installed server, with an archive that is not what its digest says."""
    host = hosts["a"]
    bogus = tmp_path / "agent.tar.gz"
    bogus.write_bytes(b"not the engine's archive")
    bogus.with_name("agent.tar.gz.sha256").write_text("0" * 64 + "\n")
    archive = ImageArchive(
        reference=host.agent.image, image_id="sha256:" + "1" * 64, path=str(bogus)
    )
    result = run_request(
        HostRequest(host=host, settings=settings, folder=str(tmp_path), archive=archive)
    )
    assert not result.ok
    assert result.error == (
        f"failed during 'agent | Deliver the agent image': could not deliver {host.agent.image}:"
        " its sha256 is not that of the archive of the engine"
    )
    assert "agent | Run the agent" not in [op.name for op in result.operations]
    servers["a"].run("test", "!", "-e", PARTIAL)


def test_a_server_that_goes_away_fails_alone_with_a_clear_message(
    first_run: FirstRun, servers: dict[str, Target]
) -> None:
    results = first_run.results
    assert results["a"].ok and results["b"].ok
    assert first_run.finished[-1] == servers["c"].name  # reported as each host ended
    lost = results["c"]
    assert not lost.ok
    assert f"lost the SSH connection to {servers['c'].address}:22 during 'docker |" in lost.error


def test_the_second_run_changes_nothing(second_run: dict[str, HostResult]) -> None:
    for result in second_run.values():
        assert result.ok, result.error
        assert result.changed == ()
        assert len(result.operations) >= 15
        # Each deploy (system, Docker, agent) reads its facts with one command; one more,
        # beside them, finds the agent's image loaded.
        assert result.commands == 4


def test_a_dry_run_after_the_install_lists_nothing(
    second_run: dict[str, HostResult], hosts: dict[str, Any], settings: InstallSettings
) -> None:
    (result,) = install_hosts([hosts["b"]], settings, dry_run=True)
    assert result.ok, result.error
    assert result.changed == ()


def test_docker_answers_with_the_settings_asked_for(
    first_run: FirstRun, servers: dict[str, Target]
) -> None:
    for role in "ab":
        server = servers[role]
        assert server.run("docker", "info", "--format", "{{.ServerVersion}}").strip()
        daemon = json.loads(server.run("cat", "/etc/docker/daemon.json"))
        assert daemon["log-opts"] == {"max-size": "20m", "max-file": "4"}
        assert daemon["live-restore"] is True
        assert "fleet-agent" in server.run("docker", "ps", "--format", "{{.Names}}", user="fleet")


def test_the_docker_facts_read_what_the_docker_client_shows(
    first_run: FirstRun, servers: dict[str, Target]
) -> None:
    server = servers["a"]

    def read(fact: FactBase[Any], **kwargs: Any) -> Any:
        return fact.process(server.run("sh", "-c", fact.command(**kwargs)).splitlines())

    def docker(template: str, *target: str) -> str:
        return server.run("docker", "inspect", "--format", template, *target).strip()

    assert (
        read(DockerVersion())
        == server.run("docker", "info", "--format", "{{.ServerVersion}}").strip()
    )
    reference = docker("{{.Config.Image}}", "fleet-agent")
    assert read(DockerImageId(), reference=reference) == docker("{{.Id}}", reference)
    assert read(DockerContainer(), container="fleet-agent") == {
        "image": docker("{{.Image}}", "fleet-agent"),
        "run_hash": docker(f'{{{{index .Config.Labels "{RUN_HASH_LABEL}"}}}}', "fleet-agent"),
        "running": True,
    }
    assert read(DockerImageId(), reference="registry.example/no-such:1") is None
    assert read(DockerContainer(), container="no-such-container") is None


def test_the_agent_answers_its_health_check_and_has_its_token(
    first_run: FirstRun, servers: dict[str, Target]
) -> None:
    for role in "ab":
        server = servers[role]
        assert server.run("curl", "-fsS", f"http://127.0.0.1:{AGENT_PORT}/") == f"{STAND_IN_PAGE}\n"
        policy = server.run(
            "docker", "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", "fleet-agent"
        )
        assert policy.strip() == "unless-stopped"
        assert (
            server.run(
                "docker", "exec", "fleet-agent", "/bin/busybox", "cat", "/etc/fleet-agent/token"
            )
            == TOKEN
        )
        assert server.run("stat", "-c", "%a", "/etc/fleet-agent/token").strip() == "600"


def test_the_agent_port_opens_to_the_control_plane_only(
    first_run: FirstRun,
    servers: dict[str, Target],
    control_plane: str,
    other_source: str,
) -> None:
    # a: agent on the host network, iptables; b: port published by Docker, nftables, and
    # sshd on 2222 (so 22 is just another closed port there).
    assert "fleet-firewall:" in servers["a"].run("iptables", "-S", "FLEET-INPUT")
    assert "fleet-firewall:" in servers["b"].run("nft", "list", "table", "inet", "fleet")
    for role in "ab":
        address = servers[role].address
        seen = {
            "agent from the control plane": _connect(address, AGENT_PORT, control_plane),
            "agent from elsewhere": _connect(address, AGENT_PORT, other_source),
            "ssh from elsewhere": _connect(address, servers[role].ssh_port, other_source),
            "another port": _connect(address, 22 if role == "b" else 9, control_plane),
        }
        assert seen == {
            "agent from the control plane": "open",
            "agent from elsewhere": "refused",
            "ssh from elsewhere": "open",
            "another port": "silent",  # the rest is dropped
        }, f"{role}: {seen}"


def test_flushed_firewall_rules_come_back_with_the_boot_script(
    second_run: dict[str, HostResult], servers: dict[str, Target], control_plane: str
) -> None:
    a = servers["a"]
    a.run("iptables", "-F", "FLEET-INPUT")
    assert "fleet-firewall:" not in a.run("iptables", "-S", "FLEET-INPUT")
    a.run("/etc/init.d/fleet-firewall", "start")
    assert "fleet-firewall:" in a.run("iptables", "-S", "FLEET-INPUT")
    assert _connect(a.address, AGENT_PORT, control_plane) == "open"


def test_sshd_takes_keys_only(first_run: FirstRun, servers: dict[str, Target]) -> None:
    a = servers["a"]
    effective = a.run("sshd", "-T")
    assert "passwordauthentication no" in effective
    assert "permitrootlogin no" in effective
    transport = paramiko.Transport((a.address, 22))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as info:
            transport.auth_password("fleet", "guess")
        assert info.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_the_system_baseline_is_in_place(first_run: FirstRun, servers: dict[str, Target]) -> None:
    results = first_run.results
    a = servers["a"]
    assert a.run("readlink", "-f", "/etc/localtime").strip() == "/usr/share/zoneinfo/Europe/Berlin"
    assert a.run("sysctl", "-n", "net.core.somaxconn").strip() == "4096"
    assert a.run("sysctl", "-n", "net.ipv4.conf.all.accept_redirects").strip() == "0"
    origins = a.run("apt-config", "dump", "Unattended-Upgrade::Origins-Pattern")
    assert "label=Debian-Security" in origins
    assert 'label=Debian"' not in origins
    assert "unattended-upgrades" in a.run(
        "dpkg-query", "-W", "-f", "${Package}\n", "unattended-upgrades"
    )
    # A container shares its host's kernel: swap and vm.* are left out, and say so.
    skipped = " ".join(results["a"].skipped)
    assert "swap: not set up because this server is a docker container" in skipped
    assert "sysctl vm.swappiness: not set" in skipped
    assert "/swapfile" not in a.run("cat", "/proc/swaps")


def test_a_wrong_host_key_is_refused(
    first_run: FirstRun,
    servers: dict[str, Target],
    key: Path,
    settings: InstallSettings,
) -> None:
    impostor = servers["a"].host(key, host_key=servers["b"].host_key)
    (result,) = install_hosts([impostor], settings)
    assert not result.ok
    assert "its SSH host key is not the pinned one" in result.error
    assert result.operations == ()


def test_secrets_never_reach_logs_or_results(
    first_run: FirstRun, servers: dict[str, Target]
) -> None:
    results, logs = first_run.results, first_run.logs
    assert servers["a"].run("cat", "/etc/fleet-agent/token") == TOKEN  # it was delivered
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        f"{servers[role].name}.log" for role in "abc"
    )
    for log in logs.iterdir():
        assert TOKEN not in log.read_text()
    for result in results.values():
        assert TOKEN not in json.dumps(
            [result.error, result.skipped, [o.name for o in result.operations]]
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"control_plane": ()}, "control_plane is empty"),
        ({"control_plane": ("ops.example.com",)}, "is not an IP address or network"),
        ({"host_keys": ()}, "no pinned host key"),
        ({"host_keys": ("AAAA nonsense",)}, "is not an OpenSSH public key"),
        ({"private_key": "/nonexistent/key"}, "is missing or unreadable"),
        ({"agent": ("podman", "run", "--name", "a", "img")}, "does not start with 'docker run'"),
        ({"agent": ("docker", "run", "img")}, "names no container; give it --name"),
        ({"agent": ("docker", "run", "--name", "a", "other")}, "does not run the agent image"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    key = tmp_path / "key"
    key.write_text("x")
    host = InstallHost(
        name="web-1",
        address="192.0.2.1",
        user="fleet",
        host_keys=(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFHSbC7FYCCe9vCB2wcjkGSIMZHrHSEFHB7ANagZnlNK",
        ),
        private_key=str(key),
    )
    settings = InstallSettings(install=Install(), control_plane=("192.0.2.10",))
    host_fields = {k: v for k, v in change.items() if k not in ("control_plane", "agent")}
    if "agent" in change:
        host_fields["agent"] = AgentRun(image="img", argv=change["agent"], health=("true",))
    if "control_plane" in change:
        settings = replace(settings, control_plane=change["control_plane"])
    with pytest.raises(EngineError, match=message):
        install_hosts([replace(host, **host_fields)], settings)
