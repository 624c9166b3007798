"""The process-wide parts of kyc, shared by the web app, the CLI and the workers."""

from __future__ import annotations

import fcntl
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from kyc.config import PROJECT_ROOT, Config
from kyc.db import make_engine, make_session_factory
from kyc.engine import RuleSet, RuleSetError
from kyc.signals import SCHEMA

log = logging.getLogger("kyc")


def alembic_config(database_url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_database(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@dataclass
class Runtime:
    config: Config
    engine: Engine
    sessions: sessionmaker
    rules: RuleSet
    rules_error: RuleSetError | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, config: Config, *, migrate: bool | None = None) -> "Runtime":
        """Open the database and load the rules. A bad rule file stops start-up (RuleSetError)."""
        engine = make_engine(config.database_url)
        if migrate is None and config.is_sqlite:
            # The embedded default migrates itself on first start; elsewhere `kyc db upgrade` does.
            # Several gunicorn workers may start at once: one migrates, the others wait on the lock.
            config.data_dir.mkdir(parents=True, exist_ok=True)
            with open(config.data_dir / "migrate.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not inspect(engine).has_table("alembic_version"):
                    upgrade_database(config.database_url)
        elif migrate:
            upgrade_database(config.database_url)
        rules = RuleSet.load(config.rules_dir, SCHEMA)
        return cls(config, engine, make_session_factory(engine), rules)

    def session(self) -> Session:
        return self.sessions()

    def reload_rules(self, root: Path | None = None) -> RuleSet:
        """Build a new rule set off to the side; swap it in only if it loads cleanly.

        In-flight evaluations keep the RuleSet object they started with: they read
        `runtime.rules` once, and the swap is a single reference assignment.
        """
        with self._reload_lock:
            try:
                rules = RuleSet.load(root or self.config.rules_dir, SCHEMA)
            except RuleSetError as exc:
                self.rules_error = exc
                log.error("rules reload refused, keeping %s:\n%s", self.rules.version, exc)
                raise
            self.rules_error = None
            if rules.version != self.rules.version:
                log.info("rules reloaded: %s -> %s", self.rules.version, rules.version)
            self.rules = rules
            return rules
