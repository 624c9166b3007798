"""The rules engine: load rule files once, evaluate them in microseconds.

    rules = RuleSet.load(Path("rules"), SCHEMA)
    outcome = rules.evaluate("signup", signals)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyc.engine.loader import (
    SUBJECTS,
    VERIFICATIONS,
    CompiledRules,
    RuleError,
    RuleSetError,
    compile_rule_file,
    load_lists,
    rules_version,
)
from kyc.engine.schema import Field, Schema

__all__ = ["RuleSet", "Outcome", "RuleError", "RuleSetError", "Schema", "Field", "SEVERITY", "most_severe", "reason_order"]

SEVERITY = {"allow": 0, "verify": 1, "review": 2, "block": 3}


def most_severe(decisions) -> str:
    return max(decisions, key=SEVERITY.__getitem__, default="allow")


def reason_order(reason: dict[str, Any]) -> tuple:
    """Acting reasons first, most severe and highest score first; shadow hits last."""
    return reason.get("shadow", False), -SEVERITY[reason["action"]], -reason["score"], reason["rule"]


@dataclass(frozen=True)
class Outcome:
    decision: str
    score: int
    reasons: list[dict[str, Any]]
    required_verifications: list[str]


@dataclass
class RuleSet:
    root: Path
    version: str
    subjects: dict[str, CompiledRules]
    lists: dict[str, frozenset] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, schema: Schema) -> "RuleSet":
        root = Path(root)
        if not root.is_dir():
            raise RuleSetError([RuleError(str(root), 0, None, "rules directory not found")])
        version = rules_version(root)
        lists = load_lists(root)
        subjects: dict[str, CompiledRules] = {}
        errors: list[RuleError] = []
        for subject in SUBJECTS:
            path = root / f"{subject}.yaml"
            if not path.exists():
                continue
            try:
                subjects[subject] = compile_rule_file(path, subject, schema, lists, root)
            except RuleSetError as exc:
                errors.extend(exc.errors)
        if errors:
            raise RuleSetError(errors)
        return cls(root, version, subjects, lists)

    def evaluate(self, subject: str, signals: dict[str, dict[str, Any]]) -> Outcome:
        compiled = self.subjects.get(subject)
        if compiled is None:
            return Outcome("allow", 0, [], [])
        score = 0
        decision = "allow"
        reasons: list[dict[str, Any]] = []
        required: set[str] = set()
        for index in compiled.match(signals):
            rule = compiled.rules[index]
            reason = {"rule": rule.id, "score": rule.score, "action": rule.action,
                      "description": rule.description}
            if rule.mode == "shadow":
                # Recorded so ops can see what it would do; never moves score or decision.
                reason["shadow"] = True
                reasons.append(reason)
                continue
            reasons.append(reason)
            score += rule.score
            if SEVERITY[rule.action] > SEVERITY[decision]:
                decision = rule.action
            if rule.action == "verify":
                required.update(rule.requires)
        reasons.sort(key=reason_order)
        required_list = [v for v in VERIFICATIONS if v in required] if decision == "verify" else []
        return Outcome(decision, min(score, 100), reasons, required_list)
