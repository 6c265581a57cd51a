"""What a program declared, made to exist in a stateful fake of the provider's API, shaped as
the API lists it: what a real `pulumi up` would leave at the provider."""

from __future__ import annotations

from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.stacks import test_digitalocean, test_hcloud
from tests.stacks.harness import Run


def list_on_hcloud(run: Run, fake: FakeHcloud) -> None:
    """Put what the Hetzner program declared into the fake, as its API lists it."""
    firewalls = {r.id: r.inputs for r in run.of_type(test_hcloud.FIREWALL).values()}
    networks = {r.id: r.inputs for r in run.of_type(test_hcloud.NETWORK).values()}
    placements = {r.id: r.inputs["name"] for r in run.of_type(test_hcloud.PLACEMENT).values()}
    for inputs in firewalls.values():
        fake.add_firewall(inputs["name"], labels=inputs["labels"])
    for inputs in networks.values():
        fake.add_network(inputs["name"], inputs["ipRange"])
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
            placement_group=placements[str(int(placement))] if placement else None,
            backups=got["backups"],
            ipv4=public["ipv4Enabled"],
            ipv6=public["ipv6Enabled"],
            server_id=int(server.id),
        )


def list_on_digitalocean(run: Run, fake: FakeDigitalOcean) -> None:
    """Put what the DigitalOcean program declared into the fake, as its API lists it."""
    vpcs = {r.id: r.inputs for r in run.of_type(test_digitalocean.VPC).values()}
    for inputs in vpcs.values():
        fake.add_vpc(inputs["name"], inputs["region"])
    for firewall in run.of_type(test_digitalocean.FIREWALL).values():
        fake.add_firewall(firewall.inputs["name"], tags=tuple(firewall.inputs["tags"]))
    for droplet in run.of_type(test_digitalocean.DROPLET).values():
        got = droplet.inputs
        vpc = got.get("vpcUuid")
        fake.add_droplet(
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
