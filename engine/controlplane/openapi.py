"""The control plane's routes as data, and the OpenAPI 3.1 document made from them.

Every route the app serves is an `Endpoint` in `endpoints(...)`: the app builds its route
table from that list, and `openapi_document` describes the same list, so a route cannot be
served without being documented, nor documented without being served. Request and response
bodies are JSON Schema 2020-12 (what OpenAPI 3.1 uses); the fleet spec's and the plan's are
the published files in schemas/.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine.controlplane.bodies import AGENT_EVENT, HEARTBEAT, SCHEMAS, phone_home_schema
from engine.controlplane.fleetapi import SERVER_ACTIONS, group_count_max
from engine.controlplane.query import WholeNumber
from engine.state import Scope

Handler = Callable[[Request], Awaitable[Response]]
API_VERSION = "1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One route: how it is served and how it is documented. `scope` None: no API key (the
    route has its own token, or none); `body` names a request schema in the components, or
    `spec` for the fleet spec in YAML or JSON; `answers` maps a success status to the name
    of its response schema; `query` lists (name, description) of query parameters, and
    `numbers` reads those that are whole numbers (the handler reads them with it too)."""

    method: str
    path: str
    handler: Handler
    summary: str
    scope: Scope | None = None
    auth: str = "apiKey"
    body: str | None = None
    answers: Mapping[int, str] = field(default_factory=lambda: {200: "Object"})
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    numbers: Mapping[str, WholeNumber] = field(default_factory=dict)


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["code", "path", "line", "column", "message", "hint"],
                        "properties": {
                            "code": {"type": "string"},
                            "path": {"type": "string"},
                            "line": {"type": "integer"},
                            "column": {"type": "integer"},
                            "message": {"type": "string"},
                            "hint": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_RUN = {
    "type": "object",
    "required": ["id", "fleet", "kind", "status", "progress", "result", "error"],
    "properties": {
        "id": {"type": "string"},
        "fleet": {"type": "string"},
        "kind": {"type": "string", "description": "apply, or a server action"},
        "status": {"enum": ["queued", "running", "succeeded", "failed", "stale"]},
        "plan_id": {"type": ["string", "null"]},
        "request": {"type": "object"},
        "created_at": _TIME,
        "created_by": {"type": "string"},
        "started_at": _TIME,
        "finished_at": _TIME,
        "progress": {
            "type": "array",
            "description": "the JSON-lines events of the run's board (stage, note, plan, done)",
            "items": {"type": "object", "required": ["event"]},
        },
        "result": {
            "type": "object",
            "description": "the done event: ready, not_ready, reasons, seconds and the "
            "per-step timings (timings.servers, timings.medians)",
        },
        "error": {"type": "string"},
    },
}
_SAVED_PLAN = {
    "type": "object",
    "required": ["id", "fleet", "spec_digest", "world_digest", "plan"],
    "properties": {
        "id": {"type": "string"},
        "fleet": {"type": "string"},
        "created_at": _TIME,
        "created_by": {"type": "string"},
        "spec_digest": {"type": "string"},
        "world_digest": {"type": "string"},
        "plan": {"$ref": "#/components/schemas/Plan"},
    },
}
_SERVER = {
    "type": "object",
    "required": ["name", "fleet", "group", "stage"],
    "properties": {
        "name": {"type": "string"},
        "fleet": {"type": "string"},
        "group": {"type": "string"},
        "stage": {"type": "string"},
        "addresses": {"type": "object"},
        "steps": {"type": "object"},
        "agent": {"type": ["object", "null"]},
    },
}
_EVENT = {
    "type": "object",
    "required": ["id", "fleet", "kind", "message", "at"],
    "properties": {
        "id": {"type": "integer"},
        "fleet": {"type": "string"},
        "server": {"type": ["string", "null"]},
        "kind": {"type": "string"},
        "message": {"type": "string"},
        "data": {"type": "object"},
        "at": _TIME,
    },
}
_FLEET = {
    "type": "object",
    "required": ["name", "servers", "runs"],
    "properties": {
        "name": {"type": "string"},
        "provider": {"type": ["string", "null"]},
        "spec_digest": {"type": ["string", "null"]},
        "spec_updated_at": _TIME,
        "spec_updated_by": {"type": ["string", "null"]},
        "servers": {"type": "object", "additionalProperties": {"type": "integer"}},
        "runs": {"type": "array", "items": {"type": "string"}},
    },
}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key],
        "properties": {"fleet": {"type": "string"}, key: {"type": "array", "items": _ref(item)}},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _published(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return schema


@cache
def component_schemas() -> dict[str, Any]:
    """Every schema the document names, by name."""
    return {
        "Object": {"type": "object"},
        "Error": _ERROR,
        "Health": {
            "type": "object",
            "required": ["status", "degraded"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "degraded": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Metrics": {
            "type": "object",
            "required": ["fleet", "server", "since", "step_s", "points"],
            "properties": {
                "fleet": {"type": "string"},
                "server": {"type": "string"},
                "since": {"type": "string", "format": "date-time"},
                "step_s": {"type": "integer"},
                "points": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["at", "samples"],
                        "properties": {
                            "at": {"type": "string", "format": "date-time"},
                            "samples": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "PhoneHome": phone_home_schema(),
        "Heartbeat": HEARTBEAT,
        "AgentEvent": AGENT_EVENT,
        "FleetSpec": _published("fleet.v1.schema.json"),
        "Plan": _published("plan.v2.schema.json"),
        "SavedPlan": _SAVED_PLAN,
        "Run": _RUN,
        "Runs": _list_of("runs", "Run"),
        "Server": _SERVER,
        "Servers": _list_of("servers", "Server"),
        "Event": _EVENT,
        "Events": {
            **_list_of("events", "Event"),
            "properties": {
                **_list_of("events", "Event")["properties"],
                "next": {"type": "integer", "description": "the `since` of the next call"},
            },
        },
        "Fleet": _FLEET,
        "Fleets": _list_of("fleets", "Fleet"),
        "SpecStored": {
            "type": "object",
            "required": ["fleet", "spec_digest"],
            "properties": {
                "fleet": {"type": "string"},
                "spec_digest": {"type": "string"},
                "provider": {"type": "string"},
                "groups": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "Scale": {
            "type": "object",
            "required": ["count"],
            "additionalProperties": False,
            "properties": {
                "count": {"type": "integer", "minimum": 0, "maximum": group_count_max()}
            },
        },
        "ScaleStarted": {
            "type": "object",
            "required": ["plan", "run"],
            "properties": {"plan": _ref("SavedPlan"), "run": _ref("Run")},
        },
        "ServerAction": {
            "type": "object",
            "required": ["action"],
            "additionalProperties": False,
            "properties": {"action": {"enum": list(SERVER_ACTIONS)}},
        },
    }


_STATUS_WORDS = {
    200: "OK",
    201: "Created",
    202: "Accepted: a run was queued",
    400: "The request can never be read",
    401: "No valid credentials",
    403: "The key's scope or fleet grants do not allow it",
    404: "Not found",
    409: "Conflict (a stale or blocked plan, a spent token)",
    413: "The body is too large",
    415: "Unsupported media type",
    422: "The body, query or spec is not valid",
    429: "Rate limited: see Retry-After",
    503: "Not ready: try again after Retry-After",
}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, schema in endpoint.answers.items():
        responses[str(status)] = {
            "description": _STATUS_WORDS[status],
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    failures = set(endpoint.errors) | {429}
    if endpoint.scope is not None:
        failures |= {401, 403}
    if endpoint.body is not None:
        failures |= {400, 413, 415, 422}
    for status in sorted(failures):
        responses[str(status)] = {
            "description": _STATUS_WORDS[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    operation: dict[str, Any] = {
        "operationId": f"{endpoint.method.lower()}{_camel(endpoint.path)}",
        "summary": endpoint.summary,
        "responses": responses,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_names(endpoint.path)
        ]
        + [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": text,
                "schema": endpoint.numbers[name].schema()
                if name in endpoint.numbers
                else {"type": "string"},
            }
            for name, text in endpoint.query
        ],
    }
    if endpoint.scope is not None:
        operation["security"] = [{"apiKey": []}]
        operation["x-scope"] = str(endpoint.scope)
    elif endpoint.auth != "none":
        operation["security"] = [{endpoint.auth: []}]
    else:
        operation["security"] = []
    if endpoint.body == "FleetSpec":
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/yaml": {"schema": _ref("FleetSpec")},
                "application/json": {"schema": _ref("FleetSpec")},
            },
        }
    elif endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(endpoint.body)}},
        }
    return operation


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _camel(path: str) -> str:
    words = path.replace("{", "by/").replace("}", "").replace("-", "/").split("/")
    return "".join(word[:1].upper() + word[1:] for word in words if word and word != "v1")


def openapi_document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "fleet engine control plane",
            "version": API_VERSION,
            "description": "Servers phone home and agents report here; people and services "
            "read fleets and change them with API keys (scopes read < plan < apply < admin, "
            "100 requests a second per key, bursts of 200, then 429 with Retry-After).",
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key, fek_<id>_<secret> (engine apikey create)",
                },
                "phoneHomeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the server's one-time phone-home token",
                },
                "heartbeatToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the agent's heartbeat token",
                },
            },
        },
    }
