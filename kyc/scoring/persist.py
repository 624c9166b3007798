"""Persist: what scoring writes, for a live evaluation and for a rescore chunk alike.

`write` stores evaluations, the accounts they changed and the sightings they recorded. Nobody
reads the answer, so in a pipelined transaction (kyc.db.pipelined) the write travels with the
next read or the COMMIT.

PostgreSQL gets one statement for all of it: the rows go as one array per column and
data-modifying CTEs unnest them (an UPDATE ... FROM unnest for the accounts, INSERT ... SELECT
FROM unnest for the rest). Elsewhere the same rows go through Core statements (an executemany
per table). Why the PostgreSQL statement pays for itself, measured with bench/signup_http.py
and in-process signups (bench/score_signup.py's generator, 500 after 300 of warm-up):
- three statements a signup (account, evaluation, ~10 sightings as an executemany) became one:
  psycopg's executemany sends one Bind/Execute per row, each run by the server as a statement
  of its own, and SQLAlchemy compiles and binds each of the three;
- the SQL text is fixed whatever the number of rows, so psycopg prepares it once per
  connection (a multi-row VALUES would be one statement per row count);
- it is sent as driver SQL with the parameters already in the driver's types (psycopg's Json
  dumps JSON like SQLAlchemy's JSON type does: json.dumps), skipping SQLAlchemy's statement
  cache lookup and bind processing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.orm import Session

from kyc.db import deferred
from kyc.models import Account, Evaluation, Sighting, utcnow

# What scoring an account changes on its row (score(), decide.settle).
ACCOUNT_WRITTEN = ("decision", "score", "reasons", "required_verifications", "subjects", "state_version",
                   "last_evaluation_id", "first_seen_at", "last_seen_at", "cluster_id", "override", "review_since")
EVALUATION_COLUMNS = ("id", "account_id", "subject", "trigger", "occurred_at", "input", "signals", "reasons",
                      "decision", "score", "required_verifications", "rules_version")
SIGHTING_COLUMNS = ("kind", "value_hash", "account_id", "evaluation_id", "occurred_at")


def account_row(account: Any) -> dict[str, Any]:
    """The written columns of an account record (a row as score() changed it) and its id."""
    return {"account_id": account.id, **{c: getattr(account, c) for c in ACCOUNT_WRITTEN}}


def write(session: Session, *, evaluations: Sequence[dict[str, Any]] = (), accounts: Sequence[dict[str, Any]] = (),
          sightings: Sequence[dict[str, Any]] = ()) -> None:
    """Store `evaluations` (EVALUATION_COLUMNS each), update `accounts` (account_row each) and
    add `sightings` (SIGHTING_COLUMNS each), in the caller's transaction, in that order of
    meaning: an account's row names its latest evaluation. Raises nothing itself; in a
    pipelined transaction a failure fails the commit, which writes nothing."""
    if not (evaluations or accounts or sightings):
        return
    if session.get_bind().dialect.name == "postgresql":
        _write_postgresql(session, evaluations, accounts, sightings)
    else:
        _write_core(session, evaluations, accounts, sightings)


def _write_core(session: Session, evaluations, accounts, sightings) -> None:
    """Any database: an executemany per table (SQLite's is a loop in C)."""
    if evaluations:
        session.execute(_EVALUATION_INSERT, list(evaluations))
    if accounts:
        session.execute(_ACCOUNT_UPDATE, list(accounts))
    if sightings:
        session.execute(_SIGHTINGS_INSERT, list(sightings))


_ACCOUNT_UPDATE = deferred(update(Account.__table__).where(Account.__table__.c.id == bindparam("account_id")))
_EVALUATION_INSERT = insert(Evaluation.__table__)
_SIGHTINGS_INSERT = insert(Sighting.__table__)


# --- PostgreSQL --------------------------------------------------------------------------------

def _statement(evaluations: bool, accounts: bool, sightings: bool) -> str:
    parts = []
    if evaluations:
        columns = ", ".join((*EVALUATION_COLUMNS, "created_at"))
        parts.append(f"e AS (INSERT INTO evaluations ({columns}) "
                     f"SELECT {columns} FROM json_populate_recordset(NULL::evaluations, %(e)s))")
    if accounts:
        parts.append(f"a AS (UPDATE accounts SET {', '.join(f'{c} = u.{c}' for c in (*ACCOUNT_WRITTEN, 'updated_at'))} "
                     f"FROM json_populate_recordset(NULL::accounts, %(a)s) AS u WHERE accounts.id = u.id)")
    if sightings:
        columns = ", ".join(SIGHTING_COLUMNS)
        parts.append(f"s AS (INSERT INTO sightings ({columns}) "
                     f"SELECT {columns} FROM json_populate_recordset(NULL::sightings, %(s)s))")
    return "WITH " + ", ".join(parts) + " SELECT 1"


# One text per combination of the three (a live signup writes all three, a chunk no sightings).
_STATEMENTS = {(e, a, s): _statement(e, a, s) for e in (False, True) for a in (False, True) for s in (False, True)
               if e or a or s}


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_postgresql(session: Session, evaluations, accounts, sightings) -> None:
    now = utcnow()
    params = {}
    if evaluations:
        params["e"] = json.dumps([{**e, "created_at": now} for e in evaluations], default=_isoformat)
    if accounts:
        params["a"] = json.dumps([{"id": a["account_id"], **{c: a[c] for c in ACCOUNT_WRITTEN}, "updated_at": now}
                                  for a in accounts], default=_isoformat)
    if sightings:
        params["s"] = json.dumps(list(sightings), default=_isoformat)
    statement = _STATEMENTS[(bool(evaluations), bool(accounts), bool(sightings))]
    session.connection().exec_driver_sql(statement, params, execution_options={"kyc_deferred": True})
