"""The README's first screen is true: its curl example gives the documented answer."""

from __future__ import annotations

import json
import re

from kyc import create_app
from kyc.config import DEV_KEY, PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def test_readme_curl_gives_the_documented_answer(database_url, make_config):
    command = re.search(r"```sh\n(curl .*?)\n```", README, re.S).group(1)
    body = json.loads(re.search(r"-d '(.*?)'", command, re.S).group(1))
    documented = json.loads(re.search(r"answers \(signals abridged\):\n\n```json\n(.*?)\n```", README, re.S).group(1))
    assert "Bearer kyc_dev_local_only" in command and DEV_KEY == "kyc_dev_local_only"

    app = create_app(make_config(database_url, dev_key=DEV_KEY))
    response = app.test_client().post("/v1/signups", json=body, headers={"Authorization": f"Bearer {DEV_KEY}"})
    assert response.status_code == 200
    answer = response.json
    for key in ("account_id", "decision", "score", "reasons", "required_verifications"):
        assert answer[key] == documented[key], key
    for key, value in documented["signals"]["email"].items():
        if key != "...":
            assert answer["signals"]["email"][key] == value


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    commands = re.search(r"```sh\n(.*?)\n```", README, re.S).group(1)
    lines = [line for line in commands.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2 and lines[0].endswith("kyc serve")
    ci = (PROJECT_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == lines[1]


def test_every_setting_is_in_the_readme_table():
    from kyc.config import SETTINGS

    for setting in SETTINGS:
        assert f"| `{setting.env}` |" in README, setting.env


def _production_commands() -> list[str]:
    section = README.split("## Run in production", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)\n```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def test_run_in_production_commands_work(tmp_path, monkeypatch):
    """Every line of the production block: its settings exist, its kyc commands run (the
    long-running ones parse: serve and worker), its URLs answer 200."""
    import shlex

    from click.testing import CliRunner

    from kyc.cli import main
    from kyc.config import SETTINGS
    from tests.conftest import RULES_DIR, pg_schema_url

    commands = _production_commands()
    assert any(c.startswith("kyc serve") for c in commands) and any(c.startswith("kyc worker") for c in commands)
    url = pg_schema_url("kyc_readme")
    env = {"KYC_DATABASE_URL": url, "KYC_SECRET_KEY": "readme", "KYC_DATA_DIR": str(tmp_path), "KYC_REDIS_URL": "",
           "KYC_BIN_TABLE": "", "KYC_GEOIP_CITY_DB": ""}
    known = {s.env for s in SETTINGS}
    runner = CliRunner()
    urls = []
    for command in commands:
        words = shlex.split(command.replace("/srv/kyc/rules", str(RULES_DIR)), posix=True)
        if words[0] == "export":
            assert words[1].split("=", 1)[0] in known, command
        elif words[0] == "kyc" and words[1] in ("serve", "worker"):
            sub = main.get_command(None, words[1])
            sub.make_context(words[1], words[2:])        # options exist and parse
        elif words[0] == "kyc":
            result = runner.invoke(main, words[1:], env=env, catch_exceptions=False)
            assert result.exit_code == 0, (command, result.output)
            if words[1:3] == ["keys", "create"]:
                assert result.output.strip().startswith("kyc_")
        elif words[0] == "curl":
            urls.append(words[-1].removeprefix("http://127.0.0.1:8000"))
        else:
            raise AssertionError(f"unknown kind of command: {command}")
    from kyc import create_app
    from tests.conftest import TEST_SECRET
    from kyc.config import Config

    app = create_app(Config.from_env({}, database_url=url, rules_dir=RULES_DIR, data_dir=tmp_path,
                                     secret_key=TEST_SECRET))
    client = app.test_client()
    assert urls and all(client.get(u).status_code == 200 for u in urls), urls


def test_the_metrics_table_lists_every_family():
    from kyc import metrics

    for name in metrics._NAMES:
        family = getattr(metrics, name)._name
        assert f"`{family}" in README, family
    for family in ("kyc_rescore_batches_pending", "kyc_queue_depth", "kyc_webhook_outbox_backlog", "kyc_rules_info"):
        assert f"`{family}" in README, family
