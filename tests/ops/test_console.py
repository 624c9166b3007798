"""The ops console (/console) through Flask's test client, on SQLite and PostgreSQL: who may
enter, CSRF, what each page shows (and never shows: full PII), the backtest form, and that a
decision made in the console is the same service call the API makes.

The same flows in a real browser against a real server: tests/ops/test_console_browser.py.
"""

from __future__ import annotations

import re
import shutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from kyc.rescore.background import drain
from kyc.models import Account, ApiKey, Evaluation
from kyc.ops.audit import list_events
from kyc.ops.keys import create_key, revoke_key
from kyc.security import contains_card_number
from tests.conftest import RULES_DIR
from tests.ops.console_data import seed


def make_key(runtime, role: str = "ops", name: str = "alice") -> str:
    with runtime.session() as s, s.begin():
        _, key = create_key(s, name, role, "tests")
    return key


def csrf_of(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def sign_in(client, key: str, next_url: str | None = None):
    token = csrf_of(client.get("/console/login"))
    url = "/console/login" + (f"?next={next_url}" if next_url else "")
    return client.post(url, data={"api_key": key, "csrf_token": token})


@pytest.fixture
def seeded(client, runtime):
    admin = make_key(runtime, "admin", "seeder")

    def post(path, body):
        answer = client.post(path, json=body, headers={"Authorization": f"Bearer {admin}"})
        return answer.status_code, answer.json

    data = seed(post)
    drain(runtime)               # the cluster rescoring the farm's growth asked for
    return data


@pytest.fixture
def ops(client, runtime):
    """A client signed in with an ops key."""
    assert sign_in(client, make_key(runtime)).status_code == 302
    return client


# --- who may enter --------------------------------------------------------------------------------

def test_the_session_cookie_is_secure_over_https_and_never_readable_by_scripts(app, runtime):
    for base, secure in (("https://kyc.example", True), ("http://127.0.0.1:8000", False)):
        client = app.test_client()
        page = client.get("/console/login", base_url=base)
        cookie = page.headers["Set-Cookie"]
        assert cookie.startswith("kyc_console=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("; Secure" in cookie) is secure
        token = csrf_of(page)
        signed_in = client.post("/console/login", data={"api_key": make_key(runtime, name=base), "csrf_token": token},
                                base_url=base)
        assert signed_in.status_code == 302
        assert ("; Secure" in signed_in.headers["Set-Cookie"]) is secure


def test_pages_need_a_signed_in_ops_or_admin_key(client, runtime):
    first = client.get("/console/queue")
    assert first.status_code == 302 and first.location.startswith("/console/login")
    bad = sign_in(client, "kyc_not_a_key")
    assert bad.status_code == 401 and "not valid" in bad.text
    signup_key = make_key(runtime, "signup", "signup-flow")
    refused = sign_in(client, signup_key)
    assert refused.status_code == 401 and "role is signup" in refused.text
    assert client.get("/console/queue").status_code == 302
    for role in ("ops", "admin"):
        key = make_key(runtime, role, f"{role}-person")
        entered = sign_in(client, key)
        assert entered.status_code == 302 and entered.location == "/console/queue"
        page = client.get("/console/queue")
        assert page.status_code == 200 and f"{role}-person · {role}" in page.text
        assert client.post("/console/logout", data={"csrf_token": csrf_of(page)}).status_code == 302
        assert client.get("/console/queue").status_code == 302


def test_the_session_cookie_holds_no_key_and_a_revoked_key_is_out_at_once(client, runtime):
    key = make_key(runtime)
    sign_in(client, key)
    cookie = client.get_cookie("kyc_console", path="/console")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert key not in cookie.value
    assert client.get("/console/queue").status_code == 200
    with runtime.session() as s, s.begin():
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.name == "alice"))
        revoke_key(s, key_id, "tests")
    gone = client.get("/console/queue")
    assert gone.status_code == 302 and gone.location.startswith("/console/login")


def test_pages_may_not_be_framed_cached_or_load_anything_from_elsewhere(ops):
    page = ops.get("/console/queue")
    assert page.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["Cache-Control"] == "no-store"
    assert not re.search(r'(src|href)="(https?:)?//', page.text)          # nothing fetched from another host


def test_bearer_keys_work_as_the_api_checks_them(client, runtime):
    assert client.get("/console/queue", headers={"Authorization": "Bearer kyc_nope"}).status_code == 401
    gateway = make_key(runtime, "gateway", "gw")
    assert client.get("/console/queue", headers={"Authorization": f"Bearer {gateway}"}).status_code == 403
    ops_key = make_key(runtime)
    page = client.get("/console/rules", headers={"Authorization": f"Bearer {ops_key}"})
    assert page.status_code == 200 and runtime.rules.version in page.text


def test_the_development_key_signs_in_as_admin_where_it_is_set(app, client, runtime, make_config, database_url):
    assert sign_in(client, "kyc_dev_local_only").status_code == 401          # not set: no such key
    from kyc import create_app
    from kyc.runtime import Runtime

    dev = Runtime.start(make_config(database_url, dev_key="kyc_dev_local_only"), migrate=False)
    try:
        dev_client = create_app(runtime=dev).test_client()
        assert sign_in(dev_client, "kyc_dev_local_only").status_code == 302
        assert "development · admin" in dev_client.get("/console/queue").text
    finally:
        dev.engine.dispose()


def test_sign_in_only_sends_a_person_on_within_the_console(client, runtime):
    key = make_key(runtime)
    assert sign_in(client, key, "/console/rules").location == "/console/rules"
    for elsewhere in ("//evil.example/console/", "https://evil.example/", "/v1/clusters"):
        assert sign_in(client, key, elsewhere).location == "/console/queue"


def test_forms_without_the_sessions_csrf_token_are_refused(ops, runtime, seeded):
    held = seeded["held"][0]
    for data in ({"outcome": "allow"}, {"outcome": "allow", "csrf_token": "forged"}):
        answer = ops.post(f"/console/accounts/{held}/review", data=data)
        assert answer.status_code == 400 and "did not come from this console" in answer.text
    answer = ops.post("/console/rules/backtest", data={"folder": str(RULES_DIR)})
    assert answer.status_code == 400
    assert ops.post("/console/login", data={"api_key": make_key(runtime)}).status_code == 400
    with runtime.session() as s:
        assert s.get(Account, held).decision == "review"


# --- what the pages show ---------------------------------------------------------------------------

def test_queue_shows_held_accounts_with_their_reasons_and_signals(ops, runtime, seeded):
    page = ops.get("/console/queue")
    assert page.status_code == 200
    with runtime.session() as s:
        held = s.scalars(select(Account.id).where(Account.review_since.is_not(None))).all()
    shown = re.findall(r'data-account="([^"]+)"', page.text)
    assert sorted(shown) == sorted(held) and len(shown) >= 5
    entry = page.text[page.text.index('data-account="acct_crawler"'):]
    entry = entry[:entry.index("</article>")]
    assert "bot_user_agent" in entry and "bot user agent" in entry and "Googlebot" in entry
    assert "c***@outlook.com" in entry and "66.249.*.*" in entry
    farm = page.text[page.text.index('data-account="farm_05"'):]
    assert "cluster of" in farm[:farm.index("</article>")]


def test_no_page_shows_a_full_email_phone_or_ip(ops, seeded):
    urls = ["/console/queue", "/console/clusters", f"/console/clusters/{seeded['farm_cluster']}", "/console/rules"]
    urls += [f"/console/accounts/{a}" for a in seeded["decisions"]]
    for url in urls:
        page = ops.get(url)
        assert page.status_code == 200, url
        leaked = [value for value in seeded["pii"] if value in page.text]
        assert not leaked, (url, leaked)


def test_account_page_shows_history_verifications_usage_and_cluster(ops, runtime, seeded):
    page = ops.get("/console/accounts/farm_03")
    assert page.status_code == 200
    with runtime.session() as s:
        evaluations = s.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.account_id == "farm_03"))
    assert page.text.count('<circle class="pt d-') == evaluations >= 1
    usage = re.search(r"([\d,]+) requests over (\d+) active day", page.text)
    assert usage and usage.groups() == ("16,500", "1"), usage          # 4,000 + 5,500 + 7,000 reported
    assert f'/console/clusters/{seeded["farm_cluster"]}' in page.text and "phone_range" in page.text
    jane = ops.get("/console/accounts/acct_jane")
    assert "over 14 active day(s)" in jane.text and jane.text.count('<rect class="bar"') == 30
    assert ops.get("/console/accounts/nobody").status_code == 404


def test_cluster_page_draws_members_and_what_links_them(ops, seeded):
    page = ops.get(f"/console/clusters/{seeded['farm_cluster']}")
    assert page.status_code == 200
    svg = page.text[page.text.index('<svg class="graph"'):page.text.index("</svg>", page.text.index('<svg class="graph"'))]
    assert svg.count('<circle class="member') == len(seeded["farm"])
    kinds = set(re.findall(r'<g class="ident (?:strong|weak)">.*?<text[^>]*>([a-z_]+)</text>', svg, re.S))
    assert {"phone_range", "ip_prefix_day"} <= kinds
    assert svg.count('<line class="edge') >= len(seeded["farm"]) * 2
    for account_id in seeded["farm"]:
        assert f'/console/accounts/{account_id}"' in svg
    listing = ops.get("/console/clusters")
    assert seeded["farm_cluster"] in listing.text
    assert ops.get("/console/clusters/cl_nope").status_code == 404


# --- rules and backtests ------------------------------------------------------------------------------

def test_rules_page_shows_the_running_set_and_the_last_refused_reload(ops, runtime, tmp_path):
    page = ops.get("/console/rules")
    assert runtime.rules.version in page.text and "None: the files on disk loaded cleanly" in page.text
    broken = tmp_path / "broken"
    shutil.copytree(RULES_DIR, broken)
    (broken / "signup.yaml").write_text((broken / "signup.yaml").read_text() + "\n- id: typo\n  description: x\n"
                                        "  when: emial.disposable\n  score: 5\n  action: review\n")
    from kyc.engine import RuleSetError

    with pytest.raises(RuleSetError):
        runtime.reload_rules(broken)
    page = ops.get("/console/rules")
    assert "did not load" in page.text and "emial" in page.text and runtime.rules.version in page.text


def test_backtest_form_replays_history_through_a_candidate(ops, runtime, seeded, tmp_path):
    csrf = csrf_of(ops.get("/console/rules"))
    candidate = tmp_path / "candidate"
    shutil.copytree(RULES_DIR, candidate)
    (candidate / "signup.yaml").write_text((candidate / "signup.yaml").read_text().replace(
        "when: device.bot and not device.headless", "when: device.bot and device.headless"))
    answer = ops.post("/console/rules/backtest", data={"csrf_token": csrf, "folder": str(candidate), "since": "30d"})
    assert answer.status_code == 200
    with runtime.session() as s:
        live = s.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.trigger == "live"))
    report = answer.text[answer.text.index('data-testid="backtest-report"'):]
    assert f"<b>{live}</b> live evaluations" in report
    assert "acct_crawler" in report                      # the crawler is no longer held by the candidate
    with runtime.session() as s:
        assert s.get(Account, "acct_crawler").decision == "review"       # a backtest changes nothing


def test_a_window_too_large_for_a_page_is_refused_before_any_replay(ops, runtime, seeded, monkeypatch):
    """The console replays inside its request: a window that would outlast the server's timeout
    is refused with what to do instead, not cut off by the worker's death (a 500)."""
    from kyc.ops.console import pages

    with runtime.session() as s:
        live = s.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.trigger == "live"))
    monkeypatch.setattr(pages, "CONSOLE_BACKTEST_MOST", live - 1)
    csrf = csrf_of(ops.get("/console/rules"))
    answer = ops.post("/console/rules/backtest", data={"csrf_token": csrf, "folder": str(RULES_DIR), "since": "30d"})
    assert answer.status_code == 422 and f"holds {live:,} evaluations" in answer.text
    assert "kyc rules backtest --since 30d" in answer.text and 'data-testid="backtest-report"' not in answer.text
    monkeypatch.setattr(pages, "CONSOLE_BACKTEST_MOST", live)
    assert ops.post("/console/rules/backtest", data={"csrf_token": csrf, "folder": str(RULES_DIR),
                                                     "since": "30d"}).status_code == 200


def test_backtest_form_explains_what_is_wrong(ops, tmp_path):
    csrf = csrf_of(ops.get("/console/rules"))
    missing = ops.post("/console/rules/backtest", data={"csrf_token": csrf, "folder": str(tmp_path / "none")})
    assert missing.status_code == 422 and "rules directory not found" in missing.text
    since = ops.post("/console/rules/backtest", data={"csrf_token": csrf, "folder": str(RULES_DIR), "since": "soon"})
    assert since.status_code == 422 and "neither a duration" in since.text
    broken = tmp_path / "broken"
    shutil.copytree(RULES_DIR, broken)
    (broken / "signup.yaml").write_text((broken / "signup.yaml").read_text() + "\n- id: typo\n  description: x\n"
                                        "  when: emial.disposable\n  score: 5\n  action: review\n")
    answer = ops.post("/console/rules/backtest", data={"csrf_token": csrf, "folder": str(broken)})
    assert answer.status_code == 422 and "do not load" in answer.text and "signup.yaml" in answer.text


# --- decisions: the same services as the API ------------------------------------------------------

def _api(runtime) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(runtime, 'admin', 'reader')}"}


def test_allowing_in_the_console_is_the_apis_review(ops, client, runtime, seeded):
    api = _api(runtime)
    assert client.get("/v1/accounts/acct_office/entitlement?tier=free", headers=api).json["allowed"] is False
    csrf = csrf_of(ops.get("/console/queue"))
    answer = ops.post("/console/accounts/acct_office/review",
                      data={"csrf_token": csrf, "outcome": "allow", "note": "office network", "back": "/console/queue"})
    assert answer.status_code == 302 and answer.location == "/console/queue"
    page = ops.get("/console/queue")
    assert 'data-account="acct_office"' not in page.text and "acct_office is now allow" in page.text
    entitlement = client.get("/v1/accounts/acct_office/entitlement?tier=free", headers=api).json
    assert entitlement["allowed"] is True and entitlement["decision"] == "allow"
    queue = client.get("/v1/reviews?limit=100", headers=api).json["reviews"]
    assert "acct_office" not in [r["account_id"] for r in queue]
    with runtime.session() as s:
        events = list_events(s, account_id="acct_office", action="account.reviewed")["events"]
    assert [(e["actor"], e["detail"]["old"], e["detail"]["new"], e["detail"]["note"]) for e in events] == [
        ("key:alice", "review", "allow", "office network")]
    # A return address outside the console is not followed.
    elsewhere = ops.post("/console/accounts/acct_crawler/review",
                         data={"csrf_token": csrf, "outcome": "block", "back": "//evil.example/"})
    assert elsewhere.location == "/console/accounts/acct_crawler"
    assert ops.post("/console/accounts/nobody/review", data={"csrf_token": csrf, "outcome": "allow"}).status_code == 404


def test_the_console_sends_the_state_it_showed_and_a_stale_form_changes_nothing(ops, client, runtime, seeded):
    page = ops.get("/console/queue").text
    with runtime.session() as s:
        shown = s.get(Account, "acct_office").state_version
    assert f'name="state_version" value="{shown}"' in page
    csrf = csrf_of(ops.get("/console/queue"))
    with runtime.session() as s, s.begin():
        s.get(Account, "acct_office").state_version = shown + 1          # rescored meanwhile
    answer = ops.post("/console/accounts/acct_office/review",
                      data={"csrf_token": csrf, "outcome": "allow", "state_version": str(shown), "back": "/console/queue"})
    assert answer.status_code == 302 and answer.location == "/console/accounts/acct_office"
    assert "changed while you were reading it" in ops.get(answer.location).text
    with runtime.session() as s:
        assert s.get(Account, "acct_office").decision == "review"
        assert not list_events(s, account_id="acct_office", action="account.reviewed")["events"]
    fresh = ops.post("/console/accounts/acct_office/review",
                     data={"csrf_token": csrf, "outcome": "allow", "state_version": str(shown + 1)})
    assert fresh.status_code == 302
    with runtime.session() as s:
        assert s.get(Account, "acct_office").decision == "allow"


def test_blocking_a_cluster_in_the_console_is_the_apis_farm_action(ops, client, runtime, seeded):
    cluster_id = seeded["farm_cluster"]
    csrf = csrf_of(ops.get(f"/console/clusters/{cluster_id}"))
    answer = ops.post(f"/console/clusters/{cluster_id}/actions",
                      data={"csrf_token": csrf, "action": "block", "note": "one farm"})
    assert answer.status_code == 302 and answer.location == f"/console/clusters/{cluster_id}"
    page = ops.get(answer.location)
    farm = len(seeded["farm"])
    assert f"{farm} of {farm} members changed decision" in page.text
    with runtime.session() as s:
        decisions = s.scalars(select(Account.decision).where(Account.id.in_(seeded["farm"]))).all()
        events = list_events(s, cluster_id=cluster_id, action="cluster.action")["events"]
    assert set(decisions) == {"block"} and len(events) == 1 and events[0]["actor"] == "key:alice"
    assert "Actions on this cluster" in page.text
    assert "farm_0" not in "".join(re.findall(r'data-account="([^"]+)"', ops.get("/console/queue").text))
    missing = ops.post("/console/clusters/cl_nope/actions", data={"csrf_token": csrf, "action": "block"})
    assert missing.status_code == 404


def _card_numbers():
    """Luhn-valid 16-digit numbers, as typed: plain, or in groups of four with spaces or dashes."""
    def complete(body: str) -> str:
        total = 0
        for i, ch in enumerate(reversed(body)):
            d = int(ch) * (2 if i % 2 == 0 else 1)
            total += d - 9 if d > 9 else d
        return body + str((10 - total % 10) % 10)

    numbers = st.integers(10**14, 10**15 - 1).map(lambda n: complete("4" + str(n)[:14]))
    return st.tuples(numbers, st.sampled_from(["", " ", "-"])).map(
        lambda t: t[1].join(t[0][i:i + 4] for i in range(0, 16, 4)))


def test_console_forms_refuse_what_the_api_refuses_and_change_nothing(ops, client, runtime):
    api = _api(runtime)
    body = {"account_id": "acct_held", "email": "held.person@gmail.com", "ip": "10.9.8.7"}
    assert client.post("/v1/signups", json=body, headers=api).json["decision"] == "review"
    csrf = csrf_of(ops.get("/console/queue"))
    with runtime.session() as s:
        audit_before = len(list_events(s, limit=500)["events"])
    bad_outcome = st.text(max_size=12).filter(lambda v: v.strip() not in ("allow", "block"))
    bad_note = st.one_of(st.text(min_size=2001, max_size=2300).filter(lambda v: len(v.strip()) > 2000),
                         st.tuples(st.text(max_size=40), _card_numbers()).map(lambda t: f"{t[0]} {t[1]}"))
    cases = st.one_of(st.tuples(bad_outcome, st.one_of(st.none(), st.text(max_size=50))),
                      st.tuples(st.sampled_from(["allow", "block"]), bad_note))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(cases)
    def refused(case):
        outcome, note = case
        data = {"csrf_token": csrf, "outcome": outcome}
        if note is not None:
            data["note"] = note
        answer = ops.post("/console/accounts/acct_held/review", data=data)
        assert answer.status_code == 302
        page = ops.get(answer.location)
        assert page.status_code == 200 and 'class="flash error"' in page.text
        assert "Nothing was changed:" in page.text or "full card number; nothing was changed" in page.text
        if note is not None and contains_card_number(note):
            assert re.sub(r"[ -]", "", note.split()[-1]) not in page.text       # never echoed
        with runtime.session() as s:
            assert s.get(Account, "acct_held").decision == "review"

    refused()
    action_cases = st.tuples(st.text(max_size=12).filter(lambda v: v.strip() not in ("block", "review", "release")),
                             st.one_of(st.none(), bad_note))

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(action_cases)
    def refused_action(case):
        action, note = case
        data = {"csrf_token": csrf, "action": action} | ({"note": note} if note is not None else {})
        answer = ops.post("/console/clusters/cl_any/actions", data=data)
        assert answer.status_code == 302
        page = ops.get(answer.location).text
        assert 'class="flash error"' in page
        assert "Nothing was changed:" in page or "full card number; nothing was changed" in page

    refused_action()
    with runtime.session() as s:
        assert len(list_events(s, limit=500)["events"]) == audit_before


def test_error_pages_are_pages(ops):
    page = ops.get("/console/accounts/nobody")
    assert page.status_code == 404 and page.content_type.startswith("text/html") and "No account nobody" in page.text


def test_a_reviewer_reads_that_a_cluster_is_held_together_only_by_shared_work():
    from kyc.ops.console.facts import signal_facts

    def cluster_texts(graph):
        return [f.text for f in signal_facts({"graph": graph}) if f.family == "cluster"]

    office = cluster_texts({"cluster_size": 40, "cluster_growth_24h": 0, "linked_by_work_only": True})
    assert office == ["cluster of 40 when scored",
                      "linked only by what people working together share (templates, network)"]
    assert cluster_texts({"cluster_size": 40, "cluster_growth_24h": 0, "linked_by_work_only": False}) == [
        "cluster of 40 when scored"]


def test_a_reviewer_reads_a_documentation_address_as_a_tests_and_a_private_one_as_private():
    from kyc.ops.console.facts import signal_facts
    from kyc.signals.network import network_signals

    def ip_texts(ip):
        return [(f.text, f.risky) for f in signal_facts({"ip": network_signals(ip)}) if f.family == "ip"]

    assert ip_texts("203.0.113.7") == [("documentation address (a test's)", True)]
    assert ip_texts("10.1.2.3") == [("private address", True)]
