"""rq: the Redis connection jobs go through, the queues, the job names and their lifetimes.

Jobs are named by their dotted path (rq stores the name with each job): kyc/jobs.py holds the
entry points under the names already-enqueued jobs and schedules carry, so renaming one there
would strand the jobs enqueued before a deploy.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Any

from kyc.config import Config

# A worker takes the first queue that holds a job: the schedules, webhooks and purges of
# `default` are short and due now, and must not wait behind a large run's thousands of batches.
QUEUES = ("default", "rescore")
JOB_TIMEOUT = 1800                       # seconds; a batch of 500 takes well under a minute
RETRY_INTERVALS = [10, 60, 300]          # backoff between the three retries of a failed job
FAILURE_TTL = 30 * 24 * 3600             # failed jobs are kept a month for inspection
RESULT_TTL = 7 * 24 * 3600               # finished jobs (and their summaries) a week
SCHEDULE_RESULT_TTL = 3600               # a finished rules watch (one a minute) an hour

RESCORE_BATCH_JOB = "kyc.jobs.rescore_batch"           # (run id, batch no), queue `rescore`
SCHEDULED_JOBS = {                                     # queue `default`
    "rules-watch": "kyc.jobs.scheduled_rules_watch",
    "dormant-daily": "kyc.jobs.scheduled_dormant_rescore",
    "outbox-purge": "kyc.jobs.scheduled_outbox_purge",
    "decision-webhooks": "kyc.jobs.scheduled_decision_webhooks",
    "planner-stats": "kyc.jobs.scheduled_planner_stats",
}

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


# A kyc worker process says it is alive under the name of the rq worker it runs, every few
# seconds (WorkerHeartbeat). rq keeps a started job in its registry until the job's timeout
# (JOB_TIMEOUT) when its worker is killed: half an hour of "running" for a job nobody runs, while
# another worker had long taken the batch over (kyc.rescore.runs). The heartbeat tells them apart.
WORKER_ALIVE_KEY = "kyc:worker:alive:{name}"
WORKER_ALIVE_SECONDS = 15
WORKER_BEAT_SECONDS = 5


class WorkerHeartbeat(threading.Thread):
    """`kyc worker`'s heartbeat: WORKER_ALIVE_KEY of the rq worker it runs now (`name`), kept
    alive while this process is."""

    def __init__(self, connection):
        super().__init__(name="kyc-worker-heartbeat", daemon=True)
        self.connection, self.name = connection, None
        self.stopped = threading.Event()

    def follow(self, name: str) -> None:
        """From now on, say that the rq worker `name` is alive (at once: it may take a job now)."""
        self.name = name
        self._beat()

    def _beat(self) -> None:
        from redis.exceptions import RedisError

        if self.name:
            try:
                self.connection.set(WORKER_ALIVE_KEY.format(name=self.name), 1, ex=WORKER_ALIVE_SECONDS)
            except RedisError:
                pass                            # Redis away: so is every job's registry

    def run(self) -> None:
        while not self.stopped.wait(WORKER_BEAT_SECONDS):
            self._beat()


def queue_counts(connection) -> dict[str, dict[str, int]]:
    """Jobs per queue and state. `running`: started by a worker that is alive; `abandoned`:
    started by one that died (killed mid-job), until rq's cleanup retries them."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    counts = {}
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        started = StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)
        workers = [job.worker_name if job is not None else None
                   for job in Job.fetch_many(started, connection=connection)]
        alive = [bool(connection.exists(WORKER_ALIVE_KEY.format(name=w))) if w else False for w in workers]
        counts[name] = {
            "queued": queue.count,
            "scheduled": ScheduledJobRegistry(queue=queue).count,
            "running": sum(alive),
            "abandoned": len(alive) - sum(alive),
            "failed": FailedJobRegistry(queue=queue).count,
            "finished": FinishedJobRegistry(queue=queue).count,
        }
    return counts


_PR_SET_PDEATHSIG = 1
_forking_pid = 0


def children_die_with_this_process() -> None:
    """Every child this process forks from now on is killed by the kernel when this process
    dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing changes).

    rq runs its scheduler in a forked child, which holds copies of the worker's sockets. After
    `kill -9` of the worker it lived on, keeping a dead transaction's database connection open
    (its row locks held, so no worker could take the batch over) and the metrics port bound."""
    if not sys.platform.startswith("linux"):
        return
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def before() -> None:
        global _forking_pid
        _forking_pid = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != _forking_pid:       # the parent died before the request took effect
            os._exit(1)

    os.register_at_fork(before=before, after_in_child=in_child)
