"""What a program declared, made to exist in a stateful fake of the provider's API, shaped as
the API lists it: what a real `pulumi up` would leave at the provider."""

from __future__ import annotations

from typing import Any

from stacks.common import ssh_fingerprint
from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.stacks import test_digitalocean, test_hcloud
from tests.stacks.harness import COMPUTED, Run


def _of(run: Run, type_: str, key: str, rid: str) -> list[dict[str, Any]]:
    """The inputs of the resources of `type_` whose `key` input is the id `rid`."""
    return [r.inputs for r in run.of_type(type_).values() if str(int(r.inputs[key])) == rid]


def list_on_hcloud(run: Run, fake: FakeHcloud) -> None:
    """Put what the Hetzner program declared into the fake, as its API lists it."""
    firewalls = {r.id: r.inputs for r in run.of_type(test_hcloud.FIREWALL).values()}
    networks = {r.id: r.inputs for r in run.of_type(test_hcloud.NETWORK).values()}
    placements = {r.id: r.inputs for r in run.of_type(test_hcloud.PLACEMENT).values()}
    for inputs in firewalls.values():
        rules = [
            {
                "direction": rule["direction"],
                "protocol": rule["protocol"],
                "port": rule.get("port"),
                "source_ips": list(rule.get("sourceIps") or ()),
                "description": rule.get("description"),
            }
            for rule in inputs.get("rules") or ()
        ]
        fake.add_firewall(inputs["name"], labels=inputs["labels"], rules=rules)
    for rid, inputs in networks.items():
        subnets = tuple(
            (s["networkZone"], s["ipRange"]) for s in _of(run, test_hcloud.SUBNET, "networkId", rid)
        )
        fake.add_network(
            inputs["name"], inputs["ipRange"], labels=inputs["labels"], subnets=subnets
        )
    for inputs in placements.values():
        fake.add_placement_group(inputs["name"], labels=inputs["labels"])
    for key in run.of_type(test_hcloud.SSH_KEY).values():
        public = key.inputs["publicKey"]
        fake.add_ssh_key(key.inputs["name"], ssh_fingerprint(public), public, key.inputs["labels"])
    for server in run.of_type(test_hcloud.SERVER).values():
        got = server.inputs
        (public,) = got["publicNets"]
        placement = got.get("placementGroupId")
        fake.add_server(
            got["name"],
            labels=got["labels"],
            server_type=got["serverType"],
            location=got["location"],
            image=got["image"],
            firewalls=tuple(firewalls[str(int(i))]["name"] for i in got["firewallIds"]),
            networks=tuple(networks[str(int(n["networkId"]))]["name"] for n in got["networks"]),
            placement_group=placements[str(int(placement))]["name"] if placement else None,
            backups=got["backups"],
            ipv4=public["ipv4Enabled"],
            ipv6=public["ipv6Enabled"],
            server_id=int(server.id),
        )
    for lb in run.of_type(test_hcloud.LB).values():
        got = lb.inputs
        services = _of(run, test_hcloud.LB_SERVICE, "loadBalancerId", lb.id)
        targets = _of(run, test_hcloud.LB_TARGET, "loadBalancerId", lb.id)
        fake.add_load_balancer(
            got["name"],
            lb_type=got["loadBalancerType"],
            location=got["location"],
            labels=got["labels"],
            services=tuple(
                (s["protocol"], int(s["listenPort"]), int(s["destinationPort"])) for s in services
            ),
            targets=tuple(int(t["serverId"]) for t in targets),
            private=any(t.get("usePrivateIp") for t in targets),
        )


def list_on_digitalocean(run: Run, fake: FakeDigitalOcean) -> None:
    """Put what the DigitalOcean program declared into the fake, as its API lists it."""
    vpcs = {r.id: r.inputs for r in run.of_type(test_digitalocean.VPC).values()}
    made = {
        inputs["name"]: fake.add_vpc(
            inputs["name"],
            inputs["region"],
            ip_range=inputs["ipRange"],
            description=inputs.get("description", ""),
        )
        for inputs in vpcs.values()
    }
    for firewall in run.of_type(test_digitalocean.FIREWALL).values():
        inbound = tuple(
            (
                rule["protocol"],
                rule.get("portRange") or "0",
                tuple(rule.get("sourceAddresses") or ()),
            )
            for rule in firewall.inputs.get("inboundRules") or ()
        )
        fake.add_firewall(
            firewall.inputs["name"], tags=tuple(firewall.inputs["tags"]), inbound=inbound
        )
    for key in run.of_type(test_digitalocean.SSH_KEY).values():
        public = key.inputs["publicKey"]
        fake.add_ssh_key(key.inputs["name"], ssh_fingerprint(public), public)
    # What the mocks computed as each droplet's address, to the address the fake gives it.
    addresses: dict[str, str] = {}
    for droplet in run.of_type(test_digitalocean.DROPLET).values():
        got = droplet.inputs
        vpc = got.get("vpcUuid")
        listed = fake.add_droplet(
            got["name"],
            tags=tuple(got["tags"]),
            size=got["size"],
            region=got["region"],
            image=got["image"],
            vpc=vpcs[vpc]["name"] if vpc else None,
            backups=got["backups"],
            ipv6=got["ipv6"],
            droplet_id=int(droplet.id),
        )
        computed = COMPUTED[test_digitalocean.DROPLET](droplet.id, got)
        for version, key in (("v4", "ipv4Address"), ("v6", "ipv6Address")):
            public = [n for n in listed["networks"][version] if n["type"] == "public"]
            if public:
                addresses[computed[key]] = public[0]["ip_address"]
    for lb in run.of_type(test_digitalocean.LB).values():
        got = lb.inputs
        vpc = got.get("vpcUuid")
        check = got["healthcheck"]
        fake.add_load_balancer(
            got["name"],
            size=got["size"],
            region=got["region"],
            rules=tuple(
                {
                    "entry_protocol": r["entryProtocol"],
                    "entry_port": int(r["entryPort"]),
                    "target_protocol": r["targetProtocol"],
                    "target_port": int(r["targetPort"]),
                    "tls_passthrough": bool(r.get("tlsPassthrough")),
                }
                for r in got["forwardingRules"]
            ),
            droplet_ids=tuple(int(i) for i in got["dropletIds"]),
            health_check=(check["protocol"], int(check["port"])),
            vpc_uuid=made[vpcs[vpc]["name"]]["id"] if vpc else None,
        )
    for record in run.of_type(test_digitalocean.DNS).values():
        got = record.inputs
        fake.add_domain_record(
            got["domain"],
            got["name"],
            record_type=got["type"],
            data=addresses[got["value"]],
            ttl=int(got["ttl"]),
        )
