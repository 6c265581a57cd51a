"""An HTTPS client for one agent, trusting exactly one certificate: the pinned one.

There is no CA. The TLS handshake is checked against the pinned SHA-256 fingerprint before a
single byte of HTTP is written, so a server with any other certificate never sees the bearer
token (the check sits in the socket's handshake, see `pinned_ssl_context`). Errors become
AgentError with the server's name and what to do; the token never appears in them.

`ask_agents` asks many agents at once (`gather_metrics` for `engine status`, the apps on
each server for a plan): every agent gets the same deadline, and a slow or dead one costs its
own row, never the others'. `ask_health` asks many agents at once whether they are alive, for
a plan (engine.health.AgentSeen).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from engine.agent.endpoint import AgentEndpoint
from engine.errors import EngineError
from engine.health import AgentAnswer, AgentSeen
from engine.model import Labels
from engine.secrets import redact

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 900.0


class AgentError(EngineError):
    """A call to an agent failed; `status` is the HTTP status (0 when none came back);
    `timed_out` when nothing answered in time (a firewall between looks the same)."""

    def __init__(self, message: str, *, status: int = 0, timed_out: bool = False) -> None:
        super().__init__(redact(message))
        self.status = status
        self.timed_out = timed_out


class FingerprintMismatch(ssl.SSLCertVerificationError):
    """The peer's certificate is not the pinned one."""


def pinned_ssl_context(fingerprint: str) -> ssl.SSLContext:
    """A client context that accepts only the certificate whose SHA-256 is `fingerprint`.

    Chain and host name checks are off (the certificate is self-signed and the address may be
    anything); instead the socket compares the certificate's digest as its handshake ends and
    closes the connection on a mismatch, before the request is sent.
    """

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True) or b""
            presented = hashlib.sha256(der).hexdigest()
            if presented != fingerprint:
                self.close()
                raise FingerprintMismatch(f"certificate sha256 {presented} is not the pinned one")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = PinnedSocket
    return context


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskUsage:
    mountpoint: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HostMetrics:
    """The parts of GET /v1/metrics the engine shows (the agent sends more)."""

    collected_at: str
    cpu_percent: float
    cpu_per_core: tuple[float, ...]
    load: tuple[float, float, float]
    memory_total_bytes: int
    memory_used_bytes: int
    memory_percent: float
    swap_total_bytes: int
    swap_used_bytes: int
    disks: tuple[DiskUsage, ...]
    uptime_s: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostMetrics:
        cpu, memory, swap, load = data["cpu"], data["memory"], data["swap"], data["load"]
        return cls(
            collected_at=data["collected_at"],
            cpu_percent=cpu["percent"],
            cpu_per_core=tuple(cpu["per_core"]),
            load=(load["1m"], load["5m"], load["15m"]),
            memory_total_bytes=memory["total_bytes"],
            memory_used_bytes=memory["used_bytes"],
            memory_percent=memory["percent"],
            swap_total_bytes=swap["total_bytes"],
            swap_used_bytes=swap["used_bytes"],
            disks=tuple(
                DiskUsage(
                    mountpoint=d["mountpoint"],
                    total_bytes=d["total_bytes"],
                    used_bytes=d["used_bytes"],
                    free_bytes=d["free_bytes"],
                    percent=d["percent"],
                )
                for d in data["disks"]
            ),
            uptime_s=data["uptime_s"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSummary:
    id: str
    name: str
    image: str
    state: str
    status: str
    created: str
    ports: tuple[str, ...]
    labels: Labels = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerSummary:
        ports = []
        for p in data["ports"]:
            inner = f"{p['container_port']}/{p['protocol']}"
            ports.append(f"{p['host_ip']}:{p['host_port']}->{inner}" if p["host_port"] else inner)
        return cls(
            id=data["id"],
            name=data["name"],
            image=data["image"],
            state=data["state"],
            status=data["status"],
            created=data["created"],
            ports=tuple(ports),
            labels=tuple(sorted((str(k), str(v)) for k, v in (data.get("labels") or {}).items())),
        )


def _is_mismatch(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FingerprintMismatch):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class AgentClient:
    """Calls to one agent over one pinned, kept-alive HTTPS connection. Use as a context
    manager, or call `close`."""

    def __init__(self, endpoint: AgentEndpoint, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.endpoint = endpoint
        self._http = httpx.Client(
            base_url=endpoint.url,
            verify=pinned_ssl_context(endpoint.fingerprint),
            headers={"Authorization": f"Bearer {endpoint.token}"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            trust_env=False,
        )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """One request as it is, whatever its status; only transport failures raise.

        `json` sends a document; `content` sends raw bytes (an iterator is sent chunked)."""
        extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        try:
            return self._http.request(
                method, path, json=json, params=params, content=content, headers=headers, **extra
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One request; the decoded JSON answer (None for 204), or AgentError."""
        response = self.send(method, path, json=json, params=params, timeout_s=timeout_s)
        if response.status_code >= 400:
            raise self._status_error(response)
        return None if response.status_code == 204 else response.json()

    @contextmanager
    def stream(
        self, path: str, *, params: Mapping[str, Any] | None = None
    ) -> Iterator[Iterator[bytes]]:
        """A streamed GET (logs with follow): yields an iterator of chunks as they arrive."""
        try:
            with self._http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response)
                yield response.iter_bytes()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.HTTPError) -> AgentError:
        where = self.endpoint.where()
        if _is_mismatch(exc):
            return AgentError(
                f"the agent of {where} presented a certificate other than the pinned one "
                f"(sha256 {self.endpoint.fingerprint}); the connection was closed before the "
                "token was sent. If the agent was reinstalled, pin its new certificate; if not, "
                "something else answers at that address"
            )
        if isinstance(exc, httpx.TimeoutException):
            return AgentError(
                f"the agent of {where} did not answer in time ({type(exc).__name__})",
                timed_out=True,
            )
        return AgentError(f"cannot reach the agent of {where}: {exc or type(exc).__name__}")

    def _status_error(self, response: httpx.Response) -> AgentError:
        where = self.endpoint.where()
        try:
            detail = response.json().get("detail", "")
        except ValueError:
            detail = response.text[:500]
        if response.status_code == 401:
            return AgentError(
                f"the agent of {where} refused the engine's token: it was installed with "
                "another fleet key than the one in this state directory",
                status=401,
            )
        if isinstance(detail, list):  # validation errors: one line per field
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in detail
            )
        return AgentError(
            f"the agent of {where} answered {response.status_code}: {detail}",
            status=response.status_code,
        )

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/v1/health")
        return result

    def metrics(self) -> HostMetrics:
        return HostMetrics.from_json(self.call("GET", "/v1/metrics"))

    def containers(self, *, include_stopped: bool = True) -> tuple[ContainerSummary, ...]:
        data = self.call("GET", "/v1/containers", params={"all": include_stopped})
        return tuple(ContainerSummary.from_json(c) for c in data["containers"])

    def pull_image(self, image: str, auth: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Pull on the server (can take minutes: the timeout is long), with registry
        credentials (`username`, `password`) if given."""
        body: dict[str, Any] = {"image": image}
        if auth is not None:
            body["auth"] = dict(auth)
        result: dict[str, Any] = self.call(
            "POST", "/v1/images/pull", json=body, timeout_s=PULL_TIMEOUT_S
        )
        return result

    def images(self) -> list[dict[str, Any]]:
        """The server's images: id, tags, size, created."""
        result: list[dict[str, Any]] = self.call("GET", "/v1/images")["images"]
        return result

    def load_image(self, archive: Iterable[bytes]) -> list[str]:
        """Stream a `docker save` archive to the server's Docker; the references loaded."""
        response = self.send(
            "POST",
            "/v1/images/load",
            content=iter(archive),
            headers={"Content-Type": "application/x-tar"},
            timeout_s=PULL_TIMEOUT_S,
        )
        if response.status_code >= 400:
            raise self._status_error(response)
        loaded: list[str] = response.json()["loaded"]
        return loaded

    def run_container(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create (and unless `start` is false, start) a container; its details."""
        result: dict[str, Any] = self.call("POST", "/v1/containers", json=dict(body))
        return result

    def inspect_container(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/containers/{ref}")
        return result

    def start_container(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/v1/containers/{ref}/start")
        return result

    def stop_container(self, ref: str, *, timeout_s: int = 10) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST",
            f"/v1/containers/{ref}/stop",
            params={"timeout_s": timeout_s},
            timeout_s=timeout_s + DEFAULT_TIMEOUT_S,
        )
        return result

    def remove_container(self, ref: str) -> None:
        """Remove a container, running or not (its named volumes stay)."""
        self.call("DELETE", f"/v1/containers/{ref}", params={"force": True})

    def probe(self, ref: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One health check of a container: `healthy`, `detail`, `duration_ms`."""
        result: dict[str, Any] = self.call("POST", f"/v1/containers/{ref}/probe", json=dict(body))
        return result

    def start_task(self, kind: str) -> dict[str, Any]:
        """Start a system task (update, upgrade, reboot) on the server; the task's record."""
        result: dict[str, Any] = self.call("POST", f"/v1/system/{kind}")
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/tasks/{task_id}")
        return result

    def task_log(self, task_id: str, offset: int = 0) -> dict[str, Any]:
        """A piece of a task's log from `offset`: text, next_offset, complete."""
        result: dict[str, Any] = self.call(
            "GET", f"/v1/tasks/{task_id}/log", params={"offset": offset}
        )
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer(Generic[T]):
    """One agent's answer to `ask_agents`: a value, or why there is none."""

    server: str
    value: T | None = None
    error: str | None = None


def _ask(
    endpoint: AgentEndpoint, ask: Callable[[AgentClient], T], what: str, timeout_s: float
) -> Answer[T]:
    try:
        with AgentClient(endpoint, timeout_s=timeout_s) as client:
            return Answer(server=endpoint.server, value=ask(client))
    except AgentError as exc:
        return Answer(server=endpoint.server, error=str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return Answer(server=endpoint.server, error=f"the agent's {what} are malformed ({exc!r})")


def ask_agents(
    endpoints: Sequence[AgentEndpoint],
    ask: Callable[[AgentClient], T],
    *,
    what: str,
    timeout_s: float = 5.0,
    parallel: int = 16,
) -> dict[str, Answer[T]]:
    """`ask` every agent at once (`what` it asks for, for messages), keyed by server in the
    order given.

    Up to `parallel` agents are asked at a time and each has `timeout_s` to answer; whatever
    has not answered when its turn's time is up is reported as an error and not waited for.
    """
    results: dict[str, Answer[T]] = {}
    workers = max(1, min(parallel, len(endpoints)))
    turns = -(-len(endpoints) // workers)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(_ask, e, ask, what, timeout_s): e for e in endpoints}
        deadline = time.monotonic() + turns * timeout_s + 1.0
        for future, endpoint in futures.items():
            try:
                results[endpoint.server] = future.result(max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                results[endpoint.server] = Answer(
                    server=endpoint.server,
                    error=f"the agent of {endpoint.where()} did not answer within {timeout_s:g} s",
                )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsResult:
    """One server's answer to `gather_metrics`: metrics, or why there are none."""

    server: str
    metrics: HostMetrics | None = None
    error: str | None = None


def gather_metrics(
    endpoints: Sequence[AgentEndpoint], *, timeout_s: float = 5.0, parallel: int = 16
) -> dict[str, MetricsResult]:
    """Live metrics from every endpoint at once (see `ask_agents`), keyed by server."""
    answers = ask_agents(
        endpoints, AgentClient.metrics, what="metrics", timeout_s=timeout_s, parallel=parallel
    )
    return {
        server: MetricsResult(server=server, metrics=answer.value, error=answer.error)
        for server, answer in answers.items()
    }


def _health(endpoint: AgentEndpoint, timeout_s: float) -> AgentAnswer | AgentError:
    try:
        with AgentClient(endpoint, timeout_s=timeout_s) as client:
            client.health()
    except AgentError as exc:
        return exc
    return AgentAnswer.ANSWERED


def ask_health(
    endpoints: Sequence[AgentEndpoint], *, timeout_s: float = 5.0, parallel: int = 16
) -> dict[str, AgentSeen]:
    """Whether each agent answers its health check now, all asked at once: answered, silent
    (refused, closed, the wrong certificate, an error) or unreachable (nothing in time)."""
    if not endpoints:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max(1, min(parallel, len(endpoints)))) as pool:
        answers = dict(
            zip(
                (e.server for e in endpoints),
                pool.map(lambda e: _health(e, timeout_s), endpoints),
                strict=True,
            )
        )
    seen = {}
    for server, answer in answers.items():
        if isinstance(answer, AgentAnswer):
            seen[server] = AgentSeen(answer=answer)
        else:
            verdict = AgentAnswer.UNREACHABLE if answer.timed_out else AgentAnswer.SILENT
            seen[server] = AgentSeen(answer=verdict, detail=str(answer))
    return seen
