"""Working rescore batches: one batch in chunks (run_batch, what the rq job and the in-process
paths call), and a run's batches worked here or enqueued on rq (dispatch, resume,
enqueue_rescore).

Blocks are sticky on every path (kyc.scoring.decide.settle): a rescore that would relax an
account from `block` keeps the block (the new evaluation is still stored, for the record) unless
one of its acting reasons comes from a rule tagged `releases_block`; runs count those accounts
as "kept at block".
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kyc import graph, metrics
from kyc.engine import RuleSet, RuleSetError
from kyc.models import SEVERITY, RescoreBatch, RescoreRun, utcnow
from kyc.ops import decisions
from kyc.persist import commit_without_waiting
from kyc.rescore.queue import FAILURE_TTL, redis_connection
from kyc.rescore.runs import (ALIVE_KEY, ALIVE_SECONDS, LAST_JOB_KEY, enqueue_batches, run_summary, start_run,
                              unfinished_batches)
from kyc.scoring import read_chunk, rescore_account
from kyc.scoring.decide import RELEASES_BLOCK

if TYPE_CHECKING:
    from kyc.runtime import Runtime

log = logging.getLogger("kyc.jobs")       # the name operators' log queries know

CHUNK = 100                              # accounts per transaction inside a batch

_draining = threading.local()


def enqueue_rescore(runtime: Runtime, account_ids: Iterable[str], reason: str) -> int:
    """Ask for accounts to be rescored. With Redis the batches are enqueued on the `rescore`
    queue and the count of accounts enqueued is returned; without, they are rescored now, in
    this thread, and the count of accounts rescored is returned.

    In-process, a rescore can itself ask for more (a member's rescore blocks it, which is the
    cluster's first block): asked for while a run is under way in this thread, those join it
    instead of nesting, and each account is rescored at most once per call.
    """
    ids = list(dict.fromkeys(account_ids))
    if not ids:
        return 0
    pending = getattr(_draining, "queue", None)
    if pending is not None:
        pending.extend(ids)
        return 0
    log.info("rescore requested for %d account(s): %s", len(ids), reason)
    if redis_connection(runtime.config) is not None:
        run = start_run(runtime, "ids", account_ids=ids, reason=reason)
        dispatch(runtime, run)
        return run.total
    _draining.queue = pending = list(ids)
    seen: set[str] = set()
    done = 0
    try:
        while pending:
            fresh = [i for i in dict.fromkeys(pending) if i not in seen]
            pending.clear()
            if not fresh:
                break
            seen.update(fresh)
            run = start_run(runtime, "ids", account_ids=fresh, reason=reason)
            run_inline(runtime, run)
            done += _rescored(runtime, run.id)
    finally:
        _draining.queue = None
    return done


def _rescored(runtime: Runtime, run_id: str) -> int:
    with runtime.session() as session:
        summary = run_summary(session, session.get(RescoreRun, run_id))
    return summary["seen"] - summary["missing"]


def dispatch(runtime: Runtime, run: RescoreRun) -> str:
    """Enqueue the run's batches on rq when Redis is configured, else run them here. What became
    of them: "enqueued", "recorded" (Redis did not answer: a worker enqueues them once it is
    back) or "rescored" (here, without Redis)."""
    connection = redis_connection(runtime.config)
    if connection is None:
        run_inline(runtime, run)
        return "rescored"
    from redis.exceptions import RedisError

    try:
        enqueue_batches(connection, run.id, range(run.batches))
    except RedisError:
        # The run is recorded: a worker's maintenance enqueues it once Redis is back (sweep_orphans).
        log.error("Redis unreachable: rescore run %s recorded but not enqueued yet", run.id)
        return "recorded"
    return "enqueued"


def run_inline(runtime: Runtime, run: RescoreRun) -> None:
    for batch_no in range(run.batches):
        run_batch(runtime, run.id, batch_no)


def resume(runtime: Runtime, run_id: str | None = None) -> list[tuple[str, int]]:
    """Re-enqueue (or, without Redis, run) the unfinished batches of one run, or of every run.

    Safe whatever rq still believes about the old jobs: a batch worked twice resumes from its
    cursor, and a duplicate finds nothing left to do.
    """
    pending = unfinished_batches(runtime, run_id)
    connection = redis_connection(runtime.config)
    by_run: dict[str, list[int]] = {}
    for r, n in pending:
        by_run.setdefault(r, []).append(n)
    suffix = f"-r{int(utcnow().timestamp())}"
    for r, numbers in by_run.items():
        if connection is None:
            for n in numbers:
                run_batch(runtime, r, n)
        else:
            enqueue_batches(connection, r, numbers, suffix=suffix)
    return pending



class working:
    def __init__(self, connection, run_id: str, batch_no: int):
        self.connection = connection
        self.alive = ALIVE_KEY.format(run_id=run_id, batch_no=batch_no)
        self.last_job = LAST_JOB_KEY.format(run_id=run_id, batch_no=batch_no)
        self.stopped = threading.Event()

    def __enter__(self) -> None:
        if self.connection is None:
            return
        from rq import get_current_job

        job = get_current_job()
        with self.connection.pipeline() as pipe:
            pipe.set(self.alive, "1", px=ALIVE_SECONDS * 1000)
            if job is not None:
                pipe.set(self.last_job, job.id, ex=FAILURE_TTL)
            pipe.execute()
        threading.Thread(target=self._beat, name="kyc-batch-alive", daemon=True).start()

    def _beat(self) -> None:
        while not self.stopped.wait(ALIVE_SECONDS / 3):
            try:
                # SET, not PEXPIRE: a Redis restarted empty gets the key back.
                self.connection.set(self.alive, "1", px=ALIVE_SECONDS * 1000)
            except Exception as exc:  # noqa: BLE001 - Redis away: the batch goes on; a sweep may start a twin, harmless
                log.warning("rescore liveness not refreshed: %s", exc)

    def __exit__(self, exc_type, _exc, _tb) -> None:
        self.stopped.set()
        if self.connection is None:
            return
        # A failed job keeps its key until it expires: by then rq has scheduled its retry, so
        # the sweep never mistakes a failure for a killed worker.
        if exc_type is None:
            from redis.exceptions import RedisError

            try:
                self.connection.delete(self.alive)
            except RedisError:
                pass                  # Redis away: the key expires by itself; the batch is done either way


def run_batch(runtime: Runtime, run_id: str, batch_no: int) -> dict[str, Any]:
    """Rescore one batch with the runtime's running rules (a worker job reloads them first; in
    the service, its rules watcher keeps them current)."""
    rules = runtime.rules
    with runtime.session() as session:
        with session.begin():
            batch = _lock_batch(session, run_id, batch_no)
            done = batch.finished_at is not None
            finished_here = False
            result = _batch_result(batch)
            if not done:
                batch.attempts += 1
                if batch.started_at is None:
                    batch.started_at = utcnow()
                if batch.cursor:
                    log.info("rescore run %s batch %d resumes at %d/%d", run_id, batch_no, batch.cursor,
                             len(batch.account_ids))
        while not done:
            try:
                with session.begin():
                    commit_without_waiting(session)
                    batch = _lock_batch(session, run_id, batch_no)
                    ids = batch.account_ids[batch.cursor:batch.cursor + CHUNK]
                    if not ids:
                        finished_here = batch.finished_at is None
                        batch.finished_at = batch.finished_at or utcnow()
                        result, done = _batch_result(batch), True
                        break
                    tally = rescore_chunk(runtime, session, ids, rules)
                    counted = tally["changes"]
                    changes = Counter(batch.changes)
                    changes.update(tally["changes"])
                    batch.changes = dict(changes)
                    batch.escalated += tally["escalated"]
                    batch.held += tally["held"]
                    batch.missing += tally["missing"]
                    batch.cursor += len(ids)
                for change, n in counted.items():            # committed: counted once
                    metrics.RESCORE_ACCOUNTS.labels(*change.split(">")).inc(n)
            except graph.ChunkStale as exc:
                # Rolled back: a live merge moved part of the chunk's graph; score it again.
                log.info("rescore run %s batch %d: chunk scored again (%s)", run_id, batch_no, exc)
            session.expunge_all()           # keep a long batch's memory flat
        if finished_here:                   # committed: a retry racing this job does not count it again
            metrics.RESCORE_BATCHES.inc()
        # Also when the batch was already done: a crash between its last commit and this check
        # must not leave the run open forever.
        _finish_run_if_done(session, run_id)
    return result


def _lock_batch(session: Session, run_id: str, batch_no: int) -> RescoreBatch:
    # The row lock serialises two jobs working the same batch (a retry racing a slow original):
    # the second waits, then reads the advanced cursor.
    batch = session.execute(
        select(RescoreBatch).where(RescoreBatch.run_id == run_id, RescoreBatch.batch_no == batch_no)
        .with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if batch is None:
        raise LookupError(f"rescore run {run_id} has no batch {batch_no}")
    return batch


def _batch_result(batch: RescoreBatch) -> dict[str, Any]:
    return {"run_id": batch.run_id, "batch_no": batch.batch_no, "seen": batch.cursor, "changes": batch.changes,
            "escalated": batch.escalated, "held": batch.held, "missing": batch.missing}


def rescore_chunk(runtime: Runtime, session: Session, ids: list[str], rules: RuleSet,
                  trigger: str = "rescore") -> dict[str, Any]:
    """Rescore accounts in the caller's transaction through the one pipeline; tally old -> new.
    `trigger`: what the evaluations are marked (kyc.scoring.pipeline.AGAIN).

    What the pipeline reads about the accounts is read for the whole chunk first (read_chunk),
    so scoring them reads nothing per account and one flush writes them all.
    """
    chunk = read_chunk(runtime, session, ids)
    accounts = chunk.accounts
    changes: Counter[str] = Counter()
    decision_changes: list[decisions.DecisionChange] = []
    escalated = held = missing = 0
    for account_id in ids:
        account = accounts.get(account_id)
        if account is None:
            missing += 1
            continue
        old = account.decision
        evaluations = rescore_account(runtime, session, account_id, rules=rules, chunk=chunk, trigger=trigger)
        new = account.decision
        if any(e.settlement.held for e in evaluations):
            held += 1
            log.info("rescore kept block account=%s (no %s rule acted)", account_id, RELEASES_BLOCK)
        elif SEVERITY[new] > SEVERITY[old]:
            escalated += 1
            log.info("rescore escalated account=%s %s -> %s rules=%s", account_id, old, new, rules.version[:19])
        changes[f"{old}>{new}"] += 1
        if old != new:
            decision_changes.append(decisions.by_rules(account, old, rules.version, trigger))
    chunk.write(session)
    decisions.record(runtime, session, decision_changes)
    return {"changes": changes, "escalated": escalated, "held": held, "missing": missing}


def _finish_run_if_done(session: Session, run_id: str) -> None:
    # Checked after this batch's commit: of two batches finishing together, the later committer
    # sees both and closes the run.
    with session.begin():
        open_batches = session.scalar(select(func.count()).select_from(RescoreBatch).where(
            RescoreBatch.run_id == run_id, RescoreBatch.finished_at.is_(None)))
        if open_batches:
            return
        closed = session.execute(update(RescoreRun).where(RescoreRun.id == run_id, RescoreRun.finished_at.is_(None))
                                 .values(finished_at=utcnow())).rowcount
    if closed:
        with session.begin():
            summary = run_summary(session, session.get(RescoreRun, run_id))
        log.info("rescore run %s finished: %d seen, %d changed, %d more severe, %d block kept",
                 run_id, summary["seen"], summary["changed"], summary["escalated"], summary["held"])


def current_rules(runtime: Runtime) -> RuleSet:
    """The rules on disk: reload when the files changed since this process last looked.

    A worker started before a rules change would otherwise rescore with the old version. A bad
    new rule file is refused (and logged once) by reload_rules; the running set is kept.
    """
    try:
        if runtime.rules_changed_on_disk():
            runtime.reload_rules(actor="worker")
    except RuleSetError:
        pass
    except OSError as exc:
        log.warning("rules directory unreadable (%s); rescoring with %s", exc, runtime.rules.version[:19])
    return runtime.rules
