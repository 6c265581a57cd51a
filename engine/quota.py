"""The spec's `limits`, checked against the whole fleet as the plan would leave it. Pure.

A plan over a limit is blocked with one Problem per limit, naming the limit, the planned and
current values and the changes that push it up, grouped by action and group:

    limits.vcpus: planned 72 > 64 (now 40); caused by create 4 servers of web (+32)
"""

from __future__ import annotations

from collections import defaultdict

from engine.model import Limits
from engine.plan import Change, Problem, Usage

LIMIT_FIELDS = ("servers", "vcpus", "memory_gb", "disk_gb", "monthly_cost")
_UNITS = {"memory_gb": " GB", "disk_gb": " GB"}
_SHOWN_CAUSES = 4


def _number(value: float, field: str, currency: str) -> str:
    if field == "monthly_cost":
        return f"{value:,.2f}" + (f" {currency}" if currency else "")
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return text + _UNITS.get(field, "")


def _causes(changes: tuple[Change, ...], field: str, currency: str) -> str:
    grown: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for change in changes:
        delta = change.usage_after.value(field) - change.usage_before.value(field)
        if delta > 0:
            grown[(str(change.action), change.group)].append((change.server, delta))
    ranked = sorted(grown.items(), key=lambda item: -sum(delta for _, delta in item[1]))
    parts = []
    for (action, group), servers in ranked[:_SHOWN_CAUSES]:
        total = "+" + _number(sum(delta for _, delta in servers), field, currency)
        if len(servers) == 1:
            parts.append(f"{action} {servers[0][0]} ({total})")
        else:
            parts.append(f"{action} {len(servers)} servers of {group} ({total})")
    if len(ranked) > _SHOWN_CAUSES:
        parts.append(f"and {len(ranked) - _SHOWN_CAUSES} more")
    return ", ".join(parts)


def check_limits(
    limits: Limits,
    before: Usage,
    after: Usage,
    changes: tuple[Change, ...],
    currency: str = "",
) -> tuple[Problem, ...]:
    """One Problem per limit the planned fleet (`after`) exceeds."""
    problems = []
    for field in LIMIT_FIELDS:
        limit = getattr(limits, field)
        planned = after.value(field)
        if limit is None or planned <= limit + 1e-9:
            continue
        now = before.value(field)
        message = (
            f"planned {_number(planned, field, currency)} > {_number(limit, field, currency)} "
            f"(now {_number(now, field, currency)})"
        )
        causes = _causes(changes, field, currency)
        message += f"; caused by {causes}" if causes else "; the fleet is over it already"
        problems.append(
            Problem(
                code="over_limit",
                path=f"limits.{field}",
                message=message,
                hint=f"raise limits.{field} in the spec, or plan fewer or smaller servers",
            )
        )
    return tuple(problems)
