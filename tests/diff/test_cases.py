"""Diff cases as data: each file in cases/ holds a spec, actual state, and the expected plan.

A case file (YAML) has:

    description: what it shows
    spec: {...}                     the desired fleet spec, as a user writes it
    actual: [{name: web-1}, ...]    owned servers at the provider; each is the server the
                                    spec wants under that name (or, for names the spec does
                                    not have, one like its group's), with the fields given
                                    overridden: server_type, location, image (a name, a map
                                    {snapshot: {labels}} or null), labels_set, labels_unset,
                                    firewalls, networks, backups, ipv4, ipv6, disk_gb,
                                    placement_group, provider_id, created, status, exit_code,
                                    stopped_at, fleet_id
    records: all                    the store's records: "all" (one per actual server, the
                                    default), or a list of names or of maps with overrides
                                    (stage, stage_reason, host_keys, install_hash, ...); every
                                    one installed with the spec's digest unless it says
    agents: {web-1: {answer, detail}}   what agents said (engine.health.AgentSeen)
    failures: {web-1: 3}            failures since each server was last ready
    unowned: [{name: web-4, labels: {...}}]
    options: {delete_orphans, list_lag_s, now}
    expect:
      changes: [{action, server, disruptive, fields: {field: [before, after]}, reasons}]
      problems: [{code, path, message}]   message: a substring
      warnings: [substring, ...]          exactly that many warnings
      unchanged: N
      monthly: [before, after]

Besides the expected plan, every unblocked case must converge: carrying the plan out on
the model of the provider (tests/diff/model.py) leaves nothing to do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.catalog import Catalog, load_catalog
from engine.diff import DiffOptions, as_built, as_recorded, diff_fleet
from engine.health import AgentAnswer, AgentSeen
from engine.model import Fleet, Image, ImageKind, Stage, ownership_labels
from engine.placement import expand_fleet
from engine.plan import Plan
from engine.providers import ActualServer
from engine.spec import parse_spec
from engine.state import ServerRecord
from tests.diff.model import apply_plan, digest_of

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


def _image(raw: object) -> Image | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return Image(kind=ImageKind.NAME, name=raw)
    assert isinstance(raw, dict) and "snapshot" in raw
    return Image(
        kind=ImageKind.SNAPSHOT, name="snap-1", labels=tuple(sorted(raw["snapshot"].items()))
    )


def _when(raw: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(raw)).replace(tzinfo=dt.UTC)


def build_actual(
    fleet: Fleet, catalog: Catalog, entries: list[dict[str, Any]]
) -> list[ActualServer]:
    desired = {s.name: s for s in expand_fleet(fleet, catalog)}
    servers = []
    for n, entry in enumerate(entries, start=1):
        entry = dict(entry)
        name = entry.pop("name")
        group = name.rsplit("-", 1)[0]
        base = desired.get(name) or next(
            (s for s in desired.values() if s.group == group), next(iter(desired.values()))
        )
        server = as_built(fleet, base, catalog, entry.pop("provider_id", str(1000 + n)))
        labels = dict(server.labels)
        if name not in desired:
            labels.update(ownership_labels(fleet.name, group, name))
        labels.update(entry.pop("labels_set", {}))
        for key in entry.pop("labels_unset", []):
            labels.pop(key)
        changes: dict[str, Any] = {"name": name, "labels": tuple(sorted(labels.items()))}
        if "image" in entry:
            changes["image"] = _image(entry.pop("image"))
        for key in ("created", "stopped_at"):
            if key in entry:
                changes[key] = _when(entry.pop(key))
        for key in ("firewalls", "networks"):
            if key in entry:
                changes[key] = tuple(sorted(entry.pop(key)))
        if "server_type" in entry and "disk_gb" not in entry:
            entry["disk_gb"] = catalog.server_types[entry["server_type"]].disk_gb
        changes.update(entry)
        servers.append(dataclasses.replace(server, **changes))
    return servers


def build_records(fleet: Fleet, actual: list[ActualServer], raw: object) -> list[ServerRecord]:
    by_name = {s.name: s for s in actual}
    digest = digest_of(fleet)
    if raw in (None, "all"):
        return [as_recorded(fleet, s, dict(s.labels)["fleet-group"], digest) for s in actual]
    assert isinstance(raw, list)
    records = []
    for entry in raw:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = entry.pop("name")
        server = by_name.get(name)
        if server is not None:
            record = as_recorded(fleet, server, dict(server.labels)["fleet-group"], digest)
        else:
            record = ServerRecord(
                fleet=fleet.name,
                name=name,
                group=name.rsplit("-", 1)[0],
                provider=str(fleet.provider.name),
                install_hash=digest if actual else None,
            )
        if "created_at" in entry:
            entry["created_at"] = _when(entry["created_at"])
        if "stage" in entry:
            entry["stage"] = Stage(entry["stage"])
        if "host_keys" in entry:
            entry["host_keys"] = tuple(sorted(entry["host_keys"].items()))
        records.append(dataclasses.replace(record, **entry))
    return records


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(path.read_text())
    fleet = parse_spec(yaml.safe_dump(case["spec"]).encode(), file=str(path))
    catalog = load_catalog(str(fleet.provider.name))
    actual = build_actual(fleet, catalog, case.get("actual") or [])
    records = build_records(fleet, actual, case.get("records", "all"))
    unowned = [
        ActualServer(
            name=u["name"],
            provider_id=str(u.get("provider_id", 5000)),
            labels=tuple(sorted((u.get("labels") or {}).items())),
            server_type="cx22",
            image=None,
            location="fsn1",
            status="running",
        )
        for u in case.get("unowned") or []
    ]
    raw_options = dict(case.get("options") or {})
    if "now" in raw_options:
        raw_options["now"] = _when(raw_options["now"])
    raw_options.setdefault("install_hash", digest_of(fleet))
    agents = {
        name: AgentSeen(answer=AgentAnswer(seen["answer"]), detail=seen.get("detail", ""))
        for name, seen in (case.get("agents") or {}).items()
    }
    return {
        "fleet": fleet,
        "catalog": catalog,
        "actual": actual,
        "records": records,
        "unowned": unowned,
        "options": DiffOptions(**raw_options),
        "agents": agents,
        "failures": dict(case.get("failures") or {}),
        "expect": case["expect"],
    }


def check_plan(plan: Plan, expect: dict[str, Any]) -> None:
    got = [(str(c.action), c.server) for c in plan.changes]
    wanted = [(c["action"], c["server"]) for c in expect.get("changes", [])]
    assert got == wanted
    for change, spec in zip(plan.changes, expect.get("changes", []), strict=True):
        if "disruptive" in spec:
            assert change.disruptive is spec["disruptive"], change.server
        if "fields" in spec:
            fields = {f.field: [f.before, f.after] for f in change.fields}
            assert fields == spec["fields"], change.server
        for part in spec.get("reasons", []):
            assert any(part in reason for reason in change.reasons), (part, change.reasons)
    problems = sorted((p.code, p.path) for p in plan.problems)
    assert problems == sorted((p["code"], p["path"]) for p in expect.get("problems", []))
    for spec in expect.get("problems", []):
        problem = next(p for p in plan.problems if (p.code, p.path) == (spec["code"], spec["path"]))
        assert spec.get("message", "") in problem.message, problem.message
        assert problem.hint
    assert len(plan.warnings) == len(expect.get("warnings", [])), plan.warnings
    for part in expect.get("warnings", []):
        assert any(part in warning for warning in plan.warnings), (part, plan.warnings)
    if "unchanged" in expect:
        assert plan.unchanged == expect["unchanged"]
    if "monthly" in expect:
        assert [plan.before.monthly_cost, plan.after.monthly_cost] == pytest.approx(
            expect["monthly"]
        )


@pytest.mark.parametrize("path", CASES, ids=[c.stem for c in CASES])
def test_case(path: Path) -> None:
    case = load_case(path)
    fleet, catalog = case["fleet"], case["catalog"]
    plan = diff_fleet(
        fleet,
        catalog,
        case["actual"],
        case["records"],
        unowned=case["unowned"],
        options=case["options"],
        agents=case["agents"],
        failures=case["failures"],
    )
    check_plan(plan, case["expect"])
    if plan.is_blocked:
        return
    # The per-change cost deltas add up to the plan's delta.
    assert sum(c.monthly_delta for c in plan.changes) == pytest.approx(plan.monthly_delta)
    actual, records = apply_plan(plan, fleet, catalog, case["actual"], case["records"])
    again = diff_fleet(fleet, catalog, actual, records, options=case["options"])
    assert again.changes == ()
    assert again.problems == ()
