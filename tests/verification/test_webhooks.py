"""Identity-provider webhooks: signature, timestamp window, replay, and what a decision changes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from kyc.api.errors import ApiError
from kyc.api.webhooks import parse_event
from kyc.models import Account, Verification, VerificationEvent, WebhookEvent
from kyc.runtime import Runtime
from kyc.verification.webhooks import sign
from tests.conftest import GB_VOIP, signup
from tests.flows import WEBHOOK_SECRET, start, webhook


@pytest.fixture
def runtime(database_url, make_config):
    rt = Runtime.start(make_config(database_url, webhook_secrets={"idv": WEBHOOK_SECRET}), migrate=False)
    yield rt
    rt.engine.dispose()


@pytest.fixture
def document(client, auth):
    client.post("/v1/signups", json=signup(**GB_VOIP), headers=auth)   # VoIP: verify [document]
    started = start(client, auth, kind="document")
    assert started.status_code == 201 and started.json["status"] == "pending"
    return started.json["verification_id"]


def _state(runtime, vid):
    with runtime.session() as s:
        v = s.get(Verification, vid)
        return (v.status, v.reason, s.scalar(select(func.count()).select_from(WebhookEvent)),
                s.scalar(select(func.count()).select_from(VerificationEvent).where(VerificationEvent.verification_id == vid)),
                s.get(Account, v.account_id).state_version)


def test_signed_approval_verifies_and_rescores(client, auth, runtime, document):
    assert client.get("/v1/accounts/acct_1", headers=auth).json["decision"] == "verify"
    answer = webhook(client, verification_id=document, status="approved", reason="passport matched selfie")
    assert answer.status_code == 200
    assert answer.json["status"] == "verified" and answer.json["provider"] == "idv"
    account = client.get("/v1/accounts/acct_1", headers=auth).json
    assert account["decision"] == "allow"
    with runtime.session() as s:
        assert s.get(Verification, document).reason == "passport matched selfie"


def test_signed_decline_fails_with_the_providers_reason(client, auth, runtime, document):
    answer = webhook(client, verification_id=document, status="declined", reason="document expired")
    assert answer.status_code == 200 and answer.json["status"] == "failed"
    assert answer.json["reason"] == "document expired"
    assert client.get("/v1/accounts/acct_1", headers=auth).json["decision"] == "verify"


@pytest.mark.parametrize("signature", ["", "00" * 32, "sha256=" + "ab" * 32, "not hex"])
def test_bad_or_missing_signature_is_401_and_changes_nothing(client, runtime, document, signature):
    before = _state(runtime, document)
    raw = json.dumps({"event_id": "evt_1", "verification_id": document, "status": "approved",
                      "timestamp": int(time.time())}).encode()
    headers = {"Content-Type": "application/json"}
    if signature:
        headers["X-Signature"] = signature
    answer = client.post("/v1/webhooks/idv", data=raw, headers=headers)
    assert answer.status_code == 401 and answer.json["error"]["code"] == "bad_signature"
    assert _state(runtime, document) == before


def test_signature_with_another_secret_or_over_another_body_is_refused(client, runtime, document):
    before = _state(runtime, document)
    assert webhook(client, secret=b"guessed", verification_id=document, status="approved").status_code == 401
    raw = json.dumps({"event_id": "evt_2", "verification_id": document, "status": "approved",
                      "timestamp": int(time.time())}).encode()
    tampered = raw.replace(b"approved", b"verified")
    answer = client.post("/v1/webhooks/idv", data=tampered,
                         headers={"Content-Type": "application/json", "X-Signature": sign(WEBHOOK_SECRET, raw)})
    assert answer.status_code == 401
    assert _state(runtime, document) == before


@pytest.mark.parametrize("written", ["sha256=hex", "HEX", "base64", "sha256=base64"])
def test_a_signature_is_accepted_as_providers_write_it(client, document, written):
    """Providers write the same MAC in hex (either case) or base64, some after "sha256="."""
    import base64

    raw = json.dumps({"event_id": "evt_3", "verification_id": document, "status": "approved",
                      "timestamp": int(time.time())}).encode()
    mac = sign(WEBHOOK_SECRET, raw)
    value = {"sha256=hex": "sha256=" + mac, "HEX": mac.upper(), "base64": base64.b64encode(bytes.fromhex(mac)).decode(),
             "sha256=base64": "sha256=" + base64.b64encode(bytes.fromhex(mac)).decode()}[written]
    answer = client.post("/v1/webhooks/idv", data=raw, headers={"X-Signature": value})
    assert answer.status_code == 200 and answer.json["status"] == "verified"
    # Over another body, each form is refused.
    other = raw.replace(b"evt_3", b"evt_4")
    assert client.post("/v1/webhooks/idv", data=other, headers={"X-Signature": value}).status_code == 401


def test_unknown_provider_is_refused(client, runtime, document):
    before = _state(runtime, document)
    assert webhook(client, provider="other", verification_id=document, status="approved").status_code == 404
    assert _state(runtime, document) == before


# Over HTTP the offsets stay well clear of the edge: the server reads its clock after the test
# did, and a whole-second timestamp already sits up to a second behind (301 s once passed).
@pytest.mark.parametrize("offset", [-400, 400, -3600])
def test_timestamp_outside_five_minutes_is_refused(client, runtime, document, offset):
    before = _state(runtime, document)
    answer = webhook(client, verification_id=document, status="approved", timestamp=int(time.time()) + offset)
    assert answer.status_code == 400 and answer.json["error"]["code"] == "stale_event"
    assert _state(runtime, document) == before


@pytest.mark.parametrize(("offset", "accepted"), [(-300, True), (300, True), (-301, False), (301, False)])
def test_the_window_edge_is_exact_on_a_fixed_clock(offset, accepted):
    now = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    body = {"event_id": "evt_edge", "verification_id": "vf_1", "status": "approved",
            "timestamp": int(now.timestamp()) + offset}
    if accepted:
        assert parse_event(body, now, 300).timestamp == now + timedelta(seconds=offset)
    else:
        with pytest.raises(ApiError) as refused:
            parse_event(body, now, 300)
        assert refused.value.code == "stale_event"


def test_rfc3339_timestamp_within_the_window_is_accepted(client, document):
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    assert webhook(client, verification_id=document, status="approved", timestamp=now).status_code == 200


def test_replayed_event_id_is_refused(client, auth, runtime, document):
    first = webhook(client, event_id="evt_once", verification_id=document, status="declined", reason="blurry")
    assert first.status_code == 200
    after_first = _state(runtime, document)
    # A new document verification, and the old event delivered again at it.
    second_doc = start(client, auth, kind="document").json["verification_id"]
    replay = webhook(client, event_id="evt_once", verification_id=second_doc, status="approved")
    assert replay.status_code == 409 and replay.json["error"]["code"] == "replayed_event"
    assert _state(runtime, document) == after_first
    with runtime.session() as s:
        assert s.get(Verification, second_doc).status == "pending"


def test_malformed_event_and_wrong_targets(client, auth, runtime, document):
    assert webhook(client, verification_id=document, status="maybe").status_code == 400
    assert webhook(client, verification_id="vf_unknown", status="approved").status_code == 404
    email = start(client, auth, kind="email").json["verification_id"]
    assert webhook(client, verification_id=email, status="approved").status_code == 409
    webhook(client, verification_id=document, status="approved")
    done = webhook(client, verification_id=document, status="declined")
    assert done.status_code == 409 and done.json["error"]["code"] == "verification_verified"
    with runtime.session() as s:
        assert s.get(Verification, document).status == "verified"


def test_webhooks_need_no_api_key_but_other_routes_do(client, document):
    assert client.get("/v1/accounts/acct_1").status_code == 401
    assert webhook(client, verification_id=document, status="approved").status_code == 200


def test_card_number_in_a_signed_event_is_refused(client, runtime, document):
    before = _state(runtime, document)
    answer = webhook(client, verification_id=document, status="declined", reason="card 4111 1111 1111 1111 on file")
    assert answer.status_code == 400 and answer.json["error"]["code"] == "card_number_refused"
    assert "4111" not in answer.get_data(as_text=True)
    assert _state(runtime, document) == before


def test_decision_after_the_document_expired_is_refused(client, runtime, document):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    with runtime.session() as s, s.begin():
        s.execute(update(Verification).where(Verification.id == document)
                  .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    answer = webhook(client, verification_id=document, status="approved")
    assert answer.status_code == 409 and answer.json["error"]["code"] == "verification_expired"
    with runtime.session() as s:
        assert s.get(Verification, document).status == "pending"     # shown as expired, never verified
    assert client.get(f"/v1/verifications/{document}",
                      headers={"Authorization": "Bearer x"}).status_code == 401


def test_a_document_sent_to_one_provider_is_decided_by_that_provider_only(client, auth, database_url, make_config):
    """With two providers configured, a verification started for one (`provider`) is refused to
    the other's signed webhook, and nothing changes; without `provider`, any configured one decides."""
    from kyc import create_app

    rt = Runtime.start(make_config(database_url, webhook_secrets={"idv": WEBHOOK_SECRET, "other": b"other-secret"}),
                       migrate=False)
    try:
        app = create_app(runtime=rt).test_client()
        app.post("/v1/signups", json=signup(**GB_VOIP), headers=auth)
        started = start(app, auth, kind="document", provider="idv")
        assert started.status_code == 201 and started.json["provider"] == "idv"
        vid = started.json["verification_id"]
        before = _state(rt, vid)
        foreign = webhook(app, provider="other", secret=b"other-secret", verification_id=vid, status="approved")
        assert foreign.status_code == 409 and foreign.json["error"]["code"] == "wrong_provider"
        assert _state(rt, vid) == before
        assert webhook(app, verification_id=vid, status="approved").json["status"] == "verified"

        for body, field in (({"kind": "document", "provider": "nobody"}, "provider"),
                            ({"kind": "email", "provider": "idv"}, "provider")):
            refused = start(app, auth, **body)
            assert refused.status_code == 400 and field in refused.json["error"]["fields"], refused.json
    finally:
        rt.engine.dispose()
