"""A private Docker engine for the test session, and the local provider's images in it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from engine.local.dockerd import PrivateDaemon
from engine.local.images import ensure_golden_image


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
