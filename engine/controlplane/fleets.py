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


def register_fleet(store: Store, fleet: Fleet) -> FleetSettings:
    """Record (or update) the fleet's settings, so any control plane on this store serves it."""
    settings = fleet_settings(fleet)
    store.fleets.save(settings)
    return settings
