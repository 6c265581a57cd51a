"""Durable jobs: handlers by kind, and workers that run them from the state store's queue.

    registry = JobRegistry([InstallHandler(...), PollInventoryHandler(...)])
    store.jobs.enqueue(NewJob(kind="install", fleet="web-prod", server="web-1", key="install/..."))
    with WorkerPool(store, registry, workers=2):   # threads; `engine serve` runs them too
        ...

A handler's `run(job)` returns `Done(result)`, or `Again(after_s)` when it is waiting for
something (polling; the attempt is not counted); an exception means the attempt failed:
the job runs again after an exponential back-off (2, 4, 8, ... s, at most 5 min) until
`max_attempts`, then the handler's `give_up` records why. `Permanent` fails the job at once.

Nothing lost, nothing done twice at once: a worker claims a job with a lease (30 s, renewed
every 10 s while the handler runs) in one atomic step (FOR UPDATE SKIP LOCKED on PostgreSQL,
the single write lock on SQLite). If the worker dies, the lease runs out and another worker
claims the job; a worker starting on the same host ends the leases of workers whose process
is gone at once. A worker that lost its lease cannot finish the job (every completion checks
the lease), and handlers are idempotent, so a job cut off half-way is simply run again.

Jobs whose handler holds the fleet's stack lock while it runs (`holds_fleet_lock`: the fleet
API's applies and server actions) run one at a time per fleet, in the order they are due: the
queue hands out none of a fleet while another runs (engine.state.jobs), so they never fail
on a lock a sibling holds, and workers meanwhile take the jobs of other fleets.

An idle worker looks for work every half second; `WorkerPool.wake()` makes the pool's idle
workers look at once (the control plane calls it when a phone-home enqueues an install).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from engine.secrets import redact
from engine.state import Job
from engine.state.store import Store

log = logging.getLogger("engine.controlplane.jobs")

LEASE_S = 30.0
IDLE_POLL_S = 0.5
BACKOFF_S = 2.0
BACKOFF_CAP_S = 300.0
# How long a job this control plane cannot run waits before any worker claims it again.
ELSEWHERE_S = 1.0


@dataclass(frozen=True, slots=True)
class Done:
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Again:
    """Not yet: run again after `after_s`, with `payload` if given; not a failed attempt."""

    after_s: float
    payload: Mapping[str, Any] | None = None


class Permanent(Exception):
    """The job cannot succeed however often it runs: fail it now."""


class Elsewhere(Exception):
    """This control plane cannot run the job but another one on the store may (the job's
    fleet is served elsewhere): it goes back to the queue, not as a failed attempt."""


class Handler(Protocol):
    """Runs jobs of one kind. `run` must be idempotent: it may run again after a crash.
    `holds_fleet_lock`: a job takes its fleet's stack lock while it runs; the workers then
    run one such job of a fleet at a time."""

    kind: str
    holds_fleet_lock: bool

    def run(self, job: Job) -> Done | Again: ...

    def give_up(self, job: Job, error: str) -> None:
        """The job failed for good (after its last attempt, or Permanent)."""
        ...


class JobRegistry:
    """Handlers by job kind."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: Handler) -> None:
        if handler.kind in self._handlers:
            raise ValueError(f"a handler for {handler.kind} jobs is registered already")
        self._handlers[handler.kind] = handler

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    @property
    def one_per_fleet(self) -> tuple[str, ...]:
        """The kinds whose jobs hold their fleet's lock: at most one of them runs per fleet."""
        return tuple(kind for kind, h in self._handlers.items() if h.holds_fleet_lock)

    def handler(self, kind: str) -> Handler:
        return self._handlers[kind]


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones."""
    return float(min(BACKOFF_CAP_S, BACKOFF_S * 2 ** max(0, attempts - 1)))


def worker_id() -> str:
    """host/pid/random: unique per worker, and tells whether its process is still alive."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def is_dead_owner(owner: str) -> bool:
    """Whether a lease owner was a process on this host that no longer runs."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def reap_dead_workers(store: Store) -> int:
    """End the leases of dead workers of this host, so their jobs run again now."""
    dead = [owner for owner in store.jobs.lease_owners() if is_dead_owner(owner)]
    return store.jobs.expire_leases(dead)


class Worker:
    """Claims and runs one job at a time until stopped."""

    def __init__(
        self,
        store: Store,
        registry: JobRegistry,
        *,
        lease_s: float = LEASE_S,
        idle_poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.store = store
        self.registry = registry
        self.lease_s = lease_s
        self.idle_poll_s = idle_poll_s
        self.owner = worker_id()
        # Set when work may have arrived, or the worker is to stop. Its own, not shared with
        # the pool's other workers: the first to wake would clear it for all, and one that
        # had not yet gone to wait would then sleep through the pool's stop for idle_poll_s.
        self.nudge = threading.Event()

    def run_once(self) -> Job | None:
        """Claim one due job and run it; the job as claimed, or None if none was due."""
        job = self.store.jobs.claim(
            self.owner,
            self.registry.kinds,
            self.lease_s,
            one_per_fleet=self.registry.one_per_fleet,
        )
        if job is None:
            return None
        handler = self.registry.handler(job.kind)
        if job.attempts > job.max_attempts:
            # Its last attempt died with its worker.
            error = job.last_error or "the worker running it died"
            if self.store.jobs.fail(job.id, self.owner, error):
                handler.give_up(job, error)
            return job
        stop_renewing = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(job.id, stop_renewing), name=f"lease-{job.id}", daemon=True
        )
        renewer.start()
        try:
            outcome = handler.run(job)
        except Permanent as error:
            self._give_up(handler, job, str(error))
        except Elsewhere as error:
            log.info("%s job %s left for another control plane: %s", job.kind, job.id, error)
            self.store.jobs.retry(
                job.id, self.owner, delay_s=ELSEWHERE_S, error=str(error), count_attempt=False
            )
        except Exception as error:
            message = redact(f"{type(error).__name__}: {error}")
            log.warning("%s job %s attempt %s failed: %s", job.kind, job.id, job.attempts, message)
            if job.attempts >= job.max_attempts:
                self._give_up(handler, job, message)
            else:
                self.store.jobs.retry(
                    job.id, self.owner, delay_s=backoff_s(job.attempts), error=message
                )
        else:
            if isinstance(outcome, Again):
                self.store.jobs.retry(
                    job.id,
                    self.owner,
                    delay_s=outcome.after_s,
                    payload=outcome.payload,
                    count_attempt=False,
                )
            elif not self.store.jobs.finish(job.id, self.owner, outcome.result):
                log.warning("%s job %s finished after losing its lease", job.kind, job.id)
        finally:
            stop_renewing.set()
            renewer.join()
        return job

    def _give_up(self, handler: Handler, job: Job, error: str) -> None:
        if self.store.jobs.fail(job.id, self.owner, error):
            handler.give_up(job, error)

    def _renew(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            if not self.store.jobs.renew_lease(job_id, self.owner, self.lease_s):
                log.warning("job %s: lease lost; another worker may run it", job_id)
                return

    def run(self, stop: threading.Event) -> None:
        """Run jobs until `stop` is set (a job under way is finished first)."""
        while not stop.is_set():
            try:
                ran = self.run_once()
            except Exception as error:  # the store is unreachable: wait and try again
                log.error("the job worker cannot reach the store: %s", redact(str(error)))
                ran = None
            if ran is None:
                self.nudge.wait(self.idle_poll_s)
                self.nudge.clear()


class WorkerPool:
    """`workers` Worker threads, plus the dead-worker reaper, for a `with` block."""

    def __init__(
        self,
        store: Store,
        registry: JobRegistry,
        *,
        workers: int = 2,
        lease_s: float = LEASE_S,
        idle_poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.store = store
        self.workers = [
            Worker(store, registry, lease_s=lease_s, idle_poll_s=idle_poll_s)
            for _ in range(workers)
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        reap_dead_workers(self.store)
        for n, worker in enumerate(self.workers):
            thread = threading.Thread(
                target=worker.run, args=(self._stop,), name=f"job-worker-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Make idle workers look for due jobs now rather than at their next poll."""
        for worker in self.workers:
            worker.nudge.set()

    def stop(self, drain_s: float | None = None) -> None:
        """Stop taking jobs and wait for the ones under way; with `drain_s`, at most that
        long: jobs still running then are handed back (their leases ended, so any worker on
        the store claims them at once; handlers are idempotent) rather than lost or waited
        for."""
        self._stop.set()
        self.wake()
        deadline = None if drain_s is None else time.monotonic() + drain_s
        busy = []
        for worker, thread in zip(self.workers, self._threads, strict=True):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                busy.append(worker.owner)
        if busy:
            handed = self.store.jobs.expire_leases(busy)
            log.warning("stopped with %d job(s) under way: handed back to the queue", handed)
        self._threads.clear()

    @property
    def alive(self) -> int:
        """How many worker threads run."""
        return sum(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
