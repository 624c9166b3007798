"""Cluster usage: rules read what the account's whole cluster does with the API."""

from __future__ import annotations

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
                    json={"occurred_at": "2026-09-03T10:00:00Z", "requests": n, "tier": "free"})
    client.post(f"/v1/accounts/{b}/activity", headers=auth,
                json={"occurred_at": "2026-09-03T10:10:00Z", "requests": 20000, "tier": "free"})
    with runtime.session() as s:
        latest = s.execute(select(Evaluation).where(Evaluation.account_id == b)
                           .order_by(Evaluation.created_at.desc()).limit(1)).scalar_one()
    usage = latest.signals["usage"]
    assert usage["cluster_requests_today"] == 20800 and usage["cluster_active_hour"] == 2
    assert usage["cluster_quota_ratio"] == 10.4 and usage["cluster_woke_today"] == 0


def test_linked_accounts_waking_together_are_refused_as_one(client, auth, runtime):
    ids = _linked(client, auth, 6)
    reports = [{"account_id": account, "occurred_at": "2026-11-24T10:30:00Z", "requests": 27, "tier": "free",
                "interval_cv": 0.05} for account in ids]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert all(r["woke_up"] for r in results)
    drain(runtime)              # the cluster's rescore after the commit
    for account in ids:
        answer = client.get(f"/v1/accounts/{account}/entitlement?tier=free", headers=auth).json
        assert answer["allowed"] is False, (account, answer)
        assert "cluster_waking_together" in {r["rule"] for r in answer["reasons"]}


def test_linked_accounts_waking_together_at_a_human_pace_are_served(client, auth, runtime):
    ids = _linked(client, auth, 6)
    reports = [{"account_id": account, "occurred_at": "2026-11-24T10:30:00Z", "requests": 27, "tier": "free",
                "interval_cv": 0.8} for account in ids]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert all(r["woke_up"] for r in results)
    drain(runtime)
    for account in ids:
        assert client.get(f"/v1/accounts/{account}/entitlement?tier=free", headers=auth).json["allowed"] is True
