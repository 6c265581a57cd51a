"""Run a fleet's Pulumi program (stacks/) through the Automation API.

One stack per fleet (named after it) in the project `fleet-engine`, with an inline program, so
no Pulumi project files are written by hand. State goes to a local file backend under the
engine's state directory, `file://<state_dir>/pulumi`, unless the user sets
PULUMI_BACKEND_URL (an s3://, azblob://, gs:// or Pulumi Cloud URL for a team). Secrets in the
state (the provider's API token) are encrypted with the passphrase in
PULUMI_CONFIG_PASSPHRASE (or the file named by PULUMI_CONFIG_PASSPHRASE_FILE); the stack's
encryption salt sits in `<state_dir>/pulumi/workspace/Pulumi.<fleet>.yaml`, so keep that
folder with the state.

    preview(inputs, ...)    what `up` would do, per resource (with each step's properties
                            that force a replacement: engine.providers.cloud.guard checks it)
    up(inputs, ...)         create/update to match; returns the servers' ids and addresses
    destroy(fleet, ...)     delete everything the stack holds

Before preview and up, the stack is made ready (`recovered`): creates left pending by a run
that died are cleared from the state (what they made is adopted by the plan, what they did
not is made now); then servers deleted outside the engine and what the plan changes in place
are refreshed (`refresh_first`), so the program makes the former anew and Pulumi sees what
was changed outside in the latter.

Each returns a `RunResult`: the outcome per resource, the counts per operation and, for `up`,
one `ServerOutput` per server. A progress callback sees every resource step as it happens.

Pulumi is imported only inside these functions (never on the `validate`/`preview` start-up
path), and never in a process that gevent has monkey-patched (pyinfra's CLI does that on
import), where Pulumi hangs: run installs and Pulumi in separate processes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.model import Fleet
from engine.secrets import redact, register_secret
from engine.state.files import private_dir
from stacks import PROJECT, SERVERS_OUTPUT, fleet_program, provider_program
from stacks.inputs import StackInputs

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent, PulumiCommand, Stack

INSTALL_HINT = (
    "install it with `curl -fsSL https://get.pulumi.com | sh` (then add ~/.pulumi/bin to PATH "
    "or open a new shell); in GitHub Actions add the step `uses: pulumi/actions@v6`. "
    "The local provider needs no Pulumi"
)
# The oldest CLI that does all the engine asks of it: destroy an inline program
# (run_program), clear the creates a dead run left pending.
MINIMUM_CLI = "3.181.0"
# Each provider's plugin, at exactly the version of its Python package (which declares the
# resources with that version's schema).
PLUGIN_PACKAGES = {"hcloud": "pulumi_hcloud", "digitalocean": "pulumi_digitalocean"}
STACK_TYPE = "pulumi:pulumi:Stack"
SERVER_TYPES = frozenset({"hcloud:index/server:Server", "digitalocean:index/droplet:Droplet"})


class PulumiNotInstalled(EngineError):
    """There is no Pulumi CLI to run the Automation API with."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceStep:
    """One resource's step in a run: `op` is Pulumi's (create, update, replace, delete, same...);
    `status` is planned (preview), started, done or failed; `keys` are the properties that
    force a replacement, `diffs` those that differ."""

    urn: str
    type: str
    name: str
    op: str
    status: str
    keys: tuple[str, ...] = ()
    diffs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOutput:
    """What the provider assigned to one server (from the stack's `servers` output)."""

    name: str
    id: str
    location: str
    ipv4: str | None = None
    ipv6: str | None = None
    private_ipv4: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """The result of a preview, up or destroy."""

    action: str
    resources: tuple[ResourceStep, ...]
    counts: tuple[tuple[str, int], ...]
    servers: tuple[ServerOutput, ...] = ()

    def count(self, op: str) -> int:
        return dict(self.counts).get(op, 0)


Progress = Callable[[ResourceStep], None]


def backend_url(state_dir: Path) -> str:
    """Where Pulumi keeps state: $PULUMI_BACKEND_URL, else `file://<state_dir>/pulumi`."""
    configured = os.environ.get("PULUMI_BACKEND_URL", "").strip()
    if configured:
        return configured
    return f"file://{(state_dir / 'pulumi').resolve()}"


def check_passphrase() -> None:
    """Refuse to run without the passphrase that encrypts the stack's secrets."""
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE") or os.environ.get(
        "PULUMI_CONFIG_PASSPHRASE_FILE"
    ):
        return
    raise EngineError(
        "PULUMI_CONFIG_PASSPHRASE is not set; Pulumi encrypts the provider token in its state "
        "with it. Export a passphrase (export PULUMI_CONFIG_PASSPHRASE=...) and keep it: every "
        "later up, preview and destroy of this fleet needs the same one"
    )


def pulumi_root() -> str | None:
    """Where the Pulumi CLI is: None when it is on PATH, else its installation root.

    Raises PulumiNotInstalled when there is none (`curl ... | sh` puts it in ~/.pulumi/bin,
    which non-login shells often lack on PATH, so that place is looked at too).
    """
    if shutil.which("pulumi"):
        return None
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    if (home / "bin" / "pulumi").is_file():
        return str(home)
    raise PulumiNotInstalled(
        "the Pulumi CLI is not installed (no `pulumi` on PATH or in ~/.pulumi/bin), and "
        f"`engine up` and `engine destroy` on Hetzner Cloud and DigitalOcean run it; {INSTALL_HINT}"
    )


def refuse_gevent() -> None:
    """Pulumi's gRPC hangs in a process gevent has monkey-patched; refuse before it does."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_anything_patched():
        raise EngineError(
            "this process was monkey-patched by gevent (pyinfra's command line does that), and "
            "Pulumi hangs in such a process; run Pulumi and pyinfra in separate processes"
        )


def check_ready() -> str | None:
    """Refuse, before anything changes, a run Pulumi cannot do here (no CLI, no passphrase,
    a gevent-patched process); where the CLI is, as `pulumi_root` says."""
    refuse_gevent()
    root = pulumi_root()
    check_passphrase()
    return root


def preview(
    inputs: StackInputs, *, token: str, state_dir: Path, on_progress: Progress | None = None
) -> RunResult:
    """What `up` would change, per resource (nothing is changed)."""
    return _run("preview", inputs, token, state_dir, on_progress)


def up(
    inputs: StackInputs, *, token: str, state_dir: Path, on_progress: Progress | None = None
) -> RunResult:
    """Create and update the fleet's resources to match `inputs`; the servers' outputs."""
    return _run("up", inputs, token, state_dir, on_progress)


def _run(
    action: str, inputs: StackInputs, token: str, state_dir: Path, on_progress: Progress | None
) -> RunResult:
    events = StepLog(action, on_progress)
    with _stack(
        inputs.fleet, fleet_program(inputs, token=token), token, state_dir, events
    ) as stack:
        inputs = recovered(stack, inputs)
        refresh_first(stack, inputs)
        program = fleet_program(inputs, token=token)
        if action == "preview":
            stack.preview(on_event=events, color="never", program=program)
            return events.result()
        outcome = stack.up(on_event=events, color="never", program=program)
    servers = outcome.outputs.get(SERVERS_OUTPUT)
    return events.result(server_outputs(servers.value if servers else {}))


def recovered(stack: Stack, inputs: StackInputs) -> StackInputs:
    """The stack ready to run again after a run that died mid-way, and `inputs` fitted to it.

    A create that was under way when the process died is a pending operation in the state:
    Pulumi refuses to run until it is settled, and cannot tell whether the resource was
    made. It is cleared from the state (`refresh --clear-pending-creates`); what was made
    carries the fleet's labels or tags, so the engine's reader finds it and the plan adopts
    it (imported, never made twice: no 409 on Hetzner, no second droplet), and what was not
    made is made by this run. A server to adopt that the state holds already (the run died
    after Pulumi recorded it) is not imported again.
    """
    deployment = stack.export_stack().deployment or {}
    creating = pending_creates(deployment)
    if creating:
        stack.refresh(target=creating, clear_pending_creates=True, color="never")
    held = set(server_names(deployment))
    if not held & set(inputs.adopted):
        return inputs
    adopted = {name: rid for name, rid in inputs.adopted.items() if name not in held}
    return dataclasses.replace(inputs, adopted=adopted)


def pending_creates(deployment: Mapping[str, Any]) -> list[str]:
    """The URNs of the creates an exported deployment has pending (a run died during them)."""
    return [
        str(operation["resource"]["urn"])
        for operation in deployment.get("pending_operations") or ()
        if operation.get("type") == "creating"
    ]


def server_names(deployment: Mapping[str, Any]) -> list[str]:
    """The names of the servers an exported deployment holds."""
    return [
        str(resource["urn"]).rsplit("::", 1)[-1]
        for resource in deployment.get("resources") or ()
        if resource.get("type") in SERVER_TYPES
    ]


def destroy(
    fleet: Fleet, *, token: str, state_dir: Path, on_progress: Progress | None = None
) -> RunResult:
    """Delete every resource the fleet's stack holds (an unknown stack has nothing to delete).

    The provider-only program runs first so that a rotated token is the one used.
    """
    from pulumi.automation import StackNotFoundError

    events = StepLog("destroy", on_progress)
    program = provider_program(fleet, token=token)
    try:
        with _stack(fleet, program, token, state_dir, events, create=False) as stack:
            stack.destroy(on_event=events, color="never", run_program=True)
    except StackNotFoundError:
        return RunResult(action="destroy", resources=(), counts=())
    return events.result()


def refresh_first(stack: Stack, inputs: StackInputs) -> None:
    """Refresh, in one call, what the stack's state holds of the servers the provider no
    longer has (`inputs.gone`: they leave the state and the program makes them anew) and of
    what the plan changes in place (`inputs.refresh`: Pulumi sees what was changed outside
    and puts it back as the spec says). Pulumi would otherwise take its state's word for
    them. Nothing else is read: a refresh costs one request per resource."""
    if not (inputs.gone or inputs.refresh):
        return
    deployment = stack.export_stack().deployment or {}
    urns = server_urns(deployment, inputs.gone) + urns_named(deployment, inputs.refresh)
    if urns:
        stack.refresh(target=list(dict.fromkeys(urns)), color="never")


def urns_named(deployment: Mapping[str, Any], names: frozenset[str]) -> list[str]:
    """The URNs of the resources an exported deployment holds whose logical name is one of
    `names` or a part of one (`lb-web` stands for `lb-web-443` too)."""
    found = []
    for resource in deployment.get("resources") or ():
        name = str(resource.get("urn", "")).rsplit("::", 1)[-1]
        if any(name == n or name.startswith((f"{n}-", f"{n}.")) for n in names):
            found.append(str(resource["urn"]))
    return found


def server_urns(deployment: Mapping[str, Any], names: frozenset[str]) -> list[str]:
    """The URNs of the servers named `names` in an exported deployment (`resources`, each
    with its `urn` and `type`), whichever provider's."""
    return [
        resource["urn"]
        for resource in deployment.get("resources") or ()
        if resource.get("type") in SERVER_TYPES
        and str(resource.get("urn", "")).rsplit("::", 1)[-1] in names
    ]


def server_outputs(value: Any) -> tuple[ServerOutput, ...]:
    """The stack's `servers` output as ServerOutputs, by name."""
    if not isinstance(value, dict):
        return ()
    return tuple(
        ServerOutput(
            name=name,
            id=str(out["id"]),
            location=str(out.get("location", "")),
            ipv4=out.get("ipv4") or None,
            ipv6=out.get("ipv6") or None,
            private_ipv4=out.get("private_ipv4") or None,
        )
        for name, out in sorted(value.items())
    )


class StepLog:
    """Turns Pulumi's engine events into ResourceSteps, for the callback and the result, and
    keeps the engine's error diagnostics (secrets masked) for the failure message."""

    def __init__(self, action: str, on_progress: Progress | None) -> None:
        self.action = action
        self.on_progress = on_progress
        self.steps: dict[str, ResourceStep] = {}
        self.errors: list[str] = []

    def __call__(self, event: EngineEvent) -> None:
        planned = self.action == "preview"
        if event.resource_pre_event:
            self._step(event.resource_pre_event.metadata, "planned" if planned else "started")
        elif event.res_outputs_event and not planned:
            self._step(event.res_outputs_event.metadata, "done")
        elif event.res_op_failed_event:
            self._step(event.res_op_failed_event.metadata, "failed")
        elif event.diagnostic_event and event.diagnostic_event.severity == "error":
            self.errors.append(redact(event.diagnostic_event.message.strip()))

    def _step(self, metadata: Any, status: str) -> None:
        if metadata.type == STACK_TYPE:
            return
        step = ResourceStep(
            urn=metadata.urn,
            type=metadata.type,
            name=metadata.urn.rsplit("::", 1)[-1],
            op=str(metadata.op.value),
            status=status,
            keys=tuple(metadata.keys or ()),
            diffs=tuple(metadata.diffs or ()),
        )
        self.steps[step.urn] = step
        if self.on_progress is not None:
            self.on_progress(step)

    def result(self, servers: tuple[ServerOutput, ...] = ()) -> RunResult:
        counts: dict[str, int] = {}
        for step in self.steps.values():
            counts[step.op] = counts.get(step.op, 0) + 1
        return RunResult(
            action=self.action,
            resources=tuple(self.steps.values()),
            counts=tuple(sorted(counts.items())),
            servers=servers,
        )


@contextmanager
def _stack(
    fleet: Fleet,
    program: Callable[[], None],
    token: str,
    state_dir: Path,
    events: StepLog,
    *,
    create: bool = True,
) -> Iterator[Stack]:
    """The fleet's stack in a workspace under the state directory; Pulumi's failures become
    EngineErrors that never carry the token."""
    register_secret(token)
    root = check_ready()
    from pulumi import automation as auto
    from semver import VersionInfo

    try:
        command = auto.PulumiCommand(root=root, version=VersionInfo.parse(MINIMUM_CLI))
    except auto.InvalidVersionError as exc:
        raise EngineError(
            f"{redact(str(exc))}: the engine needs the Pulumi CLI {MINIMUM_CLI} or newer; "
            f"upgrade it: {INSTALL_HINT}"
        ) from None
    except FileNotFoundError:
        raise PulumiNotInstalled(f"the Pulumi CLI could not be run; {INSTALL_HINT}") from None
    backend = backend_url(state_dir)
    workspace = private_dir(state_dir, "pulumi", "workspace")
    ensure_plugin(command, str(fleet.provider.name), str(workspace))
    options = auto.LocalWorkspaceOptions(
        work_dir=str(workspace),
        secrets_provider="passphrase",
        pulumi_command=command,
        env_vars={"PULUMI_BACKEND_URL": backend, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        project_settings=auto.ProjectSettings(
            name=PROJECT, runtime="python", backend=auto.ProjectBackend(url=backend)
        ),
    )
    select = auto.create_or_select_stack if create else auto.select_stack
    try:
        yield select(stack_name=fleet.name, project_name=PROJECT, program=program, opts=options)
    except auto.ConcurrentUpdateError:
        raise EngineError(
            f"another Pulumi run holds the stack of fleet {fleet.name}; wait for it, or if it "
            f"crashed, run `pulumi cancel --stack {fleet.name}` in {workspace}"
        ) from None
    except auto.StackNotFoundError:
        raise
    except auto.CommandError as exc:
        raise EngineError(failure_message(fleet, events, exc)) from None


def plugin_version(provider: str) -> str:
    """The version of `provider`'s plugin the engine runs: its Python package's, `v1.43.3`."""
    from importlib.metadata import version

    return f"v{version(PLUGIN_PACKAGES[provider])}"


def ensure_plugin(command: PulumiCommand, provider: str, cwd: str) -> None:
    """Install `provider`'s plugin at exactly `plugin_version` (nothing to do when it is
    installed already); without a network, one line saying how to bring it."""
    from pulumi import automation as auto

    wanted = plugin_version(provider)
    try:
        command.run(["plugin", "install", "resource", provider, wanted], cwd, {})
    except auto.CommandError as exc:
        said = [line.strip() for line in redact(str(exc)).splitlines() if line.strip()]
        raise EngineError(
            f"the Pulumi plugin {provider} {wanted} (the version of the installed "
            f"{PLUGIN_PACKAGES[provider]} package) is not installed and could not be "
            f"downloaded ({said[-1] if said else 'no reason given'}); where a network is "
            f"reachable run `pulumi plugin install resource {provider} {wanted}` and copy "
            "~/.pulumi/plugins here (or point PULUMI_HOME at it)"
        ) from None


def failure_message(fleet: Fleet, events: StepLog, exc: Exception) -> str:
    """Why a Pulumi run failed: the engine's error diagnostics, else the last lines the command
    printed; registered secrets masked."""
    lines = (
        events.errors
        or [line.strip() for line in redact(str(exc)).splitlines() if line.strip()][-12:]
    )
    detail = "\n".join(dict.fromkeys(lines))
    return f"pulumi {events.action} of fleet {fleet.name} failed:\n{detail}"
