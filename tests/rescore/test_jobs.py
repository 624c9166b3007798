"""Rescoring jobs against real Redis and PostgreSQL: enqueue -> worker -> stored evaluations,
a worker killed mid-batch, idempotency, the schedule after a rules change, and the in-process
fallback (SQLite and PostgreSQL, no Redis)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select, update

from kyc import jobs
import kyc.rescore.background
import kyc.rescore.batch
import kyc.rescore.queue
import kyc.rescore.requests
import kyc.rescore.runs
import kyc.rescore.schedule
from kyc import rescore
from kyc.cli import main
from kyc.config import Config
from kyc.engine.loader import rules_version
from kyc.inputs import SignupInput
from kyc.models import Account, Cluster, ClusterMember, Evaluation, RescoreAsk, RescoreBatch, RescoreRun, utcnow
from kyc.runtime import Runtime
from kyc.scoring import score
from tests.conftest import REDIS_URL, RULES_DIR, TEST_SECRET, payment, redis_connection, signup

HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/120.0.0.0 Safari/537.36")
BLOCK_GMAIL = """
- id: test_gmail_block
  description: Test rule that blocks one mail provider
  when: email.domain == "gmail.com"
  score: 90
  action: block
"""


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    """A private copy of the bundled rules, free to edit."""
    target = tmp_path / "rules"
    shutil.copytree(RULES_DIR, target)
    return target


@pytest.fixture
def redis_db():
    conn = redis_connection()
    conn.flushdb()              # only the db number of KYC_TEST_REDIS_URL
    yield conn
    conn.flushdb()


@pytest.fixture
def pg_url(request) -> str:
    from tests.conftest import _truncate_postgres

    url = request.getfixturevalue("_postgres_url")
    _truncate_postgres(url)
    return url


@pytest.fixture
def queued_runtime(pg_url, make_config, rules_dir, redis_db):
    """PostgreSQL + Redis: jobs are enqueued on rq."""
    rt = Runtime.start(make_config(pg_url, rules_dir=rules_dir, redis_url=REDIS_URL), migrate=False)
    yield rt
    jobs.use_runtime(None)
    rescore.background.drain(rt)
    rt.engine.dispose()


@pytest.fixture
def inline_runtime(database_url, make_config, rules_dir):
    """SQLite or PostgreSQL, no Redis: jobs run in-process."""
    rt = Runtime.start(make_config(database_url, rules_dir=rules_dir), migrate=False)
    yield rt
    rescore.background.drain(rt)
    rt.engine.dispose()


def seed(runtime: Runtime, n: int, prefix: str = "acct", **over) -> list[str]:
    ids = [f"{prefix}_{i:05d}" for i in range(n)]
    with runtime.session() as session, session.begin():
        for i, account_id in enumerate(ids):
            # Unlinked accounts (own device, own /24, no shared phone): no cluster rescoring
            # joins in, so each test sees exactly the rescoring it asked for.
            body = signup(**{"account_id": account_id, "device_id": f"dv_{prefix}_{i}", "phone": None,
                             "ip": f"45.{i // 250}.{i % 250}.10", "email": f"user{i}@gmail.com", **over})
            score(runtime, session, "signup", SignupInput.model_validate(body))
    return ids


def ask(runtime: Runtime, accounts, clusters: dict) -> None:
    """A committed transaction that asks for accounts, and clusters (cluster -> the member whose
    scoring asked, left out, or None), to be rescored: as the graph and labels ask."""
    with runtime.session() as session, session.begin():
        asks = rescore.requests.after_commit(session)
        asks.ask_rescore(accounts=accounts)
        asks.hand_over(runtime)
        for cluster_id, asker in clusters.items():
            asks.ask_rescore(clusters=[cluster_id])
            asks.hand_over(runtime, exclude=asker)


def rescore_evaluations(runtime: Runtime) -> dict[str, int]:
    """Rescore evaluations per account."""
    with runtime.session() as session:
        rows = session.execute(select(Evaluation.account_id, func.count()).where(Evaluation.trigger == "rescore")
                               .group_by(Evaluation.account_id))
        return dict(rows.all())


def worker_env(runtime: Runtime) -> dict[str, str]:
    config = runtime.config
    return {**os.environ, "KYC_DATABASE_URL": config.database_url, "KYC_REDIS_URL": config.redis_url,
            "KYC_RULES_DIR": str(config.rules_dir), "KYC_DATA_DIR": str(config.data_dir),
            "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_LOG_LEVEL": "WARNING"}


def kyc_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from kyc.cli import main; main()", *args]


def run_worker_burst(runtime: Runtime) -> None:
    done = subprocess.run(kyc_command("worker", "--burst"), env=worker_env(runtime), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def add_rule(rules_dir: Path, text: str) -> None:
    path = rules_dir / "signup.yaml"
    path.write_text(path.read_text() + text)


def summary(runtime: Runtime, run_id: str) -> dict:
    with runtime.session() as session:
        return rescore.runs.run_summary(session, session.get(RescoreRun, run_id))


# --- rq + PostgreSQL -------------------------------------------------------------------------------

def test_enqueue_then_a_real_worker_stores_rescore_evaluations(queued_runtime, redis_db, rules_dir):
    from rq import Queue

    ids = seed(queued_runtime, 30)
    add_rule(rules_dir, BLOCK_GMAIL)
    assert rescore.batch.enqueue_rescore(queued_runtime, ids, "test") == 30
    assert Queue("rescore", connection=redis_db).count == 1
    assert rescore_evaluations(queued_runtime) == {}            # nothing ran in this process

    run_worker_burst(queued_runtime)

    assert rescore_evaluations(queued_runtime) == {i: 1 for i in ids}
    new_version = rules_version(rules_dir)
    with queued_runtime.session() as session:
        evaluations = session.scalars(select(Evaluation).where(Evaluation.trigger == "rescore")).all()
        assert {e.rules_version for e in evaluations} == {new_version}   # the current rules
        assert {a.decision for a in session.scalars(select(Account))} == {"block"}
        run = session.scalars(select(RescoreRun)).one()
        assert run.finished_at is not None
    result = summary(queued_runtime, run.id)
    assert (result["seen"], result["changed"], result["escalated"]) == (30, 30, 30)
    assert sum(result["matrix"].values()) == 30 and all(new == "block" for _, new in result["matrix"])

    out = CliRunner().invoke(main, ["jobs"], env=worker_env(queued_runtime))
    assert out.exit_code == 0, out.output
    assert "rescore" in out.output and f"last run {run.id}" in out.output
    assert "30 seen, 30 changed, 30 more severe" in out.output


def test_worker_killed_mid_batch_loses_nothing_and_never_rescores_twice(queued_runtime, redis_db):
    from rq.registry import StartedJobRegistry

    ids = seed(queued_runtime, 1500)
    run = rescore.runs.start_run(queued_runtime, "all", reason="test", batch_size=1500)
    rescore.batch.dispatch(queued_runtime, run)
    worker = subprocess.Popen(kyc_command("worker"), env=worker_env(queued_runtime), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cursor = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with queued_runtime.session() as session:
                cursor = session.get(RescoreBatch, (run.id, 0)).cursor
            if cursor >= rescore.batch.CHUNK:
                break
            time.sleep(0.01)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)   # the worker and its scheduler process
        worker.wait(10)
    assert rescore.batch.CHUNK <= cursor < 1500, f"kill came too late (cursor {cursor})"

    with queued_runtime.session() as session:
        killed_at = session.get(RescoreBatch, (run.id, 0)).cursor
    done = rescore_evaluations(queued_runtime)
    # Exactly the committed prefix is rescored; the chunk in flight was rolled back with the kill.
    assert set(done) == set(ids[:killed_at]) and set(done.values()) == {1}
    assert killed_at % rescore.batch.CHUNK == 0

    assert rescore.batch.resume(queued_runtime, run.id) == [(run.id, 0)]
    run_worker_burst(queued_runtime)
    assert rescore_evaluations(queued_runtime) == {i: 1 for i in ids}
    assert summary(queued_runtime, run.id)["seen"] == 1500
    with queued_runtime.session() as session:
        assert session.get(RescoreRun, run.id).finished_at is not None

    # rq's own recovery of the abandoned job (once its heartbeat has expired) retries it: a no-op now.
    StartedJobRegistry("rescore", connection=redis_db).cleanup(timestamp=time.time() + 10**6)
    run_worker_burst(queued_runtime)
    assert rescore_evaluations(queued_runtime) == {i: 1 for i in ids}


def test_schedule_fires_a_rescore_after_a_rules_change(queued_runtime, redis_db, rules_dir, make_config, pg_url):
    from rq import Queue, SimpleWorker
    from rq.registry import ScheduledJobRegistry

    ids = seed(queued_runtime, 20)
    config = make_config(pg_url, rules_dir=rules_dir, redis_url=REDIS_URL, rules_watch_seconds=1)
    rt = Runtime.start(config, migrate=False)
    jobs.use_runtime(rt)
    try:
        # Baseline: the first watch records the current version (nothing to rescore).
        assert rescore.schedule.check_rules_change(rt).total == 0
        rescore.schedule.ensure_schedule(redis_db, config)
        scheduled = ScheduledJobRegistry("default", connection=redis_db).get_job_ids()
        assert any(j.startswith("kyc-rules-watch-") for j in scheduled)
        assert any(j.startswith("kyc-dormant-daily-") for j in scheduled)

        add_rule(rules_dir, BLOCK_GMAIL)
        time.sleep(1.2)                                   # the watch is due
        queues = [Queue(name, connection=redis_db) for name in rescore.queue.QUEUES]
        SimpleWorker(queues, connection=redis_db).work(burst=True, with_scheduler=True)

        with rt.session() as session:
            run = session.scalars(select(RescoreRun).where(RescoreRun.selector == "rules_change")
                                  .order_by(RescoreRun.created_at.desc())).first()
            assert run.rules_version == rules_version(rules_dir) and run.total == 20
            assert run.finished_at is not None
        assert rescore_evaluations(rt) == {i: 1 for i in ids}
        # The watch scheduled its next occurrence before working.
        later = ScheduledJobRegistry("default", connection=redis_db).get_job_ids()
        assert any(j.startswith("kyc-rules-watch-") and j not in scheduled for j in later)
        # Same version again: the next watch starts nothing.
        assert rescore.schedule.check_rules_change(rt) is None
    finally:
        rt.engine.dispose()


def test_schedule_job_ids_make_one_job_per_occurrence(queued_runtime, redis_db):
    from rq.registry import ScheduledJobRegistry

    now = utcnow()                                    # one instant: a 5-second schedule's slot stays put
    for _ in range(3):                                # three workers starting together
        rescore.schedule.schedule_next(redis_db, queued_runtime.config, "decision-webhooks", now)
        rescore.schedule.ensure_schedule(redis_db, queued_runtime.config, now)
    assert ScheduledJobRegistry("default", connection=redis_db).count == len(rescore.schedule.SCHEDULES)


def test_failed_batch_is_retried_with_backoff_and_kept(queued_runtime, redis_db):
    from rq import Queue, SimpleWorker
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry

    jobs.use_runtime(queued_runtime)
    rescore.runs.enqueue_batches(redis_db, "rr_missing", [0])           # no such run: the job raises
    queue = Queue("rescore", connection=redis_db)
    SimpleWorker([queue], connection=redis_db).work(burst=True)
    job = queue.fetch_job("rescore-rr_missing-0")
    assert job.retries_left == len(rescore.queue.RETRY_INTERVALS) - 1
    assert job.id in ScheduledJobRegistry(queue=queue).get_job_ids()   # retry waits its backoff
    job.retries_left = 0
    job.save()
    queue.enqueue_job(job)
    SimpleWorker([queue], connection=redis_db).work(burst=True)
    assert job.id in FailedJobRegistry(queue=queue).get_job_ids()
    assert "LookupError" in queue.fetch_job(job.id).latest_result().exc_string


# --- idempotency, block policy, in-process fallback (SQLite and PostgreSQL) -----------------------

def test_a_batch_worked_twice_rescores_once(inline_runtime):
    ids = seed(inline_runtime, 120)
    run = rescore.runs.start_run(inline_runtime, "all", reason="test", batch_size=100)
    assert (run.total, run.batches) == (120, 2)
    first = rescore.batch.run_batch(inline_runtime, run.id, 0)
    again = rescore.batch.run_batch(inline_runtime, run.id, 0)
    assert first == again and first["seen"] == 100
    assert len(rescore_evaluations(inline_runtime)) == 100
    with inline_runtime.session() as session:
        assert session.get(RescoreRun, run.id).finished_at is None       # batch 1 still open
    assert rescore.batch.resume(inline_runtime) == [(run.id, 1)]
    assert rescore_evaluations(inline_runtime) == {i: 1 for i in ids}
    with inline_runtime.session() as session, session.begin():
        assert session.get(RescoreRun, run.id).finished_at is not None
        session.get(RescoreRun, run.id).finished_at = None     # as if the process died before closing it
    rescore.batch.run_batch(inline_runtime, run.id, 0)                   # any repeat closes it, rescoring nothing
    with inline_runtime.session() as session:
        assert session.get(RescoreRun, run.id).finished_at is not None
    assert rescore_evaluations(inline_runtime) == {i: 1 for i in ids}


def test_in_process_fallback_rescores_now(inline_runtime, rules_dir):
    ids = seed(inline_runtime, 5) + ["nobody"]
    add_rule(rules_dir, BLOCK_GMAIL)
    inline_runtime.reload_rules()                 # as the service's rules watcher does
    assert rescore.batch.enqueue_rescore(inline_runtime, ids, "label propagated") == 5
    assert rescore_evaluations(inline_runtime) == {i: 1 for i in ids[:5]}
    assert rescore.batch.enqueue_rescore(inline_runtime, ids[:2], "test") == 2
    with inline_runtime.session() as session:
        run = rescore.runs.last_run(session)
        result = rescore.runs.run_summary(session, run)
        assert {a.decision for a in session.scalars(select(Account))} == {"block"}
        evaluation = session.scalars(select(Evaluation).where(Evaluation.trigger == "rescore")).first()
        assert evaluation.rules_version == inline_runtime.rules.version == rules_version(rules_dir)
    assert (result["seen"], result["missing"]) == (2, 0)


def test_dormant_selection(inline_runtime):
    old = seed(inline_runtime, 3, prefix="old", occurred_at="2026-01-01T00:00:00Z")
    seed(inline_runtime, 2, prefix="new", occurred_at="2026-11-24T21:00:00Z")
    days = (utcnow() - datetime(2026, 6, 1, tzinfo=timezone.utc)).days
    run = rescore.runs.start_run(inline_runtime, "dormant", params={"dormant_days": days}, reason="test")
    assert run.total == 3
    rescore.batch.run_inline(inline_runtime, run)
    assert set(rescore_evaluations(inline_runtime)) == set(old)


def test_refused_selection_is_the_held_accounts_the_gateway_refused_that_day(inline_runtime):
    """Held (verify, review) and refused on the day: selected. Refused while allowed (over its
    quota), refused another day, or held and served: not."""
    from datetime import date

    from sqlalchemy import insert

    from kyc.models import ActivityDay

    ids = seed(inline_runtime, 6)
    at = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    # (decision, day, requests served, refused) of each account's one day of usage
    days = [("review", 23, 0, 27), ("verify", 23, 5, 20), ("allow", 23, 0, 27), ("review", 22, 0, 27),
            ("review", 23, 27, 0), ("block", 23, 0, 27)]
    with inline_runtime.session() as session, session.begin():
        for account_id, (decision, day, requests, refused) in zip(ids, days):
            session.execute(update(Account).where(Account.id == account_id).values(decision=decision))
            session.execute(insert(ActivityDay).values(account_id=account_id, day=date(2026, 11, day), first_at=at,
                                                       last_at=at, requests=requests, refused=refused))
    run = rescore.runs.start_run(inline_runtime, "refused", params={"day": "2026-11-23"}, reason="test")
    assert run.total == 2
    with inline_runtime.session() as session:
        assert sorted(session.scalars(select(RescoreBatch.account_ids).where(RescoreBatch.run_id == run.id)).one()) \
            == ids[:2]
    # The daily schedule selects the day before it runs; the dormant run comes first.
    dormant, refused = rescore.schedule.rescore_daily(inline_runtime, now=datetime(2026, 11, 24, 3, tzinfo=timezone.utc))
    assert (dormant.selector, refused.selector, refused.params, refused.total) == (
        "dormant", "refused", {"day": "2026-11-23"}, 2)


def test_rescore_keeps_block_unless_a_rule_releases_it(inline_runtime, rules_dir):
    (blocked,) = seed(inline_runtime, 1, user_agent=HEADLESS)
    with inline_runtime.session() as session:
        account = session.get(Account, blocked)
        assert account.decision == "block"
        version_before = account.state_version
    # Ops turn the rule that blocked it into a shadow rule: the new evaluation would allow it.
    path = rules_dir / "signup.yaml"
    rule = "  when: device.headless\n  score: 60\n  action: block\n"
    assert rule in path.read_text()
    path.write_text(path.read_text().replace(rule, rule + "  mode: shadow\n"))
    inline_runtime.reload_rules()
    run = rescore.runs.start_run(inline_runtime, "all", reason="test")
    rescore.batch.run_inline(inline_runtime, run)
    with inline_runtime.session() as session:
        account = session.get(Account, blocked)
        assert (account.decision, account.state_version) == ("block", version_before)
        latest = session.get(Evaluation, account.last_evaluation_id)
        assert latest.trigger == "rescore" and latest.decision != "block"      # kept on record
    result = summary(inline_runtime, run.id)
    assert (result["held"], result["changed"], result["matrix"]) == (1, 0, {("block", "block"): 1})

    add_rule(rules_dir, """
- id: test_release
  description: Test rule allowed to lift a block
  when: email.domain == "gmail.com"
  score: 0
  action: allow
  tags: [releases_block]
""")
    inline_runtime.reload_rules()
    run = rescore.runs.start_run(inline_runtime, "all", reason="test")
    rescore.batch.run_inline(inline_runtime, run)
    with inline_runtime.session() as session:
        assert session.get(Account, blocked).decision != "block"
    assert summary(inline_runtime, run.id)["held"] == 0


def test_in_process_schedule_rescores_after_a_rules_change(database_url, make_config, rules_dir):
    config = make_config(database_url, rules_dir=rules_dir, rules_watch_seconds=1)
    rt = Runtime.start(config, migrate=False)
    ids = seed(rt, 4)
    schedule = rescore.schedule.InProcessSchedule.start_once(rt)
    assert schedule.holding.wait(60)
    # Offered once the first holds the lock (offered at once, either thread could win it).
    other = rescore.schedule.InProcessSchedule.start_once(rt)           # another process's offer
    try:
        assert not other.holding.wait(2 * other.LOCK_RETRY_SECONDS)    # one schedule per data dir
        other.stop()
        other.join(10)
        assert not other.is_alive() and not other.holding.is_set()
        add_rule(rules_dir, BLOCK_GMAIL)
        rt.reload_rules()                         # the service's rules watcher; the schedule notices
        version = rules_version(rules_dir)
        deadline = time.monotonic() + 30
        run = None
        while time.monotonic() < deadline and run is None:
            time.sleep(0.2)
            with rt.session() as session:
                run = session.scalars(select(RescoreRun).where(RescoreRun.rules_version == version,
                                                               RescoreRun.finished_at.is_not(None))).first()
        assert run is not None and run.selector == "rules_change" and run.total == 4
    finally:
        schedule.stop()
        schedule.join(10)
        rt.engine.dispose()
    assert rescore_evaluations(rt) == {i: 1 for i in ids}


def _message_with_an_expired_code(runtime: Runtime) -> None:
    """A code sent through the API, then backdated past its validity."""
    from kyc import create_app
    from kyc.models import OutboxMessage
    from tests.flows import key_headers, start

    client, headers = create_app(runtime=runtime).test_client(), key_headers(runtime)
    assert client.post("/v1/signups", json=signup(), headers=headers).status_code == 200
    assert start(client, headers, kind="email").status_code == 201
    with runtime.session() as session, session.begin():
        session.execute(update(OutboxMessage).values(
            created_at=utcnow() - timedelta(seconds=runtime.config.code_ttl_seconds + 1)))


def _outbox_size(runtime: Runtime) -> int:
    from kyc.models import OutboxMessage

    with runtime.session() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage))


def test_in_process_schedule_deletes_expired_codes_from_the_outbox(inline_runtime):
    _message_with_an_expired_code(inline_runtime)
    schedule = rescore.schedule.InProcessSchedule.start_once(inline_runtime)
    try:
        deadline = time.monotonic() + 20
        while _outbox_size(inline_runtime) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _outbox_size(inline_runtime) == 0
    finally:
        schedule.stop()
        schedule.join(10)


@pytest.mark.parametrize("entry", [
    ["wsgi:app"],                                   # from the repository root: reads gunicorn.conf.py
    ["-c", "python:kyc.serving", "wsgi:app"],
    ["-c", "python:kyc.serving", "--preload", "wsgi:app"],   # the app loaded in the parent, then forked
], ids=["gunicorn.conf.py", "kyc.serving", "preload"])
def test_plain_gunicorn_without_redis_runs_the_schedule_in_one_worker(tmp_path, entry):
    """`gunicorn wsgi:app` without Redis, as an operator may run kyc instead of `kyc serve`: one of
    its workers runs the in-process schedule (here its first round's purge of expired codes)."""
    import fcntl

    from tests.conftest import free_port

    env = {"KYC_DATABASE_URL": f"sqlite:///{tmp_path / 'kyc.db'}", "KYC_DATA_DIR": str(tmp_path),
           "KYC_RULES_DIR": str(RULES_DIR), "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_REDIS_URL": "",
           "KYC_DEV_KEY": "", "KYC_LOG_LEVEL": "WARNING"}
    runtime = Runtime.start(Config.from_env(env))
    try:
        _message_with_an_expired_code(runtime)
        log = tmp_path / "gunicorn.log"
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", *entry, "-w", "2", "-b",
                                   f"127.0.0.1:{free_port()}"], cwd=Path(__file__).parents[2],
                                  env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        try:
            deadline = time.monotonic() + 60
            while _outbox_size(runtime) and time.monotonic() < deadline and server.poll() is None:
                time.sleep(0.2)
            assert _outbox_size(runtime) == 0, "no worker ran the schedule"
            with open(tmp_path / "schedule.lock", "a") as lock:       # held by the worker that runs it
                with pytest.raises(BlockingIOError):
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            server.terminate()
            server.wait(timeout=30)
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        runtime.engine.dispose()


def test_a_worker_takes_the_default_queue_before_rescore_batches(redis_db):
    """Schedules, webhooks and purges are short and due now; a run of a million accounts is
    thousands of batches. Rescore first, a decision webhook waited behind every batch."""
    from rq import Queue, SimpleWorker

    rescore_queue = Queue("rescore", connection=redis_db)
    batches = [rescore_queue.enqueue("builtins.len", [n]) for n in range(5)]
    due = Queue("default", connection=redis_db).enqueue("builtins.len", [0])
    queues = [Queue(name, connection=redis_db) for name in rescore.queue.QUEUES]
    SimpleWorker(queues, connection=redis_db).work(burst=True)
    due.refresh()
    for batch in batches:
        batch.refresh()
    assert due.ended_at < min(batch.started_at for batch in batches)


def _lock_held(path: Path) -> bool:
    import fcntl

    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.2)


def test_after_sighup_a_new_worker_takes_the_schedule_over(tmp_path):
    """gunicorn's HUP starts new workers while the old ones still run (the schedule's holder
    among them): one of the new ones must take the schedule over once the old one is gone,
    not give up because the lock was held when it started."""
    from tests.conftest import free_port

    env = {"KYC_DATABASE_URL": f"sqlite:///{tmp_path / 'kyc.db'}", "KYC_DATA_DIR": str(tmp_path),
           "KYC_RULES_DIR": str(RULES_DIR), "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_REDIS_URL": "",
           "KYC_DEV_KEY": "", "KYC_LOG_LEVEL": "WARNING"}
    runtime = Runtime.start(Config.from_env(env))
    lock = tmp_path / "schedule.lock"
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:kyc.serving", "wsgi:app", "-w", "2",
                               "-b", f"127.0.0.1:{free_port()}"], cwd=Path(__file__).parents[2],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: lock.exists() and _lock_held(lock), 60, "a worker runs the schedule")
        before = _worker_pids(server.pid)
        server.send_signal(signal.SIGHUP)
        _wait(lambda: not before & _worker_pids(server.pid), 60, "the old workers retired")
        _message_with_an_expired_code(runtime)
        _wait(lambda: _lock_held(lock), 30, "a new worker holds the schedule")
        # The holder purges at once when it takes the schedule over, then at each minute: the code
        # may have expired just after that first purge (a new worker can take over before the old
        # ones have all gone), and waits for the next one, up to a minute later.
        _wait(lambda: _outbox_size(runtime) == 0, 75, "the new holder's purge")
    finally:
        server.terminate()
        server.wait(timeout=30)
        runtime.engine.dispose()


def _worker_pids(parent: int) -> set[int]:
    """The processes whose parent is `parent` (read from /proc)."""
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(p) == parent}


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def test_scheduled_daily_rescore_starts_the_dormant_and_the_refused_run_and_schedules_the_next(queued_runtime,
                                                                                                redis_db):
    from rq.registry import ScheduledJobRegistry

    jobs.use_runtime(queued_runtime)
    yesterday = {(utcnow() - timedelta(days=1)).date().isoformat()}
    dormant, refused = jobs.scheduled_dormant_rescore()
    yesterday.add((utcnow() - timedelta(days=1)).date().isoformat())       # the job may run across midnight
    with queued_runtime.session() as session:
        runs = {run.id: run for run in session.scalars(select(RescoreRun).where(RescoreRun.id.in_([dormant, refused])))}
    assert (runs[dormant].selector, runs[refused].selector) == ("dormant", "refused")
    assert runs[refused].params["day"] in yesterday
    scheduled = ScheduledJobRegistry("default", connection=redis_db).get_job_ids()
    assert [j for j in scheduled if j.startswith("kyc-dormant-daily-")]


def test_scheduled_outbox_purge_deletes_expired_codes_and_schedules_the_next(queued_runtime, redis_db):
    from rq.registry import ScheduledJobRegistry

    _message_with_an_expired_code(queued_runtime)
    jobs.use_runtime(queued_runtime)
    assert jobs.scheduled_outbox_purge() == 1 and _outbox_size(queued_runtime) == 0
    scheduled = ScheduledJobRegistry("default", connection=redis_db).get_job_ids()
    assert [j for j in scheduled if j.startswith("kyc-outbox-purge-")]


def test_next_time_is_utc_and_strictly_ahead():
    config = Config.from_env({}, secret_key=b"x", rescore_daily_at="03:00", rules_watch_seconds=60)
    now = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)
    assert rescore.schedule.next_time("dormant-daily", config, now) == datetime(2026, 11, 25, 3, 0, tzinfo=timezone.utc)
    assert rescore.schedule.next_time("rules-watch", config, now) == datetime(2026, 11, 24, 3, 1, tzinfo=timezone.utc)
    assert rescore.schedule.next_time("outbox-purge", config, now) == datetime(2026, 11, 24, 3, 1, tzinfo=timezone.utc)


def test_rescore_command_needs_exactly_one_selector(inline_runtime):
    env = {"KYC_DATABASE_URL": inline_runtime.config.database_url, "KYC_REDIS_URL": "",
           "KYC_RULES_DIR": str(inline_runtime.config.rules_dir), "KYC_SECRET_KEY": TEST_SECRET.decode()}
    runner = CliRunner()
    assert runner.invoke(main, ["rescore"], env=env).exit_code == 2
    assert runner.invoke(main, ["rescore", "--all", "--dormant-days", "3"], env=env).exit_code == 2
    assert runner.invoke(main, ["rescore", "--refused-on", "23/11/2026"], env=env).exit_code == 2
    seed(inline_runtime, 3)
    out = runner.invoke(main, ["rescore", "--all"], env=env)
    assert out.exit_code == 0, out.output
    assert "3 selected, 3 seen" in out.output
    out = runner.invoke(main, ["jobs"], env=env)
    assert "no KYC_REDIS_URL" in out.output and "3 seen" in out.output
    out = runner.invoke(main, ["rescore", "--refused-on", "2026-11-23"], env=env)      # nobody held was refused
    assert out.exit_code == 0 and "0 selected" in out.output, out.output


def test_runs_recorded_while_redis_was_down_are_enqueued_later(pg_url, make_config, redis_db):
    from datetime import timedelta

    from rq import Queue

    up = Runtime.start(make_config(pg_url, redis_url=REDIS_URL), migrate=False)
    ids = seed(up, 3)
    down = Runtime.start(make_config(pg_url, redis_url="redis://127.0.0.1:1/0"), migrate=False)
    try:
        assert rescore.batch.enqueue_rescore(down, ids, "label propagated") == 3     # accepted, not lost
    finally:
        down.engine.dispose()
    try:
        assert rescore.runs.sweep_orphans(up, redis_db) == 0                        # too recent to call orphaned
        assert rescore.runs.sweep_orphans(up, redis_db, now=utcnow() + timedelta(minutes=11)) == 1
        assert rescore.runs.sweep_orphans(up, redis_db, now=utcnow() + timedelta(minutes=11)) == 0   # job exists now
        assert Queue("rescore", connection=redis_db).count == 1
        run_worker_burst(up)
        assert rescore_evaluations(up) == {i: 1 for i in ids}
    finally:
        up.engine.dispose()


def test_a_worker_batch_leaves_no_per_value_cache_behind(inline_runtime):
    from kyc.signals import device, email

    seed(inline_runtime, 3)
    run = rescore.runs.start_run(inline_runtime, "all", reason="test")
    jobs.use_runtime(inline_runtime)
    try:
        assert email.parse.cache_info().currsize > 0
        assert jobs.rescore_batch(run.id, 0)["seen"] == 3
    finally:
        jobs.use_runtime(None)
    assert email.parse.cache_info().currsize == 0                # memory stays flat batch after batch
    assert device._parser.cache_info().currsize == 1              # the matcher, loaded once, is kept


def test_rescore_gives_an_account_without_a_membership_a_cluster_of_its_own(inline_runtime):
    """Accounts stored before the graph (no membership) get a cluster of one, with their traits."""
    plain, headless = seed(inline_runtime, 1) + seed(inline_runtime, 1, prefix="bot", user_agent=HEADLESS,
                                                     email="bot@gmail.com", ip="45.9.9.10")   # linked to nobody
    rescore.background.drain(inline_runtime)
    with inline_runtime.session() as session, session.begin():
        session.execute(delete(ClusterMember))
        session.execute(delete(Cluster))
    assert rescore.batch.enqueue_rescore(inline_runtime, [plain, headless], "test") == 2
    with inline_runtime.session() as session:
        for account_id, blocked, is_headless in ((plain, False, False), (headless, True, True)):
            member = session.get(ClusterMember, account_id)
            cluster = session.get(Cluster, member.cluster_id)
            account = session.get(Account, account_id)
            assert (member.blocked, member.headless) == (blocked, is_headless)
            assert (cluster.size, cluster.blocked, cluster.headless) == (1, int(blocked), int(is_headless))
            assert cluster.first_seen_at == member.joined_at
            assert session.get(Evaluation, account.last_evaluation_id).signals["graph"]["cluster_id"] == cluster.id


# --- the in-process background thread ----------------------------------------------------------------

def test_background_merges_asks_and_leaves_the_asker_out(inline_runtime):
    ids = seed(inline_runtime, 4)
    with inline_runtime.session() as session:
        cluster_of = dict(session.execute(select(ClusterMember.account_id, ClusterMember.cluster_id)).all())
    worker = rescore.background.background(inline_runtime)
    worker.MAX_DEFER = 600                        # however slow the machine, nothing settles before leave()
    inline_runtime.traffic.enter()                # a request in flight: nothing runs yet
    try:
        for _ in range(3):                        # the same asks, three times over, while it waits
            ask(inline_runtime, ids[:2], {cluster_of[ids[2]]: None, cluster_of[ids[3]]: ids[3]})
        time.sleep(3 * worker.QUIET)
        assert rescore_evaluations(inline_runtime) == {}
    finally:
        inline_runtime.traffic.leave()
    rescore.background.drain(inline_runtime)
    # Each account once; ids[3] asked about its own cluster (it was just scored): left out.
    assert rescore_evaluations(inline_runtime) == {ids[0]: 1, ids[1]: 1, ids[2]: 1}


def test_background_waits_for_requests_but_not_forever(inline_runtime):
    ids = seed(inline_runtime, 2)
    worker = rescore.background.background(inline_runtime)
    worker.MAX_DEFER = 0.2
    inline_runtime.traffic.enter()                # traffic that never pauses
    try:
        ask(inline_runtime, ids, {})
        rescore.background.drain(inline_runtime)
        assert rescore_evaluations(inline_runtime) == {i: 1 for i in ids}
    finally:
        inline_runtime.traffic.leave()


def test_the_service_tells_background_work_when_a_request_is_in_flight(inline_runtime):
    from kyc import create_app

    app = create_app(runtime=inline_runtime)

    @app.get("/probe")
    def probe():
        return {"idle_for": inline_runtime.traffic.idle_for()}

    client = app.test_client()
    assert client.get("/probe").json == {"idle_for": 0.0}
    assert client.get("/v1/accounts/none").status_code == 401     # refused early, still counted out
    time.sleep(0.01)
    assert inline_runtime.traffic.idle_for() >= 0.01


def asks_waiting(runtime) -> list[list[str]]:
    with runtime.session() as session:
        return [accounts for accounts, in session.execute(select(RescoreAsk.accounts).order_by(RescoreAsk.id))]


def test_asks_are_committed_rows_that_a_new_process_settles(inline_runtime, make_config, database_url, rules_dir):
    ids = seed(inline_runtime, 7)
    rescore.background.drain(inline_runtime)
    first = rescore.background.background(inline_runtime)
    first.MAX_DEFER = 600
    inline_runtime.traffic.enter()                # this process stays busy: its thread waits to settle
    try:
        ask(inline_runtime, ids, {})
        assert asks_waiting(inline_runtime) == [ids]          # committed, in the database
        assert rescore.runs.unfinished_batches(inline_runtime) == []
        # The process is killed here; the next one's schedule thread settles the ask and rescores.
        successor = Runtime.start(make_config(database_url, rules_dir=rules_dir), migrate=False)
        schedule = rescore.schedule.InProcessSchedule(successor)
        schedule.start()
        try:
            deadline = time.monotonic() + 30
            # Settled (the ask row gone) and worked (no batch left); its thread starts with the schedule's.
            while ((asks_waiting(successor) or rescore.runs.unfinished_batches(successor))
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            rescore.background.drain(successor)
        finally:
            schedule.stop()
            schedule.join(10)
            successor.engine.dispose()
        assert rescore.runs.unfinished_batches(inline_runtime) == [] and asks_waiting(inline_runtime) == []
        assert rescore_evaluations(inline_runtime) == {i: 1 for i in ids}
    finally:
        inline_runtime.traffic.leave()
    rescore.background.drain(inline_runtime)                    # the first process's thread finds nothing left
    assert rescore_evaluations(inline_runtime) == {i: 1 for i in ids}


def test_an_in_process_rescore_command_finishes_what_its_run_asked_for(inline_runtime, rules_dir):
    """`kyc rescore` without Redis: a member blocked by the run rescores its cluster after the
    commit, in the command's background thread, which the command waits for before it ends."""
    path = rules_dir / "signup.yaml"
    rule = "  when: device.headless\n  score: 60\n  action: block\n"
    path.write_text(path.read_text().replace(rule, rule + "  mode: shadow\n"))
    inline_runtime.reload_rules()
    (plain,) = seed(inline_runtime, 1, device_id="dv_family")
    (bot,) = seed(inline_runtime, 1, prefix="bot", user_agent=HEADLESS, device_id="dv_family", email="bot@gmail.com")
    rescore.background.drain(inline_runtime)
    with inline_runtime.session() as session:
        assert session.get(ClusterMember, plain).cluster_id == session.get(ClusterMember, bot).cluster_id
        assert {session.get(Account, a).decision for a in (plain, bot)} == {"allow"}
    path.write_text(path.read_text().replace(rule + "  mode: shadow\n", rule))       # the block acts again
    done = subprocess.run(kyc_command("rescore", "--since-rules-change"), env=worker_env(inline_runtime),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert asks_waiting(inline_runtime) == [] and rescore.runs.unfinished_batches(inline_runtime) == []
    # The plain member, rescored before the bot was blocked, again after: the cluster's first block.
    assert rescore_evaluations(inline_runtime) == {plain: 2, bot: 1}


def test_a_rules_change_reaches_a_slot_scored_before_it_whatever_came_after(inline_runtime, rules_dir):
    """An account whose latest evaluation (a card added after a rules change) is current, but
    whose signup was scored under the old rules, is rescored by the rules-change run too."""
    from kyc.inputs import PaymentMethodInput

    ids = seed(inline_runtime, 2, email="someone@flagged-domain.com")
    rescore.schedule.check_rules_change(inline_runtime)
    rescore.background.drain(inline_runtime)
    path = rules_dir / "signup.yaml"
    path.write_text(path.read_text() + """
- id: test_flagged_domain
  description: Test rule on one domain's signups
  when: email.domain == "flagged-domain.com"
  score: 60
  action: review
""")
    inline_runtime.reload_rules()
    with inline_runtime.session() as session, session.begin():       # a clean card, scored under the new rules
        score(inline_runtime, session, "payment_method",
              PaymentMethodInput.model_validate(payment(account_id=ids[0], ip="45.0.0.10")))
    run = rescore.schedule.check_rules_change(inline_runtime)
    rescore.background.drain(inline_runtime)
    assert run is not None and run.total == 2
    with inline_runtime.session() as session:
        for account_id in ids:
            account = session.get(Account, account_id)
            assert account.decision == "review" and "test_flagged_domain" in {r["rule"] for r in account.reasons}


def test_a_rolled_back_transaction_asks_for_nothing(inline_runtime):
    ids = seed(inline_runtime, 2)
    rescore.background.drain(inline_runtime)
    with inline_runtime.session() as session:
        session.begin()
        asks = rescore.requests.after_commit(session)
        asks.ask_rescore(accounts=ids)
        asks.hand_over(inline_runtime)
        session.rollback()
    rescore.background.drain(inline_runtime)
    assert asks_waiting(inline_runtime) == [] and rescore_evaluations(inline_runtime) == {}


def test_asks_from_several_transactions_merge_and_leave_an_asker_out_only_when_alone(inline_runtime):
    ids = seed(inline_runtime, 3, device_id="dv_one")          # one cluster of three
    rescore.background.drain(inline_runtime)
    with inline_runtime.session() as session:
        cluster_id = session.get(ClusterMember, ids[0]).cluster_id
        assert {m.cluster_id for m in session.scalars(select(ClusterMember))} == {cluster_id}
        session.execute(delete(Evaluation).where(Evaluation.trigger == "rescore"))   # the seed's own
        session.commit()
    worker = rescore.background.background(inline_runtime)
    worker.MAX_DEFER = 600                                      # nothing is settled before traffic.leave()
    inline_runtime.traffic.enter()
    try:
        ask(inline_runtime, [], {cluster_id: ids[0]})
        ask(inline_runtime, [], {cluster_id: ids[0]})                    # the same asker twice: still left out
    finally:
        inline_runtime.traffic.leave()
    rescore.background.drain(inline_runtime)
    assert rescore_evaluations(inline_runtime) == {ids[1]: 1, ids[2]: 1}
    inline_runtime.traffic.enter()
    try:
        ask(inline_runtime, [], {cluster_id: ids[0]})
        ask(inline_runtime, [], {cluster_id: ids[1]})                    # two askers: each may be behind the other's change
    finally:
        inline_runtime.traffic.leave()
    rescore.background.drain(inline_runtime)
    assert rescore_evaluations(inline_runtime) == {ids[0]: 1, ids[1]: 2, ids[2]: 2}


def test_an_ask_leaves_out_the_accounts_a_batch_not_yet_begun_will_rescore(inline_runtime):
    """A batch no job has begun reads its accounts when it begins, after the asks committed: a
    second ask for them records nothing new; once the batch has begun, an ask is a run again.
    (A farm's members each asked for the whole cluster at every usage re-evaluation, and runs of
    it queued up faster than a worker rescored them.)"""
    ids = seed(inline_runtime, 4)
    rescore.background.drain(inline_runtime)
    worker = rescore.background.background(inline_runtime)
    worker.MAX_DEFER = 600                                      # this test settles, not the thread
    inline_runtime.traffic.enter()
    try:
        ask(inline_runtime, ids[:3], {})
        (first,) = rescore.background.settle_asks(inline_runtime)
        assert first.total == 3
        ask(inline_runtime, ids[:3], {})
        assert rescore.background.settle_asks(inline_runtime) == [] and asks_waiting(inline_runtime) == []
        ask(inline_runtime, ids[1:], {})                        # one account no batch holds
        (second,) = rescore.background.settle_asks(inline_runtime)
        assert second.total == 1
        with inline_runtime.session() as session:
            assert session.scalars(select(RescoreBatch.account_ids).where(RescoreBatch.run_id == second.id)).all() \
                == [[ids[3]]]
        rescore.batch.run_batch(inline_runtime, first.id, 0)   # begun (and done): asks are runs again
        ask(inline_runtime, ids[:2], {})
        (third,) = rescore.background.settle_asks(inline_runtime)
        assert third.total == 2
        rescore.batch.run_batch(inline_runtime, second.id, 0)
        rescore.batch.run_batch(inline_runtime, third.id, 0)
        # Only asks' batches count: a run of another kind (a manual or daily rescore, maybe
        # thousands of batches) waiting with the account does not hold the ask back.
        with inline_runtime.session() as session, session.begin():
            manual = rescore.runs.record_run(inline_runtime, session, "ids", account_ids=dict.fromkeys(ids[3:]),
                                             reason="manual")
        ask(inline_runtime, ids[3:], {})
        (fourth,) = rescore.background.settle_asks(inline_runtime)
        assert fourth.total == 1
        rescore.batch.run_batch(inline_runtime, manual.id, 0)
        rescore.batch.run_batch(inline_runtime, fourth.id, 0)
    finally:
        inline_runtime.traffic.leave()
    rescore.background.drain(inline_runtime)
    assert rescore_evaluations(inline_runtime) == {ids[0]: 2, ids[1]: 2, ids[2]: 1, ids[3]: 3}


def test_asks_the_database_refused_are_kept_and_recorded_later(inline_runtime, monkeypatch):
    from sqlalchemy.exc import OperationalError

    ids = seed(inline_runtime, 3)
    refused = []
    real_record_run = rescore.runs.record_run

    def record_run_once_refused(*args, **kwargs):
        if not refused:
            refused.append(True)                  # as SQLite says under a writer that never pauses
            raise OperationalError("INSERT INTO rescore_runs ...", {}, Exception("database is locked"))
        return real_record_run(*args, **kwargs)

    monkeypatch.setattr(rescore.background, "record_run", record_run_once_refused)
    worker = rescore.background.background(inline_runtime)
    worker.RETRY = 0.05
    ask(inline_runtime, ids, {})
    rescore.background.drain(inline_runtime)
    assert refused and rescore_evaluations(inline_runtime) == {i: 1 for i in ids}
