"""The account's days of usage, read back: for the usage signals and the account's dormancy."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from kyc.models import ActivityDay, ClusterMember
from kyc.persist import in_list
from kyc.signals.usage import cluster_usage_signals, usage_signals
from kyc.usage.lockstep import NO_LOCKSTEP, SHARED, lockstep_facts, woken

_DAY = ActivityDay.__table__
# The latest day the account was served: a day the gateway refused it everything (it was held)
# tells nothing new of its usage, and reading it would let a rescore forget the evidence that
# held the account (a farm held on the day it woke would be released the next day).
_LATEST_DAY = (select(*_DAY.c).where(_DAY.c.account_id == bindparam("account_id"), _DAY.c.day <= bindparam("until"),
                                     _DAY.c.requests > 0)
               .order_by(_DAY.c.day.desc()).limit(1))
_FAR = date(9999, 12, 31)
CLUSTER_READ = 5000          # members' days read for the cluster facts (a bounded index scan)
_M = ClusterMember.__table__
_MINE = _M.alias("mine")
_MEMBER_DAYS = (select(_DAY.c.requests, _DAY.c.tier, _DAY.c.hours, _DAY.c.dormant_days)
                .select_from(_M.join(_DAY, (_DAY.c.account_id == _M.c.account_id) & (_DAY.c.day == bindparam("day")))))
_CLUSTER_DAYS = _MEMBER_DAYS.where(_M.c.cluster_id == select(_MINE.c.cluster_id).where(
    _MINE.c.account_id == bindparam("account_id")).scalar_subquery()).limit(CLUSTER_READ)
_DAYS_OF_CLUSTER = _MEMBER_DAYS.where(_M.c.cluster_id == bindparam("cluster_id")).limit(CLUSTER_READ)
# Each account's latest day of served usage (latest_days).
_LATEST = (select(_DAY.c.account_id, func.max(_DAY.c.day).label("day"))
           .where(in_list(_DAY.c.account_id, "ids"), _DAY.c.requests > 0).group_by(_DAY.c.account_id).subquery())
_LATEST_DAYS = select(*_DAY.c).join(_LATEST, (_DAY.c.account_id == _LATEST.c.account_id) & (_DAY.c.day == _LATEST.c.day))


def latest_day(session: Session, account_id: str, until: date | None = None) -> dict[str, Any] | None:
    """The account's latest day of served usage on or before `until` (None: its latest of all)."""
    row = session.execute(_LATEST_DAY, {"account_id": account_id, "until": until or _FAR}).mappings().one_or_none()
    return dict(row) if row is not None else None


def latest_days(conn, account_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each account's latest day of served usage, for many accounts in one query (a rescore
    chunk); accounts without usage are absent."""
    if not account_ids:
        return {}
    return {row["account_id"]: dict(row) for row in conn.execute(_LATEST_DAYS, {"ids": account_ids}).mappings()}


def lockstep_wanted(runtime, account_id: str, day: dict[str, Any], at) -> tuple[str, date, bool] | None:
    """What lockstep_facts needs for the account's `day` as of `at`: only on at's own day, and
    only when it holds enough prompt templates to share (or any, on the day the account woke:
    usage.woke_together); None otherwise."""
    woke = woken(day.get("woke_on"), day["day"])
    templates = len(day.get("fingerprints") or ())
    if day["day"] == at.date() and (templates >= SHARED or (woke and templates)):
        return (account_id, day["day"], woke)
    return None


def latest_lockstep(runtime, session: Session, days: dict[str, dict[str, Any]], adopted_by: date
                    ) -> dict[tuple[str, date], dict[str, Any]]:
    """The lockstep facts of accounts' latest days of usage (latest_days) as a rescore reads them,
    as of each day's latest report with the adopters known by `adopted_by`: for a rescore chunk,
    in one lockstep_facts call. Why: read account by account, each read every use of the
    templates its group shares that day, and a cluster's rescore read its group once per member:
    400 accounts in lockstep on 15 templates, 75 ms of CPU an account, 82% of it here."""
    wanted = [w for account_id, day in days.items()
              if (w := lockstep_wanted(runtime, account_id, day, day["last_at"])) is not None]
    return lockstep_facts(session, wanted, popular=runtime.config.usage_popular_prompt,
                          adopted_by=adopted_by) if wanted else {}


def cluster_days(session: Session, cluster_id: str, day: date) -> list[dict[str, Any]]:
    """The days of usage of a cluster's members on `day` (up to CLUSTER_READ), as usage_facts reads
    them for an account of the cluster: a rescore chunk reads them once for its accounts of one
    cluster (kyc.scoring.accounts.Chunk), not once an account (a cluster of 400 in lockstep, 400
    rows read 400 times: 27% of its rescore's CPU)."""
    return [dict(r) for r in session.execute(_DAYS_OF_CLUSTER, {"cluster_id": cluster_id, "day": day}).mappings()]


class ClusterDaysOnce:
    """cluster_days, each (cluster, day) read once: what a batch of accounts (a rescore chunk, a
    bulk call's riskier-usage check) reads for its accounts of one cluster."""

    def __init__(self) -> None:
        self._read: dict[tuple[str, date], list[dict[str, Any]]] = {}

    def __call__(self, session: Session, cluster_id: str, day: date) -> list[dict[str, Any]]:
        key = (cluster_id, day)
        if key not in self._read:
            self._read[key] = cluster_days(session, cluster_id, day)
        return self._read[key]


def usage_facts(runtime, session: Session, account_id: str, day: dict[str, Any], at, first_seen_at, *,
                lockstep: dict[tuple[str, date], dict[str, Any]] | None = None,
                adopted_by: date | None = None, members: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The usage signals of an account as of `at` from its latest day of usage at or before it,
    with the lockstep facts on at's own day (kyc.usage.lockstep; `lockstep`: read already for a
    batch, by lockstep_wanted or latest_lockstep, read here if the account's are not in it;
    `adopted_by`: a later day whose adopters count, for a rescore) and its cluster's (`members`:
    its cluster's days of at's day, read already by cluster_days; [] when the caller knows the
    account is a cluster of one, whose cluster facts are its own; None: read here)."""
    facts = usage_signals(day, at, first_seen_at, runtime.tiers.daily_quotas)
    wanted = lockstep_wanted(runtime, account_id, day, at)
    if wanted is not None:
        found = lockstep.get(wanted[:2]) if lockstep is not None else None
        if found is None:
            found = lockstep_facts(session, [wanted], popular=runtime.config.usage_popular_prompt,
                                   adopted_by=adopted_by)[wanted[:2]]
        facts.update(found)
    elif day["day"] == at.date():
        facts.update(NO_LOCKSTEP)
    if day["day"] == at.date():
        if members is None:
            members = [dict(r) for r in session.execute(_CLUSTER_DAYS, {"day": day["day"], "account_id": account_id})
                       .mappings()]
        members = members or [day]
        facts.update(cluster_usage_signals(members, at, runtime.tiers.daily_quotas, runtime.config.dormant_days))
    return facts
