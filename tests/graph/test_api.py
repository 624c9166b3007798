"""The identity graph through the API: linking, super-nodes, merges, rebuild, feedback, ops views."""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import delete, func, select, text, update

from kyc import create_app
from kyc.db import write_lock
from kyc.graph import Policy, components, rebuild
from kyc.feedback import label_account
from kyc.rescore.background import drain
from kyc.models import MEMBER_FLAGS, Account, AccountLabel, Cluster, ClusterMember, Evaluation, GraphEdge, GraphNode
from kyc.runtime import Runtime
from tests.conftest import as_a_gateway, signup


@pytest.fixture
def small_graph(database_url, make_config, api_key):
    """An app whose super-node thresholds are small enough to cross in a test."""
    rt = Runtime.start(make_config(database_url, graph_super_node_strong=4, graph_super_node_weak=4,
                                   graph_rescore_sizes=(3, 6)), migrate=False)
    yield create_app(runtime=rt).test_client(), rt
    drain(rt)
    rt.engine.dispose()


def phone(n: int) -> str:
    """Account n's own number, in a phone block of its own."""
    return f"+1415{200 + n:03d}{n:04d}"


def post(client, auth, n: int, **fields):
    """Signup n with identifiers of its own unless overridden."""
    body = signup(**{"account_id": f"acct_{n}", "email": f"user{n}@example{n}.org", "device_id": f"dv_{n}",
                     "phone": phone(n), "ip": f"81.2.{n % 250}.{n % 200 + 1}", **fields})
    response = client.post("/v1/signups", json=body, headers=auth)
    assert response.status_code == 200, response.json
    return response.json


def partition(runtime) -> set[frozenset]:
    with runtime.session() as s:
        groups = defaultdict(set)
        for account, cluster in s.execute(select(ClusterMember.account_id, ClusterMember.cluster_id)):
            groups[cluster].add(account)
        return {frozenset(g) for g in groups.values()}


def cluster_of(runtime, account_id: str) -> Cluster:
    with runtime.session() as s:
        return s.get(Cluster, s.get(ClusterMember, account_id).cluster_id)


def test_a_lone_account_has_its_own_cluster_in_responses(client, auth):
    body = post(client, auth, 1)
    assert body["cluster"]["id"].startswith("cl_") and body["cluster"]["size"] == 1
    assert body["signals"]["graph"]["cluster_size"] == 1
    account = client.get("/v1/accounts/acct_1", headers=auth).json
    assert account["cluster"] == body["cluster"]


def test_a_shared_strong_identifier_links(client, auth, runtime):
    first = post(client, auth, 1)
    second = post(client, auth, 2, device_id="dv_1")
    assert second["cluster"] == {"id": first["cluster"]["id"], "size": 2}
    assert second["signals"]["graph"]["cluster_growth_24h"] == 2
    assert client.get("/v1/accounts/acct_1", headers=auth).json["cluster"]["size"] == 2
    # The canonical mailbox is strong too: dots and +tags do not hide it.
    post(client, auth, 3, email="jane.doe+a@gmail.com")
    fourth = post(client, auth, 4, email="janedoe+b@googlemail.com")
    assert fourth["cluster"]["size"] == 2
    assert partition(runtime) == {frozenset({"acct_1", "acct_2"}), frozenset({"acct_3", "acct_4"})}


def test_one_weak_identifier_does_not_link_two_kinds_do(client, auth, runtime):
    post(client, auth, 1, ip="81.2.3.4")
    assert post(client, auth, 2, ip="81.2.3.99")["cluster"]["size"] == 1            # same /24, same day
    # Same /24 the same day and the same phone block: two weak kinds, linked.
    post(client, auth, 3, ip="90.1.1.1", phone="+14155550101")
    linked = post(client, auth, 4, ip="90.1.1.2", phone="+14155550177")
    assert linked["cluster"]["size"] == 2
    # Same /24 and phone block but on another day: the network link is per day.
    post(client, auth, 5, ip="77.1.1.1", phone="+14155550201", occurred_at="2026-11-20T10:00:00Z")
    assert post(client, auth, 6, ip="77.1.1.2", phone="+14155550202")["cluster"]["size"] == 1


def test_a_returning_account_links_through_what_it_showed_before_and_now(client, auth, runtime):
    """Two weak kinds, one shown at the account's first signup and one at its second: linked.
    Its cluster of one is merged away; the cluster it joins counts it once."""
    post(client, auth, 1, ip="90.1.1.1", phone="+14155550101")
    first = post(client, auth, 2, ip="90.1.1.2")                  # the same /24 the same day: one kind
    assert first["cluster"]["size"] == 1
    lone = first["cluster"]["id"]
    again = post(client, auth, 2, ip="10.9.9.9", phone="+14155550177")      # now the same phone block too
    assert again["cluster"] == {"id": cluster_of(runtime, "acct_1").id, "size": 2}
    assert partition(runtime) == {frozenset({"acct_1", "acct_2"})}
    with runtime.session() as s:
        assert s.get(Cluster, lone) is None
        assert s.scalar(select(Cluster.size)) == 2
    assert client.get("/v1/accounts/acct_2", headers=auth).json["cluster"] == again["cluster"]


def test_a_backfilled_earlier_event_moves_the_member_and_cluster_back_in_time(client, auth, runtime):
    post(client, auth, 1, occurred_at="2026-11-20T10:00:00Z")
    post(client, auth, 2, device_id="dv_1", occurred_at="2026-11-20T11:00:00Z")        # cluster {1, 2}
    post(client, auth, 2, device_id="dv_1", occurred_at="2026-11-18T09:00:00Z")        # 2's earlier event, late
    with runtime.session() as s:
        assert s.get(ClusterMember, "acct_2").joined_at.isoformat() == "2026-11-18T09:00:00+00:00"
        assert cluster_of(runtime, "acct_1").first_seen_at.isoformat() == "2026-11-18T09:00:00+00:00"


def test_cluster_growth_counts_members_who_joined_in_the_last_24h_on_every_linking_path(client, auth, runtime):
    """Growth is read with the cluster's lock: when a new account joins one cluster, when a
    returning account's cluster is locked, and when a bridge merges clusters (their growths
    add up). Members who joined more than 24 h before the event, or after it, are not counted."""
    def growth(body):
        return body["signals"]["graph"]["cluster_growth_24h"]

    post(client, auth, 1, occurred_at="2026-11-18T10:00:00Z")                       # 2 days before
    post(client, auth, 2, device_id="dv_1", occurred_at="2026-11-20T09:00:00Z")
    joined = post(client, auth, 3, device_id="dv_1", occurred_at="2026-11-20T10:00:00Z")   # joins {1, 2}
    assert joined["cluster"]["size"] == 3 and growth(joined) == 2
    # acct_2 again, at an earlier time than acct_3 joined: acct_3 is not counted, acct_1 is too old.
    again = post(client, auth, 2, device_id="dv_1", occurred_at="2026-11-20T09:30:00Z")
    assert again["cluster"]["size"] == 3 and growth(again) == 1
    post(client, auth, 4, occurred_at="2026-11-20T08:00:00Z")
    post(client, auth, 5, phone=phone(4), occurred_at="2026-11-20T08:30:00Z")      # {4, 5} by phone
    bridge = post(client, auth, 6, device_id="dv_1", phone=phone(4), occurred_at="2026-11-20T11:00:00Z")
    assert bridge["cluster"]["size"] == 6 and growth(bridge) == 5                  # 2, 3, 4, 5 and itself
    # A returning member of the merged cluster, seen a day later: only acct_6 joined within 24 h.
    late = post(client, auth, 5, phone=phone(4), occurred_at="2026-11-21T10:30:00Z")
    assert late["cluster"]["size"] == 6 and growth(late) == 1


def test_growth_is_read_with_the_cluster_lock_not_on_its_own(client, auth, runtime):
    """A clustered account's evaluation reads its cluster's growth in the statement that locks
    the cluster: no growth statement is sent on its own."""
    from sqlalchemy import event

    from kyc.graph.link import _statements

    post(client, auth, 1)
    post(client, auth, 2, device_id="dv_1")
    growth_sql = str(_statements(runtime.engine.dialect.name).growth.compile(dialect=runtime.engine.dialect))
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        sent.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        third = post(client, auth, 3, device_id="dv_1")                  # a new account joins {1, 2}
        again = post(client, auth, 2, device_id="dv_1")                  # a returning member
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    assert third["signals"]["graph"]["cluster_growth_24h"] == 3 and again["signals"]["graph"]["cluster_growth_24h"] == 3
    assert sent and growth_sql not in sent


def test_rescoring_members_of_a_cluster_too_large_to_read_ahead(client, auth, runtime, monkeypatch):
    """A rescore chunk reads its clusters' join times up to GROWTH_READ_AHEAD members; a larger
    cluster's growth (a farm's) is read on its own, for the chunk's plain member records."""
    from kyc import graph
    from kyc.rescore.background import drain
    from kyc.rescore.batch import enqueue_rescore

    for n in (1, 2, 3):
        post(client, auth, n, device_id="dv_1")
    # The third signup blocks: the cluster's first block asks for its other members' rescoring,
    # which a background thread runs. Let it finish first, so that the evaluations read below
    # are the direct run's alone (it raced the run before).
    drain(runtime)
    with runtime.session() as s:
        before = set(s.scalars(select(Evaluation.id).where(Evaluation.trigger == "rescore")))
    monkeypatch.setattr(graph.chunk, "GROWTH_READ_AHEAD", 2)
    assert enqueue_rescore(runtime, ["acct_1", "acct_2", "acct_3"], "test") == 3
    with runtime.session() as s:
        grown = s.scalars(select(Evaluation.signals).where(Evaluation.trigger == "rescore",
                                                           Evaluation.id.not_in(before))).all()
    assert [signals["graph"]["cluster_growth_24h"] for signals in grown] == [3, 3, 3]


def test_a_returning_account_merged_into_another_cluster_holds_that_cluster(runtime):
    """The membership that link() returns names the cluster it returns, as the stored row does,
    after a merge moved the account: scoring then counts the account's traits in that cluster
    without reading and locking it a second time."""
    from datetime import datetime, timezone

    from kyc.graph import link, write_new

    at = datetime(2026, 11, 20, tzinfo=timezone.utc)
    policy = Policy.from_config(runtime.config)
    with runtime.session() as s, s.begin():
        for account in ("acct_a", "acct_b", "acct_c"):
            s.execute(Account.__table__.insert(), [{"id": account, "first_seen_at": at, "last_seen_at": at,
                                                    "decision": "allow", "score": 0}])
            nodes = [("device", "dv_b" if account == "acct_b" else "dv_a")]
            write_new(s, *link(s, policy, account, nodes, at, new_account=True))    # {a, c} and {b}
    with runtime.session() as s, s.begin():
        member, cluster = link(s, policy, "acct_b", [("device", "dv_a")], at)      # {b} merges into {a, c}
        assert cluster.size == 3
        assert member.cluster_id == cluster.id
        assert s.scalar(select(ClusterMember.cluster_id).where(ClusterMember.account_id == "acct_b")) == cluster.id
    assert partition(runtime) == {frozenset({"acct_a", "acct_b", "acct_c"})}


def test_a_bridge_account_merges_two_clusters(client, auth, runtime):
    post(client, auth, 1)
    post(client, auth, 2, device_id="dv_1")                       # cluster A = {1, 2}
    post(client, auth, 3)
    post(client, auth, 4, phone=phone(3))                  # cluster B = {3, 4} by phone
    a, b = cluster_of(runtime, "acct_1"), cluster_of(runtime, "acct_3")
    assert a.id != b.id
    bridge = post(client, auth, 5, device_id="dv_1", phone=phone(3))
    assert bridge["cluster"]["size"] == 5
    assert partition(runtime) == {frozenset({"acct_1", "acct_2", "acct_3", "acct_4", "acct_5"})}
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(Cluster)) == 1
        assert {c for c, in s.execute(select(ClusterMember.cluster_id))} == {bridge["cluster"]["id"]}
    for n in range(1, 6):
        assert client.get(f"/v1/accounts/acct_{n}", headers=auth).json["cluster"] == bridge["cluster"]


def test_super_nodes_stop_linking_but_still_count(small_graph, auth):
    client, rt = small_graph
    sizes = [post(client, auth, n, device_id="dv_shared")["cluster"]["size"] for n in range(1, 7)]
    assert sizes[:4] == [1, 2, 3, 4]
    # The fifth account makes the device a super-node (more than 4 accounts): it links no one.
    assert sizes[4:] == [1, 1]
    assert partition(rt) == {frozenset({f"acct_{n}"}) for n in range(1, 7)}
    with rt.session() as s:
        node = s.execute(select(GraphNode).where(GraphNode.kind == "device")).scalars().all()
        assert [n.super_node for n in node if n.accounts > 1] == [True]
    sixth = client.get("/v1/accounts/acct_6", headers=auth).json
    assert sixth["cluster"]["size"] == 1
    last = client.post("/v1/signups", json=signup(account_id="acct_7", device_id="dv_shared",
                                                  email="x7@example.org"), headers=auth).json
    assert last["signals"]["velocity"]["device_24h"] == 7                 # still counted
    assert "device_reuse" in [r["rule"] for r in last["reasons"]]


def test_a_super_node_split_keeps_other_links(small_graph, auth):
    client, rt = small_graph
    post(client, auth, 1, device_id="dv_shared")
    post(client, auth, 2, device_id="dv_shared", phone=phone(1))    # also shares 1's phone
    for n in range(3, 6):
        post(client, auth, n, device_id="dv_shared")
    assert partition(rt) == {frozenset({"acct_1", "acct_2"}), frozenset({"acct_3"}), frozenset({"acct_4"}),
                             frozenset({"acct_5"})}


def _random_history(client, auth, seed: int, n: int = 70):
    rng = random.Random(seed)
    devices = [f"dv_{i}" for i in range(110)]
    phones = [f"+1415555{i:04d}" for i in range(150)] + [f"+1415666{i:04d}" for i in range(8)]
    for i in range(n):
        body = signup(account_id=f"acct_{i}", email=f"u{rng.randrange(150)}@example.org",
                      device_id=rng.choice(devices), phone=rng.choice(phones),
                      ip=f"81.2.{rng.randrange(6)}.{rng.randrange(1, 250)}",
                      occurred_at=f"2026-11-{rng.randrange(20, 25)}T{rng.randrange(24):02d}:00:00Z")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200


def _counters(rt) -> dict[frozenset, tuple]:
    with rt.session() as s:
        out = {}
        for cluster in s.execute(select(Cluster)).scalars():
            members = frozenset(s.execute(select(ClusterMember.account_id)
                                          .where(ClusterMember.cluster_id == cluster.id)).scalars())
            out[members] = (cluster.size, cluster.first_seen_at, *(getattr(cluster, f) for f in MEMBER_FLAGS))
        return out


@pytest.mark.parametrize("seed", [1, 2])
def test_rebuild_gives_the_clusters_incremental_linking_gave(small_graph, auth, seed):
    client, rt = small_graph
    _random_history(client, auth, seed)
    drain(rt)
    incremental, counters = partition(rt), _counters(rt)
    assert len(incremental) > 3 and max(len(c) for c in incremental) > 2        # something was linked
    with rt.session() as s:
        super_before = set(s.execute(select(GraphNode.kind, GraphNode.value_hash).where(GraphNode.super_node)))
    assert super_before                                                         # and some were cut
    with rt.session() as s, s.begin():
        stats = rebuild(s, Policy.from_config(rt.config))
    assert partition(rt) == incremental
    assert _counters(rt) == counters
    assert stats["clusters"] == len(incremental)
    with rt.session() as s:
        assert set(s.execute(select(GraphNode.kind, GraphNode.value_hash).where(GraphNode.super_node))) == super_before


def test_rebuild_repairs_a_graph_lost_or_gone_wrong(small_graph, auth):
    """Nodes and edges lost, counters off, members scrambled, memberships missing: a rebuild
    from the sightings restores the partition, the counters and each account's cluster id."""
    client, rt = small_graph
    _random_history(client, auth, 3)
    drain(rt)
    incremental, counters = partition(rt), _counters(rt)
    with rt.session() as s:
        # Lone accounts without traits: a lost membership's traits come back with its next evaluation.
        lone = sorted(m.account_id for m in s.execute(select(ClusterMember)).scalars()
                      if frozenset({m.account_id}) in incremental and not any(getattr(m, f) for f in MEMBER_FLAGS))[:2]
    with rt.session() as s, s.begin():
        s.execute(delete(GraphEdge))
        s.execute(delete(GraphNode))
        s.execute(update(Cluster).values(size=Cluster.size + 3, blocked=7))
        # Two lone accounts put into one cluster, a linked one out of its own; one membership gone.
        s.execute(update(ClusterMember).where(ClusterMember.account_id == lone[1])
                  .values(cluster_id=s.get(ClusterMember, lone[0]).cluster_id))
        linked = sorted(min(c) for c in incremental if len(c) > 2)[0]
        s.execute(update(ClusterMember).where(ClusterMember.account_id == linked).values(cluster_id=f"cl_{linked}"))
        s.delete(s.get(ClusterMember, lone[0]))
    with rt.session() as s, s.begin():
        rebuild(s, Policy.from_config(rt.config))
    assert partition(rt) == incremental
    assert _counters(rt) == counters


def _schema(rt) -> set:
    """The graph tables' constraints and indexes as PostgreSQL defines them (SQLite: nothing)."""
    with rt.session() as s:
        if s.get_bind().dialect.name != "postgresql":
            return set()
        tables = ["graph_nodes", "graph_edges", "clusters", "cluster_members", "accounts"]
        return set(s.execute(text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid::regclass::text = ANY(:t) UNION ALL "
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(:t) "
            "AND schemaname = current_schema()"), {"t": tables}))


@pytest.mark.parametrize("seed", [5, 6])
def test_a_first_rebuild_of_an_empty_graph_gives_the_clusters_incremental_linking_gave(small_graph, auth, seed):
    """The graph lost whole (nodes, edges, memberships, clusters): the rebuild loads it afresh
    (PostgreSQL: without the indexes, rebuilt in the same transaction, the schema left as it
    was) into the clusters incremental linking gave; a second rebuild moves nothing."""
    client, rt = small_graph
    _random_history(client, auth, seed)
    drain(rt)
    incremental, counters, schema = partition(rt), _counters(rt), _schema(rt)
    assert max(len(c) for c in incremental) > 2
    with rt.session() as s, s.begin():
        for table in (GraphEdge, GraphNode, ClusterMember, Cluster):
            s.execute(delete(table))
    with rt.session() as s, s.begin():
        stats = rebuild(s, Policy.from_config(rt.config))
    assert stats["members_added"] == sum(len(c) for c in incremental) and stats["members_moved"] == 0
    assert partition(rt) == incremental
    # A lost membership's traits come back with its next evaluation; sizes and first sightings at once.
    assert {m: v[:2] for m, v in _counters(rt).items()} == {m: v[:2] for m, v in counters.items()}
    assert _schema(rt) == schema
    with rt.session() as s, s.begin():
        again = rebuild(s, Policy.from_config(rt.config))
    assert again["members_moved"] == again["members_added"] == 0
    assert partition(rt) == incremental


def _graph_rows(rt) -> tuple[set, set]:
    with rt.session() as s:
        return (set(s.execute(select(GraphNode.kind, GraphNode.value_hash, GraphNode.accounts, GraphNode.super_node,
                                     GraphNode.first_seen_at))),
                set(s.execute(select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id))))


def test_rebuild_of_a_built_graph_corrects_only_what_differs(small_graph, auth):
    """On a built graph the rebuild writes only the rows that differ (PostgreSQL): rows gone
    wrong, missing or extra in either table are put right, the rest left as they are."""
    client, rt = small_graph
    _random_history(client, auth, 4)
    drain(rt)
    with rt.session() as s, s.begin():
        rebuild(s, Policy.from_config(rt.config))
    nodes, edges = _graph_rows(rt)
    incremental = partition(rt)
    shared = sorted((k, h) for k, h, accounts, is_super, _ in nodes if accounts > 1 and not is_super)
    lone = sorted((k, h) for k, h, accounts, _, _ in nodes if accounts == 1)
    with rt.session() as s, s.begin():
        write_lock(s)       # read, then write: on SQLite wait for any other writer instead of failing at once
        gone = s.execute(select(GraphEdge).where(GraphEdge.kind == shared[0][0], GraphEdge.value_hash == shared[0][1])
                         ).scalars().first()
        s.delete(gone)                                                            # an edge lost
        s.execute(update(GraphNode).where(GraphNode.kind == shared[1][0], GraphNode.value_hash == shared[1][1])
                  .values(accounts=GraphNode.accounts + 5))                       # a count off
        s.execute(update(GraphNode).where(GraphNode.kind == lone[0][0], GraphNode.value_hash == lone[0][1])
                  .values(super_node=True))                                       # a false super-node
        s.execute(delete(GraphNode).where(GraphNode.kind == lone[1][0], GraphNode.value_hash == lone[1][1]))
        s.add(GraphNode(kind="device", value_hash="stray", accounts=2, super_node=False,
                        first_seen_at=min(first for *_, first in nodes)))                         # nodes and edges of no sighting
        s.add_all([GraphEdge(kind="device", value_hash="stray", account_id=a) for a in ("acct_1", "acct_2")])
    with rt.session() as s, s.begin():
        rebuild(s, Policy.from_config(rt.config))
    assert _graph_rows(rt) == (nodes, edges)
    assert partition(rt) == incremental


def test_rebuild_keeps_cluster_ids(client, auth, runtime):
    post(client, auth, 1)
    cluster = post(client, auth, 2, device_id="dv_1")["cluster"]
    with runtime.session() as s, s.begin():
        rebuild(s, Policy.from_config(runtime.config))
    assert client.get("/v1/accounts/acct_2", headers=auth).json["cluster"] == cluster


def test_components_core_is_order_independent():
    edges = [(("device", "d1"), "a"), (("device", "d1"), "b"), (("phone_range", "r"), "c"),
             (("ip_prefix_day", "p"), "c"), (("phone_range", "r"), "d"), (("ip_prefix_day", "p"), "d"),
             (("phone_range", "r"), "e"), (("email_template", "t"), "e")]
    expected = {frozenset("ab"), frozenset("cd"), frozenset("e")}
    for seed in range(5):
        shuffled = edges[:]
        random.Random(seed).shuffle(shuffled)
        groups = {frozenset(g) for g in components(shuffled).groups().values()}
        assert groups == expected


def test_a_fraud_label_is_kept_and_rescores_the_cluster(client, auth, runtime):
    post(client, auth, 1)
    post(client, auth, 2, device_id="dv_1")
    post(client, auth, 3)
    drain(runtime)
    before = client.get("/v1/accounts/acct_1", headers=auth).json["state_version"]
    response = client.post("/v1/accounts/acct_1/labels", json={"label": "fraud", "note": "chargebacks"},
                           headers=auth)
    assert response.status_code == 200, response.json
    drain(runtime)                                   # the members' rescoring runs in the background
    body = response.json
    assert body["label"] == "fraud" and body["state_version"] == before + 1
    with runtime.session() as s:
        assert s.execute(select(AccountLabel.label, AccountLabel.note, AccountLabel.source)).all() == [
            ("fraud", "chargebacks", "tests")]
        rescored = dict(s.execute(select(Evaluation.account_id, Evaluation.decision)
                                  .where(Evaluation.trigger == "rescore")).all())
    # Both members were rescored through the pipeline; the unlinked account was not.
    assert set(rescored) == {"acct_1", "acct_2"}
    second = client.get("/v1/accounts/acct_2", headers=auth).json
    assert "linked_to_fraud" in [r["rule"] for r in second["reasons"]]
    assert second["decision"] in ("review", "block")
    third = client.get("/v1/accounts/acct_3", headers=auth).json
    assert "linked_to_fraud" not in [r["rule"] for r in third["reasons"]]
    # A repeated label adds history but does not itself move the version.
    with runtime.session() as s, s.begin():
        version = s.get(Account, "acct_1").state_version
        again = label_account(runtime, s, "acct_1", "fraud", None, "tests")
        assert again.state_version == version
        assert s.scalar(select(func.count()).select_from(AccountLabel)) == 2
    drain(runtime)
    version = client.get("/v1/accounts/acct_1", headers=auth).json["state_version"]
    legit = client.post("/v1/accounts/acct_1/labels", json={"label": "legit"}, headers=auth).json
    assert legit["label"] == "legit" and legit["state_version"] > version
    assert cluster_of(runtime, "acct_1").labeled_fraud == 0
    # The label lifted is news too: the member held for the link is rescored without it.
    drain(runtime)
    second = client.get("/v1/accounts/acct_2", headers=auth).json
    assert not {"linked_to_fraud", "linked_to_blocked"} & {r["rule"] for r in second["reasons"]}, second
    assert second["decision"] == "allow"


def test_a_split_rescores_the_members_whose_links_went_with_it(small_graph, auth):
    """A device turning super-node links nobody: the members it held together, held for a
    fraud label on one of them, are rescored alone and lose the linked_to_* reasons."""
    client, runtime = small_graph
    for n in (20, 21, 22):
        post(client, auth, n, device_id="dv_family")
    assert client.post("/v1/accounts/acct_20/labels", json={"label": "fraud"}, headers=auth).status_code == 200
    drain(runtime)
    assert "linked_to_fraud" in {r["rule"] for r in client.get("/v1/accounts/acct_21", headers=auth).json["reasons"]}
    for n in (23, 24):                              # the device's fifth holder makes it a super-node (threshold 4)
        post(client, auth, n, device_id="dv_family")
    drain(runtime)
    for n in (21, 22):
        account = client.get(f"/v1/accounts/acct_{n}", headers=auth).json
        assert account["cluster"]["size"] == 1, account
        assert not {"linked_to_fraud", "linked_to_blocked"} & {r["rule"] for r in account["reasons"]}, account


def test_bad_labels_are_refused_and_change_nothing(client, auth, runtime):
    post(client, auth, 1)
    bad = client.post("/v1/accounts/acct_1/labels", json={"label": "spam"}, headers=auth)
    assert bad.status_code == 400 and "label" in bad.json["error"]["fields"]
    extra = client.post("/v1/accounts/acct_1/labels", json={"label": "fraud", "by": "me"}, headers=auth)
    assert extra.status_code == 400 and "by" in extra.json["error"]["fields"]
    missing = client.post("/v1/accounts/nobody/labels", json={"label": "fraud"}, headers=auth)
    assert missing.status_code == 404
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(AccountLabel)) == 0
        assert s.get(Account, "acct_1").label is None


def test_a_block_rescores_the_rest_of_the_cluster(client, auth, runtime):
    post(client, auth, 1)
    assert "linked_to_blocked" not in [r["rule"] for r in client.get("/v1/accounts/acct_1", headers=auth).json["reasons"]]
    headless = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "HeadlessChrome/120.0.0.0 Safari/537.36")
    blocked = post(client, auth, 2, device_id="dv_1", user_agent=headless)
    assert blocked["decision"] == "block"
    drain(runtime)
    first = client.get("/v1/accounts/acct_1", headers=auth).json
    assert "linked_to_blocked" in [r["rule"] for r in first["reasons"]]
    assert first["evaluations"][0]["trigger"] == "rescore"
    assert cluster_of(runtime, "acct_1").blocked == 1


def test_growing_past_a_size_step_rescores_members(small_graph, auth):
    client, rt = small_graph
    post(client, auth, 1)
    post(client, auth, 2, device_id="dv_1")
    drain(rt)
    with rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.trigger == "rescore")) == 0
    post(client, auth, 3, phone=phone(1))                     # size 3: a rescore step
    drain(rt)
    with rt.session() as s:
        rescored = set(s.execute(select(Evaluation.account_id).where(Evaluation.trigger == "rescore")).scalars())
    assert rescored == {"acct_1", "acct_2"}


def test_ops_see_clusters_largest_first_with_why(client, auth, runtime):
    post(client, auth, 1)
    post(client, auth, 2, device_id="dv_1")
    post(client, auth, 3, device_id="dv_1")
    post(client, auth, 4)
    post(client, auth, 5, phone=phone(4))
    drain(runtime)                                   # decisions settle before they are compared
    listing = client.get("/v1/clusters?min_size=2", headers=auth)
    assert listing.status_code == 200
    clusters = listing.json["clusters"]
    assert [c["size"] for c in clusters] == [3, 2]
    top = clusters[0]
    assert top["decisions"]["allow"] + top["decisions"]["verify"] + top["decisions"]["review"] + \
        top["decisions"]["block"] == 3
    assert top["identifiers"][0]["kind"] == "device" and top["identifiers"][0]["accounts"] == 3
    assert len(top["identifiers"][0]["hash"]) == 32 and "dv_1" not in str(top)
    assert client.get("/v1/clusters?min_size=3", headers=auth).json["clusters"] == [top]
    detail = client.get(f"/v1/clusters/{clusters[1]['id']}", headers=auth).json
    assert {m["account_id"]: m["linked_by"] for m in detail["members"]} == {"acct_4": ["phone", "phone_range"],
                                                                          "acct_5": ["phone", "phone_range"]}
    assert client.get("/v1/clusters/cl_nope", headers=auth).status_code == 404
    bad = client.get("/v1/clusters?min_size=two", headers=auth)
    assert bad.status_code == 400 and "min_size" in bad.json["error"]["fields"]
    assert client.get("/v1/clusters").status_code == 401


def test_concurrent_signups_link_as_a_rebuild_would(app, auth, runtime):
    """Threads posting accounts that share devices at once: no lost link, no error, no deadlock."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(offset: int) -> list[int]:
        client = app.test_client()
        codes = []
        for n in range(offset, 60, 6):
            body = signup(account_id=f"acct_{n}", email=f"user{n}@example{n}.org", phone=phone(n),
                          ip=f"81.2.{n}.1", device_id=f"dv_{n % 7}")
            codes.append(as_a_gateway(lambda: client.post("/v1/signups", json=body, headers=auth)).status_code)
        return codes

    with ThreadPoolExecutor(6) as pool:
        codes = [c for result in pool.map(worker, range(6)) for c in result]
    assert codes == [200] * 60
    drain(runtime)
    incremental = partition(runtime)
    assert incremental == {frozenset(f"acct_{n}" for n in range(60) if n % 7 == d) for d in range(7)}
    with runtime.session() as s, s.begin():
        rebuild(s, Policy.from_config(runtime.config))
    assert partition(runtime) == incremental


def wait_until_blocked_by(runtime, pid: int, thread) -> None:
    """Return once `thread` waits for a lock held by the backend `pid` (PostgreSQL)."""
    with runtime.session() as watcher:
        while thread.is_alive() and not watcher.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"), {"pid": pid}):
            watcher.rollback()
            thread.join(0.01)
    assert thread.is_alive()


def test_a_signup_waiting_on_a_node_a_concurrent_signup_created_links_to_it(postgres_runtime):
    """PostgreSQL reads a new account's other holders in the statement that counts its nodes,
    in a snapshot taken before it waited for a concurrent signup's node row: when that signup
    commits, its edge is missing from what was read, which the counts show, and the holders
    are read again. Both accounts end in one cluster, as a rebuild would put them. (SQLite runs
    one writer at a time.)"""
    runtime = postgres_runtime
    import threading
    from datetime import datetime, timezone

    from kyc.graph import link, write_new

    at = datetime(2026, 11, 20, tzinfo=timezone.utc)
    policy = Policy.from_config(runtime.config)

    def signup_of(s, account: str):
        s.execute(Account.__table__.insert(), [{"id": account, "first_seen_at": at, "last_seen_at": at,
                                                "decision": "allow", "score": 0}])
        member, cluster = link(s, policy, account, [("device", "dv_race"), ("email", f"{account}@example.org")], at,
                               new_account=True)
        write_new(s, member, cluster)
        s.flush()

    first = runtime.session()
    first.begin()
    signup_of(first, "acct_first")
    holder = first.scalar(text("SELECT pg_backend_pid()"))
    errors: list[BaseException] = []

    def second():
        try:
            with runtime.session() as s, s.begin():
                signup_of(s, "acct_second")
        except BaseException as exc:   # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    wait_until_blocked_by(runtime, holder, thread)      # the second signup waits for the first's node row
    first.commit()
    first.close()
    thread.join()
    assert not errors
    assert frozenset({"acct_first", "acct_second"}) in partition(runtime)


def test_a_backfilled_event_waits_for_a_node_a_concurrent_signup_holds_without_holding_its_cluster(postgres_runtime):
    """An account's earlier event (a backfill) moves its membership and cluster back in time.
    Written before its nodes were counted, those rows were locked first; a concurrent signup
    that counted one of its nodes and then locked that cluster met it in a circle, and one of
    the two was cancelled (deadlock detected: a 503). Written after the cluster's lock, the
    backfill waits for the node only, the signup goes through, then the backfill links to it."""
    import threading
    from datetime import timedelta

    from kyc.graph import link, locked_cluster, write_new

    runtime, at = postgres_runtime, datetime(2026, 11, 20, tzinfo=timezone.utc)
    earlier = at - timedelta(days=3)
    policy = Policy.from_config(runtime.config)

    def new_account(s, account: str, nodes: list) -> None:
        s.execute(Account.__table__.insert(), [{"id": account, "first_seen_at": at, "last_seen_at": at,
                                                "decision": "allow", "score": 0}])
        write_new(s, *link(s, policy, account, nodes, at, new_account=True))

    with runtime.session() as s, s.begin():
        new_account(s, "acct_a", [("device", "dv_ab")])
        new_account(s, "acct_b", [("device", "dv_ab")])
    cluster = cluster_of(runtime, "acct_a").id
    assert cluster_of(runtime, "acct_b").id == cluster
    # A signup counts a new node (its row locked until it commits)...
    signup_tx = runtime.session()
    signup_tx.begin()
    new_account(signup_tx, "acct_d", [("device", "dv_new")])
    holder = signup_tx.scalar(text("SELECT pg_backend_pid()"))
    errors: list[BaseException] = []

    def backfill():
        try:
            with runtime.session() as s, s.begin():
                link(s, policy, "acct_a", [("device", "dv_new")], earlier)
        except BaseException as exc:   # reported by the test, not lost in the thread
            errors.append(exc)

    # ... while the account's earlier event shows the same node: it waits for that row ...
    thread = threading.Thread(target=backfill)
    thread.start()
    wait_until_blocked_by(runtime, holder, thread)
    # ... and the signup, still holding it, locks the account's cluster (say it links to it too).
    locked_cluster(signup_tx, signup_tx.get(ClusterMember, "acct_b"))
    signup_tx.commit()
    signup_tx.close()
    thread.join()
    assert not errors
    assert frozenset({"acct_a", "acct_b", "acct_d"}) in partition(runtime)
    with runtime.session() as s:
        assert s.get(ClusterMember, "acct_a").joined_at == earlier
        assert s.get(Cluster, s.get(ClusterMember, "acct_a").cluster_id).first_seen_at == earlier


def test_the_link_statement_reads_a_returning_account_s_holders_through_every_node_it_holds(postgres_runtime):
    """PostgreSQL: for an account that holds nodes already, the statement that counts its new
    nodes also reads the other holders of the nodes it held before, so linking it reads nothing
    more; only a missed concurrent edge (see the test above) makes it read again."""
    from datetime import datetime, timezone

    from kyc.graph.link import _count_and_read, link, write_new

    runtime, at = postgres_runtime, datetime(2026, 11, 20, tzinfo=timezone.utc)
    policy = Policy.from_config(runtime.config)
    with runtime.session() as s, s.begin():
        for account, nodes in (("acct_a", [("ip_prefix_day", "p1"), ("phone_range", "r1")]),
                               ("acct_b", [("ip_prefix_day", "p1")])):
            s.execute(Account.__table__.insert(), [{"id": account, "first_seen_at": at, "last_seen_at": at,
                                                    "decision": "allow", "score": 0}])
            write_new(s, *link(s, policy, account, nodes, at, new_account=True))
    with runtime.session() as s, s.begin():
        counted, holders = _count_and_read(s, "acct_b", [("phone_range", "r1"), ("device", "d_b")], at, existing=True)
        assert counted == [("device", "d_b", 1), ("phone_range", "r1", 2)]
        assert sorted(h[:3] for h in holders) == [("ip_prefix_day", "p1", "acct_a"), ("phone_range", "r1", "acct_a")]
        # A new account holds nothing before: the same statement reads only through what it counts.
        s.execute(Account.__table__.insert(), [{"id": "acct_c", "first_seen_at": at, "last_seen_at": at,
                                                "decision": "allow", "score": 0}])
        counted, holders = _count_and_read(s, "acct_c", [("phone_range", "r1")], at, existing=False)
        assert counted == [("phone_range", "r1", 3)] and sorted(h[2] for h in holders) == ["acct_a", "acct_b"]


def test_locking_a_member_s_cluster_follows_a_concurrent_merge_that_moved_it(postgres_runtime):
    """The membership is read before the cluster is locked. A merge committing in between moves
    the member and deletes its cluster: the lock is taken on the cluster the member is in now,
    and the member read before follows it."""
    import threading
    from datetime import datetime, timezone

    from kyc.graph import link, locked_cluster, write_new

    runtime, at = postgres_runtime, datetime(2026, 11, 20, tzinfo=timezone.utc)
    policy = Policy.from_config(runtime.config)
    with runtime.session() as s, s.begin():
        for account in ("acct_a", "acct_b"):
            s.execute(Account.__table__.insert(), [{"id": account, "first_seen_at": at, "last_seen_at": at,
                                                    "decision": "allow", "score": 0}])
            write_new(s, *link(s, policy, account, [("device", f"dv_{account}")], at, new_account=True))
    before, after = cluster_of(runtime, "acct_a").id, cluster_of(runtime, "acct_b").id
    merger = runtime.session()
    merger.begin()
    merger.execute(select(Cluster.id).where(Cluster.id == before).with_for_update())
    merger.execute(update(ClusterMember).where(ClusterMember.account_id == "acct_a").values(cluster_id=after))
    merger.execute(update(Cluster).where(Cluster.id == after).values(size=2))
    merger.execute(delete(Cluster).where(Cluster.id == before))
    holder = merger.scalar(text("SELECT pg_backend_pid()"))
    found: dict = {}

    def lock():
        with runtime.session() as s, s.begin():
            member = s.get(ClusterMember, "acct_a")
            found["read"] = member.cluster_id
            found["locked"] = locked_cluster(s, member).id, member.cluster_id

    thread = threading.Thread(target=lock)
    thread.start()
    wait_until_blocked_by(runtime, holder, thread)
    merger.commit()
    merger.close()
    thread.join()
    assert found == {"read": before, "locked": (after, after)}


@pytest.mark.parametrize("read_ahead", [2000, 2])
def test_rescoring_a_farms_first_member_reads_the_growth_that_followed_it(client, auth, runtime, monkeypatch,
                                                                          read_ahead):
    """A rescore reads the cluster's growth as of its newest member, not the rescored member's
    own event time: the first members of a farm see the burst that followed them (before, the
    first member of five signups in three hours was rescored with a growth of 1)."""
    from kyc import graph
    from kyc.rescore.background import drain
    from kyc.rescore.batch import enqueue_rescore
    from kyc.scoring import rescore_account

    for n in range(1, 6):
        post(client, auth, n, device_id="dv_farm", occurred_at=f"2026-11-24T{10 + n // 2:02d}:{n * 7:02d}:00Z")
    drain(runtime)                        # reaching size 5 asked for the members' rescoring: let it end
    with runtime.session() as s:
        before = set(s.scalars(select(Evaluation.id).where(Evaluation.trigger == "rescore")))
    monkeypatch.setattr(graph.chunk, "GROWTH_READ_AHEAD", read_ahead)
    assert enqueue_rescore(runtime, ["acct_1"], "test") == 1              # the batch path
    with runtime.session() as s, s.begin():
        single = rescore_account(runtime, s, "acct_1")                    # one account (a verification)
        latest = s.scalars(select(Evaluation.signals).where(Evaluation.account_id == "acct_1",
                                                            Evaluation.trigger == "rescore",
                                                            Evaluation.id.not_in(before))).all()
    assert [e.signals["graph"]["cluster_growth_24h"] for e in single] == [5]
    assert [signals["graph"]["cluster_growth_24h"] for signals in latest] == [5, 5]


def test_rescoring_a_cluster_after_a_split_selects_its_members_as_they_are_now(small_graph, auth):
    """The rescore selector of a cluster reads the memberships, which a split moves at once:
    the copy on each account's row follows only its next evaluation (before, a split left
    `kyc rescore --cluster` selecting the old members, or nobody)."""
    from kyc.rescore.runs import accounts_query

    client, rt = small_graph
    post(client, auth, 1, device_id="dv_shared")
    post(client, auth, 2, device_id="dv_shared", phone=phone(1))       # {1, 2}: device and phone
    for n in (3, 4):
        post(client, auth, n, device_id="dv_shared")                   # {1, 2, 3, 4}
    post(client, auth, 5, device_id="dv_shared")                       # the device turns super: split
    drain(rt)
    assert partition(rt) == {frozenset({"acct_1", "acct_2"}), frozenset({"acct_3"}), frozenset({"acct_4"}),
                             frozenset({"acct_5"})}
    with rt.session() as s:
        clusters = dict(s.execute(select(ClusterMember.account_id, ClusterMember.cluster_id)).all())
        selected = {account: set(s.scalars(accounts_query("cluster", {"cluster_id": cluster}, "v")))
                    for account, cluster in clusters.items()}
    assert selected["acct_1"] == selected["acct_2"] == {"acct_1", "acct_2"}
    assert [selected[f"acct_{n}"] for n in (3, 4, 5)] == [{"acct_3"}, {"acct_4"}, {"acct_5"}]


def test_link_reasons_counts_shared_identifiers_and_reads_the_members_asked_about(client, auth, runtime):
    """Against the edges themselves: every identifier held by two or more members, with its
    count; for any subset of members, each one's kinds shared with another member."""
    from collections import defaultdict

    from kyc.graph import link_reasons, shared_kinds
    from kyc.models import GraphEdge

    for n in range(1, 7):
        post(client, auth, n, device_id="dv_shared" if n < 4 else f"dv_{n}",
             phone="+14155550100" if n in (3, 4) else phone(n))
    cluster_id = cluster_of(runtime, "acct_1").id
    with runtime.session() as s:
        members = list(s.scalars(select(ClusterMember.account_id).where(ClusterMember.cluster_id == cluster_id)))
        holders = defaultdict(set)
        for kind, value_hash, account in s.execute(select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
                                                   .where(GraphEdge.account_id.in_(members))):
            holders[(kind, value_hash)].add(account)
        shared = {node: accounts for node, accounts in holders.items() if len(accounts) > 1}
        expected = defaultdict(set)
        for (kind, _), accounts in shared.items():
            for account in accounts:
                expected[account].add(kind)
        assert len(members) == 4 and {"device", "phone"} <= set(expected["acct_3"])
        reasons, identifiers = link_reasons(s, cluster_id, members)
        assert reasons == {a: sorted(k) for a, k in expected.items()}
        assert {(i["kind"], i["hash"]): i["accounts"] for i in identifiers} == {n: len(a) for n, a in shared.items()}
        assert [i["accounts"] for i in identifiers] == sorted((i["accounts"] for i in identifiers), reverse=True)
        for one in members:
            assert link_reasons(s, cluster_id, [one])[0] == ({one: sorted(expected[one])} if expected[one] else {})
            assert shared_kinds(s, [one]).get(one, []) == sorted(expected[one])
        assert shared_kinds(s, members) == {a: sorted(k) for a, k in expected.items()}
        assert link_reasons(s, cluster_id)[0] == {}


class _Race:
    """Signups linked straight through the graph (PostgreSQL), and one that commits in another
    transaction at the moment a step of the graph's code is about to run in the first."""

    AT = datetime(2026, 11, 20, tzinfo=timezone.utc)

    def __init__(self, runtime, policy: Policy):
        self.runtime, self.policy = runtime, policy

    def signup(self, s, account: str, nodes) -> None:
        from kyc.graph import link as link_account, write_new

        s.execute(Account.__table__.insert(), [{"id": account, "first_seen_at": self.AT, "last_seen_at": self.AT,
                                                "decision": "allow", "score": 0}])
        write_new(s, *link_account(s, self.policy, account, nodes, self.AT, new_account=True))

    def commit_before(self, monkeypatch, step: str, account: str, nodes) -> list:
        """Before the first call of kyc.graph.link's `step`, sign `account` up and commit."""
        graph_link = sys.modules["kyc.graph.link"]           # the module (kyc.graph.link is also a function)
        real, raced = getattr(graph_link, step), []

        def first_the_other(session, *args, **kwargs):
            if not raced:
                raced.append(True)
                with self.runtime.session() as other, other.begin():
                    self.signup(other, account, nodes)
            return real(session, *args, **kwargs)

        monkeypatch.setattr(graph_link, step, first_the_other)
        return raced


def test_joining_a_cluster_a_concurrent_merge_removes_follows_it(postgres_runtime, monkeypatch):
    """PostgreSQL: a new account B shares A's device. After B's transaction read A's cluster and
    before it locked it, D's signup (Z's device, A's phone) merged A's cluster into Z's and
    committed. B joins the cluster A is in now; before, it found A's cluster gone and was left
    alone (an outside test lost the link in 22 rounds of 40)."""
    race = _Race(postgres_runtime, Policy.from_config(postgres_runtime.config))
    with postgres_runtime.session() as s, s.begin():
        race.signup(s, "acct_z1", [("device", "dv_z")])
        race.signup(s, "acct_z2", [("device", "dv_z")])
        race.signup(s, "acct_a", [("device", "dv_a"), ("phone", "ph_a")])
    raced = race.commit_before(monkeypatch, "_absorb", "acct_d", [("device", "dv_z"), ("phone", "ph_a")])
    with postgres_runtime.session() as s, s.begin():
        race.signup(s, "acct_b", [("device", "dv_a")])
    assert raced
    assert frozenset({"acct_z1", "acct_z2", "acct_a", "acct_b", "acct_d"}) in partition(postgres_runtime)
    assert cluster_of(postgres_runtime, "acct_b").size == 5


def test_a_split_follows_members_a_concurrent_merge_moved(postgres_runtime, monkeypatch):
    """PostgreSQL: a device held by a1-a4 turns super-node with S, its fifth holder. Between S's
    reading their cluster and locking it, T (a phone of L's and a1's phone) merged that cluster into
    the larger L and committed. S splits L: a2-a4 were held in it only by the device (before,
    S split the cluster it had read, gone by then, and a2-a4 stayed linked to L for good)."""
    race = _Race(postgres_runtime, replace(Policy.from_config(postgres_runtime.config), super_strong=4))
    with postgres_runtime.session() as s, s.begin():
        for n in range(1, 5):
            race.signup(s, f"acct_a{n}", [("device", "dv_x"), ("phone", f"ph_a{n}")])
        for n in range(1, 7):                # L: six accounts chained by phones (none held by more than two)
            race.signup(s, f"acct_l{n}", [("phone", f"ph_l{n}"), ("phone", f"ph_l{n + 1}")])
    raced = race.commit_before(monkeypatch, "recluster", "acct_t", [("phone", "ph_l1"), ("phone", "ph_a1")])
    with postgres_runtime.session() as s, s.begin():
        race.signup(s, "acct_s", [("device", "dv_x")])
    assert raced
    groups = partition(postgres_runtime)
    assert frozenset({"acct_a1", "acct_t"} | {f"acct_l{n}" for n in range(1, 7)}) in groups
    for alone in ("acct_a2", "acct_a3", "acct_a4", "acct_s"):
        assert frozenset({alone}) in groups, groups
