"""The `kyc` command, run in-process with click's runner against a real database."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from kyc import create_app
from kyc.cli import main
from tests.conftest import RULES_DIR, TEST_SECRET, signup


@pytest.fixture
def env(database_url, tmp_path) -> dict[str, str]:
    return {"KYC_DATABASE_URL": database_url, "KYC_DATA_DIR": str(tmp_path), "KYC_RULES_DIR": str(RULES_DIR),
            "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_DEV_KEY": ""}


def run(env, *args) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_keys_create_prints_a_working_key_once_and_revoke_kills_it(env, make_config, database_url):
    created = run(env, "keys", "create", "--name", "signup-flow", "--role", "signup")
    assert created.exit_code == 0
    key = created.stdout.strip()
    assert key.startswith("kyc_") and len(key) > 40
    listing = run(env, "keys", "list").stdout
    assert "signup-flow" in listing and key not in listing          # only a prefix is ever shown again

    client = create_app(make_config(database_url)).test_client()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post("/v1/signups", json=signup(), headers=headers).status_code == 200

    key_id = listing.split()[0]
    assert run(env, "keys", "revoke", key_id).exit_code == 0
    assert client.post("/v1/signups", json=signup(), headers=headers).status_code == 401


def test_db_upgrade_is_idempotent(env):
    result = run(env, "db", "upgrade")
    assert result.exit_code == 0 and "database at head" in result.stdout
    assert run(env, "db", "upgrade").exit_code == 0


def test_rules_check_ok_and_failing(env, tmp_path):
    ok = run(env, "rules", "check")
    assert ok.exit_code == 0 and ok.stdout.startswith("ok  sha256:")
    bad = tmp_path / "bad_rules"
    bad.mkdir()
    (bad / "signup.yaml").write_text("- id: r\n  description: d\n  when: emial.disposable\n  score: 1\n"
                                     "  action: review\n")
    failed = CliRunner().invoke(main, ["rules", "check", "--rules", str(bad)], env=env)
    assert failed.exit_code == 1
    assert "signup.yaml:3: rule 'r': unknown field 'emial.disposable' (did you mean email.disposable?)" \
        in failed.stderr


def test_serve_on_embedded_defaults_migrates_prints_the_dev_key_and_scores(tmp_path):
    """The README's first command, as a real process: fresh directory, SQLite default."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_")}
    proc = subprocess.Popen([sys.executable, "-m", "kyc.cli", "serve", "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    answer, tries = None, []
    try:
        body = json.dumps(signup()).encode()
        started = time.monotonic()
        while answer is None and time.monotonic() < started + 30 and proc.poll() is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/signups", data=body, method="POST",
                    headers={"Content-Type": "application/json", "Authorization": "Bearer kyc_dev_local_only"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.load(response)
            except OSError as error:
                tries.append(f"{time.monotonic() - started:.1f}s {error!r}")
                time.sleep(0.2)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    # What the server printed and what each try got say why, should it ever not answer.
    assert answer is not None, "no answer; tries: " + "; ".join(tries[-5:]) + "\nserver output:\n" + output
    assert answer["account_id"] == "acct_1" and answer["evaluation_id"].startswith("ev_")
    assert (tmp_path / "var" / "kyc.db").exists() and (tmp_path / "var" / "secret.key").exists()
    assert "development API key (embedded default only): kyc_dev_local_only" in output
    assert "jane" not in output.lower() and "73.15.1.1" not in output      # PII never logged in full


def _mended(result: Result) -> str:
    """What a command that stopped on something an operator mends printed: one line, no traceback."""
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize("name,value,said", [
    ("KYC_MAX_BODY_BYTES", "64k", "KYC_MAX_BODY_BYTES must be a whole number, not '64k'"),
    ("KYC_GRAPH_RESCORE_SIZES", "5,x", "KYC_GRAPH_RESCORE_SIZES must be a whole number, not 'x'"),
    ("KYC_SENDER_TIMEOUT_SECONDS", "soon", "KYC_SENDER_TIMEOUT_SECONDS must be a number, not 'soon'"),
    ("KYC_PHONE_UNIQUE", "maybe", "KYC_PHONE_UNIQUE must be true or false"),
    ("KYC_RESCORE_DAILY_AT", "25:00", "KYC_RESCORE_DAILY_AT must be HH:MM"),
    ("KYC_WEBHOOK_SECRETS", "idv", "KYC_WEBHOOK_SECRETS entries are provider:secret"),
    ("KYC_SENDER", "smtp", "KYC_SENDER must be one of outbox, http, not 'smtp'"),
])
def test_a_setting_kyc_cannot_use_is_named_without_a_traceback(env, name, value, said):
    result = CliRunner().invoke(main, ["keys", "list"], env={**env, name: value})
    assert said in _mended(result)


def test_a_database_not_migrated_or_away_is_said_in_one_line(tmp_path):
    from tests.conftest import pg_schema_url

    env = {"KYC_DATA_DIR": str(tmp_path), "KYC_RULES_DIR": str(RULES_DIR), "KYC_SECRET_KEY": TEST_SECRET.decode(),
           "KYC_DEV_KEY": ""}
    empty = pg_schema_url("kyc_cli_unmigrated")
    result = CliRunner().invoke(main, ["keys", "list"], env={**env, "KYC_DATABASE_URL": empty})
    assert "the database is not migrated, this kyc needs" in _mended(result) and "kyc db upgrade" in result.output
    away = "postgresql+psycopg://postgres@127.0.0.1:1/kyc?connect_timeout=2"
    result = CliRunner().invoke(main, ["keys", "list"], env={**env, "KYC_DATABASE_URL": away})
    assert "the database did not answer (postgresql+psycopg://postgres@127.0.0.1:1/kyc" in _mended(result)


def test_arguments_a_command_cannot_use_are_refused_before_it_runs(env):
    """Each refused as click refuses a bad option (exit 2, naming it), not by a traceback or a
    quiet empty answer."""
    for args, said in [(["geoip", "lookup", "not-an-ip"], "not an IPv4 or IPv6 address"),
                       (["outbox", "--limit", "-1"], "--limit"),
                       (["simulate", "--days", "0"], "--days"),
                       (["simulate", "--usage", "--usage-sizes", "1,2"], "five whole numbers"),
                       (["simulate", "--usage", "--usage-farm-wake-days", "4"], "--usage-farm-wake-days")]:
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output, (args, result.output)


def test_rescore_of_an_unknown_cluster_or_with_redis_away_says_so(env, make_config, database_url):
    key = run(env, "keys", "create", "--name", "signup-flow", "--role", "signup").stdout.strip()
    client = create_app(make_config(database_url)).test_client()
    assert client.post("/v1/signups", json=signup(), headers={"Authorization": f"Bearer {key}"}).status_code == 200
    unknown = CliRunner().invoke(main, ["rescore", "--cluster", "cl_nosuch"], env=env)
    assert "no cluster 'cl_nosuch'" in _mended(unknown)
    assert "no rescore run 'rr_nosuch'" in _mended(CliRunner().invoke(main, ["rescore", "--resume", "rr_nosuch"], env=env))
    away = run({**env, "KYC_REDIS_URL": "redis://127.0.0.1:1/0"}, "rescore", "--all")
    assert away.exit_code == 0 and "recorded; Redis did not answer" in away.stdout
    assert "enqueued on" not in away.stdout


def test_db_upgrade_to_an_older_revision_says_where_the_database_is(env):
    assert "database at head" in run(env, "db", "upgrade").stdout
    older = run(env, "db", "upgrade", "--revision", "0012").stdout
    from alembic.script import ScriptDirectory

    from kyc.runtime import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert f"database at {head} (past 0012: upgrade never goes back)" in older


def test_an_unknown_revision_or_redis_db_ends_in_one_line(env):
    unknown = run(env, "db", "upgrade", "--revision", "9999")
    assert unknown.exit_code == 1 and "migrations: Can't locate revision identified by '9999'" in unknown.stderr
    from tests.conftest import REDIS_URL, redis_connection

    redis_connection()                  # the test Redis answers (else: skipped, or failed in CI)
    beyond = REDIS_URL.rsplit("/", 1)[0] + "/99999"
    no_such_db = CliRunner().invoke(main, ["jobs"], env={**env, "KYC_REDIS_URL": beyond})
    assert no_such_db.exit_code == 1 and "DB index is out of range" in no_such_db.stderr
    assert no_such_db.exception is None or isinstance(no_such_db.exception, SystemExit)


def test_simulate_names_the_rules_it_scores_with(env, tmp_path):
    """KYC_RULES_DIR's default is read from the working directory when it has a rules/ of its own,
    so a copy of the code run from another checkout scored with that checkout's rules, unsaid."""
    from kyc.engine.loader import rules_version

    result = run({**env, "KYC_DATABASE_URL": ""}, "simulate", "--legit", "20", "--farms", "1", "--farm-size", "5",
                 "--days", "0.1", "--warmup-days", "0")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"rules: {RULES_DIR} ({rules_version(RULES_DIR)})"
