"""One-time codes: 6 random digits, stored only as an HMAC, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

CODE_DIGITS = 6


def new_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def hash_code(secret: bytes, verification_id: str, code: str) -> str:
    # Keyed and bound to the verification: a leaked table cannot be brute-forced offline
    # (1,000,000 codes) without the key, and one hash never matches another verification.
    return hmac.new(secret, f"code\x00{verification_id}\x00{code}".encode(), hashlib.sha256).hexdigest()


def code_matches(secret: bytes, verification_id: str, code: str, stored_hash: str | None) -> bool:
    if not stored_hash:
        return False
    return hmac.compare_digest(hash_code(secret, verification_id, code), stored_hash)
