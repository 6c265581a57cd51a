"""Secrets the engine holds at run time, and the redaction that keeps them out of output.

Every token the engine reads (API tokens from the environment, bootstrap and agent tokens it
mints) is registered here; `redact` replaces each registered value in any text before that
text reaches a log file, an error message or a debug log.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
from collections.abc import Iterable

from engine.errors import EngineError

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_pattern: re.Pattern[str] | None = None  # every secret, longest first; rebuilt after a change
MASK = "***"
# Credentials a client may send, registered or not, in any text (an access log line, a URL
# echoed in an error): whatever follows "Bearer ", the secret half of an API key of the fleet
# API (fek_<id>_<secret>: the id names the key and stays), and the value of a URL's query
# parameter named as a credential is (?api_key=, &token=, &password=).
_CREDENTIALS = re.compile(
    r"(?i)(?P<keep>\bbearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<key>\bfek_[0-9a-f]{16}_)[0-9a-f]{64}\b"
    r"|(?P<query>[?&;][^=&\s]*(?:token|key|password|passwd|secret|auth)[^=&\s]*=)[^&\s\"']+"
)


def _mask_credential(match: re.Match[str]) -> str:
    return (match["keep"] or match["key"] or match["query"]) + MASK


def register_secret(value: str) -> str:
    """Remember `value` as a secret (values shorter than 8 characters are not tracked)."""
    global _pattern
    if len(value) >= 8 and value not in _SECRETS:
        with _LOCK:
            _SECRETS.add(value)
            _pattern = None
    return value


def _secrets_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _LOCK:
        if _pattern is None and _SECRETS:
            ordered = sorted(_SECRETS, key=len, reverse=True)
            _pattern = re.compile("|".join(map(re.escape, ordered)))
        return _pattern


def redact(text: str) -> str:
    """`text` with every registered secret, and any credential a client may send (a bearer
    token, an API key's secret, a credential in a URL's query), replaced by ***.

    One pass over the text whatever the number of secrets (an `engine up` of many servers
    mints many tokens)."""
    pattern = _secrets_pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _CREDENTIALS.sub(_mask_credential, text)


# DigitalOcean's personal access, OAuth and refresh tokens start so.
_TOKEN_PREFIXES = ("dop_v1_", "doo_v1_", "dor_v1_")
_MIN_TOKEN_RUN = 24


def is_literal_token(value: str) -> bool:
    """Whether `value`, written where the NAME of an environment variable belongs, looks like a
    token pasted there instead.

    A token is long and random: it has a known token prefix, or a run of 24 characters or
    more between underscores that mixes digits with lowercase letters, or that switches
    between letters and digits often (upper-case hex), whatever stands around it
    (hcloud_3f9a...). The words of a name are short and its digits come at their end:
    HCLOUD_TOKEN, MY_APP_SECRET_2 and PRODUCTIONDATABASEPASSWORD2 are names.
    """
    if value.startswith(_TOKEN_PREFIXES):
        return True
    return any(_is_random(run) for run in value.split("_") if len(run) >= _MIN_TOKEN_RUN)


def _is_random(run: str) -> bool:
    if not any(c.isdigit() for c in run):
        return False
    if any(c.islower() for c in run):
        return True
    switches = sum(a.isdigit() != b.isdigit() for a, b in itertools.pairwise(run))
    return switches >= len(run) // 4


def token_from_env(env_name: str) -> str:
    """The API token in environment variable `env_name` without the whitespace around it,
    registered as a secret; "" if the variable is unset or blank. Every provider token the
    engine uses is read here.

    A token with a line break, a space, a control character or a non-ASCII character inside
    it is refused with an EngineError that names the variable and never shows the value,
    before any request: no provider token has one, and an HTTP client fails on it with an
    error that quotes the header (after the line break, where redaction no longer matches).
    """
    value = os.environ.get(env_name, "").strip()
    odd = _odd_character(value)
    if odd:
        raise EngineError(
            f"the API token in {env_name} has {odd} inside it, which no API token has, so "
            f"nothing was sent; export {env_name}=... again with the token alone, on one line"
        )
    return register_secret(value)


def _odd_character(token: str) -> str:
    """What the first character no token has in `token` is, or "" if there is none."""
    for c in token:
        if c in "\r\n":
            return "a line break"
        if c.isspace():
            return {" ": "a space", "\t": "a tab"}.get(c, "a blank character")
        if not c.isprintable():
            return "a control character"
        if not c.isascii():
            return "a non-ASCII character"
    return ""


def unset_variables(names: Iterable[str]) -> list[str]:
    """Of the environment variables `names`, those unset or empty, in order."""
    return sorted({name for name in names if not os.environ.get(name)})


def read_token(env_name: str) -> str:
    """The API token in environment variable `env_name` (see token_from_env); an EngineError
    saying what to export if there is none."""
    value = token_from_env(env_name)
    if not value:
        raise EngineError(
            f"the environment variable {env_name} is not set; export your API token in it "
            f"(export {env_name}=...) and run the command again"
        )
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks registered secrets in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
