"""`engine preview` and `engine unlock` as users run them: against git refs, against fake
provider APIs on loopback, with a state store, and when things go wrong."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from engine.model import Stage
from engine.providers.local.dockerd import PrivateDaemon
from engine.state import ServerRecord
from engine.state.store import open_store
from stacks.common import ssh_fingerprint, ssh_key_name
from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.support.cli import ROOT, engine
from tests.support.http import serve
from tests.support.postgres import Cluster
from tests.support.readme import assert_shaped_like, console_example, section

SCHEMA = json.loads((ROOT / "schemas" / "plan.v2.schema.json").read_text())
HETZNER = yaml.safe_load((ROOT / "specs" / "hetzner.yaml").read_text())
DIGITALOCEAN = yaml.safe_load((ROOT / "specs" / "digitalocean.yaml").read_text())


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _write(path: Path, spec: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose main branch holds specs/web.yaml (the Hetzner example)."""
    _git(tmp_path, "init", "-q", "-b", "main")
    _write(tmp_path / "specs" / "web.yaml", HETZNER)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "fleet")
    return tmp_path


def _edit(repo: Path, **changes: object) -> None:
    spec = yaml.safe_load((repo / "specs" / "web.yaml").read_text())
    web = spec["groups"][0]
    web.update(changes)
    _write(repo / "specs" / "web.yaml", spec)


def test_against_ref_needs_no_credentials_and_shows_the_change(repo: Path) -> None:
    _edit(repo, count=4, server_type="cx42")
    result = engine("preview", "specs/web.yaml", "--against-ref", "main", cwd=repo)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "compared with the spec at main" in out
    assert "  + web-4" in out and "create" in out
    for n in (1, 2, 3):
        assert f"  ~ web-{n}" in out
    assert "server_type: cx32 -> cx42" in out
    # web-4 joins the load balancer's targets too.
    assert "Plan: 1 to create, 3 to resize; 2 unchanged; resources: 1 to update." in out
    assert not (repo / ".engine").exists()  # nothing written, no state store created


def test_detailed_exit_codes(repo: Path) -> None:
    args = ("preview", "specs/web.yaml", "--against-ref", "main", "--detailed-exitcode")
    assert engine(*args, cwd=repo).returncode == 0
    _edit(repo, count=4)
    assert engine(*args, cwd=repo).returncode == 2
    _edit(repo, count=19, placement="none")  # over the spec's limits: blocked, an error
    blocked = engine(*args, cwd=repo)
    assert blocked.returncode == 1
    assert "error[over_limit] limits.servers: planned 21 > 20 (now 5)" in blocked.stdout


def test_a_plan_over_a_limit_fails_with_the_readmes_message(repo: Path) -> None:
    """The README's limits example: 40 vCPUs now (five cx42), four more cx42 planned."""
    spec = yaml.safe_load((repo / "specs" / "web.yaml").read_text())
    for group in spec["groups"]:
        group["server_type"] = "cx42"
    _write(repo / "specs" / "web.yaml", spec)
    _git(repo, "commit", "-q", "-am", "cx42")
    _edit(repo, count=7)
    found = re.search(r"a plan over a limit fails with `([^`]+)`", section("Preview"))
    assert found, "the README's Preview section gives no limit message"
    message = " ".join(found.group(1).split())
    result = engine("preview", "specs/web.yaml", "--against-ref", "main", cwd=repo)
    assert result.returncode == 1
    assert f"  error[over_limit] {message}; " in result.stdout, result.stdout  # then a hint


def test_markdown_and_json_formats(repo: Path) -> None:
    _edit(repo, count=4)
    markdown = engine(
        "preview", "specs/web.yaml", "--against-ref", "main", "--format", "markdown", cwd=repo
    )
    assert markdown.returncode == 0
    assert markdown.stdout.startswith("<!-- fleet-engine-preview: specs/web.yaml part 1/1 -->")
    assert "**1 to create; 5 unchanged; resources: 1 to update**" in markdown.stdout
    assert "| `~` | load balancer `web-prod-web` | update |" in markdown.stdout
    result = engine(
        "preview", "specs/web.yaml", "--against-ref", "main", "--format", "json", cwd=repo
    )
    document = json.loads(result.stdout)
    Draft202012Validator(SCHEMA).validate(document)
    assert document["summary"]["create"] == 1 and document["compared_with"] == "the spec at main"
    assert document["cost"]["monthly_delta"] == pytest.approx(8.66)


def _on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """What `engine ARGS` shows on a terminal (a pseudo-terminal as its stdout and stderr)."""
    main, child = pty.openpty()
    command = [sys.executable, "-m", "engine", *args]
    with subprocess.Popen(command, stdout=child, stderr=child, cwd=cwd, env=env) as process:
        os.close(child)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the engine closed its side
                break
            if not chunk:
                break
            shown += chunk
        process.wait(timeout=60)
    os.close(main)
    return shown.decode()


def test_text_is_coloured_on_a_terminal_unless_no_color_is_set(repo: Path) -> None:
    _edit(repo, count=4)
    args = ["preview", "specs/web.yaml", "--against-ref", "main"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    coloured = _on_a_terminal(args, repo, env)
    assert "\x1b[32m  +\x1b[0m web-4" in coloured
    plain = _on_a_terminal(args, repo, env | {"NO_COLOR": "1"})
    assert "  + web-4" in plain and "\x1b[" not in plain


def test_a_spec_new_in_the_working_tree_is_all_creates(repo: Path) -> None:
    spec = dict(HETZNER, name="blog")
    _write(repo / "specs" / "blog.yaml", spec)
    result = engine("preview", "specs/blog.yaml", "--against-ref", "main", cwd=repo)
    assert result.returncode == 0
    assert "specs/blog.yaml does not exist at main: every server is new" in result.stdout
    assert "Plan: 5 to create; 0 unchanged; resources: 7 to create." in result.stdout


def test_a_renamed_fleet_is_not_mistaken_for_the_old_one(repo: Path) -> None:
    spec = yaml.safe_load((repo / "specs" / "web.yaml").read_text())
    _write(repo / "specs" / "web.yaml", dict(spec, name="web-next"))
    result = engine("preview", "specs/web.yaml", "--against-ref", "main", cwd=repo)
    assert "at main this spec was fleet web-prod on hcloud" in result.stdout
    assert "Plan: 5 to create; 0 unchanged; resources: 7 to create." in result.stdout


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no-such-branch", "git knows no commit 'no-such-branch'; fetch it first"),
    ],
)
def test_a_bad_ref_is_a_clear_error(repo: Path, ref: str, message: str) -> None:
    result = engine("preview", "specs/web.yaml", "--against-ref", ref, cwd=repo)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_against_ref_outside_git_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "web.yaml", HETZNER)
    result = engine("preview", "web.yaml", "--against-ref", "main", cwd=tmp_path)
    assert result.returncode == 1
    assert "is not in a git work tree" in result.stderr and "Traceback" not in result.stderr


def test_an_invalid_spec_at_the_ref_is_reported(repo: Path) -> None:
    broken = dict(HETZNER, groups=[dict(HETZNER["groups"][0], count="three")])
    _write(repo / "specs" / "web.yaml", broken)
    _git(repo, "commit", "-q", "-am", "broken")
    _write(repo / "specs" / "web.yaml", HETZNER)
    result = engine("preview", "specs/web.yaml", "--against-ref", "HEAD", cwd=repo)
    assert result.returncode == 1
    assert "the spec at HEAD does not validate" in result.stderr
    assert "HEAD:specs/web.yaml:" in result.stderr and "groups[0].count" in result.stderr


def test_a_missing_token_says_what_to_export_and_offers_against_ref(tmp_path: Path) -> None:
    result = engine("preview", str(ROOT / "specs" / "hetzner.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    assert "export HCLOUD_TOKEN=..." in result.stderr
    assert "--against-ref origin/main" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_local_provider_without_docker_says_so(tmp_path: Path) -> None:
    gone = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = engine("preview", str(ROOT / "specs" / "demo.yaml"), cwd=tmp_path, env=gone)
    assert result.returncode == 1
    assert "no Docker engine answers" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_local_provider_reads_its_containers(tmp_path: Path, dockerd: PrivateDaemon) -> None:
    result = engine(
        "preview",
        str(ROOT / "specs" / "demo.yaml"),
        "--format",
        "json",
        cwd=tmp_path,
        env={"DOCKER_HOST": dockerd.url},
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(c["action"], c["server"]) for c in plan["changes"]] == [
        ("create", "web-1"),
        ("create", "web-2"),
        ("create", "web-3"),
    ]


# --- against a fake provider API ------------------------------------------------------------


@pytest.fixture
def hcloud() -> Iterator[tuple[FakeHcloud, str]]:
    fake = FakeHcloud()
    with serve(fake.app()) as url:
        yield fake, f"{url}/v1"


def _owned(name: str) -> dict[str, str]:
    group = name.rsplit("-", 1)[0]
    return {
        "fleet": "web-prod",
        "fleet-group": group,
        "fleet-server": name,
        "managed-by": "fleet-engine",
        "team": "web",
        "role": group,
    }


MARKS = {"fleet": "web-prod", "managed-by": "fleet-engine"}


def _populate(fake: FakeHcloud) -> None:
    """The Hetzner example fleet as its run left it: firewalls (the engine's, whose rules a
    preview without a recorded run does not know), the network and its subnet, the placement
    group, the servers, the load balancer and the spec's key."""
    fake.add_firewall("web-prod.engine", labels=MARKS)
    fake.add_firewall("web-prod-web", labels=MARKS, rules=[
        {"protocol": "tcp", "port": "443", "source_ips": ["0.0.0.0/0", "::/0"],
         "description": "https"}])  # fmt: skip
    fake.add_firewall("web-prod-ssh-only", labels=MARKS, rules=[
        {"protocol": "tcp", "port": "22", "source_ips": ["203.0.113.0/24"],
         "description": "office ssh"}])  # fmt: skip
    fake.add_network(
        "web-prod-private", "10.10.0.0/16", labels=MARKS, subnets=(("eu-central", "10.10.0.0/18"),)
    )
    fake.add_placement_group("web-prod-web", labels={**MARKS, "fleet-group": "web"})
    (key,) = HETZNER["ssh"]["authorized_keys"]  # type: ignore[index]
    fake.add_ssh_key(ssh_key_name("web-prod", key), ssh_fingerprint(key), key, labels=MARKS)
    for n, location in enumerate(("fsn1", "nbg1", "hel1"), start=1):
        fake.add_server(
            f"web-{n}",
            labels=_owned(f"web-{n}"),
            server_type="cx32",
            location=location,
            firewalls=("web-prod-web",),
            networks=("web-prod-private",),
            placement_group="web-prod-web",
            backups=True,
        )
    fake.add_server(
        "worker-1",
        labels=_owned("worker-1"),
        location="fsn1",
        firewalls=("web-prod-ssh-only",),
        networks=("web-prod-private",),
    )
    fake.add_load_balancer(
        "web-prod-web",
        labels={**MARKS, "fleet-group": "web"},
        services=(("tcp", 443, 443),),
        targets=tuple(int(s["id"]) for s in fake.servers[:3]),
        private=True,
    )


def _spec_for(path: Path, base: dict[str, object], url: str) -> Path:
    spec = json.loads(json.dumps(base))
    spec["provider"]["endpoint"] = url
    return _write(path, spec)


def test_preview_reads_the_provider_and_the_store(
    hcloud: tuple[FakeHcloud, str], tmp_path: Path
) -> None:
    fake, url = hcloud
    _populate(fake)
    fake.add_server("worker-2", labels={"team": "other"})  # not ours, and its name is wanted
    spec = _spec_for(tmp_path / "web.yaml", HETZNER, url)
    (tmp_path / "team").mkdir()
    state = f"sqlite:///{tmp_path / 'team' / 'state.db'}"
    with open_store(state) as store:
        for server in fake.servers[:3]:
            store.servers.save(
                ServerRecord(
                    fleet="web-prod",
                    name=server["name"],
                    group="web",
                    provider="hcloud",
                    provider_id=str(server["id"]),
                    stage=Stage.READY,
                    install_hash="sha256:0000000000000000",
                )
            )
    result = engine(
        "preview", str(spec), "--format", "json", "--state", state,
        env={"HCLOUD_TOKEN": fake.token},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # blocked by the name collision
    document = json.loads(result.stdout)
    Draft202012Validator(SCHEMA).validate(document)
    actions = [(c["action"], c["server"]) for c in document["changes"]]
    assert actions == [
        ("reinstall", "web-1"),
        ("reinstall", "web-2"),
        ("reinstall", "web-3"),
        ("adopt", "worker-1"),
    ]
    (problem,) = document["problems"]
    assert problem["code"] == "name_taken" and problem["path"] == "servers.worker-2"
    assert document["api_calls"]["read"] == len(fake.requests)
    assert document["api_calls"]["read_by_path"]["GET /servers"] == 2  # owned, then unowned
    assert fake.token not in result.stdout + result.stderr


def test_the_readmes_preview_example_is_what_preview_prints(
    hcloud: tuple[FakeHcloud, str], tmp_path: Path
) -> None:
    """The README's example, run as it says: the Hetzner example fleet exists and is recorded,
    then web grows 3 -> 4 and the workers go cx22 -> cx32 and gain a label. It runs while an
    `engine up` holds the fleet's lock, and changes nothing: preview takes no lock."""
    fake, url = hcloud
    _populate(fake)
    fake.add_server("worker-2", labels=_owned("worker-2"), location="nbg1",
                    firewalls=("web-prod-ssh-only",), networks=("web-prod-private",))  # fmt: skip
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(state) as store:
        for server in fake.servers:
            store.servers.save(
                ServerRecord(
                    fleet="web-prod",
                    name=server["name"],
                    group=server["labels"]["fleet-group"],
                    provider="hcloud",
                    provider_id=str(server["id"]),
                    stage=Stage.READY,
                )
            )
    edited = json.loads(json.dumps(HETZNER))
    edited["groups"][0]["count"] = 4
    edited["groups"][1]["server_type"] = "cx32"
    edited["groups"][1]["labels"]["tier"] = "batch"
    _spec_for(tmp_path / "specs" / "hetzner.yaml", edited, url)
    command, example = console_example("Preview")
    assert command == "engine preview specs/hetzner.yaml"
    with open_store(state) as store:
        before = (store.servers.all("web-prod"), store.events.all("web-prod"))
        held = store.locks.acquire("web-prod", command="engine up specs/hetzner.yaml")
        result = engine(
            *command.split()[1:], "--state", state, cwd=tmp_path, env={"HCLOUD_TOKEN": fake.token}
        )
        assert store.locks.all() == (held,)
        assert (store.servers.all("web-prod"), store.events.all("web-prod")) == before
    assert (result.returncode, result.stderr) == (0, "")
    assert_shaped_like(example, result.stdout)
    assert {r.method for r in fake.requests} == {"GET"}  # a read-only token is enough


def test_a_bad_token_ends_in_one_clear_line(hcloud: tuple[FakeHcloud, str], tmp_path: Path) -> None:
    _fake, url = hcloud
    spec = _spec_for(tmp_path / "web.yaml", HETZNER, url)
    result = engine(
        "preview", str(spec), "--state-dir", str(tmp_path),
        env={"HCLOUD_TOKEN": "not-the-right-token-123"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: hcloud: unable to authenticate; check the API token in HCLOUD_TOKEN "
        "[unauthorized] (correlation id corr-1)"
    )
    assert not (tmp_path / "state.db").exists()


def test_a_token_broken_over_two_lines_is_refused_before_any_request(
    hcloud: tuple[FakeHcloud, str], tmp_path: Path
) -> None:
    fake, url = hcloud
    spec = _spec_for(tmp_path / "web.yaml", HETZNER, url)
    first, second = "abcdefghijkl1234mnopqrst", "WXYZuvwx5678yzabCDEF9012"
    result = engine(
        "preview", str(spec), "--state-dir", str(tmp_path / "state"),
        env={"HCLOUD_TOKEN": f" {first}\n{second}\n"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the API token in HCLOUD_TOKEN has a line break inside it, which no API token "
        "has, so nothing was sent; export HCLOUD_TOKEN=... again with the token alone, on one line"
    )
    assert fake.requests == []
    written = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    for part in (first, second):
        assert part not in result.stdout + result.stderr + written


def test_digitalocean_preview_trusts_the_store_during_the_list_lag(tmp_path: Path) -> None:
    fake = FakeDigitalOcean()
    fake.add_vpc("api-prod-vpc", "fra1")
    fake.add_vpc("api-prod-vpc", "ams3")
    tags = ("fleet:api-prod", "managed-by:fleet-engine", "team:api")
    fresh = None
    for name, region in (("api-1", "fra1"), ("api-2", "ams3"), ("worker-1", "fra1")):
        group = name.rsplit("-", 1)[0]
        droplet = fake.add_droplet(
            name,
            tags=(*tags, f"fleet-group:{group}", f"fleet-server:{name}", f"role:{group}"),
            size="s-2vcpu-4gb" if group == "api" else "s-1vcpu-2gb",
            region=region,
            vpc="api-prod-vpc",
            backups=group == "api",
            listed=name != "api-2",
        )
        fake.add_firewall(
            f"api-prod-{'https' if group == 'api' else 'ssh'}", droplet_ids=(droplet["id"],)
        )
        if name == "api-2":
            fresh = droplet
    assert fresh is not None
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(state) as store:
        store.servers.save(
            ServerRecord(
                fleet="api-prod",
                name="api-2",
                group="api",
                provider="digitalocean",
                provider_id=str(fresh["id"]),
                stage=Stage.CREATING,
            )
        )
    with serve(fake.app()) as url:
        spec = _spec_for(tmp_path / "api.yaml", DIGITALOCEAN, url)
        result = engine(
            "preview", str(spec), "--state", state, "--detailed-exitcode",
            env={"DIGITALOCEAN_TOKEN": fake.token},
        )  # fmt: skip
    assert "api-2 was created moments ago" in result.stdout, result.stdout + result.stderr
    assert "+ api-2" not in result.stdout
    assert "Plan: 2 to adopt; 1 unchanged;" in result.stdout  # resources: not arranged here


def test_the_state_store_can_be_postgresql_by_environment(
    hcloud: tuple[FakeHcloud, str], tmp_path: Path, postgres: Cluster
) -> None:
    fake, url = hcloud
    _populate(fake)
    fake.add_server("worker-2", labels=_owned("worker-2"), location="nbg1",
                    firewalls=("web-prod-ssh-only",), networks=("web-prod-private",))  # fmt: skip
    database = postgres.create_database()
    with open_store(database) as store:
        for server in fake.servers:
            store.servers.save(
                ServerRecord(
                    fleet="web-prod",
                    name=server["name"],
                    group=server["labels"]["fleet-group"],
                    provider="hcloud",
                    provider_id=str(server["id"]),
                    stage=Stage.READY,
                )
            )
    spec = _spec_for(tmp_path / "web.yaml", HETZNER, url)
    result = engine(
        "preview", str(spec), "--detailed-exitcode",
        env={"HCLOUD_TOKEN": fake.token, "ENGINE_STATE_URL": database},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Plan: no changes; 5 unchanged." in result.stdout
    assert (
        "API calls: 6 to read (GET /firewalls 1, GET /load_balancers 1, GET /networks 1, "
        "GET /placement_groups 1, GET /servers 1, GET /ssh_keys 1)"
    ) in result.stdout


# --- engine unlock ----------------------------------------------------------------------------


def test_unlock_releases_a_stale_lock_by_id(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(state) as store:
        held = store.locks.acquire("web-prod", command="engine up specs/web.yaml")
    result = engine("unlock", held.lock_id, "--state", state)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"released lock {held.lock_id} on web-prod, held by ")
    again = engine("unlock", held.lock_id, "--state", state)
    assert again.returncode == 1
    assert f"there is no lock {held.lock_id}" in again.stderr and "no lock is held" in again.stderr
    with open_store(state) as store:
        assert store.locks.all() == ()
        assert store.events.all("web-prod")[-1].kind == "lock.released"


def test_the_readmes_unlock_example_is_what_unlock_prints(tmp_path: Path) -> None:
    command, example = console_example("State and locks")
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(state) as store:
        held = store.locks.acquire("web-prod", command="engine up specs/hetzner.yaml")
    result = engine("unlock", held.lock_id, "--state", state)
    assert result.returncode == 0, result.stderr
    readme_id = command.split()[-1]
    assert re.fullmatch("[0-9a-f]{16}", readme_id) and re.fullmatch("[0-9a-f]{16}", held.lock_id)
    shown = example.replace(readme_id, held.lock_id)
    shown = shown.replace("alice@build-7", f"{held.holder}@{held.host}").replace(
        "4242", f"{held.pid}"
    )
    since = held.acquired_at.strftime("%Y-%m-%d %H:%M:%S")
    assert result.stdout == shown.replace("2026-11-05 10:32:01", since)


def test_unlock_without_a_store_says_so(tmp_path: Path) -> None:
    result = engine("unlock", "abc", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert "there is no state store at sqlite:///" in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_preview_against_a_ref_imports_no_sdk(repo: Path) -> None:
    probe = (
        "import json, sys; from engine.cli import main; "
        "main(['preview', 'specs/web.yaml', '--against-ref', 'main']); "
        "heavy = {'hcloud', 'pydo', 'azure', 'sqlalchemy', 'psycopg', 'pulumi', 'requests'}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=repo,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# --- resources besides servers, offline -----------------------------------------------------


def _rule_to_office(spec: dict[str, Any]) -> None:
    spec["firewalls"][0]["inbound"][0]["sources"] = ["198.51.100.0/24"]


def _lb_type(spec: dict[str, Any]) -> None:
    spec["load_balancers"][0]["type"] = (
        "lb21" if spec["provider"]["name"] == "hcloud" else ("lb-medium")
    )


def _lb_service(spec: dict[str, Any]) -> None:
    spec["load_balancers"][0]["services"].append({"listen": 80, "destination": 8080})


def _network_range(spec: dict[str, Any]) -> None:
    spec["networks"][0]["ip_range"] = "10.99.0.0/16"


def _dns_ttl(spec: dict[str, Any]) -> None:
    spec["dns"][0]["ttl"] = 600


RESOURCE_EDITS = [
    ("hetzner", _rule_to_office, "firewall", "web-prod-web", "update", "rules"),
    ("hetzner", _lb_type, "load_balancer", "web-prod-web", "update", "type"),
    ("hetzner", _lb_service, "load_balancer", "web-prod-web", "update", "services"),
    ("hetzner", _network_range, "network", "web-prod-private", "replace", "ip_range"),
    ("digitalocean", _rule_to_office, "firewall", "api-prod-https.api", "update", "rules"),
    ("digitalocean", _lb_type, "load_balancer", "api-prod-api", "update", "type"),
    ("digitalocean", _lb_service, "load_balancer", "api-prod-api", "update", "services"),
    ("digitalocean", _network_range, "network", "api-prod-vpc.fra1", "replace", "ip_range"),
    ("digitalocean", _dns_ttl, "dns_record", "A api-1.api.example.com", "update", "ttl"),
]


@pytest.mark.parametrize(
    ("example", "edit", "kind", "name", "action", "field"),
    RESOURCE_EDITS,
    ids=[f"{case[0]}-{case[1].__name__.strip('_')}" for case in RESOURCE_EDITS],
)
def test_a_resource_edit_shows_with_its_kind_offline_and_is_a_pending_change(
    tmp_path: Path,
    example: str,
    edit: Callable[[dict[str, Any]], None],
    kind: str,
    name: str,
    action: str,
    field: str,
) -> None:
    spec = yaml.safe_load((ROOT / "specs" / f"{example}.yaml").read_text())
    _git(tmp_path, "init", "-q", "-b", "main")
    _write(tmp_path / "fleet.yaml", spec)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "fleet")
    edit(spec)
    _write(tmp_path / "fleet.yaml", spec)
    args = ("preview", "fleet.yaml", "--against-ref", "main", "--detailed-exitcode")
    text = engine(*args, cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert text.returncode == 2, text.stdout + text.stderr
    shown = f"{kind.replace('_', ' ')} {name}  {action}"
    assert shown in text.stdout and f"{field}: " in text.stdout, text.stdout
    if (example, kind) == ("digitalocean", "network"):  # droplets move with their VPC
        assert "Plan: 3 to replace; 0 unchanged; resources: 2 to replace." in text.stdout
    else:
        assert "Plan: no changes;" in text.stdout  # no server changes, yet changes pending
    document = json.loads(engine(*args, "--format", "json", cwd=tmp_path).stdout)
    Draft202012Validator(SCHEMA).validate(document)
    assert document["summary"]["has_changes"] is True
    changed = {(r["kind"], r["name"]): r for r in document["resources"]}
    found = changed[kind, name]
    assert found["action"] == action and field in [f["field"] for f in found["fields"]]
    if action == "replace":  # a new range: the servers in it are named
        assert found["disruptive"] and found["servers"], found
    else:
        assert not found["disruptive"]
