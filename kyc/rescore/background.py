"""Background rescoring: one daemon thread per runtime turning the rescoring committed
transactions asked for (rescore_asks rows, written in those transactions by
kyc.rescore.requests) into rescore runs (settle_asks), and working them without Redis.

Without Redis (the embedded default) the same functions run in-process: this thread records
the runs and works their batches, and `kyc serve` runs the schedule in one background thread
(kyc.rescore.schedule.InProcessSchedule). We chose a thread over an embedded Redis-compatible
store: the embedded stores on PyPI are either test doubles (fakeredis: not shared between
processes, not the real server) or bundle and spawn a redis-server binary (one more process to
manage for a default that must stay one command); and since progress lives in the database, a
thread loses nothing a queue would have kept. In-process, the thread gives way to live
requests (see Background). `drain` waits for that work (tests, the simulator, shutdown).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from time import monotonic, sleep
from typing import TYPE_CHECKING, Iterable

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import DBAPIError

from kyc import metrics
from kyc.db import write_lock
from kyc.models import ClusterMember, RescoreAsk, RescoreBatch, RescoreRun
from kyc.persist import in_list
from kyc.rescore.batch import dispatch, run_batch
from kyc.rescore.queue import redis_connection
from kyc.rescore.runs import record_run
from kyc.usage.identifiers import link_pending

if TYPE_CHECKING:
    from kyc.runtime import Runtime

log = logging.getLogger("kyc.jobs")

ASKS_READ = 500             # rescore_asks rows settled per transaction
REASON = "cluster standing changed"
_ASKS = (select(RescoreAsk.id, RescoreAsk.accounts, RescoreAsk.clusters).order_by(RescoreAsk.id)
         .limit(bindparam("limit")).with_for_update(skip_locked=True))
_DELETE_ASKS = delete(RescoreAsk).where(in_list(RescoreAsk.__table__.c.id, "ids"))
# The accounts of asks' batches no job has begun (ix_rescore_batches_unstarted). Asks' runs only:
# they are small and follow each other; a full rescore's thousand batches, read at every settle
# while it runs, would cost more than the few accounts an ask shares with them.
_UNSTARTED = (select(RescoreBatch.account_ids).join(RescoreRun, RescoreRun.id == RescoreBatch.run_id)
              .where(RescoreBatch.started_at.is_(None), RescoreRun.reason == bindparam("reason")))


def settle_asks(runtime: Runtime, *, batch_size: int | None = None, limit: int = ASKS_READ) -> list[RescoreRun]:
    """Turn committed rescore asks into runs, oldest first: per transaction, up to `limit` rows
    are merged (each account once), their clusters' members read, one run recorded and the rows
    deleted, so a crash leaves either the rows or the run, never neither. Two processes take
    different rows (SKIP LOCKED; SQLite's write lock serialises them). The runs recorded are
    returned, not yet worked or enqueued (dispatch them, or run their batches).

    An account already in an asks' batch no job has begun is left out: that batch reads the account
    when it begins, after the asks' transactions committed, so it rescores what they changed.
    Why: every usage re-evaluation of a farm's member asks for its cluster, and a farm of 300
    woken under the mixed load (bench/mixed_load.py, seed 3) was asked for a new run of all its
    members every ~0.2 s: 111 runs rescored 22,820 accounts in 150 s, runs queued behind each
    other for up to two minutes, some never worked before the load ended, and cluster actions
    waited for their locks."""
    runs = []
    while True:
        with runtime.session() as session, session.begin():
            write_lock(session)
            rows = session.execute(_ASKS, {"limit": limit}).all()
            if not rows:
                return runs
            ids: dict[str, None] = {}
            left_out: dict[str, str | None] = {}
            for _, accounts, clusters in rows:
                ids.update(dict.fromkeys(accounts))
                for cluster_id, asker in clusters.items():
                    # An asker's own evaluation is current only if nobody else changed the cluster too.
                    left_out[cluster_id] = asker if left_out.get(cluster_id, asker) == asker else None
            if left_out:
                for cluster_id, account_id in session.execute(
                        select(ClusterMember.cluster_id, ClusterMember.account_id)
                        .where(ClusterMember.cluster_id.in_(sorted(left_out)))):
                    if account_id != left_out[cluster_id]:
                        ids[account_id] = None
            if ids:
                for waiting in session.scalars(_UNSTARTED, {"reason": REASON}):
                    for account_id in waiting:
                        ids.pop(account_id, None)
            run = (record_run(runtime, session, "ids", account_ids=ids, reason=REASON, batch_size=batch_size)
                   if ids else None)
            session.execute(_DELETE_ASKS, {"ids": [row_id for row_id, _, _ in rows]})
        if run is not None:
            metrics.RESCORE_RUNS.labels("ids").inc()
            log.info("rescore run %s: %d account(s) in %d batch(es): %s (%d ask(s))", run.id, run.total,
                     run.batches, REASON, len(rows))
            runs.append(run)


class Background:
    """One daemon thread per runtime rescoring what committed transactions asked for.

    Asks are committed rows (rescore_asks), merged when settled: a farm's cluster that grows by
    ten members in a second is rescored once, not ten times. With Redis the thread settles them
    into a run at once and enqueues it. Without, it settles them and rescores the run here, in the
    serving process, where it would compete with the requests for the interpreter and, on SQLite,
    for the write lock: so it settles once no request has been in flight for QUIET seconds, and
    works in batches of GROUP accounts, each started the same way. Under unbroken traffic it
    still moves: each waits at most MAX_DEFER seconds. A restart loses nothing: asks stay rows
    until settled, and the schedule thread hands unfinished runs back (take_over) and wakes the
    settling of asks a killed process left (InProcessSchedule).
    """

    GROUP = 5
    QUIET = 0.05
    MAX_DEFER = 5.0
    RETRY = 1.0                      # seconds before asks or a batch the database refused are tried again
    IDLE = 5.0                       # seconds between looks, when idle, whether the runtime is gone

    def __init__(self, runtime: Runtime):
        self.runtime = weakref.ref(runtime)
        self._changed = threading.Condition()
        # Asks committed and not settled yet (rescore_asks): True at start, for those a process
        # killed after its commit left.
        self._asks = True
        self._batches: deque[tuple[str, int]] = deque()     # (run id, batch no) recorded, not yet run
        self._busy = False
        # Usage identifiers an earlier release left pending (kyc.usage.identifiers.link_pending;
        # reports now link theirs in their own transaction). True at start, so they are linked now.
        self._links = True
        self.thread = threading.Thread(target=self._run, name="kyc-rescore", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Settle the rescore asks committed so far (in this thread)."""
        with self._changed:
            self._asks = True
            self._changed.notify_all()

    def link_usage(self) -> None:
        """Link the usage identifiers committed reports left pending (in this thread)."""
        with self._changed:
            self._links = True
            self._changed.notify_all()

    def take_over(self, batches: Iterable[tuple[str, int]]) -> None:
        """Run batches recorded by an earlier process that ended before running them."""
        with self._changed:
            known = set(self._batches)
            self._batches.extend(b for b in batches if b not in known)
            self._changed.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is left to do; False if `timeout` seconds passed first."""
        deadline = None if timeout is None else monotonic() + timeout
        with self._changed:
            while self._asks or self._batches or self._links or self._busy:
                left = None if deadline is None else deadline - monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not (self._asks or self._batches or self._links):
                    if not self._changed.wait(timeout=self.IDLE) and self.runtime() is None:
                        return                   # the runtime is gone: so is this thread
                asks, links = self._asks, self._links
                self._asks, self._links, self._busy = False, False, True
            alive = True
            try:
                alive = self._work(asks, links)
            except Exception:  # noqa: BLE001 - a failed rescore must not stop the thread
                log.exception("background rescoring failed")
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
            if not alive:
                # The runtime went with work pending: what it asked for stays committed (asks,
                # runs) for the next process. Going round again found the same batches and
                # spun, a core each, for the rest of the process.
                return

    def _work(self, asks: bool, links: bool) -> bool:
        """One round's work; False if the runtime is gone."""
        # The runtime is held only while working, never across the wait above: a thread that
        # kept it between rounds kept it alive for good (and this thread with it), so every
        # runtime a process ever let go of stayed, with its engine and threads (the test suite
        # ended with 305 of these threads and 216 SQLite checkpoint threads; no more than 37 since).
        runtime = self.runtime()
        if runtime is None:
            return False
        if links:
            self._link(runtime)
        if asks:
            try:
                self._settle(runtime)
            except DBAPIError:
                # Not settled (SQLite busy under a long writer, the database away): the asks
                # stay committed and are tried again, so none is lost.
                log.warning("rescore asks not settled yet; retrying in %.0f s", self.RETRY, exc_info=True)
                sleep(self.RETRY)
                self.wake()
                return True
        self._run_one(runtime)
        return True

    def _link(self, runtime: Runtime) -> None:
        """Link pending usage identifiers (before rescoring: a link can change a cluster). If
        the database refuses, they stay pending and are tried again after RETRY seconds."""
        try:
            link_pending(runtime)
        except DBAPIError:
            log.warning("usage identifiers not linked yet; retrying in %.0f s", self.RETRY, exc_info=True)
            sleep(self.RETRY)
            self.link_usage()

    def _settle(self, runtime: Runtime) -> None:
        if redis_connection(runtime.config) is not None:
            for run in settle_asks(runtime):
                dispatch(runtime, run)      # Redis away: a worker's maintenance enqueues it later
            return
        # Settled once requests pause, as its batches run: asks committed meanwhile merge into one
        # run (a farm's cluster growing by ten members in a second is rescored once), and the
        # rows keep them safe while they wait.
        self._wait_for_quiet(runtime)
        runs = settle_asks(runtime, batch_size=self.GROUP)
        with self._changed:
            self._batches.extend((run.id, n) for run in runs for n in range(run.batches))

    def _run_one(self, runtime: Runtime) -> None:
        with self._changed:
            if not self._batches:
                return
            run_id, batch_no = self._batches.popleft()
        self._wait_for_quiet(runtime)
        try:
            run_batch(runtime, run_id, batch_no)
        except DBAPIError:
            # Recorded, so a restart would finish it; this process tries again first.
            log.warning("rescore run %s batch %d failed; retrying in %.0f s", run_id, batch_no, self.RETRY,
                        exc_info=True)
            with self._changed:
                self._batches.appendleft((run_id, batch_no))
            sleep(self.RETRY)

    def _wait_for_quiet(self, runtime: Runtime) -> None:
        deadline = monotonic() + self.MAX_DEFER
        while (idle := runtime.traffic.idle_for()) < self.QUIET and monotonic() < deadline:
            sleep(self.QUIET - idle)


_backgrounds_lock = threading.Lock()


def background(runtime: Runtime) -> Background:
    with _backgrounds_lock:
        worker = getattr(runtime, "_rescore_worker", None)
        if worker is None or not worker.thread.is_alive():     # e.g. in a forked worker process
            worker = Background(runtime)
            runtime._rescore_worker = worker
        return worker


def drain(runtime: Runtime, timeout: float | None = None) -> bool:
    """Wait until every rescore handed to the background thread has run; False if `timeout`
    seconds passed first (a database that keeps refusing keeps a batch waiting)."""
    worker = getattr(runtime, "_rescore_worker", None)
    return worker is None or worker.join(timeout)
