"""kyc.scoring.pipeline without HTTP: score() and rescore_account() in the caller's transaction,
and what they leave in the database."""

from __future__ import annotations

from sqlalchemy import func, select

from kyc.persist import pipelined
from kyc.inputs import SignupInput
from kyc.models import Account, ClusterMember, Evaluation, Sighting, VelocityMark
from kyc.scoring import read_chunk, rescore_account, score
from tests.conftest import GB_VOIP, signup


def _score(runtime, **fields):
    with runtime.session() as session, pipelined(session):
        return score(runtime, session, "signup", SignupInput.model_validate(signup(**fields)))


def _count(session, model, **where) -> int:
    return session.scalar(select(func.count()).select_from(model).filter_by(**where))


def test_a_new_signup_stores_its_evaluation_account_and_sightings(runtime):
    evaluation = _score(runtime, **GB_VOIP)
    assert (evaluation.decision, evaluation.trigger) == ("verify", "live")
    assert [r["rule"] for r in evaluation.reasons] == ["voip_phone"]
    with runtime.session() as session:
        stored = session.get(Evaluation, evaluation.id)
        assert (stored.decision, stored.score, stored.signals) == (evaluation.decision, evaluation.score,
                                                                   evaluation.signals)
        account = session.get(Account, "acct_1")
        assert (account.decision, account.last_evaluation_id) == ("verify", evaluation.id)
        assert account.subjects["signup"]["evaluation_id"] == evaluation.id
        assert account.required_verifications == evaluation.required_verifications == ["document"]
        member = session.get(ClusterMember, "acct_1")
        assert member is not None and member.cluster_id == evaluation.signals["graph"]["cluster_id"]
        sightings = _count(session, Sighting, evaluation_id=evaluation.id)
        assert sightings >= 5                   # email, phone, ip, device and more: each recorded once
        assert _count(session, VelocityMark, account_id="acct_1") > 0


def test_scoring_an_account_again_keeps_its_first_seen_time_and_adds_an_evaluation(runtime):
    first = _score(runtime, occurred_at="2026-11-24T21:00:00Z")
    second = _score(runtime, occurred_at="2026-11-25T09:30:00Z", **GB_VOIP)
    with runtime.session() as session:
        account = session.get(Account, "acct_1")
        assert account.first_seen_at.isoformat() == "2026-11-24T21:00:00+00:00"
        assert account.last_seen_at.isoformat() == "2026-11-25T09:30:00+00:00"
        assert (account.last_evaluation_id, account.decision) == (second.id, "verify")
        assert _count(session, Evaluation, account_id="acct_1") == 2
        assert first.settlement.new == "allow" and second.settlement.old == "allow"


def test_rescoring_adds_an_evaluation_but_no_sightings(runtime):
    live = _score(runtime, **GB_VOIP)
    with runtime.session() as session:
        sightings = _count(session, Sighting)
    with runtime.session() as session, pipelined(session):
        (again,) = rescore_account(runtime, session, "acct_1")
    assert (again.trigger, again.occurred_at, again.decision) == ("rescore", live.occurred_at, live.decision)
    with runtime.session() as session:
        assert _count(session, Sighting) == sightings             # no new event: nothing counted twice
        assert session.get(Account, "acct_1").last_evaluation_id == again.id
        assert session.get(Evaluation, again.id).input == live.input


def test_a_failure_after_scoring_writes_nothing(runtime):
    class Refused(Exception):
        pass

    try:
        with runtime.session() as session, pipelined(session):
            score(runtime, session, "signup", SignupInput.model_validate(signup()))
            raise Refused
    except Refused:
        pass
    with runtime.session() as session:
        assert (_count(session, Account), _count(session, Evaluation), _count(session, Sighting)) == (0, 0, 0)


def test_rescoring_passes_over_a_slot_whose_evaluation_is_not_stored(runtime, caplog):
    """An account naming an evaluation the database lacks (restored or hand-loaded rows) is
    rescored in its other slots, one by one or in a chunk, and never fails the rescore (a
    failure there stalled the linking of usage identifiers behind it)."""
    _score(runtime, **GB_VOIP)
    with runtime.session() as session, session.begin():
        account = session.get(Account, "acct_1")
        gone = {**account.subjects["signup"], "evaluation_id": "ev_gone", "subject": "payment_method"}
        account.subjects = {**account.subjects, "payment_method:gone": gone}
    for chunked in (False, True):
        with runtime.session() as session, pipelined(session):
            chunk = read_chunk(runtime, session, ["acct_1"]) if chunked else None
            again = rescore_account(runtime, session, "acct_1", chunk=chunk)
        assert [e.subject for e in again] == ["signup"]
    assert "its evaluation ev_gone is not stored" in caplog.text


def test_rescoring_passes_over_a_stored_input_this_build_refuses(runtime, caplog):
    """An input stored by a release that accepted what this one refuses (a check tightened since)
    keeps its slot; the accounts after it in the chunk are rescored (it failed the whole batch at
    every try before). The warning names the field, never its value."""
    from kyc.rescore.batch import rescore_chunk

    _score(runtime, account_id="acct_1", email="first.person@gmail.com")
    _score(runtime, account_id="acct_2", email="second.person@gmail.com", device_id="dv_2", ip="81.2.69.160")
    with runtime.session() as session, session.begin():
        evaluation = session.get(Evaluation, session.get(Account, "acct_1").last_evaluation_id)
        evaluation.input = {**evaluation.input, "email": "second.person.at.gmail"}
    with runtime.session() as session, pipelined(session):
        tally = rescore_chunk(runtime, session, ["acct_1", "acct_2"], runtime.rules)
    assert sum(tally["changes"].values()) == 2 and tally["missing"] == 0
    with runtime.session() as session:
        assert [e.trigger for e in session.scalars(select(Evaluation).filter_by(account_id="acct_2")
                                                   .order_by(Evaluation.created_at))] == ["live", "rescore"]
        assert _count(session, Evaluation, account_id="acct_1") == 1          # its slot kept as it was
    assert "acct_1 keeps its signup slot: this build refuses its stored input (email)" in caplog.text
    assert "second.person.at.gmail" not in caplog.text
