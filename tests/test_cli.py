"""The `engine` command as users run it: exit codes, formats, and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import cli
from tests.support.cli import engine

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
    assert "Traceback" in text and "boom" in text
    assert "secret-value-0123456789" not in text


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
