"""The one small interface signals use for lookups that need history: velocity counts, and
(SqlHistory, from the sightings and evaluations tables) the distinct values an account or a
device showed and the account's latest evaluation of a subject.

A velocity key is an identifier (kind, keyed hash). For each key a store keeps, per account,
the latest event time at which the account showed it. The count for a window is the number of
accounts whose latest event time lies in (at - window, at], this account included, where `at`
is the evaluation's event time, not the wall clock: a backfilled history posted in event-time
order gives the counts live traffic would have. An event posted late (older than accounts
already recorded) does not count the accounts whose latest event time is after it.

Counts saturate: other accounts are counted up to COUNT_CAP, so a super-hot key (gmail.com, a
carrier NAT) costs a bounded index scan in SQL and a bounded sorted set in Redis.

Two backends give identical answers (tests/signals/test_velocity.py runs the same suite on both):
- SqlStore: velocity_marks rows, written inside the caller's transaction.
- RedisStore: one sorted set per key (member = account id, score = latest event time in
  microseconds), written atomically (MULTI) once the caller's transaction commits, trimmed to
  its newest COUNT_CAP + 1 members, expiring a day after the longest window without writes.
  Trimming keeps every count exact up to the cap for any event time at or after the trimmed
  marks; only a query far back in time on a key past the cap (a late backfill of gmail.com)
  can read lower in Redis than in SQL, and both then read in the hundreds at least.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import logging
from functools import lru_cache
from typing import Iterable, Protocol

from redis import exceptions as redis_errors
from redis.commands.core import Script
from sqlalchemy import bindparam, func, literal, null, select, true, union_all
from sqlalchemy.orm import Session

from kyc import metrics
from kyc.persist import fetch, postgres, unnested, upsert_rows
from kyc.models import Evaluation, Sighting, VelocityMark, velocity_kind
from kyc.rescore.requests import after_commit

log = logging.getLogger("kyc.store")

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30),
}
LONGEST = max(WINDOWS.values())
COUNT_CAP = 1000              # other accounts counted per key and window; rules never need more

Key = tuple[str, str]          # (kind, keyed hash)


class Store(Protocol):
    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        """Per key and window: accounts seen with it in (at - window, at], this one included."""

    def distinct_accounts_many(self, requests: list[tuple[list[Key], datetime, str]]
                               ) -> list[dict[Key, dict[str, int]]]:
        """distinct_accounts of many (keys, at, account_id) at once (a rescore chunk)."""

    def record(self, keys: Iterable[Key], at: datetime, account_id: str) -> None:
        """Remember that the account showed these keys at this event time (kept once committed)."""

    def record_many(self, marks: list[tuple[Key, datetime, str]]) -> None:
        """record() of many (key, event time, account) at once."""

    def card_history(self, card: str, at: datetime, window: timedelta, account_id: str, device: Key | None
                     ) -> tuple[int, int | None, dict | None]:
        """For a card being scored: the distinct cards seen in (at - window, at] on the account and
        in the evaluations that showed `device` (None without a device), the card itself counted
        once, seen or not; and the signals of the account's latest signup at or before `at`."""

    def payment_history(self, keys: list[Key], at: datetime, account_id: str, card: str, window: timedelta,
                        device: Key | None) -> tuple[dict[Key, dict[str, int]], tuple[int, int | None, dict | None]]:
        """distinct_accounts and card_history of a payment method, at once."""


class History:
    """payment_history as its two lookups; a store that reads both in one statement overrides it.

    `degraded`: set once a count of this store did not come from its primary source (see
    RedisStore); the pipeline records it as the signal degraded.velocity."""

    degraded = False

    def payment_history(self, keys: list[Key], at: datetime, account_id: str, card: str, window: timedelta,
                        device: Key | None) -> tuple[dict[Key, dict[str, int]], tuple[int, int | None, dict | None]]:
        return self.distinct_accounts(keys, at, account_id), self.card_history(card, at, window, account_id, device)


class SqlHistory(History):
    """The lookups that read the sightings and evaluations tables (written by the pipeline in
    the caller's transaction, whichever backend counts velocity)."""

    session: Session

    def card_history(self, card: str, at: datetime, window: timedelta, account_id: str, device: Key | None
                     ) -> tuple[int, int | None, dict | None]:
        return _card_history(self.session.execute(_CARD_HISTORY, _card_params(card, at, window, account_id, device))
                             .one(), device)


def _card_params(card: str, at: datetime, window: timedelta, account_id: str, device: Key | None) -> dict:
    return {"kind": "card_fingerprint", "current": card, "since": at - window, "at": at, "account_id": account_id,
            "with_kind": device[0] if device else "", "with_hash": device[1] if device else "", "subject": "signup"}


def _card_history(row, device: Key | None) -> tuple[int, int | None, dict | None]:
    on_account, on_device, signup = row
    return (on_account or 0) + 1, (on_device or 0) + 1 if device else None, signup


# Built once with bound parameters: the hot path skips statement construction (most of the
# cost of a lookup) and hits SQLAlchemy's compiled-statement cache.
_S = Sighting.__table__
_ANCHOR = _S.alias("anchor")
_IN_WINDOW = (_S.c.kind == bindparam("kind"), _S.c.value_hash != bindparam("current"),
              _S.c.occurred_at > bindparam("since"), _S.c.occurred_at <= bindparam("at"))
_VALUES_ON_ACCOUNT = select(func.count(func.distinct(_S.c.value_hash))).where(
    *_IN_WINDOW, velocity_kind(_S.c.kind), _S.c.account_id == bindparam("account_id"))
_VALUES_SEEN_WITH = select(func.count(func.distinct(_S.c.value_hash))).where(
    *_IN_WINDOW,
    _S.c.evaluation_id.in_(select(_ANCHOR.c.evaluation_id).where(
        _ANCHOR.c.kind == bindparam("with_kind"), velocity_kind(_ANCHOR.c.kind),
        _ANCHOR.c.value_hash == bindparam("with_hash"),
        _ANCHOR.c.occurred_at > bindparam("since"), _ANCHOR.c.occurred_at <= bindparam("at"))))
_E = Evaluation.__table__
_LATEST_SIGNALS = (
    select(_E.c.signals)
    .where(_E.c.account_id == bindparam("account_id"), _E.c.subject == bindparam("subject"),
           _E.c.occurred_at <= bindparam("at"))
    .order_by(_E.c.occurred_at.desc(), _E.c.created_at.desc()).limit(1)
)
# The three lookups of a payment method, in one round trip.
_CARD_HISTORY = select(_VALUES_ON_ACCOUNT.scalar_subquery(), _VALUES_SEEN_WITH.scalar_subquery(),
                       _LATEST_SIGNALS.scalar_subquery())


def _capped(others: int) -> int:
    return min(others, COUNT_CAP) + 1


def _count_params(keys: list[Key], at: datetime, account_id: str, arrays: bool) -> dict:
    """A count statement's parameters: the keys as two arrays (PostgreSQL) or one pair each."""
    params: dict = {"at": at, "me": account_id, **{f"lo_{w}": at - span for w, span in WINDOWS.items()}}
    if arrays:
        params["kinds"], params["hashes"] = [k for k, _ in keys], [h for _, h in keys]
    else:
        for i, (kind, value_hash) in enumerate(keys):
            params[f"k{i}"], params[f"h{i}"] = kind, value_hash
    return params


def _counts(keys: list[Key], rows) -> dict[Key, dict[str, int]]:
    """Each key's counts per window from a count statement's rows (key index, one count per window)."""
    counts = {row[0]: row[1:] for row in rows}
    return {key: {w: _capped(counts[i][j]) for j, w in enumerate(WINDOWS)} for i, key in enumerate(keys)}


class SqlStore(SqlHistory):
    def __init__(self, session: Session):
        self.session = session

    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        if not keys:
            return {}
        arrays = postgres(self.session)
        statement = _COUNT_EACH_KEY if arrays else _count_statement(len(keys))
        return _counts(keys, fetch(self.session, statement, _count_params(keys, at, account_id, arrays)))

    def payment_history(self, keys: list[Key], at: datetime, account_id: str, card: str, window: timedelta,
                        device: Key | None) -> tuple[dict[Key, dict[str, int]], tuple[int, int | None, dict | None]]:
        """PostgreSQL: one statement (_COUNTS_AND_CARD_HISTORY)."""
        if not (keys and postgres(self.session)):
            return super().payment_history(keys, at, account_id, card, window, device)
        params = {**_count_params(keys, at, account_id, True), **_card_params(card, at, window, account_id, device)}
        rows = self.session.execute(_COUNTS_AND_CARD_HISTORY, params).all()
        card_row = next(row for row in rows if row[0] == -1)
        return _counts(keys, rows), _card_history((card_row[1], card_row[2], card_row[-1]), device)

    def distinct_accounts_many(self, requests: list[tuple[list[Key], datetime, str]]
                               ) -> list[dict[Key, dict[str, int]]]:
        # One statement per evaluation: its count statement is cached per number of keys.
        return [self.distinct_accounts(keys, at, account_id) for keys, at, account_id in requests]

    def record(self, keys: Iterable[Key], at: datetime, account_id: str) -> None:
        self.record_many([(key, at, account_id) for key in keys])

    def record_many(self, marks: list[tuple[Key, datetime, str]]) -> None:
        """record() of many (key, event time, account), each pair's latest time kept: one statement
        on PostgreSQL (kyc.persist.upsert_rows). An activity batch's 4,000 marks cost this process
        41-44 ms of CPU as an executemany (a statement a row), 6.9 as one; a signup's 8 marks
        0.32-0.37 ms, 0.23 (median of 30 and 400 transactions, two runs each way)."""
        latest: dict[tuple[str, str, str], datetime] = {}
        for (kind, value_hash), at, account_id in marks:
            mark = (kind, value_hash, account_id)
            latest[mark] = max(latest.get(mark, at), at)
        # Sorted: concurrent transactions lock the same marks in the same order (no deadlock).
        upsert_rows(self.session, VelocityMark.__table__,
                    [{"kind": k, "value_hash": h, "account_id": a, "last_at": at} for (k, h, a), at in sorted(latest.items())],
                    keys=("kind", "value_hash", "account_id"), latest=("last_at",))


@lru_cache(maxsize=32)
def _count_statement(key_count: int):
    """One round trip, one row per key: the newest COUNT_CAP other accounts in the longest window
    (one bounded index scan), counted per window. Windows nest, so each count is exact up to
    the cap.

    Built once per number of keys and reused with bound parameters: building a statement of
    many sub-selects costs more than running it.
    """
    rows = []
    for i in range(key_count):
        newest = (
            select(VelocityMark.last_at)
            .where(VelocityMark.kind == bindparam(f"k{i}"), VelocityMark.value_hash == bindparam(f"h{i}"),
                   VelocityMark.last_at > bindparam(f"lo_{_LONGEST_NAME}"), VelocityMark.last_at <= bindparam("at"),
                   VelocityMark.account_id != bindparam("me"))
            .order_by(VelocityMark.last_at.desc()).limit(COUNT_CAP).subquery()
        )
        rows.append(select(literal(i).label("key"),
                           *(func.count().filter(newest.c.last_at > bindparam(f"lo_{window}")).label(f"w{j}")
                             for j, window in enumerate(WINDOWS)))
                    .select_from(newest))
    return union_all(*rows) if len(rows) > 1 else rows[0]


_LONGEST_NAME = max(WINDOWS, key=WINDOWS.__getitem__)


def _count_each_key(*more):
    """PostgreSQL: _count_statement's counts for keys passed as two arrays, each key's bounded
    index scan a LATERAL subquery. One short statement for any number of keys: psycopg parses a
    statement's text once only under 4 KB (the union of 8 keys is 6 KB, 0.15 ms per call) and
    prepares it once for every key count. `more`: columns added to each row."""
    keys = unnested("kinds", "hashes", names=("kind", "value_hash"), ordinality="key")
    v = VelocityMark.__table__.alias("v")
    newest = (select(v.c.last_at)
              .where(v.c.kind == keys.c.kind, v.c.value_hash == keys.c.value_hash,
                     v.c.last_at > bindparam(f"lo_{_LONGEST_NAME}"), v.c.last_at <= bindparam("at"),
                     v.c.account_id != bindparam("me"))
              .order_by(v.c.last_at.desc()).limit(COUNT_CAP).lateral("n"))
    return (select(keys.c.key - 1, *(func.count(newest.c.last_at).filter(newest.c.last_at > bindparam(f"lo_{w}"))
                                     for w in WINDOWS), *more)
            .select_from(keys.outerjoin(newest, true())).group_by(keys.c.key))


_COUNT_EACH_KEY = _count_each_key()
# A payment method's counts and card history (PostgreSQL): the counts' rows, then one row of
# key -1 holding the two card counts and, in a last column empty on the other rows, the signup's
# signals (one round trip, and one statement, less per payment method).
_COUNTS_AND_CARD_HISTORY = union_all(
    _count_each_key(null().label("signals")),
    select(literal(-1), _VALUES_ON_ACCOUNT.scalar_subquery(), _VALUES_SEEN_WITH.scalar_subquery(),
           *(literal(0) for _ in range(len(WINDOWS) - 2)), _LATEST_SIGNALS.scalar_subquery()))


class SightingCounts(SqlHistory):
    """Velocity counted from the sightings table: what a RedisStore answers when Redis does not
    answer within its time budget. The pipeline writes every sighting in the scoring transaction
    whichever backend counts velocity, so the database always holds the events Redis counts.

    Each key reads its newest FALLBACK_SCAN sightings in the longest window (one bounded scan of
    ix_sightings_key_time) and counts the distinct other accounts among them per window. For
    events posted in event-time order this is the same count as the marks' up to the cap, as
    long as the newest FALLBACK_SCAN sightings of the key hold COUNT_CAP accounts; a key whose
    accounts show it again and again (one account's many cards on one BIN) can read lower.
    """

    def __init__(self, session: Session):
        self.session = session

    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        if not keys:
            return {}
        return _counts(keys, self.session.execute(_sighting_count_statement(len(keys)),
                                                  _count_params(keys, at, account_id, False)))

    def distinct_accounts_many(self, requests: list[tuple[list[Key], datetime, str]]
                               ) -> list[dict[Key, dict[str, int]]]:
        return [self.distinct_accounts(keys, at, account_id) for keys, at, account_id in requests]

    def record(self, keys: Iterable[Key], at: datetime, account_id: str) -> None:
        raise NotImplementedError("sightings are written by the pipeline")


FALLBACK_SCAN = 4 * COUNT_CAP       # sightings read per key when counting from the database


@lru_cache(maxsize=32)
def _sighting_count_statement(key_count: int):
    """_count_statement's counts from the sightings (SightingCounts), one row per key."""
    rows = []
    for i in range(key_count):
        newest = (
            select(_S.c.account_id, _S.c.occurred_at)
            .where(_S.c.kind == bindparam(f"k{i}"), velocity_kind(_S.c.kind), _S.c.value_hash == bindparam(f"h{i}"),
                   _S.c.occurred_at > bindparam(f"lo_{_LONGEST_NAME}"), _S.c.occurred_at <= bindparam("at"),
                   _S.c.account_id != bindparam("me"))
            .order_by(_S.c.occurred_at.desc()).limit(FALLBACK_SCAN).subquery()
        )
        rows.append(select(literal(i).label("key"),
                           *(func.count(func.distinct(newest.c.account_id))
                             .filter(newest.c.occurred_at > bindparam(f"lo_{window}")).label(f"w{j}")
                             for j, window in enumerate(WINDOWS)))
                    .select_from(newest))
    return union_all(*rows) if len(rows) > 1 else rows[0]


def _micros(at: datetime) -> int:
    return int((at - _EPOCH) // timedelta(microseconds=1))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
REDIS_PREFIX = "kyc:velocity:"


class RedisStore(SqlHistory):
    """Velocity in Redis; writes wait for the caller's database commit, so a rolled-back
    evaluation leaves no counter behind."""

    def __init__(self, redis, session: Session):
        self.redis = redis
        self.session = session

    @staticmethod
    def _name(key: Key) -> str:
        return f"{REDIS_PREFIX}{key[0]}:{key[1]}"

    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        return self.distinct_accounts_many([(keys, at, account_id)])[0]

    def distinct_accounts_many(self, requests: list[tuple[list[Key], datetime, str]]
                               ) -> list[dict[Key, dict[str, int]]]:
        """distinct_accounts of many (keys, at, account_id) in one command (_COUNTS_SCRIPT): a
        rescore chunk's counts cost one round trip, and little parsing, instead of five
        commands per key."""
        names, args = [], list(_SPANS)
        for keys, at, account_id in requests:
            args += [account_id, _micros(at), len(keys)]
            names += [self._name(key) for key in keys]
        if not names:
            return [{} for _ in requests]
        try:
            # One string of counts: parsing one reply costs far less than parsing one per count.
            replies = iter(map(int, _COUNTS(keys=names, args=args, client=self.redis).split(b",")))
        except redis_errors.RedisError as exc:
            # Unreachable, or slower than its time budget (the client's socket timeouts,
            # KYC_REDIS_TIMEOUT_MS): count from the database instead and say so.
            metrics.VELOCITY_ERRORS.labels("redis", "read").inc()
            log.warning("velocity: Redis did not answer (%s: %s); counted from the database",
                        exc.__class__.__name__, exc)
            self.degraded = True
            return SightingCounts(self.session).distinct_accounts_many(requests)
        return [{key: {window: _capped(next(replies)) for window in WINDOWS} for key in keys}
                for keys, _, _ in requests]

    def record(self, keys: Iterable[Key], at: datetime, account_id: str) -> None:
        keys = list(keys)
        if not keys:
            return
        # Written once the transaction commits (never for one rolled back), all its marks at once.
        after_commit(self.session).collect(RedisStore, self._flush).append((keys, at, account_id))

    def record_many(self, marks: list[tuple[Key, datetime, str]]) -> None:
        for key, at, account_id in marks:
            self.record([key], at, account_id)

    def _flush(self, pending: list) -> None:
        if not pending:
            return
        try:
            self._write(pending)
        except redis_errors.RedisError as exc:
            metrics.VELOCITY_ERRORS.labels("redis", "record").inc()
            # The evaluation and its sightings are committed; failing the request now would
            # misreport it. The Redis counters miss this event, which the log says.
            log.warning("velocity not recorded in Redis for %d evaluation(s): %s: %s", len(pending),
                        exc.__class__.__name__, exc)

    def _write(self, pending: list) -> None:
        ttl = int(LONGEST.total_seconds()) + 86400
        pipe = self.redis.pipeline(transaction=True)         # MULTI/EXEC: all keys or none
        for keys, at, account_id in pending:
            score = _micros(at)
            for key in keys:
                name = self._name(key)
                pipe.zadd(name, {account_id: score}, gt=True)          # keep the latest event time
                pipe.zremrangebyrank(name, 0, -(COUNT_CAP + 2))         # keep the newest COUNT_CAP + 1
                pipe.expire(name, ttl)
        pipe.execute()


class ReadAhead(SqlHistory):
    """A store whose velocity counts for a chunk of evaluations (rescoring) were read ahead in
    one round trip; a count not read ahead and recording go to `store`."""

    def __init__(self, store: SqlStore | RedisStore, requests: list[tuple[list[Key], datetime, str]]):
        self.store = store
        self.session = store.session
        self.counts: dict[tuple[str, datetime, Key], dict[str, int]] = {}
        for (_, at, account_id), result in zip(requests, store.distinct_accounts_many(requests)):
            for key, windows in result.items():
                self.counts[(account_id, at, key)] = windows

    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        missing = [key for key in keys if (account_id, at, key) not in self.counts]
        found = self.store.distinct_accounts(missing, at, account_id) if missing else {}
        return {key: found[key] if key in found else self.counts[(account_id, at, key)] for key in keys}

    def record(self, keys: Iterable[Key], at: datetime, account_id: str) -> None:
        self.store.record(keys, at, account_id)

    @property
    def degraded(self) -> bool:
        return self.store.degraded


# ARGV: each window's span, then per request its account id, event time and key count (all times
# in microseconds); KEYS: each request's keys, in order. For each key and window: the members
# whose latest event time lies in (at - span, at], less the account itself, all joined in one
# comma-separated string. Numbers stay below 2^53: exact in Lua.
_COUNTS_SCRIPT = """
local windows, out, k = %d, {}, 1
local a = windows + 1
while a <= #ARGV do
  local account, now, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  for _ = 1, n do
    local own = redis.call('ZSCORE', KEYS[k], account)
    own = own and tonumber(own)
    for w = 1, windows do
      local lower = now - tonumber(ARGV[w])
      local count = redis.call('ZCOUNT', KEYS[k], '(' .. string.format('%%d', lower), ARGV[a + 1])
      if own and own > lower and own <= now then count = count - 1 end
      out[#out + 1] = count
    end
    k = k + 1
  end
  a = a + 3
end
return table.concat(out, ',')
""" % len(WINDOWS)
_SPANS = [_micros(_EPOCH + span) for span in WINDOWS.values()]
_COUNTS = Script(None, _COUNTS_SCRIPT.encode())     # EVALSHA, loaded on first use by each server


def velocity_store(runtime, session: Session) -> Store:
    """Redis when KYC_REDIS_URL is set, the database otherwise."""
    if runtime.redis is not None:
        return RedisStore(runtime.redis, session)
    return SqlStore(session)
