"""What `engine preview` does, as a function: load the spec, read what exists, diff.

The effects live here (environment, state store, provider API, git); the decisions live in
the pure engine.diff. Nothing is written and no lock is taken: a preview never changes
anything, and a missing SQLite state file is not created.

Actual state comes from one of two places:
- the provider (`plan_preview(...)`): the fleet's owned servers read with paged list calls,
  unowned servers holding names the plan would create, and the state store's records;
- a git ref (`against_ref=REF`): the spec as committed at REF, taken as built exactly as
  specified. No credentials and no network: what a pull request from a fork can show.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
from pathlib import Path

from engine.catalog import Catalog, load_catalog
from engine.diff import DiffOptions, as_built, as_recorded, diff_fleet
from engine.errors import EngineError, SpecError
from engine.inventory import ActualServer, inventory_reader, require_reader
from engine.inventory.retry import RetryPolicy
from engine.model import Fleet
from engine.placement import expand_fleet
from engine.plan import ApiCallCount, Plan
from engine.secrets import register_secret
from engine.spec import load_spec, parse_spec
from engine.state import ServerRecord


def plan_preview(
    spec: str | Path,
    *,
    state_dir: Path,
    state: str | None = None,
    against_ref: str | None = None,
    delete_orphans: bool = False,
    policy: RetryPolicy | None = None,
) -> Plan:
    """The plan for `spec`, against the provider (and the state store) or against a git ref."""
    fleet = load_spec(spec, state_dir=state_dir)
    catalog = load_catalog(str(fleet.provider.name), state_dir)
    if against_ref is not None:
        return _against_ref(fleet, catalog, Path(spec), against_ref, state_dir, delete_orphans)
    return _against_provider(fleet, catalog, Path(spec), state_dir, state, delete_orphans, policy)


def _token(fleet: Fleet, spec: Path) -> str:
    env = fleet.provider.token_env
    if env is None:
        return ""  # the local provider needs no account
    value = os.environ.get(env, "").strip()
    if not value:
        raise EngineError(
            f"reading what exists on {fleet.provider.name} needs an API token: export {env}=... "
            f"(a read-only token is enough), or compare with the spec in git without any "
            f"credentials: engine preview {spec} --against-ref origin/main"
        )
    return register_secret(value)


def _records(fleet: Fleet, state_dir: Path, state: str | None) -> tuple[ServerRecord, ...]:
    from engine.state.store import open_store, state_url, store_exists

    url = state_url(state_dir, state)
    if not store_exists(url):
        return ()
    with open_store(url) as store:
        return store.servers.all(fleet.name)


def _against_provider(
    fleet: Fleet,
    catalog: Catalog,
    spec: Path,
    state_dir: Path,
    state: str | None,
    delete_orphans: bool,
    policy: RetryPolicy | None,
) -> Plan:
    require_reader(fleet.provider.name)
    reader = inventory_reader(fleet, token=_token(fleet, spec), policy=policy)
    records = _records(fleet, state_dir, state)
    actual = reader.read_servers()
    listed = {server.name for server in actual}
    wanted = {server.name for server in expand_fleet(fleet, catalog)}
    unowned = reader.read_unowned(sorted(wanted - listed))
    calls = reader.calls
    options = DiffOptions(
        delete_orphans=delete_orphans,
        now=dt.datetime.now(dt.UTC),
        list_lag_s=reader.list_lag_s,
        compared_with=f"{fleet.provider.name} (read just now)",
        api_calls=ApiCallCount(
            read=calls.total,
            read_by_path=tuple(sorted(calls.requests.items())),
            retries=calls.retries,
        ),
    )
    return diff_fleet(fleet, catalog, actual, records, unowned=unowned, options=options)


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise EngineError("--against-ref needs git, and git is not installed") from None


def spec_at_ref(spec: Path, ref: str) -> tuple[bytes | None, str]:
    """The spec's bytes as committed at `ref` (None if it did not exist), and its git path."""
    folder = spec.resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top.returncode != 0:
        raise EngineError(
            f"--against-ref compares with git history, but {spec} is not in a git work tree"
        )
    root = Path(top.stdout.decode().strip())
    relative = spec.resolve().relative_to(root).as_posix()
    if _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root).returncode != 0:
        raise EngineError(
            f"git knows no commit {ref!r}; fetch it first (e.g. git fetch origin main) "
            "or name a branch, tag or commit that exists"
        )
    shown = _git(["show", f"{ref}:{relative}"], root)
    if shown.returncode != 0:
        return None, relative
    return shown.stdout, relative


def _against_ref(
    fleet: Fleet, catalog: Catalog, spec: Path, ref: str, state_dir: Path, delete_orphans: bool
) -> Plan:
    raw, relative = spec_at_ref(spec, ref)
    notes: list[str] = []
    actual: list[ActualServer] = []
    records: list[ServerRecord] = []
    if raw is None:
        notes.append(f"{relative} does not exist at {ref}: every server is new")
    else:
        try:
            old = parse_spec(raw, file=f"{ref}:{relative}", state_dir=state_dir)
        except SpecError as exc:
            raise EngineError(
                f"the spec at {ref} does not validate, so there is nothing to compare with:\n{exc}"
            ) from None
        if (old.name, old.provider.name) != (fleet.name, fleet.provider.name):
            notes.append(
                f"at {ref} this spec was fleet {old.name} on {old.provider.name}: its servers "
                f"do not belong to {fleet.name} on {fleet.provider.name} and are not touched"
            )
        else:
            old_catalog = load_catalog(str(old.provider.name), state_dir)
            for server in expand_fleet(old, old_catalog):
                built = as_built(old, server, old_catalog)
                actual.append(built)
                records.append(as_recorded(old, built, server.group))
    options = DiffOptions(delete_orphans=delete_orphans, compared_with=f"the spec at {ref}")
    plan = diff_fleet(fleet, catalog, actual, records, options=options)
    return dataclasses.replace(plan, warnings=(*notes, *plan.warnings))
