"""The SQLite engine: commits never checkpoint; a background thread keeps the WAL small."""

from __future__ import annotations

import gc
import json
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import text

from kyc import db, persist


def _fill_and_wait_for_the_wal(engine, path) -> int:
    """Write 1 MB to table filler in 20 commits; the WAL's size once the checkpoint thread has
    emptied it, or after 30 s."""
    for _ in range(20):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO filler VALUES (randomblob(50000))"))
    wal = path.with_name(path.name + "-wal")
    deadline = time.monotonic() + 30
    while wal.stat().st_size > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return wal.stat().st_size


def test_sqlite_wal_is_checkpointed_off_the_request_path(tmp_path, monkeypatch):
    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.05)
    monkeypatch.setattr(db._Checkpointer, "TRUNCATE_EVERY", 2)
    path = tmp_path / "kyc.db"
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        conn.execute(text("CREATE TABLE filler (payload BLOB)"))
    assert _fill_and_wait_for_the_wal(engine, path) == 0      # copied into the database, then emptied
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM filler")).scalar() == 20
    engine.dispose()


def test_the_wal_is_checkpointed_when_the_thread_opened_the_file_before_it_was_in_wal_mode(tmp_path, monkeypatch):
    """The usual start: the migrations create the file (not in WAL mode) and the checkpoint thread's
    first round opens it before the engine's first connection turns WAL on. That connection never
    read the file again, so to it the file was never in WAL mode: every checkpoint answered "not
    WAL" (-1) and did nothing: `kyc simulate` grew a 5.5 GB WAL beside a database file still 320 KB."""
    import sqlite3

    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.02)
    monkeypatch.setattr(db._Checkpointer, "TRUNCATE_EVERY", 2)
    path = tmp_path / "kyc.db"
    created = sqlite3.connect(path)                     # as the migrations leave it: a rollback journal
    created.execute("CREATE TABLE filler (payload BLOB)")
    created.commit()
    created.close()
    engine = db.make_engine(f"sqlite:///{path}")
    time.sleep(0.2)                                     # the thread's first rounds open the file
    assert _fill_and_wait_for_the_wal(engine, path) == 0 and path.stat().st_size > 20 * 50000
    engine.dispose()


def test_the_checkpoint_thread_never_creates_the_database_file(tmp_path, monkeypatch):
    """A file removed while its engine lives (`kyc simulate`'s scratch directory at exit) stays
    removed: a round that began after the removal created it again, empty, and the directory's
    removal failed ("Directory not empty", once in a CI run). Here the file is never created at all
    (the engine is never used), and rounds run every 10 ms."""
    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.01)
    path = tmp_path / "scratch dir" / "kyc.db"         # a space: a URI must quote the path
    engine = db.make_engine(f"sqlite:///{path}")
    thread = next(t for t in threading.enumerate()
                  if isinstance(t, db._Checkpointer) and t.engine() is engine)
    time.sleep(0.2)                                   # twenty rounds
    db.pause_checkpoints(engine)
    assert not thread.is_alive() and list(path.parent.iterdir()) == []
    with engine.connect() as conn:                    # the engine itself creates it
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    assert path.exists()
    engine.dispose()


def test_the_checkpoint_thread_ends_with_its_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.02)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'kyc.db'}")
    thread = next(t for t in threading.enumerate()
                  if isinstance(t, db._Checkpointer) and t.engine() is engine)
    engine.dispose()
    del engine
    gc.collect()                                        # an engine sits in reference cycles
    thread.join(timeout=60)                           # returns when it ends
    assert not thread.is_alive()


def test_checkpoints_pause_before_a_fork_and_resume_in_each_child(tmp_path, monkeypatch):
    """`kyc serve` pauses the master's checkpoint thread before gunicorn forks workers, and each
    worker runs its own (a thread does not survive a fork, and must not be inside SQLite then)."""
    import os

    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.02)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'kyc.db'}")
    first = db._checkpointers[engine]
    assert first.is_alive()
    db.pause_checkpoints(engine)
    assert not first.is_alive()
    pid = os.fork()
    if pid == 0:                                        # the worker: its own thread, running
        db.resume_checkpoints(engine)
        mine = db._checkpointers[engine]
        os._exit(0 if mine is not first and mine.is_alive() else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    db.resume_checkpoints(engine)
    assert db._checkpointers[engine].is_alive()
    engine.dispose()


def test_gunicorn_settings_pause_an_app_loaded_before_the_fork_and_each_worker_resumes(tmp_path):
    """`gunicorn --preload` with kyc's settings (kyc/serving.py): the parent's checkpoint thread
    stops before each fork, and a worker starts its own once its app is loaded. (The two
    namespaces are the attributes gunicorn hands its hooks: the arbiter's loaded app, a worker's.)"""
    from types import SimpleNamespace

    from kyc import create_app, serving
    from kyc.config import Config
    from tests.conftest import RULES_DIR

    config = Config.from_env({}, database_url=f"sqlite:///{tmp_path / 'kyc.db'}", data_dir=tmp_path,
                             rules_dir=RULES_DIR, secret_key=b"x", redis_url="redis://127.0.0.1:1/0", dev_key="")
    app = create_app(config)
    engine = app.extensions["kyc"].engine
    parent = db._checkpointers[engine]
    serving.pre_fork(SimpleNamespace(app=SimpleNamespace(callable=None)), None)    # not preloaded: nothing
    assert parent.is_alive()
    serving.pre_fork(SimpleNamespace(app=SimpleNamespace(callable=app)), None)
    assert not parent.is_alive()
    serving.post_worker_init(SimpleNamespace(wsgi=app))       # with Redis set: no in-process schedule
    assert db._checkpointers[engine] is not parent and db._checkpointers[engine].is_alive()
    engine.dispose()


# --- pipelined transactions -------------------------------------------------------------------

def _account_row(account_id: str) -> dict:
    from kyc.models import utcnow

    now = utcnow()
    return {"id": account_id, "created_at": now, "first_seen_at": now, "last_seen_at": now, "decision": "allow",
            "score": 0, "reasons": [], "required_verifications": [], "subjects": {}, "state_version": 1,
            "updated_at": now}


def test_a_pipelined_transaction_writes_everything_and_answers_reads_in_order(runtime):
    from sqlalchemy import func, insert, select, update

    from kyc.models import Account

    accounts = Account.__table__
    with runtime.session() as session, persist.pipelined(session):
        session.execute(insert(accounts), [_account_row("p1"), _account_row("p2")])
        # Not deferred: its rowcount is read, so the queued insert goes first and it sees both rows.
        changed = session.execute(update(accounts).where(accounts.c.id.in_(["p1", "p2", "p3"]))
                                  .values(score=5)).rowcount
        session.execute(persist.deferred(update(accounts).where(accounts.c.id == "p1").values(decision="block")))
        seen = session.execute(select(accounts.c.id, accounts.c.decision).order_by(accounts.c.id)).all()
    assert changed == 2
    assert seen == [("p1", "block"), ("p2", "allow")]
    with runtime.session() as session:
        assert session.execute(select(func.count()).select_from(accounts).where(accounts.c.score == 5)).scalar() == 2


def test_reads_in_order_answer_each_read_after_the_writes_before_it(runtime):
    """fetch_in_order: rows by attribute and as dicts, IN and NOT IN lists, each read after what
    was queued before it (on PostgreSQL all of them in one round trip)."""
    from datetime import date

    from sqlalchemy import insert, select

    from kyc.models import Account, ActivityDay, utcnow

    accounts, days, now = Account.__table__, ActivityDay.__table__, utcnow()
    by_ids = select(accounts.c.id, accounts.c.score).where(persist.in_list(accounts.c.id, "ids"))
    others = select(accounts.c.id).where(~persist.in_list(accounts.c.id, "ids")).order_by(accounts.c.id)
    on_days = select(days.c.account_id, days.c.day, days.c.requests).where(
        persist.in_list(days.c.account_id, "ids"), persist.in_list(days.c.day, "days"))
    with runtime.session() as session, persist.pipelined(session):
        session.execute(insert(accounts), [_account_row("r1"), _account_row("r2"), _account_row("r3")])
        session.execute(insert(days), [{"account_id": "r1", "day": date(2026, 10, 5), "requests": 7,
                                        "first_at": now, "last_at": now, "dormant_days": 0}])
        mine, rest, counted, none = persist.fetch_in_order(session, [
            (by_ids.order_by(accounts.c.id), {"ids": ["r1", "r3", "nobody"]}),
            (others, {"ids": ["r1"]}),
            (on_days, {"ids": ["r1", "r2"], "days": [date(2026, 10, 5), date(2026, 10, 6)]}),
            (by_ids, {"ids": []}),
        ])
    assert [(row.id, row.score) for row in mine] == [("r1", 0), ("r3", 0)]
    assert [row.id for row in rest] == ["r2", "r3"]
    assert [row._asdict() for row in counted] == [{"account_id": "r1", "day": date(2026, 10, 5), "requests": 7}]
    assert none == []


def test_reads_outside_a_pipeline_each_answer_their_own_rows_on_a_fresh_or_replaced_connection(runtime):
    """On a connection outside a pipeline (the held read connection: API keys, entitlements,
    signals) the reads share the connection's kept cursor (kyc.persist._kept_cursor): each read's
    rows are its own, read before the next is sent, and once the pool replaces the connection
    the reads go on, on a new one."""
    from sqlalchemy import insert, select

    from kyc.models import Account

    accounts = Account.__table__
    by_ids = select(accounts.c.id, accounts.c.score).where(persist.in_list(accounts.c.id, "ids")).order_by(accounts.c.id)
    others = select(accounts.c.id).where(~persist.in_list(accounts.c.id, "ids")).order_by(accounts.c.id)
    with runtime.session() as session, session.begin():
        session.execute(insert(accounts), [_account_row("k1"), _account_row("k2"), _account_row("k3")])
    with runtime.read_connection() as conn:
        first, rest, none = persist.fetch_in_order(conn, [(by_ids, {"ids": ["k1"]}), (others, {"ids": ["k1"]}),
                                                          (by_ids, {"ids": []})])
        again = persist.fetch(conn, by_ids, {"ids": ["k2", "k3"]})
    assert [(r.id, r.score) for r in first] == [("k1", 0)]
    assert [r.id for r in rest] == ["k2", "k3"] and none == []
    assert [r.id for r in again] == ["k2", "k3"]
    with runtime.read_connection() as conn:
        conn.invalidate()                       # as the pool does with a connection the server cut
    with runtime.read_connection() as conn:
        assert [r.id for r in persist.fetch(conn, by_ids, {"ids": ["k3"]})] == ["k3"]


_IDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.sets(_IDS, max_size=12), asked=st.lists(_IDS, max_size=30))
def test_an_in_list_reads_exactly_the_rows_listed_whatever_the_ids(runtime, stored, asked):
    """persist.in_list, whatever the ids (quotes, backslashes, any script) and however many: the
    rows whose id is listed, and NOT: the others, through the session and through fetch alike
    (on PostgreSQL the list travels as one JSON text)."""
    from sqlalchemy import delete, insert, select

    from kyc.models import Account

    accounts = Account.__table__
    listed = select(accounts.c.id).where(persist.in_list(accounts.c.id, "ids"))
    not_listed = select(accounts.c.id).where(~persist.in_list(accounts.c.id, "ids"))
    asked = asked + sorted(stored)[:len(asked) % 3]              # some of them stored
    with runtime.session() as session, persist.pipelined(session):
        session.execute(delete(accounts))
        if stored:
            session.execute(insert(accounts), [_account_row(i) for i in stored])
        through_session = {r.id for r in session.execute(listed, {"ids": asked})}
        through_fetch, others = persist.fetch_in_order(session, [(listed, {"ids": asked}), (not_listed, {"ids": asked})])
        session.rollback()
    assert through_session == {r.id for r in through_fetch} == stored & set(asked)
    assert {r.id for r in others} == stored - set(asked)


def test_a_read_queued_after_a_lock_sees_what_the_lock_waited_for(postgres_runtime):
    """The reason fetch_in_order keeps one statement per read: the second read starts once the
    lock is ours, with its own snapshot, so it sees the row the lock holder committed meanwhile
    (one statement reading both would not)."""
    from datetime import date

    from sqlalchemy import bindparam, insert, select

    from kyc.models import Account, ActivityDay, utcnow

    runtime = postgres_runtime
    accounts, days, now = Account.__table__, ActivityDay.__table__, utcnow()
    with runtime.session() as session, session.begin():
        session.execute(insert(accounts), [_account_row("lk1")])
    lock = select(accounts.c.id).where(persist.in_list(accounts.c.id, "ids")).with_for_update()
    day = select(days.c.requests).where(days.c.account_id == bindparam("account_id"))
    holder = runtime.session()
    holder.begin()
    holder.execute(lock, {"ids": ["lk1"]})              # the lock, held until the day row commits
    read: list = []

    def reader() -> None:
        with runtime.session() as session, persist.pipelined(session):
            read.append(persist.fetch_in_order(session, [(lock, {"ids": ["lk1"]}), (day, {"account_id": "lk1"})]))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.5)                                    # the reader waits on the lock
    holder.execute(insert(days), [{"account_id": "lk1", "day": date(2026, 10, 5), "requests": 9,
                                   "first_at": now, "last_at": now, "dormant_days": 0}])
    holder.commit()
    holder.close()
    thread.join(timeout=30)
    (locked, counted), = read
    assert [row.id for row in locked] == ["lk1"] and [row.requests for row in counted] == [9]


def test_a_failing_deferred_write_fails_the_commit_and_writes_nothing(runtime):
    from sqlalchemy import func, insert, select
    from sqlalchemy.exc import IntegrityError

    from kyc.models import Account, Evaluation

    with pytest.raises(IntegrityError):
        with runtime.session() as session, persist.pipelined(session):
            session.execute(insert(Account.__table__), _account_row("p1"))
            # References an account that does not exist: on PostgreSQL the error arrives with
            # the COMMIT it travelled with.
            session.execute(insert(Evaluation.__table__), {
                "id": "ev_1", "account_id": "nobody", "subject": "signup", "trigger": "live",
                "occurred_at": _account_row("x")["created_at"], "input": {}, "signals": {}, "reasons": [],
                "decision": "allow", "score": 0, "required_verifications": [], "rules_version": "t"})
    with runtime.session() as session:
        assert session.execute(select(func.count()).select_from(Account.__table__)).scalar() == 0
    # The connection went back to the pool usable.
    with runtime.session() as session, persist.pipelined(session):
        session.execute(insert(Account.__table__), _account_row("p2"))
    with runtime.session() as session:
        assert session.execute(select(Account.id)).scalars().all() == ["p2"]


def test_an_error_raised_in_a_pipelined_transaction_writes_nothing(runtime):
    from sqlalchemy import func, insert, select

    from kyc.models import Account

    with pytest.raises(RuntimeError):
        with runtime.session() as session, persist.pipelined(session):
            session.execute(insert(Account.__table__), _account_row("p1"))
            raise RuntimeError("the request failed after queueing a write")
    with runtime.session() as session:
        assert session.execute(select(func.count()).select_from(Account.__table__)).scalar() == 0


def test_a_pipelined_connection_leaves_pipeline_mode_before_the_pool_gets_it_back(runtime):
    # The pool hands a connection back out at once, to any thread: one still in pipeline mode
    # breaks the next user's ping (seen with the in-process rescoring thread).
    from sqlalchemy import event, insert

    from kyc.models import Account

    states, hooks = [], []
    engine = runtime.engine

    def checkin(dbapi_connection, _record):
        pgconn = getattr(dbapi_connection, "pgconn", None)
        states.append(pgconn.pipeline_status if pgconn is not None else 0)

    event.listen(engine, "checkin", checkin)
    try:
        with runtime.session() as session, persist.pipelined(session):
            event.listen(session, "after_commit", lambda s: hooks.append("committed"))
            session.execute(insert(Account.__table__), _account_row("p1"))
    finally:
        event.remove(engine, "checkin", checkin)
    assert states and not any(states)
    assert hooks == ["committed"]


def test_a_pooled_connection_the_server_closed_is_replaced_before_use(_postgres_url):
    from sqlalchemy import text

    engine, admin = db.make_engine(_postgres_url), db.make_engine(_postgres_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        # The pool keeps that connection; the server ends it, as a restart would.
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            deadline = time.monotonic() + 10
            while conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar():
                assert time.monotonic() < deadline, "the backend did not exit"
                conn.rollback()         # pg_stat_activity is read once per transaction: look again
                time.sleep(0.01)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
        admin.dispose()


def test_postgresql_connections_keep_one_plan_per_prepared_statement(_postgres_url):
    """The scoring path's statements, prepared by psycopg, are not planned again at each run
    (see db._generic_plans): checked on a statement with an array parameter, which PostgreSQL
    planned again every time by default."""
    engine = db.make_engine(_postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW plan_cache_mode")) == "force_generic_plan"
            driver = conn.connection.driver_connection
            for _ in range(7):
                driver.execute("SELECT count(*) FROM unnest(%s::text[])", (["a", "b"],), prepare=True)
            plans = driver.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                                   "WHERE statement LIKE '%unnest%'").fetchall()
            assert plans and all(custom == 0 and generic >= 1 for generic, custom in plans)
    finally:
        engine.dispose()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**80, max_value=2**80)
    | st.floats() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
    | st.from_regex(r"\A[a-z]{0,3}_?[0-9]{15,30}\Z"),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES, indent=st.sampled_from([None, 0, 2]), separators=st.sampled_from([None, (",", ":")]))
def test_a_json_column_is_read_as_json_would_read_it(value, indent, separators):
    """db.load_json (orjson where it reads the same) gives what json.loads gives for any document
    json writes: every int exact however long (orjson would make one past 64 bits a float),
    NaN and the infinities, digits inside strings, any whitespace."""
    document = json.dumps(value, indent=indent, separators=separators)
    for form in (document, document.encode()):
        assert json.dumps(db.load_json(form)) == json.dumps(json.loads(document))


@settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES)
@example(value={1: "int key", None: [True], 2.5: 2**70, "t": "\u00e9\U0001f600"})
def test_a_json_column_is_written_as_json_would_write_it(value):
    """db.dump_json (orjson where it can) writes a document that reads back as json's does:
    every int exact however long (orjson refuses one past 64 bits: json writes it), keys that
    are not text written as json writes them, any text; a NaN or an infinity is written null
    (json's token is no JSON: PostgreSQL refuses it)."""
    document = db.dump_json(value)
    assert json.loads(document) == json.loads(json.dumps(db._finite(value)))
    assert db.load_json(document) == json.loads(document)


def test_json_columns_keep_long_integers_on_both_databases(runtime):
    """Through the engine (the psycopg loader on PostgreSQL, the JSON type's on SQLite), by the
    ORM and by a raw read (persist.fetch): a free-form value's 20-digit integer reads back exact."""
    from sqlalchemy import insert, select

    from kyc.models import Account

    value = {"big": 2**70, "negative": -2**64 - 1, "small": 7, "half": 1.5, "id": "ev_000000000000000000000000001"}
    accounts = Account.__table__
    with runtime.session() as session:
        session.execute(insert(accounts), [{**_account_row("json_long"), "subjects": value}])
        by_orm = session.scalar(select(Account.subjects).where(Account.id == "json_long"))
        (by_fetch,) = persist.fetch(session, select(accounts.c.subjects).where(accounts.c.id == "json_long"), {})
        session.rollback()
    for read in (by_orm, by_fetch[0]):
        assert read == value and isinstance(read["big"], int) and isinstance(read["negative"], int)
