"""Persist: what scoring writes, for a live evaluation and for a rescore chunk alike.

`write` stores evaluations, updates the accounts they changed and adds the sightings they
recorded, in the caller's transaction, with Core statements built once (an executemany per
table: SQLite's is a loop in C; psycopg pipelines it). Nobody reads their answer: in a
pipelined transaction (kyc.db.pipelined) they travel with the next read or the COMMIT.

No dialect-specific statement for scoring's writes, because none paid for itself (usage
linking's, at the end, did). Measured on PostgreSQL, a
signup's three writes (its evaluation, its account and ~10 sightings) in one pipelined
transaction, 1,500 transactions each way alternated in blocks on one connection, load average
7-9 on 2 cores: the three Core statements cost this process 2.73 ms and the server 0.77 ms of
CPU per transaction; one statement of data-modifying CTEs over json_populate_recordset (the
rows as one JSON document) 2.18 ms and 1.14 ms; over unnest of binary arrays, 2.11 and 0.95
against 2.49 and 0.70. The server parses and plans more than it saves on executions: about
0.2 ms of CPU a signup in all, 1-2% of it, not worth a second way to write the same rows.
Nor did multi-row VALUES pay (SQLAlchemy's insertmanyvalues for these executemany INSERTs,
whole signups in process, 1,500 each way alternated in blocks of 100, load average 7-8):
8.54 -> 8.39 ms of this process's CPU and 4.05 -> 4.15 ms of PostgreSQL's a signup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from kyc.db import deferred, json_rows, rows_json, send
from kyc.models import Account, Evaluation, GraphEdge, GraphNode, Sighting

# What scoring an account changes on its row (score(), decide.settle).
ACCOUNT_WRITTEN = ("decision", "score", "reasons", "required_verifications", "subjects", "state_version",
                   "last_evaluation_id", "first_seen_at", "last_seen_at", "override", "review_since")


def account_row(account: Any) -> dict[str, Any]:
    """The written columns of an account record (its row as scoring changed it) and its id."""
    return {"account_id": account.id, **{c: getattr(account, c) for c in ACCOUNT_WRITTEN}}


def written(account: Any) -> tuple:
    """The written columns' values, to tell whether scoring changed the row."""
    return tuple(getattr(account, c) for c in ACCOUNT_WRITTEN)


def write(session: Session, *, evaluations: Sequence[dict[str, Any]] = (), accounts: Sequence[dict[str, Any]] = (),
          sightings: Sequence[dict[str, Any]] = ()) -> None:
    """Insert `evaluations` (the evaluations table's columns each, created_at by default), update
    `accounts` (account_row each) and insert `sightings`. A failure fails the statement, or in
    a pipelined transaction the commit: either way nothing is written."""
    send(session, _EVALUATION_INSERT, list(evaluations))
    send(session, _ACCOUNT_UPDATE, list(accounts))
    send(session, _SIGHTINGS_INSERT, list(sightings))


_EVALUATION_INSERT = insert(Evaluation.__table__)
_ACCOUNT_UPDATE = deferred(update(Account.__table__).where(Account.__table__.c.id == bindparam("account_id")))
_SIGHTINGS_INSERT = insert(Sighting.__table__)


# --- usage linking (kyc.usage.identifiers.link_shown), PostgreSQL ------------------------------
# A batch of activity reports shows thousands of identifiers nobody else holds: their sightings,
# node counts and edges are each one statement over the rows as one JSON document
# (kyc.db.json_rows), where an executemany runs one statement per row on the server and
# psycopg's pipeline costs this process ~70 us a row. Linking 3,000 reports (3 bulk calls of
# 1,000; ~30,000 rows over the three tables) on 1,000,000 stored accounts, loaded machine: the
# three executemany cost the linking thread 2.3 s of its 5.6 s of CPU under the profiler.
_SIGHTING_COLUMNS = ("kind", "value_hash", "account_id", "evaluation_id", "occurred_at")
_PG_SIGHTINGS = insert(Sighting.__table__).from_select(_SIGHTING_COLUMNS,
                                                       json_rows(Sighting.__table__, _SIGHTING_COLUMNS))
_NODE_COLUMNS = ("kind", "value_hash", "accounts", "super_node", "first_seen_at")
_pg_nodes = pg_insert(GraphNode.__table__).from_select(_NODE_COLUMNS, json_rows(GraphNode.__table__, _NODE_COLUMNS))
# As kyc.graph.link's count: a super-node counts no more accounts. The rows are each a node
# no other row of the statement holds (ON CONFLICT may touch a row once), sorted: concurrent
# transactions lock node rows in the same order.
_PG_COUNT_NODES = _pg_nodes.on_conflict_do_update(
    index_elements=["kind", "value_hash"], set_={"accounts": GraphNode.__table__.c.accounts + 1},
    where=GraphNode.__table__.c.super_node.is_(False))
_EDGE_COLUMNS = ("kind", "value_hash", "account_id")
_PG_EDGES = pg_insert(GraphEdge.__table__).from_select(
    _EDGE_COLUMNS, json_rows(GraphEdge.__table__, _EDGE_COLUMNS)).on_conflict_do_nothing()


def write_sightings(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert sightings (the table's columns each): on PostgreSQL in one statement."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_PG_SIGHTINGS, {"rows": rows_json(rows)})
    else:
        session.execute(_SIGHTINGS_INSERT, rows)


def count_nodes_and_edges(session: Session, rows: list[tuple[tuple[str, str], str, Any]]) -> bool:
    """PostgreSQL: count sorted ((kind, hash), account, first seen) rows of distinct nodes, one
    account each, and add their edges, one statement each; False elsewhere (the caller runs
    kyc.graph.link's statements)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    session.execute(_PG_COUNT_NODES, {"rows": rows_json(
        [{"kind": k, "value_hash": h, "accounts": 1, "super_node": False, "first_seen_at": at}
         for (k, h), _, at in rows])})
    session.execute(_PG_EDGES, {"rows": rows_json(
        [{"kind": k, "value_hash": h, "account_id": a} for (k, h), a, _ in rows])})
    return True
