"""Identity-provider webhooks: who sent it (HMAC-SHA256 over the raw body), when (a timestamp
within KYC_WEBHOOK_TOLERANCE_SECONDS) and what (an event id, verification id and status).

The signature is checked before the body is even parsed; a call that fails it changes
nothing and learns nothing. Replays are refused by event id (kyc/verification/service.py).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from kyc.errors import ApiError, invalid
from kyc.inputs import parse_time
from kyc.verification.service import FAILED_STATUSES, VERIFIED_STATUSES

SIGNATURE_HEADER = "X-Signature"


@dataclass(frozen=True)
class ProviderEvent:
    event_id: str
    verification_id: str
    status: str
    reason: str | None
    timestamp: datetime


def sign(secret: bytes, body: bytes) -> str:
    """The X-Signature value for a body: hex HMAC-SHA256 (a "sha256=" prefix is also accepted)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def check_signature(secret: bytes | None, body: bytes, header: str | None) -> None:
    if secret is None:
        raise ApiError(404, "not_found", "unknown webhook provider")
    given = (header or "").strip().removeprefix("sha256=")
    # Compare even when the header is absent, so timing never tells a missing from a wrong signature.
    if not hmac.compare_digest(sign(secret, body).encode(), given.encode()) or not given:
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
