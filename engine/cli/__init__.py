"""The `engine` command line: a thin shell over named engine functions.

Each command lives in its own module with `register(subparsers, common)`; heavy libraries
are imported inside the command that needs them, so `engine validate` starts fast.

Exit codes: 0 success, 1 the spec, plan or run failed (the message says why), 2 usage error.
No user error prints a traceback; an unexpected one prints one line and the path of a
debug log that holds the details.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib
import io
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from engine.errors import EngineError
from engine.secrets import redact
from engine.term import paint

COMMANDS = (
    "validate",
    "catalog",
    "preview",
    "unlock",
    "up",
    "server",
    "status",
    "serve",
    "dashboard",
    "apikey",
    "runs",
    "alerts",
    "local",
    "containers",
    "deploy",
    "logs",
    "apps",
)


STATE_DIR_ENV = "ENGINE_STATE_DIR"
DEFAULT_STATE_DIR = ".engine"


def default_state_dir() -> Path:
    """$ENGINE_STATE_DIR, else `.engine`. An empty (or blank) variable counts as unset, as an
    empty $ENGINE_STATE_URL does: `ENGINE_STATE_DIR=$UNSET_NAME engine ...` must not make the
    current directory the state directory."""
    value = os.environ.get(STATE_DIR_ENV, "")
    return Path(value if value.strip() else DEFAULT_STATE_DIR)


def _state_dir(value: str) -> Path:
    """--state-dir DIR: an empty DIR would be the current directory, which is never meant."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "an empty path names no folder; give the state directory (e.g. --state-dir "
            f".engine), or leave the option out for ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR}"
        )
    return Path(value)


def _state_url(value: str) -> str:
    """--state URL: an empty URL names no store (it would silently mean the default one)."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "an empty URL names no store; give sqlite:///PATH or postgresql://USER@HOST/DB, "
            "or leave the option out for $ENGINE_STATE_URL or state.db in the state directory"
        )
    return value


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser: with `argv` that starts with a command, that command's only
    (the others' modules cost a start a quarter as much again as the parser's own work)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=_state_dir,
        default=default_state_dir(),
        metavar="DIR",
        help="where the engine keeps state, keys, refreshed catalogs and logs "
        f"(default: ${STATE_DIR_ENV} if set and not empty, else {DEFAULT_STATE_DIR})",
    )
    common.add_argument(
        "--state",
        type=_state_url,
        metavar="URL",
        help="the state store: sqlite:///PATH or postgresql://USER@HOST/DB "
        "(default: $ENGINE_STATE_URL, else state.db in the state directory)",
    )
    parser = argparse.ArgumentParser(
        prog="engine",
        description="Declarative server fleets on Hetzner Cloud, DigitalOcean and local Docker.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS
    for name in wanted:
        importlib.import_module(f"engine.cli.{name}").register(sub, common)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every command's parser itself as a default (`command_parser`): the innermost
    command given sets it last, so an argument no parser takes is refused with that
    command's usage, not the top level's."""
    parser.set_defaults(command_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _remember_parsers(command)


def debug_log(exc: BaseException, state_dir: Path) -> Path:
    """Write `exc`'s traceback (secrets masked) to a debug log only its owner may read, in the
    state dir's private logs folder (else the temp dir); its path, for a one-line note."""
    from engine.state.files import private_dir

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    text = redact("".join(traceback.format_exception(exc)))
    name = f"engine-debug-{stamp}-{os.getpid()}.log"
    folders = [Path(tempfile.gettempdir())]
    with contextlib.suppress(EngineError):  # no private logs folder: the temp dir will do
        folders.insert(0, private_dir(state_dir, "logs"))
    for folder in folders:
        try:
            with os.fdopen(
                os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w"
            ) as log:
                log.write(f"engine {' '.join(sys.argv[1:])}\n{text}")
            return folder / name
        except OSError:
            continue
    raise exc


def resolve_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Make every directory the engine hands to Docker, pyinfra or Pulumi absolute, once, here:
    they resolve a relative path against their own working directory (Docker refuses a
    relative bind mount outright), not the user's."""
    args.state_dir = Path(args.state_dir).expanduser().absolute()
    return args


def recorded_store(args: argparse.Namespace) -> str | None:
    """The URL of the state store for a command that only reads it, or None when there is
    none yet: nothing is recorded, and nothing is made. When --state or $ENGINE_STATE_URL
    named the missing store, a note on stderr says so (a mistyped URL would read as an empty
    store); the command still answers "nothing recorded", with its exit code."""
    from engine.state.store import absent_store, named_state_url, state_url, store_exists

    url = state_url(Path(args.state_dir), args.state)
    if store_exists(url):
        return url
    if named_state_url(args.state):
        print(paint("note: ", "yellow", sys.stderr) + absent_store(url), file=sys.stderr)
    return None


class LastingOutput(io.TextIOBase):
    """Standard output for a command that changes things: once its reader has gone (`engine
    deploy | head`), what it writes is dropped and the command carries on, instead of
    stopping part-way through its changes on a BrokenPipeError."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    def fileno(self) -> int:
        return self._stream.fileno()

    def _reader_gone(self) -> None:
        self._gone = True
        # What is buffered could not be written either: the interpreter would try at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = build_parser(argv).parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = resolve_paths(args)
    if getattr(args, "changes", False):
        sys.stdout = LastingOutput(sys.stdout)
    try:
        code: int = args.run(args)
        return code
    except EngineError as exc:
        print(paint("error: ", "red", sys.stderr) + redact(str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`engine ... | head`): not an error worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        log = debug_log(exc, args.state_dir)
        print(
            paint("internal error: ", "red", sys.stderr)
            + f"{type(exc).__name__} (a bug in the engine; details in {log})",
            file=sys.stderr,
        )
        return 1


def run_process() -> NoReturn:
    """The `engine` process: `main`, then exit with its code. What the command built is
    frozen out of the collector first: the interpreter's last collections would walk it only
    to free it (0.1 s after a preview of 10,000 servers)."""
    code = main()
    gc.freeze()
    sys.exit(code)
