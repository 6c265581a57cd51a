"""Once a second: heartbeats missed, phone-homes overdue, workers dead.

- A ready server whose agent missed `heartbeat_misses` heartbeats in a row is unhealthy; its
  next heartbeat makes it ready again (engine.state.agents.Agents.record_heartbeat). Only
  heartbeats missed since the monitor started count: agents post them to this control plane,
  and one due while none ran (between two `engine up`, a restart of `engine serve`) says
  nothing about its server.
- A booting server of a phone-home fleet that has not phoned home within the fleet's
  phone_home_timeout is looked for by polling (inventory pages and SSH checks).
- Jobs leased by dead workers of this host are freed, and metric points past their
  retention dropped (every 10 s: a few rows each time rather than a day's at once).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from engine.controlplane.jobs import reap_dead_workers
from engine.controlplane.servers import SSH_CHECK_JOB, polling_jobs
from engine.health import HEARTBEAT_MISSES
from engine.model import Stage
from engine.secrets import redact
from engine.state import JobState
from engine.state.store import Store

log = logging.getLogger("engine.controlplane.monitor")
_REAP_EVERY_S = 10.0


def start_overdue_polling(store: Store, now: dt.datetime) -> int:
    """Start polling for booting servers whose phone-home is overdue; how many started."""
    started = 0
    for settings in store.fleets.all():
        # A poll fleet is looked for at once; a phone-home fleet once its phone-home is late.
        late = (
            None
            if settings.readiness == "poll"
            else now - dt.timedelta(seconds=settings.phone_home_timeout_s)
        )
        waiting = store.servers.entered(settings.name, Stage.BOOTING, before=late)
        if not waiting:
            continue
        live = {
            job.server
            for job in store.jobs.all(
                settings.name, kind=SSH_CHECK_JOB, states=(JobState.QUEUED, JobState.RUNNING)
            )
        }
        for name in sorted(set(waiting) - live):
            for job in polling_jobs(settings, name, now):
                store.jobs.enqueue(job)
            store.events.record(
                settings.name,
                "server.polling",
                f"{name}: no phone-home yet; looking for it by polling",
                server=name,
            )
            started += 1
    return started


class Monitor:
    """The once-a-second sweeps, in a thread, for a `with` block. Made once the control plane
    listens: silence counts from then (`listening_since`)."""

    def __init__(
        self,
        store: Store,
        *,
        heartbeat_misses: int = HEARTBEAT_MISSES,
        interval_s: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store = store
        self.heartbeat_misses = heartbeat_misses
        self.interval_s = interval_s
        self.clock = clock
        self.listening_since = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> None:
        """One round of every check."""
        self.store.agents.mark_unhealthy(
            self.heartbeat_misses, listening_since=self.listening_since
        )
        start_overdue_polling(self.store, self.clock())

    def _run(self) -> None:
        reaped_at = time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
                if time.monotonic() - reaped_at > _REAP_EVERY_S:
                    reap_dead_workers(self.store)
                    self.store.metrics.prune()
                    reaped_at = time.monotonic()
            except Exception as error:  # the store is unreachable: try again next round
                log.error("the monitor's sweep failed: %s", redact(str(error)))

    def __enter__(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
