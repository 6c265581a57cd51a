"""Benchmark: what the agent costs on an idle server, and how fast it serves /v1/metrics.

Targets (issue #7): idle CPU <= 1% of one core and RSS <= 60 MB over 60 s.

The agent runs as in production (its own process, TLS, a 5 s CPU window, a heartbeat every
15 s to a control plane on loopback, watching the Docker event stream of a private dockerd),
just on loopback. Then a bounded load (8 clients with kept-alive pinned connections, at most
10 s or 20,000 requests) measures requests per second for /v1/metrics.

    python bench/agent.py [--idle-seconds 60] [--load-seconds 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agent.client import AgentClient  # noqa: E402
from engine.providers.local.dockerd import PrivateDaemon  # noqa: E402
from engine.tokens import ensure_fleet_key  # noqa: E402
from tests.support.agent import FLEET, AgentProcess, Reports, agent_config  # noqa: E402
from tests.support.http import serve  # noqa: E402

CLIENTS = 8
MAX_REQUESTS = 20_000


def idle(agent: AgentProcess, seconds: float) -> tuple[float, float, float, float]:
    """CPU % of one core over `seconds`, the largest and mean RSS and the final USS in MiB."""
    assert agent.process is not None
    process = psutil.Process(agent.process.pid)
    rss: list[int] = []
    before, started = process.cpu_times(), time.monotonic()
    while time.monotonic() - started < seconds:
        rss.append(process.memory_info().rss)
        time.sleep(1.0)
    after, elapsed = process.cpu_times(), time.monotonic() - started
    cpu = (after.user + after.system - before.user - before.system) / elapsed * 100
    uss = process.memory_full_info().uss / 2**20
    return cpu, max(rss) / 2**20, statistics.fmean(rss) / 2**20, uss


def load(agent: AgentProcess, seconds: float) -> tuple[int, int, float, list[float]]:
    """Requests, errors, elapsed seconds and latencies of a bounded load on /v1/metrics."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        with AgentClient(agent.endpoint()) as client:
            while time.monotonic() < deadline:
                with lock:
                    if len(latencies) + errors[0] >= MAX_REQUESTS:
                        return
                started = time.perf_counter()
                response = client.send("GET", "/v1/metrics")
                took = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), errors[0], time.monotonic() - started, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    daemon = PrivateDaemon.start(root / "dockerd")
    agent = None
    try:
        key = ensure_fleet_key(root / "state", FLEET)
        received = Reports(key=key)
        with serve(received.app()) as control_plane:
            config = agent_config(
                root / "agent",
                key,
                docker_url=daemon.url,
                control_plane_url=control_plane,
                heartbeat_interval_s=15.0,
                cpu_window_s=5.0,
            )
            agent = AgentProcess(root / "agent", config, key).start()
            with AgentClient(agent.endpoint()) as client:
                client.metrics()  # waits for the first CPU window; the agent is settled
            cpu, rss_max, rss_mean, uss = idle(agent, args.idle_seconds)
            beats = len(received.heartbeats)
            assert agent.process is not None
            process = psutil.Process(agent.process.pid)
            before = process.cpu_times()
            count, errors, elapsed, latencies = load(agent, args.load_seconds)
            after = process.cpu_times()
            busy = after.user + after.system - before.user - before.system
            rss_after = process.memory_info().rss / 2**20
        latencies.sort()
        print(f"idle over {args.idle_seconds:.0f} s (heartbeats sent: {beats}, schema-valid)")
        print(f"  CPU            {cpu:6.2f} % of one core      (target <= 1 %)")
        mb = rss_max * 1.048576
        print(f"  RSS max        {rss_max:6.1f} MiB = {mb:5.1f} MB (target <= 60 MB)")
        print(f"  RSS mean       {rss_mean:6.1f} MiB")
        print(f"  USS            {uss:6.1f} MiB (its own pages, without shared libraries)")
        print(f"load on /v1/metrics: {CLIENTS} clients, {elapsed:.1f} s, {count} requests")
        print(f"  throughput     {count / elapsed:6.0f} requests/s, {errors} errors")
        print(f"  agent CPU      {busy / max(count, 1) * 1000:6.2f} ms per request (all threads)")
        if latencies:
            p50 = latencies[len(latencies) // 2] * 1000
            p95 = latencies[int(len(latencies) * 0.95)] * 1000
            print(f"  latency        p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        print(f"  RSS after load {rss_after:6.1f} MiB")
        return 0 if received.rejected == [] else 1
    finally:
        if agent is not None:
            agent.stop()
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
