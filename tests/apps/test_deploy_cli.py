"""`engine deploy` as users run it, against a state store that a test writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.model import Stage
from engine.state import ServerRecord
from engine.state.store import open_store
from tests.fakes.hcloud import FakeHcloud
from tests.support.cli import engine
from tests.support.http import serve

SPEC = """\
apiVersion: fleet/v1
kind: Fleet
name: shop
provider: { name: hcloud, token_env: HCLOUD_TOKEN }
control_plane: { url: "https://ops.example.com" }
ssh:
  authorized_keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIIQIfECSSnCYSDqdl/sqO/uvukuj+zuzCcu54xFq5J8 ops@laptop
defaults: { server_type: cx22, image: debian-12, locations: [fsn1] }
groups:
  - name: web
    count: 1
apps:
  - name: site
    image: ghcr.io/acme/site:1.4.2
    ports: ["80:8080"]
    on: [web]
"""


@pytest.mark.parametrize("format", ["text", "json"])
def test_an_app_whose_servers_are_not_ready_is_not_deployed_and_it_says_so(
    tmp_path: Path, format: str
) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(SPEC)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(state) as store:
        store.servers.save(
            ServerRecord(
                fleet="shop",
                name="web-1",
                group="web",
                provider="hcloud",
                provider_id="4711",
                stage=Stage.FAILED,
            )
        )
    result = engine(
        "deploy", str(spec), "--state", state, "--state-dir", str(tmp_path), "--format", format
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "up to date" not in result.stdout
    assert result.stderr.strip() == (
        "error: not deployed: site on web-1, whose servers are not ready or whose agents did "
        f"not answer; `engine up {spec}` makes them ready (it starts a server that is off and "
        "installs an agent that is gone again) and rolls the apps out there, or `engine status` "
        "says why not"
    )
    if format == "json":
        (done,) = [e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "done"]
        assert done["ok"] is False
        assert done["waiting"] == {"site": ["web-1"]}


def test_a_secret_the_agent_cannot_take_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    # A 70 KB secret failed on each server with the agent's "request body larger than 65536
    # bytes", naming no variable.
    value = "x" * (70 * 1024)
    spec = tmp_path / "shop.yaml"
    spec.write_text(SPEC.replace("    on: [web]\n", "    secret_env: [SITE_KEY]\n    on: [web]\n"))
    state = f"sqlite:///{tmp_path / 'state.db'}"
    open_store(state).close()  # a store, so deploy gets as far as the secrets
    result = engine(
        "deploy", str(spec), "--state", state, "--state-dir", str(tmp_path),
        env={"SITE_KEY": value},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    said = "the secret SITE_KEY in the engine's environment is 70 KB"
    assert said in result.stderr and "(nothing was changed)" in result.stderr
    assert value[:100] not in result.stdout + result.stderr


def test_a_preview_says_which_secrets_its_rollouts_need_that_are_not_set(tmp_path: Path) -> None:
    # The preview was clean; only `engine deploy` (or `up`) then said the secret was missing.
    fake = FakeHcloud()
    with serve(fake.app()) as url:
        spec = tmp_path / "shop.yaml"
        needs = SPEC.replace("    on: [web]\n", "    secret_env: [SITE_KEY]\n    on: [web]\n")
        spec.write_text(
            needs.replace(
                "token_env: HCLOUD_TOKEN", f'token_env: HCLOUD_TOKEN, endpoint: "{url}/v1"'
            )
        )
        shown = {}
        for env in ({}, {"SITE_KEY": "k" * 20}):
            result = engine(
                "preview", str(spec), "--format", "json", "--state-dir", str(tmp_path / "s"),
                env={"HCLOUD_TOKEN": fake.token, **env},
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            shown[bool(env)] = json.loads(result.stdout)["warnings"]
    said = (
        "the app rollouts need SITE_KEY from the engine's environment, which is not set here: "
        "`engine deploy` and `engine up` refuse them until exported"
    )
    assert said in shown[False] and said not in shown[True]
