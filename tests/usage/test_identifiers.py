"""Usage links accounts (kyc/usage/identifiers.py): an API key, prompt templates and the
activity IP's network are identifiers of the identity graph; a popular template links nobody;
the activity IP is a velocity sighting like a signup's."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from hypothesis import HealthCheck, example, given, settings, strategies as st

from sqlalchemy import func, select

from kyc import create_app, graph
from kyc.models import ClusterMember, Evaluation, GraphEdge, GraphNode, PendingLink, Sighting
from kyc.rescore.background import drain
from kyc.usage.identifiers import link_pending
from kyc.runtime import Runtime
from tests.conftest import as_a_gateway, payment, signup
from tests.flows import key_headers

SIGNED_UP = "2026-10-01T12:00:00Z"
DAY = "2026-11-24"
_SHAPES = ("{i}.person{p}", "{p}{i}x", "x_{p}_{i}", "{p}-{i}-mail", "{i}{p}")
_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")


def _people(client, auth, prefix: str, n: int, first: int = 0) -> list[str]:
    """n unrelated people: their own devices, mailboxes (of different shapes) and home networks."""
    ids = []
    for i in range(first, first + n):
        body = signup(account_id=f"{prefix}_{i}", email=_SHAPES[i % 5].format(p=prefix, i=i) + "@" + _DOMAINS[i // 5],
                      device_id=f"dv_{prefix}_{i}", phone=None, ip=f"73.{15 + i}.1.{i + 1}", occurred_at=SIGNED_UP)
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
        ids.append(body["account_id"])
    return ids


def _report(account: str, *, ip: str, prompts: dict | None = None, key: str | None = None, hour: int = 10) -> dict:
    body = {"account_id": account, "occurred_at": f"{DAY}T{hour:02d}:30:00Z", "window_seconds": 3600,
            "requests": 300, "ip": ip, "tier": "standard", "interval_cv": 0.7}
    if prompts:
        body["prompt_fingerprints"] = prompts
    if key:
        body["api_key_id"] = key
    return body


def _clusters(runtime, ids: list[str]) -> dict[str, str]:
    # No waiting: a report's links are made before it is answered, so what the next call reads
    # (an entitlement check, this read) already holds them.
    with runtime.session() as s:
        return dict(s.execute(select(ClusterMember.account_id, ClusterMember.cluster_id)
                              .where(ClusterMember.account_id.in_(ids))).all())


def test_one_api_key_behind_two_accounts_links_them(client, auth, runtime):
    a, b, c = _people(client, auth, "user", 3)
    reports = [_report(a, ip="73.90.1.1", key="key_shared"), _report(b, ip="198.51.100.7", key="key_shared"),
               _report(c, ip="73.91.1.1", key="key_own")]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    clusters = _clusters(runtime, [a, b, c])
    assert clusters[a] == clusters[b] != clusters[c]
    assert client.get(f"/v1/accounts/{a}", headers=auth).json["cluster"]["size"] == 2


def test_a_key_seen_again_later_links_the_later_account(client, auth, runtime):
    a, b = _people(client, auth, "user", 2)
    single = {k: v for k, v in _report(a, ip="73.90.1.1", key="key_x").items() if k != "account_id"}
    assert client.post(f"/v1/accounts/{a}/activity", json=single, headers=auth).status_code == 200
    answer = client.post("/v1/activity", json={"reports": [_report(b, ip="73.92.1.1", key="key_x", hour=14)]},
                         headers=auth)
    assert answer.status_code == 200
    clusters = _clusters(runtime, [a, b])
    assert clusters[a] == clusters[b]
    # The link changed b's cluster: b was re-evaluated with it, after the report's commit and
    # before its answer.
    assert answer.json["results"][0]["reevaluated"] is True
    with runtime.session() as s:
        latest = s.execute(select(Evaluation).where(Evaluation.account_id == b)
                           .order_by(Evaluation.created_at.desc()).limit(1)).scalar_one()
    assert latest.trigger != "live" and latest.signals["usage"]["requests_today"] == 300


def test_an_office_s_accounts_on_internal_templates_are_one_cluster_and_served(client, auth, runtime):
    team = _people(client, auth, "acme", 4)
    internal = {f"pf_acme_{k}": 40 for k in range(5)}
    reports = [_report(a, ip=f"203.0.113.{10 + i}", prompts=internal, key=f"key_{a}") for i, a in enumerate(team)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["allow"] * 4
    assert len(set(_clusters(runtime, team).values())) == 1
    # One shared weak kind alone links nobody: the same templates from home networks.
    others = _people(client, auth, "home", 2, first=4)
    reports = [_report(a, ip=f"73.{120 + i}.4.4", prompts=internal, key=f"key_{a}") for i, a in enumerate(others)]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    clusters = _clusters(runtime, team + others)
    assert len({clusters[o] for o in others} | {clusters[team[0]]}) == 3


def _graph_facts(runtime, account: str) -> dict:
    with runtime.session() as s:
        return s.execute(select(Evaluation.signals).where(Evaluation.account_id == account)
                         .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(1)).scalar_one()["graph"]


def test_a_course_linked_by_its_templates_on_the_campus_network_is_not_held_for_its_size(client, auth, runtime):
    """Twenty-two participants of a lab session on the campus's one address, on the course's
    templates, are one cluster (two weak kinds), linked only with the templates: not held for
    the cluster's size, whether scored by a report (a rescore chunk) or live (a card). Two of
    them behind one API key are linked by what they are too, and held for it. (They enrolled
    over three weeks and tried the API from home the week before: no wake, no burst of growth.)"""
    course = []
    for i in range(22):
        body = signup(account_id=f"student_{i}", email=_SHAPES[i % 5].format(p="student", i=i) + "@" + _DOMAINS[i // 5],
                      device_id=f"dv_student_{i}", phone=None, ip=f"73.{15 + i}.1.{i + 1}",
                      occurred_at=f"2026-10-{1 + i:02d}T12:00:00Z")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
        course.append(body["account_id"])
    tried = [{**_report(a, ip=f"73.{15 + i}.1.{i + 1}"), "occurred_at": "2026-11-17T20:30:00Z", "requests": 5}
             for i, a in enumerate(course)]
    assert client.post("/v1/activity", json={"reports": tried}, headers=auth).status_code == 200
    templates = {f"pf_course_{k}": 5 for k in range(4)}
    reports = [_report(a, ip="128.59.1.10", prompts=templates, key=f"key_{a}") for a in course]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert len(set(_clusters(runtime, course).values())) == 1
    assert [r["decision"] for r in results] == ["allow"] * 22
    facts = _graph_facts(runtime, course[0])
    assert facts["cluster_size"] == 22 and facts["linked_by_work_only"] is True
    card = payment(account_id=course[1], occurred_at=f"{DAY}T12:00:00Z")
    answer = client.post("/v1/payment-methods", json=card, headers=auth)
    assert answer.status_code == 200 and answer.json["decision"] == "allow"
    assert _graph_facts(runtime, course[1])["linked_by_work_only"] is True
    shared_key = [_report(a, ip="128.59.1.10", prompts=templates, key="key_lab", hour=11) for a in course[2:4]]
    results = client.post("/v1/activity", json={"reports": shared_key}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["review"] * 2
    assert _graph_facts(runtime, course[2])["linked_by_work_only"] is False
    assert "large_cluster" in {r["rule"] for r in client.get(f"/v1/accounts/{course[2]}", headers=auth).json["reasons"]}
    assert client.get(f"/v1/accounts/{course[4]}", headers=auth).json["decision"] == "allow"


def test_an_office_s_staff_sharing_an_email_shape_are_linked_by_their_work_not_held_for_their_number(
        client, auth, runtime):
    """Twenty-two staff with addresses of one shape at the company's domain, who signed up from
    home on different days, use the API from the office's network: the email shape and the
    office's network link them (two weak kinds, no template), as people who work together are,
    and they are not held for the cluster's size."""
    firsts, lasts = ("anna", "john", "mark", "lisa", "paul", "kate"), ("smith", "jones", "brown", "moore")
    staff = []
    for i in range(22):
        body = signup(account_id=f"staff_{i}", email=f"{firsts[i % 6]}.{lasts[i // 6]}@acmecorp.com",
                      device_id=f"dv_staff_{i}", phone=None, ip=f"73.{60 + i}.1.{i + 1}",
                      occurred_at=f"2026-09-{1 + i:02d}T12:00:00Z")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
        staff.append(body["account_id"])
    reports = [_report(a, ip=f"198.51.100.{10 + i}", key=f"key_{a}") for i, a in enumerate(staff)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert len(set(_clusters(runtime, staff).values())) == 1
    assert [r["decision"] for r in results] == ["allow"] * 22
    facts = _graph_facts(runtime, staff[0])
    assert facts["cluster_size"] == 22 and facts["linked_by_work_only"] is True


def test_a_weak_kind_shared_in_a_later_call_links_with_the_kind_shared_before(client, auth, runtime):
    """Two weak kinds shared in different calls link as in one: the second call's accounts share
    one kind among what they show, and the other among what they held already (read, each kind
    shared already left out: kyc.graph.link._shared_weak_kinds), whichever came first."""
    office = _people(client, auth, "acme", 2)
    away = _people(client, auth, "away", 2, first=2)
    network_first = [_report(a, ip=f"203.0.113.{10 + i}", prompts={f"pf_own_{a}": 5}) for i, a in enumerate(office)]
    templates_first = [_report(a, ip=f"73.{130 + i}.4.4", prompts={"pf_away_tool": 5}) for i, a in enumerate(away)]
    assert client.post("/v1/activity", json={"reports": network_first + templates_first}, headers=auth).status_code == 200
    clusters = _clusters(runtime, office + away)
    assert len(set(clusters.values())) == 4             # one weak kind each: nobody linked yet
    later = ([_report(a, ip=f"203.0.113.{10 + i}", prompts={"pf_acme_internal": 5}, hour=11)
              for i, a in enumerate(office)]
             + [_report(a, ip="198.51.100.20", prompts={"pf_away_tool": 5}, hour=11) for a in away])
    assert client.post("/v1/activity", json={"reports": later}, headers=auth).status_code == 200
    clusters = _clusters(runtime, office + away)
    assert clusters[office[0]] == clusters[office[1]] and clusters[away[0]] == clusters[away[1]]
    assert clusters[office[0]] != clusters[away[0]]


def test_a_popular_template_on_a_shared_network_links_nobody(database_url, make_config):
    rt = Runtime.start(make_config(database_url, graph_super_node_weak=5), migrate=False)
    try:
        client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
        users = _people(client, auth, "user", 8)
        # Eight customers behind one carrier NAT sending a popular tool's system prompt: both
        # nodes are held by more than the weak threshold, so neither links anyone.
        reports = [_report(a, ip=f"100.64.9.{i + 1}", prompts={"pf_tool_codeassist": 5}) for i, a in enumerate(users)]
        assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
        assert len(set(_clusters(rt, users).values())) == 8
    finally:
        rt.engine.dispose()


def test_the_activity_ip_is_a_velocity_sighting_and_is_recorded_once_a_day(client, auth, runtime):
    users = _people(client, auth, "user", 3)
    for hour in (9, 10):
        reports = [_report(a, ip="198.51.100.7", hour=hour) for a in users]
        assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    drain(runtime)
    with runtime.session() as s:
        ip_sightings = s.execute(select(Sighting.account_id).where(
            Sighting.kind == "ip", Sighting.account_id.in_(users),
            Sighting.occurred_at >= datetime(2026, 11, 24, tzinfo=timezone.utc))).scalars().all()
    assert sorted(ip_sightings) == sorted(users)
    body = signup(account_id="newcomer", email="new.comer77@gmail.com", device_id="dv_new", phone=None,
                  ip="198.51.100.7", occurred_at=f"{DAY}T11:00:00Z")
    assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
    with runtime.session() as s:
        signals = s.execute(select(Evaluation.signals).where(Evaluation.account_id == "newcomer")).scalar_one()
    assert signals["velocity"]["ip_24h"] == 4


def test_rebuild_gives_the_clusters_usage_linking_gave(client, auth, runtime):
    a, b, c, d = _people(client, auth, "user", 4)
    internal = {"pf_team_1": 5, "pf_team_2": 5}
    reports = [_report(a, ip="203.0.113.5", prompts=internal), _report(b, ip="203.0.113.6", prompts=internal),
               _report(c, ip="73.95.1.1", key="key_cd"), _report(d, ip="73.96.1.1", key="key_cd")]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200

    def partition() -> set[frozenset[str]]:
        groups: dict[str, set[str]] = {}
        for account, cluster in _clusters(runtime, [a, b, c, d]).items():
            groups.setdefault(cluster, set()).add(account)
        return {frozenset(g) for g in groups.values()}

    incremental = partition()
    assert incremental == {frozenset({a, b}), frozenset({c, d})}
    with runtime.session() as s, s.begin():
        graph.rebuild(s, graph.Policy.from_config(runtime.config))
    assert partition() == incremental


def _pairs(reports: list[dict]):
    from kyc.inputs import ActivityInput

    return [(r["account_id"], ActivityInput.model_validate({k: v for k, v in r.items() if k != "account_id"}))
            for r in reports]


def _left_pending(runtime, reports: list[dict]) -> None:
    """What an earlier release left when its process stopped right after a report transaction's
    COMMIT: the reports recorded and their identifiers in a pending_links row, never linked."""
    from kyc.rescore.requests import after_commit
    from kyc.security import KeyedHashes
    from kyc.usage.identifiers import shown_identifiers
    from kyc.usage.reports import record_reports

    pairs = _pairs(reports)
    shown = shown_identifiers(pairs, KeyedHashes(runtime.config.secret_key))
    with runtime.session() as session, session.begin():
        record_reports(session, pairs, secret=runtime.config.secret_key, dormancy_threshold=runtime.config.dormant_days)
        session.add(PendingLink(shown=[[a, k, h, at.isoformat()] for a, nodes in sorted(shown.items())
                                       for (k, h), at in sorted(nodes.items())]))
        after_commit(session).collected.clear()


def test_identifiers_an_earlier_release_left_pending_are_linked_by_the_next_process(client, auth, runtime,
                                                                                   database_url, make_config):
    a, b, c = _people(client, auth, "user", 3)
    _left_pending(runtime, [_report(a, ip="73.90.1.1", key="key_shared"), _report(b, ip="198.51.100.7",
                                                                                    key="key_shared")])
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(PendingLink)) == 1
        before = dict(s.execute(select(ClusterMember.account_id, ClusterMember.cluster_id)
                                .where(ClusterMember.account_id.in_([a, b]))).all())
    assert before[a] != before[b]                       # not linked yet
    restarted = Runtime.start(make_config(database_url), migrate=False)
    try:
        restarted.rescoring()          # a serving process starts its background thread (InProcessSchedule)
        drain(restarted)
        clusters = _clusters(restarted, [a, b, c])
        assert clusters[a] == clusters[b] != clusters[c]
        with restarted.session() as s:
            assert s.scalar(select(func.count()).select_from(PendingLink)) == 0
    finally:
        restarted.engine.dispose()


def test_linking_the_same_identifiers_again_changes_nothing(client, auth, runtime, database_url, make_config):
    a, b = _people(client, auth, "user", 2)
    reports = [_report(a, ip="203.0.113.5", key="key_ab", prompts={"pf_t1": 5, "pf_t2": 5}),
               _report(b, ip="203.0.113.6", key="key_ab", prompts={"pf_t1": 5, "pf_t2": 5})]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    drain(runtime)

    def graph_state():
        with runtime.session() as s:
            return (sorted(s.execute(select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
                                     .where(GraphEdge.account_id.in_([a, b]))).all()),
                    sorted(s.execute(select(GraphNode.kind, GraphNode.value_hash, GraphNode.accounts)
                                     .join(GraphEdge, (GraphEdge.kind == GraphNode.kind)
                                           & (GraphEdge.value_hash == GraphNode.value_hash))
                                     .where(GraphEdge.account_id == a)).all()),
                    s.scalar(select(func.count()).select_from(Sighting).where(Sighting.account_id.in_([a, b]))),
                    _clusters(runtime, [a, b]))

    linked = graph_state()
    assert linked[3][a] == linked[3][b]
    # Another process (which never linked them) records the same identifiers, and links them.
    other = Runtime.start(make_config(database_url), migrate=False)
    try:
        _left_pending(other, reports)
        assert link_pending(other) == 1
    finally:
        other.engine.dispose()
    assert graph_state()[:3] == linked[:3] and len(set(graph_state()[3].values())) == 1


def test_identifiers_this_process_linked_are_not_linked_again(client, auth, runtime):
    from kyc.security import KeyedHashes
    from kyc.usage.identifiers import link_reports, linked
    from kyc.usage.reports import record_reports

    a, b = _people(client, auth, "user", 2)
    first = [_report(a, ip="203.0.113.5", key="key_a", prompts={"pf_t1": 5}),
             _report(b, ip="73.96.1.1", key="key_b")]
    assert client.post("/v1/activity", json={"reports": first}, headers=auth).status_code == 200
    drain(runtime)

    def link(report: dict):
        pairs = _pairs([report])
        with runtime.session() as session, session.begin():
            record_reports(session, pairs, secret=runtime.config.secret_key,
                           dormancy_threshold=runtime.config.dormant_days)
            shown, moved = link_reports(runtime, session, pairs, KeyedHashes(runtime.config.secret_key))
        linked(runtime).add(shown)
        return shown, moved

    # The same account, key, template and network an hour later: nothing new to link.
    assert link(_report(a, ip="203.0.113.5", key="key_a", prompts={"pf_t1": 5}, hour=11)) == ({}, [])
    # A new key on the account is linked, and links it to the account that holds it.
    shown, moved = link(_report(a, ip="203.0.113.5", key="key_b", prompts={"pf_t1": 5}, hour=12))
    assert [kind for kind, _ in shown[a]] == ["api_key"] and moved == [a]
    clusters = _clusters(runtime, [a, b])
    assert clusters[a] == clusters[b]


def test_a_report_whose_transaction_fails_leaves_neither_reports_nor_links(client, auth, runtime, monkeypatch):
    from kyc.api import activity
    from kyc.models import ActivityReport

    a, b = _people(client, auth, "user", 2)

    def refused(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(activity, "reevaluate", refused)      # after recording and linking, before the commit
    reports = [_report(a, ip="73.90.1.1", key="key_shared"), _report(b, ip="198.51.100.7", key="key_shared")]
    answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
    assert answer.status_code == 500
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(ActivityReport)) == 0
        assert s.scalar(select(func.count()).select_from(GraphEdge).where(GraphEdge.kind == "api_key")) == 0
        assert s.scalar(select(func.count()).select_from(PendingLink)) == 0
    monkeypatch.undo()
    # Sent again (the gateway's retry), it is counted once and links them.
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    clusters = _clusters(runtime, [a, b])
    assert clusters[a] == clusters[b]
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(ActivityReport)) == 2


def test_parallel_bulk_calls_linking_across_each_others_accounts_all_land(client, auth, runtime, app):
    """Each call's transaction locks its own accounts and links them to accounts other calls hold
    locked: every call is answered 200, every report counted once, and the links all made."""
    import threading

    people = _people(client, auth, "user", 12)
    # Call c reports accounts c, c+4 and c+8 (of 12), on keys c, c+1 and c+2 (of 4): each key is
    # behind three accounts of three calls, so every call links into accounts others are recording.
    calls = [[_report(people[c + 4 * k], ip=f"73.{90 + c}.{k}.1", key=f"key_{(c + k) % 4}") for k in range(3)]
             for c in range(4)]
    answers: list[int] = []

    def send(reports):
        answers.append(as_a_gateway(lambda: app.test_client().post("/v1/activity", json={"reports": reports},
                                                                   headers=auth)).status_code)

    threads = [threading.Thread(target=send, args=(reports,)) for reports in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 4
    from kyc.models import ActivityReport
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(ActivityReport)) == 12
    clusters = _clusters(runtime, people)
    by_key: dict[str, set[str]] = {}
    for reports in calls:
        for r in reports:
            by_key.setdefault(r["api_key_id"], set()).add(clusters[r["account_id"]])
    assert all(len(c) == 1 for c in by_key.values()) and len(set().union(*by_key.values())) == 4


_EXAMPLES = iter(range(10**6))
# A report of a generated call: which of 6 accounts, which of 2 shared networks (or one of its
# own), which of 3 API keys (or none), which of 3 templates. Few values, so accounts share
# them often, across calls as within one, and some turn super (thresholds of 4 below).
_GENERATED_REPORT = st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(0, 1)),
                              st.one_of(st.none(), st.none(), st.none(), st.integers(0, 2)),
                              st.sets(st.integers(0, 2), max_size=2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.lists(_GENERATED_REPORT, min_size=1, max_size=6), min_size=2, max_size=6))
# Two accounts on one network in a call, on one template in a later one: linked by the second.
@example(calls=[[(0, 0, None, set()), (1, 0, None, set())], [(0, None, None, {0}), (1, None, None, {0})]])
def test_linking_generated_batches_gives_the_clusters_a_rebuild_gives(database_url, make_config, calls):
    """Whatever the batches show (shared keys, networks and templates, nodes that turn super
    within a batch or across batches), the clusters linking left are the connected components
    kyc.graph.rebuild computes from every sighting: the batch counts most accounts without
    linking them one by one, and that skips no link."""
    example = next(_EXAMPLES)
    rt = Runtime.start(make_config(database_url, graph_super_node_weak=4, graph_super_node_strong=4), migrate=False)
    try:
        client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
        # Values of this example only (the database keeps earlier examples' graph).
        day = date(2026, 1, 1) + timedelta(days=example)
        ids = []
        for i in range(6):
            body = signup(account_id=f"gen{example}_{i}", email=f"gen{example}.person{i}@gmail.com",
                          device_id=f"dv_gen{example}_{i}", phone=None, ip=f"73.{example % 200}.{i}.1",
                          occurred_at=SIGNED_UP)
            assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
            ids.append(body["account_id"])
        for hour, call in enumerate(calls):
            reports = []
            for account, network, key, templates in call:
                report = {"account_id": ids[account], "occurred_at": f"{day}T{hour:02d}:30:00Z",
                          "window_seconds": 3600, "requests": 10, "tier": "standard",
                          "ip": f"198.51.{100 + network}.{account + 1}" if network is not None
                          else f"73.{example % 200}.{100 + account}.{hour + 1}"}
                if key is not None:
                    report["api_key_id"] = f"gen{example}_key{key}"
                if templates:
                    report["prompt_fingerprints"] = {f"gen{example}_t{t}": 1 for t in templates}
                reports.append(report)
            answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
            assert answer.status_code == 200, answer.json

        def partition() -> set[frozenset[str]]:
            groups: dict[str, set[str]] = {}
            for account, cluster in _clusters(rt, ids).items():
                groups.setdefault(cluster, set()).add(account)
            return {frozenset(g) for g in groups.values()}

        linked = partition()
        with rt.session() as s, s.begin():
            graph.rebuild(s, graph.Policy.from_config(rt.config))
        assert partition() == linked
    finally:
        drain(rt)
        rt.engine.dispose()
