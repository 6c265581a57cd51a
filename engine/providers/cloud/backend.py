"""Hetzner Cloud and DigitalOcean as `engine up` and `engine destroy` drive them (an
engine.providers.seam.Backend): the fleet's Pulumi program (stacks/) run through the Automation
API (engine.providers.cloud.pulumi_runner), one stack per fleet.

The program declares the whole fleet at once, so every server's user_data is pinned before it
runs: servers the plan creates or replaces get new user_data with a fresh one-time token, the
others keep theirs (the program ignores later differences anyway). Servers the plan adopts are
imported into the stack, never created twice. When the run ends, each server it made is
registered with the control plane from the stack's outputs (provider id and addresses): the
id is what its phone-home must match. A phone-home that arrives before that is checked
against the provider's own list.

The control plane listens where the spec's `control_plane.url` leads (`--listen`, by default
0.0.0.0 and the URL's port). The servers' firewalls let SSH and the agent port in from the
engine's addresses only: those given with `--engine-address`, else the URL's host resolved.

Nothing is changed before the checks pass: the Pulumi CLI, the passphrase and the API token
are looked for first. pyinfra never runs in this process (installs run in child processes,
engine.install), so Pulumi's gRPC never meets gevent's monkey-patching.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from engine.catalog import load_catalog
from engine.errors import EngineError
from engine.model import LABEL_FLEET_ID, Fleet, Server, Stage, ownership_labels
from engine.plan import Action, Change, Plan, RetryBy
from engine.providers import Snapshot
from engine.providers.registry import inventory_reader, provider_actions
from engine.providers.seam import InventoryReader, Provisioned, Signal, Site
from engine.secrets import read_token
from engine.state import ServerRecord

if TYPE_CHECKING:
    from engine.providers.cloud.actions import ActionState, ProviderActions
    from engine.providers.cloud.pulumi_runner import ResourceStep, RunResult
    from engine.providers.seam import FleetRun, Provisioner
    from engine.state.store import Store
    from stacks.inputs import StackInputs

Say = Callable[[str], None]


ACTION_TIMEOUT_S = 600.0


def _is_taken_over(change: Change, run: FleetRun) -> bool:
    """A replace of a server another state directory made (engine up --adopt)."""
    before = change.before
    return (
        change.action is Action.REPLACE
        and before is not None
        and before.fleet_id not in ("", run.fleet_id)
    )


def _is_outside_the_program(change: Change) -> bool:
    """Done without running the program: over SSH or by a provider action."""
    if change.action is Action.RETRY:
        return change.retry_by is not RetryBy.REPLACE
    return change.action in (Action.REINSTALL, Action.POWER_ON)


@dataclass(frozen=True, slots=True)
class ProgramSets:
    """What the plan asks of the program besides the spec: which servers it makes anew from
    today's inputs (replaced), which the stack may still hold though the provider lost them
    (gone: refreshed out first), which it imports as they are (adopted, name -> provider id)
    and what it changes in place (refresh: servers by name, other resources by their logical
    names; refreshed first so that Pulumi sees changes made outside the engine)."""

    replaced: frozenset[str] = frozenset()
    gone: frozenset[str] = frozenset()
    adopted: Mapping[str, str] = field(default_factory=dict)
    refresh: frozenset[str] = frozenset()


def _program_sets(plan: Plan, run: FleetRun) -> ProgramSets:
    """The ProgramSets of `plan`."""
    replaced: set[str] = set()
    gone: set[str] = set()
    adopted: dict[str, str] = {}
    refresh: set[str] = set()
    for change in plan.changes:
        by = change.retry_by if change.action is Action.RETRY else None
        if change.action is Action.CREATE:
            gone.add(change.server)  # the stack may hold it still: it was deleted outside
        elif (change.action is Action.REPLACE or by is RetryBy.REPLACE) and not _is_taken_over(
            change, run
        ):
            replaced.add(change.server)
        elif change.action is Action.ADOPT:
            assert change.before is not None
            adopted[change.server] = change.before.provider_id
        elif change.action in (Action.UPDATE, Action.RESIZE):
            refresh.add(change.server)
    for resource in plan.resources:
        if resource.action is Action.UPDATE:
            refresh.update(resource.logical)
    return ProgramSets(
        replaced=frozenset(replaced),
        gone=frozenset(gone),
        adopted=adopted,
        refresh=frozenset(refresh),
    )


def needs_the_program(plan: Plan, pending: Sequence[ServerRecord]) -> bool:
    """Whether the program must run: a server waits to be made (`pending`: recorded without a
    provider id), a change to a server is the program's, or any other resource differs
    (a firewall rule, a load balancer, a network, a DNS record, the engine's addresses)."""
    return bool(pending or plan.resources) or not all(
        _is_outside_the_program(c) for c in plan.changes
    )


def engine_sources(addresses: Sequence[str]) -> tuple[str, ...]:
    """Addresses or CIDR ranges as CIDRs (`203.0.113.7` -> `203.0.113.7/32`), each once."""
    found: list[str] = []
    for address in addresses:
        try:
            network = ipaddress.ip_network(address.strip(), strict=True)
        except ValueError:
            raise EngineError(
                f"--engine-address {address}: give an IP address or a CIDR range, e.g. "
                "203.0.113.7 or 203.0.113.0/28"
            ) from None
        if str(network) not in found:
            found.append(str(network))
    return tuple(found)


def resolved_sources(url: str) -> tuple[str, ...]:
    """The addresses `url`'s host resolves to, as /32 and /128 ranges."""
    host = urlsplit(url).hostname or ""
    try:
        answers = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise EngineError(
            f"control_plane.url's host {host!r} does not resolve, and the servers' firewalls "
            "need the address the engine connects from; give it with --engine-address ADDRESS"
        ) from None
    return engine_sources(sorted({str(answer[4][0]) for answer in answers}))


@dataclass(slots=True)
class CloudBackend:
    """A fleet on Hetzner Cloud or DigitalOcean; `open` it before use."""

    fleet: Fleet
    state_dir: Path
    say: Say
    listen: tuple[str, int] | None = None
    engine_addresses: tuple[str, ...] = ()
    token: str = ""
    agent_image: str = ""
    docker_url: str | None = None
    sources: tuple[str, ...] = ()

    def check_tools(self) -> None:
        """The Pulumi CLI and its passphrase, or an error saying how to get them."""
        from engine.providers.cloud.pulumi_runner import check_ready

        check_ready()

    def connect(self) -> None:
        """The API token, from the variable the spec names."""
        env = self.fleet.provider.token_env
        if not env:
            raise EngineError(
                f"the spec names no token_env for {self.fleet.provider.name}: add the NAME of "
                "the variable holding the API token (provider.token_env)"
            )
        self.token = read_token(env)

    def open(self) -> None:
        """The token, the engine's addresses, and the agent image (built in the engine's
        Docker unless the spec names a registry image)."""
        self.connect()
        if self.engine_addresses:
            self.sources = engine_sources(self.engine_addresses)
            how = "from --engine-address"
        else:
            self.sources = resolved_sources(self.url)
            how = f"{urlsplit(self.url).hostname} resolved; --engine-address sets them"
        self.say(
            f"SSH and the agent port of every server open to {', '.join(self.sources)} only ({how})"
        )
        if self.fleet.install.agent.image:
            self.agent_image = self.fleet.install.agent.image
            return
        from engine.agent.image import ensure_agent_image
        from engine.providers.local.dockerd import daemon_client, ensure_daemon

        self.docker_url = ensure_daemon(say=self.say)
        client = daemon_client(self.docker_url)
        try:
            self.agent_image = ensure_agent_image(client, self.say)
        finally:
            client.close()

    def close(self) -> None:
        return None

    @property
    def url(self) -> str:
        url = self.fleet.control_plane.url
        if not url:
            raise EngineError(
                "the spec has no control_plane.url: servers on the clouds phone home there"
            )
        return url

    def site(self) -> Site:
        """Where `--listen` says, else 0.0.0.0 and the port of control_plane.url (443 if none)."""
        # Servers on the internet phone home to it: every interface by default. The spec
        # insists on https, so a TLS-ending proxy in front of it often listens on 443 and
        # passes requests on to --listen.
        host, port = self.listen or ("0.0.0.0", urlsplit(self.url).port or 443)  # noqa: S104
        return Site(host=host, port=port, url=self.url, sources=self.sources)

    def provisioner(self, store: Store, servers: Mapping[str, Server]) -> Provisioner | None:
        return None  # the program makes every server at once, in carry_out

    def carry_out(self, plan: Plan, run: FleetRun, servers: Sequence[Server]) -> None:
        """Pulumi's plan checked against ours (nothing changes if it would do more), then
        the plan's bookkeeping, one run of the program over the whole fleet, and the new
        servers registered from its outputs."""
        from engine.providers.cloud.pulumi_runner import up

        sets = _program_sets(plan, run)
        known = run.store.servers.all(run.fleet.name)
        if needs_the_program(plan, [r for r in known if not r.provider_id]):
            self._check_pulumi_plan(plan, run, servers, sets)
        self._delete_taken_over(plan, run)
        for change in plan.changes:
            name = change.server
            by = change.retry_by if change.action is Action.RETRY else None
            if change.action in (Action.CREATE, Action.REPLACE) or by is RetryBy.REPLACE:
                assert change.after is not None
                if name in sets.replaced:
                    run.store.servers.forget(run.fleet.name, name)
                run.create(change.after, provision=False)
            elif change.action is Action.REINSTALL or by is RetryBy.INSTALL:
                run.reinstall(name, "tried again" if by else "")
            elif by is RetryBy.REBUILD or change.action is Action.POWER_ON:
                self._act(change, run)
            elif change.action is Action.ADOPT:
                run.adopt(change)
        records = {r.name: r for r in run.store.servers.all(run.fleet.name)}
        # Made by no run yet, or by one that died before registering them.
        pending = [r for r in records.values() if not r.provider_id]
        if not needs_the_program(plan, pending):
            return
        for record in pending:
            if record.stage is Stage.REQUESTED:
                run.store.servers.set_stage(run.fleet.name, record.name, Stage.CREATING)
        inputs = self._inputs(run, servers, sets)
        run.board.note(f"Running the Pulumi program of {self.fleet.name} ({len(servers)} servers)")
        result = up(
            inputs, token=self.token, state_dir=self.state_dir, on_progress=self._shown(run)
        )
        self._register(run, result)
        self._delete_strays(plan, run)
        for change in plan.changes:
            if change.action is Action.RESIZE:
                assert change.after is not None
                run.resized(change.server, change.after.server_type)
            elif change.action is Action.DELETE:
                run.deleted(change.server)

    def _inputs(self, run: FleetRun, servers: Sequence[Server], sets: ProgramSets) -> StackInputs:
        """What the program declares from: every server's pinned user_data, the keys, the
        engine's addresses, and which servers are replaced, gone or adopted."""
        from engine.install.deploykey import ensure_deploy_key
        from stacks.inputs import StackInputs

        return StackInputs(
            fleet=self.fleet,
            servers=tuple(servers),
            user_data={server.name: run.user_data(server) for server in servers},
            ssh_public_keys=(
                *self.fleet.ssh.authorized_keys,
                ensure_deploy_key(self.state_dir, self.fleet.name),
            ),
            engine_sources=self.sources,
            catalog=load_catalog(self.fleet.provider.name, self.state_dir),
            replaced=sets.replaced,
            adopted=sets.adopted,
            gone=sets.gone,
            fleet_id=run.fleet_id,
            refresh=sets.refresh,
        )

    def _check_pulumi_plan(
        self, plan: Plan, run: FleetRun, servers: Sequence[Server], sets: ProgramSets
    ) -> None:
        """Preview the program and stop, before anything changes, if Pulumi would create,
        replace or delete what the plan does not name; Pulumi's step summary is shown."""
        from engine.providers.cloud.guard import refusal, step_summary, unplanned_steps
        from engine.providers.cloud.pulumi_runner import preview

        result = preview(
            self._inputs(run, servers, sets), token=self.token, state_dir=self.state_dir
        )
        run.board.note(step_summary(result.resources))
        pending = {r.name for r in run.store.servers.all(run.fleet.name) if not r.provider_id}
        unplanned = unplanned_steps(plan, result.resources, pending=pending)
        if unplanned:
            workspace = self.state_dir / "pulumi" / "workspace"
            raise EngineError(refusal(self.fleet.name, unplanned, str(workspace)))

    def _act(self, change: Change, run: FleetRun) -> None:
        """Rebuild a server that never phoned home, or power one on, by a provider action; an
        action that fails fails that server alone (a later try, or run, looks at it again)."""
        assert change.after is not None and change.before is not None
        name = change.server
        record = run.store.servers.get(run.fleet.name, name)
        if record is None:
            return
        try:
            if change.action is Action.RETRY:
                self.rebuild(change.after, record, run, ACTION_TIMEOUT_S)
                return
            actions = provider_actions(self.fleet, self.token)
            started = actions.start(change.before.provider_id, Signal.POWERON)
            self._waited(actions, started, name, ACTION_TIMEOUT_S)
        except EngineError as error:
            run.board.note(f"{name}: {error}")
            run.store.servers.update(
                self.fleet.name, name, stage=Stage.FAILED, reason=f"{change.action}: {error}"
            )
            return
        run.powered_on(name)

    def _delete_taken_over(self, plan: Plan, run: FleetRun) -> None:
        """Delete, by id, the servers another state directory made that the plan takes over
        (--adopt): this stack never held them, and they are made anew by the program."""
        doomed = [c.before for c in plan.changes if _is_taken_over(c, run) and c.before]
        if not doomed:
            return
        from engine.providers.cloud.actions import wait_for_action

        actions = provider_actions(self.fleet, self.token)
        for server in doomed:
            run.board.note(
                f"  delete   {server.name} (id {server.provider_id}, fleet id "
                f"{server.fleet_id}): taken over"
            )
            started = actions.delete(server.provider_id)
            if started is not None:
                wait_for_action(actions, started, timeout_s=ACTION_TIMEOUT_S, on_progress=None)

    def _delete_strays(self, plan: Plan, run: FleetRun) -> None:
        """Delete what the plan deletes but the stack never held (an orphan, a duplicate made
        by an interrupted run): the program's run left it, so it is deleted by id."""
        doomed = {
            c.before.provider_id: c.server
            for c in plan.changes
            if c.action is Action.DELETE and c.before is not None
        }
        if not doomed:
            return
        from engine.providers.cloud.actions import wait_for_action

        actions = provider_actions(self.fleet, self.token)
        for server in self.reader().read_servers():
            if server.provider_id in doomed:
                run.board.note(
                    f"  delete   {server.name} (id {server.provider_id}), not in the stack"
                )
                started = actions.delete(server.provider_id)
                if started is not None:
                    wait_for_action(actions, started, timeout_s=ACTION_TIMEOUT_S, on_progress=None)

    def _shown(self, run: FleetRun) -> Callable[[ResourceStep], None]:
        board = run.board

        def show(step: ResourceStep) -> None:
            if board.json_lines:
                board.event("resource", name=step.name, type=step.type, op=step.op,
                            status=step.status)  # fmt: skip
            elif step.status in ("done", "failed") and step.op != "same":
                board.note(f"  {step.op:<8} {step.name} ({step.type.rsplit(':', 1)[-1]}): "
                           f"{step.status}")  # fmt: skip

        return show

    def _register(self, run: FleetRun, result: RunResult) -> None:
        """Every server the program made (or made anew) gets its id and addresses recorded,
        which moves it to booting."""
        records = {r.name: r for r in run.store.servers.all(run.fleet.name)}
        for out in result.servers:
            record = records.get(out.name)
            if record is None or record.provider_id == out.id:
                continue
            run.register(
                out.name,
                Provisioned(
                    provider_id=out.id,
                    ipv4=out.ipv4,
                    ipv6=out.ipv6,
                    private_ips=(out.private_ipv4,) if out.private_ipv4 else (),
                ),
            )

    def reader(self) -> InventoryReader:
        """The provider's inventory, read with the token this backend holds."""
        return inventory_reader(self.fleet, token=self.token)

    def teardown(self) -> None:
        from engine.providers.cloud.pulumi_runner import destroy

        def show(step: ResourceStep) -> None:
            if step.status in ("done", "failed"):
                self.say(f"  delete   {step.name}: {step.status}")

        destroy(self.fleet, token=self.token, state_dir=self.state_dir, on_progress=show)

    def snapshots(self) -> tuple[Snapshot, ...]:
        return provider_actions(self.fleet, self.token).snapshots()

    def delete_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        actions = provider_actions(self.fleet, self.token)
        for snapshot in snapshots:
            actions.delete_snapshot(snapshot.id)

    def signal(self, record: ServerRecord, signal: Signal, timeout_s: float) -> str:
        """The provider's action for `signal`, waited on; a snapshot is labelled (Hetzner) and
        named after the fleet and the server."""

        from engine.tokens import find_fleet_id

        actions = provider_actions(self.fleet, self.token)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        labels = ownership_labels(self.fleet.name, record.group, record.name)
        fleet_id = find_fleet_id(self.state_dir, self.fleet.name)
        started = actions.start(
            record.provider_id,
            signal,
            snapshot=f"{self.fleet.name}-{record.name}-{stamp}",
            labels=(*labels, (LABEL_FLEET_ID, fleet_id)) if fleet_id else labels,
        )
        done = self._waited(actions, started, record.name, timeout_s)
        return f"{record.name}: {signal} done" + (f", image {done.image}" if done.image else "")

    def rebuild(
        self, server: Server, record: ServerRecord, run: FleetRun, timeout_s: float
    ) -> None:
        """The provider rebuilds the disk from the group's image. Hetzner takes new user_data
        (with a new token): the server phones home as on its first boot. DigitalOcean keeps
        the first user_data, whose token is spent: the server is found by polling."""

        actions = provider_actions(self.fleet, self.token)
        user_data = run.user_data(server, fresh=True) if actions.takes_user_data() else None
        # Its disk, host keys and install are gone; what it says next is about the new one.
        run.store.servers.update(
            self.fleet.name,
            server.name,
            stage=Stage.BOOTING,
            reason="rebuilding",
            host_keys=(),
            host_keys_source="",
            install_hash=None,
            installed_at=None,
            cloud_init_finished_at=None,
            inventory_seen_at=None,
        )
        started = actions.start(
            record.provider_id, Signal.REBUILD, image=server.image, user_data=user_data
        )
        try:
            self._waited(actions, started, server.name, timeout_s)
        except EngineError as error:
            run.store.servers.update(self.fleet.name, server.name, stage=Stage.FAILED,
                                    reason=f"rebuild: {error}")  # fmt: skip
            raise
        if user_data is None:
            run.start_polling(server.name)

    def _waited(
        self, actions: ProviderActions, started: ActionState, name: str, timeout_s: float
    ) -> ActionState:
        from engine.providers.cloud.actions import ActionStatus, wait_for_action

        shown: set[int | None] = set()

        def progress(state: ActionState) -> None:
            if state.progress not in shown:
                shown.add(state.progress)
                percent = "" if state.progress is None else f" {state.progress}%"
                self.say(f"  {name}: {state.command} action {state.id} running{percent}")

        done = wait_for_action(actions, started, timeout_s=timeout_s, on_progress=progress)
        if done.status is ActionStatus.ERROR:
            raise EngineError(
                f"{self.fleet.provider.name} says the {done.command} of {name} failed: "
                f"{done.error or 'no reason given'} (action {done.id})"
            )
        return done
