"""TimedCache: fleet keys and settings held in memory, reloaded without making anyone wait."""

from __future__ import annotations

import threading

from engine.controlplane.keys import TimedCache
from tests.support.wait import wait_until


def test_a_held_value_is_answered_at_once_and_a_stale_one_reloaded_once_meanwhile() -> None:
    loads: list[str] = []
    release = threading.Event()

    def load(name: str) -> str:
        loads.append(name)
        if len(loads) > 1:
            release.wait(10)  # the reload is slow
        return f"{name}-{len(loads)}"

    cache = TimedCache(load, ttl_s=0.0)  # every value is stale at once
    assert cache.held("web-prod") == (False, None)  # nothing held: the caller loads
    assert cache.get("web-prod") == "web-prod-1"
    # Stale: the held value comes back at once, however many ask, and one reload starts.
    assert [cache.held("web-prod") for _ in range(20)] == [(True, "web-prod-1")] * 20
    release.set()
    wait_until(lambda: cache.held("web-prod") == (True, "web-prod-2"), what="the reload")
    assert loads.count("web-prod") <= 3  # the first load, the reload, maybe one more


def test_a_fresh_value_is_not_loaded_again() -> None:
    loads: list[str] = []
    cache = TimedCache(lambda name: loads.append(name) or name.upper(), ttl_s=3600)
    assert cache.get("a") == "A" and cache.get("a") == "A" and cache.held("a") == (True, "A")
    assert loads == ["a"]


def test_nothing_is_held_for_a_name_without_a_value_so_it_is_looked_up_again() -> None:
    present: dict[str, str] = {}
    cache = TimedCache(present.get, ttl_s=3600)
    assert cache.get("staging") is None and cache.held("staging") == (False, None)
    present["staging"] = "key"  # the fleet was registered a moment later
    assert cache.get("staging") == "key"
    assert cache.held("staging") == (True, "key")
