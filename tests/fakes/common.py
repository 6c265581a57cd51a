"""What every fake provider API shares: bearer auth, a request log, injected faults, and how
server actions end.

A test queues faults (`fake.faults.append(Fault(status=503))`); each request takes the next
one; a 429 fault is answered as the provider documents its own (Hetzner: no Retry-After;
DigitalOcean: `Retry-After: retry_after`). Every fake also keeps the provider's documented rate
limit itself (`spend`), and refuses past it as the provider does. `Fault(delay_s=2)` answers
normally but only after two seconds, which a client with a shorter read timeout sees as a
timeout. `latency_s` delays every answer like a distant API does, and `most_in_flight` tells
how many requests overlapped.

Server actions (reboot, rebuild, ...) start running; each later read of one moves it on, and
after `ActionScript.reads` reads it ends as `ActionScript.ends` says: "success", "error", or
"never" (it keeps running, for timeouts). `fake.action_script` sets how the next ones go.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse


@dataclass
class Fault:
    status: int = 0
    retry_after: int | None = None  # DigitalOcean's 429 only: Hetzner sends no Retry-After
    delay_s: float = 0.0


@dataclass(frozen=True)
class ActionScript:
    ends: str = "success"
    reads: int = 1
    error: str = "injected failure"


@dataclass
class FakeAction:
    """One action and what it does to the fake when it succeeds."""

    payload: dict[str, object]
    script: ActionScript
    effect: Callable[[], None]
    reads: int = 0

    def read(self) -> bool:
        """Move on by one read; whether the action has just ended."""
        self.reads += 1
        return self.script.ends != "never" and self.reads >= self.script.reads


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: Mapping[str, str]


@dataclass
class FakeApi(ABC):
    """Auth, request log and fault queue; subclasses shape the error bodies and headers."""

    token: str = ""
    requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    latency_s: float = 0.0
    in_flight: int = 0
    most_in_flight: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def count(self, path: str) -> int:
        """How many requests reached `path` (faulted ones included)."""
        return sum(1 for r in self.requests if r.path == path)

    def next_id(self) -> int:
        return next(self._ids)

    @abstractmethod
    def error(self, status: int, code: str, message: str) -> JSONResponse:
        """An error answer shaped as this provider's API documents it."""

    @abstractmethod
    def rate_headers(self) -> dict[str, str]:
        """This provider's rate-limit headers for the current budget."""

    @abstractmethod
    def spend(self) -> JSONResponse | None:
        """Count one request against the rate limit; the provider's 429 if it is spent."""

    @abstractmethod
    def refused(self, retry_after: int | None) -> JSONResponse:
        """The provider's 429, as its documentation shows it."""

    async def admit(self, request: Request) -> JSONResponse | None:
        """Record the request; answer it here if it is unauthorised or a fault is queued."""
        self.requests.append(Recorded(request.method, request.url.path, dict(request.query_params)))
        if self.latency_s:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            await asyncio.sleep(self.latency_s)
            self.in_flight -= 1
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self.error(401, "unauthorized", "unable to authenticate")
        refused = self.spend()
        if refused is not None or not self.faults:
            return refused
        fault = self.faults.pop(0)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if not fault.status:
            return None
        if fault.status == 429:
            return self.refused(fault.retry_after)
        response = self.error(fault.status, "service_error", "injected fault")
        response.headers.update(self.rate_headers())
        return response


def pages(
    items: list[dict[str, object]], request: Request, most: int, default: int
) -> tuple[list[dict[str, object]], int, int, int]:
    """The page of `items` a request asks for: (chunk, page, per_page, last_page)."""
    per_page = min(int(request.query_params.get("per_page", default)), most)
    page = int(request.query_params.get("page", 1))
    last = max(1, -(-len(items) // per_page))
    return items[(page - 1) * per_page : page * per_page], page, per_page, last
