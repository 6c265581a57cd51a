"""Pulumi programs: the cloud resources of one fleet on Hetzner Cloud or DigitalOcean.

The engine runs them through the Automation API (engine/providers/cloud/pulumi_runner.py) with
an inline program, `fleet_program(inputs, token=...)`. Everything they need arrives in
`StackInputs`: the Fleet, the placed servers from `expand_fleet`, each server's pinned
user_data, the SSH keys and the addresses the engine connects from; the API token comes
separately and goes to the provider as a secret (encrypted in Pulumi's state, never in a
command line or a file in clear). Nothing else is read, so the same inputs always declare
the same resources with the same inputs.

    stacks/common.py        names, ownership labels and tags, firewall rules, address plans
    stacks/hcloud.py        Hetzner Cloud (pulumi_hcloud)
    stacks/digitalocean.py  DigitalOcean (pulumi_digitalocean)

What every program guarantees:
- One ComponentResource per server group (`fleet-engine:stacks:ServerGroup`), holding its
  servers and the group's own resources; fleet-wide ones (SSH keys, firewalls, networks, load
  balancers) sit at the top.
- Ownership labels (Hetzner) or tags (DigitalOcean) on every resource that takes them.
- Servers are born behind a firewall that opens SSH and the agent port to the engine's
  addresses only, plus what the spec's firewalls open; nothing else is open to the world.
- user_data, image and SSH keys are fixed at creation (`ignore_changes`): re-running `up`,
  upgrading the engine, a newer golden snapshot or a rotated key never replaces a server.
  Only a server the plan replaces is made from the inputs given now.
- A server the engine adopts is imported into the stack (`import`), never created twice.

The stack exports `servers`: {name: {id, ipv4, ipv6, private_ipv4, location}}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.catalog import Catalog
from engine.cloudinit import lint_user_data
from engine.errors import EngineError
from engine.model import Fleet, ProviderName, Server

PROJECT = "fleet-engine"
SERVERS_OUTPUT = "servers"


@dataclass(frozen=True, slots=True, kw_only=True)
class StackInputs:
    """Everything a fleet's Pulumi program declares from.

    servers: `expand_fleet(fleet, catalog, pinned)`, in that order.
    user_data: server name -> the pinned user_data (engine.cloudinit.pin_user_data).
    ssh_public_keys: the spec's authorized keys plus the engine's deploy key.
    engine_sources: CIDRs the engine (control plane, installer) connects from; SSH and the
        agent port are open to these only, besides what the spec's firewalls open.
    catalog: the provider catalog the servers were placed with (network zones, architectures).
    replaced: servers the plan replaces: made anew from these inputs (their fresh user_data
        and the image), not from the ones fixed at their first creation.
    adopted: servers that exist but that the engine lost track of, name -> provider id:
        imported into the stack as they are, never created a second time.
    """

    fleet: Fleet
    servers: tuple[Server, ...]
    user_data: Mapping[str, str]
    ssh_public_keys: tuple[str, ...]
    engine_sources: tuple[str, ...]
    catalog: Catalog
    replaced: frozenset[str] = frozenset()
    adopted: Mapping[str, str] = field(default_factory=dict)


def check_inputs(inputs: StackInputs) -> None:
    """Refuse inputs a program cannot declare from, before any resource is declared: every
    server's user_data is linted here too, so nothing unlinted ever reaches a provider."""
    provider = inputs.fleet.provider.name
    if inputs.catalog.provider != provider:
        raise EngineError(f"a {inputs.catalog.provider} catalog was given for a {provider} fleet")
    names = [s.name for s in inputs.servers]
    strangers = sorted((inputs.replaced | set(inputs.adopted)) - set(names))
    if strangers:
        raise EngineError(f"replaced or adopted servers not in the fleet: {', '.join(strangers)}")
    missing = sorted(set(names) - set(inputs.user_data))
    extra = sorted(set(inputs.user_data) - set(names))
    if missing or extra:
        raise EngineError(
            "user_data must be given for exactly the fleet's servers "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})"
        )
    for name in names:
        lint_user_data(inputs.user_data[name], server=name)
    if not inputs.ssh_public_keys:
        raise EngineError("no SSH public key: the engine's deploy key at least is needed")
    if not inputs.engine_sources:
        raise EngineError(
            "no engine address: SSH and the agent port would be open to nobody; give the "
            "control plane's address"
        )
    for source in inputs.engine_sources:
        try:
            ipaddress.ip_network(source, strict=True)
        except ValueError:
            raise EngineError(f"{source!r} is not an address range in CIDR form") from None


def fleet_program(inputs: StackInputs, *, token: str) -> Callable[[], None]:
    """The inline Pulumi program for `inputs` (what the Automation API runs for preview/up).

    It checks the inputs, declares the provider's resources and exports `servers`.
    Provider modules are imported only here, inside a Pulumi run.
    """

    def program() -> None:
        import pulumi

        servers = declare_fleet(inputs, token=token)
        pulumi.export(SERVERS_OUTPUT, servers)

    return program


def provider_program(fleet: Fleet, *, token: str) -> Callable[[], None]:
    """A program that declares only the fleet's provider, for `destroy`: Pulumi runs it to
    learn the provider's current settings (a rotated token), then deletes what the state has.
    """

    def program() -> None:
        _provider_module(fleet.provider.name).provider(fleet, token)

    return program


def declare_fleet(inputs: StackInputs, *, token: str) -> dict[str, dict[str, object]]:
    """Declare the fleet's resources in the running Pulumi program; the server outputs."""
    module = _provider_module(inputs.fleet.provider.name)
    check_inputs(inputs)
    result: dict[str, dict[str, object]] = module.declare(
        inputs, module.provider(inputs.fleet, token)
    )
    return result


def _provider_module(name: ProviderName) -> Any:
    if name is ProviderName.HCLOUD:
        from stacks import hcloud

        return hcloud
    if name is ProviderName.DIGITALOCEAN:
        from stacks import digitalocean

        return digitalocean
    raise EngineError(f"the {name} provider has no Pulumi program; stacks/ is for clouds")
