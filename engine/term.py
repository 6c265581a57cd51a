"""Terminal output: colour when a person is watching, plain text for pipes and CI logs."""

from __future__ import annotations

import os
import sys
from typing import TextIO

_CODES = {
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "bold": "1",
    "dim": "2",
}


def use_colour(stream: TextIO) -> bool:
    """Colour on a terminal unless NO_COLOR is set; FORCE_COLOR turns it on anywhere."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


def style(text: str, colour: str) -> str:
    """`text` in `colour`: red, green, yellow, blue, magenta, bold or dim (ANSI codes)."""
    return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"


def paint(text: str, colour: str, stream: TextIO = sys.stdout) -> str:
    """`text` wrapped in the ANSI code for `colour` when `stream` shows colour."""
    return style(text, colour) if use_colour(stream) else text
