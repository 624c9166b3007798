"""One settings object, read once from KYC_* environment variables.

Every default is embedded so that `kyc serve` works on a fresh machine: a SQLite file
in KYC_DATA_DIR (./var), the bundled rules/ directory, jobs in-process when no Redis is configured.
The table in README.md lists every setting; keep it in step with SETTINGS below.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    description: str


# The single source of truth for configuration: name, default, meaning.
SETTINGS: tuple[Setting, ...] = (
    Setting("KYC_DATABASE_URL", "",
            "SQLAlchemy URL: postgresql+psycopg://user@host/db (postgres:// and postgresql:// are taken as "
            "psycopg 3), or sqlite:///path. Empty: the embedded SQLite file KYC_DATA_DIR/kyc.db."),
    Setting("KYC_RULES_DIR", "rules", "Directory of rule files, lists and rule tests."),
    Setting("KYC_RULES_POLL_SECONDS", "2",
            "How often each `kyc serve` process checks the rule files for changes and reloads them "
            "(only when they load cleanly). 0 turns polling off; SIGHUP and POST /v1/ops/rules/reload still work."),
    Setting("KYC_DATA_DIR", "var", "Where the embedded defaults keep the SQLite file and generated secret."),
    Setting("KYC_SECRET_KEY", "",
            "Key for the keyed hashes of linking identifiers (HMAC-SHA256). Empty: generated once "
            "into KYC_DATA_DIR/secret.key. Changing it unlinks all history."),
    Setting("KYC_REDIS_URL", "", "Redis for rq jobs and velocity counters. Empty: jobs run in-process."),
    Setting("KYC_REDIS_TIMEOUT_MS", "200",
            "Time budget of one velocity read or write in Redis (connect and answer), with no retry. Over it, "
            "or with Redis unreachable, velocity is counted from the database and the evaluation is marked "
            "degraded: [\"velocity\"]."),
    Setting("KYC_GRAPH_SUPER_NODE_STRONG", "200",
            "A strong identifier (device, mailbox, phone, card) shared by more accounts than this is a "
            "super-node: it stops linking accounts into clusters, velocity still counts it."),
    Setting("KYC_GRAPH_SUPER_NODE_WEAK", "50",
            "The same for weak identifiers (IP /24 per day, email template, phone range, BIN + postal code)."),
    Setting("KYC_GRAPH_RESCORE_SIZES", "5,20,100,500",
            "Cluster sizes at which every member is queued for rescoring when a cluster grows past one."),
    Setting("KYC_DEV_KEY", "",
            "A fixed API key accepted in development. `kyc serve` on the embedded SQLite default "
            "sets it to kyc_dev_local_only and prints it; never set it in production."),
    Setting("KYC_MAX_BODY_BYTES", "65536", "Largest accepted request body, in bytes (413 beyond)."),
    Setting("KYC_LOG_LEVEL", "INFO", "Log level of the service."),
    Setting("KYC_DORMANT_DAYS", "30",
            "Activity after more than this many days without any is a signal (account.woke_up) and rescores the account; "
            "the daily schedule rescores accounts dormant this long."),
    Setting("KYC_USAGE_POPULAR_PROMPT", "1000",
            "A prompt template (activity reports' prompt_fingerprints) used by more accounts than this on a UTC day, "
            "fewer than half of them newcomers to it that day or the day before, is popular (a common tool's prompt): "
            "lockstep detection ignores it (usage.lockstep_accounts). A burst of newcomers (a farm set going on its "
            "templates) never makes its own template popular, except in kyc's first two days of usage."),
    Setting("KYC_SENDER", "outbox",
            "How verification codes are sent: outbox (a table plus a masked log line; `kyc outbox` shows codes "
            "in development only) or http (POST JSON to KYC_SENDER_URL)."),
    Setting("KYC_SENDER_URL", "", "The SMS/email provider endpoint the http sender posts each code message to."),
    Setting("KYC_SENDER_TIMEOUT_SECONDS", "5", "Timeout of one http sender call; a failed send creates nothing."),
    Setting("KYC_CODE_TTL_SECONDS", "600", "How long an email or phone code stays valid."),
    Setting("KYC_CODE_MAX_ATTEMPTS", "5", "Wrong codes allowed before a verification fails."),
    Setting("KYC_CODE_MAX_WRONG_PER_DAY", "10",
            "Wrong codes allowed per account and kind (email, phone) in any 24 hours, across all its "
            "verifications; beyond, starting and confirming codes of that kind answer 429 with Retry-After."),
    Setting("KYC_RESEND_INTERVAL_SECONDS", "60",
            "Least time between two codes sent for one account and kind (429 with Retry-After before)."),
    Setting("KYC_MAX_SENDS", "5", "Most codes sent for one verification (429 after)."),
    Setting("KYC_DOCUMENT_TTL_HOURS", "72", "How long a document verification waits for the provider's decision."),
    Setting("KYC_PHONE_UNIQUE", "true",
            "Refuse a phone number already verified on another account (true/false)."),
    Setting("KYC_WEBHOOK_SECRETS", "",
            "Identity-provider webhook secrets, provider:secret pairs separated by commas. A provider not "
            "listed is refused."),
    Setting("KYC_WEBHOOK_TOLERANCE_SECONDS", "300", "How far a webhook's timestamp may be from now."),
    Setting("KYC_GEOIP_CITY_DB", "",
            "MaxMind DB file for country/region/city/location (GeoIP2 or GeoLite2 City or Country). "
            "Empty: the bundled DB-IP Country Lite data (CC BY 4.0), which gives the country only."),
    Setting("KYC_GEOIP_ASN_DB", "",
            "MaxMind DB file for the network's ASN and organisation (GeoLite2 ASN). "
            "Empty: the bundled file built from @ip-location-db/asn (CC BY 4.0)."),
    Setting("KYC_GEOIP_ANON_DB", "",
            "GeoIP2 Anonymous IP database (vpn, hosting, tor, public and residential proxy). "
            "Empty: those signals are missing."),
    Setting("KYC_RESCORE_DAILY_AT", "03:00",
            "Time of day (HH:MM, UTC) of the daily rescoring (dormant accounts; held accounts refused the day before)."),
    Setting("KYC_RULES_WATCH_SECONDS", "60",
            "How often the schedule checks the rules version; a new version starts a rescore of "
            "accounts last scored under another one."),
    Setting("KYC_RESCORE_BATCH_SIZE", "500", "Accounts per rescore job (one job per batch)."),
    Setting("KYC_DECISION_WEBHOOK_URL", "",
            "Where every change of an account's decision is POSTed (account.decision_changed), signed with "
            "KYC_DECISION_WEBHOOK_SECRET. Empty: no push."),
    Setting("KYC_DECISION_WEBHOOK_SECRET", "",
            "Key of the X-Signature (hex HMAC-SHA256 of the raw body) on decision webhooks; required with the URL."),
    Setting("KYC_DECISION_WEBHOOK_TIMEOUT_SECONDS", "5",
            "Timeout of one decision webhook POST; a timeout is a failed attempt, retried with backoff."),
    Setting("KYC_BIN_TABLE", "",
            "CSV of card BIN metadata (bin,brand,funding,issuer_country,issuer_name; format in README). "
            "Empty: the small bundled table of processor test-card BINs, not fit for production."),
)

DEV_KEY = "kyc_dev_local_only"


@dataclass(frozen=True)
class Config:
    database_url: str
    rules_dir: Path
    data_dir: Path
    secret_key: bytes
    redis_url: str
    dev_key: str
    graph_super_node_strong: int
    graph_super_node_weak: int
    graph_rescore_sizes: tuple[int, ...]
    max_body_bytes: int
    log_level: str
    rules_poll_seconds: float = 2.0
    redis_timeout_ms: int = 200
    dormant_days: int = 30
    usage_popular_prompt: int = 1000
    sender: str = "outbox"
    sender_url: str = ""
    sender_timeout_seconds: float = 5.0
    code_ttl_seconds: int = 600
    code_max_attempts: int = 5
    code_max_wrong_per_day: int = 10
    resend_interval_seconds: int = 60
    max_sends: int = 5
    document_ttl_hours: int = 72
    phone_unique: bool = True
    webhook_secrets: dict = field(default_factory=dict)
    webhook_tolerance_seconds: int = 300
    geoip_city_db: str = ""
    geoip_asn_db: str = ""
    geoip_anon_db: str = ""
    rescore_daily_at: str = "03:00"
    rules_watch_seconds: int = 60
    rescore_batch_size: int = 500
    bin_table: str = ""                   # "" = the bundled table
    decision_webhook_url: str = ""
    decision_webhook_secret: str = ""
    decision_webhook_timeout_seconds: float = 5.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None, **overrides) -> "Config":
        env = os.environ if env is None else env
        raw = {s.env: env.get(s.env, s.default) for s in SETTINGS}
        data_dir = _resolve(raw["KYC_DATA_DIR"])

        def whole(name: str, minimum: int = 0) -> int:
            return _number(name, raw[name], int, minimum)

        def real(name: str) -> float:
            return _number(name, raw[name], float)

        values = dict(
            database_url=_database_url(raw["KYC_DATABASE_URL"] or f"sqlite:///{data_dir / 'kyc.db'}"),
            rules_dir=_resolve(raw["KYC_RULES_DIR"], base=PROJECT_ROOT),
            data_dir=data_dir,
            secret_key=b"",
            redis_url=_redis_url(raw["KYC_REDIS_URL"].strip()),
            dev_key=raw["KYC_DEV_KEY"],
            graph_super_node_strong=whole("KYC_GRAPH_SUPER_NODE_STRONG", 1),
            graph_super_node_weak=whole("KYC_GRAPH_SUPER_NODE_WEAK", 1),
            graph_rescore_sizes=tuple(sorted(_number("KYC_GRAPH_RESCORE_SIZES", v, int) for v in
                                             raw["KYC_GRAPH_RESCORE_SIZES"].split(",") if v.strip())),
            max_body_bytes=whole("KYC_MAX_BODY_BYTES", 1),
            log_level=raw["KYC_LOG_LEVEL"].upper(),
            rules_poll_seconds=real("KYC_RULES_POLL_SECONDS"),
            redis_timeout_ms=whole("KYC_REDIS_TIMEOUT_MS"),
            dormant_days=whole("KYC_DORMANT_DAYS"),
            usage_popular_prompt=whole("KYC_USAGE_POPULAR_PROMPT"),
            sender=_one_of("KYC_SENDER", raw["KYC_SENDER"].strip().lower(), SENDERS),
            sender_url=raw["KYC_SENDER_URL"].strip(),
            sender_timeout_seconds=real("KYC_SENDER_TIMEOUT_SECONDS"),
            code_ttl_seconds=whole("KYC_CODE_TTL_SECONDS"),
            code_max_attempts=whole("KYC_CODE_MAX_ATTEMPTS", 1),
            code_max_wrong_per_day=whole("KYC_CODE_MAX_WRONG_PER_DAY"),
            resend_interval_seconds=whole("KYC_RESEND_INTERVAL_SECONDS"),
            max_sends=whole("KYC_MAX_SENDS"),
            document_ttl_hours=whole("KYC_DOCUMENT_TTL_HOURS"),
            phone_unique=_flag("KYC_PHONE_UNIQUE", raw["KYC_PHONE_UNIQUE"]),
            webhook_secrets=parse_webhook_secrets(raw["KYC_WEBHOOK_SECRETS"]),
            webhook_tolerance_seconds=whole("KYC_WEBHOOK_TOLERANCE_SECONDS"),
            geoip_city_db=raw["KYC_GEOIP_CITY_DB"],
            geoip_asn_db=raw["KYC_GEOIP_ASN_DB"],
            geoip_anon_db=raw["KYC_GEOIP_ANON_DB"],
            rescore_daily_at=_time_of_day(raw["KYC_RESCORE_DAILY_AT"]),
            rules_watch_seconds=whole("KYC_RULES_WATCH_SECONDS"),
            rescore_batch_size=whole("KYC_RESCORE_BATCH_SIZE", 1),
            bin_table=str(_resolve(raw["KYC_BIN_TABLE"])) if raw["KYC_BIN_TABLE"] else "",
            decision_webhook_url=raw["KYC_DECISION_WEBHOOK_URL"].strip(),
            decision_webhook_secret=raw["KYC_DECISION_WEBHOOK_SECRET"].strip(),
            decision_webhook_timeout_seconds=real("KYC_DECISION_WEBHOOK_TIMEOUT_SECONDS"),
        )
        values.update(overrides)
        if not values["secret_key"]:
            secret = raw["KYC_SECRET_KEY"]
            values["secret_key"] = secret.encode() if secret else _load_or_create_secret(Path(values["data_dir"]))
        if values["sender"] == "http" and not values["sender_url"]:
            raise SettingError("KYC_SENDER is http without KYC_SENDER_URL: codes would have nowhere to go")
        if values["decision_webhook_url"] and not values["decision_webhook_secret"]:
            raise SettingError("KYC_DECISION_WEBHOOK_URL is set without KYC_DECISION_WEBHOOK_SECRET: "
                               "decision webhooks are always signed")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown config overrides: {sorted(unknown)}")
        return cls(**values)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def development(self) -> bool:
        """The embedded SQLite default or a development API key: where codes may be shown."""
        return bool(self.dev_key) or self.is_sqlite


class SettingError(ValueError):
    """A setting kyc cannot use; the message names it and says what it takes."""


SENDERS = ("outbox", "http")          # how verification codes are sent (kyc/verification/senders.py)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _number(name: str, value: str, kind: type, minimum: int = 0) -> Any:
    """A numeric setting, at least `minimum` (no setting means anything below zero, and a count
    such as a batch size below one would mean nothing done)."""
    what = "a whole number" if kind is int else "a number"
    try:
        number = kind(value.strip())
    except ValueError:
        raise SettingError(f"{name} must be {what}, not {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise SettingError(f"{name} must be {what} of at least {minimum}, not {value!r}")
    return number


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name} must be true or false, not {value!r}")


def parse_webhook_secrets(value: str) -> dict[str, bytes]:
    """"provider:secret,other:secret2" -> {provider: b"secret"}; a malformed entry stops start-up."""
    secrets_by_provider: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        provider, sep, secret = entry.partition(":")
        if not sep or not provider.strip() or not secret.strip():
            raise SettingError("KYC_WEBHOOK_SECRETS entries are provider:secret separated by commas")
        secrets_by_provider[provider.strip()] = secret.strip().encode()
    return secrets_by_provider


def _resolve(path: str, base: Path | None = None) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    # rules/ is bundled with the code; other relative paths are relative to the working directory.
    if base is not None and not p.exists() and (base / p).exists():
        return base / p
    return Path.cwd() / p


def _time_of_day(value: str) -> str:
    hour, _, minute = value.partition(":")
    if not (hour.isascii() and hour.isdigit() and minute.isascii() and minute.isdigit()
            and int(hour) < 24 and int(minute) < 60):
        raise SettingError(f"KYC_RESCORE_DAILY_AT must be HH:MM (UTC), got {value!r}")
    return f"{int(hour):02d}:{int(minute):02d}"


# The databases kyc runs on (SQLite, PostgreSQL through psycopg 3), as SQLAlchemy names them.
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


def _database_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        driver = make_url(url).drivername
    except ArgumentError:
        raise SettingError("KYC_DATABASE_URL is not a database URL: e.g. postgresql+psycopg://user@host:5432/kyc "
                           "or sqlite:///var/kyc.db") from None
    if driver in ("postgresql", "postgres"):
        # The usual spelling of a PostgreSQL URL: kyc's driver is psycopg 3, which SQLAlchemy
        # would not pick by itself (it would look for psycopg2, not installed).
        driver = "postgresql+psycopg"
        url = driver + url[url.index("://"):]
    if driver not in DATABASE_DRIVERS:
        scheme = "sqlite:///" if driver.startswith("sqlite") else "postgresql+psycopg://"
        raise SettingError(f"KYC_DATABASE_URL names {driver}://, which kyc does not run on: "
                           f"use {scheme}... (kyc runs on {', '.join(DATABASE_DRIVERS)})")
    # Relative SQLite paths are made absolute so that workers and the CLI agree on the file.
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        path = Path.cwd() / url[len(prefix):]
        return prefix + str(path)
    return url


def _redis_url(url: str) -> str:
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingError(f"KYC_REDIS_URL must start redis://, rediss:// or unix://, not {url.split('://')[0]}://")
    return url


def _load_or_create_secret(data_dir: Path) -> bytes:
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Written whole to a private temp file, then linked into place: a crash never leaves a
    # half-written key, and when several processes start at once the first link wins and
    # every process reads that one key.
    tmp = data_dir / f".secret.{os.getpid()}.tmp"
    tmp.write_bytes(secrets.token_hex(32).encode())
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes().strip()
