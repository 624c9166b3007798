"""Load the rules/ directory: rule files per subject, named lists, and the content version.

Loading is all-or-nothing: every mistake in every file is collected into one RuleSetError,
each naming file, line, rule id and, where one exists, a suggestion. A caller that holds a
running rule set keeps it when loading fails.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kyc.engine.compiler import CompileUnit, ConditionError, build_function, compile_condition, difflib_close
from kyc.engine.schema import Schema

SUBJECTS = ("signup", "payment_method")
ACTIONS = ("allow", "verify", "review", "block")
VERIFICATIONS = ("email", "phone", "payment", "document")
MODES = ("active", "shadow")
RULE_KEYS = ("id", "description", "when", "score", "action", "requires", "mode", "enabled", "tags")
_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class RuleError:
    file: str
    line: int
    rule_id: str | None
    message: str
    suggestion: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        rule = f" rule '{self.rule_id}':" if self.rule_id else ""
        hint = f" ({self.suggestion})" if self.suggestion else ""
        return f"{where}:{rule} {self.message}{hint}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "rule": self.rule_id,
                "message": self.message, "suggestion": self.suggestion}


class RuleSetError(Exception):
    def __init__(self, errors: list[RuleError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    when: str
    score: int
    action: str
    requires: tuple[str, ...]
    mode: str
    tags: tuple[str, ...]
    file: str
    line: int


# --- YAML with line numbers -------------------------------------------------------------------

class _Mapping(dict):
    line: int = 0
    key_lines: dict[str, int]
    duplicate_keys: list[tuple[str, int]]


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    mapping.key_lines, mapping.duplicate_keys = {}, []
    for key_node, value_node in node.value:
        key = key_node.value
        if key in mapping.key_lines:
            mapping.duplicate_keys.append((key, key_node.start_mark.line + 1))
        # A block scalar (`when: >-` / `when: |`) starts its text on the next line.
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        mapping.key_lines[key] = value_node.start_mark.line + 1 + block
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path, display: str) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RuleSetError([RuleError(display, line, None, f"YAML: {exc.problem or exc}")])


# --- lists ------------------------------------------------------------------------------------

def load_list(path: Path) -> frozenset:
    """One value per line, `#` comments. Case-folded unless the file says `# kyc: case-sensitive`.
    A list whose every value is a whole number (ASNs) holds numbers."""
    text = path.read_text(encoding="utf-8")
    casefold = "# kyc: case-sensitive" not in text
    values = []
    for raw in text.splitlines():
        value = raw.split("#", 1)[0].strip()
        if value:
            values.append(value.casefold() if casefold else value)
    if values and all(v.isdigit() for v in values):
        return frozenset(int(v) for v in values)
    return frozenset(values)


# --- rule sets --------------------------------------------------------------------------------

@dataclass
class CompiledRules:
    subject: str
    rules: tuple[Rule, ...]
    match: Any                       # the generated function: signals -> hit indexes


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _check_rule(raw: Any, display: str, seen: dict[str, int], errors: list[RuleError]) -> Rule | None:
    if not isinstance(raw, _Mapping):
        errors.append(RuleError(display, getattr(raw, "line", 1), None, "each rule is a mapping (id:, when:, ...)"))
        return None
    rule_id = raw.get("id")
    line = raw.line
    bad = len(errors)

    def err(message: str, key: str | None = None, suggestion: str | None = None) -> None:
        errors.append(RuleError(display, raw.key_lines.get(key, line) if key else line,
                                rule_id if isinstance(rule_id, str) else None, message, suggestion))

    for key, key_line in raw.duplicate_keys:
        errors.append(RuleError(display, key_line, rule_id, f"key '{key}' given twice"))
    for key in raw:
        if key not in RULE_KEYS:
            close = difflib_close(str(key), RULE_KEYS)
            err(f"unknown key '{key}'", key, f"did you mean {close}?" if close else f"keys: {', '.join(RULE_KEYS)}")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        err("id must be lower_snake_case text (a-z, 0-9, _), at most 64 characters", "id")
    elif rule_id in seen:
        err(f"duplicate rule id (first defined on line {seen[rule_id]})", "id")
    else:
        seen[rule_id] = line
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        err("description is required: say what the rule catches", "description")
    when = raw.get("when")
    if not isinstance(when, str) or not when.strip():
        err("when is required and cannot be empty", "when")
    score = raw.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        err("score must be a whole number from 0 to 100", "score")
    action = raw.get("action")
    if action not in ACTIONS:
        close = difflib_close(str(action), ACTIONS)
        err(f"unknown action {action!r}", "action", f"did you mean {close}?" if close else f"one of {', '.join(ACTIONS)}")
    requires = raw.get("requires", [])
    if not isinstance(requires, list) or any(r not in VERIFICATIONS for r in requires):
        err(f"requires lists verifications: {', '.join(VERIFICATIONS)}", "requires")
        requires = []
    if action == "verify" and not requires:
        err("a verify rule must say which verifications it requires", "action", "add requires: [phone]")
    mode = raw.get("mode", "active")
    if mode not in MODES:
        err(f"mode must be one of {', '.join(MODES)}", "mode")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        err("enabled must be true or false", "enabled")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        err("tags must be a list of text", "tags")
        tags = []
    if len(errors) > bad or enabled is False:
        return None
    return Rule(rule_id, description.strip(), when, score, action,
                tuple(v for v in VERIFICATIONS if v in requires), mode, tuple(tags), display,
                raw.key_lines.get("when", line))


def compile_rule_file(path: Path, subject: str, schema: Schema, lists: dict[str, frozenset],
                      root: Path) -> CompiledRules:
    display = _display(path, root)
    data = read_yaml(path, display)
    errors: list[RuleError] = []
    if data is None:
        data = []
    if not isinstance(data, list):
        raise RuleSetError([RuleError(display, getattr(data, "line", 1), None,
                                      "a rule file is a list of rules, each starting with '- id:'")])
    seen: dict[str, int] = {}
    unit = CompileUnit(schema, lists)
    rules: list[Rule] = []
    conditions: list[str] = []
    for raw in data:
        rule = _check_rule(raw, display, seen, errors)
        if rule is None:
            continue
        try:
            conditions.append(compile_condition(unit, rule.when))
            rules.append(rule)
        except ConditionError as exc:
            errors.append(RuleError(display, rule.line + exc.offset, rule.id, exc.message, exc.suggestion))
    if errors:
        raise RuleSetError(errors)
    return CompiledRules(subject, tuple(rules), build_function(unit, conditions, f"match_{subject}"))


def rules_version(root: Path) -> str:
    """Content hash of everything that changes a decision (rule files and lists, not tests)."""
    digest = hashlib.sha256()
    files = sorted(list(root.glob("*.yaml")) + list((root / "lists").glob("*.txt")))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\x00")
        digest.update(path.read_bytes() + b"\x00")
    return "sha256:" + digest.hexdigest()


def load_lists(root: Path) -> dict[str, frozenset]:
    lists_dir = root / "lists"
    return {p.stem: load_list(p) for p in sorted(lists_dir.glob("*.txt"))} if lists_dir.is_dir() else {}
