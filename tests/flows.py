"""Helpers the verification, tier and activity tests share: real flows through the API."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

from sqlalchemy import select

from kyc.ids import new_id
from kyc.models import Account, Evaluation, OutboxMessage
from kyc.scoring.decide import Outcome, settle
from kyc.scoring.pipeline import _slot
from kyc.security import keyed_hash
from kyc.verification.webhooks import sign

WEBHOOK_SECRET = b"idv-test-secret"


def last_code(runtime, verification_id: str) -> str:
    """The code the outbox sender queued last for a verification (what the user received)."""
    with runtime.session() as s:
        body = s.execute(select(OutboxMessage.body).where(OutboxMessage.verification_id == verification_id)
                         .order_by(OutboxMessage.id.desc()).limit(1)).scalar_one()
    return re.search(r"\b(\d{6})\b", body).group(1)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def start(client, auth, account_id="acct_1", **body):
    return client.post(f"/v1/accounts/{account_id}/verifications", json=body, headers=auth)


def verify_by_code(client, auth, runtime, kind: str, account_id="acct_1", **body) -> dict:
    started = start(client, auth, account_id, kind=kind, **body)
    assert started.status_code == 201, started.json
    vid = started.json["verification_id"]
    confirmed = client.post(f"/v1/verifications/{vid}/confirm", json={"code": last_code(runtime, vid)}, headers=auth)
    assert confirmed.status_code == 200 and confirmed.json["status"] == "verified", confirmed.json
    return confirmed.json


def webhook(client, provider="idv", secret=WEBHOOK_SECRET, signature=None, **event):
    event.setdefault("event_id", new_id("evt"))
    event.setdefault("timestamp", int(time.time()))
    raw = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Signature": signature or sign(secret, raw)}
    return client.post(f"/v1/webhooks/{provider}", data=raw, headers=headers)


def verify_document(client, auth, account_id="acct_1") -> dict:
    started = start(client, auth, account_id, kind="document")
    assert started.status_code == 201, started.json
    answer = webhook(client, verification_id=started.json["verification_id"], status="approved")
    assert answer.status_code == 200 and answer.json["status"] == "verified", answer.json
    return answer.json


def allow_payment_method(runtime, account_id="acct_1", decision="allow") -> str:
    """Persist a payment_method evaluation on the account through the pipeline's own persistence
    step (decide.settle), as POST /v1/payment-methods does."""
    at = datetime.now(timezone.utc)
    with runtime.session() as s, s.begin():
        account = s.get(Account, account_id)
        ev = Evaluation(id=new_id("ev"), account_id=account_id, subject="payment_method", trigger="live",
                        occurred_at=at, input={"account_id": account_id, "fingerprint": "pm_fp_1", "bin": "424242"},
                        signals={}, reasons=[], decision=decision, score=0, required_verifications=[],
                        rules_version=runtime.rules.version)
        s.add(ev)
        card = keyed_hash(runtime.config.secret_key, "card_fingerprint", "pm_fp_1")
        settle(account, _slot("payment_method", [("card_fingerprint", card)]), "payment_method", ev.id,
               Outcome(decision, 0, [], []), at)
        return ev.id


def key_headers(runtime) -> dict[str, str]:
    """A fresh API key on the runtime's database, as request headers."""
    from kyc.models import ApiKey
    from kyc.security import hash_api_key, new_api_key

    key = new_api_key()
    with runtime.session() as s, s.begin():
        s.add(ApiKey(name="tests", prefix=key[:10], key_hash=hash_api_key(key)))
    return {"Authorization": f"Bearer {key}"}
