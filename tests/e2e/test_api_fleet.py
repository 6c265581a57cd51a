"""A local fleet run through the fleet API alone: `engine serve` as its own process, real
containers in this session's private Docker engine, and nothing but HTTP and API keys:
register the spec, plan, apply, scale a group to 4 and back to 3, reboot a server; a plan
made stale by a change of the spec or of the world is refused with 409. Then the dashboard in
headless Chromium: sign in, the three ready servers, a server's charts, a reboot from the page
seen live (screenshots under the test's tmp dir)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engine.model import LABEL_FLEET
from engine.providers.local.dockerd import PrivateDaemon
from engine.state.store import open_store
from tests.support.browser import chromium
from tests.support.cli import ROOT, engine
from tests.support.wait import wait_until

SPEC = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "api",
    "provider": {"name": "local"},
    "defaults": {"server_type": "small", "image": "debian-12", "locations": ["local"]},
    "groups": [{"name": "web", "count": 3}],
    "install": {"docker": {"source": "distro"}, "system": {"unattended_upgrades": False}},
    "limits": {"servers": 4},
}
RUN_S = 600
AT_ONCE = 6  # PATCHes sent at once (3 were enough to make one fail)


@dataclass
class Api:
    url: str
    client: httpx.Client
    apply_key: str
    read_key: str
    root: Path
    env: dict[str, str]

    def call(self, method: str, path: str, *, key: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key or self.apply_key}", **kw.pop("headers", {})}
        return self.client.request(method, f"{self.url}/v1/fleets/api{path}", headers=headers, **kw)

    def put_spec(self, spec: dict[str, Any]) -> httpx.Response:
        return self.call(
            "PUT",
            "",
            content=yaml.safe_dump(spec, sort_keys=False).encode(),
            headers={"Content-Type": "application/yaml"},
        )

    def plan(self) -> dict[str, Any]:
        made = self.call("POST", "/plans")
        assert made.status_code == 201, made.text
        return dict(made.json())

    def finished(self, run_id: str) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            run = self.call("GET", f"/runs/{run_id}", key=self.read_key).json()
            return run if run["status"] not in ("queued", "running") else None

        run = wait_until(ended, timeout_s=RUN_S, what=f"run {run_id} to end")
        assert run["status"] == "succeeded", (run["error"], run["progress"][-5:])
        return dict(run)

    def servers(self) -> dict[str, str]:
        listed = self.call("GET", "/servers", key=self.read_key).json()["servers"]
        return {s["name"]: s["stage"] for s in listed}


def _containers(client: Any) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL_FLEET}=api"})
    return {c.name: c for c in found}


@pytest.fixture(scope="module")
def api(
    dockerd: PrivateDaemon, golden_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    state = ("--state-dir", str(root / "state"))
    env = {"DOCKER_HOST": dockerd.url, "HOME": os.environ.get("HOME", "/root")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    keys = []
    for name, scope in (("deployer", "apply"), ("dashboard", "read")):
        made = engine("apikey", "create", name, "--scope", scope, *state, cwd=root, env=env)
        assert made.returncode == 0, made.stderr
        keys.append(made.stdout.strip())
    log = (root / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--listen", "127.0.0.1:0", *state],
        cwd=root,
        env={**env, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        said = process.stdout.readline()
        assert said.startswith("control plane listening on http://127.0.0.1:"), said
        with httpx.Client(timeout=120) as client:
            yield Api(said.split()[4], client, keys[0], keys[1], root, env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
        spec = root / "api.yaml"
        spec.write_text(yaml.safe_dump(SPEC))
        engine("destroy", str(spec), "--yes", *state, cwd=root, env=env, timeout=300)
    for secret in keys:  # no key in what the control plane logged
        assert secret.split("_")[-1] not in (root / "serve.log").read_text()


def test_a_bad_spec_gets_422_and_a_read_key_403(api: Api) -> None:
    bad = {**SPEC, "groups": [{"name": "web", "count": "three"}]}
    refused = api.put_spec(bad)
    assert refused.status_code == 422
    (error,) = refused.json()["error"]["errors"]
    line = yaml.safe_dump(bad, sort_keys=False).splitlines().index("  count: three") + 1
    assert (error["path"], error["line"]) == ("groups[0].count", line)
    assert error["message"] and error["hint"] and error["column"] > 0
    read_only = api.call(
        "PUT",
        "",
        key=api.read_key,
        content=yaml.safe_dump(SPEC).encode(),
        headers={"Content-Type": "application/yaml"},
    )
    assert read_only.status_code == 403
    assert api.call("GET", "", key=api.read_key).status_code == 404  # nothing was stored


def test_register_plan_apply_through_the_api_alone(api: Api, docker_client: Any) -> None:
    assert api.put_spec(SPEC).status_code == 201
    plan = api.plan()
    changes = [(c["action"], c["server"]) for c in plan["plan"]["changes"]]
    assert changes == [("create", "web-1"), ("create", "web-2"), ("create", "web-3")]
    assert api.call("POST", f"/plans/{plan['id']}/apply", key=api.read_key).status_code == 403
    started = api.call("POST", f"/plans/{plan['id']}/apply")
    assert started.status_code == 202, started.text
    run = api.finished(started.json()["id"])
    assert sorted(run["result"]["ready"]) == ["web-1", "web-2", "web-3"]
    for steps in run["result"]["timings"]["servers"].values():
        assert all(steps[s] is not None for s in ("create", "boot", "install", "agent"))
    assert {line["event"] for line in run["progress"]} >= {"plan", "stage", "done"}
    assert api.servers() == dict.fromkeys(["web-1", "web-2", "web-3"], "ready")
    assert sorted(_containers(docker_client)) == ["api-web-1", "api-web-2", "api-web-3"]
    events = api.call("GET", "/events?limit=1000", key=api.read_key).json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds.index("run.queued") < kinds.index("run.started") < kinds.index("run.succeeded")
    # The same plan again: the world changed since (three servers now), so it is refused.
    again = api.call("POST", f"/plans/{plan['id']}/apply")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "plan_stale")


def test_scale_to_4_and_back_to_3_and_a_plan_made_before_is_stale(
    api: Api, docker_client: Any
) -> None:
    before = api.plan()
    assert before["plan"]["changes"] == []
    up = api.call("PATCH", "/groups/web", json={"count": 4})
    assert up.status_code == 202, up.text
    assert [(c["action"], c["server"]) for c in up.json()["plan"]["plan"]["changes"]] == [
        ("create", "web-4")
    ]
    api.finished(up.json()["run"]["id"])
    assert api.servers() == dict.fromkeys(["web-1", "web-2", "web-3", "web-4"], "ready")
    stale = api.call("POST", f"/plans/{before['id']}/apply")
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "plan_stale")
    assert "the spec of fleet api changed" in stale.json()["error"]["message"]
    over = api.call("PATCH", "/groups/web", json={"count": 5})  # limits.servers is 4
    assert (over.status_code, over.json()["error"]["code"]) == (409, "plan_blocked")
    down = api.call("PATCH", "/groups/web", json={"count": 3})
    assert down.status_code == 202, down.text
    assert [(c["action"], c["server"]) for c in down.json()["plan"]["plan"]["changes"]] == [
        ("delete", "web-4")
    ]
    api.finished(down.json()["run"]["id"])
    assert api.servers() == dict.fromkeys(["web-1", "web-2", "web-3"], "ready")
    assert sorted(_containers(docker_client)) == ["api-web-1", "api-web-2", "api-web-3"]
    spec = api.call("GET", "", key=api.read_key).json()
    assert spec["servers"] == {"ready": 3}


def test_a_reboot_through_the_api_and_a_world_change_makes_a_plan_stale(
    api: Api, docker_client: Any
) -> None:
    web1 = _containers(docker_client)["api-web-1"]
    started_at = web1.attrs["State"]["StartedAt"]
    bad = api.call("POST", "/servers/web-1/actions", json={"action": "explode"})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["path"] == "action"
    asked = api.call("POST", "/servers/web-1/actions", json={"action": "reboot"})
    assert asked.status_code == 202, asked.text
    api.finished(asked.json()["id"])
    web1.reload()
    assert web1.attrs["State"]["StartedAt"] != started_at and web1.status == "running"
    kinds = [
        e["kind"] for e in api.call("GET", "/events?limit=1000", key=api.read_key).json()["events"]
    ]
    assert "server.reboot.succeeded" in kinds
    plan = api.plan()
    _containers(docker_client)["api-web-2"].stop(timeout=5)  # the world changes
    stale = api.call("POST", f"/plans/{plan['id']}/apply")
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "plan_stale")
    assert "fleet api changed since plan" in stale.json()["error"]["message"]


def test_a_fleet_registered_through_the_api_is_watched_and_repaired_by_serve(
    api: Api, docker_client: Any
) -> None:
    # web-2 was stopped by the test before: with its spec changed through the API to repair
    # mode, the service's reconcile loop for the fleet starts it again, no one acting.
    web2 = _containers(docker_client)["api-web-2"]
    assert web2.status == "exited"
    repair = {**SPEC, "reconcile": {"interval": "10s", "mode": "repair"}}
    assert api.put_spec(repair).status_code == 200

    def kinds() -> list[str]:
        events = api.call("GET", "/events?limit=1000", key=api.read_key).json()["events"]
        return [e["kind"] for e in events if e["kind"].startswith("reconcile.")]

    wait_until(lambda: "reconcile.repaired" in kinds(), timeout_s=120, what="a repair of api")
    assert "reconcile.owner" in kinds()

    def running() -> bool:
        web2.reload()
        return bool(web2.status == "running")

    wait_until(running, timeout_s=120, what="web-2 started again")
    wait_until(lambda: api.servers().get("web-2") == "ready", timeout_s=RUN_S, what="web-2 ready")
    wait_until(lambda: kinds()[-1] == "reconcile.in-sync", timeout_s=120, what="api in sync")
    assert api.put_spec(SPEC).status_code == 200  # back to report mode for the tests after


def test_engine_runs_lists_what_the_api_started(api: Api) -> None:
    state = ("--state-dir", str(api.root / "state"))
    listed = engine("runs", "api", *state, cwd=api.root, env=api.env)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [line[2] for line in lines][::-1] == ["apply", "apply", "apply", "reboot web-1"]
    assert {line[3] for line in lines} == {"succeeded"} and {line[5] for line in lines} == {
        "by deployer"
    }
    one = engine("runs", "api", lines[-1][0], "--format", "json", *state, cwd=api.root, env=api.env)
    (run,) = json.loads(one.stdout)["runs"]
    assert sorted(run["result"]["timings"]["servers"]) == ["web-1", "web-2", "web-3"]


def test_a_run_waits_for_the_lock_a_live_command_holds_then_runs(api: Api) -> None:
    # Before, the run failed at once, telling to `engine unlock` the lock of a live holder.
    store_url = f"sqlite:///{api.root / 'state' / 'state.db'}"
    with (
        open_store(store_url) as store,
        store.locks.hold("api", command="engine up api.yaml (in a terminal)") as held,
    ):
        asked = api.call("PATCH", "/groups/web", json={"count": 3})
        assert asked.status_code == 202, asked.text
        run_id = asked.json()["run"]["id"]

        def waiting() -> dict[str, Any] | None:
            run = api.call("GET", f"/runs/{run_id}", key=api.read_key).json()
            return run if run["progress"] else None

        run = wait_until(waiting, timeout_s=60, what="the run to say whom it waits for")
        assert (run["status"], run["error"]) == ("queued", "")
        (line,) = run["progress"]
        assert line["event"] == "waiting"
        assert "`engine up api.yaml (in a terminal)`) since " in line["message"]
        assert line["message"].endswith(
            f"lock id {held.lock_id}; process {os.getpid()} is running on this host: "
            "wait for that run to finish"
        )
        assert "engine unlock" not in line["message"]
    run = api.finished(run_id)  # once the lock is given back
    assert [line["event"] for line in run["progress"]].count("waiting") == 1  # said once
    events = api.call("GET", "/events?limit=1000", key=api.read_key).json()["events"]
    mine = [e["kind"] for e in events if e["data"].get("run") == run_id]
    assert mine == ["run.queued", "run.waiting", "run.started", "run.succeeded"]


def test_scales_sent_at_once_run_one_after_another_and_none_fails(api: Api) -> None:
    # Before, a second worker ran the next apply beside the first: it failed on the lock the
    # first held, and those after it ended stale, though what they asked for was done.
    def scale(_: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            return client.patch(
                f"{api.url}/v1/fleets/api/groups/web",
                json={"count": 4},
                headers={"Authorization": f"Bearer {api.apply_key}"},
            )

    with ThreadPoolExecutor(AT_ONCE) as pool:
        answers = list(pool.map(scale, range(AT_ONCE)))
    assert [a.status_code for a in answers] == [202] * AT_ONCE, [a.text for a in answers]
    runs = [api.finished(a.json()["run"]["id"]) for a in answers]  # each one succeeded
    spans = sorted(
        (dt.datetime.fromisoformat(r["started_at"]), dt.datetime.fromisoformat(r["finished_at"]))
        for r in runs
    )
    assert all(ended <= next_started for (_, ended), (next_started, _) in pairwise(spans))
    # The first made web-4; those queued behind it found nothing left to do.
    made = [c for r in runs for line in r["progress"] if line["event"] == "plan"
            for c in line["changes"]]  # fmt: skip
    assert made == [["create", "web-4"]]
    assert api.servers() == dict.fromkeys(["web-1", "web-2", "web-3", "web-4"], "ready")
    down = api.call("PATCH", "/groups/web", json={"count": 3})
    assert down.status_code == 202, down.text
    api.finished(down.json()["run"]["id"])
    assert api.servers() == dict.fromkeys(["web-1", "web-2", "web-3"], "ready")


def test_the_dashboard_shows_the_fleet_charts_a_server_and_reboots_it_live(
    api: Api, docker_client: Any, tmp_path: Path
) -> None:
    web3 = _containers(docker_client)["api-web-3"]
    started_at = web3.attrs["State"]["StartedAt"]
    with chromium(tmp_path / "screenshots") as browser:
        browser.open(f"{api.url}/fleets/api")
        assert browser.url == f"{api.url}/sign-in"  # no session: no page
        browser.type("#key", api.apply_key[:-4] + "0000")
        browser.click("form button[type=submit]")
        assert "unknown or revoked" in browser.text(".problem")
        browser.type("#key", api.apply_key)
        browser.click("form button[type=submit]")
        assert "3 servers" in browser.text(".fleet-card")
        browser.screenshot("fleets")
        browser.click('a[href="/fleets/api"]')
        stages = browser.run(
            "return [...document.querySelectorAll('[data-stage-of]')]"
            ".map(e => [e.dataset.stageOf, e.textContent])"
        )
        assert stages == [["web-1", "ready"], ["web-2", "ready"], ["web-3", "ready"]]
        assert browser.text("pre.plan").startswith("Fleet api (local)")  # the last plan
        browser.screenshot("fleet")

        # The agents' heartbeats since the fleet came up, charted: the network from the
        # counters of one heartbeat and the next.
        def charted() -> bool:
            browser.open(f"{api.url}/fleets/api/servers/web-3")
            drawn = "return ['cpu', 'rx', 'tx']" + (
                ".every(m => document.querySelector(`#chart-${m} polyline`))"
            )
            return bool(browser.run(drawn))

        wait_until(charted, timeout_s=120, what="web-3's CPU and network history")
        assert "fleet-agent" in browser.text("table.containers")  # from the agent's heartbeat
        wait_until(lambda: browser.text("#live-status") == "Live", what="live updates")
        browser.screenshot("server")
        browser.click('button[data-confirm="reboot web-3?"]')
        assert browser.accept_alert() == "reboot web-3?"
        assert "reboot queued" in browser.text(".notice")
        # The run's progress arrives in the page without a reload.
        wait_until(
            lambda: "server.reboot.succeeded" in browser.text("#events"),
            timeout_s=RUN_S,
            what="the reboot to be reported live",
        )
        assert browser.run("return document.querySelectorAll('#events tr.fresh').length") >= 2
        browser.screenshot("server-rebooted")
        web3.reload()
        assert web3.attrs["State"]["StartedAt"] != started_at and web3.status == "running"

        # A rebuild takes it back through its stages to ready, each shown without a reload.
        browser.click('button[data-confirm^="rebuild web-3?"]')
        assert browser.accept_alert().startswith("rebuild web-3? Its disk is made anew")
        assert "rebuild queued" in browser.text(".notice")
        seen: list[str] = []

        def ready_again() -> bool:
            stage = str(browser.run("return document.querySelector('h1 .stage').textContent"))
            if not seen or seen[-1] != stage:
                seen.append(stage)
            return stage == "ready" and len(seen) > 1

        wait_until(ready_again, timeout_s=RUN_S, what="web-3 rebuilt and ready, seen live")
        assert seen[0] == "ready" and set(seen[1:-1]) & {"creating", "booting", "installing"}
        assert browser.run("return document.querySelectorAll('h1 .stage.changed').length") == 1
        browser.screenshot("server-rebuilt")
    assert _containers(docker_client)["api-web-3"].id != web3.id  # a machine made anew
