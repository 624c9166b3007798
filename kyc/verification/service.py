"""The verification flows. Each function runs in the caller's transaction and either completes
its whole step or raises a domain error of kyc/errors.py (the caller rolls back: nothing
half-written).

Lock order is always account row, then verification row, so concurrent starts, confirms and
webhooks of one account serialise instead of deadlocking, and parallel wrong codes all count.

A verification that completes re-evaluates the account through the pipeline
(scoring.rescore_account, which passes the completed kinds to the engine) and bumps the
account's state_version, since the entitlement's missing verifications changed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kyc.errors import (InvalidInput, NotFound, PhoneInUse, PhoneRefused, ReplayedEvent, Throttled,
                        VerificationNotPending, WrongProvider, WrongVerificationKind)
from kyc.ids import new_id
from kyc.inputs import rfc3339
from kyc.models import (Account, Evaluation, PhoneClaim, Verification, VerificationEvent, WebhookEvent, latest_of,
                        lock_existing_account)
from kyc.persist import claim_phone
from kyc.runtime import Runtime
from kyc.scoring import rescore_account
from kyc.security import keyed_hash, mask_email, mask_phone
from kyc.signals.phone import parse as parse_phone
from kyc.signals.phone import phone_signals
from kyc.verification import CODE_KINDS, payment_verified
from kyc.verification.codes import code_matches, hash_code, new_code
from kyc.verification.senders import Message, make_sender

log = logging.getLogger("kyc.verification")


@dataclass(frozen=True)
class StartRequest:
    kind: str
    email: str | None = None
    phone: str | None = None
    phone_region: str | None = None
    tier: str | None = None
    provider: str | None = None          # document: the only provider whose webhook may decide it


# --- state machine ----------------------------------------------------------------------------

def _event(session: Session, v: Verification, event: str, at: datetime, **detail: Any) -> None:
    session.add(VerificationEvent(verification_id=v.id, account_id=v.account_id, event=event, at=at, detail=detail))


def _finish(session: Session, v: Verification, status: str, at: datetime, reason: str | None = None,
            **detail: Any) -> None:
    """pending -> verified | failed | expired; terminal states never change again."""
    if v.status != "pending":
        raise AssertionError(f"{v.id} is {v.status}, not pending")
    v.status, v.completed_at, v.code_hash = status, at, None
    v.reason = reason
    _event(session, v, status, at, **({"reason": reason} if reason else {}), **detail)
    log.info("verification %s (%s) of account %s: %s%s", v.id, v.kind, v.account_id, status,
             f" ({reason})" if reason else "")


def _verified(runtime: Runtime, session: Session, v: Verification, at: datetime, reason: str | None = None,
              **detail: Any) -> None:
    if v.kind == "phone":
        _claim_phone(runtime, session, v, at)
    _finish(session, v, "verified", at, reason, **detail)
    session.flush()
    rescore_account(runtime, session, v.account_id)
    # Rescoring wrote the account's row with Core statements: read it again.
    account = session.get(Account, v.account_id, populate_existing=True)
    account.state_version = (account.state_version or 0) + 1


def effective_status(v: Verification, now: datetime) -> str:
    return "expired" if v.status == "pending" and now >= v.expires_at else v.status


def verification_body(v: Verification, now: datetime, max_attempts: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "verification_id": v.id, "account_id": v.account_id, "kind": v.kind, "status": effective_status(v, now),
        "expires_at": rfc3339(v.expires_at), "created_at": rfc3339(v.created_at),
        "completed_at": rfc3339(v.completed_at),
    }
    if v.kind in CODE_KINDS:
        body["to"] = mask_email(v.target) if v.kind == "email" else mask_phone(v.target)
        body["attempts_remaining"] = max(0, max_attempts - v.attempts)
    if v.kind == "phone":
        body["line_type"] = v.line_type
    if v.reason:
        body["reason"] = v.reason
    if v.provider:
        body["provider"] = v.provider
    return body


# --- start --------------------------------------------------------------------------------------



def _pending(session: Session, account_id: str, kind: str) -> Verification | None:
    return session.execute(
        select(Verification).where(Verification.account_id == account_id, Verification.kind == kind,
                                   Verification.status == "pending")
        .order_by(Verification.created_at.desc()).limit(1).with_for_update()
    ).scalar_one_or_none()


def start(runtime: Runtime, session: Session, account_id: str, req: StartRequest, now: datetime
          ) -> tuple[Verification, bool]:
    """Start (or, for a pending one, resend / return) a verification. Returns (verification, created)."""
    account = lock_existing_account(session, account_id)
    current = _pending(session, account_id, req.kind)
    if current is not None and now >= current.expires_at:
        _finish(session, current, "expired", now)
        current = None
    if req.kind in CODE_KINDS:
        return _start_code(runtime, session, account, req, current, now)
    if req.kind == "payment":
        return _start_payment(runtime, session, account, current, now)
    if current is not None:              # document: the pending one is still waiting for its provider
        return current, False
    v = _new(session, account, "document", now, now + timedelta(hours=runtime.config.document_ttl_hours),
             provider=req.provider)
    return v, True


def _new(session: Session, account: Account, kind: str, now: datetime, expires_at: datetime, **fields: Any
         ) -> Verification:
    v = Verification(id=new_id("vf"), account_id=account.id, kind=kind, status="pending", attempts=0, sends=0,
                     created_at=now, expires_at=expires_at, **fields)
    session.add(v)
    _event(session, v, "created", now)
    return v


def _start_payment(runtime: Runtime, session: Session, account: Account, current: Verification | None,
                   now: datetime) -> tuple[Verification, bool]:
    created = current is None
    v = current or _new(session, account, "payment", now, now + timedelta(hours=runtime.config.document_ttl_hours))
    if payment_verified(account.subjects):
        latest = latest_of(account.subjects, "payment_method")
        _verified(runtime, session, v, now, evaluation_id=latest["evaluation_id"])
    return v, created


def _signup_input(session: Session, account: Account) -> dict[str, Any]:
    latest = (account.subjects or {}).get("signup")
    if not latest:
        return {}
    evaluation = session.get(Evaluation, latest["evaluation_id"])
    return evaluation.input if evaluation else {}


def _code_target(runtime: Runtime, session: Session, account: Account, req: StartRequest
                 ) -> tuple[str, str, str | None]:
    """(recipient, normalised form for hashing, phone line type); the account's signup values by default."""
    on_file = _signup_input(session, account)
    if req.kind == "email":
        email = req.email or on_file.get("email")
        if not email:
            raise InvalidInput("no email to verify", {"email": "required: the account has no email on file"})
        return email, email.strip().lower(), None
    number = req.phone or on_file.get("phone")
    region = req.phone_region or (None if req.phone else on_file.get("phone_region"))
    if not number:
        raise InvalidInput("no phone number to verify", {"phone": "required: the account has no phone on file"})
    parsed = parse_phone(number, region)
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise InvalidInput("not a valid phone number", {"phone": "not a valid number (give E.164 like +14155550123)"})
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    facts = phone_signals(e164, None, runtime.rules.lists.get("voip_prefixes", frozenset()))
    line_type = "voip" if facts.get("voip") else facts.get("line_type", "unknown")
    return e164, e164, line_type


def _start_code(runtime: Runtime, session: Session, account: Account, req: StartRequest,
                current: Verification | None, now: datetime) -> tuple[Verification, bool]:
    config = runtime.config
    recipient, normalised, line_type = _code_target(runtime, session, account, req)
    target_hash = keyed_hash(config.secret_key, req.kind, normalised)
    if req.kind == "phone":
        _check_phone(runtime, session, account, req.tier, target_hash, line_type)
    _wrong_codes_cap(runtime, session, account.id, req.kind, now)      # no code that could not be checked
    # Throttle on the last code sent to this account for this kind, whichever verification sent it.
    last_sent = session.execute(
        select(Verification.last_sent_at).where(Verification.account_id == account.id, Verification.kind == req.kind,
                                                Verification.last_sent_at.is_not(None))
        .order_by(Verification.last_sent_at.desc()).limit(1)
    ).scalar()
    interval = timedelta(seconds=config.resend_interval_seconds)
    if last_sent is not None and now - last_sent < interval:
        raise _throttled(last_sent + interval - now, "a code was sent moments ago; wait before asking for another")
    if current is not None and current.target_hash == target_hash:
        if current.sends >= config.max_sends:
            raise _throttled(current.expires_at - now, f"at most {config.max_sends} codes per verification")
        v, created = current, False
    else:
        if current is not None:
            _finish(session, current, "expired", now, "superseded by a verification of another "
                                                      f"{'address' if req.kind == 'email' else 'number'}")
        v = _new(session, account, req.kind, now, now, target=recipient, target_hash=target_hash, line_type=line_type)
        created = True
    code = new_code()
    v.code_hash = hash_code(config.secret_key, v.id, code)
    v.sends += 1
    v.last_sent_at = now
    v.expires_at = now + timedelta(seconds=config.code_ttl_seconds)
    session.flush()
    message = Message(v.id, "email" if req.kind == "email" else "sms", recipient, code, v.expires_at,
                      valid_minutes=max(1, config.code_ttl_seconds // 60))
    make_sender(config).send(session, message)
    _event(session, v, "sent", now, channel=message.channel, to=message.masked_recipient, send=v.sends)
    return v, created


def _check_phone(runtime: Runtime, session: Session, account: Account, tier: str | None, target_hash: str,
                 line_type: str | None) -> None:
    refused = runtime.tiers.refused_line_types(tier)
    if line_type in refused:
        raise PhoneRefused(line_type, tier)
    if runtime.config.phone_unique:
        owner = session.execute(select(PhoneClaim.account_id).where(PhoneClaim.target_hash == target_hash)).scalar()
        if owner is not None and owner != account.id:
            raise PhoneInUse()         # early: no code is sent; the claim at confirmation decides races


def _claim_phone(runtime: Runtime, session: Session, v: Verification, at: datetime) -> None:
    """The first account to verify a number owns it (phone_claims). The row is inserted unless
    one exists, then read: of two accounts confirming one number at once, the second insert
    waits for the first to commit and then finds its row (PostgreSQL; SQLite serialises
    writers), so only one can have it. With KYC_PHONE_UNIQUE=false a number is still claimed
    by its first account (so turning uniqueness on later knows who had it first), never refused."""
    claim_phone(session, target_hash=v.target_hash, account_id=v.account_id, verification_id=v.id, claimed_at=at)
    owner = session.execute(select(PhoneClaim.account_id).where(PhoneClaim.target_hash == v.target_hash)).scalar_one()
    if owner != v.account_id and runtime.config.phone_unique:
        raise PhoneInUse()


DAY = timedelta(hours=24)


def _wrong_codes_cap(runtime: Runtime, session: Session, account_id: str, kind: str, now: datetime) -> None:
    """Refuse (Throttled) once the account entered KYC_CODE_MAX_WRONG_PER_DAY wrong codes
    of this kind in the last 24 hours, across all its verifications: a new verification after a
    lockout does not bring fresh attempts. A wrong code is an attempt_failed event, or the failed
    event of the code that exhausted its verification. The caller holds the account's lock, so
    parallel confirmations count in turn."""
    cap = runtime.config.code_max_wrong_per_day
    since = now - DAY
    wrong = session.execute(
        select(VerificationEvent.at).join(Verification, Verification.id == VerificationEvent.verification_id)
        .where(Verification.account_id == account_id, Verification.kind == kind,
               # a code is only checked before it expires: older verifications hold no wrong code in the window
               Verification.last_sent_at > since - timedelta(seconds=runtime.config.code_ttl_seconds),
               VerificationEvent.event.in_(("attempt_failed", "failed")), VerificationEvent.at > since)
        .order_by(VerificationEvent.at)).scalars().all()
    if len(wrong) >= cap:
        # Open again when enough of them are over a day old to fall below the cap.
        raise _throttled(wrong[len(wrong) - cap] + DAY - now,
                         f"{len(wrong)} wrong {kind} codes in 24 hours (at most {cap})")


def _throttled(wait: timedelta, reason: str) -> Throttled:
    return Throttled(reason, retry_after=max(1, math.ceil(wait.total_seconds())))


# --- confirm ------------------------------------------------------------------------------------

def confirm(runtime: Runtime, session: Session, verification_id: str, code: str, now: datetime) -> Verification:
    """Check a code. Wrong codes count (max KYC_CODE_MAX_ATTEMPTS, then failed); a code past its
    expiry moves the verification to expired. The returned verification says which happened."""
    account_id = session.execute(select(Verification.account_id).where(Verification.id == verification_id)).scalar()
    if account_id is None:
        raise NotFound("verification", verification_id)
    lock_existing_account(session, account_id)
    kind = session.execute(select(Verification.kind).where(Verification.id == verification_id)).scalar_one()
    if kind in CODE_KINDS:
        _wrong_codes_cap(runtime, session, account_id, kind, now)
    # Count the attempt first, in one UPDATE: parallel wrong codes all count, on SQLite too,
    # whose SELECT ... FOR UPDATE locks nothing (the UPDATE takes its write lock).
    counted = session.execute(
        update(Verification)
        .where(Verification.id == verification_id, Verification.status == "pending",
               Verification.kind.in_(CODE_KINDS), Verification.expires_at > now)
        .values(attempts=Verification.attempts + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    v = session.execute(select(Verification).where(Verification.id == verification_id).with_for_update()
                        .execution_options(populate_existing=True)).scalar_one()
    if not counted:
        if v.kind not in CODE_KINDS:
            raise WrongVerificationKind(v.id, v.kind, expected="code")
        if v.status != "pending":
            raise VerificationNotPending(v.id, v.status, f"this verification is already {v.status}; start a new one")
        _finish(session, v, "expired", now)
        return v
    if code_matches(runtime.config.secret_key, v.id, code, v.code_hash):
        _verified(runtime, session, v, now, attempts=v.attempts)
    elif v.attempts >= runtime.config.code_max_attempts:
        _finish(session, v, "failed", now, "too many wrong codes", attempts=v.attempts)
    else:
        _event(session, v, "attempt_failed", now, attempts=v.attempts)
    return v


# --- identity-provider decisions ----------------------------------------------------------------

VERIFIED_STATUSES = ("verified", "approved", "passed")
FAILED_STATUSES = ("failed", "declined", "rejected")


def provider_decision(runtime: Runtime, session: Session, provider: str, event_id: str, verification_id: str,
                      status: str, reason: str | None, now: datetime) -> Verification:
    """Apply a signed provider event to a pending document verification, once per event id."""
    seen = session.execute(select(WebhookEvent.event_id).where(WebhookEvent.provider == provider,
                                                               WebhookEvent.event_id == event_id)).scalar()
    if seen is not None:
        raise ReplayedEvent(provider, event_id)
    account_id = session.execute(select(Verification.account_id).where(Verification.id == verification_id)).scalar()
    if account_id is None:
        raise NotFound("verification", verification_id)
    lock_existing_account(session, account_id)
    v = session.execute(select(Verification).where(Verification.id == verification_id).with_for_update()
                        .execution_options(populate_existing=True)).scalar_one()
    if v.kind != "document":
        raise WrongVerificationKind(v.id, v.kind, expected="document")
    if v.provider is not None and v.provider != provider:
        raise WrongProvider(v.id, v.provider, provider)
    current = effective_status(v, now)
    if current != "pending":
        raise VerificationNotPending(v.id, current, f"verification {v.id} is not pending")
    # The primary key (provider, event_id) also refuses a replay racing this one.
    session.add(WebhookEvent(provider=provider, event_id=event_id, verification_id=v.id, received_at=now))
    v.provider = provider
    if status in VERIFIED_STATUSES:
        _verified(runtime, session, v, now, reason, provider=provider, event_id=event_id)
    else:
        _finish(session, v, "failed", now, reason or f"{provider}: {status}", provider=provider, event_id=event_id)
    return v
