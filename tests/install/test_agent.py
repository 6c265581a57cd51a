"""How the agent is started and configured: exact strings (the deploy runs them over SSH),
the config round trip into the agent's own loader, and the loader's errors."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.install.agent import (
    AgentSettings,
    agent_run_options,
    agent_settings,
    docker_run_argv,
    render_agent_config,
)
from engine.spec import load_spec
from engine.tokens import agent_token, heartbeat_token, token_sha256
from fleet_agent.config import NSENTER_HOST, ConfigError, load_config

KEY = bytes(32)
SETTINGS = AgentSettings(
    fleet="demo", server="web-1", control_plane_url="https://ops.example.com", port=7567
)


def test_the_docker_run_command_line() -> None:
    argv = docker_run_argv(agent_run_options("fleet-engine/agent:0123abcd", SETTINGS))
    assert shlex.join(argv) == (
        "docker run --detach --name fleet-agent --restart unless-stopped --network host "
        "--pid host --cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add SYSLOG "
        "--security-opt apparmor=unconfined --device /dev/kmsg:/dev/kmsg:r "
        "--mount type=bind,source=/etc/fleet-agent,target=/etc/fleet-agent "
        "--mount type=bind,source=/var/lib/fleet-agent,target=/var/lib/fleet-agent "
        "--mount type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock "
        "--mount type=bind,source=/,target=/host,readonly,bind-propagation=rslave "
        "--label fleet=demo --label fleet-server=web-1 --label managed-by=fleet-engine "
        "fleet-engine/agent:0123abcd --config /etc/fleet-agent/config.json"
    )


def test_settings_come_from_the_spec() -> None:
    fleet = load_spec("specs/demo.yaml")
    settings = agent_settings(fleet, "web-2", control_plane_url="http://10.1.0.1:8080")
    assert settings == AgentSettings(
        fleet="demo",
        server="web-2",
        control_plane_url="http://10.1.0.1:8080",
        port=7567,
        heartbeat_s=15,
    )


def test_the_rendered_config_is_what_the_agent_loads(tmp_path: Path) -> None:
    token = agent_token(KEY, "demo", "web-1")
    text = render_agent_config(
        SETTINGS,
        token_sha256=token_sha256(token),
        heartbeat_token=heartbeat_token(KEY, "demo", "web-1"),
    )
    assert token not in text  # the agent only ever holds the digest
    path = tmp_path / "config.json"
    path.write_text(text)
    config = load_config(path)
    assert (config.fleet, config.server, config.port) == ("demo", "web-1", 7567)
    assert config.heartbeat_interval_s == 15
    assert config.control_plane_url == "https://ops.example.com"
    assert config.token_sha256 == token_sha256(token)
    assert config.heartbeat_token == heartbeat_token(KEY, "demo", "web-1")
    assert str(config.tls_cert) == "/etc/fleet-agent/tls/cert.pem"
    assert str(config.tls_key) == "/etc/fleet-agent/tls/key.pem"
    assert str(config.host_root) == "/host"
    assert str(config.state_dir) == "/var/lib/fleet-agent"
    assert config.docker_url == "unix:///var/run/docker.sock"
    assert config.host_command_prefix == NSENTER_HOST
    assert config.heartbeat_token not in repr(config)  # kept out of tracebacks and logs


GOOD = {"fleet": "demo", "server": "web-1", "token_sha256": "a" * 64}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "config.json:1:2: not valid JSON: Expecting property name enclosed in double quotes"),
        (json.dumps({**GOOD, "prot": 1}), "config.json: prot: Extra inputs are not permitted"),
        (
            json.dumps({**GOOD, "token_sha256": "secret"}),
            "config.json: token_sha256: Value error, must be the SHA-256 of the token as 64 "
            "lowercase hex digits",
        ),
        (
            json.dumps({**GOOD, "server": "Web_1"}),
            "config.json: server: Value error, must be a lowercase DNS label",
        ),
        (
            json.dumps({**GOOD, "tls_key": "tls/key.pem"}),
            "config.json: tls_key: Value error, must be an absolute path",
        ),
        (
            json.dumps({**GOOD, "control_plane_url": "https://ops.example.com"}),
            "config.json: (top level): Value error, control_plane_url is set, so "
            "heartbeat_token is required",
        ),
        (
            json.dumps({**GOOD, "heartbeat_interval_s": 0.1}),
            "config.json: heartbeat_interval_s: Input should be greater than or equal to 1",
        ),
        (json.dumps({"fleet": "demo"}), "config.json: server: Field required"),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as failed:
        load_config(path)
    assert message in str(failed.value).replace(str(tmp_path) + "/", "")


def test_a_bad_config_stops_the_agent_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GOOD, "port": 99999}))
    result = subprocess.run(
        [sys.executable, "-m", "fleet_agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"fleet-agent: {path}: port: Input should be less than or equal to 65535\n"
    )
    missing = subprocess.run(
        [sys.executable, "-m", "fleet_agent", "--config", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "none.json: no such file; the engine writes it at install" in missing.stderr
    assert "Traceback" not in missing.stderr
