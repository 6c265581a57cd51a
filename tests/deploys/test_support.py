"""The shell that deploys.support and deploys.facts send to servers, run by a real local sh."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.api import FactBase, OperationError, StringCommand
from pyinfra.connectors.util import write_stdin
from pyinfra.context import ctx_host, ctx_state

from deploys import support
from deploys.facts import Ahead, HostName, Installed, Paths
from deploys.support import Chain, FileWrite, changes, fact, paths_ask, read_ahead


def _sh(command: str, stdin: str = "") -> list[str]:
    done = subprocess.run(["sh", "-c", command], input=stdin, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _stdin(command: StringCommand) -> str:
    """What pyinfra sends on stdin for `command` (each line ended with a newline)."""

    class Sent(io.BytesIO):
        def close(self) -> None:
            self.sent = self.getvalue().decode()
            super().close()

    sent = Sent()
    write_stdin(command.connector_arguments["_stdin"], sent)
    return sent.sent


def test_a_file_write_gives_exactly_the_text_and_mode_without_showing_the_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new folder" / "token"
    write = FileWrite(str(path), "s3cret, and no newline at the end", "0600")
    assert "s3cret" not in write.get_raw_value()
    _sh(write.get_raw_value(), _stdin(write))
    assert path.read_bytes() == b"s3cret, and no newline at the end"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token"]


def test_a_file_write_replaces_a_file_and_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "script"
    path.write_text("old\n")
    path.chmod(0o600)
    write = FileWrite(str(path), "#!/bin/sh\necho new\n", "755")
    _sh(write.get_raw_value(), _stdin(write))
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


def test_a_chain_runs_its_commands_in_one_shell_with_the_text_on_stdin(
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
    _sh(chain.get_raw_value(), _stdin(chain))
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


def test_the_writes_of_a_chain_each_read_their_own_text_from_stdin(tmp_path: Path) -> None:
    texts = {
        "script": "#!/bin/sh\necho one\n" * 500,
        "empty": "",
        "unit": "[Service]\nExecStart=/bin/true",
    }
    log = tmp_path / "log"
    chain = Chain(
        FileWrite(str(tmp_path / "script"), texts["script"], "755"),
        StringCommand(f"echo between >> {log}"),
        FileWrite(str(tmp_path / "empty"), texts["empty"], "644"),
        FileWrite(str(tmp_path / "unit"), texts["unit"], "644"),
    )
    _sh(chain.get_raw_value(), _stdin(chain))
    for name, text in texts.items():
        assert (tmp_path / name).read_text() == text
    assert (tmp_path / "script").stat().st_mode & 0o777 == 0o755
    assert log.read_text() == "between\n"


class _Fails(FactBase[list[str]]):
    def command(self) -> str:
        return "echo half; exit 3"

    def process(self, output: list[str]) -> list[str]:
        return output


class _NeedsTool(FactBase[list[str]]):
    def requires_command(self) -> str:
        return "no-such-tool"

    def command(self) -> str:
        return "no-such-tool --list"


def test_reading_ahead_runs_each_fact_apart_and_keeps_its_status(tmp_path: Path) -> None:
    asks = (
        (Installed, {"commands": ("sh",)}),
        (_Fails, {}),
        (_NeedsTool, {}),
        paths_ask([str(tmp_path / "missing")]),
    )
    ahead = Ahead()
    found = ahead.process(_sh(ahead.command(asks=asks).get_raw_value()))
    assert found == [(0, ["sh"]), (3, ["half"]), (127, []), (0, [])]


class _LocalHost:
    """A host whose facts are read by running their commands in a local sh; it counts them."""

    name = "local"
    print_prefix = "[local] "
    current_op_global_arguments = None
    current_op_hash: str | None = None

    def __init__(self) -> None:
        self.reads: list[str] = []

    def get_fact(self, cls: Any, **kwargs: Any) -> Any:
        self.reads.append(cls.__name__)
        fact = cls()
        command = fact.command(**kwargs)
        script = command if isinstance(command, str) else command.get_raw_value()
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        lines = done.stdout.splitlines()
        return fact.process(lines) if lines else fact.default()


class _Sent:
    """The state's record of one operation, which has sent commands or not."""

    def __init__(self) -> None:
        self.operation_meta = SimpleNamespace(executed=False)


def test_facts_read_ahead_hold_until_an_operation_sends_a_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "conf"
    conf.write_text("one\n")
    host = _LocalHost()
    operation = _Sent()
    state = SimpleNamespace(ops={host: {"an operation": operation}})

    def digest() -> str | None:
        return fact(Paths, paths=(str(conf),))[str(conf)]["sha256"]

    with ctx_state.use(state), ctx_host.use(host):
        listed = paths_ask([str(conf)])
        read_ahead([listed, listed, (Installed, {"commands": ("sh",)}), (_Fails, {})])
        assert digest() == hashlib.sha256(b"one\n").hexdigest()
        assert fact(Installed, commands=("sh",)) == ["sh"]
        assert host.reads == ["Ahead"]
        # A command changed the server: the facts not yet given are read again, together.
        conf.write_text("two\n")
        operation.operation_meta.executed = True
        assert digest() == hashlib.sha256(b"two\n").hexdigest()
        assert host.reads == ["Ahead", "Ahead"]
        # Asked more often than listed, not listed, or failed ahead: read on its own.
        assert digest() == hashlib.sha256(b"two\n").hexdigest()
        assert fact(Installed, commands=("sh", "sha256sum")) == ["sh", "sha256sum"]
        assert fact(_Fails) == ["half"]
        assert host.reads == ["Ahead", "Ahead", "Paths", "Installed", "_Fails"]
    # What no deploy lists, or lists fewer times, is a list to mend: the install log says so.
    assert [r.getMessage().split(" {")[0] for r in caplog.records] == [
        "[local] no deploy lists the fact deploys.facts.Paths",
        "[local] no deploy lists the fact deploys.facts.Installed",
    ]


class _Operations(SimpleNamespace):
    """The state's record of a host's operations, each of which has sent commands or not."""

    def __init__(self, host: _LocalHost, *names: str) -> None:
        super().__init__(ops={host: {name: _Sent() for name in names}})

    def get_op_meta(self, op_hash: str) -> Any:
        return SimpleNamespace(names={op_hash})

    def send(
        self, host: _LocalHost, op_hash: str, *facts: Any, paths: tuple[str, ...] = ()
    ) -> None:
        """Run `op_hash` on `host`: say what it changes (with `facts` or `paths`, if given),
        then record that it sent a command."""
        if facts or paths:
            host.current_op_hash = op_hash
            changes(*facts, paths=paths)
            host.current_op_hash = None
        self.ops[host][op_hash].operation_meta.executed = True


def test_after_an_operation_that_says_what_it_changes_only_that_is_read_again(
    tmp_path: Path,
) -> None:
    conf, other = tmp_path / "conf", tmp_path / "other"
    conf.write_text("one\n")
    host = _LocalHost()
    state = _Operations(host, "writes conf", "installs", "says nothing")

    def digest(path: Path) -> str | None:
        found = fact(Paths, paths=(str(path),)).get(str(path))
        return found["sha256"] if found else None

    with ctx_state.use(state), ctx_host.use(host):
        read_ahead([paths_ask([str(conf)])] * 2 + [paths_ask([str(other)])] * 3)
        read_ahead([(Installed, {"commands": ("sh",)})])
        assert digest(conf) == hashlib.sha256(b"one\n").hexdigest()
        assert host.reads == ["Ahead"]
        # It writes conf and says so: conf is read again, alone; `other` is kept.
        conf.write_text("two\n")
        other.write_text("made behind the operation's back\n")
        state.send(host, "writes conf", paths=(str(conf),))
        assert digest(conf) == hashlib.sha256(b"two\n").hexdigest()
        assert digest(other) is None
        assert host.reads == ["Ahead", "Ahead"]
        # Another deploy's list is read on its first ask, whatever ran before.
        assert fact(Installed, commands=("sh",)) == ["sh"]
        assert host.reads == ["Ahead", "Ahead", "Ahead"]
        # It says it changes installed commands only: `other` is still kept, unread.
        state.send(host, "installs", Installed)
        assert digest(other) is None
        assert host.reads == ["Ahead", "Ahead", "Ahead"]
        # It says nothing: whatever is left is read again.
        state.send(host, "says nothing")
        assert digest(other) == hashlib.sha256(b"made behind the operation's back\n").hexdigest()
        assert host.reads == ["Ahead", "Ahead", "Ahead", "Ahead"]


def test_checking_kept_answers_fails_an_operation_that_changed_more_than_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(support, "CHECK_KEPT", True)
    conf, other = tmp_path / "conf", tmp_path / "other"
    conf.write_text("one\n")
    host = _LocalHost()
    state = _Operations(host, "writes conf", "writes other")
    with ctx_state.use(state), ctx_host.use(host):
        read_ahead([paths_ask([str(conf)])] * 2 + [paths_ask([str(other)])] * 2)
        fact(Paths, paths=(str(conf),))
        # Kept as it was: checked, and given.
        state.send(host, "writes conf", paths=(str(conf),))
        assert fact(Paths, paths=(str(other),)) == {}
        assert host.reads == ["Ahead", "Ahead", "Ahead"]
        # Changed behind a declaration that leaves it out: the run fails, saying which.
        other.write_text("two\n")
        state.send(host, "writes other", paths=(str(conf),))
        with pytest.raises(
            OperationError,
            match=r"deploys.facts.Paths .*other.* changed under writes other, which says it cannot",
        ):
            fact(Paths, paths=(str(other),))


class _Answers(FactBase[str | None]):
    """What a file says, or None while it is not there: a service that comes to answer."""

    live = True

    def command(self, path: str) -> str:
        return f"cat {path} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return output[0] if output else None


def test_a_live_fact_is_read_again_while_it_is_none_whatever_an_operation_says(
    tmp_path: Path,
) -> None:
    version = tmp_path / "version"
    host = _LocalHost()
    state = _Operations(host, "first", "second")
    with ctx_state.use(state), ctx_host.use(host):
        read_ahead([(_Answers, {"path": str(version)})] * 3)
        assert fact(_Answers, path=str(version)) is None
        version.write_text("27.1\n")
        state.send(host, "first", Installed)
        assert fact(_Answers, path=str(version)) == "27.1"
        assert host.reads == ["Ahead", "Ahead"]
        # It answers now: kept across an operation that says it cannot change it.
        version.write_text("28.0\n")
        state.send(host, "second", Installed)
        assert fact(_Answers, path=str(version)) == "27.1"
        assert host.reads == ["Ahead", "Ahead"]
