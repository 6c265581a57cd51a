"""The dashboard: server-rendered pages over the control plane's store, served at `/` by
`engine serve`.

    GET  /sign-in                                   the form
    POST /sign-in                                   key=fek_...: a session, then 303 to /
    GET  /sign-in/link/{token}                      a one-time link (`engine dashboard`): a
                                                    session, then 303 to the fleet's page
    POST /sign-out                                  the session cookie cleared
    GET  /                                          every fleet the key may read
    GET  /fleets/{fleet}[?page=N&stage=S&q=TEXT]    its servers, PAGE_SIZE a page
    GET  /fleets/{fleet}/servers/{name}[?range=1h|24h|30d]   charts, events, actions
    POST /fleets/{fleet}/servers/{name}/actions     a confirmation page; with confirm=yes, the run
    GET  /fleets/{fleet}/events[?server=S&kind=K]   the fleet's events
    GET  /fleets/{fleet}/live?since=ID[&server=S]   JSON for the pages' script (long-poll)
    GET  /alerts[?page=N&fleet=F&state=S&q=TEXT]    the alerts of every fleet the key may read,
                                                    PAGE_SIZE a page
    GET  /static/{file}                             the stylesheet and the script

The checks, in the order they run:

1. Signing in takes a live API key of at least `read` scope, posted from the sign-in form
   with the one-use token its page set as a cookie (so no other site can sign a browser in
   under its own key). A refused sign-in spends a token of the source address's bucket of
   refused requests, as a refused API call does.
   A one-time sign-in link (`engine dashboard` prints one on loopback) carries a random
   token that this process alone holds (its SHA-256, in memory, for LINK_S): the first
   request with it gets the session of the key it was issued for, and every later one is
   refused as a wrong key is. The token is registered as a secret, so no log line shows it.
2. The session is a cookie, nothing kept server-side: the key's id, an expiry (SESSION_S)
   and a nonce, signed with HMAC-SHA256 under a key derived from the control plane's API-key
   secret. HttpOnly, SameSite=Strict, Secure when the request came over TLS. Every request
   reads the key again, so revoking the key ends its sessions at once; a cookie that does
   not verify is no session.
3. Every POST carries a CSRF token (an HMAC of the session's nonce). SameSite=Strict already
   keeps other sites' requests from carrying the cookie; the token is the second wall.
4. A page of a fleet needs the key's grant of that fleet; an action needs `apply` scope, as
   the API's does, and is queued as the same `server-action` run and audited under the key's
   name.
5. Every answer carries a strict Content-Security-Policy (no inline script or style, nothing
   from any other origin: every asset is shipped in this package), nosniff, no framing and no
   referrer; pages are not cached.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from engine.apps.versions import container_name
from engine.catalog import Catalog, load_catalog
from engine.controlplane.apikeys import ApiKeyVerifier
from engine.controlplane.errors import ApiError
from engine.controlplane.fleetapi import FleetApi, wait_for_events
from engine.controlplane.query import INTEGER_MAX, whole_number
from engine.cost import monthly_price
from engine.errors import EngineError
from engine.health import Power, power_of
from engine.lifecycle import STEPS, median_durations, step_durations
from engine.model import Stage
from engine.providers.seam import Signal
from engine.render import SCHEMA_VERSION, plan_from_json, render_text
from engine.secrets import register_secret
from engine.state import (
    AgentReport,
    AlertRecord,
    AlertState,
    ApiKey,
    AuditEntry,
    DeployedApp,
    Event,
    Lease,
    MetricPoint,
    SavedPlan,
    Scope,
    ServerRecord,
    Transition,
)
from engine.state.store import Store
from engine.tokens import ensure_api_key_secret, is_same_token

SESSION_COOKIE = "fe_session"
SIGN_IN_COOKIE = "fe_sign_in"
SESSION_S = 12 * 3600
PAGE_SIZE = 100
LIVE_WAIT_MAX_S = 25
FORM_MAX_BYTES = 8192
FORM_MAX_FIELDS = 16
LINK_S = 600
ACTIONS = (Signal.REBOOT, Signal.POWEROFF, Signal.POWERON, Signal.REBUILD)
# Range -> (how far back, seconds between points): about a hundred points a chart.
RANGES = {"1h": (3600, 60), "24h": (86400, 900), "30d": (30 * 86400, 6 * 3600)}
PERCENT, RATE = "%", "B/s"
CHARTS = (
    ("cpu", "CPU", PERCENT),
    ("memory", "Memory", PERCENT),
    ("disk", "Disk (fullest)", PERCENT),
    ("rx", "Network received", RATE),
    ("tx", "Network sent", RATE),
)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
UI = Path(__file__).parent / "ui"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
CHART_W, CHART_H = 600, 140
WATERFALL_W = 1000


class Guard(Protocol):
    """What the dashboard uses of the control plane's app (ControlPlaneApi): its key checks
    and its bucket of refused requests per source address."""

    api_keys: ApiKeyVerifier

    def check_failures(self, source: str) -> None: ...

    def count_refusal(self, request: Request) -> None: ...


class SignInLinks:
    """One-time sign-in links, held in memory by the process that serves the dashboard: each
    token, once, exchanges for a session of the key it was issued for within LINK_S."""

    def __init__(self, ttl_s: float = LINK_S) -> None:
        self.ttl_s = ttl_s
        self._pending: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, key_id: str, then: str = "/") -> str:
        """A new link's path for the key `key_id`, leading to `then` once signed in."""
        token = register_secret(secrets.token_urlsafe(32))
        with self._lock:
            self._pending[_digest(token)] = (key_id, then, time.monotonic() + self.ttl_s)
        return f"/sign-in/link/{token}"

    def redeem(self, token: str) -> tuple[str, str] | None:
        """The key id and the page of an unused, unexpired link's token, spending it; None
        for any other token."""
        with self._lock:
            found = self._pending.pop(_digest(token), None)
        if found is None or found[2] < time.monotonic():
            return None
        return found[0], found[1]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A signed-in browser: its key (read again on every request) and its CSRF token."""

    key: ApiKey
    csrf: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Chart:
    """One metric over a range, as SVG polylines (one per run of points without a gap) in a
    CHART_W x CHART_H box, 0 to `top` bottom to top: 100 for a percentage, for a rate the
    round figure (1, 2 or 5 times a power of ten) at or above its peak."""

    metric: str
    label: str
    unit: str
    top: float
    lines: tuple[str, ...]
    last: float | None
    peak: float | None

    def reading(self, value: float) -> str:
        """`55%`, or for a rate `1.2 MB/s`."""
        return f"{value:.0f}%" if self.unit == PERCENT else rate_text(value)


def rate_text(bytes_per_s: float) -> str:
    """A rate in bytes per second in its largest unit (powers of 1000): 512 B/s, 1.5 MB/s."""
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bytes_per_s >= size:
            return f"{bytes_per_s / size:.1f} {unit}"
    return f"{bytes_per_s:.0f} B/s"


def round_top(peak: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above `peak`."""
    scale = 1.0
    while True:
        for step in (1.0, 2.0, 5.0):
            if step * scale >= peak:
                return step * scale
        scale *= 10


def chart(
    points: Sequence[MetricPoint],
    metric: str,
    label: str,
    *,
    start: dt.datetime,
    span_s: int,
    unit: str = PERCENT,
) -> Chart:
    """`metric` of `points` scaled into the chart's box; a gap of more than two steps between
    points breaks the line, so a silent agent shows as a hole rather than a slope."""
    readings = [(p, p.values[metric]) for p in points if p.values.get(metric) is not None]
    values = [value for _, value in readings]
    top = 100.0 if unit == PERCENT else round_top(max(values, default=0.0))
    lines: list[list[str]] = []
    previous: dt.datetime | None = None
    for point, value in readings:
        x = (point.at - start).total_seconds() / span_s * CHART_W
        y = CHART_H - min(max(value, 0.0), top) / top * CHART_H
        gap = previous is None or (point.at - previous).total_seconds() > 2 * point.step_s
        if gap:
            lines.append([])
        lines[-1].append(f"{max(x, 0.0):.1f},{y:.1f}")
        previous = point.at
    return Chart(
        metric=metric,
        label=label,
        unit=unit,
        top=top,
        # A single point is drawn as a short flat dash, so that it can be seen.
        lines=tuple(" ".join(ln if len(ln) > 1 else [*ln, _nudge(ln[0])]) for ln in lines),
        last=values[-1] if values else None,
        peak=max(values) if values else None,
    )


def _nudge(point: str) -> str:
    x, y = point.split(",")
    return f"{float(x) + 6:.1f},{y}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBar:
    """One step of a waterfall: when it started and how long it took, in seconds and as
    offset and width out of WATERFALL_W."""

    step: str
    seconds: float
    x: float
    width: float


def waterfall(durations: Mapping[str, float | None]) -> tuple[StepBar, ...]:
    """The steps done (in their order) as bars one after another, the whole WATERFALL_W wide."""
    done = [(step, durations.get(step)) for step in STEPS]
    total = sum(seconds for _, seconds in done if seconds) or 1.0
    bars, at = [], 0.0
    for step, seconds in done:
        if seconds is None:
            continue
        width = max(seconds / total * WATERFALL_W, 2.0)
        bars.append(StepBar(step=step, seconds=seconds, x=round(at, 1), width=round(width, 1)))
        at += seconds / total * WATERFALL_W
    return tuple(bars)


def natural_key(name: str) -> tuple[tuple[int, str], ...]:
    """A sort key that puts web-2 before web-10."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)
    )


def ago(seconds: float) -> str:
    """A duration in its largest whole unit: 45 s, 12 min, 5 h, 3 d."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def last_reconcile(lease: Lease | None, now: dt.datetime) -> str:
    """What a fleet's card says of its last reconcile run: when, and the drift it found."""
    if lease is None or lease.last_run_at is None:
        return "not reconciled yet"
    result = lease.last_result
    when = f"reconciled {ago((now - lease.last_run_at).total_seconds())} ago"
    if result.get("error"):
        return f"{when}: failed"
    drift = int(result.get("drift", 0))
    if not drift:
        return f"{when}: in sync"
    repaired = int(result.get("repaired", 0))
    said = f"{when}: {drift} change{'' if drift == 1 else 's'} of drift"
    return said + (f", {repaired} repaired" if repaired else "")


def _event_row(event: Event, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "fleet": event.fleet,
        "server": event.server,
        "kind": event.kind,
        "message": event.message,
        "at": event.at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "ago": ago((now - event.at).total_seconds()),
        "tone": _tone(event.kind),
    }


def _tone(kind: str) -> str:
    if any(word in kind for word in ("fail", "error", "unhealthy", "drift", "firing")):
        return "bad"
    if any(word in kind for word in ("ready", "resolved", "succeeded", "done")):
        return "good"
    return "plain"


ALERT_TONES = {AlertState.FIRING: "bad", AlertState.PENDING: "warn", AlertState.RESOLVED: "good"}
ALERT_ORDER = {AlertState.FIRING: 0, AlertState.PENDING: 1, AlertState.RESOLVED: 2}


T = TypeVar("T")


def _one_page(items: Sequence[T], asked: str) -> tuple[Sequence[T], int, int]:
    """The page `asked` (the query's text; the first when it is not a page number, the last
    when it is past the end) of `items`, PAGE_SIZE a page: its items, its number, how many
    pages there are."""
    pages = max(1, math.ceil(len(items) / PAGE_SIZE))
    page = whole_number(asked, 1, INTEGER_MAX)
    number = 1 if page is None else min(page, pages)
    return items[(number - 1) * PAGE_SIZE : number * PAGE_SIZE], number, pages


def _alert_row(alert: AlertRecord, now: dt.datetime) -> dict[str, Any]:
    def when(at: dt.datetime | None) -> str:
        return "" if at is None else ago((now - at).total_seconds()) + " ago"

    return {
        "record": alert,
        "tone": ALERT_TONES[alert.state],
        "since": when(alert.since),
        "fired": when(alert.fired_at),
        "resolved": when(alert.resolved_at),
        "value": "" if alert.value is None else f"{alert.value:g}",
    }


# Before the fleet's reconcile loop has read the provider, the servers table shows the power
# the stored stage implies.
PRESUMED_POWER = {
    Stage.CREATING: Power.BUSY,
    Stage.BOOTING: Power.BUSY,
    Stage.PHONED_HOME: Power.ON,
    Stage.INSTALLING: Power.ON,
    Stage.READY: Power.ON,
    Stage.DELETING: Power.BUSY,
}


def presumed_power(record: ServerRecord) -> str:
    """The power a server's stored stage implies (on, busy), or "" where it implies none (no
    machine yet, or one failed or unhealthy: off or on, the stage does not say)."""
    power = PRESUMED_POWER.get(record.stage) if record.provider_id else None
    return "" if power is None else str(power)


def provider_power(record: ServerRecord, said: Mapping[str, str]) -> tuple[str, bool]:
    """The power the servers table shows, and whether the provider said it: from the status
    the provider gave at the fleet's last reconcile run (`said`; "gone" when it no longer
    lists the server), else what the stored stage implies."""
    status = said.get(record.name)
    if status is None:
        return presumed_power(record), False
    return ("gone" if status == "gone" else str(power_of(status))), True


def plan_text(plan: SavedPlan) -> str:
    """A saved plan as `engine preview` printed it (no colour); "" for a document of another
    schema version than this engine's."""
    if plan.document.get("version") != SCHEMA_VERSION:
        return ""
    return render_text(plan_from_json(plan.document))


CONTAINER_TONES = {"running": "good", "exited": "bad", "dead": "bad", "restarting": "warn"}


def server_containers(report: AgentReport | None) -> list[dict[str, str]]:
    """The containers the agent's last heartbeat listed (its name, image, state, Docker's
    status line and a tone for the state), by name."""
    listed = report.containers if report is not None else None
    items = listed.get("items") if isinstance(listed, Mapping) else None
    rows = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        state = str(item.get("state", ""))
        rows.append(
            {
                "name": str(item.get("name", "")),
                "image": str(item.get("image", "")),
                "state": state,
                "status": str(item.get("status", "")),
                "tone": CONTAINER_TONES.get(state, "plain"),
            }
        )
    return sorted(rows, key=lambda row: natural_key(row["name"]))


def server_apps(
    deployed: Sequence[DeployedApp], server: str, containers: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """The apps the engine last put on `server`: each with its version, when, and the state
    of its container in the agent's last list ("" when the list does not have it)."""
    states = {c["name"]: (c["state"], c["tone"]) for c in containers}
    rows = []
    for app in deployed:
        if app.server != server:
            continue
        state, tone = states.get(container_name(app.app, app.version), ("", "plain"))
        rows.append(
            {
                "app": app.app,
                "version": app.version,
                "deployed": app.deployed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
                "state": state,
                "tone": tone,
            }
        )
    return rows


STAGE_TONES = {
    Stage.READY: "good",
    Stage.FAILED: "bad",
    Stage.UNHEALTHY: "bad",
    Stage.DELETING: "warn",
}


class Dashboard:
    """The dashboard's routes over the store, the fleet API and the app's key checks."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        fleets: FleetApi,
        guard: Guard,
        links: SignInLinks | None = None,
    ) -> None:
        self.store = store
        self.links = links
        self.state_dir = state_dir
        self.fleets = fleets
        self.guard = guard
        self._signing = hmac.new(
            ensure_api_key_secret(state_dir), b"engine dashboard session", hashlib.sha256
        ).digest()
        self._templates = Environment(
            loader=FileSystemLoader(UI),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._static = {
            path.name: path.read_bytes() for path in UI.iterdir() if path.suffix in STATIC_TYPES
        }

    def routes(self) -> list[Route]:
        """Every route of the dashboard."""
        f = "/fleets/{fleet}"
        return [
            Route("/sign-in", self.get_sign_in, methods=["GET"]),
            Route("/sign-in", self.post_sign_in, methods=["POST"]),
            Route("/sign-in/link/{token}", self.get_sign_in_link, methods=["GET"]),
            Route("/sign-out", self.post_sign_out, methods=["POST"]),
            Route("/", self.get_overview, methods=["GET"]),
            Route(f, self.get_fleet, methods=["GET"]),
            Route(f"{f}/events", self.get_events, methods=["GET"]),
            Route(f"{f}/live", self.get_live, methods=["GET"]),
            Route(f"{f}/servers/{{name}}", self.get_server, methods=["GET"]),
            Route("/alerts", self.get_alerts, methods=["GET"]),
            Route(f"{f}/servers/{{name}}/actions", self.post_action, methods=["POST"]),
            Route("/static/{file}", self.get_static, methods=["GET"]),
        ]

    # --- sessions ---------------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        return hmac.new(self._signing, text.encode(), hashlib.sha256).hexdigest()

    def _new_session(self, key: ApiKey) -> str:
        body = f"{key.key_id}.{int(time.time()) + SESSION_S}.{secrets.token_hex(16)}"
        return f"{body}.{self._sign(body)}"

    def session(self, request: Request) -> Session | None:
        """The request's session, or None: no cookie, a cookie that does not verify or has
        expired, or a key revoked since."""
        parts = request.cookies.get(SESSION_COOKIE, "").split(".")
        if len(parts) != 4:
            return None
        key_id, expires, nonce, signature = parts
        if not is_same_token(self._sign(f"{key_id}.{expires}.{nonce}"), signature):
            return None
        if not expires.isdigit() or int(expires) < time.time():
            return None
        key = self.store.api_keys.get(key_id)
        if key is None or key.revoked_at is not None or not key.may(Scope.READ):
            return None
        return Session(key=key, csrf=self._sign(f"csrf.{nonce}"))

    def _verify(self, presented: str) -> ApiKey | None:
        key = self.guard.api_keys.verify(presented)
        # The verifier remembers keys for a few seconds; a session starts from the store.
        fresh = None if key is None else self.store.api_keys.get(key.key_id)
        if fresh is None or fresh.revoked_at is not None or not fresh.may(Scope.READ):
            return None
        return fresh

    # --- answers ----------------------------------------------------------------------------

    def _page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        html = self._templates.get_template(template).render(request=request, **context)
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
        return HTMLResponse(html, status_code=status, headers=headers)

    def _refuse(
        self, request: Request, status: int, message: str, session: Session | None = None
    ) -> HTMLResponse:
        self.guard.count_refusal(request)
        return self._page(request, "error.html", status, session=session, message=message)

    def _to_sign_in(self) -> Response:
        return RedirectResponse("/sign-in", status_code=303, headers=SECURITY_HEADERS)

    def _is_tls(self, request: Request) -> bool:
        return request.url.scheme == "https"

    # --- sign-in ----------------------------------------------------------------------------

    async def get_sign_in(self, request: Request) -> Response:
        return self._sign_in_form(request, 200, "")

    def _sign_in_form(self, request: Request, status: int, problem: str) -> Response:
        token = secrets.token_hex(16)
        answer = self._page(request, "sign_in.html", status, token=token, problem=problem)
        answer.set_cookie(
            SIGN_IN_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=self._is_tls(request),
        )
        return answer

    async def post_sign_in(self, request: Request) -> Response:
        self.guard.check_failures(request.client.host if request.client else "")
        form = await read_form(request)
        token, presented = form.get("token", ""), form.get("key", "").strip()
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
        if not expected or not is_same_token(expected, token):
            self.guard.count_refusal(request)
            return self._sign_in_form(request, 403, "The form expired: sign in again.")
        key = await run_in_threadpool(self._verify, presented)
        if key is None:
            self.guard.count_refusal(request)
            return self._sign_in_form(request, 401, "This API key is unknown or revoked.")
        answer = self._signed_in(request, key, "/")
        answer.delete_cookie(SIGN_IN_COOKIE)
        return answer

    def _signed_in(self, request: Request, key: ApiKey, then: str) -> Response:
        answer = RedirectResponse(then, status_code=303, headers=SECURITY_HEADERS)
        answer.set_cookie(
            SESSION_COOKIE,
            self._new_session(key),
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=self._is_tls(request),
        )
        return answer

    async def get_sign_in_link(self, request: Request) -> Response:
        self.guard.check_failures(request.client.host if request.client else "")
        found = None if self.links is None else self.links.redeem(request.path_params["token"])
        key = None if found is None else await run_in_threadpool(self.store.api_keys.get, found[0])
        if found is None or key is None or key.revoked_at is not None or not key.may(Scope.READ):
            return self._refuse(
                request,
                403,
                "This sign-in link was used already or has expired: each works once. Sign in "
                "with an API key, or start `engine dashboard` again for a new link.",
            )
        return self._signed_in(request, key, found[1])

    async def post_sign_out(self, request: Request) -> Response:
        form = await read_form(request)
        session = await run_in_threadpool(self.session, request)
        if session is None or not is_same_token(session.csrf, form.get("csrf", "")):
            return self._refuse(request, 403, "This sign-out did not come from this dashboard.")
        answer = RedirectResponse("/sign-in", status_code=303, headers=SECURITY_HEADERS)
        answer.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return answer

    # --- pages ------------------------------------------------------------------------------

    async def get_overview(self, request: Request) -> Response:
        return await run_in_threadpool(self._overview, request)

    def _overview(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self._to_sign_in()
        now = dt.datetime.now(dt.UTC)
        fleets = []
        events: list[Event] = []
        for name in self._readable_fleets(session):
            settings = self.store.fleets.get(name)
            records = self.store.servers.all(name)
            fleets.append(
                {
                    "name": name,
                    "provider": settings.provider if settings else "",
                    "total": len(records),
                    "stages": _stage_counts(records),
                    "runs": self.store.runs.all(name, limit=1),
                    "monthly": self._monthly(records),
                    "firing": sum(
                        a.state is AlertState.FIRING for a in self.store.alerts.all(name)
                    ),
                    "reconciled": last_reconcile(self.store.leases.get(name), now),
                }
            )
            events.extend(self.store.events.latest(name, limit=10))
        events.sort(key=lambda e: e.at, reverse=True)
        return self._page(
            request,
            "overview.html",
            session=session,
            fleets=fleets,
            events=[_event_row(e, now) for e in events[:15]],
        )

    def _readable_fleets(self, session: Session) -> list[str]:
        names = {s.fleet for s in self.store.specs.all()} | {
            f.name for f in self.store.fleets.all()
        }
        return sorted(n for n in names if session.key.may(Scope.READ, n))

    async def get_alerts(self, request: Request) -> Response:
        return await run_in_threadpool(self._alerts, request)

    def _alerts(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self._to_sign_in()
        query = request.query_params
        fleet, state = query.get("fleet", ""), query.get("state", "")
        text = query.get("q", "").strip()
        readable = self._readable_fleets(session)
        if fleet and fleet not in readable:
            return self._refuse(
                request, 403, f"The key {session.key.name} is not granted fleet {fleet}.", session
            )
        now = dt.datetime.now(dt.UTC)
        alerts = [
            a
            for name in ([fleet] if fleet else readable)
            for a in self.store.alerts.all(name)
            if (not state or str(a.state) == state)
            and (not text or text in a.alert or text in a.subject)
        ]
        # Firing first, then pending, then resolved; the most recent change first in each.
        alerts.sort(key=lambda a: (ALERT_ORDER[a.state], -a.since.timestamp()))
        on_page, number, pages = _one_page(alerts, query.get("page", "1"))
        return self._page(
            request,
            "alerts.html",
            session=session,
            fleets=readable,
            fleet=fleet,
            state=state,
            text=text,
            states=[str(s) for s in AlertState],
            alerts=[_alert_row(a, now) for a in on_page],
            matching=len(alerts),
            page=number,
            pages=pages,
        )

    def _monthly(self, records: Sequence[ServerRecord]) -> str:
        """What the fleet's servers cost a month at the catalog's prices (without backups,
        which the records do not say), e.g. "€14.28"; "" when no price is known."""
        total, currency = 0.0, ""
        catalogs: dict[str, Catalog | None] = {}
        for record in records:
            if not record.provider_id or record.stage is Stage.DELETING:
                continue
            if record.provider not in catalogs:
                try:
                    catalogs[record.provider] = load_catalog(record.provider, self.state_dir)
                except EngineError:
                    catalogs[record.provider] = None
            catalog = catalogs[record.provider]
            price = None
            if catalog is not None:
                price = monthly_price(
                    catalog,
                    record.server_type,
                    record.location,
                    backups=False,
                    ipv4=record.ipv4 is not None,
                )
            if price is None or catalog is None:
                continue
            total, currency = total + price, catalog.currency
        return f"{total:.2f} {currency}" if currency else ""

    def _fleet_session(self, request: Request) -> tuple[Session | None, Response | None]:
        session = self.session(request)
        if session is None:
            return None, self._to_sign_in()
        refusal = self._fleet_refusal(session, request.path_params["fleet"])
        if refusal is not None:
            return None, self._refuse(request, refusal.status, _sentence(refusal.message), session)
        return session, None

    def _fleet_refusal(self, session: Session, fleet: str) -> ApiError | None:
        """Why `session` may not see the pages of `fleet` (its key is not granted it, or
        there is no such fleet), or None."""
        if not session.key.may(Scope.READ, fleet):
            return ApiError(
                403, "forbidden", f"the key {session.key.name} is not granted fleet {fleet}"
            )
        if self.store.fleets.get(fleet) is None and self.store.specs.get(fleet) is None:
            return ApiError(404, "fleet_not_found", f"this control plane serves no fleet {fleet}")
        return None

    async def get_fleet(self, request: Request) -> Response:
        return await run_in_threadpool(self._fleet, request)

    def _fleet(self, request: Request) -> Response:
        session, refused = self._fleet_session(request)
        if session is None:
            assert refused is not None
            return refused
        fleet = request.path_params["fleet"]
        query = request.query_params
        stage, text = query.get("stage", ""), query.get("q", "").strip()
        now = dt.datetime.now(dt.UTC)
        records = self.store.servers.all(fleet)
        shown = sorted(
            (
                r
                for r in records
                if (not stage or str(r.stage) == stage) and (not text or text in r.name)
            ),
            key=lambda r: natural_key(r.name),
        )
        on_page, number, pages = _one_page(shown, query.get("page", "1"))
        reports = {r.server: r for r in self.store.agents.reports(fleet)}
        lease = self.store.leases.get(fleet)
        said = dict(lease.last_result.get("provider") or {}) if lease is not None else {}
        rows = []
        for record in on_page:
            report = reports.get(record.name)
            metrics = report.metrics if report else {}
            power, read = provider_power(record, said)
            rows.append(
                {
                    "record": record,
                    "tone": STAGE_TONES.get(record.stage, "plain"),
                    "age": ago((now - record.created_at).total_seconds())
                    if record.created_at
                    else "",
                    "heartbeat": ago((now - report.last_heartbeat_at).total_seconds())
                    if report
                    else "",
                    "power": power,
                    "power_read": read,
                    "cpu": _percent(metrics, "cpu"),
                    "memory": _percent(metrics, "memory"),
                }
            )
        events = self.store.events.latest(fleet, limit=10)
        by_server: dict[str, list[Transition]] = {}
        for transition in self.store.servers.transitions(fleet):
            by_server.setdefault(transition.server, []).append(transition)
        medians = median_durations([step_durations(r, by_server.get(r.name, ())) for r in records])
        plan = self.store.runs.latest_plan(fleet)
        return self._page(
            request,
            "fleet.html",
            steps=waterfall(medians),
            session=session,
            fleet=fleet,
            rows=rows,
            total=len(records),
            matching=len(shown),
            stages=_stage_counts(records),
            all_stages=[str(s) for s in Stage],
            stage=stage,
            text=text,
            page=number,
            pages=pages,
            runs=self.store.runs.all(fleet, limit=5),
            plan=plan,
            plan_text=plan_text(plan) if plan else "",
            plan_ago=ago((now - plan.created_at).total_seconds()) if plan else "",
            events=[_event_row(e, now) for e in events],
            since=events[0].id if events else 0,
        )

    async def get_server(self, request: Request) -> Response:
        return await run_in_threadpool(self._server, request)

    def _server(self, request: Request, *, notice: str = "") -> Response:
        session, refused = self._fleet_session(request)
        if session is None:
            assert refused is not None
            return refused
        fleet, name = request.path_params["fleet"], request.path_params["name"]
        record = self.store.servers.get(fleet, name)
        if record is None:
            return self._refuse(request, 404, f"Fleet {fleet} has no server {name}.", session)
        chosen = request.query_params.get("range", "1h")
        chosen = chosen if chosen in RANGES else "1h"
        span_s, step_s = RANGES[chosen]
        now = dt.datetime.now(dt.UTC)
        start = now - dt.timedelta(seconds=span_s)
        points = self.store.metrics.series(fleet, name, since=start, step_s=step_s)
        report = self.store.agents.report(fleet, name)
        events = self.store.events.latest(fleet, server=name, limit=20)
        steps = waterfall(step_durations(record, self.store.servers.transitions(fleet, name)))
        containers = server_containers(report)
        return self._page(
            request,
            "server.html",
            session=session,
            fleet=fleet,
            record=record,
            tone=STAGE_TONES.get(record.stage, "plain"),
            report=report,
            heartbeat=ago((now - report.last_heartbeat_at).total_seconds()) if report else "",
            age=ago((now - record.created_at).total_seconds()) if record.created_at else "",
            ranges=list(RANGES),
            chosen=chosen,
            charts=[
                chart(points, m, label, start=start, span_s=span_s, unit=unit)
                for m, label, unit in CHARTS
            ],
            width=CHART_W,
            height=CHART_H,
            steps=steps,
            containers=containers,
            listed=report.containers if report and report.containers else {},
            apps=server_apps(self.store.apps.deployed(fleet), name, containers),
            events=[_event_row(e, now) for e in events],
            since=events[0].id if events else 0,
            actions=[str(a) for a in ACTIONS] if session.key.may(Scope.APPLY, fleet) else [],
            # A run is planned from the spec registered through the API (as `POST .../actions`).
            has_spec=self.store.specs.get(fleet) is not None,
            notice=notice or request.query_params.get("queued", ""),
        )

    async def get_events(self, request: Request) -> Response:
        return await run_in_threadpool(self._events, request)

    def _events(self, request: Request) -> Response:
        session, refused = self._fleet_session(request)
        if session is None:
            assert refused is not None
            return refused
        fleet = request.path_params["fleet"]
        server = request.query_params.get("server") or None
        kind = request.query_params.get("kind", "").strip()
        now = dt.datetime.now(dt.UTC)
        events = self.store.events.latest(fleet, server=server, kind=kind, limit=200)
        return self._page(
            request,
            "events.html",
            session=session,
            fleet=fleet,
            server=server or "",
            kind=kind,
            events=[_event_row(e, now) for e in events],
            since=events[0].id if events else 0,
        )

    # --- actions ----------------------------------------------------------------------------

    async def post_action(self, request: Request) -> Response:
        form = await read_form(request)
        return await run_in_threadpool(self._action, request, form)

    def _action(self, request: Request, form: Mapping[str, str]) -> Response:
        session = self.session(request)
        if session is None:
            return self._refuse(request, 401, "Sign in first: this browser has no session.")
        if not is_same_token(session.csrf, form.get("csrf", "")):
            return self._refuse(
                request, 403, "This action did not come from this dashboard's page.", session
            )
        fleet, name = request.path_params["fleet"], request.path_params["name"]
        if not session.key.may(Scope.APPLY, fleet):
            return self._refuse(
                request,
                403,
                f"The key {session.key.name} may not act on fleet {fleet}: this needs a key "
                "of apply scope.",
                session,
            )
        action = form.get("action", "")
        if action not in {str(a) for a in ACTIONS}:
            choices = ", ".join(str(a) for a in ACTIONS)
            return self._refuse(request, 422, f"Choose an action: one of {choices}.", session)
        if form.get("confirm") != "yes":
            return self._page(
                request, "confirm.html", session=session, fleet=fleet, name=name, action=action
            )
        try:
            run = self.fleets.queue_action(fleet, name, action, session.key.name)
        except ApiError as error:
            return self._refuse(request, error.status, f"{error.message}.", session)
        self.store.audit.record(
            AuditEntry(
                at=dt.datetime.now(dt.UTC),
                actor=session.key.name,
                action=f"POST {request.url.path}",
                fleet=fleet,
                status=303,
                result=f"run {run.id} queued",
                detail={"run": run.id, "action": action, "via": "dashboard"},
            )
        )
        return RedirectResponse(
            f"/fleets/{fleet}/servers/{name}?queued={action}", 303, headers=SECURITY_HEADERS
        )

    # --- live updates and assets ------------------------------------------------------------

    async def get_live(self, request: Request) -> Response:
        """New events after `since` (waiting up to `wait` seconds for one) and the stage of
        every server they name, for the pages' script."""
        session = await run_in_threadpool(self.session, request)
        if session is None:
            return _json_error(ApiError(401, "no_session", "sign in again"))
        refusal = await run_in_threadpool(
            self._fleet_refusal, session, request.path_params["fleet"]
        )
        if refusal is not None:
            self.guard.count_refusal(request)
            return _json_error(refusal)
        fleet = request.path_params["fleet"]
        query = request.query_params
        since = whole_number(query.get("since", "0"), 0, INTEGER_MAX)
        wait = whole_number(query.get("wait", "0"), 0, INTEGER_MAX)
        if since is None or wait is None:
            self.guard.count_refusal(request)
            return JSONResponse(
                {"error": {"code": "invalid_query", "message": "since and wait: whole numbers"}},
                status_code=422,
                headers=SECURITY_HEADERS,
            )
        events = await wait_for_events(
            self.store,
            fleet,
            server=query.get("server") or None,
            since=since,
            wait_s=min(wait, LIVE_WAIT_MAX_S),
            limit=100,
        )
        stages = await run_in_threadpool(self._stages, fleet, {e.server for e in events})
        now = dt.datetime.now(dt.UTC)
        return JSONResponse(
            {
                "events": [_event_row(e, now) for e in events],
                "next": events[-1].id if events else since,
                "stages": stages,
            },
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    def _stages(self, fleet: str, servers: set[str | None]) -> dict[str, dict[str, str]]:
        stages = {}
        for name in sorted(s for s in servers if s):
            record = self.store.servers.get(fleet, name)
            if record is not None:
                stages[name] = {
                    "stage": str(record.stage),
                    "tone": STAGE_TONES.get(record.stage, "plain"),
                }
        return stages

    async def get_static(self, request: Request) -> Response:
        name = request.path_params["file"]
        content = self._static.get(name)
        if content is None:
            return Response(status_code=404, headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": "max-age=300"}
        return Response(content, media_type=STATIC_TYPES[Path(name).suffix], headers=headers)


async def read_form(request: Request) -> dict[str, str]:
    """A posted HTML form's fields (the first value of each); empty unless the body is a
    urlencoded form of at most FORM_MAX_BYTES and FORM_MAX_FIELDS fields, which every form
    of the dashboard is."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            return {}
    try:
        fields = urllib.parse.parse_qs(
            body.decode("utf-8", "replace"), max_num_fields=FORM_MAX_FIELDS
        )
    except ValueError:  # more fields than FORM_MAX_FIELDS
        return {}
    return {name: values[0] for name, values in fields.items()}


def _json_error(error: ApiError) -> JSONResponse:
    """`error` as the live endpoint answers it: the API's error body, the page's headers."""
    return JSONResponse(error.body(), status_code=error.status, headers=SECURITY_HEADERS)


def _sentence(message: str) -> str:
    """An API error's message as a page says it: "the key ops is ..." -> "The key ops is ..."."""
    return f"{message[:1].upper()}{message[1:]}."


def _stage_counts(records: Sequence[ServerRecord]) -> list[tuple[str, int, str]]:
    counts: dict[Stage, int] = {}
    for record in records:
        counts[record.stage] = counts.get(record.stage, 0) + 1
    return [(str(s), counts[s], STAGE_TONES.get(s, "plain")) for s in Stage if s in counts]


def _percent(metrics: Mapping[str, Any], section: str) -> str:
    part = metrics.get(section)
    value = part.get("percent") if isinstance(part, Mapping) else None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return f"{value:.0f}%" if is_number else ""
