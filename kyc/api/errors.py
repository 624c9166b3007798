"""Errors as the caller sees them: the contract's error body, and the one place where the
domain's errors (kyc/errors.py) become HTTP answers.

Refusals found while reading the request itself (authentication, the body's JSON and fields,
a webhook's signature) are raised as ApiError by the parsing code in kyc/api; everything the
services refuse arrives here as a DomainError and is answered by `answer`.
"""

from __future__ import annotations

from typing import Any

from kyc import errors as domain


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = fields or {}
        self.headers = headers or {}
        self.details = details or {}          # extra members of the error object, e.g. rule errors

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        error.update(self.details)
        return {"error": error}


def invalid(message: str, fields: dict[str, str] | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, fields)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def answer(exc: domain.DomainError) -> ApiError:
    """The contract's answer to a domain error."""
    match exc:
        case domain.NotFound():
            return not_found(exc.kind)
        case domain.UnknownAccounts():
            return invalid("the request names unknown accounts; nothing was recorded",
                           {f"reports[{i}].account_id": "unknown account" for i in exc.indexes})
        case domain.InvalidInput():
            return invalid(str(exc), exc.fields)
        case domain.Throttled():
            return ApiError(429, "rate_limited", str(exc), headers={"Retry-After": str(exc.retry_after)})
        case domain.PhoneRefused():
            return ApiError(400, "phone_refused", str(exc),
                            {"phone": f"{exc.line_type} line type is refused; use a mobile number"})
        case domain.IdempotencyKeyReused():
            return ApiError(409, "idempotency_key_reused", str(exc), {"Idempotency-Key": "used for another body"})
        case domain.WrongProvider():
            return ApiError(409, "wrong_provider", str(exc))
        case domain.AccountChanged():
            return ApiError(409, "account_changed", str(exc), {"state_version": f"now {exc.now}"})
        case domain.PhoneInUse():
            return ApiError(409, "phone_in_use", str(exc), {"phone": "already verified on another account"})
        case domain.VerificationNotPending():
            return ApiError(409, f"verification_{exc.status}", str(exc))
        case domain.WrongVerificationKind():
            return ApiError(409, "no_code" if exc.expected == "code" else f"not_a_{exc.expected}_verification",
                            str(exc))
        case domain.ReplayedEvent():
            return ApiError(409, "replayed_event", str(exc))
        case domain.SendFailed():
            return ApiError(502, "sender_failed", f"{exc}; nothing was started, try again")
        case domain.UnknownRole():
            return invalid(str(exc), {"role": f"one of {', '.join(exc.roles)}"})
    raise TypeError(f"no HTTP answer for {type(exc).__name__}") from exc
