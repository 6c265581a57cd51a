"""Token buckets: `rate` tokens a second, at most `burst` saved up, one bucket per key."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Per-key token buckets. `take(key)` spends one token, or says how long to wait.

    The wait is what a client must honour: the whole seconds (Retry-After's unit), rounded
    up, until one token is back. Idle buckets are forgotten once full, so memory follows the
    number of keys active in the last burst/rate seconds.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._swept_at = clock()

    def take(self, key: str) -> int | None:
        """Spend a token of `key`'s bucket: None if there was one, else Retry-After seconds."""
        now = self._clock()
        with self._lock:
            if now - self._swept_at > self.burst / self.rate:
                self._sweep(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), at=now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def remaining(self, key: str) -> int:
        """Whole tokens left in `key`'s bucket now."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return self.burst
            now = self._clock()
            return int(min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate))

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < full_after}
        self._swept_at = now
