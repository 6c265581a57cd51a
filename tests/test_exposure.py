"""Ports open to the whole Internet: found in the spec, graded, blocking until meant."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from engine.exposure import Severity, fleet_exposures, is_world
from engine.spec import parse_spec
from tests.support.cli import ROOT, engine

SPEC: dict[str, Any] = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "shop",
    "provider": {"name": "hcloud", "token_env": "HCLOUD_TOKEN"},
    "control_plane": {"url": "https://ops.example.com"},
    "defaults": {"server_type": "cx22", "image": "debian-12", "locations": ["fsn1"]},
    "groups": [{"name": "db", "count": 1, "firewalls": ["db"]}],
    "firewalls": [{"name": "db", "inbound": []}],
}


def _with_rule(**rule: Any) -> dict[str, Any]:
    return {**SPEC, "firewalls": [{"name": "db", "inbound": [{"protocol": "tcp", **rule}]}]}


# (rule, severity and services found, or None when the rule opens nothing to the world)
CASES = [
    ({"port": "5432", "sources": ["0.0.0.0/0"]}, (Severity.HIGH, ("PostgreSQL",))),
    ({"port": "22", "sources": ["10.0.0.0/8", "::/0"]}, (Severity.HIGH, ("SSH",))),
    ({"port": "6000-6500", "sources": ["0.0.0.0/1"]}, (Severity.HIGH, ("Redis", "Kubernetes API"))),
    ({"port": "7567", "sources": ["0.0.0.0/0"]}, (Severity.HIGH, ("fleet agent",))),
    ({"port": "1-65535", "sources": ["0.0.0.0/0"]}, (Severity.HIGH, None)),  # every port
    ({"port": "443", "sources": ["0.0.0.0/0", "::/0"]}, (Severity.WEB, ("HTTPS",))),
    ({"port": "25565", "sources": ["0.0.0.0/0"]}, (Severity.OPEN, ())),
    ({"port": "80-443", "sources": ["0.0.0.0/0"]}, (Severity.HIGH, None)),  # SMB, rpcbind...
    ({"port": "5432", "sources": ["203.0.113.0/24"]}, None),  # an office: not the world
    ({"port": "5432", "sources": ["10.0.0.0/9"]}, None),
]


@pytest.mark.parametrize(("rule", "expected"), CASES, ids=[json.dumps(c[0]) for c in CASES])
def test_rules_open_to_the_world_are_found_and_graded(
    rule: dict[str, Any], expected: tuple[Severity, tuple[str, ...] | None] | None
) -> None:
    found = fleet_exposures(parse_spec(yaml.safe_dump(_with_rule(**rule)).encode()))
    if expected is None:
        assert found == ()
        return
    severity, services = expected
    (exposure,) = found
    assert (exposure.group, exposure.path, exposure.severity) == (
        "db",
        "firewalls[0].inbound[0]",
        severity,
    )
    if services is not None:
        assert exposure.services == services
    assert exposure.is_blocking == (severity is Severity.HIGH)


def test_a_meant_exposure_is_listed_with_its_reason_and_blocks_nothing() -> None:
    spec = _with_rule(port="22", sources=["0.0.0.0/0"], exposure="public", reason="the bastion")
    (exposure,) = fleet_exposures(parse_spec(yaml.safe_dump(spec).encode()))
    assert exposure.public and exposure.reason == "the bastion" and not exposure.is_blocking


def test_the_world_is_a_wide_range_whatever_its_version() -> None:
    assert is_world("0.0.0.0/0") and is_world("::/0") and is_world("64.0.0.0/2")
    assert not is_world("10.0.0.0/9") and not is_world("2001:db8::/32")
    assert not is_world("not an address")


def _commit(repo: Path, spec: dict[str, Any]) -> None:
    (repo / "shop.yaml").write_text(yaml.safe_dump(spec))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                    "commit", "-qm", "spec"], cwd=repo, check=True)  # fmt: skip


def test_a_database_opened_to_the_world_is_caught_in_review_without_credentials(
    tmp_path: Path,
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _commit(tmp_path, _with_rule(port="5432", sources=["10.10.0.0/16"]))
    (tmp_path / "shop.yaml").write_text(
        yaml.safe_dump(_with_rule(port="5432", sources=["0.0.0.0/0"]))
    )
    preview = ["preview", "shop.yaml", "--against-ref", "HEAD", "--detailed-exitcode"]
    state = ["--state-dir", str(tmp_path / "state")]
    text = engine(*preview, *state, cwd=tmp_path)
    assert text.returncode == 1, text.stderr
    assert "! db: tcp 5432 (PostgreSQL) from 0.0.0.0/0" in text.stdout
    assert "error[open_to_the_world] firewalls[0].inbound[0]" in text.stdout
    document = json.loads(engine(*preview, "--format", "json", *state, cwd=tmp_path).stdout)
    schema = json.loads((ROOT / "schemas" / "plan.v2.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(document)
    assert document["summary"]["blocked"]
    (exposure,) = document["exposures"]
    assert (exposure["severity"], exposure["services"], exposure["blocking"]) == (
        "high", ["PostgreSQL"], True,
    )  # fmt: skip
    markdown = engine(*preview, "--format", "markdown", *state, cwd=tmp_path).stdout
    assert "🛑 `db`: tcp 5432 (PostgreSQL) from 0.0.0.0/0" in markdown

    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(_with_rule(
        port="5432", sources=["0.0.0.0/0"], exposure="public", reason="a read replica for partners"
    )))  # fmt: skip
    meant = engine(*preview, *state, cwd=tmp_path)
    # Not blocked any more; the rule itself is a change pending (its firewall is updated).
    assert meant.returncode == 2, meant.stdout
    assert "~ firewall shop-db  update    rules: tcp 5432 from 10.10.0.0/16 -> " in meant.stdout
    assert 'meant: "a read replica for partners"' in meant.stdout
