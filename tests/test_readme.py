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
