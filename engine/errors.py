"""Errors the engine raises on purpose.

    EngineError              every error meant for a person; the CLI prints it, never a traceback
     ├── SpecError           a spec did not load or validate; carries all Diagnostics of the file
     └── ProviderError       a provider API refused or failed; carries code and correlation id

Anything else that escapes a command is a bug: the CLI writes it to a debug log and prints
one line with the log's path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic:
    """One problem in one file, at one place, with a stable code and a way to fix it."""

    code: str
    message: str
    path: str = ""
    file: str = ""
    line: int = 0
    column: int = 0
    hint: str = ""

    def where(self) -> str:
        if not self.file:
            return ""
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file

    def to_text(self) -> str:
        head = f"{self.where()}: " if self.file else ""
        field = f"{self.path}: " if self.path else ""
        fix = f"; {self.hint}" if self.hint else ""
        return f"{head}error[{self.code}] {field}{self.message}{fix}"

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "path": self.path,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


class EngineError(Exception):
    """An error a user can act on. `str(error)` is the whole message."""

    exit_code = 1


class SpecError(EngineError):
    """A spec failed to load or validate. All problems of the file are in `diagnostics`."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(d.to_text() for d in diagnostics))


class ProviderError(EngineError):
    """A provider API call failed for good (after retries), e.g. a bad token or a quota."""

    def __init__(self, provider: str, message: str, *, code: str = "", correlation_id: str = ""):
        self.provider = provider
        self.code = code
        self.correlation_id = correlation_id
        detail = f" [{code}]" if code else ""
        ref = f" (correlation id {correlation_id})" if correlation_id else ""
        super().__init__(f"{provider}: {message}{detail}{ref}")
