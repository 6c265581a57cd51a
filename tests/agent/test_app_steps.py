"""One app's steps on one server (engine.apps.servers), against the real agent and Docker:
a first start, a switch that tries the new version on the side while the old one holds the
port, watching, a version that never gets healthy leaving the old one serving, putting back,
tidying and removing, and an app taking the port of one leaving the server over."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from engine.agent.client import AgentClient
from engine.apps.servers import AppOnServer, StepFailed
from engine.apps.versions import AppDefinition, container_name
from engine.model import AppHealth, AppPort, AppUpdate, HealthKind
from tests.support.agent import FLEET, SERVER

SERVE = (
    'mkdir -p /www && echo "$GREETING" > /www/index.html && {healthz}exec httpd -f -p 8080 -h /www'
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def steps(client: AgentClient, docker_client: Any) -> Iterator[AppOnServer]:
    work = AppOnServer(
        fleet=FLEET,
        server=SERVER,
        app="t-steps",
        client=client,
        health=AppHealth(kind=HealthKind.HTTP, port=8080, path="/healthz", interval_s=1),
        update=AppUpdate(health_timeout_s=10, monitor_s=1),
    )
    yield work
    for container in work.containers():
        docker_client.api.remove_container(container.name, force=True)


@pytest.fixture
def leaving(steps: AppOnServer, docker_client: Any) -> Iterator[AppOnServer]:
    """Another app on the same server (one the spec drops)."""
    other = dataclasses.replace(steps, app="t-leaving", timings={})
    yield other
    for container in other.containers():
        docker_client.api.remove_container(container.name, force=True)


def version(image: str, port: int, greeting: str, *, healthy: bool = True) -> AppDefinition:
    script = SERVE.format(healthz="echo ok > /www/healthz && " if healthy else "")
    return AppDefinition(
        image=image,
        command=("sh", "-c", script),
        env=(("GREETING", greeting),),
        ports=(AppPort(host_port=port, container_port=8080, host_ip="127.0.0.1"),),
    )


def answer(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return str(response.read().decode().strip())
    except OSError:
        return None


def states(steps: AppOnServer) -> dict[str, str]:
    return {c.name: c.state for c in steps.containers()}


def test_switching_tries_the_new_version_on_the_side_and_keeps_the_old_one(
    steps: AppOnServer, busybox_image: str, port: int
) -> None:
    one = version(busybox_image, port, "one")
    two = version(busybox_image, port, "two")
    steps.switch(one)
    assert answer(port) == "one"
    steps.watch(container_name("t-steps", one.version))
    assert set(steps.timings) >= {"image", "start", "health", "monitor"}
    steps.switch(two)
    assert answer(port) == "two"
    # The old version stays, stopped, for a revert; the try on the side is gone.
    assert states(steps) == {
        container_name("t-steps", two.version): "running",
        container_name("t-steps", one.version): "exited",
    }
    steps.switch(two)  # done before: nothing changes
    assert answer(port) == "two" and len(states(steps)) == 2


def test_a_version_that_never_gets_healthy_leaves_the_old_one_serving(
    steps: AppOnServer, busybox_image: str, port: int
) -> None:
    one = version(busybox_image, port, "one")
    broken = version(busybox_image, port, "broken", healthy=False)
    steps.switch(one)
    with pytest.raises(StepFailed, match="was not healthy within 10 s"):
        steps.switch(broken)
    assert answer(port) == "one"  # the old version never stopped
    assert states(steps) == {container_name("t-steps", one.version): "running"}
    steps.revert(one, one.version)
    assert answer(port) == "one"


def test_putting_back_starts_the_kept_version_or_makes_it_again(
    steps: AppOnServer, busybox_image: str, port: int, client: AgentClient
) -> None:
    one = version(busybox_image, port, "one")
    two = version(busybox_image, port, "two")
    three = version(busybox_image, port, "three")
    steps.switch(one)
    steps.switch(two)
    steps.revert(one, one.version)  # the kept container starts again
    assert answer(port) == "one"
    steps.switch(three)  # tidied: one (the version before) is kept, two goes
    assert set(states(steps)) == {
        container_name("t-steps", three.version),
        container_name("t-steps", one.version),
    }
    client.remove_container(container_name("t-steps", one.version))
    steps.revert(one, one.version)  # gone: made again from its definition
    assert answer(port) == "one"
    with pytest.raises(StepFailed, match="no definition"):
        steps.revert(None, "0123456789ab")
    steps.remove()
    assert states(steps) == {} and answer(port) is None


def test_a_secret_the_environment_lacks_stops_before_anything_runs(
    steps: AppOnServer, busybox_image: str, port: int
) -> None:
    needy = AppDefinition(image=busybox_image, secret_env=("NOT_SET_ANYWHERE",))
    with pytest.raises(StepFailed, match="needs NOT_SET_ANYWHERE"):
        steps.switch(needy)
    assert states(steps) == {}


def test_watching_fails_a_version_that_stops_and_ends_quietly_when_told(
    steps: AppOnServer, busybox_image: str, port: int, client: AgentClient
) -> None:
    one = version(busybox_image, port, "one")
    steps.switch(one)
    name = container_name("t-steps", one.version)
    steps.update = AppUpdate(health_timeout_s=10, monitor_s=600)
    client.stop_container(name)
    with pytest.raises(StepFailed, match="turned unhealthy while watched"):
        steps.watch(name)
    # The rollout puts the server back mid-watch: the watch ends, it does not fail.
    steps.stop.set()
    steps.watch(name)
    assert states(steps) == {name: "exited"}


def test_a_switch_done_again_after_a_crash_clears_the_try_on_the_side_it_left(
    steps: AppOnServer, busybox_image: str, port: int, client: AgentClient
) -> None:
    one = version(busybox_image, port, "one")
    two = version(busybox_image, port, "two")
    steps.switch(one)
    # A run died while two was tried on the side: its -check container still runs.
    client.run_container(steps.body(two, check=True))
    assert states(steps)[container_name("t-steps", two.version, check=True)] == "running"
    steps.switch(two)
    assert answer(port) == "two"
    assert states(steps) == {
        container_name("t-steps", two.version): "running",
        container_name("t-steps", one.version): "exited",
    }


def test_an_app_taking_the_port_of_one_leaving_stops_it_only_once_healthy_on_the_side(
    steps: AppOnServer, leaving: AppOnServer, busybox_image: str, port: int
) -> None:
    old = version(busybox_image, port, "old")
    leaving.switch(old)
    broken = version(busybox_image, port, "broken", healthy=False)
    with pytest.raises(StepFailed, match="was not healthy within 10 s"):
        steps.switch(broken, replacing=["t-leaving"])
    assert answer(port) == "old"  # never stopped
    new = version(busybox_image, port, "new")
    steps.switch(new, replacing=["t-leaving"])
    assert answer(port) == "new"
    assert states(leaving) == {}  # removed once the new one was healthy
    # Putting the server back (a rollback): the new app goes, the one it replaced is made
    # again from its definition.
    steps.revert(None, None)
    leaving.revert(old, old.version)
    assert answer(port) == "old"
    assert states(steps) == {}
