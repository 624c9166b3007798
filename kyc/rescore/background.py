"""Background rescoring: one daemon thread per runtime rescoring what committed transactions
asked for (kyc.rescore.requests hands the asks over once each transaction commits).

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

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from kyc.models import ClusterMember
from kyc.rescore.batch import enqueue_rescore, run_batch
from kyc.rescore.queue import redis_connection
from kyc.rescore.runs import start_run
from kyc.usage.identifiers import link_pending

if TYPE_CHECKING:
    from kyc.runtime import Runtime

log = logging.getLogger("kyc.jobs")

class Background:
    """One daemon thread per runtime rescoring what committed transactions asked for.

    Asks are merged while they wait: a farm's cluster that grows by ten members in a second is
    rescored once, not ten times. With Redis the thread only records and enqueues a run. Without,
    it records the run (so a restart loses nothing: the schedule thread hands unfinished runs
    back, see take_over) and rescores it here, in the serving process, where it would compete
    with the requests for the interpreter and, on SQLite, for the write lock: so it works in
    batches of GROUP accounts, each started once no request has been in flight for QUIET
    seconds. Under unbroken traffic it still moves: a batch waits at most MAX_DEFER seconds.
    """

    GROUP = 5
    QUIET = 0.05
    MAX_DEFER = 5.0
    RETRY = 1.0                      # seconds before asks or a batch the database refused are tried again

    def __init__(self, runtime: Runtime):
        self.runtime = weakref.ref(runtime)
        self._changed = threading.Condition()
        self._accounts: dict[str, None] = {}                # an ordered set
        self._clusters: dict[str, str | None] = {}          # cluster -> the member that asked (left out)
        self._batches: deque[tuple[str, int]] = deque()     # (run id, batch no) recorded, not yet run
        self._busy = False
        # Usage identifiers an earlier release left pending (kyc.usage.identifiers.link_pending;
        # reports now link theirs in their own transaction). True at start, so they are linked now.
        self._links = True
        self.thread = threading.Thread(target=self._run, name="kyc-rescore", daemon=True)
        self.thread.start()

    def put(self, accounts: Iterable[str], clusters: dict[str, str | None]) -> None:
        with self._changed:
            self._accounts.update(dict.fromkeys(accounts))
            for cluster_id, asker in clusters.items():
                # The first asker is the one whose evaluation came before every change asked about.
                self._clusters.setdefault(cluster_id, asker)
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
            while self._accounts or self._clusters or self._batches or self._links or self._busy:
                left = None if deadline is None else deadline - monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not (self._accounts or self._clusters or self._batches or self._links):
                    if not self._changed.wait(timeout=5) and self.runtime() is None:
                        return                   # the runtime is gone: so is this thread
                accounts, clusters, links = list(self._accounts), self._clusters, self._links
                self._accounts, self._clusters, self._links, self._busy = {}, {}, False, True
            try:
                runtime = self.runtime()
                if runtime is not None:
                    if links:
                        self._link(runtime)
                    if accounts or clusters:
                        try:
                            self._record(runtime, accounts, clusters)
                        except DBAPIError:
                            # Not recorded (SQLite busy under a long writer, the database away): the
                            # asks go back and are tried again, so none is lost.
                            log.warning("rescore asks not recorded yet; retrying in %.0f s", self.RETRY,
                                        exc_info=True)
                            self.put(accounts, clusters)
                            sleep(self.RETRY)
                            continue
                    self._run_one(runtime)
            except Exception:  # noqa: BLE001 - a failed rescore must not stop the thread
                log.exception("background rescoring failed")
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _link(self, runtime: Runtime) -> None:
        """Link pending usage identifiers (before rescoring: a link can change a cluster). If
        the database refuses, they stay pending and are tried again after RETRY seconds."""
        try:
            link_pending(runtime)
        except DBAPIError:
            log.warning("usage identifiers not linked yet; retrying in %.0f s", self.RETRY, exc_info=True)
            sleep(self.RETRY)
            self.link_usage()

    def _record(self, runtime: Runtime, accounts: list[str], clusters: dict[str, str | None]) -> None:
        ids = dict.fromkeys(accounts)
        if clusters:
            with runtime.session() as reader:
                for cluster_id, account_id in reader.execute(
                        select(ClusterMember.cluster_id, ClusterMember.account_id)
                        .where(ClusterMember.cluster_id.in_(sorted(clusters)))):
                    if account_id != clusters[cluster_id]:
                        ids[account_id] = None
        if not ids:
            return
        reason = "cluster standing changed"
        if redis_connection(runtime.config) is not None:
            enqueue_rescore(runtime, ids, reason)
            return
        run = start_run(runtime, "ids", account_ids=ids, reason=reason, batch_size=self.GROUP)
        with self._changed:
            self._batches.extend((run.id, n) for n in range(run.batches))

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
