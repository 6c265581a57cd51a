"""The providers' shared pure pieces: fingerprints, address plans, tags, engine rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.model import Protocol
from stacks.common import (
    carve,
    engine_rules,
    ssh_fingerprint,
    ssh_key_name,
    tags,
    unique_keys,
)
from tests.stacks.harness import fleet_from
from tests.support.keys import DEPLOY_KEY, OPS_KEY, RSA4096_KEY


@pytest.mark.parametrize("key", [OPS_KEY, DEPLOY_KEY, RSA4096_KEY])
def test_fingerprints_match_ssh_keygen(key: str, tmp_path: Path) -> None:
    (tmp_path / "key.pub").write_text(key + "\n")
    shown = subprocess.run(
        ["ssh-keygen", "-E", "md5", "-l", "-f", str(tmp_path / "key.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert shown == "MD5:" + ssh_fingerprint(key)


def test_a_malformed_key_is_refused_clearly() -> None:
    with pytest.raises(EngineError, match="is not an OpenSSH public key line"):
        ssh_fingerprint("ssh-ed25519 not*base64")


def test_key_names_carry_the_fleet_and_the_fingerprint() -> None:
    assert ssh_key_name("web-prod", OPS_KEY) == "web-prod-key-5f28d268"
    assert ssh_fingerprint(OPS_KEY).startswith("5f:28:d2:68:")


def test_the_same_key_with_another_comment_counts_once() -> None:
    renamed = OPS_KEY.rsplit(" ", 1)[0] + " other@desk"
    assert unique_keys([OPS_KEY, DEPLOY_KEY, renamed]) == (OPS_KEY, DEPLOY_KEY)


@pytest.mark.parametrize(
    ("ip_range", "index", "slots", "largest", "expected"),
    [
        ("10.10.0.0/16", 0, 4, 0, "10.10.0.0/18"),
        ("10.10.0.0/16", 3, 4, 0, "10.10.192.0/18"),
        ("10.20.0.0/16", 11, 16, 16, "10.20.176.0/20"),
        ("10.0.0.0/8", 11, 16, 16, "10.11.0.0/16"),
        ("192.168.8.0/24", 15, 16, 16, "192.168.8.240/28"),
    ],
)
def test_carving_gives_each_slot_a_fixed_range(
    ip_range: str, index: int, slots: int, largest: int, expected: str
) -> None:
    assert carve(ip_range, index, slots, largest_prefix=largest) == expected


def test_a_network_too_small_to_carve_is_refused() -> None:
    with pytest.raises(EngineError, match="too small to split into 16 parts of at least /28"):
        carve("10.1.2.0/26", 0, 16)


def test_labels_become_sorted_tags() -> None:
    assert tags((("role", "web"), ("fleet", "demo"))) == ["fleet:demo", "role:web"]


def test_the_engine_opens_its_ssh_port_and_agent_port() -> None:
    fleet = fleet_from(
        "specs/hetzner.yaml",
        ssh={"port": 2222},
        install={"agent": {"port": 7600}},
    )
    rules = engine_rules(fleet, ("203.0.113.9/32",))
    assert [(r.protocol, r.port, r.sources) for r in rules] == [
        (Protocol.TCP, "2222", ("203.0.113.9/32",)),
        (Protocol.TCP, "7600", ("203.0.113.9/32",)),
    ]
