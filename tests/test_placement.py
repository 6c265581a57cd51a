"""Expansion and placement: names, spread, and stability under growth, shrink and pins."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from engine.catalog import load_catalog
from engine.model import Fleet, Group, Image, ImageKind, Placement, Provider, ProviderName
from engine.placement import expand_fleet, place_group
from engine.spec import load_spec

HCLOUD = load_catalog("hcloud")
EU = ("fsn1", "nbg1", "hel1")


def _group(count: int, locations: tuple[str, ...] = EU, server_type: str = "cx22") -> Group:
    return Group(
        name="web",
        count=count,
        server_type=server_type,
        image=Image(kind=ImageKind.NAME, name="debian-12"),
        locations=locations,
    )


def test_round_robin_in_list_order() -> None:
    placed = place_group(_group(5), HCLOUD, {})
    assert placed == {
        "web-1": "fsn1",
        "web-2": "nbg1",
        "web-3": "hel1",
        "web-4": "fsn1",
        "web-5": "nbg1",
    }


@given(st.integers(0, 60), st.integers(0, 60), st.permutations(EU))
def test_growing_never_moves_and_shrinking_drops_the_highest(
    small: int, large: int, order: list[str]
) -> None:
    small, large = sorted((small, large))
    before = place_group(_group(small, tuple(order)), HCLOUD, {})
    after = place_group(_group(large, tuple(order)), HCLOUD, {})
    assert list(after)[:small] == list(before)
    assert all(after[name] == location for name, location in before.items())


@given(st.integers(1, 90), st.permutations(EU))
def test_spread_is_even(count: int, order: list[str]) -> None:
    loads = Counter(place_group(_group(count, tuple(order)), HCLOUD, {}).values())
    assert max(loads.values()) - min(loads.values(), default=0) <= 1
    assert len(loads) == min(count, 3)


def test_pinned_servers_stay_and_new_ones_fill_the_emptiest_location() -> None:
    pinned = {"web-1": "hel1", "web-2": "hel1", "web-3": "nbg1"}
    placed = place_group(_group(6), HCLOUD, pinned)
    assert [placed[n] for n in ("web-1", "web-2", "web-3")] == ["hel1", "hel1", "nbg1"]
    assert Counter(placed.values()) == {"hel1": 2, "nbg1": 2, "fsn1": 2}


def test_a_pin_outside_the_allowed_locations_is_ignored() -> None:
    placed = place_group(_group(2, ("fsn1", "nbg1")), HCLOUD, {"web-1": "hel1"})
    assert placed == {"web-1": "fsn1", "web-2": "nbg1"}


def test_only_locations_that_offer_the_server_type_are_used() -> None:
    placed = place_group(_group(4, ("ash", "fsn1"), server_type="cx22"), HCLOUD, {})
    assert set(placed.values()) == {"fsn1"}


def test_expand_fleet_names_labels_and_placement_groups() -> None:
    fleet = load_spec("specs/hetzner.yaml")
    servers = expand_fleet(fleet, HCLOUD)
    assert [s.name for s in servers] == ["web-1", "web-2", "web-3", "worker-1", "worker-2"]
    web1 = servers[0]
    labels = dict(web1.labels)
    assert labels["fleet"] == "web-prod"
    assert labels["fleet-server"] == "web-1"
    assert labels["fleet-group"] == "web"
    assert labels["managed-by"] == "fleet-engine"
    assert labels["role"] == "web" and labels["team"] == "web"
    assert web1.placement_group == "web-prod-web"
    assert servers[3].placement_group is None
    assert web1.server_type == "cx32" and servers[3].server_type == "cx22"
    assert web1.backups and not servers[3].backups


def test_expansion_is_deterministic() -> None:
    fleet = Fleet(
        name="f",
        provider=Provider(name=ProviderName.HCLOUD, token_env="T"),
        groups=(dataclasses.replace(_group(7), placement=Placement.SPREAD),),
    )
    assert expand_fleet(fleet, HCLOUD) == expand_fleet(fleet, HCLOUD)


def test_a_kept_expansion_is_given_only_for_the_same_inputs() -> None:
    fleet = load_spec("specs/hetzner.yaml")
    pins = {"web-1": "hel1", "web-2": "hel1"}
    first = expand_fleet(fleet, HCLOUD, pins)
    assert [s.location for s in first[:3]] == ["hel1", "hel1", "fsn1"]
    assert expand_fleet(fleet, HCLOUD, {"web-1": "hel1", "web-2": "hel1"}) is first
    # The caller's mapping changing after is other pins, placed anew.
    pins["web-1"] = "nbg1"
    assert [s.location for s in expand_fleet(fleet, HCLOUD, pins)[:3]] == ["nbg1", "hel1", "fsn1"]
    # So are an equal fleet loaded again and another catalog, as a fresh expansion places them.
    assert expand_fleet(fleet, HCLOUD) == expand_fleet(load_spec("specs/hetzner.yaml"), HCLOUD)
    assert [s.location for s in expand_fleet(fleet, HCLOUD)[:3]] == ["fsn1", "nbg1", "hel1"]
    cx32 = HCLOUD.server_types["cx32"]
    not_in_fsn1 = dataclasses.replace(
        cx32, prices={k: v for k, v in cx32.prices.items() if k != "fsn1"}
    )
    other = dataclasses.replace(HCLOUD, server_types={**HCLOUD.server_types, "cx32": not_in_fsn1})
    assert [s.location for s in expand_fleet(fleet, other)[:3]] == ["nbg1", "hel1", "nbg1"]
