"""The local driver against a real Docker engine: machines of one fleet, by label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.catalog import load_catalog
from engine.errors import EngineError
from engine.placement import expand_fleet
from engine.providers.local.driver import LocalDriver
from engine.spec import parse_spec

SPEC = b"""
apiVersion: fleet/v1
kind: Fleet
name: drv
provider: {name: local}
defaults: {server_type: small, image: debian-12, locations: [local]}
groups: [{name: web, count: 2}]
"""


@pytest.fixture
def driver(docker_client: Any, tmp_path: Path) -> Any:
    drv = LocalDriver(docker_client, "drv", tmp_path)
    yield drv
    drv.teardown()


def _servers() -> Any:
    return expand_fleet(parse_spec(SPEC), load_catalog("local"))


def _host_key(client: Any, driver: LocalDriver, name: str) -> bytes:
    container = client.containers.get(driver.container_name(name))
    container.exec_run(["cloud-init", "status", "--wait"])
    return bytes(container.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).output)


def test_lifecycle_of_a_machine(
    driver: LocalDriver, docker_client: Any, golden_image: str, tmp_path: Path
) -> None:
    web1, _ = _servers()
    gateway = driver.ensure_network()
    created = driver.create(web1, image=golden_image, user_data="#cloud-config\n{}\n")
    assert created.name == "web-1" and created.container == "drv-web-1"
    assert created.server_type == "small" and created.instance_id.startswith("i-")
    assert created.ipv4 and created.ipv4.rsplit(".", 1)[0] == gateway.rsplit(".", 1)[0]
    labels = dict(created.labels)
    assert labels["fleet"] == "drv" and labels["managed-by"] == "fleet-engine"
    seed = tmp_path / "local" / "drv" / "web-1" / "seed" / "user-data"
    assert seed.stat().st_mode & 0o777 == 0o600

    assert driver.create(web1, image=golden_image, user_data="ignored") == created  # idempotent
    assert [m.name for m in driver.machines()] == ["web-1"]

    key = _host_key(docker_client, driver, "web-1")
    driver.resize("web-1", "medium")
    assert driver.machines()[0].server_type == "medium"
    driver.reboot("web-1")
    assert _host_key(docker_client, driver, "web-1") == key  # a reboot keeps the identity
    assert driver.machines()[0].instance_id == created.instance_id
    driver.poweroff("web-1")
    assert driver.machines()[0].status == "exited"
    driver.poweron("web-1")
    assert driver.machines()[0].status == "running"

    driver.delete("web-1")
    assert driver.machines() == ()
    assert not (tmp_path / "local" / "drv" / "web-1").exists()
    assert not docker_client.volumes.list(filters={"name": "drv-web-1-docker"})


def test_teardown_leaves_nothing(
    driver: LocalDriver, docker_client: Any, golden_image: str
) -> None:
    for server in _servers():
        driver.create(server, image=golden_image, user_data="#cloud-config\n{}\n")
    assert len(driver.machines()) == 2
    driver.teardown()
    assert driver.machines() == ()
    assert not docker_client.networks.list(names=["fleet-drv"])
    assert not docker_client.volumes.list(filters={"name": "drv-web"})


def test_a_foreign_container_with_our_name_is_never_touched(
    driver: LocalDriver, docker_client: Any, golden_image: str
) -> None:
    stranger = docker_client.containers.create(golden_image, name="drv-web-1")
    try:
        with pytest.raises(EngineError, match="does not belong to fleet drv"):
            driver.create(_servers()[0], image=golden_image, user_data="#cloud-config\n{}\n")
        with pytest.raises(EngineError, match="does not belong"):
            driver.delete("web-1")
        assert docker_client.containers.get("drv-web-1").id == stranger.id
    finally:
        stranger.remove(force=True)
