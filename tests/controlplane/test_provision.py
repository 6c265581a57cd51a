"""The provision handler: a requested server is created once through the Provisioner seam
(here a small Hetzner client against the stateful fake API), whatever fails on the way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from engine.catalog import load_catalog
from engine.controlplane.fleets import register_fleet
from engine.controlplane.handlers import PROVISION_JOB, ProvisionHandler
from engine.controlplane.jobs import JobRegistry, Worker
from engine.controlplane.servers import POLL_INVENTORY_JOB, SSH_CHECK_JOB, request_server
from engine.model import Stage
from engine.placement import expand_fleet
from engine.providers.seam import Provisioned
from engine.state import FleetSettings, Job, JobState, NewJob, ServerRecord
from engine.state.store import Store, open_store
from tests.controlplane.conftest import make_fleet
from tests.fakes.hcloud import FakeHcloud, Fault
from tests.support.clock import Clock
from tests.support.http import serve


@dataclass
class HetznerProvisioner:
    """Creates the server with its ownership labels, or finds the one it created before (so a
    retry after a lost answer creates nothing twice). `lose_answers` drops that many answers
    to a create that did happen, as a dropped connection would."""

    base: str
    token: str
    lose_answers: int = 0
    calls: list[str] = field(default_factory=list)

    def __call__(self, record: ServerRecord, fleet: FleetSettings) -> Provisioned:
        self.calls.append(record.name)
        labels = {"fleet": fleet.name, "managed-by": "fleet-engine", "fleet-server": record.name}
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=10) as client:
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            found = client.get("/servers", params={"label_selector": selector})
            found.raise_for_status()
            servers = found.json()["servers"]
            if not servers:
                created = client.post(
                    "/servers",
                    json={
                        "name": record.name,
                        "server_type": record.server_type,
                        "image": "debian-12",
                        "location": record.location,
                        "labels": labels,
                    },
                )
                created.raise_for_status()
                if self.lose_answers:
                    self.lose_answers -= 1
                    raise ConnectionError("the connection dropped before the answer")
                servers = [created.json()["server"]]
        server = servers[0]
        return Provisioned(provider_id=str(server["id"]), ipv4=server["public_net"]["ipv4"]["ip"])


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", now=clock) as opened:
        yield opened


@pytest.fixture
def fake() -> FakeHcloud:
    return FakeHcloud()


@pytest.fixture
def base(fake: FakeHcloud) -> Iterator[str]:
    with serve(fake.app()) as url:
        yield f"{url}/v1"


def _requested(store: Store, *, readiness: str = "phone-home", max_attempts: int = 5) -> Job:
    fleet = make_fleet(readiness=readiness)
    register_fleet(store, fleet)
    server = expand_fleet(fleet, load_catalog("hcloud"))[0]
    request_server(store, fleet, server)
    return store.jobs.enqueue(
        NewJob(
            kind=PROVISION_JOB,
            fleet=fleet.name,
            server=server.name,
            key=f"provision/{fleet.name}/{server.name}",
            max_attempts=max_attempts,
        )
    )


def _job(store: Store, job_id: int) -> Job:
    job = store.jobs.get(job_id)
    assert job is not None
    return job


def test_a_requested_server_is_created_once_despite_a_failure_and_a_lost_answer(
    store: Store, clock: Clock, fake: FakeHcloud, base: str
) -> None:
    job = _requested(store, readiness="poll")
    name = _job(store, job.id).server
    provisioner = HetznerProvisioner(base, fake.token, lose_answers=1)
    worker = Worker(store, JobRegistry([ProvisionHandler(store, provisioner)]))

    fake.faults.append(Fault(status=503))  # the first look-up fails
    assert worker.run_once() is not None
    record = store.servers.get("web-prod", name or "")
    assert record is not None and record.stage is Stage.CREATING
    failed = _job(store, job.id)
    assert failed.state is JobState.QUEUED and "503" in failed.last_error
    assert fake.servers == []

    clock.advance(2)
    assert worker.run_once() is not None  # created, but the answer is lost
    assert len(fake.servers) == 1
    assert _job(store, job.id).state is JobState.QUEUED

    clock.advance(4)
    assert worker.run_once() is not None  # finds the server it made: no second one
    assert len(fake.servers) == 1
    made = fake.servers[0]
    done = _job(store, job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"provider_id": str(made["id"])}
    record = store.servers.get("web-prod", name or "")
    assert record is not None and record.stage is Stage.BOOTING
    assert record.provider_id == str(made["id"])
    assert record.ipv4 == made["public_net"]["ipv4"]["ip"]
    stages = [t.stage for t in store.servers.transitions("web-prod", name)]
    assert stages == [Stage.REQUESTED, Stage.CREATING, Stage.BOOTING]
    # readiness: poll looks for it by polling at once
    assert [j.kind for j in store.jobs.all("web-prod", states=(JobState.QUEUED,))] == [
        POLL_INVENTORY_JOB,
        SSH_CHECK_JOB,
    ]

    # Running the job again (a duplicate, or a crash after the registration) does nothing.
    again = store.jobs.enqueue(NewJob(kind=PROVISION_JOB, fleet="web-prod", server=name))
    assert worker.run_once() is not None
    assert _job(store, again.id).result == {"provider_id": str(made["id"]), "skipped": "booting"}
    assert provisioner.calls == [name, name, name]
    assert len(fake.servers) == 1


def test_a_phone_home_fleet_waits_for_the_phone_home(
    store: Store, fake: FakeHcloud, base: str
) -> None:
    _requested(store)
    worker = Worker(
        store, JobRegistry([ProvisionHandler(store, HetznerProvisioner(base, fake.token))])
    )
    assert worker.run_once() is not None
    (record,) = store.servers.all("web-prod")
    assert record.stage is Stage.BOOTING
    assert store.jobs.all("web-prod", kind=POLL_INVENTORY_JOB) == ()


def test_the_last_failed_attempt_fails_the_server_with_the_reason(
    store: Store, clock: Clock, fake: FakeHcloud, base: str
) -> None:
    job = _requested(store, max_attempts=2)
    fake.faults.extend([Fault(status=403), Fault(status=403)])
    provisioner = HetznerProvisioner(base, fake.token)
    worker = Worker(store, JobRegistry([ProvisionHandler(store, provisioner)]))
    assert worker.run_once() is not None
    clock.advance(2)
    assert worker.run_once() is not None
    failed = _job(store, job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 2
    (record,) = store.servers.all("web-prod")
    assert record.stage is Stage.FAILED
    assert record.stage_reason.startswith("creating it failed: HTTPStatusError:")
    assert "403" in record.stage_reason
    (event,) = [e for e in store.events.all("web-prod") if e.kind == "server.failed"]
    assert event.server == record.name
    assert fake.servers == []


def test_a_server_past_creating_is_left_alone(store: Store, fake: FakeHcloud, base: str) -> None:
    job = _requested(store)
    name = _job(store, job.id).server or ""
    store.servers.set_stage("web-prod", name, Stage.READY)
    provisioner = HetznerProvisioner(base, fake.token)
    Worker(store, JobRegistry([ProvisionHandler(store, provisioner)])).run_once()
    assert _job(store, job.id).result == {"provider_id": "", "skipped": "ready"}
    assert provisioner.calls == [] and fake.servers == []
    assert store.servers.all("web-prod")[0].stage is Stage.READY
