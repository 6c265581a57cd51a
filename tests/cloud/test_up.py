"""`engine up` and `engine destroy` on Hetzner Cloud and DigitalOcean.

There is no Pulumi CLI here and none can be installed, so:
- without it, the commands are run for real, as users run them, and must stop at once with
  one clear line, changing nothing;
- with it, the program runs under Pulumi's mocks (its documented unit-test route) against
  the stateful fake of the provider's API: see tests/cloud/conftest.py.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.cloudinit import user_data_sha256
from engine.errors import EngineError
from engine.model import Stage
from engine.preview import plan_preview
from engine.providers.cloud.backend import CloudBackend, engine_sources, resolved_sources
from engine.providers.seam import Signal
from engine.signals import signal_server
from engine.state.store import open_state, open_store
from engine.up import destroy
from tests.cloud.world import World
from tests.stacks.harness import fleet_from
from tests.support.cli import ROOT, engine
from tests.support.readme import assert_shaped_like, console_example
from tests.support.tokens import sent_user_data, usable_tokens

# --- without the Pulumi CLI ------------------------------------------------------------------


def test_without_pulumi_up_and_destroy_say_how_to_install_it_and_change_nothing(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    with open_state(state_dir) as store:
        store.events.record("web-prod", "note", "an earlier run")
    env = {
        "HOME": str(tmp_path / "home"),
        "HCLOUD_TOKEN": "hcloud-secret-token-0123",
        "DIGITALOCEAN_TOKEN": "dop_v1_secret-token-0123",
        "PULUMI_CONFIG_PASSPHRASE": "correct horse battery staple",
    }
    for spec in ("specs/hetzner.yaml", "specs/digitalocean.yaml"):
        for command in (["up", "--yes"], ["destroy", "--yes"]):
            result = engine(*command, spec, "--state-dir", str(state_dir), cwd=ROOT, env=env)
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr
            (line,) = result.stderr.splitlines()
            assert line.startswith("error: the Pulumi CLI is not installed")
            assert "curl -fsSL https://get.pulumi.com | sh" in line
            assert "secret-token" not in result.stdout + result.stderr
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.db"]
    with open_store(f"sqlite:///{state_dir / 'state.db'}") as store:
        assert store.locks.all() == ()
        assert store.fleets.all() == () and store.servers.all("web-prod") == ()
        assert [e.kind for e in store.events.all("web-prod")] == ["note"]


# --- the engine's addresses and where the control plane listens -------------------------------


def test_engine_addresses_are_taken_as_given_or_resolved_from_the_url() -> None:
    assert engine_sources(["203.0.113.7", "2001:db8::/64", "203.0.113.7"]) == (
        "203.0.113.7/32",
        "2001:db8::/64",
    )
    with pytest.raises(EngineError, match=r"--engine-address 10\.0\.0\.1/8: give an IP address"):
        engine_sources(["10.0.0.1/8"])
    assert resolved_sources("https://198.51.100.9:8443") == ("198.51.100.9/32",)
    assert "127.0.0.1/32" in resolved_sources("http://localhost:8470")


@pytest.mark.parametrize(
    ("url", "listen", "where"),
    [
        ("https://ops.example.com", None, ("0.0.0.0", 443)),
        ("https://ops.example.com:8470/", None, ("0.0.0.0", 8470)),
        ("https://ops.example.com", ("127.0.0.1", 9000), ("127.0.0.1", 9000)),
    ],
)
def test_the_control_plane_listens_where_the_url_leads_unless_told(
    url: str, listen: tuple[str, int] | None, where: tuple[str, int]
) -> None:
    fleet = fleet_from("specs/hetzner.yaml", control_plane={"url": url})
    site = CloudBackend(fleet, Path("."), print, listen=listen).site()
    assert (site.host, site.port) == where and site.url == url


# --- with Pulumi: the program under mocks stands in for the CLI ------------------------------


def test_up_runs_the_program_once_over_the_fleet_and_registers_what_it_made(
    world: World,
) -> None:
    code, events = world.up()
    assert code == 1 and events[-1]["event"] == "done"  # nobody phones home from a fake
    (inputs,) = world.pulumi.ups
    names = [s.name for s in inputs.servers]
    assert set(events[-1]["not_ready"]) == set(names)
    assert inputs.engine_sources == ("198.51.100.7/32",)
    with world.store() as store:
        assert store.locks.all() == ()
        records = {r.name: r for r in store.servers.all(world.fleet)}
        assert set(records) == set(names)
        for name in names:
            # The program got each server's pinned user_data, carrying its own token, and
            # would get the same bytes again.
            sent = inputs.user_data[name]
            assert sent == sent_user_data(store.user_data, world.state_dir, world.fleet, name)
            assert (
                "ph1." in sent
                and records[name].user_data_hash == f"sha256:{user_data_sha256(sent)}"
            )
            assert records[name].stage is Stage.BOOTING and records[name].provider_id
        listed = {s["name"]: str(s["id"]) for s in getattr(world.fake, "servers", [])}
        listed |= {d["name"]: str(d["id"]) for d in getattr(world.fake, "droplets", [])}
        assert {n: r.provider_id for n, r in records.items()} == listed
    # Whoever reads the store's file finds no token a phone-home would be accepted with.
    database = world.state_dir / "state.db"
    assert usable_tokens(database, world.state_dir, {world.fleet: names}) == []
    plan = plan_preview(world.spec, state_dir=world.state_dir)
    assert plan.changes == ()


class Typed(io.StringIO):
    """What a person types at the terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("world", ["hcloud"], indirect=True)
def test_the_readmes_hetzner_example_is_what_a_run_prints(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    command, example = console_example("Cloud servers: Hetzner Cloud and DigitalOcean")
    args = shlex.split(command)[1:]
    assert args[:2] == ["up", "specs/hetzner.yaml"]
    args[1] = str(world.spec)
    args[args.index("--listen") + 1] = "127.0.0.1:0"  # a free port, not the README's 8470
    monkeypatch.setattr("sys.stdin", Typed("yes\n"))
    assert main([*args, "--state-dir", str(world.state_dir), "--timeout", "1s"]) == 1
    shown = capsys.readouterr().out.replace(str(world.spec), "specs/hetzner.yaml")
    # The terminal echoes the answer typed after the question.
    assert_shaped_like(example, shown.replace("goes ahead: ", "goes ahead: yes\n"))


@pytest.mark.parametrize("world", ["hcloud"], indirect=True)
def test_up_asks_and_only_yes_goes_ahead(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["up", str(world.spec), "--state-dir", str(world.state_dir), "--listen", "127.0.0.1:0",
            "--engine-address", "203.0.113.10"]  # fmt: skip
    monkeypatch.setattr("sys.stdin", Typed("y\n"))
    assert main(args) == 1
    assert capsys.readouterr().out.endswith("Only 'yes' goes ahead: Nothing changed.\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # a pipe, not a person
    assert main(args) == 1
    assert "there is no terminal to ask on; run again with --yes" in capsys.readouterr().err
    assert world.pulumi.ups == [] and world.fake.servers == []


def test_a_second_up_changes_nothing_and_growing_makes_only_the_new_server(
    world: World,
) -> None:
    world.up()
    with world.store() as store:
        before = {r.name: r.provider_id for r in store.servers.all(world.fleet)}
        documents = {
            n: sent_user_data(store.user_data, world.state_dir, world.fleet, n) for n in before
        }
    world.up()  # still booting: waited for again, the program is not run again
    assert len(world.pulumi.ups) == 1
    groups = yaml.safe_load(world.spec.read_text())["groups"]
    groups[0]["count"] += 1
    grown = f"{groups[0]['name']}-{groups[0]['count']}"
    world.write(groups=groups)
    world.up()
    second = world.pulumi.ups[-1]
    assert {s.name for s in second.servers} == {*before, grown}
    assert second.replaced == frozenset() and dict(second.adopted) == {}
    assert {n: second.user_data[n] for n in before} == documents  # never a new document
    with world.store() as store:
        after = {r.name: r.provider_id for r in store.servers.all(world.fleet)}
        assert {n: after[n] for n in before} == before and after[grown]
    assert plan_preview(world.spec, state_dir=world.state_dir).changes == ()


def test_an_orphan_the_stack_never_held_is_deleted_by_id(world: World) -> None:
    world.up()
    labels = {"fleet": world.fleet, "fleet-group": "worker", "fleet-server": "worker-9",
              "managed-by": "fleet-engine"}  # fmt: skip
    if world.provider == "hcloud":
        orphan = world.fake.add_server("worker-9", labels=labels)
    else:
        orphan = world.fake.add_droplet(
            "worker-9", tags=tuple(f"{k}:{v}" for k, v in labels.items())
        )
    world.up()  # without --delete-orphans it is left alone
    assert world.provider_id("worker-9") == orphan["id"]
    world.up(delete_orphans=True)
    listed = getattr(world.fake, "servers", None) or world.fake.droplets
    assert "worker-9" not in {s["name"] for s in listed}
    assert plan_preview(world.spec, state_dir=world.state_dir).changes == ()


def test_destroy_runs_the_program_destroy_and_forgets_the_fleet(world: World) -> None:
    world.up()
    out = io.StringIO()
    assert destroy(world.spec, world.options(), out, lambda _: False) == 0
    assert world.pulumi.destroys == 1
    (shown,) = [json.loads(line)["plan"] for line in out.getvalue().splitlines()
                if json.loads(line)["event"] == "plan"]  # fmt: skip
    # The plan names every resource that goes, besides the servers.
    kinds = {r["kind"] for r in shown["resources"]}
    assert {"firewall", "network", "load_balancer", "ssh_key"} <= kinds
    assert {r["action"] for r in shown["resources"]} == {"delete"}
    with world.store() as store:
        assert store.servers.all(world.fleet) == () and store.fleets.get(world.fleet) is None
        assert store.locks.all() == ()
    assert not list((world.state_dir / "keys").glob(f"{world.fleet}*"))


def test_destroy_lists_the_fleets_snapshots_and_keeps_them_unless_asked(world: World) -> None:
    world.up()
    assert (
        signal_server(world.spec, "worker-1", Signal.SNAPSHOT, world.options(), io.StringIO()) == 0
    )

    def destroyed(**asked: bool) -> tuple[list[str], list[str], str]:
        out = io.StringIO()
        assert destroy(world.spec, world.options(), out, lambda _: False, **asked) == 0
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        (shown,) = [e["plan"] for e in events if e["event"] == "plan"]
        gone = [r["name"] for r in shown["resources"] if r["kind"] == "snapshot"]
        return gone, shown["warnings"], events[-1]["message"]

    snapshots = [i for i in world.fake.images if i["type"] == "snapshot"]
    gone, warnings, said = destroyed()
    if world.provider == "hcloud":  # found by the fleet's labels: listed and kept
        ((image),) = snapshots
        name = f"{image['description']} (id {image['id']})"
        assert gone == [] and said.endswith(", 1 snapshot(s) kept.")
        assert warnings == [
            f"snapshot {name} of worker-1 is kept: snapshots are backups (the provider keeps "
            f"and may bill them); `engine destroy {world.spec} --delete-snapshots` deletes them"
        ]
        assert world.fake.images.count(image) == 1
        gone, warnings, said = destroyed(delete_snapshots=True)
        assert gone == [name] and warnings == [] and said.endswith(", 1 snapshot(s) deleted.")
        assert image not in world.fake.images
    else:  # a droplet snapshot takes no tags: nothing tells the fleet's, none is touched
        assert gone == [] and warnings == [] and said.endswith("its networks and state.")
        destroyed(delete_snapshots=True)
        assert world.fake.action_requests[-1][1]["type"] == "snapshot"


# --- Pulumi and pyinfra never share a process ----------------------------------------------


def _loaded(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    probe = (
        f"import sys\n{imports}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(prefixes)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return list(json.loads(result.stdout.replace("'", '"')))


def test_the_process_that_runs_pulumi_never_loads_pyinfra_or_gevent() -> None:
    imports = (
        "import engine.up, engine.providers.cloud.backend, engine.install.installer\n"
        "import engine.controlplane.runner, engine.providers.cloud.pulumi_runner\n"
        "import stacks.hcloud, stacks.digitalocean"
    )
    assert _loaded(imports, ("pyinfra", "gevent", "pulumi")) == ["pulumi"]


def test_the_install_child_never_loads_pulumi() -> None:
    assert _loaded("import engine.install.__main__", ("pyinfra", "pulumi", "stacks")) == ["pyinfra"]
