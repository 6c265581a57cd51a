"""A plan: what would change to make the actual fleet the desired one. Pure data.

`engine preview` renders a Plan (engine.render); `engine up` executes its changes in order.
Each Change is one operation on one server; a server can have several (adopt it, then
update its labels, then reinstall it). Problems block the plan: a plan with problems is not
executed. Warnings are things a person should read but that block nothing.

Besides the changes the spec asks for, a plan repairs what the world did to the fleet: a
server gone is created, one that is off is powered on, one that failed is retried (installed
again, or made anew: `RetryBy` says how), one whose agent fell silent is reinstalled.

Resources other than servers (firewalls, networks, load balancers, DNS records, placement
groups, SSH keys) get a ResourceChange each: created, updated in place, replaced (a property
the provider cannot change in place) or deleted, with the servers a change disrupts named.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from engine.exposure import Exposure
from engine.model import Server
from engine.providers import ActualServer


class Action(StrEnum):
    CREATE = "create"
    DELETE = "delete"
    UPDATE = "update"
    RESIZE = "resize"
    REPLACE = "replace"
    REINSTALL = "reinstall"
    ADOPT = "adopt"
    POWER_ON = "power_on"
    RETRY = "retry"


class RetryBy(StrEnum):
    """How a failed server is tried again."""

    INSTALL = "install"  # it phoned home and runs: its install runs again
    REMAKE = "remake"  # local: the container is removed and made anew from fresh user_data
    REBUILD = "rebuild"  # Hetzner: the disk is rebuilt with fresh user_data (same id, addresses)
    REPLACE = "replace"  # deleted and created anew


# The order in which summaries list actions.
ACTIONS = (
    Action.CREATE,
    Action.ADOPT,
    Action.POWER_ON,
    Action.RETRY,
    Action.UPDATE,
    Action.RESIZE,
    Action.REINSTALL,
    Action.REPLACE,
    Action.DELETE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What some servers take: count, vCPUs, memory, disk and monthly cost."""

    servers: int = 0
    vcpus: int = 0
    memory_gb: float = 0.0
    disk_gb: float = 0.0
    monthly_cost: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return total_usage((other,), start=self)

    def value(self, field: str) -> float:
        """One of the limits' fields by name: servers, vcpus, memory_gb, disk_gb, monthly_cost."""
        result: float = getattr(self, field)
        return result


NO_USAGE = Usage()


def total_usage(usages: Iterable[Usage], start: Usage = NO_USAGE) -> Usage:
    """`start` plus each of `usages` in turn, the cost rounded to 4 places at each step
    (`a + b` is one step). A plan sums two usages per server: one Usage per step would cost
    more than the sums."""
    servers, vcpus = start.servers, start.vcpus
    memory_gb, disk_gb, monthly_cost = start.memory_gb, start.disk_gb, start.monthly_cost
    for usage in usages:
        servers += usage.servers
        vcpus += usage.vcpus
        memory_gb += usage.memory_gb
        disk_gb += usage.disk_gb
        monthly_cost = round(monthly_cost + usage.monthly_cost, 4)
    return Usage(
        servers=servers,
        vcpus=vcpus,
        memory_gb=memory_gb,
        disk_gb=disk_gb,
        monthly_cost=monthly_cost,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldChange:
    """One property that differs: `field` (e.g. `labels.role`), before and after as text."""

    field: str
    before: str
    after: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One operation on one server, with why, what differs and what it costs.

    `before` is the server as the provider has it (None for a create); `after` is the server
    as the spec wants it (None for a delete). `usage_before`/`usage_after` are this change's
    share of the fleet's usage: a resize moves vCPUs, memory and cost; an update moves none.
    A retry says how (`retry_by`); `failed_attempts` is how often the server failed since it
    was last ready.
    """

    action: Action
    server: str
    group: str
    reasons: tuple[str, ...]
    disruptive: bool = False
    fields: tuple[FieldChange, ...] = ()
    before: ActualServer | None = None
    after: Server | None = None
    usage_before: Usage = NO_USAGE
    usage_after: Usage = NO_USAGE
    retry_by: RetryBy | None = None
    failed_attempts: int = 0

    @property
    def monthly_delta(self) -> float:
        return round(self.usage_after.monthly_cost - self.usage_before.monthly_cost, 4)


class AppAction(StrEnum):
    DEPLOY = "deploy"  # the app is not running on the server: start the spec's version
    UPDATE = "update"  # another version runs there: roll to the spec's
    REMOVE = "remove"  # the app runs where the spec no longer wants it


APP_ACTIONS = (AppAction.DEPLOY, AppAction.UPDATE, AppAction.REMOVE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplacedApp:
    """An app leaving a server whose host `ports` (`80/tcp`) an app starting there needs: it
    is not removed on its own but in that app's step, stopped just before the new one starts
    and removed once it is healthy (put back if it is not)."""

    app: str
    version: str
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppChange:
    """One app on one server: what runs there (`before`, a version, "" for none) and what
    the spec wants (`after`, "" for nothing). Env fields carry no values, only that they
    change (engine.apps.diff). `replaces` are the apps leaving the server that it takes
    ports over from."""

    action: AppAction
    app: str
    server: str
    group: str
    reasons: tuple[str, ...]
    before: str = ""
    after: str = ""
    fields: tuple[FieldChange, ...] = ()
    replaces: tuple[ReplacedApp, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutGroup:
    """The servers of one group an app's rollout changes, in order, `max_unavailable` at a
    time."""

    group: str
    max_unavailable: int
    servers: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppRollout:
    """The order in which an app's changes are carried out: one group after the other."""

    app: str
    version: str
    groups: tuple[RolloutGroup, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceChange:
    """One operation on a resource other than a server: `action` is create, update, replace
    or delete; `kind` a ResourceKind; `name` its name at the provider. A disruptive one names
    the `servers` it touches (and the reasons say how). `logical` are the Pulumi resources the
    program declares for it (names, or prefixes of its parts' names): what Pulumi may do to
    them is what this change allows (engine.providers.cloud.guard)."""

    action: Action
    kind: str
    name: str
    reasons: tuple[str, ...]
    fields: tuple[FieldChange, ...] = ()
    disruptive: bool = False
    servers: tuple[str, ...] = ()
    logical: tuple[str, ...] = ()
    monthly_before: float = 0.0
    monthly_after: float = 0.0

    @property
    def monthly_delta(self) -> float:
        return round(self.monthly_after - self.monthly_before, 4)


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """Something that blocks the plan, at a field path (`limits.vcpus`, `servers.web-4`)."""

    code: str
    path: str
    message: str
    hint: str = ""

    def to_text(self) -> str:
        fix = f"; {self.hint}" if self.hint else ""
        return f"error[{self.code}] {self.path}: {self.message}{fix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCallCount:
    """Requests made to read actual state, and an estimate of the writes to apply the plan."""

    read: int = 0
    read_by_path: tuple[tuple[str, int], ...] = ()
    retries: int = 0
    apply_estimate: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything preview shows and up executes."""

    fleet: str
    provider: str
    source: str
    compared_with: str
    currency: str
    changes: tuple[Change, ...]
    unchanged: int
    before: Usage
    after: Usage
    install_hash: str
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    # Rules that open the servers to the whole Internet, the blocking ones among problems too.
    exposures: tuple[Exposure, ...] = ()
    api_calls: ApiCallCount = ApiCallCount()
    # Firewalls, networks, load balancers, DNS records, placement groups and SSH keys.
    resources: tuple[ResourceChange, ...] = ()
    apps: tuple[AppChange, ...] = ()
    app_rollouts: tuple[AppRollout, ...] = ()

    @property
    def has_changes(self) -> bool:
        return bool(self.changes or self.resources) or bool(self.apps)

    @property
    def is_blocked(self) -> bool:
        return bool(self.problems)

    def counts(self) -> dict[Action, int]:
        """How many changes of each action, in summary order, zero counts left out."""
        counted = Counter(change.action for change in self.changes)
        return {action: counted[action] for action in ACTIONS if counted[action]}

    def resource_counts(self) -> dict[Action, int]:
        """How many resource changes of each action, in summary order, zero counts left out."""
        counted = Counter(change.action for change in self.resources)
        return {action: counted[action] for action in ACTIONS if counted[action]}

    def app_counts(self) -> dict[AppAction, int]:
        """How many app changes of each action, zero counts left out."""
        counted = Counter(change.action for change in self.apps)
        return {action: counted[action] for action in APP_ACTIONS if counted[action]}

    @property
    def monthly_delta(self) -> float:
        return round(self.after.monthly_cost - self.before.monthly_cost, 4)


# Writes each action takes on the provider's API, not counting the progress polls of its
# asynchronous actions: create 1 (firewalls, networks and labels travel with it), delete 1,
# resize 3 (power off, change type, power on), replace 2 (delete, create), power on 1; an
# update takes one per field it changes; reinstall (over SSH) and adopt (state store only)
# take none; a retry as many as its way (_RETRY_WRITES).
_WRITES = {
    Action.CREATE: 1,
    Action.DELETE: 1,
    Action.RESIZE: 3,
    Action.REPLACE: 2,
    Action.REINSTALL: 0,
    Action.ADOPT: 0,
    Action.POWER_ON: 1,
}
_RETRY_WRITES = {RetryBy.INSTALL: 0, RetryBy.REMAKE: 0, RetryBy.REBUILD: 1, RetryBy.REPLACE: 2}


def _writes(change: Change) -> int:
    if change.action is Action.UPDATE:
        return len(change.fields)
    if change.action is Action.RETRY:
        return _RETRY_WRITES[change.retry_by or RetryBy.INSTALL]
    return _WRITES[change.action]


def estimate_writes(changes: tuple[Change, ...], resources: tuple[ResourceChange, ...] = ()) -> int:
    """API requests applying `changes` and `resources` would make (see _WRITES; a resource's
    update takes one per field), progress polls aside."""
    found = sum(_writes(change) for change in changes)
    return found + sum(
        len(r.fields) if r.action is Action.UPDATE else _WRITES[r.action] for r in resources
    )
