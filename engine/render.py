"""A Plan as text for a terminal, markdown for a pull-request comment, or JSON. Pure.

    render_text(plan, colour=True)      symbols + ~ - -/+, reasons, apps, warnings, totals
    render_markdown(plan)               a tuple of comment bodies, each under 65,000 characters
    render_json(plan)                   a dict following schemas/plan.v2.schema.json
    plan_from_json(document)            back to a Plan, as much of it as render_text shows
                                        (a plan saved through the API, rendered again)

Resources besides servers (firewalls, networks, load balancers, DNS records, placement
groups, SSH keys) follow the servers' changes in every format, each with its kind, what
differs (a list such as a firewall's rules line by line) and the servers a disruptive one
touches.

Markdown parts start with the marker `<!-- fleet-engine-preview: SOURCE part I/N -->`, by
which the pull-request workflow finds, updates and prunes its own comments.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

from engine.exposure import Exposure, Severity
from engine.model import Image, ImageKind, Protocol, Server, fleet_resource_name
from engine.plan import (
    ACTIONS,
    APP_ACTIONS,
    Action,
    ApiCallCount,
    AppAction,
    AppChange,
    AppRollout,
    Change,
    FieldChange,
    Plan,
    Problem,
    ReplacedApp,
    ResourceChange,
    RetryBy,
    RolloutGroup,
    Usage,
)
from engine.providers import ActualServer
from engine.term import style

SCHEMA_VERSION = 2
MARKDOWN_LIMIT = 65_000
MARKER = "<!-- fleet-engine-preview: {source} part {part}/{parts} -->"

SYMBOLS = {
    Action.CREATE: "+",
    Action.DELETE: "-",
    Action.UPDATE: "~",
    Action.RESIZE: "~",
    Action.REINSTALL: "~",
    Action.REPLACE: "-/+",
    Action.ADOPT: "=",
    Action.POWER_ON: "^",
    Action.RETRY: "@",
}
COLOURS = {
    Action.CREATE: "green",
    Action.DELETE: "red",
    Action.UPDATE: "yellow",
    Action.RESIZE: "yellow",
    Action.REINSTALL: "blue",
    Action.REPLACE: "magenta",
    Action.ADOPT: "blue",
    Action.POWER_ON: "green",
    Action.RETRY: "magenta",
}
_PHRASES = {
    Action.CREATE: "to create",
    Action.ADOPT: "to adopt",
    Action.UPDATE: "to update",
    Action.RESIZE: "to resize",
    Action.REINSTALL: "to reinstall",
    Action.REPLACE: "to replace",
    Action.DELETE: "to delete",
    Action.POWER_ON: "to power on",
    Action.RETRY: "to retry",
}


APP_SYMBOLS = {AppAction.DEPLOY: "+", AppAction.UPDATE: "~", AppAction.REMOVE: "-"}
APP_COLOURS = {AppAction.DEPLOY: "green", AppAction.UPDATE: "yellow", AppAction.REMOVE: "red"}
_APP_PHRASES = {
    AppAction.DEPLOY: "to deploy",
    AppAction.UPDATE: "to update",
    AppAction.REMOVE: "to remove",
}


_HARM = {
    Action.UPDATE: "powered off",
    Action.RESIZE: "powered off",
    Action.REPLACE: "recreated",
    Action.DELETE: "deleted",
}
_RETRIED = {
    RetryBy.INSTALL: "installed again",
    RetryBy.REMAKE: "made anew",
    RetryBy.REBUILD: "rebuilt",
    RetryBy.REPLACE: "recreated",
}


def harm(change: Change) -> str:
    """What a disruptive change does to its server, in two words."""
    if change.action is Action.RETRY:
        return _RETRIED[change.retry_by or RetryBy.INSTALL]
    return _HARM[change.action]


def money(amount: float, currency: str, *, signed: bool = False) -> str:
    """`12.30 EUR`, or `+1.20 EUR` when signed."""
    text = f"{amount:+,.2f}" if signed else f"{amount:,.2f}"
    return f"{text} {currency}" if currency else text


def summary(plan: Plan) -> str:
    """`2 to create, 1 to delete; 12 unchanged` or `no changes; 12 unchanged`, and the
    resources besides servers when any change: `; resources: 1 to update`."""
    counts = plan.counts()
    head = ", ".join(f"{n} {_PHRASES[action]}" for action, n in counts.items()) or "no changes"
    text = f"{head}; {plan.unchanged} unchanged"
    resources = plan.resource_counts()
    if resources:
        text += "; resources: " + ", ".join(
            f"{n} {_PHRASES[action]}" for action, n in resources.items()
        )
    return text


def field_text(change: FieldChange) -> str:
    """One property that differs: `type: lb11 -> lb21`; a list of lines (rules, services)
    says which lines go and which come: `rules: - tcp 22 from 0.0.0.0/0; + tcp 22 from ...`."""
    before, after = change.before.splitlines(), change.after.splitlines()
    if len(before) <= 1 and len(after) <= 1:
        return f"{change.field}: {change.before or '(none)'} -> {change.after or '(none)'}"
    gone = [f"- {line}" for line in before if line not in after]
    come = [f"+ {line}" for line in after if line not in before]
    return f"{change.field}: {'; '.join(gone + come)}"


def describe_resource(change: ResourceChange) -> str:
    """One line on what changes in a resource: its fields, or what a create makes."""
    if change.action is Action.DELETE:
        return "deleted"
    if change.action is Action.CREATE:
        return "; ".join(f"{f.field} {', '.join(f.after.splitlines())}" for f in change.fields)
    return "; ".join(field_text(f) for f in change.fields if f.before != f.after)


def resource_label(change: ResourceChange) -> str:
    """`firewall web-prod-web`."""
    return f"{change.kind.replace('_', ' ')} {change.name}"


def app_summary(plan: Plan) -> str:
    """`3 to update on 3 servers` (app changes), or "" without any."""
    counts = plan.app_counts()
    head = ", ".join(f"{n} {_APP_PHRASES[action]}" for action, n in counts.items())
    servers = len({c.server for c in plan.apps})
    return f"{head} on {servers} server{'' if servers == 1 else 's'}" if counts else ""


def describe_app(change: AppChange) -> str:
    """One line on what changes: `image: web:1 -> web:2; env.LOG_LEVEL: *** -> ***`."""
    if change.fields:
        return "; ".join(
            f"{f.field}: {f.before or '(none)'} -> {f.after or '(none)'}" for f in change.fields
        )
    if change.action is AppAction.REMOVE:
        return f"version {change.before} stops and is removed"
    return f"version {change.after}"


def rollout_order(plan: Plan, app: str) -> str:
    """`web: web-1, web-2, web-3, 1 at a time; then api: ...` for one app."""
    for rollout in plan.app_rollouts:
        if rollout.app == app:
            return "; then ".join(
                f"{g.group}: {', '.join(g.servers)}, {g.max_unavailable} at a time"
                for g in rollout.groups
            )
    return ""


def _apps_by_name(plan: Plan) -> dict[str, list[AppChange]]:
    found: dict[str, list[AppChange]] = {}
    for change in plan.apps:
        found.setdefault(change.app, []).append(change)
    return found


def _app_version(plan: Plan, app: str) -> str:
    return next((r.version for r in plan.app_rollouts if r.app == app), "")


def cost_line(plan: Plan) -> str:
    """`34.56 -> 42.87 EUR a month (+8.31 EUR)`."""
    before, after = plan.before.monthly_cost, plan.after.monthly_cost
    if before == after:
        return f"{money(after, plan.currency)} a month (unchanged)"
    delta = money(plan.monthly_delta, plan.currency, signed=True)
    return f"{before:,.2f} -> {money(after, plan.currency)} a month ({delta})"


def describe(change: Change) -> str:
    """One line on what changes: `cx22 in hel1, debian-12` or `labels.role: api -> web`."""
    after = change.after
    if change.action is Action.CREATE and after is not None:
        return f"{after.server_type} in {after.location}, {after.image.describe()}"
    if change.action is Action.DELETE and change.before is not None:
        before = change.before
        return f"{before.server_type} in {before.location} (id {before.provider_id})"
    if change.action is Action.RETRY:
        times = change.failed_attempts
        failed = f", failed {'once' if times == 1 else f'{times} times'}" if times else ""
        return f"{_RETRIED[change.retry_by or RetryBy.INSTALL]}{failed}"
    if change.action is Action.REINSTALL and [f.field for f in change.fields] == ["install"]:
        return "install settings changed"
    return "; ".join(
        f"{f.field}: {f.before or '(none)'} -> {f.after or '(none)'}" for f in change.fields
    )


def _disruptive(plan: Plan) -> list[Change]:
    return [c for c in plan.changes if c.disruptive]


def _disruptive_resources(plan: Plan) -> list[str]:
    """`network web-prod-private (web-1, web-2 replaced)` for each disruptive resource change."""
    return [
        f"{resource_label(r)} ({', '.join(r.servers)} touched)"
        for r in plan.resources
        if r.disruptive
    ]


# --- terminal ------------------------------------------------------------------------------


def render_text(plan: Plan, *, colour: bool = False) -> str:
    """The plan for a terminal (colour with ANSI codes when `colour`)."""

    def paint(text: str, name: str) -> str:
        return style(text, name) if colour else text

    lines = [
        paint(f"Fleet {plan.fleet} ({plan.provider})", "bold")
        + f" from {plan.source or 'the spec'}, compared with {plan.compared_with}",
        "",
    ]
    width = max((len(c.server) for c in plan.changes), default=0)
    for change in plan.changes:
        symbol = paint(f"{SYMBOLS[change.action]:>3}", COLOURS[change.action])
        cost = (
            "  " + money(change.monthly_delta, plan.currency, signed=True) + "/mo"
            if change.monthly_delta
            else ""
        )
        flag = "  " + paint("! disruptive", "red") if change.disruptive else ""
        action = paint(f"{change.action.replace('_', ' '):<9}", COLOURS[change.action])
        lines.append(f"{symbol} {change.server:<{width}}  {action} {describe(change)}{flag}{cost}")
        lines.extend(paint(f"      {reason}", "dim") for reason in change.reasons)
    if plan.changes:
        lines.append("")
    if plan.resources:
        lines.append(paint("Resources:", "bold"))
        for r in plan.resources:
            symbol = paint(f"{SYMBOLS[r.action]:>3}", COLOURS[r.action])
            flag = "  " + paint("! disruptive", "red") if r.disruptive else ""
            cost = (
                "  " + money(r.monthly_delta, plan.currency, signed=True) + "/mo"
                if r.monthly_delta
                else ""
            )
            action = paint(f"{r.action:<9}", COLOURS[r.action])
            lines.append(
                f"{symbol} {resource_label(r)}  {action} {describe_resource(r)}{flag}{cost}"
            )
            lines.extend(paint(f"      {reason}", "dim") for reason in r.reasons)
        lines.append("")
    if plan.exposures:
        lines.append(paint("Open to the whole Internet:", "bold"))
        lines.extend(_exposure_line(e, paint) for e in plan.exposures)
        lines.append("")
    lines += _text_apps(plan, paint)
    if plan.warnings:
        lines.append(paint("Warnings:", "yellow"))
        lines.extend(f"  ! {warning}" for warning in plan.warnings)
        lines.append("")
    if plan.problems:
        lines.append(paint("The plan cannot be applied:", "red"))
        lines.extend(f"  {paint(problem.to_text(), 'red')}" for problem in plan.problems)
        lines.append("")
    lines.append(paint("Plan: ", "bold") + summary(plan) + ".")
    if plan.apps:
        lines.append(paint("Apps: ", "bold") + app_summary(plan) + ".")
    disruptive = _disruptive(plan)
    if disruptive:
        names = ", ".join(f"{c.server} ({harm(c)})" for c in disruptive[:10])
        more = f" and {len(disruptive) - 10} more" if len(disruptive) > 10 else ""
        lines.append(paint("Disruptive: ", "red") + names + more + ".")
    touched = _disruptive_resources(plan)
    if touched:
        lines.append(paint("Disruptive resources: ", "red") + "; ".join(touched) + ".")
    lines.append(f"Monthly cost: {cost_line(plan)}.")
    lines.append(f"API calls: {_api_calls(plan)}.")
    return "\n".join(lines) + "\n"


def _exposure_verdict(exposure: Exposure) -> str:
    if exposure.public:
        return f'meant: "{exposure.reason}"'
    return {
        Severity.HIGH: "high: blocks the plan",
        Severity.WEB: "web: noted",
        Severity.OPEN: "open: listed",
    }[exposure.severity]


def _exposure_line(exposure: Exposure, paint: Callable[[str, str], str]) -> str:
    symbol, colour = ("!", "red") if exposure.is_blocking else ("·", "dim")
    return (
        f"  {paint(symbol, colour)} {exposure.group}: {exposure.describe()} "
        f"({exposure.firewall}, {exposure.path}) - {paint(_exposure_verdict(exposure), colour)}"
    )


def _text_apps(plan: Plan, paint: Any) -> list[str]:
    """App changes by app, then group and server, each app with its rollout order."""
    lines = []
    for app, changes in _apps_by_name(plan).items():
        version = _app_version(plan, app)
        head = f"App {app}" + (f" -> {version}" if version else " (no longer in the spec)")
        lines.append(paint(head, "bold"))
        lines.append(paint(f"  rollout: {rollout_order(plan, app)}", "dim"))
        width = max(len(c.server) for c in changes)
        for change in changes:
            symbol = paint(f"{APP_SYMBOLS[change.action]:>3}", APP_COLOURS[change.action])
            action = paint(f"{change.action:<7}", APP_COLOURS[change.action])
            lines.append(f"{symbol} {change.server:<{width}}  {action} {describe_app(change)}")
            lines.extend(paint(f"      {reason}", "dim") for reason in change.reasons)
        lines.append("")
    return lines


def _api_calls(plan: Plan) -> str:
    calls = plan.api_calls
    detail = ", ".join(f"{path} {n}" for path, n in calls.read_by_path)
    read = f"{calls.read} to read" + (f" ({detail})" if detail else "")
    retried = f", {calls.retries} retried" if calls.retries else ""
    return f"{read}{retried}; about {calls.apply_estimate} to apply (progress polls aside)"


# --- markdown ------------------------------------------------------------------------------


def _md(text: str) -> str:
    """Text safe in a markdown table cell: no HTML, no pipes, no inline formatting."""
    escaped = html.escape(text.replace(" -> ", " → "), quote=False).replace("|", "&#124;")
    for char in "\\`*_[]":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def _code(text: str) -> str:
    """Text for inside a code span, which shows backslashes as they are."""
    return text.replace("`", "'")


def _table(changes: Iterable[Change], currency: str) -> list[str]:
    rows = ["| | server | action | what changes | why | monthly |", "|---|---|---|---|---|---:|"]
    for change in changes:
        flag = " ⚠️" if change.disruptive else ""
        cost = money(change.monthly_delta, currency, signed=True) if change.monthly_delta else ""
        rows.append(
            f"| `{SYMBOLS[change.action]}` | `{change.server}` | "
            f"{change.action.replace('_', ' ')}{flag} "
            f"| {_md(describe(change))} | {_md('; '.join(change.reasons))} | {cost} |"
        )
    return rows


def _markdown_head(plan: Plan) -> list[str]:
    if plan.is_blocked:
        status = "🛑 blocked"
    else:
        status = "changes pending" if plan.has_changes else "✅ up to date"
    apps = f" · apps: {_md(app_summary(plan))}" if plan.apps else ""
    lines = [
        f"### Fleet preview: `{plan.fleet}` ({plan.provider}) — {status}",
        "",
        f"**{_md(summary(plan))}**{apps} · monthly cost {_md(cost_line(plan))}",
        "",
    ]
    if plan.problems:
        lines += ["> [!CAUTION]", "> The plan cannot be applied:"]
        lines += [f"> - `{p.path}`: {_md(p.message)}; {_md(p.hint)}" for p in plan.problems]
        lines.append("")
    disruptive = _disruptive(plan)
    if disruptive:
        shown = ", ".join(f"`{c.server}` ({harm(c)})" for c in disruptive[:20])
        more = f" and {len(disruptive) - 20} more" if len(disruptive) > 20 else ""
        word = "change" if len(disruptive) == 1 else "changes"
        lines += ["> [!WARNING]", f"> {len(disruptive)} disruptive {word}: {shown}{more}", ""]
    touched = _disruptive_resources(plan)
    if touched:
        lines += ["> [!WARNING]", f"> Disruptive resource changes: {_md('; '.join(touched))}", ""]
    return lines


def _resource_table(plan: Plan) -> list[str]:
    rows = [
        f"#### Resources: {len(plan.resources)} change{'s' if len(plan.resources) != 1 else ''}",
        "",
        "| | resource | action | what changes | why | monthly |",
        "|---|---|---|---|---|---:|",
    ]
    for r in plan.resources:
        flag = " ⚠️" if r.disruptive else ""
        cost = money(r.monthly_delta, plan.currency, signed=True) if r.monthly_delta else ""
        rows.append(
            f"| `{SYMBOLS[r.action]}` | {_md(r.kind.replace('_', ' '))} `{_code(r.name)}` | "
            f"{r.action}{flag} | {_md(describe_resource(r))} | {_md('; '.join(r.reasons))} "
            f"| {cost} |"
        )
    return rows


def _markdown_exposures(plan: Plan) -> list[str]:
    if not plan.exposures:
        return []
    lines = [f"<details><summary>Open to the whole Internet ({len(plan.exposures)})</summary>", ""]
    for e in plan.exposures:
        lines.append(
            f"- {'🛑' if e.is_blocking else '·'} `{e.group}`: {_md(e.describe())} "
            f"(`{e.firewall}`, `{e.path}`): {_md(_exposure_verdict(e))}"
        )
    return [*lines, "", "</details>", ""]


def _markdown_tail(plan: Plan) -> list[str]:
    lines = _markdown_exposures(plan)
    if plan.warnings:
        lines += [f"<details><summary>Warnings ({len(plan.warnings)})</summary>", ""]
        lines += [f"- {_md(w)}" for w in plan.warnings]
        lines += ["", "</details>", ""]
    lines.append(
        f"<sub>Spec `{_code(plan.source)}` compared with {_md(plan.compared_with)} · "
        f"API calls: {_md(_api_calls(plan))} · `engine preview --format markdown`</sub>"
    )
    return lines


def _sections(plan: Plan, budget: int) -> list[str]:
    """The plan as blocks of markdown, each at most `budget` characters."""
    blocks = ["\n".join(_markdown_head(plan))]
    groups: dict[str, list[Change]] = {}
    for change in plan.changes:
        groups.setdefault(change.group or "(no group)", []).append(change)
    for group, changes in groups.items():
        title = f"#### {_md(group)}: {len(changes)} change{'s' if len(changes) != 1 else ''}"
        table = _table(changes, plan.currency)
        header, rows = table[:2], table[2:]
        block = [title, "", *header]
        for row in rows:
            if len("\n".join([*block, row])) > budget:
                blocks.append("\n".join(block))
                block = [f"{title} (continued)", "", *header]
            block.append(row)
        blocks.append("\n".join(block))
    if plan.resources:
        blocks.append("\n".join(_resource_table(plan)))
    blocks += _markdown_apps(plan, budget)
    blocks.append("\n".join(_markdown_tail(plan)))
    return blocks


def _markdown_apps(plan: Plan, budget: int) -> list[str]:
    """A block per app: its rollout order and a table of its changes (split when long)."""
    blocks = []
    for app, changes in _apps_by_name(plan).items():
        version = _app_version(plan, app)
        to = f" → `{version}`" if version else " (no longer in the spec)"
        title = (
            f"#### App `{_code(app)}`{to}: {len(changes)} change{'s' if len(changes) != 1 else ''}"
        )
        order = f"Rollout: {_md(rollout_order(plan, app))}"
        header = ["| | server | group | action | what changes | why |", "|---|---|---|---|---|---|"]
        block = [title, "", order, "", *header]
        for change in changes:
            row = (
                f"| `{APP_SYMBOLS[change.action]}` | `{change.server}` | {_md(change.group)} "
                f"| {change.action} | {_md(describe_app(change))} "
                f"| {_md('; '.join(change.reasons))} |"
            )
            if len("\n".join([*block, row])) > budget:
                blocks.append("\n".join(block))
                block = [f"{title} (continued)", "", *header]
            block.append(row)
        blocks.append("\n".join(block))
    return blocks


def render_markdown(plan: Plan, *, limit: int = MARKDOWN_LIMIT) -> tuple[str, ...]:
    """The plan as pull-request comment bodies, each at most `limit` characters.

    Unchanged servers are not listed; changes are grouped by server group. A plan too big for
    one comment is split between groups (or between rows of a big group) into parts.
    """
    marker_room = len(MARKER.format(source=plan.source, part=999, parts=999)) + 40
    budget = limit - marker_room
    parts: list[list[str]] = [[]]
    size = 0
    for block in _sections(plan, budget):
        if parts[-1] and size + len(block) + 2 > budget:
            parts.append([])
            size = 0
        parts[-1].append(block)
        size += len(block) + 2
    total = len(parts)
    bodies = []
    for number, blocks in enumerate(parts, start=1):
        marker = MARKER.format(source=plan.source, part=number, parts=total)
        note = [f"*Part {number} of {total}*", ""] if total > 1 else []
        bodies.append("\n\n".join(["\n".join([marker, *note]).rstrip(), *blocks]) + "\n")
    return tuple(bodies)


# --- JSON ----------------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "servers": usage.servers,
        "vcpus": usage.vcpus,
        "memory_gb": usage.memory_gb,
        "disk_gb": usage.disk_gb,
        "monthly_cost": round(usage.monthly_cost, 4),
    }


def _actual(server: ActualServer | None) -> dict[str, Any] | None:
    if server is None:
        return None
    return {
        "provider_id": server.provider_id,
        "status": server.status,
        "server_type": server.server_type,
        "location": server.location,
        "image": server.image.describe() if server.image else None,
        "labels": dict(server.labels),
        "firewalls": list(server.firewalls),
        "networks": list(server.networks),
        "backups": server.backups,
        "placement_group": server.placement_group,
        "public_ipv4": server.ipv4 is not None,
        "public_ipv6": server.ipv6 is not None,
        "disk_gb": server.disk_gb,
    }


def _desired(server: Server | None, fleet: str) -> dict[str, Any] | None:
    if server is None:
        return None
    return {
        "server_type": server.server_type,
        "location": server.location,
        "image": server.image.describe(),
        "labels": dict(server.labels),
        "firewalls": sorted(fleet_resource_name(fleet, f) for f in server.firewalls),
        "networks": sorted(fleet_resource_name(fleet, n) for n in server.networks),
        "backups": server.backups,
        "placement_group": server.placement_group,
        "public_ipv4": server.public_ipv4,
        "public_ipv6": server.public_ipv6,
    }


def _json_apps(plan: Plan) -> dict[str, Any]:
    counts = plan.app_counts()
    return {
        "summary": {str(action): counts.get(action, 0) for action in APP_ACTIONS},
        "changes": [
            {
                "action": str(change.action),
                "app": change.app,
                "server": change.server,
                "group": change.group,
                "before": change.before,
                "after": change.after,
                "reasons": list(change.reasons),
                "fields": [
                    {"field": f.field, "before": f.before, "after": f.after} for f in change.fields
                ],
                "replaces": [
                    {"app": r.app, "version": r.version, "ports": list(r.ports)}
                    for r in change.replaces
                ],
            }
            for change in plan.apps
        ],
        "rollouts": [
            {
                "app": rollout.app,
                "version": rollout.version,
                "groups": [
                    {
                        "group": g.group,
                        "max_unavailable": g.max_unavailable,
                        "servers": list(g.servers),
                    }
                    for g in rollout.groups
                ],
            }
            for rollout in plan.app_rollouts
        ],
    }


def render_json(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-ready dict, following schemas/plan.v2.schema.json."""
    counts = plan.counts()
    return {
        "version": SCHEMA_VERSION,
        "fleet": plan.fleet,
        "provider": plan.provider,
        "source": plan.source,
        "compared_with": plan.compared_with,
        "currency": plan.currency,
        "install_hash": plan.install_hash,
        "summary": {
            **{str(action): counts.get(action, 0) for action in ACTIONS},
            "unchanged": plan.unchanged,
            "disruptive": len(_disruptive(plan)),
            "has_changes": plan.has_changes,
            "blocked": plan.is_blocked,
        },
        "cost": {
            "monthly_before": round(plan.before.monthly_cost, 4),
            "monthly_after": round(plan.after.monthly_cost, 4),
            "monthly_delta": plan.monthly_delta,
        },
        "usage": {"before": _usage(plan.before), "after": _usage(plan.after)},
        "changes": [
            {
                "action": str(change.action),
                "server": change.server,
                "group": change.group,
                "disruptive": change.disruptive,
                "reasons": list(change.reasons),
                "fields": [
                    {"field": f.field, "before": f.before, "after": f.after} for f in change.fields
                ],
                "before": _actual(change.before),
                "after": _desired(change.after, plan.fleet),
                "monthly_before": round(change.usage_before.monthly_cost, 4),
                "monthly_after": round(change.usage_after.monthly_cost, 4),
                "monthly_delta": change.monthly_delta,
                "retry_by": None if change.retry_by is None else str(change.retry_by),
                "failed_attempts": change.failed_attempts,
            }
            for change in plan.changes
        ],
        "problems": [
            {"code": p.code, "path": p.path, "message": p.message, "hint": p.hint}
            for p in plan.problems
        ],
        "warnings": list(plan.warnings),
        "exposures": [
            {
                "group": e.group,
                "firewall": e.firewall,
                "path": e.path,
                "protocol": str(e.protocol),
                "port": e.port,
                "sources": list(e.sources),
                "services": list(e.services),
                "severity": str(e.severity),
                "public": e.public,
                "reason": e.reason,
                "blocking": e.is_blocking,
            }
            for e in plan.exposures
        ],
        "resources": [
            {
                "action": str(r.action),
                "kind": r.kind,
                "name": r.name,
                "disruptive": r.disruptive,
                "servers": list(r.servers),
                "reasons": list(r.reasons),
                "fields": [
                    {"field": f.field, "before": f.before, "after": f.after} for f in r.fields
                ],
                "monthly_before": round(r.monthly_before, 4),
                "monthly_after": round(r.monthly_after, 4),
                "monthly_delta": r.monthly_delta,
            }
            for r in plan.resources
        ],
        "apps": _json_apps(plan),
        "api_calls": {
            "read": plan.api_calls.read,
            "read_by_path": dict(plan.api_calls.read_by_path),
            "retries": plan.api_calls.retries,
            "apply_estimate": plan.api_calls.apply_estimate,
        },
    }


# --- back from JSON ------------------------------------------------------------------------


def _fields(items: Iterable[Any]) -> tuple[FieldChange, ...]:
    return tuple(FieldChange(field=f["field"], before=f["before"], after=f["after"]) for f in items)


def _image(described: str | None) -> Image | None:
    # The JSON keeps an image as its description; a named image describes itself as that.
    return None if described is None else Image(kind=ImageKind.NAME, name=described)


def _actual_from(name: str, data: Any) -> ActualServer | None:
    if data is None:
        return None
    return ActualServer(
        name=name,
        provider_id=data["provider_id"],
        labels=tuple(sorted(data["labels"].items())),
        server_type=data["server_type"],
        image=_image(data["image"]),
        location=data["location"],
        status=data["status"],
        disk_gb=data["disk_gb"],
        backups=data["backups"],
        firewalls=tuple(data["firewalls"]),
        networks=tuple(data["networks"]),
        placement_group=data["placement_group"],
    )


def _desired_from(name: str, group: str, data: Any) -> Server | None:
    if data is None:
        return None
    image = _image(data["image"])
    assert image is not None
    return Server(
        name=name,
        group=group,
        index=0,
        server_type=data["server_type"],
        image=image,
        location=data["location"],
        labels=tuple(sorted(data["labels"].items())),
        firewalls=tuple(data["firewalls"]),
        networks=tuple(data["networks"]),
        backups=data["backups"],
        placement_group=data["placement_group"],
        public_ipv4=data["public_ipv4"],
        public_ipv6=data["public_ipv6"],
    )


def _usage_from(data: Any) -> Usage:
    return Usage(
        servers=data["servers"],
        vcpus=data["vcpus"],
        memory_gb=data["memory_gb"],
        disk_gb=data["disk_gb"],
        monthly_cost=data["monthly_cost"],
    )


def plan_from_json(document: Any) -> Plan:
    """The Plan a `render_json` document was made from, as far as the document tells: what
    `render_text` shows of it is the same (a saved plan is shown again as the preview showed
    it), but what the JSON leaves out (addresses, an image's kind, a server's index) is not
    there."""
    apps = document["apps"]
    return Plan(
        fleet=document["fleet"],
        provider=document["provider"],
        source=document["source"],
        compared_with=document["compared_with"],
        currency=document["currency"],
        install_hash=document["install_hash"],
        unchanged=document["summary"]["unchanged"],
        before=_usage_from(document["usage"]["before"]),
        after=_usage_from(document["usage"]["after"]),
        changes=tuple(
            Change(
                action=Action(c["action"]),
                server=c["server"],
                group=c["group"],
                reasons=tuple(c["reasons"]),
                disruptive=c["disruptive"],
                fields=_fields(c["fields"]),
                before=_actual_from(c["server"], c["before"]),
                after=_desired_from(c["server"], c["group"], c["after"]),
                usage_before=Usage(monthly_cost=c["monthly_before"]),
                usage_after=Usage(monthly_cost=c["monthly_after"]),
                retry_by=None if c["retry_by"] is None else RetryBy(c["retry_by"]),
                failed_attempts=c["failed_attempts"],
            )
            for c in document["changes"]
        ),
        problems=tuple(
            Problem(code=p["code"], path=p["path"], message=p["message"], hint=p["hint"])
            for p in document["problems"]
        ),
        warnings=tuple(document["warnings"]),
        exposures=tuple(
            Exposure(
                group=e["group"],
                firewall=e["firewall"],
                path=e["path"],
                protocol=Protocol(e["protocol"]),
                port=e["port"],
                sources=tuple(e["sources"]),
                services=tuple(e["services"]),
                severity=Severity(e["severity"]),
                public=e["public"],
                reason=e["reason"],
            )
            for e in document["exposures"]
        ),
        api_calls=ApiCallCount(
            read=document["api_calls"]["read"],
            read_by_path=tuple(document["api_calls"]["read_by_path"].items()),
            retries=document["api_calls"]["retries"],
            apply_estimate=document["api_calls"]["apply_estimate"],
        ),
        resources=tuple(
            ResourceChange(
                action=Action(r["action"]),
                kind=r["kind"],
                name=r["name"],
                reasons=tuple(r["reasons"]),
                fields=_fields(r["fields"]),
                disruptive=r["disruptive"],
                servers=tuple(r["servers"]),
                monthly_before=r["monthly_before"],
                monthly_after=r["monthly_after"],
            )
            for r in document["resources"]
        ),
        apps=tuple(
            AppChange(
                action=AppAction(a["action"]),
                app=a["app"],
                server=a["server"],
                group=a["group"],
                reasons=tuple(a["reasons"]),
                before=a["before"],
                after=a["after"],
                fields=_fields(a["fields"]),
                replaces=tuple(
                    ReplacedApp(app=r["app"], version=r["version"], ports=tuple(r["ports"]))
                    for r in a.get("replaces", ())
                ),
            )
            for a in apps["changes"]
        ),
        app_rollouts=tuple(
            AppRollout(
                app=r["app"],
                version=r["version"],
                groups=tuple(
                    RolloutGroup(
                        group=g["group"],
                        max_unavailable=g["max_unavailable"],
                        servers=tuple(g["servers"]),
                    )
                    for g in r["groups"]
                ),
            )
            for r in apps["rollouts"]
        ),
    )
