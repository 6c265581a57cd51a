"""The whole lifecycle on the local provider, as a user runs it: real containers running the
real cloud-init, phone-home to the engine's control plane, install over SSH with pinned host
keys, the agent in each server's own Docker, and everything gone after destroy.

The servers run in this test session's private Docker engine; the engine runs as a separate
process, exactly as `engine up` from a shell.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.model import LABEL_FLEET, Stage
from engine.providers.local.dockerd import PrivateDaemon
from engine.state import JobState
from engine.state.store import open_store
from tests.support.cli import ROOT, engine
from tests.support.readme import console_example, section
from tests.support.tokens import usable_tokens
from tests.support.wait import wait_until

SPEC = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "e2e",
    "provider": {"name": "local"},
    "defaults": {"server_type": "small", "image": "debian-12", "locations": ["local"]},
    "groups": [{"name": "web", "count": 2}, {"name": "db", "count": 1}],
    "install": {"docker": {"source": "distro"}, "system": {"unattended_upgrades": False}},
}


class Fleet:
    """One fleet spec in a temp dir, and the engine run against the private Docker engine."""

    def __init__(self, root: Path, dockerd: PrivateDaemon, spec: dict[str, Any]) -> None:
        self.root = root
        self.spec_path = root / f"{spec['name']}.yaml"
        self.state_dir = root / "state"
        self.env = {
            "DOCKER_HOST": dockerd.url,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": os.environ.get("HOME", "/root"),
        }
        self.write(spec)

    def write(self, spec: dict[str, Any]) -> None:
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def args(self, *args: str) -> list[str]:
        return [*args, str(self.spec_path), "--state-dir", str(self.state_dir)]

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = engine(*self.args(*args), cwd=self.root, env=self.env, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def up(self) -> dict[str, Any]:
        """`engine up --yes --format json`; the final event."""
        result = self.run("up", "--yes", "--format", "json")
        events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert events and events[-1]["event"] == "done", result.stdout + result.stderr
        assert result.returncode == 0, result.stdout[-6000:]
        return dict(events[-1])

    def plan(self) -> list[tuple[str, str]]:
        result = self.run("preview", "--format", "json")
        assert result.returncode == 0, result.stderr
        return [(c["action"], c["server"]) for c in json.loads(result.stdout)["changes"]]

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--format", "json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))


def containers(client: Any, fleet: str) -> dict[str, str]:
    """The fleet's containers by name -> id."""
    found = client.containers.list(all=True, filters={"label": f"{LABEL_FLEET}={fleet}"})
    return {c.name: c.id for c in found}


def nothing_left(client: Any, fleet: Fleet, name: str, *, kept: tuple[str, ...] = ()) -> None:
    """Nothing of fleet `name` is left, but the files of its state directory named `kept`."""
    assert containers(client, name) == {}
    assert client.networks.list(names=[f"fleet-{name}"]) == []
    assert [v.name for v in client.volumes.list() if v.name.startswith(f"{name}-")] == []
    with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
        assert store.servers.all(name) == () and store.events.all(name) == ()
        assert store.locks.all() == () and store.fleets.get(name) is None
    keys = fleet.state_dir / "keys"
    assert sorted(str(p.relative_to(fleet.state_dir)) for p in keys.glob(f"{name}*")) == [*kept]
    # Nor its servers' install locks and logs.
    assert not (fleet.state_dir / "locks" / name).exists()
    assert not list((fleet.state_dir / "logs" / "install").rglob("*.log"))


def host_memory_gb() -> float:
    """This machine's memory in GB (10^9 bytes), as its kernel counts it."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / 1e9
    raise AssertionError("/proc/meminfo has no MemTotal")


@pytest.fixture(scope="module")
def fleet(
    dockerd: PrivateDaemon, golden_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("e2e"), dockerd, SPEC)
    yield made
    made.run("destroy", "--yes")


def test_up_brings_every_server_to_ready_with_its_agent_answering(fleet: Fleet) -> None:
    done = fleet.up()
    assert sorted(done["ready"]) == ["db-1", "web-1", "web-2"] and done["not_ready"] == {}
    for steps in done["timings"]["servers"].values():
        assert all(steps[s] is not None for s in ("create", "boot", "install", "agent"))
    status = fleet.status()
    by_name = {s["name"]: s for s in status["servers"]}
    assert {n: s["stage"] for n, s in by_name.items()} == dict.fromkeys(by_name, "ready")
    for server in by_name.values():
        assert server["host_keys_source"] == "phone-home"  # pinned, never scanned
        live = server["live"]
        assert live is not None and "error" not in live, live
        assert 0 <= live["cpu_percent"] <= 100 and live["memory_total_gb"] > 0
        # A small server's agent sees the host's memory: containers share the host's kernel.
        assert round(live["memory_total_gb"], 1) == round(host_memory_gb(), 1)
    # What the engine keeps is its owner's only, and no token in it would pass a phone-home.
    state = fleet.state_dir
    for folder in (state, state / "keys", state / "logs", state / "local"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((state / "state.db").stat().st_mode) == 0o600
    assert usable_tokens(state / "state.db", state, {"e2e": sorted(by_name)}) == []
    # Machines start with Docker set up as the install wants it and the agent's image in it.
    with open_store(f"sqlite:///{state / 'state.db'}") as store:
        installs = [e for e in store.events.all("e2e") if e.kind == "install.succeeded"]
    assert len(installs) == 3
    for event in installs:
        changed = event.data["changed"]
        assert "agent | Deliver the agent image" not in changed, changed
        assert "docker | Write the Docker daemon settings" not in changed, changed


def test_a_second_preview_and_up_have_nothing_to_do(fleet: Fleet) -> None:
    assert fleet.plan() == []
    exit_code = fleet.run("preview", "--detailed-exitcode").returncode
    assert exit_code == 0
    again = fleet.run("up", "--yes")
    assert again.returncode == 0 and "Nothing to do" in again.stdout


def test_up_after_the_fleet_was_left_alone_keeps_its_answering_servers_ready(
    fleet: Fleet, docker_client: Any
) -> None:
    """Agents post heartbeats to a control plane, and none listens between two runs: servers
    whose agents answer stay ready when `engine up` starts its own, and the run succeeds."""
    state = f"sqlite:///{fleet.state_dir / 'state.db'}"
    with open_store(state) as store:
        # As if no engine had run for 10 minutes: the last heartbeats heard are that old.
        for report in store.agents.reports("e2e"):
            earlier = report.last_heartbeat_at - dt.timedelta(minutes=10)
            store.agents.record_heartbeat(dataclasses.replace(report, last_heartbeat_at=earlier))
        seen = max(e.id for e in store.events.all("e2e"))
    in_server(docker_client, "web-1", "docker rm -f fleet-agent")  # some work for `up`
    assert fleet.plan() == [("reinstall", "web-1")]  # the others' agents were asked: alive
    done = fleet.up()
    assert sorted(done["ready"]) == ["db-1", "web-1", "web-2"] and done["not_ready"] == {}
    with open_store(state) as store:
        events = [e for e in store.events.all("e2e") if e.id > seen]
    assert [e.message for e in events if e.kind == "server.unhealthy"] == []
    assert set(stages(fleet).values()) == {"ready"}
    assert fleet.plan() == []


def test_containers_are_listed_through_the_agent_the_store_recorded(fleet: Fleet) -> None:
    command, example = console_example("The agent")
    assert command == "engine containers specs/demo.yaml web-1"
    where = ("--state-dir", str(fleet.state_dir))
    result = engine("containers", str(fleet.spec_path), "web-1", *where, cwd=fleet.root)
    assert result.returncode == 0, result.stdout + result.stderr
    header, agent = result.stdout.splitlines()[:2]  # no --agent, no --fingerprint: recorded
    readme_header, readme_agent = example.splitlines()[:2]
    assert header.split() == readme_header.split()
    name, image, state, status = agent.split()[:4]
    assert [name, state, status] == [readme_agent.split()[i] for i in (0, 2, 3)]
    assert image.startswith(readme_agent.split()[1].removesuffix("…"))


def test_a_dry_run_lists_what_an_install_would_change_and_changes_nothing(
    fleet: Fleet, docker_client: Any
) -> None:
    def dry_run() -> tuple[list[tuple[str, str]], dict[str, Any]]:
        result = fleet.run("up", "--dry-run", "--format", "json")
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        (plan,) = [e["plan"] for e in events if e["event"] == "plan"]
        asked = {e["server"]: e for e in events if e["event"] == "install_dry_run"}
        return [(c["action"], c["server"]) for c in plan["changes"]], asked

    def zone(server: str) -> bytes:
        return bytes(docker_client.containers.get(f"e2e-{server}").exec_run("cat /etc/timezone")[1])

    changes, asked = dry_run()
    assert changes == [] and sorted(asked) == ["db-1", "web-1", "web-2"]
    assert [(e["ok"], e["would_change"]) for e in asked.values()] == [(True, [])] * 3
    berlin = yaml.safe_load(fleet.spec_path.read_text())
    berlin["install"]["system"]["timezone"] = "Europe/Berlin"
    fleet.write(berlin)
    try:
        before = zone("web-1")
        changes, asked = dry_run()
        assert sorted(changes) == [
            ("reinstall", "db-1"),
            ("reinstall", "web-1"),
            ("reinstall", "web-2"),
        ]
        for event in asked.values():
            assert (event["ok"], event["would_change"]) == (True, ["system | Set the time zone"])
        # As text, and while another run holds the fleet's lock: a dry run takes none.
        said = re.search(r"e\.g\. `([^`]+)` after", section("Up, destroy and day-2 signals"))
        assert said, "the README gives no dry-run example"
        with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
            held = store.locks.acquire("e2e", command="engine up e2e.yaml")
            try:
                text = fleet.run("up", "--dry-run")
            finally:
                store.locks.release(held)
        assert text.returncode == 0, text.stdout + text.stderr
        assert " ".join(said.group(1).split()) in text.stdout.splitlines()
        assert zone("web-1") == before and b"Berlin" not in before
    finally:
        fleet.write(SPEC)
    assert fleet.plan() == []


def test_growing_and_resizing_change_only_those_servers(fleet: Fleet, docker_client: Any) -> None:
    before = containers(docker_client, "e2e")
    groups = [{"name": "web", "count": 3}, {"name": "db", "count": 1, "server_type": "medium"}]
    grown = {**SPEC, "groups": groups}
    fleet.write(grown)
    assert sorted(fleet.plan()) == [("create", "web-3"), ("resize", "db-1")]
    done = fleet.up()
    assert sorted(done["ready"]) == ["db-1", "web-1", "web-2", "web-3"]
    after = containers(docker_client, "e2e")
    assert {k: v for k, v in after.items() if k != "e2e-web-3"} == before  # nobody else moved
    host = docker_client.containers.get("e2e-db-1").attrs["HostConfig"]
    assert host["CpuQuota"] == 2 * host["CpuPeriod"] and host["Memory"] == 2 * 1024**3
    assert fleet.plan() == []


def test_a_changed_label_makes_the_local_machine_again(fleet: Fleet, docker_client: Any) -> None:
    spec = yaml.safe_load(fleet.spec_path.read_text())
    spec["groups"][1]["labels"] = {"tier": "data"}
    fleet.write(spec)
    before = containers(docker_client, "e2e")
    assert fleet.plan() == [("replace", "db-1")]  # container labels are fixed
    assert "db-1" in fleet.up()["ready"]
    after = containers(docker_client, "e2e")
    assert after["e2e-db-1"] != before["e2e-db-1"]
    assert {k: v for k, v in after.items() if k != "e2e-db-1"} == {
        k: v for k, v in before.items() if k != "e2e-db-1"
    }
    assert docker_client.containers.get("e2e-db-1").labels["tier"] == "data"
    assert fleet.plan() == []


def test_a_forged_phone_home_from_another_container_on_the_bridge_is_refused(
    fleet: Fleet, docker_client: Any, golden_image: str
) -> None:
    from engine.controlplane.runner import running_control_plane
    from engine.tokens import read_fleet_key
    from tests.support.tokens import mint_stored

    network = docker_client.networks.get("fleet-e2e")
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
        web1 = store.servers.get("e2e", "web-1")
        assert web1 is not None
        leaked = mint_stored(
            store, read_fleet_key(fleet.state_dir, "e2e"), fleet="e2e", server="web-1", ttl_s=600
        )
        body = {
            "version": 1, "fleet": "e2e", "server": "web-1", "hostname": "web-1",
            "provider": "local", "instance_id": web1.provider_id,
            "addresses": {"public_ipv4": [], "public_ipv6": [], "private": ["10.9.9.9"]},
            "host_keys": {"ed25519": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFake"},
            "boot": {"kernel_booted_at": "2026-11-01T00:00:00Z",
                     "cloud_init_finished_at": "2026-11-01T00:00:10Z",
                     "sent_at": "2026-11-01T00:00:11Z"},
            "cloud_init": {"status": "done", "errors": []}, "attempt": 1,
        }  # fmt: skip
        with running_control_plane(store, fleet.state_dir, host=gateway, port=0) as plane:

            def attack(token: str) -> str:
                out = docker_client.containers.run(
                    golden_image,
                    entrypoint=["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n", "-X",
                                "POST", "-H", f"Authorization: Bearer {token}", "-H",
                                "Content-Type: application/json", "--data", json.dumps(body),
                                f"{plane.url}/v1/phone-home"],
                    network="fleet-e2e",
                    remove=True,
                )  # fmt: skip
                return str(out.decode().strip())  # the log keeps whole lines only

            assert attack("forged." + "A" * 40) == "401"  # not a token we made
            assert attack(leaked) == "403"  # a real token, but not from web-1's address
        after = store.servers.get("e2e", "web-1")
    assert after is not None and after.host_keys == web1.host_keys and after.stage == web1.stage


def signalled(fleet: Fleet, signal: str, server: str) -> subprocess.CompletedProcess[str]:
    where = ("--state-dir", str(fleet.state_dir), "--format", "json")
    result = engine(
        "server", signal, str(fleet.spec_path), server, *where,
        cwd=fleet.root, env=fleet.env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, (
        result.stdout + result.stderr
    )
    return result


def server_events(fleet: Fleet, server: str) -> list[str]:
    with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
        kinds = [e.kind for e in store.events.all("e2e") if e.server == server]
    return [k for k in kinds if k.startswith("server.") and k.count(".") == 2]


def test_poweroff_poweron_and_reboot_act_on_the_machine(fleet: Fleet, docker_client: Any) -> None:
    def state() -> dict[str, Any]:
        return dict(docker_client.containers.get("e2e-web-2").attrs["State"])

    booted = state()["StartedAt"]
    signalled(fleet, "poweroff", "web-2")
    assert state()["Running"] is False
    signalled(fleet, "poweron", "web-2")
    assert state()["Running"] is True and state()["StartedAt"] != booted
    started = state()["StartedAt"]
    signalled(fleet, "reboot", "web-2")
    assert state()["Running"] is True and state()["StartedAt"] != started
    assert server_events(fleet, "web-2") == [
        f"server.{signal}.{outcome}"
        for signal in ("poweroff", "poweron", "reboot")
        for outcome in ("started", "succeeded")
    ]


def test_a_snapshot_is_an_image_labelled_for_the_fleet(fleet: Fleet, docker_client: Any) -> None:
    result = signalled(fleet, "snapshot", "db-1")
    reference = json.loads(result.stdout.splitlines()[-1])["message"].split("snapshot ")[-1]
    assert reference.startswith("fleet-snapshot/e2e:db-1-")
    image = docker_client.images.get(reference)
    try:
        labels = image.labels
        assert (labels["fleet"], labels["fleet-server"], labels["managed-by"]) == (
            "e2e", "db-1", "fleet-engine",
        )  # fmt: skip
    finally:
        docker_client.images.remove(image.id, force=True)


def test_rebuild_makes_the_machine_again_with_fresh_user_data_and_it_is_ready(
    fleet: Fleet, docker_client: Any
) -> None:
    container = docker_client.containers.get("e2e-web-1").id
    with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
        old = store.servers.get("e2e", "web-1")
        document = store.user_data.get("e2e", "web-1")
        assert document is not None
    result = signalled(fleet, "rebuild", "web-1")
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["ready"] == ["web-1"], done
    assert docker_client.containers.get("e2e-web-1").id != container
    with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
        new = store.servers.get("e2e", "web-1")
        renewed = store.user_data.get("e2e", "web-1")
        assert renewed is not None and renewed.sha256 != document.sha256  # a new token
    assert old is not None and new is not None and new.stage is Stage.READY
    assert new.provider_id != old.provider_id and new.host_keys != old.host_keys
    assert new.host_keys_source == "phone-home"
    assert fleet.plan() == []


def test_kill_9_at_a_random_moment_then_up_again_finishes_exactly_once(
    dockerd: PrivateDaemon, docker_client: Any, golden_image: str, tmp_path: Path
) -> None:
    crash = Fleet(tmp_path, dockerd, {**SPEC, "name": "crash"})
    moment = random.uniform(1.0, 25.0)
    print(f"killing engine up after {moment:.1f} s")  # shown when the test fails
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", *crash.args("up", "--yes")],
        cwd=crash.root,
        env={**crash.env, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    done = crash.up()
    assert sorted(done["ready"]) == ["db-1", "web-1", "web-2"]
    made = containers(docker_client, "crash")
    assert sorted(made) == ["crash-db-1", "crash-web-1", "crash-web-2"]
    assert crash.plan() == []
    destroyed = crash.run("destroy", "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    nothing_left(docker_client, crash, "crash")


# `engine ARGS` (argv[2:]) as from a shell, counting the opens of the spec file (argv[1]).
COUNTING_SPEC_OPENS = """
import sys
spec, argv, opened = sys.argv[1], sys.argv[2:], []
sys.addaudithook(lambda event, args: event == "open" and args[0] == spec and opened.append(1))
from engine.cli import main
code = main(argv)
print(f"the spec was opened {len(opened)} time(s)", file=sys.stderr)
sys.exit(code)
"""


def test_up_reads_the_spec_once_and_plans_with_what_it_holds_open(
    dockerd: PrivateDaemon, docker_client: Any, golden_image: str, tmp_path: Path
) -> None:
    once = Fleet(
        tmp_path, dockerd, {**SPEC, "name": "once", "groups": [{"name": "web", "count": 1}]}
    )
    result = subprocess.run(
        [sys.executable, "-c", COUNTING_SPEC_OPENS, str(once.spec_path),
         *once.args("up", "--yes", "--format", "json")],
        capture_output=True, text=True, cwd=once.root, timeout=900,
        env={**once.env, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        done = json.loads(result.stdout.splitlines()[-1])
        assert done["event"] == "done" and done["ready"] == ["web-1"], done
        assert "the spec was opened 1 time(s)" in result.stderr.splitlines(), result.stderr
    finally:
        assert once.run("destroy", "--yes").returncode == 0
    nothing_left(docker_client, once, "once")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Two fresh ed25519 key pairs of people: each one's private key and public key line."""
    folder = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("first", "second"):
        private = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)],
            check=True,
        )
        pairs[name] = (private, private.with_suffix(".pub").read_text().strip())
    return pairs


def logs_in(fleet: Fleet, server: str, key: Path) -> bool:
    """Whether the admin user logs in to `server` with `key` (its host key pinned from the
    store, as the engine pins it)."""
    with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
        record = store.servers.get("e2e", server)
    assert record is not None and record.ipv4
    known = key.with_name(f"known-{server}")
    known.write_text("".join(f"{record.ipv4} {line}\n" for _, line in record.host_keys))
    result = subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
         "-o", "ConnectTimeout=10", f"fleet@{record.ipv4}", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode in (0, 255), result.stderr
    assert "Host key verification failed" not in result.stderr
    return result.returncode == 0


def in_server(docker_client: Any, server: str, script: str) -> str:
    """Run `script` as root in the server's machine; its output."""
    code, out = docker_client.containers.get(f"e2e-{server}").exec_run(["sh", "-c", script])
    assert code == 0, out
    return str(out.decode())


def stages(fleet: Fleet) -> dict[str, str]:
    return {s["name"]: s["stage"] for s in fleet.status()["servers"]}


def test_up_converges_after_a_stop_a_removal_and_a_kill_mid_install(
    fleet: Fleet, docker_client: Any, keys: dict[str, tuple[Path, str]]
) -> None:
    """Three faults at once, and a key added to the spec: `engine up` converges without
    destroy; the next one has nothing to do."""
    names = sorted(stages(fleet))
    assert len(names) >= 3 and set(stages(fleet).values()) == {"ready"}
    added, public = keys["first"]
    spec = yaml.safe_load(fleet.spec_path.read_text())
    spec["ssh"] = {"authorized_keys": [public]}
    fleet.write(spec)
    assert not logs_in(fleet, "web-1", added)
    docker_client.containers.get("e2e-web-1").stop()
    docker_client.containers.get("e2e-web-2").remove(force=True)

    plan = json.loads(fleet.run("preview", "--format", "json").stdout)
    planned = {c["server"]: c for c in plan["changes"]}
    assert planned["web-1"]["action"] == "power_on"
    assert "but local says it is exited (exit code 0" in planned["web-1"]["reasons"][0]
    assert planned["web-2"]["action"] == "create"
    assert "it was ready, and was deleted outside the engine" in planned["web-2"]["reasons"][1]
    assert planned["db-1"]["action"] == "reinstall"  # the key: what the install puts changed

    run = subprocess.Popen(
        [sys.executable, "-m", "engine", *fleet.args("up", "--yes", "--format", "json")],
        cwd=fleet.root, env={**fleet.env, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def installing_db1() -> bool:
        with open_store(f"sqlite:///{fleet.state_dir / 'state.db'}") as store:
            running = store.jobs.all("e2e", kind="install", states=(JobState.RUNNING,))
        return any(job.server == "db-1" for job in running)

    wait_until(installing_db1, timeout_s=600, what="db-1's reinstall to run")
    docker_client.containers.get("e2e-db-1").kill()
    out, err = run.communicate(timeout=900)
    assert "Traceback" not in err, err
    print(out[-3000:])  # shown when the test fails: how that run went

    done = fleet.up()  # it carries on, whatever the run with the kill got to
    assert sorted(done["ready"]) == names and done["not_ready"] == {}
    machines = containers(docker_client, "e2e")
    assert sorted(machines) == [f"e2e-{n}" for n in names]  # exactly one each
    for name in names:
        state = docker_client.containers.get(f"e2e-{name}").attrs["State"]
        assert state["Running"] is True, name
        assert logs_in(fleet, name, added), name  # the key added to the spec works
    assert set(stages(fleet).values()) == {"ready"}
    again = fleet.run("up", "--yes")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout


def test_a_rotated_key_a_new_agent_and_an_install_failed_on_purpose_converge(
    fleet: Fleet, docker_client: Any, keys: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """The spec drops a key for another, the engine is upgraded to a new agent, and web-1's
    install is made to fail: the run reports web-1 with its cause once its tries are spent;
    the next run retries it and every server runs the new agent with the new key only."""
    names = sorted(stages(fleet))
    removed, _ = keys["first"]
    added, public = keys["second"]
    assert all(logs_in(fleet, name, removed) for name in names)
    spec = yaml.safe_load(fleet.spec_path.read_text())
    spec["ssh"] = {"authorized_keys": [public]}
    fleet.write(spec)
    agents_before = {n: agent_image(docker_client, n) for n in names}

    # The engine, upgraded: a copy of it whose agent differs.
    upgraded = tmp_path / "engine-upgraded"
    for part in ("engine", "agent", "deploys", "stacks", "schemas"):
        shutil.copytree(ROOT / part, upgraded / part, ignore=shutil.ignore_patterns("__pycache__"))
    version = upgraded / "agent" / "fleet_agent" / "__init__.py"
    version.write_text(version.read_text() + "\n# the next agent\n")

    def upgraded_engine(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**fleet.env, "PYTHONPATH": str(upgraded)}
        result = engine(*fleet.args(*args), cwd=fleet.root, env=env, timeout=1200)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    hidden = 'for t in nft iptables; do p=$(command -v $t) && mv "$p" "$p.away"; done; true'
    in_server(docker_client, "web-1", hidden)
    failing = upgraded_engine("up", "--yes")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    said = failing.stdout.splitlines()
    (line,) = [s for s in said if s.startswith("web-1 is failed")]
    assert line.startswith("web-1 is failed after 3 tries: install failed after 2 attempt(s)")
    assert "neither nft nor iptables is installed" in line
    assert not [s for s in said if re.match(r"(web|db)-\d+ is ", s) and s != line]
    assert "`engine up` again carries on" in failing.stdout

    back = 'for f in $(find / -xdev -name \'*.away\'); do mv "$f" "${f%.away}"; done'
    in_server(docker_client, "web-1", back)
    plan = json.loads(upgraded_engine("preview", "--format", "json").stdout)
    (retry,) = plan["changes"]
    assert (retry["action"], retry["server"], retry["retry_by"]) == ("retry", "web-1", "install")
    assert retry["failed_attempts"] == 3
    result = upgraded_engine("up", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    agents_after = {n: agent_image(docker_client, n) for n in names}
    (new,) = set(agents_after.values())  # one agent everywhere, not the one before
    assert new not in agents_before.values()
    for name in names:
        assert logs_in(fleet, name, added), name
        assert not logs_in(fleet, name, removed), name  # the key removed stopped working
    assert set(stages(fleet).values()) == {"ready"}


def agent_image(docker_client: Any, server: str) -> str:
    """The image id the agent container runs on `server`."""
    return in_server(
        docker_client, server, "docker inspect --format '{{.Image}}' fleet-agent"
    ).strip()


def test_destroy_leaves_nothing_behind_but_the_snapshots_it_says_it_keeps(
    fleet: Fleet, docker_client: Any
) -> None:
    said = signalled(fleet, "snapshot", "web-2").stdout.splitlines()[-1]
    snapshot = json.loads(said)["message"].split("snapshot ")[-1]
    assert (fleet.state_dir / "locks" / "e2e").is_dir()  # the installs' locks, until now
    result = fleet.run("destroy", "--yes")
    assert result.returncode == 0, result.stderr
    assert "the group" not in result.stdout and "no longer" not in result.stdout
    assert "fleet e2e is being destroyed" in result.stdout
    # A snapshot is a backup: listed, kept, and how to delete it said.
    assert f"snapshot {snapshot} of web-2 (" in result.stdout
    assert "is kept: snapshots are backups" in result.stdout
    assert "--delete-snapshots` deletes them" in result.stdout
    assert "1 snapshot(s) kept." in result.stdout
    labels = docker_client.images.get(snapshot).labels
    fleet_id = (fleet.state_dir / "keys" / "e2e.id").read_text().strip()
    assert (labels["fleet"], labels["fleet-id"]) == ("e2e", fleet_id)
    # The fleet id stays with the snapshot it tells from another state directory's.
    nothing_left(docker_client, fleet, "e2e", kept=("keys/e2e.id",))
    # Asked to, destroy deletes it (the fleet's servers are gone already).
    result = fleet.run("destroy", "--yes", "--delete-snapshots")
    assert result.returncode == 0, result.stderr
    assert f"- snapshot {snapshot}  delete" in result.stdout, result.stdout
    assert "1 snapshot(s) deleted." in result.stdout
    assert not [i for i in docker_client.images.list() if snapshot in i.tags]
    nothing_left(docker_client, fleet, "e2e")
