"""Backtest: exact numbers on a known small history, streamed in small batches."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from kyc.backtest import Threshold, backtest, format_report, parse_since, roc_auc, thresholds
from kyc.cli import main
from kyc.engine import RuleSet
from kyc.models import Account, Evaluation
from kyc.signals import SCHEMA
from tests.conftest import RULES_DIR
from tests.engine.test_errors import write_rules

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)

CANDIDATE = """
- id: r_disposable
  description: throwaway mailbox
  when: email.disposable
  score: 50
  action: block
- id: r_headless
  description: automation
  when: device.headless
  score: 60
  action: block
- id: r_burst
  description: busy IP, trial run
  when: velocity.ip_1h >= 5
  score: 30
  action: review
  mode: shadow
"""

# (evaluation id, account, days ago, trigger, signals, decision stored at the time)
HISTORY = [
    ("ev_1", "a1", 1, "live", {"email": {"disposable": True}}, "allow"),
    ("ev_2", "a2", 2, "live", {"device": {"headless": True}}, "block"),
    ("ev_3", "a3", 3, "live", {"email": {"disposable": True}}, "verify"),
    ("ev_4", "a4", 4, "live", {}, "allow"),
    ("ev_5", "a5", 4, "live", {"velocity": {"ip_1h": 7}}, "allow"),          # same time as ev_4
    ("ev_6", "a1", 40, "live", {"device": {"headless": True}}, "allow"),      # outside the window
    ("ev_7", "a4", 0.5, "rescore", {"email": {"disposable": True}}, "allow"),  # a rescore: not replayed
]
LABELS = {"a1": "fraud", "a2": "fraud", "a3": "legit", "a5": "legit"}


@pytest.fixture
def history(runtime):
    with runtime.session() as session, session.begin():
        for account in ("a1", "a2", "a3", "a4", "a5"):
            session.add(Account(id=account, first_seen_at=NOW, last_seen_at=NOW, decision="allow", score=0,
                                label=LABELS.get(account)))
        session.flush()
        for ev_id, account, days, trigger, signals, decision in HISTORY:
            session.add(Evaluation(id=ev_id, account_id=account, subject="signup", trigger=trigger,
                                   occurred_at=NOW - timedelta(days=days), input={}, signals=signals, reasons=[],
                                   decision=decision, score=0, required_verifications=[],
                                   rules_version="sha256:old"))
    return runtime


def test_backtest_numbers_on_a_known_history(history, tmp_path):
    rules = RuleSet.load(write_rules(tmp_path / "rules", CANDIDATE), SCHEMA)
    calls = []
    report = backtest(history.engine, rules, NOW - timedelta(days=30), NOW, limit_changed=1, batch_size=2,
                      progress=lambda done, total, _s: calls.append((done, total)))
    assert report.evaluations == 5 and report.evaluations_by_subject == {"signup": 5}
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert {k: v for k, v in report.matrix.items() if v} == {
        ("allow", "block"): 1, ("block", "block"): 1, ("verify", "block"): 1, ("allow", "allow"): 2}
    stats = {rule: (s.hits, sorted(s.fraud), sorted(s.legit), s.precision)
             for (_subject, rule), s in report.rules.items()}
    assert stats == {
        "r_disposable": (2, ["a1"], ["a3"], 0.5),
        "r_headless": (1, ["a2"], [], 1.0),
        "r_burst": (1, [], ["a5"], 0.0),
    }
    assert {label: sorted(ids) for label, ids in report.labeled.items()} == {"fraud": ["a1", "a2"],
                                                                             "legit": ["a3", "a5"]}
    assert report.changed_evaluations == 2
    assert [(c.account_id, c.evaluation_id, c.before, c.after) for c in report.changed] == [
        ("a3", "ev_3", "verify", "block")]

    text = format_report(report)
    assert "5 live evaluations (signup: 5)" in text
    assert "     allow         2         0         0         1         3" in text
    assert "signup          r_disposable                    active          2   40.00%      1      1      50.0%" in text
    assert "signup          r_burst                         shadow          1   20.00%      0      1       0.0%" in text
    assert "decision changes: 2 evaluations; the first 1 accounts:" in text
    assert "a3" in text and "ev_3" in text
    # A rule id longer than the column widens it: never run into the next column.
    long_id = "client_hints_contradict_user_agent_long"
    report.rules[("signup", long_id)] = replace(report.rules[("signup", "r_burst")], rule=long_id)
    rows = {line.split()[1]: line.split() for line in format_report(report).splitlines() if line.startswith("signup ")}
    assert rows[long_id][2] == "shadow" and rows["r_burst"][2] == "shadow"


def test_backtest_ranks_labeled_accounts_by_score(history, tmp_path):
    """By hand: fraud a1 (r_disposable, 50, block) and a2 (r_headless, 60, block); legit a3
    (r_disposable, 50, block) and a5 (only a shadow rule: 0, allow). Of the four fraud-legit
    pairs, three are won and one (50 vs 50) tied: AUC = 3.5 / 4."""
    rules = RuleSet.load(write_rules(tmp_path / "rules", CANDIDATE), SCHEMA)
    report = backtest(history.engine, rules, NOW - timedelta(days=30), NOW, batch_size=2)
    assert report.outcomes == {"a1": ("fraud", 50, "block"), "a2": ("fraud", 60, "block"),
                               "a3": ("legit", 50, "block"), "a5": ("legit", 0, "allow")}
    assert report.auc == 0.875
    assert report.thresholds == [Threshold("allow", 2, 2, 2, 2), Threshold("verify", 2, 1, 2, 2),
                                 Threshold("review", 2, 1, 2, 2), Threshold("block", 2, 1, 2, 2)]
    block = report.thresholds[-1]
    assert (block.precision, block.recall, block.legit_share) == (2 / 3, 1.0, 0.5)
    text = format_report(report)
    assert "ROC AUC of the score: 0.875" in text
    assert "block              2       1      66.7%   100.0%        50.0%" in text


def test_an_account_is_judged_by_its_highest_score_and_worst_decision(history, tmp_path):
    rules = RuleSet.load(write_rules(tmp_path / "rules", CANDIDATE), SCHEMA)
    # a1 has a second evaluation, 40 days back: in a 60-day window its headless hit (60) counts.
    report = backtest(history.engine, rules, NOW - timedelta(days=60), NOW, batch_size=2)
    assert report.outcomes["a1"] == ("fraud", 60, "block")


def test_roc_auc_by_hand():
    assert roc_auc([3, 2], [1, 0]) == 1.0                       # every fraud above every legit
    assert roc_auc([0, 1], [2, 3]) == 0.0
    assert roc_auc([5, 5], [5, 5]) == 0.5                       # all tied: chance
    assert roc_auc([10, 40, 60], [0, 40]) == (1 + 1.5 + 2) / 6   # 40 vs 40 ties: half a win
    assert roc_auc([], [1]) is None and roc_auc([1], []) is None


@given(st.lists(st.integers(0, 100), min_size=1, max_size=40), st.lists(st.integers(0, 100), min_size=1, max_size=40))
def test_roc_auc_is_the_share_of_fraud_legit_pairs_won(fraud, legit):
    pairs = [(f > g) + 0.5 * (f == g) for f in fraud for g in legit]
    assert roc_auc(fraud, legit) == pytest.approx(sum(pairs) / len(pairs))


def test_thresholds_by_hand():
    outcomes = {"f1": ("fraud", 90, "block"), "f2": ("fraud", 40, "review"), "f3": ("fraud", 0, "allow"),
                "l1": ("legit", 20, "verify"), "l2": ("legit", 0, "allow"), "l3": ("legit", 0, "allow"),
                "l4": ("legit", 70, "block")}
    table = {t.decision: (t.fraud, t.legit, t.precision, t.recall) for t in thresholds(outcomes)}
    assert table == {"allow": (3, 4, 3 / 7, 1.0), "verify": (2, 2, 0.5, 2 / 3),
                     "review": (2, 1, 2 / 3, 2 / 3), "block": (1, 1, 0.5, 1 / 3)}
    assert thresholds({})[0].precision is None and thresholds({})[0].recall is None


def test_backtest_lists_each_changed_account_once(history, tmp_path):
    rules = RuleSet.load(write_rules(tmp_path / "rules", CANDIDATE), SCHEMA)
    report = backtest(history.engine, rules, NOW - timedelta(days=60), NOW, batch_size=3)
    assert report.evaluations == 6
    assert [(c.account_id, c.evaluation_id) for c in report.changed] == [("a1", "ev_6"), ("a3", "ev_3")]
    assert report.changed_evaluations == 3


def test_backtest_command(history, tmp_path, monkeypatch):
    root = write_rules(shutil.copytree(RULES_DIR, tmp_path / "rules"), CANDIDATE)   # a whole folder
    monkeypatch.setenv("KYC_DATABASE_URL", history.config.database_url)
    monkeypatch.setenv("KYC_DATA_DIR", str(tmp_path))
    since = (NOW - timedelta(days=30)).isoformat()
    result = CliRunner().invoke(main, ["rules", "backtest", "--since", since, "--until", NOW.isoformat(),
                                       "--rules", str(root), "--limit-changed", "5", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "5 / 5 evaluations" in result.stderr
    assert "decision changes: 2 evaluations; the first 2 accounts:" in result.stdout


@pytest.mark.parametrize("options,refused", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-1"], "--batch-size"),
    (["--limit-changed", "-3"], "--limit-changed"), (["--since", "2026-11-10", "--until", "2026-11-01"], "--until"),
    (["--since", "7d", "--until", "7d"], "--until"),
])
def test_backtest_refuses_options_that_mean_nothing(tmp_path, monkeypatch, options, refused):
    """A batch of no evaluations reported "0 live evaluations" (and -1 ended in a traceback); a
    window ending before it starts silently reported nothing."""
    monkeypatch.setenv("KYC_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["rules", "backtest", *options])
    assert result.exit_code == 2 and refused in result.output and "Traceback" not in result.output, result.output


def test_parse_since():
    assert parse_since("30d", NOW) == NOW - timedelta(days=30)
    assert parse_since("12h", NOW) == NOW - timedelta(hours=12)
    assert parse_since("2w", NOW) == NOW - timedelta(weeks=2)
    assert parse_since("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="30d"):
        parse_since("last month", NOW)


def test_a_backtest_replays_what_usage_reports_re_evaluated_when_they_did(client, auth, runtime):
    """A usage rule acts when the gateway's report re-evaluates an account: those evaluations
    are replayed too (trigger "usage"), so ops see a usage rule's hits and its account's score
    in the ranking, not 0 hits and a miss. They are placed when they were made (the report's
    facts), not at the signup's time they keep: a window that ends before the report replays
    nothing it taught (nor the label's score it earned), one that holds it does, however old
    the signup."""
    from tests.conftest import signup

    now = datetime.now(timezone.utc)
    body = signup(account_id="bt_heavy", occurred_at=(now - timedelta(days=20)).isoformat())
    assert client.post("/v1/signups", json=body, headers=auth).json["decision"] == "allow"
    report = {"occurred_at": (now - timedelta(days=2)).isoformat(), "requests": 500_000, "tier": "free"}
    answer = client.post("/v1/accounts/bt_heavy/activity", json=report, headers=auth).json
    assert answer["reevaluated"] and answer["decision"] == "review"
    assert client.post("/v1/accounts/bt_heavy/labels", json={"label": "fraud"}, headers=auth).status_code in (200, 201)

    later = now + timedelta(hours=1)
    replayed = backtest(runtime.engine, runtime.rules, now - timedelta(days=30), later)
    assert replayed.rules[("signup", "usage_far_beyond_quota")].hits == 1
    assert replayed.outcomes["bt_heavy"][2] == "review"
    assert replayed.matrix[("review", "review")] == 1 and replayed.evaluations == 2

    before_the_report = backtest(runtime.engine, runtime.rules, now - timedelta(days=30), now - timedelta(days=10))
    assert before_the_report.rules[("signup", "usage_far_beyond_quota")].hits == 0
    assert before_the_report.evaluations == 1 and before_the_report.outcomes["bt_heavy"][2] == "allow"
    assert before_the_report.matrix[("allow", "allow")] == 1

    only_the_report = backtest(runtime.engine, runtime.rules, now - timedelta(days=1), later)
    assert only_the_report.evaluations == 1 and only_the_report.rules[("signup", "usage_far_beyond_quota")].hits == 1


def test_a_list_edit_is_backtested_like_a_rule_edit(client, auth, runtime, tmp_path):
    """rules/lists/ decide signal facts (phone.voip, email.free) when a signup is scored; a
    backtest of a candidate whose lists changed reads those facts again from the stored input,
    so it shows what deploying the edit would change, not "0 changes"."""
    from tests.conftest import signup

    body = signup(account_id="bt_voip", phone="+12025550123", phone_region=None)
    live = client.post("/v1/signups", json=body, headers=auth).json
    assert "voip_phone" not in [r["rule"] for r in live["reasons"]]
    candidate = tmp_path / "rules"
    shutil.copytree(RULES_DIR, candidate)
    with (candidate / "lists" / "voip_prefixes.txt").open("a") as listed:
        listed.write("+1202555\n")
    rules = RuleSet.load(candidate, SCHEMA)
    at = datetime.fromisoformat(live["occurred_at"].replace("Z", "+00:00"))
    window = (at - timedelta(days=1), at + timedelta(days=1))
    report = backtest(runtime.engine, rules, *window)
    assert report.rules[("signup", "voip_phone")].hits == 1 and report.changed_evaluations == 1
    assert [c.account_id for c in report.changed] == ["bt_voip"]
    # The running lists: nothing changes.
    assert backtest(runtime.engine, runtime.rules, *window).changed_evaluations == 0


def test_relisted_reads_only_the_list_facts_again():
    from kyc.signals import relisted

    stored = {"email": {"domain": "corp.example", "free": False, "disposable": False},
              "phone": {"line_type": "mobile", "listed_voip": False, "voip": False}, "ip": {"hosting": True}}
    again = relisted(stored, {"phone": "+447700900123"}, {"free_email_domains": frozenset({"corp.example"}),
                                                         "voip_prefixes": frozenset({"+4477009"})})
    assert again["email"] == {"domain": "corp.example", "free": True, "disposable": False}
    assert again["phone"] == {"line_type": "mobile", "listed_voip": True, "voip": True}
    assert again["ip"] == {"hosting": True}
    assert relisted({"email": {"valid": False}}, {}, {}) == {"email": {"valid": False}}
