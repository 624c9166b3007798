"""Persist: the one place for dialect-specific SQL and for deferred, pipelined writes.

Everything else in kyc writes portable SQLAlchemy; where PostgreSQL has a faster way to write
(or read) the same rows and a bench figure pays for it, the statement or the mechanics live
here, each with its figure, and the portable way sits beside it for SQLite:

- pipelined transactions and `send` (writes whose answer nobody reads travel together);
- set-based writes: many rows as one statement over one JSON document (`json_rows`), COPY;
- ON CONFLICT statements (SQLite and PostgreSQL spell them alike but need their own insert);
- the graph's linking statement and its rebuild's bulk mechanics (locks, temporary tables
  built sorted, indexes built after a load, ANALYZE);
- transaction settings (autocommit reads, relaxed commits of a rescore chunk).

Callers choose a strategy with `postgres(bind)`, the one test of the dialect outside the
engine's set-up (kyc.db). Imports only kyc.db and kyc.models, so every layer can use it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import (JSON, Boolean, String, Table, Text, any_, bindparam, cast, column, event, exists, func, literal,
                        null, select, text, update)
from sqlalchemy.dialects.postgresql import ARRAY, insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

from kyc.db import PIPELINE, closed_by_server, dump_json
from kyc.models import (VELOCITY_SIGHTINGS, Account, ClusterMember, GraphEdge, GraphNode, IdempotentAnswer,
                        PhoneClaim, UTCDateTime)

log = logging.getLogger("kyc.persist")


def postgres(bind) -> bool:
    """Whether a session, connection or engine talks to PostgreSQL: the test callers choose a
    strategy by (which statement of this module to run), kept here with the SQL it selects."""
    return _dialect(bind).name == "postgresql"


def dialect_of(bind) -> str:
    """The dialect's name, as a cache key of statements built per dialect."""
    return _dialect(bind).name


def _dialect(bind):
    return bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect


def _insert(dialect: str):
    """The dialect's INSERT, which knows ON CONFLICT."""
    return pg_insert if dialect == "postgresql" else sqlite_insert


# --- lists bound as one parameter -------------------------------------------------------------

class _JsonList(TypeDecorator):
    """A list bound as one JSON text parameter."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return dump_json(list(value))


class InList(ColumnElement[bool]):
    """`column IN` the list bound as `name` (in_list)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True          # a condition, not a value: no "= 1" where booleans are integers
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("name", InternalTraversal.dp_string)]

    def __init__(self, column_, name: str):
        self.column, self.name = column_, name


def in_list(column_, name: str) -> InList:
    """`column IN` the list bound as parameter `name`, any length: an expanding IN elsewhere; on
    PostgreSQL the list travels as one JSON text (json_array_elements_text, each element cast
    to the column's type) and is matched as `column = ANY(ARRAY(...))`. Why JSON: an expanding
    IN is one placeholder per element, and psycopg parses the text of a statement longer than
    its cache allows anew on every execution, as SQLAlchemy renders it: 1,000 account ids read
    by id cost 5.7-14 ms of CPU as an IN and 1.2-1.3 ms as JSON (20 reads each, three
    alternated runs, 1,000,000 accounts; a bulk activity call makes about ten such reads).
    Why `= ANY(ARRAY(...))`, not `IN (SELECT ...)`: a generic plan takes a set-returning
    function for 100 rows, and 100 index probes cost more than a sequential scan of a table of
    a few ten thousand rows; an array it does not know it takes for 10 elements. A new
    deployment's graph tables are that size for weeks: with graph_edges at 32,000 rows, the
    read of what an activity report's account shares (kyc.graph.link) scanned the table,
    9.5 ms, against 0.18 ms through its index (EXPLAIN ANALYZE of the generic plan)."""
    return InList(column_, name)


@compiles(InList)
def _in_list(element: InList, compiler, **kw) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(InList, "postgresql")
def _in_list_postgres(element: InList, compiler, **kw) -> str:
    listed = func.json_array_elements_text(cast(bindparam(element.name, type_=_JsonList()), JSON)).column_valued()
    return compiler.process(element.column == any_(func.array(select(cast(listed, element.column.type))
                                                             .scalar_subquery())), **kw)


# --- pipelined transactions (PostgreSQL) ------------------------------------------------------

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
        if not postgres(connection):
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
                    info[PIPELINE] = pipeline
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
            info.pop(PIPELINE, None)
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
    if PIPELINE not in connection.info:
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
        self.compiled = compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
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


def fetch(bind, statement, params: dict) -> list[Any]:
    """The rows of one read (fetch_in_order's, alone). `bind`: a Connection or a Session."""
    return fetch_in_order(bind, [(statement, params)])[0]


def fetch_in_order(bind, reads: Sequence[tuple[Any, dict]]) -> list[list[Any]]:
    """The rows of each read (a statement and its parameters), run one after the other on `bind`
    (a Connection or a Session, in its transaction); rows are tuples whose columns are also read
    by name (row.id) or as a dict (row._asdict()).

    PostgreSQL: straight on the driver's cursor, each statement compiled once per dialect and set
    of keys (_Readable), the read counterpart of send(). Why: SQLAlchemy's execution (a context,
    its events, a result object) cost as much CPU as psycopg's for a one-row read (0.205 ms a
    Core SELECT against 0.101 ms on the cursor, the entitlement's statement). In a pipelined
    transaction all of them travel in one round trip. Each still starts when the one before it
    has finished, with its own snapshot (READ COMMITTED): a read after a row lock (FOR UPDATE)
    sees what the transaction it waited for committed, which one statement reading both could
    not. An IN list is one parameter (in_list).
    A steady single activity report locked its account, then read its day, two round trips and
    two ORM executions before its writes and COMMIT; read this way, 2.62/2.27/3.27 ms of CPU a
    report against 3.33/2.92/4.23 (medians of ~450 each, the two ways interleaved report by
    report in one process, three runs, 1,000,000 accounts stored, load ~0.8), and wall
    3.06/2.73/3.88 against 3.93/3.52/5.03 ms. A signup's three reads (its account created or
    locked, its keys' velocity counts, its nodes counted and their holders read) each one read
    this way: 4.77/4.20/3.77 ms of CPU a signup against 5.29/4.73/4.23 (medians of 750 each,
    interleaved likewise, three seeds of 1,500). Elsewhere (SQLite; a session's transaction that
    is not pipelined, whose errors SQLAlchemy's execution maps, a deadlock to OperationalError
    for the callers that retry one) each is bind.execute."""
    connection = bind.connection() if isinstance(bind, Session) else bind
    pipeline = connection.info.get(PIPELINE)
    if not postgres(connection) or (pipeline is None and isinstance(bind, Session)):
        return [list(bind.execute(statement, params)) for statement, params in reads]
    driver = connection.connection.driver_connection
    # Outside a pipeline each read is answered as it is sent: one cursor, kept with the connection,
    # reads them one after the other (_kept_cursor). In one, each has its own until the sync.
    kept = _kept_cursor(connection, driver) if pipeline is None else None
    sent, answers = [], []
    for statement, params in reads:
        readable = _readable(statement, connection.dialect, frozenset(params))
        values = readable.params(params)
        cursor = driver.cursor() if kept is None else kept
        connection.dispatch.before_cursor_execute(connection, cursor, readable.sql, values, None, False)
        cursor.execute(readable.sql, values)
        if kept is None:
            sent.append((readable, cursor))
        else:
            answers.append(_rows(readable, cursor))
    if pipeline is not None:
        pipeline.sync()
        for readable, cursor in sent:
            with cursor:
                answers.append(_rows(readable, cursor))
    return answers


def _rows(readable: _Readable, cursor) -> list[Any]:
    rows = cursor.fetchall()
    processors, row = readable.results(cursor), readable.row
    return [row(*(value if p is None else p(value) for p, value in zip(processors, values))) for values in rows]


_KEPT_CURSOR = "kyc.kept_cursor"


def _kept_cursor(connection, driver):
    """The cursor that reads answered at once use on this driver connection, kept in the pool's
    record of it (Connection.info): making a psycopg cursor for each read was 14 of a primary-key
    read's 71 us of CPU (the entitlement's read, in process, median of 3,000). A connection the
    pool replaced gets a new one. It holds its last read's rows until the next read."""
    info = connection.info
    cursor = info.get(_KEPT_CURSOR)
    if cursor is None or cursor.connection is not driver or cursor.closed:
        cursor = info[_KEPT_CURSOR] = driver.cursor()
    return cursor


class _Row(tuple):
    """A row of a read on the driver's cursor: a tuple whose columns are also read by name
    (row.id), and as a dict (row._asdict()), like SQLAlchemy's Row; any label, `_dormancy` too."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _index: dict[str, int] = {}

    def __new__(cls, *values):
        return super().__new__(cls, values)

    def __getattr__(self, name: str):
        try:
            return self[self._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))


class _Readable(_Sendable):
    """A SELECT compiled for a dialect with given parameter keys, and its columns' result
    processors (None where the driver's value is kept as is). IN lists: in_list."""

    def __init__(self, statement, dialect, keys: frozenset[str]):
        super().__init__(statement, dialect, keys)
        compiled = self.compiled
        for bind, name in compiled.bind_names.items():
            if bind in compiled.literal_execute_params:   # a constant written into the text (string_agg's ',')
                self.sql = self.sql.replace(f"__[POSTCOMPILE_{name}]",
                                            compiled.render_literal_value(bind.value, bind.type))
                self.fixed.pop(name, None)
        assert "__[POSTCOMPILE" not in self.sql, f"an IN list is in_list: {self.sql}"
        self._types, self._dialect, self._results = [entry.type for entry in compiled._result_columns], dialect, None
        names = tuple(entry.keyname for entry in compiled._result_columns)
        self.row = type("Row", (_Row,), {"__slots__": (), "_fields": names,
                                         "_index": {name: i for i, name in enumerate(names)}})

    def results(self, cursor) -> list:
        """Each column's result processor (None: the driver's value is kept), for the types the
        server answered with (a Float column's processor depends on it). The cursor's
        description is read once: psycopg builds it anew at each read, a Column a column (the
        entitlement read's 11: 14.4 us a read, timed alone)."""
        if self._results is None:
            self._results = [t._cached_result_processor(self._dialect, d.type_code)
                             for t, d in zip(self._types, cursor.description)]
        return self._results


@lru_cache(maxsize=64)
def _readable(statement, dialect, keys: frozenset[str]) -> _Readable:
    return _Readable(statement, dialect, keys)


# --- set-based writes (PostgreSQL) ------------------------------------------------------------

def json_rows(table: Table, names: tuple[str, ...], param: str = "rows"):
    """PostgreSQL: a SELECT of the rows bound as one JSON array of objects (`param`, made by
    rows_json), each key read as its column's type: an INSERT ... SELECT or UPDATE ... FROM of
    any number of rows is one short statement, prepared once, where an executemany runs one
    statement per row on the server. JSON, not one array per column: psycopg dumps arrays in
    Python, element by element (slower than the executemany); JSON is encoded in C (_json)."""
    rows = func.json_to_recordset(cast(bindparam(param, type_=Text), JSON)).table_valued(
        *(column(name, table.c[name].type) for name in names)).render_derived(with_types=True)
    return select(*(rows.c[name] for name in names))


def rows_json(rows: list[dict]) -> str:
    """The parameter of a json_rows statement: the rows (dicts keyed by column) as JSON text,
    datetimes and dates as ISO 8601. kyc.db.dump_json (orjson), not json.dumps with a default for
    them: 1,000 activity reports' rows, 8.3-11.1 ms -> 0.72-1.18 ms (50 each, three alternated
    runs), and a bulk call writes several such documents."""
    return dump_json(rows)


# Many rows written as one statement on PostgreSQL, an executemany elsewhere (SQLite's is a loop
# in C). Why: an executemany, even pipelined, runs one statement per row on the server, and
# psycopg's pipeline costs this process ~70 us a row. Activity reports, bulk calls of 1,000 on
# 10,000 stored accounts, load ~6 on 2 cores: their days, reports, accounts and prompt uses took
# 1.6 s of server wall time per 3,000 reports as executemany. Usage linking of 3,000 reports (3
# bulk calls of 1,000; ~30,000 rows over sightings, nodes and edges) on 1,000,000 stored
# accounts, loaded machine: the three executemany cost the linking thread 2.3 s of its 5.6 s of
# CPU under the profiler. Not for scoring's few rows a signup (kyc.scoring.persist says why).

# On PostgreSQL they go through send() (no SQLAlchemy execution for an answer nobody reads): a
# steady single activity report (4 such writes) 2.99/3.36/3.24/3.76 -> 2.35/2.67/2.98/3.18 ms
# of CPU, median of 780 in process, four alternated pairs, load ~2.6.

def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """INSERT `rows` (dicts holding `columns`)."""
    if not rows:
        return
    if postgres(session):
        send(session, _json_insert(table, columns), [{"rows": rows_json(rows)}])
    else:
        session.execute(table.insert(), rows)


def upsert_rows(session: Session, table: Table, rows: list[dict[str, Any]], *, keys: tuple[str, ...],
                replace: tuple[str, ...] = (), add: tuple[str, ...] = (), latest: tuple[str, ...] = (),
                earliest: tuple[str, ...] = ()) -> None:
    """INSERT `rows` (no two with the same `keys`); a row whose `keys` are stored already sets the
    stored row's `replace` columns to its own, adds its `add` columns to the stored ones and keeps
    the greater of the stored and its own `latest` columns, the lesser of its `earliest` ones."""
    if not rows:
        return
    if postgres(session):
        send(session, _json_upsert(table, keys, replace, add, latest, earliest), [{"rows": rows_json(rows)}])
    else:
        session.execute(_upsert(table, keys, replace, add, latest, earliest), rows)


def update_rows(session: Session, table: Table, rows: list[dict[str, Any]], *, keys: tuple[str, ...]) -> None:
    """UPDATE the rows named by `keys` with each row's other columns (every row the same columns)."""
    if not rows:
        return
    columns = tuple(c for c in rows[0] if c not in keys)
    if postgres(session):
        send(session, _json_update(table, keys, columns), [{"rows": rows_json(rows)}])
    else:
        # Bound under other names: SQLAlchemy keeps a column's own name for its SET value.
        session.execute(_keyed_update(table, keys, columns),
                        [{f"_{name}": value for name, value in row.items()} for row in rows])


@lru_cache(maxsize=32)
def _json_insert(table: Table, columns: tuple[str, ...]):
    return table.insert().from_select(columns, json_rows(table, columns))


def _upsert_set(table: Table, excluded, replace: tuple[str, ...], add: tuple[str, ...], latest: tuple[str, ...],
                greater, earliest: tuple[str, ...] = (), lesser=None) -> dict:
    return {**{c: excluded[c] for c in replace}, **{c: table.c[c] + excluded[c] for c in add},
            **{c: greater(table.c[c], excluded[c]) for c in latest},
            **{c: lesser(table.c[c], excluded[c]) for c in earliest}}


@lru_cache(maxsize=32)
def _json_upsert(table: Table, keys: tuple[str, ...], replace: tuple[str, ...], add: tuple[str, ...],
                 latest: tuple[str, ...], earliest: tuple[str, ...] = ()):
    columns = keys + replace + add + latest + earliest
    statement = pg_insert(table).from_select(columns, json_rows(table, columns))
    return statement.on_conflict_do_update(index_elements=list(keys),
                                           set_=_upsert_set(table, statement.excluded, replace, add, latest,
                                                            func.greatest, earliest, func.least))


@lru_cache(maxsize=32)
def _upsert(table: Table, keys: tuple[str, ...], replace: tuple[str, ...], add: tuple[str, ...],
            latest: tuple[str, ...], earliest: tuple[str, ...] = ()):
    statement = sqlite_insert(table)
    return statement.on_conflict_do_update(index_elements=list(keys),
                                           set_=_upsert_set(table, statement.excluded, replace, add, latest,
                                                            func.max, earliest, func.min))


@lru_cache(maxsize=32)
def _json_update(table: Table, keys: tuple[str, ...], columns: tuple[str, ...]):
    # Deferred: nobody reads its rowcount, so in a pipelined transaction (an activity batch's
    # accounts and prompt uses) it travels with the next read or the COMMIT.
    given = json_rows(table, keys + columns).subquery("given")
    return deferred(update(table).where(*(table.c[k] == given.c[k] for k in keys))
                    .values({c: given.c[c] for c in columns}))


@lru_cache(maxsize=32)
def _keyed_update(table: Table, keys: tuple[str, ...], columns: tuple[str, ...]):
    return update(table).where(*(table.c[k] == bindparam(f"_{k}") for k in keys)).values(
        {c: bindparam(f"_{c}") for c in columns})


def load_rows(connection, table: Table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Load many rows (tuples in `columns`' order) into `table`, in the connection's transaction:
    COPY on PostgreSQL, ten times faster than statements (each row a statement, or a VALUES list
    psycopg must parse); a million memberships of a graph rebuild in seconds. Elsewhere
    executemany of 20,000 rows at a time."""
    if postgres(connection):
        with connection.connection.dbapi_connection.cursor() as cursor, \
                cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    chunk: list[dict] = []
    for row in rows:
        chunk.append(dict(zip(columns, row)))
        if len(chunk) == 20_000:
            connection.execute(table.insert(), chunk)
            chunk = []
    if chunk:
        connection.execute(table.insert(), chunk)


# --- inserts unless present (ON CONFLICT) ------------------------------------------------------
# Not a speed choice: one statement that cannot collide with a concurrent insert of the same key
# (a read then an insert could), in each dialect's own spelling.

@lru_cache(maxsize=4)
def new_account_statement(dialect: str):
    """An account created first seen at `first_seen_at` unless its id exists, returning the row
    it created (kyc.scoring.accounts: one statement for a new account)."""
    return (_insert(dialect)(Account.__table__)
            .values(id=bindparam("id"), first_seen_at=bindparam("first_seen_at"),
                    last_seen_at=bindparam("last_seen_at"), decision="allow", score=0, reasons=[],
                    required_verifications=[], subjects={}, state_version=0)
            .on_conflict_do_nothing(index_elements=["id"]).returning(*Account.__table__.c))


@lru_cache(maxsize=4)
def keep_answer_statement(dialect: str):
    """An answer kept under its idempotency key unless one is (kyc.idempotency), returning the key
    when this call kept it: a concurrent call with the same key waits for the first to commit and
    then keeps nothing."""
    table = IdempotentAnswer.__table__
    return (_insert(dialect)(table).values(key_hash=bindparam("key_hash"), body_hash=bindparam("body_hash"),
                                           answer=bindparam("answer", type_=JSON), created_at=bindparam("created_at"))
            .on_conflict_do_nothing(index_elements=["key_hash"]).returning(table.c.key_hash))


def claim_phone(session: Session, **values) -> None:
    """A phone claim (kyc.verification) inserted unless the number has one."""
    session.execute(_insert(dialect_of(session))(PhoneClaim).values(**values)
                    .on_conflict_do_nothing(index_elements=["target_hash"]))


@lru_cache(maxsize=4)
def unnested(*arrays: str, names: tuple[str, ...], ordinality: str | None = None):
    """PostgreSQL: rows from string arrays bound as parameters `arrays` (columns `names`), for one
    statement (compiled and prepared once) for any number of rows. kyc.store counts velocity
    for a signup's keys with it: psycopg parses a statement's text once only under 4 KB (the
    union of 8 keys' lookups is 6 KB, 0.15 ms a call)."""
    return (func.unnest(*(bindparam(a, type_=ARRAY(String)) for a in arrays))
            .table_valued(*names, with_ordinality=ordinality).render_derived())


# --- graph linking (kyc.graph.link) -------------------------------------------------------------

@lru_cache(maxsize=4)
def count_nodes_statement(dialect: str):
    """An account's new nodes counted (rows sorted: concurrent transactions lock node rows in the
    same order, no deadlock), returning each node's count. A super-node counts no more
    accounts and links nothing: no row comes back for it, so no edge is written."""
    n = GraphNode.__table__
    statement = _insert(dialect)(n)
    return (statement.on_conflict_do_update(index_elements=["kind", "value_hash"],
                                            set_={"accounts": n.c.accounts + statement.excluded.accounts},
                                            where=n.c.super_node.is_(False))
            .returning(n.c.kind, n.c.value_hash, n.c.accounts))


@lru_cache(maxsize=4)
def add_edges_statement(dialect: str):
    return _insert(dialect)(GraphEdge.__table__).on_conflict_do_nothing()


@lru_cache(maxsize=4)
def count_and_read_statement(dialect: str):
    """PostgreSQL (None elsewhere): one statement counts the nodes an account shows that it does
    not hold yet (as count_nodes_statement does, in the same order), records its edges, reads
    the other holders of each with their cluster, names the nodes that were super-nodes already
    and, when the account is not new (`existing`), reads the other holders of every node it held
    already. kyc.graph.link reads its rows (_count_and_read).

    Each row starts with what it is about: a node `counted` (with its count; one row per other
    holder), a `super` node, or a node `held` already (one row per other holder). The holders
    are read in the statement's snapshot, taken before it waited for any node row a concurrent
    signup had locked; that signup's edge is then missing from what it read. The caller sees
    that from the counts (a node that is not a super-node has exactly one edge per account it
    counts) and reads again. (A node held already is not counted again, so a concurrent signup
    on it waits for no lock of ours: that signup reads this account's edge and links.) The
    nodes come as two arrays, so the statement is the same for any number of them and compiled
    once: one round trip where the portable way (kyc.graph.link) takes up to three.
    """
    if dialect != "postgresql":
        return None
    n, e, m = GraphNode.__table__, GraphEdge.__table__, ClusterMember.__table__
    account = bindparam("account", type_=String)
    given = func.unnest(bindparam("kinds", type_=ARRAY(String)), bindparam("hashes", type_=ARRAY(String))
                        ).table_valued("kind", "value_hash").render_derived(name="given")
    held = exists().where(e.c.kind == given.c.kind, e.c.value_hash == given.c.value_hash, e.c.account_id == account)
    counted = (pg_insert(n).from_select(
        ["kind", "value_hash", "accounts", "super_node", "first_seen_at"],
        select(given.c.kind, given.c.value_hash, literal(1), literal(False), bindparam("at", type_=UTCDateTime))
        .where(~held).order_by(given.c.kind, given.c.value_hash))
        .on_conflict_do_update(index_elements=["kind", "value_hash"], set_={"accounts": n.c.accounts + 1},
                               where=n.c.super_node.is_(False))
        .returning(n.c.kind, n.c.value_hash, n.c.accounts).cte("counted"))
    edges = (pg_insert(e).from_select(["kind", "value_hash", "account_id"],
                                      select(counted.c.kind, counted.c.value_hash, account))
             .on_conflict_do_nothing().cte("edges"))
    holders = (select(literal("counted"), counted.c.kind, counted.c.value_hash, counted.c.accounts, e.c.account_id,
                      m.c.cluster_id)
               .select_from(counted.outerjoin(e, (e.c.kind == counted.c.kind) & (e.c.value_hash == counted.c.value_hash)
                                              & (counted.c.accounts > 1))
                            .outerjoin(m, m.c.account_id == e.c.account_id))
               .add_cte(edges))
    supers = (select(literal("super"), n.c.kind, n.c.value_hash, null(), null(), null())
              .join(given, (n.c.kind == given.c.kind) & (n.c.value_hash == given.c.value_hash)).where(n.c.super_node))
    mine, other = e.alias("mine"), e.alias("other")
    before = (select(literal("held"), mine.c.kind, mine.c.value_hash, null(), other.c.account_id, m.c.cluster_id)
              .select_from(mine.outerjoin(other, (other.c.kind == mine.c.kind) & (other.c.value_hash == mine.c.value_hash)
                                          & (other.c.account_id != account))
                           .outerjoin(m, m.c.account_id == other.c.account_id))
              .where(mine.c.account_id == account, bindparam("existing", type_=Boolean)))
    return holders.union_all(supers, before)


# --- usage linking (kyc.usage.identifiers.link_shown, kyc.graph.link_many), PostgreSQL ---------
# A batch of activity reports shows thousands of identifiers nobody else holds: their lookups,
# node counts and edges are each one statement over the rows as one JSON document (the figures
# above insert_rows).

_N, _E = GraphNode.__table__, GraphEdge.__table__
_NODE_COLUMNS = ("kind", "value_hash", "accounts", "super_node", "first_seen_at")
_json_nodes = pg_insert(_N).from_select(_NODE_COLUMNS, json_rows(_N, _NODE_COLUMNS))
# As count_nodes_statement: a super-node counts no more accounts. The rows are each a node no
# other row of the statement holds (ON CONFLICT may touch a row once), sorted, with the number of
# accounts the batch adds to it.
_COUNT_SHOWN_NODES = _json_nodes.on_conflict_do_update(
    index_elements=["kind", "value_hash"], set_={"accounts": _N.c.accounts + _json_nodes.excluded.accounts},
    where=_N.c.super_node.is_(False)
).returning(_N.c.kind, _N.c.value_hash, _N.c.accounts)
_EDGE_COLUMNS = ("kind", "value_hash", "account_id")
_ADD_SHOWN_EDGES = pg_insert(_E).from_select(_EDGE_COLUMNS, json_rows(_E, _EDGE_COLUMNS)).on_conflict_do_nothing()


# What linking reads before it writes, in one statement (one round trip): the stored nodes
# shown, the accounts' edges to them, and their velocity sightings since the batch's first day.
# Each is looked up by its key from the rows as JSON: with the hashes as a bound list,
# PostgreSQL's generic plan compared every node of the kinds with the whole list (2-7 s a
# statement for 2,000 hashes against 20,000 nodes, loaded machine). One statement, not three: a
# report of identifiers its account holds already, first from this process, 10 -> 8 statements,
# 4.46/5.67/5.43 -> 3.53/4.09/5.25 ms CPU (median of 380 in process, three alternated pairs, load ~3).
# Only nodes of the linking kinds are looked up (a velocity kind, the IP and its network, is
# never a node), and edges only of the nodes found (no node, no edge): a first-of-day bulk call of
# 1,000 reports showed 5,050 nodes and 6,000 (node, account) pairs and probed them all; now 3,050
# and ~760, the read 109 -> 56 ms wall (medians of 5 as the call's first read, old and new on the
# same calls, 1,000,000 accounts stored, load ~4). The sightings' kinds are stated as constants
# (VELOCITY_SIGHTINGS), so the generic plan may read them through ix_sightings_account_kind_time,
# which holds velocity kinds only (migration 0021). The nodes are looked up one by one (a LATERAL
# subquery, LIMIT 1 so that the planner keeps it one): a generic plan takes the JSON rows for 100,
# and as a join it scanned graph_nodes of ~20,000-30,000 rows (a new deployment's first weeks),
# 2.3-3.1 ms a single activity report at 2,500-3,000 accounts (pg_stat_statements).
_SHOWN_AND_SIGHTED = text("""
WITH found AS MATERIALIZED (
SELECT g.kind, g.value_hash, g.accounts, g.super_node
FROM json_to_recordset(CAST(:nodes AS JSON)) AS n(kind VARCHAR, value_hash VARCHAR)
JOIN LATERAL (SELECT g.kind, g.value_hash, g.accounts, g.super_node FROM graph_nodes g
              WHERE g.kind = n.kind AND g.value_hash = n.value_hash LIMIT 1) AS g ON true)
SELECT 'node', f.kind, f.value_hash, f.accounts, f.super_node, CAST(NULL AS VARCHAR), CAST(NULL AS TIMESTAMPTZ)
FROM found f
UNION ALL
SELECT 'edge', g.kind, g.value_hash, NULL, NULL, g.account_id, NULL
FROM found f JOIN json_to_recordset(CAST(:edges AS JSON)) AS e(kind VARCHAR, value_hash VARCHAR, account_id VARCHAR)
  ON e.kind = f.kind AND e.value_hash = f.value_hash
JOIN graph_edges g ON g.kind = e.kind AND g.value_hash = e.value_hash AND g.account_id = e.account_id
UNION ALL
SELECT 'sighting', t.kind, t.value_hash, NULL, NULL, t.account_id, t.occurred_at
FROM sightings t JOIN json_to_recordset(CAST(:sighted AS JSON)) AS s(kind VARCHAR, value_hash VARCHAR, account_id VARCHAR)
  ON t.account_id = s.account_id AND t.kind = s.kind AND t.value_hash = s.value_hash
WHERE t.occurred_at >= :since AND t.""" + VELOCITY_SIGHTINGS + """
""").columns(column("tag", String), column("kind", String), column("value_hash", String), column("accounts"),
             column("super_node", Boolean), column("account_id", String), column("occurred_at"))


def shown_and_sighted(session: Session, shown: dict[str, Iterable[tuple[str, str]]], linking: set[str],
                      sighted: set[str], since: datetime) -> tuple[list[tuple], list[tuple], list[tuple]] | None:
    """PostgreSQL: for `shown` (account -> its nodes), the stored (kind, hash, accounts, super) of
    its nodes of the `linking` kinds, the stored (kind, hash, account) of its edges to them, and
    the (account, kind, hash, time) of the sightings since `since` of its nodes of the `sighted`
    kinds. None elsewhere."""
    if not postgres(session):
        return None
    nodes = sorted({node for account_nodes in shown.values() for node in account_nodes if node[0] in linking})
    pairs = [{"kind": k, "value_hash": h, "account_id": a} for a in sorted(shown) for k, h in sorted(shown[a])]
    found: tuple[list, list, list] = ([], [], [])
    for tag, kind, value_hash, accounts, super_node, account_id, at in fetch(session, _SHOWN_AND_SIGHTED, {
            "nodes": rows_json([{"kind": k, "value_hash": h} for k, h in nodes]),
            "edges": rows_json([p for p in pairs if p["kind"] in linking]),
            "sighted": rows_json([p for p in pairs if p["kind"] in sighted]), "since": since}):
        if tag == "node":
            found[0].append((kind, value_hash, accounts, super_node))
        elif tag == "edge":
            found[1].append((kind, value_hash, account_id))
        else:
            found[2].append((account_id, kind, value_hash, at.astimezone(timezone.utc)))    # the UTC day
    return found


def count_nodes_and_edges(session: Session, rows: list[tuple[tuple[str, str], str, Any]]) -> list[tuple]:
    """Count sorted ((kind, hash), account, first seen) rows, each an account new to a node, and
    add the edges of the nodes counted: the (kind, hash, accounts) of each node counted (a
    super-node is not, and gets no edge). Each node is one row of the count, with the number of
    accounts the batch adds to it (ON CONFLICT may touch a row once). PostgreSQL: one statement
    each over the rows as JSON; elsewhere count_nodes_statement and add_edges_statement."""
    nodes: dict[tuple[str, str], list] = {}
    for node, _, at in rows:
        added = nodes.setdefault(node, [0, at])
        added[0] += 1
        added[1] = min(added[1], at)
    counts = [{"kind": k, "value_hash": h, "accounts": n, "super_node": False, "first_seen_at": at}
              for (k, h), (n, at) in sorted(nodes.items())]
    if postgres(session):
        counted = fetch(session, _COUNT_SHOWN_NODES, {"rows": rows_json(counts)})
    else:
        counted = session.execute(count_nodes_statement(dialect_of(session)), counts).all()
    kept = {(k, h) for k, h, _ in counted}
    edges = [{"kind": k, "value_hash": h, "account_id": a} for (k, h), a, _ in rows if (k, h) in kept]
    if edges and postgres(session):
        send(session, _ADD_SHOWN_EDGES, [{"rows": rows_json(edges)}])
    elif edges:
        session.execute(add_edges_statement(dialect_of(session)), edges)
    return counted


# --- prompt template uses (kyc.usage.lockstep.record_uses), PostgreSQL -------------------------

# One write, no read: each (template, day, account)'s hours OR-ed into its stored row, the
# accounts new to a template that day added to its popularity (a row inserted has xmax 0), and
# their day kept as the account's start on the template unless it began on it earlier; those
# whose start it became are the day's newcomers (prompt_days.began). A start moved earlier (a
# day replayed out of order) leaves the later day counting it as a newcomer still: that day
# reads as more of a burst than it was, which only reads more of its users for lockstep.
# Why: the read of the stored masks was a round trip of every report (its answer needed before
# the writes); a steady single report is 5 statements and 2 round trips with this, 6 and 3
# without (figure in kyc.usage.lockstep.record_uses).
_MERGE_USES = text("""
WITH up AS (
    INSERT INTO prompt_uses (value_hash, day, account_id, hours)
    SELECT value_hash, day, account_id, hours
    FROM json_to_recordset(CAST(:rows AS JSON)) AS given(value_hash VARCHAR, day DATE, account_id VARCHAR,
                                                         hours INTEGER)
    ORDER BY value_hash, day, account_id
    ON CONFLICT (value_hash, day, account_id) DO UPDATE SET hours = prompt_uses.hours | excluded.hours
    WHERE prompt_uses.hours | excluded.hours <> prompt_uses.hours
    RETURNING value_hash, day, account_id, xmax = 0 AS inserted),
started AS (
    INSERT INTO prompt_starts (value_hash, account_id, day)
    SELECT value_hash, account_id, min(day) FROM up WHERE inserted
    GROUP BY value_hash, account_id ORDER BY value_hash, account_id
    ON CONFLICT (value_hash, account_id) DO UPDATE SET day = excluded.day WHERE excluded.day < prompt_starts.day
    RETURNING value_hash, account_id, day)
INSERT INTO prompt_days (value_hash, day, accounts, began)
SELECT up.value_hash, up.day, count(*), count(started.day) FROM up
LEFT JOIN started ON started.value_hash = up.value_hash AND started.account_id = up.account_id AND started.day = up.day
WHERE up.inserted GROUP BY up.value_hash, up.day ORDER BY up.value_hash, up.day
ON CONFLICT (value_hash, day) DO UPDATE SET accounts = prompt_days.accounts + excluded.accounts,
                                            began = prompt_days.began + excluded.began
""").execution_options(kyc_deferred=True)


def merge_prompt_uses(session: Session, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: record (value_hash, day, account_id, hours) rows as kyc.usage.lockstep.record_uses
    does elsewhere, in one statement sent with the transaction's next read or its COMMIT."""
    send(session, _MERGE_USES, [{"rows": rows_json(rows)}])


# --- bulk rewrites (kyc.graph.rebuild), PostgreSQL ---------------------------------------------
# A rebuild rewrites millions of rows in one transaction; these make that minutes, not hours
# (a first rebuild of 1,000,000 accounts; each says what it saves). No-ops on SQLite.

def bulk_settings(session: Session) -> None:
    """Hashes over millions of rows in memory rather than spilled to disk (a hash may use
    hash_mem_multiplier times work_mem); index builds likewise. No JIT: compiling each of the
    rebuild's one-off statements costs more than it saves. For this transaction only."""
    if postgres(session):
        session.execute(text("SET LOCAL work_mem = '256MB'"))
        session.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        session.execute(text("SET LOCAL jit = off"))


def lock_against_writes(connection, *tables: Table) -> None:
    """Writers (signups linking) wait for the commit instead of racing the rewrite; readers go
    on. Lock in the order linking writes the tables: no deadlock with a signup."""
    if postgres(connection):
        connection.execute(text(f"LOCK TABLE {', '.join(t.name for t in tables)} IN EXCLUSIVE MODE"))


@contextmanager
def sorted_aggregates(connection) -> Iterator[None]:
    """Aggregates sorted rather than hashed, while inside: rows grouped in the order of a
    primary key come out in it, so a later group aggregate and the primary key's build find
    their input sorted (a group aggregate over presorted rows costs one pass)."""
    if not postgres(connection):
        yield
        return
    connection.execute(text("SET LOCAL enable_hashagg = off"))
    yield
    connection.execute(text("SET LOCAL enable_hashagg TO DEFAULT"))


def create_temporary(connection, table: Table, rows) -> None:
    """A temporary `table` holding what `rows` (a SELECT of its columns) selects. PostgreSQL:
    CREATE TABLE AS, which unlike INSERT sorts in parallel."""
    if postgres(connection):
        connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {table.name} AS " + str(
            rows.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})))
    else:
        table.create(connection)
        connection.execute(table.insert().from_select([c.name for c in table.c], rows))


@contextmanager
def indexes_built_after(connection, table: Table) -> Iterator[None]:
    """PostgreSQL: load an empty table without its constraints (primary key, foreign keys) and
    indexes and put them back afterwards, each as the schema defined it; one sorted build is
    several times faster than millions of inserts into each b-tree, and one join validates a
    foreign key faster than a check per row. Inside the caller's transaction, whose ALTER
    TABLE keeps everyone else off the table until the commit (adding a foreign key also keeps
    writers off the table it references)."""
    if not postgres(connection):
        yield
        return
    oid = connection.scalar(text("SELECT CAST(CAST(:t AS regclass) AS oid)"), {"t": table.name})
    constraints = connection.execute(text(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = :oid AND contype IN ('p', 'f') "
        "ORDER BY contype DESC, conname"), {"oid": oid}).all()                # the primary key first
    indexes = connection.execute(text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = :oid AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid) "
        "ORDER BY c.relname"), {"oid": oid}).all()
    for name, _ in constraints:
        connection.execute(text(f'ALTER TABLE {table.name} DROP CONSTRAINT "{name}"'))
    for name, _ in indexes:
        connection.execute(text(f'DROP INDEX "{name}"'))
    yield
    for name, definition in constraints:
        connection.execute(text(f'ALTER TABLE {table.name} ADD CONSTRAINT "{name}" {definition}'))
    for _, definition in indexes:
        connection.execute(text(definition))


def analyze(connection, *tables: Table) -> None:
    """Fresh planner statistics for tables this transaction rewrote (PostgreSQL would otherwise
    plan the next statements for the tables as they were, e.g. empty: nested loops over millions)."""
    if postgres(connection):
        connection.execute(text("ANALYZE " + ", ".join(t.name for t in tables)))


def group_list(connection):
    """An aggregate of a column's values into one value per group, and how to read it as a list:
    PostgreSQL's array_agg, SQLite's json_group_array."""
    if postgres(connection):
        return func.array_agg, list
    return func.json_group_array, json.loads


# --- transaction settings -------------------------------------------------------------------------

@contextmanager
def autocommit(connection) -> Iterator[None]:
    """A connection for one read statement on a hot path (the API key, the entitlement check),
    in autocommit on PostgreSQL: one round trip, not BEGIN, the read, and the ROLLBACK that hands
    the connection back (SQLite has no round trips, and switching its connection's mode costs
    more than the read).

    The driver's connection is switched to autocommit and back directly: SQLAlchemy's
    isolation_level option (its characteristics set and reset) was 5% of an entitlement check's
    CPU. Nothing is left open to commit either way: SQLAlchemy's own transaction on it begins
    nothing on the server, and its rollback finds none."""
    if not postgres(connection):
        yield
        return
    driver = connection.connection.driver_connection
    driver.autocommit = True
    try:
        yield
    finally:
        if not driver.closed:
            driver.autocommit = False


class HeldReadConnection:
    """The connection the hot path's one-statement reads run on (Runtime.read_connection: the
    API key, the entitlement check), held from one read to the next instead of checked out of
    the pool for each. Why: a checkout and its return (SQLAlchemy's Connection, the pool's
    events, the reset's rollback) and switching the driver to autocommit and back (autocommit
    above) took 18 us a read (in-process, best of 5), more than the rest of the entitlement
    check's Python beside its round trip.

    It stays in autocommit on PostgreSQL and is rolled back after each read elsewhere: no
    transaction or snapshot is held between two reads, so each sees everything committed
    before it, as on a fresh checkout. One thread reads on it at a time; another finding it in
    use (a threaded server) checks one out of the pool, as every read did before. It is let go,
    and the next read takes a new one, when a read leaves it in a transaction or broken, once
    the server has closed it (the pool's checkout test, kyc.db.closed_by_server), in a forked
    child (which must never use its parent's socket) and when its engine is disposed."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self._postgres = postgres(engine)
        self._lock = threading.Lock()
        self._held = None                       # a SQLAlchemy Connection, checked out for good
        self._pool = None                       # the engine's pool it came from (dispose replaces it)
        self._pid = 0
        if self._postgres:
            from psycopg.pq import TransactionStatus

            self._idle = TransactionStatus.IDLE
        event.listen(engine, "engine_disposed", self._disposed)

    @contextmanager
    def __call__(self) -> Iterator[Any]:
        if not self._lock.acquire(blocking=False):
            with self._engine.connect() as conn, autocommit(conn):
                yield conn
            return
        try:
            conn = self._held
            if conn is None or self._pid != os.getpid() or self._engine.pool is not self._pool or conn.invalidated \
                    or (self._postgres and closed_by_server(conn.connection.driver_connection)):
                conn = self._take()
            try:
                yield conn
            finally:
                self._settle(conn)
        finally:
            self._lock.release()

    def _take(self):
        self._let_go()
        conn = self._engine.connect()
        if self._postgres:
            conn.connection.driver_connection.autocommit = True
        self._held, self._pool, self._pid = conn, self._engine.pool, os.getpid()
        return conn

    def _settle(self, conn) -> None:
        try:
            if conn.in_transaction():
                conn.rollback()                 # SQLite's; autocommit leaves none on PostgreSQL
            if self._postgres and conn.connection.driver_connection.info.transaction_status != self._idle:
                self._let_go()                  # a read cut short (its result never read)
        except Exception:  # noqa: BLE001 - the read's own outcome stands; the connection goes
            self._let_go()

    def _let_go(self) -> None:
        conn, self._held = self._held, None
        if conn is None:
            return
        if self._pid != os.getpid():
            conn.detach()                       # the parent's: neither closed nor reset from here
            return
        if self._engine.pool is not self._pool:
            conn.detach()                       # its pool was disposed of: closed, as that pool's were
            conn.close()
            return
        try:
            driver = conn.connection.driver_connection
            if self._postgres and not driver.closed:
                driver.autocommit = False       # back to the pool as the pool's others are
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection is discarded, not returned
            conn.invalidate()

    def _disposed(self, _engine) -> None:
        if self._lock.acquire(blocking=False):  # in use: let go when that read ends (its pool changed)
            try:
                self._let_go()
            finally:
                self._lock.release()


def commit_without_waiting(session: Session) -> None:
    """This transaction's commit does not wait for its WAL to reach the disk (PostgreSQL): for a
    rescore chunk, whose cursor commits with its evaluations, so a database crash can only lose
    both together and the batch redoes exactly those. Saves the fsync wait of each chunk's commit."""
    if postgres(session):
        session.execute(text("SET LOCAL synchronous_commit = off"))


# autovacuum's analyze threshold (50 rows + 10% of the table), for servers that run without it.
ANALYZE_BASE = 50
ANALYZE_SCALE = 0.1


def refresh_statistics(engine) -> list[str]:
    """ANALYZE kyc's tables that changed by more than autovacuum's threshold since their last
    ANALYZE (PostgreSQL; returns their names). Where autovacuum runs, it has done this already
    and nothing is left to do.

    Why: kyc forces generic plans (kyc.db._generic_plans), made from the tables' statistics. A server
    without autovacuum never gathers them: measured here (autovacuum off), once the graph tables
    held 20,000 accounts a signup scanned graph_nodes and graph_edges in full, 97 ms a signup
    against 17 ms after one ANALYZE (60 signups each, loaded machine). An ANALYZE also makes
    every connection plan its prepared statements again.
    """
    if not postgres(engine):
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


