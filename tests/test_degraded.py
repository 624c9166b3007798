"""Degraded, never down: a Redis that is unreachable or too slow costs a signup one time budget,
after which velocity is counted from the database; the answer and the stored evaluation say
`degraded: ["velocity"]`, and rules can read it (degraded.velocity). SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading

import pytest
from sqlalchemy import select

from kyc import create_app
from kyc.models import Evaluation
from kyc.runtime import Runtime
from tests.conftest import free_port, REDIS_URL, payment, redis_connection, signup

# One farm: five accounts on one device and one /24, in event-time order.
FARM = [signup(account_id=f"acct_{i}", email=f"farm{i}@gmail.com", ip=f"203.0.113.{i + 1}", device_id="dv_farm",
               phone=None, occurred_at=f"2026-11-24T21:0{i}:00Z") for i in range(9)]


@pytest.fixture
def blackhole():
    """A port that accepts connections (the kernel's backlog) and never answers: a hung Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def _post_all(database_url, make_config, redis_url: str, bodies: list[dict], path: str = "/v1/signups"):
    rt = Runtime.start(make_config(database_url, dev_key="dev", redis_url=redis_url), migrate=False)
    client = create_app(runtime=rt).test_client()
    answers = []
    try:
        for body in bodies:
            # In a thread with a deadline: a Redis read without a time budget never returns.
            box: list = []
            worker = threading.Thread(target=lambda: box.append(
                client.post(path, json=body, headers={"Authorization": "Bearer dev"})), daemon=True)
            worker.start()
            worker.join(30)
            assert box, "the request did not return: Redis has no time budget"
            assert box[0].status_code == 200, box[0].json
            answers.append(box[0].json)
        with rt.session() as session:
            stored = {e.id: e for e in session.scalars(select(Evaluation))}
    finally:
        rt.engine.dispose()
    return answers, stored


@pytest.mark.parametrize("redis", ["down", "hung"])
def test_redis_down_or_hung_counts_velocity_from_the_database(database_url, make_config, tmp_path, redis,
                                                              blackhole, _sqlite_template):
    url = f"redis://127.0.0.1:{free_port()}/0" if redis == "down" else blackhole
    answers, stored = _post_all(database_url, make_config, url, FARM)
    for answer in answers:
        assert answer["degraded"] == ["velocity"]
        # Stored with the evaluation, where rules, backtests and queries read it.
        assert stored[answer["evaluation_id"]].signals["degraded"] == {"velocity": True}
    # The database's counts are the counts: the fourth account on the device is held, the ninth blocked.
    assert [a["signals"]["velocity"]["device_24h"] for a in answers] == list(range(1, 10))
    assert [a["signals"]["velocity"]["ip_prefix_1h"] for a in answers] == list(range(1, 10))
    assert "device_reuse" in [r["rule"] for r in answers[3]["reasons"]] and answers[3]["decision"] == "review"
    assert answers[-1]["decision"] == "block" and "device_farm" in [r["rule"] for r in answers[-1]["reasons"]]


def test_fallback_counts_equal_the_redis_counts(database_url, make_config, tmp_path, _sqlite_template):
    conn = redis_connection()
    from kyc.store import REDIS_PREFIX

    for name in conn.scan_iter(f"{REDIS_PREFIX}*"):
        conn.delete(name)
    bodies = FARM + [signup(account_id=f"acct_{i}", email=f"farm{i}@gmail.com", ip="203.0.113.9",
                            occurred_at=f"2026-11-25T0{i}:00:00Z") for i in range(5)]
    up, _ = _post_all(database_url, make_config, REDIS_URL, bodies)
    assert {tuple(a["degraded"]) for a in up} == {()}
    for name in conn.scan_iter(f"{REDIS_PREFIX}*"):
        conn.delete(name)
    # The same history again on an empty database, Redis away: every count the same.
    if database_url.startswith("postgresql"):
        from tests.conftest import _truncate_postgres

        _truncate_postgres(database_url)
        empty = database_url
    else:
        import shutil

        shutil.copy(_sqlite_template, tmp_path / "again.db")
        empty = f"sqlite:///{tmp_path / 'again.db'}"
    down, _ = _post_all(empty, make_config, f"redis://127.0.0.1:{free_port()}/0", bodies)
    assert [a["signals"]["velocity"] for a in down] == [a["signals"]["velocity"] for a in up]
    assert {tuple(a["degraded"]) for a in down} == {("velocity",)}


def test_payment_method_with_redis_down_is_scored_and_marked(database_url, make_config):
    answers, stored = _post_all(database_url, make_config, f"redis://127.0.0.1:{free_port()}/0",
                                [payment(account_id="acct_p1"), payment(account_id="acct_p2")],
                                path="/v1/payment-methods")
    assert [a["degraded"] for a in answers] == [["velocity"], ["velocity"]]
    assert answers[1]["signals"]["card"]["fingerprint_accounts_24h"] == 2


def test_without_redis_nothing_is_degraded(client, auth):
    body = client.post("/v1/signups", json=signup(), headers=auth).json
    assert body["degraded"] == [] and body["signals"]["degraded"] == {"velocity": False}
