"""The one small interface signals use for lookups that need history: velocity counts.

The SQL implementation answers from the sightings table; it runs inside the caller's
transaction, so a refused or failed evaluation records nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Protocol

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from kyc.models import Sighting

WINDOWS: dict[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}

Key = tuple[str, str]          # (kind, keyed hash)


class Store(Protocol):
    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        """Per key and window: distinct accounts seen with it in (at - window, at], this one included."""

    def record(self, keys: Iterable[Key], at: datetime, account_id: str, evaluation_id: str) -> None:
        """Remember that the account showed these identifiers at this event time."""


class SqlStore:
    def __init__(self, session: Session):
        self.session = session

    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        result = {key: {w: 1 for w in WINDOWS} for key in keys}
        if not keys:
            return result
        longest = max(WINDOWS.values())
        columns = [
            func.count(func.distinct(case((Sighting.occurred_at > at - span, Sighting.account_id))))
            for span in WINDOWS.values()
        ]
        query = (
            select(Sighting.kind, Sighting.value_hash, *columns)
            .where(or_(*(and_(Sighting.kind == k, Sighting.value_hash == h) for k, h in keys)))
            .where(Sighting.occurred_at > at - longest, Sighting.occurred_at <= at)
            .where(Sighting.account_id != account_id)
            .group_by(Sighting.kind, Sighting.value_hash)
        )
        for kind, value_hash, *counts in self.session.execute(query):
            result[(kind, value_hash)] = {w: c + 1 for w, c in zip(WINDOWS, counts)}
        return result

    def record(self, keys: Iterable[Key], at: datetime, account_id: str, evaluation_id: str) -> None:
        self.session.add_all(
            Sighting(kind=k, value_hash=h, account_id=account_id, evaluation_id=evaluation_id, occurred_at=at)
            for k, h in keys
        )
