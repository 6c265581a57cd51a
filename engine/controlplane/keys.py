"""A cache of per-fleet values (keys, settings) for a control plane that reads them for every
request. The keys and tokens themselves are engine.tokens'."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedCache(Generic[T]):
    """Values by name for `ttl_s` seconds: fleet keys and settings are read for every
    request otherwise. A name with nothing to hold (None: no key or no fleet yet) is looked
    up again next time, so a fleet registered a moment ago is served at once."""

    def __init__(
        self,
        load: Callable[[str], T | None],
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._values: dict[str, tuple[float, T]] = {}
        self._reloading: set[str] = set()
        self._lock = threading.Lock()

    def held(self, name: str) -> tuple[bool, T | None]:
        """(True, value) when a value is held, at once; a stale one is reloaded in a thread
        meanwhile (one reload at a time), so callers on an event loop never wait for a load
        and do not all load at once when it expires. (False, None) when none is held."""
        with self._lock:
            held = self._values.get(name)
            if held is None:
                return False, None
            if self._clock() - held[0] >= self._ttl_s and name not in self._reloading:
                self._reloading.add(name)
                threading.Thread(target=self._reload, args=(name,), daemon=True).start()
        return True, held[1]

    def _reload(self, name: str) -> None:
        try:
            self.get(name)
        finally:
            with self._lock:
                self._reloading.discard(name)

    def get(self, name: str) -> T | None:
        """The value, loaded (in the caller's thread) when none is held or it is stale."""
        now = self._clock()
        with self._lock:
            held = self._values.get(name)
        if held is not None and now - held[0] < self._ttl_s:
            return held[1]
        value = self._load(name)
        with self._lock:
            if value is None:  # gone (or never there): nothing to hold
                self._values.pop(name, None)
                return None
            if len(self._values) > 10_000:
                self._values.clear()
            self._values[name] = (now, value)
        return value
