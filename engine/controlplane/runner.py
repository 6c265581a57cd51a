"""Running the control plane: embedded in `engine up` for one run, or as `engine serve`.

    with running_control_plane(store, state_dir, host="0.0.0.0", installer=install) as cp:
        cp.url                     # e.g. http://0.0.0.0:41235 (port 0 picks a free port)
        ...                        # create servers, register them, wait for them

Both run the same pieces: the HTTP API on uvicorn, job workers, and the monitor.
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.controlplane.alerts import WebhookHandler
from engine.controlplane.app import AppSettings, ControlPlaneApi, HealthSource, create_app
from engine.controlplane.dashboard import SignInLinks
from engine.controlplane.fleetapi import FleetPlanner
from engine.controlplane.handlers import (
    InstallHandler,
    PollInventoryHandler,
    ProvisionHandler,
    SshCheckHandler,
)
from engine.controlplane.jobs import LEASE_S, JobRegistry, WorkerPool
from engine.controlplane.lookup import ReaderFactory, provider_reader
from engine.controlplane.monitor import Monitor
from engine.controlplane.views import last_heartbeat_metrics
from engine.errors import EngineError
from engine.health import HEARTBEAT_MISSES
from engine.install.deploykey import deploy_key_path
from engine.install.seam import Installer
from engine.providers.seam import Provisioner
from engine.state.store import Store

log = logging.getLogger("engine.controlplane")
SWITCH_INTERVAL_S = 0.001
START_TIMEOUT_S = 15.0


def _deploy_key(state_dir: Path) -> Callable[[str], Path | None]:
    """Each fleet's deploy key file, None while the fleet has none."""

    def path(fleet: str) -> Path | None:
        found = deploy_key_path(state_dir, fleet)
        return found if found.is_file() else None

    return path


def default_registry(
    store: Store,
    state_dir: Path,
    *,
    installer: Installer | None = None,
    provisioner: Provisioner | None = None,
    readers: ReaderFactory = provider_reader,
) -> JobRegistry:
    """The handlers of every job kind this control plane can run. Without an installer,
    install jobs wait in the queue for a control plane that has one."""
    registry = JobRegistry(
        [
            PollInventoryHandler(store, readers),
            SshCheckHandler(store, readers),
            WebhookHandler(store),
        ]
    )
    if installer is not None:
        registry.register(InstallHandler(store, installer, _deploy_key(state_dir)))
    if provisioner is not None:
        registry.register(ProvisionHandler(store, provisioner))
    return registry


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningControlPlane:
    """A running control plane; `also_listen(host, port)` serves it on one more address
    until the block ends (a local fleet's gateway, for a fleet registered while it runs)."""

    url: str
    host: str
    port: int
    api: ControlPlaneApi
    workers: WorkerPool
    also_listen: Callable[[str, int], None]


def listening_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on `host`:`port` for uvicorn (`Server.run(sockets=[...])`).

    It is made with proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on
    connections whose socket says TCP, and without it every response whose headers and body
    go out in two writes waits ~40 ms for the client's delayed ACK (Nagle).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise EngineError(
            f"the control plane cannot listen on {host}:{port}: {error.strerror}; "
            "pick another address or port (port 0 picks a free one)"
        ) from None
    sock.listen(backlog)
    return sock


def _uvicorn_config(
    app: Any, forwarded_allow_ips: str, access_log: bool, log_level: str, root_logging: bool
) -> Any:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    return uvicorn.Config(
        app,
        # None: uvicorn adds no handlers of its own, its records reach the root logger's.
        log_config=None if root_logging else LOGGING_CONFIG,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        backlog=2048,
        timeout_keep_alive=30,
    )


@contextmanager
def running_control_plane(
    store: Store,
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    registry: JobRegistry | None = None,
    installer: Installer | None = None,
    provisioner: Provisioner | None = None,
    readers: ReaderFactory = provider_reader,
    workers: int = 2,
    lease_s: float = LEASE_S,
    heartbeat_misses: int = HEARTBEAT_MISSES,
    app_settings: AppSettings | None = None,
    forwarded_allow_ips: str = "127.0.0.1",
    access_log: bool = False,
    log_level: str = "info",
    planner: FleetPlanner | None = None,
    also_listen: Sequence[tuple[str, int]] = (),
    health: HealthSource | None = None,
    drain_s: float | None = None,
    root_logging: bool = False,
    dashboard: bool = False,
    sign_in_links: SignInLinks | None = None,
) -> Iterator[RunningControlPlane]:
    """Serve the control plane on host:port (and on each of `also_listen`) in a thread, with
    job workers and the monitor, for the duration of the block; stop everything cleanly when
    it ends: the workers finish the jobs under way (with `drain_s`, those still running after
    it are handed back to the queue). `health` adds to what /v1/health says; with
    `root_logging`, uvicorn logs through the root logger's handlers, as the service's own
    lines do; with `dashboard`, the dashboard is served at `/` (taking `sign_in_links`)."""
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    sockets = [sock]
    try:
        sockets += [listening_socket(h, p) for h, p in also_listen]
    except EngineError:
        sock.close()
        raise
    app = create_app(
        store,
        app_settings or AppSettings(state_dir=state_dir),
        metrics=last_heartbeat_metrics,
        planner=planner,
        health=health,
        dashboard=dashboard,
        sign_in_links=sign_in_links,
    )
    chosen = registry or default_registry(
        store, state_dir, installer=installer, provisioner=provisioner, readers=readers
    )
    with ExitStack() as stack:
        # The phone-home writer gives up the GIL for every statement it sends; when it wants
        # it back, the event loop thread keeps it for up to a switch interval (5 ms by
        # default), several times per batch. 1 ms keeps a batch from waiting on that.
        stack.callback(sys.setswitchinterval, sys.getswitchinterval())
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # What exists by now (modules, the app, SQLAlchemy's tables) lives as long as the
        # process. Frozen, the collector stops walking it in every full collection, each of
        # which otherwise stalls all requests for tens of milliseconds.
        stack.callback(gc.unfreeze)
        gc.freeze()
        stack.callback(app.state.api.close)
        for opened in sockets:
            stack.callback(opened.close)
        config = (app, forwarded_allow_ips, access_log, log_level, root_logging)
        stack.callback(_serving(config, sockets, f"{host}:{bound}"))
        served = threading.Lock()  # also_listen is called from the service's threads

        def listen_more(more_host: str, more_port: int) -> None:
            sock = listening_socket(more_host, more_port)
            with served:
                stack.callback(sock.close)
                stack.callback(_serving(config, [sock], f"{more_host}:{more_port}"))

        pool = WorkerPool(store, chosen, workers=workers, lease_s=lease_s)
        pool.start()
        stack.callback(pool.stop, drain_s)
        app.state.api.jobs_enqueued = pool.wake
        stack.enter_context(Monitor(store, heartbeat_misses=heartbeat_misses))
        shown = f"[{host}]" if ":" in host else host
        yield RunningControlPlane(
            url=f"http://{shown}:{bound}",
            host=host,
            port=bound,
            api=app.state.api,
            workers=pool,
            also_listen=listen_more,
        )


def _serving(
    config: tuple[Any, ...], sockets: list[socket.socket], where: str
) -> Callable[[], None]:
    """uvicorn serving the app on `sockets` in a thread of its own, started; the function
    that stops it."""
    import uvicorn

    settled = threading.Event()  # started, or ended without starting

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            settled.set()

    server = Server(_uvicorn_config(*config))

    def run() -> None:
        try:
            server.run(sockets=sockets)
        finally:
            settled.set()

    thread = threading.Thread(target=run, name="control-plane", daemon=True)
    thread.start()
    if not settled.wait(START_TIMEOUT_S) or not server.started:
        server.should_exit = True
        raise EngineError(f"the control plane did not start on {where}")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)

    return stop
