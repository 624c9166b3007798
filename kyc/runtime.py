"""The process-wide parts of kyc, shared by the web app, the CLI and the workers."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from kyc.config import PROJECT_ROOT, Config
from kyc.db import make_engine, make_session_factory
from kyc.engine import RuleError, RuleSet, RuleSetError
from kyc.engine.loader import SUBJECTS, rules_fingerprint
from kyc.rescore.background import Background, background
from kyc.ops import audit
from kyc.persist import HeldReadConnection
from kyc.signals import SCHEMA
from kyc.signals.geoip import GeoIP, open_geoip
from kyc.signals.payment import load_bin_table
from kyc.tiers import TierPolicy, load_tiers

log = logging.getLogger("kyc")
STALE_DATA_DAYS = 30           # network data older than this is named at start-up


def warn_if_stale(geoip: GeoIP, now: datetime | None = None) -> list[str]:
    """Name, in one warning, the network data sources older than STALE_DATA_DAYS (a Tor exit list
    or a cloud's ranges go stale within weeks; nothing refreshes them at run time). Returns them.
    Said by the processes that score (each serving app, `kyc worker`) as they start, not by every
    CLI command; the kyc_data_source_timestamp_seconds gauge says it all the time."""
    now = now or datetime.now(timezone.utc)
    stale = sorted((name, (now - date).days) for name, date in geoip.data_dates().items()
                   if now - date > timedelta(days=STALE_DATA_DAYS))
    if stale:
        log.warning("network data older than %d days: %s; refresh it (README: Network intelligence)",
                    STALE_DATA_DAYS, ", ".join(f"{name} {days} days" for name, days in stale))
    return [name for name, _ in stale]


def alembic_config(database_url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_database(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@lru_cache(maxsize=1)
def migration_head() -> str:
    """The revision `kyc db upgrade` migrates to (the code's newest migration)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def database_revision(engine: Engine) -> str | None:
    """The revision the database is migrated to (None: never migrated). Raises when unreachable."""
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


class NotMigrated(RuntimeError):
    """The database is not at the code's migration head."""

    def __init__(self, current: str | None, head: str):
        self.current, self.head = current, head
        at = f"at revision {current}" if current else "not migrated"
        super().__init__(f"the database is {at}, this kyc needs {head}: run `kyc db upgrade`")


def check_migrated(engine: Engine) -> None:
    current, head = database_revision(engine), migration_head()
    if current != head:
        raise NotMigrated(current, head)


# The files of a rules folder kyc can serve (rules/lists/ and rules/tests/ may hold nothing).
WHOLE_FOLDER = tuple(f"{subject}.yaml" for subject in SUBJECTS) + ("tiers.yaml",)


def load_policy(root: Path) -> tuple[RuleSet, TierPolicy]:
    """The rules folder kyc serves: rule files and the tier policy, loaded and checked together
    (RuleSetError on any mistake). It must be whole: each subject's rule file and the tiers file
    present and none empty. A file moved away, emptied or renamed would otherwise load as "no
    rules" (every signup allowed) or "no tiers" (every entitlement refused) and go live."""
    root = Path(root)
    errors = [RuleError(f"{root.name}/{name}", 0, None, "missing: kyc serves a whole rules folder", f"restore {name}")
              for name in WHOLE_FOLDER if root.is_dir() and not (root / name).is_file()]
    try:
        rules = RuleSet.load(root, SCHEMA)
        tiers = load_tiers(root, SCHEMA, rules.lists)
    except RuleSetError as exc:
        raise RuleSetError(errors + exc.errors) from None
    empty = [f"{s}.yaml" for s, c in rules.subjects.items() if not c.rules and not c.disabled]
    errors += [RuleError(f"{root.name}/{name}", 1, None, "holds no rules: kyc would serve none",
                         "restore its rules (switch one off with `enabled: false`)") for name in empty]
    if (root / "tiers.yaml").is_file() and not tiers.tiers:
        errors.append(RuleError(f"{root.name}/tiers.yaml", 1, None, "holds no tiers: kyc would serve none",
                                "restore its tiers"))
    if errors:
        raise RuleSetError(errors)
    return rules, tiers


def velocity_redis(config: Config):
    """The Redis client of the velocity counters: every command within KYC_REDIS_TIMEOUT_MS
    (connecting included) and never retried, so a Redis that is down or slow costs a signup
    one time budget, after which velocity is counted from the database (kyc.store.RedisStore).
    redis-py's default would retry three times with backoff: seconds per request.
    rq's connection (kyc.rescore.queue.redis_connection) is another client: its blocking reads wait long."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    budget = config.redis_timeout_ms / 1000
    return redis.Redis.from_url(config.redis_url, socket_timeout=budget, socket_connect_timeout=budget,
                                retry=Retry(NoBackoff(), 0))


class LiveTraffic:
    """Requests in flight in this process, so background work can stay out of their way.

    Without Redis, rescoring runs on a thread of the serving process and competes with the
    requests for the interpreter (and, on SQLite, for the write lock); it waits for a quiet
    moment instead (kyc/rescore/background.py).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last = time.monotonic()

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._last = time.monotonic()

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        with self._lock:
            return 0.0 if self._in_flight else time.monotonic() - self._last


@dataclass
class Runtime:
    config: Config
    engine: Engine
    sessions: sessionmaker
    rules: RuleSet
    tiers: TierPolicy
    geoip: GeoIP = field(default_factory=GeoIP)
    rules_error: RuleSetError | None = None
    rules_error_at: datetime | None = None
    rules_checked_at: datetime | None = None
    redis: Any = None                    # a redis.Redis when KYC_REDIS_URL is set (velocity counters)
    traffic: LiveTraffic = field(default_factory=LiveTraffic)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)
    _rules_fingerprint: tuple = ()
    _watcher_pid: int | None = None
    _held_reads: HeldReadConnection | None = None

    def __post_init__(self) -> None:
        self._held_reads = HeldReadConnection(self.engine)

    @classmethod
    def start(cls, config: Config, *, migrate: bool | None = None) -> "Runtime":
        """Open the database and load the rules. A bad rule file stops start-up (RuleSetError)."""
        engine = make_engine(config.database_url)
        if migrate is None and config.is_sqlite:
            # The embedded default migrates itself at start; elsewhere `kyc db upgrade` does.
            # Several gunicorn workers may start at once: one migrates, the others wait on the lock.
            config.data_dir.mkdir(parents=True, exist_ok=True)
            with open(config.data_dir / "migrate.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                # Always to head: a file made by an older kyc gains the new migrations too.
                upgrade_database(config.database_url)
        elif migrate:
            upgrade_database(config.database_url)
        fingerprint = rules_fingerprint(config.rules_dir)
        rules, tiers = load_policy(config.rules_dir)
        geoip = open_geoip(config.geoip_city_db or None, config.geoip_asn_db or None, config.geoip_anon_db or None)
        load_bin_table(config.bin_table)        # a bad BIN table stops start-up (BinTableError)
        redis_client = None
        if config.redis_url:
            redis_client = velocity_redis(config)
        return cls(config, engine, make_session_factory(engine), rules, tiers, geoip, rules_checked_at=rules.loaded_at,
                   _rules_fingerprint=fingerprint, redis=redis_client)

    def session(self) -> Session:
        return self.sessions()

    def read_connection(self):
        """A connection for one read statement on a hot path (the API key, the entitlement
        check), in autocommit where that saves round trips, held by the process from one read
        to the next (kyc.persist.HeldReadConnection): `with runtime.read_connection() as conn`."""
        return self._held_reads()

    def rescoring(self) -> Background:
        """The thread rescoring what committed transactions asked for (kyc.rescore.requests hands
        their asks over), started on first use."""
        return background(self)

    def reload_rules(self, root: Path | None = None, *, actor: str = "rules-watcher") -> RuleSet:
        """Build a new rule set off to the side; swap it in only if it loads cleanly.

        On failure the running set stays, the error is kept for `GET /v1/ops/rules` and
        logged, and RuleSetError is raised. In-flight evaluations keep the RuleSet object
        they started with: they read `runtime.rules` once, and the swap is a single
        reference assignment. A new version and a refused reload are audit events (`actor`
        made the reload happen: the watcher, a signal, an API key).
        """
        root = Path(root or self.config.rules_dir)
        with self._reload_lock:
            # Taken before reading, so an edit landing mid-read is seen by the next poll; kept
            # only once the set it describes (or its refusal) is in place. A gunicorn worker
            # forked from the master mid-reload inherits both: had the master already marked the
            # new files as read while still serving the old set, that worker never reloaded
            # (tests/engine/test_reload.py, seen under load).
            fingerprint = rules_fingerprint(root)
            self.rules_checked_at = datetime.now(timezone.utc)
            try:
                try:
                    rules, tiers = load_policy(root)
                except RuleSetError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a rule file never takes a process down
                    # The loader turns every mistake into a RuleSetError naming file and line;
                    # anything else is a bug in kyc, refused like a bad file so the set keeps running.
                    log.exception("rules reload: unexpected error loading %s", root)
                    raise RuleSetError([RuleError(str(root), 0, None, f"unexpected error while loading the rules: "
                                                  f"{type(exc).__name__}: {exc}", "report this as a bug in kyc")]) \
                        from None
            except RuleSetError as exc:
                self.rules_error, self.rules_error_at = exc, self.rules_checked_at
                self._rules_fingerprint = fingerprint
                log.error("rules reload refused, keeping %s:\n%s", self.rules.version, exc)
                self._audit_rules(lambda: audit.record_rules_refused(
                    self.engine, self.rules.version, [e.as_dict() for e in exc.errors], actor))
                raise
            self.rules_error = self.rules_error_at = None
            if rules.version == self.rules.version and rules.root == self.rules.root:
                self._rules_fingerprint = fingerprint
                return self.rules             # same content: keep the running object and its loaded_at
            log.info("rules reloaded: %s -> %s", self.rules.version, rules.version)
            previous, self.rules, self.tiers = self.rules, rules, tiers
            self._rules_fingerprint = fingerprint       # after the set it describes, never before
            self._audit_rules(lambda: audit.record_rules_reload(self.engine, previous, rules, actor))
            return rules

    def _audit_rules(self, write) -> None:
        # The reload has happened (or been refused) whatever the audit write does.
        try:
            write()
        except Exception:  # noqa: BLE001 - a database outage must not undo a clean reload
            log.exception("rules reload not recorded in the audit trail")

    def rules_status(self) -> dict[str, Any]:
        """The running rule set and the last refused reload, as ops see them."""
        rules, error = self.rules, self.rules_error
        status = rules.summary()
        status["tiers"] = {t.id: {"requires": list(t.requires), "max_decision": t.max_decision, "quota": t.quota}
                           for t in self.tiers.tiers.values()}
        status["process"] = os.getpid()
        status["checked_at"] = _iso(self.rules_checked_at)
        status["last_error"] = None if error is None else {
            "at": _iso(self.rules_error_at), "errors": [e.as_dict() for e in error.errors]}
        return status

    def readiness(self) -> dict[str, dict[str, Any]]:
        """What /readyz reports: each dependency with ok and, when not, what is wrong."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            current, head = database_revision(self.engine), migration_head()
        except Exception as exc:                     # noqa: BLE001 - any failure means "not reachable"
            checks["database"] = {"ok": False, "error": f"unreachable: {_first_line(exc)}"}
        else:
            checks["database"] = {"ok": True}
            checks["migrations"] = {"ok": current == head, "revision": current, "head": head}
            if current != head:
                checks["migrations"]["error"] = str(NotMigrated(current, head))
        checks["rules"] = {"ok": self.rules is not None and self.tiers is not None,
                           "version": self.rules.version if self.rules is not None else None}
        if self.rules_error is not None:
            # The running set stays and still serves: reported, not a reason to take traffic away.
            checks["rules"]["last_reload_refused_at"] = _iso(self.rules_error_at)
        if self.config.redis_url:
            from kyc.rescore.queue import redis_connection

            try:
                redis_connection(self.config).ping()
            except Exception as exc:                 # noqa: BLE001
                checks["redis"] = {"ok": False, "error": f"unreachable: {_first_line(exc)}"}
            else:
                checks["redis"] = {"ok": True}
        return checks

    def rules_changed_on_disk(self) -> bool:
        return rules_fingerprint(self.config.rules_dir) != self._rules_fingerprint

    def watch_rules(self) -> None:
        """Poll the rule files from a daemon thread of this process (idempotent, fork-aware).

        Every process (gunicorn master and each worker) runs its own watcher, so all of them
        converge on the files' version; a worker forked later inherits the master's set.
        """
        interval = self.config.rules_poll_seconds
        pid = os.getpid()
        if interval <= 0 or self._watcher_pid == pid:
            return
        if self._watcher_pid is not None:
            # Forked from a process whose watcher may have held the lock: start clean.
            self._reload_lock = threading.Lock()
        self._watcher_pid = pid
        try:
            if self.rules_changed_on_disk():      # a worker forked after an edit catches up at once
                self.reload_rules()
        except RuleSetError:
            pass
        # The thread holds its runtime weakly, as the rescoring thread does (kyc.rescore.background):
        # a bound method kept it, and every runtime a process let go of while watching stayed.
        threading.Thread(target=_watch, args=(weakref.ref(self), interval, pid), name="kyc-rules-watcher",
                         daemon=True).start()


def _watch(runtime_ref: weakref.ref, interval: float, pid: int) -> None:
    """The rules watcher's loop: ends when its runtime is collected, or stops watching in this process."""
    stop = threading.Event()
    while not stop.wait(interval):
        runtime = runtime_ref()
        if runtime is None or runtime._watcher_pid != pid or os.getpid() != pid:
            return
        try:
            if runtime.rules_changed_on_disk():
                runtime.reload_rules()
        except RuleSetError:
            pass                                # kept in rules_error and logged by reload_rules
        except Exception:                       # noqa: BLE001 - the watcher must outlive any one failure
            log.exception("rules watcher: unexpected error; the running rules stay")
        del runtime                             # not held across the wait


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None
