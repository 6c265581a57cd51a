"""A private Docker engine for the test session, and the local provider's images in it."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from engine.providers.local.dockerd import PrivateDaemon
from engine.providers.local.images import ensure_golden_image


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDaemon]:
    """A dockerd of this test session's own, on its own socket, bridge and address pool."""
    root = tmp_path_factory.mktemp("dockerd")
    daemon = PrivateDaemon.start(root)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client(dockerd: PrivateDaemon) -> Iterator[Any]:
    client = docker.DockerClient(base_url=dockerd.url, timeout=300)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def golden_image(docker_client: Any) -> str:
    """The golden image of local servers (built from the Debian mirror on first use)."""
    return ensure_golden_image(docker_client, say=print)


BUSYBOX = Path("/bin/busybox")


def busybox_rootfs() -> bytes:
    """A root file system holding only the static busybox and a link for each applet."""
    binary = BUSYBOX.read_bytes()
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "data"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """A tiny image made from the host's busybox-static, imported without any registry."""
    rootfs = busybox_rootfs()
    tag = hashlib.sha256(rootfs).hexdigest()[:12]
    docker_client.api.import_image_from_data(
        rootfs, repository="fleet-test/busybox", tag=tag, changes=["ENV PATH=/bin"]
    )
    return f"fleet-test/busybox:{tag}"
