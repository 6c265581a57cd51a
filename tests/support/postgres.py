"""A throwaway PostgreSQL cluster for tests: initdb + postgres on a free loopback port.

    with postgres_cluster() as cluster:          # or the session fixture `postgres`
        url = cluster.create_database()          # a fresh, empty database per test
        # postgresql://engine@127.0.0.1:PORT/test_1_ab12cd

The cluster lives in its own temp dir with its own unix socket dir, trusts local
connections (it listens on 127.0.0.1 only), and is stopped by its process id afterwards.
PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` system user
(Debian's postgresql package creates it), otherwise as the current user.
"""

from __future__ import annotations

import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "engine"
_START_TIMEOUT_S = 30


@dataclass
class Cluster:
    """A running cluster; `url` reaches its `postgres` database as the superuser."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"test_{next(self._counter)}_{secrets.token_hex(3)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str) -> str:
        """Run one statement with psycopg (autocommit) and return the first value, if any."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            cursor = connection.execute(sql)  # type: ignore[call-overload]
            row = cursor.fetchone() if cursor.description else None
            return "" if row is None else str(row[0])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as() -> tuple[int, int] | None:
    if os.getuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """Start a fresh cluster and yield it; stop it and delete its files on exit."""
    initdb, postgres = _tool("initdb"), _tool("postgres")
    root = Path(tempfile.mkdtemp(prefix="engine-pg-"))
    owner = _run_as()
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if owner is not None:
        os.chown(root, *owner)
        os.chown(sockets, *owner)
    user = {"user": owner[0], "group": owner[1]} if owner else {}
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [initdb, "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **user,  # type: ignore[arg-type]
        )
        log_path = root / "postgres.log"
        log_path.touch()
        if owner is not None:
            os.chown(log_path, *owner)
        # A port picked here can be taken by someone else before postgres binds it: try again.
        for attempt in range(3):
            port = _free_port()
            process = _start(postgres, data, sockets, port, log_path, user)
            cluster = Cluster(port=port, root=root, process=process)
            try:
                _wait_until_ready(cluster, log_path)
                break
            except RuntimeError:
                if attempt == 2 or "could not bind" not in log_path.read_text(errors="replace"):
                    raise
        yield cluster
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def _tool(name: str) -> str:
    """Where a PostgreSQL server program is: on PATH or in this environment's bin (where
    .ci/setup links Debian's /usr/lib/postgresql/<version>/bin), its real path, which the
    `postgres` user can reach even when the environment lives in a private directory."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise RuntimeError(f"{name} not found; run `bash .ci/setup` (Debian's postgresql package)")
    return os.path.realpath(found)


def _start(
    program: str, data: Path, sockets: Path, port: int, log: Path, user: dict[str, int]
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                program,
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            **user,  # type: ignore[arg-type]
        )


def _wait_until_ready(cluster: Cluster, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if cluster.process.poll() is not None:
            raise RuntimeError(f"postgres exited at start:\n{log.read_text(errors='replace')}")
        try:
            with psycopg.connect(cluster.url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Immediate shutdown (SIGQUIT) of our postmaster by its pid: its data is thrown away, so
    no checkpoint is worth waiting for. SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the whole test session."""
    with postgres_cluster() as cluster:
        yield cluster
