"""The reconcile loop's decisions over a real store and a stateful model of a provider (the
servers it lists and their power, changed only by carrying out a plan): drift is reported
and left alone in report mode, repaired in repair mode up to the hour's limit, a server on
its way through a job is not drift, and a fleet's loop has one owner."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from engine.catalog import load_catalog
from engine.diff import as_built, as_recorded
from engine.model import Fleet, ProviderName, ReconcileMode, Server, Stage
from engine.placement import expand_fleet
from engine.plan import Action, Plan, Problem
from engine.preview import declared, fleet_keys
from engine.providers import ActualServer, CloudResource, InventoryPage
from engine.providers.retry import ApiCalls
from engine.providers.seam import FleetRun, Provisioner, Site
from engine.reconcile import NOT_WANTED, FleetWatch, Outcome, ReconcileLoops
from engine.state import FleetSpec, NewJob
from engine.state.store import Store, open_store
from tests.support.clock import Clock
from tests.support.fleets import example_fleet
from tests.support.wait import wait_until

SITE = Site(host="127.0.0.1", port=8470, url="https://127.0.0.1:8470", sources=("127.0.0.1",))


@dataclasses.dataclass
class ModelProvider:
    """A provider's servers, listed as they are; powered on only by a plan's change."""

    servers: dict[str, ActualServer]
    provider: ProviderName = ProviderName.HCLOUD
    list_lag_s: float = 0.0
    calls: ApiCalls = dataclasses.field(default_factory=ApiCalls)
    agent_image: str = "registry.example.com/agent:1"
    docker_url: str | None = None
    resources: tuple[CloudResource, ...] = ()

    def read_servers(self) -> tuple[ActualServer, ...]:
        self.calls.requests["GET /servers"] += 1
        return tuple(self.servers.values())

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        return ()

    def read_resources(self, servers: Sequence[ActualServer]) -> tuple[CloudResource, ...]:
        return self.resources

    def read_prerequisites(self) -> tuple[Problem, ...]:
        return ()

    def read_page(self, page: int) -> InventoryPage:
        return InventoryPage(servers=self.read_servers(), next_page=None)

    def reader(self) -> ModelProvider:
        return self

    def provisioner(self, store: Store, servers: Mapping[str, Server]) -> Provisioner | None:
        return None

    def carry_out(self, plan: Plan, run: FleetRun, servers: Sequence[Server]) -> None:
        for change in plan.changes:
            assert change.action is Action.POWER_ON, change
            self.servers[change.server] = dataclasses.replace(
                self.servers[change.server], status="running"
            )
            run.powered_on(change.server)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", now=clock) as opened:
        yield opened


def _watch(
    store: Store, tmp_path: Path, clock: Clock, mode: ReconcileMode, per_hour: int = 10
) -> tuple[FleetWatch, ModelProvider]:
    base = example_fleet("hetzner")
    fleet: Fleet = dataclasses.replace(
        base,
        reconcile=dataclasses.replace(base.reconcile, mode=mode, repairs_per_hour=per_hour),
    )
    catalog = load_catalog("hcloud")
    built = {
        s.name: as_built(fleet, s, catalog, str(100 + n))
        for n, s in enumerate(expand_fleet(fleet, catalog))
    }
    # Its firewalls, networks and keys as the program made them.
    pinned = {name: server.location for name, server in built.items()}
    resources = declared(
        fleet, catalog, pinned, engine_sources=SITE.sources,
        ssh_public_keys=fleet_keys(fleet, tmp_path / "state"),
    )  # fmt: skip
    model = ModelProvider(servers=built, resources=resources)
    watch = FleetWatch(fleet, store, model, SITE, tmp_path / "state", opened=True, clock=clock)  # type: ignore[arg-type]
    for server in built.values():
        group = dict(server.labels)["fleet-group"]
        store.servers.save(as_recorded(fleet, server, group, watch.digest))
    return watch, model


def _off(model: ModelProvider, *names: str) -> None:
    for name in names:
        model.servers[name] = dataclasses.replace(model.servers[name], status="off")


def test_report_mode_records_drift_and_changes_nothing(
    store: Store, tmp_path: Path, clock: Clock
) -> None:
    watch, model = _watch(store, tmp_path, clock, ReconcileMode.REPORT)
    assert watch.reconcile().drift == ()
    _off(model, "web-2")
    outcome = watch.reconcile()
    assert [(d["server"], d["action"]) for d in outcome.drift] == [("web-2", "power_on")]
    assert outcome.repaired == () and model.servers["web-2"].status == "off"
    assert outcome.as_result()["provider"] == {
        name: "off" if name == "web-2" else "running" for name in model.servers
    }
    again = watch.reconcile(outcome.as_result())  # the same drift: not recorded again
    assert again.drift == outcome.drift
    model.servers["web-2"] = dataclasses.replace(model.servers["web-2"], status="running")
    assert watch.reconcile(again.as_result()).drift == ()
    kinds = [e.kind for e in store.events.all(watch.name)]
    assert kinds == ["reconcile.drift", "reconcile.in-sync"]


def test_repair_mode_repairs_within_the_hours_limit(
    store: Store, tmp_path: Path, clock: Clock
) -> None:
    watch, model = _watch(store, tmp_path, clock, ReconcileMode.REPAIR, per_hour=1)
    _off(model, "web-1", "web-3")
    first = watch.reconcile()
    assert [d["server"] for d in first.repaired] == ["web-1"]
    assert model.servers["web-1"].status == "running" and model.servers["web-3"].status == "off"
    assert store.servers.get(watch.name, "web-1").stage is Stage.BOOTING  # type: ignore[union-attr]
    clock.advance(600)
    second = watch.reconcile(first.as_result())
    assert second.repaired == () and second.skipped == "the hour's repairs are spent"
    clock.advance(3001)
    third = watch.reconcile(second.as_result())
    assert [d["server"] for d in third.repaired] == ["web-3"]
    kinds = [e.kind for e in store.events.all(watch.name)]
    assert kinds.count("reconcile.repaired") == 2 and "reconcile.repairs-limited" in kinds


def test_a_server_on_its_way_through_a_job_is_not_drift(
    store: Store, tmp_path: Path, clock: Clock
) -> None:
    watch, model = _watch(store, tmp_path, clock, ReconcileMode.REPAIR)
    _off(model, "web-2")
    store.jobs.enqueue(NewJob(kind="install", fleet=watch.name, server="web-2", key="k"))
    assert watch.reconcile().drift == () and model.servers["web-2"].status == "off"


def test_one_loop_owns_a_fleet_and_a_stopped_one_hands_it_over(
    store: Store, tmp_path: Path, clock: Clock
) -> None:
    watch, _ = _watch(store, tmp_path, clock, ReconcileMode.REPORT)

    def ran() -> bool:
        lease = store.leases.get(watch.name)
        return lease is not None and lease.last_run_at is not None

    with ReconcileLoops(store, [watch], "here/1/a", tick_s=0.05):
        wait_until(ran, what="the first loop's first run")
        with ReconcileLoops(store, [watch], "there/2/b", tick_s=0.05) as other:
            wait_until(lambda: store.events.all(watch.name), what="the owner's event")
            assert not other.status[watch.name].owner
        lease = store.leases.get(watch.name)
        assert lease is not None and lease.owner == "here/1/a" and lease.last_run_at == clock.now
    released = store.leases.get(watch.name)
    assert released is not None and released.expires_at < clock.now + dt.timedelta(seconds=1)
    assert store.leases.take(watch.name, "there/2/b", ttl_s=30) is not None


def test_a_watch_whose_spec_is_gone_or_changed_does_nothing_not_even_under_the_lock(
    store: Store, tmp_path: Path, clock: Clock
) -> None:
    watch, model = _watch(store, tmp_path, clock, ReconcileMode.REPAIR)
    store.specs.save(
        FleetSpec(fleet=watch.name, text="v1", digest="d1", updated_at=clock.now, updated_by="ops")
    )
    watch.spec_digest = "d1"
    _off(model, "web-2")
    # The spec changes through the API while the run plans: under the lock, nothing is done.
    planned = watch.plan

    def plan_then_change() -> tuple[Plan, dict[str, str]]:
        made = planned()
        store.specs.save(
            FleetSpec(
                fleet=watch.name, text="v2", digest="d2", updated_at=clock.now, updated_by="ops"
            )
        )
        return made

    watch.plan = plan_then_change  # type: ignore[method-assign]
    assert watch.reconcile().skipped == NOT_WANTED
    assert model.servers["web-2"].status == "off"
    watch.plan = planned  # type: ignore[method-assign]
    # The next run does not even read the provider; nor once `engine destroy` forgot it.
    assert watch.reconcile() == Outcome(skipped=NOT_WANTED)
    store.forget_fleet(watch.name)
    assert watch.reconcile() == Outcome(skipped=NOT_WANTED)
    assert model.calls.requests["GET /servers"] == 1
    assert [e.kind for e in store.events.all(watch.name)] == []


def test_a_removed_fleet_loses_its_loop_and_lease_and_one_put_back_has_one_loop(
    store: Store, tmp_path: Path, clock: Clock
) -> None:
    watch, model = _watch(store, tmp_path, clock, ReconcileMode.REPORT)
    with ReconcileLoops(store, [], "here/1/a", tick_s=0.05) as loops:
        loops.put(watch)
        wait_until(lambda: model.calls.requests["GET /servers"] == 1, what="a first run")
        loops.remove(watch.name)

        def released() -> bool:
            lease = store.leases.get(watch.name)
            return lease is not None and lease.expires_at <= clock.now

        wait_until(released, what="the lease released")
        loops.put(watch)
        loops.put(watch)  # a new spec for a fleet already looping: no second loop
        clock.advance(watch.fleet.reconcile.interval_s)
        wait_until(lambda: model.calls.requests["GET /servers"] == 2, what="a run after put")
        threads = [t.name for t in threading.enumerate() if t.is_alive()]
        assert threads.count(f"reconcile-{watch.name}") == 1


_DIES_HOLDING_THE_LOCK = """
import os, sys
from engine.state.store import open_store
store = open_store(sys.argv[1])
store.locks.acquire(sys.argv[2], command="engine up web.yaml")
os._exit(0)  # killed: the lock is never given back
"""


def test_repair_takes_over_a_lock_whose_holder_died_on_this_host(
    store: Store, tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # It skipped every repair ("locked: engine up web.yaml") until someone ran engine unlock.
    watch, model = _watch(store, tmp_path, clock, ReconcileMode.REPAIR)
    died = subprocess.run(
        [sys.executable, "-c", _DIES_HOLDING_THE_LOCK, store.url, watch.name],
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        timeout=60,
    )
    assert died.returncode == 0 and len(store.locks.all()) == 1
    _off(model, "web-2")
    with caplog.at_level(logging.INFO):
        outcome = watch.reconcile()
    assert outcome.skipped == "" and [d["server"] for d in outcome.repaired] == ["web-2"]
    assert model.servers["web-2"].status == "running"
    assert (
        "taking over the lock" in caplog.text and "which died without releasing it" in caplog.text
    )
    assert store.locks.all() == ()
