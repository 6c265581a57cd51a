"""Resources besides servers on both clouds, under Pulumi's mocks and the fake APIs: an edit to
a firewall rule, a load balancer, a network's range, a DNS record or the engine's address is
previewed with its kind, `engine up` runs the program for it (no server needs to change), and
a second preview is empty: what the program made is what the reader reads back."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from engine.preview import plan_preview
from tests.cloud.world import World

Edit = Callable[[dict[str, Any]], None]


def _firewall_rule(spec: dict[str, Any]) -> None:
    spec["firewalls"][0]["inbound"][0]["sources"] = ["198.51.100.0/24"]


def _lb_type(spec: dict[str, Any]) -> None:
    hetzner = spec["provider"]["name"] == "hcloud"
    spec["load_balancers"][0]["type"] = "lb21" if hetzner else "lb-medium"


def _lb_services(spec: dict[str, Any]) -> None:
    spec["load_balancers"][0]["services"].append({"listen": 80, "destination": 8080})


def _network_range(spec: dict[str, Any]) -> None:
    spec["networks"][0]["ip_range"] = "10.99.0.0/16"


def _dns_record(spec: dict[str, Any]) -> None:
    spec["dns"][0]["ttl"] = 600


EDITS: list[tuple[Edit, str]] = [
    (_firewall_rule, "firewall"),
    (_lb_type, "load_balancer"),
    (_lb_services, "load_balancer"),
    (_network_range, "network"),
]
# DNS records: DigitalOcean's domains (the spec refuses dns on Hetzner Cloud).
CASES = [
    *((provider, edit, kind) for provider in ("hcloud", "digitalocean") for edit, kind in EDITS),
    ("digitalocean", _dns_record, "dns_record"),
]


@pytest.mark.parametrize(
    ("world", "edit", "kind"),
    CASES,
    indirect=["world"],
    ids=[f"{provider}-{edit.__name__.strip('_')}" for provider, edit, _ in CASES],
)
def test_after_a_resource_edit_up_runs_the_program_and_a_second_preview_is_empty(
    world: World, edit: Edit, kind: str
) -> None:
    world.up()
    assert plan_preview(world.spec, state_dir=world.state_dir).resources == ()
    spec = yaml.safe_load(world.spec.read_text())
    edit(spec)
    world.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = plan_preview(world.spec, state_dir=world.state_dir)
    assert plan.has_changes and {r.kind for r in plan.resources} == {kind}
    runs = len(world.pulumi.ups)
    world.up()
    assert len(world.pulumi.ups) == runs + 1  # the program ran for it
    # What it changes in place is refreshed first: Pulumi sees what changed outside.
    updated = {name for r in plan.resources if r.action == "update" for name in r.logical}
    assert world.pulumi.ups[-1].refresh == frozenset(updated)
    after = plan_preview(world.spec, state_dir=world.state_dir)
    assert after.resources == () and after.changes == (), after


def test_a_new_engine_address_opens_ssh_and_the_agent_port_to_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.up()
    moved = dataclasses.replace(world.options(), engine_addresses=("192.0.2.44",))
    monkeypatch.setattr(World, "options", lambda self, *a, **k: moved)
    world.up()
    # The servers are still booting: only the engine's firewall made the program run again.
    first, again = world.pulumi.ups
    assert first.engine_sources == ("198.51.100.7/32",)
    assert again.engine_sources == ("192.0.2.44/32",)
    plan = plan_preview(world.spec, state_dir=world.state_dir)
    assert plan.resources == ()  # the run recorded the new address, and made it so


@pytest.mark.parametrize("world", ["digitalocean"], indirect=True)
def test_a_missing_project_or_domain_blocks_the_plan_before_anything_is_made(world: World) -> None:
    world.fake.projects, world.fake.zones = ["first-project"], set()
    plan = plan_preview(world.spec, state_dir=world.state_dir)
    assert plan.is_blocked
    assert {p.path for p in plan.problems} == {"provider.project", "dns[0].zone"}
    code, _ = world.up()
    assert code == 1 and world.pulumi.ups == [] and world.fake.droplets == []
