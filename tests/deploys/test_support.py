"""The shell that deploys.support and deploys.facts send to servers, run by a real local sh."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import StringCommand

from deploys.facts import HostName, Installed, Paths
from deploys.support import Chain, FileWrite


def _sh(command: str, stdin: str = "") -> list[str]:
    done = subprocess.run(["sh", "-c", command], input=stdin, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_file_write_gives_exactly_the_text_and_mode_without_showing_the_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new folder" / "token"
    write = FileWrite(str(path), "s3cret, and no newline at the end", "0600")
    assert "s3cret" not in write.get_raw_value()
    # pyinfra ends what it sends on stdin with a newline; base64 -d ignores it.
    _sh(write.get_raw_value(), write.connector_arguments["_stdin"] + "\n")
    assert path.read_bytes() == b"s3cret, and no newline at the end"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token"]


def test_a_file_write_replaces_a_file_and_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "script"
    path.write_text("old\n")
    path.chmod(0o600)
    write = FileWrite(str(path), "#!/bin/sh\necho new\n", "755")
    _sh(write.get_raw_value(), write.connector_arguments["_stdin"])
    assert path.read_text() == "#!/bin/sh\necho new\n"
    assert path.stat().st_mode & 0o777 == 0o755


def test_paths_says_what_is_at_each_path(tmp_path: Path) -> None:
    file = tmp_path / "a file"
    file.write_text("text\n")
    file.chmod(0o640)
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    paths = (str(file), str(folder), str(dangling), str(tmp_path / "missing"))
    fact = Paths()
    assert fact.process(_sh(fact.command(paths=paths))) == {
        str(file): {"kind": "file", "mode": "640", "sha256": hashlib.sha256(b"text\n").hexdigest()},
        str(folder): {"kind": "directory", "mode": "700", "sha256": None},
        str(dangling): {"kind": "other", "mode": "0", "sha256": None},
    }


def test_host_name_reads_the_live_name_and_the_file() -> None:
    fact = HostName()
    found = fact.process(_sh(fact.command()))
    assert found["name"] == socket.gethostname()
    etc = Path("/etc/hostname")
    expected = hashlib.sha256(etc.read_bytes()).hexdigest() if etc.is_file() else None
    assert found["file_sha256"] == expected
    assert found["hostnamectl"] == bool(shutil.which("hostnamectl"))


def test_installed_lists_the_commands_found() -> None:
    fact = Installed()
    assert fact.process(_sh(fact.command(commands=("sh", "no-such-tool", "sha256sum")))) == [
        "sh",
        "sha256sum",
    ]


def test_a_chain_runs_its_commands_in_one_shell_with_the_one_text_on_stdin(
    tmp_path: Path,
) -> None:
    path = tmp_path / "conf"
    log = tmp_path / "log"
    chain = Chain(
        StringCommand(f"echo first > {log}"),
        FileWrite(str(path), "setting = 1\n", "644"),
        StringCommand(f"if true; then cat {path} >> {log}; fi"),
    )
    assert "setting" not in chain.get_raw_value()
    _sh(chain.get_raw_value(), chain.connector_arguments["_stdin"] + "\n")
    assert log.read_text() == "first\nsetting = 1\n"


def test_a_chain_stops_at_the_first_command_that_fails_and_fails_with_it(tmp_path: Path) -> None:
    log = tmp_path / "log"
    chain = Chain(
        StringCommand(f"echo ran >> {log}"),
        StringCommand("echo 'sshd rejected it' >&2; exit 3"),
        StringCommand(f"echo too far >> {log}"),
    )
    done = subprocess.run(["sh", "-c", chain.get_raw_value()], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (3, "sshd rejected it\n")
    assert log.read_text() == "ran\n"


def test_a_chain_refuses_two_commands_that_read_stdin() -> None:
    with pytest.raises(ValueError, match="only one command of a chain may read stdin"):
        Chain(FileWrite("/etc/a", "a", "644"), FileWrite("/etc/b", "b", "644"))
