"""Resources besides servers in the diff: declared against listed, property by property."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jsonschema import Draft202012Validator

from engine.catalog import load_catalog
from engine.diff import (
    DiffOptions,
    as_built,
    as_recorded,
    diff_fleet,
    diff_resources,
    plan_snapshots,
)
from engine.model import Fleet
from engine.placement import expand_fleet
from engine.plan import Action
from engine.providers import CloudResource, ResourceKind, Snapshot
from engine.render import render_json
from stacks.declared import declared_resources
from tests.diff.model import digest_of
from tests.stacks.harness import fleet_from

CATALOG = load_catalog("hcloud")
SCHEMA = json.loads(Path("schemas/plan.v2.schema.json").read_text())


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
    found = diff_resources(CATALOG, declared, declared)
    assert found.changes == () and found.warnings == ()
    assert found.monthly_before == found.monthly_after == 5.39


def test_missing_is_created_and_undeclared_is_deleted_unless_someone_elses() -> None:
    key = CloudResource(kind=ResourceKind.SSH_KEY, name="k", properties=(("fingerprint", "f"),))
    theirs = dataclasses.replace(key, name="theirs", owned=False)
    changes = diff_resources(CATALOG, (_network("10.10.0.0/16"),), (key, theirs)).changes
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
    found = diff_resources(CATALOG, (_network("10.11.0.0/16"),), (_network("10.10.0.0/16"),))
    (change,) = found.changes
    assert found.replaced_servers == {}  # detached and attached again, not made anew
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
    found = diff_resources(CATALOG, (_balancer("lb21"),), (_balancer("lb11"),))
    (change,) = found.changes
    before, after = found.monthly_before, found.monthly_after
    assert change.action is Action.UPDATE and not change.disruptive and change.servers == ()
    assert (change.monthly_before, change.monthly_after) == (5.39, 16.4)
    assert (before, after) == (5.39, 16.4)


def test_what_the_declared_side_leaves_out_is_not_compared() -> None:
    unknown = CloudResource(kind=ResourceKind.FIREWALL, name="web-prod.engine", properties=())
    listed = dataclasses.replace(unknown, properties=(("rules", "tcp 22 from 198.51.100.7/32"),))
    assert diff_resources(CATALOG, (unknown,), (listed,)).changes == ()


def test_an_unpriced_balancer_warns_and_the_plan_counts_balancers_in_its_cost() -> None:
    found = diff_resources(CATALOG, (_balancer("lb11", "nowhere"),), ())
    assert found.monthly_after == 0
    assert "no price for load balancer type lb11 in nowhere" in found.warnings[0]
    fleet = fleet_from("specs/hetzner.yaml")
    plan = diff_fleet(fleet, CATALOG, (), declared=(_balancer("lb21"),), listed=())
    assert plan.has_changes and plan.resource_counts() == {Action.CREATE: 1}
    servers_only = diff_fleet(fleet, CATALOG, ())
    assert plan.after.monthly_cost == round(servers_only.after.monthly_cost + 16.4, 4)
    assert plan.api_calls.apply_estimate == servers_only.api_calls.apply_estimate + 1


def test_a_new_vpc_range_replaces_the_droplets_in_it() -> None:
    old = fleet_from("specs/digitalocean.yaml")
    new = fleet_from(
        "specs/digitalocean.yaml", networks=[{"name": "vpc", "ip_range": "10.99.0.0/16"}]
    )
    catalog = load_catalog("digitalocean")
    servers = expand_fleet(old, catalog)
    actual = [as_built(old, s, catalog, provider_id=str(n)) for n, s in enumerate(servers, 1)]
    records = [as_recorded(old, a, s.group) for a, s in zip(actual, servers, strict=True)]

    def declared(fleet: Fleet) -> tuple[CloudResource, ...]:
        return declared_resources(fleet, servers, catalog, engine_sources=(), ssh_public_keys=())

    plan = diff_fleet(new, catalog, actual, records, declared=declared(new), listed=declared(old))
    assert {(r.action, r.name) for r in plan.resources} == {
        (Action.REPLACE, "api-prod-vpc.fra1"),
        (Action.REPLACE, "api-prod-vpc.ams3"),
    }
    replaced = {c.server: c.reasons for c in plan.changes if c.action is Action.REPLACE}
    assert set(replaced) == {"api-1", "api-2", "worker-1"}
    assert (
        "network api-prod-vpc.fra1 is made anew: replaced: DigitalOcean cannot move"
        in (replaced["worker-1"][0])
    )
    unchanged = diff_fleet(
        old, catalog, actual, records, declared=declared(old), listed=declared(old)
    )
    assert not unchanged.has_changes


def test_destroys_plan_says_the_fleet_is_being_destroyed() -> None:
    fleet = fleet_from("specs/hetzner.yaml")
    servers = expand_fleet(fleet, CATALOG)
    actual = [as_built(fleet, s, CATALOG, provider_id=str(n)) for n, s in enumerate(servers, 1)]
    records = [as_recorded(fleet, a, s.group) for a, s in zip(actual, servers, strict=True)]
    listed = declared_resources(fleet, servers, CATALOG, engine_sources=(), ssh_public_keys=())
    # What `engine destroy` diffs: the fleet without its groups, every server and resource.
    plan = diff_fleet(
        dataclasses.replace(fleet, groups=()),
        CATALOG,
        actual,
        records,
        options=DiffOptions(delete_orphans=True, destroying=True),
        listed=listed,
    )
    changes = [*plan.changes, *plan.resources]
    assert len(plan.changes) == len(servers) and plan.resources
    assert {c.action for c in changes} == {Action.DELETE}
    assert {c.reasons[0] for c in changes} == {"fleet web-prod is being destroyed"}


def test_destroy_keeps_the_fleets_snapshots_unless_asked_and_says_so() -> None:
    fleet = fleet_from("specs/hetzner.yaml")
    options = DiffOptions(install_hash=digest_of(fleet), destroying=True)
    plan = diff_fleet(dataclasses.replace(fleet, groups=()), CATALOG, (), options=options)
    assert plan_snapshots(plan, fleet, (), delete=False, spec="f.yaml", fleet_id="f1") == (plan, ())
    shots = (
        Snapshot(id="91", name="web-prod-web-1-20260101-120000 (id 91)", server="web-1",
                 size_gb=0.795, fleet_id="f1"),
        Snapshot(id="92", name="web-prod-db-1-20260101-120000 (id 92)", server="db-1",
                 fleet_id="f1"),
    )  # fmt: skip
    kept, none = plan_snapshots(plan, fleet, shots, delete=False, spec="f.yaml", fleet_id="f1")
    assert kept.resources == () and not kept.has_changes and none == ()
    assert kept.warnings == (
        "snapshot web-prod-web-1-20260101-120000 (id 91) of web-1 (0.8 GB) is kept: snapshots "
        "are backups (the provider keeps and may bill them); `engine destroy f.yaml "
        "--delete-snapshots` deletes them",
        "snapshot web-prod-db-1-20260101-120000 (id 92) of db-1 is kept: snapshots are backups "
        "(the provider keeps and may bill them); `engine destroy f.yaml --delete-snapshots` "
        "deletes them",
    )
    deleted, gone = plan_snapshots(plan, fleet, shots, delete=True, spec="f.yaml", fleet_id="f1")
    assert deleted.warnings == () and deleted.resource_counts() == {Action.DELETE: 2}
    assert gone == shots
    assert {(r.kind, r.reasons) for r in deleted.resources} == {
        (
            "snapshot",
            ("fleet web-prod is being destroyed, with its snapshots (--delete-snapshots)",),
        )
    }
    Draft202012Validator(SCHEMA).validate(render_json(deleted))


def test_delete_snapshots_deletes_only_the_snapshots_this_state_directory_made() -> None:
    # Found by the fleet's name alone, another state directory's fleet of the same name (or a
    # snapshot older than fleet ids on snapshots) was deleted with --delete-snapshots.
    fleet = fleet_from("specs/hetzner.yaml")
    options = DiffOptions(install_hash=digest_of(fleet), destroying=True)
    plan = diff_fleet(dataclasses.replace(fleet, groups=()), CATALOG, (), options=options)
    ours = Snapshot(id="91", name="ours", server="web-1", fleet_id="f1")
    theirs = Snapshot(id="92", name="theirs", server="web-1", fleet_id="f2")
    older = Snapshot(id="93", name="older", server="db-1")
    shots = (ours, theirs, older)
    planned, gone = plan_snapshots(plan, fleet, shots, delete=True, spec="f.yaml", fleet_id="f1")
    assert gone == (ours,)
    assert [r.name for r in planned.resources] == ["ours"]
    assert [w.split(" is kept: ")[0] for w in planned.warnings] == [
        "snapshot theirs of web-1",
        "snapshot older of db-1",
    ]
    assert all("carries no fleet id of this state directory" in w for w in planned.warnings)
    unknown, none = plan_snapshots(plan, fleet, shots, delete=True, spec="f.yaml", fleet_id=None)
    assert none == () and len(unknown.warnings) == 3
