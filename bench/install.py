"""Benchmark: installing servers over SSH (system baseline, Docker, a stand-in agent).

Starts a private Docker engine, boots six local servers (golden-image containers with
cloud-init) and prints the wall time of a fresh install on 1 server, on 5 servers in
parallel (the ratio shows how it scales), and of a no-change re-run of the 5. Needs root,
like the tests; takes about two minutes (the golden image is built on first use).

    python bench/install.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.install.model import HostResult, InstallHost, InstallSettings  # noqa: E402
from engine.install.runner import install_hosts  # noqa: E402
from engine.model import DockerInstall, DockerSource, Install  # noqa: E402
from engine.providers.local.dockerd import PrivateDaemon, daemon_client  # noqa: E402
from engine.providers.local.images import ensure_golden_image  # noqa: E402
from tests.support.docker import busybox_rootfs  # noqa: E402
from tests.support.targets import (  # noqa: E402
    agent_run,
    boot_targets,
    make_ssh_key,
    remove_targets,
)


def timed(label: str, hosts: list[InstallHost], settings: InstallSettings) -> float:
    started = time.monotonic()
    results: tuple[HostResult, ...] = install_hosts(hosts, settings)
    wall = time.monotonic() - started
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    if failed:
        raise SystemExit("install failed:\n" + "\n".join(failed))
    changed = sum(len(r.changed) for r in results)
    slowest = max(r.seconds for r in results)
    print(
        f"{label:<34} {wall:6.1f} s wall   slowest host {slowest:5.1f} s   "
        f"{changed:3d} operations changed"
    )
    return wall


def main() -> None:
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
        started = time.monotonic()
        names = [f"bench-{n}" for n in range(6)]
        targets = boot_targets(client, golden, names, key, work / "seeds")
        print(f"{'boot 6 servers (cloud-init done)':<34} {time.monotonic() - started:6.1f} s")
        settings = InstallSettings(
            install=Install(docker=DockerInstall(source=DockerSource.DISTRO)),
            control_plane=(str(daemon.subnet.network_address + 1),),
            docker_url=daemon.url,
        )
        hosts = [
            t.host(key, agent=agent_run(image, token="bench-token-0123456789", network="host"))
            for t in targets
        ]
        one = timed("fresh install, 1 server", hosts[:1], settings)
        five = timed("fresh install, 5 servers", hosts[1:], settings)
        timed("re-run with no change, 5 servers", hosts[1:], settings)
        print(f"{'5 servers / 1 server':<34} {five / one:6.2f} x")
    finally:
        remove_targets(client, targets)
        client.close()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
