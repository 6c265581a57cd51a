"""A store filled as a served fleet leaves it, for the dashboard's tests and benchmark: the
demo spec registered, servers ready with their agents' last heartbeats, an hour of metric
history and a few events."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from typing import Any

import httpx

from engine.controlplane.fleets import register_fleet
from engine.model import Stage
from engine.state import AgentReport, FleetSpec, ServerRecord
from engine.state.store import Store
from tests.support.cli import ROOT
from tests.support.fleets import example_fleet

FLEET = "demo"
APP_VERSION = "3f2a9c1d0b4e"


def container_list(*running: tuple[str, str]) -> dict[str, Any]:
    """A heartbeat's `containers` (as the agent sends it) listing the agent's own container
    and each (name, image) in `running`, all running."""
    items = [
        {
            "id": f"{n:064x}",
            "name": name,
            "image": image,
            "state": "running",
            "status": "Up 2 hours",
        }
        for n, (name, image) in enumerate((("fleet-agent", "fleet-agent:1"), *running))
    ]
    return {
        **dict.fromkeys(("paused", "restarting", "exited", "created", "dead"), 0),
        "total": len(items),
        "running": len(items),
        "items": items,
        "truncated": False,
    }


def fill_store(store: Store, *, servers: int = 3, history_min: int = 60) -> None:
    """Register the demo fleet and its spec with `servers` ready servers web-1..web-N, each
    running its agent's container; the first three also run app `web` (version APP_VERSION)
    and get `history_min` minutes of metrics (CPU a wave, memory rising, disk
    flat, network in a wave up to 35 kB/s, out a flat 4 kB/s)."""
    register_fleet(store, example_fleet("demo"))
    text = (ROOT / "specs" / "demo.yaml").read_text()
    store.specs.save(
        FleetSpec(
            fleet=FLEET,
            text=text,
            digest=hashlib.sha256(text.encode()).hexdigest(),
            updated_at=dt.datetime.now(dt.UTC),
            updated_by="ops",
        )
    )
    now = dt.datetime.now(dt.UTC)
    store.servers.save_all(
        ServerRecord(
            fleet=FLEET,
            name=f"web-{n}",
            group="web",
            provider="local",
            provider_id=f"c0ffee{n:06d}",
            location="local",
            server_type="small",
            stage=Stage.READY,
            ipv4=f"10.{n // 65536}.{n // 256 % 256}.{n % 256}",
            created_at=now - dt.timedelta(hours=2),
        )
        for n in range(1, servers + 1)
    )
    for n in range(1, servers + 1):
        store.agents.record_heartbeat(
            AgentReport(
                fleet=FLEET,
                server=f"web-{n}",
                last_heartbeat_at=now,
                metrics={"cpu": {"percent": 12.0 + n % 50}, "memory": {"percent": 41.0}},
                containers=container_list(("web-" + APP_VERSION, "nginx:1.27"))
                if n <= 3
                else container_list(),
            )
        )
    for n in range(1, min(servers, 3) + 1):
        for minute in range(history_min, 0, -1):
            store.metrics.record(
                FLEET,
                f"web-{n}",
                now - dt.timedelta(minutes=minute),
                {
                    "cpu": 40 + 30 * math.sin(minute / 8 + n),
                    "memory": 30 + (history_min - minute) / 3,
                    "disk": 55.0,
                    "rx": 20_000 + 15_000 * math.cos(minute / 5),
                    "tx": 4_000.0,
                },
            )
        store.apps.set_deployed(FLEET, "web", f"web-{n}", APP_VERSION)
        store.events.record(FLEET, "server.ready", f"web-{n} is ready", server=f"web-{n}")


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    """Sign `client` (with the dashboard's base URL) in with `key` as the sign-in form does."""
    form = client.get("/sign-in")
    token = re.search(r'name="token" value="([0-9a-f]+)"', form.text)
    assert token is not None, form.text
    return client.post("/sign-in", data={"token": token[1], "key": key})
