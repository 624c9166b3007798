"""Configuration: embedded defaults, and the generated secret shared by concurrent starters."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from kyc.config import Config


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
