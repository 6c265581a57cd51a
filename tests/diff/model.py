"""A model of a provider and the state store, on which a plan can be carried out.

`apply_plan` does to lists of ActualServer and ServerRecord what `engine up` does to the
real things, change by change, so tests can check that a plan really converges: the diff of
the desired fleet against the result has no changes. A server it installs is recorded ready
with the plan's install digest; `digest_of` is the digest the tests plan a fleet with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

from engine.catalog import Catalog
from engine.diff import as_built, as_recorded
from engine.install.digest import install_digest
from engine.model import Fleet
from engine.plan import Action, Plan, RetryBy
from engine.providers import ActualServer
from engine.state import ServerRecord

_ids = itertools.count(900_000)
LONG_AGO = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def digest_of(fleet: Fleet) -> str:
    """The install digest of `fleet` with a fixed agent and control plane: what its servers
    were installed with, as far as the spec goes."""
    return install_digest(
        fleet, agent="recipe:tests", control_plane_url="", control_plane_sources=()
    )


def apply_plan(
    plan: Plan,
    fleet: Fleet,
    catalog: Catalog,
    actual: list[ActualServer],
    records: list[ServerRecord],
) -> tuple[list[ActualServer], list[ServerRecord]]:
    """The provider's servers and the store's records after carrying out `plan`."""
    servers = list(actual)
    recorded = {r.name: r for r in records}
    for change in plan.changes:
        old, new = change.before, change.after
        made_anew = change.action is Action.RETRY and change.retry_by in (
            RetryBy.REMAKE,
            RetryBy.REPLACE,
        )
        if change.action in (Action.DELETE, Action.REPLACE) or made_anew:
            assert old is not None
            servers = [s for s in servers if s.provider_id != old.provider_id]
            if change.action is Action.DELETE:
                known = recorded.get(old.name)
                if known is not None and known.provider_id in ("", old.provider_id):
                    del recorded[old.name]
        if change.action in (Action.CREATE, Action.REPLACE) or made_anew:
            assert new is not None
            built = dataclasses.replace(
                as_built(fleet, new, catalog, str(next(_ids))), created=LONG_AGO
            )
            servers.append(built)
            recorded[new.name] = dataclasses.replace(
                as_recorded(fleet, built, new.group, plan.install_hash), created_at=LONG_AGO
            )
        elif change.action in (Action.UPDATE, Action.RESIZE):
            assert old is not None and new is not None
            target = as_built(fleet, new, catalog, old.provider_id)
            old = next(s for s in servers if s.provider_id == old.provider_id)
            if change.action is Action.UPDATE:
                updated = dataclasses.replace(
                    old,
                    labels=target.labels,
                    firewalls=target.firewalls,
                    networks=target.networks if plan.provider != "digitalocean" else old.networks,
                    backups=target.backups,
                    placement_group=target.placement_group,
                    ipv4=old.ipv4 if (old.ipv4 is None) == (target.ipv4 is None) else target.ipv4,
                    ipv6=old.ipv6 if (old.ipv6 is None) == (target.ipv6 is None) else target.ipv6,
                )
            else:
                updated = dataclasses.replace(
                    old,
                    server_type=target.server_type,
                    disk_gb=max(old.disk_gb, target.disk_gb),
                )
            servers = [updated if s.provider_id == old.provider_id else s for s in servers]
        elif change.action in (Action.ADOPT, Action.REINSTALL, Action.POWER_ON, Action.RETRY):
            # Each ends with the server installed now and running: recorded ready.
            assert old is not None and new is not None
            current = next(s for s in servers if s.provider_id == old.provider_id)
            if change.action in (Action.POWER_ON, Action.RETRY):
                current = dataclasses.replace(current, status="running")
                servers = [current if s.provider_id == old.provider_id else s for s in servers]
            recorded[new.name] = dataclasses.replace(
                as_recorded(fleet, current, new.group, plan.install_hash), created_at=LONG_AGO
            )
    return servers, list(recorded.values())
