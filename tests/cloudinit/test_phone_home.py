"""The phone-home program's parts that need no server, and the body's JSON Schema."""

from __future__ import annotations

import ast
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from engine.cloudinit import phone_home

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "phone-home.v1.schema.json"


def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def body(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "version": 1,
        "fleet": "web-prod",
        "server": "web-1",
        "hostname": "web-1",
        "provider": "hcloud",
        "instance_id": "48213377",
        "addresses": {
            "public_ipv4": ["95.217.10.20"],
            "public_ipv6": ["2001:db8::1"],
            "private": ["10.10.0.2"],
        },
        "host_keys": {"ed25519": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo"},
        "boot": {
            "kernel_booted_at": "2026-11-02T10:00:00Z",
            "cloud_init_finished_at": None,
            "sent_at": "2026-11-02T10:00:31Z",
        },
        "cloud_init": {"status": "done", "errors": []},
        "attempt": 1,
    }
    value.update(overrides)
    return value


def test_the_program_runs_on_python_3_7_and_imports_only_the_standard_library() -> None:
    """Servers run what their image has: Debian 10 and Ubuntu 20.04 have Python 3.7/3.8."""
    source = Path(phone_home.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 7))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_the_schema_accepts_a_phone_home_body() -> None:
    assert list(validator().iter_errors(body())) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"token": "never-in-the-body"},
        {"instance_id": ""},
        {"instance_id": "../etc/passwd"},
        {"server": "Web_1"},
        {"host_keys": {}},
        {"host_keys": {"ed25519": "ssh-ed25519 AAAA root@web-1"}},
        {"addresses": {"public_ipv4": ["300.1.1.1"], "public_ipv6": [], "private": []}},
        {"boot": {"kernel_booted_at": "yesterday", "cloud_init_finished_at": None, "sent_at": ""}},
        {"attempt": 0},
        {"version": 2},
    ],
)
def test_the_schema_refuses_malformed_bodies(overrides: dict[str, Any]) -> None:
    assert list(validator().iter_errors(body(**overrides)))


IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet", "local": "95.217.10.20", "scope": "global"},
            {"family": "inet", "local": "10.19.0.5", "scope": "global"},
            {"family": "inet6", "local": "2a01:4f8:c17:1::1", "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "scope": "link"},
        ],
    },
    {
        "ifname": "enp7s0",
        "addr_info": [{"family": "inet", "local": "10.10.0.2", "scope": "global"}],
    },
    {
        "ifname": "docker0",
        "addr_info": [{"family": "inet", "local": "172.17.0.1", "scope": "global"}],
    },
    {"ifname": "eth1", "addr_info": [{"family": "inet6", "local": "fd00::5", "scope": "global"}]},
]


def test_addresses_are_sorted_into_public_and_private() -> None:
    assert phone_home.classify_addresses(IP_ADDR) == {
        "public_ipv4": ["95.217.10.20"],
        "public_ipv6": ["2a01:4f8:c17:1::1"],
        "private": ["10.19.0.5", "10.10.0.2", "fd00::5"],
    }


def test_this_machines_real_addresses_fit_the_schema() -> None:
    links = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True).stdout)
    found = phone_home.classify_addresses(links)
    assert found["private"] or found["public_ipv4"] or found["public_ipv6"]
    assert list(validator().iter_errors(body(addresses=found))) == []


def test_host_keys_lose_their_comment(tmp_path: Path) -> None:
    (tmp_path / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAC3Nz root@web-1\n")
    (tmp_path / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAAB3Nz\n")
    (tmp_path / "ssh_host_ecdsa_key.pub").write_text("")
    keys = phone_home.read_host_keys(str(tmp_path / "ssh_host_{}_key.pub"))
    assert keys == {"ed25519": "ssh-ed25519 AAAAC3Nz", "rsa": "ssh-rsa AAAAB3Nz"}


def test_the_instance_id_is_read_from_cloud_inits_instance_data(tmp_path: Path) -> None:
    data = tmp_path / "instance-data.json"
    data.write_text(json.dumps({"v1": {"instance_id": "i-0abc", "cloud_name": "nocloud"}}))
    assert phone_home.instance_id("local", str(data)) == "i-0abc"


def test_cloud_init_errors_are_reported(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"v1": {"datasource": "NoCloud", "errors": []}}))
    assert phone_home.cloud_init_result(str(result)) == {"status": "done", "errors": []}
    result.write_text(json.dumps({"v1": {"errors": ["x" * 900] * 30}}))
    reported = phone_home.cloud_init_result(str(result))
    assert reported["status"] == "error"
    assert len(reported["errors"]) == 20 and len(reported["errors"][0]) == 500
    missing = phone_home.cloud_init_result(str(tmp_path / "none.json"))
    assert missing["status"] == "error"


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    delays = [phone_home.backoff(n, None) for n in range(1, 12)]
    assert 1.0 <= delays[0] <= 2.0
    assert all(d <= phone_home.MAX_DELAY_S for d in delays)
    assert max(delays[-3:]) >= phone_home.MAX_DELAY_S / 2
    assert phone_home.backoff(3, 7.0) == 7.0
    assert phone_home.backoff(3, 3600.0) == phone_home.MAX_DELAY_S


def test_the_log_masks_the_token_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "fleet-phone-home.log"
    log = phone_home.Log(str(path), secret="s3cret-token")
    log("sending Bearer s3cret-token to https://ops.example.com")
    text = path.read_text()
    assert "s3cret-token" not in text and "Bearer ***" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
