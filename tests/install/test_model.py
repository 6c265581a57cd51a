"""Install requests and results as JSON, the way they cross the process boundary."""

from __future__ import annotations

import pytest

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
    to_json,
)
from engine.model import DockerInstall, DockerSource, Install, SystemInstall


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
                argv=("docker", "run", "--name", "fleet-agent", "fleet/agent:1"),
                health=("curl", "-fsSk", "https://127.0.0.1:7567/v1/health"),
                directories=("/etc/fleet-agent",),
                files=(AgentFile(path="/etc/fleet-agent/config.json", content="x" * 20),),
            ),
        ),
        settings=InstallSettings(
            install=Install(
                docker=DockerInstall(source=DockerSource.DISTRO),
                system=SystemInstall(sysctl=(("vm.swappiness", "10"),)),
            ),
            control_plane=("203.0.113.10", "2001:db8::/64"),
        ),
        folder="/tmp/engine-install-x",
        dry_run=True,
        archive=ImageArchive(reference="fleet/agent:1", image_id="sha256:ab", path="/tmp/a.tgz"),
    )
    assert from_json(HostRequest, to_json(request)) == request
    assert request.host.agent is not None and request.host.agent.name == "fleet-agent"
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
