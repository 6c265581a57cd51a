"""`engine containers SPEC SERVER` as users run it, against the session's real agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.agent.client import AgentClient
from tests.support.agent import AgentProcess


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "PYTHONPATH": str(Path.cwd())},
    )


@pytest.fixture
def listed(client: AgentClient, busybox_image: str, cleanup: list[str]) -> str:
    cleanup.extend(["t-cli", "t-cli-stopped"])
    client.call(
        "POST",
        "/v1/containers",
        json={
            "image": busybox_image,
            "name": "t-cli",
            "command": ["sleep", "300"],
            "ports": [{"container_port": 9000, "host_ip": "127.0.0.1", "host_port": None}],
        },
    )
    client.call(
        "POST",
        "/v1/containers",
        json={"image": busybox_image, "name": "t-cli-stopped", "command": ["true"], "start": False},
    )
    return busybox_image


def test_containers_are_listed_through_the_agent(
    agent: AgentProcess, engine_state: Path, listed: str
) -> None:
    where = ["--agent", f"127.0.0.1:{agent.port}", "--fingerprint", agent.fingerprint]
    state = ["--state-dir", str(engine_state)]
    result = engine("containers", "specs/demo.yaml", "web-1", *where, *state)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "STATE", "STATUS", "PORTS"]
    row = next(line for line in lines if line.startswith("t-cli "))
    assert row.split()[1:3] == [listed, "running"]
    assert "->9000/tcp" in row
    assert not [line for line in lines if line.startswith("t-cli-stopped")]

    result = engine(
        "containers", "specs/demo.yaml", "web-1", "--all", "--format", "json", *where, *state
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["version"], document["fleet"], document["server"]) == (1, "demo", "web-1")
    states = {c["name"]: c["state"] for c in document["containers"]}
    assert states["t-cli"] == "running" and states["t-cli-stopped"] == "created"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["web-9"],
            "error: web-9 is not a server of fleet demo (its servers: web-1, web-2, web-3)",
        ),
        (["web-1"], "error: the engine has no record of how to reach the agent of web-1 (it"),
        (
            ["web-1", "--agent", "127.0.0.1", "--fingerprint", "abc"],
            "error: a certificate fingerprint is",
        ),
        (
            ["web-1", "--agent", "127.0.0.1:x", "--fingerprint", "0" * 64],
            "error: '127.0.0.1:x': the port after ':' must be a number",
        ),
        # Each alone was "the engine has no record of how to reach the agent", a record the
        # engine may well have.
        (["web-1", "--agent", "127.0.0.1"], "error: --agent goes with --fingerprint: give both"),
        (["web-1", "--fingerprint", "0" * 64], "error: --fingerprint goes with --agent: give"),
    ],
)
def test_mistakes_are_one_clear_line(engine_state: Path, args: list[str], message: str) -> None:
    result = engine("containers", "specs/demo.yaml", *args, "--state-dir", str(engine_state))
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_without_the_fleet_key_or_with_a_wrong_pin(
    agent: AgentProcess, engine_state: Path, tmp_path: Path
) -> None:
    where = ["--agent", f"127.0.0.1:{agent.port}"]
    no_key = engine(
        "containers",
        "specs/demo.yaml",
        "web-1",
        *where,
        "--fingerprint",
        agent.fingerprint,
        "--state-dir",
        str(tmp_path),
    )
    assert no_key.returncode == 1
    assert no_key.stderr.startswith("error: no key for fleet demo in")
    wrong_pin = engine(
        "containers",
        "specs/demo.yaml",
        "web-1",
        *where,
        "--fingerprint",
        "ab:" * 31 + "ab",
        "--state-dir",
        str(engine_state),
    )
    assert wrong_pin.returncode == 1
    assert "presented a certificate other than the pinned one" in wrong_pin.stderr
    assert agent.token not in wrong_pin.stderr + wrong_pin.stdout
