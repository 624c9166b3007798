"""Secrets and PII handling in one place: keyed hashes, API keys, card-number detection, masking.

Identifiers used for linking are HMAC-SHA256 keyed hashes: without the key, a stolen database
cannot be joined against a list of known emails or phone numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any


def keyed_hash(secret: bytes, kind: str, value: str) -> str:
    """128-bit keyed hash of a normalised identifier; the kind is mixed in so kinds never collide."""
    return hmac.new(secret, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:32]


# --- API keys -------------------------------------------------------------------------------

KEY_PREFIX = "kyc_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys are 256-bit random strings, so a plain SHA-256 is as strong as a slow hash here
    # and keeps authentication off the hot path's budget.
    return hashlib.sha256(key.encode()).hexdigest()


# --- Card numbers (PAN) ---------------------------------------------------------------------

# Digit groups joined by single spaces or dashes: "4111 1111 1111 1111", "4111-1111-...".
# A run written after "+" is an international phone number (E.164 has up to 15 digits, and one
# in ten passes Luhn by chance); card numbers are never written that way.
_DIGIT_RUN = re.compile(r"(?<![\d+])\d+(?:[ -]\d+)*")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _run_has_pan(run: str) -> bool:
    groups = re.split(r"[ -]", run)
    # Any whole-group span of 13-19 digits is a candidate ("ref 12 4111 1111 1111 1111"),
    # but never an arbitrary slice of one long unseparated number (ids, timestamps).
    for i in range(len(groups)):
        digits = ""
        for group in groups[i:]:
            digits += group
            if len(digits) > 19:
                break
            if len(digits) >= 13 and luhn_ok(digits):
                return True
    return False


def _text_has_pan(text: str) -> bool:
    return any(_run_has_pan(match.group()) for match in _DIGIT_RUN.finditer(text))


def redact_card_numbers(text: str) -> str:
    """The text with every digit run that holds a card number (as contains_card_number finds
    them) replaced by "[card]" (log lines)."""
    return _DIGIT_RUN.sub(lambda m: "[card]" if _run_has_pan(m.group()) else m.group(), text)


def contains_card_number(value: Any) -> bool:
    """True if a full card number appears anywhere in a parsed JSON value (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) >= 13 and _text_has_pan(item):
                return True
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if item >= 10**12 and _text_has_pan(str(item)):
                return True
        elif isinstance(item, float):
            if abs(item) >= 1e12 and _text_has_pan(repr(int(item))):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# --- Masking for logs -----------------------------------------------------------------------

def mask_email(email: str | None) -> str:
    if not email or "@" not in email:
        return "-"
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_ip(ip: str | None) -> str:
    if not ip:
        return "-"
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + ":*"
    parts = ip.split(".")
    return ".".join(parts[:2] + ["*", "*"]) if len(parts) == 4 else "*"


def mask_phone(phone: str | None) -> str:
    if not phone:
        return "-"
    return phone[:4] + "***" + phone[-2:] if len(phone) > 6 else "***"
