"""The Hetzner Cloud program under Pulumi's mocks: every declared input, checked."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from engine.errors import EngineError
from stacks.common import ssh_fingerprint
from stacks.group import COMPONENT_TYPE
from stacks.inputs import StackInputs, check_inputs
from tests.stacks.harness import (
    ENGINE_SOURCES,
    Run,
    fleet_from,
    is_world,
    run_program,
    servers_by_name,
    stack_inputs,
    with_group,
)

SPEC = "specs/hetzner.yaml"
PROVIDER = "pulumi:providers:hcloud"
SERVER = "hcloud:index/server:Server"
FIREWALL = "hcloud:index/firewall:Firewall"
NETWORK = "hcloud:index/network:Network"
SUBNET = "hcloud:index/networkSubnet:NetworkSubnet"
PLACEMENT = "hcloud:index/placementGroup:PlacementGroup"
SSH_KEY = "hcloud:index/sshKey:SshKey"
LB = "hcloud:index/loadBalancer:LoadBalancer"
LB_SERVICE = "hcloud:index/loadBalancerService:LoadBalancerService"
LB_NETWORK = "hcloud:index/loadBalancerNetwork:LoadBalancerNetwork"
LB_TARGET = "hcloud:index/loadBalancerTarget:LoadBalancerTarget"
LABELLED = (SERVER, FIREWALL, NETWORK, PLACEMENT, SSH_KEY, LB)
GET_SSH_KEYS = "hcloud:index/getSshKeys:getSshKeys"
GET_IMAGE = "hcloud:index/getImage:getImage"


def no_keys(_: dict[str, Any]) -> dict[str, Any]:
    return {"id": "keys", "sshKeys": []}


ANSWERS = {GET_SSH_KEYS: no_keys}


def test_each_server_gets_its_type_location_image_labels_and_choices(
    inputs: StackInputs, run: Run
) -> None:
    networks = {r.id: r.inputs["name"] for r in run.of_type(NETWORK).values()}
    placements = {r.id: r.inputs["name"] for r in run.of_type(PLACEMENT).values()}
    for name, server in servers_by_name(inputs).items():
        got = run.of_type(SERVER)[name].inputs
        assert got["name"] == name
        assert got["serverType"] == server.server_type
        assert got["location"] == server.location
        assert got["image"] == "debian-12"
        assert got["labels"] == dict(server.labels)
        assert got["backups"] is server.backups
        assert got["publicNets"] == [{"ipv4Enabled": True, "ipv6Enabled": True}]
        assert got["shutdownBeforeDeletion"] is True
        assert [networks[str(int(n["networkId"]))] for n in got["networks"]] == ["web-prod-private"]
        placement = got.get("placementGroupId")
        assert (placements[str(int(placement))] if placement else None) == server.placement_group
    assert [(s.name, s.location) for s in inputs.servers] == [
        ("web-1", "fsn1"),
        ("web-2", "nbg1"),
        ("web-3", "hel1"),
        ("worker-1", "fsn1"),
        ("worker-2", "nbg1"),
    ]
    assert run.of_type(SERVER)["web-1"].inputs["serverType"] == "cx32"
    assert run.of_type(SERVER)["worker-1"].inputs["serverType"] == "cx22"
    assert run.of_type(SERVER)["web-1"].inputs["labels"] == {
        "fleet": "web-prod",
        "fleet-group": "web",
        "fleet-server": "web-1",
        "managed-by": "fleet-engine",
        "role": "web",
        "team": "web",
    }


def world_open(run: Run, server: Any) -> set[tuple[str, str | None]]:
    rules = [
        rule
        for fid in server.inputs["firewallIds"]
        for rule in run.by_id(FIREWALL, int(fid)).inputs["rules"]
    ]
    assert all(rule["direction"] == "in" for rule in rules)
    return {(r["protocol"], r.get("port")) for r in rules if is_world(r["sourceIps"])}


def test_no_port_is_open_to_the_world_unless_the_spec_opens_it(
    inputs: StackInputs, run: Run
) -> None:
    fleet = inputs.fleet
    for name, server in servers_by_name(inputs).items():
        declared = run.of_type(SERVER)[name]
        opened = {
            (str(rule.protocol), rule.port)
            for fw in fleet.firewalls
            if fw.name in server.firewalls
            for rule in fw.inbound
            if is_world(list(rule.sources))
        }
        assert world_open(run, declared) == opened, name
    assert world_open(run, run.of_type(SERVER)["web-1"]) == {("tcp", "443")}
    assert world_open(run, run.of_type(SERVER)["worker-1"]) == set()  # SSH from the office only


def test_the_engine_reaches_ssh_and_the_agent_from_its_own_addresses_only(run: Run) -> None:
    engine = run.of_type(FIREWALL)["firewall.engine"]
    assert engine.inputs["name"] == "web-prod.engine"
    assert [(r["protocol"], r["port"], r["sourceIps"]) for r in engine.inputs["rules"]] == [
        ("tcp", "22", list(ENGINE_SOURCES)),
        ("tcp", "7567", list(ENGINE_SOURCES)),
    ]
    for name, server in run.of_type(SERVER).items():
        assert int(engine.id) in [int(f) for f in server.inputs["firewallIds"]], name


def test_spec_firewalls_are_declared_with_their_rules(run: Run) -> None:
    web = run.of_type(FIREWALL)["firewall-web"]
    assert web.inputs["name"] == "web-prod-web"
    assert web.inputs["rules"] == [
        {
            "direction": "in",
            "protocol": "tcp",
            "port": "443",
            "sourceIps": ["0.0.0.0/0", "::/0"],
            "description": "https",
        },
    ]


def test_a_network_gets_a_subnet_per_zone_at_a_fixed_slot() -> None:
    fleet = fleet_from(
        SPEC,
        groups=[
            {"name": "web", "count": 2, "networks": ["private"], "firewalls": ["web"]},
            {
                "name": "east",
                "count": 2,
                "server_type": "cpx11",
                "locations": ["ash", "nbg1"],
                "networks": ["private"],
                "firewalls": ["ssh-only"],
            },
        ],
    )
    run = run_program(stack_inputs(fleet), ANSWERS)
    network = run.of_type(NETWORK)["network-private"]
    assert network.inputs["ipRange"] == "10.10.0.0/16"
    subnets = run.of_type(SUBNET)
    assert {
        (s.inputs["networkZone"], s.inputs["ipRange"], s.inputs["type"]) for s in subnets.values()
    } == {
        ("eu-central", "10.10.0.0/18", "cloud"),
        ("us-east", "10.10.64.0/18", "cloud"),
    }
    assert all(int(s.inputs["networkId"]) == int(network.id) for s in subnets.values())
    servers = run.of_type(SERVER)
    assert servers["east-1"].inputs["location"] == "ash"
    assert subnets["subnet-private-us-east"].urn in servers["east-1"].depends_on
    assert subnets["subnet-private-eu-central"].urn in servers["east-2"].depends_on


def test_a_spread_group_gets_its_placement_group(run: Run) -> None:
    (placement,) = run.of_type(PLACEMENT).values()
    assert placement.inputs == {
        "name": "web-prod-web",
        "type": "spread",
        "labels": {"fleet": "web-prod", "fleet-group": "web", "managed-by": "fleet-engine"},
    }
    assert placement.parent == run.of_type(COMPONENT_TYPE)["web"].urn
    assert "placementGroupId" not in run.of_type(SERVER)["worker-1"].inputs


def test_the_load_balancer_targets_its_group_over_the_private_network(run: Run) -> None:
    lb = run.of_type(LB)["lb-web"]
    assert lb.inputs == {
        "name": "web-prod-web",
        "loadBalancerType": "lb11",
        "location": "fsn1",
        "labels": {"fleet": "web-prod", "fleet-group": "web", "managed-by": "fleet-engine"},
    }
    (service,) = run.of_type(LB_SERVICE).values()
    assert (service.inputs["protocol"], service.inputs["listenPort"]) == ("tcp", 443)
    assert service.inputs["destinationPort"] == 443
    (attachment,) = run.of_type(LB_NETWORK).values()
    assert int(attachment.inputs["networkId"]) == int(run.of_type(NETWORK)["network-private"].id)
    targets = run.of_type(LB_TARGET)
    servers = run.of_type(SERVER)
    assert {int(t.inputs["serverId"]) for t in targets.values()} == {
        int(servers[name].id) for name in ("web-1", "web-2", "web-3")
    }
    assert all(t.inputs["usePrivateIp"] is True for t in targets.values())
    assert all(int(t.inputs["loadBalancerId"]) == int(lb.id) for t in targets.values())


def test_an_https_service_passes_tls_through_to_the_servers() -> None:
    services = [{"listen": 443, "destination": 8443, "protocol": "https"}]
    lb = {"name": "web", "type": "lb11", "location": "fsn1", "targets": "web", "services": services}
    run = run_program(stack_inputs(fleet_from(SPEC, load_balancers=[lb])), ANSWERS)
    (service,) = run.of_type(LB_SERVICE).values()
    assert (service.inputs["protocol"], service.inputs["destinationPort"]) == ("tcp", 8443)
    assert "http" not in service.inputs  # no certificate: nothing ends TLS at the balancer


def test_a_load_balancer_without_network_opens_its_ports_to_itself_only() -> None:
    fleet = fleet_from(
        SPEC,
        groups=[{"name": "web", "count": 2, "firewalls": ["ssh-only"]}],
        networks=[],
    )
    run = run_program(stack_inputs(fleet), ANSWERS)
    assert run.of_type(LB_NETWORK) == {}
    lb_firewall = run.of_type(FIREWALL)["firewall.lb-web"]
    assert [(r["port"], r["sourceIps"]) for r in lb_firewall.inputs["rules"]] == [
        ("443", ["95.217.1.1/32", "2a01:4f9::1:1/128"])
    ]
    for server in run.of_type(SERVER).values():
        assert int(lb_firewall.id) in [int(f) for f in server.inputs["firewallIds"]]
        assert world_open(run, server) == set()
    assert all(t.inputs["usePrivateIp"] is False for t in run.of_type(LB_TARGET).values())


def test_every_resource_carries_the_ownership_labels(run: Run) -> None:
    labelled = [r for r in run.resources if r.type in LABELLED]
    assert {r.type for r in labelled} == set(LABELLED)
    for resource in labelled:
        labels = resource.inputs["labels"]
        assert labels["fleet"] == "web-prod", resource.name
        assert labels["managed-by"] == "fleet-engine", resource.name


def test_the_fleet_id_is_on_every_labelled_resource() -> None:
    inputs = dataclasses.replace(stack_inputs(fleet_from(SPEC)), fleet_id="0123456789ab")
    run = run_program(inputs, ANSWERS)
    labelled = [r for r in run.resources if r.type in LABELLED]
    assert {r.type for r in labelled} == set(LABELLED)
    assert {r.inputs["labels"]["fleet-id"] for r in labelled} == {"0123456789ab"}


def test_a_snapshot_image_is_the_newest_with_its_labels() -> None:
    fleet = fleet_from(
        SPEC,
        groups=[
            {
                "name": "web",
                "count": 2,
                "image": {"snapshot": {"labels": {"golden": "web", "os": "debian-12"}}},
            }
        ],
        load_balancers=[],
    )
    answers = {**ANSWERS, GET_IMAGE: lambda _: {"id": 314159, "name": "golden-web"}}
    run = run_program(stack_inputs(fleet), answers)
    (call,) = [args for token, args in run.calls if token == GET_IMAGE]
    assert call == {
        "withSelector": "golden=web,os=debian-12",
        "mostRecent": True,
        "withStatuses": ["available"],
        "withArchitecture": "x86",
    }
    assert {s.inputs["image"] for s in run.of_type(SERVER).values()} == {"314159"}


def test_keys_already_in_the_project_are_referenced_not_uploaded(inputs: StackInputs) -> None:
    ops, deploy = inputs.ssh_public_keys
    existing = [
        # Someone uploaded the user's laptop key by hand: reuse it.
        {"id": 77, "name": "laptop", "labels": {}, "publicKey": ops},
        # An earlier run of this fleet uploaded the deploy key: it stays ours.
        {
            "id": 78,
            "name": "web-prod-key-2cf7e06f",
            "labels": {"fleet": "web-prod"},
            "publicKey": deploy,
        },
    ]
    for key in existing:
        key["fingerprint"] = ssh_fingerprint(key["publicKey"])
    run = run_program(inputs, {GET_SSH_KEYS: lambda _: {"id": "keys", "sshKeys": existing}})
    keys = run.of_type(SSH_KEY)
    assert set(keys) == {"web-prod-key-2cf7e06f"}
    assert keys["web-prod-key-2cf7e06f"].inputs["publicKey"] == deploy
    for server in run.of_type(SERVER).values():
        assert server.inputs["sshKeys"] == ["77", keys["web-prod-key-2cf7e06f"].id]


def test_a_replaced_server_is_deleted_first_its_name_being_unique(run: Run) -> None:
    assert all(s.delete_before_replace for s in run.of_type(SERVER).values())


def test_a_server_without_any_address_is_refused() -> None:
    fleet = with_group(
        fleet_from(SPEC, groups=[{"name": "dark", "count": 1}], load_balancers=[]),
        public_ipv4=False,
        public_ipv6=False,
        networks=(),
    )
    with pytest.raises(EngineError, match="dark-1 would have no public address and no private"):
        run_program(stack_inputs(fleet), ANSWERS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user_data": {}}, r"missing: web-1, web-2, web-3, worker-1, worker-2; unknown: none"),
        ({"engine_sources": ()}, "no engine address"),
        ({"engine_sources": ("10.0.0.1/8",)}, "'10.0.0.1/8' is not an address range"),
        ({"ssh_public_keys": ()}, "no SSH public key"),
        (
            {
                "user_data": {
                    n: "\ufeff#cloud-config\n"
                    for n in ("web-1", "web-2", "web-3", "worker-1", "worker-2")
                }
            },
            "user_data for web-1 starts with a byte order mark",
        ),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_declared(
    inputs: StackInputs, change: dict[str, Any], message: str
) -> None:
    bad = StackInputs(**{**{f: getattr(inputs, f) for f in StackInputs.__slots__}, **change})
    with pytest.raises(EngineError, match=message):
        check_inputs(bad)
