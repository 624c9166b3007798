"""How an identity provider signs its webhooks: hex HMAC-SHA256 of the raw body with the
provider's secret, in X-Signature. kyc/api/webhooks.py checks the signature before it parses
anything, then the timestamp and the event; replays are refused by event id
(kyc/verification/service.py).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The X-Signature value for a body: hex HMAC-SHA256 (a "sha256=" prefix is also accepted)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()
