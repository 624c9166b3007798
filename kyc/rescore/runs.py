"""Rescore runs: what a run selects, its batches recorded in the database, its summary, and
the recovery of batches nobody works.

A rescore *run* and its *batches* are rows in the database (rescore_runs, rescore_batches),
not state in Redis. A batch job (kyc.rescore.batch) rescores its accounts in small chunks, one
transaction per chunk, and advances the batch's cursor in the same transaction that stores the
chunk's evaluations. So:
  - a worker killed mid-batch loses nothing: the next attempt (rq's retry of the abandoned job,
    the sweeps below, or `kyc rescore --resume`) starts at the cursor, and never rescores a
    committed account twice;
  - running a batch job twice is harmless: the second finds the cursor at the end;
  - the run's summary (seen, changed, old -> new) is read from committed rows only.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from kyc import metrics
from kyc.ids import new_id
from kyc.models import Account, ActivityDay, ClusterMember, Evaluation, RescoreBatch, RescoreRun, utcnow
from kyc.persist import in_list
from kyc.rescore.queue import FAILURE_TTL, JOB_TIMEOUT, RESCORE_BATCH_JOB, RESULT_TTL, RETRY_INTERVALS

if TYPE_CHECKING:
    from kyc.runtime import Runtime

log = logging.getLogger("kyc.jobs")

SELECTORS = ("dormant", "refused", "all", "cluster", "rules_change", "ids")

# A batch job says it is alive with a key that expires ALIVE_SECONDS after its last refresh
# (every ALIVE_SECONDS / 3, from a thread): a worker killed mid-batch stops refreshing it, and
# the next maintenance round after it expires enqueues the batch again (sweep_abandoned).
ALIVE_SECONDS = 15
ALIVE_KEY = "kyc:rescore:alive:{run_id}:{batch_no}"
LAST_JOB_KEY = "kyc:rescore:job:{run_id}:{batch_no}"      # the rq job that last worked the batch



def accounts_query(selector: str, params: dict[str, Any], version: str, now: datetime | None = None):
    """The ids a selector picks, in id order (stable batches, and row locks taken in one order);
    rules_change reads each account's slots (stale_slots)."""
    query = select(Account.id)
    if selector == "dormant":
        since = (now or utcnow()) - timedelta(days=int(params["dormant_days"]))
        query = query.where(Account.last_seen_at < since)
    elif selector == "refused":
        # Held accounts the gateway refused on the day: a held account sends nothing that would
        # re-evaluate it, and the evidence that held it may have weakened since (a tool's first
        # users, held as a group until the tool grows past them: kyc.usage.lockstep). The day's
        # rows are one range of ix_activity_days_day.
        refused = select(ActivityDay.account_id).where(ActivityDay.day == date.fromisoformat(params["day"]),
                                                       ActivityDay.refused > 0)
        query = query.where(Account.decision.in_(("verify", "review")), Account.id.in_(refused))
    elif selector == "cluster":
        # The memberships, which merges and splits move at once.
        query = query.join(ClusterMember, ClusterMember.account_id == Account.id).where(
            ClusterMember.cluster_id == params["cluster_id"])
    elif selector == "rules_change":
        raise ValueError("rules_change reads each account's slots: stale_slots")
    elif selector != "all":
        raise ValueError(f"unknown selector {selector!r}")
    return query.order_by(Account.id)


def start_run(runtime: Runtime, selector: str, *, params: dict[str, Any] | None = None, reason: str,
              account_ids: Iterable[str] | None = None, batch_size: int | None = None) -> RescoreRun:
    """Record a run and its batches in one transaction; nothing is enqueued yet (see dispatch)."""
    with runtime.session() as session, session.begin():
        run = record_run(runtime, session, selector, params=params, reason=reason, account_ids=account_ids,
                         batch_size=batch_size)
    metrics.RESCORE_RUNS.labels(selector).inc()
    log.info("rescore run %s: %s %s, %d account(s) in %d batch(es): %s",
             run.id, selector, params or "", run.total, run.batches, reason)
    return run


def record_run(runtime: Runtime, session: Session, selector: str, *, params: dict[str, Any] | None = None,
               reason: str, account_ids: Iterable[str] | None = None, batch_size: int | None = None) -> RescoreRun:
    """Record a run and its batches in the caller's transaction (start_run commits its own)."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}")
    params = dict(params or {})
    size = batch_size or runtime.config.rescore_batch_size
    version = runtime.rules.version
    run = RescoreRun(id=new_id("rr"), selector=selector, params=params, reason=reason[:500],
                     rules_version=version, total=0, batches=0)
    session.add(run)
    session.flush()
    if account_ids is not None:
        ids: Iterable[str] = account_ids
    elif selector == "rules_change":
        ids = stale_slots(session, version)
    else:
        query = accounts_query(selector, params, version).execution_options(yield_per=10_000)
        ids = session.scalars(query)
    pending: list[dict[str, Any]] = []
    for batch in _chunks(ids, size):
        pending.append(dict(run_id=run.id, batch_no=run.batches, account_ids=batch, cursor=0, changes={},
                            escalated=0, held=0, missing=0, attempts=0))
        run.batches += 1
        run.total += len(batch)
        if len(pending) >= 200:
            session.execute(insert(RescoreBatch), pending)
            pending = []
    if pending:
        session.execute(insert(RescoreBatch), pending)
    if run.batches == 0:
        run.finished_at = utcnow()
    session.flush()
    return run


_STALE_READ = 10_000


_SCORED = (select(Account.id, Evaluation.rules_version, Account.subjects)
           .join(Evaluation, Evaluation.id == Account.last_evaluation_id).order_by(Account.id))


def stale_slots(session: Session, version: str) -> Iterator[str]:
    """The accounts, in id order, any of whose slots was scored under another rules version than
    `version`. An account's decision combines its slots (its signup, each card): one whose latest
    evaluation (a card added after a rules change) is current may still hold a signup scored
    under the old rules, so each slot's version is read, a window of accounts at a time (one
    statement per window, for the accounts with more than one slot)."""
    window: list[tuple[str, str, dict | None]] = []
    for row in session.execute(_SCORED.execution_options(yield_per=_STALE_READ)):
        window.append(row)
        if len(window) >= _STALE_READ:
            yield from _stale_in(session, window, version)
            window = []
    yield from _stale_in(session, window, version)


def _stale_in(session: Session, window: list[tuple[str, str, dict | None]], version: str) -> list[str]:
    slots = {account_id: [slot["evaluation_id"] for slot in (subjects or {}).values()]
             for account_id, latest, subjects in window if latest == version and len(subjects or {}) > 1}
    wanted = sorted({e for ids in slots.values() for e in ids})
    versions = dict(session.execute(select(Evaluation.id, Evaluation.rules_version)
                                    .where(in_list(Evaluation.__table__.c.id, "ids")), {"ids": wanted}).all()) if wanted else {}
    return [account_id for account_id, latest, _ in window
            if latest != version or any(versions.get(e, version) != version for e in slots.get(account_id, ()))]


def _chunks(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for account_id in ids:
        batch.append(account_id)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def enqueue_batches(connection, run_id: str, batch_nos: Iterable[int], *, suffix: str = "") -> int:
    from rq import Queue, Retry

    queue = Queue("rescore", connection=connection)
    count = 0
    for group in _chunks(batch_nos, 500):
        jobs = [Queue.prepare_data(RESCORE_BATCH_JOB, args=(run_id, n), job_id=f"rescore-{run_id}-{n}{suffix}",
                                   timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                                   retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS))
                for n in group]
        queue.enqueue_many(jobs)
        count += len(jobs)
    return count


def unfinished_batches(runtime: Runtime, run_id: str | None = None) -> list[tuple[str, int]]:
    """(run id, batch no) of every unfinished batch, oldest run first."""
    with runtime.session() as session:
        query = (select(RescoreBatch.run_id, RescoreBatch.batch_no).join(RescoreRun)
                 .where(RescoreBatch.finished_at.is_(None)).order_by(RescoreRun.created_at, RescoreBatch.batch_no))
        if run_id:
            query = query.where(RescoreBatch.run_id == run_id)
        return [(r, n) for r, n in session.execute(query)]

ORPHAN_AFTER = timedelta(minutes=1)     # a run's batches are enqueued within milliseconds of being recorded


def sweep_orphans(runtime: Runtime, connection, now: datetime | None = None) -> int:
    """Enqueue never-attempted batches of older runs that have no job in Redis (Redis was down
    at dispatch, or was flushed). Started batches: sweep_abandoned."""
    from rq.job import Job

    cutoff = (now or utcnow()) - ORPHAN_AFTER
    with runtime.session() as session:
        pending = session.execute(
            select(RescoreBatch.run_id, RescoreBatch.batch_no).join(RescoreRun)
            .where(RescoreRun.finished_at.is_(None), RescoreRun.created_at < cutoff,
                   RescoreBatch.attempts == 0, RescoreBatch.finished_at.is_(None))
            .order_by(RescoreRun.created_at, RescoreBatch.batch_no)).all()
    orphans: dict[str, list[int]] = {}
    for run_id, batch_no in pending:
        if not Job.exists(f"rescore-{run_id}-{batch_no}", connection=connection):
            orphans.setdefault(run_id, []).append(batch_no)
    for run_id, numbers in orphans.items():
        log.warning("rescore run %s: enqueuing %d batch(es) that had no job", run_id, len(numbers))
        enqueue_batches(connection, run_id, numbers)
    return sum(len(n) for n in orphans.values())


def sweep_abandoned(runtime: Runtime, connection) -> int:
    """Enqueue again the started, unfinished batches that no live job is working: their worker
    was killed (its liveness key expired while rq still believes the job started: rq itself
    would wait for the job's timeout, 30 minutes), or Redis lost their job (restarted empty).
    A batch whose job failed and waits for rq's retry, or failed for good, is left to rq and
    to `kyc rescore --resume`. The new job continues at the batch's cursor; if the old one was
    somehow alive after all, the batch's row lock makes them take turns, never rescoring twice."""
    from rq.job import Job, JobStatus
    from rq.exceptions import NoSuchJobError

    with runtime.session() as session:
        started = session.execute(
            select(RescoreBatch.run_id, RescoreBatch.batch_no, RescoreBatch.attempts).join(RescoreRun)
            .where(RescoreRun.finished_at.is_(None), RescoreBatch.attempts > 0, RescoreBatch.finished_at.is_(None))
            .order_by(RescoreRun.created_at, RescoreBatch.batch_no)).all()
    again: dict[str, list[tuple[int, int]]] = {}
    for run_id, batch_no, attempts in started:
        if connection.exists(ALIVE_KEY.format(run_id=run_id, batch_no=batch_no)):
            continue
        job_id = connection.get(LAST_JOB_KEY.format(run_id=run_id, batch_no=batch_no))
        if job_id is not None:
            try:
                status = Job.fetch(job_id.decode(), connection=connection).get_status()
            except NoSuchJobError:
                status = None
            if status != JobStatus.STARTED:
                continue              # waiting for its retry, failed for good, or queued again
        again.setdefault(run_id, []).append((batch_no, attempts))
    for run_id, numbers in again.items():
        log.warning("rescore run %s: batch(es) %s abandoned by their worker; enqueued again", run_id,
                    ", ".join(str(n) for n, _ in numbers))
        for batch_no, attempts in numbers:
            job_id = f"rescore-{run_id}-{batch_no}-a{attempts}"
            enqueue_batches(connection, run_id, [batch_no], suffix=f"-a{attempts}")
            # Until the new job starts (and says so itself), the sweep sees it queued.
            connection.set(LAST_JOB_KEY.format(run_id=run_id, batch_no=batch_no), job_id, ex=FAILURE_TTL)
    return sum(len(n) for n in again.values())


def run_summary(session: Session, run: RescoreRun) -> dict[str, Any]:
    """What a run did so far, from committed batches only."""
    changes: Counter[str] = Counter()
    seen = escalated = held = missing = done = 0
    rows = session.execute(select(RescoreBatch.cursor, RescoreBatch.changes, RescoreBatch.escalated,
                                  RescoreBatch.held, RescoreBatch.missing, RescoreBatch.finished_at)
                           .where(RescoreBatch.run_id == run.id))
    for cursor, batch_changes, batch_escalated, batch_held, batch_missing, finished_at in rows:
        seen += cursor
        changes.update(batch_changes or {})
        escalated += batch_escalated
        held += batch_held
        missing += batch_missing
        done += finished_at is not None
    matrix = {tuple(key.split(">")): n for key, n in changes.items()}
    return {
        "run_id": run.id, "selector": run.selector, "params": run.params, "reason": run.reason,
        "rules_version": run.rules_version, "created_at": run.created_at, "finished_at": run.finished_at,
        "total": run.total, "batches": run.batches, "batches_done": done, "seen": seen, "missing": missing,
        "changed": sum(n for (old, new), n in matrix.items() if old != new),
        "escalated": escalated, "held": held, "matrix": matrix,
    }


def last_run(session: Session) -> RescoreRun | None:
    return session.scalars(select(RescoreRun).order_by(RescoreRun.created_at.desc(), RescoreRun.id.desc())
                           .limit(1)).first()
