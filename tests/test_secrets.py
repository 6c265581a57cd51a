"""engine.secrets: what reads as a pasted token, and how tokens are read from the environment."""

from __future__ import annotations

import pytest

from engine.errors import EngineError
from engine.secrets import is_literal_token, read_token, redact, token_from_env

HEX = "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"


@pytest.mark.parametrize(
    "value",
    [
        HEX,
        f"hcloud_{HEX}",
        f"HCLOUD_{HEX.upper()}",
        f"{HEX}_token",
        f"dop_v1_{HEX}",
        "ghp_R2d2C3po4Bb8Ee1Kk0Ll9Mm7Nn6Oo5Pp3Qq2",
        "kqHj8wZ3pL5mN2vB9xC4rT7yU1iO6aS0dF3gH8jK2lQ5wE9rT4yU7iO1pA6sD0fG",
        "a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6",
    ],
)
def test_a_long_random_run_reads_as_a_token_whatever_stands_around_it(value: str) -> None:
    assert is_literal_token(value)


@pytest.mark.parametrize(
    "value",
    [
        "HCLOUD_TOKEN",
        "DIGITALOCEAN_TOKEN",
        "MY_APP_SECRET_2",
        "AWS_SECRET_ACCESS_KEY",
        "PRODUCTIONDATABASEPASSWORD2",
        "SOME_VERY_LONG_NAME_WITH_MANY_WORDS_AND_A_NUMBER_1234",
        "hcloud_token_staging_2",
        "databaseUrlForTheReportingReplica",
    ],
)
def test_names_do_not_read_as_tokens(value: str) -> None:
    assert not is_literal_token(value)


def test_a_token_is_read_without_the_whitespace_around_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_TOKEN", f"  {HEX}\n")
    assert token_from_env("SOME_TOKEN") == read_token("SOME_TOKEN") == HEX
    assert redact(f"sent {HEX}") == "sent ***"
    monkeypatch.setenv("SOME_TOKEN", " \n")
    assert token_from_env("SOME_TOKEN") == ""
    with pytest.raises(EngineError, match="SOME_TOKEN is not set"):
        read_token("SOME_TOKEN")


@pytest.mark.parametrize(
    ("inside", "said"),
    [
        ("\n", "a line break"),
        ("\r\n", "a line break"),
        (" ", "a space"),
        ("\t", "a tab"),
        ("\u00a0", "a blank character"),
        ("\x1b", "a control character"),
        ("\u200b", "a control character"),
        ("\u00e9", "a non-ASCII character"),
    ],
)
def test_a_token_with_a_character_no_token_has_is_refused_unseen(
    monkeypatch: pytest.MonkeyPatch, inside: str, said: str
) -> None:
    monkeypatch.setenv("SOME_TOKEN", f"{HEX[:32]}{inside}{HEX[32:]}")
    with pytest.raises(EngineError) as info:
        token_from_env("SOME_TOKEN")
    message = str(info.value)
    assert message.startswith(f"the API token in SOME_TOKEN has {said} inside it")
    assert HEX[:8] not in message and HEX[-8:] not in message


KEY = "fek_0123456789abcdef_" + "3f" * 32


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"GET /v1/fleets?api_key={KEY} HTTP/1.1", "GET /v1/fleets?api_key=*** HTTP/1.1"),
        (f"GET /v1/fleets/{KEY} 404", "GET /v1/fleets/fek_0123456789abcdef_*** 404"),
        ("GET /v1/x?since=1&password=Hunter2&limit=2", "GET /v1/x?since=1&password=***&limit=2"),
        ("GET /?fleet=web&token=abc", "GET /?fleet=web&token=***"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("GET /v1/fleets/web/events?since=3&limit=5", "GET /v1/fleets/web/events?since=3&limit=5"),
    ],
)  # fmt: skip
def test_a_credential_a_client_sends_is_masked_though_never_registered(
    text: str, shown: str
) -> None:
    # `engine serve --access-log` wrote keys and passwords sent in URLs in clear.
    assert redact(text) == shown
