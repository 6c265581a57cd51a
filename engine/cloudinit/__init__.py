"""cloud-init user_data for every server, on every provider (local included).

`render_user_data` is pure: from explicit inputs it builds one `#cloud-config` document that
creates the admin user (keys only, passwordless sudo), installs the packages the image lacks,
and writes the phone-home program (engine/cloudinit/phone_home.py) with its settings and the
server's one-time token in root-only files, and a per-boot script that starts it once
cloud-init has done its work, on the first boot and after any reboot until it has succeeded.
`lint_user_data` refuses what would make cloud-init ignore or a provider reject the document,
before any API call.

The replacement guard: both clouds replace a server whose user_data changes, so a server's
user_data is rendered once, stored and reused (`pin_user_data`) and the Pulumi programs ignore
later differences. Re-running `up`, upgrading the engine or rotating secrets never replaces a
server. What is stored has the secret part of the one-time token cut out (`TokenSeal`): it is
derived again from the fleet key when the document is sent, to the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import yaml

from engine.errors import EngineError
from engine.model import ProviderName
from engine.state import StoredUserData

USER_DATA_LIMIT = 32 * 1024  # Hetzner's limit; DigitalOcean allows 64 KiB
HEADER = "#cloud-config"
PHONE_HOME_PATH = "/v1/phone-home"
SCRIPT_PATH = "/usr/local/sbin/fleet-phone-home"
# cloud-init runs the scripts here on every boot, the first one included.
PER_BOOT_PATH = "/var/lib/cloud/scripts/per-boot/fleet-phone-home"
CONFIG_PATH = "/etc/fleet/phone-home.json"
TOKEN_PATH = "/etc/fleet/phone-home.token"  # noqa: S105 (a path, not a secret)
LOG_PATH = "/var/log/fleet-phone-home.log"
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/50-fleet.conf"
DEFAULT_GIVE_UP_AFTER_S = 3600

_SCRIPT_SOURCE = Path(__file__).resolve().with_name("phone_home.py")
# RFC 6750 b64token: what may follow "Bearer " in a header.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_KEY_LINE = re.compile(r"[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.:=~-]*")


class UserDataError(EngineError):
    """Rendered or stored user_data that must not be sent to a provider."""


def phone_home_url(control_plane_url: str) -> str:
    """Where servers POST their phone-home: `<control plane URL>/v1/phone-home`.

    >>> phone_home_url("https://ops.example.com/")
    'https://ops.example.com/v1/phone-home'
    """
    return control_plane_url.rstrip("/") + PHONE_HOME_PATH


@cache
def phone_home_script() -> str:
    """The phone-home program every server gets (engine/cloudinit/phone_home.py)."""
    return _SCRIPT_SOURCE.read_text(encoding="utf-8")


# libyaml's emitter and parser when PyYAML has them: the same text, 15-30 times faster.
try:
    from yaml import CSafeDumper as _SafeDumper
    from yaml import CSafeLoader as _SafeLoader
except ImportError:
    from yaml import SafeDumper as _SafeDumper  # type: ignore[assignment]
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _Dumper(_SafeDumper):
    """Block style, and multi-line strings (the script) as readable literal blocks."""


def _represent_str(dumper: _Dumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render_user_data(
    *,
    fleet: str,
    server: str,
    hostname: str,
    phone_home_url: str,
    token: str,
    admin_user: str,
    authorized_keys: Sequence[str],
    provider: ProviderName,
    packages: Sequence[str] = (),
    ssh_port: int = 22,
    give_up_after_s: int = DEFAULT_GIVE_UP_AFTER_S,
) -> str:
    """The `#cloud-config` document for one server.

    `authorized_keys` are the user's keys plus the engine's deploy key; `token` is the
    server's one-time phone-home token (it goes to a root-only file, never into a URL);
    `provider` says where the phone-home finds the instance id when cloud-init cannot tell;
    `give_up_after_s` bounds the retries (the token's lifetime is the natural value).
    The same inputs always give the same text.

    >>> text = render_user_data(fleet="demo", server="web-1", hostname="web-1",
    ...     phone_home_url="http://10.0.0.1:8080/v1/phone-home", token="t0k3n-for-web-1",
    ...     admin_user="fleet", authorized_keys=["ssh-ed25519 AAAAC3Nz me@laptop"],
    ...     provider=ProviderName.LOCAL)
    >>> text.splitlines()[0]
    '#cloud-config'
    """
    _check_inputs(
        phone_home_url=phone_home_url,
        token=token,
        authorized_keys=authorized_keys,
        packages=packages,
        ssh_port=ssh_port,
    )
    settings = {
        "fleet": fleet,
        "server": server,
        "provider": str(provider),
        "url": phone_home_url,
        "give_up_after_s": give_up_after_s,
    }
    files: list[dict[str, Any]] = [
        {
            "path": CONFIG_PATH,
            "owner": "root:root",
            "permissions": "0600",
            "content": json.dumps(settings, indent=2, sort_keys=True) + "\n",
        },
        {"path": TOKEN_PATH, "owner": "root:root", "permissions": "0600", "content": token},
        {
            "path": SCRIPT_PATH,
            "owner": "root:root",
            "permissions": "0700",
            "content": phone_home_script(),
        },
    ]
    files.append(
        {
            "path": PER_BOOT_PATH,
            "owner": "root:root",
            "permissions": "0700",
            "content": f"#!/bin/sh\nexec python3 {SCRIPT_PATH} --background\n",
        }
    )
    if ssh_port != 22:
        # Written in cloud-init's first stage, before sshd starts.
        files.append(
            {
                "path": SSHD_DROP_IN,
                "owner": "root:root",
                "permissions": "0644",
                "content": f"Port {ssh_port}\n",
            }
        )
    document: dict[str, Any] = {
        "hostname": hostname,
        "preserve_hostname": False,
        "users": [
            {
                "name": admin_user,
                "gecos": "fleet-engine admin",
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": list(authorized_keys),
            }
        ],
        "disable_root": True,
        "ssh_pwauth": False,
    }
    if packages:
        document["package_update"] = True
        document["packages"] = list(packages)
    document["write_files"] = files
    # No folding: a key line stays one line however long (a 4096-bit RSA key is 740 bytes).
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1 << 16, allow_unicode=True)
    return (
        f"{HEADER}\n"
        f"# {fleet}/{server}, rendered once by fleet-engine and kept: changing it would replace\n"
        "# the server. The phone-home token in it is single-use and short-lived.\n"
        f"{body}"
    )


def _check_inputs(
    *,
    phone_home_url: str,
    token: str,
    authorized_keys: Sequence[str],
    packages: Sequence[str],
    ssh_port: int,
) -> None:
    if not phone_home_url.startswith(("https://", "http://")):
        raise UserDataError(f"the phone-home URL {phone_home_url!r} is not an http(s) URL")
    if not _BEARER_TOKEN.fullmatch(token):
        # The token itself is never shown.
        raise UserDataError(
            "the phone-home token cannot be sent in an Authorization header "
            "(allowed: letters, digits and -._~+/ with trailing =)"
        )
    if not authorized_keys:
        raise UserDataError("no SSH public key for the admin user; nobody could log in")
    for number, key in enumerate(authorized_keys, start=1):
        if not _KEY_LINE.fullmatch(key):
            # Not echoed: what was pasted here may be a private key.
            raise UserDataError(
                f"authorized key {number} is not one line of an OpenSSH public key file"
            )
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise UserDataError(f"{package!r} is not a Debian/Ubuntu package name")
    if not 1 <= ssh_port <= 65535:
        raise UserDataError(f"the SSH port {ssh_port} is not between 1 and 65535")


def lint_user_data(text: str, *, server: str = "") -> None:
    """Refuse user_data that cloud-init would ignore or a provider would reject.

    Checks, in order: a UTF-8 byte order mark, CR line endings, the `#cloud-config` first
    line, UTF-8 encodability, the size (at most 32 KiB, Hetzner's limit) and that the rest is
    YAML holding a mapping. Raises UserDataError naming the server and the fix.
    """
    where = f"user_data for {server}" if server else "user_data"
    if text.startswith("\ufeff"):
        raise UserDataError(
            f"{where} starts with a byte order mark (BOM); cloud-init would not see the "
            f"{HEADER} header and ignore the whole document. Save it as UTF-8 without BOM"
        )
    if "\r" in text:
        line = text.count("\n", 0, text.index("\r")) + 1
        raise UserDataError(
            f"{where} has a carriage return (CR/LF line ending) on line {line}; cloud-init "
            "needs Unix (LF) line endings. Convert the file, e.g. with dos2unix"
        )
    first = text.split("\n", 1)[0]
    if first.rstrip() != HEADER:
        raise UserDataError(
            f"{where} does not start with the line {HEADER}; without it cloud-init treats "
            f"the document as something else and ignores it (first line: {first[:40]!r})"
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise UserDataError(f"{where} is not valid UTF-8 text at character {exc.start}") from None
    if size > USER_DATA_LIMIT:
        raise UserDataError(
            f"{where} is {size:,} bytes; providers accept at most {USER_DATA_LIMIT:,} "
            "(32 KiB). Remove authorized keys or packages, or bake them into a golden image"
        )
    try:
        data = yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserDataError(f"{where} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise UserDataError(f"{where} must be a YAML mapping of cloud-config keys")


class UserDataStore(Protocol):
    """Where rendered user_data is kept, by fleet and server (the state store's user_data
    repository implements it)."""

    def get(self, fleet: str, server: str) -> StoredUserData | None:
        """What is kept for `server` of `fleet`, or None."""

    def put(self, fleet: str, server: str, user_data: StoredUserData) -> None:
        """Keep (or overwrite) what is kept for `server` of `fleet`."""


class TokenSeal(Protocol):
    """Cuts the secret part of a server's one-time token out of its user_data before the
    document is kept, and puts it back, byte for byte, when it is sent
    (engine.tokens.PhoneHomeSeal): the store never holds a usable token."""

    def conceal(self, text: str) -> str:
        """`text` with no usable token in it."""

    def reveal(self, text: str) -> str:
        """The document `conceal` was given."""


def user_data_sha256(text: str) -> str:
    """The SHA-256 (hex) of user_data as it is sent: what `user_data_hash` records."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pin_user_data(
    store: UserDataStore,
    *,
    fleet: str,
    server: str,
    seal: TokenSeal,
    render: Callable[[], str],
    fresh: bool = False,
) -> str:
    """The user_data of `server`, as it is sent: what was kept for it (`pinned_user_data`),
    else `render()`, linted and kept with its token sealed.

    `render` runs only when nothing is kept (so no token is minted for a server that has
    its user_data already). Pass `fresh=True` for a server that is about to be created anew
    (it never existed, or it is being replaced): its kept token is spent or expired, so a
    new document replaces the kept one. Both paths lint before returning.
    """
    if not fresh:
        kept = pinned_user_data(store, fleet=fleet, server=server, seal=seal)
        if kept is not None:
            return kept
    text = render()
    lint_user_data(text, server=server)
    sealed = StoredUserData(content=seal.conceal(text), sha256=user_data_sha256(text))
    store.put(fleet, server, sealed)
    return text


def pinned_user_data(
    store: UserDataStore, *, fleet: str, server: str, seal: TokenSeal
) -> str | None:
    """The user_data kept for `server`, its token put back and linted: the same bytes as
    when it was rendered (checked against its SHA-256), or None when nothing is kept."""
    kept = store.get(fleet, server)
    if kept is None:
        return None
    text = seal.reveal(kept.content)
    if user_data_sha256(text) != kept.sha256:
        raise UserDataError(
            f"the user_data kept for {server} of {fleet} does not come back as it was rendered "
            "(its SHA-256 differs): the fleet key in the state directory is not the one it "
            "was made with. Restore that key from your backup; different user_data would "
            "make the provider replace the server"
        )
    lint_user_data(text, server=server)
    return text
