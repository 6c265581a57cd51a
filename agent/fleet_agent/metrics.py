"""Host metrics, right on an idle host.

CPU use is a rate, so it needs two readings: a sampler reads the per-core CPU times every
`cpu_window_s` and reports the use over the last complete window (busy ticks over all ticks,
psutil's own definition). A reading taken on its own is never reported; until the first
window closes (a quarter of a second after start: the first heartbeat waits for it, and that
heartbeat is what makes a freshly installed server ready) callers wait for it. This avoids the
failure of agents that call `psutil.cpu_percent()` once and report its meaningless first
value.

Memory `used` is total minus available (what new work cannot have), so page cache is not
counted as used. Inside the agent's container (host PID and network namespaces) /proc shows
the host; the mount table is read from the host's PID 1 and each file system is measured
through `host_root`, where the host's root is mounted read-only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

FIRST_WINDOW_S = 0.25
# Container ends of veth pairs and loopback say nothing about the host's own traffic.
_SKIPPED_INTERFACE_PREFIXES = ("lo", "veth")


def timestamp(epoch: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-11-02T10:15:30.123Z."""
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def busy_and_total(times: Any) -> tuple[float, float]:
    """Busy and total CPU seconds in one psutil cpu_times reading (iowait counts as idle;
    guest time is already inside user time, so it is not added twice)."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def busy_percent(before: Any, after: Any) -> float:
    """CPU use between two readings of one CPU, in percent (0 when the counters did not move)."""
    busy_a, total_a = busy_and_total(before)
    busy_b, total_b = busy_and_total(after)
    elapsed = total_b - total_a
    if elapsed <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * (busy_b - busy_a) / elapsed)), 1)


def overall_percent(before: Sequence[Any], after: Sequence[Any]) -> float:
    """CPU use of all cores together between two per-core readings, in percent."""
    busy = total = 0.0
    for a, b in zip(before, after, strict=True):
        busy_a, total_a = busy_and_total(a)
        busy_b, total_b = busy_and_total(b)
        busy += busy_b - busy_a
        total += total_b - total_a
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 1)


@dataclass(frozen=True, slots=True)
class CpuWindow:
    start: float
    end: float
    percent: float
    per_core: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "count": len(self.per_core),
            "percent": self.percent,
            "per_core": list(self.per_core),
            "window_s": round(self.end - self.start, 3),
            "window_start": timestamp(self.start),
            "window_end": timestamp(self.end),
        }


class CpuSampler:
    """Reads per-core CPU times every window and keeps the use over the last one."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._latest: CpuWindow | None = None
        self._ready = asyncio.Event()

    async def run(self) -> None:
        """Sample until cancelled; the first window is short so metrics are soon available."""
        started, before = time.time(), psutil.cpu_times(percpu=True)
        delay = min(FIRST_WINDOW_S, self.window_s)
        while True:
            await asyncio.sleep(delay)
            ended, after = time.time(), psutil.cpu_times(percpu=True)
            self._latest = CpuWindow(
                start=started,
                end=ended,
                percent=overall_percent(before, after),
                per_core=tuple(busy_percent(a, b) for a, b in zip(before, after, strict=True)),
            )
            self._ready.set()
            started, before, delay = ended, after, self.window_s

    async def latest(self) -> CpuWindow:
        """The last complete window, waiting for the first one if none has closed yet."""
        await self._ready.wait()
        assert self._latest is not None
        return self._latest


def _unescape(field: str) -> str:
    """Mount points in /proc/*/mounts have spaces, tabs, newlines and backslashes octal-escaped."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def host_partitions(proc: Path) -> list[tuple[str, str, str]]:
    """(device, mount point, fs type) of the host's physical file systems.

    The same rule as psutil.disk_partitions(): file systems the kernel lists without `nodev`,
    but read from PID 1's mount table so a containerised agent sees the host's mounts.
    """
    physical = set()
    for line in (proc / "filesystems").read_text().splitlines():
        if not line.startswith("nodev"):
            physical.add(line.strip())
    physical.add("zfs")
    partitions = []
    for line in (proc / "1" / "mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mountpoint, fstype = fields[0], _unescape(fields[1]), fields[2]
        if device and device != "none" and fstype in physical:
            partitions.append((device, mountpoint, fstype))
    return partitions


def distinct_file_systems(partitions: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """One entry per device, at its shortest mount point: bind mounts (Docker binds its data
    root onto itself) and submounts of the same file system are not more disks."""
    best: dict[str, tuple[str, str, str]] = {}
    for partition in partitions:
        device, mountpoint, _ = partition
        if device not in best or len(mountpoint) < len(best[device][1]):
            best[device] = partition
    return sorted(best.values(), key=lambda p: p[1])


def _disks(host_root: Path) -> list[dict[str, Any]]:
    # A file bind-mounted over another (resolv.conf in a container) is no disk.
    partitions = [
        p
        for p in host_partitions(Path(psutil.PROCFS_PATH))
        if (host_root / p[1].lstrip("/")).is_dir()
    ]
    disks = []
    for device, mountpoint, fstype in distinct_file_systems(partitions):
        try:
            usage = psutil.disk_usage(str(host_root / mountpoint.lstrip("/")))
        except OSError:
            continue  # gone, or not visible through host_root; the others still count
        disks.append(
            {
                "mountpoint": mountpoint,
                "device": device,
                "fstype": fstype,
                "total_bytes": usage.total,
                "used_bytes": usage.used,
                "free_bytes": usage.free,
                "percent": usage.percent,
            }
        )
    return disks


def _network() -> list[dict[str, Any]]:
    interfaces = []
    for name, c in sorted(psutil.net_io_counters(pernic=True).items()):
        if name.startswith(_SKIPPED_INTERFACE_PREFIXES):
            continue
        interfaces.append(
            {
                "interface": name,
                "bytes_sent": c.bytes_sent,
                "bytes_recv": c.bytes_recv,
                "packets_sent": c.packets_sent,
                "packets_recv": c.packets_recv,
                "errors_in": c.errin,
                "errors_out": c.errout,
                "drops_in": c.dropin,
                "drops_out": c.dropout,
            }
        )
    return interfaces


def collect_metrics(cpu: CpuWindow, host_root: Path) -> dict[str, Any]:
    """A snapshot of the host (blocking: reads /proc and statvfs; run it in a thread)."""
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    load1, load5, load15 = os.getloadavg()
    now = time.time()
    boot = psutil.boot_time()
    used = memory.total - memory.available
    return {
        "collected_at": timestamp(now),
        "cpu": cpu.to_json(),
        # The kernel keeps load in fixed point with two meaningful decimals.
        "load": {"1m": round(load1, 2), "5m": round(load5, 2), "15m": round(load15, 2)},
        "memory": {
            "total_bytes": memory.total,
            "available_bytes": memory.available,
            "used_bytes": used,
            "free_bytes": memory.free,
            "percent": round(100.0 * used / memory.total, 1) if memory.total else 0.0,
        },
        "swap": {
            "total_bytes": swap.total,
            "used_bytes": swap.used,
            "free_bytes": swap.free,
            "percent": swap.percent,
        },
        "disks": _disks(host_root),
        "network": _network(),
        "boot_time": timestamp(boot),
        "uptime_s": round(now - boot, 1),
    }
