"""The rules engine: compile once, evaluate correctly, refuse what is not the language."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kyc.engine import RuleSet, RuleSetError
from kyc.signals import SCHEMA
from kyc.scoring.decide import evaluate

RULE = """\
- id: {id}
  description: test rule
  when: >-
    {when}
  score: {score}
  action: {action}
{extra}"""


def write_rules(tmp_path: Path, *rules: dict, lists: dict[str, str] | None = None) -> Path:
    text = ""
    for r in rules:
        extra = "".join(f"  {k}: {v}\n" for k, v in r.get("extra", {}).items())
        text += RULE.format(id=r["id"], when=r["when"], score=r.get("score", 10), action=r.get("action", "review"),
                            extra=extra)
    (tmp_path / "signup.yaml").write_text(text)
    (tmp_path / "lists").mkdir(exist_ok=True)
    for name, body in (lists or {}).items():
        (tmp_path / "lists" / f"{name}.txt").write_text(body)
    return tmp_path


def hits(ruleset: RuleSet, signals: dict) -> list[str]:
    return [r["rule"] for r in evaluate(ruleset, "signup", signals).reasons]


def test_shipped_rules_load():
    ruleset = RuleSet.load(Path(__file__).parents[2] / "rules", SCHEMA)
    assert len(ruleset.subjects["signup"].rules) >= 10
    assert ruleset.version.startswith("sha256:")


def test_score_sums_and_caps_and_decision_is_most_severe(tmp_path):
    ruleset = RuleSet.load(write_rules(
        tmp_path,
        {"id": "a", "when": "email.disposable", "score": 60, "action": "verify", "extra": {"requires": "[phone]"}},
        {"id": "b", "when": "device.headless", "score": 70, "action": "block"},
        {"id": "c", "when": "ip.private", "score": 5, "action": "review"},
    ), SCHEMA)
    outcome = evaluate(ruleset, "signup", {"email": {"disposable": True}, "device": {"headless": True}})
    assert outcome.score == 100
    assert outcome.decision == "block"
    assert [r["rule"] for r in outcome.reasons] == ["b", "a"]
    assert outcome.required_verifications == []          # block: no verification can lift it
    outcome = evaluate(ruleset, "signup", {"email": {"disposable": True}})
    assert (outcome.decision, outcome.score, outcome.required_verifications) == ("verify", 60, ["phone"])
    assert evaluate(ruleset, "signup", {}).decision == "allow"


def test_shadow_rules_are_recorded_but_never_act(tmp_path):
    ruleset = RuleSet.load(write_rules(
        tmp_path, {"id": "s", "when": "device.headless", "score": 90, "action": "block", "extra": {"mode": "shadow"}},
    ), SCHEMA)
    outcome = evaluate(ruleset, "signup", {"device": {"headless": True}})
    assert (outcome.decision, outcome.score) == ("allow", 0)
    assert outcome.reasons == [{"rule": "s", "score": 90, "action": "block", "description": "test rule",
                                "shadow": True}]


@pytest.mark.parametrize("when,signals,expected", [
    ("phone.region != ip.prefix", {"phone": {"region": "US"}}, False),          # missing never makes it true
    ("not email.disposable", {}, False),
    ("not email.disposable", {"email": {"disposable": False}}, True),
    ("email.local_length > 10", {"email": {}}, False),
    ("email.local_length + 5 > 10", {"email": {}}, False),                      # arithmetic on missing
    ("email.local_length + 5 > 10", {"email": {"local_length": 6}}, True),
    ("email.domain is missing", {}, True),
    ("email.domain is not missing", {"email": {"domain": "a.com"}}, True),
    ("email.domain in ['a.com', 'b.com']", {"email": {"domain": "b.com"}}, True),
    ("email.domain not in ['a.com']", {}, False),
    ("email.domain in lists.free", {"email": {"domain": "gmail.com"}}, True),
    ("endswith(email.domain, '.ru') or startswith(email.domain, 'mail')", {"email": {"domain": "x.ru"}}, True),
    ("matches(email.domain, '^[a-z]{3}[0-9]+[.]com$')", {"email": {"domain": "abc12.com"}}, True),
    ("len(email.domain) > 3 and lower(device.os) == 'linux'", {"email": {"domain": "abcd"},
                                                               "device": {"os": "Linux"}}, True),
    ("1 < email.local_digits <= 3", {"email": {"local_digits": 3}}, True),
    ("velocity.ip_1h / 0 > 1", {"velocity": {"ip_1h": 3}}, False),              # division by zero: no hit
])
def test_condition_semantics(tmp_path, when, signals, expected):
    ruleset = RuleSet.load(write_rules(tmp_path, {"id": "r", "when": when},
                                       lists={"free": "# free mail\nGMAIL.com\n"}), SCHEMA)
    assert (hits(ruleset, signals) == ["r"]) is expected


@pytest.mark.parametrize("when,message,suggestion", [
    ("emial.disposable", "unknown field 'emial.disposable'", "did you mean email.disposable?"),
    ("phone.region > 3", "orders text against number", None),
    ("email.domain in lists.nope", "unknown list 'nope'", None),
    ("startswth(email.domain, 'a')", "unknown function 'startswth'", "did you mean startswith?"),
    ("email.domain", "is text, not true/false", None),
    ("email.__class__", "names starting with _", None),
    ("__import__('os')", "unknown function '__import__'", None),
    ("email.domain.upper()", "cannot be called", None),
    ("email.local_length ** 99999999 > 1", "not allowed", "powers are not part of the rule language"),
    ("matches(email.domain, '(a)\\1$')", "is not accepted", None),
    ("1e309 > 1", "reads as infinity", None),
    ("velocity.ip_1h > 1e16", "number too large", None),
    ("-" * 1900 + "1 > 0", "nested more than", None),
    ("[x for x in email.domain]", "not part of the rule language", None),
    ("email.domain ==", "cannot read the condition", None),
])
def test_bad_conditions_name_file_line_rule_and_suggestion(tmp_path, when, message, suggestion):
    write_rules(tmp_path, {"id": "fine", "when": "email.disposable"}, {"id": "broken", "when": when})
    with pytest.raises(RuleSetError) as info:
        RuleSet.load(tmp_path, SCHEMA)
    [error] = info.value.errors
    assert error.file.endswith("signup.yaml")
    assert error.line == 10                      # the `when:` line of the second rule
    assert error.rule_id == "broken"
    assert message in error.message
    if suggestion:
        assert error.suggestion == suggestion


def test_rule_file_mistakes_are_all_reported(tmp_path):
    (tmp_path / "signup.yaml").write_text(
        "- id: a\n  description: x\n  when: email.disposable\n  score: 500\n  action: blok\n  colour: red\n"
        "- id: a\n  description: y\n  when: ''\n  score: 1\n  action: verify\n")
    with pytest.raises(RuleSetError) as info:
        RuleSet.load(tmp_path, SCHEMA)
    text = str(info.value)
    assert "signup.yaml:4: rule 'a': score must be a whole number from 0 to 100" in text
    assert "unknown action 'blok' (did you mean block?)" in text
    assert "unknown key 'colour'" in text
    assert "duplicate rule id (first defined on line 1)" in text
    assert "when is required and cannot be empty" in text
    assert "a verify rule must say which verifications it requires" in text


def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "signup.yaml").write_text("- id: a\n  when: [unclosed\n")
    with pytest.raises(RuleSetError) as info:
        RuleSet.load(tmp_path, SCHEMA)
    assert info.value.errors[0].line in (2, 3)
    assert "YAML" in info.value.errors[0].message


def test_version_changes_with_content_and_lists(tmp_path):
    write_rules(tmp_path, {"id": "r", "when": "email.disposable"}, lists={"free": "a.com\n"})
    v1 = RuleSet.load(tmp_path, SCHEMA).version
    (tmp_path / "lists" / "free.txt").write_text("b.com\n")
    v2 = RuleSet.load(tmp_path, SCHEMA).version
    assert v1 != v2 and v2 == RuleSet.load(tmp_path, SCHEMA).version


def test_lists_fold_case_unless_declared_and_hold_numbers(tmp_path):
    from kyc.engine.loader import load_list

    (tmp_path / "a.txt").write_text("Foo.COM  # comment\n\n# only comment\nbar.com\n")
    (tmp_path / "b.txt").write_text("# kyc: case-sensitive\nFoo\n")
    (tmp_path / "c.txt").write_text("16509  # Amazon\n15169\n")
    assert load_list(tmp_path / "a.txt") == {"foo.com", "bar.com"}
    assert load_list(tmp_path / "b.txt") == {"Foo"}
    assert load_list(tmp_path / "c.txt") == {16509, 15169}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=8),
                                st.sampled_from(["²", "٣", "16509", "# kyc: numbers", "# kyc: case-sensitive", "1.5"])),
                      max_size=6))
def test_any_list_file_loads_or_is_refused_as_a_rule_error(tmp_path, lines):
    """A list is ops' text: whatever it holds loads or is refused naming file and line (a
    superscript digit, a digit to str.isdigit but not to int(), crashed the loader)."""
    from kyc.engine.loader import load_list

    path = tmp_path / "any.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        values = load_list(path)
    except RuleSetError as exc:
        assert all(e.line >= 1 for e in exc.errors)
        return
    assert all(isinstance(v, (int, float, str)) for v in values)
