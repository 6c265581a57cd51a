"""Containers, images and networks on this server, through the official Docker SDK.

Functions here are blocking (the SDK is): routes run them in worker threads. They return plain
JSON-ready dicts in the agent's own shape, not Docker's raw documents, so what the agent
promises does not change with the engine's version, and environment values (often secrets)
never leave the server: inspect shows the names of a container's variables, not their values.
Docker's errors are translated by the app (see app.py: docker_error_response).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from fleet_agent.bodies import ContainerSpec, NetworkSpec, ProbeSpec, RegistryAuth

PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none"})


class AgentError(Exception):
    """A request that cannot be done as asked; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DockerGateway:
    """The agent's Docker client, made on first use and kept for its life.

    Calls time out after `timeout_s`; the SDK lifts that for streams (logs, events, pulls),
    which may be quiet for hours. The API version is negotiated ("auto") because servers run
    engines from 20.10 (API 1.41) upwards. If the engine is down when the agent starts, the
    client is made on a later call.
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._client: docker.APIClient | None = None
        self._lock = threading.Lock()

    @property
    def api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = docker.APIClient(
                        base_url=self._url, version="auto", timeout=self._timeout_s
                    )
                except docker.errors.DockerException as exc:
                    raise AgentError(
                        503, f"the Docker engine on this server does not answer ({exc})"
                    ) from None
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _iso(epoch: int | float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def container_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """One entry of GET /v1/containers from Docker's list document."""
    return {
        "id": raw["Id"],
        "name": (raw.get("Names") or ["/"])[0].lstrip("/"),
        "image": raw.get("Image", ""),
        "state": raw.get("State", ""),
        "status": raw.get("Status", ""),
        "created": _iso(raw.get("Created", 0)),
        "ports": [
            {
                "container_port": p["PrivatePort"],
                "protocol": p.get("Type", "tcp"),
                "host_ip": p.get("IP"),
                "host_port": p.get("PublicPort"),
            }
            for p in raw.get("Ports") or []
        ],
        "labels": raw.get("Labels") or {},
    }


def container_details(raw: dict[str, Any]) -> dict[str, Any]:
    """GET /v1/containers/{ref} from Docker's inspect document (no environment values)."""
    config, state, host = (
        raw.get("Config") or {},
        raw.get("State") or {},
        raw.get("HostConfig") or {},
    )
    ports = []
    for key, bindings in ((raw.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, _, protocol = key.partition("/")
        for binding in bindings or [None]:
            ports.append(
                {
                    "container_port": int(port),
                    "protocol": protocol,
                    "host_ip": binding["HostIp"] if binding else None,
                    "host_port": int(binding["HostPort"]) if binding else None,
                }
            )
    networks = (raw.get("NetworkSettings") or {}).get("Networks") or {}
    policy = host.get("RestartPolicy") or {}
    return {
        "id": raw["Id"],
        "name": raw.get("Name", "").lstrip("/"),
        "image": config.get("Image", ""),
        "image_id": raw.get("Image", ""),
        "command": [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
        "created": raw.get("Created", ""),
        "state": {
            "status": state.get("Status", ""),
            "running": bool(state.get("Running")),
            "exit_code": state.get("ExitCode"),
            "oom_killed": bool(state.get("OOMKilled")),
            "started_at": state.get("StartedAt"),
            "finished_at": state.get("FinishedAt"),
            "restart_count": raw.get("RestartCount", 0),
        },
        "restart_policy": {
            "name": policy.get("Name") or "no",
            "maximum_retry_count": policy.get("MaximumRetryCount", 0),
        },
        "env_names": sorted(item.partition("=")[0] for item in config.get("Env") or []),
        "labels": config.get("Labels") or {},
        "ports": ports,
        "mounts": [
            {
                "type": m.get("Type"),
                "source": m.get("Name") or m.get("Source"),
                "target": m.get("Destination"),
                "read_only": not m.get("RW", True),
            }
            for m in raw.get("Mounts") or []
        ],
        "networks": {name: n.get("IPAddress", "") for name, n in networks.items()},
        "memory_bytes": host.get("Memory") or None,
        "nano_cpus": host.get("NanoCpus") or None,
    }


def list_containers(gateway: DockerGateway, *, include_stopped: bool) -> list[dict[str, Any]]:
    """Every container (or only running ones), one list call."""
    return [container_summary(c) for c in gateway.api.containers(all=include_stopped)]


def inspect_container(gateway: DockerGateway, ref: str) -> dict[str, Any]:
    return container_details(gateway.api.inspect_container(ref))


def _has_image(gateway: DockerGateway, image: str) -> bool:
    try:
        gateway.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def run_container(gateway: DockerGateway, spec: ContainerSpec) -> dict[str, Any]:
    """Create (and by default start) a container; if starting fails, nothing is left behind."""
    api = gateway.api
    if not _has_image(gateway, spec.image):
        raise AgentError(
            404, f"image {spec.image} is not on this server; pull it first (POST /v1/images/pull)"
        )
    mounts = [
        docker.types.Mount(
            target=v.target,
            source=v.source,
            type="bind" if v.is_bind else "volume",
            read_only=v.read_only,
        )
        for v in spec.volumes
    ]
    port_bindings: dict[str, list[tuple[str, int | None]]] = {}
    for p in spec.ports:  # no host port: Docker picks a free one
        port_bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            (p.host_ip or "", p.host_port)
        )
    policy = spec.restart_policy
    restart = {"Name": policy.name, "MaximumRetryCount": policy.maximum_retry_count}
    host_config = api.create_host_config(
        port_bindings=port_bindings,
        mounts=mounts,
        restart_policy=restart if policy.name != "no" else None,
        mem_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
        nano_cpus=round(spec.cpus * 1e9) if spec.cpus else None,
        network_mode=spec.network,
    )
    created = api.create_container(
        spec.image,
        command=spec.command,
        entrypoint=spec.entrypoint,
        name=spec.name,
        environment=spec.env,
        labels=spec.labels,
        ports=[(p.container_port, p.protocol) for p in spec.ports],
        host_config=host_config,
        use_config_proxy=False,
    )
    if spec.start:
        try:
            api.start(created["Id"])
        except docker.errors.APIError:
            api.remove_container(created["Id"], force=True, v=True)
            raise
    return inspect_container(gateway, created["Id"])


def start_container(gateway: DockerGateway, ref: str) -> dict[str, Any]:
    gateway.api.start(ref)
    return inspect_container(gateway, ref)


def stop_container(gateway: DockerGateway, ref: str, *, timeout_s: int) -> dict[str, Any]:
    gateway.api.stop(ref, timeout=timeout_s)
    return inspect_container(gateway, ref)


def restart_container(gateway: DockerGateway, ref: str, *, timeout_s: int) -> dict[str, Any]:
    gateway.api.restart(ref, timeout=timeout_s)
    return inspect_container(gateway, ref)


def remove_container(gateway: DockerGateway, ref: str, *, force: bool, volumes: bool) -> None:
    gateway.api.remove_container(ref, force=force, v=volumes)


def container_logs(
    gateway: DockerGateway,
    ref: str,
    *,
    tail: int,
    since: dt.datetime | None,
    follow: bool,
    timestamps: bool,
) -> Any:
    """A closable stream of log chunks (stdout and stderr interleaved, as written)."""
    gateway.api.inspect_container(ref)  # a missing container is a 404 before streaming starts
    return gateway.api.logs(
        ref,
        stream=True,
        follow=follow,
        stdout=True,
        stderr=True,
        timestamps=timestamps,
        tail=tail,
        since=since,
    )


def _blkio(stats: dict[str, Any]) -> tuple[int, int]:
    read = written = 0
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        if entry.get("op", "").lower() == "read":
            read += entry.get("value", 0)
        elif entry.get("op", "").lower() == "write":
            written += entry.get("value", 0)
    return read, written


def container_stats(gateway: DockerGateway, ref: str) -> dict[str, Any]:
    """One reading of a container's resource use; CPU over Docker's own ~1 s sample."""
    if not gateway.api.inspect_container(ref)["State"].get("Running"):
        raise AgentError(409, f"container {ref} is not running, so it has no statistics")
    stats = gateway.api.stats(ref, stream=False)
    if str(stats.get("read", "")).startswith("0001-"):  # Go's zero time: nothing was measured
        raise AgentError(502, f"the Docker engine has no statistics for {ref}; its log says why")
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [1])
    percent = 100.0 * cpu_delta / system_delta * online if system_delta > 0 else 0.0
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    # What `docker stats` shows: usage minus reclaimable page cache (cgroup v2, then v1 names).
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    usage = max(0, memory.get("usage", 0) - cache)
    networks = stats.get("networks") or {}
    read, written = _blkio(stats)
    return {
        "read_at": stats.get("read", ""),
        "cpu_percent": round(percent, 2),
        "online_cpus": online,
        "memory_bytes": usage,
        "memory_limit_bytes": memory.get("limit", 0),
        "pids": (stats.get("pids_stats") or {}).get("current", 0),
        "network_rx_bytes": sum(n.get("rx_bytes", 0) for n in networks.values()),
        "network_tx_bytes": sum(n.get("tx_bytes", 0) for n in networks.values()),
        "block_read_bytes": read,
        "block_write_bytes": written,
    }


def list_images(gateway: DockerGateway) -> list[dict[str, Any]]:
    return [
        {
            "id": image["Id"],
            "tags": [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"],
            "size_bytes": image.get("Size", 0),
            "created": _iso(image.get("Created", 0)),
        }
        for image in gateway.api.images()
    ]


def pull_image(
    gateway: DockerGateway, image: str, auth: RegistryAuth | None = None
) -> dict[str, Any]:
    """Pull `image` (`name`, `name:tag` or `name@sha256:...`; no tag means latest), with the
    registry credentials `auth` if given (for this pull only: nothing is kept).

    A registry's refusal arrives inside the progress stream of a 200 answer, so it is read to
    the end and any error in it is reported.
    """
    name = image.rsplit("/", 1)[-1]
    reference = image if ":" in name or "@" in image else f"{image}:latest"
    credentials = None if auth is None else {"username": auth.username, "password": auth.password}
    try:
        for chunk in gateway.api.pull(reference, stream=True, decode=True, auth_config=credentials):
            if "error" in chunk:
                raise AgentError(502, f"pulling {reference} failed: {chunk['error'].strip()}")
    except docker.errors.APIError as exc:
        raise AgentError(502, f"pulling {reference} failed: {exc.explanation or exc}") from None
    return {"image": reference, "id": gateway.api.inspect_image(reference)["Id"]}


def load_image(gateway: DockerGateway, archive: Iterator[bytes]) -> dict[str, Any]:
    """Load the images of a `docker save` archive (plain or gzip) read from `archive` as it
    arrives; the references it loaded. A damaged archive is a 400: nothing of it is loaded."""
    loaded = []
    for message in gateway.api.load_image(archive):
        if "error" in message:
            raise AgentError(400, f"the image archive was refused: {message['error'].strip()}")
        text = str(message.get("stream", ""))
        for prefix in ("Loaded image: ", "Loaded image ID: "):
            if text.startswith(prefix):
                loaded.append(text.removeprefix(prefix).strip())
    if not loaded:
        raise AgentError(400, "the archive held no image")
    return {"loaded": loaded}


def _address(raw: dict[str, Any]) -> str | None:
    """Where the container itself answers: its address on its first network (loopback for a
    container on the host's network)."""
    if (raw.get("HostConfig") or {}).get("NetworkMode") == "host":
        return "127.0.0.1"
    networks = (raw.get("NetworkSettings") or {}).get("Networks") or {}
    for network in networks.values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    return None


def _result(healthy: bool, detail: str, started: float) -> dict[str, Any]:
    return {
        "healthy": healthy,
        "detail": detail[-500:],
        "duration_ms": round(1000 * (time.monotonic() - started), 1),
    }


def probe_container(gateway: DockerGateway, ref: str, spec: ProbeSpec) -> dict[str, Any]:
    """One health check of a running container: `{"healthy", "detail", "duration_ms"}`.

    HTTP and TCP checks go to the container's own address (read from Docker, never from the
    request), so a probe reaches nothing but the container. A command runs inside it, and a
    command that hangs costs at most the timeout.
    """
    started = time.monotonic()
    raw = gateway.api.inspect_container(ref)
    state = raw.get("State") or {}
    if not state.get("Running"):
        return _result(
            False, f"not running: {state.get('Status')}, exit code {state.get('ExitCode')}", started
        )
    if spec.command is not None:
        return _probe_command(gateway, raw["Id"], spec.command, spec.timeout_s, started)
    address = _address(raw)
    if address is None:
        return _result(False, "the container has no address on a network", started)
    try:
        if spec.http is not None:
            connection = http.client.HTTPConnection(address, spec.http.port, timeout=spec.timeout_s)
            try:
                connection.request("GET", spec.http.path, headers={"User-Agent": "fleet-agent"})
                status = connection.getresponse().status
            finally:
                connection.close()
            return _result(200 <= status < 400, f"HTTP {status}", started)
        assert spec.tcp is not None
        with socket.create_connection((address, spec.tcp.port), timeout=spec.timeout_s):
            return _result(True, f"port {spec.tcp.port} accepts connections", started)
    except (OSError, http.client.HTTPException) as exc:
        return _result(False, str(exc) or type(exc).__name__, started)


def _probe_command(
    gateway: DockerGateway, container: str, command: list[str], timeout_s: float, started: float
) -> dict[str, Any]:
    api = gateway.api
    exec_id = api.exec_create(container, command, stdout=True, stderr=True)["Id"]
    output: list[bytes] = []

    def run() -> None:
        # A command that outlives the probe ends its thread with the Docker client's timeout.
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            output.append(api.exec_start(exec_id))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout_s)
    if runner.is_alive():
        return _result(False, f"the command did not finish within {timeout_s:g} s", started)
    code = api.exec_inspect(exec_id).get("ExitCode")
    text = b"".join(output).decode("utf-8", "replace").strip()
    return _result(code == 0, f"exit code {code}" + (f": {text}" if text else ""), started)


def remove_image(gateway: DockerGateway, ref: str, *, force: bool) -> None:
    gateway.api.remove_image(ref, force=force)


def prune_images(gateway: DockerGateway, *, dangling_only: bool) -> dict[str, Any]:
    result = gateway.api.prune_images(filters={"dangling": dangling_only})
    deleted = [
        entry.get("Deleted") or entry.get("Untagged") for entry in result.get("ImagesDeleted") or []
    ]
    return {"deleted": deleted, "space_reclaimed_bytes": result.get("SpaceReclaimed", 0)}


def _network(raw: dict[str, Any]) -> dict[str, Any]:
    ipam = (raw.get("IPAM") or {}).get("Config") or []
    return {
        "id": raw["Id"],
        "name": raw["Name"],
        "driver": raw.get("Driver", ""),
        "scope": raw.get("Scope", ""),
        "internal": bool(raw.get("Internal")),
        "subnets": [{"subnet": c.get("Subnet"), "gateway": c.get("Gateway")} for c in ipam if c],
        "labels": raw.get("Labels") or {},
    }


def list_networks(gateway: DockerGateway) -> list[dict[str, Any]]:
    return [_network(n) for n in gateway.api.networks()]


def create_network(gateway: DockerGateway, spec: NetworkSpec) -> dict[str, Any]:
    api = gateway.api
    ipam = None
    if spec.subnet:
        pool = docker.types.IPAMPool(subnet=spec.subnet, gateway=spec.gateway)
        ipam = docker.types.IPAMConfig(pool_configs=[pool])
    created = api.create_network(
        spec.name,
        driver="bridge",
        ipam=ipam,
        internal=spec.internal,
        labels=spec.labels,
        check_duplicate=True,
    )
    return _network(api.inspect_network(created["Id"]))


def remove_network(gateway: DockerGateway, ref: str) -> None:
    network = gateway.api.inspect_network(ref)
    if network["Name"] in PREDEFINED_NETWORKS:
        raise AgentError(403, f"{network['Name']} is one of Docker's own networks; it stays")
    gateway.api.remove_network(network["Id"])
