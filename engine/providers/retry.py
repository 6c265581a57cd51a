"""Retries and rate limits for provider API calls, independent of any SDK.

Each provider's client hooks `send` into its SDK's transport (a requests session for hcloud, an
azure-core pipeline policy for pydo), so every HTTP request the SDK makes goes through it, and
through the provider's `RateBudget`, which keeps to the limits as the provider documents them:

- Hetzner Cloud (`TokenBucket`): 3600 requests an hour per project, as a bucket that refills
  one request a second (limit / 3600). `RateLimit-Remaining` says what is in it; the
  documented `RateLimit-Reset` is when it is FULL again, not when the next request may go, so
  it is never waited for. A 429 (`rate_limit_exceeded`, no Retry-After) waits for one request.
- DigitalOcean (`SlidingWindows`): 5000 requests an hour (`ratelimit-remaining`, and
  `ratelimit-reset` when the oldest counted request expires) and 250 a minute, which no header
  tells: the budget counts its own requests over the last 60 s. A 429 waits `Retry-After`.

Budgets are shared by every client of one token in a process (`shared_budget`), so requests
read in parallel, and several readers, spend one budget. Beyond the budget:

- 500, 502, 503, 504, timeouts and dropped connections: exponential back-off (1, 2, 4, ... s,
  at most `backoff_cap_s`). No jitter: one CLI process is not a thundering herd.
- After `attempts` tries the last answer goes back to the SDK, which turns it into its error;
  its `provider_errors` turns that into a ProviderError with the code and correlation id.
- A wait longer than `longest_wait_s` (a spent hourly budget) ends the call with a clear error
  instead of hanging.

`sleep` and `clock` are injectable, so tests check the waits without waiting.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from engine.errors import ProviderError

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_HOUR_S = 3600.0
_MINUTE_S = 60.0


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
    # Pages read at once once the first says how many there are; the rate budget, not this,
    # keeps the pace within what the provider allows.
    workers: int = 32
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
    """The error for an API that refused or dropped every connection, with the reason the
    innermost error gives (the HTTP libraries wrap it in a few layers of their own)."""
    reason = str(_innermost(error)).strip()[:200] or type(error).__name__
    return ProviderError(provider, f"cannot reach the API ({reason})", code="unreachable")


def _innermost(error: BaseException) -> BaseException:
    """The error at the bottom of `error`'s chain: what it was raised from, or what it wraps
    (urllib3 keeps it as `reason`, azure-core as `inner_exception`, requests as an argument)."""
    seen = {id(error)}
    while True:
        wrapped = [
            error.__cause__,
            getattr(error, "reason", None),
            getattr(error, "inner_exception", None),
            *error.args,
        ]
        inner = next((e for e in wrapped if isinstance(e, BaseException)), None)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def unexpected_answer(provider: str, error: BaseException) -> ProviderError:
    """The error for an answer that is not the JSON the provider documents (`error` says
    what and where, e.g. "Expected `int`, got `str` - at `$.servers[3].id`")."""
    return ProviderError(
        provider,
        f"the API's answer is not what its documentation describes ({error}); check that "
        "provider.endpoint in the spec is the provider's API",
        code="unexpected_answer",
    )


def is_foreign_refusal(status: int) -> bool:
    """Whether an answer of `status` without the provider's error document means that something
    else than the provider's API answered (a wrong path or host): a refusal (4xx) other than a
    rate limit. A 5xx may come from a proxy in front of the API, and has been retried."""
    return 400 <= status < 500 and status != 429


def foreign_error(provider: str, status: int, reason: str) -> ProviderError:
    """The error for an error answer without the provider's error document: not the provider's
    API answered, but whatever is at the endpoint (a wrong path, a proxy)."""
    return ProviderError(
        provider,
        f"the endpoint answered {status} {reason}, an error the API does not send that way; "
        "check that provider.endpoint in the spec is the provider's API",
        code=str(status),
    )


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a `Retry-After` header (seconds, or an HTTP date) asks to wait; None without."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    if raw.strip().isdigit():
        return float(raw)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - now)
    return None


class RateBudget(Protocol):
    """A provider's documented rate limit, kept from this side of the wire (thread-safe)."""

    def reserve(self, now: float) -> float:
        """Count one request about to go; the seconds it must wait first."""
        ...

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        """What an answer's headers say of the budget."""
        ...

    def after_refusal(self, headers: Mapping[str, str], now: float) -> float:
        """The seconds to wait after a 429."""
        ...


@dataclass(slots=True)
class TokenBucket:
    """Hetzner Cloud's budget: a bucket of `limit` requests refilled at limit/3600 a second."""

    limit: int = 3600
    tokens: float = 3600.0
    at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def per_s(self) -> float:
        return self.limit / _HOUR_S

    def _refill(self, now: float) -> None:
        if self.at is not None and now > self.at:
            self.tokens = min(float(self.limit), self.tokens + (now - self.at) * self.per_s)
        self.at = now if self.at is None else max(self.at, now)

    def reserve(self, now: float) -> float:
        with self.lock:
            self._refill(now)
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.per_s

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        limit, remaining = (
            _number(headers, "RateLimit-Limit"),
            _number(headers, "RateLimit-Remaining"),
        )
        with self.lock:
            self._refill(now)
            if limit:
                self.limit = int(limit)
            if remaining is not None:
                # The API's count is the truth, less what has gone since (still in flight).
                self.tokens = min(self.tokens, remaining)

    def after_refusal(self, headers: Mapping[str, str], now: float) -> float:
        return 1 / self.per_s  # one request's refill; RateLimit-Reset is the FULL bucket


@dataclass(slots=True)
class SlidingWindows:
    """DigitalOcean's budget: 5000 requests an hour, which the API counts (what remains, and
    when the oldest counted one expires), and `per_minute` a minute, counted here over the
    last 60 s (no header tells it)."""

    per_minute: int = 250
    remaining: float | None = None
    reset_at: float | None = None
    sent: deque[float] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reserve(self, now: float) -> float:
        with self.lock:
            while self.sent and self.sent[0] <= now - _MINUTE_S:
                self.sent.popleft()
            start = max(now, self.sent[-1]) if self.sent else now  # in the order reserved
            if len(self.sent) >= self.per_minute:
                start = self.sent[-self.per_minute] + _MINUTE_S
            if self.remaining is not None:
                if self.remaining < 1 and self.reset_at is not None:
                    start = max(start, self.reset_at)
                self.remaining -= 1
            self.sent.append(start)
            return max(0.0, start - now)

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        remaining = _number(headers, "ratelimit-remaining")
        reset = _number(headers, "ratelimit-reset")
        with self.lock:
            # The API's count: requests of the last hour expire one by one, so it only
            # ever grows back through what the API says.
            if remaining is not None:
                self.remaining = remaining
            if reset is not None:
                self.reset_at = reset

    def after_refusal(self, headers: Mapping[str, str], now: float) -> float:
        asked = retry_after_s(headers, now)
        return _MINUTE_S if asked is None else asked


_SHARED: dict[tuple[str, str, str], RateBudget] = {}
_SHARED_LOCK = threading.Lock()


def shared_budget(provider: str, endpoint: str, token: str) -> RateBudget:
    """The one budget of `token` at `provider`'s API `endpoint` in this process (a Hetzner
    token stands for its project, whose budget it is)."""
    key = (provider, endpoint, hashlib.sha256(token.encode()).hexdigest())
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SlidingWindows() if provider == "digitalocean" else TokenBucket()
        return _SHARED[key]


def _too_long(
    provider: str, wait: float, policy: RetryPolicy, correlation_id: str
) -> ProviderError:
    return ProviderError(
        provider,
        f"the API rate limit is spent and the next request may go in {wait:.0f} s, longer than "
        f"the {policy.longest_wait_s:.0f} s this command waits; try again later",
        code="rate_limit_exceeded",
        correlation_id=correlation_id,
    )


def send(
    attempt: Callable[[], tuple[int, Mapping[str, str], T]],
    *,
    path: str,
    policy: RetryPolicy,
    calls: ApiCalls,
    budget: RateBudget,
    provider: str,
    correlation_header: str,
) -> T:
    """Run `attempt` (one HTTP request -> status, headers, response) with retries, within
    `budget`.

    `attempt` raises TransientError for timeouts and dropped connections; when those persist
    the transport's own exception is raised for the caller to report.
    """
    for n in range(policy.attempts):
        hold = budget.reserve(policy.clock())
        if hold > policy.longest_wait_s:
            raise _too_long(provider, hold, policy, "")
        with calls.lock:
            calls.requests[path] += 1
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
            budget.observe(headers, policy.clock())
            if status == 429:
                wait = budget.after_refusal(headers, policy.clock())
                if wait > policy.longest_wait_s:
                    raise _too_long(provider, wait, policy, headers.get(correlation_header, ""))
            elif status in RETRYABLE_STATUS:
                wait = policy.backoff(n)
            else:
                return response
            if last:
                return response
        with calls.lock:
            calls.retries += 1
            calls.waited_s += wait
        policy.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass(frozen=True, slots=True)
class Paging:
    """What a page says of the others: the last page's number, or only the next one's
    (Hetzner documents `last_page` as possibly null; DigitalOcean may give only a next link)."""

    last: int | None
    next: int | None


def read_pages(fetch: Callable[[int], tuple[list[T], Paging]], *, workers: int) -> list[T]:
    """Every item of a paged list, items kept in page order: page 1 first; when it tells how
    many pages there are, the others `workers` at a time (the rate budget paces them), else
    one after the other along the next pages.

    Same number of requests as reading one page after the other, a fraction of the wait:
    10,000 Hetzner servers are 200 pages, 10 s one by one at 50 ms a request.
    """
    items, paging = fetch(1)
    if paging.last is None:
        following = paging.next
        while following is not None:
            page, paging = fetch(following)
            items.extend(page)
            following = paging.next
        return items
    if paging.last <= 1:
        return items
    with ThreadPoolExecutor(max_workers=min(workers, paging.last - 1)) as pool:
        for page, _ in pool.map(fetch, range(2, paging.last + 1)):
            items.extend(page)
    return items
