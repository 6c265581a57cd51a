"""A cloud fleet for tests: a spec pointed at a stateful fake API on loopback, and Pulumi's
part played by the fleet's program under Pulumi's mocks (there is no Pulumi CLI here).

`engine.providers.cloud.pulumi_runner` is the boundary: the stand-in runs the program under the
mocks and makes what it declared exist in the fake (what a real `pulumi up` converges the
provider to).
Everything else is the real engine: the plan read from the fake over HTTP, the state store,
tokens and user_data, the control plane on loopback.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import EngineError
from engine.providers.cloud.pulumi_runner import Progress, ResourceStep, RunResult, server_outputs
from engine.providers.seam import RunOptions
from engine.state.store import Store, open_store
from engine.up import up
from stacks.inputs import StackInputs
from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.stacks import test_digitalocean, test_hcloud
from tests.stacks.harness import Answers, Run, run_program
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
    create fails `pulumi up`."""

    fake: Any
    answers: Answers
    list_on: Callable[[Run, Any], None]
    ups: list[StackInputs] = field(default_factory=list)
    destroys: int = 0
    held: set[tuple[str, str]] = field(default_factory=set)
    urns: set[str] = field(default_factory=set)
    fail_next: str = ""

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
        present = {(name, str(i["id"])) for name, items in self._items().items() for i in items}
        # Held in the state, gone at the provider: Pulumi still believes in them.
        lost = {key for key in self.held if key[0] in SERVERS and key not in present}
        run = run_program(inputs, self.answers)
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
        for kind, server_id in lost:
            items = getattr(self.fake, kind)
            believed = [
                i for i in items if str(i["id"]) == server_id and i["name"] not in inputs.gone
            ]
            setattr(self.fake, kind, [i for i in items if i not in believed])
        return RunResult(action="up", resources=(), counts=(), servers=server_outputs(run.outputs))

    def destroy(self, *_: Any, **__: Any) -> RunResult:
        self.destroys += 1
        self.clear()
        self.urns.clear()
        return RunResult(action="destroy", resources=(), counts=())


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
        return open_store(f"sqlite:///{self.state_dir / 'state.db'}")

    def provider_id(self, server: str) -> int:
        """The id of `server` at the fake provider."""
        listed = getattr(self.fake, "servers", None) or self.fake.droplets
        return int(next(s["id"] for s in listed if s["name"] == server))
