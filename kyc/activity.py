"""Usage the API gateway reports: last seen, requests per account and UTC day, dormancy.

A day's first report records how long the account had been silent before it (dormant_days).
More than KYC_DORMANT_DAYS is a wake-up: the account.woke_up signal, and a rescore.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kyc.models import ActivityDay, lock_existing_account
from kyc.security import keyed_hash


@dataclass(frozen=True)
class ActivityResult:
    account_id: str
    day: date
    requests_today: int
    last_seen_at: datetime
    dormant_days: int
    woke_up: bool


def latest_dormancies(conn, account_ids: list[str]) -> dict[str, int]:
    """The dormancy (whole days) recorded with each account's latest day of activity, for many
    accounts in one query (rescoring a chunk; a live evaluation reads it with the account row,
    kyc.scoring._locked_account); accounts without activity are absent."""
    latest = (select(ActivityDay.account_id, func.max(ActivityDay.day).label("day"))
              .where(ActivityDay.account_id.in_(account_ids)).group_by(ActivityDay.account_id).subquery())
    return dict(conn.execute(
        select(ActivityDay.account_id, ActivityDay.dormant_days)
        .join(latest, (ActivityDay.account_id == latest.c.account_id) & (ActivityDay.day == latest.c.day))
    ).all())


def record_activity(session: Session, account_id: str, at: datetime, requests: int, ip: str | None,
                    secret: bytes, threshold: int) -> ActivityResult:
    """Count the requests and move last-seen, in the caller's transaction (the account row is
    locked, so concurrent reports of one account serialise and the day's row is created once)."""
    account = lock_existing_account(session, account_id)
    day = at.date()
    row = session.execute(
        select(ActivityDay).where(ActivityDay.account_id == account_id, ActivityDay.day == day).with_for_update()
    ).scalar_one_or_none()
    previous = account.last_seen_at
    woke_up = False
    if row is None:
        gap = max(0, (at - previous).days)
        row = ActivityDay(account_id=account_id, day=day, requests=0, first_at=at, last_at=at, dormant_days=gap)
        session.add(row)
        woke_up = gap > threshold
    row.requests += requests
    row.first_at, row.last_at = min(row.first_at, at), max(row.last_at, at)
    if ip:
        row.last_ip_hash = keyed_hash(secret, "ip", ip)
    account.last_seen_at = max(previous, at)
    if woke_up:
        # account.woke_up can change an entitlement (tier conditions read it).
        account.state_version = (account.state_version or 0) + 1
    return ActivityResult(account_id, day, row.requests, account.last_seen_at, row.dormant_days, woke_up)
