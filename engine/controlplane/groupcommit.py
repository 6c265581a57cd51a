"""Group commit: many requests' writes applied by one thread, a batch per transaction.

    committer = GroupCommit(partial(store.phone_homes.accept, decide=rules), name="phone-home")
    outcome = await committer.submit(claim)      # from any request, on any event loop
    committer.close()

A transaction costs far more than the rows it writes, and SQLite takes one writer at a time
anyway. So requests do not each open one: they queue their item and await its outcome, and
one thread takes everything queued, applies it with `apply` in one call (one transaction),
and hands each request its own outcome. No request waits for a timer: while a batch is being
written the next one gathers, so batches grow with the load and a lone request goes at once.

If a batch fails as a whole, its items are applied one by one, so one bad item fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.secrets import redact

log = logging.getLogger("engine.controlplane")

T = TypeVar("T")
R = TypeVar("R")
MAX_BATCH = 256
_STOP = object()


class GroupCommit(Generic[T, R]):
    """Applies submitted items in batches with `apply` (items in, outcomes out, same order)
    on its own thread, until closed."""

    def __init__(
        self,
        apply: Callable[[Sequence[T]], Sequence[R]],
        *,
        name: str,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._apply = apply
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"group-commit-{name}", daemon=True)
        self._thread.start()

    async def submit(self, item: T) -> R:
        """Apply `item` in the next batch; its outcome, or the exception applying it raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, future, loop))
        return await future

    def close(self) -> None:
        """Apply what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[tuple[T, asyncio.Future[R], asyncio.AbstractEventLoop]] = []
            entry = self._queue.get()
            while True:
                if entry is _STOP:
                    stopping = True
                else:
                    batch.append(entry)  # type: ignore[arg-type]
                if stopping or len(batch) >= self._max_batch:
                    break
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[T, asyncio.Future[R], asyncio.AbstractEventLoop]]) -> None:
        items = [item for item, _future, _loop in batch]
        outcomes: list[R | _Failed]
        try:
            outcomes = list(self._apply(items))
            if len(outcomes) != len(items):
                raise ValueError(f"{len(outcomes)} outcomes for {len(items)} items")
        except Exception as error:
            if len(items) == 1:
                outcomes = [_Failed(error)]
            else:
                log.warning("a batch of %d failed (%s); one by one", len(items), redact(str(error)))
                outcomes = [self._apply_alone(item) for item in items]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], object]]] = {}
        for (_item, future, loop), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        # One wake-up per event loop for the whole batch, not one per request.
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop has closed: nobody is waiting any more
                continue

    def _apply_alone(self, item: T) -> R | _Failed:
        try:
            return self._apply([item])[0]
        except Exception as error:
            return _Failed(error)


@dataclass(frozen=True, slots=True)
class _Failed:
    """Applying the item raised `error` (an outcome may itself be an exception object)."""

    error: Exception


def _settle(settled: list[tuple[asyncio.Future[R], object]]) -> None:
    for future, outcome in settled:
        if future.done():  # its request was cancelled (the client went away)
            continue
        if isinstance(outcome, _Failed):
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]
