"""The DigitalOcean program under Pulumi's mocks: every declared input, checked."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from engine.errors import EngineError
from engine.model import Fleet
from stacks.common import ssh_fingerprint, tags
from stacks.group import COMPONENT_TYPE
from stacks.inputs import StackInputs
from tests.stacks.harness import (
    ENGINE_SOURCES,
    Declared,
    Run,
    fleet_from,
    is_world,
    run_program,
    servers_by_name,
    stack_inputs,
    with_group,
)

SPEC = "specs/digitalocean.yaml"
PROVIDER = "pulumi:providers:digitalocean"
DROPLET = "digitalocean:index/droplet:Droplet"
FIREWALL = "digitalocean:index/firewall:Firewall"
TAG = "digitalocean:index/tag:Tag"
VPC = "digitalocean:index/vpc:Vpc"
SSH_KEY = "digitalocean:index/sshKey:SshKey"
DNS = "digitalocean:index/dnsRecord:DnsRecord"
LB = "digitalocean:index/loadBalancer:LoadBalancer"
PROJECT = "digitalocean:index/projectResources:ProjectResources"
GET_SSH_KEYS = "digitalocean:index/getSshKeys:getSshKeys"
GET_PROJECT = "digitalocean:index/getProject:getProject"
GET_IMAGES = "digitalocean:index/getImages:getImages"
GET_IMAGE = "digitalocean:index/getImage:getImage"
ANSWERS = {
    GET_SSH_KEYS: lambda _: {"id": "keys", "sshKeys": []},
    GET_PROJECT: lambda args: {"id": "5f0e-project", "name": args["name"]},
}


def test_each_droplet_gets_its_size_region_image_tags_and_vpc(
    inputs: StackInputs, run: Run
) -> None:
    vpcs = {r.id: (r.inputs["region"], r.inputs["name"]) for r in run.of_type(VPC).values()}
    for name, server in servers_by_name(inputs).items():
        got = run.of_type(DROPLET)[name].inputs
        assert got["name"] == name
        assert got["size"] == server.server_type
        assert got["region"] == server.location
        assert got["image"] == "debian-12-x64"
        assert got["tags"] == [*tags(server.labels), f"fleet-member:api-prod:{server.group}"]
        assert got["backups"] is server.backups
        assert got["ipv6"] is True and "publicNetworking" not in got
        assert vpcs[got["vpcUuid"]] == (server.location, f"api-prod-vpc.{server.location}")
    assert run.of_type(DROPLET)["api-1"].inputs["tags"] == [
        "fleet-group:api",
        "fleet-server:api-1",
        "fleet:api-prod",
        "managed-by:fleet-engine",
        "role:api",
        "team:api",
        "fleet-member:api-prod:api",
    ]
    assert [(s.name, s.location) for s in inputs.servers] == [
        ("api-1", "fra1"),
        ("api-2", "ams3"),
        ("worker-1", "fra1"),
    ]


def firewalls_of(run: Run, droplet: Declared) -> list[Declared]:
    return [
        fw
        for fw in run.of_type(FIREWALL).values()
        if set(fw.inputs["tags"]) & set(droplet.inputs["tags"])
    ]


def test_no_port_is_open_to_the_world_unless_the_spec_opens_it(
    inputs: StackInputs, run: Run
) -> None:
    for name, server in servers_by_name(inputs).items():
        droplet = run.of_type(DROPLET)[name]
        applied = firewalls_of(run, droplet)
        assert "firewall.engine" in {fw.name for fw in applied}, name
        open_to_world = {
            (r["protocol"], r.get("portRange"))
            for fw in applied
            for r in fw.inputs["inboundRules"]
            if is_world(r.get("sourceAddresses", []))
        }
        opened = {
            (str(rule.protocol), rule.port)
            for fw in inputs.fleet.firewalls
            if fw.name in server.firewalls
            for rule in fw.inbound
            if is_world(list(rule.sources))
        }
        assert open_to_world == opened, name
    api = {fw.name for fw in firewalls_of(run, run.of_type(DROPLET)["api-1"])}
    assert api == {"firewall.engine", "firewall-https.api", "firewall.lb-api"}


def test_firewalls_and_tags_exist_before_the_droplets(run: Run) -> None:
    firewalls = {r.urn for r in run.of_type(FIREWALL).values() if r.name != "firewall.lb-api"}
    tag = {r.inputs["name"]: r.urn for r in run.of_type(TAG).values()}
    for droplet in run.of_type(DROPLET).values():
        group = droplet.name.rsplit("-", 1)[0]
        needed = {tag["fleet:api-prod"], tag[f"fleet-member:api-prod:{group}"], *firewalls}
        assert needed <= set(droplet.depends_on), droplet.name
    assert {t.inputs["name"] for t in run.of_type(TAG).values()} == {
        "fleet:api-prod",
        "fleet-member:api-prod:api",
        "fleet-member:api-prod:worker",
    }


def test_the_fleet_id_is_a_tag_of_every_droplet() -> None:
    inputs = dataclasses.replace(stack_inputs(fleet_from(SPEC)), fleet_id="0123456789ab")
    run = run_program(inputs, ANSWERS)
    (marked,) = [t for t in run.of_type(TAG).values() if t.inputs["name"].startswith("fleet-id:")]
    assert marked.inputs["name"] == "fleet-id:0123456789ab"
    for droplet in run.of_type(DROPLET).values():
        assert "fleet-id:0123456789ab" in droplet.inputs["tags"], droplet.name
        assert marked.urn in droplet.depends_on, droplet.name


def test_the_engine_firewall_opens_ssh_and_agent_to_it_and_everything_outbound(run: Run) -> None:
    engine = run.of_type(FIREWALL)["firewall.engine"]
    assert engine.inputs["name"] == "api-prod.engine"
    assert engine.inputs["tags"] == ["fleet:api-prod"]
    assert engine.inputs["inboundRules"] == [
        {"protocol": "tcp", "portRange": "22", "sourceAddresses": list(ENGINE_SOURCES)},
        {"protocol": "tcp", "portRange": "7567", "sourceAddresses": list(ENGINE_SOURCES)},
    ]
    assert [(r["protocol"], r.get("portRange")) for r in engine.inputs["outboundRules"]] == [
        ("tcp", "1-65535"),
        ("udp", "1-65535"),
        ("icmp", None),
    ]


def test_each_network_gets_one_vpc_per_region_at_a_fixed_slot(run: Run) -> None:
    assert {(v.inputs["region"], v.inputs["ipRange"]) for v in run.of_type(VPC).values()} == {
        ("fra1", "10.20.176.0/20"),
        ("ams3", "10.20.144.0/20"),
    }


def test_dns_records_point_at_each_droplet_of_the_group(run: Run) -> None:
    records = run.of_type(DNS)
    assert set(records) == {"dns-A-api-1.api.example.com", "dns-A-api-2.api.example.com"}
    for server in ("api-1", "api-2"):
        got = records[f"dns-A-{server}.api.example.com"]
        assert got.inputs == {
            "domain": "example.com",
            "type": "A",
            "name": f"{server}.api",
            "value": run.outputs[server]["ipv4"],
            "ttl": 300,
        }
        assert got.parent == run.of_type(COMPONENT_TYPE)["api"].urn


def test_the_load_balancer_targets_the_group_in_its_region(run: Run) -> None:
    lb = run.of_type(LB)["lb-api"]
    droplets = run.of_type(DROPLET)
    assert lb.inputs["name"] == "api-prod-api"
    assert (lb.inputs["region"], lb.inputs["size"]) == ("fra1", "lb-small")
    assert [int(i) for i in lb.inputs["dropletIds"]] == [int(droplets["api-1"].id)]
    assert lb.inputs["vpcUuid"] == droplets["api-1"].inputs["vpcUuid"]
    assert lb.inputs["forwardingRules"] == [
        {"entryPort": 443, "entryProtocol": "tcp", "targetPort": 443, "targetProtocol": "tcp"}
    ]
    assert lb.inputs["healthcheck"] == {"protocol": "tcp", "port": 443}
    reach = run.of_type(FIREWALL)["firewall.lb-api"]
    assert reach.inputs["tags"] == ["fleet-member:api-prod:api"]
    assert reach.inputs["inboundRules"] == [
        {"protocol": "tcp", "portRange": "443", "sourceLoadBalancerUids": [lb.id]}
    ]


def test_an_https_service_passes_tls_through_to_the_droplets() -> None:
    services = [{"listen": 443, "destination": 8443, "protocol": "https"}]
    lb = {"name": "api", "type": "lb-small", "location": "fra1", "targets": "api",
          "services": services}  # fmt: skip
    run = run_program(stack_inputs(fleet_from(SPEC, load_balancers=[lb])), ANSWERS)
    assert run.of_type(LB)["lb-api"].inputs["forwardingRules"] == [
        {"entryPort": 443, "entryProtocol": "https", "targetPort": 8443,
         "targetProtocol": "https", "tlsPassthrough": True}
    ]  # fmt: skip


def test_droplets_and_balancers_join_the_project(run: Run) -> None:
    (project,) = run.of_type(PROJECT).values()
    assert [args for token, args in run.calls if token == GET_PROJECT] == [{"name": "api"}]
    assert project.inputs["project"] == "5f0e-project"
    droplets = run.of_type(DROPLET).values()
    assert sorted(project.inputs["resources"]) == sorted(
        [f"do:droplet:{d.id}" for d in droplets]
        + [f"do:loadbalancer:{run.of_type(LB)['lb-api'].id}"]
    )


def test_a_fleet_without_project_makes_no_assignment() -> None:
    fleet = fleet_from(SPEC, provider={"name": "digitalocean", "token_env": "DIGITALOCEAN_TOKEN"})
    run = run_program(stack_inputs(fleet), ANSWERS)
    assert run.of_type(PROJECT) == {}
    assert GET_PROJECT not in [token for token, _ in run.calls]


def golden_fleet() -> Fleet:
    return fleet_from(
        SPEC,
        groups=[{"name": "api", "count": 1, "image": {"snapshot": {"labels": {"golden": "api"}}}}],
        load_balancers=[],
        dns=[],
    )


def test_a_snapshot_image_is_the_newest_private_image_with_the_tags() -> None:
    fleet = golden_fleet()
    images = [{"id": 9001, "name": "golden-new"}, {"id": 8000, "name": "golden-old"}]
    run = run_program(stack_inputs(fleet), {**ANSWERS, GET_IMAGES: lambda _: {"images": images}})
    (call,) = [args for token, args in run.calls if token == GET_IMAGES]
    assert call == {
        "filters": [
            {"key": "private", "values": ["true"]},
            {"key": "tags", "values": ["golden:api"], "all": True},
        ],
        "sorts": [{"key": "created", "direction": "desc"}],
    }
    assert run.of_type(DROPLET)["api-1"].inputs["image"] == "9001"


def test_no_matching_snapshot_is_a_clear_error() -> None:
    fleet = golden_fleet()
    with pytest.raises(EngineError, match="no private image carries the tags golden:api"):
        run_program(stack_inputs(fleet), {**ANSWERS, GET_IMAGES: lambda _: {"images": []}})


def test_a_custom_image_is_found_by_name() -> None:
    fleet = fleet_from(
        SPEC,
        groups=[{"name": "api", "count": 1, "image": {"custom": "my-debian"}}],
        load_balancers=[],
        dns=[],
    )
    answers = {**ANSWERS, GET_IMAGE: lambda args: {"id": 4242, "name": args["name"]}}
    run = run_program(stack_inputs(fleet), answers)
    assert [args for token, args in run.calls if token == GET_IMAGE] == [{"name": "my-debian"}]
    assert run.of_type(DROPLET)["api-1"].inputs["image"] == "4242"


def test_keys_already_in_the_account_are_used_by_fingerprint(inputs: StackInputs) -> None:
    ops, deploy = inputs.ssh_public_keys
    existing = [
        {"id": 1, "name": "my laptop", "fingerprint": ssh_fingerprint(ops), "publicKey": ops},
        {
            "id": 2,
            "name": "api-prod-key-2cf7e06f",
            "fingerprint": ssh_fingerprint(deploy),
            "publicKey": deploy,
        },
    ]
    run = run_program(inputs, {**ANSWERS, GET_SSH_KEYS: lambda _: {"id": "k", "sshKeys": existing}})
    assert set(run.of_type(SSH_KEY)) == {"api-prod-key-2cf7e06f"}
    for droplet in run.of_type(DROPLET).values():
        assert droplet.inputs["sshKeys"] == [ssh_fingerprint(ops), "fp-of-api-prod-key-2cf7e06f"]


NO_EXTRAS: dict[str, Any] = {"load_balancers": [], "dns": []}


TWO_NETWORKS = {
    **NO_EXTRAS,
    "networks": [
        {"name": "a", "ip_range": "10.1.0.0/16"},
        {"name": "b", "ip_range": "10.2.0.0/16"},
    ],
    "groups": [{"name": "api", "count": 1, "networks": ["a"]}],
}
ONE_GROUP = {**NO_EXTRAS, "groups": [{"name": "api", "count": 1, "networks": ["vpc"]}]}


@pytest.mark.parametrize(
    ("changes", "group", "message"),
    [
        (
            TWO_NETWORKS,
            {"networks": ("a", "b")},
            "api-1 lists 2 networks; a droplet sits in one VPC",
        ),
        (ONE_GROUP, {"public_ipv4": False}, "api-1 asks for IPv6 without IPv4"),
        (
            ONE_GROUP,
            {"public_ipv4": False, "public_ipv6": False, "networks": ()},
            "api-1 would have no public address and no VPC",
        ),
        (
            {"dns": [], "groups": [{"name": "api", "count": 1}]},
            {"locations": ("ams3",)},
            "load balancer api runs in fra1, where group api has no droplet",
        ),
    ],
)
def test_what_digitalocean_cannot_do_is_refused(
    changes: dict[str, Any], group: dict[str, Any], message: str
) -> None:
    fleet = with_group(fleet_from(SPEC, **changes), **group)
    with pytest.raises(EngineError, match=message):
        run_program(stack_inputs(fleet), ANSWERS)
