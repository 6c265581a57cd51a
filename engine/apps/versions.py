"""What a version of an app is, and the containers it runs as. Pure.

A version is 12 hex digits of the SHA-256 of the app's definition: what makes its container
what it is (image, command, env and its values, the NAMES of its secret variables, ports,
volumes, restart policy, resources). Health checks, update settings and the groups an app
runs on are not part of it: changing them rolls nothing out. Neither is a secret's value,
which the engine never keeps or shows: rotating a secret rolls nothing by itself.

On a server, the version VERSION of app APP runs in a container named `APP-VERSION`; while a
rollout tries a version before cutting over to it, a second one, `APP-VERSION-check`, runs
without published ports. Both carry the fleet's ownership labels and the app's, by which
the engine finds them again through the agent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.model import (
    LABEL_APP,
    LABEL_APP_VERSION,
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    LABEL_SERVER,
    MANAGED_BY,
    App,
    AppHealth,
    AppPort,
    AppVolume,
    HealthKind,
    Labels,
    Protocol,
    RestartPolicy,
)

LABEL_CHECK = "fleet-app-check"
CHECK_SUFFIX = "-check"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppDefinition:
    """The part of an app that makes its container; the store keeps one per version."""

    image: str
    command: tuple[str, ...] | None = None
    env: Labels = ()
    secret_env: tuple[str, ...] = ()
    ports: tuple[AppPort, ...] = ()
    volumes: tuple[AppVolume, ...] = ()
    restart: RestartPolicy = RestartPolicy.UNLESS_STOPPED
    cpus: float | None = None
    memory_mb: int | None = None

    @property
    def version(self) -> str:
        """12 hex digits of the SHA-256 of the definition as canonical JSON."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        """The definition as JSON (secret variables by name only)."""
        return {
            "image": self.image,
            "command": None if self.command is None else list(self.command),
            "env": dict(self.env),
            "secret_env": list(self.secret_env),
            "ports": [
                {
                    "host_port": p.host_port,
                    "container_port": p.container_port,
                    "protocol": str(p.protocol),
                    "host_ip": p.host_ip,
                }
                for p in self.ports
            ],
            "volumes": [
                {"source": v.source, "target": v.target, "read_only": v.read_only}
                for v in self.volumes
            ],
            "restart": str(self.restart),
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppDefinition:
        command = data.get("command")
        return cls(
            image=data["image"],
            command=None if command is None else tuple(command),
            env=tuple(sorted((str(k), str(v)) for k, v in data.get("env", {}).items())),
            secret_env=tuple(data.get("secret_env", ())),
            ports=tuple(
                AppPort(
                    host_port=p["host_port"],
                    container_port=p["container_port"],
                    protocol=Protocol(p.get("protocol", "tcp")),
                    host_ip=p.get("host_ip"),
                )
                for p in data.get("ports", ())
            ),
            volumes=tuple(
                AppVolume(source=v["source"], target=v["target"], read_only=v["read_only"])
                for v in data.get("volumes", ())
            ),
            restart=RestartPolicy(data.get("restart", RestartPolicy.UNLESS_STOPPED)),
            cpus=data.get("cpus"),
            memory_mb=data.get("memory_mb"),
        )


def app_definition(app: App) -> AppDefinition:
    """The definition of the version the spec wants of `app`."""
    return AppDefinition(
        image=app.image,
        command=app.command,
        env=app.env,
        secret_env=app.secret_env,
        ports=app.ports,
        volumes=app.volumes,
        restart=app.restart,
        cpus=app.cpus,
        memory_mb=app.memory_mb,
    )


def container_name(app: str, version: str, *, check: bool = False) -> str:
    """`web-3f2a9c1d0b4e`, or `web-3f2a9c1d0b4e-check` for the container a rollout tries."""
    return f"{app}-{version}" + (CHECK_SUFFIX if check else "")


def container_body(
    *,
    fleet: str,
    server: str,
    app: str,
    definition: AppDefinition,
    secrets: Mapping[str, str],
    check: bool = False,
) -> dict[str, Any]:
    """The body of the agent's POST /v1/containers that runs `definition` on `server`.

    `secrets` are the values of the definition's secret variables, read from the engine's
    environment at deploy time; they travel in this body only. A `check` container publishes
    no ports (the running version holds them) and is not restarted by Docker.
    """
    version = definition.version
    labels = {
        LABEL_FLEET: fleet,
        LABEL_SERVER: server,
        LABEL_APP: app,
        LABEL_APP_VERSION: version,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if check:
        labels[LABEL_CHECK] = "yes"
    restart = RestartPolicy.NO if check else definition.restart
    body: dict[str, Any] = {
        "image": definition.image,
        "name": container_name(app, version, check=check),
        "env": {**dict(definition.env), **{k: secrets[k] for k in definition.secret_env}},
        "labels": labels,
        "restart_policy": {"name": str(restart)},
        "ports": []
        if check
        else [
            {
                "container_port": p.container_port,
                "protocol": str(p.protocol),
                "host_port": p.host_port,
                "host_ip": p.host_ip,
            }
            for p in definition.ports
        ],
        "volumes": [
            {"source": v.source, "target": v.target, "read_only": v.read_only}
            for v in definition.volumes
        ],
    }
    if definition.command is not None:
        body["command"] = list(definition.command)
    if definition.memory_mb is not None:
        body["memory_mb"] = definition.memory_mb
    if definition.cpus is not None:
        body["cpus"] = float(definition.cpus)
    return body


def probe_body(health: AppHealth) -> dict[str, Any]:
    """The body of the agent's POST /v1/containers/{ref}/probe: one check, as the spec says."""
    if health.kind is HealthKind.HTTP:
        check: dict[str, Any] = {"http": {"path": health.path, "port": health.port}}
    elif health.kind is HealthKind.TCP:
        check = {"tcp": {"port": health.port}}
    else:
        check = {"command": list(health.command)}
    return {**check, "timeout_s": float(health.timeout_s)}
