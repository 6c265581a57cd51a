"""POST /v1/phone-home against the real control plane on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.model import Stage
from engine.state import JobState
from tests.controlplane.conftest import (
    HOST_KEYS,
    Plane,
    _plane,
    address,
    body,
    make_fleet,
)
from tests.fakes.hcloud import FakeHcloud
from tests.support.http import serve
from tests.support.wait import wait_until


def _error(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_a_valid_phone_home_pins_keys_moves_the_server_on_and_installs_it(plane: Plane) -> None:
    response = plane.phone_home_as(1)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted", "server": "web-1"}
    record = plane.store.servers.get("web-prod", "web-1")
    assert record is not None
    assert dict(record.host_keys) == HOST_KEYS
    assert record.host_keys_source == "phone-home"
    assert record.private_ips == ("10.0.0.5",)  # the provider gave none: filled in
    assert record.cloud_init_finished_at == dt.datetime(2026, 11, 5, 10, 0, 30, tzinfo=dt.UTC)
    stages = [t.stage for t in plane.store.servers.transitions("web-prod", "web-1")]
    assert stages[:3] == [Stage.CREATING, Stage.BOOTING, Stage.PHONED_HOME]
    installs = plane.store.jobs.all("web-prod", kind="install", server="web-1")
    assert len(installs) == 1
    wait_until(lambda: plane.installer.installed.get("web-1"), what="the install")
    wait_until(
        lambda: plane.store.jobs.get(installs[0].id).state is JobState.SUCCEEDED,  # type: ignore[union-attr]
        what="the install job to succeed",
    )
    installed = plane.store.servers.get("web-prod", "web-1")
    assert installed is not None and installed.stage is Stage.INSTALLING
    assert installed.install_hash == plane.installer.installed["web-1"]


def test_the_install_of_an_accepted_phone_home_starts_without_waiting_for_a_poll(
    plane: Plane,
) -> None:
    for worker in plane.running.workers.workers:
        worker.idle_poll_s = 3600  # idle workers look again in an hour, unless woken
    plane.running.workers.wake()  # each one's current short wait ends: the long ones begin
    assert plane.phone_home_as(1).status_code == 200
    wait_until(lambda: plane.installer.calls == ["web-1"], what="the install to start")


def test_a_retry_of_an_accepted_request_is_answered_again_without_doing_anything(
    plane: Plane,
) -> None:
    token = plane.token("web-1")
    assert plane.phone_home_as(1, token).status_code == 200
    # Settled: the install job recorded as done (the installer returning is not yet that).
    wait_until(
        lambda: [j.state for j in plane.store.jobs.all("web-prod")] == [JobState.SUCCEEDED],
        what="the install job to succeed",
    )
    before = plane.store.servers.transitions("web-prod"), plane.store.jobs.all("web-prod")
    boot = {**body("x", "x", "1", "1.1.1.1")["boot"], "sent_at": "2026-11-05T10:00:45Z"}
    again = plane.phone_home_as(1, token, attempt=2, boot=boot)
    assert again.status_code == 200
    assert again.json()["status"] == "replayed"
    assert (plane.store.servers.transitions("web-prod"), plane.store.jobs.all("web-prod")) == before
    assert plane.installer.calls == ["web-1"]


def test_a_spent_token_with_a_different_request_is_refused(plane: Plane) -> None:
    token = plane.token("web-1")
    assert plane.phone_home_as(1, token).status_code == 200
    before = plane.snapshot()
    other_keys = {"ed25519": HOST_KEYS["ed25519"][:-4] + "AAAA"}
    response = plane.phone_home_as(1, token, host_keys=other_keys)
    assert response.status_code == 409
    assert _error(response) == "token_spent"
    assert plane.store.servers.get("web-prod", "web-1").host_keys == tuple(  # type: ignore[union-attr]
        sorted(HOST_KEYS.items())
    )
    assert len(plane.snapshot()[2]) == len(before[2])


def test_forged_expired_wrong_server_and_malformed_tokens_are_refused(plane: Plane) -> None:
    genuine = plane.token("web-1")
    forged = genuine[:-6] + ("AAAAAA" if not genuine.endswith("AAAAAA") else "BBBBBB")
    expired = plane.token("web-1", ttl_s=60, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    for_web_2 = plane.token("web-2")
    before = plane.snapshot()
    cases = [
        (forged, 401, "token_invalid"),
        (expired, 401, "token_expired"),
        (for_web_2, 403, "token_wrong_server"),
        ("not-a-token", 401, "token_invalid"),
        ("ph1.9999999999.AAAAAAAAAAAAAAAA." + "A" * 43, 401, "token_invalid"),
    ]
    for token, status, code in cases:
        response = plane.phone_home_as(1, token)
        assert (response.status_code, _error(response)) == (status, code), token
    assert plane.snapshot() == before


def test_a_token_from_one_fleet_cannot_touch_another(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    for plane in _plane(tmp_path, url, make_fleet("web-prod")):
        from engine.controlplane.fleets import register_fleet

        other = register_fleet(plane.store, make_fleet("staging"))
        plane.store.servers.save(
            plane.store.servers.get("web-prod", "web-1").__class__(  # type: ignore[union-attr]
                fleet="staging", name="web-1", group="web", provider="hcloud"
            )
        )
        from engine.controlplane.servers import register_server

        plane.store.servers.set_stage("staging", "web-1", Stage.CREATING)
        register_server(plane.store, other, "web-1", provider_id="4001", ipv4=address(1))
        staging_token = plane.token("web-1", fleet="staging")
        before = plane.snapshot(), plane.store.servers.all("staging")
        # The staging token, claiming to be web-prod's web-1 (same name, same instance id).
        response = plane.phone_home_as(1, staging_token)
        assert response.status_code == 403
        assert _error(response) == "token_wrong_fleet"
        # A web-prod token claiming staging's web-1.
        prod_token = plane.token("web-1")
        claim = body("staging", "web-1", "4001", address(1))
        response = plane.phone_home(prod_token, claim, source=address(1))
        assert (response.status_code, _error(response)) == (403, "token_wrong_fleet")
        assert (plane.snapshot(), plane.store.servers.all("staging")) == before


def test_the_instance_id_and_the_source_address_must_be_the_servers(plane: Plane) -> None:
    before = plane.snapshot()
    wrong_instance = plane.phone_home(
        plane.token("web-1"), body("web-prod", "web-1", "9999", address(1)), source=address(1)
    )
    assert (wrong_instance.status_code, _error(wrong_instance)) == (403, "instance_mismatch")
    wrong_source = plane.phone_home(
        plane.token("web-1"), body("web-prod", "web-1", "4001", address(1)), source="198.51.100.9"
    )
    assert (wrong_source.status_code, _error(wrong_source)) == (403, "source_address_mismatch")
    assert plane.snapshot() == before


def test_verify_source_ip_off_accepts_a_server_behind_nat(tmp_path: Path) -> None:
    fleet = make_fleet(verify_source_ip=False)
    for plane in _plane(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", fleet):
        response = plane.phone_home(
            plane.token("web-1"), body("web-prod", "web-1", "4001", address(1)), source="192.0.2.1"
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def fake_hcloud() -> Iterator[tuple[FakeHcloud, str]]:
    fake = FakeHcloud()
    with serve(fake.app()) as base:
        yield fake, f"{base}/v1"


def test_without_a_recorded_id_the_inventory_vouches_for_the_instance(
    tmp_path: Path, fake_hcloud: tuple[FakeHcloud, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, endpoint = fake_hcloud
    monkeypatch.setenv("HCLOUD_TOKEN", fake.token)
    fleet = make_fleet()
    fleet = fleet.__class__(
        **{
            **{f: getattr(fleet, f) for f in fleet.__dataclass_fields__},
            "provider": fleet.provider.__class__(
                name=fleet.provider.name, token_env="HCLOUD_TOKEN", endpoint=endpoint
            ),
        }
    )
    owned = {"fleet": "web-prod", "managed-by": "fleet-engine", "fleet-group": "web"}
    listed = {
        n: fake.add_server(f"web-{n}", labels={**owned, "fleet-server": f"web-{n}"}) for n in (4, 5)
    }
    fake.add_server("web-6", labels={"fleet-server": "web-6", "fleet": "web-prod"})  # not ours
    for plane in _plane(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", fleet):
        plane.add_servers(3, start=4, provider_ids=False)
        for n in (4, 5, 6):
            plane.store.servers.update("web-prod", f"web-{n}", ipv4=address(n))
        ok = plane.phone_home(
            plane.token("web-4"),
            body("web-prod", "web-4", str(listed[4]["id"]), address(4)),
            source=address(4),
        )
        assert ok.status_code == 200, ok.text
        assert plane.store.servers.get("web-prod", "web-4").provider_id == str(listed[4]["id"])  # type: ignore[union-attr]
        ok = plane.phone_home(
            plane.token("web-5"),
            body("web-prod", "web-5", str(listed[5]["id"]), address(5)),
            source=address(5),
        )
        assert ok.status_code == 200, ok.text
        assert fake.count("/v1/servers") == 1  # one read served both
        unlisted = plane.phone_home(
            plane.token("web-6"), body("web-prod", "web-6", "77", address(6)), source=address(6)
        )
        assert unlisted.status_code == 503
        assert unlisted.headers["Retry-After"] == "5"
        assert plane.store.servers.get("web-prod", "web-6").stage is Stage.CREATING  # type: ignore[union-attr]
        for _ in range(5):  # asked again at once: no new read
            plane.phone_home(
                plane.token("web-6"), body("web-prod", "web-6", "77", address(6)), source=address(6)
            )
        assert fake.count("/v1/servers") == 1


def test_bad_bodies_get_4xx_with_field_errors_and_change_nothing(plane: Plane) -> None:
    token = plane.token("web-1")
    url = f"{plane.url}/v1/phone-home"
    auth = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address(1)}
    before = plane.snapshot()
    json_headers = {**auth, "Content-Type": "application/json"}
    malformed = plane.client.post(url, content=b'{"version": 1,', headers=json_headers)
    assert (malformed.status_code, _error(malformed)) == (400, "malformed_json")
    invalid = body("web-prod", "web-1", "4001", address(1), attempt=0)
    invalid["addresses"]["public_ipv4"] = ["not-an-ip"]
    invalid["host_keys"] = {"ed25519": "ssh-rsa AAAA"}
    del invalid["cloud_init"]
    refused = plane.phone_home(token, invalid, source=address(1))
    assert refused.status_code == 422
    paths = {f["path"] for f in refused.json()["error"]["fields"]}
    assert paths == {"(body)", "addresses.public_ipv4[0]", "attempt", "host_keys.ed25519"}
    huge = body("web-prod", "web-1", "4001", address(1), hostname="x" * 100_000)
    too_large = plane.phone_home(token, huge, source=address(1))
    assert (too_large.status_code, _error(too_large)) == (413, "body_too_large")
    chunked = plane.client.post(
        url, content=iter([b'{"a": "', b"y" * 70_000, b'"}']), headers=json_headers
    )
    assert chunked.status_code == 413
    form = plane.client.post(url, data={"a": "b"}, headers=auth)
    assert (form.status_code, _error(form)) == (415, "unsupported_media_type")
    unauthenticated = plane.client.post(url, json=body("web-prod", "web-1", "4001", address(1)))
    assert (unauthenticated.status_code, _error(unauthenticated)) == (401, "unauthenticated")
    assert plane.snapshot() == before
    assert plane.phone_home_as(1, token).status_code == 200  # the token was never spent


def test_tokens_never_reach_the_logs(plane: Plane, caplog: pytest.LogCaptureFixture) -> None:
    token = plane.token("web-1")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("uvicorn.access").info('"POST /v1/phone-home" Bearer %s', token)
        logging.getLogger("engine.controlplane").warning("header was Bearer %s", "abc.def-123")
        assert plane.phone_home_as(1, token).status_code == 200
    assert token not in caplog.text
    assert "abc.def-123" not in caplog.text
    assert "Bearer ***" in caplog.text
    events = plane.store.events.all("web-prod")
    assert all(token not in repr(e) for e in events)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_thousand_concurrent_phone_homes_are_each_recorded_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Valid phone-homes racing with identical retries and with other requests presenting
    the same tokens, so that they share batches: each server is accepted exactly once."""
    count = 1000
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    other_keys = {"ed25519": HOST_KEYS["ed25519"][:-4] + "AAAA"}
    for plane in _plane(tmp_path, url, make_fleet(), workers=0):
        plane.add_servers(count - 3, start=4)
        tokens = {n: plane.token(f"web-{n}") for n in range(1, count + 1)}
        sends = [(n, {}) for n in range(1, count + 1)]
        sends += [(n, {}) for n in range(1, 51)]  # the same request again
        sends += [(n, {"host_keys": other_keys}) for n in range(51, 101)]  # another request
        answers = asyncio.run(_send_all(plane.url, tokens, sends))

        statuses = Counter(status for _n, status, _outcome in answers)
        assert statuses == {200: count + 50, 409: 50}
        accepted = Counter(n for n, _status, outcome in answers if outcome == "accepted")
        assert accepted == dict.fromkeys(range(1, count + 1), 1)
        records = {r.name: r for r in plane.store.servers.all("web-prod")}
        assert {r.stage for r in records.values()} == {Stage.PHONED_HOME}
        assert len(records) == count
        installs = plane.store.jobs.all("web-prod", kind="install")
        assert sorted(j.server for j in installs) == sorted(records)
        phoned = [
            t for t in plane.store.servers.transitions("web-prod") if t.stage is Stage.PHONED_HOME
        ]
        assert sorted(t.server for t in phoned) == sorted(records)
        events = [e for e in plane.store.events.all("web-prod", limit=5000)]
        assert sorted(e.server or "" for e in events) == sorted(records)
        for n in range(51, 101):
            won = [a for a in answers if a[0] == n and a[2] == "accepted"]
            keys = dict(records[f"web-{n}"].host_keys)
            assert keys in (HOST_KEYS, other_keys) and len(won) == 1


async def _send_all(
    url: str, tokens: dict[int, str], sends: list[tuple[int, dict[str, Any]]]
) -> list[tuple[int, int, str]]:
    """POST each (server number, body changes) at once; (number, status, status or code)."""
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(n: int, changes: dict[str, Any]) -> tuple[int, int, str]:
            response = await client.post(
                f"{url}/v1/phone-home",
                json=body("web-prod", f"web-{n}", str(4000 + n), address(n), **changes),
                headers={"Authorization": f"Bearer {tokens[n]}", "X-Forwarded-For": address(n)},
            )
            document = response.json()
            outcome = document.get("status") or document["error"]["code"]
            return n, response.status_code, str(outcome)

        return list(await asyncio.gather(*(one(n, changes) for n, changes in sends)))
