"""Jobs: the durable queue the control plane's workers take their work from.

    store.jobs.enqueue(NewJob(kind="install", fleet="web-prod", server="web-1", key=...))
    job = store.jobs.claim("worker-1@host", kinds={"install"}, lease_s=60)
    store.jobs.finish(job.id, "worker-1@host", {"changed": []})

A claim leases the job to its worker; a worker whose lease ran out has lost the job (its
finish, retry or fail changes nothing and says so), and another can claim it.

Jobs that hold their fleet's stack lock while they run (an apply, a server action: `engine
up` and `engine server` as jobs) are claimed with `one_per_fleet=` their kinds: a fleet's
next one is handed out once the one before it ended, never beside it, while jobs of other
fleets are handed out meanwhile; so a worker never takes a job whose lock a sibling holds.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, exists, or_, select, update

from engine.secrets import redact
from engine.state import Job, JobState, NewJob, schema
from engine.state.database import Database, Repository, dialect_insert, row_fields


class Jobs(Repository):
    """The job queue."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._jobs = schema.metadata().tables["jobs"]

    def enqueue(self, job: NewJob) -> Job:
        """Add a job (or, if its key is live already, return the live job)."""
        with self._write() as connection:
            statement = (
                dialect_insert(self._jobs, postgresql=self._db.is_postgresql)
                .values(_job_values(job, self._db.now()))
                .on_conflict_do_nothing(index_elements=["active_key"])
                .returning(self._jobs)
            )
            row = connection.execute(statement).first()
            if row is None:
                row = connection.execute(
                    select(self._jobs).where(self._jobs.c.active_key == job.key)
                ).one()
        return _job(row)

    def enqueue_many(self, jobs: Iterable[NewJob], at: dt.datetime) -> None:
        """Add jobs enqueued at `at` (each whose key is live already is left out), with one
        statement. No answer is awaited: inside `Database.pipelined`, this costs no round
        trip of its own."""
        rows = [_job_values(job, at) for job in jobs]
        if rows:
            with self._write() as connection:
                connection.execute(_enqueue_inline(self._db.is_postgresql), rows)

    def claim(
        self,
        owner: str,
        kinds: Collection[str],
        lease_s: float,
        *,
        one_per_fleet: Collection[str] = (),
    ) -> Job | None:
        """Take the next job of `kinds` that is due (or whose worker's lease ran out).

        A job of a kind in `one_per_fleet` waits while an older job of those kinds of its
        fleet is queued or running: they run one at a time in each fleet, in the order they
        were enqueued. Only the oldest can be claimed, so two claims at once never take two.

        The claim and the lease are one atomic step: on PostgreSQL the row is locked with
        FOR UPDATE SKIP LOCKED, so workers never wait for each other nor take the same job;
        on SQLite the write transaction holds the database's one write lock.
        """
        jobs = self._jobs
        now = self._db.now()
        due = or_(
            (jobs.c.state == str(JobState.QUEUED)) & (jobs.c.run_after <= now),
            (jobs.c.state == str(JobState.RUNNING)) & (jobs.c.lease_expires_at < now),
        )
        query = (
            select(jobs.c.id)
            .where(jobs.c.kind.in_(list(kinds)), due)
            .order_by(jobs.c.run_after, jobs.c.id)
            .limit(1)
        )
        if one_per_fleet:
            ahead = jobs.alias("ahead")
            waits = jobs.c.kind.in_(list(one_per_fleet)) & exists().where(
                ahead.c.fleet == jobs.c.fleet,
                ahead.c.kind.in_(list(one_per_fleet)),
                ahead.c.state.in_([str(JobState.QUEUED), str(JobState.RUNNING)]),
                ahead.c.id < jobs.c.id,
            )
            query = query.where(~waits)
        if self._db.is_postgresql:
            query = query.with_for_update(skip_locked=True)
        with self._write() as connection:
            job_id = connection.execute(query).scalar()
            if job_id is None:
                return None
            row = connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=str(JobState.RUNNING),
                    attempts=jobs.c.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    updated_at=now,
                )
                .returning(jobs)
            ).one()
        return _job(row)

    def renew_lease(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend a running job's lease; False if `owner` no longer holds it."""
        now = self._db.now()
        return self._while_leased(
            job_id, owner, lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now
        )

    def finish(self, job_id: int, owner: str, result: Mapping[str, Any]) -> bool:
        """Mark a job succeeded; False (and nothing changed) if `owner` lost its lease."""
        now = self._db.now()
        return self._while_leased(
            job_id,
            owner,
            state=str(JobState.SUCCEEDED),
            result=dict(result),
            active_key=None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            finished_at=now,
        )

    def retry(
        self,
        job_id: int,
        owner: str,
        *,
        delay_s: float,
        error: str = "",
        payload: Mapping[str, Any] | None = None,
        count_attempt: bool = True,
    ) -> bool:
        """Put a running job back in the queue to run again after `delay_s`.

        `count_attempt=False` is for a handler that is waiting for something (polling), not
        failing: the claim's attempt is given back. False if `owner` lost its lease.
        """
        now = self._db.now()
        values: dict[str, Any] = {
            "state": str(JobState.QUEUED),
            "run_after": now + dt.timedelta(seconds=delay_s),
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": redact(error),
            "updated_at": now,
        }
        if payload is not None:
            values["payload"] = dict(payload)
        if not count_attempt:
            values["attempts"] = self._jobs.c.attempts - 1
        return self._while_leased(job_id, owner, **values)

    def fail(self, job_id: int, owner: str, error: str) -> bool:
        """Give a job up for good; False if `owner` lost its lease."""
        now = self._db.now()
        return self._while_leased(
            job_id,
            owner,
            state=str(JobState.FAILED),
            last_error=redact(error),
            active_key=None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            finished_at=now,
        )

    def _while_leased(self, job_id: int, owner: str, **values: Any) -> bool:
        jobs = self._jobs
        with self._write() as connection:
            done = connection.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.lease_owner == owner,
                    jobs.c.state == str(JobState.RUNNING),
                )
                .values(values)
            )
        return bool(done.rowcount)

    def expire_leases(self, owners: Collection[str]) -> int:
        """End the leases of these (dead) workers now, so their jobs can be claimed again."""
        if not owners:
            return 0
        jobs = self._jobs
        with self._write() as connection:
            done = connection.execute(
                update(jobs)
                .where(jobs.c.state == str(JobState.RUNNING), jobs.c.lease_owner.in_(list(owners)))
                .values(lease_expires_at=self._db.now())
            )
        return int(done.rowcount)

    def lease_owners(self) -> tuple[str, ...]:
        """The workers holding a lease on a running job now."""
        jobs = self._jobs
        with self._read() as connection:
            owners = connection.scalars(
                select(jobs.c.lease_owner)
                .where(jobs.c.state == str(JobState.RUNNING), jobs.c.lease_owner.is_not(None))
                .distinct()
            ).all()
        return tuple(str(owner) for owner in owners)

    def get(self, job_id: int) -> Job | None:
        """One job, or None."""
        with self._read() as connection:
            row = connection.execute(select(self._jobs).where(self._jobs.c.id == job_id)).first()
        return None if row is None else _job(row)

    def all(
        self,
        fleet: str | None = None,
        *,
        kind: str | None = None,
        server: str | None = None,
        states: Collection[JobState] = (),
    ) -> tuple[Job, ...]:
        """Jobs, oldest first, filtered by fleet, kind, server and states."""
        jobs = self._jobs
        query = select(jobs)
        if fleet is not None:
            query = query.where(jobs.c.fleet == fleet)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if server is not None:
            query = query.where(jobs.c.server == server)
        if states:
            query = query.where(jobs.c.state.in_([str(s) for s in states]))
        with self._read() as connection:
            rows = connection.execute(query.order_by(jobs.c.id)).all()
        return tuple(_job(row) for row in rows)

    def forget_fleet(self, fleet: str) -> None:
        """Drop every job of `fleet`, whatever its state."""
        with self._write() as connection:
            connection.execute(delete(self._jobs).where(self._jobs.c.fleet == fleet))


def _job_values(job: NewJob, now: dt.datetime) -> dict[str, Any]:
    return {
        "kind": job.kind,
        "fleet": job.fleet,
        "server": job.server,
        "payload": dict(job.payload),
        "state": str(JobState.QUEUED),
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "run_after": now + dt.timedelta(seconds=job.delay_s),
        "active_key": job.key,
        "last_error": "",
        "result": {},
        "created_at": now,
        "updated_at": now,
    }


def _job(row: Any) -> Job:
    return Job(**{**row_fields(row, Job), "state": JobState(row.state)})


@functools.cache
def _enqueue_inline(postgresql: bool) -> Any:
    """enqueue_many's statement, built once (building one costs about as much as running
    it); inline(): no RETURNING of the new ids, which would wait for the answer."""
    return (
        dialect_insert(schema.metadata().tables["jobs"], postgresql=postgresql)
        .inline()
        .on_conflict_do_nothing(index_elements=["active_key"])
    )
