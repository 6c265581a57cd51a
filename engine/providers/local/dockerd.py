"""Find a Docker engine to talk to, or start one.

The local provider uses the Docker engine the user already has (`$DOCKER_HOST`, else
/var/run/docker.sock). On a fresh Debian machine where the `docker.io` package is installed but
no daemon runs (no systemd, as in containers and CI), `ensure_daemon` starts the system daemon
itself and says so. Tests start private daemons instead (`PrivateDaemon`): each has its own
socket, data root, exec root, pid file, bridge and address pool, so several can run side by side
without touching the user's engine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError

SYSTEM_SOCKET = Path("/var/run/docker.sock")
SYSTEM_LOG = Path("/var/log/fleet-engine-dockerd.log")
START_TIMEOUT_S = 60.0


def daemon_client(url: str, *, timeout: float = 600) -> Any:
    """A docker-py client for the Docker engine at `url` (unix:// or tcp://); the engine's one
    way to make one, so docker-py stays inside the local provider."""
    import docker

    return docker.DockerClient(base_url=url, timeout=timeout)


def _ping(url: str, timeout: float = 3.0) -> bool:
    """Whether a Docker engine answers at `url` (unix:// or tcp://)."""
    try:
        client = daemon_client(url, timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure to connect means "not there"
        return False


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ping(url, timeout=1.0):
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EngineError(
                f"dockerd exited with code {process.returncode}; its log says:\n{tail}"
            )
        if time.monotonic() > deadline:
            raise EngineError(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.2)


def uplink_mtu() -> int:
    """The MTU of the interface with the default route; containers must not exceed it."""
    try:
        out = subprocess.run(
            ["ip", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
        ).stdout.split()
        device = out[out.index("dev") + 1]
        return int(Path(f"/sys/class/net/{device}/mtu").read_text())
    except (OSError, ValueError, IndexError, subprocess.CalledProcessError):
        return 1500


def docker_url() -> str:
    """Where the local provider's Docker engine is: $DOCKER_HOST, else the system socket."""
    return os.environ.get("DOCKER_HOST") or f"unix://{SYSTEM_SOCKET}"


def ensure_daemon(*, say: Callable[[str], None] = print) -> str:
    """The URL of a running Docker engine, starting the system one if it is installed but idle."""
    url = docker_url()
    if _ping(url):
        return url
    if os.environ.get("DOCKER_HOST"):
        raise EngineError(
            f"DOCKER_HOST is {url}, but no Docker engine answers there; start it or "
            "unset DOCKER_HOST to use the local one"
        )
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError(
            "no Docker engine is running and none is installed; install one "
            "(on Debian: apt-get install docker.io) or run `bash .ci/setup`"
        )
    if os.geteuid() != 0:
        raise EngineError(
            "the Docker engine is installed but not running; start it "
            "(sudo systemctl start docker, or sudo dockerd &) and try again"
        )
    say(f"starting the Docker engine (dockerd) for the local provider; its log is {SYSTEM_LOG}")
    with SYSTEM_LOG.open("ab") as log:
        process = subprocess.Popen(
            [dockerd, f"--mtu={uplink_mtu()}"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _wait_for(url, process, SYSTEM_LOG)
    return url


def _end(pid: int, timeout_s: float = 30.0) -> None:
    """End a daemon this process did not start (but whose pid file it owns): TERM, then KILL."""
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while _is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _is_running(pid: int) -> bool:
    """Whether `pid` lives (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    out = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        first = line.split()[0]
        if first != "default":
            nets.append(ipaddress.IPv4Network(first, strict=False))
    return nets + _masqueraded_networks()


def _iptables_rules(table: str) -> list[str]:
    try:
        result = subprocess.run(
            ["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True
        )
    except FileNotFoundError:
        return []
    return result.stdout.splitlines() if result.returncode == 0 else []


def _masqueraded_networks() -> list[ipaddress.IPv4Network]:
    """Sources of NAT rules, even of daemons long gone: a daemon's `-s NET ! -o BRIDGE` rule
    outlives it, and would masquerade a new daemon's traffic on the same network."""
    nets = []
    for rule in _iptables_rules("nat"):
        words = rule.split()
        if "-s" in words:
            nets.append(ipaddress.IPv4Network(words[words.index("-s") + 1], strict=False))
    return nets


def _free_block(used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random /16 in 10.128.0.0/9 that overlaps nothing on this host."""
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{128 + secrets.randbelow(120)}.0.0/16")
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise EngineError("no free private address block for a Docker daemon in 10.128.0.0/9")


@dataclass(slots=True)
class PrivateDaemon:
    """A dockerd of our own, for tests and benchmarks; `stop` ends it and removes its bridge.

    `prepare` makes the bridge and picks the addresses without starting anything, for a
    daemon that someone else starts with `config()` as its daemon.json (the engine itself,
    when a test runs it as a stranger would); `start` does both.
    """

    root: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    pool: ipaddress.IPv4Network
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def pidfile(self) -> Path:
        return self.root / "docker.pid"

    @classmethod
    def prepare(cls, root: Path) -> PrivateDaemon:
        """The bridge and the addresses of a daemon whose every file lives under `root`.

        Its bridge gets a random free /24 and its user-defined networks a free /16 pool, so
        daemons started by parallel test runs never share addresses.
        """
        root.mkdir(parents=True, exist_ok=True)
        used = _used_networks()
        block = _free_block(used)
        subnet = ipaddress.IPv4Network(f"{block.network_address}/24")
        pool = _free_block([*used, block])
        bridge = f"fe{secrets.token_hex(4)}"
        gateway = f"{subnet.network_address + 1}/{subnet.prefixlen}"
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", gateway, "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        return cls(root=root, bridge=bridge, subnet=subnet, pool=pool)

    def config(self) -> dict[str, object]:
        """The daemon.json of this daemon: its files, bridge and address pool (no socket)."""
        return {
            "data-root": str(self.root / "data"),
            "exec-root": str(self.root / "exec"),
            "pidfile": str(self.pidfile),
            "bridge": self.bridge,
            "default-address-pools": [{"base": str(self.pool), "size": 24}],
            "iptables": True,
        }

    @classmethod
    def start(cls, root: Path) -> PrivateDaemon:
        """Prepare a daemon under `root` and start it on its own socket there."""
        daemon = cls.prepare(root)
        config = root / "daemon.json"
        config.write_text(json.dumps(daemon.config()), encoding="utf-8")
        log = root / "dockerd.log"
        with log.open("ab") as out:
            daemon.process = subprocess.Popen(
                [
                    "dockerd",
                    f"--config-file={config}",
                    f"--host={daemon.url}",
                    f"--mtu={uplink_mtu()}",
                ],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_for(daemon.url, daemon.process, log)
        except BaseException:
            daemon.stop()
            raise
        return daemon

    def stop(self) -> None:
        """Stop the daemon (its containers die with it) and delete its bridge."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        elif self.pidfile.is_file():
            _end(int(self.pidfile.read_text().strip()))
        # dockerd leaves its iptables rules behind; drop the ones naming this daemon's bridge.
        for table in ("nat", "filter"):
            for rule in _iptables_rules(table):
                words = shlex.split(rule)
                if words[0] == "-A" and self.bridge in words:
                    subprocess.run(
                        ["iptables", "-w", "-t", table, "-D", *words[1:]],
                        check=False,
                        capture_output=True,
                    )
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
        # dockerd bind-mounts its data root; after an unclean end the mount can outlive it.
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for target in sorted((m.split()[1] for m in mounts), reverse=True):
            if target.startswith(f"{self.root}/"):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)
