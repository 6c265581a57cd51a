"""The fleet API's checks against the real control plane on loopback: specs checked as
`engine validate` checks them, scopes and fleet grants, the audit trail, the OpenAPI document
against the live routes. (Plans and applies on a real local fleet: tests/e2e/test_api_fleet.py.)"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from starlette.routing import Route

from engine.controlplane.apikeys import create_api_key
from engine.controlplane.app import AppSettings, create_app
from engine.state import Scope
from tests.controlplane.conftest import Plane
from tests.support.cli import ROOT
from tests.support.wait import wait_until

DEMO = (ROOT / "specs" / "demo.yaml").read_text()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _put(plane: Plane, key: str, fleet: str, text: str, kind: str = "yaml") -> httpx.Response:
    return plane.client.put(
        f"{plane.url}/v1/fleets/{fleet}",
        content=text.encode(),
        headers={**_auth(key), "Content-Type": f"application/{kind}"},
    )


def test_a_bad_spec_gets_422_with_the_errors_engine_validate_reports_and_nothing_stored(
    plane: Plane,
) -> None:
    key = create_api_key(plane.store, plane.state_dir, "ci", scope=Scope.PLAN)
    bad = DEMO.replace("count: 3", "count: three").replace(
        "server_type: small", "server_type: huge"
    )
    answer = _put(plane, key, "demo", bad)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_spec"
    by_path = {e["path"]: e for e in error["errors"]}
    count = by_path["groups[0].count"]
    assert count["line"] == DEMO.splitlines().index("    count: 3") + 1 and count["column"] > 0
    assert set(count) == {"code", "path", "line", "column", "message", "hint"}
    assert any("huge" in e["message"] for e in error["errors"])
    assert plane.store.specs.get("demo") is None
    other = _put(plane, key, "web", DEMO)
    assert other.status_code == 422
    (mismatch,) = other.json()["error"]["errors"]
    assert mismatch["code"] == "name_mismatch"
    assert mismatch["hint"] == "PUT it to /v1/fleets/demo, or set name: web"
    # A URL's name no spec can have is not suggested as one.
    odd = _put(plane, key, "Demo%2e", DEMO).json()["error"]["errors"][0]
    assert odd["hint"] == "PUT it to /v1/fleets/demo"
    assert _put(plane, key, "demo", DEMO, kind="xml").status_code == 415


def test_a_spec_is_stored_from_yaml_or_json_and_read_back(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "ci", scope=Scope.PLAN)
    made = _put(plane, key, "demo", DEMO)
    assert made.status_code == 201, made.text
    assert made.json()["groups"] == {"web": 3}
    as_json = json.dumps(yaml.safe_load(DEMO))
    again = _put(plane, key, "demo", as_json, kind="json")
    assert again.status_code == 200 and again.json()["spec_digest"] != made.json()["spec_digest"]
    fleets = plane.client.get(f"{plane.url}/v1/fleets", headers=_auth(key)).json()["fleets"]
    assert [f["name"] for f in fleets] == ["demo", "web-prod"]
    demo = plane.client.get(f"{plane.url}/v1/fleets/demo", headers=_auth(key)).json()
    assert demo["spec_digest"] == again.json()["spec_digest"] and demo["spec_updated_by"] == "ci"


def test_a_read_key_gets_403_on_writes_and_a_granted_key_only_its_fleets(plane: Plane) -> None:
    reader = create_api_key(plane.store, plane.state_dir, "dashboard")
    elsewhere = create_api_key(
        plane.store, plane.state_dir, "other", scope=Scope.ADMIN, fleets=("other",)
    )
    for key in (reader, elsewhere):
        refused = [
            _put(plane, key, "demo", DEMO),
            plane.client.post(f"{plane.url}/v1/fleets/demo/plans", headers=_auth(key)),
            plane.client.post(f"{plane.url}/v1/fleets/demo/plans/x/apply", headers=_auth(key)),
            plane.client.patch(
                f"{plane.url}/v1/fleets/demo/groups/web", json={"count": 4}, headers=_auth(key)
            ),
            plane.client.post(
                f"{plane.url}/v1/fleets/demo/servers/web-1/actions",
                json={"action": "reboot"},
                headers=_auth(key),
            ),
        ]
        assert [r.status_code for r in refused] == [403] * 5
        assert {r.json()["error"]["code"] for r in refused} == {"forbidden"}
    assert plane.store.specs.get("demo") is None
    servers = f"{plane.url}/v1/fleets/web-prod/servers"
    assert plane.client.get(servers, headers=_auth(reader)).status_code == 200
    assert plane.client.get(servers, headers=_auth(elsewhere)).status_code == 403
    old_route = f"{plane.url}/v1/servers?fleet=web-prod"
    assert plane.client.get(old_route, headers=_auth(elsewhere)).status_code == 403
    listed = plane.client.get(f"{plane.url}/v1/fleets", headers=_auth(elsewhere)).json()
    assert listed == {"fleets": []}


def test_a_scale_past_the_most_a_group_may_have_is_a_bad_body(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "ci", scope=Scope.APPLY)
    assert _put(plane, key, "demo", DEMO).status_code == 201
    url = f"{plane.url}/v1/fleets/demo/groups/web"
    for count in (1001, 2**63, -1):
        answer = plane.client.patch(url, json={"count": count}, headers=_auth(key))
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_body"
        (field,) = answer.json()["error"]["fields"]
        assert field["path"] == "count" and "from 0 to 1000" in field["message"]
    assert plane.store.specs.get("demo").text == DEMO  # type: ignore[union-attr]


def test_every_write_is_audited_without_its_secrets(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "ci", scope=Scope.APPLY)
    reader = create_api_key(plane.store, plane.state_dir, "dashboard")
    assert _put(plane, key, "demo", DEMO).status_code == 201
    assert _put(plane, key, "demo", DEMO.replace("count: 3", "count: -1")).status_code == 422
    assert _put(plane, reader, "demo", DEMO).status_code == 403
    # This control plane runs without a planner (as one inside `engine up` does): 503.
    planned = plane.client.post(f"{plane.url}/v1/fleets/demo/plans", headers=_auth(key))
    assert planned.status_code == 503 and "Retry-After" in planned.headers
    entries = [e for e in plane.store.audit.all() if not e.action.startswith("apikey")]
    assert [(e.actor, e.action, e.fleet, e.status, e.result) for e in entries] == [
        ("ci", "PUT /v1/fleets/demo", "demo", 201, "spec stored"),
        ("ci", "PUT /v1/fleets/demo", "demo", 422, "invalid_spec"),
        ("dashboard", "PUT /v1/fleets/demo", "demo", 403, "forbidden"),
        ("ci", "POST /v1/fleets/demo/plans", "demo", 503, "no_planner"),
    ]
    for secret in (key, reader):
        assert all(secret.split("_")[-1] not in repr(e) for e in plane.store.audit.all())


def test_a_run_or_plan_of_a_fleet_not_served_is_fleet_not_found(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "ci")
    for path in ("runs", "runs/r-1", "plans/p-1"):
        answer = plane.client.get(f"{plane.url}/v1/fleets/nosuch/{path}", headers=_auth(key))
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "fleet_not_found")
    answer = plane.client.get(f"{plane.url}/v1/fleets/web-prod/runs/r-1", headers=_auth(key))
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "run_not_found")


def test_scaling_a_count_not_written_as_a_plain_number_is_refused_and_changes_nothing(
    plane: Plane,
) -> None:
    # An anchored count was a 500 ("is not a plain number"); changing the anchor would also
    # change every alias of it.
    key = create_api_key(plane.store, plane.state_dir, "ci", scope=Scope.APPLY)
    anchored = DEMO.replace("count: 3", "count: &web_count 3")
    assert _put(plane, key, "demo", anchored).status_code == 201
    scaled = plane.client.patch(
        f"{plane.url}/v1/fleets/demo/groups/web", json={"count": 4}, headers=_auth(key)
    )
    assert scaled.status_code == 409, scaled.text
    error = scaled.json()["error"]
    assert error["code"] == "count_not_plain"
    assert "PUT the spec with a plain number at groups[0].count first" in error["message"]
    stored = plane.store.specs.get("demo")
    assert stored is not None and stored.text == anchored
    last = plane.store.audit.all()[-1]
    assert (last.action, last.status, last.result) == (
        "PATCH /v1/fleets/demo/groups/web",
        409,
        "count_not_plain",
    )


def test_a_client_gone_before_its_body_ended_is_a_refusal_not_a_failure(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    # It was logged as "PUT ... failed: ClientDisconnect()" with a traceback, and audited 500.
    key = create_api_key(plane.store, plane.state_dir, "ci", scope=Scope.PLAN)
    address = httpx.URL(plane.url)
    with (
        caplog.at_level(logging.INFO),
        socket.create_connection((address.host, address.port)) as client,
    ):
        client.sendall(
            b"PUT /v1/fleets/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/yaml\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\nname: d".encode()
        )
        client.shutdown(socket.SHUT_WR)
        entry = wait_until(
            lambda: [e for e in plane.store.audit.all() if e.action == "PUT /v1/fleets/demo"],
            what="the PUT's audit entry",
        )
    assert [(e.status, e.result) for e in entry] == [(400, "body_incomplete")]
    assert "failed" not in caplog.text and "Traceback" not in caplog.text
    assert plane.store.specs.get("demo") is None


def test_long_poll_waits_for_an_event_and_since_skips_the_ones_seen(plane: Plane) -> None:
    key = create_api_key(plane.store, plane.state_dir, "dashboard")
    url = f"{plane.url}/v1/fleets/web-prod/events"
    plane.store.events.record("web-prod", "test.before", "seen before")
    first = plane.client.get(url, headers=_auth(key)).json()
    seen = first["next"]
    assert seen > 0 and all(e["id"] <= seen for e in first["events"])
    assert plane.client.get(f"{url}?since={seen}", headers=_auth(key)).json()["events"] == []
    with httpx.Client(timeout=30) as other:
        answers: list[dict[str, Any]] = []
        waiting = threading.Thread(
            target=lambda: answers.append(
                other.get(f"{url}?since={seen}&wait=20", headers=_auth(key)).json()
            )
        )
        waiting.start()
        plane.store.events.record("web-prod", "test.poke", "a poke")
        waiting.join(30)
    assert [e["kind"] for e in answers[0]["events"]] == ["test.poke"]
    bad = plane.client.get(f"{url}?wait=31", headers=_auth(key))
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["path"] == "wait"


def test_the_openapi_document_matches_the_live_routes(plane: Plane) -> None:
    answer = plane.client.get(f"{plane.url}/v1/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    components = document["components"]["schemas"]
    for schema in components.values():
        Draft202012Validator.check_schema(schema)  # every schema is valid JSON Schema
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    # Every route the app serves is documented, and nothing else.
    app = create_app(plane.store, AppSettings(state_dir=plane.state_dir))
    app.state.api.close()
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert documented == served
    # Every documented route exists: a request to it is answered by its handler (anything
    # but the router's own 404 or 405), and the refusals it gives are documented.
    key = create_api_key(plane.store, plane.state_dir, "ops", scope=Scope.READ)
    for method, path in sorted(documented):
        url = plane.url + re.sub(r"\{[a-z]+\}", "web-prod", path)
        answer = plane.client.request(method, url, headers=_auth(key))
        code = answer.json().get("error", {}).get("code") if answer.status_code >= 400 else None
        assert code not in ("not_found", "method_not_allowed"), (method, path, answer.text)
        responses = document["paths"][path][method.lower()]["responses"]
        assert str(answer.status_code) in responses, (method, path, answer.status_code)
        schema = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
        resolved = {"$ref": schema["$ref"], "components": document["components"]}
        errors = list(Draft202012Validator(resolved).iter_errors(answer.json()))
        assert errors == [], (method, path, errors[:1])
