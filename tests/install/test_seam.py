"""How the install step reaches a server, from its record (engine/install/seam.py)."""

from __future__ import annotations

from pathlib import Path

from engine.install.seam import install_target
from engine.state import FleetSettings, ServerRecord

SETTINGS = FleetSettings(name="web", provider="hcloud", ssh_user="ops", ssh_port=2222)


def record(private_ips: tuple[str, ...]) -> ServerRecord:
    return ServerRecord(
        fleet="web",
        name="web-1",
        group="web",
        provider="hcloud",
        ipv4="203.0.113.7",
        private_ips=private_ips,
        host_keys=(("ssh-ed25519", "ssh-ed25519 AAAA"),),
        host_keys_source="phone-home",
    )


def test_the_fleet_reaches_a_server_at_its_private_address() -> None:
    target = install_target(record(("10.10.0.3", "10.20.0.3")), SETTINGS, "203.0.113.7", Path("/k"))
    assert (target.address, target.port, target.user) == ("203.0.113.7", 2222, "ops")
    assert target.peer_address == "10.10.0.3"
    assert target.host_keys == ("ssh-ed25519 AAAA",)


def test_a_server_on_no_private_network_is_reached_where_the_engine_reaches_it() -> None:
    target = install_target(record(()), SETTINGS, "203.0.113.7", Path("/k"))
    assert target.peer_address == "203.0.113.7"
