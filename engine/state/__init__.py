"""The state store: what the engine knows about its servers beyond what the provider says.

One record per server (lifecycle stage, addresses, what was rendered and installed for it),
one row per lifecycle transition (so each step's duration can be computed), an event
history, and the exclusive stack locks that mutating commands hold. For the control plane:
each fleet's settings, one-time phone-home tokens (as hashes), the durable job queue, API
keys (as hashes) and what each server's agent last reported. For apps: the definition of each
version deployed (secret variables by name only), which version runs where, and every
rollout with its state machine.

The records here are plain frozen values, importable without SQLAlchemy, so the pure diff
can take them. The store itself is `engine.state.store.Store` (SQLite file by default,
PostgreSQL by URL), a repository per aggregate; its tables and migrations are in
`engine.state.schema`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from engine.model import Labels, Stage


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerRecord:
    """What the store holds for one server of one fleet."""

    fleet: str
    name: str
    group: str
    provider: str
    provider_id: str = ""
    location: str = ""
    server_type: str = ""
    image: str = ""
    stage: Stage = Stage.REQUESTED
    stage_reason: str = ""
    ipv4: str | None = None
    ipv6: str | None = None
    private_ips: tuple[str, ...] = ()
    labels: Labels = ()
    user_data_hash: str | None = None
    install_hash: str | None = None
    host_keys: Labels = ()
    # How the host keys were learnt: "phone-home" (sent by the server itself over its
    # authenticated phone-home) or "keyscan" (read over the network by the polling fallback,
    # so not pinned from a trusted channel); "" while there are none.
    host_keys_source: str = ""
    cloud_init_finished_at: dt.datetime | None = None
    installed_at: dt.datetime | None = None
    # When the polling fallback last saw the server running in the provider's inventory.
    inventory_seen_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A server entered `stage` at `at`."""

    fleet: str
    server: str
    stage: Stage
    at: dt.datetime
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One entry of a fleet's history (`kind` is a dotted noun such as `lock.released`)."""

    id: int
    fleet: str
    kind: str
    message: str
    at: dt.datetime
    server: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event to append; the store gives it its id and time, and redacts its message."""

    fleet: str
    kind: str
    message: str
    server: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


class HostKeySource(StrEnum):
    PHONE_HOME = "phone-home"
    KEYSCAN = "keyscan"


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSettings:
    """What the control plane must know about a fleet it serves, registered by `engine up`.

    `token_env` is the NAME of the variable holding the provider token, never the token.
    """

    name: str
    provider: str
    provider_endpoint: str | None = None
    token_env: str | None = None
    readiness: str = "phone-home"
    token_ttl_s: int = 3600
    phone_home_timeout_s: int = 600
    verify_source_ip: bool = True
    heartbeat_s: int = 15
    ssh_user: str = "fleet"
    ssh_port: int = 22
    # dataclasses.asdict(engine.model.Install): what the install step puts on every server.
    install: Mapping[str, Any] = field(default_factory=dict)
    # Where the last run's control plane listened (its URL, and the addresses it reaches
    # servers from): agents report there, and the install digest covers it.
    control_plane_url: str = ""
    control_plane_sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredUserData:
    """A server's user_data as the store keeps it: `content` is the document with the secret
    part of its one-time token cut out (engine.cloudinit.TokenSeal), `sha256` the hex digest
    of the whole document as it is sent, by which the token put back is checked."""

    content: str
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PhoneHomeToken:
    """A minted one-time token, known only by its SHA-256; `spent_at` once it was accepted."""

    token_hash: str
    fleet: str
    server: str
    expires_at: dt.datetime
    created_at: dt.datetime
    spent_at: dt.datetime | None = None
    fingerprint: str | None = None


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One durable unit of work. `attempts` counts the claims that ran (or died running) it."""

    id: int
    kind: str
    fleet: str
    server: str | None
    payload: Mapping[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    run_after: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    last_error: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    finished_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job to enqueue. With a `key`, at most one live (queued or running) job has that key:
    enqueueing again while one is live returns the live one instead of adding a second."""

    kind: str
    fleet: str
    server: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    max_attempts: int = 5
    delay_s: float = 0.0


class PhoneHomeOutcome(StrEnum):
    """What became of a phone-home (engine.controlplane.phonehome.decide_phone_home)."""

    ACCEPTED = "accepted"  # the server moved to phoned_home and its install was enqueued
    REPLAYED = "replayed"  # the token was spent by this very request before: nothing to do
    CONFIRMED = "confirmed"  # polling got there first; the same host keys are now pinned
    SPENT = "spent"  # the token was spent by a different request
    HOST_KEYS_DIFFER = "host_keys_differ"  # polling pinned other keys: refused, changed nothing
    UNKNOWN_SERVER = "unknown_server"  # no record for the server (not registered yet)
    DELETING = "deleting"  # the server is being deleted
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 (an outcome: the store never issued the token)
    # The record has no provider id yet and the provider's inventory was not asked.
    INSTANCE_UNCONFIRMED = "instance_unconfirmed"
    INSTANCE_MISMATCH = "instance_mismatch"  # the instance id is not the server's
    ADDRESSES_UNKNOWN = "addresses_unknown"  # no address to check the source against yet
    SOURCE_MISMATCH = "source_mismatch"  # the request comes from none of the server's addresses


@dataclass(frozen=True, slots=True, kw_only=True)
class PhoneHomeDecision:
    """What one phone-home does: its outcome, and what the store writes for it in the
    transaction that decided it (nothing, unless the fields say otherwise)."""

    outcome: PhoneHomeOutcome
    server: ServerRecord | None = None  # the server's record as it becomes
    token: PhoneHomeToken | None = None  # the token as it becomes (spent)
    events: tuple[NewEvent, ...] = ()
    jobs: tuple[NewJob, ...] = ()


class Scope(StrEnum):
    """What an API key may do; each scope includes the ones before it."""

    READ = "read"  # GET anything
    PLAN = "plan"  # register specs, make plans
    APPLY = "apply"  # apply plans, scale groups, signal servers
    ADMIN = "admin"  # everything (the keys themselves are managed from the CLI)

    def allows(self, needed: Scope) -> bool:
        """Whether a key with this scope may do what needs `needed`."""
        order = list(Scope)
        return order.index(self) >= order.index(needed)


class KeyHashing(StrEnum):
    """How a key's secret part is stored: HMAC-SHA256 under the control plane's API-key
    secret, or the plain SHA-256 of keys made before migration 7 (rehashed on first use)."""

    HMAC_SHA256 = "hmac-sha256"
    SHA256 = "sha256"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """A fleet API key, known by its id and the hash of its secret part; `fleets` empty means
    every fleet."""

    key_id: str
    name: str
    secret_hash: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    scope: Scope = Scope.READ
    fleets: tuple[str, ...] = ()
    hashing: KeyHashing = KeyHashing.HMAC_SHA256

    def may(self, needed: Scope, fleet: str | None = None) -> bool:
        """Whether this key may do what needs `needed` (to `fleet`, when one is named)."""
        granted = fleet is None or not self.fleets or fleet in self.fleets
        return self.scope.allows(needed) and granted


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One write through the API or the key commands: who (a key's name, or `cli`), what
    (the method and path, or the command), on which fleet, when, and how it ended. Never a
    secret: bodies are not kept, only what the entry's `detail` says."""

    id: int = 0
    at: dt.datetime
    actor: str
    action: str
    fleet: str | None = None
    status: int
    result: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    """The desired state of a fleet registered through the API: its spec as sent (YAML or
    JSON text) and the SHA-256 of that text."""

    fleet: str
    text: str
    digest: str
    updated_at: dt.datetime
    updated_by: str


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STALE = "stale"  # the fleet or the world changed between the plan and its apply


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedPlan:
    """A plan made through the API: the plan's JSON as `engine preview --format json` prints
    it, and the digests of the spec and of what was observed that its apply must still find."""

    id: str
    fleet: str
    spec_digest: str
    world_digest: str
    document: Mapping[str, Any]
    created_at: dt.datetime
    created_by: str
    has_changes: bool = True
    blocked: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One job the API started on a fleet (an apply, a scale, a server action): its status,
    its progress lines (JSON events of the run's board) and the per-step timings it ended with."""

    id: str
    fleet: str
    kind: str
    status: RunStatus
    created_at: dt.datetime
    created_by: str
    plan_id: str | None = None
    request: Mapping[str, Any] = field(default_factory=dict)
    progress: tuple[Mapping[str, Any], ...] = ()
    result: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentReport:
    """What a server's agent said in its last heartbeat."""

    fleet: str
    server: str
    last_heartbeat_at: dt.datetime
    metrics: Mapping[str, Any] = field(default_factory=dict)
    containers: Mapping[str, Any] | None = None
    tls_fingerprint: str = ""
    sequence: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployedApp:
    """The version of an app the engine last put on a server (the app's state there)."""

    fleet: str
    app: str
    server: str
    version: str
    deployed_at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRecord:
    """One rollout of an app: its phase, and the whole state machine as `document`
    (engine.apps.rollout.to_json), kept after every transition."""

    id: int
    fleet: str
    app: str
    version: str
    phase: str
    reason: str
    document: Mapping[str, Any]
    started_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lock:
    """The exclusive lock on a stack (one fleet), held by one mutating command."""

    stack: str
    lock_id: str
    holder: str
    host: str
    pid: int
    command: str
    acquired_at: dt.datetime


def stage_durations(transitions: Sequence[Transition]) -> tuple[tuple[Stage, float], ...]:
    """How long a server spent in each stage it has left, in seconds, in order.

    >>> # booting at 10:00:00, phoned_home at 10:00:04 -> ((Stage.BOOTING, 4.0),)
    """
    ordered = sorted(transitions, key=lambda t: t.at)
    return tuple(
        (current.stage, (following.at - current.at).total_seconds())
        for current, following in pairwise(ordered)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """Who runs a fleet's reconcile loop, until when, and what its last run found.

    `owner` is host/pid/random (engine.controlplane.jobs.worker_id); a lease past `expires_at`
    is anyone's to take."""

    fleet: str
    owner: str
    acquired_at: dt.datetime
    expires_at: dt.datetime
    last_run_at: dt.datetime | None = None
    last_result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricPoint:
    """One server's metrics averaged over `step_s` seconds from `at`: cpu, memory and disk
    in percent used, load the 1-minute load average, rx and tx the bytes per second received
    and sent; `samples` heartbeats went into it."""

    fleet: str
    server: str
    step_s: int
    at: dt.datetime
    samples: int
    values: Mapping[str, float]


class AlertState(StrEnum):
    PENDING = "pending"  # the condition holds, not yet for long enough
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRecord:
    """One alert of one fleet about one subject (a server, or "" for the fleet)."""

    fleet: str
    alert: str
    subject: str
    state: AlertState
    since: dt.datetime
    value: float | None = None
    fired_at: dt.datetime | None = None
    resolved_at: dt.datetime | None = None
