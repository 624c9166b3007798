"""Whatever loads, evaluates: a generated rule file either is refused at load with a RuleSetError
naming file and line, or evaluates on any signals without raising, in bounded time. And every
reload path (poll thread, POST /v1/ops/rules/reload, SIGHUP to `kyc serve`) refuses a bad file
with the same file:line error, records it, and keeps the running set."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kyc.engine import RuleSet, RuleSetError
from kyc.signals import SCHEMA
from tests.conftest import free_port, signup, wait_until
from tests.engine.test_reload import (  # noqa: F401 - fixtures used by name
    _get, _reachable, auth_for, copy_rules, live_rules, replace_file)

FIELDS = {t: [f.name for f in SCHEMA if f.type == t] for t in ("bool", "int", "float", "str")}
EVALUATION_BUDGET = 0.25          # seconds of this thread's CPU for one evaluation (a stall takes none); RE2 needs ~1 ms

# --- conditions -------------------------------------------------------------------------------

# Numbers as a rule author (or a fuzzer) writes them: ordinary, huge, past float range, odd forms.
number = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.sampled_from(["1e309", "-1e309", "1e-400", "9" * 400, "1_000", "0x7fffffff", "0o17", "1e15", "10**3",
                     "float('inf')", "1j"]),
)
numeric = st.one_of(st.sampled_from(FIELDS["int"] + FIELDS["float"]), number)
text_field = st.sampled_from(FIELDS["str"])
text_literal = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="'\"\\\n\r"), max_size=12) \
    .map(lambda s: f'"{s}"')
# Regexes from the pieces that make backtracking engines blow up, plus whatever else comes along.
regex = st.one_of(
    st.lists(st.sampled_from(["a", "b", "(", ")", "|", "*", "+", "?", "{2,}", "{1000}", "[a-z]", ".", "^", "$",
                              r"\d", r"\1", "(?=", "(?<!", r"\w", r"\s", "(?P<n>", ")*", "(a+)+"]), max_size=20)
    .map("".join),
    st.text(alphabet="ab()|*+?{}[]^$.,0123456789\\-", max_size=40),
    st.sampled_from(["^(a|a)*$", "(a+){10}b", "a*a*a*a*a*a*a*a*a*a*b", "(x+x+)+y", "(a|aa)+$"]),
)


def arithmetic(children):
    return st.tuples(children, st.sampled_from(["+", "-", "*", "/", "%"]), children).map(" ".join).map(
        lambda s: f"({s})")


numbers = st.recursive(numeric, lambda children: st.one_of(
    arithmetic(children),
    children.map(lambda s: f"-{s}"),
    children.map(lambda s: f"abs({s})"),
    text_field.map(lambda f: f"len({f})"),
), max_leaves=8)

texts = st.one_of(text_field, text_literal, text_field.map(lambda f: f"lower({f})"))

comparisons = st.one_of(
    st.tuples(numbers, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), numbers).map(" ".join),
    st.tuples(texts, st.sampled_from(["==", "!=", "<", ">"]), texts).map(" ".join),
    st.tuples(text_field, regex).map(lambda fr: f"matches({fr[0]}, {yaml_safe_quote(fr[1])})"),
    st.tuples(st.sampled_from(["startswith", "endswith", "contains"]), text_field, text_literal)
    .map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
    st.sampled_from(FIELDS["bool"]),
    st.sampled_from(FIELDS["int"] + FIELDS["str"]).map(lambda f: f"{f} is missing"),
    st.tuples(text_field, st.lists(text_literal, min_size=1, max_size=3))
    .map(lambda t: f"{t[0]} in [{', '.join(t[1])}]"),
)

conditions = st.recursive(comparisons, lambda children: st.one_of(
    st.tuples(children, st.sampled_from(["and", "or"]), children).map(" ".join),
    children.map(lambda s: f"not ({s})"),
    children.map(lambda s: f"({s})"),
), max_leaves=6)


def yaml_safe_quote(pattern: str) -> str:
    """A regex as a text literal of the rule language (text literals are raw)."""
    return '"' + pattern.replace('"', "") + '"'


# Nesting as deep as an attacker likes: 1,900 unary minus signs, `not not ...`, parentheses.
deep = st.tuples(st.sampled_from(["-", "not ", "(", "abs("]), st.integers(0, 2500)).map(
    lambda t: {"-": lambda n: "-" * n + "1 > 0", "not ": lambda n: "not " * n + "email.free",
               "(": lambda n: "(" * n + "email.free" + ")" * n,
               "abs(": lambda n: "abs(" * n + "1" + ")" * n + " > 0"}[t[0]](t[1]))

rule_files = st.lists(st.one_of(conditions, deep), min_size=1, max_size=4)

# --- signals ------------------------------------------------------------------------------------

anything_text = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec=None), max_size=40),
                          st.sampled_from(["a" * 600, "ab" * 300 + "x", "x" * 5000]))
VALUES = {
    "bool": st.booleans(),
    "int": st.one_of(st.integers(-10**6, 10**6), st.integers(-2**80, 2**80), st.just(0)),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "str": anything_text,
}


@st.composite
def signals(draw):
    families: dict[str, dict] = {}
    for f in SCHEMA:
        value = draw(st.one_of(st.none(), VALUES[f.type]))
        families.setdefault(f.family, {})[f.key] = value
    return families


def write(root: Path, whens: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rules = [{"id": f"r{i}", "description": "generated", "when": when, "score": 10, "action": "review"}
             for i, when in enumerate(whens)]
    (root / "signup.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True, width=math.inf))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(whens=rule_files, inputs=st.lists(signals(), min_size=1, max_size=3))
def test_a_rule_file_is_refused_at_load_or_always_evaluates_fast(tmp_path_factory, whens, inputs):
    root = tmp_path_factory.mktemp("rules")
    write(root, whens)
    try:
        rules = RuleSet.load(root, SCHEMA)
    except RuleSetError as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.file.endswith("signup.yaml") and error.line >= 1 and error.rule_id, str(error)
        return
    for families in inputs:
        started = time.thread_time()
        hits = rules.hits("signup", families)
        assert time.thread_time() - started < EVALUATION_BUDGET, whens
        assert {rule.id for rule in hits} <= {f"r{i}" for i in range(len(whens))}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                      st.sampled_from([b"[" * 5000, b"- " * 3000 + b"x", b"\xff\xfe- id: x", b"a: &a [*a]",
                                       b"- {id: r, description: d, score: 1, action: review, when: " + b"-" * 1900
                                       + b"1 > 0}"])))
def test_any_bytes_as_a_rule_file_load_or_refuse_with_file_and_line(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("rules")
    (root / "signup.yaml").write_bytes(data)
    try:
        RuleSet.load(root, SCHEMA)
    except RuleSetError as exc:
        assert all(e.file.endswith("signup.yaml") and e.line >= 1 for e in exc.errors), exc


# --- every reload path -------------------------------------------------------------------------

BAD_CONDITIONS = {
    "infinite-number": "1e309 > 1",
    "deep-nesting": "-" * 1900 + "1 > 0",
    "look-ahead": 'matches(email.domain, "(?=a)b")',
}


def bad_rule(when: str) -> str:
    return "\n- id: bad\n  description: breaks evaluation\n  score: 10\n  action: review\n  when: " \
        + yaml.safe_dump(when, width=math.inf).splitlines()[0] + "\n"


@pytest.mark.parametrize("kind", BAD_CONDITIONS)
def test_reload_endpoint_and_poll_refuse_with_file_and_line(kind, live_rules, auth_for):
    rt, root = live_rules
    client, auth = auth_for(rt)
    signup_file = root / "signup.yaml"
    original, before = signup_file.read_text(), rt.rules.version
    replace_file(signup_file, original + bad_rule(BAD_CONDITIONS[kind]))
    line = original.count("\n") + 6                       # the `when:` line of the appended rule

    response = client.post("/v1/ops/rules/reload", headers=auth)
    assert response.status_code == 422, response.json
    [error] = response.json["error"]["errors"]
    assert (error["file"], error["line"], error["rule"]) == ("rules/signup.yaml", line, "bad")
    assert client.get("/v1/ops/rules", headers=auth).json["last_error"]["errors"] == [error]
    assert client.post("/v1/signups", json=signup(), headers=auth).status_code == 200
    assert rt.rules.version == before

    # The poll thread: same refusal, same record, same running set.
    rt.rules_error = None
    rt._rules_fingerprint = ()
    rt.watch_rules()
    wait_until(lambda: rt.rules_error is not None)
    assert [e.as_dict() for e in rt.rules_error.errors] == [error] and rt.rules.version == before


def test_sighup_with_a_bad_rule_file_keeps_kyc_serve_running(tmp_path):
    """The real `kyc serve`: SIGHUP makes the master reload; a file that nests 1,900 unary minus
    signs used to raise RecursionError out of gunicorn's on_reload hook and exit the master."""
    root = copy_rules(tmp_path / "rules")
    port, key = free_port(), "kyc_test_sighup_key"
    env = dict(os.environ, KYC_DATABASE_URL=f"sqlite:///{tmp_path / 'kyc.db'}", KYC_RULES_DIR=str(root),
               KYC_DATA_DIR=str(tmp_path), KYC_DEV_KEY=key, KYC_RULES_POLL_SECONDS="0", KYC_LOG_LEVEL="WARNING")
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([sys.executable, "-m", "kyc.cli", "serve", "--port", str(port), "--workers", "2"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1/ops/rules"
    try:
        wait_until(lambda: _reachable(url, key))
        before = _get(url, key)["version"]
        signup_file = root / "signup.yaml"
        original = signup_file.read_text()
        replace_file(signup_file, original + bad_rule(BAD_CONDITIONS["deep-nesting"]))
        server.send_signal(signal.SIGHUP)
        # The master reloads, then forks fresh workers that inherit its record of the refusal.
        # Old workers retire once their requests end: wait until every answer comes from a new one.
        wait_until(lambda: _reachable(url, key) and all(_get(url, key)["last_error"] for _ in range(6)))
        status = _get(url, key)
        assert server.poll() is None, "the gunicorn master exited"
        assert status["version"] == before
        [error] = status["last_error"]["errors"]
        assert (error["file"], error["line"], error["rule"]) == ("rules/signup.yaml", original.count("\n") + 6, "bad")
        assert "nested more than" in error["message"]
        server.send_signal(signal.SIGHUP)                 # and again: still alive
        time.sleep(1.0)
        wait_until(lambda: _reachable(url, key))
        assert server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.seek(0)
        text = log.read()
    assert "RecursionError" not in text, text
