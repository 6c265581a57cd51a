"""`engine up` on Hetzner Cloud and DigitalOcean converges from what the provider says now,
through the readers and the stacks: a server deleted outside the engine is made again (out of
Pulumi's state too), one powered off is powered on and installed again, one that never phoned
home is rebuilt (Hetzner) or replaced (DigitalOcean, or stuck starting), a failed create is
made by the next run; and servers of a fleet of the same name that another state directory
made are refused, or taken over with --adopt.

Each runs against the stateful fake of the provider's API, with Pulumi's part played by the
program under its mocks (tests/cloud/world.py); installs are recorded, not run (the fakes'
addresses lead nowhere).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from engine.errors import EngineError
from engine.model import Stage
from engine.plan import Action, Plan, RetryBy
from engine.preview import plan_preview
from engine.providers.cloud import pulumi_runner
from engine.providers.digitalocean.inventory import DigitalOceanReader
from tests.cloud.world import CLOUDS, ProgramUnderMocks, World

SERVERS = {"hcloud": "servers", "digitalocean": "droplets"}
HOST_KEY = ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfAServerThatPhonedHome000000000")


def plan(world: World, **options: Any) -> Plan:
    return plan_preview(world.spec, state_dir=world.state_dir, **options)


def changes(world: World, **options: Any) -> list[tuple[str, str]]:
    return [(str(c.action), c.server) for c in plan(world, **options).changes]


def listed(world: World) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = getattr(world.fake, SERVERS[world.provider])
    return found


def server(world: World, name: str) -> dict[str, Any]:
    return next(s for s in listed(world) if s["name"] == name)


def made_ready(world: World, *, phoned_home: bool = True) -> list[str]:
    """`engine up`, then every server as if it had phoned home and been installed."""
    world.up()
    digest = plan(world).install_hash
    with world.store() as store:
        for record in store.servers.all(world.fleet):
            store.servers.update(
                world.fleet,
                record.name,
                stage=Stage.READY,
                host_keys=(HOST_KEY,) if phoned_home else (),
                host_keys_source="phone-home" if phoned_home else "",
                install_hash=digest,
                installed_at=dt.datetime.now(dt.UTC),
            )
        names = [r.name for r in store.servers.all(world.fleet)]
    assert changes(world) == []
    return names


def stage(world: World, name: str) -> Stage:
    with world.store() as store:
        record = store.servers.get(world.fleet, name)
    assert record is not None
    return record.stage


def failed(world: World, name: str, reason: str) -> None:
    with world.store() as store:
        store.servers.update(world.fleet, name, stage=Stage.FAILED, reason=reason)


def test_a_server_deleted_outside_is_made_again_out_of_pulumis_state_too(
    world: World, installs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after DigitalOcean's list lag: a droplet just made may be missing from lists.
    monkeypatch.setattr(DigitalOceanReader, "list_lag_s", 0.0)
    names = made_ready(world)
    gone = names[0]
    with world.store() as store:
        before = store.user_data.get(world.fleet, gone)
    setattr(world.fake, SERVERS[world.provider], [s for s in listed(world) if s["name"] != gone])
    (change,) = plan(world).changes
    assert (change.action, change.server) == (Action.CREATE, gone)
    assert "it was ready, and was deleted outside the engine" in change.reasons[1]
    world.up()
    assert world.pulumi.ups[-1].gone == frozenset({gone})
    assert server(world, gone)  # made anew: Pulumi was told its state is stale
    with world.store() as store:
        record = store.servers.get(world.fleet, gone)
        again = store.user_data.get(world.fleet, gone)
    assert record is not None and record.stage is Stage.BOOTING and not record.host_keys
    assert again is not None and before is not None and again.sha256 != before.sha256  # a new token
    assert changes(world) == []


def test_without_being_told_pulumi_would_take_its_state_s_word(world: World) -> None:
    names = made_ready(world)
    gone = names[0]
    setattr(world.fake, SERVERS[world.provider], [s for s in listed(world) if s["name"] != gone])
    inputs = dataclasses.replace(world.pulumi.ups[-1], gone=frozenset())
    world.pulumi.up(inputs)
    assert gone not in {s["name"] for s in listed(world)}  # the stand-in models Pulumi's state


def test_a_server_powered_off_is_powered_on_and_installed_again(
    world: World, installs: list[str]
) -> None:
    names = made_ready(world)
    off = names[-1]
    server(world, off)["status"] = "off"
    (change,) = plan(world).changes
    assert (change.action, change.server) == (Action.POWER_ON, off)
    assert change.reasons[0] == f"the store says ready, but {world.provider} says it is off"
    world.up()
    verbs = world.fake.action_requests
    asked = [(v[0], v[1]) if world.provider == "hcloud" else (v[0], v[1]["type"]) for v in verbs]
    on = "poweron" if world.provider == "hcloud" else "power_on"
    assert asked == [(server(world, off)["id"], on)]
    assert server(world, off)["status"] in ("running", "active")
    assert installs == [off]  # it had phoned home: the install checks it and starts its agent
    assert len(world.pulumi.ups) == 1  # no program run for it
    assert changes(world) == []


def test_a_server_that_never_phoned_home_is_rebuilt_or_replaced(
    world: World, installs: list[str]
) -> None:
    names = made_ready(world, phoned_home=False)
    never = names[0]
    failed(world, never, "not reachable: no phone-home and no SSH answer before the deadline")
    (change,) = plan(world).changes
    assert (change.action, change.server, change.disruptive) == (Action.RETRY, never, True)
    ids = {s["name"]: s["id"] for s in listed(world)}
    world.up()
    if world.provider == "hcloud":
        assert change.retry_by is RetryBy.REBUILD
        ((server_id, verb, body),) = world.fake.action_requests
        assert (server_id, verb) == (ids[never], "rebuild") and "ph1." in body["user_data"]
        assert len(world.pulumi.ups) == 1  # same server, same id and addresses
    else:
        assert change.retry_by is RetryBy.REPLACE
        assert world.pulumi.ups[-1].replaced == frozenset({never})
        assert world.fake.action_requests == []
    assert stage(world, never) is Stage.BOOTING  # on its way again, with fresh user_data
    assert installs == []


def test_a_server_stuck_starting_is_replaced(world: World, installs: list[str]) -> None:
    names = made_ready(world, phoned_home=False)
    stuck = names[0]
    server(world, stuck)["status"] = "initializing" if world.provider == "hcloud" else "new"
    failed(world, stuck, "not reachable: no phone-home and no SSH answer before the deadline")
    (change,) = plan(world).changes
    assert (change.action, change.retry_by) == (Action.RETRY, RetryBy.REPLACE)
    assert "it never got out of starting: deleted and created anew" in change.reasons
    world.up()
    assert world.pulumi.ups[-1].replaced == frozenset({stuck})
    assert server(world, stuck)["status"] in ("running", "active")
    assert stage(world, stuck) is Stage.BOOTING


def test_a_failed_create_is_made_by_the_next_run(world: World) -> None:
    world.pulumi.fail_next = "error: server_limit_exceeded: server limit reached"
    with pytest.raises(EngineError, match="server_limit_exceeded"):
        world.up()
    assert listed(world) == []
    with world.store() as store:
        stages = {r.stage for r in store.servers.all(world.fleet)}
    assert stages == {Stage.CREATING}
    assert {action for action, _ in changes(world)} == {"create"}
    world.up()
    with world.store() as store:
        records = store.servers.all(world.fleet)
    assert {r.stage for r in records} == {Stage.BOOTING}
    assert {r.provider_id for r in records} == {str(s["id"]) for s in listed(world)}
    assert changes(world) == []


def test_another_state_directorys_servers_are_refused_then_taken_over_with_adopt(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.up()
    theirs = {s["name"]: s["id"] for s in listed(world)}
    mine = dataclasses.replace(world, state_dir=tmp_path / "another-state")
    second = ProgramUnderMocks(world.fake, CLOUDS[world.provider].answers, world.pulumi.list_on)
    monkeypatch.setattr(pulumi_runner, "up", second.up)
    monkeypatch.setattr(pulumi_runner, "preview", second.preview)  # its own stack
    refused = plan(mine)
    (problem,) = refused.problems
    assert problem.code == "owned_elsewhere" and refused.changes == ()
    their_id = (world.state_dir / "keys" / f"{world.fleet}.id").read_text().strip()
    assert f"made by fleet id {their_id}" in problem.message
    assert f"knows {world.fleet} as a new fleet (no id yet)" in problem.message
    assert "engine up --adopt" in problem.hint
    code, events = mine.up()
    assert code == 1 and second.ups == []  # nothing changed
    shown = next(e for e in events if e["event"] == "plan")["plan"]
    assert [p["code"] for p in shown["problems"]] == ["owned_elsewhere"]
    assert {s["name"]: s["id"] for s in listed(world)} == theirs
    assert not (mine.state_dir / "keys" / f"{world.fleet}.id").exists()

    taken = plan(mine, adopt=True)
    assert {(c.action, c.server) for c in taken.changes} == {(Action.REPLACE, n) for n in theirs}
    mine.up(adopt=True)
    my_id = (mine.state_dir / "keys" / f"{world.fleet}.id").read_text().strip()
    assert my_id != their_id
    for listed_server in listed(world):
        labels = listed_server.get("labels") or dict(
            tag.partition(":")[::2] for tag in listed_server.get("tags", [])
        )
        assert labels["fleet-id"] == my_id, listed_server["name"]
    assert sorted(s["name"] for s in listed(world)) == sorted(theirs)
    assert plan(mine).problems == ()
