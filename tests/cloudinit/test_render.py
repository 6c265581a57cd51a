"""The user_data renderer, its linter and the replacement guard (pure; no container)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import yaml

from bench.cloudinit import fitting
from bench.cloudinit import render as render_longest
from engine import cloudinit
from engine.cloudinit import (
    CONFIG_PATH,
    PER_BOOT_PATH,
    SCRIPT_PATH,
    SSHD_DROP_IN,
    TOKEN_PATH,
    USER_DATA_LIMIT,
    UserDataError,
    lint_user_data,
    phone_home_url,
    pin_user_data,
    pinned_user_data,
    render_user_data,
)
from engine.model import ProviderName
from engine.state import StoredUserData
from engine.tokens import PhoneHomeSeal, TokenPurpose, expected_token
from tests.support.keys import DEPLOY_KEY, OPS_KEY, RSA4096_KEY
from tests.support.readme import section


def render(**overrides: Any) -> str:
    inputs: dict[str, Any] = {
        "fleet": "web-prod",
        "server": "web-1",
        "hostname": "web-1",
        "phone_home_url": phone_home_url("https://ops.example.com/"),
        "token": "tok.web-1.c2VjcmV0",
        "admin_user": "fleet",
        "authorized_keys": (OPS_KEY, DEPLOY_KEY),
        "provider": ProviderName.HCLOUD,
    }
    inputs.update(overrides)
    return render_user_data(**inputs)


def files_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["write_files"]}


def test_the_document_creates_the_admin_user_and_starts_the_phone_home() -> None:
    text = render()
    lint_user_data(text)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    (user,) = doc["users"]
    assert user == {
        "name": "fleet",
        "gecos": "fleet-engine admin",
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
        "ssh_authorized_keys": [OPS_KEY, DEPLOY_KEY],
    }
    assert doc["disable_root"] is True and doc["ssh_pwauth"] is False
    assert doc["hostname"] == "web-1"
    files = files_of(doc)
    assert json.loads(files[CONFIG_PATH]["content"]) == {
        "fleet": "web-prod",
        "server": "web-1",
        "provider": "hcloud",
        "url": "https://ops.example.com/v1/phone-home",
        "give_up_after_s": 3600,
    }
    assert files[TOKEN_PATH]["content"] == "tok.web-1.c2VjcmV0"
    assert files[TOKEN_PATH]["permissions"] == files[CONFIG_PATH]["permissions"] == "0600"
    assert files[SCRIPT_PATH]["content"].startswith("#!/usr/bin/python3\n")
    assert files[PER_BOOT_PATH] == {
        "path": PER_BOOT_PATH,
        "owner": "root:root",
        "permissions": "0700",
        "content": f"#!/bin/sh\nexec python3 {SCRIPT_PATH} --background\n",
    }
    assert "runcmd" not in doc and "bootcmd" not in doc
    assert SSHD_DROP_IN not in files
    assert "packages" not in doc and "package_update" not in doc


def test_the_token_appears_once_and_only_in_the_root_only_token_file() -> None:
    text = render(token="tok-unique-42")
    assert text.count("tok-unique-42") == 1
    doc = yaml.safe_load(text)
    assert "tok-unique-42" not in doc["write_files"][0]["content"]  # the settings
    assert "tok-unique-42" not in files_of(doc)[SCRIPT_PATH]["content"]


def test_rendering_is_deterministic_and_only_the_token_differs_between_tokens() -> None:
    assert render() == render()
    one, two = render(token="first-token-aaaa"), render(token="other-token-bbbb")
    changed = [(a, b) for a, b in zip(one.splitlines(), two.splitlines(), strict=True) if a != b]
    assert changed == [("  content: first-token-aaaa", "  content: other-token-bbbb")]


def test_the_text_does_not_depend_on_libyaml_being_installed() -> None:
    class PurePython(yaml.SafeDumper):
        pass

    PurePython.add_representer(str, cloudinit._represent_str)
    text = render(packages=("jq",), ssh_port=2222, authorized_keys=(OPS_KEY, RSA4096_KEY))
    _, body = text.split("\nhostname:", 1)
    document = yaml.safe_load(text)
    pure = yaml.dump(document, Dumper=PurePython, sort_keys=False, width=1 << 16)
    assert "hostname:" + body == pure


def test_packages_and_a_custom_ssh_port_are_rendered() -> None:
    doc = yaml.safe_load(render(packages=("jq", "python3-apt"), ssh_port=2222))
    assert doc["package_update"] is True
    assert doc["packages"] == ["jq", "python3-apt"]
    assert files_of(doc)[SSHD_DROP_IN]["content"] == "Port 2222\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token": "has space"}, "cannot be sent in an Authorization header"),
        ({"token": "line\nbreak"}, "cannot be sent in an Authorization header"),
        ({"token": ""}, "cannot be sent in an Authorization header"),
        ({"phone_home_url": "ftp://ops.example.com/v1/phone-home"}, "is not an http(s) URL"),
        ({"authorized_keys": ()}, "no SSH public key for the admin user"),
        ({"authorized_keys": (OPS_KEY + "\nruncmd: [reboot]",)}, "is not one line of an"),
        ({"packages": ("jq; reboot",)}, "is not a Debian/Ubuntu package name"),
        ({"ssh_port": 0}, "the SSH port 0 is not between 1 and 65535"),
    ],
)
def test_bad_inputs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(UserDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(**overrides)


def test_a_refused_token_is_never_echoed() -> None:
    with pytest.raises(UserDataError) as caught:
        render(token="secret value")
    assert "secret" not in str(caught.value)


GOOD = "#cloud-config\nruncmd:\n  - [echo, hi]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\ufeff" + GOOD, "starts with a byte order mark (BOM)"),
        (GOOD.replace("\n", "\r\n"), "has a carriage return (CR/LF line ending) on line 1"),
        ("#cloud-config\nruncmd:\r\n  - x\n", "on line 2"),
        ("runcmd:\n  - [echo, hi]\n", "does not start with the line #cloud-config"),
        ("#!/bin/sh\necho hi\n", "does not start with the line #cloud-config"),
        ("", "does not start with the line #cloud-config"),
        ("#cloud-config\nruncmd: [unclosed\n", "is not valid YAML at line 3, column 1"),
        ("#cloud-config\n- a list\n", "must be a YAML mapping"),
        ("#cloud-config\n\ud800: x\n", "is not valid UTF-8 text"),
        (
            "#cloud-config\n# " + "x" * USER_DATA_LIMIT + "\n",
            "is 32,785 bytes; providers accept at most 32,768",
        ),
    ],
)
def test_the_linter_refuses_what_cloud_init_would_ignore(text: str, message: str) -> None:
    with pytest.raises(UserDataError) as caught:
        lint_user_data(text, server="web-1")
    assert str(caught.value).startswith("user_data for web-1 ")
    assert message in str(caught.value)


def test_the_linter_accepts_a_document_at_the_limit() -> None:
    padding = USER_DATA_LIMIT - len(GOOD) - 3
    lint_user_data(GOOD + "# " + "x" * padding + "\n")


def test_the_size_budget_leaves_room_for_many_keys() -> None:
    """The renderer's fixed part is small; what can overflow 32 KiB is the user's keys."""
    base = len(render(authorized_keys=(DEPLOY_KEY,)).encode())
    assert base < 14 * 1024
    fits = (USER_DATA_LIMIT - base) // (len(RSA4096_KEY) + 4)
    lint_user_data(render(authorized_keys=(DEPLOY_KEY,) + (RSA4096_KEY,) * fits))
    with pytest.raises(UserDataError, match="Remove authorized keys or packages"):
        lint_user_data(render(authorized_keys=(DEPLOY_KEY,) + (RSA4096_KEY,) * (fits + 1)))


def test_the_readmes_size_figures_are_the_budget_of_the_longest_names() -> None:
    """The README's "about" figures, within a tenth, for the longest names and URL the spec
    allows (as bench/cloudinit.py renders them) and key lines with a common comment."""
    said = re.search(
        r"fixed part is about (\d+) KB, which leaves room for about (\d+) RSA-4096 or (\d+) "
        r"ed25519 keys",
        " ".join(section("cloud-init and phone-home").split()),
    )
    assert said, "the README gives no user_data size figures"
    fixed_kb, rsa_keys, ed25519_keys = (int(n) for n in said.groups())
    assert round(len(render_longest((DEPLOY_KEY,)).encode()) / 1000) == fixed_kb
    assert abs(fitting(DEPLOY_KEY, RSA4096_KEY) - rsa_keys) <= rsa_keys / 10
    ed25519 = OPS_KEY.replace("ops@laptop", "someone@example-laptop")
    assert abs(fitting(DEPLOY_KEY, ed25519) - ed25519_keys) <= ed25519_keys / 10


class MemoryStore:
    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], StoredUserData] = {}

    def get(self, fleet: str, server: str) -> StoredUserData | None:
        return self.kept.get((fleet, server))

    def put(self, fleet: str, server: str, user_data: StoredUserData) -> None:
        self.kept[fleet, server] = user_data


KEY = bytes(range(32))


def seal(server: str = "web-1", fleet: str = "web-prod") -> PhoneHomeSeal:
    return PhoneHomeSeal(key=KEY, fleet=fleet, server=server)


def phone_home_token(server: str, nonce: str) -> str:
    """A token as minted for `server` of web-prod (the control plane would accept it)."""
    expires = "1767225600"
    mac = expected_token(KEY, TokenPurpose.PHONE_HOME, "web-prod", server, expires, nonce)
    return f"ph1.{expires}.{nonce}.{mac}"


def test_user_data_is_rendered_once_then_reused_and_kept_without_its_token() -> None:
    store = MemoryStore()
    calls: list[str] = []

    def rendering(token: str) -> Any:
        def run() -> str:
            calls.append(token)
            return render(token=token)

        return run

    one, two = phone_home_token("web-1", "n" * 16), phone_home_token("web-1", "m" * 16)
    first = pin_user_data(
        store, fleet="web-prod", server="web-1", seal=seal(), render=rendering(one)
    )
    again = pin_user_data(
        store, fleet="web-prod", server="web-1", seal=seal(), render=rendering(two)
    )
    assert first == again and one in again
    assert calls == [one]  # no second token minted for a server that has user_data
    three = phone_home_token("web-2", "o" * 16)
    other = pin_user_data(
        store, fleet="web-prod", server="web-2", seal=seal("web-2"), render=rendering(three)
    )
    assert three in other
    four = phone_home_token("web-1", "p" * 16)
    fresh = pin_user_data(
        store, fleet="web-prod", server="web-1", seal=seal(), render=rendering(four), fresh=True
    )
    assert four in fresh
    assert pinned_user_data(store, fleet="web-prod", server="web-1", seal=seal()) == fresh
    kept = "".join(document.content for document in store.kept.values())
    assert [token for token in (one, three, four) if token in kept] == []


def test_the_guard_lints_before_storing_and_on_reuse() -> None:
    store = MemoryStore()
    with pytest.raises(UserDataError, match="byte order mark"):
        pin_user_data(store, fleet="f", server="s", seal=seal(), render=lambda: "\ufeff" + GOOD)
    assert store.kept == {}
    crlf = GOOD.replace("\n", "\r\n")
    store.put(
        "f", "s", StoredUserData(content=crlf, sha256=hashlib.sha256(crlf.encode()).hexdigest())
    )
    with pytest.raises(UserDataError, match="carriage return"):
        pin_user_data(store, fleet="f", server="s", seal=seal(), render=lambda: GOOD)
