"""What apps run where: asked of each ready server's agent, all at once.

A server whose agent does not answer (or that the engine has no record of reaching) counts
as running what the state store last recorded for it, and the plan says so in a warning:
the agents are the truth, the store a journal.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.apps.diff import AppsObserved, RunningApp
from engine.apps.versions import LABEL_CHECK, AppDefinition, container_name
from engine.model import LABEL_APP, LABEL_APP_VERSION, LABEL_FLEET, Fleet, Stage

if TYPE_CHECKING:
    from engine.agent.client import AgentClient, ContainerSummary
    from engine.state import ServerRecord
    from engine.state.store import Store

ASK_TIMEOUT_S = 5.0


def running_apps(fleet: str, containers: Collection[ContainerSummary]) -> tuple[RunningApp, ...]:
    """The app containers of `fleet` among a server's containers (tries left out)."""
    found = []
    for container in containers:
        labels = dict(container.labels)
        if labels.get(LABEL_FLEET) != fleet or LABEL_APP not in labels or LABEL_CHECK in labels:
            continue
        found.append(
            RunningApp(
                app=labels[LABEL_APP],
                version=labels.get(LABEL_APP_VERSION, ""),
                container=container.name,
                running=container.state == "running",
            )
        )
    return tuple(found)


def observe_apps(
    fleet: Fleet, store: Store, state_dir: Path, records: Sequence[ServerRecord]
) -> AppsObserved:
    """Every ready server's app containers, from its agent (the store's record for one that
    does not answer), with the definitions and deployments the store knows; `records` are the
    fleet's server records as the caller read them from `store` (the plan's, not a second
    read)."""
    recorded = {(d.app, d.server): d.version for d in store.apps.deployed(fleet.name)}
    if not fleet.apps and not recorded:
        return AppsObserved()  # no app anywhere: no agent needs asking
    # The agents' HTTPS client (httpx) is loaded only when there is one to ask.
    from engine.agent.client import ask_agents
    from engine.agent.endpoint import stored_endpoints

    definitions = {
        key: AppDefinition.from_json(value)
        for key, value in store.apps.definitions(fleet.name).items()
    }
    ready = [r.name for r in records if r.stage in (Stage.READY, Stage.UNHEALTHY)]
    endpoints = stored_endpoints(state_dir, fleet, store, records)
    asked = [endpoints[name] for name in ready if name in endpoints]
    answers = ask_agents(
        asked,
        lambda client: client.containers(include_stopped=True),
        what="containers",
        timeout_s=ASK_TIMEOUT_S,
    )
    running: dict[str, tuple[RunningApp, ...]] = {}
    unreachable = []
    for name in ready:
        answer = answers.get(name)
        if answer is not None and answer.value is not None:
            running[name] = running_apps(fleet.name, answer.value)
            continue
        unreachable.append(name)
        running[name] = tuple(
            RunningApp(app=app, version=version, container=container_name(app, version))
            for (app, server), version in recorded.items()
            if server == name
        )
    return AppsObserved(
        running=running,
        definitions=definitions,
        recorded=recorded,
        unreachable=tuple(unreachable),
    )


def app_containers(client: AgentClient, fleet: str, app: str) -> list[ContainerSummary]:
    """The containers of one app of `fleet` on the server `client` talks to, tries included."""
    return [
        c
        for c in client.containers(include_stopped=True)
        if dict(c.labels).get(LABEL_FLEET) == fleet and dict(c.labels).get(LABEL_APP) == app
    ]
