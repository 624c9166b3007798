"""Background jobs: rescoring dormant accounts on rq, or in-process when no Redis is configured.

Jobs are plain functions taking ids (a run id, a batch number). Each worker process builds one
Runtime the first time a job needs it and reuses it for every later job.

A rescore *run* and its *batches* are rows in the database (rescore_runs, rescore_batches),
not state in Redis. A batch job rescores its accounts in small chunks, one transaction per
chunk, and advances the batch's cursor in the same transaction that stores the chunk's
evaluations. So:
  - a worker killed mid-batch loses nothing: the next attempt (rq's retry of the abandoned job,
    or `kyc rescore --resume`) starts at the cursor, and never rescores a committed account twice;
  - running a batch job twice is harmless: the second finds the cursor at the end;
  - the run's summary (seen, changed, old -> new) is read from committed rows only.

Blocks are sticky on every path (kyc.scoring.decide.settle): a rescore that would relax an
account from `block` keeps the block (the new evaluation is still stored, for the record) unless
one of its acting reasons comes from a rule tagged `releases_block`; runs count those accounts
as "kept at block".

Without Redis (the embedded default) the same functions run in-process: enqueue_rescore runs the
batches in the calling thread, and `kyc serve` runs the schedule in one background thread
(InProcessSchedule). We chose a thread over an embedded Redis-compatible store: the embedded
stores on PyPI are either test doubles (fakeredis: not shared between processes, not the real
server) or bundle and spawn a redis-server binary (one more process to manage for a default
that must stay one command); and since progress lives in the database, a thread loses nothing a
queue would have kept.

Work asked for inside a transaction (a cluster's members to rescore, kyc.graph) is handed over
only once that transaction has committed, so a rolled-back evaluation queues nothing, and goes
through a background thread of the process (enqueue_rescore from there: rq, or in-process), so
a signup that makes a farm's cluster cross a size step answers without waiting for the farm to
be rescored. In-process, that thread gives way to live requests (see _Background). `drain`
waits for that work (tests, the simulator, shutdown).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter, deque
from datetime import datetime, time, timedelta, timezone
from time import monotonic, sleep
from typing import Any, Iterable, Iterator

from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from kyc import graph, metrics
from kyc.config import Config
from kyc.db import refresh_statistics
from kyc.engine import RuleSet, RuleSetError
from kyc.ids import new_id
from kyc.models import SEVERITY, Account, ClusterMember, Evaluation, RescoreBatch, RescoreRun, utcnow
from kyc.ops import decisions
from kyc.runtime import Runtime
from kyc.scoring import read_chunk, rescore_account
from kyc.scoring.decide import RELEASES_BLOCK
from kyc.signals import clear_value_caches

log = logging.getLogger("kyc.jobs")

QUEUES = ("rescore", "default")
SELECTORS = ("dormant", "all", "cluster", "rules_change", "ids")
CHUNK = 100                              # accounts per transaction inside a batch
JOB_TIMEOUT = 1800                       # seconds; a batch of 500 takes well under a minute
RETRY_INTERVALS = [10, 60, 300]          # backoff between the three retries of a failed job
FAILURE_TTL = 30 * 24 * 3600             # failed jobs are kept a month for inspection
RESULT_TTL = 7 * 24 * 3600               # finished jobs (and their summaries) a week
SCHEDULE_RESULT_TTL = 3600               # a finished rules watch (one a minute) an hour
SCHEDULES = ("rules-watch", "dormant-daily", "outbox-purge", "decision-webhooks", "planner-stats")
OUTBOX_PURGE_SECONDS = 60
PLANNER_STATS_SECONDS = 60       # kyc.db.refresh_statistics: a look at pg_stat_user_tables, ANALYZE if due
DECISION_WEBHOOK_SECONDS = 5     # pending decision webhooks (retries, a restart's leftovers) looked at this often


# --- the runtime of a worker process ----------------------------------------------------------

_worker_runtime: Runtime | None = None
_worker_lock = threading.Lock()


def use_runtime(runtime: Runtime | None) -> None:
    """Make `runtime` the one job functions use in this process (`kyc worker` sets it at start)."""
    global _worker_runtime
    _worker_runtime = runtime


def worker_runtime() -> Runtime:
    """The process's Runtime, built from KYC_* settings on first use and then reused."""
    global _worker_runtime
    with _worker_lock:
        if _worker_runtime is None:
            _worker_runtime = Runtime.start(Config.from_env(), migrate=False)
        return _worker_runtime


_redis_pools: dict[str, Any] = {}


def redis_connection(config: Config):
    """The Redis connection for rq, or None when jobs run in-process (no KYC_REDIS_URL)."""
    if not config.redis_url:
        return None
    from redis import Redis

    if config.redis_url not in _redis_pools:
        # A hung Redis must not hold the thread that enqueues a service's rescoring forever; an
        # rq worker raises the read timeout above its blocking reads' wait (rq's _set_connection).
        _redis_pools[config.redis_url] = Redis.from_url(config.redis_url, socket_connect_timeout=5,
                                                        socket_timeout=10)
    return _redis_pools[config.redis_url]


# --- public entry points other modules call ---------------------------------------------------

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


class _Background:
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
        self.thread = threading.Thread(target=self._run, name="kyc-rescore", daemon=True)
        self.thread.start()

    def put(self, accounts: Iterable[str], clusters: dict[str, str | None]) -> None:
        with self._changed:
            self._accounts.update(dict.fromkeys(accounts))
            for cluster_id, asker in clusters.items():
                # The first asker is the one whose evaluation came before every change asked about.
                self._clusters.setdefault(cluster_id, asker)
            self._changed.notify_all()

    def take_over(self, batches: Iterable[tuple[str, int]]) -> None:
        """Run batches recorded by an earlier process that ended before running them."""
        with self._changed:
            known = set(self._batches)
            self._batches.extend(b for b in batches if b not in known)
            self._changed.notify_all()

    def join(self) -> None:
        with self._changed:
            while self._accounts or self._clusters or self._batches or self._busy:
                self._changed.wait()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not (self._accounts or self._clusters or self._batches):
                    if not self._changed.wait(timeout=5) and self.runtime() is None:
                        return                   # the runtime is gone: so is this thread
                accounts, clusters = list(self._accounts), self._clusters
                self._accounts, self._clusters, self._busy = {}, {}, True
            try:
                runtime = self.runtime()
                if runtime is not None:
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
        worker.join()


def rescore_after_commit(runtime: Runtime, session: Session, *, exclude: str | None = None) -> None:
    """Run the rescoring the graph asked for in this transaction (session.info["kyc.rescore"])
    once it commits; `exclude` is the account whose scoring (just now) asked for it.

    A rescore batch scores many accounts in one transaction: each asked-for account or cluster
    remembers the account whose scoring asked first, and only that one is left out, as if each
    account had had its own transaction.
    """
    pending = session.info.get("kyc.rescore")
    if not pending:
        return
    askers = session.info.setdefault("kyc.rescore_askers", {})
    for kind in ("accounts", "clusters"):
        for item in pending[kind]:
            askers.setdefault((kind, item), exclude)
    if session.info.get("kyc.rescore_listening"):
        return
    session.info["kyc.rescore_listening"] = True

    def _after_commit(committed: Session) -> None:
        asked = committed.info.pop("kyc.rescore", None) or {"accounts": set(), "clusters": set()}
        asker = committed.info.pop("kyc.rescore_askers", {})
        committed.info.pop("kyc.rescore_listening", None)
        accounts = sorted(a for a in asked["accounts"] if a != asker.get(("accounts", a)))
        # The clusters' members are read by the background thread, not by the request that asked.
        clusters = {c: asker.get(("clusters", c)) for c in sorted(asked["clusters"])}
        if accounts or clusters:
            _background(runtime).put(accounts, clusters)

    def _after_rollback(rolled_back: Session) -> None:
        rolled_back.info.pop("kyc.rescore", None)
        rolled_back.info.pop("kyc.rescore_askers", None)
        rolled_back.info.pop("kyc.rescore_listening", None)

    # Whichever fires first empties session.info; the other then finds nothing to do.
    event.listen(session, "after_commit", _after_commit, once=True)
    event.listen(session, "after_rollback", _after_rollback, once=True)


# --- runs ---------------------------------------------------------------------------------------

def accounts_query(selector: str, params: dict[str, Any], version: str, now: datetime | None = None):
    """The ids a selector picks, in id order (stable batches, and row locks taken in one order)."""
    query = select(Account.id)
    if selector == "dormant":
        since = (now or utcnow()) - timedelta(days=int(params["dormant_days"]))
        query = query.where(Account.last_seen_at < since)
    elif selector == "cluster":
        # The memberships, which merges and splits move at once (accounts.cluster_id follows
        # only each account's next evaluation).
        query = query.join(ClusterMember, ClusterMember.account_id == Account.id).where(
            ClusterMember.cluster_id == params["cluster_id"])
    elif selector == "rules_change":
        # Accounts whose latest evaluation was made under another rules version.
        query = query.join(Evaluation, Evaluation.id == Account.last_evaluation_id).where(
            Evaluation.rules_version != version)
    elif selector != "all":
        raise ValueError(f"unknown selector {selector!r}")
    return query.order_by(Account.id)


def start_run(runtime: Runtime, selector: str, *, params: dict[str, Any] | None = None, reason: str,
              account_ids: Iterable[str] | None = None, batch_size: int | None = None) -> RescoreRun:
    """Record a run and its batches in one transaction; nothing is enqueued yet (see dispatch)."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}")
    params = dict(params or {})
    size = batch_size or runtime.config.rescore_batch_size
    version = runtime.rules.version
    with runtime.session() as session, session.begin():
        run = RescoreRun(id=new_id("rr"), selector=selector, params=params, reason=reason[:500],
                         rules_version=version, total=0, batches=0)
        session.add(run)
        session.flush()
        if account_ids is not None:
            ids: Iterable[str] = account_ids
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
    metrics.RESCORE_RUNS.labels(selector).inc()
    log.info("rescore run %s: %s %s, %d account(s) in %d batch(es): %s",
             run.id, selector, params or "", run.total, run.batches, reason)
    return run


def _chunks(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for account_id in ids:
        batch.append(account_id)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def dispatch(runtime: Runtime, run: RescoreRun) -> bool:
    """Enqueue the run's batches on rq when Redis is configured (True), else run them here (False)."""
    connection = redis_connection(runtime.config)
    if connection is None:
        run_inline(runtime, run)
        return False
    from redis.exceptions import RedisError

    try:
        enqueue_batches(connection, run.id, range(run.batches))
    except RedisError:
        # The run is recorded: a worker's maintenance enqueues it once Redis is back (sweep_orphans).
        log.error("Redis unreachable: rescore run %s recorded but not enqueued yet", run.id)
    return True


def run_inline(runtime: Runtime, run: RescoreRun) -> None:
    for batch_no in range(run.batches):
        run_batch(runtime, run.id, batch_no)


def enqueue_batches(connection, run_id: str, batch_nos: Iterable[int], *, suffix: str = "") -> int:
    from rq import Queue, Retry

    queue = Queue("rescore", connection=connection)
    count = 0
    for group in _chunks(batch_nos, 500):
        jobs = [Queue.prepare_data(rescore_batch, args=(run_id, n), job_id=f"rescore-{run_id}-{n}{suffix}",
                                   timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                                   retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS))
                for n in group]
        queue.enqueue_many(jobs)
        count += len(jobs)
    return count


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


MAINTENANCE_SECONDS = 10
MAINTENANCE_LOCK = "kyc:maintenance"


def maintain(runtime: Runtime, connection) -> dict[str, int]:
    """What every `kyc worker` does every MAINTENANCE_SECONDS besides its jobs: re-create the
    schedules Redis lost (restarted empty), and (one worker at a time) enqueue the batches
    nobody works: never enqueued (sweep_orphans) or abandoned by a killed worker (sweep_abandoned)."""
    created = ensure_schedule(connection, runtime.config)
    swept = {"schedules": created, "orphans": 0, "abandoned": 0}
    if connection.set(MAINTENANCE_LOCK, "1", nx=True, px=MAINTENANCE_SECONDS * 1000 - 500):
        swept["orphans"] = sweep_orphans(runtime, connection)
        swept["abandoned"] = sweep_abandoned(runtime, connection)
    return swept


def wait_for_redis(connection, stopped: threading.Event | None = None) -> None:
    """Return once Redis answers (a worker whose rq loop quit on a Redis outage serves again)."""
    from redis.exceptions import RedisError

    stopped = stopped or threading.Event()
    while not stopped.wait(1.0):
        try:
            connection.ping()
            return
        except RedisError:
            continue


class WorkerMaintenance(threading.Thread):
    """`kyc worker`'s maintenance thread (maintain), beside rq's work loop."""

    def __init__(self, runtime: Runtime, connection):
        super().__init__(name="kyc-worker-maintenance", daemon=True)
        self.runtime, self.connection = runtime, connection
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                maintain(self.runtime, self.connection)
            except Exception as exc:  # noqa: BLE001 - Redis or the database away: try again next round
                log.warning("worker maintenance skipped: %s: %s", exc.__class__.__name__, exc)
            if self.stopped.wait(MAINTENANCE_SECONDS):
                return


# --- the batch job ------------------------------------------------------------------------------

def rescore_batch(run_id: str, batch_no: int) -> dict[str, Any]:
    """rq job (queue `rescore`): rescore one batch of a run; idempotent and resumable."""
    runtime = worker_runtime()
    current_rules(runtime)
    try:
        with _working(redis_connection(runtime.config), run_id, batch_no):
            return run_batch(runtime, run_id, batch_no)
    finally:
        clear_value_caches()      # a worker's memory stays flat however many batches it works


# A batch job says it is alive with a key that expires ALIVE_SECONDS after its last refresh
# (every ALIVE_SECONDS / 3, from a thread): a worker killed mid-batch stops refreshing it, and
# the next maintenance round after it expires enqueues the batch again (sweep_abandoned).
ALIVE_SECONDS = 15
ALIVE_KEY = "kyc:rescore:alive:{run_id}:{batch_no}"
LAST_JOB_KEY = "kyc:rescore:job:{run_id}:{batch_no}"      # the rq job that last worked the batch


class _working:
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
    postgres = runtime.engine.dialect.name == "postgresql"
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
                    if postgres:
                        # Safe without the fsync wait: the cursor commits with the evaluations, so a
                        # database crash can only lose both together, and the batch redoes exactly those.
                        session.execute(text("SET LOCAL synchronous_commit = off"))
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


def rescore_chunk(runtime: Runtime, session: Session, ids: list[str], rules: RuleSet) -> dict[str, Any]:
    """Rescore accounts in the caller's transaction through the one pipeline; tally old -> new.

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
        evaluations = rescore_account(runtime, session, account_id, rules=rules, chunk=chunk)
        new = account.decision
        if any(e.settlement.held for e in evaluations):
            held += 1
            log.info("rescore kept block account=%s (no %s rule acted)", account_id, RELEASES_BLOCK)
        elif SEVERITY[new] > SEVERITY[old]:
            escalated += 1
            log.info("rescore escalated account=%s %s -> %s rules=%s", account_id, old, new, rules.version[:19])
        changes[f"{old}>{new}"] += 1
        if old != new:
            decision_changes.append(decisions.by_rules(account, old, rules.version, "rescore"))
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


# --- summaries ------------------------------------------------------------------------------------

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


def queue_counts(connection) -> dict[str, dict[str, int]]:
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    counts = {}
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        counts[name] = {
            "queued": queue.count,
            "scheduled": ScheduledJobRegistry(queue=queue).count,
            "running": StartedJobRegistry(queue=queue).count,
            "failed": FailedJobRegistry(queue=queue).count,
            "finished": FinishedJobRegistry(queue=queue).count,
        }
    return counts


# --- the schedule ---------------------------------------------------------------------------------

def rescore_dormant(runtime: Runtime, reason: str = "daily schedule") -> RescoreRun:
    days = runtime.config.dormant_days
    run = start_run(runtime, "dormant", params={"dormant_days": days}, reason=reason)
    dispatch(runtime, run)
    return run


def check_rules_change(runtime: Runtime) -> RescoreRun | None:
    """Start a rescore of accounts scored under another version when the rules version changed
    since the last such run (a manual `kyc rescore --since-rules-change` counts as one).
    The running rules' version: a worker reloads them first; the service's watcher does."""
    version = runtime.rules.version
    with runtime.session() as session:
        last = session.scalars(select(RescoreRun).where(RescoreRun.selector == "rules_change")
                               .order_by(RescoreRun.created_at.desc(), RescoreRun.id.desc()).limit(1)).first()
    if last is not None and last.rules_version == version:
        return None
    run = start_run(runtime, "rules_change", reason=f"rules version is now {version[:19]}")
    dispatch(runtime, run)
    return run


def next_time(name: str, config: Config, now: datetime | None = None) -> datetime:
    """When a schedule fires next. Times are UTC, so no daylight-saving shift or local-time cron
    reading (rq.cron reads cron strings in local time) can move or repeat a run."""
    now = now or utcnow()
    every = {"rules-watch": max(1, config.rules_watch_seconds), "outbox-purge": OUTBOX_PURGE_SECONDS,
             "decision-webhooks": DECISION_WEBHOOK_SECONDS, "planner-stats": PLANNER_STATS_SECONDS}
    if name in every:
        step = every[name]
        return datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, timezone.utc)
    if name == "dormant-daily":
        hour, minute = (int(x) for x in config.rescore_daily_at.split(":"))
        at = datetime.combine(now.date(), time(hour, minute), timezone.utc)
        return at if at > now else at + timedelta(days=1)
    raise ValueError(f"unknown schedule {name!r}")


def schedule_next(connection, config: Config, name: str, now: datetime | None = None):
    """Put the next occurrence on rq's scheduled registry (fired by a `--with-scheduler` worker).

    The job id is the schedule's name and due time, so any number of workers scheduling the
    same occurrence make one job, not several.
    """
    from rq import Queue

    when = next_time(name, config, now)
    function = {"rules-watch": scheduled_rules_watch, "dormant-daily": scheduled_dormant_rescore,
                "outbox-purge": scheduled_outbox_purge, "decision-webhooks": scheduled_decision_webhooks,
                "planner-stats": scheduled_planner_stats}[name]
    return Queue("default", connection=connection).enqueue_at(
        when, function, job_id=f"kyc-{name}-{int(when.timestamp())}", result_ttl=SCHEDULE_RESULT_TTL,
        failure_ttl=FAILURE_TTL, job_timeout=JOB_TIMEOUT)


def ensure_schedule(connection, config: Config, now: datetime | None = None) -> int:
    """(Re)create the chain of each schedule whose next occurrence is not in Redis (a worker
    starting; Redis restarted empty). Returns how many were created.

    Each occurrence schedules the next one as it starts, under the same id this computes, so
    re-creating one that a running occurrence is about to schedule makes the same single job."""
    from rq.job import Job

    created = 0
    for name in SCHEDULES:
        when = next_time(name, config, now)
        if not Job.exists(f"kyc-{name}-{int(when.timestamp())}", connection=connection):
            schedule_next(connection, config, name, now)
            created += 1
    return created


def scheduled_rules_watch() -> str | None:
    """rq job (queue `default`): schedule the next check first, so a failure never ends the chain."""
    runtime = worker_runtime()
    connection = redis_connection(runtime.config)
    schedule_next(connection, runtime.config, "rules-watch")
    current_rules(runtime)
    run = check_rules_change(runtime)
    return run.id if run else None


def scheduled_dormant_rescore() -> str:
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "dormant-daily")
    return rescore_dormant(runtime).id


def scheduled_planner_stats() -> list[str]:
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "planner-stats")
    return refresh_statistics(runtime.engine)


def purge_expired_codes(runtime: Runtime) -> int:
    """Delete outbox messages whose code has expired (kyc.verification.senders.purge_outbox),
    and decision webhooks delivered long ago (kyc.ops.webhooks.purge_delivered)."""
    from kyc.ops.webhooks import purge_delivered
    from kyc.verification.senders import purge_outbox

    with runtime.session() as session, session.begin():
        purged = purge_outbox(session, runtime.config.code_ttl_seconds)
    if purged:
        log.info("outbox: %d message(s) with expired codes deleted", purged)
    purge_delivered(runtime)
    return purged


def scheduled_decision_webhooks() -> int:
    """rq job (queue `default`): send the decision webhooks that are due (retries after their
    backoff, events a crash or a Redis outage left behind)."""
    from kyc.ops.webhooks import deliver_due

    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "decision-webhooks")
    return deliver_due(runtime)


def wake_decision_webhooks(runtime: Runtime) -> None:
    """In-process: wake the delivery thread (it also wakes itself when a retry falls due)."""
    from kyc.ops import webhooks

    if webhooks.enabled(runtime.config):
        webhooks.kick(runtime)


def scheduled_outbox_purge() -> int:
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "outbox-purge")
    return purge_expired_codes(runtime)


class InProcessSchedule(threading.Thread):
    """The same schedule without Redis: one daemon thread calling the same functions.

    `kyc serve` offers it to every web worker process after the fork (start_once); a lock file
    lets exactly one of them run it, and a replacement worker takes over when that one exits.
    (Starting it in the server's parent would fork workers while the thread may hold locks.)
    """

    def __init__(self, runtime: Runtime):
        super().__init__(name="kyc-schedule", daemon=True)
        self.runtime = runtime
        self.stopped = threading.Event()
        self._lock_file = None

    @classmethod
    def start_once(cls, runtime: Runtime) -> "InProcessSchedule | None":
        """Start the schedule unless another process on this data dir already runs it."""
        import fcntl

        path = runtime.config.data_dir / "schedule.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - held open for the life of the process: it is the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        schedule = cls(runtime)
        schedule._lock_file = handle
        schedule.start()
        return schedule

    def stop(self) -> None:
        self.stopped.set()
        if self._lock_file is not None:
            self._lock_file.close()          # releases the lock for another process
            self._lock_file = None

    def run(self) -> None:
        config = self.runtime.config
        try:
            # Runs recorded by a process that stopped before finishing them (a restart, a crash):
            # rescored in the background, giving way to requests like any other.
            _background(self.runtime).take_over(unfinished_batches(self.runtime))
        except Exception:  # noqa: BLE001 - the schedule must start whatever happened before
            log.exception("unfinished rescore runs could not be taken over")
        # The watch and the purge at once (a restart catches up), the daily rescore at its hour.
        due = {"rules-watch": utcnow(), "outbox-purge": utcnow(), "dormant-daily": next_time("dormant-daily", config),
               "decision-webhooks": utcnow(), "planner-stats": utcnow()}
        work = {"rules-watch": check_rules_change, "outbox-purge": purge_expired_codes, "dormant-daily": rescore_dormant,
                "decision-webhooks": wake_decision_webhooks,
                "planner-stats": lambda runtime: refresh_statistics(runtime.engine)}
        while True:
            wait = max(0.0, (min(due.values()) - utcnow()).total_seconds())
            if self.stopped.wait(wait):
                return
            for name, when in due.items():
                if utcnow() < when:
                    continue
                due[name] = next_time(name, config)
                try:
                    work[name](self.runtime)
                except Exception:  # noqa: BLE001 - the schedule must outlive one failed run
                    log.exception("scheduled %s failed", name)
