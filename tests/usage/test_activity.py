"""POST /v1/accounts/{id}/activity: last seen, counters per day, dormancy as a signal and a rescore."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import func, select

from kyc import create_app
from kyc.models import Account, ActivityDay, Evaluation
from kyc.runtime import Runtime
from tests.conftest import RULES_DIR, as_a_gateway, signup
from tests.flows import key_headers

SIGNED_UP = "2026-10-01T12:00:00Z"


def activity(client, auth, account_id="acct_1", **body):
    return client.post(f"/v1/accounts/{account_id}/activity", json=body, headers=auth)


@pytest.fixture
def account(client, auth):
    assert client.post("/v1/signups", json=signup(occurred_at=SIGNED_UP), headers=auth).status_code == 200
    return "acct_1"


def _evaluations(runtime) -> list[Evaluation]:
    with runtime.session() as s:
        return list(s.execute(select(Evaluation).order_by(Evaluation.created_at)).scalars())


def test_counts_requests_per_day_and_moves_last_seen(client, auth, runtime, account):
    first = activity(client, auth, occurred_at="2026-10-02T09:00:00Z", requests=1200, ip="203.0.113.7")
    assert first.status_code == 200
    assert first.json["requests_today"] == 1200 and first.json["day"] == "2026-10-02"
    assert first.json["woke_up"] is False and first.json["dormant_days"] == 0
    second = activity(client, auth, occurred_at="2026-10-02T17:00:00Z", requests=300).json
    assert second["requests_today"] == 1500 and second["last_seen_at"] == "2026-10-02T17:00:00Z"
    next_day = activity(client, auth, occurred_at="2026-10-03T01:00:00Z", requests=1).json
    assert next_day["requests_today"] == 1 and next_day["day"] == "2026-10-03"
    late = activity(client, auth, occurred_at="2026-10-02T20:00:00Z", requests=5).json
    assert late["requests_today"] == 1505 and late["last_seen_at"] == "2026-10-03T01:00:00Z"
    with runtime.session() as s:
        days = s.execute(select(ActivityDay.day, ActivityDay.requests).order_by(ActivityDay.day)).all()
        assert [(d.isoformat(), n) for d, n in days] == [("2026-10-02", 1505), ("2026-10-03", 1)]
        assert s.get(ActivityDay, ("acct_1", days[0][0])).last_ip_hash not in (None, "203.0.113.7")
    assert client.get("/v1/accounts/acct_1", headers=auth).json["last_seen_at"] == "2026-10-03T01:00:00Z"


def test_activity_after_dormancy_is_a_signal_and_rescores(client, auth, runtime, account):
    before = len(_evaluations(runtime))
    version = client.get("/v1/accounts/acct_1", headers=auth).json["state_version"]
    woke = activity(client, auth, occurred_at="2026-11-24T21:00:00Z", requests=50).json
    assert woke["woke_up"] is True and woke["dormant_days"] == 54 and woke["rescore_requested"] is True
    evaluations = _evaluations(runtime)
    assert len(evaluations) == before + 1
    rescored = evaluations[-1]
    assert rescored.trigger == "usage"           # a usage report re-evaluated it (kyc.scoring.pipeline.AGAIN)
    assert rescored.signals["account"]["woke_up"] is True and rescored.signals["account"]["dormant_days"] == 54
    assert client.get("/v1/accounts/acct_1", headers=auth).json["state_version"] > version
    high = client.get("/v1/accounts/acct_1/entitlement?tier=high_volume", headers=auth).json
    assert "not_just_woken" in {d["check"] for d in high["denied_by"]}
    # The same day's later reports are no new wake-up.
    again = activity(client, auth, occurred_at="2026-11-24T22:00:00Z", requests=1).json
    assert again["woke_up"] is False and len(_evaluations(runtime)) == before + 1


def test_short_silence_is_no_wake_up(client, auth, runtime, account):
    before = len(_evaluations(runtime))
    answer = activity(client, auth, occurred_at="2026-10-11T12:00:00Z", requests=1).json
    assert answer["woke_up"] is False and answer["dormant_days"] == 10
    assert len(_evaluations(runtime)) == before


def test_dormancy_threshold_is_a_setting(database_url, make_config):
    rt = Runtime.start(make_config(database_url, dormant_days=5), migrate=False)
    try:
        client = create_app(runtime=rt).test_client()
        headers = key_headers(rt)
        client.post("/v1/signups", json=signup(occurred_at=SIGNED_UP), headers=headers)
        assert activity(client, headers, occurred_at="2026-10-11T12:00:00Z", requests=1).json["woke_up"] is True
    finally:
        rt.engine.dispose()


def test_rules_can_act_on_a_wake_up(database_url, make_config, tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES_DIR, root)
    with open(root / "signup.yaml", "a") as f:
        f.write("\n- id: sleeper_woke_up\n  description: Dormant account suddenly active\n"
                "  when: account.woke_up and account.age_days >= 30\n  score: 40\n  action: review\n")
    rt = Runtime.start(make_config(database_url, rules_dir=root), migrate=False)
    try:
        headers = key_headers(rt)
        client = create_app(runtime=rt).test_client()
        assert client.post("/v1/signups", json=signup(occurred_at=SIGNED_UP), headers=headers).json["decision"] == "allow"
        activity(client, headers, occurred_at="2026-11-24T21:00:00Z", requests=1)
        account = client.get("/v1/accounts/acct_1", headers=headers).json
        assert account["decision"] == "review"
        assert account["reasons"][0]["rule"] == "sleeper_woke_up"
    finally:
        rt.engine.dispose()


@pytest.mark.parametrize("body", [
    {"requests": -1}, {"requests": "12"}, {"requests": 1.5}, {"requests": True}, {"requests": -3.0},
    {"requests": 1, "tokens_in": 2.5}, {"requests": 1, "ip": "999.1.1.1"},
    {"requests": 1, "occurred_at": "yesterday"}, {"requests": 1, "user": "x"}, {"ip": "203.0.113.7"},
])
def test_bad_activity_is_refused_and_changes_nothing(client, auth, runtime, account, body):
    with runtime.session() as s:
        before = s.get(Account, "acct_1").last_seen_at
    answer = activity(client, auth, **body)
    assert answer.status_code == 400 and answer.json["error"]["fields"]
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(ActivityDay)) == 0
        assert s.get(Account, "acct_1").last_seen_at == before


def test_a_count_sent_as_a_number_with_no_fraction_is_that_integer(client, auth, account):
    """JSON has one number type, and JSON Schema's "integer" (the document's) admits 361.0: a
    gateway that sums its counts as floats sends it, and it counts as 361."""
    answer = activity(client, auth, requests=361.0, window_seconds=3600.0, tokens_in=1.2e6,
                      prompt_fingerprints={"pf_a": 361.0}, occurred_at="2026-11-24T21:00:00Z")
    assert answer.status_code == 200, answer.json
    assert answer.json["requests_today"] == 361 and isinstance(answer.json["requests_today"], int)


def test_unknown_account_is_404(client, auth, runtime):
    assert activity(client, auth, "acct_nobody", requests=3).status_code == 404
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(ActivityDay)) == 0


def test_parallel_reports_of_a_new_day_all_count(client, auth, runtime, account, app):
    import threading

    results: list[int] = []

    def report():
        answer = as_a_gateway(lambda: app.test_client().post(
            "/v1/accounts/acct_1/activity", headers=auth, json={"occurred_at": "2026-10-05T10:00:00Z", "requests": 10}))
        results.append(answer.status_code)

    threads = [threading.Thread(target=report) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    with runtime.session() as s:
        assert s.execute(select(ActivityDay.requests)).scalars().all() == [60]
