"""POST /v1/webhooks/{provider} — identity-provider decisions. No Bearer key: the HMAC
signature over the raw body (X-Signature) with the provider's secret is the authentication."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import jsonify, request

from kyc.api import runtime, v1
from kyc.errors import ApiError
from kyc.verification.service import provider_decision, verification_body
from kyc.verification.webhooks import SIGNATURE_HEADER, check_signature, parse_event


@v1.post("/webhooks/<provider>")
def provider_webhook(provider: str):
    rt = runtime()
    limit = rt.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    check_signature(rt.config.webhook_secrets.get(provider), raw, request.headers.get(SIGNATURE_HEADER))
    now = datetime.now(timezone.utc)
    event = parse_event(raw, now, rt.config.webhook_tolerance_seconds)
    with rt.session() as session, session.begin():
        v = provider_decision(rt, session, provider, event.event_id, event.verification_id, event.status,
                              event.reason, now)
        answer = verification_body(v, now, rt.config.code_max_attempts)
    return jsonify(answer)
