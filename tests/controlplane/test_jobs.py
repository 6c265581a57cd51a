"""The durable job queue on SQLite: claims, leases that outlive a killed worker, retries with
back-off, and the last attempt ending in failed with its reason."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.controlplane.jobs import (
    ELSEWHERE_S,
    Again,
    Done,
    Elsewhere,
    JobRegistry,
    Permanent,
    Worker,
    WorkerPool,
    backoff_s,
    reap_dead_workers,
)
from engine.state import Job, JobState, NewJob
from engine.state.store import Store, open_store
from tests.support.clock import Clock
from tests.support.postgres import Cluster
from tests.support.wait import wait_until

KIND = "probe"


@dataclass
class ProbeHandler:
    """Does what `script` says for each run, in order; remembers runs and give-ups."""

    script: list[str]
    kind: str = KIND
    holds_fleet_lock: bool = False
    runs: list[int] = field(default_factory=list)
    given_up: list[tuple[int, str]] = field(default_factory=list)

    def run(self, job: Job) -> Done | Again:
        self.runs.append(job.attempts)
        step = self.script.pop(0) if self.script else "done"
        if step == "fail":
            raise RuntimeError(f"boom on attempt {job.attempts}")
        if step == "permanent":
            raise Permanent("this cannot work")
        if step == "elsewhere":
            raise Elsewhere("this control plane does not serve web-prod")
        if step == "again":
            return Again(7, {"page": job.attempts + 1})
        return Done({"attempt": job.attempts})

    def give_up(self, job: Job, error: str) -> None:
        self.given_up.append((job.id, error))


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", now=clock) as opened:
        yield opened


def _worker(store: Store, handler: ProbeHandler, lease_s: float = 30) -> Worker:
    return Worker(store, JobRegistry([handler]), lease_s=lease_s)


def _job(store: Store, job_id: int) -> Job:
    job = store.jobs.get(job_id)
    assert job is not None
    return job


def test_claims_take_due_jobs_in_order_each_by_one_worker(store: Store, clock: Clock) -> None:
    first = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", key="probe/1"))
    second = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod"))
    later = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", delay_s=60))
    store.jobs.enqueue(NewJob(kind="other", fleet="web-prod"))
    # The same key while the job is live: the live job, not a second one.
    assert store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", key="probe/1")).id == first.id

    a = store.jobs.claim("worker-a", [KIND], lease_s=300)
    b = store.jobs.claim("worker-b", [KIND], lease_s=300)
    assert a is not None and b is not None
    assert (a.id, a.lease_owner, a.attempts) == (first.id, "worker-a", 1)
    assert (b.id, b.lease_owner, b.state) == (second.id, "worker-b", JobState.RUNNING)
    assert a.lease_expires_at == clock.now + dt.timedelta(seconds=300)
    assert store.jobs.claim("worker-c", [KIND], lease_s=30) is None  # `later` is not due
    clock.advance(60)
    c = store.jobs.claim("worker-c", [KIND], lease_s=30)
    assert c is not None and c.id == later.id

    assert store.jobs.finish(a.id, "worker-a", {"ok": True})
    assert not store.jobs.finish(b.id, "worker-a", {})  # not its lease
    done = _job(store, a.id)
    assert done.state is JobState.SUCCEEDED and done.result == {"ok": True}
    # Its key is free again once it ended.
    assert store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", key="probe/1")).id != first.id


def _claim_and_hang(url: str, lease_s: float) -> subprocess.Popen[str]:
    """A worker process that claims one job and then hangs until killed."""
    program = (
        "import sys, time\n"
        "from engine.controlplane.jobs import worker_id\n"
        "from engine.state.store import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "owner = worker_id()\n"
        f"job = store.jobs.claim(owner, [{KIND!r}], float(sys.argv[2]))\n"
        "print(job.id, owner, flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program, url, str(lease_s)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return process


def _killed_claim(store: Store, lease_s: float) -> tuple[int, str]:
    process = _claim_and_hang(store.url, lease_s)
    try:
        assert process.stdout is not None
        job_id, owner = process.stdout.readline().split()
    finally:
        process.kill()
        process.wait(timeout=10)
    return int(job_id), owner


def test_the_job_of_a_killed_worker_is_claimed_again_when_its_lease_runs_out(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    real = Clock(dt.datetime.now(dt.UTC))
    with open_store(url, now=real) as store:
        job = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", key="probe/killed"))
        job_id, dead = _killed_claim(store, lease_s=30)
        assert job_id == job.id
        claimed = _job(store, job_id)
        assert (claimed.state, claimed.lease_owner, claimed.attempts) == (
            JobState.RUNNING,
            dead,
            1,
        )
        assert store.jobs.claim("survivor", [KIND], lease_s=30) is None  # the lease holds
        # The killed worker took its lease by the real clock, after its process started.
        real.now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
        again = store.jobs.claim("survivor", [KIND], lease_s=30)
        assert again is not None and again.id == job_id
        assert (again.lease_owner, again.attempts) == ("survivor", 2)
        # The dead worker cannot finish it any more.
        assert not store.jobs.finish(job_id, dead, {})
        assert _job(store, job_id).lease_owner == "survivor"


def test_a_worker_starting_on_the_same_host_frees_the_jobs_of_dead_workers_at_once(
    tmp_path: Path,
) -> None:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod"))
        job_id, dead = _killed_claim(store, lease_s=3600)
        assert store.jobs.lease_owners() == (dead,)
        assert store.jobs.claim("survivor", [KIND], lease_s=30) is None
        assert reap_dead_workers(store) == 1
        again = store.jobs.claim("survivor", [KIND], lease_s=30)
        assert again is not None and again.id == job_id and again.attempts == 2


def test_a_killed_workers_last_attempt_ends_the_job_as_failed(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        job = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", max_attempts=1))
        _killed_claim(store, lease_s=3600)
        reap_dead_workers(store)
        handler = ProbeHandler(script=[])
        assert _worker(store, handler).run_once() is not None
        failed = _job(store, job.id)
        assert failed.state is JobState.FAILED
        assert failed.last_error == "the worker running it died"
        assert handler.runs == []  # not run a second time past its last attempt
        assert handler.given_up == [(job.id, "the worker running it died")]


def test_failed_attempts_back_off_exponentially_and_the_last_one_fails_the_job(
    store: Store, clock: Clock
) -> None:
    job = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", server="web-1", max_attempts=4))
    handler = ProbeHandler(script=["fail", "fail", "fail", "fail"])
    worker = _worker(store, handler)
    waits = []
    for attempt in (1, 2, 3):
        assert worker.run_once() is not None
        queued = _job(store, job.id)
        assert queued.state is JobState.QUEUED and queued.attempts == attempt
        assert queued.last_error == f"RuntimeError: boom on attempt {attempt}"
        assert queued.lease_owner is None
        waits.append((queued.run_after - clock.now).total_seconds())
        assert worker.run_once() is None  # not due yet
        clock.advance(waits[-1])
    assert waits == [2.0, 4.0, 8.0] == [backoff_s(n) for n in (1, 2, 3)]
    assert worker.run_once() is not None
    failed = _job(store, job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 4
    assert failed.last_error == "RuntimeError: boom on attempt 4"
    assert failed.finished_at == clock.now
    assert handler.runs == [1, 2, 3, 4]
    assert handler.given_up == [(job.id, "RuntimeError: boom on attempt 4")]
    clock.advance(3600)
    assert worker.run_once() is None  # failed for good


def test_a_woken_pool_runs_new_jobs_without_waiting_for_its_next_look(tmp_path: Path) -> None:
    handler = ProbeHandler(script=[])
    with (
        open_store(f"sqlite:///{tmp_path / 'state.db'}") as store,
        # Idle workers would look again only in an hour: each job runs because of wake().
        WorkerPool(store, JobRegistry([handler]), workers=2, idle_poll_s=3600) as pool,
    ):
        for n in (1, 2, 3):
            job = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod"))
            pool.wake()
            wait_until(lambda j=job: _job(store, j.id).state is JobState.SUCCEEDED, what=f"job {n}")
        assert len(handler.runs) == 3


def test_a_wake_up_one_worker_takes_is_not_taken_from_the_others(tmp_path: Path) -> None:
    # A worker clears its wake-up once it has woken. Were the pool's workers to share one, a
    # stop that the first to wake cleared would leave a worker that had not yet gone to wait
    # asleep for idle_poll_s (an hour here): the pool's stop hung waiting for it.
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        pool = WorkerPool(store, JobRegistry([ProbeHandler(script=[])]), idle_poll_s=3600)
        pool.wake()
        first, second = pool.workers
        first.nudge.clear()
        assert second.nudge.is_set()


def test_backoff_is_capped() -> None:
    assert backoff_s(30) == 300.0


def test_waiting_is_not_failing_and_permanent_fails_at_once(store: Store, clock: Clock) -> None:
    job = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", max_attempts=2))
    handler = ProbeHandler(script=["again", "again", "again", "permanent"])
    worker = _worker(store, handler)
    for _ in range(3):
        assert worker.run_once() is not None
        waiting = _job(store, job.id)
        assert waiting.state is JobState.QUEUED and waiting.attempts == 0
        assert waiting.payload == {"page": 2}  # handed over to the next run
        assert waiting.run_after == clock.now + dt.timedelta(seconds=7)
        clock.advance(7)
    assert worker.run_once() is not None
    failed = _job(store, job.id)
    assert failed.state is JobState.FAILED and failed.last_error == "this cannot work"
    assert failed.attempts == 1
    assert handler.given_up == [(job.id, "this cannot work")]


def test_a_job_for_another_control_plane_goes_back_to_the_queue_without_an_attempt(
    store: Store, clock: Clock
) -> None:
    job = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod", max_attempts=1))
    handler = ProbeHandler(script=["elsewhere", "elsewhere"])
    worker = _worker(store, handler)
    for _ in range(2):
        assert worker.run_once() is not None
        left = _job(store, job.id)
        assert left.state is JobState.QUEUED and left.attempts == 0
        assert left.last_error == "this control plane does not serve web-prod"
        assert worker.run_once() is None  # not claimed again at once
        clock.advance(ELSEWHERE_S)
    assert worker.run_once() is not None  # the control plane that serves it runs it
    assert _job(store, job.id).state is JobState.SUCCEEDED and handler.given_up == []


APPLY = "apply-probe"


@dataclass
class LockingHandler:
    """Holds the fleet's stack lock while it runs, as `engine up` does; a run of `fleet` waits
    for `gates[fleet]` (the test opens it) once it said it started."""

    store: Store
    gates: dict[str, threading.Event]
    kind: str = APPLY
    holds_fleet_lock: bool = True
    started: dict[str, threading.Event] = field(default_factory=dict)
    ran: list[int] = field(default_factory=list)

    def run(self, job: Job) -> Done:
        with self.store.locks.hold(job.fleet, command=f"probe job {job.id}"):
            self.ran.append(job.id)
            self.started.setdefault(job.fleet, threading.Event()).set()
            self.gates[job.fleet].wait(60)
        return Done()

    def give_up(self, job: Job, error: str) -> None:
        """Nothing to undo: a probe's job is not tried again."""


def test_jobs_holding_their_fleets_lock_run_one_after_another_and_other_fleets_meanwhile(
    tmp_path: Path,
) -> None:
    # Before, a second worker took the fleet's next job while the first ran, and it failed
    # for good on the lock its sibling held.
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        first, second = (store.jobs.enqueue(NewJob(kind=APPLY, fleet="web-prod")) for _ in "12")
        other = store.jobs.enqueue(NewJob(kind=APPLY, fleet="api"))
        probe = store.jobs.enqueue(NewJob(kind=KIND, fleet="web-prod"))
        gates = {"web-prod": threading.Event(), "api": threading.Event()}
        gates["api"].set()
        locking = LockingHandler(store, gates)
        registry = JobRegistry([locking, ProbeHandler(script=[])])
        busy, free = Worker(store, registry), Worker(store, registry)
        running = threading.Thread(target=busy.run_once)
        running.start()
        try:
            wait_until(lambda: "web-prod" in locking.started, what="web-prod's first job")
            # Its fleet's next job waits; the other fleet's, and a job without the lock, run.
            taken = [free.run_once() for _ in range(3)]
            assert [job and job.id for job in taken] == [other.id, probe.id, None]
            assert _job(store, second.id).state is JobState.QUEUED
        finally:
            gates["web-prod"].set()
            running.join(60)
        assert free.run_once() is not None
        assert locking.ran == [first.id, other.id, second.id]
        assert {j.state for j in store.jobs.all()} == {JobState.SUCCEEDED}


def test_on_postgresql_two_workers_claiming_at_once_take_one_job_of_a_fleet(
    postgres: Cluster,
) -> None:
    with open_store(postgres.create_database()) as store:
        first, second = (store.jobs.enqueue(NewJob(kind=APPLY, fleet="web-prod")) for _ in "12")
        other = store.jobs.enqueue(NewJob(kind=APPLY, fleet="api"))
        with store.transaction() as tx:
            mine = tx.jobs.claim("worker-a", [APPLY], lease_s=30, one_per_fleet=[APPLY])
            # Another worker claims while the first one's claim is not committed yet: it
            # cannot see that claim, and must still not take the fleet's next job.
            theirs = store.jobs.claim("worker-b", [APPLY], lease_s=30, one_per_fleet=[APPLY])
        assert mine is not None and theirs is not None
        assert (mine.id, theirs.id) == (first.id, other.id)
        assert store.jobs.claim("worker-c", [APPLY], lease_s=30, one_per_fleet=[APPLY]) is None
        assert store.jobs.finish(first.id, "worker-a", {})
        after = store.jobs.claim("worker-c", [APPLY], lease_s=30, one_per_fleet=[APPLY])
        assert after is not None and after.id == second.id


def test_a_fleets_job_waiting_to_run_again_keeps_its_place(store: Store, clock: Clock) -> None:
    # An apply waiting for a lock another command holds is tried again later: the fleet's
    # applies queued after it wait for it, though they are due.
    first, second = (store.jobs.enqueue(NewJob(kind=APPLY, fleet="web-prod")) for _ in "12")
    handler = ProbeHandler(script=["again"], kind=APPLY, holds_fleet_lock=True)
    worker = _worker(store, handler)
    assert (job := worker.run_once()) is not None and job.id == first.id
    assert worker.run_once() is None
    clock.advance(7)
    taken = [worker.run_once(), worker.run_once()]
    assert [job and job.id for job in taken] == [first.id, second.id]
