"""Install requests and results: the install hash, and JSON across the process boundary."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from engine.install import model
from engine.install.model import (
    AgentFile,
    AgentRun,
    HostRequest,
    HostResult,
    ImageArchive,
    InstallHost,
    InstallSettings,
    OperationResult,
    from_json,
    install_hash,
    to_json,
)
from engine.model import AgentInstall, DockerInstall, DockerSource, Install, SystemInstall

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
    assert len(install_hash(Install())) == 16


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_every_setting_changes_the_hash(name: str) -> None:
    assert install_hash(CHANGES[name]) != install_hash(Install())


def test_the_hash_is_the_same_in_another_process() -> None:
    code = (
        "from engine.install import install_hash; from engine.model import Install; "
        "print(install_hash(Install()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == install_hash(Install())


def test_a_change_to_the_deploy_code_changes_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = install_hash(Install())
    copy = tmp_path / "deploys"
    shutil.copytree(Path(model.__file__).parents[2] / "deploys", copy)
    (copy / "system.py").write_text((copy / "system.py").read_text() + "\n# changed\n")
    fake = ModuleSpec("deploys", None, is_package=True)
    fake.submodule_search_locations = [str(copy)]
    monkeypatch.setattr(model.importlib.util, "find_spec", lambda name: fake)
    model.deploys_version.cache_clear()
    try:
        assert install_hash(Install()) != before
    finally:
        model.deploys_version.cache_clear()


def test_requests_and_results_survive_json() -> None:
    request = HostRequest(
        host=InstallHost(
            name="web-1",
            address="10.0.0.5",
            user="fleet",
            host_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFHSbC7 root@web-1",),
            private_key="/state/keys/deploy",
            port=2222,
            agent=AgentRun(
                image="fleet/agent:1",
                health=("curl", "-fsS", "http://127.0.0.1:7567/"),
                options=("--network", "host"),
                files=(AgentFile(path="/etc/fleet-agent/token", content="x" * 20),),
            ),
        ),
        settings=InstallSettings(
            install=Install(
                docker=DockerInstall(source=DockerSource.DISTRO),
                system=SystemInstall(sysctl=(("vm.swappiness", "10"),)),
            ),
            control_plane=("203.0.113.10", "2001:db8::/64"),
        ),
        dry_run=True,
        archive=ImageArchive(reference="fleet/agent:1", image_id="sha256:ab", path="/tmp/a.tgz"),
    )
    assert from_json(HostRequest, to_json(request)) == request
    result = HostResult(
        name="web-1",
        ok=True,
        install_hash="0123456789abcdef",
        operations=(OperationResult(name="system | Set the time zone", changed=True, seconds=0.2),),
        skipped=("swap: not set up",),
    )
    assert from_json(HostResult, to_json(result)) == result
    assert result.changed == ("system | Set the time zone",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "a", "ok": True, "install_hash": "x", "colour": "red"}, "unknown fields"),
        ({"name": "a", "ok": "yes", "install_hash": "x"}, "expected bool"),
        ({"name": "a", "ok": True, "install_hash": "x", "skipped": "swap"}, "expected a list"),
    ],
)
def test_malformed_json_is_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_json(HostResult, data)
