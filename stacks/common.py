"""What both providers' programs share: ownership marks, firewall rules, key names, address plans.

Pure functions of the model; no Pulumi here, so they are tested directly. Resource names come
from engine.providers.naming, through which the inventory readers read them back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import itertools
from collections.abc import Iterable

from engine.errors import EngineError
from engine.model import (
    LABEL_FLEET,
    LABEL_FLEET_ID,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    FirewallRule,
    Fleet,
    Labels,
    LoadBalancer,
    Protocol,
    Server,
)

WORLD = ("0.0.0.0/0", "::/0")


def fleet_labels(fleet: str, group: str | None = None, *, fleet_id: str = "") -> dict[str, str]:
    """Ownership labels for a resource that belongs to a fleet (and a group) but no server,
    with the fleet's id when it has one."""
    labels = {LABEL_FLEET: fleet, LABEL_MANAGED_BY: MANAGED_BY}
    if group is not None:
        labels[LABEL_GROUP] = group
    return with_fleet_id(labels, fleet_id)


def with_fleet_id(labels: Labels | dict[str, str], fleet_id: str) -> dict[str, str]:
    """`labels` and the fleet's id (engine.tokens.ensure_fleet_id), when there is one."""
    marked = dict(labels)
    if fleet_id:
        marked[LABEL_FLEET_ID] = fleet_id
    return marked


def tags(labels: Labels | dict[str, str]) -> list[str]:
    """Labels as DigitalOcean tags, `key:value`, sorted (the spec checks the tag alphabet)."""
    pairs = labels.items() if isinstance(labels, dict) else labels
    return sorted(f"{key}:{value}" for key, value in pairs)


def engine_rules(fleet: Fleet, sources: tuple[str, ...]) -> tuple[FirewallRule, ...]:
    """What the engine itself needs open: SSH and the agent port, from its own addresses."""
    return (
        FirewallRule(
            protocol=Protocol.TCP,
            port=str(fleet.ssh.port),
            sources=sources,
            description="fleet-engine: SSH from the control plane",
        ),
        FirewallRule(
            protocol=Protocol.TCP,
            port=str(fleet.install.agent.port),
            sources=sources,
            description="fleet-engine: agent API from the control plane",
        ),
    )


def unique_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """Public keys in order, each key material once (the comment does not count)."""
    seen: set[str] = set()
    out: list[str] = []
    for key in keys:
        blob = " ".join(key.split()[:2])
        if blob not in seen:
            seen.add(blob)
            out.append(key)
    return tuple(out)


def ssh_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint both providers index keys by, as `ssh-keygen -E md5 -l` shows it:
    16 hex pairs joined by colons, e.g. `6e:b9:be:3d:8a:09:36:44:ce:88:b1:f2:1c:d6:8d:de`."""
    fields = public_key.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (IndexError, binascii.Error):
        raise EngineError(f"{public_key[:40]!r}... is not an OpenSSH public key line") from None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def ssh_key_name(fleet: str, public_key: str) -> str:
    """The provider-side name of a key the fleet uploads: `web-prod-key-6eb9be3d`."""
    return f"{fleet}-key-{ssh_fingerprint(public_key).replace(':', '')[:8]}"


def carve(
    ip_range: str, index: int, slots: int, *, largest_prefix: int = 0, smallest_prefix: int = 28
) -> str:
    """The `index`-th of `slots` equal parts of `ip_range` (slots a power of two).

    Subnets (Hetzner, one per network zone) and VPCs (DigitalOcean, one per region) get a fixed
    slot each, so adding a zone or a region never moves an existing range (which would
    replace it and every server in it). Parts are never larger than `/largest_prefix`.

    >>> carve("10.10.0.0/16", 1, 4)
    '10.10.64.0/18'
    """
    network = ipaddress.ip_network(ip_range)
    prefix = max(network.prefixlen + (slots - 1).bit_length(), largest_prefix)
    if prefix > smallest_prefix:
        raise EngineError(
            f"the network {ip_range} is too small to split into {slots} parts of at least "
            f"/{smallest_prefix}; give it a larger range (e.g. a /16)"
        )
    return str(next(itertools.islice(network.subnets(new_prefix=prefix), index, None)))


def servers_by_group(servers: Iterable[Server]) -> dict[str, tuple[Server, ...]]:
    """Servers grouped by their group, in the order given."""
    groups: dict[str, list[Server]] = {}
    for server in servers:
        groups.setdefault(server.group, []).append(server)
    return {name: tuple(members) for name, members in groups.items()}


def lb_location(lb: LoadBalancer, targets: tuple[Server, ...]) -> str:
    """Where a load balancer runs: as the spec says, else where its group's first server is."""
    if lb.location:
        return lb.location
    if not targets:
        raise EngineError(
            f"load balancer {lb.name} targets group {lb.targets}, which has no servers; "
            "give it a location or a group with servers"
        )
    return targets[0].location
