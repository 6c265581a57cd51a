"""Private Docker daemons leave nothing behind that could trouble the next one."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess

import pytest

from engine.providers.local.dockerd import PrivateDaemon, _iptables_rules, _used_networks


def test_a_stopped_daemon_leaves_no_iptables_rule(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A short root: containerd's socket path under it must fit in 108 bytes.
    daemon = PrivateDaemon.start(tmp_path_factory.mktemp("dk"))
    try:
        assert any(daemon.bridge in rule for rule in _iptables_rules("nat"))
    finally:
        daemon.stop()
    for table in ("nat", "filter"):
        assert not [rule for rule in _iptables_rules(table) if daemon.bridge in rule]


def test_networks_of_leftover_nat_rules_count_as_used() -> None:
    # A rule like the one a vanished daemon leaves: it would masquerade a new daemon's
    # traffic from that network. 198.18.0.0/15 is for benchmarks: nothing here routes it.
    network = ipaddress.IPv4Network(f"198.18.{secrets.randbelow(256)}.0/24")
    rule = ["POSTROUTING", "-s", str(network), "!", "-o", "fegone", "-j", "MASQUERADE"]
    subprocess.run(["iptables", "-w", "-t", "nat", "-A", *rule], check=True)
    try:
        assert network in _used_networks()
    finally:
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", *rule], check=True)
