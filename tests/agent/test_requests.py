"""Invalid and oversized requests are refused whole and change nothing.

The 422 cases are data (cases/bad_requests.json): each names the field the answer must point
at. Before and after each request the test reads Docker's containers, networks, images and
volumes, and the agent's tasks, directly: nothing may differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from engine.agent.client import AgentClient
from fleet_agent.app import _docker_error_response
from tests.support.agent import AgentProcess

CASES = json.loads((Path(__file__).parent / "cases" / "bad_requests.json").read_text())["cases"]


def docker_state(docker_client: Any, client: AgentClient) -> dict[str, Any]:
    api = docker_client.api
    return {
        "containers": sorted(c["Id"] for c in api.containers(all=True)),
        "networks": sorted(n["Id"] for n in api.networks()),
        "images": sorted(i["Id"] for i in api.images(all=True)),
        "volumes": sorted(v["Name"] for v in api.volumes()["Volumes"] or []),
        "tasks": client.call("GET", "/v1/tasks"),
    }


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_invalid_requests_get_422_naming_the_field_and_change_nothing(
    case: dict[str, Any], client: AgentClient, docker_client: Any, busybox_image: str
) -> None:
    body = json.loads(json.dumps(case.get("body")).replace('"IMAGE"', json.dumps(busybox_image)))
    before = docker_state(docker_client, client)
    headers = {}
    if "raw" in case:
        content = case["raw"].replace("IMAGE", busybox_image).encode()
        headers["content-type"] = case.get("content_type", "application/json")
    else:
        content = json.dumps(body).encode() if "body" in case else b""
        if "body" in case:
            headers["content-type"] = "application/json"
    response = client.send(case["method"], case["path"], content=content, headers=headers)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert errors[0]["loc"] == case["loc"], errors
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)  # the input is not echoed
    assert docker_state(docker_client, client) == before


def test_an_oversized_body_is_refused_before_the_app_sees_it(
    client: AgentClient, agent: AgentProcess, docker_client: Any, busybox_image: str
) -> None:
    labels = {f"label{i}": "x" * 1000 for i in range(80)}  # valid, but 80 kB
    body = {"image": busybox_image, "name": "t-too-big", "labels": labels}
    before = docker_state(docker_client, client)
    response = client.send("POST", "/v1/containers", json=body)
    assert response.status_code == 413
    assert response.json() == {
        "detail": "the request body is larger than 65536 bytes",
        "code": "body_too_large",
    }

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        data = json.dumps(body).encode()
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    streamed = client.send(
        "POST", "/v1/containers", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert docker_state(docker_client, client) == before
    refused = [e for e in agent.audit() if e["event"] == "body-too-large"]
    assert len(refused) >= 2 and refused[-1]["path"] == "/v1/containers"


BODY_ROUTES = [
    ("POST", "/v1/containers"),
    ("POST", "/v1/containers/t-deep/start"),
    ("POST", "/v1/containers/t-deep/stop"),
    ("POST", "/v1/containers/t-deep/restart"),
    ("DELETE", "/v1/containers/t-deep"),
    ("POST", "/v1/images/pull"),
    ("POST", "/v1/images/prune"),
    ("POST", "/v1/networks"),
    ("POST", "/v1/system/update"),
    ("POST", "/v1/system/upgrade"),
    ("POST", "/v1/system/reboot"),
]
# 60 kB each: under the body limit, far over the depth limit.
DEEP = {"arrays": b"[" * 60_000, "objects": b'{"a":' * 12_000}


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_body_nested_too_deep_gets_400_and_no_traceback(
    client: AgentClient, agent: AgentProcess, docker_client: Any, method: str, path: str
) -> None:
    before = docker_state(docker_client, client)
    logged = len(agent.log_text())
    for shape, content in DEEP.items():
        response = client.send(
            method, path, content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (shape, response.text)
        assert response.json() == {
            "detail": "the request body nests arrays and objects more than 32 levels deep",
            "code": "body_too_deep",
        }
    assert "Traceback" not in agent.log_text()[logged:]
    assert docker_state(docker_client, client) == before  # the agent still serves, unchanged
    refused = [e for e in agent.audit() if e["event"] == "body-too-deep"]
    assert [(e["method"], e["path"], e["status"]) for e in refused[-2:]] == [
        (method, path, 400)
    ] * 2


def test_headers_beyond_the_limit_are_refused(client: AgentClient) -> None:
    response = client.send("GET", "/v1/health", headers={"x-padding": "y" * 20000})
    assert response.status_code == 431
    assert response.json() == {
        "detail": "the request headers are larger than 16384 bytes",
        "code": "headers_too_large",
    }


def _docker_api_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("refused", response=response, explanation=f"said {status}")


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (_docker_api_error(404), 404, "docker: said 404"),
        (_docker_api_error(409), 409, "docker: said 409"),
        (_docker_api_error(500), 502, "docker: said 500"),
        (requests.ConnectionError(), 503, "the Docker engine on this server does not answer"),
        (requests.ReadTimeout(), 504, "the Docker engine on this server did not answer in time"),
        (docker.errors.DockerException("odd"), 502, "docker: odd"),
    ],
)
def test_dockers_failures_become_clear_statuses(error: Exception, status: int, detail: str) -> None:
    response = _docker_error_response(None, error)  # type: ignore[arg-type]
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {"detail": detail}
