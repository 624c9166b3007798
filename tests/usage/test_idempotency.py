"""Idempotency keys on the activity endpoints (kyc/idempotency.py): a call sent again with its
key is answered as the first time and counted once; a key reused for another body is refused."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select, update

from kyc.idempotency import KEEP_HOURS, key_problem, purge
from kyc.models import ActivityDay, ActivityReport, ApiKey, IdempotentAnswer, utcnow
from kyc.security import hash_api_key, new_api_key
from tests.conftest import as_a_gateway, signup

SIGNED_UP = "2026-10-01T12:00:00Z"
REPORT = {"occurred_at": "2026-10-02T09:00:00Z", "requests": 1200, "ip": "203.0.113.7", "tier": "free"}


@pytest.fixture
def accounts(client, auth):
    ids = []
    for i in range(2):
        body = signup(account_id=f"acct_{i}", email=f"person{i}.x@gmail.com", device_id=f"dv_{i}",
                      ip=f"73.{15 + i}.1.1", phone=None, occurred_at=SIGNED_UP)
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
        ids.append(body["account_id"])
    return ids


def _reports(runtime) -> int:
    with runtime.session() as s:
        return s.scalar(select(func.count()).select_from(ActivityReport))


def _requests(runtime, account: str) -> int:
    with runtime.session() as s:
        return s.scalar(select(func.sum(ActivityDay.requests)).where(ActivityDay.account_id == account))


def test_a_single_report_sent_again_is_answered_as_before_and_counted_once(client, auth, runtime, accounts):
    headers = {**auth, "Idempotency-Key": "report-1"}
    first = client.post("/v1/accounts/acct_0/activity", json=REPORT, headers=headers)
    again = client.post("/v1/accounts/acct_0/activity", json=REPORT, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json == first.json and first.json["requests_today"] == 1200
    assert _reports(runtime) == 1 and _requests(runtime, "acct_0") == 1200
    # Without a key, the same report is another report.
    assert client.post("/v1/accounts/acct_0/activity", json=REPORT, headers=auth).json["requests_today"] == 2400


def test_a_bulk_call_sent_again_is_answered_as_before_and_counted_once(client, auth, runtime, accounts):
    body = {"reports": [{"account_id": a, **REPORT} for a in accounts]}
    headers = {**auth, "Idempotency-Key": "bulk-2026-10-02T09"}
    first = client.post("/v1/activity", json=body, headers=headers)
    again = client.post("/v1/activity", json=body, headers=headers)
    assert first.status_code == again.status_code == 200 and again.json == first.json
    assert _reports(runtime) == 2 and [_requests(runtime, a) for a in accounts] == [1200, 1200]


def test_a_key_reused_for_another_body_is_refused_and_changes_nothing(client, auth, runtime, accounts):
    headers = {**auth, "Idempotency-Key": "report-1"}
    assert client.post("/v1/accounts/acct_0/activity", json=REPORT, headers=headers).status_code == 200
    other = client.post("/v1/accounts/acct_0/activity", json={**REPORT, "requests": 5}, headers=headers)
    assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_key_reused"
    assert other.json["error"]["fields"] == {"Idempotency-Key": "used for another body"}
    elsewhere = client.post("/v1/accounts/acct_1/activity", json=REPORT, headers=headers)
    assert elsewhere.status_code == 409                 # another route: another call
    assert _reports(runtime) == 1 and _requests(runtime, "acct_0") == 1200


def test_a_key_is_the_caller_s_own(client, auth, runtime, accounts):
    key = new_api_key()
    with runtime.session() as s, s.begin():
        s.add(ApiKey(name="another-gateway", prefix=key[:10], key_hash=hash_api_key(key), role="gateway"))
    for caller in (auth, {"Authorization": f"Bearer {key}"}):
        answer = client.post("/v1/accounts/acct_0/activity", json=REPORT, headers={**caller, "Idempotency-Key": "k1"})
        assert answer.status_code == 200
    assert _requests(runtime, "acct_0") == 2400


def test_calls_with_one_key_at_once_are_counted_once(app, auth, runtime, accounts):
    body = {"reports": [{"account_id": a, **REPORT} for a in accounts]}
    answers: list = []

    def send():
        answer = as_a_gateway(lambda: app.test_client().post("/v1/activity", json=body,
                                                              headers={**auth, "Idempotency-Key": "same"}))
        answers.append((answer.status_code, answer.json))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in answers] == [200] * 4
    assert all(json == answers[0][1] for _, json in answers)
    assert _reports(runtime) == 2 and [_requests(runtime, a) for a in accounts] == [1200, 1200]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_what_is_an_idempotency_key(key):
    valid = 1 <= len(key) <= 255 and all(33 <= ord(c) <= 126 for c in key)
    assert (key_problem(key) is None) == valid


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.just(""), st.text(alphabet=st.characters(max_codepoint=0x7E), min_size=1, max_size=40)
                 .filter(lambda k: any(not "!" <= c <= "~" for c in k)), st.text(alphabet="ab", min_size=256,
                                                                                    max_size=300)))
def test_a_call_with_a_malformed_key_is_refused_and_changes_nothing(client, auth, runtime, accounts, key):
    before = _reports(runtime)
    # Keys a header can carry (latin-1, no line breaks), that are not keys.
    if any(c in key for c in "\r\n\x00"):
        key = key.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    answer = client.post("/v1/accounts/acct_0/activity", json=REPORT, headers={**auth, "Idempotency-Key": key})
    assert answer.status_code == 400 and "Idempotency-Key" in answer.json["error"]["fields"]
    assert _reports(runtime) == before


def test_answers_are_kept_a_day(client, auth, runtime, accounts):
    for key in ("old", "new"):
        client.post("/v1/accounts/acct_0/activity", json=REPORT, headers={**auth, "Idempotency-Key": key})
    with runtime.session() as s, s.begin():
        s.execute(update(IdempotentAnswer).where(IdempotentAnswer.key_hash == s.scalar(
            select(IdempotentAnswer.key_hash).order_by(IdempotentAnswer.created_at).limit(1)))
            .values(created_at=utcnow() - timedelta(hours=KEEP_HOURS, minutes=1)))
    with runtime.session() as s, s.begin():
        assert purge(s) == 1
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(IdempotentAnswer)) == 1
    # The purged key is a new call again; the kept one still answers as before.
    assert client.post("/v1/accounts/acct_0/activity", json=REPORT,
                       headers={**auth, "Idempotency-Key": "old"}).json["requests_today"] == 3600
    assert client.post("/v1/accounts/acct_0/activity", json=REPORT,
                       headers={**auth, "Idempotency-Key": "new"}).json["requests_today"] == 2400
