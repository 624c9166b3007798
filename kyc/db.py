"""Database engine and sessions. One engine per process; sessions are explicit and short."""

from __future__ import annotations

import json
import logging
import select
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import JSON, Table, Text, bindparam, cast, column, create_engine, event, func, make_url, text
from sqlalchemy import select as select_rows
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


PG_CONNECT_TIMEOUT = 5          # seconds


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a database error's message (logged with its traceback) never holds the
        # statement's values, which can be emails, phone numbers or addresses.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

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
                           connect_args=connect_args)
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


# autovacuum's analyze threshold (50 rows + 10% of the table), for servers that run without it.
ANALYZE_BASE = 50
ANALYZE_SCALE = 0.1


def refresh_statistics(engine) -> list[str]:
    """ANALYZE kyc's tables that changed by more than autovacuum's threshold since their last
    ANALYZE (PostgreSQL; returns their names). Where autovacuum runs, it has done this already
    and nothing is left to do.

    Why: kyc forces generic plans (_generic_plans), made from the tables' statistics. A server
    without autovacuum never gathers them: measured here (autovacuum off), once the graph tables
    held 20,000 accounts a signup scanned graph_nodes and graph_edges in full, 97 ms a signup
    against 17 ms after one ANALYZE (60 signups each, loaded machine). An ANALYZE also makes
    every connection plan its prepared statements again.
    """
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        stale = conn.execute(text(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema()"
            " AND n_mod_since_analyze > :base + :scale * n_live_tup ORDER BY relname"),
            {"base": ANALYZE_BASE, "scale": ANALYZE_SCALE}).scalars().all()
    for table in stale:
        with engine.begin() as conn:
            conn.execute(text(f'ANALYZE "{table}"'))
    if stale:
        log.info("planner statistics refreshed: %s", ", ".join(stale))
    return list(stale)


def _drop_if_closed_by_server(dbapi_connection, _record, _proxy) -> None:
    """A pooled connection the server has closed (restart, terminate, idle timeout) is
    replaced before use, without pool_pre_ping's round trip on every checkout (a SELECT 1 each
    request). A server closing a connection says so and shuts the socket, so an idle
    connection whose socket has something to read is dead: the pool opens a new one."""
    readable, _, _ = select.select([dbapi_connection.pgconn.socket], [], [], 0)
    if readable:
        raise DisconnectionError("the server closed this pooled connection")


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
                    conn = conn or sqlite3.connect(self.path, timeout=self.BUSY_WAIT, isolation_level=None,
                                                   check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
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


# --- pipelined transactions (PostgreSQL) ------------------------------------------------------

_PIPELINE = "kyc.pipeline"


def deferred(statement):
    """Mark a write whose result nobody reads (no rowcount, no rows): in a pipelined transaction
    it travels with the next statement whose answer is needed, or with the COMMIT."""
    return statement.execution_options(kyc_deferred=True)


@contextmanager
def pipelined(session: Session) -> Iterator[Session]:
    """A transaction, committed at the end, whose writes travel together (PostgreSQL).

    A scoring transaction is a few reads and a dozen writes whose answers nobody reads. In
    psycopg's pipeline mode, statements are queued: a read (or anything not known to be a
    write whose answer nobody needs) is sent at once with the writes queued before it, and
    the last writes go with the COMMIT: 4 round trips instead of 12 for a new signup. Writes sent late are
    still written in order, in the same transaction; a failing one fails the next statement or
    the commit, which rolls everything back. Fire-and-forget writes are INSERTs without
    RETURNING (their rowcount is not known here: -1) and statements marked `deferred`.
    Elsewhere this is a plain transaction.
    """
    with session.begin():
        connection = session.connection()
        if connection.dialect.name != "postgresql":
            yield session
            return
        info, driver = connection.info, connection.connection.driver_connection
        errors = connection.dialect.loaded_dbapi.Error
        # The transaction's BEGIN and COMMIT are sent as statements, queued like the writes
        # (psycopg would wait for its own BEGIN): the BEGIN goes with the first read, the COMMIT
        # with the last writes and the pipeline's closing sync. Sent on the driver, the COMMIT
        # keeps the connection ours until it has left pipeline mode (the session's commit
        # would hand it back to the pool at once, to another thread); the session's commit then
        # finds nothing left to commit and runs its hooks.
        driver.autocommit = True
        try:
            try:
                with driver.pipeline() as pipeline:
                    info[_PIPELINE] = pipeline
                    driver.execute("BEGIN")
                    yield session
                    session.flush()
                    driver.execute("COMMIT")
            except errors as error:         # raised by the closing sync: a write or the commit failed
                raise DBAPIError.instance("COMMIT", None, error, errors) from error
        except BaseException:
            # A failed statement aborts the pipeline and what was queued after it; out of the
            # pipeline, the transaction is rolled back before the connection goes back to the pool.
            with suppress(errors):
                driver.rollback()
            raise
        finally:
            info.pop(_PIPELINE, None)
            with suppress(errors):
                driver.autocommit = False


def send(session: Session, statement, rows: list[dict]) -> None:
    """Run a write nobody reads the answer of (no rows, no rowcount) for each of `rows`, in the
    session's transaction: an INSERT without RETURNING, or a `deferred` statement.

    In a pipelined transaction it goes straight to the driver's cursor, compiled once per
    dialect and set of keys (_Sendable), and travels with the next read or the COMMIT like any
    deferred write. Why: SQLAlchemy's execution (a context, its events, a result nobody reads)
    cost more than psycopg's for a statement whose answer nobody reads: the six writes of a
    signup (its evaluation, account, sightings, velocity marks, new cluster and membership) sent
    this way took this process from 8.47 to 7.99 ms of CPU a signup (in-process signups on
    PostgreSQL, one round of 1,500 each, load average 9). Over HTTP (bench/signup_http.py, 3
    alternated rounds, load average 5-6), this and registering the after-commit listeners once
    (kyc.rescore.requests) took a signup from 9.68 to 7.42 ms of gunicorn worker CPU and from
    4.00 to 3.50 ms of PostgreSQL's: 1.25 times the signups/s. A failure fails the next
    statement or the commit, as it would have. Elsewhere this is session.execute.
    """
    if not rows:
        return
    connection = session.connection()
    if _PIPELINE not in connection.info:
        session.execute(statement, rows)
        return
    sendable = _sendable(statement, connection.dialect, frozenset(rows[0]))
    cursor = connection.connection.driver_connection.cursor()
    many = len(rows) > 1
    params = [sendable.params(row) for row in rows] if many else sendable.params(rows[0])
    # Listeners still see every statement (bench/score_signup.py counts them).
    connection.dispatch.before_cursor_execute(connection, cursor, sendable.sql, params, None, many)
    if many:
        cursor.executemany(sendable.sql, params)
    else:
        cursor.execute(sendable.sql, params)


class _Sendable:
    """A Core statement compiled for a dialect with given parameter keys: its SQL, the bind
    processors of its types, and the Python defaults SQLAlchemy would fill in (created_at,
    updated_at)."""

    def __init__(self, statement, dialect, keys: frozenset[str]):
        compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
        assert not compiled.positional, "a named paramstyle (psycopg's)"
        self.sql = compiled.string
        self.processors = compiled._bind_processors
        self.defaults = [(column.key, column.default.arg) for column in compiled.insert_prefetch]
        self.defaults += [(column.key, column.onupdate.arg) for column in compiled.update_prefetch]
        assert all(callable(arg) for _, arg in self.defaults), "Python defaults are callables here"
        # Values the statement holds itself (.values(decision="allow")).
        self.fixed = {name: value for name, value in compiled.construct_params({key: None for key in keys}).items()
                      if name not in keys and name not in dict(self.defaults)}

    def params(self, row: dict) -> dict:
        values = {**self.fixed, **{key: arg(None) for key, arg in self.defaults if key not in row}, **row}
        processors = self.processors
        for name, value in values.items():
            processor = processors.get(name)
            if processor is not None:
                values[name] = processor(value)
        return values


@lru_cache(maxsize=64)
def _sendable(statement, dialect, keys: frozenset[str]) -> _Sendable:
    return _Sendable(statement, dialect, keys)


def fetch(conn, statement, params: dict) -> list[tuple]:
    """The rows of a read on a hot path (the API key, the entitlement check), as tuples.

    PostgreSQL: straight on the driver's cursor, the statement compiled once per dialect and
    set of keys (_Readable), the read counterpart of send(). Why: SQLAlchemy's execution (a
    context, its events, a result object) cost as much CPU as psycopg's for a one-row read
    (0.205 ms a Core SELECT against 0.101 ms on the cursor, the entitlement's statement).
    Elsewhere this is conn.execute. `conn`: a Connection or a Session."""
    connection = conn.connection() if isinstance(conn, Session) else conn
    if connection.dialect.name != "postgresql":
        return [tuple(row) for row in connection.execute(statement, params)]
    readable = _readable(statement, connection.dialect, frozenset(params))
    values = readable.params(params)
    with connection.connection.driver_connection.cursor() as cursor:
        connection.dispatch.before_cursor_execute(connection, cursor, readable.sql, values, None, False)
        cursor.execute(readable.sql, values)
        rows = cursor.fetchall()
    processors = readable.results
    if not any(processors):
        return rows
    return [tuple(value if p is None else p(value) for p, value in zip(processors, row)) for row in rows]


class _Readable(_Sendable):
    """A SELECT compiled for a dialect with given parameter keys, and its columns' result
    processors (None where the driver's value is kept as is)."""

    def __init__(self, statement, dialect, keys: frozenset[str]):
        super().__init__(statement, dialect, keys)
        compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
        self.results = [entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns]


@lru_cache(maxsize=64)
def _readable(statement, dialect, keys: frozenset[str]) -> _Readable:
    return _Readable(statement, dialect, keys)


def _answer_now_unless_deferred(conn, cursor, statement, parameters, context, executemany) -> None:
    """In a pipelined transaction, fetch a statement's answer before SQLAlchemy reads it (rows,
    rowcount), unless it is a write nobody reads the answer of."""
    pipeline = conn.info.get(_PIPELINE)
    if pipeline is None:
        return
    if context.execution_options.get("kyc_deferred"):
        return
    if context.isinsert and not (context.compiled is not None and context.compiled.effective_returning):
        return
    pipeline.sync()


# --- set-based writes (PostgreSQL) ------------------------------------------------------------

def json_rows(table: Table, names: tuple[str, ...], param: str = "rows"):
    """PostgreSQL: a SELECT of the rows bound as one JSON array of objects (`param`, made by
    rows_json), each key read as its column's type: an INSERT ... SELECT or UPDATE ... FROM of
    any number of rows is one short statement, prepared once, where an executemany runs one
    statement per row on the server. JSON, not one array per column: psycopg dumps arrays in
    Python, element by element (slower than the executemany); json.dumps is C."""
    rows = func.json_to_recordset(cast(bindparam(param, type_=Text), JSON)).table_valued(
        *(column(name, table.c[name].type) for name in names)).render_derived(with_types=True)
    return select_rows(*(rows.c[name] for name in names))


def _plain(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def rows_json(rows: list[dict]) -> str:
    """The parameter of a json_rows statement: the rows (dicts keyed by column) as JSON text."""
    return json.dumps(rows, default=_plain, separators=(",", ":"))
