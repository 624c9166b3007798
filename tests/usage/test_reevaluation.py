"""Usage changes decisions at once: a report that makes an account riskier re-evaluates it
through the one pipeline before the report's answer, and its cluster is rescored after."""

from __future__ import annotations

from sqlalchemy import select

from kyc.rescore.background import drain
from kyc.models import Evaluation
from tests.conftest import signup

SIGNED_UP = "2026-10-01T12:00:00Z"


def _signup(client, auth, n: int, **fields):
    body = signup(account_id=f"acct_{n}", email=f"jane.smith{n}@gmail.com", device_id=f"dv_{n}",
                  phone=f"+1415555{n}123", occurred_at=SIGNED_UP)
    body.update(fields)
    answer = client.post("/v1/signups", json=body, headers=auth)
    assert answer.status_code == 200, answer.json
    return answer.json


def _evaluations(runtime, account_id: str) -> list:
    with runtime.session() as s:
        return list(s.execute(select(Evaluation).where(Evaluation.account_id == account_id)
                              .order_by(Evaluation.created_at, Evaluation.id)).scalars())


def test_a_report_far_over_quota_changes_the_decision_and_the_entitlement_at_once(client, auth, runtime):
    _signup(client, auth, 1)
    assert client.get("/v1/accounts/acct_1/entitlement?tier=free", headers=auth).json["allowed"] is True
    answer = client.post("/v1/accounts/acct_1/activity", headers=auth,
                         json={"occurred_at": "2026-10-02T10:00:00Z", "requests": 50000}).json
    assert answer["decision"] == "review" and answer["reevaluated"] is True
    latest = _evaluations(runtime, "acct_1")[-1]
    assert latest.trigger == "usage" and latest.subject == "signup"
    assert latest.signals["usage"]["quota_ratio"] == 50.0 and latest.signals["usage"]["tier"] == "free"
    assert [r["rule"] for r in latest.reasons] == ["usage_far_beyond_quota"]
    entitled = client.get("/v1/accounts/acct_1/entitlement?tier=free", headers=auth).json
    assert entitled["allowed"] is False and entitled["decision"] == "review"


def test_a_bulk_call_answers_each_report_with_its_counts_and_the_account_s_decision_after_the_call(
        client, auth, runtime):
    """An account re-evaluated by a bulk call is evaluated once, after all its reports (README)."""
    _signup(client, auth, 1)
    reports = [{"account_id": "acct_1", "occurred_at": "2026-10-02T10:00:00Z", "requests": n} for n in (10, 50000)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [(r["requests_today"], r["decision"], r["reevaluated"]) for r in results] == [
        (10, "review", True), (50010, "review", True)]
    assert [e.trigger for e in _evaluations(runtime, "acct_1")] == ["live", "usage"]


def test_ordinary_usage_re_evaluates_nothing(client, auth, runtime):
    _signup(client, auth, 1)
    for hour in range(9, 18):
        answer = client.post("/v1/accounts/acct_1/activity", headers=auth,
                             json={"occurred_at": f"2026-10-02T{hour:02d}:00:00Z", "requests": 900, "tier": "standard",
                                   "window_seconds": 3600, "interval_cv": 0.02}).json
        assert answer["decision"] == "allow" and answer["reevaluated"] is False
    assert len(_evaluations(runtime, "acct_1")) == 1


def test_the_rules_decide_what_is_riskier_not_fixed_steps(client, auth, runtime):
    """Crossing the rule's own threshold (10x) re-evaluates; growing below it does not."""
    _signup(client, auth, 1)
    post = lambda at, n: client.post("/v1/accounts/acct_1/activity", headers=auth,  # noqa: E731
                                     json={"occurred_at": at, "requests": n}).json
    assert post("2026-10-02T10:00:00Z", 5000)["reevaluated"] is False          # 5x the free quota
    assert post("2026-10-02T11:00:00Z", 4000)["reevaluated"] is False          # 9x
    crossing = post("2026-10-02T12:00:00Z", 1000)                              # 10x
    assert crossing["reevaluated"] is True and crossing["decision"] == "review"
    # Already judged with this usage's rules: more of the same re-evaluates nothing.
    assert post("2026-10-02T13:00:00Z", 1000)["reevaluated"] is False
    assert len(_evaluations(runtime, "acct_1")) == 2


def test_bulk_wakes_four_dormant_accounts_and_refuses_them_as_one(client, auth, runtime):
    """The issue's example: four accounts dormant since signup wake in the same second from one
    IP, each with 50,000 requests (50 times the free quota)."""
    for n in range(4):
        _signup(client, auth, n)
    reports = [{"account_id": f"acct_{n}", "occurred_at": "2026-11-24T21:00:00Z", "requests": 50000,
                "ip": "203.0.113.7"} for n in range(4)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["woke_up"] for r in results] == [True] * 4
    assert [r["decision"] for r in results] == ["review"] * 4
    for n in range(4):
        entitled = client.get(f"/v1/accounts/acct_{n}/entitlement?tier=free", headers=auth).json
        assert entitled["allowed"] is False
        reasons = {r["rule"] for r in entitled["reasons"]}
        assert {"usage_far_beyond_quota", "woke_up_at_full_volume"} <= reasons


def test_usage_never_lowers_a_decision(client, auth, runtime):
    headless = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
                "Safari/537.36")
    assert _signup(client, auth, 1, user_agent=headless)["decision"] == "block"
    answer = client.post("/v1/accounts/acct_1/activity", headers=auth,
                         json={"occurred_at": "2026-10-02T10:00:00Z", "requests": 50000}).json
    assert answer["reevaluated"] is True and answer["decision"] == "block"
    reasons = {r["rule"] for r in client.get("/v1/accounts/acct_1", headers=auth).json["reasons"]}
    assert {"automation_user_agent", "usage_far_beyond_quota"} <= reasons


def test_the_cluster_is_rescored_after_the_report(client, auth, runtime):
    # Two accounts on one device: one cluster.
    _signup(client, auth, 1)
    second = _signup(client, auth, 2, device_id="dv_1")
    assert second["cluster"]["size"] == 2
    before = len(_evaluations(runtime, "acct_1"))
    answer = client.post("/v1/accounts/acct_2/activity", headers=auth,
                         json={"occurred_at": "2026-10-02T10:00:00Z", "requests": 50000}).json
    assert answer["decision"] == "review"
    drain(runtime)              # the cluster's rescore runs after the commit, in the background
    rescored = _evaluations(runtime, "acct_1")[before:]
    assert rescored and all(e.trigger == "rescore" for e in rescored)
