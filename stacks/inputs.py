"""What a fleet's Pulumi program declares from (`StackInputs`), and the checks every program
runs on them before it declares anything."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.catalog import Catalog
from engine.cloudinit import lint_user_data
from engine.errors import EngineError
from engine.model import Fleet, Server


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
    gone: servers the provider no longer has (deleted outside the engine) that the stack's
        state may still hold: dropped from it before the program runs, so they are made anew.
    fleet_id: the fleet's id (engine.tokens.ensure_fleet_id), on every resource that takes
        labels or tags.
    refresh: what the plan changes in place (servers by name; other resources by their
        logical names, a name also standing for its parts `name-...`): refreshed before the
        program runs, so that Pulumi sees what was changed outside the engine and makes it
        what the spec says (its state would otherwise say there is nothing to do).
    """

    fleet: Fleet
    servers: tuple[Server, ...]
    user_data: Mapping[str, str]
    ssh_public_keys: tuple[str, ...]
    engine_sources: tuple[str, ...]
    catalog: Catalog
    replaced: frozenset[str] = frozenset()
    adopted: Mapping[str, str] = field(default_factory=dict)
    gone: frozenset[str] = frozenset()
    fleet_id: str = ""
    refresh: frozenset[str] = frozenset()


def check_inputs(inputs: StackInputs) -> None:
    """Refuse inputs a program cannot declare from, before any resource is declared: every
    server's user_data is linted here too, so nothing unlinted ever reaches a provider."""
    provider = inputs.fleet.provider.name
    if inputs.catalog.provider != provider:
        raise EngineError(f"a {inputs.catalog.provider} catalog was given for a {provider} fleet")
    names = [s.name for s in inputs.servers]
    strangers = sorted((inputs.replaced | inputs.gone | set(inputs.adopted)) - set(names))
    if strangers:
        raise EngineError(
            f"replaced, gone or adopted servers not in the fleet: {', '.join(strangers)}"
        )
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
