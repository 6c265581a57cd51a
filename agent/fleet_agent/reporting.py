"""What the agent tells the control plane without being asked.

    heartbeat   POST <control_plane_url>/v1/heartbeat every heartbeat_interval_s (the first as
                soon as the first CPU window closes), schemas/heartbeat.v1.schema.json
    events      POST <control_plane_url>/v1/agent-events for each container start, die and
                oom, as Docker reports them, schemas/agent-event.v1.schema.json

Both carry `Authorization: Bearer <heartbeat token>`. Events are watched on Docker's event
stream in a thread (no polling: an idle server costs nothing) and queued; a sender thread
delivers them in order and retries with backoff while the control plane is away. The queue is
bounded: when it overflows the oldest events go and the next heartbeat says how many. After a
lost connection to Docker the stream resumes from the last event seen, so none are skipped.

A die says whether the kernel killed the container for memory (`oom_killed`), as the kernel's
log, Docker's oom event or Docker's state tell (fleet_agent.oomkills). Docker's oom event may
come just after the die, so a die not known as an OOM kill yet waits in the queue, up to
OOM_SETTLE_S after it came, while the sender asks again every OOM_POLL_S; the events behind
it wait with it (order is kept), heartbeats do not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from fleet_agent import __version__
from fleet_agent.config import AgentConfig
from fleet_agent.dockerops import AgentError, DockerGateway
from fleet_agent.metrics import CpuSampler, collect_metrics, timestamp
from fleet_agent.oomkills import OomWitness

log = logging.getLogger("fleet_agent")

EVENTS = ("start", "die", "oom")
MAX_QUEUED_EVENTS = 1000
MAX_LISTED_CONTAINERS = 200
REQUEST_TIMEOUT_S = (5.0, 10.0)
MAX_BACKOFF_S = 30.0
OOM_SETTLE_S = 0.5
OOM_POLL_S = 0.05


@dataclass(slots=True)
class _Queued:
    """An event to send; a die not known as an OOM kill yet may learn it until `settle_by`."""

    payload: dict[str, Any]
    settle_by: float | None = None


def _container_summary(gateway: DockerGateway) -> tuple[dict[str, Any] | None, str | None]:
    try:
        raw = gateway.api.containers(all=True)
    except (AgentError, requests.RequestException, OSError) as exc:
        return None, str(exc)
    except Exception as exc:  # the Docker SDK's own errors; the heartbeat must still go out
        return None, f"{type(exc).__name__}: {exc}"
    counts = collections.Counter(c.get("State", "") for c in raw)
    items = [
        {
            "id": c["Id"],
            "name": (c.get("Names") or ["/"])[0].lstrip("/"),
            "image": c.get("Image", ""),
            "state": c.get("State", ""),
            "status": c.get("Status", ""),
        }
        for c in raw[:MAX_LISTED_CONTAINERS]
    ]
    return {
        "total": len(raw),
        "running": counts["running"],
        "paused": counts["paused"],
        "restarting": counts["restarting"],
        "exited": counts["exited"],
        "created": counts["created"],
        "dead": counts["dead"],
        "items": items,
        "truncated": len(raw) > MAX_LISTED_CONTAINERS,
    }, None


def event_payload(
    config: AgentConfig, event: dict[str, Any], *, oom_killed: bool | None = None
) -> dict[str, Any]:
    """The body of POST /v1/agent-events for one Docker event (`oom_killed` for a die)."""
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    nanos = int(event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000)
    exit_code = attributes.get("exitCode")
    container_id = actor.get("ID") or event.get("id", "")
    action = event.get("Action") or event.get("status", "")
    return {
        "version": 1,
        "fleet": config.fleet,
        "server": config.server,
        "event_id": f"{container_id[:12]}-{action}-{nanos}",
        "event": action,
        "time": timestamp(nanos / 1e9),
        "container": {
            "id": container_id,
            "name": attributes.get("name", ""),
            "image": attributes.get("image", ""),
        },
        "exit_code": int(exit_code) if exit_code is not None and exit_code.isdigit() else None,
        "oom_killed": oom_killed,
    }


def _was_oom_killed(gateway: DockerGateway, container_id: str) -> bool | None:
    """Whether Docker's state says the kernel killed the container for memory; None when the
    container is gone already (`--rm`)."""
    try:
        state = gateway.api.inspect_container(container_id)["State"]
    except Exception:  # removed already (`--rm`), or Docker restarting: unknown
        return None
    return bool(state.get("OOMKilled"))


class Reporter:
    """Heartbeats and container events for one agent; `start` and `stop` bracket its life."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        fingerprint: str,
        port: int,
        gateway: DockerGateway,
        sampler: CpuSampler,
        started_at: float,
        oom: OomWitness,
    ) -> None:
        assert config.control_plane_url and config.heartbeat_token
        self.config = config
        self.fingerprint = fingerprint
        self.port = port
        self.gateway = gateway
        self.sampler = sampler
        self.started_at = started_at
        self.oom = oom
        self._url = config.control_plane_url
        self._headers = {
            "Authorization": f"Bearer {config.heartbeat_token}",
            "User-Agent": f"fleet-agent/{__version__}",
        }
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queue_changed = threading.Condition()
        self._dropped = 0
        self._stopping = threading.Event()
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        self._sequence = 0
        self._failing = False

    def start(self) -> asyncio.Task[None]:
        """Start the event threads; return the heartbeat loop's task."""
        for target, name in ((self._watch_events, "events"), (self._send_events, "sender")):
            thread = threading.Thread(target=target, name=f"fleet-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return asyncio.get_running_loop().create_task(self._heartbeats())

    def stop(self) -> None:
        self._stopping.set()
        with self._queue_changed:
            self._queue_changed.notify_all()
        stream = self._stream
        if stream is not None:
            stream.close()  # unblocks the watcher, which is waiting on Docker's socket
        for thread in self._threads:
            thread.join(timeout=5)

    async def _heartbeats(self) -> None:
        session = requests.Session()
        await self.sampler.latest()
        next_at = time.monotonic()
        while True:
            payload = await asyncio.to_thread(self.heartbeat_payload, await self.sampler.latest())
            await asyncio.to_thread(self._post, session, "/v1/heartbeat", payload)
            next_at += self.config.heartbeat_interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def heartbeat_payload(self, cpu: Any) -> dict[str, Any]:
        """The body of POST /v1/heartbeat (blocking: reads /proc and asks Docker)."""
        self._sequence += 1
        containers, docker_error = _container_summary(self.gateway)
        return {
            "version": 1,
            "fleet": self.config.fleet,
            "server": self.config.server,
            "sequence": self._sequence,
            "sent_at": timestamp(time.time()),
            "agent": {
                "version": __version__,
                "started_at": timestamp(self.started_at),
                "port": self.port,
            },
            "tls_fingerprint": self.fingerprint,
            "metrics": collect_metrics(cpu, self.config.host_root),
            "containers": containers,
            "docker_error": docker_error,
            "events_dropped": self._dropped,
        }

    def _post(self, session: requests.Session, path: str, payload: dict[str, Any]) -> bool:
        """Send one document; True when the control plane took it or refused it for good."""
        try:
            response = session.post(
                self._url + path, json=payload, headers=self._headers, timeout=REQUEST_TIMEOUT_S
            )
        except requests.RequestException as exc:
            self._note_failure(f"{path}: the control plane does not answer ({type(exc).__name__})")
            return False
        if response.status_code < 300:
            if self._failing:
                log.info("the control plane takes reports again")
                self._failing = False
            return True
        self._note_failure(f"{path}: the control plane answered {response.status_code}")
        # 4xx other than timeouts and rate limits will not change by sending the same again.
        return 400 <= response.status_code < 500 and response.status_code not in (408, 429)

    def _note_failure(self, message: str) -> None:
        if not self._failing:
            log.warning("%s; retrying", message)
            self._failing = True

    def _enqueue(self, payload: dict[str, Any], *, settle_by: float | None = None) -> None:
        with self._queue_changed:
            if len(self._queue) >= MAX_QUEUED_EVENTS:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(_Queued(payload, settle_by))
            self._queue_changed.notify()

    def _oom_killed(self, container_id: str) -> bool | None:
        """Whether the container's death is known by now to be an OOM kill: by the kernel's
        log, Docker's oom event or Docker's state; None when the container is gone and
        neither the kernel nor Docker said so."""
        if self.oom.death_was_oom(container_id):
            return True
        return _was_oom_killed(self.gateway, container_id)

    def _settle(self, queued: _Queued) -> None:
        """Give Docker until the die's `settle_by` to say it was an OOM kill."""
        assert queued.settle_by is not None
        container_id = queued.payload["container"]["id"]
        while True:
            if self._oom_killed(container_id):
                queued.payload["oom_killed"] = True
                break
            left = queued.settle_by - time.monotonic()
            if left <= 0 or self._stopping.wait(min(OOM_POLL_S, left)):
                break
        queued.settle_by = None

    def _watch_events(self) -> None:
        since = f"{time.time():.9f}"
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                self._stream = self.gateway.api.events(
                    since=since,
                    filters={"type": ["container"], "event": list(EVENTS)},
                    decode=True,
                )
                backoff = 1.0
                for event in self._stream:
                    nanos = int(event.get("timeNano") or 0)
                    if nanos:
                        since = f"{(nanos + 1) // 1_000_000_000}.{(nanos + 1) % 1_000_000_000:09d}"
                    action = event.get("Action") or event.get("status")
                    if action not in EVENTS:
                        continue
                    container_id = (event.get("Actor") or {}).get("ID", "")
                    if action == "die":
                        oom = self._oom_killed(container_id)
                        self._enqueue(
                            event_payload(self.config, event, oom_killed=oom),
                            settle_by=None if oom else time.monotonic() + OOM_SETTLE_S,
                        )
                    else:
                        self.oom.saw(action, container_id)
                        self._enqueue(event_payload(self.config, event))
            except Exception as exc:  # Docker gone or restarting: wait, then resume from `since`
                if not self._stopping.is_set():
                    log.warning("Docker event stream lost (%s); reconnecting", type(exc).__name__)
            self._stopping.wait(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _send_events(self) -> None:
        session = requests.Session()
        backoff = 1.0
        while not self._stopping.is_set():
            with self._queue_changed:
                while not self._queue and not self._stopping.is_set():
                    self._queue_changed.wait()
                if self._stopping.is_set():
                    return
                queued = self._queue[0]
            if queued.settle_by is not None:
                self._settle(queued)
            if self._post(session, "/v1/agent-events", queued.payload):
                with self._queue_changed:
                    if self._queue and self._queue[0] is queued:
                        self._queue.popleft()
                backoff = 1.0
            else:
                self._stopping.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
