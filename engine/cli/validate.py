"""engine validate SPEC... [--format text|json]"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.cli.options import spec_file
from engine.errors import Diagnostic, EngineError, SpecError
from engine.secrets import redact
from engine.term import paint

_INTERNAL = "internal_error"
_STATE = "state_error"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "validate",
        parents=[common],
        help="check fleet specs against the schema, the catalogs and the provider's rules",
        description="Check fleet specs. Every problem is reported with file, line, column, "
        "field path, a stable code and how to fix it. Exit 0 when all are valid, 1 otherwise.",
    )
    parser.add_argument(
        "specs", nargs="+", metavar="SPEC", type=spec_file, help="fleet spec files (YAML)"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(run=run)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Result:
    file: str
    errors: tuple[Diagnostic, ...] = ()
    summary: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "valid": not self.errors,
            "errors": [d.to_json() for d in self.errors],
            **(self.summary or {}),
        }


def run(args: argparse.Namespace) -> int:
    from engine.catalog import load_catalog
    from engine.placement import expand_fleet
    from engine.spec import load_spec

    results: list[_Result] = []
    for path in args.specs:
        try:
            fleet = load_spec(path, state_dir=args.state_dir)
            servers = expand_fleet(fleet, load_catalog(fleet.provider.name, args.state_dir))
        except SpecError as exc:
            results.append(_Result(file=path, errors=exc.diagnostics))
            continue
        except EngineError as exc:
            # Not the spec but what checking it reads beside it: a damaged refreshed catalog.
            error = Diagnostic(code=_STATE, message=redact(str(exc)), file=path)
            results.append(_Result(file=path, errors=(error,)))
            continue
        except Exception as exc:
            # A bug met in one file must not cost the report on the others.
            results.append(_Result(file=path, errors=(_internal_error(exc, path, args.state_dir),)))
            continue
        summary = {
            "fleet": fleet.name,
            "provider": str(fleet.provider.name),
            "groups": len(fleet.groups),
            "servers": len(servers),
        }
        results.append(_Result(file=path, summary=summary))
    if args.format == "json":
        print(json.dumps({"version": 1, "files": [r.to_json() for r in results]}, indent=2))
    else:
        for result in results:
            _print_text(result)
    return 1 if any(r.errors for r in results) else 0


def _internal_error(exc: Exception, file: str, state_dir: Path) -> Diagnostic:
    """What `engine` says of an unexpected error, with the path of its debug log."""
    from engine.cli import debug_log

    log = debug_log(exc, state_dir)
    return Diagnostic(
        code=_INTERNAL,
        message=f"{type(exc).__name__} in {file} (a bug in the engine; details in {log})",
        hint="report it with the debug log",
        file=file,
    )


def _print_text(result: _Result) -> None:
    if result.summary is not None:
        s = result.summary
        print(
            f"{result.file}: {paint('valid', 'green')} (fleet {s['fleet']} on {s['provider']}: "
            f"{s['groups']} group(s), {s['servers']} server(s))"
        )
        return
    if result.errors[0].code == _INTERNAL:
        message = result.errors[0].message
        print(paint("internal error: ", "red", sys.stderr) + message, file=sys.stderr)
        return
    if result.errors[0].code == _STATE:  # as every other command says it
        print(paint("error: ", "red", sys.stderr) + result.errors[0].message, file=sys.stderr)
        return
    for diagnostic in result.errors:
        print(diagnostic.to_text())
    count = len(result.errors)
    print(f"{result.file}: {paint(f'{count} error' + ('s' if count != 1 else ''), 'red')}")
