"""`engine serve` as real processes: a killed worker's job is done once after a restart,
several workers on one PostgreSQL share the queue without running a job twice, and the fleet
API answers the keys `engine apikey` makes."""

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
import yaml

from engine.controlplane.fleets import register_fleet
from engine.controlplane.phonehome import install_job
from engine.model import Stage
from engine.state import JobState, Lease, ServerRecord
from engine.state.store import Store, open_store
from tests.controlplane.conftest import HOST_KEYS, make_fleet
from tests.fakes.hcloud import FakeHcloud
from tests.support.cli import ROOT, engine
from tests.support.http import serve as serve_app
from tests.support.postgres import Cluster
from tests.support.wait import wait_until


def _phoned_home(store: Store, count: int) -> None:
    register_fleet(store, make_fleet())
    for n in range(1, count + 1):
        store.servers.save(
            ServerRecord(
                fleet="web-prod",
                name=f"web-{n}",
                group="web",
                provider="hcloud",
                provider_id=str(4000 + n),
                ipv4=f"203.0.113.{n}",
                host_keys=tuple(sorted(HOST_KEYS.items())),
                host_keys_source="phone-home",
                stage=Stage.PHONED_HOME,
            )
        )
        store.jobs.enqueue(install_job("web-prod", f"web-{n}"))


@contextmanager
def _serve(
    url: str, state_dir: Path, env: dict[str, str], *more: str, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`engine serve` (install jobs run by tests/controlplane/probe.py, plus `more` options)
    and the URL it listens at; what it logs goes to `log`, if given."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            url,
            "--state-dir",
            str(state_dir),
            "--workers",
            "1",
            "--install-entry",
            "tests.controlplane.probe:install",
            *more,
        ],
        env={**os.environ, "PYTHONPATH": str(Path.cwd()), **env},
        stdout=subprocess.PIPE,
        stderr=log.open("w") if log else subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        said = process.stdout.readline()
        assert said.startswith("control plane listening on http://127.0.0.1:"), said
        yield process, said.split()[4]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def _log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_job_cut_off_by_a_killed_process_is_done_once_after_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    log, gate = tmp_path / "probe.log", tmp_path / "gate"
    log.touch()
    gate.touch()
    with open_store(url) as store:
        _phoned_home(store, 1)
    env = {"PROBE_LOG": str(log), "PROBE_GATE": str(gate)}
    with _serve(url, tmp_path / "state", env) as (first, _):
        wait_until(lambda: any(line[0] == "start" for line in _log(log)), what="the install")
        first.kill()  # SIGKILL, by the pid we started
        first.wait(timeout=10)
    gate.unlink()
    with open_store(url) as store:
        (job,) = store.jobs.all("web-prod", kind="install")
        assert job.state is JobState.RUNNING  # its worker died holding it
        with _serve(url, tmp_path / "state", env):
            done = wait_until(
                lambda: store.jobs.get(job.id).state is JobState.SUCCEEDED,  # type: ignore[union-attr]
                what="the job to be picked up again and finished",
            )
            assert done
        finished = store.jobs.get(job.id)
        record = store.servers.get("web-prod", "web-1")
    assert finished is not None and finished.attempts == 2
    assert [line[:2] for line in _log(log)] == [
        ["start", "web-1"],
        ["start", "web-1"],
        ["done", "web-1"],
    ]
    assert record is not None and record.install_hash == "sha256:probe"
    assert record.stage is Stage.INSTALLING and record.installed_at is not None


def test_several_workers_on_postgresql_share_the_queue_and_run_no_job_twice(
    tmp_path: Path, postgres: Cluster
) -> None:
    url = postgres.create_database()
    log = tmp_path / "probe.log"
    log.touch()
    count = 24
    with open_store(url) as store:
        _phoned_home(store, count)
        env = {"PROBE_LOG": str(log), "PROBE_SPREAD": "1"}
        with (
            _serve(url, tmp_path / "state", env),
            _serve(url, tmp_path / "state", env),
            _serve(url, tmp_path / "state", env),
        ):
            wait_until(
                lambda: all(
                    j.state is JobState.SUCCEEDED
                    for j in store.jobs.all("web-prod", kind="install")
                ),
                timeout_s=60,
                what="every install job to finish",
            )
        jobs = store.jobs.all("web-prod", kind="install")
    lines = _log(log)
    starts = [line[1] for line in lines if line[0] == "start"]
    assert sorted(starts) == sorted(f"web-{n}" for n in range(1, count + 1))  # each once
    assert len({line[2] for line in lines if line[0] == "start"}) >= 2
    assert all(job.attempts == 1 for job in jobs)


def test_the_fleet_api_answers_a_key_made_by_engine_apikey(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    where = ("--state", url, "--state-dir", str(tmp_path / "state"))
    made = engine("apikey", "create", "ops-dashboard", *where)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("fek_")  # as the README's curl example shows it
    for path in tmp_path.rglob("*"):  # stored only as an HMAC
        assert not path.is_file() or key.encode() not in path.read_bytes(), path
    listed = engine("apikey", "list", *where)
    assert listed.stdout.startswith("ops-dashboard\tread\tall fleets\tcreated ")
    assert key not in listed.stdout
    spec = str(ROOT / "specs" / "hetzner.yaml")
    with _serve(url, tmp_path / "state", {}, "--spec", spec) as (_, base):
        servers = f"{base}/v1/servers?fleet=web-prod"
        answer = httpx.get(servers, headers={"Authorization": f"Bearer {key}"})
        assert (answer.status_code, answer.json()["servers"]) == (200, [])
        assert httpx.get(servers).status_code == 401


def test_the_access_log_masks_a_key_or_password_sent_in_a_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    where = ("--state", url, "--state-dir", str(tmp_path / "state"))
    key = engine("apikey", "create", "ops", *where).stdout.strip()
    secret = key.rpartition("_")[2]
    log = tmp_path / "serve.log"
    with _serve(url, tmp_path / "state", {}, "--access-log", log=log) as (process, base):
        sent = [
            f"{base}/v1/fleets?api_key={key}",
            f"{base}/v1/fleets/{key}",
            f"{base}/v1/servers?fleet=web&password=Hunter2Secret",
        ]
        for address in sent:
            assert httpx.get(address).status_code in (401, 404)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    logged = log.read_text()
    assert logged.count("GET /v1/") == 3, logged
    assert secret not in logged and "Hunter2Secret" not in logged
    assert f"{key.rpartition('_')[0]}_***" in logged and "password=***" in logged


def test_a_killed_instances_fleet_is_reconciled_by_the_other_within_a_minute(
    tmp_path: Path, postgres: Cluster
) -> None:
    url = postgres.create_database()
    fake = FakeHcloud()
    fake.add_server("web-1", labels={"fleet": "web-prod", "managed-by": "fleet-engine"})
    with serve_app(fake.app()) as base:
        spec = yaml.safe_load((ROOT / "specs" / "hetzner.yaml").read_text())
        spec["provider"]["endpoint"] = f"{base}/v1"
        spec["control_plane"]["url"] = "https://127.0.0.1:8443"  # resolves without a network
        spec["install"]["agent"]["image"] = "registry.example.com/fleet-agent:1"
        spec["reconcile"] = {"interval": "10s"}
        path = tmp_path / "web-prod.yaml"
        path.write_text(yaml.safe_dump(spec))
        env = {"HCLOUD_TOKEN": fake.token}
        with (
            open_store(url) as store,
            _serve(url, tmp_path / "state", env, "--spec", str(path)) as (
                first,
                _,
            ),
        ):

            def owner() -> str:
                lease = store.leases.get("web-prod")
                if lease is None or lease.expires_at < dt.datetime.now(dt.UTC):
                    return ""
                return lease.owner.split("/")[1] if lease.last_run_at else ""

            assert wait_until(owner, what="a first reconcile run") == str(first.pid)
            drift = [e for e in store.events.all("web-prod") if e.kind == "reconcile.drift"]
            assert drift and "web-2 create" in drift[0].message  # report mode: nothing made
            with _serve(url, tmp_path / "state", env, "--spec", str(path)) as (second, _):
                first.kill()  # SIGKILL: its lease is never released
                first.wait(timeout=10)
                killed_at = dt.datetime.now(dt.UTC)

                def run_by_second() -> Lease | None:
                    lease = store.leases.get("web-prod")
                    ran = lease is not None and lease.last_run_at and lease.last_run_at > killed_at
                    return lease if ran and owner() == str(second.pid) else None

                lease = wait_until(
                    run_by_second, timeout_s=60, what="the other instance to run the fleet's loop"
                )
                assert lease.last_result["drift"] == len(drift[0].data["changes"])
            owners = [
                e.data["owner"] for e in store.events.all("web-prod") if e.kind == "reconcile.owner"
            ]
            assert [o.split("/")[1] for o in owners] == [str(first.pid), str(second.pid)]


def test_sigterm_lets_a_job_finish_within_the_drain_and_hands_back_one_past_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    log, gate = tmp_path / "probe.log", tmp_path / "gate"
    log.touch()
    gate.touch()
    with open_store(url) as store:
        _phoned_home(store, 2)  # one worker: web-1's install first, then web-2's
        env = {"PROBE_LOG": str(log), "PROBE_GATE": str(gate)}
        with _serve(url, tmp_path / "state", env, "--drain", "30") as (process, _):
            wait_until(lambda: _log(log), what="the install to start")
            process.send_signal(signal.SIGTERM)
            gate.unlink()  # the install can end now, within the drain
            assert process.wait(timeout=60) == 0
        jobs = {j.server: j for j in store.jobs.all("web-prod", kind="install")}
        assert jobs["web-1"].state is JobState.SUCCEEDED and jobs["web-1"].attempts == 1
        assert jobs["web-2"].state is JobState.QUEUED  # not started once stopping
        gate.touch()
        with _serve(url, tmp_path / "state", env, "--drain", "0.5") as (process, _):
            wait_until(lambda: len(_log(log)) == 3, what="the second install to start")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        (handed,) = [j for j in store.jobs.all("web-prod", kind="install") if j.server == "web-2"]
        assert handed.state is JobState.RUNNING  # its worker is gone and its lease ended:
        assert handed.lease_expires_at is not None  # the next worker claims it at once
        assert handed.lease_expires_at <= dt.datetime.now(dt.UTC)
        gate.unlink()
        with _serve(url, tmp_path / "state", env):
            wait_until(
                lambda: store.jobs.get(handed.id).state is JobState.SUCCEEDED,  # type: ignore[union-attr]
                what="the handed-back job to be done",
            )
    assert [line[:2] for line in _log(log)] == [
        ["start", "web-1"],
        ["done", "web-1"],
        ["start", "web-2"],
        ["start", "web-2"],
        ["done", "web-2"],
    ]


def test_health_says_a_fleet_whose_provider_cannot_be_reached_is_degraded(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    spec = str(ROOT / "specs" / "hetzner.yaml")
    env = {"HCLOUD_TOKEN": ""}
    with _serve(url, tmp_path / "state", env, "--spec", spec) as (_, base):
        health = httpx.get(f"{base}/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    (problem,) = health.json()["degraded"]
    assert problem.startswith("fleet web-prod: ") and "HCLOUD_TOKEN" in problem
