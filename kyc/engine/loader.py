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
# A rule's or a tier's id: lower_snake_case ASCII (ids travel in URLs, reasons and configs).
ID = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class RuleError:
    file: str
    line: int
    rule_id: str | None
    message: str
    suggestion: str | None = None
    kind: str = "rule"          # what rule_id names: a rule, a tier, a tier's condition, a test case

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        rule = f" {self.kind} '{self.rule_id}':" if self.rule_id else ""
        hint = f" ({self.suggestion})" if self.suggestion else ""
        return f"{where}:{rule} {self.message}{hint}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "rule": self.rule_id, "kind": self.kind,
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
    enabled: bool = True


# --- YAML with line numbers -------------------------------------------------------------------

class _Mapping(dict):
    line: int = 0
    key_lines: dict[str, int]
    duplicate_keys: list[tuple[str, int]]


class _Sequence(list):
    lines: list[int]                 # each item's line (a scalar item cannot carry its own)


class _LineLoader(yaml.SafeLoader):
    pass


_MERGE = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    # The keys written here, before a merge key (`<<: *base`) adds the base's: only these can
    # be given twice; a key that overrides a merged one is not a duplicate.
    own = [(k, v) for k, v in node.value if k.tag != _MERGE]
    mapping = _Mapping(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    mapping.key_lines, mapping.duplicate_keys = {}, []
    merged = [(k, v) for k, v in node.value if (k, v) not in own]
    for key_node, value_node in merged + own:
        # A block scalar (`when: >-` / `when: |`) starts its text on the next line.
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        mapping.key_lines[key_node.value] = value_node.start_mark.line + 1 + block
    seen: set = set()
    for key_node, _ in own:
        if key_node.value in seen:
            mapping.duplicate_keys.append((key_node.value, key_node.start_mark.line + 1))
        seen.add(key_node.value)
    return mapping


# YAML 1.1 reads 030 as 24 (base 8) and 1:30 as 90 (base 60): never what a rule's author meant.
_SURPRISING_INT = re.compile(r"[-+]?0[0-9_]+|[-+]?0o[0-7_]+|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+")


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    if _SURPRISING_INT.fullmatch(node.value):
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.value} would be read as a number in base 8 or 60 (YAML 1.1): write it without "
            "leading zeros or colons, or quote it", node.start_mark)
    return loader.construct_yaml_int(node)


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    sequence = _Sequence(loader.construct_sequence(node, deep=True))
    sequence.lines = [item.start_mark.line + 1 for item in node.value]
    return sequence


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_text(path: Path, display: str) -> str:
    """A rule or list file's text; not UTF-8 is a RuleSetError naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RuleSetError([RuleError(display, line, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                                      "save the file as UTF-8")]) from None


def read_yaml(path: Path, display: str) -> Any:
    text = read_text(path, display)
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except RecursionError:
        # PyYAML composes and constructs recursively: [[[[... thousands deep would overflow.
        raise RuleSetError([RuleError(display, 1, None, "YAML nested too deeply to read",
                                      "a rule file is a flat list of rules")]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise RuleSetError([RuleError(display, line, None, f"YAML: character {exc.character!r} is not allowed",
                                      "remove control characters (NUL and the like) from the file")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RuleSetError([RuleError(display, line, None, f"YAML: {exc.problem or exc}",
                                      "check indentation and brackets; put a condition containing ': ' or "
                                      "starting with a quote or [ in quotes, or use when: |")]) from None
    except yaml.YAMLError as exc:
        raise RuleSetError([RuleError(display, 1, None, f"YAML: {exc}", "check the file's syntax")]) from None


# --- lists ------------------------------------------------------------------------------------

LIST_DIRECTIVES = ("case-sensitive", "numbers", "text")
_LIST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


class NamedList(frozenset):
    """The values of rules/lists/NAME.txt, plus how the file declared them.

    A frozenset, so signal code can use it as one; the compiler reads the declaration:
    `casefold` (text lists compare case-folded unless the file says `# kyc: case-sensitive`)
    and `kind` (text | number). A list whose every value is a whole number and that declares
    nothing holds numbers (ASNs) and keeps `text_values`, so a text field can be tested too.
    """

    casefold: bool = True
    kind: str = "text"
    text_values: frozenset | None = None

    @classmethod
    def of(cls, values, *, casefold: bool = True, kind: str = "text", text_values=None) -> "NamedList":
        made = cls(values)
        made.casefold, made.kind, made.text_values = casefold, kind, text_values
        return made


def load_list(path: Path, display: str | None = None) -> NamedList:
    """One value per line, `#` comments; `# kyc: case-sensitive` / `# kyc: numbers` / `# kyc: text`
    on a line of its own declare how values compare. Raises RuleSetError naming the line."""
    display = display or str(path)
    errors: list[RuleError] = []
    casefold, declared = True, None
    entries: list[tuple[int, str]] = []
    for number, raw in enumerate(read_text(path, display).splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") and stripped[1:].strip().startswith("kyc:"):
            directive = stripped[1:].strip()[4:].strip()
            if directive == "case-sensitive":
                casefold = False
            elif directive in ("numbers", "text"):
                declared = directive
            else:
                close = difflib_close(directive, LIST_DIRECTIVES)
                errors.append(RuleError(display, number, None, f"unknown list directive 'kyc: {directive}'",
                                        f"did you mean 'kyc: {close}'?" if close else
                                        f"directives: {', '.join('kyc: ' + d for d in LIST_DIRECTIVES)}"))
            continue
        value = raw.split("#", 1)[0].strip()
        if value:
            entries.append((number, value))
    if declared == "numbers":
        values = []
        for number, value in entries:
            if not _NUMBER.match(value):
                errors.append(RuleError(display, number, None, f"'{value}' is not a number",
                                        "this list declares '# kyc: numbers'; remove the value or the declaration"))
            else:
                values.append(float(value) if "." in value else int(value))
        if errors:
            raise RuleSetError(errors)
        return NamedList.of(values, casefold=False, kind="number")
    if errors:
        raise RuleSetError(errors)
    texts = [value.casefold() if casefold else value for _number, value in entries]
    if declared is None and texts and all(v.isascii() and v.isdigit() for v in texts):   # ASCII: "²" is a digit to isdigit, not to int()
        return NamedList.of((int(v) for v in texts), casefold=False, kind="number", text_values=frozenset(texts))
    return NamedList.of(texts, casefold=casefold, kind="text")


# --- rule sets --------------------------------------------------------------------------------

@dataclass
class CompiledRules:
    subject: str
    rules: tuple[Rule, ...]          # enabled rules, in file order (the match indexes)
    match: Any                       # the generated function: signals -> hit indexes
    disabled: tuple[Rule, ...] = ()  # checked at load, never evaluated


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _check_rule(raw: Any, display: str, seen: dict[str, int], errors: list[RuleError], item_line: int = 1
                ) -> Rule | None:
    """A Rule from one YAML mapping, or None after appending what is wrong with it to errors."""
    if not isinstance(raw, _Mapping):
        errors.append(RuleError(display, item_line, None, "each rule is a mapping (id:, when:, ...)",
                                "start each rule with '- id: some_name' and indent its keys under it"))
        return None
    rule_id = raw.get("id")
    line = raw.line
    bad = len(errors)

    def err(message: str, key: str | None, suggestion: str) -> None:
        errors.append(RuleError(display, raw.key_lines.get(key, line) if key else line,
                                rule_id if isinstance(rule_id, str) else None, message, suggestion))

    for key, key_line in raw.duplicate_keys:
        errors.append(RuleError(display, key_line, rule_id if isinstance(rule_id, str) else None,
                                f"key '{key}' given twice", f"keep one '{key}:'"))
    for key in raw:
        if key not in RULE_KEYS:
            close = difflib_close(str(key), RULE_KEYS)
            err(f"unknown key '{key}'", key, f"did you mean {close}?" if close else f"keys: {', '.join(RULE_KEYS)}")
    if "id" not in raw:
        err("the rule has no id", None, "add id: some_name (lower_snake_case, unique in the file)")
    elif not isinstance(rule_id, str) or not ID.fullmatch(rule_id):
        suggestion = re.sub(r"[^a-z0-9_]+", "_", str(rule_id).lower()).strip("_")[:64] or "some_name"
        err("id must be lower_snake_case text (a-z, 0-9, _), at most 64 characters", "id",
            f"did you mean {suggestion}?" if ID.fullmatch(suggestion) else "write it like disposable_email")
    elif rule_id in seen:
        err(f"duplicate rule id (first defined on line {seen[rule_id]})", "id",
            "give each rule its own id, or delete one of the two")
    else:
        seen[rule_id] = line
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        err("description is required", "description", "say in one line what the rule catches")
    when = raw.get("when")
    if not isinstance(when, str) or not when.strip():
        err("empty condition: when is required and cannot be empty", "when", "write a condition, e.g. when: email.disposable")
    score = raw.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        err("score must be a whole number from 0 to 100", "score", "e.g. score: 30")
    action = raw.get("action")
    if action not in ACTIONS:
        close = difflib_close(str(action), ACTIONS)
        err(f"unknown action {action!r}", "action", f"did you mean {close}?" if close else f"one of {', '.join(ACTIONS)}")
    requires = raw.get("requires", [])
    if not isinstance(requires, list) or any(r not in VERIFICATIONS for r in requires):
        unknown = [r for r in requires if r not in VERIFICATIONS] if isinstance(requires, list) else []
        close = difflib_close(str(unknown[0]), VERIFICATIONS) if unknown else None
        err(f"unknown verification {unknown[0]!r}" if unknown else "requires is a list of verifications",
            "requires", f"did you mean {close}?" if close else f"e.g. requires: [phone]; one of {', '.join(VERIFICATIONS)}")
    elif action == "verify" and not requires:
        err("a verify rule must say which verifications it requires", "action", "add requires: [phone]")
    mode = raw.get("mode", "active")
    if mode not in MODES:
        close = difflib_close(str(mode), MODES)
        err(f"unknown mode {mode!r}", "mode", f"did you mean {close}?" if close else f"one of {', '.join(MODES)}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        err("enabled must be true or false", "enabled", "enabled: false switches a rule off without deleting it")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        err("tags must be a list of text", "tags", "e.g. tags: [email, farms]")
        tags = []
    if len(errors) > bad:
        return None
    return Rule(rule_id, description.strip(), when, score, action,
                tuple(v for v in VERIFICATIONS if v in requires), mode, tuple(tags), display,
                raw.key_lines.get("when", line), enabled)


def compile_rule_file(path: Path, subject: str, schema: Schema, lists: dict[str, frozenset],
                      root: Path) -> CompiledRules:
    """Check and compile one rule file. Disabled rules are checked too (so enabling one later
    cannot break loading) but left out of the generated function."""
    display = _display(path, root)
    data = read_yaml(path, display)
    errors: list[RuleError] = []
    if data is None:
        data = []
    if not isinstance(data, list):
        raise RuleSetError([RuleError(display, getattr(data, "line", 1), None, "a rule file is a list of rules",
                                      "start each rule with '- id: some_name'")])
    seen: dict[str, int] = {}
    unit = CompileUnit(schema, lists)
    scratch = CompileUnit(schema, lists)
    rules: list[Rule] = []
    disabled: list[Rule] = []
    conditions: list[str] = []
    for raw, item_line in zip(data, getattr(data, "lines", [1] * len(data))):
        rule = _check_rule(raw, display, seen, errors, item_line)
        if rule is None:
            _check_condition_anyway(raw, display, scratch, errors)
            continue
        try:
            condition = compile_condition(unit if rule.enabled else scratch, rule.when)
        except ConditionError as exc:
            errors.append(RuleError(display, rule.line + exc.offset, rule.id, exc.message, exc.suggestion))
            continue
        if rule.enabled:
            conditions.append(condition)
            rules.append(rule)
        else:
            disabled.append(rule)
    if errors:
        raise RuleSetError(errors)
    return CompiledRules(subject, tuple(rules), build_function(unit, conditions, f"match_{subject}"),
                         tuple(disabled))


def _check_condition_anyway(raw: Any, display: str, scratch: CompileUnit, errors: list[RuleError]) -> None:
    """A rule with a bad key still gets its condition checked, so one run lists every mistake."""
    when = raw.get("when") if isinstance(raw, _Mapping) else None
    if not isinstance(when, str) or not when.strip():
        return
    rule_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    try:
        compile_condition(scratch, when)
    except ConditionError as exc:
        errors.append(RuleError(display, raw.key_lines.get("when", raw.line) + exc.offset, rule_id,
                                exc.message, exc.suggestion))


def stray_rule_files(root: Path) -> list[RuleError]:
    """A file that looks like a misspelt subject (singup.yaml) would silently never load."""
    errors = []
    for path in sorted(root.glob("*.y*ml")):
        if path.stem in SUBJECTS and path.suffix == ".yaml":
            continue
        close = difflib_close(path.stem, SUBJECTS, cutoff=0.75)
        if close or path.stem in SUBJECTS:
            errors.append(RuleError(_display(path, root), 1, None,
                                    f"'{path.name}' is not a rule file kyc reads, so its rules would never run",
                                    f"rename it to {close or path.stem}.yaml"))
    return errors


@dataclass(frozen=True)
class Condition:
    """One standalone condition to compile, with where it was written (for error messages)."""

    id: str
    when: str
    line: int


@dataclass
class CompiledConditions:
    conditions: tuple[Condition, ...]
    families: frozenset[str]         # signal families the conditions read
    match: Any                       # the generated function: signals -> indexes of conditions that hold


def compile_conditions(conditions: list[Condition], schema: Schema, lists: dict[str, frozenset],
                       display: str, name: str) -> CompiledConditions:
    """Compile conditions that are not rules (e.g. tier conditions) the way rule files are:
    same language, same schema check, one generated function; errors name file, line and id."""
    unit = CompileUnit(schema, lists)
    compiled: list[str] = []
    errors: list[RuleError] = []
    for condition in conditions:
        try:
            compiled.append(compile_condition(unit, condition.when))
        except ConditionError as exc:
            errors.append(RuleError(display, condition.line + exc.offset, condition.id, exc.message, exc.suggestion,
                                    kind="condition"))
    if errors:
        raise RuleSetError(errors)
    families = frozenset(f.split(".", 1)[0] for f in unit.field_locals)
    return CompiledConditions(tuple(conditions), families, build_function(unit, compiled, name))


def rules_version(root: Path) -> str:
    """Content hash of everything that changes a decision (rule files and lists, not tests)."""
    digest = hashlib.sha256()
    files = sorted(list(root.glob("*.yaml")) + list((root / "lists").glob("*.txt")))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\x00")
        digest.update(path.read_bytes() + b"\x00")
    return "sha256:" + digest.hexdigest()


def rules_fingerprint(root: Path) -> tuple:
    """A cheap stat of every file a rule set is built from: when it changes, reload."""
    root = Path(root)
    files = sorted(list(root.glob("*.y*ml")) + list((root / "lists").glob("*.txt")))
    stats = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue
        stats.append((str(path.relative_to(root)), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stats)


def load_lists(root: Path) -> dict[str, NamedList]:
    """Every rules/lists/*.txt by file name; all mistakes in all files in one RuleSetError."""
    lists_dir = root / "lists"
    if not lists_dir.is_dir():
        return {}
    lists: dict[str, NamedList] = {}
    errors: list[RuleError] = []
    for path in sorted(lists_dir.glob("*.txt")):
        display = _display(path, root)
        if not _LIST_NAME.match(path.stem):
            suggestion = re.sub(r"[^a-z0-9_]", "_", path.stem.lower())
            errors.append(RuleError(display, 1, None, "a list file name must be lower_snake_case, so rules can "
                                    "write lists.NAME", f"rename it to {suggestion}.txt"))
            continue
        try:
            lists[path.stem] = load_list(path, display)
        except RuleSetError as exc:
            errors.extend(exc.errors)
    if errors:
        raise RuleSetError(errors)
    return lists
