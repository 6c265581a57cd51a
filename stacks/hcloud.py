"""A fleet on Hetzner Cloud (pulumi_hcloud).

    fleet-wide  SSH keys, the engine's firewall, the spec's firewalls, networks with one subnet
                per network zone in use, load balancers (+ network, services, targets)
    per group   a ServerGroup component: a spread placement group when asked, and the servers

Firewalls are attached by id when a server is created, so no server is ever reachable before
its firewall applies. A load balancer reaches its targets over the group's first private
network when it has one (Hetzner firewalls do not filter private networks); otherwise a
firewall of its own lets the balancer's public addresses reach the destination ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_hcloud as hcloud

from engine.errors import EngineError
from engine.model import (
    LABEL_FLEET,
    FirewallRule,
    Fleet,
    Image,
    ImageKind,
    LoadBalancer,
    fleet_resource_name,
)
from engine.providers.naming import ENGINE_FIREWALL, engine_resource_name, lb_firewall_name
from stacks.common import (
    carve,
    engine_rules,
    fleet_labels,
    lb_location,
    servers_by_group,
    ssh_fingerprint,
    ssh_key_name,
    unique_keys,
    with_fleet_id,
)
from stacks.declared import DEFAULT_LB_TYPE, NETWORK_ZONES
from stacks.declared import HCLOUD_LB_PROTOCOLS as LB_PROTOCOLS
from stacks.group import ServerGroup
from stacks.inputs import StackInputs

Networks = dict[str, hcloud.Network]
Subnets = dict[tuple[str, str], hcloud.NetworkSubnet]


def provider(fleet: Fleet, token: str) -> hcloud.Provider:
    """The fleet's Hetzner Cloud provider: its token (a secret) and API endpoint."""
    return hcloud.Provider(
        "hcloud", token=pulumi.Output.secret(token), endpoint=fleet.provider.endpoint
    )


def declare(inputs: StackInputs, provider: hcloud.Provider) -> dict[str, dict[str, object]]:
    """Declare the fleet on Hetzner Cloud; returns the server outputs by name."""
    fleet = inputs.fleet
    top = pulumi.ResourceOptions(provider=provider)
    zone_of = {name: location.network_zone for name, location in inputs.catalog.locations.items()}
    groups = servers_by_group(inputs.servers)
    lb_locations = {
        lb.name: lb_location(lb, groups.get(lb.targets, ())) for lb in fleet.load_balancers
    }

    keys = _ssh_keys(inputs, provider)
    # The engine's own resources have a dot in their names, which no spec name can have.
    engine_firewall = _firewall(
        inputs,
        f"firewall.{ENGINE_FIREWALL}",
        engine_resource_name(fleet.name, ENGINE_FIREWALL),
        engine_rules(fleet, inputs.engine_sources),
        top,
    )
    firewalls = {
        fw.name: _firewall(
            inputs,
            f"firewall-{fw.name}",
            fleet_resource_name(fleet.name, fw.name),
            fw.inbound,
            top,
        )
        for fw in fleet.firewalls
    }
    networks, subnets = _networks(inputs, zone_of, lb_locations, top)

    balancers: list[
        tuple[LoadBalancer, hcloud.LoadBalancer, hcloud.LoadBalancerNetwork | None]
    ] = []
    lb_firewalls: dict[str, list[hcloud.Firewall]] = {}
    for lb in fleet.load_balancers:
        location = lb_locations[lb.name]
        balancer = hcloud.LoadBalancer(
            f"lb-{lb.name}",
            name=fleet_resource_name(fleet.name, lb.name),
            load_balancer_type=lb.type or DEFAULT_LB_TYPE,
            location=location,
            labels=fleet_labels(fleet.name, lb.targets, fleet_id=inputs.fleet_id),
            opts=top,
        )
        for service in lb.services:
            hcloud.LoadBalancerService(
                f"lb-{lb.name}-{service.listen}",
                load_balancer_id=balancer.id,
                protocol=LB_PROTOCOLS[service.protocol],
                listen_port=service.listen,
                destination_port=service.destination,
                opts=top,
            )
        attachment = None
        private = fleet.group(lb.targets).networks[:1]
        if private:
            attachment = hcloud.LoadBalancerNetwork(
                f"lb-{lb.name}-network",
                load_balancer_id=_int(balancer.id),
                network_id=_int(networks[private[0]].id),
                opts=pulumi.ResourceOptions(
                    provider=provider, depends_on=[subnets[private[0], zone_of[location]]]
                ),
            )
        else:
            lb_firewalls.setdefault(lb.targets, []).append(_lb_firewall(inputs, lb, balancer, top))
        balancers.append((lb, balancer, attachment))

    outputs: dict[str, dict[str, object]] = {}
    servers: dict[str, hcloud.Server] = {}
    for group in fleet.groups:
        members = groups.get(group.name, ())
        component = ServerGroup(fleet.name, group.name, top)
        placement = None
        if members and members[0].placement_group:
            placement = hcloud.PlacementGroup(
                members[0].placement_group,
                name=members[0].placement_group,
                type="spread",
                labels=fleet_labels(fleet.name, group.name, fleet_id=inputs.fleet_id),
                opts=component.child(provider),
            )
        image = _image(group.image, _architecture(inputs, group.server_type), provider)
        for server in members:
            if not (server.public_ipv4 or server.public_ipv6 or server.networks):
                raise EngineError(
                    f"{server.name} would have no public address and no private network; "
                    "Hetzner needs one of them (set public_ipv4/public_ipv6 or add a network)"
                )
            attached = [engine_firewall, *(firewalls[name] for name in server.firewalls)]
            attached += lb_firewalls.get(group.name, [])
            handle = hcloud.Server(
                server.name,
                name=server.name,
                server_type=server.server_type,
                image=image,
                location=server.location,
                ssh_keys=keys,
                labels=with_fleet_id(server.labels, inputs.fleet_id),
                # A secret: Pulumi keeps it encrypted in its state (it holds a one-time token).
                user_data=pulumi.Output.secret(inputs.user_data[server.name]),
                firewall_ids=[_int(fw.id) for fw in attached],
                networks=[
                    hcloud.ServerNetworkArgs(network_id=_int(networks[name].id))
                    for name in server.networks
                ],
                placement_group_id=_int(placement.id) if placement else None,
                public_nets=[
                    hcloud.ServerPublicNetArgs(
                        ipv4_enabled=server.public_ipv4, ipv6_enabled=server.public_ipv6
                    )
                ],
                backups=server.backups,
                shutdown_before_deletion=True,
                opts=component.server(
                    provider,
                    depends_on=[
                        subnets[name, zone_of[server.location]] for name in server.networks
                    ],
                    fresh=server.name in inputs.replaced,
                    adopt=inputs.adopted.get(server.name),
                    # Server names are unique in a project: the old one goes first.
                    delete_before_replace=True,
                ),
            )
            servers[server.name] = handle
            outputs[server.name] = {
                "id": handle.id,
                "ipv4": handle.ipv4_address,
                "ipv6": handle.ipv6_address,
                "private_ipv4": handle.networks.apply(_first_private_ip),
                "location": server.location,
            }

    for lb, balancer, attachment in balancers:
        for server in groups.get(lb.targets, ()):
            hcloud.LoadBalancerTarget(
                f"lb-{lb.name}-{server.name}",
                type="server",
                load_balancer_id=_int(balancer.id),
                server_id=_int(servers[server.name].id),
                use_private_ip=attachment is not None,
                opts=pulumi.ResourceOptions(
                    provider=provider, depends_on=[attachment] if attachment else []
                ),
            )
    return outputs


def _int(value: pulumi.Output[str]) -> pulumi.Output[int]:
    """Hetzner ids are numbers; Pulumi resource ids are strings."""
    return value.apply(int)


def _first_private_ip(networks: Sequence[Any] | None) -> str | None:
    for network in networks or ():
        ip = network.get("ip") if isinstance(network, dict) else getattr(network, "ip", None)
        if ip:
            return str(ip)
    return None


def _ssh_keys(inputs: StackInputs, provider: hcloud.Provider) -> list[pulumi.Input[str]]:
    """Upload the fleet's keys; reuse a key someone else already uploaded to the project.

    Hetzner refuses a second key with the same fingerprint, and users' laptop keys are often
    in the project already: those are referenced by id instead of uploaded. Keys carrying this
    fleet's label are ours (uploaded by an earlier run) and stay declared.
    """
    fleet = inputs.fleet.name
    listed = hcloud.get_ssh_keys(opts=pulumi.InvokeOptions(provider=provider)).ssh_keys
    foreign = {
        key.fingerprint: key.id for key in listed if (key.labels or {}).get(LABEL_FLEET) != fleet
    }
    refs: list[pulumi.Input[str]] = []
    for public_key in unique_keys(inputs.ssh_public_keys):
        existing = foreign.get(ssh_fingerprint(public_key))
        if existing is not None:
            refs.append(str(existing))
            continue
        name = ssh_key_name(fleet, public_key)
        key = hcloud.SshKey(
            name,
            name=name,
            public_key=public_key,
            labels=fleet_labels(fleet, fleet_id=inputs.fleet_id),
            opts=pulumi.ResourceOptions(provider=provider),
        )
        refs.append(key.id)
    return refs


def _rule(rule: FirewallRule) -> hcloud.FirewallRuleArgs:
    return hcloud.FirewallRuleArgs(
        direction="in",
        protocol=str(rule.protocol),
        port=rule.port,
        source_ips=list(rule.sources),
        description=rule.description or None,
    )


def _firewall(
    inputs: StackInputs,
    resource: str,
    name: str,
    rules: Sequence[FirewallRule],
    opts: pulumi.ResourceOptions,
) -> hcloud.Firewall:
    return hcloud.Firewall(
        resource,
        name=name,
        rules=[_rule(rule) for rule in rules],
        labels=fleet_labels(inputs.fleet.name, fleet_id=inputs.fleet_id),
        opts=opts,
    )


def _lb_firewall(
    inputs: StackInputs,
    lb: LoadBalancer,
    balancer: hcloud.LoadBalancer,
    opts: pulumi.ResourceOptions,
) -> hcloud.Firewall:
    """Let a load balancer without a private network reach its targets' destination ports."""
    sources = [
        balancer.ipv4.apply(lambda ip: f"{ip}/32"),
        balancer.ipv6.apply(lambda ip: f"{ip}/128"),
    ]
    fleet = inputs.fleet.name
    return hcloud.Firewall(
        f"firewall.lb-{lb.name}",
        name=lb_firewall_name(fleet, lb.name),
        rules=[
            hcloud.FirewallRuleArgs(
                direction="in",
                protocol="tcp",
                port=str(port),
                source_ips=sources,
                description=f"fleet-engine: load balancer {lb.name}",
            )
            for port in sorted({service.destination for service in lb.services})
        ],
        labels=fleet_labels(fleet, lb.targets, fleet_id=inputs.fleet_id),
        opts=opts,
    )


def _networks(
    inputs: StackInputs,
    zone_of: dict[str, str],
    lb_locations: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> tuple[Networks, Subnets]:
    """Each spec network, with a subnet in every network zone where its servers (or a load
    balancer attached to it) are."""
    fleet = inputs.fleet
    networks: Networks = {}
    subnets: Subnets = {}
    for network in fleet.networks:
        handle = hcloud.Network(
            f"network-{network.name}",
            name=fleet_resource_name(fleet.name, network.name),
            ip_range=network.ip_range,
            labels=fleet_labels(fleet.name, fleet_id=inputs.fleet_id),
            opts=opts,
        )
        networks[network.name] = handle
        zones = {zone_of[s.location] for s in inputs.servers if network.name in s.networks}
        zones |= {
            zone_of[lb_locations[lb.name]]
            for lb in fleet.load_balancers
            if fleet.group(lb.targets).networks[:1] == (network.name,)
        }
        for zone in sorted(zones, key=_zone_slot):
            subnets[network.name, zone] = hcloud.NetworkSubnet(
                f"subnet-{network.name}-{zone}",
                network_id=_int(handle.id),
                type="cloud",
                network_zone=zone,
                ip_range=carve(network.ip_range, _zone_slot(zone), len(NETWORK_ZONES)),
                opts=opts,
            )
    return networks, subnets


def _zone_slot(zone: str) -> int:
    if zone not in NETWORK_ZONES:
        raise EngineError(
            f"the network zone {zone} is new to the engine; private networks cannot span it yet"
        )
    return NETWORK_ZONES.index(zone)


def _architecture(inputs: StackInputs, server_type: str) -> str | None:
    found = inputs.catalog.server_types.get(server_type)
    return found.architecture if found else None


def _image(image: Image, architecture: str | None, provider: hcloud.Provider) -> pulumi.Input[str]:
    """A system image by name, or the id of the newest available snapshot with the labels."""
    if image.kind is ImageKind.NAME:
        return image.name
    if image.kind is not ImageKind.SNAPSHOT:
        raise EngineError(f"Hetzner Cloud has no {image.describe()}; use a name or a snapshot")
    selector = ",".join(f"{key}={value}" for key, value in image.labels)
    found = hcloud.get_image_output(
        with_selector=selector,
        most_recent=True,
        with_statuses=["available"],
        with_architecture=architecture,
        opts=pulumi.InvokeOutputOptions(provider=provider),
    )
    return found.id.apply(str)
