"""Verification limits that must hold against a determined client: a phone number verified on
one account only, even when two accounts confirm it at the same moment (PostgreSQL, real
concurrent requests); and a cap on wrong codes per account and kind across verifications."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from kyc import create_app
from kyc.models import PhoneClaim, Verification, VerificationEvent
from tests.conftest import signup
from tests.flows import key_headers, last_code, start, verify_by_code, wrong


def _two_accounts_one_phone(client, auth, phone: str, n: int) -> tuple[str, str]:
    accounts = (f"acct_{n}_a", f"acct_{n}_b")
    for i, account_id in enumerate(accounts):
        body = signup(account_id=account_id, email=f"person{n}x{i}@gmail.com", phone=phone, device_id=f"dv_{n}_{i}",
                      ip=f"45.{n}.{i}.10")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
    return accounts


def test_two_accounts_confirming_one_phone_at_once_only_one_gets_it(postgres_runtime):
    app = create_app(runtime=postgres_runtime)
    client, auth = app.test_client(), key_headers(postgres_runtime)
    for n in range(8):
        phone = f"+4479111234{n:02d}"
        accounts = _two_accounts_one_phone(client, auth, phone, n)
        started = [start(client, auth, account_id, kind="phone") for account_id in accounts]
        # Nobody has the number yet: both get a code.
        assert [s.status_code for s in started] == [201, 201], [s.json for s in started]
        ids = [s.json["verification_id"] for s in started]
        codes = [last_code(postgres_runtime, vid) for vid in ids]
        barrier, answers = threading.Barrier(2), {}

        def confirm(vid: str, code: str) -> None:
            own = app.test_client()
            barrier.wait()
            answers[vid] = own.post(f"/v1/verifications/{vid}/confirm", json={"code": code}, headers=auth)

        threads = [threading.Thread(target=confirm, args=pair) for pair in zip(ids, codes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted((a.status_code, a.json.get("status") or a.json["error"]["code"]) for a in answers.values())
        assert statuses == [(200, "verified"), (409, "phone_in_use")], statuses
        with postgres_runtime.session() as session:
            verified = session.scalars(select(Verification.account_id).where(
                Verification.kind == "phone", Verification.status == "verified",
                Verification.account_id.in_(accounts))).all()
            claim = session.scalars(select(PhoneClaim).where(PhoneClaim.account_id.in_(accounts))).one()
        assert verified == [claim.account_id]


def test_the_owner_can_verify_its_number_again_and_others_still_cannot(app_with):
    app = app_with(resend_interval_seconds=0)
    client, runtime = app.test_client(), app.extensions["kyc"]
    auth = key_headers(runtime)
    _two_accounts_one_phone(client, auth, "+447911123456", 1)
    verify_by_code(client, auth, runtime, "phone", "acct_1_a")
    verify_by_code(client, auth, runtime, "phone", "acct_1_a")           # a later verification of the same number
    refused = start(client, auth, "acct_1_b", kind="phone")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "phone_in_use"


def test_without_uniqueness_both_verify_and_the_first_keeps_the_claim(app_with):
    app = app_with(phone_unique=False)
    client, rt = app.test_client(), app.extensions["kyc"]
    auth = key_headers(rt)
    accounts = _two_accounts_one_phone(client, auth, "+447911123456", 2)
    for account_id in accounts:
        verify_by_code(client, auth, rt, "phone", account_id)
    with rt.session() as session:
        assert session.scalars(select(PhoneClaim.account_id)).all() == [accounts[0]]


def _fail_one(client, auth, runtime, account_id: str, wrong_codes: int) -> str:
    vid = start(client, auth, account_id, kind="email").json["verification_id"]
    bad = wrong(last_code(runtime, vid))
    for _ in range(wrong_codes):
        answer = client.post(f"/v1/verifications/{vid}/confirm", json={"code": bad}, headers=auth)
        assert answer.status_code == 200, answer.json
    return vid


def test_a_new_verification_after_a_lockout_gets_no_fresh_attempts(app_with):
    app = app_with(resend_interval_seconds=0, code_max_attempts=5, code_max_wrong_per_day=7)
    client, rt = app.test_client(), app.extensions["kyc"]
    auth = key_headers(rt)
    assert client.post("/v1/signups", json=signup(), headers=auth).status_code == 200
    first = _fail_one(client, auth, rt, "acct_1", 5)
    assert client.get(f"/v1/verifications/{first}", headers=auth).json["status"] == "failed"
    second = _fail_one(client, auth, rt, "acct_1", 2)                # 7 wrong codes in a day: the cap
    right = last_code(rt, second)
    refused = client.post(f"/v1/verifications/{second}/confirm", json={"code": right}, headers=auth)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert 86000 < int(refused.headers["Retry-After"]) <= 86400
    with rt.session() as session:
        assert session.get(Verification, second).attempts == 2           # the refused try was not counted
    again = start(client, auth, "acct_1", kind="email")
    assert again.status_code == 429 and "Retry-After" in again.headers
    # Phone codes have a budget of their own.
    assert start(client, auth, "acct_1", kind="phone").status_code == 201

    # A day later the oldest wrong codes no longer count.
    with rt.session() as session, session.begin():
        for event in session.scalars(select(VerificationEvent)):
            event.at -= timedelta(hours=25)
        for verification in session.scalars(select(Verification)):
            verification.expires_at -= timedelta(hours=25)
            if verification.last_sent_at:
                verification.last_sent_at -= timedelta(hours=25)
    assert start(client, auth, "acct_1", kind="email").status_code == 201
