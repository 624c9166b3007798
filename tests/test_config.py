"""Configuration: embedded defaults, and the generated secret shared by concurrent starters."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concurrent.futures import ProcessPoolExecutor

from kyc.config import Config, SettingError


def _secret(data_dir: str) -> bytes:
    return Config.from_env({"KYC_DATA_DIR": data_dir}).secret_key


def test_embedded_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config.from_env({})
    assert config.database_url == f"sqlite:///{tmp_path / 'var' / 'kyc.db'}"
    assert config.rules_dir.name == "rules" and (config.rules_dir / "signup.yaml").exists()
    assert config.redis_url == "" and config.max_body_bytes == 65536
    assert (tmp_path / "var" / "secret.key").stat().st_mode & 0o077 == 0       # private to its owner


def test_the_embedded_database_lives_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "data"
    config = Config.from_env({"KYC_DATA_DIR": str(elsewhere)})
    assert config.database_url == f"sqlite:///{elsewhere / 'kyc.db'}"
    assert not (tmp_path / "var").exists()
    given = Config.from_env({"KYC_DATA_DIR": str(elsewhere), "KYC_DATABASE_URL": "sqlite:///other.db"})
    assert given.database_url == f"sqlite:///{tmp_path / 'other.db'}"


def test_generated_secret_is_the_same_for_every_process(tmp_path):
    with ProcessPoolExecutor(4) as pool:
        secrets = set(pool.map(_secret, [str(tmp_path)] * 8))
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    assert not list(tmp_path.glob(".secret.*"))


def test_explicit_secret_wins(tmp_path):
    assert Config.from_env({"KYC_DATA_DIR": str(tmp_path), "KYC_SECRET_KEY": "abc"}).secret_key == b"abc"
    assert not (tmp_path / "secret.key").exists()


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["KYC_RESCORE_BATCH_SIZE", "KYC_CODE_MAX_ATTEMPTS", "KYC_DORMANT_DAYS",
                             "KYC_MAX_BODY_BYTES", "KYC_RULES_POLL_SECONDS", "KYC_RESCORE_DAILY_AT",
                             "KYC_SENDER_TIMEOUT_SECONDS", "KYC_GRAPH_SUPER_NODE_STRONG"]),
       value=st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6).map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(str)))
def test_a_setting_is_usable_or_refused_naming_it(tmp_path_factory, name, value):
    """Any text in a numeric setting gives a config within its range or a SettingError naming
    the setting: never another exception, never a batch of no accounts or a negative wait."""
    data_dir = tmp_path_factory.getbasetemp()
    try:
        config = Config.from_env({"KYC_DATA_DIR": str(data_dir), "KYC_SECRET_KEY": "k", name: value})
    except SettingError as exc:
        assert name in str(exc)
        return
    assert config.rescore_batch_size >= 1 and config.code_max_attempts >= 1 and config.max_body_bytes >= 1
    assert config.graph_super_node_strong >= 1
    assert config.dormant_days >= 0 and config.rules_poll_seconds >= 0 and config.sender_timeout_seconds >= 0
    assert math.isfinite(config.rules_poll_seconds) and math.isfinite(config.sender_timeout_seconds)


def test_database_and_redis_urls_are_ones_kyc_runs_on(tmp_path):
    def url(**env) -> str:
        return Config.from_env({"KYC_DATA_DIR": str(tmp_path), "KYC_SECRET_KEY": "k", **env}).database_url

    assert url(KYC_DATABASE_URL="postgres://kyc:pw@db:5432/kyc") == "postgresql+psycopg://kyc:pw@db:5432/kyc"
    assert url(KYC_DATABASE_URL="postgresql://kyc@db/kyc") == "postgresql+psycopg://kyc@db/kyc"
    for bad, says in [("garbage", "is not a database URL"), ("mysql://u:secret@db/kyc", "names mysql://"),
                      ("postgresql+psycopg2://u@db/kyc", "names postgresql+psycopg2://")]:
        with pytest.raises(SettingError, match="KYC_DATABASE_URL") as refused:
            url(KYC_DATABASE_URL=bad)
        assert says in str(refused.value) and "secret" not in str(refused.value)
    with pytest.raises(SettingError, match="KYC_REDIS_URL must start redis://"):
        url(KYC_REDIS_URL="http://127.0.0.1:6379")
