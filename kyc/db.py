"""Database engine and sessions. One engine per process; sessions are explicit and short."""

from __future__ import annotations

import json
import logging
import math
import select
import sqlite3
import threading
import weakref
from pathlib import Path
from urllib.parse import quote
from typing import Any

import orjson

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


PG_CONNECT_TIMEOUT = 5          # seconds

# A number of 19 digits or more may not fit in 64 bits, and orjson reads one as a float (losing
# digits) where json keeps an int: a document that may hold one (a free-form `metadata` can), or
# that orjson refuses (NaN, which SQLite's JSON text can hold), is read by json. The test is a
# necessary condition, in C: digits as 0, whitespace and '-' dropped, then 19 zeros after a ':',
# ',' or '[' (a re search for it took 10 us a document, as long as json's whole reading).
_DIGIT_RUNS = bytes.maketrans(b"0123456789,[", b"0000000000::")
_LONG_NUMBER = b":" + b"0" * 19


def _may_hold_long_number(raw: bytes) -> bool:
    runs = raw.translate(_DIGIT_RUNS, b" \t\n\r-")
    return _LONG_NUMBER in runs or runs.startswith(_LONG_NUMBER[1:])


def load_json(document: bytes | str) -> Any:
    """A JSON column's value, read with orjson: every JSON column read, through the ORM or a raw
    cursor, on both databases. A bulk activity call reads ~3,000 documents (days, signals,
    subjects), and json's reading was 7% of its CPU. On 4,363 documents stored by the activity
    bench (1,353 bytes on average): json.loads 10.5 us a document, this 4.7 (the test included),
    orjson alone 3.0."""
    raw = document.encode() if isinstance(document, str) else document
    if not _may_hold_long_number(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def dump_json(value: Any) -> str:
    """A JSON column's text, written with orjson: every JSON value bound through SQLAlchemy, on
    both databases. What orjson refuses, json writes: an integer beyond 64 bits (a free-form
    `metadata` can hold one). Keys that are not text are written as json writes them (1 -> "1").
    A float NaN or infinity is written null, where json wrote a token that is no JSON (PostgreSQL
    refused it). Why: an evaluation's input, signals, reasons and verifications (3.9 KB written
    in all, 2,000 signups' stored on PostgreSQL) took json 84-92 us to write, orjson 16."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(_finite(value))


def _finite(value: Any) -> Any:
    """`value` with each NaN or infinity made None, as orjson writes them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a database error's message (logged with its traceback) never holds the
        # statement's values, which can be emails, phone numbers or addresses.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True,
                               json_serializer=dump_json, json_deserializer=load_json)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
            cur = dbapi_conn.cursor()
            # WAL + NORMAL: durable across process crashes, one fsync per checkpoint, not per commit.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Commits never checkpoint (copy the WAL into the database and fsync it): a thread
            # does, off the request path. With random-hash keys a signup dirties ~90 pages, so
            # the default (every 1,000 pages) made every tenth commit pay 5-20 ms for it.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        if path and path != ":memory:":
            _checkpointers[engine] = thread = _Checkpointer(engine, path)
            thread.start()
        return engine
    parsed = make_url(url)
    postgres = parsed.get_backend_name() == "postgresql"
    # An unreachable server fails a request within seconds (answered 503, see kyc.api), not
    # after the operating system's TCP timeout of minutes; a URL may set its own.
    connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT} if postgres and "connect_timeout" not in parsed.query else {}
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=not postgres, hide_parameters=True,
                           connect_args=connect_args, json_serializer=dump_json, json_deserializer=load_json)
    if postgres:
        event.listen(engine, "connect", _generic_plans)
        event.listen(engine, "checkout", _drop_if_closed_by_server)
        event.listen(engine, "after_cursor_execute", _answer_now_unless_deferred)
    return engine


def _generic_plans(dbapi_connection, _record) -> None:
    """Prepared statements keep one plan. psycopg prepares a statement once a connection has run
    it 5 times (the scoring path's statements, whose shapes never change); PostgreSQL still
    planned those taking arrays again at every execution, as a known array makes a custom plan
    look cheaper: 0.5 ms per graph link statement, twice what running it costs."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
    dbapi_connection.commit()


def _drop_if_closed_by_server(dbapi_connection, _record, _proxy) -> None:
    """A pooled connection the server has closed (restart, terminate, idle timeout) is
    replaced before use, without pool_pre_ping's round trip on every checkout (a SELECT 1 each
    request): the pool opens a new one."""
    if closed_by_server(dbapi_connection):
        raise DisconnectionError("the server closed this pooled connection")


def closed_by_server(dbapi_connection) -> bool:
    """Whether the server has closed an idle PostgreSQL connection. A server closing a
    connection says so and shuts the socket, so an idle connection whose socket has something
    to read is dead."""
    if dbapi_connection.closed:
        return True
    readable, _, _ = select.select([dbapi_connection.pgconn.socket], [], [], 0)
    return bool(readable)


log = logging.getLogger("kyc.db")


class _Checkpointer(threading.Thread):
    """Checkpoints a SQLite file's WAL while its engine is alive, off the request path.

    Every INTERVAL seconds, PASSIVE: it copies the new frames into the database without blocking
    anyone. Under unbroken traffic a write is always under way while it runs, so the WAL is never
    found fully copied at the start of a write and SQLite never restarts it: every TRUNCATE_EVERY
    rounds a TRUNCATE (which has little left to copy) waits up to BUSY_WAIT for a moment with no
    writer and empties the file, delaying at most the one write that starts meanwhile.
    Each process using the file runs one; when the last connection closes, SQLite checkpoints
    what is left itself.
    """

    INTERVAL = 0.5
    TRUNCATE_EVERY = 10
    BUSY_WAIT = 0.005

    def __init__(self, engine: Engine, path: str):
        super().__init__(name="kyc-sqlite-checkpoint", daemon=True)
        self.engine = weakref.ref(engine)
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = None
        rounds = 0
        try:
            while not self.stopped.wait(self.INTERVAL) and self.engine() is not None:
                rounds += 1
                try:
                    # mode=rw: never create the file. A file removed while the engine lives (`kyc
                    # simulate`'s scratch directory at exit) came back empty when a round began
                    # after the removal, and failed the removal ("Directory not empty").
                    conn = conn or sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True,
                                                   timeout=self.BUSY_WAIT, isolation_level=None,
                                                   check_same_thread=False)
                    ((_, frames, _),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if frames == -1:
                        # Not in WAL mode, to this connection: it opened the file before the engine's
                        # first connection turned WAL on (the migrations create the file), and a
                        # connection that reads nothing never looks again. Every round did nothing,
                        # and the WAL grew for good (5.5 GB in a `kyc simulate`). Open it anew.
                        conn.close()
                        conn = None
                        continue
                    if rounds >= self.TRUNCATE_EVERY:
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                        rounds = 0
                except sqlite3.Error as error:     # busy, or the file went away: try again next round
                    log.debug("checkpoint skipped: %s", error)
        finally:
            if conn is not None:
                conn.close()


_checkpointers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # engine -> this process's thread


def pause_checkpoints(engine: Engine) -> None:
    """Stop this process's checkpoint thread for a SQLite file's engine, before forking
    workers: a child gets none of the parent's threads, and one forked while that thread held
    a SQLite lock would find it held forever. Each worker then calls resume_checkpoints."""
    thread = _checkpointers.get(engine)
    if thread is not None:
        thread.stopped.set()
        thread.join()


def resume_checkpoints(engine: Engine) -> None:
    """Run the checkpoint thread again in this process (a forked worker; none for other engines)."""
    thread = _checkpointers.get(engine)
    if thread is not None and not thread.is_alive():
        _checkpointers[engine] = replacement = _Checkpointer(engine, thread.path)
        replacement.start()


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)


def write_lock(session: Session) -> None:
    """Take the database's write lock now, for a read-then-write unit of work on SQLite.

    SQLite's SELECT ... FOR UPDATE locks nothing and pysqlite begins its transaction only at
    the first write, so two requests could both read a row and then both write it. BEGIN
    IMMEDIATE at the start serialises them (others wait up to the busy timeout). PostgreSQL
    needs nothing here: its row locks (FOR UPDATE) do the job.
    """
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# --- pipelined transactions (PostgreSQL; kyc.persist.pipelined) ---------------------------------

PIPELINE = "kyc.pipeline"     # connection.info key: the psycopg pipeline of a pipelined transaction


def _answer_now_unless_deferred(conn, cursor, statement, parameters, context, executemany) -> None:
    """In a pipelined transaction, fetch a statement's answer before SQLAlchemy reads it (rows,
    rowcount), unless it is a write nobody reads the answer of."""
    pipeline = conn.info.get(PIPELINE)
    if pipeline is None:
        return
    if context.execution_options.get("kyc_deferred"):
        return
    if context.isinsert and not (context.compiled is not None and context.compiled.effective_returning):
        return
    pipeline.sync()
