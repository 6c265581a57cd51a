"""engine.providers.cloud.guard: which steps of Pulumi's plan the engine's plan names. Pure."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from engine.catalog import load_catalog
from engine.diff import as_built, as_recorded, diff_fleet
from engine.placement import expand_fleet
from engine.plan import Action, Plan, ResourceChange
from engine.providers.cloud.guard import step_summary, unplanned_steps
from engine.providers.cloud.pulumi_runner import ResourceStep
from stacks.declared import declared_resources
from tests.stacks.harness import fleet_from
from tests.support.cli import ROOT

SERVER = "hcloud:index/server:Server"
LB = "hcloud:index/loadBalancer:LoadBalancer"
LB_SERVICE = "hcloud:index/loadBalancerService:LoadBalancerService"
LB_TARGET = "hcloud:index/loadBalancerTarget:LoadBalancerTarget"
NETWORK = "hcloud:index/network:Network"


def _step(name: str, type_: str, op: str, keys: tuple[str, ...] = ()) -> ResourceStep:
    return ResourceStep(urn=f"urn::{name}", type=type_, name=name, op=op, status="planned",
                        keys=keys)  # fmt: skip


def _plan(grow: int = 0, resources: tuple[ResourceChange, ...] = ()) -> Plan:
    """The Hetzner example as built, its web group grown by `grow`, with `resources`."""
    old = fleet_from("specs/hetzner.yaml")
    catalog = load_catalog("hcloud")
    built = [as_built(old, s, catalog, str(n)) for n, s in enumerate(expand_fleet(old, catalog), 1)]
    records = [as_recorded(old, b, b.name.rsplit("-", 1)[0]) for b in built]
    groups = yaml.safe_load((ROOT / "specs" / "hetzner.yaml").read_text())["groups"]
    groups[0]["count"] += grow
    plan = diff_fleet(fleet_from("specs/hetzner.yaml", groups=groups), catalog, built, records)
    return dataclasses.replace(plan, resources=resources)


LB_UPDATE = ResourceChange(
    action=Action.UPDATE, kind="load_balancer", name="web-prod-web", reasons=("targets",),
    logical=("lb-web", "firewall.lb-web"),
)  # fmt: skip
NETWORK_REPLACE = ResourceChange(
    action=Action.REPLACE, kind="network", name="web-prod-private", reasons=("ip_range",),
    logical=("network-private", "subnet-private"),
)  # fmt: skip


@pytest.mark.parametrize(
    ("grow", "resources", "steps", "unplanned"),
    [
        # Updates in place and unchanged resources never stop a run.
        (0, (), [_step("web-1", SERVER, "update"), _step("lb-web", LB, "same")], []),
        # A server the plan creates, and its target on the balancer the plan updates.
        (
            1,
            (LB_UPDATE,),
            [_step("web-4", SERVER, "create"), _step("lb-web-web-4", LB_TARGET, "create")],
            [],
        ),
        # A server the plan does not create, replace or delete.
        (0, (), [_step("web-9", SERVER, "create")], ["create web-9 (Server)"]),
        (
            0,
            (),
            [_step("web-1", SERVER, "replace", ("location",))],
            ["replace web-1 (Server) (location forces it)"],
        ),
        (0, (), [_step("web-1", SERVER, "delete-replaced")], ["replace web-1 (Server)"]),
        (0, (), [_step("worker-2", SERVER, "delete")], ["delete worker-2 (Server)"]),
        # A resource the plan names, and the parts of it.
        (
            0,
            (NETWORK_REPLACE,),
            [
                _step("network-private", NETWORK, "replace", ("ipRange",)),
                _step("subnet-private-eu-central", NETWORK, "replace"),
            ],
            [],
        ),
        (0, (LB_UPDATE,), [_step("lb-web-80", LB_SERVICE, "create")], []),
        # An update does not allow the resource itself to be replaced or deleted.
        (
            0,
            (LB_UPDATE,),
            [_step("lb-web", LB, "replace", ("location",))],
            ["replace lb-web (LoadBalancer) (location forces it)"],
        ),
        (0, (), [_step("lb-web", LB, "delete")], ["delete lb-web (LoadBalancer)"]),
        # The program's own bookkeeping.
        (
            0,
            (),
            [
                _step("hcloud", "pulumi:providers:hcloud", "create"),
                _step("web", "fleet-engine:stacks:ServerGroup", "create"),
            ],
            [],
        ),
    ],
)
def test_the_steps_the_plan_does_not_name_are_found(
    grow: int,
    resources: tuple[ResourceChange, ...],
    steps: list[ResourceStep],
    unplanned: list[str],
) -> None:
    assert list(unplanned_steps(_plan(grow, resources), steps)) == unplanned


def test_a_server_a_dead_run_left_unrecorded_may_be_created() -> None:
    step = _step("web-2", SERVER, "create")
    assert unplanned_steps(_plan(), [step]) == ("create web-2 (Server)",)
    assert unplanned_steps(_plan(), [step], pending={"web-2"}) == ()


def test_the_step_summary_counts_each_resource_once() -> None:
    steps = [
        _step("web-1", SERVER, "create-replacement"),
        _step("web-1", SERVER, "delete-replaced"),
        _step("web-4", SERVER, "create"),
        _step("lb-web", LB, "update"),
        _step("lb-web-443", LB_SERVICE, "same"),
    ]
    assert (
        step_summary(steps) == "Pulumi's plan: 1 to create, 1 to update, 1 to replace; 1 unchanged"
    )


def test_what_goes_with_a_network_made_anew_is_named_by_its_change() -> None:
    """A new range makes the network anew; the balancer's attachment to it (Hetzner) and the
    balancer in the VPC (DigitalOcean) are made anew with it."""
    for spec, network, parts in (
        ("hetzner", "web-prod-private", ["subnet-private-eu-central", "lb-web-network"]),
        ("digitalocean", "api-prod-vpc.fra1", ["lb-api"]),
    ):
        fleet = fleet_from(f"specs/{spec}.yaml")
        catalog = load_catalog(fleet.provider.name)
        servers = expand_fleet(fleet, catalog)
        (declared,) = [
            r
            for r in declared_resources(
                fleet, servers, catalog, engine_sources=(), ssh_public_keys=()
            )
            if r.name == network
        ]
        change = dataclasses.replace(NETWORK_REPLACE, name=network, logical=declared.logical)
        steps = [_step(part, "t:index/x:X", "replace") for part in parts]
        assert unplanned_steps(_plan(0, (change,)), steps) == ()
        assert unplanned_steps(_plan(), steps) != ()
