"""Apps as they run against the spec: per server, what to deploy, update or remove, and the
order the rollout takes. Pure.

Inputs: the Fleet, its desired servers (placed), the names of those that exist now, and
`AppsObserved`: the app containers each server's agent reports (the state store's record for
a server whose agent did not answer), the definitions of the versions the store has seen,
and what the store last deployed where. Rules, per app and server:

    wanted, the spec's version runs ............ nothing
    wanted, another version runs ............... update (fields: what differs)
    wanted, nothing runs ....................... deploy (a new server, a new app, or drift: a
                                                 container removed or stopped by hand)
    running, not wanted (app or group gone) .... remove

An app leaving a server that holds a host port an app starting (or updated) there needs is
not removed on its own: the new app's change `replaces` it there, so that it stops just
before the new one starts, in the new app's step on that server, and is removed once that
one is healthy (put back if it is not). Removed first, everywhere, it would leave the port
served nowhere; removed after, the new app could not start. An app leaving is replaced by the
first app of the spec that needs its ports.

Env and secret changes name the variable, never a value. The rollout goes one group after
the other (in the spec's order), servers in name order, `update.max_unavailable` at a time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from engine.apps.versions import AppDefinition, app_definition, container_name
from engine.diff import natural_key
from engine.model import AppPort, Fleet, Server
from engine.plan import AppAction, AppChange, AppRollout, FieldChange, ReplacedApp, RolloutGroup
from engine.secrets import MASK


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningApp:
    """A version of an app in a server's containers: `running` or not (stopped, exited)."""

    app: str
    version: str
    container: str
    running: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AppsObserved:
    """What runs where. `running` holds the servers that were asked (or recorded);
    `unreachable` those whose agent did not answer (their `running` is the store's record)."""

    running: Mapping[str, tuple[RunningApp, ...]] = field(default_factory=dict)
    definitions: Mapping[tuple[str, str], AppDefinition] = field(default_factory=dict)
    recorded: Mapping[tuple[str, str], str] = field(default_factory=dict)
    unreachable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AppsPlan:
    changes: tuple[AppChange, ...] = ()
    rollouts: tuple[AppRollout, ...] = ()
    warnings: tuple[str, ...] = ()


def running_version(observed: AppsObserved, server: str, app: str) -> str | None:
    """The version of `app` running on `server`, or None."""
    for entry in observed.running.get(server, ()):
        if entry.app == app and entry.running:
            return entry.version
    return None


def definition_fields(
    before: AppDefinition | None, after: AppDefinition
) -> tuple[FieldChange, ...]:
    """What differs between two definitions; env values are masked, secrets named only."""
    if before is None:
        return ()
    rows: list[FieldChange] = []

    def row(name: str, old: str, new: str) -> None:
        if old != new:
            rows.append(FieldChange(field=name, before=old, after=new))

    row("image", before.image, after.image)
    row(
        "command",
        " ".join(before.command) if before.command is not None else "(the image's)",
        " ".join(after.command) if after.command is not None else "(the image's)",
    )
    old_env, new_env = dict(before.env), dict(after.env)
    for key in sorted(old_env.keys() | new_env.keys()):
        if old_env.get(key) != new_env.get(key):
            rows.append(
                FieldChange(
                    field=f"env.{key}",
                    before=MASK if key in old_env else "",
                    after=MASK if key in new_env else "",
                )
            )
    for key in sorted(set(before.secret_env) ^ set(after.secret_env)):
        rows.append(
            FieldChange(
                field=f"secret_env.{key}",
                before=MASK if key in before.secret_env else "",
                after=MASK if key in after.secret_env else "",
            )
        )
    row("ports", _ports(before), _ports(after))
    row("volumes", _volumes(before), _volumes(after))
    row("restart", str(before.restart), str(after.restart))
    row("resources.cpu", _number(before.cpus), _number(after.cpus))
    row("resources.memory", _memory(before.memory_mb), _memory(after.memory_mb))
    return tuple(rows)


def _ports(definition: AppDefinition) -> str:
    return ", ".join(p.describe() for p in definition.ports)


def _volumes(definition: AppDefinition) -> str:
    return ", ".join(v.describe() for v in definition.volumes)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _memory(value: int | None) -> str:
    return "" if value is None else f"{value}m"


def _changed_reason(fields: Sequence[FieldChange]) -> str:
    names = [f.field for f in fields]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"{shown} changed"


def diff_apps(
    fleet: Fleet,
    desired: Sequence[Server],
    existing: Collection[str],
    observed: AppsObserved,
    *,
    only: str | None = None,
) -> AppsPlan:
    """The app changes that make what `observed` saw into `fleet`'s apps (only the app named
    `only`, if given), and the rollout order of each app.

    >>> # one app on a group of three new servers -> three deploys, web-1, web-2, web-3
    """
    by_group: dict[str, list[Server]] = {}
    for server in desired:
        by_group.setdefault(server.group, []).append(server)
    group_of = {s.name: s.group for s in desired}
    # Every app's removals, whichever `only` names: an app leaving may hold the ports of
    # the one rolled out.
    definitions = {app.name: app_definition(app) for app in fleet.apps}
    starting: dict[str, list[AppChange]] = {}
    leaving: dict[str, list[AppChange]] = {}
    for app in fleet.apps:
        definition = definitions[app.name]
        wanted: list[Server] = [
            server for group in fleet.groups if group.name in app.on
            for server in by_group.get(group.name, ())
        ]  # fmt: skip
        if only is None or app.name == only:
            found = (
                _wanted(app.name, server, definition.version, definition, existing, observed)
                for server in wanted
            )
            starting[app.name] = [change for change in found if change is not None]
        wanted_names = {s.name for s in wanted}
        leaving[app.name] = _removals(app.name, observed, wanted_names, group_of, existing)
    for name in sorted(_apps_not_in_spec(fleet, observed)):
        leaving[name] = _removals(name, observed, set(), group_of, existing)
    taken: set[tuple[str, str]] = set()
    for name, found_changes in starting.items():
        starting[name] = [
            _taking_ports_over(change, definitions[name], leaving, observed, taken)
            for change in found_changes
        ]
    changes: list[AppChange] = []
    rollouts: list[AppRollout] = []
    for name in [*definitions, *sorted(leaving.keys() - definitions.keys())]:
        if only is not None and name != only:
            continue
        removals = [c for c in leaving[name] if (c.app, c.server) not in taken]
        app_changes = [*starting.get(name, ()), *removals]
        changes += app_changes
        if app_changes:
            version = definitions[name].version if name in definitions else ""
            rollouts.append(_rollout(fleet, name, version, app_changes))
    warnings = tuple(
        f"the agent of {server} did not answer: its apps are as the state store last recorded"
        for server in observed.unreachable
    )
    return AppsPlan(changes=tuple(changes), rollouts=tuple(rollouts), warnings=warnings)


def _wanted(
    app: str,
    server: Server,
    version: str,
    definition: AppDefinition,
    existing: Collection[str],
    observed: AppsObserved,
) -> AppChange | None:
    current = running_version(observed, server.name, app)
    if current == version:
        return None
    if current is None:
        recorded = observed.recorded.get((app, server.name))
        if server.name not in existing:
            reasons: tuple[str, ...] = ("a new server",)
        elif recorded:
            reasons = (
                f"version {recorded} was deployed here but its container is not running: "
                "removed or stopped outside the engine",
            )
        else:
            reasons = (f"{app} does not run here yet",)
        return AppChange(
            action=AppAction.DEPLOY,
            app=app,
            server=server.name,
            group=server.group,
            reasons=reasons,
            after=version,
        )
    before = observed.definitions.get((app, current))
    fields = definition_fields(before, definition)
    if before is None:
        fields = (FieldChange(field="version", before=current, after=version),)
        reason = f"version {current} runs here, which the state store has no definition of"
    else:
        reason = _changed_reason(fields)
    return AppChange(
        action=AppAction.UPDATE,
        app=app,
        server=server.name,
        group=server.group,
        reasons=(reason,),
        before=current,
        after=version,
        fields=fields,
    )


def _removals(
    app: str,
    observed: AppsObserved,
    wanted: Collection[str],
    group_of: Mapping[str, str],
    existing: Collection[str],
) -> list[AppChange]:
    """The app's containers on servers that stay in the fleet but should not run it."""
    out = []
    for server in sorted(observed.running, key=natural_key):
        if server in wanted or server not in group_of or server not in existing:
            continue
        current = running_version(observed, server, app)
        if current is None:
            continue
        out.append(
            AppChange(
                action=AppAction.REMOVE,
                app=app,
                server=server,
                group=group_of[server],
                reasons=(f"the spec no longer runs {app} on {group_of[server]}",),
                before=current,
            )
        )
    return out


def _taking_ports_over(
    change: AppChange,
    definition: AppDefinition,
    leaving: Mapping[str, Sequence[AppChange]],
    observed: AppsObserved,
    taken: set[tuple[str, str]],
) -> AppChange:
    """`change`, replacing the apps leaving its server that hold host ports `definition`
    needs (each then `taken`)."""
    replaces = []
    for removals in leaving.values():
        for removal in removals:
            if removal.server != change.server or (removal.app, removal.server) in taken:
                continue
            old = observed.definitions.get((removal.app, removal.before))
            ports = _shared_ports(definition.ports, old.ports) if old is not None else ()
            if ports:
                taken.add((removal.app, removal.server))
                replaces.append(ReplacedApp(app=removal.app, version=removal.before, ports=ports))
    if not replaces:
        return change
    reasons = tuple(
        f"takes {'port' if len(r.ports) == 1 else 'ports'} {', '.join(r.ports)} over from "
        f"{r.app}, which leaves {change.server}: {r.app} stops just before {change.app} "
        f"starts, and is removed once {change.app} is healthy (put back if it is not)"
        for r in replaces
    )
    return replace(change, reasons=(*change.reasons, *reasons), replaces=tuple(replaces))


def _shared_ports(new: Sequence[AppPort], old: Sequence[AppPort]) -> tuple[str, ...]:
    """The host ports (`80/tcp`) both publish, on addresses that overlap."""
    every = (None, "0.0.0.0", "::")  # noqa: S104 - addresses compared, nothing bound
    return tuple(
        dict.fromkeys(
            f"{p.host_port}/{p.protocol}"
            for p in new
            for q in old
            if (p.host_port, p.protocol) == (q.host_port, q.protocol)
            and (p.host_ip in every or q.host_ip in every or p.host_ip == q.host_ip)
        )
    )


def _apps_not_in_spec(fleet: Fleet, observed: AppsObserved) -> set[str]:
    named = {app.name for app in fleet.apps}
    return {
        entry.app
        for entries in observed.running.values()
        for entry in entries
        if entry.app not in named and entry.running
    }


def _rollout(fleet: Fleet, app: str, version: str, changes: Sequence[AppChange]) -> AppRollout:
    step = next((a.update.max_unavailable for a in fleet.apps if a.name == app), 1)
    groups = []
    for group in [g.name for g in fleet.groups]:
        servers = tuple(c.server for c in changes if c.group == group)
        if servers:
            groups.append(RolloutGroup(group=group, max_unavailable=step, servers=servers))
    return AppRollout(app=app, version=version, groups=tuple(groups))


def as_deployed(fleet: Fleet, desired: Sequence[Server]) -> AppsObserved:
    """`fleet`'s apps running exactly as specified on the `desired` servers: what an earlier
    version of a spec left behind (`engine preview --against-ref`)."""
    running: dict[str, list[RunningApp]] = {s.name: [] for s in desired}
    definitions = {}
    recorded = {}
    for app in fleet.apps:
        definition = app_definition(app)
        version = definition.version
        definitions[(app.name, version)] = definition
        for server in desired:
            if server.group in app.on:
                running[server.name].append(
                    RunningApp(
                        app=app.name, version=version, container=container_name(app.name, version)
                    )
                )
                recorded[(app.name, server.name)] = version
    return AppsObserved(
        running={k: tuple(v) for k, v in running.items()},
        definitions=definitions,
        recorded=recorded,
    )
