"""The Automation API runner: what can run here without a Pulumi CLI, run for real.

This machine has no Pulumi CLI and none can be installed, so `up`, `preview` and `destroy`
are exercised up to the point where they need it, and that point must be one clear error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from pulumi.automation import EngineEvent, PulumiCommand

from engine.errors import EngineError
from engine.providers.cloud.pulumi_runner import (
    PulumiNotInstalled,
    ResourceStep,
    StepLog,
    backend_url,
    check_passphrase,
    destroy,
    failure_message,
    pending_creates,
    plugin_version,
    preview,
    pulumi_root,
    refuse_gevent,
    server_names,
    server_outputs,
    server_urns,
    up,
    urns_named,
)
from engine.secrets import register_secret
from tests.stacks.harness import TOKEN, fleet_from, stack_inputs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment like a fresh machine's: no pulumi on PATH, nothing in ~/.pulumi."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PULUMI_HOME", raising=False)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")
    return tmp_path / "state"


def test_the_automation_api_itself_fails_without_the_cli(no_cli: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PulumiCommand()


def test_up_preview_and_destroy_without_a_cli_say_how_to_install_it(no_cli: Path) -> None:
    inputs = stack_inputs(fleet_from("specs/hetzner.yaml"))
    attempts = [
        lambda: up(inputs, token=TOKEN, state_dir=no_cli),
        lambda: preview(inputs, token=TOKEN, state_dir=no_cli),
        lambda: destroy(inputs.fleet, token=TOKEN, state_dir=no_cli),
    ]
    for attempt in attempts:
        with pytest.raises(PulumiNotInstalled) as caught:
            attempt()
        message = str(caught.value)
        assert "the Pulumi CLI is not installed" in message
        assert "curl -fsSL https://get.pulumi.com | sh" in message
        assert "pulumi/actions" in message
        assert TOKEN not in message
    assert not no_cli.exists()  # nothing was written


def test_the_missing_cli_is_one_line_from_the_command_line(no_cli: Path) -> None:
    script = (
        "from engine.providers.cloud.pulumi_runner import up\n"
        "from tests.stacks.harness import TOKEN, fleet_from, stack_inputs\n"
        "from engine.errors import EngineError\n"
        "import sys\n"
        "try:\n"
        f"    up(stack_inputs(fleet_from('specs/digitalocean.yaml')), token=TOKEN, "
        f"state_dir=__import__('pathlib').Path({str(no_cli)!r}))\n"
        "except EngineError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.count("\n") == 1 and "get.pulumi.com" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_cli_installed_by_the_script_is_found_off_path(no_cli: Path, tmp_path: Path) -> None:
    binary = tmp_path / "home" / ".pulumi" / "bin" / "pulumi"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    assert pulumi_root() == str(tmp_path / "home" / ".pulumi")


def test_the_passphrase_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    with pytest.raises(EngineError, match="PULUMI_CONFIG_PASSPHRASE is not set"):
        check_passphrase()
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(tmp_path / "passphrase"))
    check_passphrase()


def test_state_goes_under_the_state_directory_unless_a_backend_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    assert backend_url(tmp_path / ".engine") == f"file://{tmp_path}/.engine/pulumi"
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://team-state/fleets")
    assert backend_url(tmp_path / ".engine") == "s3://team-state/fleets"


def test_a_gevent_patched_process_is_refused() -> None:
    refuse_gevent()  # this process is not patched
    script = (
        "import gevent.monkey\n"
        "gevent.monkey.patch_all()\n"
        "from engine.providers.cloud.pulumi_runner import refuse_gevent\n"
        "from engine.errors import EngineError\n"
        "try:\n"
        "    refuse_gevent()\n"
        "except EngineError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "monkey-patched by gevent" in result.stdout, result.stderr


def test_importing_the_runner_and_the_stacks_loads_no_pulumi() -> None:
    probe = (
        "import sys, engine.providers.cloud.pulumi_runner, stacks\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('pulumi')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def event(kind: str, op: str, urn: str, type_: str, **extra: object) -> EngineEvent:
    metadata = {"op": op, "urn": urn, "type": type_, "provider": ""}
    return EngineEvent.from_json(
        {"sequence": 1, "timestamp": 0, kind: {"metadata": metadata, **extra}}
    )


SERVER_URN = (
    "urn:pulumi:web-prod::fleet-engine::fleet-engine:stacks:ServerGroup$hcloud:index/server:Server"
    "::web-1"
)
FIREWALL_URN = "urn:pulumi:web-prod::fleet-engine::hcloud:index/firewall:Firewall::firewall-engine"
STACK_URN = "urn:pulumi:web-prod::fleet-engine::pulumi:pulumi:Stack::fleet-engine-web-prod"


def test_engine_events_become_resource_steps_and_counts() -> None:
    seen: list[ResourceStep] = []
    log = StepLog("up", seen.append)
    log(event("resourcePreEvent", "create", STACK_URN, "pulumi:pulumi:Stack"))
    log(event("resourcePreEvent", "create", FIREWALL_URN, "hcloud:index/firewall:Firewall"))
    log(event("resOutputsEvent", "create", FIREWALL_URN, "hcloud:index/firewall:Firewall"))
    log(event("resourcePreEvent", "create", SERVER_URN, "hcloud:index/server:Server"))
    log(
        event(
            "resOpFailedEvent",
            "create",
            SERVER_URN,
            "hcloud:index/server:Server",
            status=1,
            steps=1,
        )
    )
    assert [(s.name, s.op, s.status) for s in seen] == [
        ("firewall-engine", "create", "started"),
        ("firewall-engine", "create", "done"),
        ("web-1", "create", "started"),
        ("web-1", "create", "failed"),
    ]
    result = log.result()
    assert result.action == "up"
    assert [(s.name, s.status) for s in result.resources] == [
        ("firewall-engine", "done"),
        ("web-1", "failed"),
    ]
    assert result.count("create") == 2 and result.count("delete") == 0


def test_a_preview_plans_steps() -> None:
    log = StepLog("preview", None)
    log(event("resourcePreEvent", "replace", SERVER_URN, "hcloud:index/server:Server"))
    log(event("resOutputsEvent", "replace", SERVER_URN, "hcloud:index/server:Server"))
    (step,) = log.result().resources
    assert (step.op, step.status) == ("replace", "planned")


def test_failures_name_the_fleet_and_never_the_token() -> None:
    secret = register_secret("hc-token-" + "7" * 40)
    fleet = fleet_from("specs/hetzner.yaml")
    log = StepLog("up", None)
    log(
        EngineEvent.from_json(
            {
                "sequence": 2,
                "timestamp": 0,
                "diagnosticEvent": {
                    "message": f"error: token {secret} is invalid (unauthorized)\n",
                    "color": "never",
                    "severity": "error",
                },
            }
        )
    )
    message = failure_message(fleet, log, RuntimeError(f"stderr: {secret}"))
    assert (
        message == "pulumi up of fleet web-prod failed:\nerror: token *** is invalid (unauthorized)"
    )
    quiet = failure_message(fleet, StepLog("up", None), RuntimeError(f"line one\n{secret} two"))
    assert quiet.endswith("line one\n*** two")


def test_server_outputs_are_read_from_the_stack_output() -> None:
    exported = json.loads(
        '{"web-2": {"id": "42", "ipv4": "95.217.0.2", "ipv6": "2a01:4f9::2", '
        '"private_ipv4": null, "location": "nbg1"}, "web-1": {"id": "41", "ipv4": "95.217.0.1", '
        '"ipv6": "", "private_ipv4": "10.10.0.2", "location": "fsn1"}}'
    )
    assert [
        (s.name, s.id, s.ipv4, s.ipv6, s.private_ipv4, s.location) for s in server_outputs(exported)
    ] == [
        ("web-1", "41", "95.217.0.1", None, "10.10.0.2", "fsn1"),
        ("web-2", "42", "95.217.0.2", "2a01:4f9::2", None, "nbg1"),
    ]
    assert server_outputs(None) == ()


def test_the_servers_deleted_outside_are_found_in_the_exported_state_by_name() -> None:
    stack = "urn:pulumi:web-prod::fleet-engine::"
    group = "fleet-engine:stacks:ServerGroup$"
    server, droplet = "hcloud:index/server:Server", "digitalocean:index/droplet:Droplet"
    firewall = "hcloud:index/firewall:Firewall"
    held = [
        ("pulumi:pulumi:Stack", "pulumi:pulumi:Stack::fleet-engine-web-prod"),
        (server, f"{group}{server}::web-1"),
        (server, f"{group}{server}::web-2"),
        (firewall, f"{firewall}::firewall-web-1"),
        (droplet, f"{group}{droplet}::api-1"),
    ]
    deployment = {"resources": [{"urn": stack + urn, "type": kind} for kind, urn in held]}
    urns = server_urns(deployment, frozenset({"web-1", "api-1", "web-9"}))
    assert urns == [f"{stack}{group}{server}::web-1", f"{stack}{group}{droplet}::api-1"]
    assert server_urns({}, frozenset({"web-1"})) == []
    assert server_names(deployment) == ["web-1", "web-2", "api-1"]


def test_creates_a_dead_run_left_pending_are_found_in_the_exported_state() -> None:
    web_1 = "urn:pulumi:web-prod::fleet-engine::hcloud:index/server:Server::web-1"
    deployment = {
        "resources": [],
        "pending_operations": [
            {"resource": {"urn": web_1, "type": "hcloud:index/server:Server"}, "type": "creating"},
            {"resource": {"urn": "urn:x", "type": "t"}, "type": "updating"},
        ],
    }
    assert pending_creates(deployment) == [web_1]
    assert pending_creates({"resources": []}) == []


def _fake_cli(folder: Path, version: str, plugin: str = "exit 0") -> None:
    """A `pulumi` that says it is `version` and answers `plugin install` with `plugin`."""
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "pulumi"
    binary.write_text(
        "#!/bin/sh\n"
        f'case "$*" in\n  *"plugin install"*) {plugin};;\n  *version) echo {version};;\n'
        '  *) echo "unexpected: $*" >&2; exit 3;;\nesac\n'
    )
    binary.chmod(0o755)


def test_an_older_pulumi_cli_is_refused_with_the_version_needed(
    no_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cli(tmp_path / "bin", "v3.150.0")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(EngineError) as caught:
        up(stack_inputs(fleet_from("specs/hetzner.yaml")), token=TOKEN, state_dir=no_cli)
    message = str(caught.value)
    assert "3.150.0" in message and "Pulumi CLI 3.181.0 or newer" in message
    assert "get.pulumi.com" in message and TOKEN not in message


def test_a_provider_plugin_that_cannot_be_downloaded_is_one_clear_line(
    no_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = (
        'echo "error: could not get plugin: dial tcp: lookup api.github.com: no such host" >&2; '
        "exit 255"
    )
    _fake_cli(tmp_path / "bin", "v3.272.0", offline)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    wanted = plugin_version("digitalocean")
    assert wanted == "v" + version("pulumi_digitalocean")
    with pytest.raises(EngineError) as caught:
        preview(stack_inputs(fleet_from("specs/digitalocean.yaml")), token=TOKEN, state_dir=no_cli)
    message = str(caught.value)
    assert "\n" not in message
    assert f"the Pulumi plugin digitalocean {wanted}" in message
    assert "lookup api.github.com: no such host" in message
    assert f"`pulumi plugin install resource digitalocean {wanted}`" in message


def test_what_the_plan_changes_in_place_is_found_in_the_exported_state_by_logical_name() -> None:
    stack = "urn:pulumi:web-prod::fleet-engine::"
    held = [
        "hcloud:index/loadBalancer:LoadBalancer::lb-web",
        "hcloud:index/loadBalancerService:LoadBalancerService::lb-web-443",
        "hcloud:index/loadBalancer:LoadBalancer::lb-webby",
        "hcloud:index/firewall:Firewall::firewall.lb-web",
        "fleet-engine:stacks:ServerGroup$hcloud:index/server:Server::web-1",
    ]
    deployment = {"resources": [{"urn": stack + urn, "type": "t"} for urn in held]}
    found = urns_named(deployment, frozenset({"lb-web", "firewall.lb-web", "web-1"}))
    assert found == [stack + held[0], stack + held[1], stack + held[3], stack + held[4]]
    assert urns_named({}, frozenset({"lb-web"})) == []
