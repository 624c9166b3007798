"""What runs on a clock: the schedules (rules watch, daily dormant rescore, outbox purge,
decision webhooks, planner statistics) and a worker's maintenance round.

With Redis each schedule is a chain of rq jobs on the `default` queue (kyc/jobs.py holds their
entry points), each occurrence scheduling the next as it starts; every `kyc worker` re-creates
a chain Redis lost (maintain). Without Redis `kyc serve` runs the same functions on one thread
(InProcessSchedule).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, time, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select

from kyc import idempotency
from kyc.config import Config
from kyc.persist import refresh_statistics
from kyc.models import RescoreRun, utcnow
from kyc.ops import webhooks
from kyc.ops.webhooks import purge_delivered
from kyc.rescore.background import background, settle_asks
from kyc.rescore.batch import dispatch
from kyc.rescore.queue import FAILURE_TTL, JOB_TIMEOUT, SCHEDULE_RESULT_TTL, SCHEDULED_JOBS
from kyc.rescore.runs import start_run, sweep_abandoned, sweep_orphans, unfinished_batches
from kyc.usage.identifiers import link_pending
from kyc.verification.senders import purge_outbox

if TYPE_CHECKING:
    from kyc.runtime import Runtime

log = logging.getLogger("kyc.jobs")

SCHEDULES = tuple(SCHEDULED_JOBS)
OUTBOX_PURGE_SECONDS = 60
PLANNER_STATS_SECONDS = 60       # kyc.persist.refresh_statistics: a look at pg_stat_user_tables, ANALYZE if due
DECISION_WEBHOOK_SECONDS = 5     # pending decision webhooks (retries, a restart's leftovers) looked at this often
RESCORE_ASKS_SECONDS = 10        # in-process: rescore asks a killed process committed and left (Redis: maintain)


def rescore_daily(runtime: Runtime, reason: str = "daily schedule", now: datetime | None = None
                  ) -> tuple[RescoreRun, RescoreRun]:
    """The daily rescore: accounts dormant KYC_DORMANT_DAYS (what was learned since reaches them
    before they wake), then the held accounts the gateway refused the day before (what held them
    may have weakened, and they send nothing that would re-evaluate them)."""
    day = ((now or utcnow()) - timedelta(days=1)).date()
    runs = (start_run(runtime, "dormant", params={"dormant_days": runtime.config.dormant_days}, reason=reason),
            start_run(runtime, "refused", params={"day": day.isoformat()}, reason=reason))
    for run in runs:
        dispatch(runtime, run)
    return runs


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
             "decision-webhooks": DECISION_WEBHOOK_SECONDS, "planner-stats": PLANNER_STATS_SECONDS,
             "rescore-asks": RESCORE_ASKS_SECONDS}
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
    return Queue("default", connection=connection).enqueue_at(
        when, SCHEDULED_JOBS[name], job_id=f"kyc-{name}-{int(when.timestamp())}", result_ttl=SCHEDULE_RESULT_TTL,
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


def purge_expired_codes(runtime: Runtime) -> int:
    """Delete outbox messages whose code has expired (kyc.verification.senders.purge_outbox),
    decision webhooks delivered long ago (kyc.ops.webhooks.purge_delivered) and answers kept
    under idempotency keys past their day (kyc.idempotency.purge)."""
    with runtime.session() as session, session.begin():
        purged = purge_outbox(session, runtime.config.code_ttl_seconds)
        answers = idempotency.purge(session)
    if purged:
        log.info("outbox: %d message(s) with expired codes deleted", purged)
    if answers:
        log.info("idempotency: %d answer(s) kept past their day deleted", answers)
    purge_delivered(runtime)
    return purged


def wake_decision_webhooks(runtime: Runtime) -> None:
    """In-process: wake the delivery thread (it also wakes itself when a retry falls due)."""
    if webhooks.enabled(runtime.config):
        webhooks.kick(runtime)


MAINTENANCE_SECONDS = 10
MAINTENANCE_LOCK = "kyc:maintenance"


def maintain(runtime: Runtime, connection) -> dict[str, int]:
    """What every `kyc worker` does every MAINTENANCE_SECONDS besides its jobs: re-create the
    schedules Redis lost (restarted empty), and (one worker at a time) enqueue the batches
    nobody works: never enqueued (sweep_orphans) or abandoned by a killed worker (sweep_abandoned),
    settle the rescore asks a web process committed and did not (settle_asks: it was killed), and
    link the usage identifiers left pending (kyc.usage.identifiers.link_pending)."""
    created = ensure_schedule(connection, runtime.config)
    swept = {"schedules": created, "orphans": 0, "abandoned": 0}
    if connection.set(MAINTENANCE_LOCK, "1", nx=True, px=MAINTENANCE_SECONDS * 1000 - 500):
        runs = settle_asks(runtime)
        for run in runs:
            dispatch(runtime, run)
        swept["asks"] = len(runs)
        swept["orphans"] = sweep_orphans(runtime, connection)
        swept["abandoned"] = sweep_abandoned(runtime, connection)
        # Usage identifiers an earlier release's web process committed and did not link.
        swept["links"] = link_pending(runtime)
    return swept


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


class InProcessSchedule(threading.Thread):
    """The same schedule without Redis: one daemon thread calling the same functions.

    `kyc serve` offers it to every web worker process after the fork (start_once); a lock file
    lets exactly one of them run it at a time, and the others keep trying for the lock, so one
    takes over within LOCK_RETRY_SECONDS when the holder exits (a crash, a restart, or gunicorn's
    HUP, which starts the new workers while the old holder still runs).
    (Starting it in the server's parent would fork workers while the thread may hold locks.)
    """

    LOCK_RETRY_SECONDS = 2.0

    def __init__(self, runtime: Runtime):
        super().__init__(name="kyc-schedule", daemon=True)
        self.runtime = runtime
        self.stopped = threading.Event()
        self.holding = threading.Event()
        self._lock_file = None

    @classmethod
    def start_once(cls, runtime: Runtime) -> "InProcessSchedule":
        """Offer this process to run the schedule: the thread runs it once it holds the lock on
        the data dir (at once, unless another process on that data dir runs it)."""
        schedule = cls(runtime)
        schedule.start()
        return schedule

    def _take_lock(self) -> bool:
        """Wait for the schedule's lock file (False: stopped first)."""
        import fcntl

        path = self.runtime.config.data_dir / "schedule.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - held open while this process runs the schedule: it is the lock
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if self.stopped.wait(self.LOCK_RETRY_SECONDS):
                    handle.close()
                    return False
                continue
            self._lock_file = handle
            if self.stopped.is_set():       # stop() came between the lock and the line above
                self.stop()
                return False
            self.holding.set()
            return True

    def stop(self) -> None:
        self.stopped.set()
        if self._lock_file is not None:
            self._lock_file.close()          # releases the lock for another process
            self._lock_file = None

    def run(self) -> None:
        if not self._take_lock():
            return
        config = self.runtime.config
        try:
            # Runs recorded by a process that stopped before finishing them (a restart, a crash):
            # rescored in the background, giving way to requests like any other.
            background(self.runtime).take_over(unfinished_batches(self.runtime))
        except Exception:  # noqa: BLE001 - the schedule must start whatever happened before
            log.exception("unfinished rescore runs could not be taken over")
        # The watch and the purge at once (a restart catches up), the daily rescore at its hour.
        due = {"rules-watch": utcnow(), "outbox-purge": utcnow(), "dormant-daily": next_time("dormant-daily", config),
               "decision-webhooks": utcnow(), "planner-stats": utcnow(), "rescore-asks": utcnow()}
        work = {"rules-watch": check_rules_change, "outbox-purge": purge_expired_codes, "dormant-daily": rescore_daily,
                "decision-webhooks": wake_decision_webhooks,
                # Asks another web process committed and was killed before settling: the
                # background thread settles every committed ask, whoever made it.
                "rescore-asks": lambda runtime: background(runtime).wake(),
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
