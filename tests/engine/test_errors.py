"""One test per kind of mistake in a rule file or list: each names file, line, rule and a suggestion."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kyc.engine import RuleSet, RuleSetError
from kyc.signals import SCHEMA


def write_rules(root: Path, signup: str, lists: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "signup.yaml").write_text(textwrap.dedent(signup).lstrip("\n"))
    for name, text in (lists or {}).items():
        (root / "lists").mkdir(exist_ok=True)
        (root / "lists" / f"{name}.txt").write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def one_error(root: Path):
    with pytest.raises(RuleSetError) as info:
        RuleSet.load(root, SCHEMA)
    errors = info.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


RULE = """\
- id: first
  description: a fine rule
  when: email.disposable
  score: 10
  action: review
"""


def rule(when: str, rule_id: str = "second", extra: str = "") -> str:
    return RULE + f"""
- id: {rule_id}
  description: the rule under test
  when: {when}
  score: 10
  action: review
{extra}"""


def test_unknown_field_suggests_the_close_one(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule("emial.disposable")))
    assert (error.file, error.line, error.rule_id) == ("rules/signup.yaml", 9, "second")
    assert error.message == "unknown field 'emial.disposable'"
    assert error.suggestion == "did you mean email.disposable?"
    assert str(error) == ("rules/signup.yaml:9: rule 'second': unknown field 'emial.disposable' "
                          "(did you mean email.disposable?)")


def test_type_clash_says_what_the_field_is(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule("phone.region > 3")))
    assert (error.file, error.line, error.rule_id) == ("rules/signup.yaml", 9, "second")
    assert "orders text against number" in error.message
    assert error.suggestion == 'phone.region is text: compare it with text, e.g. phone.region == "text"'


def test_equality_type_clash(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule('velocity.ip_1h == "5"')))
    assert error.line == 9 and "compares number with text" in error.message
    assert error.suggestion == "velocity.ip_1h is number: compare it with number, e.g. velocity.ip_1h == 3"


def test_unknown_list(tmp_path):
    root = write_rules(tmp_path / "rules", rule("email.domain in lists.free_email_domain"),
                       {"free_email_domains": "gmail.com\n"})
    error = one_error(root)
    assert (error.line, error.rule_id, error.message) == (9, "second", "unknown list 'free_email_domain'")
    assert error.suggestion == "did you mean lists.free_email_domains?"


def test_unknown_function(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule('startwith(email.domain, "x")')))
    assert (error.line, error.message, error.suggestion) == (9, "unknown function 'startwith'",
                                                             "did you mean startswith?")


def test_wrong_argument_type_to_a_function(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule('startswith(velocity.ip_1h, "1")')))
    assert error.line == 9 and "is number, expected text" in error.message
    assert error.suggestion.startswith("e.g. startswith(")


def test_unknown_action(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE.replace("action: review", "action: reveiw")))
    assert (error.file, error.line, error.rule_id) == ("rules/signup.yaml", 5, "first")
    assert (error.message, error.suggestion) == ("unknown action 'reveiw'", "did you mean review?")


def test_unknown_key(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE + "  tgas: [x]\n"))
    assert (error.line, error.rule_id, error.message, error.suggestion) == (
        6, "first", "unknown key 'tgas'", "did you mean tags?")


def test_duplicate_id(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule("email.free", rule_id="first")))
    assert (error.line, error.rule_id) == (7, "first")
    assert error.message == "duplicate rule id (first defined on line 1)"
    assert error.suggestion


def test_empty_condition(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule('""')))
    assert (error.line, error.rule_id) == (9, "second")
    assert error.message.startswith("empty condition") and error.suggestion.startswith("write a condition")


def test_missing_condition(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE.replace("  when: email.disposable\n", "")))
    assert (error.line, error.rule_id) == (1, "first") and error.message.startswith("empty condition")


def test_syntax_error_points_at_the_line_inside_a_block_condition(tmp_path):
    signup = RULE + """
- id: second
  description: multi-line condition
  when: |
    email.free
    and device.form_fill_ms = 100
  score: 10
  action: review
"""
    error = one_error(write_rules(tmp_path / "rules", signup))
    assert (error.line, error.rule_id) == (11, "second")
    assert error.message.startswith("cannot read the condition")
    assert error.suggestion == "compare with ==, not ="


def test_type_error_on_a_later_line_of_a_block_condition(tmp_path):
    signup = RULE + """
- id: second
  description: multi-line condition
  when: |
    email.free
    and emial.disposable
  score: 10
  action: review
"""
    error = one_error(write_rules(tmp_path / "rules", signup))
    assert (error.line, error.suggestion) == (11, "did you mean email.disposable?")


@pytest.mark.parametrize("style", ["|", ">-"])
@pytest.mark.parametrize("blank, later, line, suggestion", [
    (1, "and emial.disposable", 12, "did you mean email.disposable?"),
    (2, "and device.form_fill_ms = 100", 13, "compare with ==, not ="),
])
def test_blank_lines_opening_a_block_condition_keep_the_line_numbers(tmp_path, style, blank, later, line, suggestion):
    signup = RULE + f"""
- id: second
  description: multi-line condition after {blank} blank line(s)
  when: {style}
""" + "\n" * blank + f"""    email.free
    {later}
  score: 10
  action: review
"""
    error = one_error(write_rules(tmp_path / "rules", signup))
    if style == ">-":
        line -= 1          # folded text is one line: its errors name the condition's first line
    assert (error.line, error.rule_id, error.suggestion) == (line, "second", suggestion)
    assert signup.splitlines()[line - 1].strip() == (later if style == "|" else "email.free")


def test_condition_that_is_not_true_or_false(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule("velocity.ip_1h + 1")))
    assert error.line == 9 and "not true/false" in error.message and error.suggestion


def test_verify_without_requires(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE.replace("action: review", "action: verify")))
    assert (error.line, error.suggestion) == (5, "add requires: [phone]")


def test_unknown_verification(tmp_path):
    signup = RULE.replace("action: review", "action: verify\n  requires: [phnoe]")
    error = one_error(write_rules(tmp_path / "rules", signup))
    assert (error.line, error.message, error.suggestion) == (6, "unknown verification 'phnoe'", "did you mean phone?")


def test_bad_score(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE.replace("score: 10", "score: 150")))
    assert (error.line, error.rule_id, error.suggestion) == (4, "first", "e.g. score: 30")


def test_unknown_mode(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE + "  mode: shaddow\n"))
    assert (error.line, error.suggestion) == (6, "did you mean shadow?")


def test_bad_id(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE.replace("id: first", "id: First-Rule")))
    assert (error.line, error.suggestion) == (1, "did you mean first_rule?")


def test_disabled_rules_are_still_checked(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", rule("emial.free", extra="  enabled: false\n")))
    assert (error.line, error.rule_id, error.suggestion) == (9, "second", "did you mean email.free?")


def test_yaml_error_names_the_line(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE + "- id: [unclosed\n"))
    assert error.file == "rules/signup.yaml" and error.line == 7 and error.message.startswith("YAML")
    assert error.suggestion


def test_misspelt_rule_file_would_never_load(tmp_path):
    root = write_rules(tmp_path / "rules", RULE)
    (root / "singup.yaml").write_text(RULE)
    error = one_error(root)
    assert (error.file, error.suggestion) == ("rules/singup.yaml", "rename it to signup.yaml")


def test_list_with_unknown_directive(tmp_path):
    root = write_rules(tmp_path / "rules", RULE, {"asns": "# ASNs\n# kyc: number\n13335\n"})
    error = one_error(root)
    assert (error.file, error.line, error.suggestion) == ("rules/lists/asns.txt", 2, "did you mean 'kyc: numbers'?")


def test_number_list_with_text_value(tmp_path):
    root = write_rules(tmp_path / "rules", RULE, {"asns": "# kyc: numbers\n13335\nAS16509\n"})
    error = one_error(root)
    assert (error.file, error.line, error.message) == ("rules/lists/asns.txt", 3, "'AS16509' is not a number")
    assert error.suggestion


def test_list_file_name_must_be_usable_in_a_rule(tmp_path):
    root = write_rules(tmp_path / "rules", RULE, {"free-mail": "gmail.com\n"})
    error = one_error(root)
    assert (error.file, error.suggestion) == ("rules/lists/free-mail.txt", "rename it to free_mail.txt")


def test_list_of_the_wrong_type(tmp_path):
    root = write_rules(tmp_path / "rules", rule("velocity.ip_1h in lists.domains"), {"domains": "gmail.com\n"})
    error = one_error(root)
    assert error.line == 9 and "compares number with a list of text" in error.message
    assert "kyc: numbers" in error.suggestion


def test_every_mistake_in_every_file_is_reported_at_once(tmp_path):
    signup = rule("emial.free") + """
- id: third
  description: another
  when: phone.region > 3
  score: 10
  action: blok
"""
    with pytest.raises(RuleSetError) as info:
        RuleSet.load(write_rules(tmp_path / "rules", signup), SCHEMA)
    assert sorted((e.line, e.rule_id) for e in info.value.errors) == [(9, "second"), (15, "third"), (17, "third")]


@pytest.mark.parametrize("score", ["030", "1:30", "0_30", "-07"])
def test_a_number_yaml_would_read_in_base_8_or_60_is_refused(tmp_path, score):
    """YAML 1.1 reads `score: 030` as 24 and `1:30` as 90: ops meant 30 and 130, or a time."""
    text = RULE.replace("score: 10", f"score: {score}")
    error = one_error(write_rules(tmp_path / "rules", text))
    assert (error.file, error.line) == ("rules/signup.yaml", 4)
    assert "base 8 or 60" in error.message


def test_a_rule_may_share_its_keys_through_a_yaml_merge_key(tmp_path):
    """`<<: *base` gives a rule the keys of another; its own `id` and `when` are not duplicates."""
    text = """\
- &base
  id: first
  description: a fine rule
  when: email.disposable
  score: 10
  action: review
- <<: *base
  id: second
  when: email.free
"""
    rules = RuleSet.load(write_rules(tmp_path / "rules", text), SCHEMA).subjects["signup"].rules
    assert [(r.id, r.when, r.score, r.action) for r in rules] == [
        ("first", "email.disposable", 10, "review"), ("second", "email.free", 10, "review")]
    assert rules[1].line == 9                  # its own when:, not the base's


def test_an_item_that_is_not_a_rule_is_named_at_its_line(tmp_path):
    error = one_error(write_rules(tmp_path / "rules", RULE + "- just_a_string_rule\n"))
    assert (error.line, error.message) == (6, "each rule is a mapping (id:, when:, ...)")
