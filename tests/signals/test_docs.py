"""docs/signals.md is generated from the schema and committed up to date."""

from __future__ import annotations

from click.testing import CliRunner

from kyc.cli import main
from kyc.config import PROJECT_ROOT
from kyc.signals import SCHEMA
from kyc.signals.docs import render


def test_committed_doc_is_up_to_date():
    committed = (PROJECT_ROOT / "docs" / "signals.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/signals.md is stale: run `kyc signals doc`"


def test_every_field_is_documented_with_a_source():
    text = render()
    for field in SCHEMA:
        assert f"| `{field.name}` | {field.type} |" in text
    for family in ("email", "phone", "ip", "device"):
        assert all(f.source for f in SCHEMA if f.family == family), family


def test_check_flag_fails_on_a_stale_doc(tmp_path):
    stale = tmp_path / "signals.md"
    stale.write_text("# old\n")
    result = CliRunner().invoke(main, ["signals", "doc", "--check", "--out", str(stale)])
    assert result.exit_code != 0 and "out of date" in result.output
    assert CliRunner().invoke(main, ["signals", "doc", "--out", str(stale)]).exit_code == 0
    assert CliRunner().invoke(main, ["signals", "doc", "--check", "--out", str(stale)]).exit_code == 0
