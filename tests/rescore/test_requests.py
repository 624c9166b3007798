"""AfterCommit (kyc.rescore.requests): what a transaction asks for happens once it commits, and
never when it rolls back; a rescore leaves out the account whose scoring asked."""

from __future__ import annotations

from sqlalchemy import select

from kyc.models import RescoreBatch
from kyc.rescore.background import drain
from kyc.rescore.requests import after_commit


def _asked(runtime) -> list[list[str]]:
    with runtime.session() as session:
        return [ids for (ids,) in session.execute(select(RescoreBatch.account_ids).order_by(RescoreBatch.run_id))]


def test_asks_are_handed_over_after_the_commit_without_the_asker(runtime):
    with runtime.session() as session, session.begin():
        session.connection()
        requests = after_commit(session)
        assert after_commit(session) is requests                  # attached once
        requests.ask_rescore(accounts=["acct_asker", "acct_2"])
        requests.hand_over(runtime, exclude="acct_asker")
        requests.ask_rescore(accounts=["acct_3"])                # after the hand-over: asked by nobody
        drain(runtime)
        assert _asked(runtime) == []                              # nothing before the commit
    drain(runtime)
    assert _asked(runtime) == [["acct_2", "acct_3"]]


def test_a_rollback_drops_every_ask_and_the_next_transaction_starts_empty(runtime):
    delivered: list[list] = []
    with runtime.session() as session:
        with session.begin():
            session.connection()
            after_commit(session).ask_rescore(accounts=["acct_1"])
            after_commit(session).hand_over(runtime)
            after_commit(session).collect("marks", delivered.append).append("m1")
            session.rollback()
        with session.begin():
            session.connection()
            after_commit(session).ask_rescore(accounts=["acct_2"])  # never handed over: dropped
        with session.begin():
            session.connection()
            after_commit(session).collect("marks", delivered.append).append("m2")
    drain(runtime)
    assert _asked(runtime) == [] and delivered == [["m2"]]


def test_work_that_fails_after_the_commit_costs_no_other_work(runtime, caplog):
    delivered: list[list] = []

    def broken(_work: list) -> None:
        raise ConnectionError("Redis away")

    with runtime.session() as session, session.begin():
        session.connection()
        after_commit(session).collect("velocity", broken).append("mark")
        after_commit(session).collect("webhooks", delivered.append).append("wake")
        after_commit(session).ask_rescore(accounts=["acct_1"])
        after_commit(session).hand_over(runtime)
    drain(runtime)
    assert delivered == [["wake"]] and _asked(runtime) == [["acct_1"]]
    assert "after-commit work failed" in caplog.text
