"""Typed inputs of the pipeline. The API validates requests into these; workers and backtests
rebuild them from the input stored with an evaluation, so nothing past parsing sees raw JSON."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, StringConstraints,
                      ValidationError, ValidationInfo, field_validator)

Text = Annotated[StrictStr, Field(max_length=512)]
ShortText = Annotated[StrictStr, Field(max_length=128)]
MAX_ACCOUNT_ID = 128
AccountId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ACCOUNT_ID)]


def _integral(value: Any) -> Any:
    # JSON has one number type: 361.0 is the integer 361 (JSON Schema's "integer" says so too),
    # and a gateway summing counts as floats sends it. Booleans and strings stay refused.
    return int(value) if type(value) is float and value.is_integer() else value


# An integer field takes a JSON integer, or a number with no fractional part:
# Annotated[StrictInt, Field(...), INTEGRAL] (after the Field, which the document's bounds come from).
INTEGRAL = BeforeValidator(_integral)
# What the document says an address is; the validators below read it with ipaddress.
IP_FORMATS = {"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}


# RFC 3339 section 5.6 date-time, ASCII digits only: 2026-11-24T21:00:00Z, ...T21:00:00.5+01:00.
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})")
# Times kyc accepts for events: nothing before 2000 (no account history kyc could score is
# older), nothing more than a day ahead of the server's clock (clock skew). A far-future
# occurred_at would make an account look active forever (never dormant); an ancient one
# would sit before every velocity window and history.
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
FUTURE_SKEW = timedelta(days=1)


def parse_time(value: str) -> datetime:
    """An RFC 3339 date-time with an explicit offset (ASCII digits, 'T', fractions to 9 digits), in UTC."""
    if not _RFC3339.fullmatch(value):
        if _RFC3339.fullmatch(value + "Z"):
            raise ValueError("must carry a UTC offset (Z or +hh:mm)")
        raise ValueError("must be an RFC 3339 time such as 2026-11-24T21:00:00Z")
    try:
        # Python reads at most 6 fraction digits; RFC 3339 allows more (nanoseconds).
        text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", value.upper())
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ValueError("must be an RFC 3339 time such as 2026-11-24T21:00:00Z (a real date, offset within a day)") \
            from None
    return parsed


def event_time(value: str, *, now: datetime | None = None) -> datetime:
    """When something happened (occurred_at): parse_time, from 2000-01-01 to a day after now."""
    parsed = parse_time(value)
    latest = (now or datetime.now(timezone.utc)) + FUTURE_SKEW
    if not EARLIEST <= parsed <= latest:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and a day from now")
    return parsed


def rfc3339(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    occurred_at: datetime | None = None

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("must be an RFC 3339 time string")
        return event_time(value)

    def at(self) -> datetime:
        return self.occurred_at or datetime.now(timezone.utc)

    def stored(self) -> dict[str, Any]:
        """The form kept with an evaluation: JSON, defaults dropped, time made explicit."""
        data = self.model_dump(mode="json", exclude_none=True)
        return data


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def check_email(value: str) -> str:
    """An email address, or ValueError saying why not (signups, and email verifications' `email`)."""
    from kyc.signals.email import parse      # kyc.signals imports this module

    # The signals' cached parse: an address is validated once, here and in its signals.
    if parse(value) is None:
        try:
            validate_email(value, check_deliverability=False, allow_quoted_local=True)
        except EmailNotValidError as exc:
            raise ValueError(f"not an email address: {exc}") from None
    return value


class SignupInput(_Input):
    account_id: AccountId
    email: Annotated[StrictStr, Field(max_length=320, json_schema_extra={"format": "email"})]
    ip: Annotated[StrictStr, Field(max_length=64, json_schema_extra=IP_FORMATS)]
    # phone_region precedes phone so the phone check can read it.
    phone_region: Annotated[StrictStr, Field(min_length=2, max_length=2)] | None = None
    phone: Annotated[StrictStr, Field(max_length=32)] | None = None
    user_agent: Annotated[StrictStr, Field(max_length=1024)] | None = None
    client_hints: dict[ShortText, Text] | None = Field(default=None, max_length=32)
    device_id: ShortText | None = None
    timezone: Annotated[StrictStr, Field(max_length=64)] | None = None
    locale: Annotated[StrictStr, Field(max_length=35)] | None = None
    form_fill_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000), INTEGRAL] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _check_ip(value)

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("must be an ISO 3166 two-letter region phonenumbers knows, such as US")
        return value.upper() if value else value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        from kyc.signals.phone import parse      # kyc.signals imports this module

        if value is None:                        # "phone": null, as if absent
            return None
        region = info.data.get("phone_region")
        if parse(value, region) is not None:     # cached: parsed once, here and in its signals
            return value
        try:
            phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException as exc:
            hint = "" if value.startswith("+") or region else " (give E.164 like +14155550123, or add phone_region)"
            raise ValueError(f"not a phone number: {exc._msg}{hint}") from None
        return value


class PaymentMethodInput(_Input):
    """A card as the payment processor describes it: never its number (refused before parsing)."""

    account_id: AccountId
    fingerprint: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    # ASCII digits exactly as sent: no Arabic-Indic digits, no trailing newline stripped away.
    bin: Annotated[StrictStr, StringConstraints(strip_whitespace=False, pattern=r"^[0-9]{6,8}$")]
    last4: Annotated[StrictStr, StringConstraints(strip_whitespace=False, pattern=r"^[0-9]{4}$")] | None = None
    funding: Annotated[StrictStr, Field(pattern=r"^(credit|debit|prepaid|unknown)$")] | None = None
    issuer_country: Annotated[StrictStr, Field(pattern=r"^[A-Za-z]{2}$")] | None = None
    billing_country: Annotated[StrictStr, Field(pattern=r"^[A-Za-z]{2}$")] | None = None
    billing_postal_code: Annotated[StrictStr, Field(max_length=16)] | None = None
    ip: Annotated[StrictStr, Field(max_length=64, json_schema_extra=IP_FORMATS)] | None = None
    device_id: ShortText | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        return None if value is None else _check_ip(value)

    @field_validator("issuer_country", "billing_country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        # Processors send "us" or "US"; signals compare countries as ISO upper case.
        return None if value is None else value.upper()


MAX_FINGERPRINTS = 100
MAX_BULK_REPORTS = 1000
Count = Annotated[StrictInt, Field(ge=0, le=10**12), INTEGRAL]


class ActivityInput(_Input):
    """POST /v1/accounts/{id}/activity: what the gateway served the account since its last report."""

    window_seconds: Annotated[StrictInt, Field(ge=0, le=7 * 86400), INTEGRAL] = 0
    requests: Annotated[StrictInt, Field(ge=0, le=1_000_000_000), INTEGRAL]
    ip: Annotated[StrictStr, Field(max_length=64, json_schema_extra=IP_FORMATS)] | None = None
    api_key_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    tier: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    user_agent: Annotated[StrictStr, Field(max_length=1024)] | None = None
    tokens_in: Count | None = None
    tokens_out: Count | None = None
    models: dict[Annotated[StrictStr, Field(min_length=1, max_length=128)], Count] | None = Field(
        default=None, max_length=100)
    prompt_fingerprints: dict[Annotated[StrictStr, Field(min_length=1, max_length=128)], Count] | None = Field(
        default=None, max_length=MAX_FINGERPRINTS)
    interval_cv: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False, strict=True)] | None = None
    refused: Count | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        return None if value is None else _check_ip(value)

    def at(self) -> datetime:
        """The moment kyc files the report at: the end of its window, except that a window ending
        exactly at a UTC midnight is filed at the last moment of the day it covers (a microsecond
        before), so a gateway reporting hourly on the hour counts 23:00-24:00 in that day, its
        hour 23, as it counts every other hour in the hour before the report."""
        end = super().at()
        if self.window_seconds and not (end.hour or end.minute or end.second or end.microsecond):
            return end - timedelta(microseconds=1)
        return end

    @field_validator("window_seconds", mode="before")
    @classmethod
    def _moment(cls, value: Any) -> Any:
        # Every optional field may be sent as null (the contract: a gateway sends what it has);
        # a window left null is the default, a single moment.
        return 0 if value is None else value


class BulkActivityReport(ActivityInput):
    account_id: AccountId


class BulkActivityInput(BaseModel):
    """POST /v1/activity: 1 to MAX_BULK_REPORTS reports, all or nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reports: list[BulkActivityReport] = Field(min_length=1, max_length=MAX_BULK_REPORTS)


INPUTS: dict[str, type[_Input]] = {"signup": SignupInput, "payment_method": PaymentMethodInput}


class LabelInput(BaseModel):
    """Ops feedback on an account: POST /v1/accounts/{id}/labels."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    label: Annotated[StrictStr, Field(pattern=r"^(fraud|legit)$")]
    note: Annotated[StrictStr, Field(max_length=2000)] | None = None


class ReviewInput(BaseModel):
    """A person's decision on an account: POST /v1/accounts/{id}/review."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    outcome: Annotated[StrictStr, Field(pattern=r"^(allow|block)$")]
    note: Annotated[StrictStr, Field(max_length=2000)] | None = None
    state_version: Annotated[StrictInt, Field(ge=0, description=(
        "The account's state_version the reviewer saw (GET /v1/reviews, GET /v1/accounts/{id}): if the "
        "account changed since (rescored, decided by someone else), 409 account_changed and nothing changes")), INTEGRAL] \
        | None = None


class ClusterActionInput(BaseModel):
    """One decision for every member of a cluster: POST /v1/clusters/{id}/actions."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    action: Annotated[StrictStr, Field(pattern=r"^(block|review|release)$")]
    note: Annotated[StrictStr, Field(max_length=2000)] | None = None


MAX_ROW_ID = 2**63 - 1


class AuditQuery(BaseModel):
    """GET /v1/audit's query: filters and paging (`before`: the previous page's `next`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    limit: Annotated[int, Field(ge=1, le=500)] = 50
    # An audit event's id: at most a 64-bit integer's, as both databases store it (a larger one
    # overflowed SQLite's INTEGER in the query: a 500).
    before: Annotated[int, Field(ge=1, le=MAX_ROW_ID)] | None = None
    action: Annotated[StrictStr, Field(pattern=r"^[a-z]+(\.[a-z_]+)?$", max_length=32)] | None = None
    actor: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    account_id: AccountId | None = None
    cluster_id: Annotated[StrictStr, Field(min_length=1, max_length=40)] | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value):
        return parse_time(value) if isinstance(value, str) else value


# --- refusals ---------------------------------------------------------------------------------

def field_errors(exc: ValidationError, model: type[BaseModel] | None = None) -> dict[str, str]:
    """The contract's `fields` of a validation error. An unknown field of a `model` that takes
    free-form `metadata` (signups, payment methods) says where such data goes; elsewhere (activity
    reports) there is no such place, and the message does not send the caller to one."""
    takes_metadata = model is not None and "metadata" in model.model_fields
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        name = field_name(err["loc"])
        if err["type"] == "extra_forbidden":
            message = ("unknown field; free-form data goes in metadata" if takes_metadata and len(err["loc"]) == 1
                       else "unknown field")
        elif err["type"] == "missing":
            message = "required"
        else:
            message = err["msg"].removeprefix("Value error, ")
        fields.setdefault(name, message)
    return fields


def field_name(loc: tuple) -> str:
    """A field's name in an error: dotted, list positions in brackets (reports[3].requests)."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"
