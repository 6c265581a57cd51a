"""Whether a container's death was an OOM kill, from what the kernel and Docker say.

Docker's own word (its `oom` event and State.OOMKilled) comes from a cgroup notification that
containerd arms only once the container's process runs, and it misses in two ways, both seen
with Docker 20.10 under load:

- a process killed in its first moments dies before the notification is armed: Docker never
  learns of the kill (no oom event, State.OOMKilled false, only exit code 137);
- the notification is handled just after the exit: the oom event follows the die and
  State.OOMKilled stays false.

The kernel logs every kill before the process dies, naming the victim's memory cgroup, which
holds the container id:

    oom-kill:constraint=CONSTRAINT_MEMCG,...,task_memcg=/docker/<id>,task=dd,pid=4242,uid=0

so by the time Docker reports the die, the record is there to read (/dev/kmsg, read without
blocking when a death is judged, from where the last read stopped; what was logged before the
agent started is skipped). Where kernel.dmesg_restrict is 1 this needs CAP_SYSLOG, which
engine/install/agent.py gives the agent's container along with the device. Where the log cannot
be read the agent says so once, and Docker's word stands. The kernel writes at most ten such
reports every five seconds, so in a storm of kills some are missing here too.

`OomWitness` keeps the kills no death has accounted for yet: the kernel's until the
container's next death (a kill may be logged before Docker even reports the start), Docker's
oom events until then or until the container starts again (a late one belongs to the life
that ended). It remembers which containers' last death was an OOM kill until they start.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
from pathlib import Path

log = logging.getLogger("fleet_agent")

KMSG = Path("/dev/kmsg")
# /dev/kmsg hands out one record per read and refuses a buffer too small for it.
READ_BYTES = 8192
MAX_REMEMBERED = 1024

# The summary line of an OOM kill (Linux 4.19 and later). task_memcg is the victim's cgroup:
# /docker/<id> (cgroupfs), /system.slice/docker-<id>.scope (systemd), nested with the
# innermost container last.
_KILL = re.compile(r";oom-kill:.*?\btask_memcg=([^,\s]*)")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def killed_container(record: str) -> str | None:
    """The id of the container whose process a kernel log record says was OOM-killed, else
    None. `killed_container("6,1,2,-;oom-kill:...,task_memcg=/docker/<id>,task=dd")` is id."""
    found = _KILL.search(record)
    if found is None:
        return None
    ids = _CONTAINER_ID.findall(found.group(1))
    return ids[-1] if ids else None


class KernelOomLog:
    """The kernel log from now on, as the containers it says had a process OOM-killed."""

    def __init__(self, path: Path = KMSG) -> None:
        self.path = path
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            self._unreadable(exc)

    def new_kills(self) -> list[str]:
        """The containers of the kills logged since the last call, oldest first."""
        kills: list[str] = []
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                break  # nothing new
            except BrokenPipeError:
                continue  # the ring overwrote records not read yet; reading resumes past them
            except OSError as exc:
                self.close()
                self._unreadable(exc)
                break
            if not chunk:
                break
            for record in chunk.decode("utf-8", "replace").splitlines():
                container_id = killed_container(record)
                if container_id is not None:
                    kills.append(container_id)
        return kills

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _unreadable(self, exc: OSError) -> None:
        log.warning(
            "cannot read the kernel log at %s (%s): an OOM kill Docker misses is reported as "
            "no OOM kill",
            self.path,
            exc.strerror or exc,
        )


def _remember(ids: collections.OrderedDict[str, None], container_id: str) -> None:
    ids[container_id] = None
    ids.move_to_end(container_id)
    if len(ids) > MAX_REMEMBERED:
        ids.popitem(last=False)


class OomWitness:
    """OOM kills per container, from the kernel's log and Docker's events (module docstring).
    Safe to use from any thread."""

    def __init__(self, kernel_log: Path = KMSG) -> None:
        self._kernel = KernelOomLog(kernel_log)
        self._lock = threading.Lock()
        self._kernel_kills: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._docker_ooms: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._oom_deaths: collections.OrderedDict[str, None] = collections.OrderedDict()

    def saw(self, action: str, container_id: str) -> None:
        """Docker reported `action` ("start" or "oom") for the container."""
        with self._lock:
            if action == "oom":
                _remember(self._docker_ooms, container_id)
            elif action == "start":
                self._docker_ooms.pop(container_id, None)
                self._oom_deaths.pop(container_id, None)

    def death_was_oom(self, container_id: str) -> bool:
        """Whether a kill no earlier death accounted for explains the container's death; if
        so it now accounts for this one, and `last_death_was_oom` says so until a start."""
        with self._lock:
            for killed in self._kernel.new_kills():
                _remember(self._kernel_kills, killed)
            found = False
            for kills in (self._kernel_kills, self._docker_ooms):
                if container_id in kills:
                    del kills[container_id]
                    found = True
            if found:
                _remember(self._oom_deaths, container_id)
            return found

    def last_death_was_oom(self, container_id: str) -> bool:
        """Whether the container's last death was judged an OOM kill (and it has not started
        since)."""
        with self._lock:
            return container_id in self._oom_deaths

    def close(self) -> None:
        with self._lock:
            self._kernel.close()
