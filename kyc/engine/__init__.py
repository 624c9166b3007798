"""The rules engine: load rule files once, evaluate them in microseconds.

    rules = RuleSet.load(Path("rules"), SCHEMA)
    hits = rules.hits("signup", signals)        # decided by kyc.scoring.decide.evaluate
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kyc.engine.loader import (
    SUBJECTS,
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

__all__ = ["RuleSet", "RuleError", "RuleSetError", "Schema", "Field", "NamedList", "Condition",
           "CompiledConditions", "compile_conditions"]


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

    def hits(self, subject: str, signals: dict[str, dict[str, Any]]) -> list:
        """The compiled rules of `subject` the signals match, in file order (what they mean is
        decided in kyc.scoring.decide)."""
        compiled = self.subjects.get(subject)
        if compiled is None:
            return []
        return [compiled.rules[index] for index in compiled.match(signals)]
