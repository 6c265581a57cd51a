"""Heartbeats and container events reach the control plane: authenticated with the heartbeat
token, shaped as the schemas say (the receiver validates every body), and retried while the
control plane is away."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.agent.client import AgentClient
from tests.support.agent import SERVER, AgentProcess, Reports
from tests.support.http import serve
from tests.support.wait import wait_until


def heartbeats_of(received: Reports, server: str) -> list[dict[str, Any]]:
    return [h for h in list(received.heartbeats) if h["server"] == server]


def test_heartbeats_carry_metrics_containers_and_the_pinned_fingerprint(
    agent: AgentProcess,
    client: AgentClient,
    reports: tuple[Reports, str],
    busybox_image: str,
    cleanup: list[str],
) -> None:
    received, _ = reports
    cleanup.append("t-beat")
    created = client.call(
        "POST",
        "/v1/containers",
        json={"image": busybox_image, "name": "t-beat", "command": ["sleep", "300"]},
    )

    def listing_it() -> list[dict[str, Any]]:
        return [
            h
            for h in heartbeats_of(received, SERVER)
            if any(
                (c["id"], c["state"]) == (created["id"], "running")
                for c in (h["containers"] or {}).get("items", [])
            )
        ]

    beat = wait_until(listing_it, what="a heartbeat listing the new container")[-1]
    assert received.rejected == []  # every body matched the schema and carried the right token
    assert beat["fleet"] == "demo"
    assert beat["tls_fingerprint"] == agent.fingerprint
    assert beat["agent"]["port"] == agent.port
    assert beat["containers"]["running"] >= 1
    assert beat["containers"]["total"] == len(beat["containers"]["items"])
    assert beat["docker_error"] is None
    assert beat["metrics"]["cpu"]["count"] >= 1
    sequences = [h["sequence"] for h in heartbeats_of(received, SERVER)]
    assert sequences == list(range(1, len(sequences) + 1))


def test_events_wait_for_a_control_plane_that_is_away(
    make_agent: Callable[..., AgentProcess],
    fleet_key: bytes,
    busybox_image: str,
    cleanup: list[str],
) -> None:
    received = Reports(key=fleet_key, refuse=4)  # the first four reports get 503
    cleanup.append("t-retried")
    with serve(received.app()) as url:
        agent = make_agent(control_plane_url=url, server="web-2")
        with AgentClient(agent.endpoint()) as client:
            created = client.call(
                "POST",
                "/v1/containers",
                json={"image": busybox_image, "name": "t-retried", "command": ["true"]},
            )
            wait_until(
                lambda: received.events_of(created["id"]) == ["start", "die"],
                timeout_s=60,
                what="the events, after the retries",
            )
        assert received.refuse == 0
        ids = [e["event_id"] for e in received.events]
        assert len(ids) == len(set(ids))  # each delivered once, in order
        die = next(e for e in received.events if e["event"] == "die")
        assert (die["exit_code"], die["oom_killed"], die["server"]) == (0, False, "web-2")
        wait_until(lambda: heartbeats_of(received, "web-2"), what="heartbeats to resume")
        assert received.rejected == []


def test_a_heartbeat_still_goes_out_when_docker_does_not_answer(
    make_agent: Callable[..., AgentProcess], fleet_key: bytes, tmp_path: Any
) -> None:
    received = Reports(key=fleet_key)
    with serve(received.app()) as url:
        make_agent(control_plane_url=url, server="web-3", docker_url=f"unix://{tmp_path}/no.sock")
        beat = wait_until(lambda: heartbeats_of(received, "web-3"), what="a heartbeat")[0]
    assert beat["containers"] is None
    assert "does not answer" in beat["docker_error"]
    assert received.rejected == []
