"""The apps repository on SQLite and PostgreSQL: version definitions kept once, which
version runs where, rollouts stored after every transition and found again after a crash."""

from __future__ import annotations

import datetime as dt

from engine.apps.rollout import Phase, Target, finish, from_json, new_rollout, start, to_json
from engine.apps.versions import AppDefinition
from engine.model import RollbackMode
from engine.secrets import register_secret
from engine.state.store import Store
from tests.support.clock import Clock

T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)


def _rollout(version: str = "v2") -> dict[str, object]:
    rollout = new_rollout(
        "shop",
        "web",
        version,
        [Target(server=f"web-{n}", group="web", from_version="v1", to_version=version)
         for n in (1, 2)],
        max_unavailable=1,
        rollback=RollbackMode.AUTO,
        now=T0,
    )  # fmt: skip
    return to_json(rollout)


def test_a_definition_is_kept_once_and_names_its_secrets_only(store: Store) -> None:
    definition = AppDefinition(image="web:1", env=(("LOG_LEVEL", "info"),), secret_env=("DB",))
    store.apps.save_version("shop", "web", definition.version, definition.to_json())
    changed = AppDefinition(image="web:2")
    store.apps.save_version("shop", "web", definition.version, changed.to_json())  # ignored
    (kept,) = store.apps.definitions("shop").items()
    assert kept[0] == ("web", definition.version)
    assert AppDefinition.from_json(kept[1]) == definition
    assert AppDefinition.from_json(kept[1]).version == definition.version


def test_where_each_version_runs(store: Store, clock: Clock) -> None:
    store.apps.set_deployed("shop", "web", "web-1", "v1")
    store.apps.set_deployed("shop", "web", "web-2", "v1")
    clock.advance(5)
    store.apps.set_deployed("shop", "web", "web-1", "v2")
    store.apps.set_deployed("shop", "web", "web-2", None)
    (only,) = store.apps.deployed("shop")
    assert (only.server, only.version, only.deployed_at) == ("web-1", "v2", clock())


def test_a_rollout_is_stored_after_each_transition_and_found_open(store: Store) -> None:
    document = _rollout()
    rollout_id = store.apps.add_rollout(document)
    rollout = start(from_json(document), "web-1", T0)
    store.apps.save_rollout(rollout_id, to_json(rollout))
    found = store.apps.open_rollout("shop", "web")
    assert found is not None and found.id == rollout_id
    assert from_json(found.document) == rollout
    for server in ("web-1", "web-2"):
        if rollout.server(server).step.value == "pending":
            rollout = start(rollout, server, T0)
        rollout = finish(rollout, server, ok=True, now=T0)  # switched: watched
        rollout = finish(rollout, server, ok=True, now=T0)  # watched long enough
    store.apps.save_rollout(rollout_id, to_json(rollout))
    assert rollout.phase is Phase.SUCCEEDED
    assert store.apps.open_rollout("shop", "web") is None
    (history,) = store.apps.rollouts("shop", "web")
    assert (history.phase, history.finished_at is not None) == ("succeeded", True)


def test_history_is_newest_first_and_reasons_are_redacted(store: Store) -> None:
    secret = register_secret("sw0rdfish-in-a-reason")
    first = store.apps.add_rollout(_rollout("v2"))
    second = store.apps.add_rollout({**_rollout("v3"), "reason": f"web-1: said {secret}"})
    assert [r.id for r in store.apps.rollouts("shop")] == [second, first]
    newest = store.apps.rollouts("shop", "web", limit=1)[0]
    assert newest.reason == newest.document["reason"] == "web-1: said ***"


def test_forgetting_the_fleet_drops_its_apps(store: Store) -> None:
    store.apps.save_version("shop", "web", "v1", AppDefinition(image="web:1").to_json())
    store.apps.set_deployed("shop", "web", "web-1", "v1")
    store.apps.add_rollout(_rollout())
    store.forget_fleet("shop")
    assert store.apps.definitions("shop") == {}
    assert store.apps.deployed("shop") == ()
    assert store.apps.rollouts("shop") == ()
