"""`engine dashboard SPEC` as users run it: a separate process over a real store, printing a
one-time sign-in link on loopback that signs a browser in once and is refused after; Ctrl-C
stops it and revokes the key the link signed in with. (The Docker engine is out of reach
here, so the local fleet's provider is reported as degraded and the rest of the service
runs.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from engine.controlplane.dashboard import SESSION_COOKIE
from engine.state.store import open_store
from tests.support.cli import ROOT, engine


def test_the_link_signs_in_once_and_ctrl_c_stops_it_and_revokes_its_key(tmp_path: Path) -> None:
    state_dir, errors = tmp_path / "state", tmp_path / "stderr.log"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine", "dashboard", str(ROOT / "specs" / "demo.yaml")],
            cwd=tmp_path,
            env={
                "PATH": os.environ["PATH"],
                "NO_COLOR": "1",
                "PYTHONPATH": str(ROOT),
                "ENGINE_STATE_DIR": str(state_dir),
                "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}",
            },
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert process.stdout is not None
            head = [process.stdout.readline() for _ in range(3)]
            assert head[0].startswith("dashboard of fleet demo: http://127.0.0.1:"), head
            found = re.fullmatch(
                r"sign in \(works once, for 10 min\): (http://127\.0\.0\.1:\d+)"
                r"(/sign-in/link/([\w-]+))\n",
                head[1],
            )
            assert found is not None, head
            base, link, token = found[1], found[2], found[3]
            with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as browser:
                assert browser.get("/fleets/demo").status_code == 303  # no session yet
                first = browser.get(link)
                assert (first.status_code, first.headers["location"]) == (303, "/fleets/demo")
                cookie = first.headers["set-cookie"]
                assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "strict" in cookie
                page = browser.get("/fleets/demo")
                assert page.status_code == 200 and "<h1>demo</h1>" in page.text
                assert "dashboard-" in page.text  # signed in as the command's own key
            with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as other:
                again = other.get(link)
                assert again.status_code == 403 and "used already" in again.text
                assert SESSION_COOKIE not in again.headers.get("set-cookie", "")
                assert other.get(f"/sign-in/link/{token[:-2]}xx").status_code == 403
            process.send_signal(signal.SIGINT)
            rest, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, errors.read_text()
    assert "stopped; the sign-in key is revoked" in rest
    log = errors.read_text()
    assert "demo" in log and token not in log  # the service logged, never the link
    with open_store(f"sqlite:///{state_dir / 'state.db'}") as store:
        (key,) = store.api_keys.all()
        assert key.name.startswith("dashboard-") and key.revoked_at is not None
        assert key.fleets == ("demo",)


def test_a_cloud_fleet_is_refused_with_what_to_run_instead(tmp_path: Path) -> None:
    done = engine(
        "dashboard", str(ROOT / "specs" / "hetzner.yaml"), "--state-dir", str(tmp_path / "s")
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "engine dashboard serves a local fleet" in done.stderr
    assert "engine serve --spec" in done.stderr
    assert not (tmp_path / "s" / "state.db").exists()
