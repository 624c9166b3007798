"""Velocity counters in event time: one suite, run on the SQL store (SQLite, PostgreSQL) and on
the Redis store, asserting the same answers."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from kyc.store import COUNT_CAP, REDIS_PREFIX, WINDOWS, RedisStore, SqlStore
from tests.conftest import redis_connection

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
KEY = ("ip", "h_ip_1")
OTHER = ("device", "h_dev_1")


class Counters:
    """Record in one committed transaction, count in another: how the pipeline uses a store."""

    def __init__(self, runtime, backend: str):
        self.runtime = runtime
        self.backend = backend
        self.redis = None
        if backend == "redis":
            self.redis = redis_connection()
            for name in self.redis.scan_iter(f"{REDIS_PREFIX}*"):
                self.redis.delete(name)

    def _store(self, session):
        return RedisStore(self.redis, session) if self.redis is not None else SqlStore(session)

    def record(self, account: str, at: datetime, keys=(KEY,)) -> None:
        with self.runtime.session() as session, session.begin():
            self._store(session).record(list(keys), at, account)

    def count(self, account: str, at: datetime, keys=(KEY,)) -> dict:
        with self.runtime.session() as session:
            return self._store(session).distinct_accounts(list(keys), at, account)


@pytest.fixture(params=["sql", "redis"])
def counters(request, runtime):
    return Counters(runtime, request.param)


def test_nobody_seen_counts_this_account_only(counters):
    assert counters.count("a", T0) == {KEY: {w: 1 for w in WINDOWS}}


@pytest.mark.parametrize("window", list(WINDOWS))
def test_window_edges_an_event_exactly_one_window_old_is_out(counters, window):
    span = WINDOWS[window]
    counters.record("a", T0)
    assert counters.count("b", T0 + span - timedelta(microseconds=1))[KEY][window] == 2
    assert counters.count("b", T0 + span)[KEY][window] == 1
    assert counters.count("b", T0)[KEY][window] == 2            # same instant: in


def test_counts_are_in_event_time_not_wall_clock(counters):
    # Six weeks of history posted now, in event-time order, counts as live traffic would have.
    for day in range(42):
        counters.record(f"acct_{day}", T0 + timedelta(days=day))
    at = T0 + timedelta(days=41, hours=1)
    assert counters.count("new", at)[KEY] == {"1h": 1, "24h": 2, "7d": 8, "30d": 31}
    # As of an earlier event time, later events do not count.
    assert counters.count("new", T0 + timedelta(days=3))[KEY] == {"1h": 2, "24h": 2, "7d": 5, "30d": 5}


def test_out_of_order_events(counters):
    counters.record("late", T0 + timedelta(hours=2))
    counters.record("early", T0)                              # posted after, happened before
    assert counters.count("x", T0 + timedelta(minutes=30))[KEY]["1h"] == 2     # early only
    assert counters.count("x", T0 + timedelta(hours=2))[KEY]["24h"] == 3      # both
    # An account's latest event time is what is kept: a late older event does not move it back.
    counters.record("late", T0 - timedelta(hours=5))
    assert counters.count("x", T0 + timedelta(hours=2, minutes=30))[KEY]["1h"] == 2


def test_an_account_counts_once_and_never_against_itself(counters):
    for minute in range(5):
        counters.record("a", T0 + timedelta(minutes=minute))
    assert counters.count("a", T0 + timedelta(minutes=10))[KEY]["1h"] == 1
    assert counters.count("b", T0 + timedelta(minutes=10))[KEY]["1h"] == 2


def test_keys_are_counted_apart(counters):
    counters.record("a", T0, keys=(KEY, OTHER))
    counters.record("b", T0, keys=(KEY,))
    result = counters.count("c", T0, keys=(KEY, OTHER))
    assert result[KEY]["1h"] == 3 and result[OTHER]["1h"] == 2


def test_a_super_hot_key_saturates_and_stays_bounded(counters):
    accounts = [f"acct_{i}" for i in range(COUNT_CAP + 25)]
    with counters.runtime.session() as session, session.begin():
        store = counters._store(session)
        for i, account in enumerate(accounts):
            store.record([KEY], T0 + timedelta(seconds=i), account)
    at = T0 + timedelta(hours=1)
    assert counters.count("new", at)[KEY]["1h"] == COUNT_CAP + 1
    assert counters.count(accounts[-1], at)[KEY]["1h"] == COUNT_CAP + 1
    if counters.redis is not None:
        name = f"{REDIS_PREFIX}{KEY[0]}:{KEY[1]}"
        assert counters.redis.zcard(name) == COUNT_CAP + 1                  # bounded memory per key
        assert 0 < counters.redis.ttl(name) <= 31 * 86400 + 86400           # expiring


def test_nothing_is_recorded_when_the_transaction_rolls_back(counters):
    with counters.runtime.session() as session:
        with pytest.raises(RuntimeError):
            with session.begin():
                counters._store(session).record([KEY], T0, "a")
                raise RuntimeError("evaluation failed")
    assert counters.count("b", T0)[KEY]["1h"] == 1


def test_one_batch_may_mark_a_key_and_account_many_times_the_latest_is_kept(counters):
    """record_many (an activity batch: one statement on PostgreSQL) with the same key and account
    several times, out of order, and after a later stored mark: each pair keeps its latest time.
    (A count includes the asking account.)"""
    counters.record("stored", T0 + timedelta(hours=3))
    marks = [(KEY, T0 + timedelta(hours=2), "a"), (KEY, T0, "a"), (OTHER, T0, "a"), (KEY, T0 + timedelta(hours=1), "b"),
             (KEY, T0 + timedelta(hours=1), "b"), (KEY, T0, "stored")]
    with counters.runtime.session() as session, session.begin():
        counters._store(session).record_many(marks)
    in_hour = counters.count("x", T0 + timedelta(hours=3, minutes=30), (KEY, OTHER))
    assert in_hour[KEY]["1h"] == 2 and in_hour[OTHER]["24h"] == 2                     # stored's 3:00 kept
    assert counters.count("x", T0 + timedelta(hours=2, minutes=30))[KEY]["1h"] == 2    # a at 2:00, not 0:00
    assert counters.count("x", T0 + timedelta(hours=2, minutes=30))[KEY]["24h"] == 3   # a, b (stored is later)


def test_redis_and_sql_counters_agree(runtime):
    """The same random history, with out-of-order posts, gives the same answers on both."""
    rng = random.Random(7)
    keys = [("ip", f"h{i}") for i in range(4)] + [("email_domain", "gmail")]
    events = []
    for _ in range(300):
        at = T0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 40))
        events.append((f"acct_{rng.randrange(120)}", at, rng.sample(keys, rng.randint(1, 3))))
    events.sort(key=lambda e: e[1])
    # A tenth of the events arrive late (a backfill interleaved with live traffic).
    for i in range(0, len(events) - 5, 10):
        events[i], events[i + 5] = events[i + 5], events[i]
    sql, redis_counters = Counters(runtime, "sql"), Counters(runtime, "redis")
    for account, at, event_keys in events:
        for backend in (sql, redis_counters):
            assert backend.count(account, at, keys) == sql.count(account, at, keys) or backend is sql
        assert redis_counters.count(account, at, keys) == sql.count(account, at, keys), (account, at)
        sql.record(account, at, event_keys)
        redis_counters.record(account, at, event_keys)


def test_the_pipeline_gives_the_same_velocity_signals_on_redis(on_sql_and_redis):
    """Signups through the API: SQL-backed and Redis-backed velocity signals are identical."""
    from tests.conftest import signup

    bodies = [signup(account_id=f"acct_{n}", email=f"user{n % 5}@corp{n % 2}.example",
                     device_id=f"dv_{n % 3}", ip=f"81.2.3.{n % 4 + 1}",
                     occurred_at=f"2026-11-{10 + n % 6:02d}T{(n * 5) % 24:02d}:00:00Z") for n in range(12)]
    answers = on_sql_and_redis("/v1/signups", bodies, "velocity")
    assert answers["sql"] == answers["redis"]
    assert max(v["ip_prefix_30d"] for v in answers["sql"]) > 5


# --- each key against its own baseline, and its popularity (kyc/signals/velocity.py) ----------

BIN = ("card_bin", "h_bin_big")
RARE = ("card_bin", "h_bin_rare")


def _record_many(counters, events) -> None:
    with counters.runtime.session() as session, session.begin():
        store = counters._store(session)
        for account, at, keys in events:
            store.record(list(keys), at, account)


def _signals(counters, account, at, keys=(BIN, RARE)):
    from kyc.signals.velocity import velocity_signals

    with counters.runtime.session() as session:
        # Two keys of one kind: read each on its own (signals are named by kind).
        return [velocity_signals({key: counts}) for key, counts in
                counters._store(session).distinct_accounts(list(keys), at, account).items()]


def test_a_busy_key_is_judged_against_its_own_rate(counters):
    """A big bank's BIN sees four new accounts an hour, all week: four more in the last hour is
    its usual rate (surge 1), while four on a BIN nobody used is a surge of 4. Thirty-six more in
    the hour is ten times the BIN's rate."""
    week = [(f"bank_{i}", T0 + timedelta(minutes=15 * i), (BIN,)) for i in range(7 * 24 * 4)]
    rare = [(f"rare_{i}", T0 + timedelta(hours=167, minutes=10 + 10 * i), (RARE,)) for i in range(3)]
    _record_many(counters, week + rare)
    at = T0 + timedelta(hours=168)
    big, small = _signals(counters, "new", at)
    # 1h: the three marks after 167:00 and this account; 7d: all but the mark at T0 exactly, +1.
    assert (big["card_bin_1h"], big["card_bin_7d"]) == (4, 672)
    assert big["card_bin_surge_1h"] == 1.0                        # (672 - 4) / 167 = 4 an hour
    assert small["card_bin_1h"] == 4 and small["card_bin_surge_1h"] == 4.0
    assert big["card_bin_popular"] is True and small["card_bin_popular"] is False
    burst = [(f"burst_{i}", at - timedelta(minutes=50) + timedelta(seconds=i), (BIN,)) for i in range(36)]
    _record_many(counters, burst)
    big, _ = _signals(counters, "new", at)
    assert big["card_bin_1h"] == 40 and big["card_bin_surge_1h"] == 10.0   # 40 / ((708 - 40) / 167)


def test_a_burst_does_not_make_its_own_key_popular(counters):
    _record_many(counters, [(f"farm_{i}", T0 + timedelta(seconds=20 * i + 1), (RARE,)) for i in range(150)])
    at = T0 + timedelta(hours=1)
    (rare,) = _signals(counters, "new", at, keys=(RARE,))
    assert rare["card_bin_1h"] == 151 and rare["card_bin_surge_1h"] == 151.0
    assert rare["card_bin_surge_24h"] == 151.0 and rare["card_bin_popular"] is False
    # A month later the farm's burst is history: 150 accounts before the last day.
    (later,) = _signals(counters, "new", T0 + timedelta(days=20), keys=(RARE,))
    assert later["card_bin_popular"] is True and later["card_bin_1h"] == 1


def test_a_saturated_base_window_measures_the_rate_over_the_last_day(counters):
    """More than COUNT_CAP accounts in the week: the 7-day count is saturated, so the hourly rate
    comes from the last 24 hours."""
    events = [(f"a_{i}", T0 + timedelta(minutes=5 * i), (BIN,)) for i in range(COUNT_CAP + 200)]
    _record_many(counters, events)
    at = events[-1][1] + timedelta(minutes=1)
    (big,) = _signals(counters, "new", at, keys=(BIN,))
    assert big["card_bin_7d"] == COUNT_CAP + 1
    # 12 an hour: 1h holds 12 others (+1), 24h holds 288 (+1); mean (289 - 13) / 23 = 12.
    assert (big["card_bin_1h"], big["card_bin_24h"]) == (13, 289)
    assert big["card_bin_surge_1h"] == round(13 / 12, 2)
    assert big["card_bin_popular"] is True


def test_surge_and_popularity_by_hand():
    from kyc.signals.velocity import POPULAR_ACCOUNTS, popular, surge

    quiet = {"1h": 1, "24h": 1, "7d": 1, "30d": 1}
    assert surge(quiet, "1h") == 1.0 and surge(quiet, "24h") == 1.0 and not popular(quiet)
    # 12 accounts over the 6 days before today is two a day: today's 6 are a surge of 3.
    weekly = {"1h": 2, "24h": 6, "7d": 18, "30d": 35}
    assert surge(weekly, "24h") == 3.0 and popular(weekly) == (35 - 6 >= POPULAR_ACCOUNTS)
    busy = {"1h": 50, "24h": 600, "7d": COUNT_CAP + 1, "30d": COUNT_CAP + 1}
    assert surge(busy, "1h") == round(50 / ((600 - 50) / 23), 2)
    assert surge(busy, "24h") == 1.0          # its base window saturated: no evidence either way
    flood = {w: COUNT_CAP + 1 for w in WINDOWS}
    assert surge(flood, "1h") == 1.0 and popular(flood)


def test_a_new_address_is_read_against_its_network_s_rate():
    """An IP nobody used before: five accounts in its first hour are a surge of 5 on a quiet
    network, and nothing on a carrier NAT pool or campus /24 that sees twenty accounts an hour."""
    from kyc.signals.velocity import velocity_signals

    new_ip = {"1h": 5, "24h": 5, "7d": 5, "30d": 5}
    busy_network = {"1h": 25, "24h": 480, "7d": 3380, "30d": 5000}      # ~20 an hour, all week
    quiet_network = {"1h": 5, "24h": 6, "7d": 7, "30d": 9}
    busy = velocity_signals({("ip", "h_ip"): new_ip, ("ip_prefix", "h_net"): busy_network})
    quiet = velocity_signals({("ip", "h_ip"): new_ip, ("ip_prefix", "h_net"): quiet_network})
    assert busy["ip_surge_1h"] == round(5 / ((3380 - 25) / 167), 2) < 1
    assert quiet["ip_surge_1h"] == 5.0 and quiet["ip_prefix_surge_1h"] == 5.0
    # An address with history of its own keeps its own rate, whatever its network's.
    seen_ip = {"1h": 5, "24h": 10, "7d": 40, "30d": 60}
    own = velocity_signals({("ip", "h_ip"): seen_ip, ("ip_prefix", "h_net"): busy_network})
    assert own["ip_surge_1h"] == 5.0                                     # (40 - 5) / 167 < 1 a hour: floored


def test_baseline_signals_agree_on_redis_and_sql(runtime):
    """The same random history with bursts and quiet keys: identical surges and popularity."""
    from kyc.signals.velocity import velocity_signals

    rng = random.Random(11)
    keys = [("ip", f"h{i}") for i in range(3)] + [("email_domain", "gmail")]
    events = []
    for n in range(400):
        at = T0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 35))
        if n % 50 == 0:                                     # a burst on one key
            burst_key = rng.choice(keys)
            events += [(f"burst_{n}_{i}", at + timedelta(seconds=i), [burst_key]) for i in range(20)]
        events.append((f"acct_{rng.randrange(200)}", at, rng.sample(keys, rng.randint(1, 2))))
    events.sort(key=lambda e: e[1])
    sql, redis_counters = Counters(runtime, "sql"), Counters(runtime, "redis")
    _record_many(sql, events)
    _record_many(redis_counters, events)
    surges = 0
    for account, at, _ in events[::7]:
        answers = [{k: velocity_signals({k: c}) for k, c in backend.count(account, at, keys).items()}
                   for backend in (sql, redis_counters)]
        assert answers[0] == answers[1], (account, at)
        surges += sum(s[f"{k[0]}_surge_1h"] > 3 for k, s in answers[0].items())
    assert surges > 0
