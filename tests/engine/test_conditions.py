"""The engine additions: standalone condition sets, and verify rules satisfied by verifications."""

from __future__ import annotations

from pathlib import Path

import pytest

from kyc.engine import Condition, RuleSet, RuleSetError, compile_conditions
from kyc.signals import SCHEMA
from kyc.scoring.decide import evaluate

RULES = """\
- id: disposable
  description: Throwaway email
  when: email.disposable
  score: 30
  action: verify
  requires: [phone]
- id: voip
  description: VoIP phone
  when: phone.voip
  score: 20
  action: verify
  requires: [phone, document]
"""


def test_condition_set_compiles_to_one_function_reporting_which_hold():
    compiled = compile_conditions([Condition("old", "account.age_days >= 7", 3),
                                   Condition("quiet", "velocity.ip_24h < 3", 4)], SCHEMA, {}, "tiers.yaml", "t")
    assert compiled.families == {"account", "velocity"}
    assert compiled.match({"account": {"age_days": 9}, "velocity": {"ip_24h": 1}}) == [0, 1]
    assert compiled.match({"account": {"age_days": 2}}) == []       # missing velocity: never true


def test_condition_errors_carry_file_line_id_and_suggestion():
    with pytest.raises(RuleSetError) as caught:
        compile_conditions([Condition("old", "account.age_dayz >= 7", 12)], SCHEMA, {}, "rules/tiers.yaml", "t")
    error = caught.value.errors[0]
    assert (error.file, error.line, error.rule_id) == ("rules/tiers.yaml", 12, "old")
    assert error.suggestion == "did you mean account.age_days?"


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    (tmp_path / "signup.yaml").write_text(RULES)
    return RuleSet.load(tmp_path, SCHEMA)


def test_verify_rule_with_its_requirements_met_no_longer_acts(rules):
    signals = {"email": {"disposable": True}, "phone": {"voip": True}}
    assert evaluate(rules, "signup", signals).required_verifications == ["phone", "document"]
    partly = evaluate(rules, "signup", {**signals, "account": {"phone_verified": True, "document_verified": False}})
    assert partly.decision == "verify" and partly.required_verifications == ["document"]
    assert {r["rule"]: r.get("satisfied", False) for r in partly.reasons} == {"disposable": True, "voip": False}
    done = evaluate(rules, "signup", {**signals, "account": {"phone_verified": True, "document_verified": True}})
    assert (done.decision, done.required_verifications, done.score) == ("allow", [], 50)
    assert all(r["satisfied"] for r in done.reasons)
