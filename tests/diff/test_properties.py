"""Properties of the diff over generated fleets and generated drift.

- diff(x, x) is empty: a fleet built exactly as specified has nothing to do.
- Convergence: from any fleet, drifted at random (servers lost or added by hand, records
  lost, labels and types changed, servers stopped, failed on their way, ...), carrying out
  the plan for any other fleet on the model of the provider leaves a state whose diff is
  empty.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.catalog import load_catalog
from engine.diff import DiffOptions, as_built, as_recorded, diff_fleet
from engine.model import Fleet, Stage, ownership_labels
from engine.placement import expand_fleet
from engine.plan import Action
from engine.providers import ActualServer
from engine.spec import parse_spec
from engine.state import ServerRecord
from tests.diff.model import apply_plan, digest_of

PROVIDERS: dict[str, dict[str, Any]] = {
    "hcloud": {
        "token_env": "HCLOUD_TOKEN",
        "types": ["cx22", "cx32", "cpx11", "cpx21", "cx42"],
        "locations": ["fsn1", "nbg1", "hel1"],
        "images": ["debian-12", "ubuntu-24.04"],
    },
    "digitalocean": {
        "token_env": "DIGITALOCEAN_TOKEN",
        "types": ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"],
        "locations": ["fra1", "ams3", "nyc3"],
        "images": ["debian-12-x64", "ubuntu-24-04-x64"],
    },
}
GROUPS = ["web", "api", "db"]
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def groups(draw: st.DrawFn, provider: str) -> dict[str, Any]:
    offer = PROVIDERS[provider]
    group: dict[str, Any] = {
        "name": draw(st.sampled_from(GROUPS)),
        "count": draw(st.integers(0, 5)),
        "server_type": draw(st.sampled_from(offer["types"])),
        "image": draw(st.sampled_from(offer["images"])),
        "locations": draw(st.lists(st.sampled_from(offer["locations"]), min_size=1, unique=True)),
        "labels": draw(
            st.dictionaries(st.sampled_from(["role", "tier"]), st.sampled_from(["a", "b"]))
        ),
        "firewalls": draw(st.lists(st.sampled_from(["web", "ssh"]), unique=True)),
        "networks": draw(st.lists(st.just("private"), max_size=1)),
        "backups": draw(st.booleans()),
        "public_ipv6": draw(st.booleans()),
    }
    if provider == "hcloud":
        group["placement"] = draw(st.sampled_from(["spread", "none"]))
        # A server needs a public address or a network to be reachable (validation says so).
        reachable = group["public_ipv6"] or group["networks"]
        group["public_ipv4"] = draw(st.booleans()) if reachable else True
    return group


@st.composite
def fleets(draw: st.DrawFn, provider: str) -> Fleet:
    spec = {
        "apiVersion": "fleet/v1",
        "kind": "Fleet",
        "name": "prop",
        "provider": {"name": provider, "token_env": PROVIDERS[provider]["token_env"]},
        "control_plane": {"url": "https://ops.example.com"},
        "groups": draw(
            st.lists(groups(provider), min_size=1, max_size=3, unique_by=lambda g: g["name"])
        ),
        "firewalls": [
            {
                "name": name,
                "inbound": [
                    {
                        "protocol": "tcp",
                        "port": "22",
                        "sources": ["::/0"],
                        "exposure": "public",
                        "reason": "a bastion",
                    }
                ],
            }
            for name in ("web", "ssh")
        ],
        "networks": [{"name": "private", "ip_range": "10.0.0.0/16"}],
        "install": {"system": {"timezone": draw(st.sampled_from(["UTC", "Europe/Berlin"]))}},
    }
    return parse_spec(yaml.safe_dump(spec).encode(), file="prop.yaml")


def built(fleet: Fleet) -> tuple[list[ActualServer], list[ServerRecord]]:
    """The fleet exactly as specified, recorded in the store."""
    catalog = load_catalog(str(fleet.provider.name))
    servers = [
        dataclasses.replace(
            as_built(fleet, s, catalog, str(n)), created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        )
        for n, s in enumerate(expand_fleet(fleet, catalog), start=1)
    ]
    digest = digest_of(fleet)
    return servers, [as_recorded(fleet, s, dict(s.labels)["fleet-group"], digest) for s in servers]


@st.composite
def drifted(draw: st.DrawFn, fleet: Fleet) -> tuple[list[ActualServer], list[ServerRecord]]:
    """`fleet` as built, then changed behind the engine's back."""
    servers, records = built(fleet)
    catalog = load_catalog(str(fleet.provider.name))
    types = PROVIDERS[str(fleet.provider.name)]["types"]
    for step in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                ["lose", "forget", "orphan", "label", "type", "duplicate", "stop", "fail"]
            )
        )
        if kind == "orphan":
            name = f"web-{draw(st.integers(6, 9))}"
            servers.append(
                dataclasses.replace(
                    servers[0] if servers else _stray(fleet),
                    name=name,
                    provider_id=f"orphan-{name}-{len(servers)}",
                    labels=tuple(sorted(ownership_labels(fleet.name, "web", name))),
                )
            )
            continue
        if not servers:
            continue
        index = draw(st.integers(0, len(servers) - 1))
        victim = servers[index]
        if kind == "lose":
            del servers[index]
        elif kind == "forget":
            records = [r for r in records if r.name != victim.name]
        elif kind == "label":
            servers[index] = dataclasses.replace(
                victim, labels=tuple(sorted({**dict(victim.labels), "hand": "made"}.items()))
            )
        elif kind == "type":
            new = draw(st.sampled_from(types))
            disk = catalog.server_types[new].disk_gb
            servers[index] = dataclasses.replace(
                victim, server_type=new, disk_gb=max(disk, victim.disk_gb)
            )
        elif kind == "stop":
            servers[index] = dataclasses.replace(victim, status="off")
        elif kind == "fail":
            phoned_home = draw(st.booleans())
            records = [
                dataclasses.replace(
                    r,
                    stage=Stage.FAILED,
                    stage_reason="a fault",
                    host_keys=(("ssh-ed25519", "AAAA"),) if phoned_home else (),
                )
                if r.name == victim.name
                else r
                for r in records
            ]
        else:
            servers.append(dataclasses.replace(victim, provider_id=f"dup-{step}"))
    return servers, records


def _stray(fleet: Fleet) -> ActualServer:
    catalog = load_catalog(str(fleet.provider.name))
    offer = PROVIDERS[str(fleet.provider.name)]
    template = dataclasses.replace(
        fleet.groups[0],
        name="web",
        count=1,
        server_type=offer["types"][0],
        locations=(offer["locations"][0],),
    )
    lone = dataclasses.replace(fleet, groups=(template,))
    return as_built(lone, expand_fleet(lone, catalog)[0], catalog, "stray")


providers = st.sampled_from(sorted(PROVIDERS))


@PROFILE
@given(providers.flatmap(fleets))
def test_a_fleet_built_as_specified_has_nothing_to_do(fleet: Fleet) -> None:
    catalog = load_catalog(str(fleet.provider.name))
    options = DiffOptions(install_hash=digest_of(fleet))
    empty = diff_fleet(fleet, catalog, [], [], options=options)
    assert {c.action for c in empty.changes} <= {Action.CREATE}
    assert len(empty.changes) == sum(g.count for g in fleet.groups)
    servers, records = apply_plan(empty, fleet, catalog, [], [])
    plan = diff_fleet(fleet, catalog, servers, records, options=options)
    assert plan.changes == () and plan.problems == () and plan.warnings == ()
    assert plan.unchanged == len(empty.changes)
    assert plan.before == plan.after == empty.after


@PROFILE
@given(st.data(), providers, st.booleans())
def test_any_plan_converges_on_the_model(
    data: st.DataObject, provider: str, delete_orphans: bool
) -> None:
    first = data.draw(fleets(provider), label="first")
    second = data.draw(fleets(provider), label="second")
    servers, records = data.draw(drifted(first), label="actual")
    catalog = load_catalog(provider)
    options = DiffOptions(delete_orphans=delete_orphans, install_hash=digest_of(second))
    plan = diff_fleet(second, catalog, servers, records, options=options)
    if plan.is_blocked:
        assert {p.code for p in plan.problems} == {"disk_shrink"}
        return
    desired = {s.name for s in expand_fleet(second, catalog)}
    for change in plan.changes:
        if change.action is Action.DELETE and change.server in desired:
            assert "a second server" in change.reasons[0]
    assert sum(c.monthly_delta for c in plan.changes) == pytest.approx(plan.monthly_delta, abs=1e-6)
    servers, records = apply_plan(plan, second, catalog, servers, records)
    again = diff_fleet(second, catalog, servers, records, options=options)
    assert again.changes == () and again.problems == ()
    assert again.before == again.after
