"""Activity reports from the API gateway, recorded in the caller's transaction.

Each report is kept as sent, its identifiers (IP, API key id, prompt fingerprints) as keyed
hashes, and added to the account's day of totals (one row per account and UTC day, which the
usage signals read). A day's first report records how long the account had been silent before
it (dormant_days: more than KYC_DORMANT_DAYS is a wake-up, the account.woke_up signal), its
trailing baseline and first use, and the day of its latest wake for lockstep (woke_on: this day if
it woke, or is the account's first use AGED_FIRST_USE_DAYS or more after signup; else carried from
the day before), so that nothing later reads the older days again.

A batch (the bulk endpoint; the single report is a batch of one) costs a fixed number of
statements whatever its size: lock the accounts, read their touched days, read the history of
the days it starts, then write days, reports and accounts, each in one statement.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import bindparam, exists, func, literal, select, true, union_all
from sqlalchemy.orm import Session

from kyc.db import write_lock
from kyc.errors import UnknownAccounts
from kyc.inputs import ActivityInput
from kyc.models import Account, ActivityDay, ActivityReport, Cluster, ClusterMember, utcnow
from kyc.persist import fetch, fetch_in_order, in_list, insert_rows, update_rows, upsert_rows
from kyc.security import KeyedHashes
from kyc.signals.network import network_of
from kyc.signals.usage import BASELINE_DAYS, HOURS, hour_of
from kyc.usage.lockstep import AGED_FIRST_USE_DAYS, BEGAN_WITHIN, record_uses, watching_began

MAX_DAY_FINGERPRINTS = 100      # prompt templates kept per account and day: the most used


@dataclass
class Recorded:
    """What recording one report changed: the answer's facts, and the account's day after it."""

    account_id: str
    day: date
    requests_today: int
    last_seen_at: datetime
    dormant_days: int
    woke_up: bool
    usage_day: dict[str, Any] = field(repr=False, default_factory=dict)


_A = Account.__table__
_D = ActivityDay.__table__
# With each account its cluster's size (the riskier-usage check reads a cluster's facts only for
# accounts in a cluster of more than one): one statement fewer a call.
_CLUSTER_SIZE = (select(Cluster.size).join(ClusterMember, ClusterMember.cluster_id == Cluster.id)
                 .where(ClusterMember.account_id == _A.c.id).scalar_subquery().label("cluster_size"))
_CLUSTER_ID = (select(ClusterMember.cluster_id).where(ClusterMember.account_id == _A.c.id).scalar_subquery()
               .label("cluster_id"))
_LOCK_ACCOUNTS = (select(_A.c.id, _A.c.first_seen_at, _A.c.last_seen_at, _A.c.state_version, _A.c.decision,
                         _A.c.subjects, _CLUSTER_SIZE, _CLUSTER_ID)
                  .where(in_list(_A.c.id, "ids")).order_by(_A.c.id).with_for_update())
_DAYS = (select(*_D.c).where(in_list(_D.c.account_id, "ids"),
                             in_list(_D.c.day, "days")).with_for_update())
# The days a new day's baseline reads (the trailing window), and the first use of accounts
# whose window holds none (a day's row carries the account's first use forward). One
# statement, one round trip: the window's days (in_window true), and for accounts with none in
# it, the first use their latest earlier day carries (in_window false).
# The window's end is tested as `(day < until) IS TRUE` (the same rows: day is never NULL) so that
# only its start bounds an index scan. Why: a generic plan takes a range between two parameters
# for 0.5% of the table, and on a table of up to ~100,000 days (a new deployment's first months)
# read every account's days of the window through ix_activity_days_day, filtering on the account,
# instead of the accounts' own days through the primary key: 3,000 accounts of 30 days, 13.2 ms
# against 0.29 ms (EXPLAIN ANALYZE of the generic plan), at each new day's first report.
_IN_WINDOW = (_D.c.day >= bindparam("since")) & (_D.c.day < bindparam("until")).is_(true())
_EARLIER = _D.alias("earlier")
_WINDOWED = _D.alias("windowed")
_HISTORY = union_all(
    select(_D.c.account_id, _D.c.day, _D.c.requests, func.coalesce(_D.c.first_used_at, _D.c.first_at).label("used"),
           _D.c.woke_on, literal(True).label("in_window"))
    .where(in_list(_D.c.account_id, "ids"), _IN_WINDOW),
    select(_D.c.account_id, _D.c.day, _D.c.requests, func.coalesce(_D.c.first_used_at, _D.c.first_at),
           _D.c.woke_on, literal(False))
    .where(in_list(_D.c.account_id, "ids"),
           _D.c.day == select(func.max(_EARLIER.c.day)).where(_EARLIER.c.account_id == _D.c.account_id,
                                                              _EARLIER.c.day < bindparam("since")).scalar_subquery(),
           ~exists().where(_WINDOWED.c.account_id == _D.c.account_id, _WINDOWED.c.day >= bindparam("since"),
                           (_WINDOWED.c.day < bindparam("until")).is_(true()))))
_DAY_VALUES = ("requests", "first_at", "last_at", "dormant_days", "last_ip_hash", "refused", "tokens_in", "tokens_out",
               "hours", "cv_sum", "cv_requests", "models", "fingerprints", "tier", "baseline", "history_days",
               "first_used_at", "woke_on", "networks")
_REPORT_COLUMNS = ("account_id", "occurred_at", "window_seconds", "requests", "refused", "ip_hash", "api_key_hash",
                   "tier", "user_agent", "tokens_in", "tokens_out", "models", "prompt_fingerprints", "interval_cv",
                   "received_at")


_KNOWN = select(_A.c.id).where(in_list(_A.c.id, "ids"))


def unknown_accounts(conn, account_ids: Sequence[str]) -> set[str]:
    """Which of `account_ids` kyc does not know (one read; for a refusal that names them all)."""
    ids = sorted(set(account_ids))
    return set(ids) - set(conn.scalars(_KNOWN, {"ids": ids})) if ids else set()


def record_reports(session: Session, reports: Sequence[tuple[str, ActivityInput]], *, secret: bytes,
                   dormancy_threshold: int, hashes: KeyedHashes | None = None
                   ) -> tuple[list[Recorded], dict[str, Any]]:
    """Record (account id, report) pairs: one Recorded per report, in order, and each account's
    row as locked before the reports (id, first_seen_at, last_seen_at, state_version, decision,
    subjects, its cluster's size and id: cluster_size, cluster_id). UnknownAccounts (and nothing
    written) if any names an account kyc does not know."""
    write_lock(session)
    # Once per identifier in the batch (a report's IP is hashed for its day and for itself, a
    # template for the day, its use and the report; `hashes`, shared with the batch's linking).
    hashed = hashes or KeyedHashes(secret)

    ids = sorted({account_id for account_id, _ in reports})
    times = [inp.at() for _, inp in reports]
    keys = {(account_id, at.date()) for (account_id, _), at in zip(reports, times)}
    # The accounts locked, then their days read (after the lock: what a report of the same
    # account committed meanwhile is seen), in one round trip on PostgreSQL (fetch_in_order).
    locked, day_rows = fetch_in_order(session, [(_LOCK_ACCOUNTS, {"ids": ids}),
                                                (_DAYS, {"ids": ids, "days": sorted({d for _, d in keys})})])
    accounts = {row.id: row for row in locked}
    unknown = [i for i, (account_id, _) in enumerate(reports) if account_id not in accounts]
    if unknown:
        raise UnknownAccounts(unknown)
    days = {(row.account_id, row.day): row._asdict() for row in day_rows}
    held_days: dict[str, list[dict[str, Any]]] = defaultdict(list)      # account -> its days in `days`
    for row in days.values():
        held_days[row["account_id"]].append(row)
    new = sorted(k for k in keys if k not in days)
    history = _history(session, new)
    seen = {a: accounts[a].last_seen_at for a in ids}
    versions = {a: accounts[a].state_version or 0 for a in ids}
    results: list[Recorded] = []
    rows: list[dict[str, Any]] = []
    uses: dict[tuple[str, date, str], int] = {}
    watched: list[date | None] = []                 # kyc's first day of usage, read once if needed
    for (account_id, inp), at in zip(reports, times):
        key = (account_id, at.date())
        day = days.get(key)
        woke_up = False
        if day is None:
            # The day's first report: the silence it ended counts from the account's last
            # sighting (a signup, a payment method or earlier usage).
            gap = max(0, (at - seen[account_id]).days)
            woke_up = gap > dormancy_threshold
            if woke_up:
                versions[account_id] += 1        # account.woke_up can change an entitlement
            # The day of the latest wake, for lockstep (activity_days.woke_on): this one's if it ended a
            # dormancy or is the account's first use after it aged (AGED_FIRST_USE_DAYS), else carried.
            # A first use in kyc's own first days of usage is where kyc began watching (as a start on a
            # template is: kyc.usage.lockstep), not the account's: a gateway's existing customers all
            # show their "first" use then.
            earlier = [row for row in held_days[account_id] if row["day"] < key[1]]
            first_use = history[key][2] is None and not earlier       # no use before this day
            aged = first_use and gap >= AGED_FIRST_USE_DAYS
            if aged:
                if not watched:
                    watched.append(watching_began(session))
                aged = watched[0] is not None and key[1] > watched[0] + timedelta(days=BEGAN_WITHIN)
            day = days[key] = _new_day(account_id, key[1], at, gap, history[key],
                                       woke_on=key[1] if woke_up or aged else _carried_wake(earlier, history[key]))
            held_days[account_id].append(day)
        _add(day, inp, at, hashed)
        if inp.prompt_fingerprints:
            mask = window_hours(at, inp.window_seconds)
            for fingerprint in inp.prompt_fingerprints:
                use = (hashed("prompt", fingerprint), key[1], account_id)
                uses[use] = uses.get(use, 0) | mask
        seen[account_id] = max(seen[account_id], at)
        results.append(Recorded(account_id, key[1], day["requests"], seen[account_id], day["dormant_days"], woke_up,
                                day))
        rows.append(_report_row(account_id, inp, at, hashed))
    record_uses(session, uses, started=frozenset(new))
    touched = [days[k] for k in sorted({(r.account_id, r.day) for r in results})]
    changed = [a for a in ids if (seen[a], versions[a]) != (accounts[a].last_seen_at, accounts[a].state_version or 0)]
    # Each one statement on PostgreSQL (kyc.persist.insert_rows says why).
    upsert_rows(session, _D, touched, keys=("account_id", "day"), replace=_DAY_VALUES)
    insert_rows(session, ActivityReport.__table__, rows, _REPORT_COLUMNS)
    update_rows(session, _A, [{"id": a, "last_seen_at": seen[a], "state_version": versions[a]} for a in changed],
                keys=("id",))
    for result in results:
        result.last_seen_at = seen[result.account_id]
    return results, accounts


def _carried_wake(earlier: list[dict[str, Any]], history: tuple | None) -> date | None:
    """The latest wake a new day carries forward: its latest earlier day's, of those the batch
    holds (`earlier`: a batch may start an account's days out of order) and the one stored before
    (`history`, from _history)."""
    found = [(row["day"], row.get("woke_on")) for row in earlier]
    if history is not None and history[3] is not None:
        found.append(history[3])
    return max(found, key=lambda day_wake: day_wake[0])[1] if found else None


def _history(session: Session, new: list[tuple[str, date]]
             ) -> dict[tuple[str, date], tuple[float, int, datetime | None, tuple[date, date | None] | None]]:
    """For each (account, day) about to be started: the trailing baseline (mean requests per day
    over the BASELINE_DAYS days before it, since first use), the days it covers, the
    account's first use before it (None: never used), and its latest earlier day read with that
    day's latest wake (day, woke_on; None: no earlier day read)."""
    if not new:
        return {}
    ids = sorted({a for a, _ in new})
    since = min(d for _, d in new) - timedelta(days=BASELINE_DAYS)
    until = max(d for _, d in new)
    window: dict[str, list] = defaultdict(list)
    first_use: dict[str, datetime] = {}
    wakes: dict[str, list[tuple[date, date | None]]] = defaultdict(list)
    for account_id, day, requests, used, woke_on, in_window in fetch(session, _HISTORY, {"ids": ids, "since": since,
                                                                                         "until": until}):
        if in_window:
            window[account_id].append((day, requests))
        wakes[account_id].append((day, woke_on))
        first_use[account_id] = min(first_use.get(account_id, used), used)
    out = {}
    for account_id, day in new:
        used = first_use.get(account_id)
        lo = day - timedelta(days=BASELINE_DAYS)
        before = [(d, n) for d, n in window.get(account_id, ()) if lo <= d < day]
        start = max(lo, used.date()) if used is not None else day
        covered = max(0, (day - start).days)
        total = sum(n for _, n in before)
        latest = max(((d, w) for d, w in wakes.get(account_id, ()) if d < day), default=None)
        out[(account_id, day)] = (total / covered if covered else 0.0, covered, used, latest)
    return out


def _new_day(account_id: str, day: date, at: datetime, gap: int,
             history: tuple[float, int, datetime | None, Any] | None, *, woke_on: date | None) -> dict[str, Any]:
    baseline, covered, used, _ = history or (0.0, 0, None, None)
    return {"account_id": account_id, "day": day, "requests": 0, "first_at": at, "last_at": at, "dormant_days": gap,
            "last_ip_hash": None, "refused": 0, "tokens_in": 0, "tokens_out": 0, "hours": [0] * HOURS, "cv_sum": 0.0,
            "cv_requests": 0, "models": {}, "fingerprints": {}, "tier": None, "baseline": baseline,
            "history_days": covered, "first_used_at": min(used, at) if used else at, "woke_on": woke_on,
            "networks": 0}


def _add(day: dict[str, Any], inp: ActivityInput, at: datetime, hashed: Callable[[str, str], str]) -> None:
    """Add one report to its day's totals (in place)."""
    latest = at >= day["last_at"]
    day["requests"] += inp.requests
    day["first_at"], day["last_at"] = min(day["first_at"], at), max(day["last_at"], at)
    day["first_used_at"] = min(day["first_used_at"] or at, at)
    if inp.ip:
        if latest or day["last_ip_hash"] is None:
            day["last_ip_hash"] = hashed("ip", inp.ip)
        network = network_of(inp.ip)
        if network is not None:
            # The hash its linking computes too (report_identifiers: hashed once for both).
            day["networks"] = (day.get("networks") or 0) | network_bit(hashed("ip_prefix", network))
    if inp.tier and (latest or day["tier"] is None):
        day["tier"] = inp.tier
    day["refused"] += inp.refused or 0
    day["tokens_in"] += inp.tokens_in or 0
    day["tokens_out"] += inp.tokens_out or 0
    day["hours"] = spread(list(day["hours"] or [0] * HOURS), at, inp.window_seconds, inp.requests)
    if inp.interval_cv is not None and inp.requests:
        day["cv_sum"] += inp.interval_cv * inp.requests
        day["cv_requests"] += inp.requests
    if inp.models:
        models = dict(day["models"] or {})
        for model, n in inp.models.items():
            models[model] = models.get(model, 0) + n
        day["models"] = models
    if inp.prompt_fingerprints:
        prints = dict(day["fingerprints"] or {})
        for fingerprint, n in inp.prompt_fingerprints.items():
            h = hashed("prompt", fingerprint)
            prints[h] = prints.get(h, 0) + n
        if len(prints) > MAX_DAY_FINGERPRINTS:
            prints = dict(sorted(prints.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_DAY_FINGERPRINTS])
        day["fingerprints"] = prints


# The buckets of activity_days.networks: a BigInteger's 63 bits (PostgreSQL's is signed). Distinct
# networks hashed to one bit each count as the bits set: k networks set 63 * (1 - (62/63)^k) bits on
# average, 3.9 for 4, 9.3 for 10, 20.1 for 24 (a day of hourly proxy exits); the count only
# needs to tell one or two networks from many.
NETWORK_BUCKETS = 63


def network_bit(network_hash: str) -> int:
    """The bucket of a network's keyed hash (hex), as a bit of activity_days.networks."""
    return 1 << (int(network_hash[:12], 16) % NETWORK_BUCKETS)


def spread(hours: list[int], at: datetime, window_seconds: int, requests: int) -> list[int]:
    """Add a report's requests to the UTC hours (h:00, h+1:00] of its day that its window
    (at - window, at] covers, in proportion to the overlap (whole requests; the rounding goes to the last hour).
    A window reaching back before the day's midnight is spread over its part within the day."""
    midnight = datetime(at.year, at.month, at.day, tzinfo=at.tzinfo)
    end = (at - midnight).total_seconds()
    start = max(0.0, end - window_seconds)
    last = hour_of(at)                  # hours are (h:00, h+1:00], as windows are
    if window_seconds <= 0 or last <= int(start // 3600):
        hours[last] += requests
        return hours
    span = end - start
    given = 0
    for hour in range(int(start // 3600), last):
        share = int(requests * (min(end, (hour + 1) * 3600) - max(start, hour * 3600)) / span)
        hours[hour] += share
        given += share
    hours[last] += requests - given
    return hours


def window_hours(at: datetime, window_seconds: int) -> int:
    """The UTC hours of its day a report's window (at - window, at] covers, as a bit mask."""
    return sum(1 << h for h, n in enumerate(spread([0] * HOURS, at, window_seconds, HOURS * 3600)) if n)


def _report_row(account_id: str, inp: ActivityInput, at: datetime, hashed: Callable[[str, str], str]
                ) -> dict[str, Any]:
    return {
        # The report as the gateway sent it (`at` is where it is filed: ActivityInput.at).
        "account_id": account_id, "occurred_at": inp.occurred_at or at, "window_seconds": inp.window_seconds,
        "requests": inp.requests,
        "refused": inp.refused, "ip_hash": hashed("ip", inp.ip) if inp.ip else None,
        "api_key_hash": hashed("api_key", inp.api_key_id) if inp.api_key_id else None,
        "tier": inp.tier, "user_agent": inp.user_agent, "tokens_in": inp.tokens_in, "tokens_out": inp.tokens_out,
        "models": inp.models,
        "prompt_fingerprints": ({hashed("prompt", f): n for f, n in inp.prompt_fingerprints.items()}
                                if inp.prompt_fingerprints else None),
        "interval_cv": inp.interval_cv, "received_at": utcnow(),
    }
