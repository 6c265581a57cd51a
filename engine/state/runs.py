"""Plans made through the API and the runs that carry them out (an apply, a scale, a server
action): one aggregate, since a run is the fate of a plan or of a request.

    store.runs.save_plan(SavedPlan(id=..., fleet="web", spec_digest=..., world_digest=..., ...))
    store.runs.add(Run(id=..., fleet="web", kind="apply", status=RunStatus.QUEUED, ...))
    store.runs.start(run_id); store.runs.progress(run_id, {"event": "stage", ...})
    store.runs.finish(run_id, RunStatus.SUCCEEDED, result={...})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.secrets import redact
from engine.state import Run, RunStatus, SavedPlan, schema
from engine.state.database import Database, Repository, row_fields

# A run keeps its latest progress lines only: a long one must not grow its row without end.
PROGRESS_KEPT = 500


class Runs(Repository):
    """Saved plans and runs."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._plans = schema.metadata().tables["plans"]
        self._runs = schema.metadata().tables["runs"]

    # --- plans ------------------------------------------------------------------------------

    def save_plan(self, plan: SavedPlan) -> None:
        """Store a new plan."""
        with self._write() as connection:
            connection.execute(
                insert(self._plans).values(
                    id=plan.id,
                    fleet=plan.fleet,
                    spec_digest=plan.spec_digest,
                    world_digest=plan.world_digest,
                    document=dict(plan.document),
                    has_changes=plan.has_changes,
                    blocked=plan.blocked,
                    created_at=plan.created_at,
                    created_by=plan.created_by,
                )
            )

    def plan(self, fleet: str, plan_id: str) -> SavedPlan | None:
        """The fleet's plan with this id, or None."""
        table = self._plans
        with self._read() as connection:
            row = connection.execute(
                select(table).where(table.c.fleet == fleet, table.c.id == plan_id)
            ).first()
        return None if row is None else SavedPlan(**row_fields(row, SavedPlan))

    def latest_plan(self, fleet: str) -> SavedPlan | None:
        """The fleet's plan saved last, or None."""
        table = self._plans
        with self._read() as connection:
            row = connection.execute(
                select(table)
                .where(table.c.fleet == fleet)
                .order_by(table.c.created_at.desc(), table.c.id)
                .limit(1)
            ).first()
        return None if row is None else SavedPlan(**row_fields(row, SavedPlan))

    # --- runs -------------------------------------------------------------------------------

    def add(self, run: Run) -> None:
        """Store a new run."""
        with self._write() as connection:
            connection.execute(
                insert(self._runs).values(
                    id=run.id,
                    fleet=run.fleet,
                    kind=run.kind,
                    status=str(run.status),
                    plan_id=run.plan_id,
                    request=dict(run.request),
                    progress=[dict(line) for line in run.progress],
                    result=dict(run.result),
                    error=run.error,
                    created_at=run.created_at,
                    created_by=run.created_by,
                )
            )

    def get(self, fleet: str, run_id: str) -> Run | None:
        """The fleet's run with this id, or None."""
        table = self._runs
        with self._read() as connection:
            row = connection.execute(
                select(table).where(table.c.fleet == fleet, table.c.id == run_id)
            ).first()
        return None if row is None else _run(row)

    def all(self, fleet: str | None = None, *, limit: int = 100) -> tuple[Run, ...]:
        """The latest runs (of `fleet`, when given), newest first, at most `limit`."""
        table = self._runs
        query = select(table)
        if fleet is not None:
            query = query.where(table.c.fleet == fleet)
        with self._read() as connection:
            rows = connection.execute(
                query.order_by(table.c.created_at.desc(), table.c.id).limit(limit)
            ).all()
        return tuple(_run(row) for row in rows)

    def start(self, run_id: str) -> None:
        """The run is under way."""
        self._set(run_id, status=str(RunStatus.RUNNING), started_at=self._db.now())

    def wait(self, run_id: str) -> None:
        """The run is queued again: it waits for its turn (the fleet's lock)."""
        self._set(run_id, status=str(RunStatus.QUEUED), started_at=None)

    def progress(self, run_id: str, line: Mapping[str, Any]) -> None:
        """Append one progress line (a JSON event of the run's board)."""
        table = self._runs
        with self._write() as connection:
            found = connection.execute(
                self._db.for_update(select(table.c.progress).where(table.c.id == run_id))
            ).first()
            if found is None:
                return
            lines = [*(found.progress or []), dict(line)][-PROGRESS_KEPT:]
            connection.execute(update(table).where(table.c.id == run_id).values(progress=lines))

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: Mapping[str, Any] | None = None,
        error: str = "",
    ) -> None:
        """The run ended with `status` (its error redacted of secrets)."""
        self._set(
            run_id,
            status=str(status),
            result=dict(result or {}),
            error=redact(error),
            finished_at=self._db.now(),
        )

    def _set(self, run_id: str, **values: Any) -> None:
        with self._write() as connection:
            connection.execute(update(self._runs).where(self._runs.c.id == run_id).values(values))

    def forget_fleet(self, fleet: str) -> None:
        """Drop the fleet's plans and runs."""
        with self._write() as connection:
            connection.execute(delete(self._runs).where(self._runs.c.fleet == fleet))
            connection.execute(delete(self._plans).where(self._plans.c.fleet == fleet))


def _run(row: Row[Any]) -> Run:
    values = row_fields(row, Run)
    values["status"] = RunStatus(values["status"])
    values["progress"] = tuple(values["progress"] or ())
    return Run(**values)
