"""`kyc rules check | test | fields` as ops staff run them."""

from __future__ import annotations

import shutil
import textwrap

import yaml
from click.testing import CliRunner

from kyc.cli import main
from kyc.signals import SCHEMA
from tests.conftest import RULES_DIR


def run(*args: str):
    return CliRunner().invoke(main, ["rules", *args])


def rules_copy(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES_DIR, root)
    return root


def test_check_passes_on_the_shipped_rules_and_says_what_is_there():
    result = run("check", "--rules", str(RULES_DIR))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok  sha256:")
    shipped = yaml.safe_load((RULES_DIR / "signup.yaml").read_text())
    shadow = sum(rule.get("mode") == "shadow" for rule in shipped)
    assert f"signup.yaml              {len(shipped) - shadow} active, {shadow} shadow, 0 disabled" in result.stdout
    assert "free_email_domains.txt" in result.stdout and "case-folded" in result.stdout


def test_check_fails_with_file_line_rule_and_suggestion(tmp_path):
    root = rules_copy(tmp_path)
    text = (root / "signup.yaml").read_text().replace("when: email.disposable", "when: emial.disposable")
    (root / "signup.yaml").write_text(text)
    result = run("check", "--rules", str(root))
    assert result.exit_code == 1
    line = text.splitlines().index("  when: emial.disposable") + 1
    assert (f"rules/signup.yaml:{line}: rule 'disposable_email': unknown field 'emial.disposable' "
            "(did you mean email.disposable?)") in result.stderr


def test_shipped_rule_tests_pass():
    result = run("test", "--rules", str(RULES_DIR))
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout
    assert " 0 failed" in result.stdout


CASES = """
- name: disposable mailbox verifies
  subject: signup
  input: {account_id: t1, email: x@mailinator.com, ip: 73.15.1.1, form_fill_ms: 5000,
          user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"}
  expect: {decision: verify, hits: [disposable_email]}
- name: wrong expectation
  subject: signup
  signals: {device: {headless: true}}
  expect: {decision: review, hits: [bot_user_agent]}
"""


def test_test_prints_a_table_and_fails_on_a_failing_case(tmp_path):
    root = rules_copy(tmp_path)
    (root / "tests" / "extra.yaml").write_text(textwrap.dedent(CASES))
    result = run("test", "--rules", str(root))
    assert result.exit_code == 1
    assert "PASS disposable mailbox verifies" in result.stdout
    fail = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and "wrong expectation" in fail[0] and "rules/tests/extra.yaml:7" in fail[0]
    assert "-> decision block, expected review" in result.stdout
    assert "-> also hit automation_user_agent" in result.stdout
    assert "-> did not hit bot_user_agent" in result.stdout
    assert "1 failed" in result.stdout


def test_case_mistakes_are_rule_errors(tmp_path):
    root = rules_copy(tmp_path)
    (root / "tests" / "bad.yaml").write_text(textwrap.dedent("""
        - name: typo in a key
          subject: signup
          signals: {emial: {disposable: true}, device: {headless: "yes"}}
          expcet: {decision: block}
    """))
    result = run("test", "--rules", str(root))
    assert result.exit_code == 1
    assert "rules/tests/bad.yaml:5: case 'typo in a key': unknown key 'expcet' in a case (did you mean expect?)" \
        in result.stderr
    assert "unknown field 'emial.disposable' in signals (did you mean email.disposable?)" in result.stderr
    assert "signals device.headless is bool, got 'yes'" in result.stderr
    assert "a case needs expect:" in result.stderr


def test_expected_hit_of_unknown_rule_is_refused_by_check_and_test(tmp_path):
    root = rules_copy(tmp_path)
    (root / "tests" / "bad.yaml").write_text("- name: x\n  subject: signup\n  signals: {}\n"
                                             "  expect: {decision: allow, hits: [disposable_emial]}\n")
    for command in ("check", "test"):
        result = run(command, "--rules", str(root))
        assert result.exit_code == 1
        assert "expects a hit of unknown rule 'disposable_emial' (did you mean disposable_email?)" in result.stderr


def test_fields_prints_every_schema_field_and_function():
    result = run("fields")
    assert result.exit_code == 0
    for field in SCHEMA:
        assert field.name in result.stdout
    assert "startswith(email.local" in result.stdout or "startswith(" in result.stdout
    markdown = run("fields", "--format", "markdown").stdout
    assert "| `email.disposable` | bool |" in markdown


def test_check_finds_mistakes_in_a_case_s_input_and_expected_verifications(tmp_path):
    """`kyc rules check` checks the cases too: a typo in an input (a request body the case
    scores) or in an expected verification was only found by `test`, or never."""
    root = rules_copy(tmp_path)
    (root / "tests" / "bad.yaml").write_text(textwrap.dedent("""
        - name: typo in the input
          subject: signup
          input: {emial: x7k2q9@mailinator.com, ip: 73.15.1.1}
          expect: {decision: verify}
        - name: typo in a verification
          subject: signup
          input: {email: x7k2q9@mailinator.com, ip: 73.15.1.1}
          expect: {decision: verify, required_verifications: [phnoe]}
    """))
    result = run("check", "--rules", str(root))
    assert result.exit_code == 1, result.output
    assert ("rules/tests/bad.yaml:4: case 'typo in the input': input emial: unknown field; free-form data goes in "
            "metadata") in result.stderr
    assert "rules/tests/bad.yaml:4: case 'typo in the input': input email: required" in result.stderr
    assert ("case 'typo in a verification': unknown verification 'phnoe' in expect.required_verifications "
            "(did you mean phone?)") in result.stderr
