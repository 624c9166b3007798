"""The usage signal family (kyc/signals/usage.py): facts from an account's day of usage."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from kyc.signals import SCHEMA
from kyc.signals.usage import quota_tier, usage_signals

QUOTAS = {"free": 1000, "standard": 10000, "high_volume": 100000}
SIGNED_UP = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
AT = datetime(2026, 11, 24, 21, 30, tzinfo=timezone.utc)


def day(**values) -> dict:
    hours = [0] * 24
    hours[9], hours[21] = 400, 800
    row = {"day": date(2026, 11, 24), "requests": 1200, "first_at": datetime(2026, 11, 24, 9, tzinfo=timezone.utc),
           "last_at": AT, "dormant_days": 0, "refused": 40, "tokens_in": 250000, "tokens_out": 910000, "hours": hours,
           "cv_sum": 0.08 * 1000, "cv_requests": 1000, "models": {"model-large": 1150, "model-small": 50},
           "fingerprints": {"h1": 800, "h2": 400}, "tier": "standard", "baseline": 600.0, "history_days": 20,
           "first_used_at": datetime(2026, 11, 3, 12, tzinfo=timezone.utc), "networks": 0b1000100001}
    row.update(values)
    return row


def test_a_day_of_usage_gives_every_fact():
    facts = usage_signals(day(), AT, SIGNED_UP, QUOTAS)
    assert facts == {
        "signup_to_first_use_days": 2.0, "requests_today": 1200, "requests_hour": 800, "refused_today": 40,
        "active_hours": 2, "active_share": round(2 / 24, 4), "tier": "standard", "quota": 10000, "quota_ratio": 0.12,
        "interval_cv": 0.08, "tokens_in": 250000, "tokens_out": 910000, "token_ratio": 3.64, "models": 2,
        "top_model_share": round(1150 / 1200, 4), "fingerprints": 2, "networks_today": 3, "baseline_requests": 600.0,
        "history_days": 20,
        "baseline_ratio": 2.0,
    }
    # Every fact is declared with its type (the rules are checked against the schema).
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    for name, value in facts.items():
        assert isinstance(value, kinds[SCHEMA[f"usage.{name}"].type]), name


def test_no_usage_ever_gives_no_facts():
    assert usage_signals(None, AT, SIGNED_UP, QUOTAS) == {}


def test_a_day_without_usage_counts_zero_and_keeps_first_use():
    facts = usage_signals(day(), datetime(2026, 11, 26, 8, tzinfo=timezone.utc), SIGNED_UP, QUOTAS)
    assert facts["requests_today"] == 0 and facts["quota_ratio"] == 0 and facts["active_hours"] == 0
    assert facts["signup_to_first_use_days"] == 2.0
    assert "interval_cv" not in facts and "baseline_ratio" not in facts


def test_missing_inputs_leave_their_facts_missing():
    facts = usage_signals(day(cv_requests=0, cv_sum=0.0, tokens_in=0, models={}, history_days=0, tier=None),
                          AT, SIGNED_UP, QUOTAS)
    for absent in ("interval_cv", "token_ratio", "top_model_share", "baseline_ratio"):
        assert absent not in facts
    assert facts["tier"] == "free" and facts["quota_ratio"] == 1.2


@pytest.mark.parametrize("reported,expected", [("standard", "standard"), (None, "free"), ("gold", "free")])
def test_a_day_is_measured_against_the_reported_tier_or_the_smallest_quota(reported, expected):
    assert quota_tier(reported, QUOTAS) == expected
    assert quota_tier(reported, {}) is None


def test_signals_doc_lists_the_usage_family():
    from kyc.signals.docs import render

    text = render()
    assert "## usage" in text and "`usage.quota_ratio`" in text and "`usage.baseline_ratio`" in text
