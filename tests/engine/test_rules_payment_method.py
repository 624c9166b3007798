"""rules/payment_method.yaml against its cases in rules/tests/payment_method.yaml, evaluated
directly through RuleSet (the same compiled rules the pipeline runs); `kyc rules test` runs the
same cases through its own table (tests/engine/test_rules_cli.py)."""

from __future__ import annotations

import pytest

from kyc.engine import RuleSet
from kyc.ruletests import case_signals, load_cases
from kyc.signals import SCHEMA
from kyc.scoring.decide import evaluate
from tests.conftest import RULES_DIR

CASES = [c for c in load_cases(RULES_DIR, SCHEMA) if c.subject == "payment_method"]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load(RULES_DIR, SCHEMA)


def test_the_rule_file_has_at_least_eight_active_rules(rules):
    compiled = rules.subjects["payment_method"]
    assert len([r for r in compiled.rules if r.mode == "active"]) >= 8


def test_every_rule_is_exercised_by_a_case(rules):
    assert len(CASES) >= 15
    hit = {rule for case in CASES for rule in case.expect["hits"]}
    assert {r.id for r in rules.subjects["payment_method"].rules} - hit == set()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(rules, case):
    outcome = evaluate(rules, "payment_method", case_signals(case, rules))
    expect = case.expect
    assert outcome.decision == expect["decision"]
    assert sorted(r["rule"] for r in outcome.reasons) == sorted(expect["hits"])
    if "score" in expect:
        assert outcome.score == expect["score"]
    if "required_verifications" in expect:
        assert outcome.required_verifications == expect["required_verifications"]


def test_input_cases_run_the_real_card_signals(rules):
    case = next(c for c in CASES if c.name.startswith("a prepaid card from the BIN table"))
    facts = case_signals(case, rules)["card"]
    assert (facts["brand"], facts["funding"], facts["prepaid"], facts["bin_known"]) == (
        "mastercard", "prepaid", True, True)
    assert (facts["fingerprint_accounts_30d"], facts["cards_on_account_24h"]) == (1, 1)
