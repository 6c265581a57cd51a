"""decide_phone_home as a table of cases (phone_home_decisions.yaml): the phone-home rules, fed
the server's record and the token's as the store holds them, with no store and no HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.controlplane.phonehome import PhoneHomeClaim, decide_phone_home, install_job
from engine.model import Stage
from engine.providers import ActualServer
from engine.state import PhoneHomeDecision, PhoneHomeToken, ServerRecord

TABLE = yaml.safe_load((Path(__file__).parent / "phone_home_decisions.yaml").read_text())
_TIMES = {"expires_at", "created_at", "spent_at", "cloud_init_finished_at", "updated_at"}


def _merged(part: str, case: dict[str, Any]) -> dict[str, Any] | None:
    if part in case and case[part] is None:
        return None
    return {**TABLE["base"][part], **(case.get(part) or {})}


def _when(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw)


def _value(field: str, raw: Any) -> Any:
    """A field's value as the records hold it, from its YAML form."""
    if raw is None:
        return None
    if field in _TIMES:
        return _when(raw)
    if field == "stage":
        return Stage(raw)
    if field in ("host_keys", "labels"):
        return tuple(sorted(raw.items()))
    if field == "private_ips":
        return tuple(raw)
    return raw


def _record(raw: dict[str, Any] | None) -> ServerRecord | None:
    if raw is None:
        return None
    return ServerRecord(**{k: _value(k, v) for k, v in raw.items()})


def _token(raw: dict[str, Any] | None) -> PhoneHomeToken | None:
    if raw is None:
        return None
    return PhoneHomeToken(**{k: _value(k, v) for k, v in raw.items()})


def _claim(raw: dict[str, Any]) -> PhoneHomeClaim:
    values = {k: _value(k, v) for k, v in raw.items() if k != "listed"}
    listed = raw.get("listed")
    return PhoneHomeClaim(
        **values,
        event_data={"source": raw["source"], "attempt": 1},
        install=install_job(raw["fleet"], raw["server"]),
        listed=None
        if listed is None
        else ActualServer(
            name=raw["server"],
            provider_id=listed["provider_id"],
            labels=(),
            server_type="cx22",
            image=None,
            location="fsn1",
            status="running",
            ipv4=listed.get("ipv4"),
        ),
    )


def _check(
    decision: PhoneHomeDecision,
    expect: dict[str, Any],
    record: ServerRecord | None,
    token: PhoneHomeToken | None,
    claim: PhoneHomeClaim,
    now: dt.datetime,
) -> None:
    assert str(decision.outcome) == expect["outcome"]
    if "server" in expect:
        assert record is not None
        changes = {k: _value(k, v) for k, v in expect["server"].items()}
        assert decision.server == dataclasses.replace(record, **changes, updated_at=now)
    else:
        assert decision.server is None
    if expect.get("token") == "spent":
        assert token is not None
        spent = dataclasses.replace(token, spent_at=now, fingerprint=claim.fingerprint)
        assert decision.token == spent
    else:
        assert decision.token is None
    events = [(e.kind, e.fleet, e.server) for e in decision.events]
    assert events == [(kind, claim.fleet, claim.server) for kind, _ in expect.get("events", [])]
    for event, (_, part) in zip(decision.events, expect.get("events", []), strict=True):
        assert part in event.message, event.message
    assert [job.kind for job in decision.jobs] == expect.get("jobs", [])
    assert all(job == claim.install for job in decision.jobs)


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["name"] for c in TABLE["cases"]])
def test_decision(case: dict[str, Any]) -> None:
    now = _when(TABLE["now"])
    record, token = _record(_merged("record", case)), _token(_merged("token", case))
    claim_values = _merged("claim", case)
    assert claim_values is not None
    claim = _claim(claim_values)
    decision = decide_phone_home(claim, record, token, now)
    _check(decision, case["expect"], record, token, claim, now)
    # Pure: the same inputs, the same decision.
    assert decide_phone_home(claim, record, token, now) == decision


def test_every_outcome_has_a_case() -> None:
    from engine.state import PhoneHomeOutcome

    covered = {case["expect"]["outcome"] for case in TABLE["cases"]}
    assert covered == {str(outcome) for outcome in PhoneHomeOutcome}
