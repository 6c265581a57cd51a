"""Day-2 signals on Hetzner Cloud and DigitalOcean: the providers' SDKs against the stateful
fake APIs, whose actions run for a few reads and then succeed, fail or never end."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from engine.controlplane.servers import POLL_INVENTORY_JOB, SSH_CHECK_JOB
from engine.errors import EngineError
from engine.model import Stage
from engine.providers.cloud.actions import (
    ActionState,
    ActionStatus,
    ActionTimedOut,
    wait_for_action,
)
from engine.providers.registry import provider_actions
from engine.providers.seam import Signal
from engine.signals import signal_server
from engine.spec import load_spec
from tests.cloud.world import World
from tests.fakes.common import ActionScript
from tests.support.cli import engine
from tests.support.clock import Clock
from tests.support.tokens import sent_user_data


def requested(world: World) -> list[tuple[int, Any]]:
    """What the fake was asked to do: (server id, action or body)."""
    if world.provider == "hcloud":
        return [(server, verb) for server, verb, _ in world.fake.action_requests]
    return [(droplet, body["type"]) for droplet, body in world.fake.action_requests]


def events(world: World, server: str) -> list[tuple[str, str]]:
    with world.store() as store:
        return [
            (e.kind, e.message)
            for e in store.events.all(world.fleet)
            if e.server == server and e.kind.startswith("server.")
        ]


def seconds(clock: Clock) -> float:
    return clock().timestamp()


def signal(world: World, what: Signal, server: str, timeout_s: float = 60) -> tuple[int, str]:
    out = io.StringIO()
    code = signal_server(world.spec, server, what, world.options(timeout_s), out)
    return code, out.getvalue()


# --- waiting on an action --------------------------------------------------------------------


def test_an_action_is_asked_about_until_it_succeeds_with_its_progress(
    world: World, clock: Clock
) -> None:
    world.up()
    world.fake.action_script = ActionScript(ends="success", reads=3)
    actions = provider_actions(load_spec(world.spec), world.fake.token)
    started = actions.start(str(world.provider_id("worker-1")), Signal.REBOOT)
    assert started.status is ActionStatus.RUNNING
    seen: list[ActionState] = []
    begun = seconds(clock)
    done = wait_for_action(
        actions, started, timeout_s=60, poll_s=2, on_progress=seen.append,
        clock=lambda: seconds(clock), sleep=clock.advance,
    )  # fmt: skip
    assert done.status is ActionStatus.SUCCESS and done.id == started.id
    assert len(seen) == 3 and seconds(clock) - begun == 6.0  # three reads running, 2 s apart
    if world.provider == "hcloud":
        assert [s.progress for s in seen] == [0, 30, 60]


def test_an_action_that_fails_is_returned_with_the_providers_reason(
    world: World, clock: Clock
) -> None:
    world.up()
    world.fake.action_script = ActionScript(ends="error", reads=1, error="disk on fire")
    actions = provider_actions(load_spec(world.spec), world.fake.token)
    started = actions.start(str(world.provider_id("worker-1")), Signal.POWEROFF)
    done = wait_for_action(
        actions, started, timeout_s=60, clock=lambda: seconds(clock), sleep=clock.advance
    )
    assert done.status is ActionStatus.ERROR
    if world.provider == "hcloud":
        assert done.error == "disk on fire"


def test_an_action_that_never_ends_times_out(world: World, clock: Clock) -> None:
    world.up()
    world.fake.action_script = ActionScript(ends="never")
    actions = provider_actions(load_spec(world.spec), world.fake.token)
    started = actions.start(str(world.provider_id("worker-1")), Signal.POWERON)
    begun = seconds(clock)
    with pytest.raises(ActionTimedOut, match=r"did not end within 30 s"):
        wait_for_action(
            actions, started, timeout_s=30, clock=lambda: seconds(clock), sleep=clock.advance
        )
    assert seconds(clock) - begun == 30.0


# --- engine server -----------------------------------------------------------------------------


def test_reboot_waits_for_the_provider_and_is_recorded(world: World) -> None:
    world.up()
    code, out = signal(world, Signal.REBOOT, "worker-1")
    assert code == 0 and "worker-1: reboot done" in out
    assert requested(world) == [(world.provider_id("worker-1"), "reboot")]
    assert [kind for kind, _ in events(world, "worker-1")] == [
        "server.reboot.started",
        "server.reboot.succeeded",
    ]
    with world.store() as store:
        assert store.locks.all() == ()


def test_an_action_that_fails_is_recorded_and_said(world: World) -> None:
    world.up()
    world.fake.action_script = ActionScript(ends="error", reads=1, error="disk on fire")
    with pytest.raises(EngineError, match=r"says the .* of worker-1 failed"):
        signal(world, Signal.POWEROFF, "worker-1")
    kinds = [kind for kind, _ in events(world, "worker-1")]
    assert kinds == ["server.poweroff.started", "server.poweroff.failed"]
    with world.store() as store:
        assert store.locks.all() == ()


def test_an_action_that_does_not_end_in_time_is_recorded_as_failed(world: World) -> None:
    world.up()
    world.fake.action_script = ActionScript(ends="never")
    with pytest.raises(EngineError, match="did not end within 1 s"):
        signal(world, Signal.POWERON, "worker-1", timeout_s=1)
    started, failed = events(world, "worker-1")
    assert started[0] == "server.poweron.started"
    assert failed[0] == "server.poweron.failed" and "did not end within 1 s" in failed[1]


def test_a_snapshot_names_the_fleet_and_server(world: World) -> None:
    world.up()
    code, out = signal(world, Signal.SNAPSHOT, "worker-1")
    assert code == 0
    if world.provider == "hcloud":
        ((_, _, body),) = world.fake.action_requests
        assert body["type"] == "snapshot" and body["description"].startswith("web-prod-worker-1-")
        fleet_id = (world.state_dir / "keys" / "web-prod.id").read_text().strip()
        assert body["labels"] == {
            "fleet": "web-prod", "fleet-group": "worker", "fleet-server": "worker-1",
            "managed-by": "fleet-engine", "fleet-id": fleet_id,
        }  # fmt: skip
        image = next(i for i in world.fake.images if i["type"] == "snapshot")
        assert f"image {image['id']}" in out and image["status"] == "available"
    else:
        ((_, body),) = world.fake.action_requests
        assert body["type"] == "snapshot" and body["name"].startswith("api-prod-worker-1-")


def test_rebuild_sends_the_server_back_through_boot_and_install(world: World) -> None:
    world.up()
    with world.store() as store:
        before = sent_user_data(store.user_data, world.state_dir, world.fleet, "worker-1")
        store.servers.update(
            world.fleet, "worker-1", host_keys=(("ssh-ed25519", "AAAAold"),),
            host_keys_source="phone-home",
        )  # fmt: skip
    code, out = signal(world, Signal.REBUILD, "worker-1", timeout_s=3)
    assert code == 1  # the rebuilt server cannot phone home from a fake: not ready in time
    final = json.loads(out.splitlines()[-1])
    assert final["event"] == "done" and final["not_ready"] == {"worker-1": "booting"}
    with world.store() as store:
        record = store.servers.get(world.fleet, "worker-1")
        assert record is not None and record.stage is Stage.BOOTING
        assert record.host_keys == () and record.installed_at is None
        after = sent_user_data(store.user_data, world.state_dir, world.fleet, "worker-1")
        kinds = {j.kind for j in store.jobs.all(world.fleet)}
    server_id = world.provider_id("worker-1")
    if world.provider == "hcloud":
        # Hetzner takes new user_data: a fresh document and token, and it phones home again.
        ((_, verb, body),) = world.fake.action_requests
        assert verb == "rebuild" and body["image"] == "debian-12"
        assert after != before and world.fake.user_data[server_id] == after
    else:
        # DigitalOcean keeps the first user_data (its token is spent): found by polling.
        ((_, body),) = world.fake.action_requests
        assert body == {"type": "rebuild", "image": "debian-12-x64"}
        assert after == before
        assert {POLL_INVENTORY_JOB, SSH_CHECK_JOB} <= kinds
    kinds_seen = [kind for kind, _ in events(world, "worker-1")]
    assert kinds_seen == ["server.rebuild.started", "server.rebuild.succeeded"]


def test_a_server_the_engine_does_not_know_is_one_clear_line(world: World) -> None:
    world.up()
    result = engine(
        "server", "reboot", str(world.spec), "web-9", "--state-dir", str(world.state_dir),
        env={"HCLOUD_TOKEN": world.fake.token, "DIGITALOCEAN_TOKEN": world.fake.token},
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: fleet {world.fleet} has no server web-9 that the engine made")
    assert requested(world) == []
