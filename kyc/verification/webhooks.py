"""How an identity provider signs its webhooks: HMAC-SHA256 of the raw body with the
provider's secret, in X-Signature (hex, as kyc signs; base64 and a "sha256=" prefix accepted).
kyc/api/webhooks.py checks the signature before it parses anything, then the timestamp and the
event; replays are refused by event id (kyc/verification/service.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_HEADER = "X-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The X-Signature value for a body: hex HMAC-SHA256 (a "sha256=" prefix is also accepted)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_matches(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether an X-Signature header signs `body`: the MAC in hex (either case) or base64, with
    or without a "sha256=" prefix, as providers write it. Both are compared in constant time,
    even when the header is absent, so timing never tells a missing from a wrong signature."""
    given = (header or "").strip().removeprefix("sha256=")
    mac = hmac.new(secret, body, hashlib.sha256).digest()
    as_hex = hmac.compare_digest(mac.hex().encode(), given.lower().encode())
    as_base64 = hmac.compare_digest(base64.b64encode(mac), given.encode())
    return bool(given) and (as_hex or as_base64)
