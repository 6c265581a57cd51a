"""What `engine preview` does, as a function: load the spec, read what exists, plan.

The effects are one step, `observe`: the fleet's servers and its other resources
(firewalls, networks, load balancers, DNS records, placement groups, SSH keys) read through
an inventory reader,
the agents of servers recorded ready asked whether they are alive (unless a heartbeat came
within their window), with the state store's records, transitions and heartbeats beside
them (and, for apps, what each server's agent says runs there: engine.apps.observe). The
decisions are the pure `plan_fleet` (over engine.diff). `engine up` plans with the same two,
fed by the backend and the store its run already holds open; a preview opens a reader of its
own. Nothing is written and no lock is taken: a preview never changes anything, and a missing
SQLite state file is not created.

The resources the program would make (stacks.declared) are the other side of the comparison:
with the engine's firewall open to the addresses `engine up` connects from (the run's, or
for a preview the ones the last run recorded) and the spec's keys and the deploy key.

The install digest (`fleet_digest`) covers the spec's install, the deploy code, the agent's
recipe and the control plane's address: `engine up` takes the address its control plane
listens at now, a preview the one the last run recorded.

Actual state comes from one of two places:
- the provider (`plan_preview(...)`): the fleet's owned servers read with paged list calls,
  unowned servers holding names the plan would create, what their agents say, and the state
  store's records;
- a git ref (`against_ref=REF`): the spec as committed at REF, taken as built exactly as
  specified. No credentials and no network: what a pull request from a fork can show.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.apps.diff import AppsObserved, as_deployed, diff_apps
from engine.catalog import Catalog, load_catalog
from engine.diff import DiffOptions, as_built, as_recorded, diff_fleet
from engine.errors import EngineError, SpecError
from engine.health import AgentSeen, Power, is_heard, power_of
from engine.lifecycle import failures_since_ready
from engine.model import Fleet, Stage
from engine.placement import expand_fleet, fleet_server_names
from engine.plan import Action, ApiCallCount, Plan, Problem
from engine.providers import ActualServer, CloudResource
from engine.providers.registry import inventory_reader, require_reader
from engine.providers.retry import RetryPolicy
from engine.providers.seam import InventoryReader
from engine.secrets import token_from_env, unset_variables
from engine.spec import load_spec, parse_spec
from engine.state import AgentReport, FleetSettings, ServerRecord, Transition

if TYPE_CHECKING:
    from engine.state.store import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """What the state store holds of a fleet, read once: its servers' records, their
    transitions into ready or failed (what engine.lifecycle.failures_since_ready counts), its
    agents' last heartbeats, and its settings (None: never registered)."""

    records: tuple[ServerRecord, ...] = ()
    transitions: tuple[Transition, ...] = ()
    reports: tuple[AgentReport, ...] = ()
    settings: FleetSettings | None = None


def recorded(store: Store, fleet: str) -> Recorded:
    """What `store` holds of `fleet`."""
    return Recorded(
        records=store.servers.all(fleet),
        transitions=store.servers.transitions(
            fleet, stages=(Stage.READY, Stage.FAILED), of_failed=True
        ),
        reports=store.agents.reports(fleet),
        settings=store.fleets.get(fleet),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """What exists, read once: the fleet's owned servers, unowned servers holding names the
    plan would create, what their agents say, the state store's records and each server's
    failures since it was last ready, and what reading cost."""

    actual: tuple[ActualServer, ...]
    unowned: tuple[ActualServer, ...]
    records: tuple[ServerRecord, ...]
    read_at: dt.datetime
    list_lag_s: float
    calls: ApiCallCount
    agents: Mapping[str, AgentSeen] = field(default_factory=dict)
    failures: Mapping[str, int] = field(default_factory=dict)
    resources: tuple[CloudResource, ...] = ()
    # What the spec names that the provider lacks (a project, a domain): problems.
    missing: tuple[Problem, ...] = ()


def observe(
    fleet: Fleet,
    reader: InventoryReader,
    known: Recorded,
    *,
    state_dir: Path | None = None,
) -> Observed:
    """The one I/O step of a plan: the fleet's servers and the unowned ones holding names it
    would create, read through `reader`; `known` is what the state store holds (read by the
    caller, who holds the store). With `state_dir` (where the fleet's key is), the agents of
    servers recorded ready that run and were not heard within their window are asked now."""
    actual = reader.read_servers()
    listed = {server.name for server in actual}
    wanted = set(fleet_server_names(fleet))
    unowned = reader.read_unowned(sorted(wanted - listed))
    resources = reader.read_resources(actual)
    missing = reader.read_prerequisites()
    calls = reader.calls
    now = dt.datetime.now(dt.UTC)
    return Observed(
        actual=actual,
        unowned=unowned,
        records=known.records,
        read_at=now,
        list_lag_s=reader.list_lag_s,
        calls=ApiCallCount(
            read=calls.total,
            read_by_path=tuple(sorted(calls.requests.items())),
            retries=calls.retries,
        ),
        agents={} if state_dir is None else agents_now(fleet, state_dir, known, actual, now),
        failures=failures_since_ready(known.transitions),
        resources=resources,
        missing=missing,
    )


def declared(
    fleet: Fleet,
    catalog: Catalog,
    pinned: Mapping[str, str],
    *,
    engine_sources: tuple[str, ...],
    ssh_public_keys: tuple[str, ...],
) -> tuple[CloudResource, ...]:
    """The resources besides servers that the fleet's program would make, its servers placed
    with existing ones `pinned` where they are (name -> location). Pure."""
    from stacks.declared import declared_resources

    servers = expand_fleet(fleet, catalog, pinned)
    return declared_resources(
        fleet, servers, catalog, engine_sources=engine_sources, ssh_public_keys=ssh_public_keys
    )


def agents_now(
    fleet: Fleet,
    state_dir: Path,
    known: Recorded,
    actual: Sequence[ActualServer],
    now: dt.datetime,
) -> dict[str, AgentSeen]:
    """What the agent of each server recorded ready (and running) says: heard, when its last
    heartbeat is within its window; else asked over HTTPS (pinned) whether it is healthy.
    Agents the engine has no endpoint for (or no key to talk to) are not judged."""
    from engine.health import AgentAnswer
    from engine.tokens import find_fleet_key

    running = {a.name for a in actual if power_of(a.status) is Power.ON}
    ready = [
        r for r in known.records if r.stage in (Stage.READY, Stage.UNHEALTHY) and r.name in running
    ]
    reports = {r.server: r for r in known.reports}
    seen: dict[str, AgentSeen] = {}
    unheard = []
    for record in ready:
        heard = reports[record.name].last_heartbeat_at if record.name in reports else None
        if is_heard(heard, fleet.install.agent.heartbeat_s, now):
            seen[record.name] = AgentSeen(answer=AgentAnswer.HEARD, last_heartbeat_at=heard)
        else:
            unheard.append(record)
    key = find_fleet_key(state_dir, fleet.name) if unheard else None
    if key is None:
        return seen
    # The HTTPS client only when there is an agent to ask.
    from engine.agent.client import ask_health
    from engine.agent.endpoint import agent_endpoints

    asked = [reports[r.name] for r in unheard if r.name in reports]
    endpoints = agent_endpoints(fleet, key, unheard, asked)
    for name, answer in ask_health(list(endpoints.values())).items():
        last = reports[name].last_heartbeat_at
        seen[name] = dataclasses.replace(answer, last_heartbeat_at=last)
    return seen


def fleet_digest(fleet: Fleet, control_plane_url: str, sources: tuple[str, ...]) -> str:
    """The install digest of `fleet`'s servers with a control plane at `control_plane_url`
    reaching them from `sources`: the agent is the spec's registry image, or the recipe the
    engine builds its own from."""
    from engine.agent.image import agent_recipe
    from engine.install.digest import install_digest

    return install_digest(
        fleet,
        agent=fleet.install.agent.image or agent_recipe(),
        control_plane_url=control_plane_url,
        control_plane_sources=sources,
    )


def recorded_digest(fleet: Fleet, settings: FleetSettings | None) -> str:
    """The install digest with the control plane the last run had (as `settings` recorded
    it): what a server installed by that run and unchanged since was installed with."""
    if settings is None:
        return fleet_digest(fleet, "", ())
    return fleet_digest(fleet, settings.control_plane_url, settings.control_plane_sources)


def plan_fleet(
    fleet: Fleet,
    catalog: Catalog,
    observed: Observed,
    *,
    install_hash: str,
    fleet_id: str | None,
    delete_orphans: bool = False,
    adopt: bool = False,
    engine_sources: tuple[str, ...] = (),
    ssh_public_keys: tuple[str, ...] = (),
    apps: AppsObserved | None = None,
) -> Plan:
    """The plan that makes what `observed` saw into `fleet`, for servers installed with
    `install_hash` and a fleet whose id in this state directory is `fleet_id`, whose engine
    connects from `engine_sources` and whose servers get `ssh_public_keys`, with the app
    changes that make what runs (`apps`, from the agents) into the spec's apps. Pure: no I/O."""
    options = DiffOptions(
        delete_orphans=delete_orphans,
        now=observed.read_at,
        list_lag_s=observed.list_lag_s,
        compared_with=f"{fleet.provider.name} (read just now)",
        api_calls=observed.calls,
        install_hash=install_hash,
        fleet_id=fleet_id,
        adopt=adopt,
    )
    plan = diff_fleet(
        fleet,
        catalog,
        observed.actual,
        observed.records,
        unowned=observed.unowned,
        options=options,
        agents=observed.agents,
        failures=observed.failures,
        declared=declared(
            fleet,
            catalog,
            {server.name: server.location for server in observed.actual},
            engine_sources=engine_sources,
            ssh_public_keys=ssh_public_keys,
        ),
        listed=observed.resources,
    )
    if observed.missing:
        plan = dataclasses.replace(plan, problems=(*plan.problems, *observed.missing))
    return with_apps(plan, fleet, catalog, observed.actual, apps)


def with_apps(
    plan: Plan,
    fleet: Fleet,
    catalog: Catalog,
    actual: Sequence[ActualServer],
    apps: AppsObserved | None,
) -> Plan:
    """`plan` with the app changes (engine.apps.diff): a server the plan replaces runs none
    of its apps afterwards. Pure."""
    if apps is None or not (fleet.apps or any(apps.running.values())):
        return plan
    remade = {c.server for c in plan.changes if c.action is Action.REPLACE}
    kept = [a for a in actual if a.name not in remade]
    desired = expand_fleet(fleet, catalog, {a.name: a.location for a in actual})
    running = {k: v for k, v in apps.running.items() if k not in remade}
    found = diff_apps(
        fleet, desired, {a.name for a in kept}, dataclasses.replace(apps, running=running)
    )
    return dataclasses.replace(
        plan,
        apps=found.changes,
        app_rollouts=found.rollouts,
        warnings=(*plan.warnings, *found.warnings),
    )


def plan_preview(
    spec: str | Path,
    *,
    state_dir: Path,
    state: str | None = None,
    against_ref: str | None = None,
    delete_orphans: bool = False,
    adopt: bool = False,
    policy: RetryPolicy | None = None,
) -> Plan:
    """The plan for `spec`, against the provider (and the state store) or against a git ref."""
    fleet = load_spec(spec, state_dir=state_dir)
    return preview_fleet(
        fleet,
        Path(spec),
        state_dir=state_dir,
        state=state,
        against_ref=against_ref,
        delete_orphans=delete_orphans,
        adopt=adopt,
        policy=policy,
    )


def preview_fleet(
    fleet: Fleet,
    spec: Path,
    *,
    state_dir: Path,
    state: str | None = None,
    against_ref: str | None = None,
    delete_orphans: bool = False,
    adopt: bool = False,
    policy: RetryPolicy | None = None,
) -> Plan:
    """`plan_preview` of a fleet already loaded from `spec`."""
    from engine.tokens import find_fleet_id

    catalog = load_catalog(str(fleet.provider.name), state_dir)
    if against_ref is not None:
        return _against_ref(fleet, catalog, spec, against_ref, state_dir, delete_orphans)
    require_reader(fleet.provider.name)
    reader = inventory_reader(fleet, token=_token(fleet, spec), policy=policy)
    known, apps = _stored(fleet, state_dir, state)
    observed = observe(fleet, reader, known, state_dir=state_dir)
    plan = plan_fleet(
        fleet,
        catalog,
        observed,
        install_hash=recorded_digest(fleet, known.settings),
        fleet_id=find_fleet_id(state_dir, fleet.name),
        delete_orphans=delete_orphans,
        adopt=adopt,
        engine_sources=known.settings.control_plane_sources if known.settings else (),
        ssh_public_keys=fleet_keys(fleet, state_dir),
        apps=apps,
    )
    return _with_unset_secrets(plan, fleet)


def _with_unset_secrets(plan: Plan, fleet: Fleet) -> Plan:
    """`plan`, warning of the secrets its app rollouts need that this environment lacks (a
    deploy or an up from here refuses them until they are exported)."""
    rolled = {rollout.app for rollout in plan.app_rollouts}
    missing = unset_variables(n for a in fleet.apps if a.name in rolled for n in a.secret_env)
    if not missing:
        return plan
    warning = (
        f"the app rollouts need {', '.join(missing)} from the engine's environment, which "
        f"{'is' if len(missing) == 1 else 'are'} not set here: `engine deploy` and `engine up` "
        "refuse them until exported"
    )
    return dataclasses.replace(plan, warnings=(*plan.warnings, warning))


def fleet_keys(fleet: Fleet, state_dir: Path) -> tuple[str, ...]:
    """The SSH public keys the fleet's program uploads: the spec's, and the fleet's deploy key
    if this state directory has made it (a plan makes none)."""
    from engine.install.deploykey import deploy_key_path

    public = deploy_key_path(state_dir, fleet.name).with_suffix(".pub")
    deploy = (public.read_text(encoding="ascii").strip(),) if public.is_file() else ()
    return (*fleet.ssh.authorized_keys, *deploy)


def _token(fleet: Fleet, spec: Path) -> str:
    env = fleet.provider.token_env
    if env is None:
        return ""  # the local provider needs no account
    value = token_from_env(env)
    if not value:
        raise EngineError(
            f"reading what exists on {fleet.provider.name} needs an API token: export {env}=... "
            f"(a read-only token is enough), or compare with the spec in git without any "
            f"credentials: engine preview {spec} --against-ref origin/main"
        )
    return value


def _stored(fleet: Fleet, state_dir: Path, state: str | None) -> tuple[Recorded, AppsObserved]:
    """What the store holds of `fleet`, and what apps run where, asked of the agents the
    store knows how to reach."""
    from engine.apps.observe import observe_apps
    from engine.state.store import open_store, state_url, store_exists

    url = state_url(state_dir, state)
    if not store_exists(url):
        return Recorded(), AppsObserved()
    with open_store(url) as store:
        known = recorded(store, fleet.name)
        return known, observe_apps(fleet, store, state_dir, known.records)


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise EngineError("--against-ref needs git, and git is not installed") from None


def spec_at_ref(spec: Path, ref: str) -> tuple[bytes | None, str]:
    """The spec's bytes as committed at `ref` (None if it did not exist), and its git path."""
    folder = spec.resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top.returncode != 0:
        raise EngineError(
            f"--against-ref compares with git history, but {spec} is not in a git work tree"
        )
    root = Path(top.stdout.decode().strip())
    relative = spec.resolve().relative_to(root).as_posix()
    if _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root).returncode != 0:
        raise EngineError(
            f"git knows no commit {ref!r}; fetch it first (e.g. git fetch origin main) "
            "or name a branch, tag or commit that exists"
        )
    shown = _git(["show", f"{ref}:{relative}"], root)
    if shown.returncode != 0:
        return None, relative
    return shown.stdout, relative


def _against_ref(
    fleet: Fleet, catalog: Catalog, spec: Path, ref: str, state_dir: Path, delete_orphans: bool
) -> Plan:
    raw, relative = spec_at_ref(spec, ref)
    notes: list[str] = []
    actual: list[ActualServer] = []
    records: list[ServerRecord] = []
    listed: tuple[CloudResource, ...] = ()
    # Both sides with the same engine addresses and keys: only what the specs say differs.
    keys = fleet.ssh.authorized_keys
    apps = AppsObserved()
    if raw is None:
        notes.append(f"{relative} does not exist at {ref}: every server is new")
    else:
        try:
            old = parse_spec(raw, file=f"{ref}:{relative}", state_dir=state_dir)
        except SpecError as exc:
            raise EngineError(
                f"the spec at {ref} does not validate, so there is nothing to compare with:\n{exc}"
            ) from None
        if (old.name, old.provider.name) != (fleet.name, fleet.provider.name):
            notes.append(
                f"at {ref} this spec was fleet {old.name} on {old.provider.name}: its servers "
                f"do not belong to {fleet.name} on {fleet.provider.name} and are not touched"
            )
        else:
            old_catalog = load_catalog(str(old.provider.name), state_dir)
            # Both sides with the same control plane: only what the specs say differs.
            installed = fleet_digest(old, "", ())
            old_servers = expand_fleet(old, old_catalog)
            for server in old_servers:
                built = as_built(old, server, old_catalog)
                actual.append(built)
                records.append(as_recorded(old, built, server.group, installed))
            listed = declared(old, old_catalog, {}, engine_sources=(), ssh_public_keys=keys)
            apps = as_deployed(old, old_servers)
    options = DiffOptions(
        delete_orphans=delete_orphans,
        compared_with=f"the spec at {ref}",
        install_hash=fleet_digest(fleet, "", ()),
    )
    pinned = {server.name: server.location for server in actual}
    plan = diff_fleet(
        fleet,
        catalog,
        actual,
        records,
        options=options,
        declared=declared(fleet, catalog, pinned, engine_sources=(), ssh_public_keys=keys),
        listed=listed,
    )
    plan = with_apps(plan, fleet, catalog, actual, apps)
    return dataclasses.replace(plan, warnings=(*notes, *plan.warnings))
