"""The rules engine: load rule files once, evaluate them in microseconds.

    rules = RuleSet.load(Path("rules"), SCHEMA)
    outcome = rules.evaluate("signup", signals)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kyc.engine.loader import (
    SUBJECTS,
    VERIFICATIONS,
    CompiledConditions,
    CompiledRules,
    Condition,
    NamedList,
    RuleError,
    RuleSetError,
    compile_conditions,
    compile_rule_file,
    load_lists,
    rules_version,
    stray_rule_files,
)
from kyc.engine.schema import Field, Schema

__all__ = ["RuleSet", "Outcome", "RuleError", "RuleSetError", "Schema", "Field", "NamedList", "SEVERITY",
           "most_severe", "reason_order", "completed_verifications", "Condition", "CompiledConditions",
           "compile_conditions"]

SEVERITY = {"allow": 0, "verify": 1, "review": 2, "block": 3}


def completed_verifications(signals: dict[str, dict[str, Any]]) -> frozenset[str]:
    """The verifications the signals say the account has completed (account.<kind>_verified)."""
    account = signals.get("account") or {}
    return frozenset(kind for kind in VERIFICATIONS if account.get(f"{kind}_verified") is True)


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
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def load(cls, root: Path, schema: Schema) -> "RuleSet":
        """Read, check and compile every rule file and list under root, all or nothing:
        any mistake anywhere raises one RuleSetError listing them all."""
        root = Path(root)
        if not root.is_dir():
            raise RuleSetError([RuleError(str(root), 0, None, "rules directory not found",
                                          "set KYC_RULES_DIR or pass --rules DIR")])
        version = rules_version(root)
        errors: list[RuleError] = stray_rule_files(root)
        try:
            lists = load_lists(root)
        except RuleSetError as exc:
            raise RuleSetError(errors + exc.errors) from None
        subjects: dict[str, CompiledRules] = {}
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

    def summary(self) -> dict[str, Any]:
        """What ops see of a loaded set: version, when, and what is in it."""
        return {
            "version": self.version,
            "loaded_at": self.loaded_at.isoformat().replace("+00:00", "Z"),
            "subjects": {
                subject: {
                    "active": sum(1 for r in compiled.rules if r.mode == "active"),
                    "shadow": sum(1 for r in compiled.rules if r.mode == "shadow"),
                    "disabled": len(compiled.disabled),
                }
                for subject, compiled in self.subjects.items()
            },
            "lists": {name: len(values) for name, values in sorted(self.lists.items())},
        }

    def evaluate(self, subject: str, signals: dict[str, dict[str, Any]]) -> Outcome:
        """A verify rule asks for proof. Once the account has completed every verification the
        rule requires, the proof is there: the rule stays in the reasons (marked "satisfied",
        score kept: the facts did not change) but no longer moves the decision or the required
        verifications. Completed verifications arrive as signals (account.<kind>_verified), so
        every path that evaluates signals - live, rescore, backtest, rule tests - decides the
        same way from what the evaluation stored, and no later step rewrites an outcome."""
        verified = completed_verifications(signals)
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
            if rule.action == "verify" and verified.issuperset(rule.requires):
                reason["satisfied"] = True
                continue
            if SEVERITY[rule.action] > SEVERITY[decision]:
                decision = rule.action
            if rule.action == "verify":
                required.update(v for v in rule.requires if v not in verified)
        reasons.sort(key=reason_order)
        required_list = [v for v in VERIFICATIONS if v in required] if decision == "verify" else []
        return Outcome(decision, min(score, 100), reasons, required_list)
