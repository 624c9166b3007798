"""POST /v1/webhooks/{provider} — identity-provider decisions. No Bearer key: the HMAC
signature over the raw body (X-Signature) with the provider's secret is the authentication."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import request

from kyc.api import documented, guard, respond, runtime, v1
from kyc.api.responses import Verification as VerificationBody
from kyc.verification.service import provider_decision, verification_body
from kyc.verification.webhooks import SIGNATURE_HEADER, ProviderEventBody, check_signature, parse_event


@v1.post("/webhooks/<provider>")
@documented("Identity-provider decision", body=ProviderEventBody, responses={200: VerificationBody},
            errors=(401, 404, 409), public=True, tag="verification",
            headers={SIGNATURE_HEADER: "Hex HMAC-SHA256 of the raw body with the provider's secret (KYC_WEBHOOK_SECRETS)"})
def provider_webhook(provider: str):
    """Called by the identity provider with its decision on a document verification. No API
    key: the X-Signature over the raw body is the authentication (401 without it, 404 for a
    provider not configured), the timestamp must be recent, and a replayed event id is refused."""
    rt = runtime()
    raw = guard.read_body(rt.config.max_body_bytes)
    check_signature(rt.config.webhook_secrets.get(provider), raw, request.headers.get(SIGNATURE_HEADER))
    now = datetime.now(timezone.utc)
    event = parse_event(guard.decode_json(raw), now, rt.config.webhook_tolerance_seconds)
    with rt.session() as session, session.begin():
        v = provider_decision(rt, session, provider, event.event_id, event.verification_id, event.status,
                              event.reason, now)
        answer = verification_body(v, now, rt.config.code_max_attempts)
    return respond(VerificationBody, answer)
