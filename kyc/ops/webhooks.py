"""Decision webhooks: every change of an account's decision POSTed to the API gateway.

With KYC_DECISION_WEBHOOK_URL (and its secret) set, each change is written to the outbox table
`decision_webhooks` in the same transaction as the change, as the exact body to send:

    {"event": "account.decision_changed", "event_id": "dwh_...", "account_id": "acct_8f2c",
     "old": "allow", "new": "block", "reasons": [...], "at": "2026-12-03T11:40:02.123456Z",
     "actor": "key:ops-anna"}

Delivery POSTs that body with `X-Signature` (hex HMAC-SHA256 of the raw body, as the identity
providers sign theirs) and `X-Event-Id`, and retries with backoff (BACKOFF) until the gateway
answers 2xx. So:
  - nothing is lost on a crash or restart: an event exists exactly when its change committed,
    and stays pending until a 2xx is recorded; an attempt interrupted by a crash is retried once
    its lease ends;
  - a retry sends the same bytes (never different content), and `event_id` lets the gateway
    drop a repeat (a 2xx whose recording was lost to a crash is the only way to get one);
  - one account's events are sent in order: its next event waits until the previous is delivered.

Delivery runs where the rescoring does (kyc/rescore/): with Redis an rq job on the `default`
queue, asked for after each commit that wrote events and every few seconds by the schedule;
without Redis a thread of the process, woken after each such commit and by the in-process
schedule. Several deliverers never send one event at once: each claims its batch (a lease) in
one UPDATE. A batch is sent concurrently over pooled keep-alive connections (urllib3).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from time import time as now_seconds
from typing import Any, Iterable

from sqlalchemy import bindparam, delete, event, func, insert, select, update
from sqlalchemy.orm import Session

from kyc.ids import new_ids
from kyc.inputs import rfc3339
from kyc.models import DecisionWebhook, utcnow
from kyc.persist import load_rows
from kyc.rescore.queue import FAILURE_TTL, SCHEDULE_RESULT_TTL, redis_connection
from kyc.rescore.requests import after_commit

log = logging.getLogger("kyc.webhooks")

EVENT = "account.decision_changed"
BATCH = 500                    # events claimed per round
CONCURRENCY = 16               # POSTs in flight at once
LEASE = timedelta(seconds=60)  # an attempt's claim; a crashed deliverer's events are retried after it
BACKOFF = (1, 2, 5, 10, 30, 60, 120, 300)   # seconds before attempt n+1; then every 300 s, forever
DELIVERED_KEPT = timedelta(days=7)          # delivered events are purged after this

_TABLE = DecisionWebhook.__table__
_INSERT = insert(_TABLE)
_COLUMNS = ("event_id", "account_id", "body", "created_at", "attempts", "next_attempt_at")
LOAD_FROM = 200                # events written at once from which they are loaded (kyc.persist.load_rows)


def enabled(config) -> bool:
    return bool(config.decision_webhook_url)


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- writing (in the transaction of the change) ----------------------------------------------------

def add(runtime, session: Session, changes: Iterable) -> int:
    """Put the decision changes in the outbox, in the caller's transaction; delivery is asked
    for once it commits. Nothing when no webhook URL is configured."""
    if not enabled(runtime.config):
        return 0
    changes = list(changes)
    rows = []
    for event_id, c in zip(new_ids("dwh", len(changes)), changes):
        body = {"event": EVENT, "event_id": event_id, "account_id": c.account_id, "old": c.old, "new": c.new,
                "reasons": [r for r in c.reasons if not r.get("shadow")], "at": rfc3339(c.at), "actor": c.actor}
        rows.append({"event_id": event_id, "account_id": c.account_id, "body": json.dumps(body, separators=(",", ":")),
                     "created_at": c.at, "attempts": 0, "next_attempt_at": c.at})
    if len(rows) >= LOAD_FROM:
        # Many events (a farm action): loaded in bulk, ten times faster than statements on PostgreSQL.
        load_rows(session.connection(), _TABLE, _COLUMNS, [tuple(row[c] for c in _COLUMNS) for row in rows])
    elif rows:
        # One executemany: SQLite's is a loop in C; psycopg pipelines it, and in a pipelined
        # scoring transaction (one event) it travels with the commit.
        session.execute(_INSERT, rows)
    if rows:
        _deliver_after_commit(runtime, session)
    return len(rows)


def _deliver_after_commit(runtime, session: Session) -> None:
    """Delivery is asked for once the transaction that wrote events commits (once however many)."""
    after_commit(session).collect(kick, lambda _: kick(runtime))


# --- delivering ------------------------------------------------------------------------------------

def kick(runtime) -> None:
    """Ask for delivery now: an rq job with Redis, else this process's delivery thread."""
    connection = redis_connection(runtime.config)
    if connection is None:
        _deliverer(runtime).wake()
        return
    try:
        enqueue_delivery(connection)
    except Exception:  # noqa: BLE001 - Redis away: the schedule delivers once it is back
        log.warning("decision webhooks: delivery not enqueued (Redis unreachable); the schedule will send them",
                    exc_info=True)


def enqueue_delivery(connection) -> None:
    from rq import Queue

    # One job per second at most: a burst of commits asks once.
    Queue("default", connection=connection).enqueue(
        deliver_job, job_id=f"kyc-decision-webhooks-{int(now_seconds())}", result_ttl=SCHEDULE_RESULT_TTL,
        failure_ttl=FAILURE_TTL, job_timeout=600)


def deliver_job() -> int:
    """rq job (queue `default`): send every due decision webhook."""
    # Enqueued jobs carry this dotted name (tests/rescore/test_job_names.py), so the job stays
    # here; kyc.jobs imports this module, hence the worker runtime is imported when the job runs.
    from kyc.jobs import worker_runtime

    return deliver_due(worker_runtime())


# Each account's oldest undelivered event: the only one of its events that may be sent now. Read
# over every pending event, not the oldest few: a gateway refusing a thousand accounts' events
# (each waiting out its backoff) held back every other account's behind them.
_HEADS = (select(func.min(_TABLE.c.id).label("id")).where(_TABLE.c.delivered_at.is_(None))
          .group_by(_TABLE.c.account_id).subquery())


def _claim(runtime, limit: int) -> list[dict[str, Any]]:
    """Claim due events, oldest first and one per account (an account's next event waits for the
    one before it), by pushing their next attempt a lease into the future."""
    now = utcnow()
    with runtime.session() as session, session.begin():
        due = list(session.scalars(select(_TABLE.c.id).join(_HEADS, _HEADS.c.id == _TABLE.c.id)
                                   .where(_TABLE.c.next_attempt_at <= now).order_by(_TABLE.c.id).limit(limit)))
        if not due:
            return []
        # Claimed only where still due: of two deliverers, each event goes to one.
        claimed = session.execute(
            update(_TABLE).where(_TABLE.c.id.in_(due), _TABLE.c.next_attempt_at <= now,
                                 _TABLE.c.delivered_at.is_(None))
            .values(next_attempt_at=now + LEASE, attempts=_TABLE.c.attempts + 1)
            .returning(_TABLE.c.id, _TABLE.c.event_id, _TABLE.c.body, _TABLE.c.attempts)).mappings().all()
    return sorted((dict(r) for r in claimed), key=lambda r: r["id"])


class _Sender:
    """POSTs bodies to the configured URL over a pool of keep-alive connections."""

    def __init__(self, config):
        import urllib3

        self.url = config.decision_webhook_url
        self.secret = config.decision_webhook_secret
        self.timeout = urllib3.Timeout(total=config.decision_webhook_timeout_seconds)
        self.pool = urllib3.PoolManager(maxsize=CONCURRENCY, block=True, retries=False)

    def send(self, row: dict[str, Any]) -> str | None:
        """None when the gateway answered 2xx, else what went wrong."""
        body = row["body"].encode()
        try:
            response = self.pool.request("POST", self.url, body=body, timeout=self.timeout, headers={
                "Content-Type": "application/json", "X-Signature": signature(self.secret, body),
                "X-Event-Id": row["event_id"], "User-Agent": "kyc-decision-webhooks"})
        except Exception as exc:  # noqa: BLE001 - every failure is one failed attempt
            return f"{exc.__class__.__name__}: {exc}"[:500]
        if 200 <= response.status < 300:
            return None
        return f"HTTP {response.status}: {response.data[:200].decode(errors='replace')}"


_senders_lock = threading.Lock()


def _sender(runtime) -> _Sender:
    """The runtime's sender (its connection pool lives as long as the runtime)."""
    with _senders_lock:
        sender = getattr(runtime, "_webhook_sender", None)
        if sender is None:
            sender = runtime._webhook_sender = _Sender(runtime.config)
        return sender


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=BACKOFF[min(attempts, len(BACKOFF)) - 1])


_SETTLE_DELIVERED = update(_TABLE).where(_TABLE.c.id == bindparam("_id")).values(
    delivered_at=bindparam("delivered_at"), last_error=None)
_SETTLE_FAILED = update(_TABLE).where(_TABLE.c.id == bindparam("_id")).values(
    next_attempt_at=bindparam("next_attempt_at"), last_error=bindparam("last_error"))


def deliver_due(runtime, *, limit: int = BATCH) -> int:
    """Send every due event, in rounds of `limit`, each round concurrently; returns how many
    were delivered. Failed attempts are due again after their backoff."""
    if not enabled(runtime.config):
        return 0
    sender = _sender(runtime)
    delivered = 0
    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="kyc-webhook") as pool:
        while claimed := _claim(runtime, limit):
            errors = list(pool.map(sender.send, claimed))
            now = utcnow()
            ok = [{"_id": r["id"], "delivered_at": now} for r, error in zip(claimed, errors) if error is None]
            failed = [{"_id": r["id"], "next_attempt_at": now + backoff(r["attempts"]), "last_error": error}
                      for r, error in zip(claimed, errors) if error is not None]
            with runtime.session() as session, session.begin():
                if ok:
                    session.execute(_SETTLE_DELIVERED, ok)
                if failed:
                    session.execute(_SETTLE_FAILED, failed)
            delivered += len(ok)
            if failed:
                log.warning("decision webhooks: %d of %d attempts failed (first: %s); retrying with backoff",
                            len(failed), len(claimed), failed[0]["last_error"])
                if not ok:
                    break          # the gateway is failing: leave the rest to their due times
    if delivered:
        log.info("decision webhooks: %d delivered", delivered)
    return delivered


def next_due(runtime) -> datetime | None:
    """When the earliest event that may be sent is due (None: nothing pending)."""
    with runtime.session() as session:
        return session.scalar(select(func.min(_TABLE.c.next_attempt_at)).join(_HEADS, _HEADS.c.id == _TABLE.c.id))


def pending(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(_TABLE).where(_TABLE.c.delivered_at.is_(None)))


def purge_delivered(runtime) -> int:
    """Delete events delivered more than DELIVERED_KEPT ago (the audit trail keeps the changes)."""
    with runtime.session() as session, session.begin():
        return session.execute(delete(_TABLE).where(_TABLE.c.delivered_at < utcnow() - DELIVERED_KEPT)).rowcount


# --- the in-process deliverer (no Redis) -----------------------------------------------------------

class _Deliverer:
    """One daemon thread per runtime: delivers when woken (a commit wrote events, the schedule
    ticked) and when the earliest pending retry falls due."""

    IDLE = 30.0            # seconds between looks when nothing is known to be pending

    def __init__(self, runtime):
        self.runtime = weakref.ref(runtime)
        self._woken = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self.stopped = False
        # A disposed engine is its runtime let go (a test's teardown, a command's end): the thread
        # stops with it instead of looking, every IDLE seconds, at a database that may be gone
        # (the test suite's last runtime logged an error at exit once its tables were dropped).
        # The next kick starts a new one (_deliverer), should the runtime still be used.
        event.listen(runtime.engine, "engine_disposed", self.stop)
        self.thread = threading.Thread(target=self._run, name="kyc-decision-webhooks", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self._woken.set()

    def stop(self, *_engine) -> None:
        self.stopped = True
        self._woken.set()

    def _run(self) -> None:
        wait = 0.0
        while True:
            self._woken.wait(timeout=wait)
            self._woken.clear()
            runtime = self.runtime()
            if runtime is None or self.stopped:
                return
            with self._idle:
                self._busy = True
            try:
                deliver_due(runtime)
                due = next_due(runtime)
                wait = self.IDLE if due is None else max(0.05, (due - utcnow()).total_seconds())
            except Exception:  # noqa: BLE001 - the thread must outlive a database or network outage
                log.exception("decision webhooks: delivery round failed")
                wait = 1.0
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
            del runtime


_deliverers_lock = threading.Lock()


def _deliverer(runtime) -> _Deliverer:
    with _deliverers_lock:
        deliverer = getattr(runtime, "_webhook_deliverer", None)
        # None alive: in a forked worker process, or stopped with its engine (a stopped one may
        # not have returned yet)
        if deliverer is None or deliverer.stopped or not deliverer.thread.is_alive():
            deliverer = _Deliverer(runtime)
            runtime._webhook_deliverer = deliverer
        return deliverer
