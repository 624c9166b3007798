"""Account facts: what kyc knows about the account itself rather than about one input.

Unlike the other families these are read from the account's stored state (first seen, the
latest activity day), so they are computed by the pipeline (kyc/scoring.py) and by the
entitlement check (kyc/tiers.py), both through `account_signals` below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kyc.engine.schema import Field

FIELDS = (
    Field("account.age_days", "int", "Whole days since the account was first seen.", 12),
    Field("account.dormant_days", "int",
          "Whole days without any activity before the account's latest day of activity (0 if none).", 0),
    Field("account.woke_up", "bool",
          "The latest activity came after a dormancy longer than KYC_DORMANT_DAYS.", False),
    Field("account.email_verified", "bool", "The account completed an email verification.", True),
    Field("account.phone_verified", "bool", "The account completed a phone verification.", True),
    Field("account.payment_verified", "bool", "The account's latest payment method was evaluated allow.", False),
    Field("account.document_verified", "bool",
          "An identity provider verified the account holder's document.", False),
)

# The engine reads these to know which verify rules are satisfied (kyc.engine.completed_verifications).
VERIFIED_FIELDS = ("email", "phone", "payment", "document")


def account_signals(first_seen_at: datetime | None, at: datetime, dormant_days: int | None,
                    dormancy_threshold: int, verified: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`dormant_days`: the gap recorded with the latest activity day (None: no activity yet);
    `verified`: the kinds of verification the account has completed."""
    age = max(0, (at - first_seen_at).days) if first_seen_at else 0
    gap = dormant_days or 0
    facts: dict[str, Any] = {"age_days": age, "dormant_days": gap, "woke_up": gap > dormancy_threshold}
    facts.update({f"{kind}_verified": kind in verified for kind in VERIFIED_FIELDS})
    return facts
