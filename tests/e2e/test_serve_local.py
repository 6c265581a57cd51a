"""`engine serve` alone keeps a local fleet: no `engine up` runs at any point. Its reconcile
loop (repair mode, a short interval) makes the servers, which phone home to it and are
installed by its workers; a server stopped with `docker stop` is reported as drift and
started and installed again, its drift alert fired and resolved to a webhook receiver with a
valid signature; SIGTERM stops it cleanly. Real containers, real cloud-init,
real SSH, the real agent, in this session's private Docker engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from engine.model import Stage
from engine.providers.local.dockerd import PrivateDaemon
from engine.state.store import open_store
from tests.support.cli import ROOT, engine
from tests.support.http import serve as serve_app
from tests.support.wait import wait_until
from tests.support.webhook import SECRET, Receiver

SPEC = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "served",
    "provider": {"name": "local"},
    "defaults": {"server_type": "small", "image": "debian-12", "locations": ["local"]},
    "groups": [{"name": "web", "count": 2}],
    "install": {
        "docker": {"source": "distro"},
        "system": {"unattended_upgrades": False},
        "agent": {"heartbeat": "5s"},
    },
    "reconcile": {"interval": "10s", "mode": "repair"},
}


def test_serve_alone_makes_installs_watches_and_repairs_a_local_fleet(
    tmp_path: Path, dockerd: PrivateDaemon, golden_image: str, docker_client: Any
) -> None:
    receiver = Receiver()
    with serve_app(receiver.app()) as hooks:
        _serve_alone(tmp_path, dockerd, docker_client, receiver, f"{hooks}/hook")


def _serve_alone(
    tmp_path: Path, dockerd: PrivateDaemon, docker_client: Any, receiver: Receiver, hook: str
) -> None:
    spec, state_dir = tmp_path / "served.yaml", tmp_path / "state"
    alerting = {
        "alerts": [{"name": "drifted", "when": "drift"}, {"name": "down", "when": "unhealthy"}],
        "webhooks": [{"url": hook, "secret_env": "HOOK_SECRET"}],
    }
    spec.write_text(yaml.safe_dump({**SPEC, **alerting}, sort_keys=False))
    env = {
        "HOOK_SECRET": SECRET,
        "DOCKER_HOST": dockerd.url,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "engine", "serve", "--spec", str(spec)]
    argv += ["--listen", "127.0.0.1:0", "--state-dir", str(state_dir), "--drain", "5"]
    log = (tmp_path / "serve.log").open("w+")

    def log_text() -> str:
        return (tmp_path / "serve.log").read_text()

    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        said = process.stdout.readline()
        assert said.startswith("control plane listening on http://127.0.0.1:"), said
        url = said.split()[4]
        with open_store(f"sqlite:///{state_dir / 'state.db'}") as store:

            def stages() -> dict[str, Stage]:
                return {r.name: r.stage for r in store.servers.all("served")}

            wait_until(
                lambda: stages() == {"web-1": Stage.READY, "web-2": Stage.READY},
                timeout_s=900,
                what="both servers ready, made and installed by engine serve alone",
            )
            assert httpx.get(f"{url}/v1/health").json() == {"status": "ok", "degraded": []}

            def said(alert: str, server: str, after: int) -> list[str]:
                sent = receiver.bodies()
                assert len(sent) == len(receiver.got)  # every one signed with the secret
                return [
                    b["state"]
                    for b in sent
                    if b["event_id"] > after and (b["alert"], b["subject"]) == (alert, server)
                ]

            def settled() -> bool:
                # The fleet's creation was drift too: its alert resolved before the next one.
                states = said("drifted", "", 0)
                return states.count("firing") == states.count("resolved")

            wait_until(settled, timeout_s=120, what="the drift of the fleet's creation resolved")
            seen = max(e.id for e in store.events.all("served"))
            docker_client.containers.get("served-web-2").stop()

            def drift() -> list[Any]:
                return [
                    e
                    for e in store.events.all("served", after_id=seen)
                    if e.kind == "reconcile.drift"
                ]

            (first, *_) = wait_until(drift, timeout_s=60, what="the stop reported as drift")
            assert {k: first.data["changes"][0][k] for k in ("server", "action")} == {
                "server": "web-2",
                "action": "power_on",
            }
            wait_until(
                lambda: (
                    docker_client.containers.get("served-web-2").status == "running"
                    and stages() == {"web-1": Stage.READY, "web-2": Stage.READY}
                    and any(
                        e.kind == "install.succeeded" and e.server == "web-2"
                        for e in store.events.all("served", after_id=seen)
                    )
                ),
                timeout_s=600,
                what="web-2 running and installed again without anyone acting",
            )
            kinds = [e.kind for e in store.events.all("served", after_id=seen)]
            assert "reconcile.repaired" in kinds

            wait_until(
                lambda: said("drifted", "", seen) == ["firing", "resolved"],
                timeout_s=120,
                what="the drift alert fired and resolved at the webhook",
            )
            # The agent silenced on a running server: its alert within 60 s, the reinstall
            # the loop plans for a silent agent, and the alert resolved once it reports again.
            seen = max(e.id for e in store.events.all("served"))
            web1 = docker_client.containers.get("served-web-1")
            assert web1.exec_run(["docker", "stop", "fleet-agent"]).exit_code == 0
            wait_until(
                lambda: said("down", "web-1", seen)[:1] == ["firing"],
                timeout_s=60,
                what="the silent agent's alert at the webhook",
            )
            wait_until(
                lambda: said("down", "web-1", seen) == ["firing", "resolved"],
                timeout_s=600,
                what="the agent back after the reinstall, and the alert resolved",
            )
            wait_until(
                lambda: stages() == {"web-1": Stage.READY, "web-2": Stage.READY},
                timeout_s=300,
                what="web-1 ready again",
            )
            # `engine destroy` while the service repairs the fleet: the service stops serving
            # it (the spec is gone from the store) instead of making it again.
            destroyed = engine(
                "destroy", str(spec), "--yes", "--state-dir", str(state_dir), env=env, timeout=300
            )
            assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
            wait_until(
                lambda: "no longer serving served: its spec is gone" in log_text(),
                timeout_s=60,
                what="the service to stop serving the destroyed fleet",
            )
            assert stages() == {}
            assert docker_client.containers.list(all=True, filters={"label": "fleet=served"}) == []
    finally:
        process.send_signal(signal.SIGTERM)
        returned = process.wait(timeout=120)
        log.seek(0)
        lines = log.read().splitlines()
        log.close()
        for container in docker_client.containers.list(all=True, filters={"label": "fleet=served"}):
            container.remove(force=True)
    assert returned == 0
    logged = [json.loads(line) for line in lines]  # every line a JSON object
    assert any(line["message"].startswith("stopping") for line in logged)
    assert not any("Traceback" in line for line in lines)
