"""The diff: desired servers against actual servers and the store's records -> a Plan. Pure.

Inputs: the Fleet (expanded with engine.placement, existing servers pinned to where they
are), the provider's owned servers (engine.providers), the state store's records, unowned
servers whose names the plan would take, what each agent said (engine.health), how often
each server failed since it was last ready, and DiffOptions (with the install digest the
orchestrator computed: engine.install.digest). The provider's word is the truth and the
store's stage is history: a record that says ready proves nothing. Rules, per server name:

    desired, missing at the provider ........ create (unless the store recorded its create
                                              less than list_lag_s ago: the provider's list
                                              may lag, so it is not planned twice); the
                                              reasons say what the store remembers of it
    desired, name held by an unowned server . problem name_taken: never touch it
    made by a fleet of this name with another
      fleet id (another state directory) .... one problem owned_elsewhere for them all; with
                                              options.adopt, replace (taken over: made anew
                                              with this engine's keys)
    location or image differs ............... replace, with the cause (DigitalOcean: also a
                                              VPC move or a public address that cannot go;
                                              local: also labels, fixed on a container)
    server type differs ..................... resize (disruptive); a type with a smaller disk
                                              than the server has is a problem: disks do not
                                              shrink
    labels, firewalls, networks, backups,
    placement group, public addresses ....... update in place (placement and addresses need
                                              the server powered off: disruptive)
    off at the provider ..................... power on (with how and when it stopped, where
                                              the provider says); unless it failed before it
                                              phoned home: then retry
    recorded failed ......................... retry: installed again if it phoned home and
                                              runs, else made anew (local), rebuilt with fresh
                                              user_data (Hetzner) or replaced (DigitalOcean,
                                              or a server stuck starting); with what failed
                                              and how often
    recorded ready, its agent silent ........ reinstall (an agent that cannot be reached from
                                              here is a warning, not a verdict); recorded
                                              unhealthy: reinstall too
    install digest differs .................. reinstall (unless replaced, powered on or
                                              retried anyway: those install it too)
    exists, but the store has no record ..... adopt (record it; the engine installs it)
    exists, recorded without an id .......... adopt (a run that died mid-create made it)
    owned, not desired, recorded ............ delete
    owned, not desired, not recorded ........ an orphan: left alone with a warning, deleted
                                              only when options.delete_orphans
    two owned servers with one name ......... the one the store knows (else the oldest) is
                                              kept, the other is deleted (or is an orphan)

A server can get several changes, executed in order: adopt, then replace or resize and
update, then one repair (power on, retry or reinstall). Limits are checked on the fleet as
the plan leaves it (engine.quota); costs come from the catalog (engine.cost). diff(x, x) is
empty.

Resources besides servers are compared by kind and name, the declared ones (what the program
would make: stacks.declared, computed by the orchestrator) against the listed ones (the
reader's `read_resources`), property by property:

    declared, not listed .................... create
    listed (and owned), not declared ........ delete (disruptive when servers hang on it)
    a declared property differs ............. (properties the declared side leaves out, as
                                              it does what it cannot know, are not compared)
    a `fixed` property differs .............. replace (disruptive: its servers named, with
                                              what it does to them)
    other properties differ ................. update in place

Load balancers are priced from the catalog (type and location) into the plan's cost.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from engine.catalog import Catalog
from engine.cost import load_balancer_price, monthly_price, server_usage
from engine.exposure import Exposure, fleet_exposures
from engine.health import AgentAnswer, AgentSeen, Power, power_of
from engine.model import (
    LABEL_GROUP,
    Fleet,
    Image,
    ImageKind,
    ProviderName,
    Server,
    Stage,
    fleet_resource_name,
)
from engine.placement import expand_fleet
from engine.plan import (
    NO_USAGE,
    Action,
    ApiCallCount,
    Change,
    FieldChange,
    Plan,
    Problem,
    ResourceChange,
    RetryBy,
    Usage,
    estimate_writes,
    total_usage,
)
from engine.providers import ActualServer, CloudResource, ResourceKind, Snapshot
from engine.quota import check_limits
from engine.state import ServerRecord

# A create recorded in these stages is not coming: the list lag does not excuse its absence.
_ABANDONED = frozenset({Stage.FAILED, Stage.DELETING})


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffOptions:
    """How to diff: orphan deletion, the list-lag window, and what the actual state is.

    `install_hash` is the digest of everything the install would put on a server now
    (engine.install.digest.install_digest, computed by the orchestrator); "" compares none.
    `fleet_id` is this state directory's id of the fleet (None: it has none yet); servers
    carrying another one are another engine's, taken over only with `adopt`. `destroying`
    says the plan is `engine destroy`'s: everything goes because the fleet does.
    """

    delete_orphans: bool = False
    now: dt.datetime | None = None
    list_lag_s: float = 0.0
    compared_with: str = "the provider"
    api_calls: ApiCallCount | None = None
    install_hash: str = ""
    fleet_id: str | None = None
    adopt: bool = False
    destroying: bool = False


def is_same_image(desired: Image, actual: Image | None) -> bool:
    """Whether a server made from `actual` matches `desired` (unknown images match).

    A snapshot matches when it carries at least the labels the spec selects by: a newer
    snapshot with those labels does not replace running servers.
    """
    if actual is None:
        return True
    if desired.kind is ImageKind.SNAPSHOT:
        return actual.kind is ImageKind.SNAPSHOT and set(desired.labels) <= set(actual.labels)
    return actual.kind is desired.kind and actual.name == desired.name


_NUMBERED = re.compile(r"(.*)-(\d+)")


def natural_key(name: str) -> tuple[str, int]:
    """Sort key that puts web-9 before web-10."""
    match = _NUMBERED.fullmatch(name)
    return (match[1], int(match[2])) if match else (name, 0)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _when(at: dt.datetime | None) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "never"


def _wants(fleet: Fleet, group: str) -> str:
    count = fleet.group(group).count
    return f"{group} wants {count} server{'' if count == 1 else 's'}"


class _Differ:
    def __init__(
        self,
        fleet: Fleet,
        catalog: Catalog,
        records: Sequence[ServerRecord],
        unowned: Sequence[ActualServer],
        options: DiffOptions,
        agents: Mapping[str, AgentSeen],
        failures: Mapping[str, int],
    ) -> None:
        self.fleet = fleet
        self.catalog = catalog
        self.records = {r.name: r for r in records}
        self.unowned = {u.name: u for u in unowned}
        self.options = options
        self.agents = agents
        self.failures = failures
        self.provider = fleet.provider.name
        self.install_hash = options.install_hash
        self.changes: list[Change] = []
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        # The fleet's usage before and after, server by server (summed once, at the end).
        self.before: list[Usage] = []
        self.after: list[Usage] = []
        self.unchanged = 0
        self.held_elsewhere: set[str] = set()
        self._unpriced: set[tuple[str, str]] = set()
        # Servers come by thousands in a few shapes: each shape priced once, each list of
        # firewalls or networks named once.
        self._usages: dict[tuple[str, str, bool, bool, float], Usage] = {}
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Servers made anew with a resource the plan replaces (name -> why).
        self.replaced_with: Mapping[str, str] = {}

    # --- usage ---------------------------------------------------------------------------

    def usage(
        self, name: str, server_type: str, location: str, *, backups: bool, ipv4: bool, disk: float
    ) -> Usage:
        """A server's usage; warns once per type and location the catalog cannot price."""
        shape = (server_type, location, backups, ipv4, disk)
        known_usage = self._usages.get(shape)
        if known_usage is not None:
            return known_usage
        price = monthly_price(self.catalog, server_type, location, backups=False, ipv4=False)
        if price is None and (server_type, location) not in self._unpriced:
            self._unpriced.add((server_type, location))
            known = server_type in self.catalog.server_types
            what = f"a price for {server_type} in {location}" if known else server_type
            self.warnings.append(
                f"the {self.catalog.provider} catalog has no {what} ({name}); its cost "
                f"{'' if known else 'and size '}count as zero: refresh the catalog "
                f"(engine catalog refresh {self.catalog.provider})"
            )
        usage = self._usages[shape] = server_usage(
            self.catalog, server_type, location, backups=backups, ipv4=ipv4, disk_gb=disk
        )
        return usage

    def actual_usage(self, s: ActualServer) -> Usage:
        return self.usage(
            s.name, s.server_type, s.location, backups=s.backups, ipv4=s.ipv4 is not None,
            disk=s.disk_gb,
        )  # fmt: skip

    def desired_usage(self, s: Server, kept_disk_gb: float = 0) -> Usage:
        return self.usage(
            s.name, s.server_type, s.location, backups=s.backups, ipv4=s.public_ipv4,
            disk=kept_disk_gb,
        )  # fmt: skip

    # --- the walk ------------------------------------------------------------------------

    def run(self, actual: Sequence[ActualServer]) -> None:
        foreign = [a for a in actual if self.is_foreign(a)]
        if foreign and not self.options.adopt:
            # One problem says it all; they are neither created again nor changed here.
            self.owned_elsewhere(foreign)
            for held in foreign:
                usage = self.actual_usage(held)
                self.before.append(usage)
                self.after.append(usage)
                self.held_elsewhere.add(held.name)
            actual = [a for a in actual if not self.is_foreign(a)]
        keepers, extras = self.split_duplicates(actual)
        pinned = {a.name: a.location for a in keepers.values()}
        desired = expand_fleet(self.fleet, self.catalog, pinned)
        for server in desired:
            self.desired(server, keepers.get(server.name))
        wanted = {s.name for s in desired}
        gone = [a for a in keepers.values() if a.name not in wanted]
        for leftover in sorted(gone + extras, key=lambda a: natural_key(a.name)):
            # A second server under a desired name goes: the first is recorded, or adopted
            # by this very plan, so the next plan would delete it anyway.
            keeps = leftover in extras and leftover.name in wanted
            self.undesired(leftover, is_duplicate=leftover in extras, is_recorded=keeps)

    def is_foreign(self, server: ActualServer) -> bool:
        """Made by a fleet of this name that another state directory manages."""
        return bool(server.fleet_id) and server.fleet_id != self.options.fleet_id

    def owned_elsewhere(self, foreign: Sequence[ActualServer]) -> None:
        ids = ", ".join(sorted({s.fleet_id for s in foreign}))
        ours = self.options.fleet_id
        names = ", ".join(sorted((s.name for s in foreign), key=natural_key))
        self.problems.append(
            Problem(
                code="owned_elsewhere",
                path="fleet",
                message=f"{self.provider} has servers of fleet {self.fleet.name} ({names}) made "
                f"by fleet id {ids}, but this state directory knows {self.fleet.name} as "
                + (f"fleet id {ours}" if ours else "a new fleet (no id yet)")
                + ": another state directory manages them; nothing was changed",
                hint="run with the state directory that made them (--state-dir or --state), "
                "or take them over with `engine up --adopt`: each is made anew with this "
                "engine's keys",
            )
        )

    def split_duplicates(
        self, actual: Sequence[ActualServer]
    ) -> tuple[dict[str, ActualServer], list[ActualServer]]:
        """One server per name; a second one with the same name (DigitalOcean) is an extra."""
        by_name: dict[str, list[ActualServer]] = {}
        for server in actual:
            by_name.setdefault(server.name, []).append(server)
        keepers: dict[str, ActualServer] = {}
        extras: list[ActualServer] = []
        for name, servers in by_name.items():
            if len(servers) == 1:
                keepers[name] = servers[0]
                continue
            record = self.records.get(name)
            known = record.provider_id if record else ""
            far_future = dt.datetime.max.replace(tzinfo=dt.UTC)
            ranked = sorted(
                servers,
                key=lambda s: (
                    s.provider_id != known,
                    s.created or far_future,
                    natural_key(s.provider_id),
                ),
            )
            keepers[name] = ranked[0]
            extras += ranked[1:]
        return keepers, extras

    def desired(self, server: Server, actual: ActualServer | None) -> None:
        record = self.records.get(server.name)
        if actual is None and server.name in self.held_elsewhere:
            return
        if actual is None:
            self.missing(server, record)
            return
        usage_before = self.actual_usage(actual)
        replace_causes = self.replace_causes(server, actual)
        if self.is_foreign(actual):
            replace_causes = [
                f"it carries fleet id {actual.fleet_id}: another state directory made it",
                "taken over as asked (--adopt): the other engine's keys are not here",
            ]
        usage_after = self.desired_usage(server, 0 if replace_causes else actual.disk_gb)
        self.before.append(usage_before)
        self.after.append(usage_after)
        usage = (usage_before, usage_after)
        changes: list[Change] = []
        if replace_causes:
            changes.append(
                Change(
                    action=Action.REPLACE,
                    server=server.name,
                    group=server.group,
                    reasons=(
                        *replace_causes,
                        "the server is deleted and created anew: its disk and addresses are lost",
                    ),
                    disruptive=True,
                    fields=self.fields(server, actual),
                    before=actual,
                    after=server,
                    usage_before=usage_before,
                    usage_after=usage_after,
                )
            )
        else:
            # A record without an id is a create that never got as far as recording it (the
            # run died mid-way): the server it made is adopted, never made a second time.
            adopting = record is None or record.provider_id != actual.provider_id
            if adopting:
                changes.append(self.adopt(server, actual, record))
            resize = self.resize(server, actual, usage)
            if resize is not None:
                changes.append(resize)
                usage = (NO_USAGE, NO_USAGE)  # the resize carries the cost change
            update = self.update(server, actual, usage)
            if update is not None:
                changes.append(update)
            repair = None
            if record is not None and not adopting:
                repair = self.repair(server, actual, record)
            elif power_of(actual.status) is Power.OFF:  # adopted, and off
                repair = self.power_on(server, actual, None, stale=False)
            if repair is not None:
                changes.append(repair)
        if changes:
            self.changes += changes
        else:
            self.unchanged += 1

    def missing(self, server: Server, record: ServerRecord | None) -> None:
        usage = self.desired_usage(server)
        self.after.append(usage)
        if record is not None and self.is_lagging(record):
            self.before.append(usage)
            self.unchanged += 1
            self.warnings.append(
                f"{server.name} was created moments ago (id {record.provider_id}) and "
                f"{self.provider} does not list it yet; it is not planned again"
            )
            return
        clash = self.unowned.get(server.name)
        if clash is not None:
            owner = dict(clash.labels).get("fleet")
            whose = f"belongs to fleet {owner}" if owner else "does not carry this fleet's labels"
            self.problems.append(
                Problem(
                    code="name_taken",
                    path=f"servers.{server.name}",
                    message=f"a server named {server.name} exists (id {clash.provider_id}) but "
                    f"{whose}; the engine will not touch it",
                    hint="rename or delete that server, or rename this group",
                )
            )
            return
        reasons = [_wants(self.fleet, server.group)]
        if record is not None and record.stage is Stage.FAILED:
            reasons.append(f"{self.failed(record)}; {self.provider} has no such server")
        elif record is not None and record.provider_id:
            was = "was ready" if record.stage in (Stage.READY, Stage.UNHEALTHY) else "was made"
            reasons.append(
                f"the state store records it (id {record.provider_id}) but {self.provider} has "
                f"no such server: it {was}, and was deleted outside the engine"
            )
        self.changes.append(
            Change(
                action=Action.CREATE,
                server=server.name,
                group=server.group,
                reasons=tuple(reasons),
                fields=self.fields(server, None),
                after=server,
                usage_after=usage,
            )
        )

    # --- repairs: what the provider and the agent say against what the store remembers ------

    def failed(self, record: ServerRecord) -> str:
        """`failed (3 times): <why>`, from the record and the failures counted since."""
        count = max(1, self.failures.get(record.name, 0))
        times = "once" if count == 1 else f"{count} times"
        return f"it failed ({times}): {record.stage_reason or 'no reason recorded'}"

    def repair(self, server: Server, actual: ActualServer, record: ServerRecord) -> Change | None:
        """The one repair a server needs, if any: power on, retry or reinstall."""
        power = power_of(actual.status)
        phoned_home = bool(record.host_keys)
        stale = record.install_hash not in (None, self.install_hash) and bool(self.install_hash)
        if power is Power.OFF and (phoned_home or record.stage is not Stage.FAILED):
            return self.power_on(server, actual, record, stale=stale)
        if record.stage is Stage.FAILED:
            return self.retry(server, actual, record, power)
        reasons: list[str] = []
        fields: list[FieldChange] = []
        agent = self.agents.get(server.name)
        settled = record.stage in (Stage.READY, Stage.UNHEALTHY) and power is Power.ON
        if settled and agent is not None and agent.answer is AgentAnswer.SILENT:
            heard = agent.last_heartbeat_at
            since = f"last heard {_when(heard)}" if heard else "never heard"
            reasons.append(
                f"the store says {record.stage}, but its agent is silent ({since}; "
                f"{agent.detail}): installed again"
            )
            fields.append(FieldChange(field="agent", before="silent", after="answering"))
        elif record.stage is Stage.UNHEALTHY and power is Power.ON:
            # Only a heartbeat makes it ready again, and the install waits for one.
            reasons.append(
                "the store says unhealthy (its agent missed heartbeats): installed again"
            )
            fields.append(FieldChange(field="agent", before="unhealthy", after="answering"))
        elif settled and agent is not None and agent.answer is AgentAnswer.UNREACHABLE:
            self.warnings.append(
                f"{server.name}: its agent cannot be reached from here ({agent.detail}); "
                "whether it is alive is not known"
            )
        if stale:
            reasons.append(
                f"installed with {record.install_hash}; what the install puts on a server now "
                f"hashes to {self.install_hash}"
            )
            fields.append(
                FieldChange(
                    field="install", before=str(record.install_hash), after=self.install_hash
                )
            )
        if not reasons:
            return None
        return Change(
            action=Action.REINSTALL,
            server=server.name,
            group=server.group,
            reasons=tuple(reasons),
            fields=tuple(fields),
            before=actual,
            after=server,
        )

    def power_on(
        self, server: Server, actual: ActualServer, record: ServerRecord | None, *, stale: bool
    ) -> Change:
        how = f"{self.provider} says it is {actual.status}"
        if actual.exit_code is not None:
            how += f" (exit code {actual.exit_code}"
            how += f", since {_when(actual.stopped_at)})" if actual.stopped_at else ")"
        elif actual.stopped_at is not None:
            how += f" (since {_when(actual.stopped_at)})"
        said = f"the store says {record.stage}" if record else "the store had no record of it"
        reasons = [f"{said}, but {how}"]
        if record is not None and record.stage is Stage.FAILED:
            reasons.append(self.failed(record))
        if record is not None and record.host_keys:
            reasons.append("started, then installed again (which checks it and starts its agent)")
        else:
            reasons.append("started, then looked for by polling (its phone-home went already)")
        if stale:
            reasons.append(f"the install settings changed too ({self.install_hash})")
        return Change(
            action=Action.POWER_ON,
            server=server.name,
            group=server.group,
            reasons=tuple(reasons),
            fields=(FieldChange(field="power", before=actual.status, after="running"),),
            before=actual,
            after=server,
            failed_attempts=self.failures.get(server.name, 0),
        )

    def retry_by(self, record: ServerRecord, power: Power) -> tuple[RetryBy, str]:
        """How to try a failed server again, and why that way."""
        if record.host_keys and power is Power.ON:
            return RetryBy.INSTALL, "it phoned home and runs: its install runs again"
        if self.provider is ProviderName.LOCAL:
            return RetryBy.REMAKE, "its container is removed and made anew from fresh user_data"
        if self.provider is ProviderName.HCLOUD and power is not Power.BUSY:
            return (
                RetryBy.REBUILD,
                "it never phoned home: rebuilt with fresh user_data (same id and addresses)",
            )
        why = (
            "it never got out of starting"
            if power is Power.BUSY
            else "it never phoned home, and DigitalOcean keeps a droplet's first user_data"
        )
        return RetryBy.REPLACE, f"{why}: deleted and created anew"

    def retry(
        self, server: Server, actual: ActualServer, record: ServerRecord, power: Power
    ) -> Change:
        by, how = self.retry_by(record, power)
        return Change(
            action=Action.RETRY,
            server=server.name,
            group=server.group,
            reasons=(self.failed(record), how),
            disruptive=by is not RetryBy.INSTALL,
            fields=(FieldChange(field="stage", before=str(record.stage), after="ready"),),
            before=actual,
            after=server,
            retry_by=by,
            failed_attempts=self.failures.get(server.name, 0),
        )

    def is_lagging(self, record: ServerRecord) -> bool:
        now = self.options.now
        if not (record.provider_id and record.created_at and now) or record.stage in _ABANDONED:
            return False
        return (now - record.created_at).total_seconds() <= self.options.list_lag_s

    def adopt(self, server: Server, actual: ActualServer, record: ServerRecord | None) -> Change:
        if record is None:
            reason = "it carries this fleet's labels but the state store has no record of it"
        elif not record.provider_id:
            reason = (
                f"a run made it (id {actual.provider_id}) but ended before recording it, as "
                "when the engine dies during a create"
            )
        else:
            reason = (
                f"the state store tracks id {record.provider_id}, the provider has "
                f"id {actual.provider_id} under this name"
            )
        return Change(
            action=Action.ADOPT,
            server=server.name,
            group=server.group,
            reasons=(reason, "it is recorded and (re)installed, not recreated"),
            fields=(
                FieldChange(
                    field="provider_id",
                    before=record.provider_id if record else "",
                    after=actual.provider_id,
                ),
            ),
            before=actual,
            after=server,
        )

    # --- comparisons -------------------------------------------------------------------------

    def names(self, short: tuple[str, ...]) -> tuple[str, ...]:
        named = self._names.get(short)
        if named is None:
            named = self._names[short] = tuple(
                sorted(fleet_resource_name(self.fleet.name, n) for n in short)
            )
        return named

    def shown(self, names: Iterable[str]) -> str:
        prefix = f"{self.fleet.name}-"
        return ", ".join(n.removeprefix(prefix) for n in names) or "(none)"

    def replace_causes(self, server: Server, actual: ActualServer) -> list[str]:
        causes = []
        if actual.location != server.location:
            # Placement pins a server to any location still allowed, so it moves only when
            # its location left the group's list.
            group = self.fleet.group(server.group)
            causes.append(
                f"location {actual.location} is no longer among {group.name}'s locations "
                f"({', '.join(group.locations)})"
            )
        if server.name in self.replaced_with:
            causes.append(self.replaced_with[server.name])
        if not is_same_image(server.image, actual.image):
            shown = actual.image.describe() if actual.image else "unknown"
            causes.append(f"image {shown} -> {server.image.describe()}")
        if self.provider is ProviderName.LOCAL and self.label_changes(server, actual):
            causes.append("labels differ, and a local machine's are fixed when it is made")
        if actual.image is None:
            self.warnings.append(
                f"{server.name}: {self.provider} no longer knows the image it was made from; "
                "the image is not compared"
            )
        if self.provider is ProviderName.DIGITALOCEAN:
            if server.networks and self.names(server.networks) != actual.networks:
                wanted = self.shown(self.names(server.networks))
                causes.append(
                    f"VPC {self.shown(actual.networks)} -> {wanted}: DigitalOcean cannot move "
                    "a droplet to another VPC"
                )
            if server.public_ipv4 != (actual.ipv4 is not None):
                causes.append("DigitalOcean sets a droplet's public IPv4 only when creating it")
            if not server.public_ipv6 and actual.ipv6 is not None:
                causes.append("DigitalOcean cannot take IPv6 away from a droplet")
        return causes

    def resize(
        self, server: Server, actual: ActualServer, usage: tuple[Usage, Usage]
    ) -> Change | None:
        if server.server_type == actual.server_type:
            return None
        new = self.catalog.server_types[server.server_type]
        old = self.catalog.server_types.get(actual.server_type)
        if new.disk_gb < actual.disk_gb:
            bigger = sorted(
                (
                    t
                    for t in self.catalog.server_types.values()
                    if t.disk_gb >= actual.disk_gb
                    and t.is_available(server.location)
                    and t.architecture == new.architecture
                ),
                key=lambda t: t.prices[server.location],
            )
            offer = ", ".join(t.name for t in bigger[:3])
            self.problems.append(
                Problem(
                    code="disk_shrink",
                    path=f"groups.{server.group}.server_type",
                    message=f"{server.name} has a {actual.disk_gb} GB disk; {new.name} has "
                    f"{new.disk_gb} GB and disks cannot shrink",
                    hint=f"choose a type with at least {actual.disk_gb} GB of disk"
                    + (f" ({offer})" if offer else "")
                    + ", or replace the server",
                )
            )
            return None
        detail = (
            f" ({old.cores} -> {new.cores} vCPU, {old.memory_gb:g} -> {new.memory_gb:g} GB memory)"
            if old
            else ""
        )
        reasons = [
            f"server type {actual.server_type} -> {server.server_type}{detail}",
            "the server is powered off while its type changes",
        ]
        if new.disk_gb > actual.disk_gb:
            reasons.append(
                f"its disk grows from {actual.disk_gb} to {new.disk_gb} GB and cannot shrink back"
            )
        return Change(
            action=Action.RESIZE,
            server=server.name,
            group=server.group,
            reasons=tuple(reasons),
            disruptive=True,
            fields=(
                FieldChange(
                    field="server_type", before=actual.server_type, after=server.server_type
                ),
            ),
            before=actual,
            after=server,
            usage_before=usage[0],
            usage_after=usage[1],
        )

    def update(
        self, server: Server, actual: ActualServer, usage: tuple[Usage, Usage]
    ) -> Change | None:
        fields = list(self.label_changes(server, actual))
        reasons = ["labels differ"] if fields else []
        disruptive: list[str] = []
        for kind, desired_names, actual_names in (
            ("firewalls", self.names(server.firewalls), actual.firewalls),
            ("networks", self.names(server.networks), actual.networks),
        ):
            if kind == "networks" and self.provider is ProviderName.DIGITALOCEAN:
                continue  # a VPC change is a replacement there
            if desired_names != actual_names:
                fields.append(
                    FieldChange(
                        field=kind,
                        before=self.shown(actual_names),
                        after=self.shown(desired_names),
                    )
                )
                reasons.append(f"{kind} membership differs")
        if server.backups != actual.backups:
            fields.append(
                FieldChange(
                    field="backups", before=_yes(actual.backups), after=_yes(server.backups)
                )
            )
            reasons.append("backups are " + ("turned on" if server.backups else "turned off"))
        if server.placement_group != actual.placement_group:
            fields.append(
                FieldChange(
                    field="placement_group",
                    before=actual.placement_group or "",
                    after=server.placement_group or "",
                )
            )
            disruptive.append("the server is powered off to change its placement group")
        if self.provider is ProviderName.HCLOUD:
            for field, want, has in (
                ("public_ipv4", server.public_ipv4, actual.ipv4 is not None),
                ("public_ipv6", server.public_ipv6, actual.ipv6 is not None),
            ):
                if want != has:
                    fields.append(FieldChange(field=field, before=_yes(has), after=_yes(want)))
                    disruptive.append("the server is powered off to change its public addresses")
        elif (
            self.provider is ProviderName.DIGITALOCEAN
            and server.public_ipv6
            and actual.ipv6 is None
        ):
            fields.append(FieldChange(field="public_ipv6", before="no", after="yes"))
            reasons.append("IPv6 is turned on")
        # Local machines have a bridge address only: nothing public to compare.
        if not fields:
            return None
        return Change(
            action=Action.UPDATE,
            server=server.name,
            group=server.group,
            reasons=tuple(dict.fromkeys(reasons + disruptive)),
            disruptive=bool(disruptive),
            fields=tuple(fields),
            before=actual,
            after=server,
            usage_before=usage[0],
            usage_after=usage[1],
        )

    def label_changes(self, server: Server, actual: ActualServer) -> tuple[FieldChange, ...]:
        """The labels that differ, key by key."""
        if server.labels == actual.labels:
            return ()
        wanted, have = dict(server.labels), dict(actual.labels)
        return tuple(
            FieldChange(field=f"labels.{key}", before=have.get(key, ""), after=wanted.get(key, ""))
            for key in sorted(wanted.keys() | have.keys())
            if wanted.get(key) != have.get(key)
        )

    def fields(self, server: Server, actual: ActualServer | None) -> tuple[FieldChange, ...]:
        """What a new server looks like next to the old one (create and replace)."""
        rows = [
            ("server_type", actual.server_type if actual else "", server.server_type),
            ("location", actual.location if actual else "", server.location),
            (
                "image",
                actual.image.describe() if actual and actual.image else "",
                server.image.describe(),
            ),
        ]
        if server.firewalls or (actual and actual.firewalls):
            rows.append(
                (
                    "firewalls",
                    self.shown(actual.firewalls) if actual else "",
                    self.shown(self.names(server.firewalls)),
                )
            )
        if server.networks or (actual and actual.networks):
            rows.append(
                (
                    "networks",
                    self.shown(actual.networks) if actual else "",
                    self.shown(self.names(server.networks)),
                )
            )
        if server.backups or (actual and actual.backups):
            rows.append(("backups", _yes(actual.backups) if actual else "", _yes(server.backups)))
        changed = tuple(
            FieldChange(field=field, before=before, after=after)
            for field, before, after in rows
            if actual is None or before != after
        )
        if actual is not None and self.provider is ProviderName.LOCAL:
            changed += self.label_changes(server, actual)  # a replacement's cause there
        return changed

    def undesired(self, server: ActualServer, *, is_duplicate: bool, is_recorded: bool) -> None:
        usage = self.actual_usage(server)
        self.before.append(usage)
        record = self.records.get(server.name)
        is_recorded = is_recorded or (
            record is not None and (is_duplicate or record.provider_id in ("", server.provider_id))
        )
        group = dict(server.labels).get(LABEL_GROUP, "")
        if self.options.destroying:
            reason = _destroyed(self.fleet)
        elif is_duplicate:
            reason = (
                f"a second server named {server.name} (created twice, e.g. by an interrupted "
                "run); the engine keeps one"
            )
        elif group and any(g.name == group for g in self.fleet.groups):
            reason = _wants(self.fleet, group)
        elif group:
            reason = f"the group {group} is no longer in the spec"
        else:
            reason = "the spec does not want it"
        if not is_recorded and not self.options.delete_orphans:
            self.after.append(usage)
            self.warnings.append(
                f"{server.name} (id {server.provider_id}) carries this fleet's labels but the "
                f"state store has no record of it, and {reason}: it is left alone "
                "(preview or up with --delete-orphans to delete it)"
            )
            return
        reasons = [reason]
        if not is_recorded:
            reasons.append("an orphan (no record in the state store); deleting it as asked")
        self.changes.append(
            Change(
                action=Action.DELETE,
                server=server.name,
                group=group,
                reasons=tuple(reasons),
                disruptive=True,
                before=server,
                usage_before=usage,
            )
        )


def as_built(fleet: Fleet, server: Server, catalog: Catalog, provider_id: str = "") -> ActualServer:
    """`server` as its provider would list it right after creating it exactly as specified.

    Addresses it cannot know are "" (present) or None (absent). A snapshot image is the
    snapshot the spec selects. Used to compare a spec with an earlier version of itself
    (`engine preview --against-ref`), and by the tests' model of a provider.
    """
    kind = catalog.server_types.get(server.server_type)
    return ActualServer(
        name=server.name,
        provider_id=provider_id,
        labels=server.labels,
        server_type=server.server_type,
        image=server.image,
        location=server.location,
        status="running",
        ipv4="" if server.public_ipv4 else None,
        ipv6="" if server.public_ipv6 else None,
        disk_gb=kind.disk_gb if kind else 0,
        backups=server.backups,
        firewalls=tuple(sorted(fleet_resource_name(fleet.name, f) for f in server.firewalls)),
        networks=tuple(sorted(fleet_resource_name(fleet.name, n) for n in server.networks)),
        placement_group=server.placement_group,
    )


def as_recorded(
    fleet: Fleet, server: ActualServer, group: str, install_hash: str | None = None
) -> ServerRecord:
    """The state store's record of a server the engine built and installed for `fleet`
    (with `install_hash`, the digest of its install)."""
    return ServerRecord(
        fleet=fleet.name,
        name=server.name,
        group=group,
        provider=str(fleet.provider.name),
        provider_id=server.provider_id,
        location=server.location,
        server_type=server.server_type,
        image=server.image.describe() if server.image else "",
        stage=Stage.READY,
        labels=server.labels,
        install_hash=install_hash,
    )


def _resource_cost(catalog: Catalog, resource: CloudResource | None, warnings: list[str]) -> float:
    """What a resource costs a month: load balancers by type and location, the rest nothing."""
    if resource is None or resource.kind is not ResourceKind.LOAD_BALANCER:
        return 0.0
    lb_type, location = resource.value("type"), resource.value("location")
    price = load_balancer_price(catalog, lb_type, location)
    if price is None:
        warnings.append(
            f"the {catalog.provider} catalog has no price for load balancer type {lb_type} in "
            f"{location} ({resource.name}); it counts as zero: refresh the catalog "
            f"(engine catalog refresh {catalog.provider})"
        )
        return 0.0
    return price


def _servers(names: Iterable[str]) -> str:
    shown = sorted(names, key=natural_key)
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    return ", ".join(shown[:10]) + more


_UNDECLARED = "the spec no longer declares it"


def _destroyed(fleet: Fleet) -> str:
    return f"fleet {fleet.name} is being destroyed"


def _resource_change(
    declared: CloudResource | None, listed: CloudResource | None, undeclared: str
) -> tuple[Action, tuple[FieldChange, ...], tuple[str, ...]] | None:
    """What to do with one resource, the fields that differ and why (`undeclared`: why one
    listed and not declared goes); None: nothing."""
    if listed is None:
        assert declared is not None
        return (
            Action.CREATE,
            tuple(FieldChange(field=k, before="", after=v) for k, v in declared.properties),
            ("the spec declares it and the provider has none",),
        )
    if declared is None:
        return Action.DELETE, (), (undeclared,)
    # Only what the declared side says is compared: what it cannot know here (the engine's
    # addresses, before any run recorded them) it leaves out.
    wanted, have = dict(declared.properties), dict(listed.properties)
    fields = tuple(
        FieldChange(field=key, before=have.get(key, ""), after=value)
        for key, value in sorted(wanted.items())
        if value != have.get(key, "")
    )
    if not fields:
        return None
    forced = [f.field for f in fields if f.field in declared.fixed]
    if forced:
        why = f"{', '.join(forced)} cannot change in place: it is made anew"
        return Action.REPLACE, fields, (why,)
    return Action.UPDATE, fields, (f"{', '.join(f.field for f in fields)} differ",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceDiff:
    """What `diff_resources` found: the changes, the monthly cost of the resources listed and
    of those after, warnings (prices the catalog lacks), and the servers a replacement makes
    anew with it (name -> why: a droplet whose VPC is made anew)."""

    changes: tuple[ResourceChange, ...] = ()
    monthly_before: float = 0.0
    monthly_after: float = 0.0
    warnings: tuple[str, ...] = ()
    replaced_servers: Mapping[str, str] = field(default_factory=dict)


def diff_resources(
    catalog: Catalog,
    declared: Sequence[CloudResource],
    listed: Sequence[CloudResource],
    *,
    undeclared: str = _UNDECLARED,
) -> ResourceDiff:
    """The changes that make the `listed` resources the `declared` ones (`undeclared` says why
    a listed one that is not declared goes). Pure."""
    wanted = {(r.kind, r.name): r for r in declared}
    have = {(r.kind, r.name): r for r in listed}
    changes: list[ResourceChange] = []
    warnings: list[str] = []
    replaced: dict[str, str] = {}
    before = after = 0.0
    for key in sorted(wanted.keys() | have.keys()):
        want, got = wanted.get(key), have.get(key)
        if want is None and got is not None and not got.owned:
            continue  # someone else's (a key reused by fingerprint): never ours to delete
        cost_before = _resource_cost(catalog, got, warnings)
        cost_after = _resource_cost(catalog, want, warnings)
        before += cost_before
        after += cost_after
        found = _resource_change(want, got, undeclared)
        if found is None:
            continue
        action, fields, reasons = found
        shown = want or got
        assert shown is not None
        # Only a replacement or a deletion touches its servers: thousands, named only then.
        servers: tuple[str, ...] = ()
        if action in (Action.REPLACE, Action.DELETE):
            touched = {*(want.servers if want else ()), *(got.servers if got else ())}
            servers = tuple(sorted(touched, key=natural_key))
        disruptive = bool(servers)
        if action is Action.REPLACE and want is not None and want.replaces_servers:
            for server in servers:
                replaced[server] = f"{key[0]} {key[1]} is made anew: {want.on_replace}"
        if disruptive:
            effect = (want.on_replace if want and action is Action.REPLACE else "") or (
                "they lose it"
            )
            reasons += (f"servers touched: {_servers(servers)} ({effect})",)
        changes.append(
            ResourceChange(
                action=action,
                kind=str(key[0]),
                name=key[1],
                reasons=reasons,
                fields=fields,
                disruptive=disruptive,
                servers=servers,
                logical=shown.logical,
                monthly_before=cost_before,
                monthly_after=cost_after,
            )
        )
    return ResourceDiff(
        changes=tuple(changes),
        monthly_before=round(before, 4),
        monthly_after=round(after, 4),
        warnings=tuple(warnings),
        replaced_servers=replaced,
    )


def plan_snapshots(
    plan: Plan,
    fleet: Fleet,
    snapshots: Sequence[Snapshot],
    *,
    delete: bool,
    spec: str,
    fleet_id: str | None,
) -> tuple[Plan, tuple[Snapshot, ...]]:
    """`engine destroy`'s plan with the fleet's `snapshots`, and those it deletes: with
    `delete` (--delete-snapshots), each snapshot this state directory made (its `fleet_id`);
    every other one is kept, with a warning that says so and how to delete it. Snapshots are
    backups: destroying a fleet never deletes them unasked, nor those of a fleet of the same
    name another state directory runs (or whose maker is not known). Pure."""
    ours = tuple(s for s in snapshots if delete and fleet_id and s.fleet_id == fleet_id)
    gone = tuple(
        ResourceChange(
            action=Action.DELETE,
            kind="snapshot",
            name=s.name,
            reasons=(f"{_destroyed(fleet)}, with its snapshots (--delete-snapshots)",),
        )
        for s in ours
    )
    kept = tuple(
        f"snapshot {s.name}"
        + (f" of {s.server}" if s.server else "")
        + (f" ({s.size_gb:.1f} GB)" if s.size_gb else "")
        + (
            " is kept: it carries no fleet id of this state directory (another one made it, "
            "or it is older than fleet ids on snapshots); delete it with the provider's tools "
            "if nobody needs it"
            if delete
            else " is kept: snapshots are backups (the provider keeps and may bill them); "
            f"`engine destroy {spec} --delete-snapshots` deletes them"
        )
        for s in snapshots
        if s not in ours
    )
    planned = replace(plan, resources=(*plan.resources, *gone), warnings=(*plan.warnings, *kept))
    return planned, ours


def _exposure_problem(exposure: Exposure) -> Problem:
    return Problem(
        code="open_to_the_world",
        path=exposure.path,
        message=f"{exposure.describe()} opens group {exposure.group} to the whole Internet",
        hint="let in known addresses only (an office, a VPN, the servers' private network), or "
        "say it is meant: exposure: public, with a reason",
    )


def diff_fleet(
    fleet: Fleet,
    catalog: Catalog,
    actual: Sequence[ActualServer],
    records: Sequence[ServerRecord] = (),
    *,
    unowned: Sequence[ActualServer] = (),
    options: DiffOptions | None = None,
    agents: Mapping[str, AgentSeen] | None = None,
    failures: Mapping[str, int] | None = None,
    declared: Sequence[CloudResource] = (),
    listed: Sequence[CloudResource] = (),
) -> Plan:
    """The plan that turns `actual` (and the store's `records`) into `fleet`; `agents` are
    what the agents of servers recorded ready said, `failures` how often each server failed
    since it was last ready; `declared` are the resources besides servers that the fleet's
    program would make and `listed` those its provider has (both empty: not compared).

    >>> # diff_fleet(fleet, catalog, actual=(), records=()) -> one create per server
    """
    options = options or DiffOptions()
    if options.adopt and any(a.fleet_id not in ("", options.fleet_id) for a in actual):
        # Taken over from another state directory: its stack holds the firewalls, networks
        # and balancers listed, this one makes its own.
        listed = ()
    undeclared = _destroyed(fleet) if options.destroying else _UNDECLARED
    found = diff_resources(catalog, declared, listed, undeclared=undeclared)
    differ = _Differ(fleet, catalog, records, unowned, options, agents or {}, failures or {})
    differ.replaced_with = found.replaced_servers
    differ.run(actual)
    changes = tuple(differ.changes)
    resources = found.changes
    before = total_usage((*differ.before, Usage(monthly_cost=found.monthly_before)))
    after = total_usage((*differ.after, Usage(monthly_cost=found.monthly_after)))
    exposures = fleet_exposures(fleet)
    problems = [
        *differ.problems,
        *check_limits(fleet.limits, before, after, changes, catalog.currency),
        *(_exposure_problem(e) for e in exposures if e.is_blocking),
    ]
    api_calls = options.api_calls or ApiCallCount()
    return Plan(
        fleet=fleet.name,
        provider=str(fleet.provider.name),
        source=fleet.source,
        compared_with=options.compared_with,
        currency=catalog.currency,
        changes=changes,
        unchanged=differ.unchanged,
        before=before,
        after=after,
        install_hash=differ.install_hash,
        problems=tuple(problems),
        warnings=(*differ.warnings, *found.warnings),
        exposures=exposures,
        resources=resources,
        api_calls=ApiCallCount(
            read=api_calls.read,
            read_by_path=api_calls.read_by_path,
            retries=api_calls.retries,
            apply_estimate=estimate_writes(changes, resources),
        ),
    )
