"""Pulumi programs: the cloud resources of one fleet on Hetzner Cloud or DigitalOcean.

The engine runs them through the Automation API (engine/providers/cloud/pulumi_runner.py) with
an inline program, `fleet_program(inputs, token=...)`. Everything they need arrives in
`StackInputs`: the Fleet, the placed servers from `expand_fleet`, each server's pinned
user_data, the SSH keys and the addresses the engine connects from; the API token comes
separately and goes to the provider as a secret (encrypted in Pulumi's state, never in a
command line or a file in clear). Nothing else is read, so the same inputs always declare
the same resources with the same inputs.

    stacks/inputs.py        StackInputs, and the checks every program runs on them first
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

from collections.abc import Callable
from typing import Any

from engine.errors import EngineError
from engine.model import Fleet, ProviderName
from stacks.inputs import StackInputs, check_inputs

PROJECT = "fleet-engine"
SERVERS_OUTPUT = "servers"


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
