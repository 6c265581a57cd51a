"""Apps on the local provider, end to end, as a user runs them: an HTTP app built here from
busybox on three servers, put there by `engine up` through the agents (the images copied
from the engine's Docker: no registry), an env change rolled one server at a time, an image
that never gets healthy stopped on the first server and put back, its output read with
`engine logs`, the servers' packages updated through their agents, a rebuilt server given its
app again, the app renamed (the new name taking its port over server by server), the secret
the app gets from the engine's environment written nowhere the engine writes, and, last (they
leave the fleet broken), servers that cannot be asked now waited for, never called up to date:
one whose agent is gone, one that is off.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import io
import itertools
import json
import secrets
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from engine.model import LABEL_APP
from engine.providers.local.dockerd import PrivateDaemon
from tests.e2e.test_local_fleet import Fleet
from tests.support.cli import ROOT, engine
from tests.support.wait import wait_until

SECRET = "s3cret-" + secrets.token_hex(12)
SERVE = """\
mkdir -p /www
echo "$GREETING" > /www/index.html
printf %s "$APP_SECRET" | sha256sum | cut -d' ' -f1 > /www/secret
echo ok > /www/healthz
echo "serving $GREETING"
trap 'exit 0' TERM
httpd -f -p 8080 -h /www &
wait
"""
BROKEN = """\
mkdir -p /www
echo "broken build starting"
exec httpd -f -p 8080 -h /www
"""
SPEC: dict[str, Any] = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "apps",
    "provider": {"name": "local"},
    "groups": [{"name": "web", "count": 3}],
    "install": {"docker": {"source": "distro"}, "system": {"unattended_upgrades": False}},
    "apps": [
        {
            "name": "web",
            "image": "fleet-test/web:1",
            "ports": ["80:8080"],
            "env": {"GREETING": "hello-v1"},
            "secret_env": ["APP_SECRET"],
            "health": {
                "http": {"path": "/healthz", "port": 8080},
                "interval": "1s",
                "timeout": "1s",
                "retries": 2,
            },
            "on": ["web"],
            "update": {"max_unavailable": 1, "health_timeout": "20s", "monitor": "2s"},
        }
    ],
}
SERVERS = ["web-1", "web-2", "web-3"]


def build_app_image(docker_client: Any, base: str, tag: str, script: str) -> None:
    """An image FROM the busybox one, running `script`, built in the session's Docker."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (
            ("Dockerfile", f'FROM {base}\nCOPY serve.sh /serve.sh\nCMD ["sh", "/serve.sh"]\n'),
            ("serve.sh", script),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)


class Apps:
    """The fleet, the engine's outputs so far (to search for the secret), and HTTP to it."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.outputs: list[str] = []
        self.addresses: dict[str, str] = {}

    def args(self, command: str, *rest: str) -> list[str]:
        """`engine COMMAND SPEC REST... --state-dir DIR` (COMMAND may be two words)."""
        return [*command.split(), str(self.fleet.spec_path), *rest, "--state-dir",
                str(self.fleet.state_dir)]  # fmt: skip

    def run(self, command: str, *rest: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = engine(*self.args(command, *rest), cwd=self.fleet.root, env=self.fleet.env,
                        timeout=900)  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        self.outputs += [result.stdout, result.stderr]
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def events(self, command: str, *rest: str, ok: bool = True) -> list[dict[str, Any]]:
        result = self.run(command, *rest, "--format", "json", ok=ok)
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def write(self, **app: Any) -> None:
        spec = copy.deepcopy(SPEC)
        spec["apps"][0].update(app)
        self.fleet.write(spec)

    def get(self, server: str, path: str = "/") -> str | None:
        """The answer, or None when there is none (refused, timed out, or cut off mid-answer
        by a container stopping)."""
        try:
            with urllib.request.urlopen(
                f"http://{self.addresses[server]}:80{path}", timeout=1
            ) as r:
                return str(r.read().decode().strip())
        except (OSError, http.client.HTTPException):
            return None

    def plan(self) -> list[tuple[str, str]]:
        """The preview's changes, servers' and apps'."""
        document = json.loads(self.run("preview", "--format", "json").stdout)
        return [(c["action"], c["server"]) for c in document["changes"]] + [
            (c["action"], c["server"]) for c in document["apps"]["changes"]
        ]

    def status(self) -> dict[str, dict[str, Any]]:
        """`engine apps status`, by server (its exit code says whether all is as the spec)."""
        document = json.loads(self.run("apps status", "--format", "json", ok=False).stdout)
        (app,) = document["apps"]
        return {s["server"]: s for s in app["servers"]}


@pytest.fixture(scope="module")
def apps(
    dockerd: PrivateDaemon,
    golden_image: str,
    busybox_image: str,
    docker_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Apps]:
    build_app_image(docker_client, busybox_image, "fleet-test/web:1", SERVE)
    build_app_image(docker_client, busybox_image, "fleet-test/web:broken", BROKEN)
    fleet = Fleet(tmp_path_factory.mktemp("apps"), dockerd, SPEC)
    fleet.env["APP_SECRET"] = SECRET
    made = Apps(fleet)
    yield made
    fleet.run("destroy", "--yes")


def test_up_ends_with_the_app_answering_on_every_server(apps: Apps) -> None:
    plan = apps.run("preview").stdout
    assert "App web ->" in plan and "a new server" in plan
    done = apps.fleet.up()
    assert sorted(done["ready"]) == SERVERS
    assert done["apps"]["web"]["phase"] == "succeeded"
    assert done["apps"]["web"]["servers"] == dict.fromkeys(SERVERS, "switched")
    status = apps.fleet.status()
    apps.addresses = {s["name"]: s["addresses"]["ipv4"] for s in status["servers"]}
    for server in SERVERS:
        assert apps.get(server) == "hello-v1"
        # The secret reached the container, from the engine's environment.
        assert apps.get(server, "/secret") == hashlib.sha256(SECRET.encode()).hexdigest()
    assert apps.plan() == []
    assert {s["health"] for s in apps.status().values()} == {"healthy"}


def test_an_env_change_rolls_one_server_at_a_time(apps: Apps) -> None:
    apps.write(env={"GREETING": "hello-v2"})
    preview = apps.run("preview", "--format", "json").stdout
    changes = json.loads(preview)["apps"]["changes"]
    assert [(c["action"], c["server"]) for c in changes] == [("update", s) for s in SERVERS]
    assert changes[0]["fields"] == [{"field": "env.GREETING", "before": "***", "after": "***"}]
    assert "hello-v2" not in preview + apps.run("preview", "--format", "markdown").stdout

    # Each server asked over and over by a thread of its own: (asked, answered, answer).
    seen: dict[str, list[tuple[float, float, str | None]]] = {s: [] for s in SERVERS}
    stop = threading.Event()

    def watch(server: str) -> None:
        while not stop.is_set():
            asked = time.monotonic()
            answer = apps.get(server)
            seen[server].append((asked, time.monotonic(), answer))

    watchers = [threading.Thread(target=watch, args=(server,)) for server in SERVERS]
    for watcher in watchers:
        watcher.start()
    try:
        events = apps.events("deploy", "web")
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join()
    steps = [(e["server"], e["step"]) for e in events if e["event"] == "app"]
    for server in SERVERS:
        assert [step for s, step in steps if s == server] == ["switching", "watching", "switched"]
    assert [s for s, step in steps if step == "switching"] == SERVERS
    # Each server switches once the one before serves the new version, while that one is
    # watched for update.monitor.
    for before, after in itertools.pairwise(SERVERS):
        assert steps.index((before, "watching")) < steps.index((after, "switching"))
        assert steps.index((after, "switching")) < steps.index((before, "switched"))
    # Observed from outside, judged only on what the clock proves (a request shows the state
    # somewhere between asking and the answer): each server moves from v1 to v2 once; no
    # server answers v1 when asked after a later one had answered v2 (the order); no server
    # fails to answer when asked after a later one had failed to (one gap at a time, in order).
    for server in SERVERS:
        answers = [answer for _, _, answer in seen[server] if answer is not None]
        assert answers[0] == "hello-v1" and answers[-1] == "hello-v2"
        assert answers == sorted(answers)
    for before, after in itertools.combinations(SERVERS, 2):
        for was, became in (("hello-v1", "hello-v2"), (None, None)):
            late = [asked for asked, _, answer in seen[before] if answer == was]
            early = [answered for _, answered, answer in seen[after] if answer == became]
            assert not late or not early or max(late) < min(early), (before, after, was)
    assert apps.plan() == []


def test_an_image_that_never_gets_healthy_stops_after_the_first_server_and_is_put_back(
    apps: Apps,
) -> None:
    before = apps.status()
    good = before["web-1"]["version"]
    apps.write(
        env={"GREETING": "hello-v2"},
        image="fleet-test/web:broken",
        update={"max_unavailable": 1, "health_timeout": "5s", "monitor": "2s"},
    )
    events = apps.events("deploy", "web", ok=False)
    steps = [(e["server"], e["step"]) for e in events if e["event"] == "app"]
    assert steps == [
        ("web-1", "switching"),
        ("web-1", "failed"),
        ("web-1", "reverting"),
        ("web-1", "reverted"),
    ]
    (rollout,) = [e for e in events if e["event"] == "rollout" and "seconds" in e]
    assert rollout["phase"] == "rolled_back" and "not healthy within 5 s" in rollout["reason"]
    after = apps.status()
    assert {s["version"] for s in after.values()} == {good}
    assert {s["health"] for s in after.values()} == {"healthy"}
    for server in ("web-2", "web-3"):  # never touched
        assert after[server]["since"] == before[server]["since"]
        assert after[server]["container"] == before[server]["container"]
    assert all(apps.get(server) == "hello-v2" for server in SERVERS)
    history = apps.run("apps history", "web").stdout
    assert "rolled_back" in history and "web-1 reverted" in history
    apps.write(env={"GREETING": "hello-v2"})
    assert apps.plan() == []


def test_logs_show_the_apps_output(apps: Apps) -> None:
    one = apps.run("logs", "web", "--server", "web-1").stdout
    assert "serving hello-v2" in one and "web-1 |" not in one
    every = apps.run("logs", "web", "--tail", "20").stdout
    for server in SERVERS:
        assert f"{server} | serving hello-v2" in every
    command = [sys.executable, "-m", "engine", *apps.args("logs", "web", "--follow")]
    follower = subprocess.Popen(
        command,
        cwd=apps.fleet.root,
        env={**apps.fleet.env, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout or ()), daemon=True)
        reader.start()
        wait_until(lambda: any("web-3 | serving" in line for line in lines), timeout_s=30)
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(timeout=30)
    wrong = apps.run("logs", "web", "--server", "db-1", ok=False)
    assert wrong.returncode == 1 and "web does not run on db-1" in wrong.stderr


def test_server_update_runs_the_agents_task_a_server_at_a_time(apps: Apps) -> None:
    said = apps.run("server update", "--all").stdout
    done = [line.split(":")[0] for line in said.splitlines() if ": update done in" in line]
    assert done == SERVERS, said
    assert {s["health"] for s in apps.status().values()} == {"healthy"}


def test_bad_input_to_deploy_says_what_to_fix_and_changes_nothing(apps: Apps) -> None:
    before = apps.status()
    wrong = apps.run("deploy", "nosuch", ok=False)
    assert wrong.returncode == 1 and "fleet apps has no app nosuch (its apps: web)" in wrong.stderr
    apps.write(env={"GREETING": "hello-v3"})
    secret = apps.fleet.env.pop("APP_SECRET")
    try:
        missing = apps.run("deploy", "web", ok=False)
    finally:
        apps.fleet.env["APP_SECRET"] = secret
    assert missing.returncode == 1
    assert "export APP_SECRET=... and run again (nothing was changed)" in missing.stderr
    assert all(apps.get(server) == "hello-v2" for server in SERVERS)
    apps.write(env={"GREETING": "hello-v2"})
    assert apps.status() == before


def test_a_deploy_killed_mid_rollout_is_taken_up_where_it_stopped(apps: Apps) -> None:
    apps.write(env={"GREETING": "hello-v3"})
    command = [sys.executable, "-m", "engine", *apps.args("deploy", "web", "--format", "json")]
    doomed = subprocess.Popen(
        command,
        cwd=apps.fleet.root,
        env={**apps.fleet.env, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert doomed.stdout is not None
        for line in doomed.stdout:  # until web-1 serves v3 and web-2 is switching
            event = json.loads(line) if line.startswith("{") else {}
            if (event.get("server"), event.get("step")) == ("web-2", "switching"):
                break
    finally:
        doomed.kill()  # no chance to tidy up: as if the machine died
        doomed.wait(timeout=30)
    # The dead run's lock is released (its process is gone from this host) and its
    # rollout taken up.
    events = apps.events("deploy", "web")
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert any("taking up the rollout" in note for note in notes), notes
    steps = [(e["server"], e["step"]) for e in events if e["event"] == "app"]
    # web-1 switched before the kill: it is watched again, not switched again.
    assert [s for s, step in steps if step == "switching"] == ["web-2", "web-3"]
    assert ("web-1", "switched") in steps
    assert all(apps.get(server) == "hello-v3" for server in SERVERS)
    assert {s["health"] for s in apps.status().values()} == {"healthy"}


def test_a_rebuilt_server_gets_its_apps_back(apps: Apps, docker_client: Any) -> None:
    machine = docker_client.containers.get("apps-web-2").id
    serving = apps.get("web-1")
    events = apps.events("server rebuild", "web-2")
    done = events[-1]
    assert done["event"] == "done" and done["ready"] == ["web-2"], done
    assert docker_client.containers.get("apps-web-2").id != machine  # a new disk
    # Rolled out on web-2 alone, as `engine up` rolls it out on a new server.
    assert done["apps"]["web"]["phase"] == "succeeded"
    assert done["apps"]["web"]["servers"] == {"web-2": "switched"}
    status = apps.fleet.status()
    apps.addresses = {s["name"]: s["addresses"]["ipv4"] for s in status["servers"]}
    assert all(apps.get(server) == serving for server in SERVERS)
    assert {s["health"] for s in apps.status().values()} == {"healthy"}
    assert apps.plan() == []


def apps_on(docker_client: Any, server: str) -> dict[str, str]:
    """The app containers on a server, by name -> app, as its own Docker has them."""
    machine = docker_client.containers.get(f"apps-{server}")
    code, said = machine.exec_run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL_APP}",
         "--format", f'{{{{.Names}}}} {{{{.Label "{LABEL_APP}"}}}}']
    )  # fmt: skip
    assert code == 0, said
    return dict(line.split() for line in said.decode().splitlines())


def test_a_renamed_app_takes_the_port_over_server_by_server(apps: Apps, docker_client: Any) -> None:
    serving = {server: apps.get(server) for server in SERVERS}
    apps.write(
        name="www",
        env={"GREETING": "hello-v3"},
        image="fleet-test/web:broken",
        update={"max_unavailable": 1, "health_timeout": "5s", "monitor": "2s"},
    )
    preview = apps.run("preview").stdout
    assert "takes port 80/tcp over from web, which leaves web-1" in preview
    assert "no longer in the spec" not in preview  # no removal of web of its own
    events = apps.events("deploy", ok=False)
    steps = [(e["app"], e["server"], e["step"]) for e in events if e["event"] == "app"]
    # www never gets healthy on web-1: web, which it was to replace there, is put back, and
    # removed nowhere.
    assert steps == [
        ("www", "web-1", "switching"),
        ("www", "web-1", "failed"),
        ("www", "web-1", "reverting"),
        ("www", "web-1", "reverted"),
    ]
    assert {server: apps.get(server) for server in SERVERS} == serving
    assert {app for s in SERVERS for app in apps_on(docker_client, s).values()} == {"web"}
    for name in ("www", "web"):  # renamed, then back again
        apps.write(name=name, env={"GREETING": "hello-v3"})
        events = apps.events("deploy")
        steps = [(e["app"], e["server"], e["step"]) for e in events if e["event"] == "app"]
        for server in SERVERS:
            assert [step for a, s, step in steps if s == server] == [
                "switching",
                "watching",
                "switched",
            ]
        assert {a for a, _, _ in steps} == {name}  # no rollout of the removal of its own
        assert all(apps.get(server) == "hello-v3" for server in SERVERS)
        for server in SERVERS:
            assert set(apps_on(docker_client, server).values()) == {name}
        assert apps.plan() == []
    assert {s["health"] for s in apps.status().values()} == {"healthy"}


def test_the_secret_is_written_nowhere_the_engine_writes(apps: Apps, docker_client: Any) -> None:
    outputs = "\n".join(apps.outputs)
    assert SECRET not in outputs
    for path in apps.fleet.state_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for server in SERVERS:
        machine = docker_client.containers.get(f"apps-{server}")
        code, audit = machine.exec_run("cat /var/lib/fleet-agent/audit.log")
        assert code == 0 and b"/v1/containers" in audit and SECRET.encode() not in audit
        code, said = machine.exec_run("docker logs fleet-agent")  # the agent's own log
        assert code == 0 and b"fleet-agent:" in said and SECRET.encode() not in said


def done_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    (done,) = [e for e in events if e["event"] == "done"]
    return done


def test_a_server_whose_agent_is_gone_is_waited_for_not_called_up_to_date(
    apps: Apps, docker_client: Any
) -> None:
    machine = docker_client.containers.get("apps-web-1")
    for command in (
        "docker rm -f fleet-agent",
        f"docker ps -aq --filter label={LABEL_APP} | xargs docker rm -f",
    ):
        code, said = machine.exec_run(["sh", "-c", command])
        assert code == 0, said
    # The store still says web-1 is ready and runs the spec's version: only its agent could
    # tell, and it does not answer.
    said = apps.run("deploy", ok=False)
    assert said.returncode == 1
    assert "Nothing to do" not in said.stdout
    assert "the agent of web-1 did not answer" in said.stdout
    assert "web: waits for web-1 (its agent did not answer)" in said.stdout
    assert said.stderr.startswith("error: not deployed: web on web-1, whose servers are not ")
    assert f"`engine up {apps.fleet.spec_path}` makes them ready" in said.stderr
    done = done_event(apps.events("deploy", ok=False))
    assert done == {"event": "done", "ok": False, "apps": {}, "waiting": {"web": ["web-1"]}}


def test_a_server_that_is_off_waits_while_the_others_get_the_new_version(
    apps: Apps, docker_client: Any
) -> None:
    docker_client.containers.get("apps-web-2").stop()
    apps.write(env={"GREETING": "hello-v4"})
    events = apps.events("deploy", ok=False)
    steps = [(e["server"], e["step"]) for e in events if e["event"] == "app"]
    # web-1 (its agent gone) and web-2 (off) are never called, so never "put back".
    assert steps == [("web-3", "switching"), ("web-3", "watching"), ("web-3", "switched")]
    done = done_event(events)
    assert done["ok"] is False and done["waiting"] == {"web": ["web-1", "web-2"]}
    assert done["apps"]["web"]["phase"] == "succeeded"
    assert apps.get("web-3") == "hello-v4"
