"""kyc.scoring.decide: the one decide step, and every path that decides going through it.

The same account states are driven through each path that scores an account (a live re-post,
a batch rescore, one account's rescore after a completed verification) and must come out with
the same decision: a block is kept unless a releases_block rule acts, on every path.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import select

import kyc.rescore.background
import kyc.rescore.batch
import kyc.rescore.runs
from kyc import create_app, rescore
from kyc.engine.loader import Rule
from kyc.models import Account, Evaluation, RescoreRun
from kyc.runtime import Runtime
from kyc.scoring.decide import Outcome, combine, outcome, settle
from tests.conftest import RULES_DIR, signup
from tests.flows import key_headers, verify_by_code
from tests.rescore.test_jobs import HEADLESS

HEADLESS_RULE = "  when: device.headless\n  score: 60\n  action: block\n"
RELEASE_RULE = """
- id: test_release
  description: Test rule allowed to lift a block
  when: email.domain == "gmail.com"
  score: 0
  action: allow
  tags: [releases_block]
"""
AT = datetime(2026, 11, 24, 21, 0, tzinfo=timezone.utc)


def rule(id: str, action: str, score: int = 10, requires=(), mode="active", tags=()) -> Rule:
    return SimpleNamespace(id=id, action=action, score=score, description=id, requires=tuple(requires),
                           mode=mode, tags=tuple(tags))


# --- the pure step -----------------------------------------------------------------------------

def test_outcome_sums_scores_caps_them_and_takes_the_most_severe_action():
    result = outcome([rule("a", "verify", 30, ["phone"]), rule("b", "review", 50), rule("c", "allow", 40)],
                     frozenset())
    assert (result.decision, result.score) == ("review", 100)
    assert [r["rule"] for r in result.reasons] == ["b", "a", "c"]
    assert result.required_verifications == []            # only a verify decision asks for proof


def test_a_verify_rule_whose_proof_is_complete_no_longer_decides():
    result = outcome([rule("a", "verify", 30, ["phone"])], frozenset({"phone"}))
    assert (result.decision, result.score, result.reasons[0]["satisfied"]) == ("allow", 30, True)


def test_shadow_hits_are_recorded_and_never_act():
    result = outcome([rule("s", "block", 90, mode="shadow", tags=["releases_block"])], frozenset())
    assert (result.decision, result.score, result.releases_block) == ("allow", 0, False)
    assert result.reasons[0]["shadow"] is True


def account(decision="allow", subjects=None) -> SimpleNamespace:
    return SimpleNamespace(decision=decision, score=0, reasons=[], required_verifications=[],
                           subjects=subjects or {}, state_version=1, first_seen_at=AT, last_seen_at=AT,
                           last_evaluation_id=None, override=None, review_since=None)


def test_settle_combines_slots_and_keeps_a_block_unless_released():
    acct = account()
    blocked = settle(acct, "signup", "signup", "ev_1", Outcome("block", 90, [], []), AT)
    assert (blocked.old, blocked.new, blocked.held, acct.decision) == ("allow", "block", False, "block")
    version = acct.state_version
    relaxed = settle(acct, "signup", "signup", "ev_2", Outcome("allow", 0, [], []), AT)
    assert (relaxed.new, relaxed.held) == ("block", True)
    assert (acct.decision, acct.subjects["signup"]["evaluation_id"], acct.state_version) == ("block", "ev_1", version)
    assert acct.last_evaluation_id == "ev_2"                       # the new evaluation is on record
    released = settle(acct, "signup", "signup", "ev_3", Outcome("allow", 0, [], [], releases_block=True), AT)
    assert (released.new, released.held, acct.decision) == ("allow", False, "allow")


def test_combine_takes_the_worst_slot_and_each_reason_once():
    reason = {"rule": "r", "score": 10, "action": "verify", "description": "r"}
    subjects = {"signup": {"decision": "verify", "score": 10, "reasons": [reason], "required_verifications": ["phone"]},
                "payment_method:x": {"decision": "verify", "score": 30, "reasons": [reason],
                                     "required_verifications": ["payment"]}}
    assert combine(subjects) == ("verify", 30, [reason], ["phone", "payment"])


# --- every path over the same account states ---------------------------------------------------

@pytest.fixture
def decided(database_url, make_config, tmp_path):
    """A runtime on private rules, an API client and key, and one account blocked at signup by
    the headless-browser rule."""
    rules_dir = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules_dir)
    rt = Runtime.start(make_config(database_url, rules_dir=rules_dir), migrate=False)
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    body = signup(user_agent=HEADLESS, phone=None)
    answer = client.post("/v1/signups", json=body, headers=auth)
    assert answer.json["decision"] == "block", answer.json
    yield SimpleNamespace(rt=rt, client=client, auth=auth, body=body, rules_dir=rules_dir)
    rescore.background.drain(rt)
    rt.engine.dispose()


def live(d) -> None:
    assert d.client.post("/v1/signups", json=d.body, headers=d.auth).status_code == 200


def batch(d) -> None:
    run = rescore.runs.start_run(d.rt, "ids", account_ids=["acct_1"], reason="test")
    rescore.batch.run_inline(d.rt, run)


def verification(d) -> None:
    verify_by_code(d.client, d.auth, d.rt, "email")


PATHS = {"live": live, "batch rescore": batch, "verification": verification}


def edit_rules(d, old: str, new: str) -> None:
    path = d.rules_dir / "signup.yaml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    d.rt.reload_rules()


def state(d) -> tuple[str, str]:
    with d.rt.session() as s:
        acct = s.get(Account, "acct_1")
        latest = s.get(Evaluation, acct.last_evaluation_id)
        return acct.decision, latest.decision


@pytest.mark.parametrize("path", PATHS)
def test_every_path_keeps_a_block_its_new_evaluation_would_relax(decided, path):
    # Ops shadow the rule that blocked the account: a new evaluation would allow it.
    edit_rules(decided, HEADLESS_RULE, HEADLESS_RULE + "  mode: shadow\n")
    PATHS[path](decided)
    assert state(decided) == ("block", "allow")            # kept, with the new evaluation on record


@pytest.mark.parametrize("path", PATHS)
def test_every_path_lifts_a_block_when_a_releases_block_rule_acts(decided, path):
    edit_rules(decided, HEADLESS_RULE, HEADLESS_RULE + "  mode: shadow\n")
    (decided.rules_dir / "signup.yaml").write_text((decided.rules_dir / "signup.yaml").read_text() + RELEASE_RULE)
    decided.rt.reload_rules()
    PATHS[path](decided)
    assert state(decided)[0] != "block"


def test_rescore_runs_count_the_blocks_they_kept(decided):
    edit_rules(decided, HEADLESS_RULE, HEADLESS_RULE + "  mode: shadow\n")
    run = rescore.runs.start_run(decided.rt, "ids", account_ids=["acct_1"], reason="test")
    rescore.batch.run_inline(decided.rt, run)
    with decided.rt.session() as s:
        result = rescore.runs.run_summary(s, s.get(RescoreRun, run.id))
        trigger = s.scalars(select(Evaluation.trigger).order_by(Evaluation.created_at.desc())).first()
    assert (result["held"], result["matrix"], trigger) == (1, {("block", "block"): 1}, "rescore")


def test_settle_lays_a_persons_decision_over_the_rules_until_new_evidence_reopens_it():
    from kyc.ops.standing import decided as person_decision, evidence

    blocked = outcome([rule("farm_device", "block", 60)], frozenset())
    held = account("allow", {})
    held.override = person_decision("allow", "review", "key:anna", AT, "known customer",
                                    evidence(blocked.reasons, SimpleNamespace(id="cl_1", size=3, labeled_fraud=0)))
    cluster = SimpleNamespace(id="cl_1", size=3, labeled_fraud=0)
    settlement = settle(held, "signup", "signup", "ev_1", blocked, AT, cluster=cluster, steps=(5, 20))
    assert (settlement.old, settlement.new) == ("allow", "allow")       # what the reviewer saw: it stands
    assert held.reasons[0]["rule"] == "ops:review" and held.review_since is None

    grown = SimpleNamespace(id="cl_1", size=6, labeled_fraud=0)         # past the size step 5
    settlement = settle(held, "signup", "signup", "ev_2", blocked, AT, cluster=grown, steps=(5, 20))
    assert settlement.new == "block" and held.override["decision"] is None
    assert held.override["reopened"]["changed"] == ["cluster grew from 3 to 6 accounts"]
