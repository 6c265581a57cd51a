"""Retries and rate limits for provider API calls, independent of any SDK.

Each provider's client hooks `send` into its SDK's transport (a requests session for hcloud, an
azure-core pipeline policy for pydo), so every HTTP request the SDK makes goes through it:

- 429: wait what `Retry-After` says (seconds or an HTTP date), else until `RateLimit-Reset`,
  else an exponential back-off; a wait longer than `longest_wait_s` ends the read with a
  clear error instead of hanging.
- 500, 502, 503, 504, timeouts and dropped connections: exponential back-off (1, 2, 4, ... s,
  at most `backoff_cap_s`). No jitter: one CLI process is not a thundering herd.
- After `attempts` tries the last answer goes back to the SDK, which turns it into its error;
  its `provider_errors` turns that into a ProviderError with the code and correlation id.
- Pacing: after an answer that says `RateLimit-Remaining: 0`, the next request waits until one
  request is available again: min(RateLimit-Reset - now, 3600 s / RateLimit-Limit), which is
  1 s on Hetzner (its bucket refills one request a second) and the reset time or less on
  DigitalOcean (the reset is when its oldest counted request expires).

`sleep` and `clock` are injectable, so tests check the waits without waiting.
"""

from __future__ import annotations

import contextlib
import email.utils
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from engine.errors import ProviderError

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_HOUR_S = 3600.0


class TransientError(Exception):
    """A timeout or a dropped connection; `cause` is the transport's own exception."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to try. The defaults suit an interactive `engine preview`."""

    attempts: int = 5
    backoff_s: float = 1.0
    backoff_cap_s: float = 30.0
    longest_wait_s: float = 120.0
    timeout_s: float = 30.0
    workers: int = 4
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failure (0-based)."""
        return float(min(self.backoff_cap_s, self.backoff_s * 2**attempt))


@dataclass(slots=True)
class ApiCalls:
    """What a reader's requests cost: requests per path, retries and time spent waiting.

    Pages are read by several threads at once; `lock` guards every update.
    """

    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    waited_s: float = 0.0
    rate_limit_remaining: int | None = None
    not_before: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def _number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def timed_out(provider: str) -> ProviderError:
    """The error for a request that timed out on every attempt."""
    return ProviderError(
        provider, "the API did not answer in time, even after retries", code="timeout"
    )


def unreachable(provider: str, error: BaseException) -> ProviderError:
    """The error for an API that refused or dropped every connection."""
    reason = str(error).split(": ")[-1][:200]
    return ProviderError(provider, f"cannot reach the API ({reason})", code="unreachable")


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait before retrying a 429, from Retry-After or RateLimit-Reset."""
    raw = headers.get("Retry-After")
    if raw is not None:
        if raw.strip().isdigit():
            return float(raw)
        with contextlib.suppress(TypeError, ValueError):  # neither: see RateLimit-Reset
            return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - now)
    reset = _number(headers, "RateLimit-Reset")
    return None if reset is None else max(0.0, reset - now)


def pace_s(headers: Mapping[str, str], now: float) -> float:
    """Seconds to wait before the next request when the rate-limit budget is spent."""
    remaining = _number(headers, "RateLimit-Remaining")
    if remaining is None or remaining > 0:
        return 0.0
    limit = _number(headers, "RateLimit-Limit") or _HOUR_S
    one_request = _HOUR_S / limit
    reset = _number(headers, "RateLimit-Reset")
    return one_request if reset is None else max(0.0, min(reset - now, one_request))


def send(
    attempt: Callable[[], tuple[int, Mapping[str, str], T]],
    *,
    path: str,
    policy: RetryPolicy,
    calls: ApiCalls,
    provider: str,
    correlation_header: str,
) -> T:
    """Run `attempt` (one HTTP request -> status, headers, response) with retries.

    `attempt` raises TransientError for timeouts and dropped connections; when those persist
    the transport's own exception is raised for the caller to report.
    """
    for n in range(policy.attempts):
        hold = calls.not_before - policy.clock()
        with calls.lock:
            calls.requests[path] += 1
            if hold > 0:
                calls.waited_s += hold
        if hold > 0:
            policy.sleep(hold)
        last = n == policy.attempts - 1
        try:
            status, headers, response = attempt()
        except TransientError as error:
            if last:
                raise error.cause from None
            wait = policy.backoff(n)
        else:
            remaining = _number(headers, "RateLimit-Remaining")
            if remaining is not None:
                with calls.lock:
                    calls.rate_limit_remaining = int(remaining)
            if status == 429:
                asked = retry_after_s(headers, policy.clock())
                wait = policy.backoff(n) if asked is None else asked
                if wait > policy.longest_wait_s:
                    raise ProviderError(
                        provider,
                        f"the API rate limit is spent and asks to wait {wait:.0f} s, longer than "
                        f"the {policy.longest_wait_s:.0f} s this command waits; try again later",
                        code="rate_limit_exceeded",
                        correlation_id=headers.get(correlation_header, ""),
                    )
            elif status in RETRYABLE_STATUS:
                wait = policy.backoff(n)
            else:
                now = policy.clock()
                with calls.lock:
                    calls.not_before = now + pace_s(headers, now)
                return response
            if last:
                return response
        with calls.lock:
            calls.retries += 1
            calls.waited_s += wait
        policy.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def read_pages(fetch: Callable[[int], tuple[list[T], int]], *, workers: int) -> list[T]:
    """Every item of a paged list: page 1 first (it tells the number of pages), then the
    others `workers` at a time, items kept in page order.

    Same number of requests as reading one page after the other, a fraction of the wait:
    10,000 Hetzner servers are 200 pages, 30 s or more one by one at real API latency.
    """
    items, last = fetch(1)
    if last <= 1:
        return items
    with ThreadPoolExecutor(max_workers=min(workers, last - 1)) as pool:
        for page, _ in pool.map(fetch, range(2, last + 1)):
            items.extend(page)
    return items
