"""Rendering plans: terminal text, pull-request markdown (split into parts), versioned JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from engine.catalog import load_catalog
from engine.diff import DiffOptions, diff_fleet
from engine.model import Image, ImageKind
from engine.plan import Action, FieldChange, Plan, ResourceChange
from engine.render import (
    MARKDOWN_LIMIT,
    plan_from_json,
    render_json,
    render_markdown,
    render_text,
)
from engine.spec import parse_spec
from tests.diff.model import digest_of
from tests.diff.test_cases import CASES, load_case

SCHEMA = json.loads(Path("schemas/plan.v2.schema.json").read_text())


def _plan(case: str) -> Plan:
    loaded = load_case(Path(f"tests/diff/cases/{case}.yaml"))
    return diff_fleet(
        loaded["fleet"],
        loaded["catalog"],
        loaded["actual"],
        loaded["records"],
        unowned=loaded["unowned"],
        options=loaded["options"],
        agents=loaded["agents"],
        failures=loaded["failures"],
    )


@cache
def _big_plan(groups: int, per_group: int) -> Plan:
    spec = {
        "apiVersion": "fleet/v1",
        "kind": "Fleet",
        "name": "big",
        "provider": {"name": "hcloud", "token_env": "HCLOUD_TOKEN"},
        "control_plane": {"url": "https://ops.example.com"},
        "defaults": {"server_type": "cx22", "image": "debian-12", "locations": ["fsn1", "nbg1"]},
        "groups": [{"name": f"g{n}", "count": per_group} for n in range(groups)],
    }
    fleet = parse_spec(yaml.safe_dump(spec).encode(), file="big.yaml")
    options = DiffOptions(install_hash=digest_of(fleet))
    return diff_fleet(fleet, load_catalog("hcloud"), [], options=options)


@pytest.mark.parametrize("path", CASES, ids=[c.stem for c in CASES])
def test_json_follows_the_published_schema(path: Path) -> None:
    document = render_json(_plan(path.stem))
    Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(document)))
    assert document["version"] == 2


def test_json_carries_the_whole_plan() -> None:
    document = render_json(_plan("quota_vcpus"))
    assert document["summary"]["create"] == 4 and document["summary"]["resize"] == 1
    assert document["summary"]["blocked"] is True and document["summary"]["unchanged"] == 2
    assert document["cost"] == {
        "monthly_before": 50.7,
        "monthly_after": 134.3,
        "monthly_delta": 83.6,
    }
    assert [p["path"] for p in document["problems"]] == ["limits.vcpus", "limits.monthly_cost"]
    resize = document["changes"][-1]
    assert resize["before"]["server_type"] == "cx42" and resize["after"]["server_type"] == "cx52"
    assert resize["fields"] == [{"field": "server_type", "before": "cx42", "after": "cx52"}]
    assert resize["monthly_delta"] == 16.0 and resize["disruptive"] is True
    assert document["usage"]["after"]["vcpus"] == 64


def test_text_shows_symbols_reasons_warnings_and_totals() -> None:
    text = render_text(_plan("quota_vcpus"))
    assert "\x1b[" not in text
    assert re.search(r"^  \+ web-3 +create +cx42 in fsn1, debian-12 +\+16\.90 EUR/mo$", text, re.M)
    assert re.search(r"^  ~ db-1 +resize +server_type: cx42 -> cx52  ! disruptive", text, re.M)
    assert "      the server is powered off while its type changes" in text
    assert "The plan cannot be applied:" in text
    assert "error[over_limit] limits.vcpus: planned 64 > 60 (now 24)" in text
    assert "Plan: 4 to create, 1 to resize; 2 unchanged." in text
    assert "Disruptive: db-1 (powered off)." in text
    assert "Monthly cost: 50.70 -> 134.30 EUR a month (+83.60 EUR)." in text
    replace = render_text(_plan("replace_image"))
    assert re.search(r"^-/\+ web-1 +replace +image: debian-11 -> debian-12", replace, re.M)
    delete = render_text(_plan("scale_down"))
    assert re.search(r"^  - web-3 +delete +cx22 in fsn1 \(id 1003\)  ! disruptive", delete, re.M)
    adopt = render_text(_plan("adopt"))
    assert re.search(r"^  = web-1 +adopt +provider_id: \(none\) -> 11$", adopt, re.M)
    assert "  ! web-9 (id 77) carries" in render_text(_plan("orphan_left_alone"))


def test_repairs_say_what_they_do_in_every_format() -> None:
    off = render_text(_plan("powered_off"))
    assert re.search(r"^  \^ web-1 +power on +power: exited -> running$", off, re.M)
    assert "exit code 137, since 2026-11-05 10:32:01 UTC" in off
    assert "Plan: 2 to power on; 1 unchanged." in off
    failed = _plan("failed_retried_local")
    text = render_text(failed)
    assert re.search(r"^  @ web-1 +retry +installed again, failed 3 times$", text, re.M)
    assert re.search(r"^  @ web-2 +retry +made anew, failed once  ! disruptive$", text, re.M)
    assert "Disruptive: web-2 (made anew), web-3 (made anew)." in text
    (body,) = render_markdown(failed)
    assert "| `@` | `web-2` | retry ⚠️ | made anew, failed once |" in body
    assert "| `^` | `web-4` | power on |" in body
    document = render_json(failed)
    assert document["summary"]["retry"] == 3 and document["summary"]["power_on"] == 1
    retried = {c["server"]: (c["retry_by"], c["failed_attempts"]) for c in document["changes"]}
    assert retried == {
        "web-1": ("install", 3),
        "web-2": ("remake", 1),
        "web-3": ("remake", 0),
        "web-4": (None, 2),
    }
    hcloud = render_json(_plan("failed_retried_hcloud"))
    assert [c["retry_by"] for c in hcloud["changes"]] == ["rebuild", "replace", "rebuild", None]
    assert hcloud["api_calls"]["apply_estimate"] == 1 + 2 + 1 + 1


def test_text_is_coloured_only_when_asked() -> None:
    plan = _plan("replace_image")
    coloured = render_text(plan, colour=True)
    assert "\x1b[35m-/+\x1b[0m" in coloured
    assert re.sub(r"\x1b\[\d+m", "", coloured) == render_text(plan)


def test_a_plan_without_changes_says_so() -> None:
    text = render_text(_plan("no_changes"))
    assert "Plan: no changes; 5 unchanged." in text
    assert "Monthly cost: 34.56 EUR a month (unchanged)." in text
    (body,) = render_markdown(_plan("no_changes"))
    assert "✅ up to date" in body and "|" not in body


def test_markdown_lists_changes_only_grouped_by_group() -> None:
    (body,) = render_markdown(_plan("quota_vcpus"))
    assert body.startswith(
        "<!-- fleet-engine-preview: tests/diff/cases/quota_vcpus.yaml part 1/1 -->"
    )
    assert "**4 to create, 1 to resize; 2 unchanged** · monthly cost 50.70 → 134.30 EUR" in body
    assert body.index("#### web: 4 changes") < body.index("#### db: 1 change")
    assert "web-1" not in body and "web-2" not in body  # unchanged servers are not listed
    assert "> [!CAUTION]" in body and "`limits.vcpus`: planned 64 &gt; 60" in body
    assert "> [!WARNING]\n> 1 disruptive change: `db-1` (powered off)" in body
    assert "| `~` | `db-1` | resize ⚠️ | server\\_type: cx42 → cx52 |" in body
    assert "API calls: 0 to read; about 7 to apply" in body
    orphan = render_markdown(_plan("orphan_left_alone"))[0]
    assert "<details><summary>Warnings (1)</summary>" in orphan


def test_markdown_escapes_what_users_control() -> None:
    plan = _plan("create_all")
    hostile = Image(kind=ImageKind.CUSTOM, name="evil|<img src=x onerror=alert(1)>`*")
    change = plan.changes[0]
    assert change.after is not None
    changed = dataclasses.replace(change, after=dataclasses.replace(change.after, image=hostile))
    (body,) = render_markdown(dataclasses.replace(plan, changes=(changed, *plan.changes[1:])))
    row = next(line for line in body.splitlines() if "`web-1`" in line)
    assert row.count("|") == 7  # the pipe in the name does not open a column
    assert "<img" not in body and "&lt;img" in row and "\\`\\*" in row


def test_a_big_plan_is_split_into_parts_under_the_limit() -> None:
    plan = _big_plan(groups=4, per_group=1000)
    parts = render_markdown(plan)
    assert len(parts) > 1
    assert all(len(part) <= MARKDOWN_LIMIT for part in parts)
    for number, part in enumerate(parts, start=1):
        assert part.startswith(
            f"<!-- fleet-engine-preview: big.yaml part {number}/{len(parts)} -->"
        )
        assert f"*Part {number} of {len(parts)}*" in part
    rows = [line for part in parts for line in part.splitlines() if line.startswith("| `+`")]
    assert len(rows) == 4000
    assert len({row.split("|")[2] for row in rows}) == 4000  # every server exactly once
    assert parts[0].count("### Fleet preview") == 1 and "<sub>" in parts[-1]


@pytest.mark.parametrize(("limit", "splits_a_group"), [(4_000, True), (40_000, False)])
def test_splitting_respects_any_limit(limit: int, splits_a_group: bool) -> None:
    parts = render_markdown(_big_plan(groups=3, per_group=100), limit=limit)
    assert all(len(part) <= limit for part in parts)
    rows = [line for part in parts for line in part.splitlines() if line.startswith("| `+`")]
    assert len(rows) == 300
    assert ("#### g0: 100 changes (continued)" in "\n".join(parts)) is splits_a_group


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in _walk(item)]
    if isinstance(value, list):
        return [v for item in value for v in _walk(item)]
    return [value]


def test_json_of_a_big_plan_is_valid_and_plain() -> None:
    document = render_json(_big_plan(groups=2, per_group=50))
    Draft202012Validator(SCHEMA).validate(document)
    assert all(isinstance(v, str | int | float | bool | type(None)) for v in _walk(document))


def test_resource_changes_show_in_every_format_with_their_kind() -> None:
    plan = dataclasses.replace(
        _plan("create_all"),
        resources=(
            ResourceChange(
                action=Action.UPDATE,
                kind="firewall",
                name="web-prod-web",
                reasons=("rules differ",),
                fields=(
                    FieldChange(
                        field="rules",
                        before="tcp 22 from 0.0.0.0/0\ntcp 443 from 0.0.0.0/0",
                        after="tcp 22 from 203.0.113.0/24\ntcp 443 from 0.0.0.0/0",
                    ),
                ),
            ),
            ResourceChange(
                action=Action.REPLACE,
                kind="network",
                name="api-prod-vpc.fra1",
                reasons=("ip_range cannot change in place: it is made anew",),
                fields=(FieldChange(field="ip_range", before="10.20.0.0/20", after="10.9.0.0/20"),),
                disruptive=True,
                servers=("api-1", "worker-1"),
            ),
        ),
    )
    text = render_text(plan)
    assert (
        "  ~ firewall web-prod-web  update    "
        "rules: - tcp 22 from 0.0.0.0/0; + tcp 22 from 203.0.113.0/24"
    ) in text
    assert "-/+ network api-prod-vpc.fra1  replace   ip_range: 10.20.0.0/20 -> 10.9.0.0/20" in text
    assert "; resources: 1 to update, 1 to replace." in text
    assert "Disruptive resources: network api-prod-vpc.fra1 (api-1, worker-1 touched)." in text
    (markdown,) = render_markdown(plan)
    assert "#### Resources: 2 changes" in markdown
    assert "| `-/+` | network `api-prod-vpc.fra1` | replace ⚠️ |" in markdown
    assert "Disruptive resource changes: network api-prod-vpc.fra1 (api-1, worker-1 touched)" in (
        markdown
    )
    document = render_json(plan)
    Draft202012Validator(SCHEMA).validate(document)
    assert [(r["kind"], r["action"], r["servers"]) for r in document["resources"]] == [
        ("firewall", "update", []),
        ("network", "replace", ["api-1", "worker-1"]),
    ]
    assert document["summary"]["has_changes"] is True


@pytest.mark.parametrize("path", CASES, ids=[c.stem for c in CASES])
def test_a_plan_read_back_from_its_json_renders_as_the_plan_did(path: Path) -> None:
    plan = _plan(path.stem)
    back = plan_from_json(json.loads(json.dumps(render_json(plan))))
    assert render_text(back) == render_text(plan)


def test_a_big_plan_read_back_from_its_json_renders_as_the_plan_did() -> None:
    plan = _big_plan(3, 40)
    assert render_text(plan_from_json(render_json(plan))) == render_text(plan)
