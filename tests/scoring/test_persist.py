"""kyc.scoring.persist: what scoring writes, stored as given, and nothing of it on a failure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from kyc.persist import pipelined
from kyc.models import Account, Evaluation, Sighting
from kyc.scoring import persist
from kyc.persist import dialect_of, new_account_statement

AT = datetime(2026, 11, 24, 21, 0, tzinfo=timezone.utc)


def _new_account(session, account_id: str) -> None:
    session.execute(new_account_statement(dialect_of(session)),
                    {"id": account_id, "first_seen_at": AT, "last_seen_at": AT}).all()


def _evaluation(account_id: str, evaluation_id: str) -> dict:
    return {"id": evaluation_id, "account_id": account_id, "subject": "signup", "trigger": "live", "occurred_at": AT,
            "input": {"account_id": account_id, "email": "j***@gmail.com"},
            "signals": {"email": {"valid": True, "domain": "gmail.com"}, "note": "ünïcode ✓"},
            "reasons": [{"rule": "r1", "score": 10, "action": "verify"}], "decision": "verify", "score": 10,
            "required_verifications": ["phone"], "rules_version": "v1"}


def _account(account_id: str, evaluation_id: str) -> dict:
    return {"account_id": account_id, "decision": "verify", "score": 10,
            "reasons": [{"rule": "r1", "score": 10, "action": "verify"}], "required_verifications": ["phone"],
            "subjects": {"signup": {"evaluation_id": evaluation_id, "decision": "verify"}}, "state_version": 1,
            "last_evaluation_id": evaluation_id, "first_seen_at": AT - timedelta(days=1), "last_seen_at": AT,
            "override": None, "review_since": None}


def _sightings(account_id: str, evaluation_id: str, count: int) -> list[dict]:
    return [{"kind": "device", "value_hash": f"h{i}", "account_id": account_id, "evaluation_id": evaluation_id,
             "occurred_at": AT} for i in range(count)]


def test_write_stores_evaluations_accounts_and_sightings_as_given(runtime):
    with runtime.session() as session, pipelined(session):
        for n in (1, 2):
            _new_account(session, f"a{n}")
        persist.write(session, evaluations=[_evaluation("a1", "ev1"), _evaluation("a2", "ev2")],
                      accounts=[_account("a1", "ev1"), _account("a2", "ev2")], sightings=_sightings("a1", "ev1", 3))
    with runtime.session() as session:
        stored = session.get(Evaluation, "ev2")
        assert {c: getattr(stored, c) for c in _evaluation("a2", "ev2")} == _evaluation("a2", "ev2")
        assert stored.created_at is not None
        account = session.get(Account, "a1")
        assert persist.account_row(account) == _account("a1", "ev1")
        assert account.updated_at is not None
        assert sorted(session.scalars(select(Sighting.value_hash).where(Sighting.evaluation_id == "ev1"))) == [
            "h0", "h1", "h2"]
        assert session.scalar(select(func.count()).select_from(Sighting).where(Sighting.account_id == "a2")) == 0


def test_an_account_that_did_not_change_is_not_written_by_default(runtime):
    with runtime.session() as session, pipelined(session):
        _new_account(session, "a1")
        persist.write(session, evaluations=[_evaluation("a1", "ev1")])
    with runtime.session() as session:
        account = session.get(Account, "a1")
        assert (account.decision, account.last_evaluation_id) == ("allow", None)
        assert session.get(Evaluation, "ev1").decision == "verify"


def test_a_failing_write_writes_nothing_of_the_transaction(runtime):
    """A sighting without its value breaks NOT NULL: the account's update and the evaluation
    written with it are not kept either (pipelined: the commit fails)."""
    with runtime.session() as session, pipelined(session):
        _new_account(session, "a1")
    with pytest.raises(IntegrityError):
        with runtime.session() as session, pipelined(session):
            persist.write(session, evaluations=[_evaluation("a1", "ev1")], accounts=[_account("a1", "ev1")],
                          sightings=[{**_sightings("a1", "ev1", 1)[0], "value_hash": None}])
    with runtime.session() as session:
        assert session.get(Evaluation, "ev1") is None
        assert session.get(Account, "a1").last_evaluation_id is None
        assert session.scalar(select(func.count()).select_from(Sighting)) == 0
