"""The local inventory reader against real containers: what exists, by label."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import load_catalog
from engine.diff import DiffOptions, diff_fleet
from engine.placement import expand_fleet
from engine.plan import Action
from engine.providers.local.driver import LocalDriver
from engine.providers.local.inventory import LocalReader
from engine.spec import parse_spec

SPEC = b"""
apiVersion: fleet/v1
kind: Fleet
name: inv
provider: {name: local}
defaults: {server_type: small, image: debian-12, locations: [local], labels: {env: test}}
groups: [{name: web, count: 2, labels: {role: web}}]
"""


@pytest.fixture
def driver(docker_client: Any, tmp_path: Path) -> Iterator[LocalDriver]:
    drv = LocalDriver(docker_client, "inv", tmp_path)
    yield drv
    drv.teardown()


def test_machines_built_as_specified_leave_nothing_to_do(
    driver: LocalDriver, docker_client: Any, golden_image: str
) -> None:
    fleet = parse_spec(SPEC)
    catalog = load_catalog("local")
    servers = expand_fleet(fleet, catalog)
    reader = LocalReader(docker_client, "inv")
    before = diff_fleet(fleet, catalog, reader.read_servers())
    assert [c.action for c in before.changes] == [Action.CREATE, Action.CREATE]

    for server in servers:
        driver.create(server, image=golden_image, user_data="#cloud-config\n{}\n")
    actual = reader.read_servers()
    assert [s.name for s in actual] == ["web-1", "web-2"]
    web1 = actual[0]
    assert dict(web1.labels) == dict(servers[0].labels)  # bookkeeping labels left out
    assert web1.provider_id.startswith("i-") and web1.ipv4
    assert web1.server_type == "small" and web1.location == "local"
    plan = diff_fleet(fleet, catalog, actual)
    assert [c.action for c in plan.changes] == [Action.ADOPT, Action.ADOPT]  # store knows none

    driver.resize("web-2", "large")
    resized = diff_fleet(fleet, catalog, reader.read_servers())
    assert (Action.RESIZE, "web-2") in [(c.action, c.server) for c in resized.changes]
    assert reader.calls.total == 3


def test_a_poller_finds_every_machine_on_the_first_page(
    driver: LocalDriver, docker_client: Any, golden_image: str
) -> None:
    for server in expand_fleet(parse_spec(SPEC), load_catalog("local")):
        driver.create(server, image=golden_image, user_data="#cloud-config\n{}\n")
    reader = LocalReader(docker_client, "inv")
    first = reader.read_page(1)
    assert [s.name for s in first.servers] == ["web-1", "web-2"] and first.next_page is None
    assert reader.read_page(2).servers == ()


def test_a_stranger_holding_a_name_is_reported_unowned(
    driver: LocalDriver, docker_client: Any, golden_image: str
) -> None:
    stranger = docker_client.containers.create(golden_image, name="inv-web-2")
    try:
        unowned = LocalReader(docker_client, "inv").read_unowned(["web-1", "web-2"])
        assert [(s.name, s.provider_id) for s in unowned] == [("web-2", stranger.id)]
    finally:
        stranger.remove(force=True)


def test_a_stopped_machine_says_how_and_when_and_whose_it_is(
    docker_client: Any, golden_image: str, tmp_path: Path
) -> None:
    driver = LocalDriver(docker_client, "inv", tmp_path, fleet_id="0123456789ab")
    try:
        web1, web2 = expand_fleet(parse_spec(SPEC), load_catalog("local"))
        for server in (web1, web2):
            driver.create(server, image=golden_image, user_data="#cloud-config\n{}\n")
        docker_client.containers.get("inv-web-1").kill()
        actual = {s.name: s for s in LocalReader(docker_client, "inv").read_servers()}
        killed, running = actual["web-1"], actual["web-2"]
        assert (killed.status, killed.exit_code) == ("exited", 137)
        assert killed.stopped_at is not None and killed.created is not None
        assert killed.stopped_at >= killed.created
        assert (running.status, running.exit_code, running.stopped_at) == ("running", None, None)
        assert {s.fleet_id for s in actual.values()} == {"0123456789ab"}
        assert "fleet-id" not in dict(killed.labels)  # whose it is, not a label to compare
        fleet, catalog, listed = parse_spec(SPEC), load_catalog("local"), list(actual.values())
        elsewhere = diff_fleet(fleet, catalog, listed)  # a state directory with no id for it
        assert [p.code for p in elsewhere.problems] == ["owned_elsewhere"]
        plan = diff_fleet(fleet, catalog, listed, options=DiffOptions(fleet_id="0123456789ab"))
        assert [(c.action, c.server) for c in plan.changes] == [
            (Action.ADOPT, "web-1"),
            (Action.POWER_ON, "web-1"),
            (Action.ADOPT, "web-2"),
        ]
    finally:
        driver.teardown()
