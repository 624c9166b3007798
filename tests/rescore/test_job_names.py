"""rq stores each job with the dotted name of its function: the names already-enqueued jobs and
scheduled occurrences carry must keep resolving after a deploy."""

from __future__ import annotations

from rq.utils import import_attribute

from kyc.rescore import queue

# As enqueued by every release since the schedules and batch jobs existed.
RELEASED = {"kyc.jobs.rescore_batch", "kyc.jobs.scheduled_rules_watch", "kyc.jobs.scheduled_dormant_rescore",
            "kyc.jobs.scheduled_outbox_purge", "kyc.jobs.scheduled_decision_webhooks",
            "kyc.jobs.scheduled_planner_stats", "kyc.ops.webhooks.deliver_job"}


def test_released_job_names_resolve_to_functions():
    for name in RELEASED:
        assert callable(import_attribute(name)), name


def test_jobs_are_enqueued_under_released_names():
    assert {queue.RESCORE_BATCH_JOB, *queue.SCHEDULED_JOBS.values()} <= RELEASED
    assert all(callable(import_attribute(name)) for name in (queue.RESCORE_BATCH_JOB, *queue.SCHEDULED_JOBS.values()))
