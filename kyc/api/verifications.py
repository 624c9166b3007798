"""Verifications: start one, confirm a code, read one.

POST /v1/accounts/{id}/verifications {"kind"}  -> 201 (new) or 200 (resend / still pending)
POST /v1/verifications/{id}/confirm {"code"}    -> 200 with the status the code led to
GET  /v1/verifications/{id}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from kyc.api import VALUES, documented, parse, respond, runtime, v1
from kyc.api.responses import Verification as VerificationBody
from kyc.api.errors import invalid, not_found
from kyc.inputs import check_email
from kyc.models import Verification
from kyc.verification.service import StartRequest, confirm, start, verification_body


# The fields only one kind takes: start_verification refuses them with another kind, and the
# document says so (each an if/then of StartBody's schema), from this one table.
ONLY_FOR = {"email": ("email",), "phone": ("phone", "phone_region", "tier"), "document": ("provider",)}


def _only_for(kind: str, fields: tuple[str, ...]) -> dict:
    return {"if": {"properties": {"kind": {"not": {"const": kind}}}},
            "then": {"properties": {name: {"type": "null"} for name in fields}}}


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={
        "allOf": [_only_for(kind, fields) for kind, fields in ONLY_FOR.items()]})

    kind: Literal["email", "phone", "document", "payment"]
    email: Annotated[StrictStr, Field(min_length=3, max_length=320, json_schema_extra={"format": "email"})] | None = None
    phone_region: Annotated[StrictStr, Field(min_length=2, max_length=2)] | None = None
    phone: Annotated[StrictStr, Field(min_length=3, max_length=32)] | None = None
    tier: Annotated[StrictStr, Field(max_length=64, json_schema_extra={VALUES: "tiers"})] | None = None
    provider: Annotated[StrictStr, Field(min_length=1, max_length=64, json_schema_extra={VALUES: "providers"},
                                         description=(
        "kind document: the identity provider the document is sent to (one of KYC_WEBHOOK_SECRETS); "
        "only its signed webhook may then decide it"))] | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else check_email(value)


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    code: Annotated[StrictStr, Field(pattern=r"^[0-9]{6}$")]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@v1.post("/accounts/<account_id>/verifications")
@documented("Start a verification", body=StartBody, responses={200: VerificationBody, 201: VerificationBody},
            errors=(404, 409, 429, 502), tag="verification")
def start_verification(account_id: str):
    """Email and phone send a code through the configured sender (201 new; 200 a resend of the
    pending one); documents wait for the identity provider's webhook."""
    body = parse(StartBody)
    rt = runtime()
    if body.tier is not None and rt.tiers.get(body.tier) is None:
        raise invalid("unknown tier", {"tier": f"one of {', '.join(rt.tiers.tiers)}"})
    for kind, fields in ONLY_FOR.items():
        given = [name for name in fields if getattr(body, name) is not None]
        if given and body.kind != kind:
            raise invalid(f"{', '.join(given)}: only for kind {kind}", {name: f"only for kind {kind}" for name in given})
    if body.provider is not None and body.provider not in rt.config.webhook_secrets:
        raise invalid("provider is a configured identity provider", {"provider": (
            f"unknown provider; one of {', '.join(sorted(rt.config.webhook_secrets)) or '(none configured)'}")})
    now = _now()
    with rt.session() as session, session.begin():         # SendFailed: 502, nothing was started
        v, created = start(rt, session, account_id, StartRequest(**body.model_dump()), now)
        answer = verification_body(v, now, rt.config.code_max_attempts)
    return respond(VerificationBody, answer, status=201 if created else 200)


@v1.post("/verifications/<verification_id>/confirm")
@documented("Confirm a code", body=ConfirmBody, responses={200: VerificationBody}, errors=(404, 409, 429),
            tag="verification")
def confirm_verification(verification_id: str):
    """Completes an email or phone verification with its code; attempts are limited. A wrong
    code answers 200 with the attempts remaining."""
    body = parse(ConfirmBody)
    rt = runtime()
    now = _now()
    with rt.session() as session, session.begin():
        v = confirm(rt, session, verification_id, body.code, now)
        answer = verification_body(v, now, rt.config.code_max_attempts)
    return respond(VerificationBody, answer)


@v1.get("/verifications/<verification_id>")
@documented("Read a verification", responses={200: VerificationBody}, errors=(404,), tag="verification")
def get_verification(verification_id: str):
    """A verification's status, where its code went (masked) and its attempts remaining."""
    rt = runtime()
    with rt.session() as session:
        v = session.get(Verification, verification_id)
        if v is None:
            raise not_found("verification")
        return respond(VerificationBody, verification_body(v, _now(), rt.config.code_max_attempts))
