"""POST /v1/webhooks/{provider} — identity-provider decisions. No Bearer key: the HMAC
signature over the raw body (X-Signature) with the provider's secret is the authentication.

Who sent it (the signature, checked before the body is even parsed: a call that fails it
changes nothing and learns nothing), when (a timestamp within KYC_WEBHOOK_TOLERANCE_SECONDS)
and what (an event id, verification id and status)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from flask import request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from kyc.api import documented, guard, respond, runtime, v1
from kyc.api.errors import ApiError, invalid
from kyc.api.responses import Verification as VerificationBody
from kyc.inputs import parse_time
from kyc.verification.service import FAILED_STATUSES, VERIFIED_STATUSES, provider_decision, verification_body
from kyc.verification.webhooks import SIGNATURE_HEADER, signature_matches


@dataclass(frozen=True)
class ProviderEvent:
    event_id: str
    verification_id: str
    status: str
    reason: str | None
    timestamp: datetime


def check_signature(secret: bytes | None, body: bytes, header: str | None) -> None:
    if secret is None:
        raise ApiError(404, "not_found", "unknown webhook provider")
    if not signature_matches(secret, body, header):
        raise ApiError(401, "bad_signature", f"missing or invalid {SIGNATURE_HEADER}")


class ProviderEventBody(BaseModel):
    """An identity provider's decision on a document verification (POST /v1/webhooks/{provider}).
    Fields besides these are ignored: providers add their own."""

    model_config = ConfigDict(extra="ignore")

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    verification_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    status: Literal[VERIFIED_STATUSES + FAILED_STATUSES]          # type: ignore[valid-type]
    reason: Annotated[StrictStr, Field(max_length=512)] | None = None
    timestamp: StrictInt | StrictFloat | StrictStr = Field(
        description="When the provider decided: Unix seconds or an RFC 3339 time, within KYC_WEBHOOK_TOLERANCE_SECONDS of now")


def parse_event(data: Any, now: datetime, tolerance_seconds: int) -> ProviderEvent:
    """The event in a decoded body (the API decodes and checks JSON bodies in one place)."""
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    fields: dict[str, str] = {}
    try:
        event = ProviderEventBody.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            name = str(error["loc"][0]) if error["loc"] else "body"
            fields.setdefault(name, _MESSAGES.get(name, error["msg"]))
        event = None
    timestamp = _timestamp(data.get("timestamp"), fields)
    if fields or event is None:
        raise invalid("the event has invalid fields", fields)
    if abs(now - timestamp) > timedelta(seconds=tolerance_seconds):
        raise ApiError(400, "stale_event", f"the event timestamp is more than {tolerance_seconds}s from now",
                       {"timestamp": "outside the accepted window"})
    return ProviderEvent(event.event_id, event.verification_id, event.status, event.reason, timestamp)


_MESSAGES = {
    "event_id": "required text, at most 128 characters",
    "verification_id": "required text, at most 128 characters",
    "status": f"one of {', '.join(VERIFIED_STATUSES + FAILED_STATUSES)}",
    "reason": "text, at most 512 characters",
    "timestamp": "required: Unix seconds or an RFC 3339 time",
}


def _timestamp(value, fields: dict[str, str]) -> datetime | None:
    if "timestamp" in fields:
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str):
            return parse_time(value)
    except (ValueError, OverflowError, OSError):
        pass
    fields["timestamp"] = "required: Unix seconds or an RFC 3339 time"
    return None




@v1.post("/webhooks/<provider>")
@documented("Identity-provider decision", body=ProviderEventBody, responses={200: VerificationBody},
            errors=(401, 404, 409), public=True, tag="verification",
            headers={SIGNATURE_HEADER: "HMAC-SHA256 of the raw body with the provider's secret (KYC_WEBHOOK_SECRETS), "
                                         "hex or base64, optionally after sha256="})
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
