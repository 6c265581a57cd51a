"""Images and networks through the agent, on the session's private dockerd (no registry)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from engine.agent.client import AgentClient, AgentError
from engine.providers.local.dockerd import PrivateDaemon
from tests.support.docker import busybox_rootfs


def test_images_are_listed(client: AgentClient, busybox_image: str) -> None:
    images = client.call("GET", "/v1/images")["images"]
    mine = next(i for i in images if busybox_image in i["tags"])
    assert mine["id"].startswith("sha256:")
    assert mine["size_bytes"] > 1_000_000  # the static busybox alone is about 2 MB


def test_a_pull_without_a_registry_fails_cleanly(client: AgentClient, docker_client: Any) -> None:
    images = sorted(i["Id"] for i in docker_client.api.images(all=True))
    with pytest.raises(AgentError) as failed:
        client.pull_image("busybox")
    assert failed.value.status == 502
    message = str(failed.value)
    assert "pulling busybox:latest failed" in message
    assert "registry-1.docker.io" in message  # Docker's own reason is passed on
    assert sorted(i["Id"] for i in docker_client.api.images(all=True)) == images


def test_an_image_tag_is_removed_and_unknown_ones_are_404(
    client: AgentClient, docker_client: Any, busybox_image: str
) -> None:
    docker_client.api.tag(busybox_image, "fleet-test/removable", "1")
    assert client.call("DELETE", "/v1/images/fleet-test/removable:1") is None
    tags = [t for i in docker_client.api.images() for t in i.get("RepoTags") or []]
    assert "fleet-test/removable:1" not in tags
    assert busybox_image in tags  # the image itself stays under its other name
    missing = client.send("DELETE", "/v1/images/fleet-test/removable:1")
    assert missing.status_code == 404


def test_prune_removes_dangling_images(client: AgentClient, docker_client: Any) -> None:
    # An import without a name leaves an untagged, dangling image.
    answer = docker_client.api.import_image_from_data(busybox_rootfs())
    image_id = json.loads(answer.strip().splitlines()[-1])["status"]
    assert docker_client.images.get(image_id).tags == []
    pruned = client.call("POST", "/v1/images/prune", json={"dangling_only": True})
    assert image_id in pruned["deleted"]
    assert pruned["space_reclaimed_bytes"] >= 0
    assert image_id not in [i["Id"] for i in docker_client.api.images(all=True)]


def test_networks_are_created_used_and_removed(
    client: AgentClient, docker_client: Any, dockerd: PrivateDaemon, busybox_image: str
) -> None:
    # The last /24 of this daemon's own address pool: free on this host, and not where Docker
    # allocates networks that do not ask for a subnet.
    subnet = list(dockerd.pool.subnets(new_prefix=24))[-1]
    gateway = str(subnet.network_address + 1)
    spec = {"name": "t-net", "subnet": str(subnet), "gateway": gateway, "labels": {"k": "v"}}
    created = client.call("POST", "/v1/networks", json=spec)
    try:
        assert created["name"] == "t-net" and created["driver"] == "bridge"
        assert created["subnets"] == [{"subnet": str(subnet), "gateway": gateway}]
        assert created["labels"] == {"k": "v"} and created["internal"] is False
        assert "t-net" in [n["name"] for n in client.call("GET", "/v1/networks")["networks"]]
        duplicate = client.send("POST", "/v1/networks", json=spec)
        assert duplicate.status_code == 409

        container = client.call(
            "POST",
            "/v1/containers",
            json={
                "image": busybox_image,
                "name": "t-on-net",
                "command": ["sleep", "60"],
                "network": "t-net",
            },
        )
        assert ipaddress.ip_address(container["networks"]["t-net"]) in subnet
        in_use = client.send("DELETE", "/v1/networks/t-net")
        assert in_use.status_code in (403, 409)  # Docker: it has active endpoints
        client.call("DELETE", "/v1/containers/t-on-net", params={"force": True})
        assert client.call("DELETE", "/v1/networks/t-net") is None
        assert "t-net" not in [n["Name"] for n in docker_client.api.networks()]
    finally:
        for leftover in docker_client.api.containers(all=True, filters={"name": "t-on-net"}):
            docker_client.api.remove_container(leftover["Id"], force=True)
        for leftover in docker_client.api.networks(names=["t-net"]):
            docker_client.api.remove_network(leftover["Id"])


def test_dockers_own_networks_stay_and_unknown_ones_are_404(client: AgentClient) -> None:
    refused = client.send("DELETE", "/v1/networks/bridge")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "bridge is one of Docker's own networks; it stays"}
    assert client.send("DELETE", "/v1/networks/t-no-such-net").status_code == 404
