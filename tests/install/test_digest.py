"""The install hash: what the diff compares to mark a server for reinstall."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from engine.install import digest
from engine.install.digest import install_hash
from engine.model import (
    AgentInstall,
    DockerInstall,
    DockerSource,
    Install,
    SystemInstall,
)

CHANGES = {
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


def test_equal_settings_hash_equally() -> None:
    assert install_hash(Install()) == install_hash(Install())
    assert install_hash(Install()).startswith("sha256:")
    assert len(install_hash(Install())) == len("sha256:") + 16


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_every_setting_changes_the_hash(name: str) -> None:
    assert install_hash(CHANGES[name]) != install_hash(Install())


def test_the_hash_is_the_same_in_another_process() -> None:
    code = (
        "from engine.model import Install; from engine.install.digest import install_hash; "
        "print(install_hash(Install()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == install_hash(Install())


def test_a_change_to_the_deploy_code_changes_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = install_hash(Install())
    copy = tmp_path / "deploys"
    shutil.copytree(Path(digest.__file__).parents[2] / "deploys", copy)
    (copy / "system.py").write_text((copy / "system.py").read_text() + "\n# changed\n")
    fake = ModuleSpec("deploys", None, is_package=True)
    fake.submodule_search_locations = [str(copy)]
    monkeypatch.setattr(digest.importlib.util, "find_spec", lambda name: fake)
    digest.deploys_version.cache_clear()
    try:
        assert install_hash(Install()) != before
    finally:
        digest.deploys_version.cache_clear()
