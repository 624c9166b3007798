"""rq: the Redis connection jobs go through, the queues, the job names and their lifetimes.

Jobs are named by their dotted path (rq stores the name with each job): kyc/jobs.py holds the
entry points under the names already-enqueued jobs and schedules carry, so renaming one there
would strand the jobs enqueued before a deploy.
"""

from __future__ import annotations

import threading
from typing import Any

from kyc.config import Config

QUEUES = ("rescore", "default")
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
