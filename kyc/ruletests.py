"""`kyc rules test`: the cases in rules/tests/*.yaml, run against a candidate rule set.

A case file is a list of cases:

    - name: throwaway mailbox asks for a phone check
      subject: signup                 # optional when the file is named after the subject
      input: {email: x@mailinator.com, ip: 73.15.1.1}   # a request body: real signal code, empty history
      signals: {velocity: {ip_1h: 6}} # raw signals; with input, they override the computed ones
      expect:
        decision: verify
        hits: [disposable_email]      # exactly the rules that fire, shadow rules included
        score: 30                     # optional
        required_verifications: [phone]  # optional

A case gives `input`, `signals` or both. With `signals` alone, every field not given is
missing. With `input`, the subject's real signal functions run on it with no history (every
velocity count is 1: this account only), as for a first signup on an empty database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from kyc.engine import RuleSet, Schema
from kyc.engine.compiler import difflib_close
from kyc.engine.loader import SUBJECTS, VERIFICATIONS, RuleError, RuleSetError, _display, _Mapping, read_yaml
from kyc.inputs import INPUTS, field_errors
from kyc.signals import COLLECTORS, Lookups, Signals
from kyc.signals.geoip import open_geoip
from kyc.store import WINDOWS, History, Key
from kyc.scoring.decide import evaluate

CASE_KEYS = ("name", "subject", "input", "signals", "expect")
EXPECT_KEYS = ("decision", "hits", "score", "required_verifications")
DEFAULT_ACCOUNT = "rules_test"
# Fixed, so that a case's input gives the same signals on every run.
DEFAULT_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


class EmptyHistory(History):
    """The Store of a database with no past events: each identifier was seen only on this account."""

    def distinct_accounts(self, keys: list[Key], at: datetime, account_id: str) -> dict[Key, dict[str, int]]:
        return {key: {w: 1 for w in WINDOWS} for key in keys}

    def card_history(self, card: str, at: datetime, window: timedelta, account_id: str, device: Key | None
                     ) -> tuple[int, int | None, dict | None]:
        return 1, 1 if device else None, None

    def record(self, keys: Iterable[Key], at: datetime, account_id: str, evaluation_id: str) -> None:
        return None


@dataclass
class Case:
    file: str
    line: int
    name: str
    subject: str
    input: dict[str, Any] | None
    signals: Signals | None
    expect: dict[str, Any]


@dataclass
class CaseResult:
    case: Case
    passed: bool
    decision: str
    hits: list[str]
    score: int
    required_verifications: list[str]
    problems: list[str] = field(default_factory=list)


def load_cases(root: Path, schema: Schema) -> list[Case]:
    """Every case under root/tests/, checked; all mistakes in one RuleSetError."""
    tests_dir = Path(root) / "tests"
    cases: list[Case] = []
    errors: list[RuleError] = []
    for path in sorted(tests_dir.glob("*.yaml")) if tests_dir.is_dir() else []:
        display = _display(path, Path(root))
        try:
            data = read_yaml(path, display)
        except RuleSetError as exc:
            errors.extend(exc.errors)
            continue
        if data is None:
            continue
        if not isinstance(data, list):
            errors.append(RuleError(display, getattr(data, "line", 1), None, "a test file is a list of cases",
                                    "start each case with '- name: ...'"))
            continue
        for raw in data:
            case = _check_case(raw, display, path.stem, schema, errors)
            if case is not None:
                cases.append(case)
    if errors:
        raise RuleSetError(errors)
    return cases


def _check_case(raw: Any, display: str, stem: str, schema: Schema, errors: list[RuleError]) -> Case | None:
    if not isinstance(raw, _Mapping):
        errors.append(RuleError(display, getattr(raw, "line", 1), None, "each case is a mapping",
                                "start each case with '- name: ...'"))
        return None
    bad = len(errors)
    name = raw.get("name")

    def err(message: str, key: str | None, suggestion: str, line: int | None = None) -> None:
        errors.append(RuleError(display, line or raw.key_lines.get(key, raw.line), name if isinstance(name, str)
                                else None, message, suggestion, kind="case"))

    for key in raw:
        if key not in CASE_KEYS:
            close = difflib_close(str(key), CASE_KEYS)
            err(f"unknown key '{key}' in a case", key, f"did you mean {close}?" if close else
                f"keys: {', '.join(CASE_KEYS)}")
    if not isinstance(name, str) or not name.strip():
        err("the case has no name", "name", "add name: what the case shows")
    subject = raw.get("subject", stem if stem in SUBJECTS else None)
    if subject not in SUBJECTS:
        close = difflib_close(str(subject), SUBJECTS)
        err(f"unknown subject {subject!r}", "subject", f"did you mean {close}?" if close else
            f"subject: one of {', '.join(SUBJECTS)}")
    inp, signals = raw.get("input"), raw.get("signals")
    if inp is None and signals is None:
        err("a case needs input or signals", None, "add input: {...} (a request body) or signals: {...}")
    if inp is not None and not isinstance(inp, dict):
        err("input is a mapping: the request body", "input", "e.g. input: {email: a@b.com, ip: 73.15.1.1}")
    elif inp is not None and subject in SUBJECTS:
        # The body as the API would take it (in field_errors' words), so a typo is found here
        # and not only when the case runs.
        try:
            INPUTS[subject].model_validate({"account_id": DEFAULT_ACCOUNT, **inp})
        except ValidationError as exc:
            for where, message in field_errors(exc, INPUTS[subject]).items():
                err(f"input {where}: {message}", "input", "the input is a request body, as the API takes it")
    if signals is not None:
        _check_signals(signals, schema, lambda m, s: err(m, "signals", s))
    expect = raw.get("expect")
    if not isinstance(expect, _Mapping):
        err("a case needs expect:", "expect", "add expect: {decision: allow, hits: []}")
    else:
        for key in expect:
            if key not in EXPECT_KEYS:
                close = difflib_close(str(key), EXPECT_KEYS)
                err(f"unknown key '{key}' in expect", None, f"did you mean {close}?" if close else
                    f"keys: {', '.join(EXPECT_KEYS)}", expect.key_lines.get(key))
        if expect.get("decision") not in ("allow", "verify", "review", "block"):
            err("expect.decision is one of allow, verify, review, block", None, "e.g. decision: verify",
                expect.key_lines.get("decision", expect.line))
        for key in ("hits", "required_verifications"):
            if key in expect and not (isinstance(expect[key], list) and all(isinstance(v, str) for v in expect[key])):
                err(f"expect.{key} is a list of names", None, f"e.g. {key}: []", expect.key_lines.get(key))
            elif key == "required_verifications" and key in expect:
                for kind in expect[key]:
                    if kind not in VERIFICATIONS:
                        close = difflib_close(kind, VERIFICATIONS)
                        err(f"unknown verification '{kind}' in expect.{key}", None,
                            f"did you mean {close}?" if close else f"one of {', '.join(VERIFICATIONS)}",
                            expect.key_lines.get(key))
        if "score" in expect and (isinstance(expect["score"], bool) or not isinstance(expect["score"], int)):
            err("expect.score is a whole number", None, "e.g. score: 30", expect.key_lines.get("score"))
    if len(errors) > bad:
        return None
    return Case(display, raw.line, name, subject, inp, signals, dict(expect))


def _check_signals(signals: Any, schema: Schema, err) -> None:
    if not isinstance(signals, dict):
        err("signals is a mapping of families", "e.g. signals: {email: {disposable: true}}")
        return
    for family, values in signals.items():
        if not isinstance(values, dict):
            err(f"signals.{family} is a mapping of fields", f"e.g. signals: {{{family}: {{field: value}}}}")
            continue
        for key, value in values.items():
            name = f"{family}.{key}"
            if name not in schema:
                close = schema.suggest(name)
                err(f"unknown field '{name}' in signals", f"did you mean {close}?" if close else
                    "`kyc rules fields` lists every field")
                continue
            want = schema[name].type
            if value is not None and (isinstance(value, bool) != (want == "bool")
                                      or not isinstance(value, _TYPES[want])):
                err(f"signals {name} is {schema[name].type}, got {value!r}",
                    f"e.g. {name}: {schema[name].example!r}")


def case_signals(case: Case, rules: RuleSet, secret: bytes = b"rules-test") -> Signals:
    """The signals a case evaluates: computed from its input with an empty history, then its
    raw signals laid over them."""
    signals: Signals = {}
    if case.input is not None:
        body = dict(case.input)
        body.setdefault("account_id", DEFAULT_ACCOUNT)
        inp = INPUTS[case.subject].model_validate(body)
        # The bundled GeoIP data (pinned, so a case gives the same ip.* signals on every run).
        lookups = Lookups(rules.lists, EmptyHistory(), secret, open_geoip(None, None, None))
        signals, _identifiers = COLLECTORS[case.subject](inp, lookups, inp.occurred_at or DEFAULT_TIME)
    for family, values in (case.signals or {}).items():
        signals[family] = {**signals.get(family, {}), **values}
    return signals


def run_case(case: Case, rules: RuleSet) -> CaseResult:
    try:
        signals = case_signals(case, rules)
    except ValidationError as exc:
        problems = [f"input {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        return CaseResult(case, False, "-", [], 0, [], problems)
    except KeyError:
        return CaseResult(case, False, "-", [], 0, [], [f"no signal code for subject {case.subject}"])
    outcome = evaluate(rules, case.subject, signals)
    hits = sorted(r["rule"] for r in outcome.reasons)
    expect, problems = case.expect, []
    if outcome.decision != expect["decision"]:
        problems.append(f"decision {outcome.decision}, expected {expect['decision']}")
    if "hits" in expect and sorted(expect["hits"]) != hits:
        unexpected = sorted(set(hits) - set(expect["hits"]))
        absent = sorted(set(expect["hits"]) - set(hits))
        if unexpected:
            problems.append(f"also hit {', '.join(unexpected)}")
        if absent:
            problems.append(f"did not hit {', '.join(absent)}")
    if "score" in expect and outcome.score != expect["score"]:
        problems.append(f"score {outcome.score}, expected {expect['score']}")
    if "required_verifications" in expect and \
            sorted(outcome.required_verifications) != sorted(expect["required_verifications"]):
        problems.append(f"requires {outcome.required_verifications}, expected {expect['required_verifications']}")
    return CaseResult(case, not problems, outcome.decision, hits, outcome.score,
                      outcome.required_verifications, problems)


def unknown_rule_hits(cases: list[Case], rules: RuleSet) -> list[RuleError]:
    """An expected hit naming no rule of the subject is a typo that could never pass."""
    errors = []
    for case in cases:
        compiled = rules.subjects.get(case.subject)
        known = {r.id for r in compiled.rules} | {r.id for r in compiled.disabled} if compiled else set()
        for rule_id in case.expect.get("hits", []):
            if rule_id not in known:
                close = difflib_close(rule_id, known)
                errors.append(RuleError(case.file, case.line, None,
                                        f"case '{case.name}' expects a hit of unknown rule '{rule_id}'",
                                        f"did you mean {close}?" if close else f"rules of {case.subject}: "
                                        f"{', '.join(sorted(known)) or 'none'}"))
    return errors
