"""App changes against what runs: deploy, update (fields, values masked), remove, drift, an
app taking the ports of one leaving over, the rollout order, and how text, markdown and JSON
show them."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from engine.apps.diff import AppsObserved, RunningApp, as_deployed, diff_apps
from engine.apps.versions import app_definition
from engine.catalog import load_catalog
from engine.diff import DiffOptions, as_built, as_recorded, diff_fleet
from engine.model import Fleet
from engine.placement import expand_fleet
from engine.plan import AppAction, FieldChange, ReplacedApp
from engine.preview import with_apps
from engine.render import plan_from_json, render_json, render_markdown, render_text
from engine.spec import parse_spec
from tests.diff.model import digest_of

SCHEMA = json.loads(Path("schemas/plan.v2.schema.json").read_text())
GREETING = "hello-from-version-one"
SPEC: dict[str, Any] = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "shop",
    "provider": {"name": "local"},
    "groups": [{"name": "web", "count": 3}, {"name": "worker", "count": 1}],
    "apps": [
        {
            "name": "web",
            "image": "registry.example.com/shop/web:1.0",
            "ports": ["80:8080"],
            "env": {"GREETING": GREETING, "LOG_LEVEL": "info"},
            "secret_env": ["DATABASE_URL"],
            "health": {"http": {"path": "/healthz", "port": 8080}},
            "on": ["web"],
        },
        {"name": "jobs", "image": "registry.example.com/shop/jobs:1.0", "on": ["worker"]},
    ],
}


def fleet_of(spec: dict[str, Any]) -> Fleet:
    return parse_spec(yaml.safe_dump(spec).encode(), file="shop.yaml")


def changed(**app: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec["apps"][0].update(app)
    return spec


def running(fleet: Fleet) -> AppsObserved:
    """Every app of `fleet` running as specified."""
    return as_deployed(fleet, expand_fleet(fleet, load_catalog("local")))


def plan_of(fleet: Fleet, observed: AppsObserved, *, existing: bool = True) -> Any:
    catalog = load_catalog("local")
    servers = expand_fleet(fleet, catalog)
    actual = [as_built(fleet, s, catalog, provider_id=s.name) for s in servers] if existing else []
    digest = digest_of(fleet)
    records = [
        as_recorded(fleet, a, s.group, digest) for a, s in zip(actual, servers, strict=False)
    ]
    plan = diff_fleet(fleet, catalog, actual, records, options=DiffOptions(install_hash=digest))
    return with_apps(plan, fleet, catalog, actual, observed)


def test_new_servers_get_every_app_in_rollout_order() -> None:
    fleet = fleet_of(SPEC)
    plan = plan_of(fleet, AppsObserved(), existing=False)
    assert [(c.action, c.app, c.server) for c in plan.apps] == [
        (AppAction.DEPLOY, "web", "web-1"),
        (AppAction.DEPLOY, "web", "web-2"),
        (AppAction.DEPLOY, "web", "web-3"),
        (AppAction.DEPLOY, "jobs", "worker-1"),
    ]
    assert {c.reasons for c in plan.apps} == {("a new server",)}
    (web, jobs) = plan.app_rollouts
    assert jobs.groups[0].servers == ("worker-1",)
    assert web.version == app_definition(fleet.app("web")).version
    assert [(g.group, g.max_unavailable, g.servers) for g in web.groups] == [
        ("web", 1, ("web-1", "web-2", "web-3"))
    ]
    assert plan.has_changes


def test_nothing_changes_when_every_server_runs_the_specs_version() -> None:
    fleet = fleet_of(SPEC)
    plan = plan_of(fleet, running(fleet))
    assert plan.apps == () and not plan.has_changes
    assert "App " not in render_text(plan)


def test_an_env_change_is_an_update_that_never_shows_a_value() -> None:
    old, new = fleet_of(SPEC), fleet_of(changed(env={"GREETING": "hello-v2", "LOG_LEVEL": "info"}))
    plan = plan_of(new, running(old))
    assert [(c.action, c.server) for c in plan.apps] == [
        (AppAction.UPDATE, "web-1"),
        (AppAction.UPDATE, "web-2"),
        (AppAction.UPDATE, "web-3"),
    ]
    change = plan.apps[0]
    assert change.fields == (FieldChange(field="env.GREETING", before="***", after="***"),)
    assert change.reasons == ("env.GREETING changed",)
    assert change.before == app_definition(old.app("web")).version
    text = render_text(plan)
    markdown = "".join(render_markdown(plan))
    document = json.dumps(render_json(plan))
    for shown in (text, markdown, document):
        assert "hello-v2" not in shown and GREETING not in shown
        assert "GREETING" in shown
    assert "rollout: web: web-1, web-2, web-3, 1 at a time" in text
    assert "Apps: 3 to update on 3 servers." in text
    Draft202012Validator(SCHEMA).validate(json.loads(document))


def test_image_ports_secrets_and_resources_are_listed_field_by_field() -> None:
    old = fleet_of(SPEC)
    new = fleet_of(
        changed(
            image="registry.example.com/shop/web:1.1",
            ports=["81:8080"],
            secret_env=["API_TOKEN"],
            resources={"cpu": 0.5, "memory": "256m"},
        )
    )
    fields = {f.field: (f.before, f.after) for f in plan_of(new, running(old)).apps[0].fields}
    assert fields == {
        "image": ("registry.example.com/shop/web:1.0", "registry.example.com/shop/web:1.1"),
        "secret_env.API_TOKEN": ("", "***"),
        "secret_env.DATABASE_URL": ("***", ""),
        "ports": ("80:8080", "81:8080"),
        "resources.cpu": ("", "0.5"),
        "resources.memory": ("", "256m"),
    }


def test_a_container_removed_by_hand_is_drift_that_is_deployed_again() -> None:
    fleet = fleet_of(SPEC)
    observed = running(fleet)
    entries = dict(observed.running)
    entries["web-2"] = ()  # the agent finds no container of web there
    plan = plan_of(fleet, dataclasses.replace(observed, running=entries))
    (change,) = plan.apps
    assert (change.action, change.server) == (AppAction.DEPLOY, "web-2")
    assert "removed or stopped outside the engine" in change.reasons[0]


def test_an_app_gone_from_the_spec_or_its_group_is_removed() -> None:
    old = fleet_of(SPEC)
    spec = copy.deepcopy(SPEC)
    spec["apps"] = [spec["apps"][0]]
    plan = plan_of(fleet_of(spec), running(old))
    assert [(c.action, c.app, c.server) for c in plan.apps] == [
        (AppAction.REMOVE, "jobs", "worker-1")
    ]
    assert plan.app_rollouts[0].version == ""
    assert "(no longer in the spec)" in render_text(plan)


def test_a_version_the_store_never_saw_is_an_update_by_version() -> None:
    fleet = fleet_of(SPEC)
    observed = AppsObserved(
        running={"web-1": (RunningApp(app="web", version="0123456789ab", container="x"),)}
    )
    change = diff_apps(fleet, expand_fleet(fleet, load_catalog("local")), {"web-1"}, observed)
    first = change.changes[0]
    assert first.action is AppAction.UPDATE
    assert first.fields == (
        FieldChange(
            field="version",
            before="0123456789ab",
            after=app_definition(fleet.app("web")).version,
        ),
    )


def test_max_unavailable_and_only_shape_the_rollout() -> None:
    fleet = fleet_of(changed(update={"max_unavailable": 2}))
    found = diff_apps(
        fleet, expand_fleet(fleet, load_catalog("local")), set(), AppsObserved(), only="web"
    )
    assert {c.app for c in found.changes} == {"web"}
    assert found.rollouts[0].groups[0].max_unavailable == 2


def test_health_and_update_settings_roll_nothing() -> None:
    old = fleet_of(SPEC)
    new = fleet_of(changed(health={"tcp": {"port": 8080}}, update={"monitor": "5s"}))
    assert plan_of(new, running(old)).apps == ()


def test_markdown_has_a_table_per_app_with_its_rollout_order() -> None:
    old, new = fleet_of(SPEC), fleet_of(changed(image="registry.example.com/shop/web:2.0"))
    (body,) = render_markdown(plan_of(new, running(old)))
    assert "#### App `web` → `" in body
    assert "Rollout: web: web-1, web-2, web-3, 1 at a time" in body
    assert body.count("| `~` | `web-") == 3
    assert "changes pending" in body


def test_a_renamed_app_takes_the_ports_over_server_by_server_in_its_own_rollout() -> None:
    old = fleet_of(SPEC)
    new = fleet_of(changed(name="www"))
    plan = plan_of(new, running(old))
    replaced = ReplacedApp(
        app="web", version=app_definition(old.app("web")).version, ports=("80/tcp",)
    )
    # No removal of web on its own: on each server it stops as www starts, in www's step.
    assert [(c.action, c.app, c.server, c.replaces) for c in plan.apps] == [
        (AppAction.DEPLOY, "www", server, (replaced,)) for server in ("web-1", "web-2", "web-3")
    ]
    assert [r.app for r in plan.app_rollouts] == ["www"]
    text = render_text(plan)
    assert (
        "takes port 80/tcp over from web, which leaves web-1: web stops just before www "
        "starts, and is removed once www is healthy (put back if it is not)"
    ) in text
    document = render_json(plan)
    Draft202012Validator(SCHEMA).validate(document)
    assert document["apps"]["changes"][0]["replaces"] == [
        {"app": "web", "version": replaced.version, "ports": ["80/tcp"]}
    ]
    assert plan_from_json(json.loads(json.dumps(document))).apps == plan.apps
    # Deploying www alone takes the ports over just the same; removing web alone removes it.
    servers = expand_fleet(new, load_catalog("local"))
    alone = diff_apps(new, servers, {s.name for s in servers}, running(old), only="www")
    assert [c.replaces for c in alone.changes] == [(replaced,)] * 3
    gone = diff_apps(new, servers, {s.name for s in servers}, running(old), only="web")
    assert [(c.action, c.server) for c in gone.changes] == [
        (AppAction.REMOVE, s) for s in ("web-1", "web-2", "web-3")
    ]


def test_an_app_leaving_that_holds_no_port_the_new_one_needs_is_removed_on_its_own() -> None:
    old = fleet_of(SPEC)
    plan = plan_of(fleet_of(changed(name="www", ports=["81:8080"])), running(old))
    assert [(c.action, c.app, c.replaces) for c in plan.apps] == [
        *[(AppAction.DEPLOY, "www", ())] * 3,
        *[(AppAction.REMOVE, "web", ())] * 3,
    ]
    assert [r.app for r in plan.app_rollouts] == ["www", "web"]
