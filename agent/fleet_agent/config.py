"""The agent's configuration: one JSON file written by the engine at install.

The engine renders it (engine/install/agent.py: render_agent_config) into
/etc/fleet-agent/config.json, mode 0600, because it holds the heartbeat token. Only the SHA-256
of the inbound bearer token is stored, so reading the file does not let anyone call the agent.
Unknown keys are refused, so a typo in a hand-edited file is reported instead of ignored.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path("/etc/fleet-agent/config.json")

# What a system task runs in front of its command: enter the namespaces of the host's PID 1
# (the agent runs in a container with the host's PID namespace), so apt sees the host's files.
NSENTER_HOST = (
    "nsenter",
    "--target",
    "1",
    "--mount",
    "--uts",
    "--ipc",
    "--net",
    "--pid",
    "--",
)

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message says where and why."""


class AgentConfig(BaseModel):
    """Everything the agent needs to know about itself and where to report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    fleet: str
    server: str
    listen: str = "0.0.0.0"  # noqa: S104 - the agent serves the network; firewalls narrow it
    port: int = Field(default=7567, ge=0, le=65535)
    heartbeat_interval_s: float = Field(default=15.0, ge=1.0, le=3600.0)
    control_plane_url: str | None = None
    token_sha256: str
    heartbeat_token: str | None = Field(default=None, min_length=16, max_length=512, repr=False)
    tls_cert: Path = Path("/etc/fleet-agent/tls/cert.pem")
    tls_key: Path = Path("/etc/fleet-agent/tls/key.pem")
    docker_url: str = "unix:///var/run/docker.sock"
    docker_timeout_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    host_root: Path = Path("/")
    state_dir: Path = Path("/var/lib/fleet-agent")
    host_command_prefix: tuple[str, ...] = NSENTER_HOST
    cpu_window_s: float = Field(default=5.0, ge=0.2, le=60.0)
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # POST /v1/images/load streams an image archive: it is not held in memory, only counted.
    max_image_bytes: int = Field(default=16 * 1024**3, ge=1024 * 1024, le=256 * 1024**3)

    @field_validator("fleet", "server")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _LABEL.match(value):
            raise ValueError("must be a lowercase DNS label (a-z, 0-9 and -, at most 63)")
        return value

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be the SHA-256 of the token as 64 lowercase hex digits")
        return value

    @field_validator("control_plane_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        return value.rstrip("/") if value else value

    @field_validator("tls_cert", "tls_key", "host_root", "state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _heartbeat_needs_token(self) -> AgentConfig:
        if self.control_plane_url and not self.heartbeat_token:
            raise ValueError("control_plane_url is set, so heartbeat_token is required")
        return self


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file; every problem becomes one ConfigError line each."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; the engine writes it at install") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"{path}: {where}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
