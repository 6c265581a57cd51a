"""Benchmark: installing servers over SSH (system baseline, Docker, an agent).

Starts a private Docker engine, boots twelve local servers (golden-image containers with
cloud-init) and, twice, prints the wall time of a fresh install on 1 server with where its
time went (connect, then each operation), on 5 servers in parallel with the steps where they
lost time against the 1 (the ratio shows how it scales; target <= 1.2x), and of a no-change
re-run of the 5, each with the CPU time the engine and the servers used and how busy the
machine's cores were meanwhile (with everything on it: the relay, Docker, other tenants):

1. over the servers' bridge, where a round trip takes microseconds. Local servers share the
   engine's cores, so on a machine this small CPU rather than waiting sets the pace;
2. through a relay (bench/relay.py) that puts `--latency-ms` (default 50) into every round
   trip of the engine's SSH connections, as a cloud server's distance does: each command the
   install runs waits for it, while the agent image is copied beside the commands.

Each time the least ratio the cores allow is printed beside it: the five installs' CPU time
(engine and servers; not the relay's) over every core, against the 1-server install. A cloud
server has cores of its own; here the five share the engine's.

Then it boots ten more, installs them with the real agent image copied the way a cloud fleet
gets it (from the engine once, then from server to server) and prints the bytes the engine's
machine sent to them, against the size of the image's archive (target <= 1.5x). Last, one more
gets the real agent image from the engine at the round trip and over an uplink of
`--uplink-mbit` (default 20): the copy goes beside the other steps, so the install takes about
the longer of the two, not their sum. The servers'
bridge stands in for the fleet's private network; what the host sends into it is what the
engine's machine uploads. The machine is shared: the load average is printed first. Needs root,
like the tests; takes a few minutes (the golden and agent images are built on first use).

    python bench/install.py [--latency-ms 50] [--uplink-mbit 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agent.image import ensure_agent_image  # noqa: E402
from engine.install.model import (  # noqa: E402
    AgentRun,
    HostResult,
    ImageSharing,
    InstallHost,
    InstallSettings,
)
from engine.install.runner import FORKER, install_hosts  # noqa: E402
from engine.install.sharing import fleet_sharing, image_archives, saved_archive  # noqa: E402
from engine.model import DockerInstall, DockerSource, Install, SystemInstall  # noqa: E402
from engine.providers.local.dockerd import PrivateDaemon, daemon_client  # noqa: E402
from engine.providers.local.images import ensure_golden_image  # noqa: E402
from tests.support.docker import busybox_rootfs  # noqa: E402
from tests.support.targets import (  # noqa: E402
    Target,
    agent_run,
    boot_targets,
    make_ssh_key,
    remove_targets,
)

PROFILE_MIN_S = 0.1
SLOWER_MIN_S = 0.05


def engine_cpu() -> float:
    """CPU seconds of this process, the processes it has waited for, and the install forker
    with the install processes it forked (and reaped)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    forker = FORKER.pid()
    if forker:
        times = psutil.Process(forker).cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent on anything (the relay, Docker, other
    tenants too): all but idle and waiting for I/O."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def servers_cpu(servers: list[Target]) -> float:
    """CPU seconds the servers' containers have used."""
    return containers_cpu(server.container.id for server in servers)


def containers_cpu(ids: Iterable[str]) -> float:
    """CPU seconds the containers `ids` have used (cgroup v1 accounting)."""
    total = 0
    for container in ids:
        usage = Path(f"/sys/fs/cgroup/cpuacct/docker/{container}/cpuacct.usage")
        total += int(usage.read_text())
    return total / 1e9


def timed(
    label: str,
    servers: list[Target],
    hosts: list[InstallHost],
    settings: InstallSettings,
    sharing: ImageSharing | None = None,
) -> tuple[float, float, tuple[HostResult, ...]]:
    """Installs `hosts`, prints the figures; returns the wall time, the CPU time the engine
    and the servers used together, and the results."""
    cpu = engine_cpu(), servers_cpu(servers), machine_busy()
    started = time.monotonic()
    results = install_hosts(hosts, settings, sharing=sharing)
    wall = time.monotonic() - started
    engine, server = engine_cpu() - cpu[0], servers_cpu(servers) - cpu[1]
    busy = (machine_busy() - cpu[2]) / (wall * (os.cpu_count() or 1))
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    if failed:
        raise SystemExit("install failed:\n" + "\n".join(failed))
    changed = sum(len(r.changed) for r in results)
    commands = sum(r.commands for r in results) / len(results)
    slowest = max(r.seconds for r in results)
    print(
        f"{label:<34} {wall:6.1f} s wall   slowest host {slowest:5.1f} s   "
        f"{changed:3d} operations changed, {commands:2.0f} commands a host   "
        f"CPU: engine {engine:4.1f} s, servers {server:4.1f} s; cores busy {busy:4.0%}"
    )
    return wall, engine + server, results


def profile(result: HostResult) -> None:
    """Where one host's install went: connecting, then each operation that took a while."""
    print(f"  {'connect (SSH, facts of the connection)':<60} {result.connect_seconds:6.2f} s")
    short = [op for op in result.operations if op.seconds < PROFILE_MIN_S]
    for op in result.operations:
        if op.seconds >= PROFILE_MIN_S:
            print(f"  {op.name[:60]:<60} {op.seconds:6.2f} s")
    rest = sum(op.seconds for op in short)
    print(f"  {f'{len(short)} other operations':<60} {rest:6.2f} s")
    accounted = result.connect_seconds + sum(op.seconds for op in result.operations)
    print(f"  {'between operations (facts, planning)':<60} {result.seconds - accounted:6.2f} s")


def slower(one: HostResult, five: tuple[HostResult, ...]) -> None:
    """Where each of the five installs took longer than the one: connecting, and each
    operation whose median over the five is at least SLOWER_MIN_S longer."""
    heading = "where each of the 5 took longer than the 1"
    print(f"  {heading:<44} {'1':>6} {'median':>8} {'slowest':>8}")
    steps = {"connect": [r.connect_seconds for r in (one, *five)]}
    for result in (one, *five):
        for op in result.operations:
            steps.setdefault(op.name, []).append(op.seconds)
    for name, (alone, *others) in steps.items():
        if len(others) == len(five) and statistics.median(others) - alone >= SLOWER_MIN_S:
            print(
                f"  {name[:44]:<44} {alone:6.2f} {statistics.median(others):8.2f}"
                f" {max(others):8.2f} s"
            )


def sent_bytes(bridge: str) -> int:
    """Bytes the host has sent into `bridge` (to the servers on it)."""
    return int(Path(f"/sys/class/net/{bridge}/statistics/tx_bytes").read_text())


def stand_in_agent(image: str) -> AgentRun:
    """The agent's image running a plain web server, so no control plane is needed."""
    return AgentRun(
        image=image,
        argv=(
            *("docker", "run", "--detach", "--name", "fleet-agent", "--network", "host"),
            *("--entrypoint", "python3", image, "-m", "http.server", "7567"),
        ),
        health=("curl", "-fsS", "http://127.0.0.1:7567/"),
    )


def scaling(servers: list[Target], hosts: list[InstallHost], settings: InstallSettings) -> None:
    """Fresh installs on 1 server, then on 5 at once, a no-change re-run of the 5 and the
    ratio of 5 to 1, with the least ratio this machine's cores allow beside it."""
    one, _, (first,) = timed("fresh install, 1 server", servers[:1], hosts[:1], settings)
    profile(first)
    five, five_cpu, results = timed("fresh install, 5 servers", servers[1:], hosts[1:], settings)
    slower(first, results)
    timed("re-run with no change, 5 servers", servers[1:], hosts[1:], settings)
    print(f"{'5 servers / 1 server':<34} {five / one:6.2f} x   (target <= 1.2)")
    # The servers here share the engine's cores (a cloud server has its own): the CPU the
    # five installs use, spread over every core, is the least time they can take here.
    cores = os.cpu_count() or 1
    least = five_cpu / cores
    print(
        f"{'  least possible on this machine':<34} {least / one:6.2f} x   "
        f"({five_cpu:.1f} CPU-s over {cores} cores = {least:.1f} s; "
        f"the wall is {five / least:.2f} x that)"
    )


@contextmanager
def relayed(
    servers: list[Target], hosts: list[InstallHost], round_trip_ms: float, mbit: float = 0.0
) -> Iterator[list[InstallHost]]:
    """`hosts` reached through a relay (bench/relay.py) that adds `round_trip_ms` to every
    round trip of their SSH connections (and, with `mbit`, carries that many megabits a
    second each way): each at its own loopback address, on the server's own SSH port (the
    install opens the firewall for the port the engine connects to)."""
    local = [f"127.0.1.{n + 1}" for n in range(len(servers))]
    routes = [
        f"{address}:{server.ssh_port}={server.address}:{server.ssh_port}"
        for address, server in zip(local, servers, strict=True)
    ]
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench.relay", str(round_trip_ms), "--mbit", str(mbit), *routes],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "ready":
            raise SystemExit("the relay did not start (it said why above)")
        yield [replace(h, address=a) for h, a in zip(hosts, local, strict=True)]
    finally:
        relay.terminate()
        relay.wait()


def uplinked(
    servers: list[Target],
    hosts: list[InstallHost],
    settings: InstallSettings,
    archive_bytes: int,
    round_trip_ms: float,
    mbit: float,
) -> None:
    """A fresh install of one server with the real agent image from the engine, `round_trip_ms`
    and `mbit` away, as a cloud server is from a laptop: the image's copy, beside the other
    steps, takes the archive's size over the link."""
    with relayed(servers, hosts, round_trip_ms, mbit) as far:
        wall, _, (result,) = timed(f"1 server, agent, {mbit:g} Mbit/s", servers, far, settings)
    (step,) = [op for op in result.operations if op.name == "agent | Deliver the agent image"]
    link = archive_bytes * 8 / (mbit * 1e6)
    print(
        f"{'  the archive over the link':<34} {link:6.1f} s   the steps but the image's "
        f"{wall - step.seconds:4.1f} s, then the image step {step.seconds:4.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--latency-ms", type=float, default=50.0, help="the round trip to a cloud server"
    )
    parser.add_argument(
        "--uplink-mbit", type=float, default=20.0, help="the engine's uplink to a cloud server"
    )
    arguments = parser.parse_args()
    latency, uplink = arguments.latency_ms, arguments.uplink_mbit
    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="bench-install-"))
    daemon = PrivateDaemon.start(work / "dockerd")
    client = daemon_client(daemon.url, timeout=300)
    targets = []
    try:
        golden = ensure_golden_image(client, say=print)
        key = make_ssh_key(work)
        client.api.import_image_from_data(
            busybox_rootfs(), repository="bench/agent", tag="1", changes=["ENV PATH=/bin"]
        )
        image = "bench/agent:1"
        # Loaded while the servers boot, as `engine up` has it: the installs timed below all
        # start from a forker that runs already.
        FORKER.prepare()
        started = time.monotonic()
        names = [f"bench-{n}" for n in range(12)]
        targets = boot_targets(client, golden, names, key, work / "seeds")
        print(f"{'boot 12 servers (cloud-init done)':<34} {time.monotonic() - started:6.1f} s")
        settings = InstallSettings(
            install=Install(
                docker=DockerInstall(source=DockerSource.DISTRO),
                system=SystemInstall(unattended_upgrades=False),
            ),
            control_plane=(str(daemon.subnet.network_address + 1),),
            docker_url=daemon.url,
        )
        hosts = [
            t.host(key, agent=agent_run(image, token="bench-token-0123456789", network="host"))
            for t in targets
        ]
        print("over the servers' bridge (no round trip to speak of):")
        scaling(targets[:6], hosts[:6], settings)
        print(f"at a {latency:g} ms round trip (a relay holds the engine's SSH traffic):")
        with relayed(targets[6:], hosts[6:], latency) as far:
            scaling(targets[6:], far, settings)
        remove_targets(client, targets)
        targets = []

        agent = ensure_agent_image(client, say=print)
        started = time.monotonic()
        names = [f"bench-fleet-{n}" for n in range(10)]
        targets = boot_targets(client, golden, names, key, work / "seeds")
        print(f"{'boot 10 servers (cloud-init done)':<34} {time.monotonic() - started:6.1f} s")
        fleet = [
            replace(t.host(key, agent=stand_in_agent(agent)), peer_address=t.address)
            for t in targets
        ]
        archive = image_archives(daemon.url, [agent])[agent]
        saved_archive(daemon.url, archive)  # saved before counting: it is cached between runs
        before = sent_bytes(daemon.bridge)
        _, _, results = timed(
            "fresh install, 10 servers, agent",
            targets,
            fleet,
            settings,
            fleet_sharing(work / "state", "bench"),
        )
        sent = sent_bytes(daemon.bridge) - before
        waits = sorted(
            op.seconds
            for r in results
            for op in r.operations
            if op.name == "agent | Deliver the agent image"
        )
        print(
            f"{'  of which the image step':<34} median {statistics.median(waits):4.1f} s"
            f"   slowest {waits[-1]:4.1f} s (it waits for the copy sent ahead, then loads)"
        )
        image_bytes = client.images.get(agent).attrs["Size"]
        archive_bytes = Path(archive.path).stat().st_size
        print(
            f"{'agent image':<34} {image_bytes / 1e6:6.1f} MB   its archive (gzip) "
            f"{archive_bytes / 1e6:5.1f} MB"
        )
        print(
            f"{'sent by the engine, 10 servers':<34} {sent / 1e6:6.1f} MB = "
            f"{sent / archive_bytes:4.2f} x the archive, {sent / image_bytes:4.2f} x the image "
            "(target <= 1.5)"
        )
        remove_targets(client, targets)
        targets = []
        targets = boot_targets(client, golden, ["bench-cloud"], key, work / "seeds")
        cloud = [t.host(key, agent=stand_in_agent(agent)) for t in targets]
        uplinked(targets, cloud, settings, archive_bytes, latency, uplink)
    finally:
        remove_targets(client, targets)
        client.close()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
