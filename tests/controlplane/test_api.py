"""The fleet API and the agent's routes against the real control plane on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.controlplane.apikeys import ApiKeyVerifier, create_api_key
from engine.controlplane.app import AppSettings, create_app
from engine.controlplane.monitor import Monitor
from engine.controlplane.ratelimit import RateLimiter
from engine.model import Stage
from engine.state import AgentReport, Scope, ServerRecord
from engine.tokens import derive_token, ensure_fleet_key
from tests.controlplane.conftest import Plane, _plane, body, make_fleet
from tests.support.clock import Clock
from tests.support.http import serve
from tests.support.wait import wait_until


def _heartbeat(
    plane: Plane, server: str, token: str, metrics: Mapping[str, Any] | None = None
) -> httpx.Response:
    return plane.client.post(
        f"{plane.url}/v1/heartbeat",
        json={
            "version": 1,
            "fleet": "web-prod",
            "server": server,
            "sequence": 1,
            "metrics": {"cpu_percent": 3.5} if metrics is None else metrics,
            "containers": {"running": 1},
            "tls_fingerprint": "sha256:ab",
        },
        headers={"Authorization": f"Bearer {token}"},
    )


def test_only_health_answers_without_credentials(plane: Plane) -> None:
    assert plane.client.get(f"{plane.url}/v1/health").json() == {"status": "ok", "degraded": []}
    for path in ("/v1/servers?fleet=web-prod", "/v1/servers/web-1?fleet=web-prod", "/v1/events"):
        response = plane.client.get(f"{plane.url}{path}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    wrong = plane.client.get(
        f"{plane.url}/v1/servers?fleet=web-prod", headers={"Authorization": "Bearer fek_x_y"}
    )
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "api_key_invalid")
    assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_a_method_a_path_does_not_take_is_answered_with_those_it_takes(plane: Plane) -> None:
    # Each method of a path is its own route: the router's 405 had no Allow header.
    key = create_api_key(plane.store, plane.state_dir, "ops", scope=Scope.ADMIN)
    auth = {"Authorization": f"Bearer {key}"}
    for method, path, allowed in [
        ("DELETE", "/v1/fleets/web-prod", "GET, HEAD, PUT"),
        ("POST", "/v1/fleets", "GET, HEAD"),
        ("GET", "/v1/fleets/web-prod/plans", "POST"),
    ]:
        answer = plane.client.request(method, f"{plane.url}{path}", headers=auth)
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.headers["Allow"] == allowed
        assert answer.json()["error"] == {
            "code": "method_not_allowed",
            "message": f"{method} is not allowed here; use {allowed.replace(', ', ' or ')}",
        }


def test_a_path_with_a_trailing_slash_is_not_redirected_where_the_host_header_says(
    plane: Plane,
) -> None:
    # Starlette's redirect to the path without the slash took its host from the Host header.
    answer = plane.client.get(f"{plane.url}/v1/fleets/", headers={"Host": "evil.example"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found")
    assert "location" not in answer.headers


def test_servers_and_events_with_an_api_key(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "ops")
    auth = {"Authorization": f"Bearer {key}"}
    assert plane.phone_home_as(1).status_code == 200
    listing = plane.client.get(f"{plane.url}/v1/servers?fleet=web-prod", headers=auth)
    assert listing.status_code == 200
    assert [s["name"] for s in listing.json()["servers"]] == ["web-1", "web-2", "web-3"]
    one = plane.client.get(f"{plane.url}/v1/servers/web-1?fleet=web-prod", headers=auth).json()
    assert one["host_keys_source"] == "phone-home"
    assert one["steps"]["create"] is not None
    events = plane.client.get(f"{plane.url}/v1/events?fleet=web-prod", headers=auth).json()
    assert "server.phoned_home" in [e["kind"] for e in events["events"]]
    missing = plane.client.get(f"{plane.url}/v1/servers", headers=auth)
    assert missing.status_code == 422
    assert missing.json()["error"]["fields"] == [
        {"path": "fleet", "message": "required: ?fleet=NAME"}
    ]
    bad = plane.client.get(f"{plane.url}/v1/events?fleet=web-prod&limit=0&after=x", headers=auth)
    assert {f["path"] for f in bad.json()["error"]["fields"]} == {"after", "limit"}
    assert plane.client.get(f"{plane.url}/v1/servers?fleet=nope", headers=auth).status_code == 404


def test_a_revoked_key_is_refused_once_its_remembered_answer_expires(plane: Plane) -> None:
    clock = Clock()
    verifier = ApiKeyVerifier(
        plane.store, plane.state_dir, ttl_s=5.0, clock=lambda: clock.now.timestamp()
    )
    key = create_api_key(plane.store, plane.state_dir, "ops")
    assert verifier.verify(key) is not None
    plane.store.api_keys.revoke("ops")
    assert verifier.verify(key) is not None  # remembered for 5 s: no database read per request
    clock.advance(5.1)
    assert verifier.verify(key) is None
    assert verifier.verify(key.replace(key[-4:], "0000")) is None  # a wrong secret, too


def test_the_documented_limits_are_the_defaults(tmp_path: Path) -> None:
    settings = AppSettings(state_dir=tmp_path)
    assert (settings.api_rate_per_s, settings.api_burst) == (100.0, 200)


def test_a_burst_gets_429_with_a_retry_after_that_is_right(tmp_path: Path) -> None:
    # The same limiter with a small bucket (5/s, burst 10), so that the burst overruns it
    # however fast this machine answers.
    settings = AppSettings(state_dir=tmp_path / "state", api_rate_per_s=5.0, api_burst=10)
    for plane in _plane(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", make_fleet(), app_settings=settings
    ):
        _burst(plane)


def _burst(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "burst")
    url = f"{plane.url}/v1/servers/web-1?fleet=web-prod"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(
                *(client.get(url, headers={"Authorization": f"Bearer {key}"}) for _ in range(60))
            )

    answers = asyncio.run(burst())
    limited = [a for a in answers if a.status_code == 429]
    assert len(limited) >= 30, "60 requests at once overrun a bucket of 10 refilling 5/s"
    assert {a.status_code for a in answers} == {200, 429}
    assert {a.headers["Retry-After"] for a in limited} == {"1"}
    assert limited[0].json()["error"]["code"] == "rate_limited"
    wait_until(  # the bucket refills: the client is served again
        lambda: (
            plane.client.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        ),
        timeout_s=int(limited[-1].headers["Retry-After"]) + 10,
        what="the rate limiter to let requests in again",
    )


def _broken_metrics(record: ServerRecord, report: AgentReport | None) -> Mapping[str, Any]:
    raise RuntimeError("the metrics source failed")


def _refused(plane: Plane, url: str, kind: str, source: str, key: str) -> httpx.Response:
    """One request from `source` that the control plane refuses, of the given kind."""
    headers = {"X-Forwarded-For": source}
    if kind == "unknown route":
        return plane.client.get(f"{url}/v1/nothing", headers=headers)
    if kind == "no token":
        return plane.client.get(f"{url}/v1/events?fleet=web-prod", headers=headers)
    headers["Authorization"] = f"Bearer {key}"
    if kind == "invalid body":
        return plane.client.post(f"{url}/v1/heartbeat", json={"fleet": "web-prod"}, headers=headers)
    if kind == "body too deep":
        headers["Content-Type"] = "application/json"
        return plane.client.post(f"{url}/v1/heartbeat", content=b"[" * 5000, headers=headers)
    if kind == "internal error":  # the metrics source fails for a server with a report
        plane.store.agents.record_heartbeat(
            AgentReport(
                fleet="web-prod",
                server="web-1",
                last_heartbeat_at=dt.datetime.now(dt.UTC),
                metrics={},
                containers=None,
                tls_fingerprint="sha256:ab",
            )
        )
        # uvicorn drops the connection after the error: do not send the next request on it.
        headers["Connection"] = "close"
        return plane.client.get(f"{url}/v1/servers?fleet=web-prod", headers=headers)
    assert kind == "not ready"  # a genuine token of a server that is not registered
    headers["Authorization"] = f"Bearer {plane.token('web-9')}"
    document = body("web-prod", "web-9", "4009", source)
    return plane.client.post(f"{url}/v1/phone-home", json=document, headers=headers)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("unknown route", 404),
        ("no token", 401),
        ("invalid body", 422),
        ("body too deep", 400),
        ("internal error", 500),
        ("not ready", 503),
    ],
)
def test_every_refused_request_counts_against_its_source_address(
    plane: Plane, kind: str, status: int
) -> None:
    settings = AppSettings(state_dir=plane.state_dir, failure_rate_per_s=0.01, failure_burst=3)
    app = create_app(plane.store, settings, metrics=_broken_metrics)
    key = create_api_key(plane.store, plane.state_dir, "ops")
    try:
        with serve(app, proxy_headers=True, forwarded_allow_ips="127.0.0.1") as url:

            def events(source: str) -> httpx.Response:
                headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": source}
                return plane.client.get(f"{url}/v1/events?fleet=web-prod", headers=headers)

            answers = [_refused(plane, url, kind, "198.51.100.7", key) for _ in range(3)]
            assert [a.status_code for a in answers] == [status] * 3
            limited = events("198.51.100.7")
            assert (limited.status_code, limited.json()["error"]["code"]) == (429, "rate_limited")
            assert limited.headers["Retry-After"] == "100"
            assert events("198.51.100.8").status_code == 200  # buckets are per source address
    finally:
        app.state.api.close()


def test_a_bucket_says_when_a_token_is_back_and_refills_at_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(5.0, 10, clock=lambda: clock.now.timestamp())
    assert [limiter.take("k") for _ in range(10)] == [None] * 10
    assert limiter.take("k") == 1 and limiter.remaining("k") == 0  # Retry-After: 1 s
    assert limiter.take("other") is None  # buckets are per key
    clock.advance(0.1)
    assert limiter.take("k") == 1  # half a token back: still a whole second to say
    clock.advance(0.15)
    assert limiter.take("k") is None  # a token back after 1/5 s, spent
    clock.advance(1.0)
    assert limiter.remaining("k") == 5
    clock.advance(60)
    assert limiter.remaining("k") == 10  # never more than the burst


def test_heartbeats_make_an_installed_server_ready_and_their_absence_unhealthy(
    plane: Plane,
) -> None:
    assert plane.phone_home_as(1).status_code == 200

    wait_until(
        lambda: plane.store.servers.get("web-prod", "web-1").installed_at,  # type: ignore[union-attr]
        what="the install",
    )
    key = ensure_fleet_key(plane.state_dir, "web-prod")
    assert key is not None
    token = derive_token(key, "heartbeat", "web-prod", "web-1")
    assert (
        _heartbeat(plane, "web-1", derive_token(key, "heartbeat", "web-prod", "web-2")).status_code
        == 401
    )
    assert _heartbeat(plane, "web-1", token[:-2] + "AA").status_code == 401
    answer = _heartbeat(plane, "web-1", token)
    assert answer.json() == {"status": "ok", "stage": "ready"}
    report = plane.store.agents.report("web-prod", "web-1")
    assert report is not None and report.metrics == {"cpu_percent": 3.5}
    # No heartbeat for 3 intervals (heartbeat 15 s in the spec) of a monitor that listened
    # since the heartbeat: unhealthy.
    monitor = Monitor(plane.store, heartbeat_misses=3, clock=lambda: report.last_heartbeat_at)
    plane.store._database.now = lambda: (
        report.last_heartbeat_at + __import__("datetime").timedelta(seconds=46)
    )
    monitor.sweep()
    assert plane.store.servers.get("web-prod", "web-1").stage is Stage.UNHEALTHY  # type: ignore[union-attr]
    assert _heartbeat(plane, "web-1", token).json()["stage"] == "ready"
    event = {
        "version": 1,
        "fleet": "web-prod",
        "server": "web-1",
        "event_id": "abc-die-1",
        "event": "die",
        "time": "2026-11-05T10:00:00Z",
        "container": {"id": "abc", "name": "app", "image": "nginx"},
        "exit_code": 1,
    }
    sent = [
        plane.client.post(
            f"{plane.url}/v1/agent-events", json=event, headers={"Authorization": f"Bearer {token}"}
        ).json()["status"]
        for _ in range(2)
    ]
    assert sent == ["recorded", "duplicate"]
    kinds = [e.kind for e in plane.store.events.all("web-prod", server="web-1")]
    assert kinds.count("container.die") == 1


def test_heartbeats_are_kept_as_metric_history_served_per_step(plane: Plane) -> None:
    key = ensure_fleet_key(plane.state_dir, "web-prod")
    assert key is not None
    token = derive_token(key, "heartbeat", "web-prod", "web-1")
    # Byte counters as they stand: the history keeps the rate between two heartbeats.
    for second, cpu, received in ((0, 10.0, 1000), (10, 30.0, 21000)):
        metrics = {
            "collected_at": f"2026-12-01T10:00:{second:02d}.000Z",
            "cpu": {"percent": cpu},
            "disks": [{"percent": 40.0}],
            "network": [{"interface": "eth0", "bytes_recv": received, "bytes_sent": 0}],
        }
        answer = _heartbeat(plane, "web-1", token, metrics)
        assert answer.status_code == 200, answer.text
    api = {"Authorization": f"Bearer {create_api_key(plane.store, plane.state_dir, 'ops')}"}
    metrics = f"{plane.url}/v1/fleets/web-prod/servers/web-1/metrics"
    got = plane.client.get(metrics, params={"since": "1h", "step": "15m"}, headers=api)
    assert got.status_code == 200, got.text
    points = got.json()["points"]  # one, unless the two straddle a quarter hour
    assert sum(p["samples"] for p in points) == 2 and {p["disk"] for p in points} == {40.0}
    assert sum(p["cpu"] * p["samples"] for p in points) / 2 == 20.0
    # The rate, 20,000 bytes in 10 s, came with the second only, and is averaged over it alone.
    assert [p["rx"] for p in points if "rx" in p] == [2000.0]
    bad = plane.client.get(metrics, params={"since": "yesterday", "step": "30s"}, headers=api)
    fields = {f["path"] for f in bad.json()["error"]["fields"]}
    assert (bad.status_code, fields) == (422, {"since", "step"})
    missing = plane.client.get(f"{plane.url}/v1/fleets/web-prod/servers/web-9/metrics", headers=api)
    assert missing.status_code == 404
    assert plane.client.get(metrics).status_code == 401


def test_a_heartbeat_with_numbers_json_has_not_is_refused_and_the_history_stays_readable(
    plane: Plane,
) -> None:
    key = ensure_fleet_key(plane.state_dir, "web-prod")
    assert key is not None
    token = derive_token(key, "heartbeat", "web-prod", "web-1")
    sent = plane.client.post(
        f"{plane.url}/v1/heartbeat",
        content=b'{"fleet": "web-prod", "server": "web-1", "sequence": 1, "containers": {},'
        b' "metrics": {"cpu": {"percent": NaN}, "memory": {"percent": Infinity},'
        b' "disks": [{"percent": 1e400}, {"percent": -Infinity}]}, "tls_fingerprint": "x"}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert sent.status_code == 422, sent.text
    error = sent.json()["error"]
    assert error["code"] == "invalid_body"
    assert [f["path"] for f in error["fields"]] == [
        "metrics.cpu.percent",
        "metrics.memory.percent",
        "metrics.disks[0].percent",
        "metrics.disks[1].percent",
    ]
    assert "finite" in error["fields"][0]["message"]
    assert plane.store.agents.report("web-prod", "web-1") is None
    api = {"Authorization": f"Bearer {create_api_key(plane.store, plane.state_dir, 'ops')}"}
    metrics = plane.client.get(f"{plane.url}/v1/fleets/web-prod/servers/web-1/metrics", headers=api)
    assert (metrics.status_code, metrics.json()["points"]) == (200, [])


def test_readings_out_of_range_leave_the_metric_history_finite(plane: Plane) -> None:
    key = ensure_fleet_key(plane.state_dir, "web-prod")
    assert key is not None
    token = derive_token(key, "heartbeat", "web-prod", "web-1")
    for second, received in ((0, 0), (10, 10**400)):
        metrics = {
            "collected_at": f"2026-12-01T10:00:{second:02d}.000Z",
            "cpu": {"percent": 1.7e308},
            "memory": {"percent": 50.0},
            "network": [{"interface": "eth0", "bytes_recv": received, "bytes_sent": 0}],
        }
        answer = _heartbeat(plane, "web-1", token, metrics)
        assert answer.status_code == 200, answer.text
    api = {"Authorization": f"Bearer {create_api_key(plane.store, plane.state_dir, 'ops')}"}
    metrics = f"{plane.url}/v1/fleets/web-prod/servers/web-1/metrics"
    got = plane.client.get(metrics, params={"step": "15m"}, headers=api)
    assert got.status_code == 200, got.text
    assert [set(p) - {"at", "samples"} for p in got.json()["points"]] == [{"memory"}]


def test_whole_numbers_a_column_cannot_hold_are_refused_at_their_field(plane: Plane) -> None:
    key = ensure_fleet_key(plane.state_dir, "web-prod")
    assert key is not None
    auth = {"Authorization": f"Bearer {derive_token(key, 'heartbeat', 'web-prod', 'web-1')}"}
    heartbeat = {
        "fleet": "web-prod",
        "server": "web-1",
        "metrics": {},
        "containers": {},
        "tls_fingerprint": "sha256:ab",
    }
    event = {
        "fleet": "web-prod",
        "server": "web-1",
        "event_id": "abc-die-1",
        "event": "die",
        "container": {"id": "abc"},
    }
    # 2^63 overflowed SQLite's INTEGER (a 500); 2^31 overflows PostgreSQL's.
    refused = [
        ("/v1/heartbeat", {**heartbeat, "sequence": 2**63}, "sequence"),
        ("/v1/heartbeat", {**heartbeat, "sequence": 2**31}, "sequence"),
        ("/v1/agent-events", {**event, "exit_code": 2**63}, "exit_code"),
        ("/v1/agent-events", {**event, "exit_code": -(2**31) - 1}, "exit_code"),
    ]
    before = plane.snapshot()
    for path, document, field in refused:
        answer = plane.client.post(f"{plane.url}{path}", json=document, headers=auth)
        assert answer.status_code == 422, (path, document, answer.text)
        assert [f["path"] for f in answer.json()["error"]["fields"]] == [field]
    answer = plane.phone_home_as(1, attempt=2**31)
    assert answer.status_code == 422, answer.text
    assert [f["path"] for f in answer.json()["error"]["fields"]] == ["attempt"]
    assert plane.snapshot() == before
    assert plane.store.agents.report("web-prod", "web-1") is None
    last = {**heartbeat, "sequence": 2**31 - 1}
    assert (
        plane.client.post(f"{plane.url}/v1/heartbeat", json=last, headers=auth).status_code == 200
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/events", "after"),
        ("/v1/events", "limit"),
        ("/v1/fleets/web-prod/events", "since"),
        ("/v1/fleets/web-prod/events", "wait"),
        ("/v1/fleets/web-prod/events", "limit"),
        ("/v1/fleets/web-prod/runs", "limit"),
    ],
)
def test_a_query_number_is_ascii_digits_within_its_bounds(
    plane: Plane, path: str, name: str
) -> None:
    auth = {"Authorization": f"Bearer {create_api_key(plane.store, plane.state_dir, 'ops')}"}
    fleet = {"fleet": "web-prod"} if path == "/v1/events" else {}
    # '²' is a digit to str.isdigit() and not to int(); 2^63 and more no column holds.
    for text in ("²", "٣", "9223372036854775808", "9" * 26, "-1", " 1", "1e3"):
        answer = plane.client.get(f"{plane.url}{path}", params={**fleet, name: text}, headers=auth)
        assert answer.status_code == 422, (text, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_query"
        (field,) = error["fields"]
        assert field["path"] == name and "a whole number from " in field["message"]
    if name in ("after", "since"):
        last = plane.client.get(
            f"{plane.url}{path}", params={**fleet, name: str(2**63 - 1)}, headers=auth
        )
        assert (last.status_code, last.json()["events"]) == (200, [])


def test_the_openapi_document_types_the_query_numbers_with_their_bounds(plane: Plane) -> None:
    document = plane.client.get(f"{plane.url}/v1/openapi.json").json()
    events = document["paths"]["/v1/fleets/{fleet}/events"]["get"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in events if p["in"] == "query"}
    assert schemas == {
        "since": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
        "wait": {"type": "integer", "minimum": 0, "maximum": 30, "default": 0},
        "server": {"type": "string"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    }


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"since": "999999d"}, "since"),  # was OverflowError: date value out of range
        ({"since": "0001-01-01T00:00+14:00"}, "since"),  # was ValueError: year 0
        ({"since": "9999-12-31T23:59-14:00"}, "since"),
        ({"since": "31d"}, "since"),
        ({"step": "999999d"}, "step"),  # was a point dated 1970
        ({"step": "31d"}, "step"),
    ],
)
def test_metrics_since_and_step_stay_within_the_history(
    plane: Plane, query: dict[str, str], name: str
) -> None:
    api = {"Authorization": f"Bearer {create_api_key(plane.store, plane.state_dir, 'ops')}"}
    metrics = f"{plane.url}/v1/fleets/web-prod/servers/web-1/metrics"
    answer = plane.client.get(metrics, params=query, headers=api)
    assert answer.status_code == 422, answer.text
    (field,) = answer.json()["error"]["fields"]
    assert field["path"] == name and "30d" in field["message"]
    widest = plane.client.get(metrics, params={"since": "30d", "step": "30d"}, headers=api)
    assert widest.status_code == 200, widest.text
