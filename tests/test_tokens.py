"""Per-fleet keys and the tokens derived from them: the agent's, heartbeats' and phone-home's."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.secrets import redact
from engine.tokens import (
    PhoneHomeSeal,
    agent_token,
    api_key_secret_path,
    derive_token,
    ensure_api_key_secret,
    ensure_fleet_key,
    heartbeat_token,
    is_genuine,
    is_same_token,
    key_path,
    mint_phone_home_token,
    parse_token,
    read_fleet_key,
    seal_tokens,
    token_sha256,
)
from tests.support.cli import engine

KEY = bytes(range(32))


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    key = ensure_fleet_key(tmp_path, "demo")
    path = key_path(tmp_path, "demo")
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_fleet_key(tmp_path, "demo") == key
    assert read_fleet_key(tmp_path, "demo") == key
    assert ensure_fleet_key(tmp_path, "other") != key
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.key", "other.key"]


def test_engines_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from engine.tokens import ensure_fleet_key; "
        "print(ensure_fleet_key(Path(sys.argv[1]), 'demo').hex())"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )
        for _ in range(6)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in processes}
    assert keys == {read_fleet_key(tmp_path, "demo").hex()}


def test_a_missing_or_damaged_key_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"no key for fleet demo in .*keys; the engine makes it"):
        read_fleet_key(tmp_path, "demo")
    path = key_path(tmp_path, "demo")
    path.parent.mkdir()
    path.write_text("not hex at all\n")
    with pytest.raises(EngineError, match=r"is not a fleet key .* restore it from your backup"):
        read_fleet_key(tmp_path, "demo")
    with pytest.raises(EngineError, match="is not a fleet key"):
        ensure_fleet_key(tmp_path, "demo")  # never silently replaced


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "is a folder, not a file"),
        (b"", "is empty"),
        (b"garbage\n", "does not hold 64 hex digits"),
        (b"\xff\xfe" * 32, "does not hold 64 hex digits"),
    ],
    ids=["folder", "empty", "garbage", "binary"],
)
def test_an_unusable_api_key_secret_is_named_for_what_it_is(
    content: bytes | None, said: str, tmp_path: Path
) -> None:
    path = api_key_secret_path(tmp_path)
    path.parent.mkdir()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(EngineError) as info:
        ensure_api_key_secret(tmp_path)
    message = str(info.value)
    what = f"{path}, the secret the control plane's API keys are checked with, {said}; "
    assert message.startswith(what + "restore it from your backup")
    assert "every API key made so far stops working" in message
    assert "fleet key" not in message and "agent" not in message
    result = engine("apikey", "create", "ops", "--state-dir", str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n")
    assert path.is_dir() if content is None else path.read_bytes() == content  # left as it was
    listed = engine("apikey", "list", "--state-dir", str(tmp_path))
    assert (listed.returncode, listed.stdout) == (0, "")  # no key was stored


def test_tokens_are_stable_separate_and_secret() -> None:
    token = agent_token(KEY, "demo", "web-1")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert agent_token(KEY, "demo", "web-1") == token
    others = {
        heartbeat_token(KEY, "demo", "web-1"),
        agent_token(KEY, "demo", "web-2"),
        agent_token(KEY, "prod", "web-1"),
        agent_token(bytes(32), "demo", "web-1"),
        derive_token(KEY, "agent", "demo", "web-1", "2026-11-02T10:00:00Z"),
    }
    assert token not in others and len(others) == 5
    assert redact(f"sent {token}") == "sent ***"  # registered as a secret


def test_parts_cannot_be_shifted_into_each_other() -> None:
    assert derive_token(KEY, "agent", "demo", "web-1") != derive_token(
        KEY, "agent", "demow", "eb-1"
    )
    with pytest.raises(ValueError, match="unit separator"):
        derive_token(KEY, "agent", "demo\x1fweb", "1")


def test_digest_and_comparison() -> None:
    token = agent_token(KEY, "demo", "web-1")
    assert re.fullmatch(r"[0-9a-f]{64}", token_sha256(token))
    assert is_same_token(token, token)
    assert not is_same_token(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not is_same_token(token, "")


def test_a_minted_phone_home_token_is_returned_with_the_record_that_keeps_only_its_hash() -> None:
    now = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)
    token, record = mint_phone_home_token(KEY, fleet="demo", server="web-1", ttl_s=600, now=now)
    assert record.token_hash == token_sha256(token) and token not in repr(record)
    assert (record.fleet, record.server) == ("demo", "web-1")
    assert (record.created_at, record.expires_at) == (now, now + dt.timedelta(seconds=600))
    assert record.spent_at is None
    parsed = parse_token(token)
    assert parsed is not None and parsed.expires == int(record.expires_at.timestamp())
    assert is_genuine(KEY, parsed, fleet="demo", server="web-1")
    assert not is_genuine(KEY, parsed, fleet="demo", server="web-2")
    assert not is_genuine(bytes(32), parsed, fleet="demo", server="web-1")
    assert redact(f"sent {token}") == "sent ***"


def test_a_sealed_phone_home_token_is_useless_until_the_seal_gives_it_back() -> None:
    token, _record = mint_phone_home_token(KEY, fleet="demo", server="web-1", ttl_s=600)
    document = f"token: {token}\nnot.{token}\n"
    sealed = seal_tokens(document)
    assert sealed.count(token) == 1  # only the token standing alone is sealed
    assert parse_token(sealed.split()[1]) is None
    seal = PhoneHomeSeal(key=KEY, fleet="demo", server="web-1")
    assert seal.conceal(document) == sealed
    assert seal.reveal(sealed) == document
    assert PhoneHomeSeal(key=KEY, fleet="demo", server="web-2").reveal(sealed) != document
