"""Workers recover what Redis or a killed worker lost, on real Redis and PostgreSQL: the
schedules come back after Redis restarts empty, and a killed worker's batch is worked again
within a minute (rq alone waits for the job's 30-minute timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from kyc import jobs
import kyc.rescore.batch
import kyc.rescore.queue
import kyc.rescore.runs
import kyc.rescore.schedule
from kyc import rescore
from kyc.models import RescoreAsk, RescoreBatch, RescoreRun
from tests.conftest import wait_until
from tests.rescore.test_jobs import (_worker_pids, kyc_command, pg_url, queued_runtime, redis_db,  # noqa: F401
                                    rescore_evaluations, rules_dir, seed, worker_env)


def _schedules(connection) -> set[str]:
    ids = ScheduledJobRegistry("default", connection=connection).get_job_ids()
    return {name for name in rescore.schedule.SCHEDULES if any(j.startswith(f"kyc-{name}-") for j in ids)}


def _start_worker(runtime) -> subprocess.Popen:
    return subprocess.Popen(kyc_command("worker"), env=worker_env(runtime), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def _batch(runtime, run_id: str, batch_no: int = 0) -> RescoreBatch:
    with runtime.session() as session:
        return session.get(RescoreBatch, (run_id, batch_no))


def _run(runtime, run_id: str) -> RescoreRun:
    with runtime.session() as session:
        return session.get(RescoreRun, run_id)


def test_ensure_schedule_creates_only_what_is_missing(queued_runtime, redis_db):
    from kyc.models import utcnow

    now = utcnow()                    # one instant: a 5-second schedule's next slot must not move between calls
    assert rescore.schedule.ensure_schedule(redis_db, queued_runtime.config, now) == len(rescore.schedule.SCHEDULES)
    assert rescore.schedule.ensure_schedule(redis_db, queued_runtime.config, now) == 0
    redis_db.flushdb()                                   # Redis restarted empty
    assert rescore.schedule.ensure_schedule(redis_db, queued_runtime.config, now) == len(rescore.schedule.SCHEDULES)
    assert _schedules(redis_db) == set(rescore.schedule.SCHEDULES)


def test_a_running_worker_recreates_the_schedules_redis_lost(queued_runtime, redis_db):
    worker = _start_worker(queued_runtime)
    try:
        wait_until(lambda: _schedules(redis_db) == set(rescore.schedule.SCHEDULES), what="schedules at start")
        # The live worker may re-create them at any moment after the flush (an "empty right
        # after the flush" check failed once): what proves it is that each schedule's job was
        # created after the flush.
        flushed_at = datetime.now(timezone.utc).replace(microsecond=0)
        redis_db.flushdb()
        wait_until(lambda: _schedules(redis_db) == set(rescore.schedule.SCHEDULES), rescore.schedule.MAINTENANCE_SECONDS + 20,
                   "schedules re-created")
        jobs_now = [Job.fetch(i, connection=redis_db) for i in ScheduledJobRegistry("default", connection=redis_db).get_job_ids()]
        assert jobs_now and all(job.created_at.replace(tzinfo=timezone.utc) >= flushed_at for job in jobs_now)
    finally:
        _kill(worker)


def test_a_killed_workers_batch_is_worked_again_within_a_minute(queued_runtime, redis_db):
    ids = seed(queued_runtime, 1000)
    run = rescore.runs.start_run(queued_runtime, "all", reason="test", batch_size=1000)
    rescore.batch.dispatch(queued_runtime, run)
    first = _start_worker(queued_runtime)
    second = None
    try:
        wait_until(lambda: _batch(queued_runtime, run.id).cursor >= rescore.batch.CHUNK, 120, "first chunk")
        assert _jobs(redis_db) == {"running": 1, "abandoned": 0}
        _kill(first)
        killed_at = time.monotonic()
        cursor = _batch(queued_runtime, run.id).cursor
        assert cursor < 1000, "kill came too late"
        # rq keeps the killed worker's job as started until its 30-minute timeout; kyc jobs does not
        # call it running once the worker's heartbeat is gone.
        wait_until(lambda: _jobs(redis_db)["abandoned"] == 1, rescore.queue.WORKER_ALIVE_SECONDS + 10,
                   "the dead worker's job counted abandoned")
        assert _jobs(redis_db)["running"] == 0
        second = _start_worker(queued_runtime)
        # No `kyc rescore --resume`: the surviving worker finds the batch abandoned.
        wait_until(lambda: _batch(queued_runtime, run.id).attempts >= 2, what="the batch picked up again")
        assert time.monotonic() - killed_at < 60
        wait_until(lambda: _run(queued_runtime, run.id).finished_at is not None, 300, "the run finished")
        shown = subprocess.run(kyc_command("jobs"), env=worker_env(queued_runtime), capture_output=True, text=True,
                               check=True).stdout.splitlines()
        assert shown[0].split()[:6] == ["queue", "queued", "scheduled", "running", "abandoned", "failed"]
        assert [line.split()[4] for line in shown if line.startswith("rescore ")] == ["1"]
    finally:
        _kill(first)
        if second is not None:
            _kill(second)
    assert rescore_evaluations(queued_runtime) == {i: 1 for i in ids}      # each account once


def _jobs(connection) -> dict[str, int]:
    counts = rescore.queue.queue_counts(connection)["rescore"]
    return {"running": counts["running"], "abandoned": counts["abandoned"]}


def _failing_batch(runtime, redis_db, monkeypatch) -> tuple[str, Job]:
    """A batch whose job started, counted an attempt and failed: rq schedules its retry."""
    seed(runtime, 3)
    run = rescore.runs.start_run(runtime, "all", reason="test")
    rescore.batch.dispatch(runtime, run)
    jobs.use_runtime(runtime)

    def broken(*_args, **_kwargs):
        raise RuntimeError("the database hiccuped")

    monkeypatch.setattr(rescore.batch, "rescore_chunk", broken)
    queue = Queue("rescore", connection=redis_db)
    SimpleWorker([queue], connection=redis_db).work(burst=True)
    monkeypatch.undo()
    job = queue.fetch_job(f"rescore-{run.id}-0")
    assert _batch(runtime, run.id).attempts == 1 and job.get_status() == JobStatus.SCHEDULED
    return run.id, job


def test_sweep_leaves_a_failed_job_to_its_retry_and_takes_an_abandoned_one(queued_runtime, redis_db, monkeypatch):
    run_id, job = _failing_batch(queued_runtime, redis_db, monkeypatch)
    alive = rescore.runs.ALIVE_KEY.format(run_id=run_id, batch_no=0)
    assert redis_db.exists(alive)                        # a failed job's key lives out its time
    assert rescore.runs.sweep_abandoned(queued_runtime, redis_db) == 0
    redis_db.delete(alive)                               # ... and expires
    assert rescore.runs.sweep_abandoned(queued_runtime, redis_db) == 0       # its retry is rq's
    # A worker killed mid-job: rq still believes the job started, nothing says it is alive.
    job.set_status(JobStatus.STARTED)
    assert rescore.runs.sweep_abandoned(queued_runtime, redis_db) == 1
    assert rescore.runs.sweep_abandoned(queued_runtime, redis_db) == 0       # queued once, not every round
    assert Queue("rescore", connection=redis_db).get_job_ids() == [f"rescore-{run_id}-0-a1"]
    SimpleWorker([Queue("rescore", connection=redis_db)], connection=redis_db).work(burst=True)
    assert _batch(queued_runtime, run_id).finished_at is not None
    assert not redis_db.exists(alive)
    assert rescore.runs.sweep_abandoned(queued_runtime, redis_db) == 0


def test_sweep_takes_a_started_batch_whose_job_redis_lost(queued_runtime, redis_db, monkeypatch):
    run_id, _ = _failing_batch(queued_runtime, redis_db, monkeypatch)
    redis_db.flushdb()                                   # restarted empty: no job, no liveness
    assert rescore.runs.sweep_abandoned(queued_runtime, redis_db) == 1
    SimpleWorker([Queue("rescore", connection=redis_db)], connection=redis_db).work(burst=True)
    assert _batch(queued_runtime, run_id).finished_at is not None


@pytest.mark.parametrize("minutes, swept", [(0, 0), (2, 1)])
def test_batches_never_enqueued_are_swept_after_a_minute(queued_runtime, redis_db, minutes, swept):
    from datetime import timedelta

    from kyc.models import utcnow

    seed(queued_runtime, 2)
    rescore.runs.start_run(queued_runtime, "all", reason="recorded while Redis was away")      # never dispatched
    assert rescore.runs.sweep_orphans(queued_runtime, redis_db, now=utcnow() + timedelta(minutes=minutes)) == swept


def test_maintenance_settles_asks_a_killed_web_process_committed(queued_runtime, redis_db):
    ids = seed(queued_runtime, 3)
    with queued_runtime.session() as session, session.begin():
        # What a transaction that asked wrote; its process was killed before its thread settled it.
        session.add(RescoreAsk(accounts=ids[:2], clusters={}))
    assert rescore.schedule.maintain(queued_runtime, redis_db)["asks"] == 1
    assert rescore.schedule.maintain(queued_runtime, redis_db).get("asks", 0) == 0      # settled once
    jobs.use_runtime(queued_runtime)
    try:
        SimpleWorker([Queue("rescore", connection=redis_db)], connection=redis_db).work(burst=True)
    finally:
        jobs.use_runtime(None)
    assert rescore_evaluations(queued_runtime) == {ids[0]: 1, ids[1]: 1}


def test_an_idle_worker_stops_on_sigterm(queued_runtime, redis_db):
    """A deploy or a supervisor stops `kyc worker` with SIGTERM. rq marks an idle worker's stop
    only by its date, which the loop that serves again after a Redis outage did not read: the
    worker started over and never stopped (a test run's workers outlived it)."""
    from rq import Worker

    worker = _start_worker(queued_runtime)
    try:
        # Idle, waiting for jobs: rq registers a worker before it takes SIGTERM over, so a
        # signal sent on registration alone could end it the default way instead of rq's.
        wait_until(lambda: [w.get_state() for w in Worker.all(connection=redis_db)] == ["idle"],
                   what="the worker to wait for jobs")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        _kill(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_killed_with_sigkill_takes_its_scheduler_child_with_it(queued_runtime, redis_db):
    """rq runs its scheduler in a forked child, which holds copies of the worker's database
    sockets and metrics port. Left running after `kill -9` of the worker, it kept a dead
    transaction's connection open (its row locks held, the batch never taken over) and the port."""
    worker = _start_worker(queued_runtime)
    try:
        (child,) = wait_until(lambda: _worker_pids(worker.pid), what="rq's scheduler child")
        os.kill(worker.pid, signal.SIGKILL)           # the worker alone, not its process group
        worker.wait(10)
        wait_until(lambda: not _alive(child), what="the child gone with its parent")
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)     # whatever of its group is left
        except ProcessLookupError:
            pass
        worker.wait(10)
