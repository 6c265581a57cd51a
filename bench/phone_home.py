"""Benchmark: verified phone-homes per second, and their latency, on SQLite and PostgreSQL.

Target (issue #5): >= 1,000 verified phone-homes a second with p99 <= 50 ms on a 2-core
machine. Each request is a complete phone-home: schema check, token MAC, instance and
source-address checks against the server's record, and the atomic accept (token spent,
server updated, transition, event, install job), group-committed with the phone-homes that
arrive at the same time. Every server phones home once with its own token; afterwards the
store is read back to check each was recorded exactly once.

The control plane runs in a child process (uvicorn on 127.0.0.1, port 0); this process is
the load generator: keep-alive HTTP/1.1 connections on loopback with pre-built requests, so
the client costs little. Bounded: N requests per backend, and it stops by itself.

    python bench/phone_home.py [--servers 3000] [--connections 32]
                               [--backend sqlite|postgresql|both] [--repeat N]

The machine is shared: each line ends with the load average, so a slow run on a busy
machine shows as such. To see where the server's time goes, attach py-spy to its process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _serve(url: str, state_dir: str, ready: Any, stop: Any) -> None:
    from engine.controlplane.runner import running_control_plane
    from engine.state.store import open_store

    with open_store(url) as store, running_control_plane(store, Path(state_dir), workers=0) as cp:
        ready.put(cp.url)
        stop.wait(600)


def _prepare(url: str, state_dir: Path, count: int) -> list[tuple[bytes, str]]:
    """Register a fleet of `count` booting servers; one ready request per server."""
    import dataclasses

    from engine.controlplane.fleets import register_fleet
    from engine.model import Stage
    from engine.spec import load_spec
    from engine.state import ServerRecord
    from engine.state.store import open_store
    from engine.tokens import ensure_fleet_key
    from tests.controlplane.conftest import body as phone_home_body
    from tests.support.tokens import mint_stored

    fleet = load_spec(ROOT / "specs" / "hetzner.yaml")
    fleet = dataclasses.replace(fleet, name="bench")
    key = ensure_fleet_key(state_dir, "bench")
    assert key is not None
    requests = []
    with open_store(url) as store:
        register_fleet(store, fleet)
        for n in range(count):
            name, address = f"web-{n + 1}", f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}"
            store.servers.save(
                ServerRecord(
                    fleet="bench",
                    name=name,
                    group="web",
                    provider="hcloud",
                    provider_id=str(100000 + n),
                    ipv4=address,
                    stage=Stage.BOOTING,
                )
            )
            token = mint_stored(store, key, fleet="bench", server=name, ttl_s=3600)
            body = json.dumps(phone_home_body("bench", name, str(100000 + n), address)).encode()
            head = (
                "POST /v1/phone-home HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nX-Forwarded-For: {address}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            requests.append((head.encode() + body, name))
    return requests


async def _load(base: str, requests: list[tuple[bytes, str]], connections: int) -> Any:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while queue:
            raw, _name = queue.pop()
            started = time.perf_counter()
            writer.write(raw)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started, latencies, statuses


def run(backend: str, url: str, servers: int, connections: int) -> None:
    from engine.state.store import open_store

    with tempfile.TemporaryDirectory(prefix="bench-phone-home-") as tmp:
        state_dir = Path(tmp)
        url = url or f"sqlite:///{state_dir / 'state.db'}"
        requests = _prepare(url, state_dir, servers)
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Queue(), context.Event()
        child = context.Process(target=_serve, args=(url, str(state_dir), ready, stop))
        child.start()
        try:
            base = ready.get(timeout=60)
            elapsed, latencies, statuses = asyncio.run(_load(base, requests, connections))
        finally:
            stop.set()
            child.join(30)
            if child.is_alive():
                child.kill()
        with open_store(url) as store:
            phoned = sum(1 for r in store.servers.all("bench") if r.stage == "phoned_home")
            installs = len({j.server for j in store.jobs.all("bench", kind="install")})
            moves = [t for t in store.servers.transitions("bench") if t.stage == "phoned_home"]
            once = len(moves) == len({t.server for t in moves}) == phoned
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    print(
        f"{backend:<10} {len(latencies)} phone-homes with {connections} connections: "
        f"{len(latencies) / elapsed:,.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"statuses {statuses}; recorded {phoned} phoned_home, {installs} install jobs"
        f"{', each once' if once else ', SOME TWICE'}; load average {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for _ in range(args.repeat):
        if args.backend in ("sqlite", "both"):
            run("sqlite", "", args.servers, args.connections)
    if args.backend in ("postgresql", "both"):
        from tests.support.postgres import postgres_cluster

        with postgres_cluster() as cluster:
            for _ in range(args.repeat):
                run("postgresql", cluster.create_database(), args.servers, args.connections)


if __name__ == "__main__":
    main()
