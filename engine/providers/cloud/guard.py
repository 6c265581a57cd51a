"""Pulumi's own plan, checked against the engine's before anything changes. Pure.

The user approves the engine's plan; `pulumi up` then does what Pulumi computes. The two can
differ: a property Pulumi's provider cannot change in place (a droplet's VPC, a server's
location), state that drifted from the provider, a provider upgrade that forces new
resources. So the program is previewed first (`pulumi_runner.preview`), and every step Pulumi
would take that the plan does not name stops the run, with the resource, the property that
forces it and what to do. Updates in place never stop it (they are shown in the summary).

A step is named by the plan when:

    a server (its logical name is the server's name)
        create ........ the plan creates or replaces it, or a run before made it no further
                        than its record (pending)
        replace ....... the plan replaces it (or retries it by replacing it)
        delete ........ the plan deletes or replaces it
        import ........ the plan adopts it
    a resource besides servers (`ResourceChange.logical`: its name, or a prefix of its
    parts' names: `lb-web` covers `lb-web-443` and `lb-web-network`)
        create ........ its change creates or replaces it (a part: any change of its own)
        replace ....... its change replaces it (a part: any change of its own)
        delete ........ its change deletes or replaces it (a part: any change of its own)
    a part tied to a server the plan changes (`lb-web-web-1`, a load balancer's target)
    the provider, the groups' components, DigitalOcean's tags and project assignment
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from engine.plan import Action, Plan, RetryBy
from engine.providers.cloud.pulumi_runner import SERVER_TYPES, ResourceStep

# Pulumi's step ops, by what they do to a resource.
_REPLACING = frozenset(
    {"replace", "create-replacement", "delete-replaced", "replace-replacement", "discard"}
)
_NOTHING = frozenset({"same", "read", "refresh", "remove-pending-replace", "read-discard"})
# What the program declares for its own bookkeeping: never a resource the user would miss.
_ALWAYS = (
    "pulumi:providers:",
    "fleet-engine:stacks:",
    "digitalocean:index/tag:Tag",
    "digitalocean:index/projectResources:ProjectResources",
)


def kind_of(op: str) -> str:
    """create, update, replace, delete, import or same, from Pulumi's op."""
    if op in _REPLACING:
        return "replace"
    if op in _NOTHING:
        return "same"
    return op


def step_summary(steps: Sequence[ResourceStep]) -> str:
    """`Pulumi's plan: 1 to create, 2 to update, 30 unchanged`."""
    counted: dict[str, set[str]] = {}
    for step in steps:
        counted.setdefault(kind_of(step.op), set()).add(step.name)
    order = ("create", "import", "update", "replace", "delete")
    parts = [f"{len(counted[k])} to {k}" for k in order if counted.get(k)]
    same = len(counted.get("same", ()))
    return f"Pulumi's plan: {', '.join(parts) or 'no changes'}; {same} unchanged"


def _server_allows(plan: Plan, name: str, kind: str, pending: Collection[str]) -> bool:
    actions = set()
    for change in plan.changes:
        if change.server == name:
            replaced = change.action is Action.RETRY and change.retry_by is RetryBy.REPLACE
            actions.add(Action.REPLACE if replaced else change.action)
    wanted = {
        "create": {Action.CREATE, Action.REPLACE},
        "replace": {Action.REPLACE},
        "delete": {Action.DELETE, Action.REPLACE},
        "import": {Action.ADOPT},
    }.get(kind)
    if wanted is None:
        return True
    return bool(actions & wanted) or (kind == "create" and name in pending)


def _resource_allows(plan: Plan, step: ResourceStep, kind: str) -> bool:
    servers = {c.server for c in plan.changes}
    if any(step.name.endswith(f"-{server}") for server in servers):
        return True
    wanted = {
        "create": {Action.CREATE, Action.REPLACE},
        "replace": {Action.REPLACE},
        "delete": {Action.DELETE, Action.REPLACE},
    }.get(kind)
    if wanted is None:
        return True
    for change in plan.resources:
        for logical in change.logical:
            if step.name == logical and change.action in wanted:
                return True
            if step.name != logical and step.name.startswith((f"{logical}-", f"{logical}.")):
                return True
    return False


def _why(step: ResourceStep, kind: str) -> str:
    forced = step.keys or step.diffs
    what = (
        f" ({', '.join(forced)} {'forces' if len(forced) == 1 else 'force'} it)" if forced else ""
    )
    return f"{kind} {step.name} ({step.type.rsplit(':', 1)[-1]}){what}"


def unplanned_steps(
    plan: Plan, steps: Sequence[ResourceStep], *, pending: Collection[str] = ()
) -> tuple[str, ...]:
    """The steps of Pulumi's plan that the engine's `plan` does not name, each as
    `replace web-1 (Server) (location forces it)`; `pending` are servers a run before made no
    further than their record."""
    found: list[str] = []
    for step in steps:
        kind = kind_of(step.op)
        if kind in ("same", "update") or step.type.startswith(_ALWAYS):
            continue
        if step.type in SERVER_TYPES:
            allowed = _server_allows(plan, step.name, kind, pending)
        else:
            allowed = _resource_allows(plan, step, kind)
        if not allowed:
            found.append(_why(step, kind))
    return tuple(dict.fromkeys(found))


def refusal(fleet: str, unplanned: Sequence[str], workspace: str) -> str:
    """The one message a run stopped by `unplanned` steps ends with."""
    listed = "\n".join(f"  - {line}" for line in unplanned)
    return (
        f"Pulumi would take steps that the plan of {fleet} does not name, so nothing was "
        f"changed:\n{listed}\nWhat to do: if the spec asks for it, change the spec so that "
        "`engine preview` names it (or replace the servers on purpose); if it was changed "
        "outside the engine, change it back, or let Pulumi see it with `pulumi refresh "
        f"--stack {fleet}` in {workspace}; `pulumi preview --diff` there shows Pulumi's whole plan"
    )
