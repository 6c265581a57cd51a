"""Debian 12 servers to install: golden-image containers booted with cloud-init, an admin user
that logs in with a test key, and the host key read out of band (`docker exec`), the way
the real engine gets it from the phone-home. Also a stand-in agent to install.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.cloudinit import render_user_data
from engine.install.model import AgentFile, AgentRun, InstallHost
from engine.model import ProviderName
from engine.providers.local.machines import MachineSpec, create_machine, write_seed

ADMIN = "fleet"
AGENT_PORT = 7567
STAND_IN_PAGE = "fleet-test-agent"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    container: Any
    address: str
    host_key: str
    ssh_port: int = 22

    def host(self, key: Path, *, agent: AgentRun | None = None, host_key: str = "") -> InstallHost:
        """How the engine reaches this target (the pinned key may be overridden)."""
        return InstallHost(
            name=self.name,
            address=self.address,
            user=ADMIN,
            host_keys=(host_key or self.host_key,),
            private_key=str(key),
            port=self.ssh_port,
            agent=agent,
        )

    def run(self, *argv: str, user: str = "root") -> str:
        """Run a command in the target out of band; fail on a non-zero exit."""
        result = self.container.exec_run(list(argv), user=user)
        text = result.output.decode(errors="replace")
        assert result.exit_code == 0, f"{' '.join(argv)} exited {result.exit_code}: {text}"
        return text


def make_ssh_key(folder: Path) -> Path:
    """A fresh ed25519 key pair; returns the private key's path (the .pub is beside it)."""
    key = folder / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", str(key)],
        check=True,
    )
    return key


def user_data(name: str, public_key: str, ssh_port: int) -> str:
    """The engine's own user_data for a local server; its phone-home goes nowhere here."""
    return render_user_data(
        fleet="install-tests",
        server=name,
        hostname=name,
        phone_home_url="http://127.0.0.1:9/v1/phone-home",
        token=secrets.token_urlsafe(24),
        admin_user=ADMIN,
        authorized_keys=[public_key],
        provider=ProviderName.LOCAL,
        ssh_port=ssh_port,
        give_up_after_s=30,
    )


def boot_targets(
    client: Any,
    image: str,
    names: list[str],
    key: Path,
    seeds: Path,
    *,
    ssh_ports: dict[str, int] | None = None,
) -> list[Target]:
    """Boot one container per name, all at once, and return them once cloud-init is done."""
    public_key = key.with_suffix(".pub").read_text().strip()
    ports = ssh_ports or {}
    containers = []
    for name in names:
        seed = seeds / name
        text = user_data(name, public_key, ports.get(name, 22))
        write_seed(seed, instance_id=f"i-{name}", hostname=name, user_data=text)
        spec = MachineSpec(name=name, hostname=name, image=image, seed_dir=seed)
        containers.append(create_machine(client, spec))
    targets = []
    for name, container in zip(names, containers, strict=True):
        status = container.exec_run(["cloud-init", "status", "--wait"]).output.decode()
        assert "status: done" in status, f"{name} did not boot: {status}"
        container.reload()
        key_line = container.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).output
        targets.append(
            Target(
                name=name,
                container=container,
                address=container.attrs["NetworkSettings"]["IPAddress"],
                host_key=" ".join(key_line.decode().split()[:2]),
                ssh_port=ports.get(name, 22),
            )
        )
    return targets


def remove_targets(client: Any, targets: list[Target]) -> None:
    for target in targets:
        target.container.remove(force=True, v=True)
        client.volumes.get(f"{target.name}-docker").remove(force=True)


def agent_run(image: str, *, token: str, network: str) -> AgentRun:
    """A stand-in agent from the busybox image (tests.support.docker): an HTTP server on the
    host network ("host") or with its port published ("publish"), started the way
    engine.install.agent.docker_run_argv starts the real one."""
    port = (
        ("--network", "host") if network == "host" else ("--publish", f"{AGENT_PORT}:{AGENT_PORT}")
    )
    config = "/etc/fleet-agent"
    serve = f"echo {STAND_IN_PAGE} > /tmp/index.html && exec httpd -f -p {AGENT_PORT} -h /tmp"
    return AgentRun(
        image=image,
        argv=(
            *("docker", "run", "--detach", "--name", "fleet-agent"),
            *("--restart", "unless-stopped", *port),
            *("--mount", f"type=bind,source={config},target={config},readonly"),
            *(image, "/bin/sh", "-c", serve),
        ),
        directories=(config,),
        files=(AgentFile(path=f"{config}/token", content=token),),
        health=("curl", "-fsS", f"http://127.0.0.1:{AGENT_PORT}/"),
    )
