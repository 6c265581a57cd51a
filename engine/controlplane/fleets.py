"""What the control plane keeps about each fleet it serves, taken from the fleet's spec."""

from __future__ import annotations

import dataclasses
import json

from engine.model import Fleet
from engine.state import FleetSettings
from engine.state.store import Store


def fleet_settings(fleet: Fleet) -> FleetSettings:
    """The control-plane settings of a validated fleet spec."""
    cp = fleet.control_plane
    return FleetSettings(
        name=fleet.name,
        provider=str(fleet.provider.name),
        provider_endpoint=fleet.provider.endpoint,
        token_env=fleet.provider.token_env,
        readiness=str(cp.readiness),
        token_ttl_s=cp.token_ttl_s,
        phone_home_timeout_s=cp.phone_home_timeout_s,
        verify_source_ip=cp.verify_source_ip,
        heartbeat_s=fleet.install.agent.heartbeat_s,
        ssh_user=fleet.ssh.user,
        ssh_port=fleet.ssh.port,
        # Through JSON so enums become their values and tuples lists, as the store keeps them.
        install=json.loads(json.dumps(dataclasses.asdict(fleet.install))),
    )


def register_fleet(
    store: Store, fleet: Fleet, *, url: str | None = None, sources: tuple[str, ...] = ()
) -> FleetSettings:
    """Record (or update) the fleet's settings, so any control plane on this store serves it.

    `url` and `sources` are where this run's control plane listens and reaches servers from
    (what agents are installed with); without them, the ones recorded before are kept."""
    settings = fleet_settings(fleet)
    if url is not None:
        settings = dataclasses.replace(
            settings, control_plane_url=url, control_plane_sources=sources
        )
    else:
        known = store.fleets.get(fleet.name)
        if known is not None:
            settings = dataclasses.replace(
                settings,
                control_plane_url=known.control_plane_url,
                control_plane_sources=known.control_plane_sources,
            )
    store.fleets.save(settings)
    return settings
