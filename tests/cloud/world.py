"""A cloud fleet for tests: a spec pointed at a stateful fake API on loopback, and Pulumi's
part played by the fleet's program under Pulumi's mocks (there is no Pulumi CLI here).

`engine.providers.cloud.pulumi_runner` is the boundary: the stand-in runs the program under the
mocks and makes what it declared exist in the fake (what a real `pulumi up` converges the
provider to).
Everything else is the real engine: the plan read from the fake over HTTP, the state store,
tokens and user_data, the control plane on loopback.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import EngineError
from engine.providers.cloud.pulumi_runner import (
    SERVER_TYPES,
    Progress,
    ResourceStep,
    RunResult,
    server_outputs,
)
from engine.providers.seam import RunOptions
from engine.state.store import Store, open_state
from engine.up import up
from stacks.inputs import StackInputs
from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.stacks import test_digitalocean, test_hcloud
from tests.stacks.harness import Answers, Declared, Run, run_program
from tests.stacks.listed import list_on_digitalocean, list_on_hcloud

TOKEN_ENV = {"hcloud": "HCLOUD_TOKEN", "digitalocean": "DIGITALOCEAN_TOKEN"}


HELD = (
    "servers",
    "droplets",
    "firewalls",
    "networks",
    "placement_groups",
    "vpcs",
    "load_balancers",
    "ssh_keys",
    "domain_records",
)
SERVERS = ("servers", "droplets")


@dataclass
class ProgramUnderMocks:
    """engine.providers.cloud.pulumi_runner's up and destroy, as far as they can run without the
    CLI: the program declares the fleet under Pulumi's mocks, and the fake provider then holds
    what it declared in place of what the stack held before, as a real run leaves it. What the
    stack never held (made by someone else) is left alone, as Pulumi leaves it. Each declared
    resource is reported to `on_progress` as Pulumi's events report it once done: created if
    the stack did not hold it, else the same.

    Pulumi's state is modelled too: a server the stack holds but the provider lost (deleted
    outside) stays gone after a run, as Pulumi believes its state, unless the run is told it is
    gone (`StackInputs.gone`, which the real runner refreshes out of the state first).
    `fail_next` makes the next run fail before it changes anything, as a provider refusing a
    create fails `pulumi up`.

    `preview` is Pulumi's plan of the same program against the state the last run left: a
    resource the state lacks is created (imported when the program says `import`), one it
    holds but the program no longer declares is deleted, one whose inputs differ (but those
    it ignores) is updated, or replaced when a property its provider cannot change in place
    differs (FORCES, after the providers' schemas); `replace_next` makes the next preview
    replace a resource by name, forced by the given property, as drift would.

    A crash is modelled too: `crash_next` makes the next run die after the provider made its
    new servers but before the state recorded them (they are pending creates, as Pulumi's
    checkpoint leaves them); the next run clears them (as `pulumi_runner.recovered` does) and
    creates what the program declares anew unless it is imported: on Hetzner a second server
    of a name in use is refused (409 `uniqueness_error`), on DigitalOcean it is a second
    droplet."""

    fake: Any
    answers: Answers
    list_on: Callable[[Run, Any], None]
    ups: list[StackInputs] = field(default_factory=list)
    destroys: int = 0
    held: set[tuple[str, str]] = field(default_factory=set)
    urns: set[str] = field(default_factory=set)
    fail_next: str = ""
    state: dict[str, Declared] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    crash_next: bool = False
    replace_next: dict[str, str] = field(default_factory=dict)
    previews: list[RunResult] = field(default_factory=list)

    def _fitted(self, inputs: StackInputs) -> StackInputs:
        """`inputs` as the runner fits them to the state: pending creates cleared, servers
        the state holds not imported again."""
        self.pending.clear()
        held = {d.name for d in self.state.values() if d.type in SERVER_TYPES}
        adopted = {n: i for n, i in inputs.adopted.items() if n not in held}
        return dataclasses.replace(inputs, adopted=adopted)

    def preview(
        self, inputs: StackInputs, *, on_progress: Progress | None = None, **_: Any
    ) -> RunResult:
        inputs = self._fitted(inputs)
        run = run_program(inputs, self.answers)
        present = {str(i["id"]) for items in self._items().values() for i in items}
        steps = []
        for resource in run.resources:
            old = self.state.get(resource.urn)
            if old is not None and old.type in SERVER_TYPES and old.id not in present:
                old = None if resource.name in inputs.gone else old  # refreshed out
            op, keys, diffs = _step(resource, old)
            if resource.name in self.replace_next:
                op, keys = "replace", (self.replace_next.pop(resource.name),)
            steps.append(ResourceStep(urn=resource.urn, type=resource.type, name=resource.name,
                                      op=op, status="planned", keys=keys, diffs=diffs))  # fmt: skip
        declared = {r.urn for r in run.resources}
        steps += [
            ResourceStep(urn=urn, type=old.type, name=old.name, op="delete", status="planned")
            for urn, old in self.state.items()
            if urn not in declared
        ]
        for step in steps:
            if on_progress is not None:
                on_progress(step)
        counts: dict[str, int] = {}
        for step in steps:
            counts[step.op] = counts.get(step.op, 0) + 1
        result = RunResult(
            action="preview", resources=tuple(steps), counts=tuple(sorted(counts.items()))
        )
        self.previews.append(result)
        return result

    def _items(self) -> dict[str, list[dict[str, Any]]]:
        return {name: getattr(self.fake, name) for name in HELD if hasattr(self.fake, name)}

    def clear(self) -> None:
        for name, items in self._items().items():
            setattr(self.fake, name, [i for i in items if (name, str(i["id"])) not in self.held])
        self.held.clear()

    def up(
        self, inputs: StackInputs, *, on_progress: Progress | None = None, **_: Any
    ) -> RunResult:
        self.ups.append(inputs)
        if self.fail_next:
            message, self.fail_next = self.fail_next, ""
            raise EngineError(f"pulumi up of fleet {inputs.fleet.name} failed:\n{message}")
        inputs = self._fitted(inputs)
        present = {(name, str(i["id"])) for name, items in self._items().items() for i in items}
        # Held in the state, gone at the provider: Pulumi still believes in them.
        lost = {key for key in self.held if key[0] in SERVERS and key not in present}
        run = run_program(inputs, self.answers)
        made = self._imported_or_refused(run)
        for resource in run.resources:
            op = "same" if resource.urn in self.urns else "create"
            if on_progress is not None:
                on_progress(ResourceStep(urn=resource.urn, type=resource.type,
                                         name=resource.name, op=op, status="done"))  # fmt: skip
        self.urns = {resource.urn for resource in run.resources}
        self.clear()
        before = {(name, str(i["id"])) for name, items in self._items().items() for i in items}
        self.list_on(run, self.fake)
        after = {(name, str(i["id"])) for name, items in self._items().items() for i in items}
        self.held = after - before
        self.state = {resource.urn: resource for resource in run.resources}
        if self.crash_next:
            self.crash_next = False
            for resource in made:
                self.pending.add(resource.urn)
                self.urns.discard(resource.urn)
                del self.state[resource.urn]
                kind = next(k for k in SERVERS if hasattr(self.fake, k))
                self.held.discard((kind, resource.id))
            raise EngineError(f"the engine died while Pulumi created {len(made)} servers")
        for kind, server_id in lost:
            items = getattr(self.fake, kind)
            believed = [
                i for i in items if str(i["id"]) == server_id and i["name"] not in inputs.gone
            ]
            setattr(self.fake, kind, [i for i in items if i not in believed])
        return RunResult(action="up", resources=(), counts=(), servers=server_outputs(run.outputs))

    def _imported_or_refused(self, run: Run) -> list[Declared]:
        """The servers this run makes anew. An imported one is the provider's, now held;
        one made anew under a name a server the state does not hold has is refused on
        Hetzner (409), made a second time on DigitalOcean."""
        kind = next(k for k in SERVERS if hasattr(self.fake, k))
        made = []
        for server in run.resources:
            if server.type not in SERVER_TYPES or server.urn in self.state:
                continue
            if server.import_id:
                self.held.add((kind, server.import_id))  # listed again from the program
                continue
            taken = [
                i for i in getattr(self.fake, kind)
                if i["name"] == server.name and (kind, str(i["id"])) not in self.held
            ]  # fmt: skip
            if taken and kind == "servers":
                raise EngineError(
                    f"pulumi up of fleet {run_fleet(run)} failed:\nhcloud: server name is "
                    f"already used (uniqueness_error, 409): {server.name}"
                )
            made.append(server)
        return made

    def destroy(self, *_: Any, **__: Any) -> RunResult:
        self.destroys += 1
        self.clear()
        self.urns.clear()
        self.state.clear()
        return RunResult(action="destroy", resources=(), counts=())


# What each provider's Pulumi schema cannot change in place (camelCase, as inputs arrive).
FORCES = {
    "hcloud:index/server:Server": {"location", "image", "userData", "sshKeys"},
    "hcloud:index/network:Network": {"ipRange"},
    "hcloud:index/networkSubnet:NetworkSubnet": {"ipRange", "networkZone", "networkId", "type"},
    "hcloud:index/loadBalancer:LoadBalancer": {"location"},
    "hcloud:index/loadBalancerService:LoadBalancerService": {"loadBalancerId", "listenPort"},
    "hcloud:index/loadBalancerTarget:LoadBalancerTarget": {"loadBalancerId", "serverId"},
    "hcloud:index/placementGroup:PlacementGroup": {"type"},
    "hcloud:index/sshKey:SshKey": {"publicKey"},
    "digitalocean:index/droplet:Droplet": {"region", "image", "userData", "sshKeys", "vpcUuid"},
    "digitalocean:index/vpc:Vpc": {"ipRange", "region"},
    "digitalocean:index/loadBalancer:LoadBalancer": {"region", "vpcUuid"},
    "digitalocean:index/dnsRecord:DnsRecord": {"domain", "type"},
    "digitalocean:index/sshKey:SshKey": {"publicKey"},
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _step(resource: Declared, old: Declared | None) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Pulumi's op for `resource` against what the state holds of it, with the properties
    that force a replacement and those that differ."""
    if old is None:
        return ("import" if resource.import_id else "create"), (), ()
    ignored = {_camel(name) for name in resource.ignore_changes}
    diffs = tuple(
        key
        for key in sorted(resource.inputs.keys() | old.inputs.keys())
        if key not in ignored and resource.inputs.get(key) != old.inputs.get(key)
    )
    keys = tuple(key for key in diffs if key in FORCES.get(resource.type, ()))
    if keys:
        return "replace", keys, diffs
    return ("update" if diffs else "same"), (), diffs


def run_fleet(run: Run) -> str:
    """The fleet a program run declared (its components carry it)."""
    return next(str(r.inputs.get("fleet", "")) for r in run.resources if "fleet" in r.inputs)


@dataclass(frozen=True)
class Cloud:
    spec: str
    fake: Callable[[], Any]
    answers: Answers
    list_on: Callable[[Run, Any], None]
    api_path: str


CLOUDS = {
    "hcloud": Cloud(test_hcloud.SPEC, FakeHcloud, test_hcloud.ANSWERS, list_on_hcloud, "/v1"),
    "digitalocean": Cloud(
        test_digitalocean.SPEC,
        FakeDigitalOcean,
        test_digitalocean.ANSWERS,
        list_on_digitalocean,
        "",
    ),
}


@dataclass
class World:
    """One cloud fleet's spec, state directory, fake provider and Pulumi stand-in."""

    provider: str
    spec: Path
    state_dir: Path
    fake: Any
    pulumi: ProgramUnderMocks
    fleet: str

    def write(self, **changes: Any) -> None:
        data = yaml.safe_load(self.spec.read_text())
        data.update(changes)
        self.spec.write_text(yaml.safe_dump(data, sort_keys=False))

    def options(
        self, timeout_s: float = 0.5, *, delete_orphans: bool = False, adopt: bool = False
    ) -> RunOptions:
        return RunOptions(
            state_dir=self.state_dir,
            yes=True,
            json_lines=True,
            timeout_s=timeout_s,
            delete_orphans=delete_orphans,
            listen=("127.0.0.1", 0),
            engine_addresses=("198.51.100.7",),
            adopt=adopt,
        )

    def up(
        self, *, delete_orphans: bool = False, adopt: bool = False
    ) -> tuple[int, list[dict[str, Any]]]:
        out = io.StringIO()
        options = self.options(delete_orphans=delete_orphans, adopt=adopt)
        code = up(self.spec, options, out, lambda _: False)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    def store(self) -> Store:
        return open_state(self.state_dir)

    def provider_id(self, server: str) -> int:
        """The id of `server` at the fake provider."""
        listed = getattr(self.fake, "servers", None) or self.fake.droplets
        return int(next(s["id"] for s in listed if s["name"] == server))
