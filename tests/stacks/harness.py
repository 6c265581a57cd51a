"""Run a fleet's Pulumi program under Pulumi's mocks and record what it declares.

No CLI and no provider plugin is involved: `pulumi.runtime.set_mocks` stands in for the
engine. A recording monitor keeps each registration as the engine would see it (type, name,
parent, provider, inputs, ignore_changes, dependencies); provider functions (invokes) are
answered from a table the test gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks, rpc

from engine.catalog import load_catalog
from engine.cloudinit import phone_home_url, render_user_data
from engine.model import Fleet, Server
from engine.placement import expand_fleet
from engine.spec import parse_spec
from stacks import declare_fleet
from stacks.inputs import StackInputs
from tests.support.keys import DEPLOY_KEY

Answers = Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]]

# Outputs a real provider computes, by resource type, as the mock's state adds them.
COMPUTED: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
    "hcloud:index/server:Server": lambda rid, _: {
        "ipv4Address": f"95.217.0.{int(rid) % 250}",
        "ipv6Address": f"2a01:4f9::{int(rid) % 9999:x}:1",
    },
    "hcloud:index/loadBalancer:LoadBalancer": lambda rid, _: {
        "ipv4": "95.217.1.1",
        "ipv6": "2a01:4f9::1:1",
    },
    "digitalocean:index/droplet:Droplet": lambda rid, _: {
        "ipv4Address": f"164.90.0.{int(rid) % 250}",
        "ipv6Address": f"2a03:b0c0::{int(rid) % 9999:x}:1",
        "ipv4AddressPrivate": f"10.20.0.{int(rid) % 250}",
        "dropletUrn": f"do:droplet:{rid}",
    },
    "digitalocean:index/loadBalancer:LoadBalancer": lambda rid, _: {
        "loadBalancerUrn": f"do:loadbalancer:{rid}"
    },
    "digitalocean:index/sshKey:SshKey": lambda rid, inputs: {
        "fingerprint": "fp-of-" + inputs["name"]
    },
}


def stable_id(type_: str, name: str) -> str:
    """A numeric id that depends only on the resource's type and name (ids are numbers on
    Hetzner and DigitalOcean), so two runs over the same inputs get the same ids."""
    return str(int(hashlib.sha256(f"{type_}::{name}".encode()).hexdigest()[:7], 16))


@dataclass(frozen=True, slots=True)
class Declared:
    urn: str
    type: str
    name: str
    parent: str
    provider: str
    inputs: dict[str, Any]
    ignore_changes: tuple[str, ...]
    depends_on: tuple[str, ...]
    id: str
    secrets: frozenset[str]
    import_id: str = ""
    delete_before_replace: bool = False


@dataclass(slots=True)
class Run:
    resources: list[Declared] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> dict[str, Declared]:
        return {r.name: r for r in self.resources if r.type == type_}

    def by_urn(self, urn: str) -> Declared:
        return next(r for r in self.resources if r.urn == urn)

    def by_id(self, type_: str, rid: object) -> Declared:
        return next(r for r in self.resources if r.type == type_ and r.id == str(rid))


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, run: Run, answers: Answers) -> None:
        self.run = run
        self.answers = answers

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        # An imported resource keeps the id it has at the provider.
        rid = args.resource_id or stable_id(args.typ, args.name)
        state = dict(args.inputs)
        computed = COMPUTED.get(args.typ)
        if computed:
            state.update(computed(rid, args.inputs))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        self.run.calls.append((args.token, dict(args.args)))
        answer = self.answers.get(args.token)
        if answer is None:
            raise AssertionError(f"the program called {args.token}, which the test did not expect")
        return answer(dict(args.args)), []


class _Monitor(mocks.MockMonitor):
    def __init__(self, run: Run, answers: Answers) -> None:
        super().__init__(_Mocks(run, answers))
        self.run = run

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.run.resources.append(
                Declared(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent,
                    provider=request.provider,
                    inputs=rpc.deserialize_properties(request.object),
                    ignore_changes=tuple(request.ignoreChanges),
                    depends_on=tuple(request.dependencies),
                    id=response.id,
                    import_id=request.importId,
                    delete_before_replace=request.deleteBeforeReplace,
                    secrets=frozenset(
                        name
                        for name, value in request.object.fields.items()
                        if value.HasField("struct_value")
                        and rpc._special_sig_key in value.struct_value.fields
                        and value.struct_value.fields[rpc._special_sig_key].string_value
                        == rpc._special_secret_sig
                    ),
                )
            )
        return response


def run_program(
    inputs: StackInputs, answers: Answers, program: Callable[[], None] | None = None
) -> Run:
    """Run the fleet's program under mocks; everything it declared and called, and the server
    outputs `declare_fleet` returned (or run `program`, e.g. the inline `fleet_program`)."""
    run = Run()
    monitor = _Monitor(run, answers)
    # Pulumi's test harness runs on the thread's current event loop; an earlier test's
    # asyncio.run() leaves the main thread without one.
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(
        monitor.mocks,
        project="fleet-engine",
        stack=inputs.fleet.name,
        preview=False,
        monitor=monitor,
    )

    @pulumi.runtime.test
    def declare() -> pulumi.Output[None] | None:
        if program is not None:
            program()
            return None
        servers = declare_fleet(inputs, token=TOKEN)
        return pulumi.Output.from_input(servers).apply(run.outputs.update)

    declare()
    return run


TOKEN = "test-api-token-0123456789abcdef"
ENGINE_SOURCES = ("198.51.100.7/32", "2001:db8:7::/64")


def fleet_from(path: str, **changes: Any) -> Fleet:
    """The spec at `path` with top-level keys replaced (`changes`), validated as usual."""
    data = yaml.safe_load(Path(path).read_text())
    data.update(changes)
    return parse_spec(yaml.safe_dump(data).encode(), file=path)


def with_group(fleet: Fleet, **fields: Any) -> Fleet:
    """`fleet` with its first group changed, bypassing validation (which refuses what these
    tests feed the programs too: the programs must not rely on every caller validating)."""
    first = dataclasses.replace(fleet.groups[0], **fields)
    return dataclasses.replace(fleet, groups=(first, *fleet.groups[1:]))


def stack_inputs(fleet: Fleet) -> StackInputs:
    """What the engine would pass for `fleet`: each server's user_data with its own token."""
    catalog = load_catalog(fleet.provider.name)
    servers = expand_fleet(fleet, catalog)
    keys = (*fleet.ssh.authorized_keys, DEPLOY_KEY)
    assert fleet.control_plane.url
    user_data = {
        server.name: render_user_data(
            fleet=fleet.name,
            server=server.name,
            hostname=server.name,
            phone_home_url=phone_home_url(fleet.control_plane.url),
            token=token_of(server.name),
            admin_user=fleet.ssh.user,
            authorized_keys=keys,
            provider=fleet.provider.name,
        )
        for server in servers
    }
    return StackInputs(
        fleet=fleet,
        servers=servers,
        user_data=user_data,
        ssh_public_keys=keys,
        engine_sources=ENGINE_SOURCES,
        catalog=catalog,
    )


def servers_by_name(inputs: StackInputs) -> dict[str, Server]:
    return {s.name: s for s in inputs.servers}


def token_of(server: str) -> str:
    return "tok-" + hashlib.sha256(server.encode()).hexdigest()[:24]


def is_world(sources: list[str]) -> bool:
    """Whether a rule lets everyone in (a /0 among its sources)."""
    return any(ipaddress.ip_network(s, strict=False).prefixlen == 0 for s in sources)
