"""One agent for the session: the real process on loopback, over HTTPS with its own
certificate, managing the session's private dockerd and reporting to a local receiver."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from engine.agent.client import AgentClient
from engine.providers.local.dockerd import PrivateDaemon
from engine.tokens import ensure_fleet_key
from tests.support.agent import FLEET, AgentProcess, Reports, agent_config
from tests.support.http import serve


@pytest.fixture(scope="session")
def engine_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The engine's state directory for the session: it holds the fleet's key."""
    return tmp_path_factory.mktemp("engine-state")


@pytest.fixture(scope="session")
def fleet_key(engine_state: Path) -> bytes:
    return ensure_fleet_key(engine_state, FLEET)


@pytest.fixture(scope="session")
def reports(fleet_key: bytes) -> Iterator[tuple[Reports, str]]:
    received = Reports(key=fleet_key)
    with serve(received.app()) as url:
        yield received, url


@pytest.fixture(scope="session")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: PrivateDaemon,
    fleet_key: bytes,
    reports: tuple[Reports, str],
) -> Iterator[AgentProcess]:
    folder = tmp_path_factory.mktemp("agent")
    config = agent_config(folder, fleet_key, docker_url=dockerd.url, control_plane_url=reports[1])
    process = AgentProcess(folder, config, fleet_key).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def make_agent(
    tmp_path: Path, dockerd: PrivateDaemon, fleet_key: bytes
) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents of a test's own (config overrides as keywords); all stop afterwards."""
    started: list[AgentProcess] = []

    def make(*, control_plane_url: str | None = None, **overrides: Any) -> AgentProcess:
        folder = tmp_path / f"agent-{len(started)}"
        overrides.setdefault("docker_url", dockerd.url)
        config = agent_config(folder, fleet_key, control_plane_url=control_plane_url, **overrides)
        process = AgentProcess(folder, config, fleet_key)
        started.append(process)
        return process.start()

    yield make
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def client(agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient(agent.endpoint()) as session_client:
        yield session_client


@pytest.fixture
def cleanup(docker_client: Any) -> Iterator[list[str]]:
    """Names of containers a test made; removed afterwards whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(name, force=True, v=True)
