"""A person's decision over the rules' one: reviews, cluster actions and labels.

The rules decide an account's standing from its latest evaluations (kyc.scoring.combine). A
person can decide otherwise: a review (allow | block), a cluster action (block | review |
release, which allows), a label (fraud blocks, legit allows). That decision is kept on the
account (`Account.override`) with the evidence the person saw (`basis`), and `overlay` lays it
over every later automatic standing:

- a person's `block` stands until a person changes it;
- a cluster action's `review` holds the account at review (or block, if the rules say block);
- a person's `allow` stands over later rescoring until evidence arrives that the person did not
  see: a rule hit that was not among the reasons then, the cluster growing past a size step
  (KYC_GRAPH_RESCORE_SIZES) beyond the size it had, or more fraud labels in the cluster. Then
  the person's decision is lifted, and the account goes back to the review queue (at review, or
  block when the rules say block) with what changed.

`overlay` is pure: the decide step (kyc.scoring.decide.settle), the review endpoint and cluster
actions all call it, so there is one way a person's decision and the rules combine.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from kyc.models import SEVERITY

OPS_RULE_PREFIX = "ops:"          # reasons written by a person's decision, never a rule file's id
SOURCES = ("review", "cluster_action", "label")


@dataclass(frozen=True)
class Standing:
    """What the account's row says about its decision."""

    decision: str
    reasons: list[dict[str, Any]]
    required_verifications: list[str]
    override: dict[str, Any] | None
    review_since: datetime | None
    reopened: tuple[str, ...] = ()          # what lifted a person's decision just now


def most_severe(decisions: Iterable[str]) -> str:
    return max(decisions, key=SEVERITY.__getitem__)


def automatic_reasons(reasons: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules' reasons among an account's reasons (without the person's)."""
    return [r for r in reasons if not r["rule"].startswith(OPS_RULE_PREFIX)]


def evidence(reasons: Iterable[dict[str, Any]], cluster) -> dict[str, Any]:
    """What a person deciding now sees: the rules that hit, the cluster's size and fraud labels."""
    return {
        "rules": sorted({r["rule"] for r in automatic_reasons(reasons) if not r.get("shadow")}),
        "cluster_id": getattr(cluster, "id", None),
        "cluster_size": getattr(cluster, "size", 1) or 1,
        "cluster_fraud": getattr(cluster, "labeled_fraud", 0) or 0,
    }


def decided(decision: str, source: str, actor: str, at: datetime, note: str | None, basis: dict[str, Any],
            **extra) -> dict[str, Any]:
    """An override: a person's decision, who made it and how, and what they saw."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    return {"decision": decision, "source": source, "by": actor, "at": at.isoformat(), "note": note,
            "basis": basis, **extra}


def what_changed(basis: dict[str, Any], now: dict[str, Any], steps: tuple[int, ...]) -> list[str]:
    """The evidence in `now` that `basis` (what the person saw) did not hold."""
    changed = [f"new rule hit: {rule}" for rule in now["rules"] if rule not in set(basis.get("rules", ()))]
    before, size = basis.get("cluster_size", 1), now["cluster_size"]
    if bisect_right(steps, size) > bisect_right(steps, before):
        changed.append(f"cluster grew from {before} to {size} accounts")
    if now["cluster_fraud"] > basis.get("cluster_fraud", 0):
        changed.append(f"fraud labels in the cluster rose from {basis.get('cluster_fraud', 0)} to {now['cluster_fraud']}")
    return changed


_DESCRIPTIONS = {
    "review": "a person's review",
    "cluster_action": "a person's action on the account's cluster",
    "label": "a person's label",
}


def _person_reason(override: dict[str, Any]) -> dict[str, Any]:
    return {"rule": OPS_RULE_PREFIX + override["source"], "score": 0, "action": override["decision"],
            "description": f"{override['decision'].capitalize()} by {_DESCRIPTIONS[override['source']]} "
                           f"({override['by']})"}


def overlay(override: dict[str, Any] | None, review_since: datetime | None, decision: str,
            reasons: list[dict[str, Any]], required: list[str], cluster, steps: tuple[int, ...],
            now: datetime) -> Standing:
    """The account's standing from the rules' one (`decision`, `reasons`, `required`) and a
    person's decision (`override`), given the account's cluster as it is now (id, size,
    labeled_fraud) and the cluster size steps.

    `review_since` is when the account entered the review queue: kept while it stays at
    review, set to `now` when it arrives there, cleared when it leaves.
    """
    reopened: tuple[str, ...] = ()
    active = override.get("decision") if override else None
    if active == "allow":
        changed = what_changed(override.get("basis") or {}, evidence(reasons, cluster), steps)
        if changed:
            reopened = tuple(changed)
            previous = {k: override.get(k) for k in ("decision", "source", "by", "at", "note")}
            override = {"decision": None, "reopened": {"at": now.isoformat(), "changed": list(changed)},
                        "previous": previous}
            active = None
    if active:
        decision = most_severe([decision, "review"]) if active == "review" else active
        required = []
        reasons = [_person_reason(override)] + reasons
    elif override and override.get("reopened"):
        # Back in the queue until a person decides again, whatever later rescoring says.
        decision, required = most_severe([decision, "review"]), []
        previous = override.get("previous") or {}
        reasons = [{"rule": OPS_RULE_PREFIX + "reopened", "score": 0, "action": "review",
                    "description": f"Back to review after {_DESCRIPTIONS.get(previous.get('source'), 'a person')} "
                                   f"allowed it: " + "; ".join(override["reopened"]["changed"])}] + reasons
    if decision == "review":
        review_since = review_since or now
    else:
        review_since = None
    return Standing(decision, reasons, required, override, review_since, reopened)
