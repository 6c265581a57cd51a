"""The polling fallback's handlers: paged inventory polling against the stateful fake Hetzner
API (carrying on from the page where it stopped), and the SSH check against a real sshd."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.controlplane.fleets import register_fleet
from engine.controlplane.handlers import PollInventoryHandler, SshCheckHandler
from engine.controlplane.jobs import JobRegistry, Worker
from engine.controlplane.lookup import InventoryUnavailable, ReaderFactory, provider_reader
from engine.controlplane.monitor import start_overdue_polling
from engine.controlplane.servers import POLL_INVENTORY_JOB, SSH_CHECK_JOB, polling_jobs
from engine.controlplane.views import host_keys_note
from engine.model import Stage
from engine.providers.registry import inventory_reader
from engine.providers.retry import RetryPolicy
from engine.state import FleetSettings, Job, JobState, ServerRecord
from engine.state.store import Store, open_store
from tests.controlplane.conftest import make_fleet
from tests.fakes.hcloud import FakeHcloud, Fault
from tests.support.clock import Clock
from tests.support.fleets import example_fleet
from tests.support.http import serve
from tests.support.sshd import free_port, running_sshd


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", now=clock) as opened:
        yield opened


@pytest.fixture
def settings(store: Store) -> FleetSettings:
    return register_fleet(store, make_fleet())


def _booting(store: Store, name: str, **fields: Any) -> None:
    values: dict[str, Any] = {"stage": Stage.BOOTING, **fields}
    store.servers.save(
        ServerRecord(fleet="web-prod", name=name, group="web", provider="hcloud", **values)
    )


def _the_job(store: Store, kind: str) -> Job:
    (job,) = store.jobs.all("web-prod", kind=kind)
    return job


def _owned(name: str) -> dict[str, str]:
    return {
        "fleet": "web-prod",
        "managed-by": "fleet-engine",
        "fleet-group": "web",
        "fleet-server": name,
    }


def _fake_reader(fake: FakeHcloud, url: str) -> ReaderFactory:
    """The real Hetzner reader against the fake, failing at once instead of retrying."""
    policy = RetryPolicy(attempts=1, sleep=lambda _s: None)
    fleet = example_fleet("hetzner", url)
    return lambda _settings: inventory_reader(fleet, token=fake.token, policy=policy)


def _pages_read(fake: FakeHcloud) -> list[str]:
    return [r.query.get("page", "1") for r in fake.requests if r.path == "/v1/servers"]


def test_inventory_polling_reads_a_page_a_run_and_carries_on_where_it_stopped(
    store: Store, settings: FleetSettings, clock: Clock
) -> None:
    fake = FakeHcloud()
    listed = {
        n: fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"), status="running")
        for n in range(1, 121)  # three pages of 50
    }
    starting = fake.add_server("web-200", labels=_owned("web-200"), status="starting")
    for n in (3, 77, 111):
        _booting(store, f"web-{n}", provider_id=str(listed[n]["id"]), ipv4="198.51.100.1")
    _booting(store, "web-112")  # registered without id or address: polling fills them in
    _booting(store, "web-200", provider_id=str(starting["id"]))
    store.jobs.enqueue(polling_jobs(settings, "web-3", clock.now)[0])

    with serve(fake.app()) as base:
        readers = _fake_reader(fake, f"{base}/v1")

        def worker() -> Worker:  # a fresh worker and handler, as after a restart
            handler = PollInventoryHandler(store, readers, clock=clock)
            return Worker(store, JobRegistry([handler]))

        def seen() -> set[str]:
            return {r.name for r in store.servers.all("web-prod") if r.inventory_seen_at}

        assert worker().run_once() is not None
        job = _the_job(store, POLL_INVENTORY_JOB)
        assert (job.state, job.payload, job.attempts) == (JobState.QUEUED, {"page": 2}, 0)
        assert (job.run_after - clock.now).total_seconds() == 2.0
        assert seen() == {"web-3"}

        # The API fails on page 2: the job backs off and keeps its page.
        fake.faults.append(Fault(status=503))
        clock.advance(2)
        assert worker().run_once() is not None
        job = _the_job(store, POLL_INVENTORY_JOB)
        assert (job.state, job.payload, job.attempts) == (JobState.QUEUED, {"page": 2}, 1)
        assert "injected fault" in job.last_error
        assert seen() == {"web-3"}

        clock.advance(2)
        assert worker().run_once() is not None  # a new worker carries on at page 2
        assert seen() == {"web-3", "web-77"}
        clock.advance(2)
        assert worker().run_once() is not None
        assert seen() == {"web-3", "web-77", "web-111", "web-112"}
        job = _the_job(store, POLL_INVENTORY_JOB)
        assert job.payload == {"page": 1}  # a whole pass done: the next starts over
        assert (job.run_after - clock.now).total_seconds() == 15.0
        assert _pages_read(fake) == ["1", "2", "2", "3"]

        filled = store.servers.get("web-prod", "web-112")
        assert filled is not None
        assert filled.provider_id == str(listed[112]["id"])
        assert filled.ipv4 == listed[112]["public_net"]["ipv4"]["ip"]
        kept = store.servers.get("web-prod", "web-3")
        assert kept is not None and kept.ipv4 == "198.51.100.1"  # known addresses stay
        assert all(r.stage is Stage.BOOTING for r in store.servers.all("web-prod"))

        # web-200 (on page 3) was still starting; the next pass sees it running, and then
        # there is nothing left to look for.
        starting["status"] = "running"
        for wait in (15, 2, 2):
            clock.advance(wait)
            assert worker().run_once() is not None
        assert "web-200" in seen()
        clock.advance(15)
        assert worker().run_once() is not None
        job = _the_job(store, POLL_INVENTORY_JOB)
        assert job.state is JobState.SUCCEEDED
        assert _pages_read(fake) == ["1", "2", "2", "3", "1", "2", "3"]


def test_a_server_seen_and_answering_ssh_moves_on_with_keys_not_pinned_by_a_phone_home(
    store: Store, settings: FleetSettings, clock: Clock, tmp_path: Path
) -> None:
    port = free_port()
    store.fleets.save(dataclasses.replace(settings, ssh_port=port))
    _booting(store, "web-1", provider_id="4711", ipv4="127.0.0.1")
    store.jobs.enqueue(polling_jobs(settings, "web-1", clock.now)[1])
    fake = FakeHcloud()
    with serve(fake.app()) as base:
        handler = SshCheckHandler(store, _fake_reader(fake, f"{base}/v1"), clock=clock)
        worker = Worker(store, JobRegistry([handler]))

        def checks_again_in_2_s() -> bool:
            job = _the_job(store, SSH_CHECK_JOB)
            return (
                job.state is JobState.QUEUED
                and job.attempts == 0  # waiting is not failing
                and (job.run_after - clock.now).total_seconds() == 2.0
            )

        # Nothing answers on the port yet: look again in 2 s.
        assert worker.run_once() is not None
        assert checks_again_in_2_s()
        with running_sshd(tmp_path / "sshd", port) as sshd:
            # It answers, but the provider has not listed it running yet: not seen.
            clock.advance(2)
            assert worker.run_once() is not None
            assert checks_again_in_2_s()
            assert store.servers.get("web-prod", "web-1").stage is Stage.BOOTING  # type: ignore[union-attr]

            store.servers.update("web-prod", "web-1", inventory_seen_at=clock.now)
            clock.advance(2)
            assert worker.run_once() is not None

    job = _the_job(store, SSH_CHECK_JOB)
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"moved_on": True, "address": "127.0.0.1"}
    record = store.servers.get("web-prod", "web-1")
    assert record is not None
    assert record.stage is Stage.PHONED_HOME
    assert dict(record.host_keys) == sshd.host_keys
    assert record.host_keys_source == "keyscan"
    assert "NOT pinned from a phone-home" in host_keys_note(record)
    assert "ssh-keyscan" in record.stage_reason
    (event,) = [e for e in store.events.all("web-prod") if e.kind == "server.polled"]
    assert "NOT pinned" in event.message
    installs = store.jobs.all("web-prod", kind="install", server="web-1")
    assert [j.state for j in installs] == [JobState.QUEUED]


def test_no_answer_before_the_deadline_fails_the_server_with_the_reason(
    store: Store, settings: FleetSettings, clock: Clock
) -> None:
    _booting(store, "web-1", provider_id="4711", ipv4="127.0.0.1")
    hurried = dataclasses.replace(settings, phone_home_timeout_s=60)
    store.jobs.enqueue(polling_jobs(hurried, "web-1", clock.now)[1])
    handler = SshCheckHandler(store, lambda _settings: None, clock=clock)
    clock.advance(61)
    assert Worker(store, JobRegistry([handler])).run_once() is not None
    job = _the_job(store, SSH_CHECK_JOB)
    assert job.state is JobState.FAILED
    assert job.last_error == "no phone-home and no SSH answer before the deadline"
    record = store.servers.get("web-prod", "web-1")
    assert record is not None and record.stage is Stage.FAILED
    assert record.stage_reason == (
        "not reachable: no phone-home and no SSH answer before the deadline"
    )


def test_the_monitor_starts_polling_for_servers_whose_phone_home_is_overdue(
    store: Store, settings: FleetSettings, clock: Clock
) -> None:
    store.fleets.save(dataclasses.replace(settings, phone_home_timeout_s=600))
    _booting(store, "web-1", provider_id="1")
    clock.advance(300)
    _booting(store, "web-2", provider_id="2")
    _booting(store, "web-3", provider_id="3", stage=Stage.READY)
    clock.advance(301)  # web-1 has booted for 601 s, web-2 for 301 s

    assert start_overdue_polling(store, clock.now) == 1
    checks = store.jobs.all("web-prod", kind=SSH_CHECK_JOB)
    assert [j.server for j in checks] == ["web-1"]
    assert len(store.jobs.all("web-prod", kind=POLL_INVENTORY_JOB)) == 1
    assert [e.server for e in store.events.all("web-prod") if e.kind == "server.polling"] == [
        "web-1"
    ]
    assert start_overdue_polling(store, clock.now) == 0  # its check is live: not twice

    clock.advance(300)
    assert start_overdue_polling(store, clock.now) == 1
    assert sorted(j.server or "" for j in store.jobs.all("web-prod", kind=SSH_CHECK_JOB)) == [
        "web-1",
        "web-2",
    ]
    assert len(store.jobs.all("web-prod", kind=POLL_INVENTORY_JOB)) == 1  # one per fleet


def test_a_poll_fleet_is_polled_for_at_once(
    store: Store, settings: FleetSettings, clock: Clock
) -> None:
    store.fleets.save(dataclasses.replace(settings, readiness="poll"))
    _booting(store, "web-1", provider_id="1")
    assert start_overdue_polling(store, clock.now) == 1
    assert [j.server for j in store.jobs.all("web-prod", kind=SSH_CHECK_JOB)] == ["web-1"]


def test_a_token_with_a_line_break_makes_the_inventory_unavailable_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_HCLOUD", "abcdefghijkl1234\nWXYZuvwx5678")
    settings = FleetSettings(name="web-prod", provider="hcloud", token_env="FLEET_HCLOUD")
    with pytest.raises(InventoryUnavailable, match="FLEET_HCLOUD has a line break") as info:
        provider_reader(settings)
    assert "abcdefghijkl" not in str(info.value) and "WXYZuvwx" not in str(info.value)
