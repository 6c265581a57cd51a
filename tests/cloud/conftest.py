"""The `world` fixture: a cloud fleet on each provider (tests/cloud/world.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from engine.install.installer import FleetInstaller
from engine.install.seam import InstallResult, InstallTarget
from engine.providers.cloud import pulumi_runner
from engine.state import FleetSettings
from tests.cloud.world import CLOUDS, TOKEN_ENV, ProgramUnderMocks, World
from tests.support.cli import ROOT
from tests.support.http import serve


@pytest.fixture(params=list(CLOUDS))
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    cloud = CLOUDS[request.param]
    fake = cloud.fake()
    pulumi = ProgramUnderMocks(fake, cloud.answers, cloud.list_on)
    monkeypatch.setattr(pulumi_runner, "check_ready", lambda: None)
    monkeypatch.setattr(pulumi_runner, "up", pulumi.up)
    monkeypatch.setattr(pulumi_runner, "preview", pulumi.preview)
    monkeypatch.setattr(pulumi_runner, "destroy", pulumi.destroy)
    monkeypatch.setenv(TOKEN_ENV[request.param], fake.token)
    with serve(fake.app()) as base:
        data = yaml.safe_load((ROOT / cloud.spec).read_text())
        data["provider"]["endpoint"] = base + cloud.api_path
        data["install"]["agent"] = {"image": "registry.example.com/fleet-agent:1"}
        spec = tmp_path / "fleet.yaml"
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        yield World(request.param, spec, tmp_path / "state", fake, pulumi, data["name"])


@pytest.fixture
def installs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The servers the control plane installs; each install reports the run's digest."""
    installed: list[str] = []

    def install(self: FleetInstaller, target: InstallTarget, fleet: FleetSettings) -> InstallResult:
        installed.append(target.name)
        return InstallResult(ok=True, install_hash=self.digests[fleet.name])

    monkeypatch.setattr(FleetInstaller, "__call__", install)
    yield installed
