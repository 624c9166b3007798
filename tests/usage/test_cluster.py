"""Cluster usage: rules read what the account's whole cluster does with the API."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kyc.rescore.background import drain
from kyc.models import Evaluation
from tests.conftest import signup


def _linked(client, auth, n: int) -> list[str]:
    """n accounts on one device, signed up a day apart (one cluster, no burst)."""
    ids = []
    for i in range(n):
        body = signup(account_id=f"sib_{i}", email=f"sibling.person{i}@gmail.com", device_id="dv_shared",
                      phone=f"+1415555{i}123", ip=f"73.15.{i}.9", occurred_at=f"2026-09-{i + 1:02d}T12:00:00Z")
        answer = client.post("/v1/signups", json=body, headers=auth)
        assert answer.status_code == 200 and answer.json["decision"] == "allow", answer.json
        ids.append(body["account_id"])
    return ids


def test_the_cluster_s_usage_is_read_with_the_account_s(client, auth, runtime):
    a, b = _linked(client, auth, 2)
    for account, n in ((a, 300), (b, 500)):
        client.post(f"/v1/accounts/{account}/activity", headers=auth,
                    json={"occurred_at": "2026-09-03T10:05:00Z", "requests": n, "tier": "free"})
    client.post(f"/v1/accounts/{b}/activity", headers=auth,
                json={"occurred_at": "2026-09-03T10:10:00Z", "requests": 20000, "tier": "free"})
    with runtime.session() as s:
        latest = s.execute(select(Evaluation).where(Evaluation.account_id == b)
                           .order_by(Evaluation.created_at.desc()).limit(1)).scalar_one()
    usage = latest.signals["usage"]
    assert usage["cluster_requests_today"] == 20800 and usage["cluster_active_hour"] == 2
    assert usage["cluster_quota_ratio"] == 10.4 and usage["cluster_woke_today"] == 0


def test_a_cluster_far_beyond_its_quotas_is_refused_as_one(client, auth, runtime):
    ids = _linked(client, auth, 6)
    # Each account alone is at six times the free quota (under usage_far_beyond_quota's ten), and
    # none is waking (they signed up days before): the cluster, at six times its members' quotas, is.
    reports = [{"account_id": account, "occurred_at": "2026-09-12T10:30:00Z", "requests": 6000, "tier": "free"}
               for account in ids]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results)
    drain(runtime)              # the cluster's rescore after the commit
    for account in ids:
        answer = client.get(f"/v1/accounts/{account}/entitlement?tier=free", headers=auth).json
        assert answer["allowed"] is False, (account, answer)
        assert "cluster_far_beyond_quota" in {r["rule"] for r in answer["reasons"]}


def test_a_cluster_far_beyond_its_quotas_is_held_as_one_in_the_call_that_shows_it(client, auth, runtime):
    """The riskier-usage check reads the cluster's size now, not the one the account's evaluation
    stored: the first members, evaluated when the cluster was one or two accounts, were answered
    `allow` (and entitled) until the cluster's rescore after the commit."""
    ids = _linked(client, auth, 6)
    reports = [{"account_id": account, "occurred_at": "2026-09-12T10:30:00Z", "requests": 6000, "tier": "free"}
               for account in ids]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["review"] * 6 and all(r["reevaluated"] for r in results)


def test_a_bulk_call_reads_a_cluster_s_day_once_for_its_accounts(client, auth, runtime):
    """The riskier-usage check and the re-evaluation read a cluster's days of usage once for the
    call's accounts of it, not once an account: a bulk call of 400 steady reports of one cluster of
    400 read 160,000 rows (kyc.usage.days.cluster_days)."""
    from sqlalchemy import event

    ids = _linked(client, auth, 6)
    drain(runtime)                  # the rescoring its growth asked for, done (its members know their cluster)
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    reports = [{"account_id": account, "occurred_at": "2026-09-12T10:30:00Z", "requests": 6000, "tier": "free"}
               for account in ids]
    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    # Held as one: the check read the cluster's day once, the re-evaluation once (7 reads before).
    assert [r["decision"] for r in results] == ["review"] * 6 and all(r["reevaluated"] for r in results)
    assert len([st for st in statements if "FROM cluster_members JOIN activity_days" in st]) == 2
    with runtime.session() as s:
        latest = s.execute(select(Evaluation).where(Evaluation.account_id == ids[0])
                           .order_by(Evaluation.created_at.desc()).limit(1)).scalar_one()
    assert latest.signals["usage"]["cluster_requests_today"] == 36000


@pytest.mark.parametrize("interval_cv, hit", [(0.05, True), (0.8, False)])
def test_linked_accounts_waking_together_in_one_hour_are_recorded_not_refused(client, auth, runtime, interval_cv, hit):
    # Hourly reports ending on the hour, as a gateway sends them: 11:00:00 closes hour 10, so
    # cluster_active_hour counts the six in hour 10 (not the empty hour 11).
    ids = _linked(client, auth, 6)
    reports = [{"account_id": account, "occurred_at": "2026-11-24T11:00:00Z", "window_seconds": 3600,
                "requests": 27, "tier": "free", "interval_cv": interval_cv} for account in ids]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert all(r["woke_up"] for r in results)
    drain(runtime)
    for account in ids:
        answer = client.get(f"/v1/accounts/{account}/entitlement?tier=free", headers=auth).json
        assert answer["allowed"] is True, (account, answer)
    with runtime.session() as s:
        latest = s.execute(select(Evaluation).where(Evaluation.account_id == ids[0])
                           .order_by(Evaluation.created_at.desc()).limit(1)).scalar_one()
    assert latest.signals["usage"]["cluster_active_hour"] == 6
    shadow = {r["rule"] for r in latest.reasons if r.get("shadow")}
    assert ("cluster_waking_together" in shadow) is hit


def _onboarded_together(client, auth, device: str | None = None) -> list[str]:
    """Six colleagues signed up within the hour, each from home, at the company's domain; then
    their first three working hours from the office's address on the company's own templates, at a
    script's pace (what a new customer's team does on its first day)."""
    names = ["alice.moreau", "ben.kowalski", "chloe.nakamura", "david.osei", "emma.lindqvist", "farid.haddad"]
    ids = []
    for i, name in enumerate(names):
        body = signup(account_id=f"acme_{i}", email=f"{name}@acme-widgets.com", ip=f"73.{20 + i}.5.9", phone=None,
                      device_id=device or f"dv_acme_{i}", occurred_at=f"2026-09-01T09:{5 * i:02d}:00Z")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
        ids.append(body["account_id"])
    for hour in (10, 11, 12):
        reports = [{"account_id": account, "occurred_at": f"2026-09-01T{hour}:00:00Z", "window_seconds": 3600,
                    "requests": 60, "ip": "98.51.7.20", "api_key_id": f"key_{account}", "interval_cv": 0.1,
                    "prompt_fingerprints": {f"pf_acme_{k}": 20 for k in range(3)}} for account in ids]
        assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    return ids


def test_a_new_customer_s_team_linked_by_working_together_is_not_held_for_growing(client, auth, runtime):
    """Its accounts link by what people who work together share (the office's network, the
    company's templates), and all joined within the day: growing_cluster asked each for a
    document, so the standard tier (which tolerates no step-up) refused the whole company. What
    such a group does is for the usage rules to judge, as large_cluster leaves it."""
    ids = _onboarded_together(client, auth)
    drain(runtime)
    for account in ids:
        shown = client.get(f"/v1/accounts/{account}", headers=auth).json
        assert shown["cluster"]["size"] == 6 and shown["decision"] == "allow", (account, shown["reasons"])


def test_a_team_that_also_shares_a_device_is_still_asked_for_a_document(client, auth, runtime):
    ids = _onboarded_together(client, auth, device="dv_one_laptop")
    drain(runtime)
    held = {account: {r["rule"] for r in client.get(f"/v1/accounts/{account}", headers=auth).json["reasons"]}
            for account in ids}
    assert all("growing_cluster" in rules for rules in list(held.values())[4:]), held
