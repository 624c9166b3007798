"""Decision webhooks against a real local HTTP server that fails the first attempts: signed,
retried with backoff until 2xx, the same bytes every attempt, one event per change, nothing lost
on a restart, each event sent by one deliverer; in-process without Redis, an rq job with it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from kyc import create_app
from kyc.rescore.background import drain
from kyc.models import DecisionWebhook, utcnow
from kyc.ops import webhooks
from kyc.runtime import Runtime
from tests.conftest import REDIS_URL, redis_connection, signup
from tests.flows import key_headers

SECRET = "gateway-shared-secret"


class Gateway:
    """A werkzeug server in a thread: answers 500 to the first `fail` requests, then 200, and
    keeps every request it received (raw body, headers, status answered)."""

    def __init__(self, fail: int = 0, delay: float = 0.0):
        self.fail, self.delay = fail, delay
        self.received: list[tuple[bytes, dict, int]] = []
        self.changed = threading.Condition()
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/kyc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @Request.application
    def _app(self, request: Request) -> Response:
        if self.delay:
            time.sleep(self.delay)
        with self.changed:
            status = 500 if len(self.received) < self.fail else 200
            self.received.append((request.get_data(), dict(request.headers), status))
            self.changed.notify_all()
        return Response("no" if status == 500 else "ok", status=status)

    def delivered(self) -> list[dict]:
        """The events answered 2xx, as parsed bodies."""
        with self.changed:
            return [json.loads(body) for body, _, status in self.received if status == 200]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(1 for *_, status in self.received if status == 200) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"only {self.delivered()} of {count} events delivered: {self.received}"
                self.changed.wait(left)
        return self.delivered()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def gateway():
    servers = []

    def start(**kwargs) -> Gateway:
        servers.append(Gateway(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def pushing(database_url, make_config):
    """Runtimes on the test database with decision webhooks to a given URL (no Redis)."""
    made = []

    def start(url: str, **overrides) -> Runtime:
        rt = Runtime.start(make_config(database_url, decision_webhook_url=url, decision_webhook_secret=SECRET,
                                       decision_webhook_timeout_seconds=2, **overrides), migrate=False)
        made.append(rt)
        return rt

    yield start
    for rt in made:
        drain(rt)
        rt.engine.dispose()


def recorded_delivered(rt: Runtime, count: int, timeout: float = 30.0) -> list[DecisionWebhook]:
    """Wait until `count` events are recorded delivered (the 2xx arrives before its recording)."""
    deadline = time.monotonic() + timeout
    while True:
        with rt.session() as session:
            rows = session.scalars(select(DecisionWebhook).where(DecisionWebhook.delivered_at.is_not(None))).all()
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} of {count} recorded delivered"
        time.sleep(0.02)


def held_then_allowed(client, auth, account_id="acct_w1"):
    body = signup(account_id=account_id, email=f"{account_id}.person@gmail.com", ip="10.1.0.1",
                  device_id=f"dv_{account_id}", phone=None)
    assert client.post("/v1/signups", json=body, headers=auth).json["decision"] == "review"
    assert client.post(f"/v1/accounts/{account_id}/review", json={"outcome": "allow", "note": "ok"},
                       headers=auth).status_code == 200


def test_a_change_is_pushed_signed_and_retried_with_the_same_bytes_until_2xx(gateway, pushing):
    hook = gateway(fail=2)
    rt = pushing(hook.url)
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    held_then_allowed(client, auth)
    [event] = hook.wait_for(1)
    assert event["event"] == "account.decision_changed" and event["account_id"] == "acct_w1"
    assert (event["old"], event["new"], event["actor"]) == ("review", "allow", "key:tests")
    assert event["reasons"][0]["rule"] == "ops:review" and event["at"].endswith("Z")
    assert len(hook.received) == 3
    bodies = {body for body, _, _ in hook.received}
    assert len(bodies) == 1                                    # never different content
    raw = bodies.pop()
    for _, headers, _ in hook.received:
        assert headers["X-Signature"] == hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert headers["X-Event-Id"] == event["event_id"]
    [row] = recorded_delivered(rt, 1)
    assert row.attempts == 3 and row.delivered_at is not None and row.last_error is None
    # The signup's own first decision is not a change; only the review was pushed.
    assert [e["event_id"] for e in hook.delivered()] == [row.event_id]


def test_a_cluster_action_pushes_one_event_per_changed_member(gateway, pushing, monkeypatch):
    monkeypatch.setattr(webhooks, "LOAD_FROM", 2)      # a farm's many events: loaded (COPY on PostgreSQL)
    hook = gateway()
    rt = pushing(hook.url)
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    for n in range(6):
        client.post("/v1/signups", json=signup(account_id=f"acct_p{n}", email=f"pfarm.member{n}@gmail.com",
                                               device_id="dv_pfarm", phone=None), headers=auth)
    drain(rt)
    cluster_id = client.get("/v1/accounts/acct_p0", headers=auth).json["cluster"]["id"]
    with rt.session() as session:                     # what scoring and rescoring pushed so far
        already = len(session.scalars(select(DecisionWebhook.id)).all())
    hook.wait_for(already)
    done = client.post(f"/v1/clusters/{cluster_id}/actions", json={"action": "release"}, headers=auth).json
    events = hook.wait_for(already + done["changed"])[already:]
    assert done["changed"] == 6                       # the rules had blocked the farm
    assert len({e["event_id"] for e in events}) == len({e["account_id"] for e in events}) == 6
    assert all(e["new"] == "allow" and e["old"] != "allow" and e["actor"] == "key:tests" for e in events)
    assert all(e["reasons"][0]["rule"] == "ops:cluster_action" for e in events)


def test_nothing_is_lost_when_the_gateway_is_down_and_the_process_restarts(gateway, pushing, monkeypatch):
    monkeypatch.setattr(webhooks, "BACKOFF", (60,))            # nothing is retried by the first process
    first = pushing("http://127.0.0.1:9/nobody-listens")
    client, auth = create_app(runtime=first).test_client(), key_headers(first)
    held_then_allowed(client, auth, "acct_a")
    held_then_allowed(client, auth, "acct_b")
    with first.session() as session:
        rows = session.scalars(select(DecisionWebhook).order_by(DecisionWebhook.id)).all()
        deadline = time.monotonic() + 20
        while any(r.last_error is None for r in rows) and time.monotonic() < deadline:
            time.sleep(0.05)
            session.expire_all()
            rows = session.scalars(select(DecisionWebhook).order_by(DecisionWebhook.id)).all()
    assert len(rows) == 2 and all(r.delivered_at is None and r.attempts >= 1 for r in rows)
    assert all("Error" in r.last_error or "HTTP" in r.last_error for r in rows)
    first.engine.dispose()

    # A new process (the gateway is back), once the backoff has passed: the outbox is sent.
    hook = gateway()
    second = pushing(hook.url)
    with second.session() as session, session.begin():
        for row in session.scalars(select(DecisionWebhook)):
            row.next_attempt_at = row.next_attempt_at - timedelta(seconds=61)
    assert webhooks.deliver_due(second) == 2
    assert sorted(e["account_id"] for e in hook.delivered()) == ["acct_a", "acct_b"]
    assert webhooks.deliver_due(second) == 0                   # delivered once, not again


def test_an_attempt_cut_short_by_a_crash_is_retried_after_its_lease(gateway, pushing, monkeypatch):
    hook = gateway()
    monkeypatch.setattr(webhooks, "LEASE", timedelta(seconds=0.5))
    rt = pushing(hook.url)
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    rt._webhook_deliverer = type("Stopped", (), {"wake": lambda self: None, "thread": threading.current_thread()})()
    held_then_allowed(client, auth)
    claimed = webhooks._claim(rt, 10)                            # a deliverer claims, then dies
    assert len(claimed) == 1 and webhooks.deliver_due(rt) == 0   # leased: nobody else sends it
    time.sleep(0.6)
    assert webhooks.deliver_due(rt) == 1 and hook.delivered()[0]["event_id"] == claimed[0]["event_id"]


def test_events_waiting_out_their_backoff_never_hold_back_another_accounts(gateway, pushing):
    """A gateway answering non-2xx for a thousand accounts (ones it does not know, say) leaves
    their events in backoff: every other account's events still go, and the next wake-up is
    when something can be sent."""
    hook = gateway()
    rt = pushing(hook.url)
    rt._webhook_deliverer = type("Stopped", (), {"wake": lambda self: None, "thread": threading.current_thread()})()
    now = utcnow()
    with rt.session() as session, session.begin():
        session.add_all(DecisionWebhook(event_id=f"ev_backoff_{n}", account_id=f"acct_refused_{n}", body="{}",
                                        attempts=3, next_attempt_at=now + timedelta(minutes=10))
                        for n in range(1000))
        # An account's second event waits for its first, however due it is.
        session.add(DecisionWebhook(event_id="ev_second", account_id="acct_refused_7", body="{}",
                                    next_attempt_at=now - timedelta(minutes=1)))
        session.add(DecisionWebhook(event_id="ev_due", account_id="acct_fine", body='{"event_id": "ev_due"}',
                                    next_attempt_at=now - timedelta(seconds=1)))
    # Due: ev_due's time, not the blocked second event's earlier one (a deliverer would wake to it
    # every 50 ms and find nothing it may send).
    assert abs(webhooks.next_due(rt) - (now - timedelta(seconds=1))) < timedelta(milliseconds=1)
    assert [e["event_id"] for e in webhooks._claim(rt, 100)] == ["ev_due"]
    assert webhooks.next_due(rt) > now


def test_two_deliverers_never_send_one_event_twice(gateway, pushing):
    hook = gateway(delay=0.02)
    rt = pushing(hook.url)
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    rt._webhook_deliverer = type("Stopped", (), {"wake": lambda self: None, "thread": threading.current_thread()})()
    for n in range(12):
        held_then_allowed(client, auth, f"acct_t{n}")
    drain(rt)                                         # the rescoring their linking asked for
    with rt.session() as session:
        written = len(session.scalars(select(DecisionWebhook.id)).all())
    assert written >= 12
    results = []
    threads = [threading.Thread(target=lambda: results.append(webhooks.deliver_due(rt, limit=4))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [e["event_id"] for e in hook.delivered()]
    assert sum(results) == written == len(ids) == len(set(ids))


def test_the_delivery_thread_stops_with_its_engine_and_a_kick_starts_another(gateway, pushing):
    """A disposed engine is its runtime let go: the thread must not go on looking at a database
    that may be gone (the suite's last runtime logged an error at exit once its tables were
    dropped). Should the runtime still be used, the next change is delivered by a new thread."""
    hook = gateway()
    rt = pushing(hook.url)
    webhooks.kick(rt)
    first = rt._webhook_deliverer.thread
    assert first.is_alive()
    rt.engine.dispose()
    first.join(timeout=60)          # returns when it stops: a stalled machine must not fail it
    assert not first.is_alive()
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    held_then_allowed(client, auth)
    assert hook.wait_for(1)[0]["account_id"] == "acct_w1"
    assert rt._webhook_deliverer.thread is not first and rt._webhook_deliverer.thread.is_alive()


def test_without_a_url_nothing_is_written_to_the_outbox(client, auth, runtime):
    held_then_allowed(client, auth)
    with runtime.session() as session:
        assert session.scalars(select(DecisionWebhook)).all() == []


def test_with_redis_delivery_is_an_rq_job(gateway, database_url, make_config):
    from rq import Queue, SimpleWorker

    from kyc import jobs

    redis_db = redis_connection()
    redis_db.flushdb()
    hook = gateway(fail=1)
    rt = Runtime.start(make_config(database_url, redis_url=REDIS_URL, decision_webhook_url=hook.url,
                                   decision_webhook_secret=SECRET), migrate=False)
    try:
        jobs.use_runtime(rt)
        client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
        held_then_allowed(client, auth)
        queue = Queue("default", connection=redis_db)
        assert any(j.startswith("kyc-decision-webhooks-") for j in queue.job_ids)
        SimpleWorker([queue], connection=redis_db).work(burst=True)
        assert hook.received and not hook.delivered()             # first attempt refused
        with rt.session() as session, session.begin():
            for row in session.scalars(select(DecisionWebhook)):
                row.next_attempt_at = row.next_attempt_at - timedelta(seconds=5)
        assert jobs.scheduled_decision_webhooks() == 1            # the schedule's job retries it
        assert hook.delivered()[0]["new"] == "allow"
    finally:
        jobs.use_runtime(None)
        redis_db.flushdb()
        rt.engine.dispose()
