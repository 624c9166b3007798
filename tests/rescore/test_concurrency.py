"""Rescore chunks racing live graph changes, on real PostgreSQL with two sessions.

A chunk reads its accounts' memberships and clusters without locking the clusters, and adds its
counter changes with relative updates at the end (graph.ChunkGraph). These tests interleave a
second transaction at a fixed point, in order, so each race happens every run:
- a live merge moves a member of the chunk and deletes its cluster while the chunk is scored:
  the chunk is rolled back and scored again, against the merged cluster;
- two chunks change the counters of one cluster: both changes land (no lost update), the second
  waiting on the first's row lock.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, select, text

import kyc.rescore.background
import kyc.rescore.batch
import kyc.rescore.runs
from kyc import rescore
from kyc.inputs import SignupInput
from kyc.models import MEMBER_FLAGS, Account, Cluster, ClusterMember, Evaluation
from kyc.runtime import Runtime
from kyc.scoring import score
from tests.conftest import signup
from tests.rescore.test_jobs import BLOCK_GMAIL, rules_dir  # noqa: F401 - rules_dir is a fixture

@pytest.fixture
def pg_runtime(request, make_config, rules_dir):
    """PostgreSQL, no Redis: the row locks these races are about are PostgreSQL's."""
    from tests.conftest import _truncate_postgres

    url = request.getfixturevalue("_postgres_url")
    _truncate_postgres(url)
    rt = Runtime.start(make_config(url, rules_dir=rules_dir), migrate=False)
    yield rt
    rescore.background.drain(rt)
    rt.engine.dispose()


def live_signup(runtime: Runtime, **fields) -> None:
    with runtime.session() as session, session.begin():
        score(runtime, session, "signup", SignupInput.model_validate(signup(**fields)))


def account_signup(i: int, **over) -> dict:
    """An account that links to nobody unless `over` says so (own device, /24, mailbox; no phone)."""
    return {"account_id": f"acct_{i:03d}", "device_id": f"dv_{i}", "phone": None, "ip": f"45.0.{i}.10",
            "email": f"user{i}@gmail.com", **over}


def cluster_of(runtime: Runtime, account_id: str) -> str:
    with runtime.session() as session:
        return session.get(ClusterMember, account_id).cluster_id


def assert_counters_match_members(runtime: Runtime) -> None:
    """Every cluster's counters equal what its members' flags add up to."""
    with runtime.session() as session:
        for cluster in session.scalars(select(Cluster)):
            members = session.scalars(select(ClusterMember).where(ClusterMember.cluster_id == cluster.id)).all()
            assert cluster.size == len(members), cluster.id
            for flag in MEMBER_FLAGS:
                assert getattr(cluster, flag) == sum(getattr(m, flag) for m in members), (cluster.id, flag)


def lone_and_pair(rt, count: int) -> tuple[str, str]:
    """Signups acct_000..acct_<count-1>, the last two sharing a device: the cluster of one of
    acct_000 and the cluster of the pair."""
    for i in range(count):
        live_signup(rt, **account_signup(i))
    live_signup(rt, **account_signup(count - 1, device_id=f"dv_{count - 2}"))
    rescore.background.drain(rt)
    return cluster_of(rt, "acct_000"), cluster_of(rt, f"acct_{count - 2:03d}")


def test_a_merge_while_a_chunk_is_scored_rolls_the_chunk_back_and_scores_it_again(pg_runtime, monkeypatch, caplog):
    rt = pg_runtime
    # acct_004 and acct_005 share a device: a cluster of two, which absorbs acct_000's cluster of
    # one when a new account links to both.
    moved, farm = lone_and_pair(rt, 6)
    assert moved != farm and cluster_of(rt, "acct_005") == farm

    real_read_chunk, reads = rescore.batch.read_chunk, []

    def read_chunk_then_merge(runtime, session, ids):
        chunk = real_read_chunk(runtime, session, ids)
        if not reads:
            # Committed by another transaction after the chunk read its graph, before it writes:
            # the new account shares acct_000's device and acct_004's mailbox.
            live_signup(rt, **account_signup(9, device_id="dv_0", email="user4@gmail.com"))
        reads.append({a: m["cluster_id"] for a, m in chunk.graph.read_members.items()})
        return chunk

    monkeypatch.setattr(rescore.batch, "read_chunk", read_chunk_then_merge)
    with rt.session() as session:
        ids = sorted(session.scalars(select(Account.id).where(Account.id != "acct_009")))
    run = rescore.runs.start_run(rt, "ids", account_ids=ids, reason="test")
    caplog.set_level("INFO", logger="kyc.jobs")
    result = rescore.batch.run_batch(rt, run.id, 0)

    assert len(reads) == 2 and reads[0]["acct_000"] == moved and reads[1]["acct_000"] == farm
    assert "chunk scored again (a member of the chunk changed cluster while it was rescored)" in caplog.text
    assert result["seen"] == len(ids) == 6
    with rt.session() as session:
        assert session.get(Cluster, moved) is None                # merged away
        rescores = session.scalars(select(Evaluation).where(Evaluation.trigger == "rescore")).all()
        # Once per account: nothing of the rolled-back attempt is left.
        assert sorted(e.account_id for e in rescores) == ids
        seen = {e.account_id: e.signals["graph"] for e in rescores}
        assert seen["acct_000"]["cluster_id"] == farm and seen["acct_000"]["cluster_size"] == 4
    assert_counters_match_members(rt)


def test_a_cluster_merged_away_between_the_chunk_reads_is_retried(pg_runtime, caplog):
    """The merge commits after the chunk read its memberships, before it reads their clusters."""
    rt = pg_runtime
    moved, farm = lone_and_pair(rt, 3)
    run = rescore.runs.start_run(rt, "all", reason="test")
    merged = []

    def merge_before_the_cluster_read(state) -> None:
        froms = getattr(state.statement, "get_final_froms", None)
        if not merged and froms is not None and Cluster.__table__ in froms():
            merged.append(True)
            live_signup(rt, **account_signup(9, device_id="dv_0", email="user1@gmail.com"))

    caplog.set_level("INFO", logger="kyc.jobs")
    event.listen(rt.sessions, "do_orm_execute", merge_before_the_cluster_read)
    try:
        result = rescore.batch.run_batch(rt, run.id, 0)
    finally:
        event.remove(rt.sessions, "do_orm_execute", merge_before_the_cluster_read)

    assert merged and "chunk scored again (a cluster of the chunk was merged away while it was read)" in caplog.text
    assert result["seen"] == 3
    with rt.session() as session:
        rescores = session.scalars(select(Evaluation).where(Evaluation.trigger == "rescore")).all()
        assert sorted(e.account_id for e in rescores) == ["acct_000", "acct_001", "acct_002"]
        graph_of = {e.account_id: e.signals["graph"] for e in rescores}
        assert graph_of["acct_000"]["cluster_id"] == farm != moved and graph_of["acct_000"]["cluster_size"] == 4
    assert_counters_match_members(rt)


def test_two_chunks_add_their_counter_changes_to_one_cluster(pg_runtime, rules_dir):
    rt = pg_runtime
    for i in range(4):
        # A day apart: the shared device is not reused within 24 hours (no block yet).
        live_signup(rt, **account_signup(i, device_id="dv_farm", occurred_at=f"2026-11-{20 + i}T21:00:00Z"))
    rescore.background.drain(rt)
    farm = cluster_of(rt, "acct_000")
    with rt.session() as session:
        assert session.get(Cluster, farm).size == 4 and session.get(Cluster, farm).blocked == 0
    (rules_dir / "signup.yaml").write_text((rules_dir / "signup.yaml").read_text() + BLOCK_GMAIL)
    rt.reload_rules()
    rules = rt.rules

    first = rt.session()
    first.begin()
    # The first chunk blocks two members and adds +2 to the cluster's counter; its row lock is
    # held until it commits.
    rescore.batch.rescore_chunk(rt, first, ["acct_000", "acct_001"], rules)
    first.flush()

    pid, failure = [], []

    def second_chunk() -> None:
        try:
            with rt.session() as session, session.begin():
                pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                # Reads the cluster as committed (blocked = 0): the first chunk's +2 is not visible.
                rescore.batch.rescore_chunk(rt, session, ["acct_002", "acct_003"], rules)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=second_chunk)
    thread.start()
    with rt.engine.connect() as watcher:
        # Wait (bounded) until the second chunk is blocked on the cluster row the first holds.
        deadline = time.monotonic() + 30
        while not (pid and watcher.execute(text(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid[0]}).scalar()):
            assert thread.is_alive() and time.monotonic() < deadline, failure or "second chunk never waited"
            watcher.rollback()
    first.commit()
    first.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and not failure, failure
    rescore.background.drain(rt)
    with rt.session() as session:
        cluster = session.get(Cluster, farm)
        assert (cluster.size, cluster.blocked) == (4, 4)
        assert session.scalar(select(func.count()).select_from(Account).where(Account.decision == "block")) == 4
    assert_counters_match_members(rt)
