"""The real agent as a process on loopback, and a stand-in for the control plane's receivers.

`AgentProcess` runs `python -m fleet_agent --config ...` exactly as the image does, with a
config rendered by the engine (engine.install.agent.render_agent_config) and a few test settings
on top (loopback, port 0, private paths, the test's dockerd). `Reports` is a small Starlette
app that takes heartbeats and container events the way the control plane must: bearer token
checked by deriving it again, body validated against the JSON Schemas in schemas/.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.agent.endpoint import AgentEndpoint, fingerprint_of
from engine.install.agent import AgentSettings, render_agent_config
from engine.tokens import agent_token, heartbeat_token, is_same_token, token_sha256
from tests.support.wait import wait_until

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
FLEET = "demo"
SERVER = "web-1"
START_TIMEOUT_S = 30.0


def schema_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


@dataclass
class Reports:
    """What the agents sent; `refuse` makes the next N requests fail with 503."""

    key: bytes
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    refuse: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        heartbeat_schema = schema_validator("heartbeat.v1.schema.json")
        event_schema = schema_validator("agent-event.v1.schema.json")

        def receiver(schema: Draft202012Validator, into: list[dict[str, Any]]) -> Any:
            async def receive(request: Request) -> JSONResponse:
                body = await request.json()
                with self._lock:
                    if self.refuse > 0:
                        self.refuse -= 1
                        return JSONResponse({"detail": "busy"}, status_code=503)
                presented = request.headers.get("authorization", "").removeprefix("Bearer ")
                expected = heartbeat_token(self.key, body.get("fleet", ""), body.get("server", ""))
                if not is_same_token(expected, presented):
                    self.rejected.append("token")
                    return JSONResponse({"detail": "bad token"}, status_code=401)
                problems = [e.message for e in schema.iter_errors(body)]
                if problems:
                    self.rejected.extend(problems)
                    return JSONResponse({"detail": problems}, status_code=422)
                with self._lock:
                    into.append(body)
                return JSONResponse({}, status_code=202)

            return receive

        return Starlette(
            routes=[
                Route(
                    "/v1/heartbeat", receiver(heartbeat_schema, self.heartbeats), methods=["POST"]
                ),
                Route("/v1/agent-events", receiver(event_schema, self.events), methods=["POST"]),
            ]
        )

    def events_of(self, container_id: str) -> list[str]:
        with self._lock:
            return [e["event"] for e in self.events if e["container"]["id"] == container_id]


def agent_config(
    folder: Path,
    key: bytes,
    *,
    control_plane_url: str | None,
    server: str = SERVER,
    **overrides: Any,
) -> dict[str, Any]:
    """The engine's rendering of the agent config, pointed at the test's own places."""
    rendered = render_agent_config(
        AgentSettings(
            fleet=FLEET, server=server, control_plane_url=control_plane_url or "http://unused"
        ),
        token_sha256=token_sha256(agent_token(key, FLEET, server)),
        heartbeat_token=heartbeat_token(key, FLEET, server),
    )
    config: dict[str, Any] = json.loads(rendered)
    config.update(
        listen="127.0.0.1",
        port=0,
        control_plane_url=control_plane_url,
        tls_cert=str(folder / "tls" / "cert.pem"),
        tls_key=str(folder / "tls" / "key.pem"),
        host_root="/",
        state_dir=str(folder / "state"),
        host_command_prefix=["echo"],
        cpu_window_s=1.0,
        heartbeat_interval_s=1.0,
    )
    config.update(overrides)
    return config


class AgentProcess:
    """One running agent; `stop` sends SIGTERM (as `docker stop` does) and waits."""

    def __init__(self, folder: Path, config: dict[str, Any], key: bytes) -> None:
        self.folder = folder
        self.config = config
        self.key = key
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = folder / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> AgentProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleet_agent", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

        def listening() -> int:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the agent exited: {self.log_text()}")
            found = re.findall(r"listening on https://[^:]+:(\d+)", self.log_text()[offset:])
            return int(found[-1]) if found else 0

        self.port = wait_until(listening, timeout_s=START_TIMEOUT_S, what="the agent to listen")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(Path(self.config["tls_cert"]).read_text())

    @property
    def token(self) -> str:
        return agent_token(self.key, FLEET, self.config["server"])

    def endpoint(
        self, *, token: str | None = None, fingerprint: str | None = None
    ) -> AgentEndpoint:
        return AgentEndpoint(
            server=self.config["server"],
            address="127.0.0.1",
            port=self.port,
            fingerprint=fingerprint or self.fingerprint,
            token=token or self.token,
        )

    def audit(self) -> list[dict[str, Any]]:
        """The entries of the agent's audit log so far."""
        path = Path(self.config["state_dir"]) / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
