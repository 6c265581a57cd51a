"""`engine serve`'s reconcile loop in repair mode on Hetzner Cloud and DigitalOcean: the
loop's watch over the real cloud backend (the fake provider's API on loopback, Pulumi's part
played by the program under its mocks) powers on a server switched off outside the engine and
makes again one deleted outside it, as `engine up` would, and then finds the fleet in sync."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.errors import EngineError
from engine.model import Stage
from engine.plan import Action
from engine.providers.digitalocean.inventory import DigitalOceanReader
from engine.reconcile import FleetWatch
from engine.spec import load_spec
from engine.state import JobState
from engine.up import backend_for
from tests.cloud.test_converge import SERVERS, listed, made_ready, server
from tests.cloud.world import World


@pytest.fixture
def watch(
    world: World, installs: list[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FleetWatch]:
    # A droplet just made may be missing from DigitalOcean's lists for a while; these were
    # made long ago.
    monkeypatch.setattr(DigitalOceanReader, "list_lag_s", 0.0)
    names = made_ready(world)
    assert names
    world.write(reconcile={"interval": "10s", "mode": "repair", "repairs_per_hour": 5})
    fleet = load_spec(world.spec, state_dir=world.state_dir)
    backend = backend_for(fleet, world.options(), lambda _: None)
    backend.open()
    with world.store() as store:
        yield FleetWatch(fleet, store, backend, backend.site(), world.state_dir, opened=True)
    backend.close()


def test_repair_mode_powers_on_and_makes_again_what_changed_outside(
    world: World, watch: FleetWatch, installs: list[str]
) -> None:
    names = [r.name for r in watch.store.servers.all(world.fleet)]
    off, gone = names[-1], names[0]
    server(world, off)["status"] = "off"
    setattr(world.fake, SERVERS[world.provider], [s for s in listed(world) if s["name"] != gone])
    outcome = watch.reconcile()
    assert sorted((c["action"], c["server"]) for c in outcome.repaired) == sorted(
        [(str(Action.CREATE), gone), (str(Action.POWER_ON), off)]
    )
    assert server(world, off)["status"] in ("running", "active")
    assert server(world, gone)  # made again through the program
    made = watch.store.servers.get(world.fleet, gone)
    assert made is not None and made.stage is Stage.BOOTING
    # The one that was off is installed again by the control plane's job; the new one boots.
    queued = watch.store.jobs.all(world.fleet, states=(JobState.QUEUED,))
    assert [(j.kind, j.server) for j in queued] == [("install", off)]
    kinds = [e.kind for e in watch.store.events.all(world.fleet)]
    assert "reconcile.drift" in kinds and "reconcile.repaired" in kinds
    # The next run finds nothing to repair: the new server is on its way to ready.
    again = watch.reconcile(outcome.as_result())
    assert (again.drift, again.repaired) == ((), ())
    assert watch.store.events.all(world.fleet)[-1].kind == "reconcile.in-sync"


def test_engine_up_refuses_a_fleet_a_live_engine_serve_serves(world: World) -> None:
    made_ready(world)
    with world.store() as store:
        assert store.leases.take(world.fleet, "ops-box/4242/a1b2", ttl_s=60) is not None
        before = [(r.name, r.stage) for r in store.servers.all(world.fleet)]
    ups = len(world.pulumi.ups)
    with pytest.raises(EngineError, match=r"served by `engine serve` \(process 4242 on ops-box\)"):
        world.up()
    assert len(world.pulumi.ups) == ups  # nothing was changed
    with world.store() as store:
        assert [(r.name, r.stage) for r in store.servers.all(world.fleet)] == before
        store.leases.release(world.fleet, "ops-box/4242/a1b2")  # the service stopped
    code, _ = world.up()
    assert code == 0
