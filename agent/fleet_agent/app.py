"""The agent's HTTP API (all under /v1; only GET /v1/health answers without a token).

    GET    /v1/health                      {"status": "ok"}
    GET    /v1/metrics                     host metrics (heartbeat.v1 schema, $defs/metrics)
    GET    /v1/containers?all=true         containers, running only with all=false
    POST   /v1/containers                  create and start one (bodies.ContainerSpec)
    GET    /v1/containers/{ref}            details (environment names, never values)
    POST   /v1/containers/{ref}/start|stop|restart   stop/restart take ?timeout_s=
    DELETE /v1/containers/{ref}?force=&volumes=
    GET    /v1/containers/{ref}/logs?tail=&since=&follow=&timestamps=   text, streamed
    GET    /v1/containers/{ref}/stats      one reading of CPU, memory, network, block I/O
    POST   /v1/containers/{ref}/probe      one health check: http, tcp or a command
    GET    /v1/images                      POST /v1/images/pull, POST /v1/images/prune
    POST   /v1/images/load                 an image archive (docker save), streamed
    DELETE /v1/images/{ref}?force=
    GET    /v1/networks                    POST /v1/networks, DELETE /v1/networks/{ref}
    POST   /v1/system/update|upgrade|reboot   202 and a task
    GET    /v1/tasks, /v1/tasks/{id}, /v1/tasks/{id}/log?offset=&limit=

Errors are JSON `{"detail": ...}`: 401 without a valid token, 404 for what does not exist,
409 for conflicts, 413/431 for oversized bodies/headers, 400 for a body nested too deep, 422
for invalid input (with the field's path), 502 when Docker or a registry fails, 503/504 when
Docker does not answer (in time). The guard's refusals (400, 401, 413, 431) also carry a
stable `code` (fleet_agent.guard). There is no CORS and no interactive documentation: the
API is for the engine, not for browsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import docker.errors
import requests
from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from fleet_agent import dockerops
from fleet_agent.bodies import (
    IMAGE_PATTERN,
    NAME_PATTERN,
    TASK_ID_PATTERN,
    ContainerSpec,
    NetworkSpec,
    ProbeSpec,
    PruneSpec,
    PullSpec,
)
from fleet_agent.config import AgentConfig
from fleet_agent.guard import AuditLog, Guard
from fleet_agent.metrics import CpuSampler, collect_metrics
from fleet_agent.oomkills import OomWitness
from fleet_agent.reporting import Reporter
from fleet_agent.tasks import TaskBusy, TaskKind, TaskRunner

log = logging.getLogger("fleet_agent")

Ref = Annotated[str, Path(pattern=NAME_PATTERN, description="container or network name or id")]
ImageRefPath = Annotated[str, Path(pattern=IMAGE_PATTERN, max_length=512)]
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN)]
StopTimeout = Annotated[int, Query(ge=0, le=600)]


class _DockerStreamResponse(StreamingResponse):
    """Relays a blocking Docker stream (logs) and always closes it when the answer ends.

    The client going away is awaited alongside the stream, since Starlette alone only notices
    it when a write fails, and a quiet `follow` would then hold a thread and a connection to
    Docker until the container printed again. Closing the Docker stream (also when relaying
    never started) unblocks the thread that reads it.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(_relay(stream), media_type="text/plain; charset=utf-8")
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def relay() -> None:
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(relay)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.stream.close()


async def _relay(stream: Any) -> AsyncIterator[bytes]:
    """Chunks of a blocking Docker stream, each read in a worker thread that is abandoned (and
    then unblocked by closing the stream) if the answer is cancelled."""
    while True:
        chunk = await anyio.to_thread.run_sync(next, stream, None, abandon_on_cancel=True)
        if chunk is None:
            return
        yield chunk


def _validation_response(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
    ]  # without `input`, which would echo secrets back into logs and proxies
    return JSONResponse({"detail": errors}, status_code=422)


def _agent_error_response(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, dockerops.AgentError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


def _docker_error_response(_: Request, exc: Exception) -> JSONResponse:
    """Docker's 4xx pass through with its explanation; its 5xx are a bad gateway."""
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        message = str(exc.explanation or exc)
        return JSONResponse(
            {"detail": f"docker: {message}"}, status_code=status if status < 500 else 502
        )
    if isinstance(exc, requests.ConnectionError):
        return JSONResponse(
            {"detail": "the Docker engine on this server does not answer"}, status_code=503
        )
    if isinstance(exc, requests.Timeout):
        return JSONResponse(
            {"detail": "the Docker engine on this server did not answer in time"}, status_code=504
        )
    return JSONResponse({"detail": f"docker: {exc}"}, status_code=502)


def create_app(config: AgentConfig, *, fingerprint: str, port: int) -> Any:
    """The ASGI application: FastAPI routes behind the Guard middleware. `port` is the one
    actually bound (config.port may be 0), reported in heartbeats."""
    gateway = dockerops.DockerGateway(config.docker_url, timeout_s=config.docker_timeout_s)
    sampler = CpuSampler(config.cpu_window_s)
    tasks = TaskRunner(config.state_dir, config.host_command_prefix)
    oom = OomWitness()
    started_at = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks.load()
        background = [asyncio.get_running_loop().create_task(sampler.run())]
        reporter = None
        if config.control_plane_url:
            reporter = Reporter(
                config,
                fingerprint=fingerprint,
                port=port,
                gateway=gateway,
                sampler=sampler,
                started_at=started_at,
                oom=oom,
            )
            background.append(reporter.start())
        try:
            yield
        finally:
            for job in background:
                job.cancel()
            for job in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            if reporter is not None:
                await asyncio.to_thread(reporter.stop)
            await tasks.close()
            oom.close()
            gateway.close()
            log.info("stopped cleanly")

    app = FastAPI(
        title="fleet-agent",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(
        Guard,
        token_sha256=config.token_sha256,
        max_body_bytes=config.max_body_bytes,
        max_stream_bytes=config.max_image_bytes,
        audit=AuditLog(config.state_dir / "audit.log"),
    )
    app.add_exception_handler(RequestValidationError, _validation_response)
    app.add_exception_handler(dockerops.AgentError, _agent_error_response)
    app.add_exception_handler(docker.errors.DockerException, _docker_error_response)
    app.add_exception_handler(requests.RequestException, _docker_error_response)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/metrics")
    async def metrics() -> dict[str, Any]:
        window = await sampler.latest()
        return await asyncio.to_thread(collect_metrics, window, config.host_root)

    @app.get("/v1/containers")
    def containers(all: bool = True) -> dict[str, Any]:
        return {"containers": dockerops.list_containers(gateway, include_stopped=all)}

    @app.post("/v1/containers", status_code=201)
    def run_container(spec: Annotated[ContainerSpec, Body()]) -> dict[str, Any]:
        return dockerops.run_container(gateway, spec)

    @app.get("/v1/containers/{ref}")
    def inspect_container(ref: Ref) -> dict[str, Any]:
        details = dockerops.inspect_container(gateway, ref)
        # Docker's state misses some OOM kills the agent knows of (fleet_agent.oomkills).
        if oom.last_death_was_oom(details["id"]):
            details["state"]["oom_killed"] = True
        return details

    @app.post("/v1/containers/{ref}/start")
    def start_container(ref: Ref) -> dict[str, Any]:
        return dockerops.start_container(gateway, ref)

    @app.post("/v1/containers/{ref}/stop")
    def stop_container(ref: Ref, timeout_s: StopTimeout = 10) -> dict[str, Any]:
        return dockerops.stop_container(gateway, ref, timeout_s=timeout_s)

    @app.post("/v1/containers/{ref}/restart")
    def restart_container(ref: Ref, timeout_s: StopTimeout = 10) -> dict[str, Any]:
        return dockerops.restart_container(gateway, ref, timeout_s=timeout_s)

    @app.delete("/v1/containers/{ref}", status_code=204)
    def remove_container(ref: Ref, force: bool = False, volumes: bool = False) -> None:
        dockerops.remove_container(gateway, ref, force=force, volumes=volumes)

    @app.get("/v1/containers/{ref}/logs")
    async def container_logs(
        ref: Ref,
        tail: Annotated[int, Query(ge=0, le=1_000_000)] = 100,
        since: dt.datetime | None = None,
        follow: bool = False,
        timestamps: bool = False,
    ) -> StreamingResponse:
        stream = await asyncio.to_thread(
            dockerops.container_logs,
            gateway,
            ref,
            tail=tail,
            since=since,
            follow=follow,
            timestamps=timestamps,
        )
        return _DockerStreamResponse(stream)

    @app.post("/v1/containers/{ref}/probe")
    def probe_container(ref: Ref, spec: Annotated[ProbeSpec, Body()]) -> dict[str, Any]:
        return dockerops.probe_container(gateway, ref, spec)

    @app.get("/v1/containers/{ref}/stats")
    def container_stats(ref: Ref) -> dict[str, Any]:
        return dockerops.container_stats(gateway, ref)

    @app.get("/v1/images")
    def images() -> dict[str, Any]:
        return {"images": dockerops.list_images(gateway)}

    @app.post("/v1/images/pull")
    def pull_image(spec: Annotated[PullSpec, Body()]) -> dict[str, Any]:
        return dockerops.pull_image(gateway, spec.image, spec.auth)

    @app.post("/v1/images/load")
    async def load_image(request: Request) -> dict[str, Any]:
        # The archive goes to Docker as it arrives: read in the worker thread that feeds
        # Docker, a chunk at a time from this request's stream, and never held whole.
        limit = config.max_image_bytes
        chunks = request.stream().__aiter__()
        counted = {"bytes": 0}

        async def next_chunk() -> bytes:
            return await chunks.__anext__()

        def archive() -> Iterator[bytes]:
            while True:
                try:
                    chunk = anyio.from_thread.run(next_chunk)
                except StopAsyncIteration:
                    return
                counted["bytes"] += len(chunk)
                if counted["bytes"] > limit:
                    return  # Docker meets a cut archive and refuses it
                if chunk:
                    yield chunk

        try:
            result: dict[str, Any] = await anyio.to_thread.run_sync(
                dockerops.load_image, gateway, archive()
            )
        except (dockerops.AgentError, docker.errors.APIError):
            if counted["bytes"] > limit:
                raise dockerops.AgentError(
                    413, f"the image archive is larger than {limit} bytes"
                ) from None
            raise
        return result

    @app.post("/v1/images/prune")
    def prune_images(spec: Annotated[PruneSpec, Body()]) -> dict[str, Any]:
        return dockerops.prune_images(gateway, dangling_only=spec.dangling_only)

    @app.delete("/v1/images/{ref:path}", status_code=204)
    def remove_image(ref: ImageRefPath, force: bool = False) -> None:
        dockerops.remove_image(gateway, ref, force=force)

    @app.get("/v1/networks")
    def networks() -> dict[str, Any]:
        return {"networks": dockerops.list_networks(gateway)}

    @app.post("/v1/networks", status_code=201)
    def create_network(spec: Annotated[NetworkSpec, Body()]) -> dict[str, Any]:
        return dockerops.create_network(gateway, spec)

    @app.delete("/v1/networks/{ref}", status_code=204)
    def remove_network(ref: Ref) -> None:
        dockerops.remove_network(gateway, ref)

    def system_task(kind: TaskKind) -> Callable[[], Awaitable[JSONResponse]]:
        async def start() -> JSONResponse:
            try:
                task = tasks.start(kind)
            except TaskBusy as exc:
                return JSONResponse({"detail": str(exc)}, status_code=409)
            return JSONResponse(
                task.to_json(), status_code=202, headers={"Location": f"/v1/tasks/{task.id}"}
            )

        return start

    for kind in TaskKind:
        app.post(f"/v1/system/{kind.value}", status_code=202)(system_task(kind))

    @app.get("/v1/tasks")
    def list_tasks() -> dict[str, Any]:
        return {"tasks": [t.to_json() for t in tasks.all()]}

    @app.get("/v1/tasks/{task_id}")
    def get_task(task_id: TaskId) -> dict[str, Any]:
        task = tasks.get(task_id)
        if task is None:
            raise dockerops.AgentError(404, f"no task {task_id}")
        return task.to_json()

    @app.get("/v1/tasks/{task_id}/log")
    def task_log(
        task_id: TaskId,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=16, le=1024 * 1024)] = 65536,
    ) -> dict[str, Any]:
        task = tasks.get(task_id)
        if task is None:
            raise dockerops.AgentError(404, f"no task {task_id}")
        text, next_offset, complete = tasks.read_log(task_id, offset, limit)
        return {"offset": offset, "next_offset": next_offset, "text": text, "complete": complete}

    return app
