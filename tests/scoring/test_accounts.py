"""kyc.scoring.accounts: the live view and a rescore chunk's read-ahead view read the same
account, so scoring through either comes out the same."""

from __future__ import annotations

import threading
import time

from kyc.persist import pipelined
from kyc.inputs import PaymentMethodInput, SignupInput
from kyc.scoring import AccountRecord, EvaluationRecord, read_chunk, rescore_account, score
from kyc.rescore import batch
from kyc.rescore.batch import rescore_chunk
from kyc.scoring.accounts import AccountView, ChunkAccount, LiveAccount
from tests.conftest import GB_VOIP, payment, signup


def _scored(runtime) -> None:
    """Two accounts sharing a device and a network (one cluster); the first adds a card."""
    with runtime.session() as session, pipelined(session):
        score(runtime, session, "signup", SignupInput.model_validate(signup(**GB_VOIP)))
    with runtime.session() as session, pipelined(session):
        score(runtime, session, "signup", SignupInput.model_validate(
            signup(account_id="acct_2", email="omar.k@outlook.com", occurred_at="2026-11-24T21:10:00Z", **GB_VOIP)))
    with runtime.session() as session, pipelined(session):
        score(runtime, session, "payment_method", PaymentMethodInput.model_validate(payment()))


def _rescored(runtime, *, read_ahead: bool) -> list[EvaluationRecord]:
    """acct_1 rescored through one view, in a transaction rolled back (the state stays)."""
    with runtime.session() as session:
        session.begin()
        chunk = read_chunk(runtime, session, ["acct_1"]) if read_ahead else None
        evaluations = rescore_account(runtime, session, "acct_1", chunk=chunk)
        session.rollback()
    return evaluations


def _comparable(evaluation: EvaluationRecord) -> tuple:
    signals = {family: dict(values) for family, values in evaluation.signals.items()}
    signals["account"].pop("age_days")          # read against the clock: not a fact of the account
    return (evaluation.subject, evaluation.decision, evaluation.score, evaluation.reasons,
            evaluation.required_verifications, signals, evaluation.settlement)


def test_the_live_and_the_read_ahead_view_score_an_account_the_same(runtime):
    _scored(runtime)
    live, read_ahead = _rescored(runtime, read_ahead=False), _rescored(runtime, read_ahead=True)
    assert [e.subject for e in live] == ["payment_method", "signup"]
    assert [_comparable(e) for e in live] == [_comparable(e) for e in read_ahead]
    assert live[1].signals["graph"]["cluster_size"] == 2


def test_both_views_are_account_views_over_a_typed_record(runtime):
    _scored(runtime)
    with runtime.session() as session:
        session.begin()
        live = LiveAccount.open(session, "acct_1", payment_time(), likely_new=False)
        chunk = read_chunk(runtime, session, ["acct_1"])
        views: list[AccountView] = [live, chunk.view("acct_1")]
        assert isinstance(views[1], ChunkAccount)
        for view in views:
            assert isinstance(view.account, AccountRecord)
            assert (view.account.id, view.created, view.dormancy) == ("acct_1", False, None)
            slots = sorted(view.account.subjects)
            assert slots[0].startswith("payment_method:") and slots[1:] == ["signup"]
        assert live.account == chunk.accounts["acct_1"]
        session.rollback()


def test_opening_a_live_view_of_an_unknown_account_creates_it(runtime):
    with runtime.session() as session:
        session.begin()
        view = LiveAccount.open(session, "acct_new", payment_time())
        assert (view.created, view.account.decision, view.account.first_seen_at) == (True, "allow", payment_time())
        again = LiveAccount.open(session, "acct_new", payment_time())
        assert (again.created, again.account.id) == (False, "acct_new")
        session.rollback()


def payment_time():
    return PaymentMethodInput.model_validate(payment()).at()


def _review_while_held(runtime, client, auth, monkeypatch, hold_at, work) -> dict:
    """Run `work` in a thread that pauses for half a second after `hold_at` (which reads the
    account; it is written back later), and review the account (block) meanwhile. A scoring
    transaction must lock the row it reads: the review waits for it and then stands, instead
    of being written over by the scoring's stale copy (on SQLite, where FOR UPDATE locks
    nothing, that takes the database's write lock before the read)."""
    held = threading.Event()
    original = getattr(*hold_at)

    def pause(*args, **kwargs):
        read = original(*args, **kwargs)
        held.set()
        time.sleep(0.5)
        return read

    monkeypatch.setattr(*hold_at, staticmethod(pause) if isinstance(hold_at[0], type) else pause)
    worker = threading.Thread(target=work)
    worker.start()
    assert held.wait(60)
    answer = client.post("/v1/accounts/acct_1/review", json={"outcome": "block"}, headers=auth)
    worker.join(30)
    assert answer.status_code == 200, answer.json
    return client.get("/v1/accounts/acct_1", headers=auth).json


def test_a_review_during_a_payment_methods_scoring_stands(runtime, client, auth, monkeypatch):
    _scored(runtime)

    def add_card():
        with runtime.session() as session, pipelined(session):
            score(runtime, session, "payment_method",
                  PaymentMethodInput.model_validate(payment(fingerprint="pm_fp_second", last4="1881")))

    account = _review_while_held(runtime, client, auth, monkeypatch, (LiveAccount, "open"), add_card)
    assert account["decision"] == "block"


def test_a_review_during_a_rescore_chunk_stands(runtime, client, auth, monkeypatch):
    _scored(runtime)

    def rescore():
        with runtime.session() as session, session.begin():
            rescore_chunk(runtime, session, ["acct_1", "acct_2"], runtime.rules)

    account = _review_while_held(runtime, client, auth, monkeypatch, (batch, "read_chunk"), rescore)
    assert account["decision"] == "block"
