"""The failure drill, on the real services: `kyc serve` (gunicorn, 2 workers) and a `kyc worker`,
a redis-server of the test's own, PostgreSQL behind a TCP proxy the test controls. Signups keep
coming in bursts while the drill

  1. stops Redis mid-burst, then restarts it empty;
  2. cuts the app's PostgreSQL connections mid-burst (pg_terminate_backend);
  3. makes PostgreSQL unreachable (the proxy stops), then reachable again;

and asserts: no 500 ever; every 503 carries Retry-After and the contract's error shape, and
only comes while the database was cut or away; every 200 has its evaluation stored, with the
degraded sources it answered; decisions made while Redis was away say degraded: ["velocity"];
the rescoring signups asked for while Redis was away is recorded in the database; and the
worker re-creates its schedules in the Redis that came back empty.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select as sql_select, text

import kyc.rescore.schedule
from kyc import rescore
from kyc.models import Evaluation, RescoreRun
from tests.conftest import free_port, POSTGRES_URL, RULES_DIR, TEST_SECRET, _truncate_postgres, signup, wait_until

APP_NAME = "kyc_failure_drill"
KEY = "drill-key"
CLIENTS = 6


# The drill's services refuse connections, or answer errors, until they are up.
_wait_for = partial(wait_until, not_yet=(Exception,))


class RedisServer:
    """A redis-server of the drill's own: no persistence, so a restart comes back empty."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = free_port(), workdir, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        _wait_for(lambda: redis.Redis(port=self.port, socket_timeout=0.5).ping(), what="redis-server up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class TcpProxy:
    """127.0.0.1:port -> PostgreSQL. stop() cuts every connection and refuses new ones (the
    database unreachable); start() lets them through again."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, free_port()
        self.listener = None
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.running = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self.listener = listener
        self.running.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while self.running.is_set():
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        listener.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
                with self.lock:
                    self.sockets.discard(sock)

    def stop(self) -> None:
        self.running.clear()
        time.sleep(0.3)                        # the accept loop closes the listener
        with self.lock:
            for sock in list(self.sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Burst:
    """Signups from CLIENTS threads, each answer kept with the phase it was sent in."""

    def __init__(self, port: int):
        self.port = port
        self.answers: list[dict] = []
        self.sent = 0
        self.lock = threading.Lock()

    def _post(self, phase: str, n: int) -> None:
        # Groups of six accounts share a device: clusters cross the rescoring size step (5).
        body = signup(account_id=f"acct_{phase}_{n}", email=f"drill.{phase}.{n}@gmail.com",
                      ip=f"45.{n % 200}.{n // 200}.9", device_id=f"dv_{phase}_{n // 6}", phone=None,
                      occurred_at=None)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/v1/signups", json.dumps(body),
                         {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            answer = {"phase": phase, "status": response.status, "retry_after": response.getheader("Retry-After"),
                      "content_type": response.getheader("Content-Type"), "raw": raw}
        except (OSError, http.client.HTTPException) as exc:
            answer = {"phase": phase, "status": None, "error": repr(exc)}
        finally:
            conn.close()
        with self.lock:
            self.answers.append(answer)

    def run(self, phase: str, n: int, fault=None, after: int = 0) -> list[dict]:
        """n signups; `fault()` runs once `after` of them have answered (mid-burst)."""
        start = len(self.answers)
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(self._post, phase, i) for i in range(n)]
            if fault is not None:
                _wait_for(lambda: len(self.answers) - start >= after, 120, f"{phase}: {after} answers")
                fault()
            for future in futures:
                future.result()
        return self.answers[start:]


@pytest.fixture
def drill_database(request) -> str:
    """The PostgreSQL test schema, migrated and empty (the session's), its direct URL."""
    url = request.getfixturevalue("_postgres_url")
    _truncate_postgres(url)
    return url


def test_failure_drill(drill_database, tmp_path):
    from sqlalchemy.engine import make_url

    direct = make_url(drill_database)
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxy.start()
    through_proxy = direct.set(host="127.0.0.1", port=proxy.port).update_query_dict(
        {"application_name": APP_NAME}).render_as_string(hide_password=False)
    redis = RedisServer(tmp_path)
    redis.start()
    port = free_port()
    env = {**os.environ, "KYC_DATABASE_URL": through_proxy, "KYC_REDIS_URL": redis.url,
           "KYC_RULES_DIR": str(RULES_DIR), "KYC_DATA_DIR": str(tmp_path), "KYC_SECRET_KEY": TEST_SECRET.decode(),
           "KYC_DEV_KEY": KEY, "KYC_LOG_LEVEL": "WARNING", "KYC_RULES_POLL_SECONDS": "0"}
    kyc = [sys.executable, "-c", "from kyc.cli import main; main()"]
    server = subprocess.Popen([*kyc, "serve", "--port", str(port), "--workers", "2"], env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    worker = subprocess.Popen([*kyc, "worker"], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "worker.log", "w"))
    admin = create_engine(drill_database)
    burst = Burst(port)
    outage: dict[str, float] = {}
    try:
        def healthy():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200

        _wait_for(healthy, what="kyc serve up")
        import redis as redis_py
        from rq.registry import ScheduledJobRegistry

        def schedules() -> set[str]:
            ids = ScheduledJobRegistry("default", connection=redis_py.Redis.from_url(redis.url)).get_job_ids()
            return {name for name in rescore.schedule.SCHEDULES if any(j.startswith(f"kyc-{name}-") for j in ids)}

        _wait_for(lambda: schedules() == set(rescore.schedule.SCHEDULES), what="the worker's schedules")

        # 0. All well.
        warm = burst.run("warm", 30)

        # 1. Redis stops mid-burst; then it comes back empty, mid-burst too.
        def redis_down():
            outage["redis_down"] = time.time()
            redis.stop()

        down = burst.run("redis_down", 60, fault=redis_down, after=10)
        # The rescoring these signups asked for is recorded while Redis is still away.
        time.sleep(2)
        back = burst.run("redis_back", 40, fault=redis.start, after=10)
        outage["redis_back"] = time.time()

        # 2. The app's database connections are cut mid-burst, three times.
        def terminate():
            for _ in range(3):
                with admin.begin() as conn:
                    conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE application_name = :name"), {"name": APP_NAME})
                time.sleep(0.2)

        cut = burst.run("pg_cut", 60, fault=terminate, after=10)

        # 3. The database unreachable mid-burst, then back.
        unreachable = burst.run("pg_away", 40, fault=proxy.stop, after=10)
        away_only = burst.run("pg_away_all", 12)
        proxy.start()
        recovered = burst.run("pg_back", 30)

        # Schedules re-created by the running worker in the Redis that came back empty.
        _wait_for(lambda: schedules() == set(rescore.schedule.SCHEDULES), rescore.schedule.MAINTENANCE_SECONDS + 30,
                  "schedules re-created after Redis came back empty")
    finally:
        for proc in (server, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (server, worker):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        proxy.stop()
        redis.stop()

    answers = burst.answers
    tally: dict[str, dict] = {}
    for a in answers:
        phase = tally.setdefault(a["phase"], {})
        degraded = a["status"] == 200 and json.loads(a["raw"])["degraded"] == ["velocity"]
        key = f"{a['status']}{' degraded' if degraded else ''}"
        phase[key] = phase.get(key, 0) + 1
    print("failure drill answers per phase:", tally)
    # No request failed without an answer, and none answered 500 (or any 5xx but 503).
    assert all(a["status"] is not None for a in answers), [a for a in answers if a["status"] is None][:3]
    assert not [a for a in answers if a["status"] >= 500 and a["status"] != 503], \
        [a["raw"][:300] for a in answers if a["status"] >= 500 and a["status"] != 503][:3]
    for a in answers:
        assert a["status"] in (200, 503), (a["status"], a["raw"][:300])
        if a["status"] == 503:
            # Only while the database was cut or away, always with Retry-After, in the contract's shape.
            assert a["phase"] in ("pg_cut", "pg_away", "pg_away_all"), a
            assert a["retry_after"] and a["retry_after"].isdigit(), a
            assert a["content_type"].startswith("application/json")
            assert json.loads(a["raw"])["error"]["code"] == "database_unavailable"
    assert all(a["status"] == 200 for a in warm + down + back + recovered)
    assert all(a["status"] == 503 for a in away_only)                     # really unreachable: 503 each time
    assert any(a["status"] == 200 for a in cut)                           # cut connections are replaced

    ok = [json.loads(a["raw"]) | {"phase": a["phase"]} for a in answers if a["status"] == 200]
    # Decisions made while Redis was away say so; before it stopped, none did.
    assert not [b for b in ok if b["phase"] == "warm" and b["degraded"]]
    degraded = [b for b in ok if b["degraded"] == ["velocity"]]
    assert len([b for b in degraded if b["phase"] == "redis_down"]) >= 40, len(degraded)
    assert not [b for b in ok if b["phase"] == "pg_back" and b["degraded"]]

    # Every accepted signup has its evaluation stored, with the degraded sources it answered.
    with admin.connect() as conn:
        stored = dict(conn.execute(sql_select(Evaluation.id, Evaluation.signals)
                                   .where(Evaluation.id.in_([b["evaluation_id"] for b in ok]))).all())
        assert set(stored) == {b["evaluation_id"] for b in ok}
        for b in ok:
            assert stored[b["evaluation_id"]]["degraded"]["velocity"] == (b["degraded"] == ["velocity"])
        # The clusters that crossed a size step while Redis was away asked for rescoring: recorded
        # as runs in the database (enqueued later by a worker's sweep), not lost with Redis.
        runs = conn.execute(sql_select(RescoreRun.id, RescoreRun.total).where(
            RescoreRun.selector == "ids", RescoreRun.reason == "cluster standing changed")).all()
    admin.dispose()
    assert runs and all(total > 0 for _, total in runs)
