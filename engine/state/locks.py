"""Locks: the exclusive lock on a stack (one fleet) that each mutating command holds.

    with store.locks.hold("web-prod", command="engine up specs/web.yaml"):
        ...                                       # StackLockedError if someone else holds it

A lock names who holds it, where, since when and for which command, so a second taker learns
whom it waits for; a lock whose holder died can be released (`engine unlock LOCK_ID`).
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, delete, exc, insert, select

from engine.errors import EngineError
from engine.secrets import redact
from engine.state import Lock, schema
from engine.state.database import Database, Repository, row_fields
from engine.state.events import Events


class Holder(StrEnum):
    """What this host can tell of a lock's holder."""

    RUNNING = "running"  # its process runs on this host
    GONE = "gone"  # it ran on this host and its process is gone: the lock is stale
    ELSEWHERE = "elsewhere"  # it runs (or ran) on another host, which this one cannot see


class StackLockedError(EngineError):
    """Another command holds the stack's lock; `lock` says who, where and since when. The
    message says what to do: wait for a holder that runs, release a stale lock, and for a
    holder on another host (which this one cannot see), wait, or release it if it died."""

    def __init__(self, lock: Lock, *, holder: Holder) -> None:
        self.lock = lock
        self.holder = holder
        since = lock.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        unlock = f"engine unlock {lock.lock_id}"
        advice = {
            Holder.RUNNING: f"; process {lock.pid} is running on this host: "
            "wait for that run to finish",
            Holder.GONE: f"; process {lock.pid} is no longer running on this host, so the lock "
            f"is stale: release it with: {unlock}",
            Holder.ELSEWHERE: f". Wait for that run to finish; if it died, release the lock "
            f"with: {unlock}",
        }
        super().__init__(
            f"the stack {lock.stack} is locked by {lock.holder}@{lock.host} "
            f"(pid {lock.pid}, `{lock.command}`) since {since}, lock id {lock.lock_id}"
            + advice[holder]
        )


class Locks(Repository):
    """The stack locks held now."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._locks = schema.metadata().tables["locks"]

    @contextmanager
    def hold(
        self,
        stack: str,
        *,
        command: str,
        on_stale: Callable[[Lock], None] | None = None,
    ) -> Iterator[Lock]:
        """Hold the exclusive lock on `stack` for the duration of the block.

        A second taker gets StackLockedError naming the holder, host, pid, command, time and
        lock id. With `on_stale`, a lock whose holder provably died (same host, process gone,
        e.g. after `kill -9`) is released instead, and `on_stale` is told which. The lock is
        released when the block ends, however it ends.
        """
        try:
            held = self.acquire(stack, command=command)
        except StackLockedError as locked:
            if on_stale is None or locked.holder is not Holder.GONE:
                raise
            self.unlock(locked.lock.lock_id)
            on_stale(locked.lock)
            held = self.acquire(stack, command=command)
        try:
            yield held
        finally:
            self.release(held)

    def acquire(self, stack: str, *, command: str) -> Lock:
        """Take the lock on `stack` or raise StackLockedError. Prefer `hold()`."""
        held = Lock(
            stack=stack,
            lock_id=secrets.token_hex(8),
            holder=_user(),
            host=socket.gethostname(),
            pid=os.getpid(),
            command=redact(command),
            acquired_at=self._db.now().replace(microsecond=0),
        )
        for _ in range(3):
            try:
                with self._write() as connection:
                    connection.execute(insert(self._locks).values(asdict(held)))
                return held
            except exc.IntegrityError:
                pass  # someone holds it: who (it may have been released meanwhile)?
            taken = self._lock_where(self._locks.c.stack == stack)
            if taken is not None:
                raise StackLockedError(taken, holder=_holder(taken))
        raise EngineError(f"could not take the lock on {stack}: it changed hands repeatedly")

    def check_free(self, stack: str) -> None:
        """Raise StackLockedError, as `acquire` would, while the lock on `stack` is held by a
        holder that runs or may (on another host); one whose holder is gone is as good as
        free: `hold(on_stale=...)` takes it over."""
        taken = self._lock_where(self._locks.c.stack == stack)
        if taken is not None and (holder := _holder(taken)) is not Holder.GONE:
            raise StackLockedError(taken, holder=holder)

    def release(self, held: Lock) -> None:
        """Give back a lock this process holds (no error if it was force-released)."""
        with self._write() as connection:
            connection.execute(delete(self._locks).where(self._locks.c.lock_id == held.lock_id))

    def unlock(self, lock_id: str) -> Lock:
        """Force-release a stale lock by its id (`engine unlock`); records an event."""
        with self._write() as connection:
            row = connection.execute(
                select(self._locks).where(self._locks.c.lock_id == lock_id)
            ).first()
            if row is not None:
                connection.execute(delete(self._locks).where(self._locks.c.lock_id == lock_id))
        if row is None:
            held = self.all()
            listing = (
                "held now: " + ", ".join(f"{lock.lock_id} ({lock.stack})" for lock in held)
                if held
                else "no lock is held"
            )
            raise EngineError(f"there is no lock {lock_id} in {self._db.url}; {listing}")
        released = _lock(row)
        Events(self._db, self._connection).record(
            released.stack,
            "lock.released",
            f"lock {released.lock_id} of {released.holder}@{released.host} "
            f"(pid {released.pid}, `{released.command}`) released by {_user()}",
            data={"lock_id": released.lock_id, "host": released.host, "pid": released.pid},
        )
        return released

    def all(self) -> tuple[Lock, ...]:
        """Every lock held now, by stack."""
        with self._read() as connection:
            rows = connection.execute(select(self._locks).order_by(self._locks.c.stack)).all()
        return tuple(_lock(row) for row in rows)

    def _lock_where(self, condition: Any) -> Lock | None:
        with self._read() as connection:
            row = connection.execute(select(self._locks).where(condition)).first()
        return None if row is None else _lock(row)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _holder(lock: Lock) -> Holder:
    """Whether the lock's holder runs, as far as this host can tell."""
    if lock.host != socket.gethostname():
        return Holder.ELSEWHERE
    try:
        os.kill(lock.pid, 0)
    except ProcessLookupError:
        return Holder.GONE
    except PermissionError:
        return Holder.RUNNING  # another user's process
    return Holder.RUNNING


def _lock(row: Row[Any]) -> Lock:
    return Lock(**row_fields(row, Lock))
