"""The README's spec examples and what it says of the examples in specs/ hold."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import yaml

from engine import spec, yamldoc
from engine.catalog import load_catalog
from engine.model import Fleet, ProviderName
from engine.placement import expand_fleet
from engine.spec import load_spec, parse_spec
from tests.support.cli import ROOT, engine
from tests.support.readme import console_example, section


def test_the_validation_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    command, output = console_example("Validation")
    args = shlex.split(command.removeprefix("engine "))
    # A private state directory: a catalog refreshed in the checkout must not change the answer.
    result = engine(*args, cwd=ROOT, env={"ENGINE_STATE_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stdout == output
    assert result.stderr == ""


def test_the_spec_example_is_a_valid_fleet_of_three_web_servers(tmp_path: Path) -> None:
    found = re.search(r"```yaml\n(.*?)```", section("The fleet spec"), re.DOTALL)
    assert found, "the README shows no spec"
    fleet = parse_spec(found.group(1).encode(), file="README.md", state_dir=tmp_path)
    servers = expand_fleet(fleet, load_catalog(fleet.provider.name, tmp_path))
    assert [s.name for s in servers] == ["web-1", "web-2", "web-3"]
    assert [s.location for s in servers] == ["fsn1", "nbg1", "hel1"]  # spread, in list order
    assert {s.server_type for s in servers} == {"cx32"}  # the group's, over the default


def test_the_example_specs_hold_what_the_readme_says(tmp_path: Path) -> None:
    def spec(name: str) -> tuple[Fleet, list[str]]:
        fleet = load_spec(ROOT / "specs" / name, state_dir=tmp_path)
        servers = expand_fleet(fleet, load_catalog(fleet.provider.name, tmp_path))
        return fleet, sorted({s.location for s in servers})

    described = " ".join(section("The fleet spec").split())
    assert "`demo.yaml` (three local servers)" in described
    demo, _ = spec("demo.yaml")
    assert demo.provider.name is ProviderName.LOCAL and sum(g.count for g in demo.groups) == 3
    assert (
        "`hetzner.yaml` (web and worker groups, firewalls, private network, load balancer, "
        "three locations)" in described
    )
    hetzner, locations = spec("hetzner.yaml")
    assert [g.name for g in hetzner.groups] == ["web", "worker"] and len(locations) == 3
    assert hetzner.firewalls and hetzner.networks and hetzner.load_balancers
    assert "`digitalocean.yaml` (two regions, VPC, DNS records)" in described
    digitalocean, regions = spec("digitalocean.yaml")
    assert len(regions) == 2 and digitalocean.networks and digitalocean.dns


def test_every_code_the_loader_gives_is_listed_at_the_top_of_spec_py() -> None:
    """The README sends readers to engine/spec.py's docstring for the diagnostic codes."""
    assert spec.__doc__ is not None
    listed = set(re.findall(r"\b[a-z][a-z0-9_]*\b", spec.__doc__.split("Diagnostic codes")[1]))
    given = set()
    for module in (spec, yamldoc):
        assert module.__file__ is not None
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            first = node.args[0] if node.args else None
            if name in ("add", "diag", "fail", "_fail", "_problem") and isinstance(
                first, ast.Constant
            ):
                given.add(first.value)
            given |= {
                k.value.value
                for k in node.keywords
                if k.arg == "code" and isinstance(k.value, ast.Constant)
            }
    assert len(given) > 40 and given <= listed, sorted(given - listed)


def test_the_serve_settings_the_readme_shows_are_valid_and_mean_what_it_says(
    tmp_path: Path,
) -> None:
    found = re.search(r"```yaml\n(.*?)```", section("The control plane"), re.DOTALL)
    assert found, "the README shows no serve settings"
    document = yaml.safe_load((ROOT / "specs" / "hetzner.yaml").read_text())
    document.update(yaml.safe_load(found.group(1)))
    fleet = parse_spec(yaml.safe_dump(document).encode(), file="README.md", state_dir=tmp_path)
    assert (fleet.reconcile.interval_s, fleet.reconcile.mode) == (300, "report")
    assert [(a.name, a.when, a.above, a.for_s) for a in fleet.alerts] == [
        ("hot", "cpu", 90, 600),
        ("down", "unhealthy", None, 0),
        ("drifted", "drift", None, 900),
    ]
    assert fleet.webhooks[0].secret_env == "FLEET_WEBHOOK_SECRET"
