"""`engine status SPEC`: each server's stage and age, and the timing table (per-step durations
per server, medians over the fleet), as text and as JSON, from a real state store; and beside
a stage the provider disagrees with, what the provider says (from a fake of its API)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

from engine.model import Stage
from engine.state import ServerRecord
from engine.state.store import open_store, state_url
from tests.fakes.hcloud import FakeHcloud
from tests.support.clock import Clock
from tests.support.http import serve
from tests.test_cli import engine

SPEC = "specs/hetzner.yaml"  # the fleet web-prod


def _server(name: str) -> ServerRecord:
    return ServerRecord(fleet="web-prod", name=name, group="web", provider="hcloud")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Three servers of web-prod, an hour ago: two came up, one never phoned home.

    step          web-1   web-2   web-3
    create          20      30     100      (median 30: a mean would say 50)
    boot            30      40       -      (booting -> cloud-init finished)
    phone_home       2       4       -      (cloud-init finished -> phoned home)
    install         60     100       -
    agent            5       2       -
    """
    clock = Clock(dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1))
    start = clock.now
    with open_store(state_url(tmp_path), now=clock) as store:
        for name in ("web-1", "web-2", "web-3"):
            store.servers.save(_server(name))
            store.servers.set_stage("web-prod", name, Stage.CREATING)

        def at(seconds: int) -> dt.datetime:
            clock.now = start + dt.timedelta(seconds=seconds)
            return clock.now

        for name, create, boot, phone_home, install, agent in (
            ("web-1", 20, 30, 2, 60, 5),
            ("web-2", 30, 40, 4, 100, 2),
        ):
            at(create)
            store.servers.set_stage("web-prod", name, Stage.BOOTING)
            finished = at(create + boot)
            at(create + boot + phone_home)
            source = "keyscan" if name == "web-2" else "phone-home"
            store.servers.update(
                "web-prod",
                name,
                stage=Stage.PHONED_HOME,
                cloud_init_finished_at=finished,
                host_keys=(("ed25519", "ssh-ed25519 AAAA"),),
                host_keys_source=source,
            )
            store.servers.set_stage("web-prod", name, Stage.INSTALLING)
            installed = at(create + boot + phone_home + install)
            store.servers.update("web-prod", name, installed_at=installed)
            at(create + boot + phone_home + install + agent)
            store.servers.set_stage("web-prod", name, Stage.READY)
        at(100)
        store.servers.set_stage("web-prod", "web-3", Stage.BOOTING)
        at(700)
        store.servers.set_stage("web-prod", "web-3", Stage.FAILED, "not reachable: no SSH answer")
    return tmp_path


def test_json_has_each_servers_steps_and_the_medians(state_dir: Path) -> None:
    result = engine("status", SPEC, "--format", "json", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["version"], document["fleet"]) == (1, "web-prod")
    servers = {s["name"]: s for s in document["servers"]}
    assert list(servers) == ["web-1", "web-2", "web-3"]
    assert servers["web-1"]["steps"] == {
        "create": 20.0,
        "boot": 30.0,
        "phone_home": 2.0,
        "install": 60.0,
        "agent": 5.0,
    }
    assert servers["web-2"]["steps"] == {
        "create": 30.0,
        "boot": 40.0,
        "phone_home": 4.0,
        "install": 100.0,
        "agent": 2.0,
    }
    # Failed without a phone-home: nothing after its create is known.
    assert servers["web-3"]["steps"] == {
        "create": 100.0,
        "boot": None,
        "phone_home": None,
        "install": None,
        "agent": None,
    }
    assert document["medians"] == {
        "create": 30.0,
        "boot": 35.0,
        "phone_home": 3.0,
        "install": 80.0,
        "agent": 3.5,
    }
    assert [s["stage"] for s in servers.values()] == ["ready", "ready", "failed"]
    assert servers["web-3"]["stage_reason"] == "not reachable: no SSH answer"
    assert 3600 <= servers["web-1"]["age_s"] < 3600 + 300
    assert [t["stage"] for t in servers["web-1"]["transitions"]] == [
        "requested",
        "creating",
        "booting",
        "phoned_home",
        "installing",
        "ready",
    ]
    assert servers["web-2"]["host_keys_source"] == "keyscan"


def test_text_shows_the_timing_table_with_medians_and_warns_of_scanned_keys(
    state_dir: Path,
) -> None:
    result = engine("status", SPEC, "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "server",
        "stage",
        "age",
        "create",
        "boot",
        "phone-home",
        "install",
        "agent",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.startswith(("web", "med"))}
    assert rows["web-1"][0:2] == ["web-1", "ready"]
    assert rows["web-1"][2].endswith("m")  # about an hour: shown in minutes
    assert rows["web-1"][3:] == ["20.0s", "30.0s", "2.0s", "60.0s", "5.0s"]
    assert rows["web-2"][3:] == ["30.0s", "40.0s", "4.0s", "100.0s", "2.0s"]
    assert rows["web-3"][:2] == ["web-3", "failed"]
    assert rows["web-3"][3:] == ["100.0s", "-", "-", "-", "-"]
    assert rows["median"] == ["median", "30.0s", "35.0s", "3.0s", "80.0s", "3.5s"]
    assert "not reachable: no SSH answer" in result.stdout  # the failed server's reason
    warning = [line for line in lines if line.startswith("warning")]
    assert warning == [
        "warning: host keys of web-2 were read by ssh-keyscan during polling, NOT pinned "
        "from an authenticated phone-home"
    ]


def test_a_fleet_with_nothing_recorded_says_so(tmp_path: Path) -> None:
    text = engine("status", SPEC, "--state-dir", str(tmp_path))
    assert text.returncode == 0
    assert text.stdout.strip() == (
        f"fleet web-prod: no servers recorded yet (run engine up {SPEC})"
    )
    as_json = engine("status", SPEC, "--format", "json", "--state-dir", str(tmp_path))
    document = json.loads(as_json.stdout)
    assert document["servers"] == []
    assert document["medians"] == dict.fromkeys(
        ("create", "boot", "phone_home", "install", "agent")
    )
    assert not (tmp_path / "state.db").exists()  # reading the status created no store


def test_a_missing_spec_is_an_error_without_a_traceback(tmp_path: Path) -> None:
    result = engine("status", str(tmp_path / "nope.yaml"), "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert "nope.yaml" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_the_providers_view_is_shown_beside_a_stage_it_disagrees_with(
    state_dir: Path, tmp_path: Path
) -> None:
    fake = FakeHcloud()
    labels = {"fleet": "web-prod", "fleet-group": "web", "managed-by": "fleet-engine"}
    with open_store(state_url(state_dir)) as store:
        for name, status in (("web-1", "running"), ("web-2", "off")):
            made = fake.add_server(name, labels={**labels, "fleet-server": name}, status=status)
            store.servers.update("web-prod", name, provider_id=str(made["id"]))
        store.servers.update("web-prod", "web-3", provider_id="4711")  # failed, and gone
    with serve(fake.app()) as base:
        data = yaml.safe_load(Path(SPEC).read_text())
        data["provider"]["endpoint"] = f"{base}/v1"
        spec = tmp_path / "hetzner.yaml"
        spec.write_text(yaml.safe_dump(data))
        where = ("--state-dir", str(state_dir))
        env = {"HCLOUD_TOKEN": fake.token}
        as_json = engine("status", str(spec), "--format", "json", *where, env=env)
        text = engine("status", str(spec), *where, env=env)
    assert as_json.returncode == 0, as_json.stderr
    views = {s["name"]: s["provider_view"] for s in json.loads(as_json.stdout)["servers"]}
    assert {n: (v["status"], v["power"], v["disagrees"]) for n, v in views.items()} == {
        "web-1": ("running", "on", False),
        "web-2": ("off", "off", True),
        "web-3": ("missing", None, False),  # failed: the store does not claim it exists
    }
    lines = text.stdout.splitlines()
    web2 = lines.index(next(line for line in lines if line.startswith("web-2 ")))
    assert lines[web2 + 1].strip() == "hcloud says off, not ready: engine up powers it on"
    assert sum("engine up powers it on" in line for line in lines) == 1


def test_without_a_token_the_provider_is_not_read_and_status_says_why(state_dir: Path) -> None:
    result = engine("status", SPEC, "--state-dir", str(state_dir))
    assert "hcloud not read: export HCLOUD_TOKEN=... (a read-only token is enough)" in (
        result.stdout
    )
    document = json.loads(
        engine("status", SPEC, "--format", "json", "--state-dir", str(state_dir)).stdout
    )
    assert document["provider_unread"].startswith("export HCLOUD_TOKEN=")
    assert {s["provider_view"] for s in document["servers"]} == {None}
