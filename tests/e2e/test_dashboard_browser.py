"""The dashboard in headless Chromium against a real `engine serve` on loopback, over a store
filled as a served fleet leaves it (tests/support/dashboard.py): sign in (a wrong key first),
see the three ready servers and the last plan, open one and see its charts and containers,
reboot it from the page, watch its stage and events change without a reload, then see the
alerts. Screenshots of each page are written under the test's tmp dir (`screenshots/`)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.catalog import load_catalog
from engine.controlplane.apikeys import create_api_key
from engine.controlplane.dashboard import CSP
from engine.diff import DiffOptions, diff_fleet
from engine.model import Stage
from engine.render import render_json
from engine.state import AlertRecord, AlertState, SavedPlan, Scope
from engine.state.store import open_store
from tests.support.browser import chromium
from tests.support.dashboard import FLEET, fill_store
from tests.support.fleets import example_fleet
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@contextmanager
def engine_serve(url: str, state_dir: Path) -> Iterator[str]:
    """`engine serve` on a free loopback port over the store at `url`, with no job workers
    (the queued reboot stays queued: no provider runs here); its base URL."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine", "serve", "--listen", "127.0.0.1:0"),
            *("--state", url, "--state-dir", str(state_dir), "--workers", "0"),
        ],
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        said = process.stdout.readline()
        assert said.startswith("control plane listening on http://127.0.0.1:"), said
        yield said.split()[4]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_sign_in_see_the_fleet_chart_a_server_reboot_it_and_watch_it_live(
    tmp_path: Path,
) -> None:
    url, state_dir = f"sqlite:///{tmp_path / 'state.db'}", tmp_path / "state"
    shots = tmp_path / "screenshots"
    with open_store(url) as store:
        fill_store(store, servers=3)
        fleet = example_fleet("demo")
        plan = diff_fleet(fleet, load_catalog("local"), [], options=DiffOptions(install_hash="x"))
        store.runs.save_plan(
            SavedPlan(
                id="plan1",
                fleet=FLEET,
                spec_digest="s",
                world_digest="w",
                document=render_json(plan),
                created_at=dt.datetime.now(dt.UTC),
                created_by="ops",
            )
        )
        store.alerts.save(
            AlertRecord(
                fleet=FLEET,
                alert="hot",
                subject="web-3",
                state=AlertState.FIRING,
                since=dt.datetime.now(dt.UTC),
                value=97.5,
                fired_at=dt.datetime.now(dt.UTC),
            )
        )
        key = create_api_key(store, state_dir, "ops", scope=Scope.APPLY)
        with engine_serve(url, state_dir) as base, chromium(shots) as browser:
            plain = httpx.get(f"{base}/fleets/demo", follow_redirects=False)
            assert (plain.status_code, plain.headers["location"]) == (303, "/sign-in")
            assert plain.headers["content-security-policy"] == CSP

            browser.open(f"{base}/")
            assert browser.url == f"{base}/sign-in"
            browser.screenshot("sign-in")
            browser.type("#key", key[:-4] + "0000")
            browser.click("form button[type=submit]")
            assert "unknown or revoked" in browser.text(".problem")
            browser.screenshot("sign-in-refused")
            browser.type("#key", key)
            browser.click("form button[type=submit]")
            browser.find(".fleet-card")
            assert browser.url == f"{base}/"
            assert "3 servers" in browser.text(".fleet-card")
            # The stylesheet applied under the CSP: the page's colours are its own.
            background = browser.run("return getComputedStyle(document.body).backgroundColor")
            assert background in ("rgb(246, 247, 249)", "rgb(18, 22, 29)")
            browser.screenshot("fleets")

            browser.click(".fleet-card h2 a")
            browser.find("table.servers")
            names = browser.run(
                "return [...document.querySelectorAll('table.servers tbody th')]"
                ".map(e => e.textContent)"
            )
            assert names == ["web-1", "web-2", "web-3"]
            stages = browser.run(
                "return [...document.querySelectorAll('[data-stage-of]')].map(e => e.textContent)"
            )
            assert stages == ["ready"] * 3
            assert "Plan: 3 to create" in browser.text("pre.plan")
            browser.screenshot("fleet")

            browser.click('a[href="/fleets/demo/servers/web-2"]')
            browser.find("#chart-cpu polyline")
            drawn = browser.run(
                "const line = document.querySelector('#chart-cpu polyline');"
                "return [line.points.numberOfItems, line.getBoundingClientRect().width]"
            )
            assert drawn[0] >= 55 and drawn[1] > 100  # an hour of points, drawn across
            assert browser.run("return document.querySelectorAll('#chart-rx polyline').length")
            assert "web-3f2a9c1d0b4e" in browser.text("table.containers")
            # The script ran under the CSP and is long-polling for events.
            wait_until(lambda: browser.text("#live-status") == "Live", what="live updates")
            browser.screenshot("server")

            browser.click('button[data-confirm="reboot web-2?"]')
            assert browser.accept_alert() == "reboot web-2?"
            assert "reboot queued" in browser.text(".notice")
            (run,) = store.runs.all(FLEET)
            assert (run.kind, run.created_by, run.request["server"]) == ("reboot", "ops", "web-2")

            # What the reboot's job records as the server goes down, seen without a reload.
            wait_until(lambda: browser.text("#live-status") == "Live", what="live updates")
            store.servers.set_stage(FLEET, "web-2", Stage.UNHEALTHY, "rebooting: no heartbeat")
            store.events.record(FLEET, "server.unhealthy", "web-2 went quiet", server="web-2")
            wait_until(
                lambda: browser.text("h1 [data-stage-of]") == "unhealthy",
                what="the stage badge to change live",
            )
            assert "web-2 went quiet" in browser.text("#events tr.fresh")
            browser.screenshot("server-live")

            browser.click('a[href="/fleets/demo/events"]')
            assert "web-2 went quiet" in browser.text("#events")
            browser.screenshot("events")

            browser.click('nav a[href="/alerts?fleet=demo"]')
            assert "hot" in browser.text("table.alerts") and "firing" in browser.text(
                "table.alerts"
            )
            browser.screenshot("alerts")

            # A fleet gone while its page is open: the page says why its updates stopped
            # (a 403 or 404 read as "Signed out", and a 404 was retried every 5 s for ever).
            browser.open(f"{base}/fleets/demo/servers/web-2")
            wait_until(lambda: browser.text("#live-status") == "Live", what="live updates")
            store.forget_fleet(FLEET)
            wait_until(
                lambda: (
                    browser.text("#live-status")
                    == "Live updates stopped: this control plane serves no fleet demo."
                ),
                timeout_s=45,  # the poll under way answers within its 25 s wait
                what="the live updates to stop, saying why",
            )
    assert sorted(p.name for p in shots.iterdir()) == [
        "alerts.png",
        "events.png",
        "fleet.png",
        "fleets.png",
        "server-live.png",
        "server.png",
        "sign-in-refused.png",
        "sign-in.png",
    ]
