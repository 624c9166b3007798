"""Domain errors: what went wrong, as facts (which account, how long to wait, which status).

Services raise these and nothing else for a refusal the caller can act on; they know nothing
of HTTP. kyc/api/errors.py maps each to the contract's answer (status, code, fields, headers)
in one place; the CLI prints their message. An error's message is for a person and names what
was wrong, never the PII that was.
"""

from __future__ import annotations

from collections.abc import Sequence


class DomainError(Exception):
    """Base of the errors below."""


class NotFound(DomainError):
    """No `kind` (account, cluster, verification, API key) with this id."""

    def __init__(self, kind: str, id: str | int):
        super().__init__(f"{kind} {id} not found")
        self.kind, self.id = kind, id


class UnknownAccounts(DomainError):
    """Activity reports (by their position in the request) name accounts kyc does not know;
    nothing was recorded."""

    def __init__(self, indexes: Sequence[int]):
        super().__init__(f"unknown account in report(s) {list(indexes)}")
        self.indexes = list(indexes)


class IdempotencyKeyReused(DomainError):
    """An idempotency key already answered a call with another body (kyc/idempotency.py)."""

    def __init__(self):
        super().__init__("this Idempotency-Key was used for a call with another body; use a new key for a new call")


class UnknownRole(DomainError):
    def __init__(self, role: str, roles: tuple[str, ...]):
        super().__init__(f"unknown role {role!r}: one of {', '.join(roles)}")
        self.role, self.roles = role, roles


class InvalidInput(DomainError):
    """What the caller asked for cannot be done with what kyc holds (no email on file, a phone
    number that is not a number): `fields` maps each field to what is wrong with it."""

    def __init__(self, message: str, fields: dict[str, str]):
        super().__init__(message)
        self.fields = dict(fields)


class Throttled(DomainError):
    """Too many of something; asking again succeeds after `retry_after` whole seconds."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(f"{reason}; retry in {retry_after}s")
        self.reason, self.retry_after = reason, retry_after


class PhoneRefused(DomainError):
    """The tier (or the tier policy when `tier` is None) refuses numbers of this line type."""

    def __init__(self, line_type: str, tier: str | None):
        for_what = f"the {tier} tier" if tier else "the tier policy"
        super().__init__(f"{line_type} numbers cannot be verified under {for_what}")
        self.line_type, self.tier = line_type, tier


class AccountChanged(DomainError):
    """A person decided on what they saw at `seen`; the account has moved on to `now` since
    (a rescoring with new evidence, another reviewer)."""

    def __init__(self, account_id: str, seen: int, now: int):
        super().__init__(f"account {account_id} changed since it was read (state_version {seen}, now {now}); "
                         f"read it again and decide on what it holds now")
        self.account_id, self.seen, self.now = account_id, seen, now


class WrongProvider(DomainError):
    """A document verification sent to one identity provider was decided by another's webhook."""

    def __init__(self, verification_id: str, expected: str, provider: str):
        super().__init__(f"verification {verification_id} was sent to provider {expected}, not {provider}")
        self.verification_id, self.expected, self.provider = verification_id, expected, provider


class PhoneInUse(DomainError):
    """The number is verified on another account (KYC_PHONE_UNIQUE)."""

    def __init__(self) -> None:
        super().__init__("this number is already verified on another account")


class VerificationNotPending(DomainError):
    """The verification already ended (`status`: verified, failed or expired)."""

    def __init__(self, verification_id: str, status: str, message: str):
        super().__init__(message)
        self.verification_id, self.status = verification_id, status


class WrongVerificationKind(DomainError):
    """The step needs a verification of `expected` kind ("code": email or phone; "document")."""

    def __init__(self, verification_id: str, kind: str, expected: str):
        super().__init__(f"a {kind} verification is not completed with a code" if expected == "code"
                         else f"verification {verification_id} is a {kind} verification")
        self.verification_id, self.kind, self.expected = verification_id, kind, expected


class ReplayedEvent(DomainError):
    """A provider's event id that was already received."""

    def __init__(self, provider: str, event_id: str):
        super().__init__("this event id was already received")
        self.provider, self.event_id = provider, event_id


class SendFailed(DomainError):
    """A code could not be sent (the sender is unreachable or refused); nothing was started."""
