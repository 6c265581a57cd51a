"""The fleet as the engine sees it: frozen values built once from a validated spec.

Nothing here does I/O (the install digest, which reads the deploy code, is in
engine/install/digest.py). Mappings are stored as sorted tuples of pairs so that every model
value is hashable and compares by content.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

Labels = tuple[tuple[str, str], ...]

MANAGED_BY = "fleet-engine"
LABEL_MANAGED_BY = "managed-by"
LABEL_FLEET = "fleet"
LABEL_GROUP = "fleet-group"
LABEL_SERVER = "fleet-server"
# The fleet's id (engine.tokens.ensure_fleet_id): which state directory a resource belongs to,
# when two of them manage fleets of one name.
LABEL_FLEET_ID = "fleet-id"
LABEL_APP = "fleet-app"
LABEL_APP_VERSION = "fleet-app-version"
RESERVED_LABEL_PREFIXES = ("fleet", "managed-by")


class ProviderName(StrEnum):
    HCLOUD = "hcloud"
    DIGITALOCEAN = "digitalocean"
    LOCAL = "local"


class Stage(StrEnum):
    """Where a server is in its life, as the state store records it.

    requested -> creating -> booting -> phoned_home -> installing -> ready, and from any of
    them failed, unhealthy (ready, but its health checks fail) or deleting.
    """

    REQUESTED = "requested"
    CREATING = "creating"
    BOOTING = "booting"
    PHONED_HOME = "phoned_home"
    INSTALLING = "installing"
    READY = "ready"
    FAILED = "failed"
    UNHEALTHY = "unhealthy"
    DELETING = "deleting"


class Readiness(StrEnum):
    PHONE_HOME = "phone-home"
    POLL = "poll"


class Placement(StrEnum):
    SPREAD = "spread"
    NONE = "none"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


class LbProtocol(StrEnum):
    TCP = "tcp"
    HTTP = "http"
    HTTPS = "https"


class DockerSource(StrEnum):
    DOCKER_CE = "docker-ce"
    DISTRO = "distro"


class ImageKind(StrEnum):
    NAME = "name"
    SNAPSHOT = "snapshot"
    CUSTOM = "custom"


class RestartPolicy(StrEnum):
    """When Docker starts an app's container again (Docker's own policy names)."""

    NO = "no"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"
    ON_FAILURE = "on-failure"


class HealthKind(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    COMMAND = "command"


class RollbackMode(StrEnum):
    """What a failed rollout does: auto puts the servers it changed back, manual leaves them."""

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    name: ProviderName
    token_env: str | None = None
    project: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPlane:
    url: str | None = None
    readiness: Readiness = Readiness.PHONE_HOME
    token_ttl_s: int = 3600
    phone_home_timeout_s: int = 600
    verify_source_ip: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Ssh:
    authorized_keys: tuple[str, ...] = ()
    user: str = "fleet"
    port: int = 22


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """An OS image by catalog name, the newest snapshot with some labels, or a custom image."""

    kind: ImageKind
    name: str = ""
    labels: Labels = ()

    def describe(self) -> str:
        if self.kind is ImageKind.SNAPSHOT:
            return "snapshot " + ",".join(f"{k}={v}" for k, v in self.labels)
        if self.kind is ImageKind.CUSTOM:
            return f"custom image {self.name}"
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    name: str
    count: int
    server_type: str
    image: Image
    locations: tuple[str, ...]
    placement: Placement = Placement.NONE
    firewalls: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    labels: Labels = ()
    backups: bool = False
    public_ipv4: bool = True
    public_ipv6: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class FirewallRule:
    """One inbound rule. `public` says that opening it to the whole Internet is meant (with
    `reason`, which reviewers read): see engine.exposure."""

    protocol: Protocol
    sources: tuple[str, ...]
    port: str | None = None
    description: str = ""
    public: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Firewall:
    name: str
    inbound: tuple[FirewallRule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    name: str
    ip_range: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LbService:
    listen: int
    destination: int
    protocol: LbProtocol = LbProtocol.TCP


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancer:
    name: str
    targets: str
    services: tuple[LbService, ...]
    type: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecord:
    zone: str
    name: str
    targets: str
    type: str = "A"
    ttl: int = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerInstall:
    source: DockerSource = DockerSource.DOCKER_CE
    log_max_size: str = "10m"
    log_max_files: int = 3
    live_restore: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemInstall:
    timezone: str = "UTC"
    swap: str = "0"
    unattended_upgrades: bool = True
    sysctl: Labels = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentInstall:
    port: int = 7567
    heartbeat_s: int = 15
    image: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Install:
    docker: DockerInstall = DockerInstall()
    system: SystemInstall = SystemInstall()
    agent: AgentInstall = AgentInstall()


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    servers: int | None = None
    vcpus: int | None = None
    memory_gb: float | None = None
    disk_gb: float | None = None
    monthly_cost: float | None = None


class ReconcileMode(StrEnum):
    REPORT = "report"
    REPAIR = "repair"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconcile:
    """How `engine serve` watches the fleet between runs (engine.reconcile)."""

    interval_s: int = 300
    mode: ReconcileMode = ReconcileMode.REPORT
    repairs_per_hour: int = 10


class AlertWhen(StrEnum):
    CPU = "cpu"
    MEMORY = "memory"
    DISK = "disk"
    LOAD = "load"
    UNHEALTHY = "unhealthy"
    DRIFT = "drift"


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One declared alert: `when` holds (over `above`, for metrics) for `for_s` seconds."""

    name: str
    when: AlertWhen
    above: float | None = None
    for_s: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    """Where alert events go, signed with the secret in the variable `secret_env`."""

    url: str
    secret_env: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AppPort:
    """A port of the server published to a port of the app's container."""

    host_port: int
    container_port: int
    protocol: Protocol = Protocol.TCP
    host_ip: str | None = None

    def describe(self) -> str:
        """As the spec writes it: `80:8080`, `127.0.0.1:53:53/udp`."""
        address = f"{self.host_ip}:" if self.host_ip else ""
        suffix = "" if self.protocol is Protocol.TCP else f"/{self.protocol}"
        return f"{address}{self.host_port}:{self.container_port}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppVolume:
    """A named volume (`data`) or a server path (`/srv/data`) mounted in the container."""

    source: str
    target: str
    read_only: bool = False

    def describe(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class AppHealth:
    """How to tell that an app answers: an HTTP GET (2xx or 3xx), a TCP connection, or a
    command run in the container that exits 0; `retries` failures in a row are unhealthy."""

    kind: HealthKind
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    interval_s: int = 5
    timeout_s: int = 2
    retries: int = 3

    def describe(self) -> str:
        if self.kind is HealthKind.HTTP:
            return f"http GET :{self.port}{self.path}"
        if self.kind is HealthKind.TCP:
            return f"tcp :{self.port}"
        return "command " + " ".join(self.command)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppUpdate:
    """How a new version rolls out over a group's servers."""

    max_unavailable: int = 1
    health_timeout_s: int = 60
    monitor_s: int = 30
    rollback: RollbackMode = RollbackMode.AUTO


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryAuth:
    """Registry credentials, by the NAMES of the engine's environment variables holding them."""

    username_env: str
    password_env: str


@dataclass(frozen=True, slots=True, kw_only=True)
class App:
    """A container the fleet runs on every server of some groups.

    `env` holds values written in the spec; `secret_env` only names variables of the engine's
    environment whose values the container gets at deploy time (never stored or shown).
    """

    name: str
    image: str
    on: tuple[str, ...]
    command: tuple[str, ...] | None = None
    env: Labels = ()
    secret_env: tuple[str, ...] = ()
    ports: tuple[AppPort, ...] = ()
    volumes: tuple[AppVolume, ...] = ()
    restart: RestartPolicy = RestartPolicy.UNLESS_STOPPED
    cpus: float | None = None
    memory_mb: int | None = None
    health: AppHealth | None = None
    update: AppUpdate = AppUpdate()
    registry: RegistryAuth | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """A validated fleet spec with defaults applied to every group."""

    name: str
    provider: Provider
    groups: tuple[Group, ...]
    description: str = ""
    control_plane: ControlPlane = ControlPlane()
    ssh: Ssh = Ssh()
    firewalls: tuple[Firewall, ...] = ()
    networks: tuple[Network, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    dns: tuple[DnsRecord, ...] = ()
    install: Install = Install()
    limits: Limits = Limits()
    reconcile: Reconcile = Reconcile()
    alerts: tuple[Alert, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    apps: tuple[App, ...] = ()
    source: str = ""

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    def app(self, name: str) -> App:
        return next(a for a in self.apps if a.name == name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """One desired server, expanded from its group and placed."""

    name: str
    group: str
    index: int
    server_type: str
    image: Image
    location: str
    labels: Labels
    placement_group: str | None = None
    firewalls: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    backups: bool = False
    public_ipv4: bool = True
    public_ipv6: bool = True


def server_name(group: str, index: int) -> str:
    """The name of the index-th server (1-based) of a group: `web-3`."""
    return f"{group}-{index}"


def ownership_labels(fleet: str, group: str, server: str) -> Labels:
    """The labels that mark a resource as ours; the engine never touches anything without them."""
    return (
        (LABEL_FLEET, fleet),
        (LABEL_GROUP, group),
        (LABEL_SERVER, server),
        (LABEL_MANAGED_BY, MANAGED_BY),
    )


def is_reserved_label(key: str) -> bool:
    return key.startswith(RESERVED_LABEL_PREFIXES)


def fleet_resource_name(fleet: str, name: str) -> str:
    """The provider-side name of a fleet's firewall, network or placement group: `web-prod-web`.

    Provider projects hold several fleets, so the spec's short names get the fleet as prefix.
    """
    return f"{fleet}-{name}"
