"""The whole numbers the control plane reads from query strings (event ids, limits, waits,
pages), all read one way.

A query number is ASCII digits within its parameter's bounds, nothing else: `str.isdigit()`
also takes '²' and '٣' (which int() refuses or reads as another digit), and a number of any
length, which no column holds (SQLite's INTEGER ends at 2^63 - 1). The API answers anything
else with 422 invalid_query naming each bad parameter and its bounds.

    query_numbers(request.query_params, {"limit": WholeNumber(default=100, low=1, high=1000)})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.controlplane.errors import ApiError, FieldError

# The largest event id, cursor or page anyone may ask for: SQLite's largest INTEGER.
INTEGER_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True, kw_only=True)
class WholeNumber:
    """A whole-number query parameter: its value when it is absent, and its bounds."""

    default: int
    low: int
    high: int

    def schema(self) -> dict[str, Any]:
        """Its JSON Schema, for the OpenAPI document."""
        return {
            "type": "integer",
            "minimum": self.low,
            "maximum": self.high,
            "default": self.default,
        }


def whole_number(text: str, low: int, high: int) -> int | None:
    """The number `text` writes in ASCII digits, if it is one from `low` to `high`; else None.
    `whole_number("20", 1, 100)` is 20; `whole_number("²", 0, 9)` is None."""
    if _DIGITS.fullmatch(text) is None:
        return None
    number = int(text)
    return number if low <= number <= high else None


def query_numbers(query: Mapping[str, str], wanted: Mapping[str, WholeNumber]) -> dict[str, int]:
    """The `wanted` parameters of `query`, each its default when absent; else ApiError 422
    (invalid_query) naming every one that is not a whole number within its bounds."""
    numbers, fields = {}, []
    for name, number in wanted.items():
        text = query.get(name)
        found = number.default if text is None else whole_number(text, number.low, number.high)
        if found is None:
            fields.append(FieldError(name, f"a whole number from {number.low} to {number.high}"))
        else:
            numbers[name] = found
    if fields:
        raise ApiError(422, "invalid_query", "the query is not valid", fields=fields)
    return numbers
