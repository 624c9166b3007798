"""rq entry points: the functions rq workers run, under the dotted names (kyc.jobs.<name>)
that enqueued jobs and scheduled occurrences carry, so jobs enqueued before a deploy still run
after it. Each is a thin call into kyc/rescore/, which holds what they do.

Jobs take ids (a run id, a batch number). Each worker process builds one Runtime the first time
a job needs it and reuses it for every later job.
"""

from __future__ import annotations

import threading
from typing import Any

from kyc.config import Config
from kyc.persist import refresh_statistics
from kyc.ops.webhooks import deliver_due
from kyc.rescore.batch import current_rules, run_batch, working
from kyc.rescore.queue import redis_connection
from kyc.rescore.schedule import (check_rules_change, purge_expired_codes, rescore_daily, schedule_next)
from kyc.runtime import Runtime
from kyc.signals import clear_value_caches

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


def rescore_batch(run_id: str, batch_no: int) -> dict[str, Any]:
    """rq job (queue `rescore`): rescore one batch of a run; idempotent and resumable."""
    runtime = worker_runtime()
    current_rules(runtime)
    try:
        with working(redis_connection(runtime.config), run_id, batch_no):
            return run_batch(runtime, run_id, batch_no)
    finally:
        clear_value_caches()      # a worker's memory stays flat however many batches it works


def scheduled_rules_watch() -> str | None:
    """rq job (queue `default`): schedule the next check first, so a failure never ends the chain."""
    runtime = worker_runtime()
    connection = redis_connection(runtime.config)
    schedule_next(connection, runtime.config, "rules-watch")
    current_rules(runtime)
    run = check_rules_change(runtime)
    return run.id if run else None


def scheduled_dormant_rescore() -> list[str]:
    """The daily rescore (kyc.rescore.schedule.rescore_daily: dormant, then refused accounts)."""
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "dormant-daily")
    return [run.id for run in rescore_daily(runtime)]


def scheduled_planner_stats() -> list[str]:
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "planner-stats")
    return refresh_statistics(runtime.engine)


def scheduled_decision_webhooks() -> int:
    """rq job (queue `default`): send the decision webhooks that are due (retries after their
    backoff, events a crash or a Redis outage left behind)."""
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "decision-webhooks")
    return deliver_due(runtime)


def scheduled_outbox_purge() -> int:
    runtime = worker_runtime()
    schedule_next(redis_connection(runtime.config), runtime.config, "outbox-purge")
    return purge_expired_codes(runtime)

