"""The `kyc` command."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import click
from sqlalchemy import select

from kyc.config import DEV_KEY, Config
from kyc.engine import RuleSet, RuleSetError


def _config(**overrides) -> Config:
    return Config.from_env(**overrides)


def _runtime(migrate: bool | None = None):
    from kyc.runtime import Runtime

    try:
        return Runtime.start(_config(), migrate=migrate)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)


def _rule_errors(exc: RuleSetError) -> None:
    click.echo(f"rules: {len(exc.errors)} error(s)", err=True)
    for error in exc.errors:
        click.echo(f"  {error}", err=True)


@click.group()
def main() -> None:
    """kyc: account-registration fraud scoring and identity verification."""


# --- serve ------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP service (gunicorn). On the embedded SQLite default, migrates and prints a dev key."""
    import os

    from gunicorn.app.base import BaseApplication

    from kyc import create_app

    config = _config()
    if config.is_sqlite and not config.dev_key and "KYC_DEV_KEY" not in os.environ:
        config = _config(dev_key=DEV_KEY)
        click.echo(f"development API key (embedded default only): {DEV_KEY}")
    try:
        app = create_app(config)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)
    runtime = app.extensions["kyc"]
    click.echo(f"kyc on http://{host}:{port}  database={_safe_url(config.database_url)}  "
               f"rules={runtime.rules.version[:19]}")

    class _Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("accesslog", "-")
            self.cfg.set("post_fork", lambda _server, _worker: runtime.engine.dispose(close=False))

        def load(self):
            return app

    _Server().run()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- db ---------------------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from kyc.runtime import upgrade_database

    config = _config()
    upgrade_database(config.database_url, revision)
    click.echo(f"database at {revision}: {_safe_url(config.database_url)}")


# --- keys -------------------------------------------------------------------------------------

@main.group()
def keys() -> None:
    """API keys (only their hashes are stored)."""


@keys.command("create")
@click.option("--name", required=True, help="who uses the key, e.g. signup-flow")
def keys_create(name: str) -> None:
    """Create a key and print it once."""
    from kyc.models import ApiKey
    from kyc.security import hash_api_key, new_api_key

    runtime = _runtime()
    key = new_api_key()
    with runtime.session() as session, session.begin():
        session.add(ApiKey(name=name, prefix=key[:10], key_hash=hash_api_key(key)))
    click.echo(key)
    click.echo(f"(stored hashed as '{name}'; it cannot be shown again)", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (name, prefix, created, revoked)."""
    from kyc.models import ApiKey

    runtime = _runtime()
    with runtime.session() as session:
        for key in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars():
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            click.echo(f"{key.id:>4}  {key.name:<24} {key.prefix}...  {key.created_at:%Y-%m-%d}  {state}")


@keys.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke a key by its id (see `kyc keys list`)."""
    from kyc.models import ApiKey

    runtime = _runtime()
    with runtime.session() as session, session.begin():
        key = session.get(ApiKey, key_id)
        if key is None:
            raise click.ClickException(f"no key {key_id}")
        key.revoked_at = key.revoked_at or datetime.now(timezone.utc)
    click.echo(f"revoked key {key_id}")


# --- rules ------------------------------------------------------------------------------------

@main.group()
def rules() -> None:
    """Rule files: check, test, backtest."""


@rules.command("check")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False), help="directory (default KYC_RULES_DIR)")
def rules_check(rules_dir: str | None) -> None:
    """Load and type-check every rule file; exit non-zero with readable errors."""
    from pathlib import Path

    from kyc.signals import SCHEMA

    root = Path(rules_dir) if rules_dir else _config().rules_dir
    try:
        ruleset = RuleSet.load(root, SCHEMA)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)
    counts = ", ".join(f"{s}: {len(c.rules)} rules" for s, c in ruleset.subjects.items())
    click.echo(f"ok  {ruleset.version}  ({counts}; {len(ruleset.lists)} lists)")


if __name__ == "__main__":  # pragma: no cover
    main()
