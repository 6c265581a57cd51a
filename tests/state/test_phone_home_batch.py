"""store.phone_homes.accept: a batch of claims in one transaction, each decided by the control
plane's rules as if it came alone, with its own outcome, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

from engine.controlplane.phonehome import PhoneHomeClaim, decide_phone_home
from engine.model import Stage
from engine.state import (
    JobState,
    NewJob,
    PhoneHomeOutcome,
    PhoneHomeToken,
    ServerRecord,
)
from engine.state.store import Store, open_store
from tests.support.clock import Clock
from tests.support.postgres import Cluster
from tests.support.wait import wait_until

KEYS = (("ed25519", "ssh-ed25519 AAAAphonehome"),)
SCANNED = (("ed25519", "ssh-ed25519 AAAAkeyscan"),)


def _server(store: Store, name: str, stage: Stage, **fields: object) -> None:
    values: dict[str, object] = {
        "fleet": "web-prod",
        "name": name,
        "group": "web",
        "provider": "hcloud",
        "provider_id": f"id-{name}",
        "ipv4": "203.0.113.9",
        "stage": stage,
    }
    store.servers.save(ServerRecord(**{**values, **fields}))  # type: ignore[arg-type]


def _token(store: Store, clock: Clock, server: str) -> str:
    digest = f"{server:0>64}"
    store.phone_homes.add_token(
        PhoneHomeToken(
            token_hash=digest,
            fleet="web-prod",
            server=server,
            expires_at=clock.now + dt.timedelta(hours=1),
            created_at=clock.now,
        )
    )
    return digest


def _claim(
    server: str, digest: str, fingerprint: str = "a" * 64, source: str = "203.0.113.9"
) -> PhoneHomeClaim:
    return PhoneHomeClaim(
        token_hash=digest,
        fingerprint=fingerprint,
        fleet="web-prod",
        server=server,
        source=source,
        provider_id=f"id-{server}",
        ipv4=None,
        ipv6="2001:db8::1",
        private_ips=("10.0.0.5",),
        host_keys=KEYS,
        cloud_init_finished_at=dt.datetime(2026, 11, 5, 10, 0, 30, tzinfo=dt.UTC),
        event_data={"attempt": 1},
        install=NewJob(
            kind="install", fleet="web-prod", server=server, key=f"install/web-prod/{server}"
        ),
        verify_source_ip=True,
    )


def _accept(store: Store, *claims: PhoneHomeClaim) -> list[PhoneHomeOutcome]:
    return store.phone_homes.accept(claims, decide_phone_home)


def test_a_batch_gives_each_claim_its_own_outcome_and_applies_only_the_good_ones(
    store: Store, clock: Clock
) -> None:
    for name in ("web-1", "web-2", "web-3", "web-4"):
        _server(store, name, Stage.BOOTING)
    _server(store, "web-5", Stage.INSTALLING, host_keys=SCANNED, host_keys_source="keyscan")
    _server(store, "web-6", Stage.DELETING)
    _server(store, "web-7", Stage.INSTALLING, host_keys=KEYS, host_keys_source="keyscan")
    tokens = {n: _token(store, clock, f"web-{n}") for n in range(1, 8)}
    before = store.servers.all("web-prod")
    clock.advance(40)

    outcomes = _accept(
        store,
        _claim("web-1", tokens[1]),
        _claim("web-1", tokens[1]),  # its own retry, in the same batch
        _claim("web-1", tokens[1], fingerprint="b" * 64),  # another request
        _claim("web-2", tokens[2], source="198.51.100.9"),  # not from web-2's address
        _claim("web-3", "f" * 64),  # never issued
        _claim("web-9", "e" * 64),  # no such server
        _claim("web-5", tokens[5]),  # polling pinned other keys
        _claim("web-6", tokens[6]),
        _claim("web-7", tokens[7]),  # polling pinned these very keys
        _claim("web-4", tokens[4]),
    )

    assert outcomes == [
        PhoneHomeOutcome.ACCEPTED,
        PhoneHomeOutcome.REPLAYED,
        PhoneHomeOutcome.SPENT,
        PhoneHomeOutcome.SOURCE_MISMATCH,
        PhoneHomeOutcome.UNKNOWN_TOKEN,
        PhoneHomeOutcome.UNKNOWN_SERVER,
        PhoneHomeOutcome.HOST_KEYS_DIFFER,
        PhoneHomeOutcome.DELETING,
        PhoneHomeOutcome.CONFIRMED,
        PhoneHomeOutcome.ACCEPTED,
    ]
    after = {r.name: r for r in store.servers.all("web-prod")}
    for name in ("web-1", "web-4"):
        record = after[name]
        assert record.stage is Stage.PHONED_HOME
        assert record.host_keys == KEYS and record.host_keys_source == "phone-home"
        assert record.ipv4 == "203.0.113.9"  # kept: the claim had none
        assert record.ipv6 == "2001:db8::1" and record.private_ips == ("10.0.0.5",)
        assert record.updated_at == clock.now
        assert store.phone_homes.token(tokens[int(name[-1])]).spent_at == clock.now  # type: ignore[union-attr]
    unchanged = {r.name: r for r in before}
    for name in ("web-2", "web-3", "web-5", "web-6"):
        assert after[name] == unchanged[name], name
    assert after["web-7"].stage is Stage.INSTALLING
    assert after["web-7"].host_keys_source == "phone-home"
    assert store.phone_homes.token(tokens[2]).spent_at is None  # type: ignore[union-attr]
    assert store.phone_homes.token(tokens[5]).spent_at is None  # type: ignore[union-attr]

    phoned = [
        t.server for t in store.servers.transitions("web-prod") if t.stage is Stage.PHONED_HOME
    ]
    assert sorted(phoned) == ["web-1", "web-4"]
    installs = store.jobs.all("web-prod", kind="install")
    assert sorted(j.server for j in installs) == ["web-1", "web-4"]
    assert all(j.state is JobState.QUEUED for j in installs)
    events = [(e.kind, e.server) for e in store.events.all("web-prod")]
    assert sorted(events) == [
        ("server.host_keys_conflict", "web-5"),
        ("server.phoned_home", "web-1"),
        ("server.phoned_home", "web-4"),
        ("server.phoned_home", "web-7"),
    ]

    # The refused claim left web-2's token unspent: from web-2's address it goes through.
    assert _accept(store, _claim("web-2", tokens[2])) == [PhoneHomeOutcome.ACCEPTED]


def test_an_install_already_live_is_not_enqueued_twice(store: Store, clock: Clock) -> None:
    _server(store, "web-1", Stage.FAILED)
    live = store.jobs.enqueue(
        NewJob(kind="install", fleet="web-prod", server="web-1", key="install/web-prod/web-1")
    )
    token = _token(store, clock, "web-1")
    assert _accept(store, _claim("web-1", token)) == [PhoneHomeOutcome.ACCEPTED]
    assert [j.id for j in store.jobs.all("web-prod", kind="install")] == [live.id]


def test_control_planes_sharing_a_postgresql_apply_one_token_once(
    postgres: Cluster, clock: Clock
) -> None:
    """The same phone-home reaches two control planes at once (a retry through a load
    balancer): one accepts it, the other sees that spend and answers it as a replay."""
    import psycopg

    url = postgres.create_database()
    with open_store(url, now=clock) as first, open_store(url, now=clock) as second:
        _server(first, "web-1", Stage.BOOTING)
        token = _token(first, clock, "web-1")
        outcomes: list[object] = []
        with psycopg.connect(url) as holder:
            # Hold web-1's row, so both control planes are under way before either applies.
            holder.execute("SELECT 1 FROM servers WHERE name = 'web-1' FOR UPDATE")
            threads = [
                threading.Thread(
                    target=lambda store=store: outcomes.extend(
                        _accept(store, _claim("web-1", token))
                    )
                )
                for store in (first, second)
            ]
            for thread in threads:
                thread.start()
            _wait_for_waiters(postgres, url, 2)
            holder.commit()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == [PhoneHomeOutcome.ACCEPTED, PhoneHomeOutcome.REPLAYED]
        assert [e.kind for e in first.events.all("web-prod")] == ["server.phoned_home"]
        phoned = [t for t in first.servers.transitions("web-prod") if t.stage is Stage.PHONED_HOME]
        assert len(phoned) == 1
        assert len(first.jobs.all("web-prod", kind="install")) == 1


def _wait_for_waiters(postgres: Cluster, url: str, count: int) -> None:
    """Until `count` sessions of the database at `url` wait for a lock."""
    database = url.rsplit("/", 1)[1]
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND wait_event_type = 'Lock'"
    )
    wait_until(
        lambda: int(postgres.psql(query)) >= count, what=f"{count} sessions to wait for a lock"
    )
