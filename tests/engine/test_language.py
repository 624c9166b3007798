"""The rule language: every construct, missing values, lists as declared, shadow mode, the sandbox."""

from __future__ import annotations

import time

import pytest

from kyc.engine import RuleSet, RuleSetError
from kyc.signals import SCHEMA
from kyc.scoring.decide import evaluate
from tests.engine.test_errors import write_rules


def ruleset(tmp_path, when: str, lists: dict[str, str] | None = None) -> RuleSet:
    signup = f"""
- id: under_test
  description: the condition under test
  when: '{when}'
  score: 10
  action: review
"""
    return RuleSet.load(write_rules(tmp_path / "rules", signup, lists), SCHEMA)


def fires(rules: RuleSet, **families) -> bool:
    return [r["rule"] for r in evaluate(rules, "signup", families).reasons] == ["under_test"]


@pytest.mark.parametrize("when, true_for, false_for", [
    ("email.disposable", {"email": {"disposable": True}}, {"email": {"disposable": False}}),
    ("not email.valid", {"email": {"valid": False}}, {"email": {"valid": True}}),
    ("velocity.ip_1h >= 5", {"velocity": {"ip_1h": 5}}, {"velocity": {"ip_1h": 4}}),
    ('phone.region != "US"', {"phone": {"region": "GB"}}, {"phone": {"region": "US"}}),
    ("1 < velocity.ip_1h < 4", {"velocity": {"ip_1h": 2}}, {"velocity": {"ip_1h": 4}}),
    ("email.free and email.plus_tag", {"email": {"free": True, "plus_tag": True}},
     {"email": {"free": True, "plus_tag": False}}),
    ("email.free or email.disposable", {"email": {"free": False, "disposable": True}},
     {"email": {"free": False, "disposable": False}}),
    ("email.local_digits * 2 > email.local_length", {"email": {"local_digits": 6, "local_length": 10}},
     {"email": {"local_digits": 4, "local_length": 10}}),
    ("velocity.ip_24h - velocity.ip_1h >= 10", {"velocity": {"ip_24h": 12, "ip_1h": 1}},
     {"velocity": {"ip_24h": 5, "ip_1h": 1}}),
    ("email.local_digits / email.local_length > 0.5", {"email": {"local_digits": 6, "local_length": 10}},
     {"email": {"local_digits": 5, "local_length": 10}}),
    ("velocity.ip_1h % 2 == 1", {"velocity": {"ip_1h": 3}}, {"velocity": {"ip_1h": 4}}),
    ('phone.region in ["NG", "GH"]', {"phone": {"region": "GH"}}, {"phone": {"region": "US"}}),
    ('phone.region not in ["US", "CA"]', {"phone": {"region": "GB"}}, {"phone": {"region": "CA"}}),
    ('startswith(email.domain, "mail.")', {"email": {"domain": "mail.ru"}}, {"email": {"domain": "gmail.com"}}),
    ('endswith(email.domain, ".ru")', {"email": {"domain": "mail.ru"}}, {"email": {"domain": "gmail.com"}}),
    ('contains(device.browser, "Headless")', {"device": {"browser": "HeadlessChrome"}},
     {"device": {"browser": "Chrome"}}),
    (r'matches(email.domain, "^[a-z]{4}[0-9]{3}\.com$")', {"email": {"domain": "abcd123.com"}},
     {"email": {"domain": "gmail.com"}}),
    ('lower(device.os) == "linux"', {"device": {"os": "Linux"}}, {"device": {"os": "Windows"}}),
    ("len(email.domain) > 20", {"email": {"domain": "a" * 21 + ".com"}}, {"email": {"domain": "gmail.com"}}),
    ("abs(velocity.ip_1h - 10) < 2", {"velocity": {"ip_1h": 11}}, {"velocity": {"ip_1h": 5}}),
    ("device.form_fill_ms is missing", {"device": {}}, {"device": {"form_fill_ms": 10}}),
    ("device.form_fill_ms is not missing", {"device": {"form_fill_ms": 10}}, {"device": {}}),
    ('device.class == "bot"', {"device": {"class": "bot"}}, {"device": {"class": "desktop"}}),
    ("-velocity.ip_1h < -3", {"velocity": {"ip_1h": 4}}, {"velocity": {"ip_1h": 3}}),
])
def test_each_construct(tmp_path, when, true_for, false_for):
    rules = ruleset(tmp_path, when)
    assert fires(rules, **true_for)
    assert not fires(rules, **false_for)


@pytest.mark.parametrize("when", [
    "email.disposable", "not email.valid", "velocity.ip_1h >= 5", "velocity.ip_1h < 5",
    "velocity.ip_1h != 3", "not (velocity.ip_1h > 3)", "not (velocity.ip_1h > 3 or email.free)",
    'phone.region not in ["US"]', 'not startswith(email.domain, "x")', "velocity.ip_24h - velocity.ip_1h >= 0",
    "len(email.domain) < 100", "email.local_digits / velocity.ip_1h > 0", "not (email.free and email.plus_tag)",
])
def test_a_missing_signal_never_makes_a_condition_true(tmp_path, when):
    rules = ruleset(tmp_path, when)
    assert not fires(rules)
    assert not fires(rules, email={}, velocity={}, phone={}, device={})


def test_division_by_zero_does_not_fire_and_does_not_break_other_rules(tmp_path):
    rules = ruleset(tmp_path, "email.local_digits / email.local_length > 0.5")
    assert not fires(rules, email={"local_digits": 3, "local_length": 0})


def test_text_lists_are_case_folded_unless_declared_case_sensitive(tmp_path):
    folded = ruleset(tmp_path / "a", "device.browser in lists.browsers", {"browsers": "HeadlessChrome\n"})
    assert fires(folded, device={"browser": "headlesschrome"})
    assert fires(folded, device={"browser": "HEADLESSCHROME"})
    sensitive = ruleset(tmp_path / "b", "device.browser in lists.browsers",
                        {"browsers": "# kyc: case-sensitive\nHeadlessChrome\n"})
    assert fires(sensitive, device={"browser": "HeadlessChrome"})
    assert not fires(sensitive, device={"browser": "headlesschrome"})


def test_list_comments_and_blank_lines(tmp_path):
    rules = ruleset(tmp_path, "email.domain in lists.domains",
                    {"domains": "# header\n\nmail.ru   # trailing comment\n  yandex.ru  \n"})
    assert rules.lists["domains"] == frozenset({"mail.ru", "yandex.ru"})
    assert fires(rules, email={"domain": "Yandex.RU"})
    assert not fires(rules, email={"domain": "header"})


def test_declared_number_lists(tmp_path):
    rules = ruleset(tmp_path, "velocity.ip_1h in lists.counts", {"counts": "# kyc: numbers\n3\n5\n7.5\n"})
    assert rules.lists["counts"] == frozenset({3, 5, 7.5})
    assert fires(rules, velocity={"ip_1h": 5})
    assert not fires(rules, velocity={"ip_1h": 4})


def test_undeclared_all_digit_list_serves_number_and_text_fields(tmp_path):
    lists = {"codes": "100\n200\n"}
    numbers = ruleset(tmp_path / "a", "velocity.ip_1h in lists.codes", lists)
    assert fires(numbers, velocity={"ip_1h": 200})
    text = ruleset(tmp_path / "b", "phone.region in lists.codes", lists)
    assert fires(text, phone={"region": "100"})


def test_declared_text_list_of_digits_stays_text(tmp_path):
    rules = ruleset(tmp_path, "phone.region in lists.codes", {"codes": "# kyc: text\n0044\n"})
    assert rules.lists["codes"] == frozenset({"0044"})
    assert fires(rules, phone={"region": "0044"})


def test_shadow_rules_are_recorded_and_never_act(tmp_path):
    signup = """
- id: acting
  description: acts
  when: email.free
  score: 20
  action: verify
  requires: [email]
- id: watching
  description: shadow
  when: email.free
  score: 70
  action: block
  mode: shadow
- id: switched_off
  description: disabled
  when: email.free
  score: 50
  action: block
  enabled: false
"""
    rules = RuleSet.load(write_rules(tmp_path / "rules", signup), SCHEMA)
    outcome = evaluate(rules, "signup", {"email": {"free": True}})
    assert (outcome.decision, outcome.score, outcome.required_verifications) == ("verify", 20, ["email"])
    assert [(r["rule"], r.get("shadow", False)) for r in outcome.reasons] == [("acting", False), ("watching", True)]
    assert rules.summary()["subjects"]["signup"] == {"active": 1, "shadow": 1, "disabled": 1}
    only_shadow = evaluate(rules, "signup", {"email": {"free": False}})
    assert (only_shadow.decision, only_shadow.score, only_shadow.reasons) == ("allow", 0, [])


def test_shadow_reason_is_stored_with_the_evaluation(client, auth):
    body = client.post("/v1/signups", headers=auth, json={
        "account_id": "acct_shadow", "email": "qwzx83741920xk@gmail.com", "ip": "73.15.1.1",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/131.0.0.0 Safari/537.36", "form_fill_ms": 5000}).json
    assert (body["decision"], body["score"]) == ("allow", 0)
    assert body["reasons"] == [{"rule": "random_local_part", "score": 10, "action": "allow",
                                "description": "Long local part full of digits, typical of generated addresses",
                                "shadow": True}]


# --- the sandbox: nothing reaches Python internals --------------------------------------------

@pytest.mark.parametrize("when, message", [
    ("email.__class__", "names starting with _"),
    ("email.domain.__class__", "is not a field"),
    ('__import__("os")', "unknown function '__import__'"),
    ('email.domain.upper() == "X"', "cannot be called"),
    ('email.domain.startswith("x")', "cannot be called"),
    ("().__class__.__bases__", "is not a field"),
    ('open("/etc/passwd")', "unknown function 'open'"),
    ('eval("1")', "unknown function 'eval'"),
    ("lambda: 1", "not part of the rule language"),
    ("[x for x in email.domain]", "not part of the rule language"),
    ('email.domain[0] == "a"', "not part of the rule language"),
    ("velocity.ip_1h ** 1000000 > 1", "is not allowed"),
    ("9 ** 9 ** 9 > 1", "is not allowed"),
    ("velocity.ip_1h > 10000000000000000000000", "number too large"),
    ("(velocity.ip_1h := 1) > 0", "cannot read the condition"),
    ('f"{email.domain}" == "x"', "not part of the rule language"),
    ("velocity.ip_1h << 64 > 0", "is not allowed"),
    ("email.domain * 100000000 == \"x\"", "arithmetic needs numbers"),
    ("__builtins__", "unknown name '__builtins__'"),
    ("lists.__class__", "unknown list '__class__'"),
])
def test_sandbox_refuses_at_load(tmp_path, when, message):
    with pytest.raises(RuleSetError) as info:
        ruleset(tmp_path, when.replace("'", "''"))
    (error,) = info.value.errors
    assert message in error.message, str(error)
    assert error.line == 3 and error.rule_id == "under_test" and error.suggestion


# Python's re takes exponential time on these; RE2 takes linear time, so they load and run.
# Timed by this thread's CPU, not the wall clock: a machine that stalls (CI's once did, for a
# minute and a half) takes no CPU from the test, and a blow-up takes minutes of it.
CATASTROPHIC_FOR_BACKTRACKING = ["(a+)+$", "(a*)*b", "(a|aa)+(b+)+c*(x+)+", "(.*a){1,}x", r"(\w+\s?)+$",
                                 "^(a|a)*$", "(a+){10}b", "a*a*a*a*a*a*a*a*a*a*b"]


@pytest.mark.parametrize("pattern", CATASTROPHIC_FOR_BACKTRACKING)
def test_backtracking_blow_ups_run_in_linear_time(tmp_path, pattern):
    rules = ruleset(tmp_path, f'matches(email.domain, "{pattern}")')
    started = time.thread_time()
    for hostile in ("a" * 600, "a" * 511 + "!", "ab" * 300 + "x"):
        fires(rules, email={"domain": hostile})
    assert time.thread_time() - started < 0.5          # Python's re: minutes to forever


@pytest.mark.parametrize("pattern, reason", [
    (r"(a)\1", "invalid escape sequence"),                 # back-reference
    ("(?=a)b", "invalid perl operator"),                     # look-ahead
    ("(?<!a)b", "invalid perl operator"),                    # look-behind
    ("(a{100}){100}", "invalid repetition size"),            # 10,000 states
    ("([a-z", "missing ]"),
])
def test_what_re2_cannot_compile_is_refused_at_load(tmp_path, pattern, reason):
    with pytest.raises(RuleSetError) as info:
        ruleset(tmp_path, f'matches(email.domain, "{pattern}")')
    (error,) = info.value.errors
    assert "is not accepted" in error.message and reason in error.message, str(error)
    assert error.line == 3 and error.rule_id == "under_test" and "RE2" in error.suggestion


def test_overlong_regexes_are_refused(tmp_path):
    with pytest.raises(RuleSetError, match="regex longer than"):
        ruleset(tmp_path / "b", f'matches(email.domain, "{"a" * 300}")')


def test_accepted_regex_runs_in_bounded_time_on_hostile_input(tmp_path):
    rules = ruleset(tmp_path, 'matches(email.domain, "^(a|b)+c$")')
    started = time.thread_time()
    assert not fires(rules, email={"domain": "ab" * 50_000})
    assert time.thread_time() - started < 1.0


def test_generated_function_has_no_builtins(tmp_path):
    rules = ruleset(tmp_path, "email.free")
    assert rules.subjects["signup"].match.__globals__["__builtins__"] == {}


def test_an_or_branch_still_holds_when_the_other_reads_a_missing_field(tmp_path):
    rules = ruleset(tmp_path, "velocity.ip_24h + velocity.ip_1h > 6 or email.free")
    assert fires(rules, email={"free": True}, velocity={"ip_24h": 3})
    assert not fires(rules, email={"free": False}, velocity={"ip_24h": 30})
    assert fires(rules, email={"free": False}, velocity={"ip_24h": 30, "ip_1h": 1})


def test_backslashes_in_text_are_kept_for_regexes(tmp_path):
    rules = ruleset(tmp_path, r'matches(email.domain, "^\d+\.com$")')
    assert fires(rules, email={"domain": "123.com"})
    assert not fires(rules, email={"domain": "123xcom"})


def test_every_example_in_the_docs_and_the_function_list_compiles():
    import re

    from kyc.config import PROJECT_ROOT
    from kyc.engine.compiler import FUNCTIONS, CompileUnit, compile_condition

    text = (PROJECT_ROOT / "docs" / "rules.md").read_text()
    table = text[text.index("| Construct | Example |"):text.index("Text goes in double quotes")]
    examples = [m.group(1) for m in re.finditer(r"^\| [^|]+ \| `(.+)` \|$", table, re.M)]
    examples += [fn.doc for fn in FUNCTIONS.values()]
    assert len(examples) > 25
    lists = {"free_email_domains": frozenset({"gmail.com"})}
    for example in examples:
        compile_condition(CompileUnit(SCHEMA, lists), example)
