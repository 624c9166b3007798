"""Lockstep: accounts that act together, read from the prompt templates they use and when.

CopyCatch (Beutel et al., WWW 2013) finds groups of users acting on the same set of pages in
the same time window; SynchroTrap (Cao et al., CCS 2014) groups accounts whose timestamped
actions match. Here an action is a prompt template (the gateway's prompt_fingerprints, kept as
keyed hashes) used in some UTC hours of a day. Two accounts act in lockstep on a day when they
share at least SHARED templates, in a common hour, counting only templates that are not
popular that day: a template more than KYC_USAGE_POPULAR_PROMPT accounts used (a popular
tool's system prompt, sent by thousands of unrelated customers) tells nothing about who acts
together, as a super-node links nobody in the identity graph. What a *group* shares that
almost nobody else does is what counts. A burst of newcomers never makes its own template
popular (as a velocity key's popularity leaves out its last day): half or more of the day's
accounts on it began on it that day or the day before (prompt_days.began), and it stays
uncommon. Counted alone, a farm twenty times KYC_USAGE_POPULAR_PROMPT (as 25,000 accounts are
against 1,000) made its own templates popular within its first hours and went free: `kyc simulate
--usage` with KYC_USAGE_POPULAR_PROMPT=20 (its 400 farm accounts), seed 6161, served the farm
100.00% of what it meant to send; with newcomers read, 3.71% (as at 1,000); on seed 9898, not
looked at before, 99.92% and 3.54%; legitimate requests denied 0.00% in all four. (A held
account sends no templates, so a farm caught in its first hour never reaches the count: 3,000
farm accounts at the default threshold were held either way.)

The facts (usage.lockstep_accounts, usage.lockstep_woke): how many other accounts are in
lockstep with this one on the day, and how many of those are woken: woke from a dormancy
(KYC_DORMANT_DAYS) that day or the day before (WOKE_WITHIN): a farm's accounts wake together, all
of them, and a wake in a day's last hour is one the next day too. usage.lockstep_addresses: from
how many addresses the group (this account included) acted that day, each account's last of the
day: a farm's accounts behind residential proxies, one address each; a course's participants in
their lab session, or an office's staff, behind one NAT address. A tool's users share its
templates too, and some of them come back from a break on any given day: what tells the farm
apart is the share of the group that woke (rules compare lockstep_woke with lockstep_accounts,
and read usage.woke_together_share), not a count of wakers alone.

The pairwise test is slow against a careful farm: an account sending a request an hour, each
on one template drawn from a shared set, needs many hours before it holds three templates in
common with twenty others. The group is seen sooner (CopyCatch's view: many accounts on one set
of items within one window): usage.woke_together counts, for an account woken (on the day it
woke and the next), the other accounts woken too that used any of its uncommon templates that day.
Waking is rare and a template nobody popular shares is rare, so both together are a group
almost nobody else belongs to; from its first request the farm account's group is the farm.
Where the group acts from tells a farm too: usage.woke_together_roaming counts those of them that
used ROAMING_NETWORKS networks or more that day. A farm paced as people are (its requests jittered,
spread over the day) is no machine to interval_cv, but behind residential proxies each account takes
a new exit every hour or so, and the whole group roams; people back from a break work from home or
the office, and the few who roam (a phone on the move, a job on a new cloud address each run) are
a small share of any group of them. usage.woke_together_addresses is where the woken group acted
from (as usage.lockstep_addresses for the lockstep group): a small farm, too few for the rules that
ask twenty, is told by a machine pace from an address per account, where a team's scripts run from
its office. A farm that keeps one exit a day (a sticky session) does not roam, and a paced one is
then told from people by nothing here on its first day (`kyc simulate --usage-farm-sticky-exits`;
rules/signup.yaml, woke_together_on_rare_templates, says what was tried).
Its later waves are told by whom they follow: usage.earlier_adopters counts the accounts that began
on a woken account's templates before the day, and usage.earlier_adopters_held those of them kyc
holds now. A farm's next wave wakes on the templates of its earlier waves, held; people back from a
break take up templates whose earlier users are served (a tool's launch users, held as a group, are
a few of its users once it has grown past them).

Sharing uncommon templates in the same hours at a machine pace is also what a mid-size agent
tool's users do (a few hundred developers, the tool's handful of system prompts, all day): an
outside test found 600 of 600 of them held for review by the lockstep count alone. What tells
the farm apart is CopyCatch's time window applied to when each account *began* on the
templates: a farm's accounts are set going together, a tool's users adopt it one or two a day
over weeks. usage.lockstep_began_together counts, of the lockstep group, the accounts that
began on the templates they share with this one within BEGAN_WITHIN days of the day this one
began on them (each side's earliest start on those templates, kept in prompt_starts); rules
compare it with usage.lockstep_accounts, and with usage.lockstep_adopters: the accounts that had
begun by the day on the shared template most accounts began on, used that day or not. Today's
group alone is not enough: an account the gateway refuses sends no templates, so each account held
shrinks the group, and a tool's next adopters then made up most of it (`kyc simulate --usage`,
seed 6161: its adopters held six days running, 32 of 600; read against its adopters, 14 of 600
from its first four days). A start in kyc's own first days of usage (BEGAN_WITHIN days after the
first day activity_days holds) is where kyc began watching, not where the account began: put in
front of a gateway, kyc first sees every account's templates on its first days, so a tool's
existing users would all have "begun together" then, for good. Such starts are left-censored:
they count for no pair, unless the account signed up on or after kyc's first day of usage (kyc then
saw every use it made, so its start is its own). Censoring every start of those days let a farm that
signed up and queried in a fresh kyc's first day go free: 30 accounts, signed up an hour before, on
twelve rare templates at a machine pace from an address each, were none of them held in 30 hours
(with kyc watching usage a week before, all 30 from their sixth hour; tests/usage/test_lockstep.py).
The cost: a tool's users who all sign up and begin on it the same day are held as its launch
adopters are in a kyc that has watched for longer (below). Two limits: a farm that pre-warms its accounts on its
templates at staggered times over weeks looks like a tool's users to this test (the rules that
read waking, above, and the identity graph remain for it); and a tool's first days, when most of
its users began within a day or two of each other, look like a farm's. Those first users are held
only until the tool grows past twice their number: a held account sends nothing that would
re-evaluate it, so the daily rescore takes the accounts the gateway refused the day before (kyc.rescore.runs,
selector "refused"), and a rescore counts the adopters known now, not those of the day that held
it. A farm's templates gain no adopters but the farm's, so its accounts stay held. A farm that sets
going more accounts on its templates later, in waves or later the same day, does not release the
first ones either: of the adopters begun on the day read again or since, those kyc holds now count
for none (_HELD_SINCE). Before, its later waves counted as the tool's growth: `kyc simulate --usage
--usage-farm-human-pace --usage-farm-wake-days 3 --usage-farm-sticky-exits --seed 4646` ended the
week with 6 of its 400 accounts allowed, then none; and waking within hours (no
--usage-farm-wake-days), the rest of the farm begun later that day ended it with 15 allowed, now none
(17.09% of what it meant to send served, now 13.76%; seed 1919, not looked at before, 16.20% and 13
allowed, now 14.23% and none). The cost: a tool's launch adopters, held as a group, are released
once the tool has more than twice as many adopters kyc does not hold (their own group counted among
them before): at five newcomers a day, after ten days instead of five. `kyc simulate --usage` holds
about as many of its agent tool's users at some time (seed 4646: 35 of 600, as before; seed 1919, 37
instead of 36; seed 2626, not looked at before either, 15 as before, its default variant unchanged,
the farm served 3.58%), and all are allowed at the week's end. A later wave no larger than the ones
held before it is not held by lockstep_farm_waking on its own day (counted live, the held waves are
among everyone who took up the templates); the other usage rules read it as any group. (The usage
rules hold for review; a person's or a cluster action's block stays: kyc.scoring.decide.)
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from kyc.models import Account, ActivityDay, PromptDay, PromptStart, PromptUse
from kyc.persist import in_list, insert_rows, merge_prompt_uses, postgres, update_rows, upsert_rows

SHARED = 3
BEGAN_WITHIN = 1            # days between two accounts' starts on shared templates that count as together
# An account counts as woken on the day of its latest wake and the next (activity_days.woke_on): a
# farm that wakes at 23:00 UTC sends one hour's templates on its wake day, too few to show its group;
# read on that day only, its accounts had woken for that hour, and the group was free from midnight
# on (60 accounts, one template an hour each, woken at 23:00: 19 held at midnight, none by 21:00).
# Tried: woke_together also counting the users of the account's templates the day before (after
# midnight a woken group's new day holds few uses). 59 accounts woken at 22:00 UTC, refused once
# held, were served 412 requests instead of 528 over 30 hours, but `kyc simulate --usage` held more of
# the agent tool's launch adopters (seed 6161: 44 of 600 instead of 36; seed 4343: 58 instead of 41).
# Reverted.
WOKE_WITHIN = 1
# An account that used this many networks (/24, /64) or more in a day is roaming that day
# (usage.woke_together_roaming): a person works from home and from the office, two; an account behind a
# rotating residential proxy takes a new exit each hour, three in its first three hours. A farm paced as
# people are, waking over three days, on a new exit an hour: `kyc simulate --usage --usage-farm-human-pace
# --usage-farm-wake-days 3 --seed 4646` served it 24.49% without the roaming test, 12.20% at four
# networks, 9.13% at three (tuned there); on seeds not looked at before, 5858 and 7272, 10.80% and
# 9.81% (3434, before: 31.44%). Legitimate requests denied 0.00% in all.
# Some honest accounts roam too (a job on a new cloud address each run, a phone on the move all day):
# the rules read the share of a woken group that roams, not an account's own count.
ROAMING_NETWORKS = 3
# A first use of the API this many days or more after the account was last seen (its signup) is a
# wake for lockstep too, however short of KYC_DORMANT_DAYS: farms register slowly and let their
# accounts age before using them, at a steady drip over weeks, so most of a farm's accounts are
# younger than KYC_DORMANT_DAYS when it wakes. Read at that length alone, 40 accounts signed up
# one a day over the 40 days before they woke together (9 of them dormant longer than 30 days), at a
# machine pace on two of three shared templates each in their first hour, were none of them held
# then; with this, 33 (all but those signed up in the week before: tests/usage/test_lockstep.py).
# Not account.woke_up (a tier's gate): a person trying the API a week after signing up is no
# dormancy. A first use in kyc's own first days of usage is where kyc began watching
# (kyc.usage.reports.record_reports, by watching_began), as a start is below.
AGED_FIRST_USE_DAYS = 7


def woken(woke_on: date | None, day: date) -> bool:
    """Whether an account whose latest wake was on `woke_on` counts as woken on `day`."""
    return woke_on is not None and day - timedelta(days=WOKE_WITHIN) <= woke_on <= day

_U, _P, _D, _S, _A = (PromptUse.__table__, PromptDay.__table__, ActivityDay.__table__, PromptStart.__table__,
                      Account.__table__)
_HELD = select(_U.c.value_hash, _U.c.day, _U.c.account_id, _U.c.hours).where(
    in_list(_U.c.account_id, "ids"), in_list(_U.c.day, "days"))
# A batch's accounts' uncommon templates of a day (with how many accounts used each), the uses
# of their least used templates that day, then the day's uses of the accounts found there, each
# with its account's dormancy: three statements for a whole batch (lockstep_facts). Read one
# account at a time, they were one or two statements a report whose day held SHARED templates
# or more: a bulk call of 1,000 steady reports of accounts holding a few templates each day went
# from 1,926 statements and 1,679 ms of CPU to 9 and 764 (in process, PostgreSQL, load ~3).
# Each use with the day its account began on the template (prompt_starts, by its primary key).
_STARTED = (_S.c.value_hash == _U.c.value_hash) & (_S.c.account_id == _U.c.account_id)
# Where kyc began watching: its first day of usage (one step of ix_activity_days_day), read once
# by each _MINE (an uncorrelated subquery), which also returns it for the starts' censoring below.
_WATCHED_SINCE = select(func.min(_D.c.day)).scalar_subquery()


def watching_began(session: Session) -> date | None:
    """kyc's first day of usage (None: none yet), read alone (record_reports' aged first uses)."""
    return session.scalar(select(_WATCHED_SINCE))


# A template is popular on a day when more than `popular` accounts used it and fewer than half as
# many began on it that day or the day before: a burst of newcomers never makes its own template
# popular (as a velocity key's popularity leaves out its last day). Starts in kyc's first days
# are where kyc began watching (left-censored, below): there the count alone decides.
_YESTERDAY = _P.alias("prompt_days_before")
_NEWCOMERS = _P.c.began + func.coalesce(_YESTERDAY.c.began, 0)
_UNCOMMON = or_(_P.c.accounts <= bindparam("popular"),
                and_(_NEWCOMERS * 2 >= _P.c.accounts, _WATCHED_SINCE < bindparam("watched_before")))
_MINE = (select(_U.c.account_id, _U.c.value_hash, _U.c.hours, _P.c.accounts, _S.c.day, _WATCHED_SINCE)
         .select_from(_U.join(_P, (_P.c.value_hash == _U.c.value_hash) & (_P.c.day == _U.c.day))
                      .outerjoin(_YESTERDAY, (_YESTERDAY.c.value_hash == _U.c.value_hash)
                                 & (_YESTERDAY.c.day == bindparam("yesterday")))
                      .outerjoin(_S, _STARTED))
         .where(in_list(_U.c.account_id, "accounts"), _U.c.day == bindparam("day"), _UNCOMMON))
_DAYS_USES = (select(_U.c.account_id, _U.c.value_hash, _U.c.hours, _D.c.woke_on, _S.c.day, _D.c.last_ip_hash,
                     _D.c.networks)
              .select_from(_U.outerjoin(_D, (_D.c.account_id == _U.c.account_id) & (_D.c.day == _U.c.day))
                           .outerjoin(_S, _STARTED))
              .where(_U.c.day == bindparam("day")))
_USES = _DAYS_USES.where(in_list(_U.c.value_hash, "hashes"))
_THEIRS = _DAYS_USES.where(in_list(_U.c.account_id, "accounts"))
# How many accounts had begun on each template by the day: counted on prompt_starts' primary key
# (value_hash, account_id), one statement for the batch's templates shared in lockstep, read only
# when some account of the batch is in lockstep (a farm, a tool's users, a company). It grows with
# the templates' adopters: 50 templates of 5,000 adopters each counted in 20 to 160 ms on
# PostgreSQL (EXPLAIN ANALYZE, a bitmap scan of the key and the rows' days; by the machine's load
# and whether the rows had been read since they were written), 5 of 600 each in 1-4 ms.
# By day begun, for how many began near this account's own start (lockstep_adopters_together).
_ADOPTERS = (select(_S.c.value_hash, _S.c.day, func.count()).where(in_list(_S.c.value_hash, "hashes"),
                                                                   _S.c.day <= bindparam("by"))
             .group_by(_S.c.value_hash, _S.c.day))
# A day read again later (a rescore: `adopted_by`) counts the adopters begun on it or since, but not
# those kyc holds now: a tool that grew by itself releases its launch adopters, while a farm that wakes
# in waves on the same templates (or sets more accounts going later the same day), each held in turn,
# does not release its first. Those begun on the day itself still count as begun together with it
# (lockstep_adopters_together): held, they did. Read apart from _ADOPTERS and subtracted, so that
# _ADOPTERS stays a read of prompt_starts alone (no join to accounts for every adopter), and only in a
# rescore (`adopted_by` after the day).
HELD = ("review", "block")
_HELD_SINCE = (select(_S.c.value_hash, _S.c.day, func.count())
               .select_from(_S.join(_A, _A.c.id == _S.c.account_id))
               .where(in_list(_S.c.value_hash, "hashes"), _S.c.day >= bindparam("day"), _S.c.day <= bindparam("by"),
                      _A.c.decision.in_(HELD))
               .group_by(_S.c.value_hash, _S.c.day))
# Which of some accounts kyc holds now (an account's own start, counted out with those held, is no
# adopter of its own twice).
_HELD_NOW = select(_A.c.id).where(in_list(_A.c.id, "ids"), _A.c.decision.in_(HELD))
# Of the starts in kyc's first days (left-censored), those of accounts signed up on or after its
# first day of usage, which count (read only when an account's own start is near those days); as
# above, of the starts after the day, not those of accounts held now.
_ADOPTERS_WATCHED = (select(_S.c.value_hash, _S.c.day, func.count())
                     .select_from(_S.join(_A, _A.c.id == _S.c.account_id))
                     .where(in_list(_S.c.value_hash, "hashes"), _S.c.day <= bindparam("by"),
                            _S.c.day <= bindparam("censored_to"), _A.c.first_seen_at >= bindparam("watched_from"),
                            or_(_S.c.day <= bindparam("day"), _A.c.decision.not_in(HELD)))
                     .group_by(_S.c.value_hash, _S.c.day))
# Which of some accounts signed up on or after kyc's first day of usage.
_WATCHED_FROM_SIGNUP = select(_A.c.id).where(in_list(_A.c.id, "ids"), _A.c.first_seen_at >= bindparam("watched_from"))
# For a woken account's templates: how many accounts began on each before the day, and how many of
# those kyc holds now (usage.earlier_adopters, usage.earlier_adopters_held). Read only for accounts
# woken that day with others (woke_together: a wake ends a dormancy, and few wake with others on the
# same uncommon templates), on those templates.
_EARLIER_ADOPTERS = (select(_S.c.value_hash, func.count(), func.count().filter(_A.c.decision.in_(HELD)))
                     .select_from(_S.join(_A, _A.c.id == _S.c.account_id))
                     .where(in_list(_S.c.value_hash, "hashes"), _S.c.day < bindparam("day"))
                     .group_by(_S.c.value_hash))
_READ_CHUNK = 1000


_USE_COLUMNS = ("value_hash", "day", "account_id", "hours")
# The facts of an account in no group that day (lockstep_facts starts each from these).
NO_LOCKSTEP = {"lockstep_accounts": 0, "lockstep_woke": 0, "lockstep_began_together": 0, "lockstep_adopters": 0,
               "lockstep_adopters_together": 0, "lockstep_addresses": 0, "woke_together": 0}


def _held_now(session: Session, ids: set[str]) -> set[str]:
    """Which of `ids` kyc holds now (HELD)."""
    ordered, held = sorted(ids), set()
    for i in range(0, len(ordered), _READ_CHUNK):
        held.update(session.scalars(_HELD_NOW, {"ids": ordered[i:i + _READ_CHUNK]}))
    return held


def _earlier_adopters(session: Session, day: date, woken_templates: dict[str, set[str]],
                      began: dict[str, dict[str, date]], kept: set[tuple[str, str]],
                      out: dict[tuple[str, date], dict[str, Any]]) -> None:
    """usage.earlier_adopters and usage.earlier_adopters_held of the accounts woken on `day` (account
    -> its uncommon templates that day), into `out`: of the template most other accounts began on
    before the day (the first by name of as many), those others, and how many of them kyc holds now."""
    if not woken_templates:
        return
    hashes = sorted({h for templates in woken_templates.values() for h in templates})
    counts: dict[str, tuple[int, int]] = {}
    for i in range(0, len(hashes), _READ_CHUNK):
        for value_hash, n, held in session.execute(_EARLIER_ADOPTERS,
                                                   {"day": day, "hashes": hashes[i:i + _READ_CHUNK]}):
            counts[value_hash] = (n, held)
    # An account's own start before the day (it woke the day before) is no adopter of its own.
    held_now = _held_now(session, {a for a, templates in woken_templates.items()
                                   if any((a, h) in kept and began[a][h] < day for h in templates)})

    def others(account_id: str, h: str) -> tuple[int, int]:
        n, held = counts.get(h, (0, 0))
        if (account_id, h) in kept and began[account_id][h] < day:
            n, held = n - 1, held - (account_id in held_now)
        return n, held

    for account_id, templates in woken_templates.items():
        # max keeps the first of as many: the template first by name.
        n, held = max((others(account_id, h) for h in sorted(templates)), key=lambda counted: counted[0])
        out[(account_id, day)].update(earlier_adopters=n, earlier_adopters_held=held)


def hours_mask(hours: list[int] | None) -> int:
    return sum(1 << h for h, n in enumerate(hours or ()) if n)


def record_uses(session: Session, uses: dict[tuple[str, date, str], int],
                started: frozenset[tuple[str, date]] = frozenset()) -> None:
    """Record (template hash, day, account) -> hours mask, in the caller's transaction (the
    accounts are locked by it, so no other transaction writes their rows meanwhile); a template's
    first use by an account on a day counts the account in its popularity, and its day is the
    account's start on the template (prompt_starts) unless it began earlier. `started`: the
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
        starts: dict[tuple[str, str], date] = {}
        for row in new:
            key = (row["value_hash"], row["account_id"])
            starts[key] = min(starts.get(key, row["day"]), row["day"])
        kept = {(h, a): d for h, a, d in session.execute(
            select(_S.c.value_hash, _S.c.account_id, _S.c.day).where(
                in_list(_S.c.account_id, "ids"), in_list(_S.c.value_hash, "hashes")),
            {"ids": sorted({a for _, a in starts}), "hashes": sorted({h for h, _ in starts})})}
        began = Counter((h, d) for (h, a), d in starts.items() if (h, a) not in kept or d < kept[(h, a)])
        counts = [{"value_hash": h, "day": d, "accounts": n, "began": began[(h, d)]}
                  for (h, d), n in sorted(Counter((row["value_hash"], row["day"]) for row in new).items())]
        insert_rows(session, _U, new, _USE_COLUMNS)
        upsert_rows(session, _P, counts, keys=("value_hash", "day"), add=("accounts", "began"))
        upsert_rows(session, _S, [{"value_hash": h, "account_id": a, "day": d} for (h, a), d in sorted(starts.items())],
                    keys=("value_hash", "account_id"), earliest=("day",))
    update_rows(session, _U, grown, keys=("value_hash", "day", "account_id"))


def at_least(n: int, sets) -> int:
    """The bits set in at least `n` (1 or more) of `sets` (Python ints as sets of accounts)."""
    levels = [0] * n                        # levels[j]: the bits seen in more than j of the sets so far
    for bits in sets:
        for j in range(n - 1, 0, -1):
            levels[j] |= levels[j - 1] & bits
        levels[0] |= bits
    return levels[n - 1]


class _DayGroup:
    """The accounts lockstep_facts read for one day, as sets held in the bits of Python ints (bit i:
    the i-th account), so that what one account shares with every other is a few operations on
    whole sets, not a loop over the others. Why: compared pair by pair, a farm's accounts are each
    other's candidates, so the work grew with the square of the farm's accounts that used its
    templates that day (a farm of 25,000 reported in calls of 1,000: 25,000,000 pairs a call). A
    farm of 1,000 woken together, reported hourly in one bulk call of its 1,000 reports (three of
    fifteen shared templates each an hour, SQLite, in process): lockstep_facts 1.5, 2.7, 3.4, 4.5,
    4.6 s of CPU in its 2nd-6th hours pair by pair, 0.09, 0.13, 0.16, 0.19, 0.20 s on sets; the
    whole call in its 6th hour 5.0 -> 0.75 s. Exact: tests/usage/test_lockstep.py compares the
    facts with the pairwise definition on generated days.

    `used`: account -> template -> hours; `users`: template -> the accounts that used it (both as
    read); `began`: account -> template -> its start; `awake`: the accounts woken; `address`:
    account -> the day's last address; `asked`: the accounts whose facts are wanted."""

    def __init__(self, used: dict[str, dict[str, int]], users: dict[str, list[str]],
                 began: dict[str, dict[str, date]], awake: set[str], address: dict[str, str | None], asked: set[str]):
        self._ids = sorted(set(used) | asked)
        self._index = {a: i for i, a in enumerate(self._ids)}
        self._used, self._users, self._began = used, users, began
        self._all_users: dict[str, int] = {}                       # template -> its users that day
        self._groups: dict[tuple[str, str], dict[Any, int]] = {}   # (template, kind) -> group -> its users
        self._unions: dict[tuple, int] = {}                         # (template, kind, arg) -> _union's
        self.awake = self.bits(awake)
        at: dict[str, int] = {}                                    # address -> the accounts last seen there
        for a in self._ids:
            ip = address.get(a)
            if ip is not None:
                at[ip] = at.get(ip, 0) | self.bit(a)
        self._alone = 0                                            # accounts alone on their address
        self._shared: list[int] = []                               # the accounts of each address of several
        for bits in at.values():
            if bits & (bits - 1):
                self._shared.append(bits)
            else:
                self._alone |= bits

    def bit(self, account_id: str) -> int:
        return 1 << self._index[account_id]

    def bits(self, account_ids) -> int:
        out = 0
        for a in account_ids:
            out |= 1 << self._index[a]
        return out

    def accounts(self, bits: int) -> list[str]:
        out = []
        while bits:
            low = bits & -bits
            out.append(self._ids[low.bit_length() - 1])
            bits ^= low
        return out

    def users_of(self, templates) -> int:
        """Every account that used any of `templates` that day."""
        out = 0
        for h in templates:
            found = self._all_users.get(h)
            if found is None:
                found = self._all_users[h] = self.bits(self._users.get(h, ()))
            out |= found
        return out

    def used_in(self, template: str, mask: int) -> int:
        """The accounts that used `template` in an hour of `mask`."""
        return self._union(template, "hour", mask, lambda hour: hour & mask)

    def began_before(self, sharing: dict[str, int], day: date) -> int:
        """The accounts of each template's set in `sharing` that began on that template before `day`."""
        out = 0
        for h, bits in sharing.items():
            if bits:
                out |= bits & self._union(h, "start", day, lambda start: start < day)
        return out

    def _union(self, template: str, kind: str, arg, wanted) -> int:
        """The template's users of the groups (_users_by) that `wanted` takes, kept by `arg`."""
        key = (template, kind, arg)
        found = self._unions.get(key)
        if found is None:
            found = 0
            for group, bits in self._users_by(template, kind).items():
                if wanted(group):
                    found |= bits
            self._unions[key] = found
        return found

    def _users_by(self, template: str, kind: str) -> dict[Any, int]:
        """The template's users as sets by `kind`: "hour" (each hour it was used in, as its bit of
        the hours mask) or "start" (the day its user began on it)."""
        groups = self._groups.get((template, kind))
        if groups is None:
            groups = self._groups[(template, kind)] = {}
            for o in self._users.get(template, ()):
                bit = 1 << self._index[o]
                if kind == "start":
                    start = self._began[o][template]
                    groups[start] = groups.get(start, 0) | bit
                    continue
                hours = self._used[o][template]
                while hours:
                    low = hours & -hours
                    groups[low] = groups.get(low, 0) | bit
                    hours ^= low
        return groups

    def addresses(self, bits: int) -> int:
        """From how many addresses the accounts of `bits` acted (each account's last of the day)."""
        return (bits & self._alone).bit_count() + sum(1 for shared in self._shared if shared & bits)


def lockstep_facts(session: Session, wanted: list[tuple[str, date, bool]], *, popular: int,
                   adopted_by: date | None = None) -> dict[tuple[str, date], dict[str, Any]]:
    """usage.lockstep_accounts, usage.lockstep_woke and usage.lockstep_began_together of each
    (account, day, woke) in `wanted`, and, for an account woken that day (`woke`), usage.woke_together;
    keyed by (account, day).

    Lockstep: the other accounts that used at least SHARED of the account's uncommon templates
    that day in an hour the account used any of them; how many of those are woken (woken); and how
    many of those began on the templates counted for the pair within BEGAN_WITHIN days of when
    the account did (each side's earliest start on them; a use without a start kept counts as
    begun that day).
    Woke together: the other accounts woken that day that used any of its uncommon templates; and, when
    there are any, the earlier adopters of those templates (usage.earlier_adopters, _earlier_adopters).
    Adopters: the accounts that had begun on the template by the day, or by `adopted_by` when the
    day is read again later (a rescore: what is known now, so a tool's launch adopters held as
    a group are released once the tool has grown past twice them; those begun on the day or since
    that kyc holds now count for none: a farm's later waves are no growth); and of those, the ones that began
    on it within BEGAN_WITHIN days of this account (lockstep_adopters_together: a farm's remnant,
    the rest of it held and silent, began with all of them; a tool's newest adopters did not).

    Who can be in lockstep with an account of k templates is read from its k - SHARED + 1 least
    used ones: another account holding SHARED of the k lacks at most k - SHARED of them, so it
    holds one of those (prefix filtering, as set-similarity joins do). Those templates' users are
    the candidates; their own uses of the day are then read, and what each account shares with
    all of them counted on sets (_DayGroup). Read from
    every user of every template instead, 1,000 steady accounts each on popular (but not too
    popular: ~400 users) templates and their own (bench/activity.py's second phase) read ~22,000
    rows and counted pairs in Python: 114 -> 23 and 149 -> 34 ms of CPU, 330 -> 58 ms wall, for
    1,000 accounts (medians of 24, old and new interleaved in one process, PostgreSQL, 1,000,000
    accounts stored). tests/usage/test_lockstep.py compares it with the pairwise definition on
    generated days."""
    out: dict[tuple[str, date], dict[str, Any]] = {}
    by_day: dict[date, dict[str, bool]] = {}
    watched_since: date | None = None                            # kyc's first day of usage (from _MINE)
    for account_id, day, woke in wanted:
        by_day.setdefault(day, {})[account_id] = woke
        out[(account_id, day)] = dict(NO_LOCKSTEP)
    for day, woke in by_day.items():
        mine: dict[str, dict[str, int]] = {}
        held_by: dict[str, int] = {}                             # template -> accounts that used it that day
        began: dict[str, dict[str, date]] = {}                   # account -> template -> its start on it
        kept: set[tuple[str, str]] = set()                       # (account, template) whose start is kept
        ids = sorted(woke)
        for i in range(0, len(ids), _READ_CHUNK):
            for account_id, value_hash, hours, accounts, start, watched_since in session.execute(
                    _MINE, {"accounts": ids[i:i + _READ_CHUNK], "day": day, "popular": popular,
                            "yesterday": day - timedelta(days=1), "watched_before": day - timedelta(days=BEGAN_WITHIN)}):
                mine.setdefault(account_id, {})[value_hash] = hours
                held_by[value_hash] = accounts
                began.setdefault(account_id, {})[value_hash] = start or day
                if start is not None:
                    kept.add((account_id, value_hash))
        asked = {a: m for a, m in mine.items() if len(m) >= SHARED or woke[a]}
        if not asked:
            continue
        # Every user of a woken account's templates (usage.woke_together counts them), of the others
        # the users of their least used ones.
        prefix = {a: (sorted(m) if woke[a] else
                      sorted(m, key=lambda h: (held_by[h], h))[:max(0, len(m) - SHARED + 1)])
                  for a, m in asked.items()}
        users: dict[str, list[str]] = {}                         # template -> the accounts that used it
        used: dict[str, dict[str, int]] = {}                     # account -> template -> its hours
        awake: set[str] = set()                                  # accounts woken that day (woken)
        address: dict[str, str | None] = {}                       # account -> the day's last activity IP
        roaming: set[str] = set()                                # accounts on ROAMING_NETWORKS or more that day

        def take(rows) -> None:
            for account_id, value_hash, hours, woke_on, start, ip_hash, networks in rows:
                address[account_id] = ip_hash
                if (networks or 0).bit_count() >= ROAMING_NETWORKS:
                    roaming.add(account_id)
                its = used.setdefault(account_id, {})
                if value_hash not in its:
                    users.setdefault(value_hash, []).append(account_id)
                its[value_hash] = hours
                began.setdefault(account_id, {})[value_hash] = start or day
                if woken(woke_on, day):
                    awake.add(account_id)

        hashes = sorted({h for read in prefix.values() for h in read})
        for i in range(0, len(hashes), _READ_CHUNK):
            take(session.execute(_USES, {"day": day, "hashes": hashes[i:i + _READ_CHUNK]}))
        # The candidates' own uses of the day: the users of every asked account's least used templates.
        read = {h for a, m in asked.items() if len(m) >= SHARED for h in prefix[a]}
        others = sorted({o for h in read for o in users.get(h, ())})
        for i in range(0, len(others), _READ_CHUNK):
            take(session.execute(_THEIRS, {"day": day, "accounts": others[i:i + _READ_CHUNK]}))
        censored_to = (watched_since or day) + timedelta(days=BEGAN_WITHIN)   # starts up to it are kyc's own
        group = _DayGroup(used, users, began, awake, address, set(asked))
        roaming_bits = group.bits(roaming)
        shared_in_lockstep: dict[str, set[str]] = {}             # account -> the templates its group shares
        # account -> (its start on what it shares -> the others begun within BEGAN_WITHIN days of it),
        # and the others that began on it in kyc's first days (their start is censored)
        near_sets: dict[str, tuple[list[tuple[date, int]], int]] = {}
        woken_templates: dict[str, set[str]] = {}                # woken account -> its uncommon templates
        for account_id, templates in asked.items():
            facts = out[(account_id, day)]
            me = group.bit(account_id)
            if woke[account_id]:
                peers = group.users_of(templates) & ~me
                facts["woke_together"] = (peers & group.awake).bit_count()
                facts["woke_together_share"] = (round(facts["woke_together"] / peers.bit_count(), 4) if peers
                                                else 0.0)
                facts["woke_together_roaming"] = (peers & group.awake & roaming_bits).bit_count()
                facts["woke_together_addresses"] = group.addresses((peers & group.awake) | me)
                if facts["woke_together"]:
                    # Whom a woken group follows; a lone waker (a person back from a break) is no group,
                    # and its templates' adopters are not read (a join to accounts for each of them:
                    # 73-150 ms for 12 templates of 850 adopters each, PostgreSQL, 1,000,000 accounts).
                    woken_templates[account_id] = set(templates)
            if len(templates) < SHARED:
                continue
            mask = 0
            for hours in templates.values():
                mask |= hours
            # Each template's others that used it in an hour this account used any: whoever is in
            # SHARED of those sets or more is in lockstep with it.
            sharing = {h: group.used_in(h, mask) & ~me for h in templates}
            lockstep = at_least(SHARED, sharing.values())
            if not lockstep:
                continue                                         # its facts stay NO_LOCKSTEP's
            shared_in_lockstep[account_id] = {h for h, bits in sharing.items() if bits & lockstep}
            # When each began on what they share (each side's earliest start on the templates shared
            # by the pair): this account's side splits the group by its start, the others' side is
            # read from who began on each template before a day.
            ours_began = began[account_id]
            left, by_ours = lockstep, {}
            for h in sorted(templates, key=ours_began.__getitem__):
                first_here = sharing[h] & left
                if first_here:
                    by_ours[ours_began[h]] = by_ours.get(ours_began[h], 0) | first_here
                    left &= ~first_here
            near = []
            for ours, bits in by_ours.items():
                earlier = group.began_before(sharing, ours - timedelta(days=BEGAN_WITHIN))
                by_then = group.began_before(sharing, ours + timedelta(days=BEGAN_WITHIN + 1))
                bits &= by_then & ~earlier
                if bits:
                    near.append((ours, bits))
            near_sets[account_id] = (near, group.began_before(sharing, censored_to + timedelta(days=1)))
            # Where the group acts from: as many addresses as accounts hides behind proxies (a farm); one
            # or a few shows itself (a class on its campus's address, an office's staff).
            facts.update(lockstep_accounts=lockstep.bit_count(), lockstep_woke=(lockstep & group.awake).bit_count(),
                         lockstep_addresses=group.addresses(lockstep | me))
        _earlier_adopters(session, day, woken_templates, began, kept, out)
        hashes = sorted({h for shared in shared_in_lockstep.values() for h in shared})
        begun: dict[str, dict[date, int]] = {}                   # template -> day begun -> accounts
        held_that_day: Counter = Counter()                       # template -> accounts begun on it that day, held now
        for i in range(0, len(hashes), _READ_CHUNK):
            for value_hash, start, n in session.execute(_ADOPTERS, {"by": max(day, adopted_by or day),
                                                                    "hashes": hashes[i:i + _READ_CHUNK]}):
                begun.setdefault(value_hash, {})[start] = n
            if adopted_by is not None and adopted_by > day:
                # Begun on the day or since and held now: no growth of the template's own (_HELD_SINCE).
                for value_hash, start, n in session.execute(_HELD_SINCE, {"day": day, "by": adopted_by,
                                                                          "hashes": hashes[i:i + _READ_CHUNK]}):
                    if start > day:
                        begun[value_hash][start] -= n
                    else:
                        held_that_day[value_hash] += n
        adopters = {h: sum(days.values()) - held_that_day[h] for h, days in begun.items()}
        # Of the accounts asked about, those begun that day and held now (counted out with the held already).
        held_now = _held_now(session, {a for a, shared in shared_in_lockstep.items()
                                       if any((a, h) in kept and began[a][h] == day for h in shared)}
                             ) if held_that_day else set()

        def other_adopters(account_id: str, h: str) -> int:
            # This account's own kept start is no adopter of its own (if begun that day and held, it was
            # counted out with those held already).
            mine = (account_id, h) in kept and not (account_id in held_now and began[account_id][h] == day)
            return adopters.get(h, 0) - mine

        widest: dict[str, str] = {}
        for account_id, shared in shared_in_lockstep.items():
            # The template most others began on (the first by name of as many).
            widest[account_id] = max(sorted(shared), key=lambda h: other_adopters(account_id, h))
        # A start in kyc's first days is where kyc began watching (left-censored) unless kyc saw the
        # account from its signup on: read for the accounts whose start decides something.
        early_bits = 0
        for near, censored in near_sets.values():
            for _, bits in near:
                early_bits |= bits & censored
        early = sorted(set(group.accounts(early_bits))
                       | {a for a, (near, _) in near_sets.items() if any(ours <= censored_to for ours, _ in near)}
                       | {a for a, h in widest.items() if began[a][h] <= censored_to})
        watched_from = datetime.combine(watched_since or day, time(), timezone.utc)
        signed_since: set[str] = set()
        for i in range(0, len(early), _READ_CHUNK):
            signed_since.update(session.scalars(_WATCHED_FROM_SIGNUP, {"ids": early[i:i + _READ_CHUNK],
                                                                       "watched_from": watched_from}))

        def counts(account_id: str, start: date) -> bool:
            """Whether the account's start counts as where it began (kyc saw it: not censored)."""
            return start > censored_to or account_id in signed_since

        signed_bits = group.bits(signed_since)
        for account_id, (near, censored) in near_sets.items():
            # An other's start counts when it is after kyc's first days (not `censored`) or kyc saw it
            # from its signup on.
            out[(account_id, day)]["lockstep_began_together"] = sum(
                (bits & (~censored | signed_bits)).bit_count() for ours, bits in near if counts(account_id, ours))
        # The censored starts that count (accounts kyc saw from their signup on), read only when some
        # account's own start that counts is near those days.
        begun_watched: dict[str, dict[date, int]] = {}           # template -> day begun -> such accounts
        if any(counts(a, began[a][h]) and began[a][h] <= censored_to + timedelta(days=BEGAN_WITHIN)
               for a, h in widest.items()):
            for i in range(0, len(hashes), _READ_CHUNK):
                for value_hash, start, n in session.execute(_ADOPTERS_WATCHED, {
                        "by": max(day, adopted_by or day), "day": day, "hashes": hashes[i:i + _READ_CHUNK],
                        "censored_to": censored_to, "watched_from": watched_from}):
                    begun_watched.setdefault(value_hash, {})[start] = n
        for account_id, h in widest.items():
            mine_kept = (account_id, h) in kept
            ours = began[account_id][h]
            near = sum(n for start, n in begun.get(h, {}).items()
                       if abs((start - ours).days) <= BEGAN_WITHIN and start > censored_to)
            near += sum(n for start, n in begun_watched.get(h, {}).items() if abs((start - ours).days) <= BEGAN_WITHIN)
            out[(account_id, day)].update(
                lockstep_adopters=other_adopters(account_id, h),
                lockstep_adopters_together=near - mine_kept if counts(account_id, ours) else 0)
    return out
