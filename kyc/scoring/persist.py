"""Persist: what scoring writes, for a live evaluation and for a rescore chunk alike.

`write` stores evaluations, updates the accounts they changed and adds the sightings they
recorded, in the caller's transaction, with Core statements built once (an executemany per
table: SQLite's is a loop in C; psycopg pipelines it). Nobody reads their answer: in a
pipelined transaction (kyc.persist.pipelined) they travel with the next read or the COMMIT.

No dialect-specific statement for scoring's writes, because none paid for itself (usage
linking's, in kyc.persist, did). Measured on PostgreSQL, a
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
from sqlalchemy.orm import Session

from kyc.models import Account, Evaluation, Sighting
from kyc.persist import deferred, send

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
