"""`apps:` in a spec: the issue's example loads into the model as written, defaults fill
what it leaves out, and nothing of an env value that looks secret is repeated back."""

from __future__ import annotations

import pytest

from engine.errors import SpecError
from engine.model import (
    AppHealth,
    AppPort,
    AppUpdate,
    AppVolume,
    HealthKind,
    Protocol,
    RestartPolicy,
    RollbackMode,
)
from engine.spec import parse_spec

HEAD = """\
apiVersion: fleet/v1
kind: Fleet
name: demo
provider: { name: local }
groups:
  - name: web
    count: 3
"""
# As the issue writes it.
EXAMPLE = """\
apps:
  - name: web
    image: ghcr.io/acme/web:1.4.2
    ports: ["80:8080"]                  # server port : container port
    env: { LOG_LEVEL: info }
    secret_env: [DATABASE_URL]          # values come from the engine's environment
    health: { http: { path: /healthz, port: 8080 }, interval: 5s, timeout: 2s, retries: 3 }
    on: [web]
    update: { max_unavailable: 1, health_timeout: 60s, rollback: auto }
"""


def test_the_issues_example_is_accepted_as_written() -> None:
    (app,) = parse_spec((HEAD + EXAMPLE).encode()).apps
    assert (app.name, app.image, app.on) == ("web", "ghcr.io/acme/web:1.4.2", ("web",))
    assert app.ports == (AppPort(host_port=80, container_port=8080),)
    assert app.env == (("LOG_LEVEL", "info"),)
    assert app.secret_env == ("DATABASE_URL",)
    assert app.health == AppHealth(
        kind=HealthKind.HTTP, port=8080, path="/healthz", interval_s=5, timeout_s=2, retries=3
    )
    assert app.update == AppUpdate(max_unavailable=1, health_timeout_s=60, monitor_s=30)
    assert app.restart is RestartPolicy.UNLESS_STOPPED and app.command is None


def test_every_field_reaches_the_model() -> None:
    text = (
        HEAD
        + """\
apps:
  - name: dns
    image: registry.example.com:5000/acme/dns@sha256:DIGEST
    command: [dnsd, --port, "53"]
    env: { WORKERS: 4, DEBUG: false }
    ports: ["127.0.0.1:5353:53/udp", "8053:8053"]
    volumes: ["zones:/var/lib/dns", "/srv/conf:/etc/dns:ro"]
    restart: on-failure
    resources: { cpu: 0.5, memory: 1g }
    health: { command: [dnsd, --check], retries: 5 }
    on: [web]
    update: { max_unavailable: 2, health_timeout: 2m, monitor: 0s, rollback: manual }
    registry: { username_env: REGISTRY_USER, password_env: REGISTRY_TOKEN }
"""
    ).replace("DIGEST", "0123456789abcdef" * 4)
    (app,) = parse_spec(text.encode()).apps
    assert app.image.endswith("@sha256:" + "0123456789abcdef" * 4)
    assert app.command == ("dnsd", "--port", "53")
    assert app.env == (("DEBUG", "false"), ("WORKERS", "4"))
    assert app.ports == (
        AppPort(host_port=5353, container_port=53, protocol=Protocol.UDP, host_ip="127.0.0.1"),
        AppPort(host_port=8053, container_port=8053),
    )
    assert [p.describe() for p in app.ports] == ["127.0.0.1:5353:53/udp", "8053:8053"]
    assert app.volumes == (
        AppVolume(source="zones", target="/var/lib/dns"),
        AppVolume(source="/srv/conf", target="/etc/dns", read_only=True),
    )
    assert (app.restart, app.cpus, app.memory_mb) == (RestartPolicy.ON_FAILURE, 0.5, 1024)
    assert app.health == AppHealth(kind=HealthKind.COMMAND, command=("dnsd", "--check"), retries=5)
    assert app.update == AppUpdate(
        max_unavailable=2, health_timeout_s=120, monitor_s=0, rollback=RollbackMode.MANUAL
    )
    assert app.registry is not None and app.registry.password_env == "REGISTRY_TOKEN"


@pytest.mark.parametrize(
    "env",
    [
        "{ DB_PASSWORD: sw0rdfish-sw0rdfish }",
        '{ DATABASE_URL: "postgres://shop:sw0rdfish-sw0rdfish@db/shop" }',
        '{ NOTE: "sw0rdfish-sw0rdfish", RATIO: 0.5 }',
        "{ GREETING: [sw0rdfish-sw0rdfish] }",
    ],
)
def test_no_message_repeats_an_env_value(env: str) -> None:
    text = HEAD + EXAMPLE.replace("{ LOG_LEVEL: info }", env)
    with pytest.raises(SpecError) as info:
        parse_spec(text.encode(), file="demo.yaml")
    said = str(info.value)
    assert info.value.diagnostics
    assert "sw0rdfish-sw0rdfish" not in said
