"""Email facts: syntax, domain, provider canonical form, disposable and free-mail domains."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS
from email_validator import EmailNotValidError, validate_email

from kyc.engine.schema import Field

FIELDS = (
    Field("email.valid", "bool", "The address is syntactically valid (RFC 5321/5322 practical subset).", True),
    Field("email.domain", "str", "Lower-cased ASCII (IDNA) domain.", "gmail.com"),
    Field("email.disposable", "bool", "Domain (or a parent domain) is a known throwaway provider "
                                      "(disposable-email-domains package).", False),
    Field("email.free", "bool", "Domain is a free-mail provider (rules/lists/free_email_domains.txt).", True),
    Field("email.local_length", "int", "Length of the local part.", 8),
    Field("email.local_digits", "int", "Number of digits in the local part.", 2),
    Field("email.plus_tag", "bool", "The local part carries a +tag.", False),
)

# Providers that ignore dots and/or +tags, so one mailbox has many spellings.
_GMAIL = {"gmail.com", "googlemail.com"}
_PLUS_TAG = _GMAIL | {"outlook.com", "hotmail.com", "live.com", "icloud.com", "me.com", "mac.com",
                      "proton.me", "protonmail.com", "pm.me", "fastmail.com"}


def _is_disposable(domain: str) -> bool:
    if domain in DISPOSABLE_DOMAINS:
        return True
    parts = domain.split(".")
    return any(".".join(parts[i:]) in DISPOSABLE_DOMAINS for i in range(1, len(parts) - 1))


def canonical(local: str, domain: str) -> str:
    """The mailbox an address reaches, for linking: Jane.Doe+x@googlemail.com -> janedoe@gmail.com."""
    local = local.lower()
    if domain in _PLUS_TAG:
        local = local.split("+", 1)[0]
    if domain in _GMAIL:
        local = local.replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


@lru_cache(maxsize=65536)
def _parse(address: str) -> tuple[str, str] | None:
    try:
        result = validate_email(address, check_deliverability=False, allow_quoted_local=True)
    except EmailNotValidError:
        return None
    return result.local_part, (result.ascii_domain or result.domain).lower().rstrip(".")


def email_signals(address: str | None, free_domains: frozenset) -> dict[str, Any]:
    if not address:
        return {}
    parsed = _parse(address)
    if parsed is None:
        return {"valid": False}
    local, domain = parsed
    return {
        "valid": True,
        "domain": domain,
        "disposable": _is_disposable(domain),
        "free": domain in free_domains,
        "local_length": len(local),
        "local_digits": sum(ch.isdigit() for ch in local),
        "plus_tag": "+" in local,
    }


def email_identifiers(address: str | None) -> list[tuple[str, str]]:
    parsed = _parse(address) if address else None
    if parsed is None:
        return []
    local, domain = parsed
    return [("email", canonical(local, domain)), ("email_domain", domain)]
