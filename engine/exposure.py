"""Ports a fleet opens to the world, found in its firewalls before anything is applied. Pure.

A rule is open to the world when one of its sources covers a large part of the Internet: an
IPv4 range of /8 or wider or an IPv6 range of /16 or wider (0.0.0.0/0 and ::/0 above all).
Each such rule of a firewall a group uses is an `Exposure` of that group, with a severity by
the services its ports carry (`SERVICES`):

    high   SSH, remote desktops, databases, caches and queues, container and cluster APIs,
           admin and monitoring panels, the fleet's own agent: the plan is blocked unless the
           rule says it is meant (`exposure: public` with a `reason`, shown to reviewers)
    web    HTTP and HTTPS: noted
    open   any other port: listed

ICMP is left out: answering pings is what servers on the Internet do. The engine's own rules
(SSH and the agent port, open to the engine's addresses only) are not the spec's and are not
listed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from engine.model import FirewallRule, Fleet, Protocol


class Severity(StrEnum):
    HIGH = "high"
    WEB = "web"
    OPEN = "open"


_HIGH_TCP = {
    22: "SSH", 23: "Telnet", 3389: "RDP", 5900: "VNC", 5901: "VNC", 2375: "Docker API",
    2376: "Docker API", 2379: "etcd", 2380: "etcd", 6443: "Kubernetes API", 10250: "kubelet",
    3306: "MySQL", 5432: "PostgreSQL", 1433: "SQL Server", 1521: "Oracle", 27017: "MongoDB",
    6379: "Redis", 11211: "memcached", 9200: "Elasticsearch", 9300: "Elasticsearch",
    5984: "CouchDB", 8086: "InfluxDB", 9042: "Cassandra", 5672: "RabbitMQ",
    15672: "RabbitMQ admin", 9092: "Kafka", 2181: "ZooKeeper", 8500: "Consul", 8200: "Vault",
    9090: "Prometheus", 3000: "Grafana", 445: "SMB", 139: "NetBIOS", 111: "rpcbind",
    2049: "NFS",
}  # fmt: skip
_HIGH_UDP = {11211: "memcached", 161: "SNMP", 111: "rpcbind", 2049: "NFS"}
_WEB = {(Protocol.TCP, 80): "HTTP", (Protocol.TCP, 443): "HTTPS", (Protocol.TCP, 8080): "HTTP",
        (Protocol.TCP, 8443): "HTTPS", (Protocol.UDP, 443): "HTTP/3"}  # fmt: skip
# (protocol, port) -> (service, severity). A rule's port range carries every service in it.
SERVICES: dict[tuple[Protocol, int], tuple[str, Severity]] = {
    **{(Protocol.TCP, port): (name, Severity.HIGH) for port, name in _HIGH_TCP.items()},
    **{(Protocol.UDP, port): (name, Severity.HIGH) for port, name in _HIGH_UDP.items()},
    **{key: (name, Severity.WEB) for key, name in _WEB.items()},
}
_ORDER = (Severity.HIGH, Severity.OPEN, Severity.WEB)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One rule that opens ports of a group's servers to the world.

    `path` is the rule's place in the spec (`firewalls[1].inbound[0]`); `services` the known
    services its ports carry; `reason` the spec's, when it says the exposure is meant.
    """

    group: str
    firewall: str
    path: str
    protocol: Protocol
    port: str
    sources: tuple[str, ...]
    services: tuple[str, ...]
    severity: Severity
    public: bool = False
    reason: str = ""

    @property
    def is_blocking(self) -> bool:
        return self.severity is Severity.HIGH and not self.public

    def describe(self) -> str:
        """`tcp 5432 (PostgreSQL) from 0.0.0.0/0`."""
        named = f" ({', '.join(self.services)})" if self.services else ""
        return f"{self.protocol} {self.port}{named} from {', '.join(self.sources)}"


def is_world(source: str) -> bool:
    """Whether a rule's source covers a large part of the Internet."""
    try:
        network = ipaddress.ip_network(source, strict=False)
    except ValueError:
        return False
    return network.prefixlen <= (8 if network.version == 4 else 16)


def _ports(port: str | None) -> range:
    if port is None:
        return range(1, 65536)
    low, _, high = port.partition("-")
    return range(int(low), int(high or low) + 1)


def _services(rule: FirewallRule, agent_port: int) -> tuple[list[str], Severity]:
    ports = _ports(rule.port)
    known = {**SERVICES, (Protocol.TCP, agent_port): ("fleet agent", Severity.HIGH)}
    found = [
        (port, known[rule.protocol, port])
        for port in sorted({p for proto, p in known if proto is rule.protocol})
        if port in ports
    ]
    severities = {severity for _, (_, severity) in found}
    if Severity.HIGH in severities:
        severity = Severity.HIGH
    elif severities == {Severity.WEB} and len(ports) == len(found):
        severity = Severity.WEB
    else:
        severity = Severity.OPEN
    names = list(dict.fromkeys(name for _, (name, _) in found))
    return names, severity


def fleet_exposures(fleet: Fleet) -> tuple[Exposure, ...]:
    """Every rule that opens a group's servers to the world, most severe first."""
    return tuple(sorted(_exposures(fleet), key=lambda e: (_ORDER.index(e.severity), e.path)))


def _exposures(fleet: Fleet) -> Iterator[Exposure]:
    agent_port = fleet.install.agent.port
    for f, firewall in enumerate(fleet.firewalls):
        users = [g.name for g in fleet.groups if firewall.name in g.firewalls]
        for r, rule in enumerate(firewall.inbound):
            world = tuple(s for s in rule.sources if is_world(s))
            if not world or rule.protocol is Protocol.ICMP or not users:
                continue
            services, severity = _services(rule, agent_port)
            for group in users:
                yield Exposure(
                    group=group,
                    firewall=firewall.name,
                    path=f"firewalls[{f}].inbound[{r}]",
                    protocol=rule.protocol,
                    port=rule.port or "all",
                    sources=world,
                    services=tuple(services),
                    severity=severity,
                    public=rule.public,
                    reason=rule.reason,
                )
