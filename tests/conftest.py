"""Test fixtures: real SQLite and real PostgreSQL (and Redis, for what needs it).

Under CI=true a missing PostgreSQL or Redis fails the run; elsewhere those tests skip with a
message saying what to start. Point at other servers with KYC_TEST_POSTGRES_URL and
KYC_TEST_REDIS_URL (each developer or parallel run uses its own Redis db number). PostgreSQL
schemas are this run's own (suffixed with its process id): a second run on the same database
used to drop the first one's schema when it started (`relation "rescore_runs" does not exist`).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import weakref
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from kyc import create_app
from kyc.config import PROJECT_ROOT, Config
from kyc.models import ApiKey
from kyc.rescore.background import drain
from kyc.runtime import Runtime, upgrade_database
from kyc.security import hash_api_key, new_api_key

CI = os.environ.get("CI", "").lower() == "true"
# An empty variable (`KYC_TEST_POSTGRES_URL=` left in a shell) means unset, as an unset one does.
POSTGRES_URL = os.environ.get("KYC_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("KYC_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"
RULES_DIR = PROJECT_ROOT / "rules"
RUN_TAG = f"run{os.getpid()}"         # this test run's PostgreSQL schemas end with it
TEST_SECRET = b"test-secret-key"


def _unavailable(what: str, how: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc.__class__.__name__}: {exc}); {how}"
    if CI:
        pytest.fail(message + " -- required under CI=true", pytrace=False)
    pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path) -> str:
    """An empty database on each backend (migration tests); PostgreSQL's is a schema named
    after the test module."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return pg_schema_url(f"kyc_{request.module.__name__.rsplit('.', 1)[-1]}")


def run_schema(name: str) -> str:
    """The name of this run's PostgreSQL schema `name`."""
    return f"{name}_{RUN_TAG}"


def pg_schema_url(name: str) -> str:
    """A URL whose connections live in a fresh, empty PostgreSQL schema of this run's."""
    schema = run_schema(name)
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not available"
        _unavailable("PostgreSQL", "start it on 127.0.0.1:5432 (trust auth, database test) "
                                   "or set KYC_TEST_POSTGRES_URL", exc)
    finally:
        engine.dispose()
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


def redis_connection():
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", "start redis-server on 127.0.0.1:6379 or set KYC_TEST_REDIS_URL", exc)
    return conn


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "kyc.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_url() -> str:
    url = pg_schema_url("kyc_test")
    upgrade_database(url)
    return url


@pytest.fixture(scope="session", autouse=True)
def _drop_this_runs_schemas():
    """This run's PostgreSQL schemas are dropped when it ends (a killed run leaves them; they
    are only ever named by their own run)."""
    yield
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            for (schema,) in conn.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :pattern"),
                                          {"pattern": f"%\\_{RUN_TAG}"}).all():
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    except Exception:  # noqa: BLE001 - no PostgreSQL in this run: nothing was created
        pass
    finally:
        engine.dispose()


TRUNCATE_LOCK_WAIT = "120s"


def _truncate_postgres(url: str) -> None:
    """Empty this run's tables. TRUNCATE waits for every transaction that touched them: if one
    is still open after TRUNCATE_LOCK_WAIT (a test's connection left in a transaction, a thread
    still working), the test fails naming it, instead of waiting without end."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            tables = [r[0] for r in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"))]
            if tables:
                conn.execute(text(f"SET LOCAL lock_timeout = '{TRUNCATE_LOCK_WAIT}'"))
                try:
                    conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
                except OperationalError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "55P03":      # lock_not_available
                        raise
                    pytest.fail(f"TRUNCATE waited {TRUNCATE_LOCK_WAIT} for: {_lock_holders(engine)}", pytrace=False)
    finally:
        engine.dispose()


def _lock_holders(engine: Engine) -> list[tuple]:
    """Every other open transaction on this database: pid, state, its age and last statement
    (read on a second connection of the pool: the truncating one's transaction is aborted)."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT pid, state, now() - xact_start, left(query, 300) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"))]


@pytest.fixture(autouse=True)
def _drain_started_runtimes(monkeypatch):
    """Every runtime a test starts, by a fixture or itself, has its background rescoring done
    before the next test truncates the database: a rescore of the last test still writing made
    the next test's TRUNCATE fail with a deadlock (PostgreSQL, once in a clean run)."""
    started: list[weakref.ref] = []
    start = Runtime.start.__func__

    def recording(cls, *args, **kwargs):
        rt = start(cls, *args, **kwargs)
        started.append(weakref.ref(rt))
        return rt

    monkeypatch.setattr(Runtime, "start", classmethod(recording))
    yield
    for ref in started:
        if (rt := ref()) is not None:
            # Bounded: a test may leave a database that refuses on purpose.
            drain(rt, timeout=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A migrated, empty database: a SQLite file, or the PostgreSQL test schema truncated."""
    if request.param == "sqlite":
        path = tmp_path / "kyc.db"
        shutil.copy(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("_postgres_url")
    _truncate_postgres(url)
    return url


@pytest.fixture
def make_config(tmp_path):
    def make(database_url: str, **overrides) -> Config:
        values = dict(database_url=database_url, rules_dir=RULES_DIR, data_dir=tmp_path,
                      secret_key=TEST_SECRET, redis_url="", dev_key="")
        values.update(overrides)
        return Config.from_env({}, **values)

    return make


@pytest.fixture
def runtime(database_url, make_config):
    rt = Runtime.start(make_config(database_url), migrate=False)
    yield rt
    drain(rt)                    # background rescoring finishes before the database goes away
    rt.engine.dispose()


@pytest.fixture
def postgres_runtime(_postgres_url, make_config):
    """PostgreSQL only, for what SQLite cannot show (concurrent writers, row locks)."""
    _truncate_postgres(_postgres_url)
    rt = Runtime.start(make_config(_postgres_url), migrate=False)
    yield rt
    drain(rt)
    rt.engine.dispose()


@pytest.fixture
def app(runtime):
    return create_app(runtime=runtime)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def api_key(runtime) -> str:
    key = new_api_key()
    with runtime.session() as session, session.begin():
        session.add(ApiKey(name="tests", prefix=key[:10], key_hash=hash_api_key(key)))
    return key


@pytest.fixture
def auth(api_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


# A UK VoIP number signing up from a UK network with a UK browser: only the VoIP rule fires
# (verify, requires a document).
GB_VOIP = {"phone": "+445612345678", "ip": "81.2.69.142", "timezone": "Europe/London", "locale": "en-GB"}


def signup(**fields) -> dict:
    """A plausible signup body; override or drop (value None) any field."""
    body = {
        "account_id": "acct_1",
        "email": "jane.smith84@gmail.com",
        "ip": "73.15.1.1",
        "phone": "+14155550123",
        "user_agent": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/131.0.0.0 Safari/537.36"),
        "device_id": "dv_1",
        "timezone": "America/New_York",
        "locale": "en-US",
        "form_fill_ms": 5400,
        "occurred_at": "2026-11-24T21:00:00Z",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def payment(**fields) -> dict:
    """A plausible payment-method body (the contract's example); override or drop (None) any field."""
    body = {
        "account_id": "acct_1",
        "fingerprint": "pm_fp_91ab",
        "bin": "424242",
        "last4": "4242",
        "funding": "credit",
        "issuer_country": "US",
        "billing_country": "US",
        "ip": "73.15.1.1",
        "device_id": "dv_1",
        "occurred_at": "2026-11-24T21:05:00Z",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def on_sql_and_redis(make_config, tmp_path, _sqlite_template):
    """Post the same bodies through the API with SQL-backed, then Redis-backed velocity.

    `post_all(path, bodies, family)` returns the `signals[family]` of every answer, per backend.
    """
    from kyc.store import REDIS_PREFIX

    conn = redis_connection()
    for name in conn.scan_iter(f"{REDIS_PREFIX}*"):
        conn.delete(name)

    def post_all(path: str, bodies: list[dict], family: str) -> dict[str, list[dict]]:
        answers = {}
        for backend in ("sql", "redis"):
            db = tmp_path / f"{backend}.db"
            shutil.copy(_sqlite_template, db)
            rt = Runtime.start(make_config(f"sqlite:///{db}", dev_key="dev",
                                           redis_url=REDIS_URL if backend == "redis" else ""), migrate=False)
            assert (rt.redis is not None) == (backend == "redis")
            client = create_app(runtime=rt).test_client()
            seen = []
            for body in bodies:
                response = client.post(path, json=body, headers={"Authorization": "Bearer dev"})
                assert response.status_code == 200, response.json
                seen.append(response.json["signals"][family])
            answers[backend] = seen
            rt.engine.dispose()
        return answers

    return post_all


def assert_field_error(response, field: str, message: str) -> None:
    """A 400 in the contract's error body that names the field and says why."""
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "invalid_request"
    assert field in error["fields"], error
    assert message in error["fields"][field]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts (or one nothing listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_a_gateway(send, tries: int = 5):
    """`send()`'s answer as a gateway sees it: a 503 database_unavailable (kyc's answer to a
    request that waited out SQLite's 30 s busy timeout for the write lock; it changed nothing)
    is sent again, as the contract tells callers to. Tests that post from several threads at
    once use it: on a machine that stalls for half a minute (CI's once did, stop 42: three of
    four calls waited out the lock), a first answer of 503 is kyc working as documented."""
    for _ in range(tries - 1):
        answer = send()
        if answer.status_code != 503 or answer.json["error"]["code"] != "database_unavailable":
            return answer
    return send()


def wait_until(predicate, seconds: float = 60.0, what: str = "the condition", *, not_yet: tuple = ()):
    """Poll `predicate` until it returns something true, and return that; AssertionError after
    `seconds`. `not_yet`: exceptions that mean "not yet" (a server still starting refuses
    connections). The wait ends as soon as the condition holds, so a generous limit costs a
    passing test nothing and spares it a stalled machine."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = predicate()
        except not_yet:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.02)
