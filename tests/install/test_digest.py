"""The install digest: what the diff compares to mark a server for reinstall. It covers every
input of the install, so each one reaches servers that exist."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

from engine.agent import image
from engine.install import digest
from engine.install.digest import install_digest
from engine.model import (
    AgentInstall,
    DockerInstall,
    DockerSource,
    Fleet,
    Install,
    Ssh,
    SystemInstall,
)
from tests.stacks.harness import fleet_from

FLEET = fleet_from("specs/demo.yaml")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsKeyOfSomeone0000000000000000000000000000 ops@laptop"
PLANE = {"control_plane_url": "http://10.0.0.1:8470", "control_plane_sources": ("10.0.0.1",)}

INSTALLS = {
    "docker source": Install(docker=DockerInstall(source=DockerSource.DISTRO)),
    "log size": Install(docker=DockerInstall(log_max_size="50m")),
    "log files": Install(docker=DockerInstall(log_max_files=5)),
    "live restore": Install(docker=DockerInstall(live_restore=False)),
    "timezone": Install(system=SystemInstall(timezone="Europe/Berlin")),
    "swap": Install(system=SystemInstall(swap="2G")),
    "unattended upgrades": Install(system=SystemInstall(unattended_upgrades=False)),
    "sysctl": Install(system=SystemInstall(sysctl=(("vm.swappiness", "10"),))),
    "agent port": Install(agent=AgentInstall(port=7568)),
    "heartbeat": Install(agent=AgentInstall(heartbeat_s=30)),
    "agent image": Install(agent=AgentInstall(image="registry.example.com/agent:2")),
}


def _digest(fleet: Fleet = FLEET, **changes: Any) -> str:
    inputs: dict[str, Any] = {"agent": "recipe:0123456789abcdef", **PLANE, **changes}
    return install_digest(fleet, **inputs)


def test_equal_inputs_digest_equally() -> None:
    assert _digest() == _digest()
    assert _digest().startswith("sha256:") and len(_digest()) == len("sha256:") + 16


@pytest.mark.parametrize("name", sorted(INSTALLS))
def test_every_install_setting_changes_the_digest(name: str) -> None:
    assert _digest(dataclasses.replace(FLEET, install=INSTALLS[name])) != _digest()


def test_keys_the_agent_and_the_control_plane_change_the_digest() -> None:
    with_key = dataclasses.replace(FLEET, ssh=Ssh(authorized_keys=(KEY,)))
    assert _digest(with_key) != _digest()
    # The order the spec lists keys in is not what the server gets: the set is.
    other = KEY.replace("OfSomeone", "OfAnother")
    two = dataclasses.replace(FLEET, ssh=Ssh(authorized_keys=(KEY, other)))
    turned = dataclasses.replace(FLEET, ssh=Ssh(authorized_keys=(other, KEY)))
    assert _digest(two) == _digest(turned)
    assert _digest(agent="recipe:fedcba9876543210") != _digest()
    assert _digest(control_plane_url="http://10.0.0.1:8471") != _digest()
    assert _digest(control_plane_sources=("10.0.0.2",)) != _digest()


def test_the_digest_is_the_same_in_another_process() -> None:
    code = (
        "from engine.install.digest import install_digest; "
        "from tests.stacks.harness import fleet_from; "
        "print(install_digest(fleet_from('specs/demo.yaml'), agent='recipe:0123456789abcdef', "
        "control_plane_url='http://10.0.0.1:8470', control_plane_sources=('10.0.0.1',)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest()


def test_a_change_to_the_deploy_code_changes_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _digest()
    copy = tmp_path / "deploys"
    shutil.copytree(Path(digest.__file__).parents[2] / "deploys", copy)
    (copy / "system.py").write_text((copy / "system.py").read_text() + "\n# changed\n")
    fake = ModuleSpec("deploys", None, is_package=True)
    fake.submodule_search_locations = [str(copy)]
    monkeypatch.setattr(digest.importlib.util, "find_spec", lambda name: fake)
    digest.deploys_version.cache_clear()
    try:
        assert _digest() != before
    finally:
        digest.deploys_version.cache_clear()


def test_a_change_to_the_agent_changes_its_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = image.agent_recipe()
    copy = tmp_path / "agent"
    shutil.copytree(image.AGENT_SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    version = copy / "fleet_agent" / "__init__.py"
    version.write_text(version.read_text() + "\n# a new agent\n")
    monkeypatch.setattr(image, "AGENT_SOURCE", copy)
    monkeypatch.setattr(image, "LOCK_FILE", copy / "requirements.lock")
    image.agent_recipe.cache_clear()
    try:
        assert image.agent_recipe() != before and image.agent_recipe().startswith("recipe:")
    finally:
        image.agent_recipe.cache_clear()
