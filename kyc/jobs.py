"""Background jobs: plain functions taking ids.

Until a queue is configured these run in-process through the same functions a worker would
call. Work asked for inside a transaction (a cluster's members to rescore) is handed over only
once that transaction has committed, so a rolled-back evaluation queues nothing, and runs on a
background thread of the process, so a signup that makes a farm's cluster cross a size step
answers without waiting for the farm to be rescored. `drain` waits for that work (tests, the
simulator, shutdown).
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Iterable

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from kyc.models import ClusterMember
from kyc.runtime import Runtime
from kyc.scoring import rescore_account

log = logging.getLogger("kyc.jobs")

_draining = threading.local()


def rescore_accounts(runtime: Runtime, account_ids: Iterable[str]) -> int:
    """Rescore each account in its own transaction; returns how many were rescored."""
    done = 0
    for account_id in account_ids:
        with runtime.session() as session, session.begin():
            if rescore_account(runtime, session, account_id):
                done += 1
    return done


def enqueue_rescore(runtime: Runtime, account_ids: Iterable[str], reason: str) -> int:
    """Ask for accounts to be rescored (in-process until a worker queue is configured).

    A rescore can itself ask for more (a member's rescore blocks it, which is the cluster's
    first block): asked for while a run is under way, those join that run's queue instead of
    nesting, and each account is rescored at most once per run.
    """
    ids = list(dict.fromkeys(account_ids))
    log.info("rescore requested for %d account(s): %s", len(ids), reason)
    queue = getattr(_draining, "queue", None)
    if queue is not None:
        queue.extend(ids)
        return 0
    _draining.queue = queue = list(ids)
    seen: set[str] = set()
    done = 0
    try:
        while queue:
            account_id = queue.pop(0)
            if account_id in seen:
                continue
            seen.add(account_id)
            done += rescore_accounts(runtime, [account_id])
    finally:
        _draining.queue = None
    return done


class _Background:
    """One daemon thread per runtime running enqueue_rescore for work handed over after commits."""

    def __init__(self, runtime: Runtime):
        self.runtime = weakref.ref(runtime)
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="kyc-rescore", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                ids, reason = self.jobs.get(timeout=5)
            except queue.Empty:
                if self.runtime() is None:       # the runtime is gone: so is this thread
                    return
                continue
            try:
                runtime = self.runtime()
                if runtime is not None:
                    enqueue_rescore(runtime, ids, reason)
            except Exception:  # noqa: BLE001 - a failed rescore must not stop the thread
                log.exception("rescore of %d account(s) failed", len(ids))
            finally:
                self.jobs.task_done()


_backgrounds_lock = threading.Lock()


def _background(runtime: Runtime) -> _Background:
    with _backgrounds_lock:
        worker = getattr(runtime, "_rescore_worker", None)
        if worker is None or not worker.thread.is_alive():     # e.g. in a forked worker process
            worker = _Background(runtime)
            runtime._rescore_worker = worker
        return worker


def drain(runtime: Runtime) -> None:
    """Wait until every rescore handed to the background thread has run."""
    worker = getattr(runtime, "_rescore_worker", None)
    if worker is not None:
        worker.jobs.join()


def rescore_after_commit(runtime: Runtime, session: Session, *, exclude: str | None = None) -> None:
    """Run the rescoring the graph asked for in this transaction (session.info["kyc.rescore"])
    once it commits; `exclude` is the account the transaction itself just scored."""
    pending = session.info.get("kyc.rescore")
    if not pending or session.info.get("kyc.rescore_listening"):
        return
    session.info["kyc.rescore_listening"] = True

    def _after_commit(committed: Session) -> None:
        asked = committed.info.pop("kyc.rescore", None) or {"accounts": set(), "clusters": set()}
        committed.info.pop("kyc.rescore_listening", None)
        ids = set(asked["accounts"])
        if asked["clusters"]:
            with runtime.session() as reader:
                ids.update(reader.execute(select(ClusterMember.account_id).where(
                    ClusterMember.cluster_id.in_(sorted(asked["clusters"])))).scalars())
        ids.discard(exclude)
        if ids:
            _background(runtime).jobs.put((sorted(ids), "cluster standing changed"))

    def _after_rollback(rolled_back: Session) -> None:
        rolled_back.info.pop("kyc.rescore", None)
        rolled_back.info.pop("kyc.rescore_listening", None)

    # Whichever fires first empties session.info; the other then finds nothing to do.
    event.listen(session, "after_commit", _after_commit, once=True)
    event.listen(session, "after_rollback", _after_rollback, once=True)
