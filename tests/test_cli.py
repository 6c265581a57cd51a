"""The `engine` command as users run it: exit codes, formats, and never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from engine import cli
from tests.fakes.hcloud import FakeHcloud
from tests.support.cli import ROOT, engine
from tests.support.http import serve

SPECS = sorted(str(p) for p in Path("specs").glob("*.yaml"))
CASES = sorted(str(p) for p in Path("tests/spec/cases").glob("*.yaml"))


def test_every_example_spec_is_valid() -> None:
    result = engine("validate", *SPECS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": valid (") == len(SPECS)


def test_invalid_specs_exit_1_with_every_error_and_no_traceback() -> None:
    result = engine("validate", *CASES)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "error[unknown_key] groups[0].cont" in result.stdout
    assert result.stdout.count("error[") >= len(CASES)


def test_json_format_is_versioned_and_complete() -> None:
    result = engine("validate", "--format", "json", "specs/demo.yaml", CASES[0])
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["version"] == 1
    demo, bad = report["files"]
    assert demo == {
        "file": "specs/demo.yaml",
        "valid": True,
        "errors": [],
        "fleet": "demo",
        "provider": "local",
        "groups": 1,
        "servers": 3,
    }
    assert not bad["valid"]
    assert set(bad["errors"][0]) == {"code", "path", "file", "line", "column", "message", "hint"}


@pytest.mark.parametrize(
    "args", [(), ("validate",), ("validate", "--format", "yaml", "x.yaml"), ("frobnicate",)]
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = engine(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_hostile_files_through_the_cli(tmp_path: Path) -> None:
    files = {
        "empty.yaml": b"",
        "binary.yaml": bytes(range(256)),
        "bomb.yaml": b"a: &a [x,x,x,x,x,x,x,x,x]\n"
        + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n".encode()
            for i in range(10)
        ),
        "deep.yaml": b"[" * 50_000,
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    result = engine("validate", *files, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    for code in ("empty", "not_text", "yaml_too_large", "yaml_too_deep"):
        assert f"error[{code}]" in result.stdout


def test_an_unexpected_error_prints_one_line_and_writes_a_debug_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode(*_: object, **__: object) -> None:
        raise RuntimeError("boom with secret-value-0123456789")

    from engine import secrets, spec

    secrets.register_secret("secret-value-0123456789")
    monkeypatch.setattr(spec, "load_spec", explode)
    code = cli.main(["validate", "--state-dir", str(tmp_path), "specs/demo.yaml"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "internal error: RuntimeError" in err
    logs = list((tmp_path / "logs").glob("engine-debug-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert (
        logs[0].stat().st_mode & 0o777 == 0o600
        and (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
    )
    assert "Traceback" in text and "boom" in text
    assert "secret-value-0123456789" not in text


def _explode_on_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_spec meets a bug in the second of the CASES and works on every other file."""
    from engine import spec

    real = spec.load_spec

    def load(path: str, **kwargs: Path) -> object:
        if path == CASES[1]:
            raise RuntimeError("boom")
        return real(path, **kwargs)

    monkeypatch.setattr(spec, "load_spec", load)


def test_json_report_survives_a_bug_in_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _explode_on_second(monkeypatch)
    args = ["validate", "--state-dir", str(tmp_path), "--format", "json", *SPECS[:1], *CASES[:3]]
    code = cli.main(args)
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    files = json.loads(out)["files"]
    assert [f["file"] for f in files] == [SPECS[0], *CASES[:3]]
    assert [f["valid"] for f in files] == [True, False, False, False]
    (bug,) = files[2]["errors"]
    assert bug["code"] == "internal_error" and bug["file"] == CASES[1]
    assert bug["message"].startswith("RuntimeError in ") and "Traceback" not in out
    assert files[3]["errors"][0]["code"] != "internal_error"
    assert len(list((tmp_path / "logs").glob("engine-debug-*.log"))) == 1


def test_text_report_names_the_bug_on_stderr_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _explode_on_second(monkeypatch)
    code = cli.main(["validate", "--state-dir", str(tmp_path), *CASES[:3]])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.count("internal error: RuntimeError in ") == 1 and len(err.splitlines()) == 1
    assert f"{CASES[0]}: " in out and f"{CASES[2]}: " in out and CASES[1] not in out


def _git(repo: Path, *args: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    subprocess.run(git, cwd=repo, check=True, capture_output=True)


def test_a_whole_number_float_is_an_integer(tmp_path: Path) -> None:
    spec = tmp_path / "float.yaml"
    spec.write_text(
        "apiVersion: fleet/v1\nkind: Fleet\nname: float\nprovider: {name: local}\n"
        "groups: [{name: web, count: 3.0}, {name: db, count: 1e1}]\n"
        "install: {agent: {port: 8000.0}}\nlimits: {servers: 2e1, memory_gb: 16.0}\n"
    )
    result = engine("validate", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 group(s), 13 server(s)" in result.stdout
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "nothing yet")
    result = engine("preview", "float.yaml", "--against-ref", "HEAD", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web-3" in result.stdout and "db-10" in result.stdout


def test_a_five_line_local_spec_validates_and_previews(tmp_path: Path) -> None:
    (tmp_path / "first.yaml").write_text(
        "apiVersion: fleet/v1\nkind: Fleet\nname: first\nprovider: {name: local}\n"
        "groups: [{name: web, count: 2}]\n"
    )
    result = engine("validate", "first.yaml", cwd=tmp_path)
    assert result.stdout == "first.yaml: valid (fleet first on local: 1 group(s), 2 server(s))\n"
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "nothing yet")
    result = engine("preview", "first.yaml", "--against-ref", "HEAD", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web-2" in result.stdout and "small" in result.stdout


def test_catalog_show(tmp_path: Path) -> None:
    result = engine("catalog", "show", "hcloud", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "cx22" in result.stdout and "fsn1" in result.stdout
    as_json = json.loads(engine("catalog", "show", "local", "--format", "json").stdout)
    assert [t["name"] for t in as_json["server_types"]] == ["small", "medium", "large"]


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["validate", "x.yaml"], {}, ".engine"),
        (["validate", "x.yaml"], {"ENGINE_STATE_DIR": "state/here"}, "state/here"),
        (["validate", "x.yaml"], {"ENGINE_STATE_DIR": ""}, ".engine"),  # empty: unset
        (["validate", "x.yaml"], {"ENGINE_STATE_DIR": " "}, ".engine"),
        (["up", "x.yaml", "--state-dir", "rel"], {}, "rel"),
    ],
)
def test_the_state_dir_is_absolute_before_any_command_runs(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Docker refuses a relative bind mount; a relative default once reached it unresolved.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGINE_STATE_DIR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = cli.resolve_paths(cli.build_parser().parse_args(argv))
    assert args.state_dir == tmp_path / expected


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


def test_a_command_parses_alike_with_its_own_parser_only() -> None:
    # A run builds only its command's parser: none may lean on another command's module.
    whole = _subcommands(cli.build_parser())
    alone = {name: _subcommands(cli.build_parser([name])) for name in cli.COMMANDS}
    assert set(cli.COMMANDS) <= set(whole)
    for name in cli.COMMANDS:
        assert name in alone[name]
        assert alone[name][name].format_help() == whole[name].format_help()
    # A command no module is named after (`destroy`, in up's) gets the whole parser.
    assert set(_subcommands(cli.build_parser(["destroy", "x.yaml"]))) == set(whole)


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (("deploy", "nope.yaml"), 1, "nope.yaml: error[file_not_found] no such file"),
        (("deploy", "specs/demo.yaml", "--format", "xml"), 2, "invalid choice: 'xml'"),
        (("logs", "specs/demo.yaml"), 2, "the following arguments are required: APP"),
        (("logs", "specs/demo.yaml", "web", "--tail", "-3"), 2, "from 0 to 1000000"),
        (("apps", "rollback", "specs/demo.yaml"), 2, "arguments are required: APP"),
        (("apps", "status", "specs/demo.yaml"), 1, "no record of fleet demo"),
        (("server", "update", "specs/demo.yaml"), 2, "name the servers or give --all"),
        (("server", "upgrade", "specs/demo.yaml", "demo-1", "--all"), 2, "not both"),
        (("server", "reboot", "specs/demo.yaml"), 2, "reboot: name exactly one server"),
        (("server", "poweroff", "specs/demo.yaml", "web-1", "web-2"), 2, "exactly one server"),
    ],
)
def test_bad_input_to_the_apps_commands_says_what_to_fix(
    args: tuple[str, ...], code: int, said: str, tmp_path: Path
) -> None:
    result = engine(*args, "--state-dir", str(tmp_path / "state"))
    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


FINGERPRINT = "ab" * 32


@pytest.mark.parametrize(
    ("args", "said"),
    [
        *[
            (
                ("containers", "specs/demo.yaml", "web-1", "--agent", "127.0.0.1:1",
                 "--fingerprint", FINGERPRINT, "--timeout", value),
                f"argument --timeout: '{value}' is not a number of seconds more than 0 and at "
                "most 3600",
            )
            for value in ("-1", "nan", "inf", "0", "1e300", "ten")
        ],
        *[
            (
                ("serve", "--drain", value),
                f"argument --drain: '{value}' is not a number of seconds from 0 to 86400",
            )
            for value in ("-1", "nan", "inf", "1e9")
        ],
        *[
            (
                ("serve", "--forwarded-allow-ips", value),
                f"argument --forwarded-allow-ips: '{bad}' is not an IP address or network",
            )
            for value, bad in (("not an ip", "not an ip"), ("127.0.0.1,proxy.lan", "proxy.lan"))
        ],
        *[
            (
                (*command, "specs/demo.yaml", *names, "--timeout", value),
                f"argument --timeout: '{value}' is not a duration of 1s or more",
            )
            for command, names in ((("up",), ()), (("server", "reboot"), ("web-1",)))
            for value in ("-1", "nan", "inf", "0s", "1e3")
        ],
        *[
            ((*command, option, value), f"argument {option}: '{value}' is not a whole number from")
            for command, option in (
                (("runs",), "--limit"),
                (("dashboard", "specs/demo.yaml"), "--port"),
                (("up", "specs/demo.yaml"), "--attempts"),
                (("serve",), "--workers"),
                (("serve",), "--heartbeat-misses"),
                (("logs", "specs/demo.yaml", "web"), "--tail"),
            )
            for value in ("99999999999999999999", "-1", "1.5", "x")
        ],
    ],
)  # fmt: skip
def test_a_bad_number_or_duration_for_an_option_is_a_usage_error_naming_it(
    args: tuple[str, ...], said: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "keys" / "demo.key").write_text("0" * 64 + "\n")  # so a run would get that far
    result = engine(*args, "--state-dir", str(state))
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in state.rglob("*")) == ["demo.key", "keys"]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_an_empty_engine_state_dir_is_unset_not_the_current_directory(tmp_path: Path) -> None:
    # `ENGINE_STATE_DIR=$TYPO engine ...` once kept state.db and keys/ in the current
    # directory (a repository's root) and made it 0700.
    tmp_path.chmod(0o755)
    result = engine("apikey", "create", "k1", cwd=tmp_path, env={"ENGINE_STATE_DIR": ""})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".engine"]
    assert (tmp_path / ".engine" / "state.db").is_file()
    assert _mode(tmp_path) == 0o755


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("--state-dir", "argument --state-dir: an empty path names no folder"),
        ("--state", "argument --state: an empty URL names no store"),
    ],
)
def test_an_empty_state_option_is_a_usage_error_that_makes_nothing(
    option: str, said: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    for value in ("", " "):
        result = engine("apikey", "create", "k1", option, value, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert said in result.stderr and "Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == []
        assert _mode(tmp_path) == 0o755


def test_the_current_directory_as_state_directory_is_used_but_not_made_private(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o755)
    result = engine("apikey", "create", "k1", "--state-dir", ".", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _mode(tmp_path) == 0o755  # the user's folder: its mode is theirs
    assert _mode(tmp_path / "keys") == 0o700 and _mode(tmp_path / "state.db") == 0o600


@pytest.fixture
def hetzner(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """specs/hetzner.yaml (fleet web-prod) against a fake Hetzner API with nothing in it, and
    the environment that reads it."""
    fake = FakeHcloud()
    with serve(fake.app()) as base:
        data = yaml.safe_load(Path("specs/hetzner.yaml").read_text())
        data["provider"]["endpoint"] = f"{base}/v1"
        spec = tmp_path / "hetzner.yaml"
        spec.write_text(yaml.safe_dump(data))
        yield str(spec), {"HCLOUD_TOKEN": fake.token}


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        # What `engine up` refuses before it changes anything, its dry run refuses too.
        (("up", "SPEC", "--dry-run"), 1, "error: the Pulumi CLI is not installed"),
        (("preview", "SPEC"), 0, ""),
        (("status", "SPEC", "--no-live"), 0, ""),
        (("runs",), 0, ""),
        (("runs", "web-prod", "r-1"), 1, "fleet web-prod has no run r-1"),
        (("alerts",), 0, ""),
        (("apikey", "list"), 0, ""),
        (("apikey", "revoke", "k1"), 1, "there is no API key called k1"),
        (("apikey", "create", "Not A Name"), 1, "is not a usable key name"),
        (("server", "reboot", "SPEC", "web-1"), 1, "the engine has no record of fleet web-prod"),
        (("server", "update", "SPEC", "--all"), 1, "the engine has no record of fleet web-prod"),
        (("apps", "history", "SPEC"), 1, "the engine has no record of fleet web-prod"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else None,
)
def test_a_command_that_only_reads_or_fails_leaves_no_state_behind(
    args: tuple[str, ...],
    code: int,
    said: str,
    hetzner: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    # `engine up --dry-run` ("touches nothing"), runs, alerts, apikey list and the failing
    # revoke and reboot each made .engine/state.db where none was.
    spec, env = hetzner
    argv = [spec if a == "SPEC" else a for a in args]
    result = engine(*argv, "--state-dir", str(tmp_path / "state"), cwd=tmp_path, env=env)
    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hetzner.yaml"]


def test_a_command_that_writes_refuses_a_named_store_whose_folder_does_not_exist(
    tmp_path: Path,
) -> None:
    # --state sqlite:////nonexistent/dir/x.db: apikey create made the folder (as root) and
    # kept the key there.
    folder = tmp_path / "nonexistent" / "dir"
    url = f"sqlite:///{folder / 'x.db'}"
    result = engine("apikey", "create", "k1", "--state", url, "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: the folder of the state store {url} does not exist: {folder}; create it "
        f"(mkdir -p {folder}) or fix the URL (--state or $ENGINE_STATE_URL): the engine makes "
        "no folder outside its state directory"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_command_that_reads_says_a_named_store_does_not_exist(tmp_path: Path) -> None:
    # status, runs and alerts said "nothing recorded" as for an empty store, and runs and
    # alerts made the store (and its folder) to say it.
    folder = tmp_path / "nonexistent" / "dir"
    url = f"sqlite:///{folder / 'x.db'}"
    note = (
        f"note: there is no state store at {url} (its folder {folder} does not exist), so "
        "nothing is recorded there; if you meant another store, fix --state or $ENGINE_STATE_URL"
    )
    for args in (("status", "specs/demo.yaml", "--no-live"), ("runs",), ("alerts",)):
        result = engine(*args, "--state", url, "--state-dir", str(tmp_path / "s"))
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == note
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("/dev/null", "names /dev/null, which is a character device, and a SQLite store is a "
         "regular file the engine writes: name one (sqlite:///PATH/state.db)"),
        ("FOLDER", "names the folder FOLDER, and a SQLite store is a file: name a file in it "
         "(sqlite:///FOLDER/state.db)"),
    ],
)  # fmt: skip
def test_a_url_naming_what_cannot_be_a_store_says_so(
    target: str, said: str, tmp_path: Path
) -> None:
    # "database is locked" (/dev/null) and "unable to open database file" (a folder), or, for
    # status, "nothing recorded".
    target, said = target.replace("FOLDER", str(tmp_path)), said.replace("FOLDER", str(tmp_path))
    result = engine("status", "specs/demo.yaml", "--no-live", "--state", f"sqlite:///{target}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--listen", "127.0.0.1:8470"), "--listen and --engine-address are for Hetzner Cloud"),
        (("--engine-address", "203.0.113.7"), "--listen and --engine-address are for Hetzner"),
    ],
)
def test_a_dry_run_refuses_what_up_refuses_of_the_local_provider(
    options: tuple[str, ...], said: str, tmp_path: Path
) -> None:
    result = engine(
        "up", "specs/demo.yaml", "--dry-run", *options, "--state-dir", str(tmp_path / "s")
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr


def test_an_engine_address_that_is_none_is_a_usage_error(tmp_path: Path) -> None:
    result = engine(
        "up", "specs/hetzner.yaml", "--dry-run", "--engine-address", "notanip",
        "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "argument --engine-address: 'notanip' is not an IP address or a CIDR range" in (
        result.stderr
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("args", "usage", "unknown"),
    [
        (("validate", "specs/demo.yaml", "--bogus"), "engine validate", "--bogus"),
        (("apikey", "list", "--format", "xml"), "engine apikey list", "--format xml"),
        (
            ("preview", "specs/demo.yaml", "--engine-address", "1.2.3.4"),
            "engine preview",
            "--engine-address 1.2.3.4",
        ),
    ],
)
def test_an_argument_no_command_takes_is_refused_with_that_command_s_usage(
    args: tuple[str, ...], usage: str, unknown: str
) -> None:
    result = engine(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: {usage} "), result.stderr
    assert f"{usage}: error: unrecognized arguments: {unknown}\n" in result.stderr


@pytest.mark.parametrize(
    ("fleet", "said"), [((), "no run recorded"), (("shop",), "no run recorded for fleet shop")]
)
def test_runs_says_when_there_are_none(fleet: tuple[str, ...], said: str, tmp_path: Path) -> None:
    result = engine("runs", *fleet, "--state-dir", str(tmp_path / "s"))
    assert (result.returncode, result.stdout) == (0, f"{said}\n")


@pytest.mark.parametrize(
    "args",
    [
        ("validate", "specs/demo.yaml", ""),
        ("preview", ""),
        ("up", "", "--dry-run"),
        ("deploy", ""),
        ("apps", "status", ""),
        ("dashboard", ""),
        ("serve", "--spec", ""),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_an_empty_spec_path_is_a_usage_error_not_the_current_directory(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    # It was read as ".": "is a directory, not a file", under an empty file name.
    result = engine(*args, "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "an empty path names no file; give the path of the fleet spec" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_command_that_changes_things_goes_on_when_its_reader_has_gone(tmp_path: Path) -> None:
    # `engine destroy ... | head`: the first line written to the closed pipe stopped it
    # part-way, silently, with the fleet's key still there (and a rollout of `engine deploy`
    # left half done).
    fleet = f"gone-{tmp_path.name[-6:].replace('_', '-')}".lower()
    spec = tmp_path / "fleet.yaml"
    demo = (ROOT / "specs" / "demo.yaml").read_text()
    spec.write_text(demo.replace("name: demo", f"name: {fleet}"))
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True, mode=0o700)
    (state / "keys" / f"{fleet}.key").write_text("0" * 64 + "\n")
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine", "destroy", str(spec), "--yes",
             "--state-dir", str(state)],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert not (state / "keys" / f"{fleet}.key").exists()
