"""The control plane's install step: one server, over SSH, with the fleet's deploys and agent.

`FleetInstaller` is the `Installer` the control plane's install jobs call. It turns an
`InstallTarget` (address, pinned host keys, deploy key) into the deploys' `InstallHost`, adds
the agent (its image, `docker run` command, config with its tokens) and runs
`engine.install.runner.install_hosts`, which keeps pyinfra in processes of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.install.agent import (
    CONFIG_PATH,
    HOST_DIRECTORIES,
    agent_run_options,
    agent_settings,
    docker_run_argv,
    render_agent_config,
)
from engine.install.deploykey import ensure_deploy_key
from engine.install.model import AgentFile, AgentRun, HostResult, InstallHost, InstallSettings
from engine.install.runner import install_hosts
from engine.install.seam import InstallResult, InstallTarget, install_lock_dir
from engine.install.sharing import fleet_sharing
from engine.model import Fleet
from engine.state import FleetSettings
from engine.tokens import agent_token, heartbeat_token, read_fleet_key, token_sha256


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetInstaller:
    """Installs servers of the given fleets.

    `control_plane_url` is where agents send heartbeats (as servers reach it);
    `control_plane_sources` the addresses the control plane and engine reach servers from
    (the only ones let in to the agent port); `agent_image` the agent image reference (in
    `docker_url`'s engine, copied to servers, unless the fleet names a registry image);
    `digests` the install digest of each fleet (engine.install.digest), which the install
    reports for every server it installs.
    """

    state_dir: Path
    fleets: Mapping[str, Fleet]
    control_plane_url: str
    control_plane_sources: tuple[str, ...]
    agent_image: str
    digests: Mapping[str, str]
    docker_url: str | None = None
    log_dir: Path | None = None

    def host(self, target: InstallTarget) -> InstallHost:
        """The deploys' view of one target, with its agent."""
        fleet = self.fleets[target.fleet]
        image = fleet.install.agent.image or self.agent_image
        settings = agent_settings(fleet, target.name, control_plane_url=self.control_plane_url)
        key = read_fleet_key(self.state_dir, fleet.name)
        config = render_agent_config(
            settings,
            token_sha256=token_sha256(agent_token(key, fleet.name, target.name)),
            heartbeat_token=heartbeat_token(key, fleet.name, target.name),
        )
        if target.private_key is None:
            raise RuntimeError(f"fleet {fleet.name} has no deploy key in {self.state_dir}")
        return InstallHost(
            name=target.name,
            address=target.address,
            user=target.user,
            host_keys=target.host_keys,
            private_key=str(target.private_key),
            port=target.port,
            peer_address=target.peer_address,
            agent=AgentRun(
                image=image,
                argv=docker_run_argv(agent_run_options(image, settings)),
                health=("curl", "-fsSk", f"https://127.0.0.1:{settings.port}/v1/health"),
                directories=HOST_DIRECTORIES,
                files=(AgentFile(path=CONFIG_PATH, content=config),),
            ),
        )

    def settings(self, fleet: Fleet) -> InstallSettings:
        """The deploys' settings for `fleet`'s servers."""
        return InstallSettings(
            install=fleet.install,
            control_plane=self.control_plane_sources,
            # The engine's own key stays, or the next install could not log in.
            authorized_keys=(
                *fleet.ssh.authorized_keys,
                ensure_deploy_key(self.state_dir, fleet.name),
            ),
            digest=self.digests[fleet.name],
            docker_url=self.docker_url,
        )

    def __call__(self, target: InstallTarget, fleet: FleetSettings) -> InstallResult:
        spec = self.fleets.get(fleet.name)
        if spec is None:
            return InstallResult(ok=False, error=f"this control plane has no spec of {fleet.name}")
        (result,) = install_hosts(
            [self.host(target)],
            self.settings(spec),
            log_dir=self.log_dir,
            # Per server, for as long as its install process lives: a run resumed after the
            # engine died waits for the install of the dead one to end.
            lock_dir=install_lock_dir(self.state_dir, spec.name),
            # A copied image goes from the engine to one server, then from server to server.
            sharing=None if spec.install.agent.image else fleet_sharing(self.state_dir, spec.name),
        )
        return InstallResult(
            ok=result.ok,
            install_hash=result.install_hash,
            changed=result.changed,
            error=result.error,
        )

    def dry_run(
        self, targets: Sequence[InstallTarget], on_result: Callable[[HostResult], None]
    ) -> tuple[HostResult, ...]:
        """What installing each target (all of one fleet) would change, in parallel; nothing
        changes on them. `on_result` hears of each host as soon as it is done."""
        if not targets:
            return ()
        spec = self.fleets[targets[0].fleet]
        return install_hosts(
            [self.host(target) for target in targets],
            self.settings(spec),
            dry_run=True,
            log_dir=self.log_dir,
            on_result=on_result,
        )
