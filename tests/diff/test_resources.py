"""Resources besides servers in the diff: declared against listed, property by property."""

from __future__ import annotations

import dataclasses

from engine.catalog import load_catalog
from engine.diff import diff_fleet, diff_resources
from engine.plan import Action
from engine.providers import CloudResource, ResourceKind
from tests.stacks.harness import fleet_from

CATALOG = load_catalog("hcloud")


def _network(ip_range: str, **more: object) -> CloudResource:
    return CloudResource(
        kind=ResourceKind.NETWORK,
        name="web-prod-private",
        properties=(("ip_range", ip_range), ("subnets", "eu-central 10.10.0.0/18")),
        fixed=("ip_range",),
        servers=("web-2", "web-10", "web-1"),
        on_replace="detached and attached again",
        **more,  # type: ignore[arg-type]
    )


def _balancer(lb_type: str, location: str = "fsn1") -> CloudResource:
    return CloudResource(
        kind=ResourceKind.LOAD_BALANCER,
        name="web-prod-web",
        properties=(("type", lb_type), ("location", location)),
        fixed=("location",),
    )


def test_the_same_resources_make_no_change() -> None:
    declared = (_network("10.10.0.0/16"), _balancer("lb11"))
    changes, before, after, warnings = diff_resources(CATALOG, declared, declared)
    assert changes == () and before == after == 5.39 and warnings == []


def test_missing_is_created_and_undeclared_is_deleted_unless_someone_elses() -> None:
    key = CloudResource(kind=ResourceKind.SSH_KEY, name="k", properties=(("fingerprint", "f"),))
    theirs = dataclasses.replace(key, name="theirs", owned=False)
    changes, *_ = diff_resources(CATALOG, (_network("10.10.0.0/16"),), (key, theirs))
    assert [(c.action, c.kind, c.name) for c in changes] == [
        (Action.CREATE, "network", "web-prod-private"),
        (Action.DELETE, "ssh_key", "k"),
    ]
    created = changes[0]
    assert [(f.field, f.before, f.after) for f in created.fields] == [
        ("ip_range", "", "10.10.0.0/16"),
        ("subnets", "", "eu-central 10.10.0.0/18"),
    ]
    assert not created.disruptive and not changes[1].disruptive  # no server hangs on a key


def test_a_fixed_property_replaces_and_names_the_servers_it_touches() -> None:
    (change,), *_ = diff_resources(
        CATALOG, (_network("10.11.0.0/16"),), (_network("10.10.0.0/16"),)
    )
    assert change.action is Action.REPLACE and change.disruptive
    assert change.servers == ("web-1", "web-2", "web-10")
    assert change.reasons == (
        "ip_range cannot change in place: it is made anew",
        "servers touched: web-1, web-2, web-10 (detached and attached again)",
    )
    assert [(f.field, f.before, f.after) for f in change.fields] == [
        ("ip_range", "10.10.0.0/16", "10.11.0.0/16")
    ]


def test_other_properties_update_in_place_and_move_the_cost() -> None:
    (change,), before, after, _ = diff_resources(
        CATALOG, (_balancer("lb21"),), (_balancer("lb11"),)
    )
    assert change.action is Action.UPDATE and not change.disruptive and change.servers == ()
    assert (change.monthly_before, change.monthly_after) == (5.39, 16.4)
    assert (before, after) == (5.39, 16.4)


def test_what_the_declared_side_leaves_out_is_not_compared() -> None:
    unknown = CloudResource(kind=ResourceKind.FIREWALL, name="web-prod.engine", properties=())
    listed = dataclasses.replace(unknown, properties=(("rules", "tcp 22 from 198.51.100.7/32"),))
    assert diff_resources(CATALOG, (unknown,), (listed,))[0] == ()


def test_an_unpriced_balancer_warns_and_the_plan_counts_balancers_in_its_cost() -> None:
    _, _, after, warnings = diff_resources(CATALOG, (_balancer("lb11", "nowhere"),), ())
    assert after == 0 and "no price for load balancer type lb11 in nowhere" in warnings[0]
    fleet = fleet_from("specs/hetzner.yaml")
    plan = diff_fleet(fleet, CATALOG, (), declared=(_balancer("lb21"),), listed=())
    assert plan.has_changes and plan.resource_counts() == {Action.CREATE: 1}
    servers_only = diff_fleet(fleet, CATALOG, ())
    assert plan.after.monthly_cost == round(servers_only.after.monthly_cost + 16.4, 4)
    assert plan.api_calls.apply_estimate == servers_only.api_calls.apply_estimate + 1
