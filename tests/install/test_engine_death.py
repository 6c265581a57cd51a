"""An install process never outlives the engine that started it, and a server is never
installed by two at once: the real install runner in a real parent process, installing a real
server (a golden-image container booted with cloud-init), killed with `kill -9` mid-install.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine.install.model import InstallHost, InstallSettings, to_json
from engine.install.runner import FORKER, install_hosts
from engine.model import DockerInstall, DockerSource, Install
from engine.providers.local.dockerd import PrivateDaemon
from tests.support.cli import ROOT
from tests.support.targets import Target, boot_targets, make_ssh_key, remove_targets
from tests.support.wait import wait_until

# The engine's part, as a process of its own: it runs the install runner and nothing else.
PARENT = """
import json, sys
from pathlib import Path
from engine.install.model import InstallHost, InstallSettings, from_json
from engine.install.runner import install_hosts

data = json.load(sys.stdin)
host = from_json(InstallHost, data["host"])
settings = from_json(InstallSettings, data["settings"])
install_hosts([host], settings, lock_dir=Path(data["lock_dir"]))
"""
# An engine and an install process that starts a child of its own (as ssh or pyinfra's
# subprocesses would be): the engine starts it as the runner does, and prints both pids.
ENGINE = """
import os, subprocess, sys
lifeline, keep = os.pipe()
worker = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], str(lifeline)], pass_fds=(lifeline,),
    start_new_session=True,
)
os.close(lifeline)
print(worker.pid, flush=True)
worker.wait()
"""
WORKER = """
import subprocess, sys
from engine.install.worker import stop_with_parent
stop_with_parent(int(sys.argv[1]))
child = subprocess.Popen(["sleep", "600"])
print(child.pid, flush=True)
child.wait()
"""


@pytest.fixture(scope="module")
def server(
    docker_client: Any, golden_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Target, Path]]:
    key = make_ssh_key(tmp_path_factory.mktemp("ssh"))
    name = f"orphan-{secrets.token_hex(2)}"
    (target,) = boot_targets(
        docker_client, golden_image, [name], key, tmp_path_factory.mktemp("seeds")
    )
    try:
        yield target, key
    finally:
        remove_targets(docker_client, [target])


def _install_processes(parent: psutil.Process) -> list[psutil.Process]:
    """The install forker and the install processes it forked; one that ended meanwhile (gone,
    or a zombie waiting to be reaped, whose command line cannot be read) is not among them."""
    found = []
    for child in parent.children(recursive=True):
        try:
            if "engine.install" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # psutil.ZombieProcess is one
            continue
    return found


def _is_logged_in(worker: psutil.Process, target: Target) -> bool:
    """Whether the install process has its SSH connection to the server open."""
    try:
        connections = worker.net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(
        c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.ip == target.address
        for c in connections
    )


def _is_alive(process: psutil.Process) -> bool:
    """Running, and not a zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group(leader: int) -> list[psutil.Process]:
    """The live processes of the process group `leader` leads: it and all it started."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == leader and _is_alive(process):
                members.append(process)
        except ProcessLookupError:
            continue
    return members


def test_kill_9_of_the_engine_ends_its_installs_and_frees_the_server_for_the_next_run(
    server: tuple[Target, Path], dockerd: PrivateDaemon, tmp_path: Path
) -> None:
    target, key = server
    host: InstallHost = target.host(key)
    settings = InstallSettings(
        install=Install(docker=DockerInstall(source=DockerSource.DISTRO)),
        control_plane=(str(dockerd.subnet.network_address + 1),),
        docker_url=dockerd.url,
    )
    locks = tmp_path / "locks"
    request = {"host": to_json(host), "settings": to_json(settings), "lock_dir": str(locks)}
    # The engine killed below cannot remove its install's folder: it goes to the test's own.
    (tmp_path / "tmp").mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")},
    )
    worker_pid = 0
    try:
        assert parent.stdin is not None
        parent.stdin.write(json.dumps(request).encode())
        parent.stdin.close()
        processes = wait_until(
            lambda: [
                p
                for p in _install_processes(psutil.Process(parent.pid))
                if _is_logged_in(p, target)
            ],
            what="an install process logged in to the server",
        )
        (worker,) = processes
        worker_pid = worker.pid
        (forker,) = [
            p for p in _install_processes(psutil.Process(parent.pid)) if p.pid != worker_pid
        ]

        # While it runs, nobody else installs that server: a second install waits for the
        # lock, and here gives up at once, having done nothing.
        (refused,) = install_hosts([host], settings, lock_dir=locks, timeout_s=0.5)
        assert not refused.ok and refused.operations == ()
        assert refused.error.startswith(f"another install of {host.name} still runs")

        started = [forker, worker, *worker.children(recursive=True), *_group(worker_pid)]
        assert worker_pid in {p.pid for p in _group(worker_pid)}
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_until(
            lambda: not _group(worker_pid) and not [p for p in started if _is_alive(p)],
            timeout_s=5,
            what="the forker, the install process and all it started to end",
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker_pid and _group(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)

    # The resumed run's install gets the server, and finishes.
    (resumed,) = install_hosts([host], settings, lock_dir=locks)
    assert resumed.ok, resumed.error


def test_what_an_install_process_started_ends_with_it_when_the_engine_dies() -> None:
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE, WORKER],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    worker_pid = 0
    try:
        assert engine.stdout is not None
        worker_pid, child_pid = int(engine.stdout.readline()), int(engine.stdout.readline())
        started = [psutil.Process(worker_pid), psutil.Process(child_pid)]
        assert all(_is_alive(p) for p in started)
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait()
        wait_until(
            lambda: not [p for p in started if _is_alive(p)], timeout_s=5, what="both to end"
        )
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
        if worker_pid and _group(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)


def _silent_host(tmp_path: Path, listener: socket.socket) -> InstallHost:
    """A host whose SSH port takes connections and never says a word."""
    key = make_ssh_key(tmp_path)
    return InstallHost(
        name="silent-1",
        address="127.0.0.1",
        port=listener.getsockname()[1],
        user="fleet",
        host_keys=(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFHSbC7FYCCe9vCB2wcjkGSIMZHrHSEFHB7ANagZnlNK",
        ),
        private_key=str(key),
    )


def _pinning_folders(host: InstallHost) -> list[Path]:
    """The install folders in the temporary folder whose known_hosts pins `host`'s key."""
    (key,) = host.host_keys
    return [
        folder
        for folder in Path(tempfile.gettempdir()).glob("engine-install-*")
        if (folder / "known_hosts").is_file() and key in (folder / "known_hosts").read_text()
    ]


def test_an_install_past_its_timeout_is_stopped_and_leaves_no_process(tmp_path: Path) -> None:
    settings = InstallSettings(install=Install(), control_plane=("127.0.0.1",))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        # Pinning a key of this test's own, so that only its install's files can name it.
        host = _silent_host(tmp_path, listener)
        pinned = " ".join(Path(f"{host.private_key}.pub").read_text().split()[:2])
        host = replace(host, host_keys=(pinned,))
        (result,) = install_hosts([host], settings, timeout_s=2)
    assert not result.ok
    assert result.error == "did not finish within 2 s; stopped"
    # Its files went with it: the pinned known_hosts it was connecting with is gone.
    assert _pinning_folders(host) == []
    # The forker is this process's child and serves its next installs; what it forked is gone.
    wait_until(
        lambda: (
            not [
                p
                for p in _install_processes(psutil.Process())
                if p.ppid() != os.getpid() and _is_alive(p)
            ]
        ),
        timeout_s=5,
        what="the stopped install process to end",
    )


def test_an_install_forker_that_died_is_started_again(tmp_path: Path) -> None:
    settings = InstallSettings(install=Install(), control_plane=("127.0.0.1",))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host = _silent_host(tmp_path, listener)
        install_hosts([host], settings, timeout_s=1)
        dead = FORKER.pid()
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        (result,) = install_hosts([host], settings, timeout_s=1)
    # It got as far as the server (which never answers), through a forker of its own.
    assert result.error == "did not finish within 1 s; stopped"
    assert FORKER.pid() not in (None, dead)


# An engine whose install forker cannot start: its pyinfra fails to import.
BROKEN = """
import json, sys
from engine.install.model import InstallHost, InstallSettings, from_json
from engine.install.runner import install_hosts

data = json.load(sys.stdin)
host = from_json(InstallHost, data["host"])
settings = from_json(InstallSettings, data["settings"])
(result,) = install_hosts([host], settings)
print(json.dumps({"ok": result.ok, "error": result.error}))
"""


def test_an_install_forker_that_cannot_start_fails_each_host_saying_why(tmp_path: Path) -> None:
    broken = tmp_path / "site" / "pyinfra"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('pyinfra is broken here')\n")
    settings = InstallSettings(install=Install(), control_plane=("127.0.0.1",))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        request = {"host": to_json(_silent_host(tmp_path, listener)), "settings": to_json(settings)}
        engine = subprocess.run(
            [sys.executable, "-c", BROKEN],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{broken.parent}:{ROOT}"},
            check=True,
        )
    result = json.loads(engine.stdout)
    assert not result["ok"]
    assert result["error"].startswith("the install forker failed: ")
    assert "pyinfra is broken here" in result["error"]


def _forked(exclude: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """The live install processes the forker has forked for this process, but `exclude`."""
    return [
        p
        for p in _install_processes(psutil.Process())
        if p.ppid() != os.getpid() and p.pid not in exclude and _is_alive(p)
    ]


def test_an_install_process_that_is_killed_says_how_it_ended(tmp_path: Path) -> None:
    settings = InstallSettings(install=Install(), control_plane=("127.0.0.1",))
    results: list[Any] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host = _silent_host(tmp_path, listener)
        runner = threading.Thread(
            target=lambda: results.extend(install_hosts([host], settings, timeout_s=60))
        )
        runner.start()
        (install,) = wait_until(_forked, what="the install process")
        install.kill()
        runner.join(timeout=30)
    (result,) = results
    assert not result.ok
    assert result.error.startswith("the install process was killed by SIGKILL without a result")


def test_an_install_that_ends_is_reported_while_one_started_after_it_runs(tmp_path: Path) -> None:
    settings = InstallSettings(install=Install(), control_plane=("127.0.0.1",))
    with socket.create_server(("127.0.0.1", 0)) as closed:
        closed_port = closed.getsockname()[1]
    first: list[Any] = []
    second: list[Any] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        silent = _silent_host(tmp_path, listener)
        refused = replace(silent, name="refused-1", port=closed_port)
        ending = threading.Thread(
            target=lambda: first.extend(install_hosts([refused], settings, timeout_s=60))
        )
        ending.start()
        (refusing,) = wait_until(_forked, what="the first install process")
        running = threading.Thread(
            target=lambda: second.extend(install_hosts([silent], settings, timeout_s=60))
        )
        running.start()
        (waiting,) = wait_until(lambda: _forked(frozenset({refusing.pid})), what="the second")
        # The first ends (its server refuses) and is reported while the second still waits:
        # the second process holds nothing of the first's.
        ending.join(timeout=30)
        assert first and not first[0].ok
        assert "could not connect" in first[0].error
        assert _is_alive(waiting) and not second
        waiting.kill()
        running.join(timeout=30)
