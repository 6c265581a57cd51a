"""How the agent runs on a server: its container's options and its config file. Pure.

The deploy makes HOST_DIRECTORIES (mode 0700), writes `render_agent_config(...)` to CONFIG_PATH
(mode 0600), loads the image and starts the agent over SSH with
`docker_run_argv(agent_run_options(image, settings))`. On its first start the agent makes its TLS
key and certificate in TLS_DIR; the deploy then reads CERT_PATH and pins `fingerprint_of(pem)`
(engine/agent/endpoint.py).

What the container gets, and why:

    --network host       the agent's port is the server's; heartbeats leave from the server
    --pid host           /proc shows the host's processes and PID 1, whose mount table and
                         namespaces the metrics and system tasks use
    /var/run/docker.sock the Docker engine the agent manages
    / -> /host, read-only, rslave   disk usage of the host's file systems
    /etc/fleet-agent     config (written by the deploy) and TLS material (written by the agent)
    /var/lib/fleet-agent audit log and task records, kept across agent upgrades
    SYS_ADMIN, SYS_PTRACE, apparmor=unconfined   system tasks enter the host's namespaces
                         (nsenter --target 1), which needs setns and access to /proc/1/ns
    /dev/kmsg, read-only, SYSLOG   the kernel's log, which records every OOM kill, also those
                         Docker never learns of (fleet_agent.kernellog)
    --restart unless-stopped   back after a reboot or a crash, unless an operator stopped it

Holding the Docker socket already makes the agent root on the server; the added capabilities
give it nothing it could not take through Docker, and they keep apt out of Docker's hands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.model import (
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    LABEL_SERVER,
    MANAGED_BY,
    Fleet,
    Labels,
)

AGENT_CONTAINER = "fleet-agent"
CONFIG_DIR = "/etc/fleet-agent"
CONFIG_PATH = f"{CONFIG_DIR}/config.json"
CONFIG_MODE = 0o600
CONFIG_DIR_MODE = 0o700
TLS_DIR = f"{CONFIG_DIR}/tls"
CERT_PATH = f"{TLS_DIR}/cert.pem"
KEY_PATH = f"{TLS_DIR}/key.pem"
STATE_DIR = "/var/lib/fleet-agent"
HOST_DIRECTORIES = (CONFIG_DIR, STATE_DIR)  # bind sources must exist before `docker run`
HOST_ROOT = "/host"
DOCKER_SOCKET = "/var/run/docker.sock"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """What differs between agents: whose they are, their port, and where they report."""

    fleet: str
    server: str
    control_plane_url: str
    port: int = 7567
    heartbeat_s: int = 15


def agent_settings(fleet: Fleet, server: str, *, control_plane_url: str) -> AgentSettings:
    """The agent settings of one server of `fleet` (install.agent in the spec)."""
    return AgentSettings(
        fleet=fleet.name,
        server=server,
        control_plane_url=control_plane_url,
        port=fleet.install.agent.port,
        heartbeat_s=fleet.install.agent.heartbeat_s,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    source: str
    target: str
    read_only: bool = False
    propagation: str | None = None

    def to_arg(self) -> str:
        """The value of `docker run --mount`."""
        parts = [f"type=bind,source={self.source},target={self.target}"]
        if self.read_only:
            parts.append("readonly")
        if self.propagation:
            parts.append(f"bind-propagation={self.propagation}")
        return ",".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRunOptions:
    """Everything `docker run` needs to start the agent (see the module docstring)."""

    image: str
    name: str
    restart: str
    network: str
    pid: str
    mounts: tuple[Mount, ...]
    cap_add: tuple[str, ...]
    security_opt: tuple[str, ...]
    devices: tuple[str, ...]
    labels: Labels
    command: tuple[str, ...]


def agent_run_options(image: str, settings: AgentSettings) -> AgentRunOptions:
    """The agent container's options on every server."""
    return AgentRunOptions(
        image=image,
        name=AGENT_CONTAINER,
        restart="unless-stopped",
        network="host",
        pid="host",
        mounts=(
            Mount(source=CONFIG_DIR, target=CONFIG_DIR),
            Mount(source=STATE_DIR, target=STATE_DIR),
            Mount(source=DOCKER_SOCKET, target=DOCKER_SOCKET),
            Mount(source="/", target=HOST_ROOT, read_only=True, propagation="rslave"),
        ),
        cap_add=("SYS_ADMIN", "SYS_PTRACE", "SYSLOG"),
        security_opt=("apparmor=unconfined",),
        devices=("/dev/kmsg:/dev/kmsg:r",),
        labels=(
            (LABEL_FLEET, settings.fleet),
            (LABEL_SERVER, settings.server),
            (LABEL_MANAGED_BY, MANAGED_BY),
        ),
        command=("--config", CONFIG_PATH),
    )


def docker_run_argv(options: AgentRunOptions) -> tuple[str, ...]:
    """The `docker run` command line for `options`, as an argument list (shlex.join it for a
    shell). Example: ("docker", "run", "--detach", "--name", "fleet-agent", ...)."""
    argv = [
        "docker",
        "run",
        "--detach",
        "--name",
        options.name,
        "--restart",
        options.restart,
        "--network",
        options.network,
        "--pid",
        options.pid,
    ]
    for capability in options.cap_add:
        argv += ["--cap-add", capability]
    for option in options.security_opt:
        argv += ["--security-opt", option]
    for device in options.devices:
        argv += ["--device", device]
    for mount in options.mounts:
        argv += ["--mount", mount.to_arg()]
    for key, value in options.labels:
        argv += ["--label", f"{key}={value}"]
    return (*argv, options.image, *options.command)


def render_agent_config(settings: AgentSettings, *, token_sha256: str, heartbeat_token: str) -> str:
    """The agent's config file (JSON). It holds the heartbeat token: write it mode 0600.

    `token_sha256` is engine.tokens.token_sha256(agent_token(...)): the agent never learns the
    token it accepts, only its digest.
    """
    config = {
        "version": 1,
        "fleet": settings.fleet,
        "server": settings.server,
        "listen": "0.0.0.0",  # noqa: S104 - the server's firewall decides who reaches it
        "port": settings.port,
        "heartbeat_interval_s": settings.heartbeat_s,
        "control_plane_url": settings.control_plane_url,
        "token_sha256": token_sha256,
        "heartbeat_token": heartbeat_token,
        "tls_cert": CERT_PATH,
        "tls_key": KEY_PATH,
        "docker_url": f"unix://{DOCKER_SOCKET}",
        "host_root": HOST_ROOT,
        "state_dir": STATE_DIR,
    }
    return json.dumps(config, indent=2) + "\n"
