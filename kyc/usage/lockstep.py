"""Lockstep: accounts that act together, read from the prompt templates they use and when.

CopyCatch (Beutel et al., WWW 2013) finds groups of users acting on the same set of pages in
the same time window; SynchroTrap (Cao et al., CCS 2014) groups accounts whose timestamped
actions match. Here an action is a prompt template (the gateway's prompt_fingerprints, kept as
keyed hashes) used in some UTC hours of a day. Two accounts act in lockstep on a day when they
share at least SHARED templates, in a common hour, counting only templates that are not
popular that day: a template more than KYC_USAGE_POPULAR_PROMPT accounts used (a popular
tool's system prompt, sent by thousands of unrelated customers) tells nothing about who acts
together, as a super-node links nobody in the identity graph. What a *group* shares that
almost nobody else does is what counts.

The facts (usage.lockstep_accounts, usage.lockstep_woke): how many other accounts are in
lockstep with this one on the day, and how many of those woke from a dormancy that day
(KYC_DORMANT_DAYS): a farm's accounts wake together.

The pairwise test is slow against a careful farm: an account sending a request an hour, each
on one template drawn from a shared set, needs many hours before it holds three templates in
common with twenty others. The group is seen sooner (CopyCatch's view: many accounts on one set
of items within one window): usage.woke_together counts, for an account on the day it woke,
the other accounts that woke that same day and used any of its uncommon templates that day.
Waking is rare and a template nobody popular shares is rare, so both together are a group
almost nobody else belongs to; from its first request the farm account's group is the farm.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from sqlalchemy import bindparam, case, distinct, func, literal, select
from sqlalchemy.orm import Session

from kyc.models import ActivityDay, PromptDay, PromptUse
from kyc.persist import insert_rows, merge_prompt_uses, postgres, update_rows, upsert_rows

SHARED = 3

_U, _P, _D = PromptUse.__table__, PromptDay.__table__, ActivityDay.__table__
_HELD = select(_U.c.value_hash, _U.c.day, _U.c.account_id, _U.c.hours).where(
    _U.c.account_id.in_(bindparam("ids", expanding=True)), _U.c.day.in_(bindparam("days", expanding=True)))
_MINE = (select(_U.c.value_hash, _U.c.hours).join(_P, (_P.c.value_hash == _U.c.value_hash) & (_P.c.day == _U.c.day))
         .where(_U.c.account_id == bindparam("account"), _U.c.day == bindparam("day"),
                _P.c.accounts <= bindparam("popular")))
_others = _U.alias("other")
_NEIGHBOURS = (select(_others.c.account_id)
               .where(_others.c.day == bindparam("day"), _others.c.value_hash.in_(bindparam("mine", expanding=True)),
                      _others.c.account_id != bindparam("account"),
                      _others.c.hours.op("&")(bindparam("hours")) != literal(0))
               .group_by(_others.c.account_id).having(func.count() >= SHARED).subquery())
_LOCKSTEP = (select(func.count(), func.coalesce(func.sum(case((_D.c.dormant_days > bindparam("dormant"), 1), else_=0)), 0))
             .select_from(_NEIGHBOURS.outerjoin(_D, (_D.c.account_id == _NEIGHBOURS.c.account_id)
                                                & (_D.c.day == bindparam("day")))))
_WOKE_TOGETHER = (select(func.count(distinct(_others.c.account_id)))
                  .select_from(_others.join(_D, (_D.c.account_id == _others.c.account_id) & (_D.c.day == _others.c.day)))
                  .where(_others.c.day == bindparam("day"),
                         _others.c.value_hash.in_(bindparam("mine", expanding=True)),
                         _others.c.account_id != bindparam("account"), _D.c.dormant_days > bindparam("dormant")))


_USE_COLUMNS = ("value_hash", "day", "account_id", "hours")


def hours_mask(hours: list[int] | None) -> int:
    return sum(1 << h for h, n in enumerate(hours or ()) if n)


def record_uses(session: Session, uses: dict[tuple[str, date, str], int],
                started: frozenset[tuple[str, date]] = frozenset()) -> None:
    """Record (template hash, day, account) -> hours mask, in the caller's transaction (the
    accounts are locked by it, so no other transaction writes their rows meanwhile); a template's
    first use by an account on a day counts the account in its popularity. `started`: the
    (account, day) pairs whose day of usage the caller's batch begins: a use is only written
    with its day, so they hold none and are not read (one round trip fewer for a day's first
    report, the single report's usual case in bench/activity.py)."""
    if not uses:
        return
    if postgres(session):
        # One statement, no read (kyc.persist.merge_prompt_uses): a steady single report (its
        # day started, its templates used before) 3.47 -> 3.16 and 5.54 -> 5.34 ms wall, 2.81 ->
        # 2.69 and 4.27 -> 4.01 ms CPU (in process, two alternated pairs of 480 reports, load ~1.6).
        merge_prompt_uses(session, [{"value_hash": h, "day": d, "account_id": a, "hours": m}
                                    for (h, d, a), m in sorted(uses.items())])
        return
    earlier = {(h, d, a) for h, d, a in uses if (a, d) not in started}
    held = {(h, d, a): hours for h, d, a, hours in session.execute(
        _HELD, {"ids": sorted({a for _, _, a in earlier}), "days": sorted({d for _, d, _ in earlier})})
        if (h, d, a) in earlier} if earlier else {}
    new = [{"value_hash": h, "day": d, "account_id": a, "hours": m} for (h, d, a), m in uses.items()
           if (h, d, a) not in held]
    grown = [{"value_hash": h, "day": d, "account_id": a, "hours": held[(h, d, a)] | m}
             for (h, d, a), m in uses.items() if (h, d, a) in held and held[(h, d, a)] | m != held[(h, d, a)]]
    # Each one statement on PostgreSQL (kyc.persist.insert_rows says why).
    if new:
        counts = [{"value_hash": h, "day": d, "accounts": n}
                  for (h, d), n in sorted(Counter((row["value_hash"], row["day"]) for row in new).items())]
        insert_rows(session, _U, new, _USE_COLUMNS)
        upsert_rows(session, _P, counts, keys=("value_hash", "day"), add=("accounts",))
    update_rows(session, _U, grown, keys=("value_hash", "day", "account_id"))


def lockstep_facts(session: Session, account_id: str, day: date, *, popular: int, dormant: int,
                   woke: bool = False) -> dict[str, Any]:
    """usage.lockstep_accounts and usage.lockstep_woke of an account on a day, and, when the
    account woke that day (`woke`), usage.woke_together."""
    mine = session.execute(_MINE, {"account": account_id, "day": day, "popular": popular}).all()
    facts = {"lockstep_accounts": 0, "lockstep_woke": 0, "woke_together": 0}
    if woke and mine:
        facts["woke_together"] = int(session.execute(_WOKE_TOGETHER, {
            "day": day, "mine": sorted(h for h, _ in mine), "account": account_id, "dormant": dormant}).scalar_one())
    if len(mine) < SHARED:
        return facts
    hours = 0
    for _, mask in mine:
        hours |= mask
    together, woke_too = session.execute(_LOCKSTEP, {"day": day, "mine": sorted(h for h, _ in mine),
                                                     "account": account_id, "hours": hours, "dormant": dormant}).one()
    facts.update(lockstep_accounts=int(together), lockstep_woke=int(woke_too))
    return facts
