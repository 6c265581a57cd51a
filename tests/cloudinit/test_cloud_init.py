"""Rendered user_data against the real cloud-init of the golden image.

Every rendered shape passes `cloud-init schema`, and a golden-image container booted with
rendered user_data phones home to a uvicorn receiver on this test's own docker bridge: with
the right token in the header, a body that fits schemas/phone-home.v1.schema.json and the
container's real host keys, which then pin a real SSH login as the admin user.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.cloudinit import LOG_PATH, TOKEN_PATH, phone_home_url, render_user_data
from engine.model import ProviderName
from engine.providers.local.dockerd import PrivateDaemon
from engine.providers.local.machines import MachineSpec, create_machine, write_seed
from tests.support.http import serve
from tests.support.keys import DEPLOY_KEY

pytestmark = pytest.mark.integration

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "phone-home.v1.schema.json").read_text()
)
CLOUD_INIT_SCHEMA = (
    "/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
)
RSA_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + "y" * 300 + " ops@desk"


def put_file(container: Any, path: str, text: str) -> None:
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(Path(path).name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    container.put_archive(str(Path(path).parent), buffer.getvalue())


@pytest.fixture(scope="module")
def idle_golden(docker_client: Any, golden_image: str) -> Iterator[Any]:
    """A golden-image container that only sleeps: a place to run cloud-init's tools."""
    container = docker_client.containers.run(
        golden_image,
        entrypoint=["sleep", "infinity"],
        name=f"ci-schema-{secrets.token_hex(4)}",
        detach=True,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def rendered_shapes() -> dict[str, str]:
    common: dict[str, Any] = {
        "fleet": "web-prod",
        "hostname": "web-1",
        "phone_home_url": phone_home_url("https://ops.example.com"),
        "token": "tok-" + "a" * 40,
        "admin_user": "fleet",
    }
    return {
        "hcloud": render_user_data(
            **common,
            server="web-1",
            authorized_keys=(RSA_KEY, DEPLOY_KEY),
            provider=ProviderName.HCLOUD,
            packages=("jq", "python3-apt"),
            ssh_port=2222,
        ),
        "digitalocean": render_user_data(
            **common,
            server="api-1",
            authorized_keys=(DEPLOY_KEY,),
            provider=ProviderName.DIGITALOCEAN,
        ),
        "local": render_user_data(
            **{**common, "phone_home_url": "http://10.130.0.1:41234/v1/phone-home"},
            server="web-2",
            authorized_keys=(DEPLOY_KEY,) * 1,
            provider=ProviderName.LOCAL,
            give_up_after_s=600,
        ),
    }


def cloud_init_schema(container: Any, name: str, text: str) -> tuple[int, str]:
    put_file(container, f"/tmp/{name}.yaml", text)
    result = container.exec_run(["cloud-init", "schema", "--config-file", f"/tmp/{name}.yaml"])
    return result.exit_code, result.output.decode()


def test_every_rendered_shape_passes_cloud_init_schema(idle_golden: Any) -> None:
    raw = idle_golden.exec_run(["cat", CLOUD_INIT_SCHEMA]).output
    schema = json.loads(raw)
    known = {key for part in schema["$defs"].values() for key in part.get("properties", {})}
    for name, text in rendered_shapes().items():
        code, output = cloud_init_schema(idle_golden, name, text)
        assert code == 0, f"{name}: {output}"
        # cloud-init 22.4 does not flag unknown top-level keys, so check them here.
        assert set(yaml.safe_load(text)) <= known, name


def test_cloud_init_schema_does_catch_a_broken_document(idle_golden: Any) -> None:
    code, output = cloud_init_schema(
        idle_golden, "broken", "#cloud-config\nusers: [{name: x, lock_passwd: maybe}]\n"
    )
    assert code == 1
    assert "lock_passwd" in output


class Receiver:
    """A phone-home endpoint that answers with scripted statuses and records every request."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any], int]] = []
        self.changed = threading.Condition()
        self.app = Starlette(routes=[Route("/v1/phone-home", self.handle, methods=["POST"])])

    def answer(self, *statuses: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these statuses (the last one repeats); forget the past."""
        with self.changed:
            self.script = [s if isinstance(s, tuple) else (s, {}) for s in statuses]
            self.requests.clear()

    def wait_for(self, requests: int = 1, *, accepted: bool = False, timeout: float = 180) -> None:
        """Wait until `requests` requests arrived (and the last was answered 2xx)."""

        def arrived() -> bool:
            done = len(self.requests) >= requests
            return done and (not accepted or self.requests[-1][2] < 300)

        with self.changed:
            assert self.changed.wait_for(arrived, timeout), self.requests

    async def handle(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.changed:
            status, headers = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            self.requests.append((dict(request.headers), body, status))
            self.changed.notify_all()
        return JSONResponse({"status": status}, status_code=status, headers=headers)


def wait_for_log(container: Any, text: str, timeout: float = 60) -> str:
    """The phone-home log once it holds `text` (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        log = container.exec_run(["cat", LOG_PATH]).output.decode()
        if text in log or time.monotonic() > deadline:
            assert text in log, log
            return log
        time.sleep(0.2)


@pytest.fixture(scope="module")
def receiver(dockerd: PrivateDaemon) -> Iterator[tuple[Receiver, str]]:
    """The receiver on the gateway of this session's docker bridge, where containers reach it."""
    found = Receiver()
    gateway = str(dockerd.subnet.network_address + 1)
    with serve(found.app, host=gateway) as url:
        yield found, url


def run_on_host(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_booted_server_phones_home_and_its_host_keys_pin_ssh(
    docker_client: Any,
    golden_image: str,
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    found, url = receiver
    found.answer(503)
    key = tmp_path / "id_ed25519"
    run_on_host("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key), "-C", "ops@test")
    user_key = (tmp_path / "id_ed25519.pub").read_text().strip()
    name = f"ph-{secrets.token_hex(3)}"
    token = secrets.token_urlsafe(32)
    instance_id = f"i-{secrets.token_hex(6)}"
    write_seed(
        tmp_path / "seed",
        instance_id=instance_id,
        hostname=name,
        user_data=render_user_data(
            fleet="demo",
            server=name,
            hostname=name,
            phone_home_url=phone_home_url(url),
            token=token,
            admin_user="fleet",
            authorized_keys=(user_key, DEPLOY_KEY),
            provider=ProviderName.LOCAL,
            ssh_port=2222,
        ),
    )
    container = create_machine(
        docker_client,
        MachineSpec(name=name, hostname=name, image=golden_image, seed_dir=tmp_path / "seed"),
    )
    try:
        # The control plane is down during the first boot; the server reboots before it is up
        # (`docker stop` + `start` is a reboot: per-instance cloud-init modules do not rerun).
        found.wait_for(1)
        container.stop(timeout=20)
        found.answer((429, {"Retry-After": "1"}), 200)
        container.start()
        found.wait_for(2, accepted=True)
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]

        assert [status for _, _, status in found.requests] == [429, 200]
        headers, body, _ = found.requests[-1]
        assert headers["authorization"] == f"Bearer {token}"
        assert token not in json.dumps(body)
        errors = Draft202012Validator(SCHEMA, format_checker=FormatChecker()).iter_errors(body)
        assert [e.message for e in errors] == []
        assert (body["fleet"], body["server"], body["hostname"]) == ("demo", name, name)
        assert (body["provider"], body["instance_id"]) == ("local", instance_id)
        assert body["attempt"] == 2
        assert address in body["addresses"]["private"]
        assert body["cloud_init"] == {"status": "done", "errors": []}, body["cloud_init"]
        assert body["boot"]["cloud_init_finished_at"] is not None
        real_keys = {
            kind: " ".join(
                container.exec_run(["cat", f"/etc/ssh/ssh_host_{kind}_key.pub"])
                .output.decode()
                .split()[:2]
            )
            for kind in ("ed25519", "ecdsa")
        }
        assert body["host_keys"] == real_keys

        log = wait_for_log(container, "accepted with HTTP 200")
        assert "HTTP 503" in log and "HTTP 429" in log
        assert token not in log
        assert container.exec_run(["stat", "-c", "%a", LOG_PATH]).output.strip() == b"600"
        assert container.exec_run(["test", "-e", TOKEN_PATH]).exit_code == 1
        status = container.exec_run(["cloud-init", "status", "--long"]).output.decode()
        assert "status: done" in status, status
        assert container.exec_run(["passwd", "-S", "fleet"]).output.split()[1] == b"L"

        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[{address}]:2222 {body['host_keys']['ed25519']}\n")
        login = run_on_host(
            "ssh", "-p", "2222", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "HostKeyAlgorithms=ssh-ed25519",
            f"fleet@{address}", "sudo", "-n", "id", "-u",
        )  # fmt: skip
        assert (login.returncode, login.stdout.strip()) == (0, "0"), login.stderr
        as_root = run_on_host(
            "ssh", "-p", "2222", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", f"root@{address}", "true",
        )  # fmt: skip
        assert as_root.returncode != 0

        # Once it has phoned home, later boots leave the control plane alone.
        found.answer(200)
        container.stop(timeout=20)
        container.start()
        wait_for_log(container, "nothing to do")
        assert found.requests == []

        # A refusal (4xx other than 429) is final: one request, logged, token file removed.
        found.answer(401)
        second = secrets.token_urlsafe(32)
        put_file(container, TOKEN_PATH, second)
        run = container.exec_run(["python3", "/usr/local/sbin/fleet-phone-home"])
        assert run.exit_code == 1
        assert [(h["authorization"], s) for h, _, s in found.requests] == [
            (f"Bearer {second}", 401)
        ]
        log = container.exec_run(["cat", LOG_PATH]).output.decode()
        assert "refused with HTTP 401" in log and second not in log
        assert container.exec_run(["test", "-e", TOKEN_PATH]).exit_code == 1

        # An unreachable control plane: retries until the deadline, then gives up.
        found.answer(503)
        put_file(container, TOKEN_PATH, secrets.token_urlsafe(32))
        settings = json.loads(container.exec_run(["cat", "/etc/fleet/phone-home.json"]).output)
        put_file(
            container, "/etc/fleet/phone-home.json", json.dumps(settings | {"give_up_after_s": 3})
        )
        run = container.exec_run(["python3", "/usr/local/sbin/fleet-phone-home"])
        assert run.exit_code == 2
        assert len(found.requests) >= 2
        assert "giving up after" in container.exec_run(["cat", LOG_PATH]).output.decode()
    finally:
        container.remove(force=True, v=True)
        docker_client.volumes.get(f"{name}-docker").remove()
