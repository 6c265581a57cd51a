"""System tasks: package update, package upgrade and reboot, run in the background.

A task runs a fixed argument list (never a shell string) behind `host_command_prefix`, by
default `nsenter --target 1 --mount --uts --ipc --net --pid --`, so apt works on the host's
files although the agent lives in a container. One task runs at a time (apt holds a lock, and
rebooting in the middle of an upgrade is how servers break). Each task has a record and a log
under <state_dir>/tasks/, written as it runs, so its status and output survive the agent: a
task that was running when the agent stopped is reported as `interrupted`, not as running.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import secrets
import shlex
import signal
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fleet_agent.metrics import timestamp

KEEP_TASKS = 50
LOG_CHUNK_MAX = 1024 * 1024
_APT = ("apt-get", "-q", "-o", "DPkg::Lock::Timeout=300")
_HOST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "APT_LISTCHANGES_FRONTEND": "none",
}


class TaskKind(StrEnum):
    UPDATE = "update"
    UPGRADE = "upgrade"
    REBOOT = "reboot"


class TaskState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


COMMANDS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.UPDATE: (*_APT, "update"),
    TaskKind.UPGRADE: (
        *_APT,
        "-y",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "upgrade",
    ),
    TaskKind.REBOOT: ("systemctl", "reboot"),
}
TIMEOUTS_S = {TaskKind.UPDATE: 900, TaskKind.UPGRADE: 3600, TaskKind.REBOOT: 120}
# Long enough for the 202 answer to reach the caller before the network goes down.
REBOOT_DELAY_S = 1.0


class TaskBusy(Exception):
    """Another task is still running."""


@dataclass(slots=True, kw_only=True)
class Task:
    id: str
    kind: TaskKind
    command: tuple[str, ...]
    state: TaskState
    created_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "command": list(self.command),
            "state": self.state.value,
            "created_at": timestamp(self.created_at),
            "finished_at": timestamp(self.finished_at) if self.finished_at else None,
            "exit_code": self.exit_code,
            "error": self.error,
        }


class TaskRunner:
    """Starts tasks, keeps their records and logs, and answers for them."""

    def __init__(self, state_dir: Path, prefix: tuple[str, ...]) -> None:
        self.folder = state_dir / "tasks"
        self.prefix = prefix
        self._tasks: dict[str, Task] = {}
        self._running: set[asyncio.Task[None]] = set()

    def load(self) -> None:
        """Read the records of earlier tasks; those that were running were interrupted."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in self.folder.glob("*.json"):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                task = Task(
                    id=raw["id"],
                    kind=TaskKind(raw["kind"]),
                    command=tuple(raw["command"]),
                    state=TaskState(raw["state"]),
                    created_at=float(raw["created_at"]),
                    finished_at=raw["finished_at"],
                    exit_code=raw["exit_code"],
                    error=raw["error"],
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged record is skipped, not fatal
            if task.state is TaskState.RUNNING:
                task.state, task.error = TaskState.INTERRUPTED, "the agent stopped while it ran"
                self._save(task)
            self._tasks[task.id] = task

    def all(self) -> list[Task]:
        """Known tasks, newest first."""
        return sorted(self._tasks.values(), key=lambda t: t.created_at, reverse=True)

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def start(self, kind: TaskKind) -> Task:
        """Start a task now (in the running event loop); TaskBusy if one is running."""
        busy = [t for t in self._tasks.values() if t.state is TaskState.RUNNING]
        if busy:
            raise TaskBusy(f"task {busy[0].id} ({busy[0].kind}) is still running")
        task = Task(
            id=secrets.token_hex(8),
            kind=kind,
            command=(*self.prefix, *COMMANDS[kind]),
            state=TaskState.RUNNING,
            created_at=time.time(),
        )
        self._tasks[task.id] = task
        self._save(task)
        self._log_path(task.id).touch(mode=0o600)
        runner = asyncio.get_running_loop().create_task(self._run(task))
        self._running.add(runner)
        runner.add_done_callback(self._running.discard)
        self._prune()
        return task

    def read_log(self, task_id: str, offset: int, limit: int) -> tuple[str, int, bool]:
        """Log text from byte `offset` (at most `limit` bytes), the offset to ask for next, and
        whether that is the end of the log of a finished task."""
        task = self._tasks[task_id]
        finished = task.state is not TaskState.RUNNING  # read first: the log may still grow
        with self._log_path(task_id).open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(offset)
            chunk = log.read(min(limit, LOG_CHUNK_MAX))
        # A character cut in two by `limit` is held back for the next read.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(chunk)
        next_offset = offset + len(chunk) - len(decoder.getstate()[0])
        return text, next_offset, finished and next_offset >= size

    async def close(self) -> None:
        """Stop waiting for running tasks (their processes go on; the record says interrupted
        when the agent next starts, unless they finish first)."""
        for runner in list(self._running):
            runner.cancel()
        for runner in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _run(self, task: Task) -> None:
        if task.kind is TaskKind.REBOOT:
            await asyncio.sleep(REBOOT_DELAY_S)
        with self._log_path(task.id).open("ab") as log:
            log.write(f"$ {shlex.join(task.command)}\n".encode())
            log.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    *task.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=_HOST_ENV,
                    start_new_session=True,
                )
            except OSError as exc:
                self._finish(task, TaskState.FAILED, None, f"could not start: {exc}")
                return
            try:
                code = await asyncio.wait_for(process.wait(), TIMEOUTS_S[task.kind])
            except TimeoutError:
                await _terminate(process)
                self._finish(
                    task, TaskState.FAILED, None, f"timed out after {TIMEOUTS_S[task.kind]} s"
                )
                return
            log.write(f"# exit code {code}\n".encode())
        state = TaskState.SUCCEEDED if code == 0 else TaskState.FAILED
        self._finish(task, state, code, None if code == 0 else f"exit code {code}")

    def _finish(self, task: Task, state: TaskState, code: int | None, error: str | None) -> None:
        task.state, task.exit_code, task.error = state, code, error
        task.finished_at = time.time()
        self._save(task)

    def _log_path(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.log"

    def _save(self, task: Task) -> None:
        record = asdict(task)
        partial = self.folder / f".{task.id}.json.partial"
        partial.write_text(json.dumps(record), encoding="utf-8")
        partial.replace(self.folder / f"{task.id}.json")

    def _prune(self) -> None:
        for task in self.all()[KEEP_TASKS:]:
            if task.state is not TaskState.RUNNING:
                del self._tasks[task.id]
                for path in (self.folder / f"{task.id}.json", self._log_path(task.id)):
                    path.unlink(missing_ok=True)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """TERM the task's process group, then KILL it if it has not gone within 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), 10)
            return
        except TimeoutError:
            continue
