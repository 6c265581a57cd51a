"""Pulumi's own plan, checked before anything changes, and a run that died mid-create, on both
clouds under Pulumi's mocks and the fake APIs (tests/cloud/world.py models Pulumi's state)."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from engine.errors import EngineError
from engine.preview import plan_preview
from engine.state.store import open_store
from engine.up import up
from tests.cloud.world import World


def _listed(world: World) -> list[dict[str, object]]:
    return list(getattr(world.fake, "servers", None) or world.fake.droplets)


def _rules(world: World) -> dict[str, object]:
    return {str(f["name"]): f.get("rules") or f.get("inbound_rules") for f in world.fake.firewalls}


def test_an_unplanned_replace_stops_the_run_before_any_change(world: World) -> None:
    world.up()
    first = sorted(str(s["name"]) for s in _listed(world))[0]
    spec = yaml.safe_load(world.spec.read_text())
    spec["firewalls"][0]["inbound"][0]["sources"] = ["198.51.100.0/24"]
    world.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    servers, rules, runs = _listed(world), _rules(world), len(world.pulumi.ups)

    def recorded() -> set[tuple[str, str, str, str | None]]:
        with world.store() as store:
            return {(r.name, r.provider_id, r.stage, r.user_data_hash)
                    for r in store.servers.all(world.fleet)}  # fmt: skip

    records = recorded()
    # Drift Pulumi sees and the engine's plan does not: Pulumi would make the server anew.
    world.pulumi.replace_next = {first: "location"}
    out = io.StringIO()
    with pytest.raises(EngineError) as raised:
        up(world.spec, world.options(), out, lambda _: False)
    message = str(raised.value)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "Pulumi would take steps that the plan of" in message
    assert f"replace {first} (" in message and "(location forces it)" in message
    assert "nothing was changed" in message and "What to do:" in message
    shown = [str(e) for e in events]
    assert any("Pulumi's plan: " in e and "1 to replace" in e for e in shown), shown
    assert len(world.pulumi.ups) == runs and _listed(world) == servers and _rules(world) == rules
    assert recorded() == records  # the addresses listed now may be recorded, nothing else
    with world.store() as store:
        assert store.locks.all() == ()
    # Without the drift the same edit goes through.
    assert world.up()[0] == 1  # servers still booting: nobody phones home from a fake
    assert len(world.pulumi.ups) == runs + 1
    assert plan_preview(world.spec, state_dir=world.state_dir).resources == ()


def test_a_crash_mid_create_then_up_ends_with_one_server_each_and_no_409(world: World) -> None:
    world.pulumi.crash_next = True
    with pytest.raises(EngineError, match="the engine died"):
        world.up()
    made = {str(s["name"]): s["id"] for s in _listed(world)}
    assert len(made) == len(world.pulumi.ups[-1].servers)  # made at the provider
    assert world.pulumi.pending  # and pending in Pulumi's state
    with world.store() as store:
        assert {r.provider_id for r in store.servers.all(world.fleet)} == {""}
    preview = plan_preview(world.spec, state_dir=world.state_dir)
    assert {(c.action, c.server) for c in preview.changes} == {("adopt", n) for n in made}
    _, events = world.up()
    assert not [e for e in events if e["event"] == "error"], events
    names = [str(s["name"]) for s in _listed(world)]
    assert sorted(names) == sorted(made)  # exactly one of each, the ones made before
    assert {str(s["name"]): s["id"] for s in _listed(world)} == made
    assert world.pulumi.pending == set()
    adopted = world.pulumi.ups[-1].adopted
    assert {name: int(rid) for name, rid in adopted.items()} == made  # imported, not made
    with open_store(f"sqlite:///{world.state_dir / 'state.db'}") as store:
        recorded = {r.name: r.provider_id for r in store.servers.all(world.fleet)}
    assert recorded == {name: str(rid) for name, rid in made.items()}
    again = plan_preview(world.spec, state_dir=world.state_dir)
    assert again.changes == () and again.resources == ()


def test_without_the_import_hetzner_refuses_a_second_server_of_the_name(world: World) -> None:
    """What the adoption above prevents: the stand-in refuses as Hetzner does (409), makes a
    second droplet as DigitalOcean does."""
    world.pulumi.crash_next = True
    with pytest.raises(EngineError, match="the engine died"):
        world.up()
    inputs = world.pulumi.ups[-1]
    world.pulumi.state.clear()
    try:
        world.pulumi.up(inputs)
    except EngineError as error:
        assert world.provider == "hcloud" and "uniqueness_error, 409" in str(error)
    else:
        assert world.provider == "digitalocean"
        assert len(_listed(world)) == 2 * len(inputs.servers)  # each one twice
