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
)


def account_signals(first_seen_at: datetime | None, at: datetime, dormant_days: int | None,
                    dormancy_threshold: int) -> dict[str, Any]:
    """`dormant_days`: the gap recorded with the latest activity day (None: no activity yet)."""
    age = max(0, (at - first_seen_at).days) if first_seen_at else 0
    gap = dormant_days or 0
    return {"age_days": age, "dormant_days": gap, "woke_up": gap > dormancy_threshold}
