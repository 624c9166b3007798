"""Runtime.read_connection: the hot path's reads run on one connection the process holds
(kyc.persist.HeldReadConnection), and still see every commit made before them."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, insert, select, text, update

from kyc import db
from kyc.models import Account, utcnow
from kyc.persist import fetch


def _account(account_id: str) -> dict:
    now = utcnow()
    return {"id": account_id, "created_at": now, "first_seen_at": now, "last_seen_at": now, "decision": "allow",
            "score": 0, "reasons": [], "required_verifications": [], "subjects": {}, "state_version": 1,
            "updated_at": now}


DECISION = select(Account.decision).where(Account.id == "acct_held")


def _decision(runtime) -> str:
    with runtime.read_connection() as conn:
        return fetch(conn, DECISION, {})[0][0]


def test_reads_hold_one_connection_and_see_each_commit_before_them(runtime):
    with runtime.session() as session, session.begin():
        session.execute(insert(Account.__table__), _account("acct_held"))
    reading, checkouts = [False], []
    event.listen(runtime.engine, "checkout", lambda dbapi_connection, _record, _proxy: reading[0] and checkouts.append(
        dbapi_connection))
    for decision in ("block", "review", "allow", "block"):
        # A block is seen by the very next read (kyc/tiers.py: nothing about standing is cached).
        with runtime.session() as session, session.begin():
            session.execute(update(Account).where(Account.id == "acct_held").values(decision=decision))
        reading[0] = True
        assert _decision(runtime) == decision
        reading[0] = False
    assert len(checkouts) == 1            # the first read took it from the pool; the others kept it


def test_a_failed_read_leaves_the_next_one_working(runtime):
    with runtime.session() as session, session.begin():
        session.execute(insert(Account.__table__), _account("acct_held"))
    with pytest.raises(Exception):
        with runtime.read_connection() as conn:
            conn.execute(text("SELECT no_such_column FROM accounts"))
    assert _decision(runtime) == "allow"


def test_a_read_in_use_sends_another_thread_to_the_pool(runtime):
    with runtime.session() as session, session.begin():
        session.execute(insert(Account.__table__), _account("acct_held"))
    answers = []
    with runtime.read_connection() as first:
        thread = threading.Thread(target=lambda: answers.append(_decision(runtime)))
        thread.start()
        thread.join(30)
        assert fetch(first, DECISION, {})[0][0] == "allow"
    assert answers == ["allow"]


def test_the_held_connection_is_closed_with_its_engines_pool(postgres_runtime):
    runtime = postgres_runtime
    with runtime.read_connection() as conn:
        held = conn.connection.dbapi_connection
        assert held.autocommit                        # one round trip a read: no BEGIN, no ROLLBACK
    assert not held.closed                            # held, not handed back after the read
    runtime.engine.dispose()
    assert held.closed
    with runtime.read_connection() as conn:           # and a new one is taken from the new pool
        assert fetch(conn, select(text("1")), {})[0][0] == 1


def test_a_held_connection_the_server_closed_is_replaced_before_use(postgres_runtime, _postgres_url):
    runtime = postgres_runtime
    with runtime.read_connection() as conn:
        pid = fetch(conn, select(text("pg_backend_pid()")), {})[0][0]
    # The server ends it, as a restart would: the next read takes a new one, no error.
    admin = db.make_engine(_postgres_url)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            deadline = time.monotonic() + 10
            while conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar():
                assert time.monotonic() < deadline, "the backend did not exit"
                conn.rollback()
                time.sleep(0.01)
    finally:
        admin.dispose()
    with runtime.read_connection() as conn:
        assert fetch(conn, select(text("pg_backend_pid()")), {})[0][0] != pid


def test_a_forked_child_never_uses_its_parents_held_connection(postgres_runtime):
    runtime = postgres_runtime
    held_reads = runtime._held_reads
    with runtime.read_connection() as conn:
        parents = conn.connection.dbapi_connection
    held_reads._pid = -1                               # as a child forked from this process sees it
    with runtime.read_connection() as conn:
        assert conn.connection.dbapi_connection is not parents
        assert fetch(conn, select(text("1")), {})[0][0] == 1
    assert not parents.closed                          # left to the parent: neither closed nor reset
    parents.close()
