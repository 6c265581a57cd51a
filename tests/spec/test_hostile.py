"""Hostile input ends in one clear error: nothing hangs, nothing crashes, nothing leaks."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.spec import MAX_SPEC_BYTES, load_spec, parse_spec, url_problem
from engine.yamldoc import MAX_DEPTH
from tests.support.cli import engine


def _codes(raw: bytes) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, file="hostile.yaml")
    return [d.code for d in info.value.diagnostics]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "empty"),
        (b"   \n# only a comment\n", "empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "not_text"),
        (b"name: caf\xe9\n", "not_utf8"),
        (b"- a\n- b\n", "not_a_mapping"),
        (b"just a string", "not_a_mapping"),
        (b"42", "not_a_mapping"),
        (b"a: [1, 2\n", "yaml_syntax"),
        (b"a: *undefined\n", "yaml_alias"),
        (b"? [1, 2]\n: x\n", "yaml_complex_key"),
        (b"a: !!python/name:os.system x\n", "yaml_tag"),
        (b"a: !custom x\n", "yaml_tag"),
        (b"<<: 5\n", "yaml_merge"),
    ],
)
def test_malformed_documents_get_one_clear_error(raw: bytes, code: str) -> None:
    assert _codes(raw) == [code]


def test_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 12):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    assert _codes("\n".join(lines).encode()) == ["yaml_too_large"]


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deep_nesting_is_refused(opener: str) -> None:
    assert _codes((opener * 100_000).encode()) == ["yaml_too_deep"]


def test_nesting_stops_at_our_limit_with_the_position_of_the_first_level_too_many() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), file="deep.yaml")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.line, diagnostic.column) == (
        "yaml_too_deep",
        1,
        MAX_DEPTH + 1,
    )
    assert _codes(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) == ["not_a_mapping"]


def test_deep_block_nesting_is_refused() -> None:
    raw = "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + f"{'  ' * 200}x: 1\n"
    assert _codes(raw.encode()) == ["yaml_too_deep"]


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * (MAX_SPEC_BYTES // 10 + 1))
    with pytest.raises(SpecError) as info:
        load_spec(big)
    assert [d.code for d in info.value.diagnostics] == ["file_too_large"]


def test_a_megabyte_of_values_just_under_the_limit_is_judged() -> None:
    items = ", ".join(str(i) for i in range(140_000))
    raw = f"apiVersion: fleet/v1\nkind: Fleet\nname: x\nnoise: [{items}]\n".encode()
    assert len(raw) < MAX_SPEC_BYTES
    codes = _codes(raw)
    assert "unknown_key" in codes
    assert "missing_key" in codes


def test_missing_file_and_directory(tmp_path: Path) -> None:
    for target in (tmp_path / "absent.yaml", tmp_path):
        with pytest.raises(SpecError) as info:
            load_spec(target)
        assert [d.code for d in info.value.diagnostics] == ["file_not_found"]


@pytest.fixture
def not_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Paths that name no regular file: endless devices, a FIFO nobody writes, a socket."""
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "socket.yaml"))
        yield {
            "zero.yaml": tmp_path / "zero.yaml",
            "/dev/urandom": Path("/dev/urandom"),
            "fifo.yaml": tmp_path / "fifo.yaml",
            "socket.yaml": tmp_path / "socket.yaml",
            "folder.yaml": tmp_path / "folder.yaml",
        }


@pytest.mark.parametrize("command", ["validate", "preview", "up"])
def test_what_is_not_a_file_is_refused_unread_by_every_command(
    command: str, not_files: dict[str, Path], tmp_path: Path
) -> None:
    for name, path in not_files.items():
        # The deadline only ends a hang; a refusal is immediate.
        result = engine(command, "--state-dir", str(tmp_path / "state"), str(path), timeout=30)
        assert result.returncode == 1, name
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "error[" in line]
        assert len(errors) == 1, result.stdout + result.stderr
        assert "error[file_not_found]" in errors[0] and "not a file" in errors[0]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_literal_token_is_never_echoed() -> None:
    token = "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"
    raw = (
        "apiVersion: fleet/v1\nkind: Fleet\nname: web\n"
        f"provider: {{name: hcloud, token_env: {token}}}\n"
        "control_plane: {url: 'https://ops.example.com'}\n"
        "groups: [{name: web, count: 1, server_type: cx22, image: debian-12, locations: [fsn1]}]\n"
    ).encode()
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert [d.code for d in info.value.diagnostics] == ["literal_secret"]
    assert token not in str(info.value)
    assert token[:12] not in str(info.value)


def test_a_secret_in_a_variable_name_field_is_never_echoed() -> None:
    """Whether it reads as a token or breaks the name's form, a pasted secret is not shown."""
    case = Path(__file__).parent / "cases" / "literal_secret_env.yaml"
    text = case.read_text()
    with pytest.raises(SpecError) as info:
        load_spec(case)
    shown = str(info.value) + "".join(d.path + d.hint for d in info.value.diagnostics)
    for secret in (
        "3f9a8b7c6d5e4f3a2b1c0d9e",
        "postgres9a8b7c6d5e4f3a2b",
        "GHCR_9A8B7C6D5E4F3A2B1C0D",
        "R2d2C3po4Bb8Ee1Kk0Ll9Mm7",
        "MfKQ9r8GKYqrTwjUPD8ILPZI",
        "a1b2c3d4-e5f6",
    ):
        assert secret in text
        assert secret[:12] not in shown
    hint = next(d.hint for d in info.value.diagnostics if d.path == "webhooks[1].secret_env")
    assert hint.startswith("export the secret in a variable, e.g. export FLEET_WEBHOOK_SECRET=")


def test_a_private_key_among_the_public_keys_is_never_echoed() -> None:
    case = Path(__file__).parent / "cases" / "private_key.yaml"
    secret = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"
    assert secret in case.read_text()
    with pytest.raises(SpecError) as info:
        load_spec(case)
    assert [d.code for d in info.value.diagnostics] == ["literal_secret"]
    assert secret[:12] not in str(info.value)


def test_a_file_that_is_no_spec_is_not_printed_line_by_line(tmp_path: Path) -> None:
    """A shadow file reads as a map of unknown keys; each is shown by its start only, never
    its hash, and so is a key given twice."""
    digest = "Rk3vQ9xZp2LmN8bT4cWy6Hj1Ua5Sd7Fg0Kq3Ve9Xr2Bn6Mt8Lp4Zc1Yw7Hs5Ja0Ge"
    shadow = tmp_path / "shadow"
    shadow.write_text(
        f"root:$6$Xe2rTq9wLm4pZs7K${digest}:19000:0:99999:7:::\n"
        "daemon:*:19000:0:99999:7:::\n"
        f"oper:$6$Xe2rTq9wLm4pZs7K${digest}:19000:0:99999:7:::\n"
        f"oper:$6$Xe2rTq9wLm4pZs7K${digest}:19000:0:99999:7:::\n"
    )
    first = engine("validate", str(shadow))
    assert "error[duplicate_key]" in first.stdout + first.stderr
    shadow.write_text("\n".join(shadow.read_text().splitlines()[:3]) + "\n")
    second = engine("validate", str(shadow))
    assert '["root:$6$Xe2rTq9wLm4pZs7K..."]: unknown key "root:$6$Xe2rTq9wLm4pZs7K..."' in (
        second.stdout
    )
    assert 'unknown key "daemon:*:19000:0:99999:7..."' in second.stdout
    for result in (first, second):
        assert result.returncode == 1 and "Traceback" not in result.stderr
    for shown in (first.stdout + first.stderr, second.stdout):
        assert digest[:6] not in shown and digest[-6:] not in shown


def test_a_bom_is_accepted() -> None:
    raw = b"\xef\xbb\xbf" + Path("specs/demo.yaml").read_bytes()
    assert parse_spec(raw).name == "demo"


def test_a_value_written_into_an_env_key_is_not_shown() -> None:
    """`DB_PASSWORD=hunter2` as a key of an app's env (a .env line pasted into the map) is
    refused by its name only, with how to write it, at the key's own line and column."""
    raw = (
        "apiVersion: fleet/v1\nkind: Fleet\nname: demo\nprovider: {name: local}\n"
        "groups: [{name: web, count: 1}]\n"
        "apps:\n  - name: site\n    image: ghcr.io/acme/site:1\n    on: [web]\n"
        "    env:\n      LOG_LEVEL: info\n      DB_PASSWORD=hunter2: x\n"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(raw.encode())
    (found,) = info.value.diagnostics
    assert (found.path, found.line, found.column) == ('apps[0].env["DB_PASSWORD=..."]', 12, 7)
    assert found.message == 'the key "DB_PASSWORD=..." does not have the required form'
    assert found.hint == "write the name, a colon and the value (NAME: value), not NAME=value"
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://ops.example.com/hooks/a@b", None),
        ("https://ops.example.com?to=ops@example.com", None),
        ("https://ops@ops.example.com", "it holds a user name or password before its host"),
        ("https://u:p@[::1]:8443/", "it holds a user name or password before its host"),
    ],
)
def test_only_an_at_sign_before_the_host_is_a_user_name(url: str, problem: str | None) -> None:
    said = url_problem(url)
    assert said == problem if problem is None else (said or "").startswith(problem)


@pytest.mark.parametrize(
    ("zone", "hint"),
    [
        ("europe/berlin", 'did you mean "Europe/Berlin"?'),
        ("Europe/Berln", 'did you mean "Europe/Berlin"?'),
        ("Mars/Olympus", "write a zone name such as UTC or Europe/Berlin"),
    ],
)
def test_a_time_zone_no_database_has_is_refused_with_the_nearest(
    zone: str, hint: str, tmp_path: Path
) -> None:
    spec = tmp_path / "fleet.yaml"
    demo = (Path(__file__).parents[2] / "specs" / "demo.yaml").read_text()
    spec.write_text(demo.replace("timezone: UTC", f"timezone: {zone}"))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.path) == ("unknown_timezone", "install.system.timezone")
    assert diagnostic.hint.startswith(hint)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "US/Eastern", "Etc/GMT+5"])
def test_a_time_zone_of_the_database_passes(zone: str, tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    demo = (Path(__file__).parents[2] / "specs" / "demo.yaml").read_text()
    spec.write_text(demo.replace("timezone: UTC", f"timezone: {zone}"))
    assert load_spec(spec).install.system.timezone == zone
