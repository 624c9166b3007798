"""Deciding, in one place: rule hits -> an outcome; an account's outcomes -> its standing.

Every path that decides comes here: a live signup or payment method, a rescore (a batch or one
account), a completed verification, a label, the backtest and the rule tests (an outcome
only). What is decided:

- **outcome** (`evaluate`): the rules hit by one evaluation's signals -> score, decision,
  reasons, required verifications. A verify rule whose requirements are all completed stays in
  the reasons, "satisfied", and no longer moves the decision.
- **standing** (`combine`): the most severe decision of the latest evaluation of each subject
  (each card is a subject of its own), the highest score, every reason once.
- **a person's decision** (`settle`, through kyc.ops.standing.overlay): a review, a cluster
  action or a label stands over the rules' standing until evidence the person did not see
  reopens it.
- **sticky blocks** (`settle`): a blocked account stays blocked whatever a new evaluation says,
  on every path, unless an acting hit of that evaluation comes from a rule tagged
  `releases_block`. The new evaluation is stored for the record either way.

This module reads nothing and writes nothing: callers pass what they hold and persist what
comes back, so every path decides the same from the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from kyc.engine.loader import VERIFICATIONS, Rule
from kyc.models import SEVERITY
from kyc.ops.standing import overlay
from kyc.verification import payment_verified

RELEASES_BLOCK = "releases_block"           # rule tag: an acting hit may relax a blocked account


@dataclass(frozen=True)
class Outcome:
    decision: str
    score: int
    reasons: list[dict[str, Any]]
    required_verifications: list[str]
    releases_block: bool = False           # an acting hit came from a rule tagged releases_block


@dataclass(frozen=True)
class Settlement:
    """What an evaluation did to its account's standing."""

    old: str
    new: str
    held: bool                             # the evaluation would have relaxed a block, which was kept
    proved_payment: bool = False           # it is the proof of payment another subject asked for


def most_severe(decisions: Iterable[str]) -> str:
    return max(decisions, key=SEVERITY.__getitem__, default="allow")


def reason_order(reason: dict[str, Any]) -> tuple:
    """Acting reasons first, most severe and highest score first; shadow hits last."""
    return reason.get("shadow", False), -SEVERITY[reason["action"]], -reason["score"], reason["rule"]


def completed_verifications(signals: dict[str, dict[str, Any]]) -> frozenset[str]:
    """The verifications the signals say the account has completed (account.<kind>_verified)."""
    account = signals.get("account") or {}
    return frozenset(kind for kind in VERIFICATIONS if account.get(f"{kind}_verified") is True)


def evaluate(rules, subject: str, signals: dict[str, dict[str, Any]]) -> Outcome:
    """The outcome of one evaluation: `rules` (a RuleSet) says which rules the signals hit;
    this decides what the hits mean. Completed verifications arrive as signals
    (account.<kind>_verified), so every path that evaluates stored signals (live, rescore,
    backtest, rule tests) decides the same, and no later step rewrites an outcome."""
    return outcome(rules.hits(subject, signals), completed_verifications(signals))


def outcome(hits: Iterable[Rule], verified: frozenset[str]) -> Outcome:
    score = 0
    decision = "allow"
    reasons: list[dict[str, Any]] = []
    required: set[str] = set()
    releases = False
    for rule in hits:
        reason = {"rule": rule.id, "score": rule.score, "action": rule.action, "description": rule.description}
        reasons.append(reason)
        if rule.mode == "shadow":
            # Recorded so ops can see what it would do; never moves score or decision.
            reason["shadow"] = True
            continue
        score += rule.score
        releases = releases or RELEASES_BLOCK in rule.tags
        if rule.action == "verify" and verified.issuperset(rule.requires):
            reason["satisfied"] = True
            continue
        if SEVERITY[rule.action] > SEVERITY[decision]:
            decision = rule.action
        if rule.action == "verify":
            required.update(v for v in rule.requires if v not in verified)
    reasons.sort(key=reason_order)
    required_list = [v for v in VERIFICATIONS if v in required] if decision == "verify" else []
    return Outcome(decision, min(score, 100), reasons, required_list, releases)


def combine(subjects: dict[str, dict[str, Any]]) -> tuple[str, int, list[dict], list[str]]:
    """An account's standing from the latest evaluation of each subject (each card, for payment
    methods): the most severe decision wins, the highest score, every reason."""
    if not subjects:
        return "allow", 0, [], []
    decision = most_severe(s["decision"] for s in subjects.values())
    score = max(s["score"] for s in subjects.values())
    unique: dict[tuple, dict] = {}           # two cards hitting the same rule say it once
    for reason in sorted((r for s in subjects.values() for r in s["reasons"]), key=reason_order):
        unique.setdefault((reason["rule"], reason.get("shadow", False)), reason)
    reasons = list(unique.values())
    needed = {v for s in subjects.values() if s["decision"] == "verify" for v in s["required_verifications"]}
    required = [v for v in VERIFICATIONS if v in needed] if decision == "verify" else []
    return decision, score, reasons, required


def settle(account, slot: str, subject: str, evaluation_id: str, result: Outcome, at: datetime, *,
           cluster=None, steps: tuple[int, ...] = (), now: datetime | None = None) -> Settlement:
    """Put one evaluation's outcome on its account: its subject's slot, the account's times and
    standing, and the state version entitlement ETags follow. `account` is the account's row as
    a plain record; the caller writes what changed.

    A block is sticky: if the account was blocked and this evaluation would relax it, the
    account keeps its whole standing (slots included) unless `result.releases_block`.
    `proved_payment`: this evaluation is the proof of payment (a card evaluated allow) that
    another subject's outcome asks for (the caller evaluates those again).

    A person's decision on the account (`account.override`) is laid over the rules' standing
    (kyc.ops.standing.overlay), given the account's `cluster` now (id, size, labeled_fraud),
    the cluster size `steps` and `now`; it also keeps `account.review_since` (the queue).
    """
    old = account.decision
    kept = {name: getattr(account, name) for name in _STANDING} if old == "block" else None
    subjects = dict(account.subjects or {})
    current = subjects.get(slot)
    if current is None or datetime.fromisoformat(current["occurred_at"]) <= at:
        subjects[slot] = {
            "subject": subject, "evaluation_id": evaluation_id, "occurred_at": at.isoformat(),
            "decision": result.decision, "score": result.score, "reasons": result.reasons,
            "required_verifications": result.required_verifications,
        }
    account.first_seen_at = min(account.first_seen_at, at)
    account.last_seen_at = max(account.last_seen_at, at)
    account.last_evaluation_id = evaluation_id
    decision, score, reasons, required = combine(subjects)
    laid = overlay(account.override, account.review_since, decision, reasons, required, cluster, steps,
                   now or datetime.now(timezone.utc))
    standing = (laid.decision, score, laid.reasons, laid.required_verifications)
    if kept is not None and standing[0] != "block" and not result.releases_block:
        for name, value in kept.items():
            setattr(account, name, value)
        return Settlement(old, "block", held=True)
    # A new latest evaluation brings new signals, which tier conditions read: it can change an
    # entitlement even when the standing stays the same.
    became_latest = subjects[slot]["evaluation_id"] == evaluation_id
    if became_latest or standing != (account.decision, account.score, account.reasons,
                                     account.required_verifications):
        account.state_version = (account.state_version or 0) + 1
    proved = (not payment_verified(account.subjects) and payment_verified(subjects)
              and any("payment" in entry["required_verifications"] for name, entry in subjects.items() if name != slot))
    account.subjects = subjects
    account.decision, account.score, account.reasons, account.required_verifications = standing
    account.override, account.review_since = laid.override, laid.review_since
    return Settlement(old, account.decision, held=False, proved_payment=proved)


_STANDING = ("decision", "score", "reasons", "required_verifications", "subjects", "state_version", "override",
             "review_since")
