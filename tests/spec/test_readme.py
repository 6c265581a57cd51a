"""The README's spec examples and what it says of the examples in specs/ hold."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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
