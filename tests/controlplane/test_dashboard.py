"""The dashboard against the real app on loopback (uvicorn) over a real store: sign-in and its
refusals, sessions, CSRF, the security headers, and the pages with data in them. (In a real
browser: tests/e2e/test_dashboard_browser.py.)"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from engine.catalog import load_catalog
from engine.controlplane.apikeys import create_api_key, revoke_api_key
from engine.controlplane.app import AppSettings, create_app
from engine.controlplane.dashboard import (
    CSP,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SignInLinks,
    StepBar,
    chart,
    waterfall,
)
from engine.controlplane.fleets import register_fleet
from engine.cost import monthly_price
from engine.diff import DiffOptions, diff_fleet
from engine.model import Stage
from engine.render import render_json, render_text
from engine.secrets import redact
from engine.state import (
    AgentReport,
    AlertRecord,
    AlertState,
    MetricPoint,
    SavedPlan,
    Scope,
    ServerRecord,
)
from engine.state.store import Store, open_store
from tests.support.dashboard import APP_VERSION, FLEET, container_list, fill_store, sign_in
from tests.support.fleets import example_fleet
from tests.support.http import serve


@dataclass
class Site:
    store: Store
    state_dir: Path
    url: str

    def key(self, scope: Scope = Scope.READ, name: str = "ops", **kw: object) -> str:
        return create_api_key(self.store, self.state_dir, name, scope=scope, **kw)  # type: ignore[arg-type]

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)

    def signed_in(self, key: str) -> httpx.Client:
        client = self.browser()
        answer = sign_in(client, key)
        assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
        return client


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found[1]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    state_dir = tmp_path / "state"
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        fill_store(store, servers=250)
        app = create_app(store, AppSettings(state_dir=state_dir), dashboard=True)
        try:
            with serve(app) as url:
                yield Site(store, state_dir, url)
        finally:
            app.state.api.close()


def test_a_read_key_signs_in_to_a_strict_session_cookie_and_sees_the_fleet(site: Site) -> None:
    client = site.browser()
    answer = sign_in(client, site.key())
    assert answer.status_code == 303
    cookie = next(
        v for k, v in answer.headers.multi_items() if k == "set-cookie" and SESSION_COOKIE in v
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; over TLS it is set (below)
    overview = client.get("/")
    assert overview.status_code == 200
    assert overview.headers["content-security-policy"] == CSP
    assert overview.headers["x-frame-options"] == "DENY"
    assert overview.headers["cache-control"] == "no-store"
    assert 'href="/fleets/demo"' in overview.text and "250 servers" in overview.text
    assert "web-1 is ready" in overview.text
    # Nothing on any page comes from anywhere else, and no script or style is inline.
    for page in (overview, client.get("/fleets/demo"), client.get("/fleets/demo/servers/web-1")):
        assert page.status_code == 200
        assert not re.search(r'(src|href)="(https?:)?//', page.text)
        assert "<script>" not in page.text and "style=" not in page.text
        assert "<style" not in page.text


def test_the_session_cookie_is_secure_behind_tls(site: Site) -> None:
    client = site.browser()
    form = client.get("/sign-in")
    token = re.search(r'name="token" value="([0-9a-f]+)"', form.text)
    assert token is not None
    # uvicorn trusts X-Forwarded-Proto from loopback, as behind a TLS-terminating proxy.
    answer = client.post(
        "/sign-in",
        data={"token": token[1], "key": site.key()},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert answer.status_code == 303
    assert "Secure" in answer.headers["set-cookie"]


def test_a_wrong_or_revoked_key_or_a_stale_form_is_refused_without_a_session(site: Site) -> None:
    key = site.key()
    client = site.browser()
    wrong = sign_in(client, key[:-4] + "0000")
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    assert key[:-4] not in wrong.text  # what was typed is not echoed back
    assert sign_in(client, "not a key").status_code == 401
    # A form posted without the token its page set (from another site): refused.
    forged = site.browser().post("/sign-in", data={"token": "ab" * 16, "key": key})
    assert forged.status_code == 403 and SESSION_COOKIE not in forged.headers.get("set-cookie", "")
    revoke_api_key(site.store, "ops")
    assert sign_in(client, key).status_code == 401
    assert client.get("/").status_code == 303


def test_without_a_session_every_page_is_refused(site: Site) -> None:
    client = site.browser()
    for path in ("/", "/fleets/demo", "/fleets/demo/servers/web-1", "/fleets/demo/events"):
        answer = client.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/sign-in"), path
        assert "web-1" not in answer.text
    assert client.get("/fleets/demo/live?since=0").status_code == 401
    action = client.post(
        "/fleets/demo/servers/web-1/actions", data={"action": "reboot", "confirm": "yes"}
    )
    assert action.status_code == 401
    # A cookie whose signature does not verify is no session.
    signed = site.signed_in(site.key())
    value = signed.cookies[SESSION_COOKIE]
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    client.cookies.set(SESSION_COOKIE, forged)
    assert client.get("/").status_code == 303
    # Nor is one whose key was revoked since.
    revoke_api_key(site.store, "ops")
    assert signed.get("/").status_code == 303
    assert site.store.runs.all(FLEET) == ()


def test_actions_need_the_csrf_token_a_confirmation_and_the_apply_scope(site: Site) -> None:
    client = site.signed_in(site.key(Scope.APPLY, name="deployer"))
    page = client.get("/fleets/demo/servers/web-2")
    assert ">reboot</button>" in page.text and ">poweroff</button>" in page.text
    token = csrf_of(page)
    url = "/fleets/demo/servers/web-2/actions"
    no_token = client.post(url, data={"action": "reboot", "confirm": "yes"})
    bad_token = client.post(url, data={"action": "reboot", "confirm": "yes", "csrf": "0" * 64})
    assert [no_token.status_code, bad_token.status_code] == [403, 403]
    bad_action = client.post(url, data={"action": "explode", "csrf": token, "confirm": "yes"})
    assert bad_action.status_code == 422 and "reboot, poweroff, poweron" in bad_action.text
    confirm = client.post(url, data={"action": "reboot", "csrf": token})
    assert confirm.status_code == 200 and "Yes, reboot web-2" in confirm.text
    assert site.store.runs.all(FLEET) == ()
    done = client.post(url, data={"action": "reboot", "csrf": token, "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["location"] == "/fleets/demo/servers/web-2?queued=reboot"
    (run,) = site.store.runs.all(FLEET)
    assert (run.kind, run.created_by, dict(run.request)) == (
        "reboot",
        "deployer",
        {"server": "web-2", "action": "reboot"},
    )
    assert [j.kind for j in site.store.jobs.all(FLEET)] == ["server-action"]
    (entry,) = [e for e in site.store.audit.all() if e.action.startswith("POST")]
    assert (entry.actor, entry.action, entry.status) == (
        "deployer",
        "POST /fleets/demo/servers/web-2/actions",
        303,
    )
    assert "queued" in client.get(done.headers["location"]).text
    # A read key sees no action buttons and may not post one, token or not.
    reader = site.signed_in(site.key())
    page = reader.get("/fleets/demo/servers/web-2")
    assert ">reboot</button>" not in page.text
    refused = reader.post(url, data={"action": "reboot", "csrf": csrf_of(page), "confirm": "yes"})
    assert refused.status_code == 403 and "apply scope" in refused.text
    assert len(site.store.runs.all(FLEET)) == 1
    # Without a spec registered through the API there is nothing to run an action from.
    site.store.specs.forget(FLEET)
    page = client.get("/fleets/demo/servers/web-2")
    assert ">reboot</button>" not in page.text
    assert "PUT /v1/fleets/demo</code> it first" in page.text


def test_sign_out_needs_its_token_and_ends_the_session(site: Site) -> None:
    client = site.signed_in(site.key())
    assert client.post("/sign-out", data={"csrf": "0" * 64}).status_code == 403
    assert client.get("/").status_code == 200
    out = client.post("/sign-out", data={"csrf": csrf_of(client.get("/"))})
    assert (out.status_code, out.headers["location"]) == (303, "/sign-in")
    assert client.get("/").status_code == 303


def test_a_form_of_too_many_fields_is_refused_as_any_malformed_form(site: Site) -> None:
    padding = {f"f{n}": "1" for n in range(20)}
    stranger = site.browser()
    token = re.search(r'name="token" value="([0-9a-f]+)"', stranger.get("/sign-in").text)
    assert token is not None
    signing_in = stranger.post("/sign-in", data={**padding, "token": token[1], "key": site.key()})
    assert signing_in.status_code == 403 and "The form expired" in signing_in.text
    assert SESSION_COOKIE not in signing_in.headers.get("set-cookie", "")
    client = site.signed_in(site.key(Scope.APPLY, name="deployer"))
    page = client.get("/fleets/demo/servers/web-2")
    action = {**padding, "action": "reboot", "csrf": csrf_of(page), "confirm": "yes"}
    acting = client.post("/fleets/demo/servers/web-2/actions", data=action)
    assert acting.status_code == 403 and "did not come from this dashboard" in acting.text
    assert site.store.runs.all(FLEET) == ()
    signing_out = client.post("/sign-out", data={**padding, "csrf": csrf_of(page)})
    assert signing_out.status_code == 403 and client.get("/").status_code == 200


def test_a_non_ascii_token_csrf_or_session_cookie_is_refused_as_a_wrong_one(site: Site) -> None:
    # Raw headers: httpx sends a str header as ASCII only; a browser may send any byte.
    forged_form = {"Cookie": f"{SIGN_IN_COOKIE}=é".encode()}
    signing_in = site.browser().post(
        "/sign-in", data={"token": "é", "key": site.key()}, headers=forged_form
    )
    assert signing_in.status_code == 403 and "The form expired" in signing_in.text
    client = site.signed_in(site.key(Scope.APPLY, name="deployer"))
    acting = client.post(
        "/fleets/demo/servers/web-2/actions",
        data={"action": "reboot", "csrf": "é", "confirm": "yes"},
    )
    assert acting.status_code == 403 and site.store.runs.all(FLEET) == ()
    assert client.post("/sign-out", data={"csrf": "é"}).status_code == 403
    # A session cookie that is not one the dashboard signed is no session, as an expired one.
    forged_session = {"Cookie": f"{SESSION_COOKIE}=a.b.c.é".encode()}
    for path in ("/", "/fleets/demo", "/alerts"):
        answer = site.browser().get(path, headers=forged_session)
        assert (answer.status_code, answer.headers["location"]) == (303, "/sign-in"), path
    live = site.browser().get("/fleets/demo/live?since=0", headers=forged_session)
    assert live.status_code == 401 and live.json()["error"]["code"] == "no_session"


def test_the_fleet_page_pages_and_filters_its_servers(site: Site) -> None:
    client = site.signed_in(site.key())
    rows = re.compile(r'<th scope="row"><a href="/fleets/demo/servers/(web-\d+)">')
    first = client.get("/fleets/demo")
    assert len(rows.findall(first.text)) == 100 and "page 1 of 3" in first.text
    assert 'rel="next"' in first.text and 'rel="prev"' not in first.text
    last = client.get("/fleets/demo?page=3")
    assert rows.findall(last.text)[-1] == "web-250" and len(rows.findall(last.text)) == 50
    assert client.get("/fleets/demo?page=99").text.count("page 3 of 3") == 1
    assert rows.findall(client.get("/fleets/demo?q=web-17").text)[:2] == ["web-17", "web-170"]
    assert "No servers match." in client.get("/fleets/demo?stage=failed").text
    assert "10.0.0.1</td>" in first.text and "local</td>" in first.text


def test_the_overview_prices_each_fleet_from_its_catalog(site: Site) -> None:
    register_fleet(site.store, example_fleet("hetzner"))
    for n, location in ((1, "fsn1"), (2, "hel1")):
        site.store.servers.save(
            ServerRecord(
                fleet="web-prod",
                name=f"web-{n}",
                group="web",
                provider="hcloud",
                provider_id=str(n),
                server_type="cx22",
                location=location,
                ipv4=f"203.0.113.{n}",
                stage=Stage.READY,
            )
        )
    catalog = load_catalog("hcloud")
    each = monthly_price(catalog, "cx22", "fsn1", backups=False, ipv4=True)
    assert each is not None
    overview = site.signed_in(site.key()).get("/").text
    assert f"{2 * each:.2f} EUR a month" in overview
    assert overview.count("a month") == 1  # the local fleet's prices are 0 with no currency


def test_a_key_granted_other_fleets_is_refused_this_one(site: Site) -> None:
    client = site.signed_in(site.key(fleets=("other",)))
    assert 'href="/fleets/demo"' not in client.get("/").text
    refused = client.get("/fleets/demo/servers/web-1")
    assert refused.status_code == 403 and "not granted fleet demo" in refused.text
    assert client.get("/fleets/demo/live?since=0").status_code == 403
    assert client.get("/fleets/nope").status_code == 403


def test_the_server_page_charts_the_metric_history_in_each_range(site: Site) -> None:
    client = site.signed_in(site.key())
    page = client.get("/fleets/demo/servers/web-1")
    assert page.status_code == 200
    for metric in ("cpu", "memory", "disk", "rx", "tx"):
        chart_svg = re.search(rf'id="chart-{metric}".*?</figure>', page.text, re.S)
        assert chart_svg is not None
        points = re.findall(r'points="([^"]+)"', chart_svg[0])
        assert len(points) == 1 and len(points[0].split()) >= 55, metric
    assert "peak 55%" in page.text  # the disk, flat at 55 %
    # The network in bytes a second, on a scale of its own: a flat 4 kB/s out, on 0 to 5 kB/s.
    assert "now 4.0 kB/s · peak 4.0 kB/s · scale 5.0 kB/s" in page.text
    tx = re.search(r'id="chart-tx".*?points="([^"]+)"', page.text, re.S)
    assert tx is not None and {p.split(",")[1] for p in tx[1].split()} == {"28.0"}
    for chosen in ("24h", "30d"):
        ranged = client.get(f"/fleets/demo/servers/web-1?range={chosen}")
        assert f'href="?range={chosen}" aria-current="true"' in ranged.text
        assert 'class="line line-cpu"' in ranged.text
    empty = client.get("/fleets/demo/servers/web-9")
    assert "no data in 1h" in empty.text and "<polyline" not in empty.text
    missing = client.get("/fleets/demo/servers/web-999")
    assert missing.status_code == 404 and "has no server web-999" in missing.text


def test_the_live_endpoint_returns_new_events_and_the_stages_they_touch(site: Site) -> None:
    client = site.signed_in(site.key())
    since = re.search(r'data-since="(\d+)"', client.get("/fleets/demo/events").text)
    assert since is not None
    site.store.servers.set_stage(FLEET, "web-3", site.store.servers.get(FLEET, "web-3").stage)  # type: ignore[union-attr]
    site.store.events.record(FLEET, "server.unhealthy", "web-3: agent silent", server="web-3")
    live = client.get(f"/fleets/demo/live?since={since[1]}&wait=5")
    assert live.status_code == 200
    body = live.json()
    assert [e["message"] for e in body["events"]] == ["web-3: agent silent"]
    assert body["events"][0]["tone"] == "bad" and body["next"] == body["events"][0]["id"]
    assert body["stages"] == {"web-3": {"stage": "ready", "tone": "good"}}
    assert client.get("/fleets/demo/live?since=x").status_code == 422
    events = client.get("/fleets/demo/events?kind=server.unh").text
    assert "web-3: agent silent" in events and "web-1 is ready" not in events


def test_a_page_or_live_number_that_is_no_ascii_whole_number_is_no_500(site: Site) -> None:
    client = site.signed_in(site.key())
    # '²' is a digit to str.isdigit() and not to int(); 2^63 no column holds.
    for page in ("²", "9223372036854775808", "0"):
        fleet = client.get("/fleets/demo", params={"page": page})
        assert fleet.status_code == 200 and "page 1 of 3" in fleet.text, page
        assert client.get("/alerts", params={"page": page}).status_code == 200, page
    for query in ({"since": "²"}, {"wait": "²"}, {"since": "9223372036854775808"}):
        live = client.get("/fleets/demo/live", params=query)
        assert (live.status_code, live.json()["error"]["code"]) == (422, "invalid_query"), query
    last = client.get("/fleets/demo/live", params={"since": "9223372036854775807"})
    assert last.status_code == 200 and last.json()["next"] == 2**63 - 1


def test_the_live_endpoint_says_why_it_refuses(site: Site) -> None:
    unknown = site.signed_in(site.key()).get("/fleets/nope/live?since=0")
    assert (unknown.status_code, unknown.json()) == (
        404,
        {
            "error": {
                "code": "fleet_not_found",
                "message": "this control plane serves no fleet nope",
            }
        },
    )
    other = site.signed_in(site.key(name="others", fleets=("other",)))
    refused = other.get("/fleets/demo/live?since=0")
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": {"code": "forbidden", "message": "the key others is not granted fleet demo"}},
    )
    signed_out = site.browser().get("/fleets/demo/live?since=0")
    assert (signed_out.status_code, signed_out.json()) == (
        401,
        {"error": {"code": "no_session", "message": "sign in again"}},
    )


def test_only_the_shipped_assets_are_served(site: Site) -> None:
    client = site.browser()
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert client.get("/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/base.html").status_code == 404
    assert client.get("/static/..%2Fdashboard.py").status_code == 404


def test_a_chart_breaks_its_line_where_the_agent_was_silent() -> None:
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def point(minute: int, cpu: float) -> MetricPoint:
        at = start + dt.timedelta(minutes=minute)
        return MetricPoint(fleet="f", server="s", step_s=60, at=at, samples=1, values={"cpu": cpu})

    made = chart(
        [point(0, 10), point(1, 20), point(10, 150), point(11, 30)],
        "cpu",
        "CPU",
        start=start,
        span_s=3600,
    )
    assert made.lines == ("0.0,126.0 10.0,112.0", "100.0,0.0 110.0,98.0")
    assert (made.last, made.peak) == (30, 150)
    lone = chart([point(30, 50)], "cpu", "CPU", start=start, span_s=3600)
    assert lone.lines == ("300.0,70.0 306.0,70.0",)
    assert chart([], "cpu", "CPU", start=start, span_s=3600).last is None
    rates = chart([point(0, 30), point(1, 1400)], "cpu", "In", start=start, span_s=3600, unit="B/s")
    assert (rates.top, rates.lines) == (2000, ("0.0,137.9 10.0,42.0",))
    assert (rates.reading(1400), rates.reading(2.5e6), rates.reading(30)) == (
        "1.4 kB/s",
        "2.5 MB/s",
        "30 B/s",
    )


def test_a_waterfall_lays_the_steps_done_end_to_end() -> None:
    bars = waterfall({"create": 10.0, "boot": 30.0, "phone_home": None, "install": 60.0})
    assert bars == (
        StepBar(step="create", seconds=10.0, x=0.0, width=100.0),
        StepBar(step="boot", seconds=30.0, x=100.0, width=300.0),
        StepBar(step="install", seconds=60.0, x=400.0, width=600.0),
    )
    assert waterfall({"create": None}) == ()


def test_the_server_and_fleet_pages_show_the_steps_to_ready(site: Site) -> None:
    for stage in (Stage.CREATING, Stage.BOOTING, Stage.PHONED_HOME, Stage.READY):
        site.store.servers.set_stage(FLEET, "web-5", stage)
    client = site.signed_in(site.key())
    server = client.get("/fleets/demo/servers/web-5").text
    assert "Steps to ready" in server
    assert re.findall(r'class="step step-(\w+)"', server) == ["create", "boot"]
    assert "Steps to ready" not in client.get("/fleets/demo/servers/web-6").text
    fleet = client.get("/fleets/demo").text
    assert re.findall(r'class="step step-(\w+)"', fleet) == ["create", "boot"]


def test_the_alerts_page_lists_firing_and_resolved_alerts_filtered(site: Site) -> None:
    now = dt.datetime.now(dt.UTC)
    hour = dt.timedelta(hours=1)
    for record in (
        AlertRecord(
            fleet=FLEET,
            alert="hot",
            subject="web-1",
            state=AlertState.FIRING,
            since=now - hour,
            value=97.5,
            fired_at=now - hour,
        ),
        AlertRecord(
            fleet=FLEET,
            alert="hot",
            subject="web-2",
            state=AlertState.RESOLVED,
            since=now - 2 * hour,
            fired_at=now - 3 * hour,
            resolved_at=now - 2 * hour,
        ),
        AlertRecord(
            fleet=FLEET, alert="drifted", subject="", state=AlertState.PENDING, since=now, value=2
        ),
        AlertRecord(
            fleet="secret", alert="hot", subject="db-1", state=AlertState.FIRING, since=now
        ),
    ):
        site.store.alerts.save(record)
    register_fleet(site.store, replace(example_fleet("demo"), name="secret"))
    client = site.signed_in(site.key(fleets=(FLEET,)))
    overview = client.get("/").text
    assert 'href="/alerts"' in overview
    assert "1 alert firing</a>" in overview
    page = client.get("/alerts")
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    rows = re.findall(
        r'<tr><th scope="row">(\w+)</th>.*?class="stage stage-\w+">(\w+)</span>', page.text
    )
    # Firing first, then pending, then resolved; the other fleet's alert is not shown.
    assert rows == [("hot", "firing"), ("drifted", "pending"), ("hot", "resolved")]
    assert "97.5" in page.text and "db-1" not in page.text and "secret" not in page.text
    resolved = client.get("/alerts?state=resolved").text
    assert "web-2" in resolved and "web-1" not in resolved
    assert "web-1" in client.get("/alerts?q=web-1").text
    assert "No alerts match." in client.get("/alerts?q=nothing").text
    by_fleet = client.get("/alerts?fleet=demo")
    assert "Alerts of demo" in by_fleet.text
    refused = client.get("/alerts?fleet=secret")
    assert refused.status_code == 403 and "db-1" not in refused.text
    # The fleet's pages link to its alerts.
    assert 'href="/alerts?fleet=demo"' in client.get("/fleets/demo").text
    assert site.browser().get("/alerts").status_code == 303


def test_the_alerts_page_pages_its_alerts_keeping_the_filters(site: Site) -> None:
    now = dt.datetime.now(dt.UTC)
    # 230 alerts about web-1..web-230, one in ten firing, the more recent the higher the number.
    for n in range(1, 231):
        firing = n % 10 == 0
        site.store.alerts.save(
            AlertRecord(
                fleet=FLEET,
                alert="hot",
                subject=f"web-{n}",
                state=AlertState.FIRING if firing else AlertState.RESOLVED,
                since=now - dt.timedelta(minutes=1000 - n),
                resolved_at=None if firing else now,
            )
        )
    client = site.signed_in(site.key())
    about = re.compile(r'<a href="/fleets/demo/servers/(web-\d+)">')
    first = client.get("/alerts")
    shown = about.findall(first.text)
    assert len(shown) == 100 and "230 alerts, page 1 of 3" in first.text
    # The 23 firing first (the most recent first), then the resolved ones.
    assert shown[:24] == [f"web-{n}" for n in range(230, 0, -10)] + ["web-229"]
    assert 'rel="next" href="?page=2&amp;fleet=&amp;state=&amp;q="' in first.text
    assert 'rel="prev"' not in first.text
    last = client.get("/alerts?page=3")
    assert len(about.findall(last.text)) == 30 and about.findall(last.text)[-1] == "web-1"
    assert client.get("/alerts?page=99").text.count("page 3 of 3") == 1
    filtered = client.get("/alerts?state=resolved&q=web-2&fleet=demo")
    # web-2, web-21..web-29 and web-200..web-229, but the tens (firing): 1 + 9 + 27.
    assert "37 alerts</caption>" in filtered.text and 'rel="next"' not in filtered.text
    resolved = client.get("/alerts?state=resolved&q=web-&fleet=demo&page=2")
    assert "207 alerts, page 2 of 3" in resolved.text
    assert 'href="?page=3&amp;fleet=demo&amp;state=resolved&amp;q=web-"' in resolved.text
    assert 'href="?page=1&amp;fleet=demo&amp;state=resolved&amp;q=web-"' in resolved.text


def test_the_fleet_page_shows_the_last_saved_plan_as_the_preview_prints_it(site: Site) -> None:
    client = site.signed_in(site.key())
    assert "Last plan" not in client.get("/fleets/demo").text
    fleet = example_fleet("demo")
    plan = diff_fleet(fleet, load_catalog("local"), [], options=DiffOptions(install_hash="x"))
    now = dt.datetime.now(dt.UTC)
    for n, at in ((1, now - dt.timedelta(hours=1)), (2, now)):
        site.store.runs.save_plan(
            SavedPlan(
                id=f"plan{n}",
                fleet=FLEET,
                spec_digest="s",
                world_digest="w",
                document=render_json(plan),
                created_at=at,
                created_by=f"ops{n}",
            )
        )
    page = client.get("/fleets/demo").text
    assert "Plan <code>plan2</code>, made by ops2" in page
    shown = re.search(r'<pre class="plan">(.*?)</pre>', page, re.S)
    assert shown is not None
    assert html.unescape(shown[1]) == render_text(plan)
    assert "  + web-1" in shown[1] and "Plan: 3 to create" in shown[1]


def test_the_servers_table_shows_the_power_the_provider_said_else_the_stage_implies(
    site: Site,
) -> None:
    site.store.servers.set_stage(FLEET, "web-2", Stage.FAILED)
    site.store.servers.set_stage(FLEET, "web-3", Stage.BOOTING)
    client = site.signed_in(site.key())
    cell = r'data-stage-of="(web-\d)">\w+</span>(?:.*?)</td><td( class="muted")?>([^<]*)</td>'
    page = client.get("/fleets/demo?q=web-").text
    presumed = [(name, power) for name, grey, power in re.findall(cell, page) if grey]
    assert presumed[:3] == [("web-1", "on"), ("web-2", "—"), ("web-3", "busy")]
    assert '<p class="muted reconciled">Not reconciled yet</p>' in client.get("/").text
    # A reconcile run read the provider: its word, not the stage's.
    assert site.store.leases.take(FLEET, "serve/1", ttl_s=60) is not None
    said = {"web-1": "off", "web-2": "running", "web-3": "gone"}
    assert site.store.leases.record_run(FLEET, "serve/1", {"provider": said, "drift": 2})
    page = client.get("/fleets/demo?q=web-").text
    read = [(name, power) for name, grey, power in re.findall(cell, page) if not grey]
    assert read[:3] == [("web-1", "off"), ("web-2", "on"), ("web-3", "gone")]
    assert "What the provider said at the fleet's last reconcile run" in page
    card = re.search(r'<p class="muted reconciled">([^<]*)</p>', client.get("/").text)
    assert card is not None and re.fullmatch(r"Reconciled \d+ s ago: 2 changes of drift", card[1])


def test_the_server_page_lists_its_containers_and_apps(site: Site) -> None:
    client = site.signed_in(site.key())
    page = client.get("/fleets/demo/servers/web-1").text
    names = re.findall(r'<table class="containers">.*?</table>', page, re.S)
    assert re.findall(r'<th scope="row">([\w-]+)</th>', names[0]) == [
        "fleet-agent",
        f"web-{APP_VERSION}",
    ]
    assert "2 running of 2" in page and "<code>nginx:1.27</code>" in page
    (apps,) = re.findall(r'<table class="apps">.*?</table>', page, re.S)
    assert re.findall(r'<th scope="row">(\w+)</th><td><code>(\w+)</code>', apps) == [
        ("web", APP_VERSION)
    ]
    assert '<span class="stage stage-good">running</span>' in apps
    # The app's container gone from the agent's list: the app says so.
    site.store.agents.record_heartbeat(
        AgentReport(
            fleet=FLEET,
            server="web-1",
            last_heartbeat_at=dt.datetime.now(dt.UTC),
            containers=container_list(),
        )
    )
    page = client.get("/fleets/demo/servers/web-1").text
    assert "not in the agent's list" in page and "1 running of 1" in page
    other = client.get("/fleets/demo/servers/web-9").text
    assert "The engine has deployed no app here." in other
    site.store.agents.record_heartbeat(
        AgentReport(fleet=FLEET, server="web-9", last_heartbeat_at=dt.datetime.now(dt.UTC))
    )
    assert "No list from the agent yet" in client.get("/fleets/demo/servers/web-9").text


def test_a_rebuild_is_offered_and_queued_after_a_warning(site: Site) -> None:
    client = site.signed_in(site.key(Scope.APPLY, name="deployer"))
    page = client.get("/fleets/demo/servers/web-2")
    assert ">rebuild</button>" in page.text and "what was written there is lost" in page.text
    url = "/fleets/demo/servers/web-2/actions"
    confirm = client.post(url, data={"action": "rebuild", "csrf": csrf_of(page)})
    assert confirm.status_code == 200 and "Yes, rebuild web-2" in confirm.text
    assert "the disk anew from the group" in confirm.text
    assert site.store.runs.all(FLEET) == ()
    done = client.post(url, data={"action": "rebuild", "csrf": csrf_of(page), "confirm": "yes"})
    assert done.headers["location"] == "/fleets/demo/servers/web-2?queued=rebuild"
    (run,) = site.store.runs.all(FLEET)
    assert (run.kind, dict(run.request)) == ("rebuild", {"server": "web-2", "action": "rebuild"})
    assert [j.kind for j in site.store.jobs.all(FLEET)] == ["server-action"]


def test_a_sign_in_link_works_once_and_not_after_it_expires() -> None:
    links = SignInLinks()
    path = links.issue("0123456789abcdef", then="/fleets/demo")
    token = path.removeprefix("/sign-in/link/")
    assert token not in redact(f"GET {path}")  # a secret: no log line shows it
    assert links.redeem(token) == ("0123456789abcdef", "/fleets/demo")
    assert links.redeem(token) is None
    stale = SignInLinks(ttl_s=-1)
    assert stale.redeem(stale.issue("0123456789abcdef").removeprefix("/sign-in/link/")) is None


def test_without_links_a_sign_in_link_is_refused(site: Site) -> None:
    refused = site.browser().get("/sign-in/link/abc")
    assert refused.status_code == 403 and SESSION_COOKIE not in refused.headers.get(
        "set-cookie", ""
    )
