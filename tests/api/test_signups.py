"""POST /v1/signups and GET /v1/accounts/{id} through Flask's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import func, select

from kyc.models import Account, Evaluation, Sighting
from tests.conftest import assert_field_error, signup


def _counts(runtime) -> tuple[int, int, int]:
    with runtime.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Account, Evaluation, Sighting))


def test_scores_a_signup_with_the_contract_shape(client, auth):
    response = client.post("/v1/signups", json=signup(), headers=auth)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["evaluation_id"].startswith("ev_")
    assert body["account_id"] == "acct_1"
    assert body["decision"] in ("allow", "verify", "review", "block")
    assert 0 <= body["score"] <= 100
    assert body["rules_version"].startswith("sha256:")
    assert set(body["signals"]) >= {"email", "phone", "ip", "device", "velocity"}
    assert body["signals"]["email"]["domain"] == "gmail.com"
    assert body["signals"]["phone"]["region"] == "US"
    for reason in body["reasons"]:
        assert set(reason) >= {"rule", "score", "action", "description"}


def test_headless_signup_is_blocked_with_its_reason(client, auth):
    body = signup(user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "HeadlessChrome/120.0.0.0 Safari/537.36")
    response = client.post("/v1/signups", json=body, headers=auth).json
    assert response["decision"] == "block"
    assert "automation_user_agent" in [r["rule"] for r in response["reasons"]]


def test_verify_decision_lists_required_verifications(client, auth):
    response = client.post("/v1/signups", json=signup(email="x@mailinator.com"), headers=auth).json
    assert response["decision"] == "verify"
    assert response["required_verifications"] == ["phone"]
    assert response["reasons"][0]["rule"] == "disposable_email"


def test_repost_rescores_and_keeps_history(client, auth, runtime):
    first = client.post("/v1/signups", json=signup(), headers=auth).json
    second = client.post("/v1/signups", json=signup(email="x@mailinator.com", occurred_at="2026-11-24T22:00:00Z"),
                         headers=auth).json
    assert first["evaluation_id"] != second["evaluation_id"]
    account = client.get("/v1/accounts/acct_1", headers=auth).json
    assert account["decision"] == second["decision"] == "verify"
    assert [e["evaluation_id"] for e in account["evaluations"]] == [second["evaluation_id"], first["evaluation_id"]]
    assert _counts(runtime)[:2] == (1, 2)


def test_velocity_counts_distinct_accounts_in_event_time(client, auth):
    for i in range(4):
        body = signup(account_id=f"a{i}", device_id="dv_shared", occurred_at=f"2026-11-24T21:{i:02d}:00Z")
        last = client.post("/v1/signups", json=body, headers=auth).json
        if i == 2:                   # a family shares a computer between two or three
            assert last["signals"]["velocity"]["device_24h"] == 3
            assert "device_reuse" not in [r["rule"] for r in last["reasons"]]
    assert last["signals"]["velocity"]["device_24h"] == 4
    assert "device_reuse" in [r["rule"] for r in last["reasons"]]
    # A day later the window has moved on.
    late = client.post("/v1/signups", json=signup(account_id="a9", device_id="dv_shared",
                                                  occurred_at="2026-11-26T21:00:00Z"), headers=auth).json
    assert late["signals"]["velocity"]["device_24h"] == 1


def _burst(client, auth, prefix: str, emails: list[str], ip: str) -> list[dict]:
    """Signups from one new address, three minutes apart, each on a device of its own."""
    return [client.post("/v1/signups", json=signup(account_id=f"{prefix}_{i}", email=email, ip=ip, phone=None,
                                                   device_id=f"dv_{prefix}_{i}",
                                                   occurred_at=f"2026-11-24T21:{3 * i:02d}:00Z"),
                        headers=auth).json for i, email in enumerate(emails)]


def test_colleagues_signing_up_together_from_their_office_are_asked_for_their_mailbox_not_held(client, auth):
    """Eight colleagues at their organisation's domain from one new office address: the address's
    burst is the domain's, so the fifth to eighth are asked to prove a mailbox there (the free
    tier serves them), not held for review. The same burst on free mailboxes, or one mixing a
    domain with them, is held."""
    names = ["alice.moreau", "ben.kowalski", "chloe.nakamura", "david.osei", "emma.lindqvist", "farid.haddad",
             "grace.obi", "henry.walsh"]
    office = _burst(client, auth, "acme", [f"{n}@acme-widgets.com" for n in names], "98.51.7.20")
    assert [e["decision"] for e in office] == ["allow"] * 4 + ["verify"] * 4
    assert all(e["required_verifications"] == ["email"] for e in office[4:])
    assert [r["rule"] for r in office[4]["reasons"]] == ["ip_burst_one_organisation"]
    assert client.get("/v1/accounts/acme_7/entitlement?tier=free&at=2026-11-24T22:00:00Z",
                      headers=auth).json["allowed"] is True

    free = _burst(client, auth, "free", [f"{n}{i}@gmail.com" for i, n in enumerate(names)], "98.51.9.20")
    assert [e["decision"] for e in free] == ["allow"] * 4 + ["review"] * 4
    assert "ip_burst" in [r["rule"] for r in free[4]["reasons"]]
    # One account at a domain among free mailboxes: the address's burst is not the domain's.
    mixed = _burst(client, auth, "mixed", [f"{n}{i}@gmail.com" for i, n in enumerate(names[:5])]
                   + ["zoe.king@kingfarm-mail.com"], "98.51.11.20")
    assert mixed[-1]["decision"] == "review"
    assert "ip_burst" in [r["rule"] for r in mixed[-1]["reasons"]]


def test_get_unknown_account_is_404(client, auth):
    response = client.get("/v1/accounts/nobody", headers=auth)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_requests_without_a_valid_key_are_401(client, headers, runtime):
    response = client.post("/v1/signups", json=signup(), headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"
    assert client.get("/v1/accounts/acct_1", headers=headers).status_code == 401
    assert _counts(runtime) == (0, 0, 0)


def test_revoked_key_is_refused(client, auth, runtime):
    from kyc.models import ApiKey, utcnow

    with runtime.session() as s, s.begin():
        for key in s.scalars(select(ApiKey)):
            key.revoked_at = utcnow()
    assert client.post("/v1/signups", json=signup(), headers=auth).status_code == 401


BAD_BODIES = [
    ({"account_id": None}, "account_id", "required"),
    ({"email": None}, "email", "required"),
    ({"ip": None}, "ip", "required"),
    ({"account_id": ""}, "account_id", "at least 1"),
    ({"account_id": "x" * 129}, "account_id", "at most 128"),
    ({"account_id": 42}, "account_id", "string"),
    ({"email": "not-an-address"}, "email", "not an email address"),
    ({"email": ["a@b.com"]}, "email", "string"),
    ({"ip": "300.1.2.3"}, "ip", "IPv4 or IPv6"),
    ({"ip": "example.com"}, "ip", "IPv4 or IPv6"),
    ({"phone": "call me"}, "phone", "not a phone number"),
    ({"phone": "4155550123"}, "phone", "phone_region"),
    ({"phone_region": "ZZ"}, "phone_region", "region"),
    ({"form_fill_ms": "5400"}, "form_fill_ms", "integer"),
    ({"form_fill_ms": -1}, "form_fill_ms", "greater than or equal"),
    ({"occurred_at": "yesterday"}, "occurred_at", "RFC 3339"),
    ({"occurred_at": "2026-11-24T21:00:00"}, "occurred_at", "offset"),
    ({"client_hints": {"sec-ch-ua-mobile": 1}}, "client_hints.sec-ch-ua-mobile", "string"),
    ({"metadata": "free text"}, "metadata", "dictionary"),
    ({"emial": "jane@example.com"}, "emial", "unknown field"),
]


@pytest.mark.parametrize("change,field,message", BAD_BODIES, ids=[b[1] + ":" + b[2] for b in BAD_BODIES])
def test_bad_fields_are_400_naming_the_field_and_change_nothing(client, auth, runtime, change, field, message):
    response = client.post("/v1/signups", json=signup(**change), headers=auth)
    assert_field_error(response, field, message)
    assert _counts(runtime) == (0, 0, 0)


def test_non_json_is_415(client, auth, runtime):
    response = client.post("/v1/signups", data="account_id=1", headers=auth,
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json["error"]["code"] == "unsupported_media_type"
    assert _counts(runtime) == (0, 0, 0)


@pytest.mark.parametrize("raw", ['{"account_id": ', "[1, 2]", '"text"'])
def test_malformed_json_is_400(client, auth, raw, runtime):
    response = client.post("/v1/signups", data=raw, headers=auth, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"
    assert _counts(runtime) == (0, 0, 0)


def test_body_over_64_kib_is_413(client, auth, runtime):
    body = signup(metadata={"blob": "x" * 70_000})
    response = client.post("/v1/signups", data=json.dumps(body), headers=auth, content_type="application/json")
    assert response.status_code == 413
    assert response.json["error"]["code"] == "body_too_large"
    assert _counts(runtime) == (0, 0, 0)


@pytest.mark.parametrize("where", [
    {"metadata": {"note": "card 4111 1111 1111 1111 thanks"}},
    {"metadata": {"nested": [{"pan": "4111-1111-1111-1111"}]}},
    {"device_id": "4242424242424242"},
    {"metadata": {"n": 4111111111111111}},
])
def test_full_card_number_anywhere_is_refused_and_never_echoed(client, auth, runtime, where):
    response = client.post("/v1/signups", json=signup(**where), headers=auth)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "card_number_refused"
    text = response.get_data(as_text=True)
    assert "4111" not in text and "4242" not in text
    assert _counts(runtime) == (0, 0, 0)


def test_card_like_numbers_that_fail_luhn_are_accepted(client, auth):
    response = client.post("/v1/signups", json=signup(metadata={"order": "4111 1111 1111 1112"}), headers=auth)
    assert response.status_code == 200


def test_rescore_keeps_event_time_and_records_no_new_sightings(client, auth, runtime):
    from kyc.rescore.batch import enqueue_rescore

    client.post("/v1/signups", json=signup(), headers=auth)
    before = _counts(runtime)
    assert enqueue_rescore(runtime, ["acct_1", "acct_1", "missing"], reason="test") == 1
    after = _counts(runtime)
    assert after == (before[0], before[1] + 1, before[2])
    with runtime.session() as s:
        latest = s.scalars(select(Evaluation).order_by(Evaluation.created_at.desc())).first()
    assert latest.trigger == "rescore"
    assert latest.occurred_at.isoformat().startswith("2026-11-24T21:00:00")


def test_long_international_phone_numbers_are_not_mistaken_for_cards(client, auth):
    # +55 11 96123 4508 has 13 digits and passes Luhn; the leading + says it is a phone number.
    from kyc.security import contains_card_number, luhn_ok

    assert luhn_ok("5511961234508") and not contains_card_number({"phone": "+5511961234508"})
    response = client.post("/v1/signups", json=signup(phone="+5511961234508"), headers=auth)
    assert response.status_code == 200, response.json


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)
       .filter(lambda t: t.strip() and not any(c.isdigit() for c in t)))
# Slashes where Werkzeug's path converter and its merging of slashes lost them (a 404, or another
# account's URL): found by this test the day hypothesis drew `/`.
@example(account_id="/")
@example(account_id="/acct")
@example(account_id="acct/")
@example(account_id="a//b")
def test_any_account_id_the_contract_allows_works_on_every_account_route(client, auth, account_id):
    """"caller's id, 1-128 chars": one holding '/', '?', '%', spaces or any Unicode, sent
    percent-encoded in a path, names the account its signup created (surrounding whitespace
    trimmed in both places). (No digits: a generated run of them could be a card number,
    which is refused anywhere; tests/test_card_numbers.py.)"""
    from urllib.parse import quote

    assert client.post("/v1/signups", json=signup(account_id=account_id), headers=auth).status_code == 200
    path = f"/v1/accounts/{quote(account_id, safe='')}"
    shown = client.get(path, headers=auth)
    assert shown.status_code == 200 and shown.json["account_id"] == account_id.strip(), shown.json
    entitled = client.get(f"{path}/entitlement?tier=free", headers=auth)
    assert entitled.status_code == 200 and entitled.json["account_id"] == account_id.strip()
    reported = client.post(f"{path}/activity", json={"requests": 1}, headers=auth)
    assert reported.status_code == 200 and reported.json["account_id"] == account_id.strip()
    labelled = client.post(f"{path}/labels", json={"label": "legit"}, headers=auth)
    assert labelled.status_code == 200, labelled.json
