"""Farm actions (contract: POST /v1/clusters/{id}/actions; `kyc clusters act`)."""

from __future__ import annotations

from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from kyc.cli import main
from kyc.models import AuditEvent, Cluster
from kyc.security import contains_card_number
from tests.conftest import RULES_DIR, TEST_SECRET, signup


def farm(client, auth, size: int, device="dv_farm") -> str:
    """`size` accounts on one device (a strong identifier): one cluster. Returns its id."""
    cluster = None
    for n in range(size):
        body = client.post("/v1/signups", json=signup(account_id=f"acct_f{n}", email=f"farm.member{n}@gmail.com",
                                                      device_id=device, phone=None), headers=auth).json
        cluster = body["cluster"]["id"]
    return client.get(f"/v1/accounts/acct_f{size - 1}", headers=auth).json["cluster"]["id"] or cluster


def decisions(client, auth, size: int) -> list[str]:
    return [client.get(f"/v1/accounts/acct_f{n}", headers=auth).json["decision"] for n in range(size)]


def test_block_review_and_release_apply_to_every_member_in_one_audited_event(client, auth, runtime):
    cluster_id = farm(client, auth, 4)
    before = decisions(client, auth, 4)
    response = client.post(f"/v1/clusters/{cluster_id}/actions", json={"action": "block", "note": "farm"},
                           headers=auth)
    assert response.status_code == 200
    body = response.json
    assert (body["cluster_id"], body["members"], body["changed"]) == (cluster_id, 4, sum(d != "block" for d in before))
    assert decisions(client, auth, 4) == ["block"] * 4
    assert not client.get("/v1/accounts/acct_f0/entitlement?tier=free", headers=auth).json["allowed"]
    with runtime.session() as session:
        assert session.get(Cluster, cluster_id).blocked == 4
    events = client.get(f"/v1/audit?cluster_id={cluster_id}", headers=auth).json["events"]
    assert len(events) == 1 and events[0]["action"] == "cluster.action" and events[0]["actor"] == "key:tests"
    assert events[0]["detail"]["members"] == 4 and events[0]["detail"]["note"] == "farm"
    assert sum(events[0]["detail"]["transitions"].values()) == 4
    member = client.get("/v1/accounts/acct_f2", headers=auth).json
    assert member["override"]["event"] == events[0]["id"] and member["override"]["source"] == "cluster_action"
    assert member["reasons"][0]["rule"] == "ops:cluster_action"

    held = client.post(f"/v1/clusters/{cluster_id}/actions", json={"action": "review"}, headers=auth).json
    # Held at review, or block where the rules themselves say block.
    after = decisions(client, auth, 4)
    assert set(after) <= {"review", "block"} and "review" in after and held["changed"] == after.count("review")
    queue = client.get("/v1/reviews", headers=auth).json["reviews"]
    assert sorted(e["account_id"] for e in queue) == [f"acct_f{n}" for n, d in enumerate(after) if d == "review"]

    released = client.post(f"/v1/clusters/{cluster_id}/actions", json={"action": "release"}, headers=auth).json
    assert released == {"cluster_id": cluster_id, "members": 4, "changed": 4, "kept": 0,
                        "audit_event_id": released["audit_event_id"]}
    assert decisions(client, auth, 4) == ["allow"] * 4
    assert client.get("/v1/accounts/acct_f0/entitlement?tier=free", headers=auth).json["allowed"]
    assert client.get("/v1/reviews", headers=auth).json["reviews"] == []
    with runtime.session() as session:
        assert session.get(Cluster, cluster_id).blocked == 0
    # The same action again changes nothing but is still recorded.
    again = client.post(f"/v1/clusters/{cluster_id}/actions", json={"action": "release"}, headers=auth).json
    assert (again["members"], again["changed"]) == (4, 0)
    assert client.post("/v1/clusters/cl_nope/actions", json={"action": "block"}, headers=auth).status_code == 404


def test_members_a_person_blocked_on_their_own_are_kept_by_every_action(client, auth, runtime):
    """A fraud label and a review's block were decided about that one account: a farm action
    (a release above all) does not overrule them, nor queue them for review again."""
    cluster_id = farm(client, auth, 4)
    assert client.post("/v1/accounts/acct_f0/labels", json={"label": "fraud"}, headers=auth).status_code == 200
    assert client.post("/v1/accounts/acct_f1/review", json={"outcome": "block"}, headers=auth).status_code == 200
    cluster_id = client.get("/v1/accounts/acct_f3", headers=auth).json["cluster"]["id"]
    for action in ("review", "release", "block", "release"):
        body = client.post(f"/v1/clusters/{cluster_id}/actions", json={"action": action}, headers=auth).json
        assert (body["members"], body["kept"]) == (4, 2), action
        after = decisions(client, auth, 4)
        assert after[:2] == ["block", "block"], action
        assert [client.get(f"/v1/accounts/acct_f{n}", headers=auth).json["override"]["source"] for n in (0, 1)] \
            == ["label", "review"]
    assert after[2:] == ["allow", "allow"]
    assert {e["account_id"] for e in client.get("/v1/reviews", headers=auth).json["reviews"]} == set()
    event = client.get(f"/v1/audit?cluster_id={cluster_id}&limit=1", headers=auth).json["events"][0]
    assert event["detail"]["kept"] == 2
    with runtime.session() as session:
        assert session.get(Cluster, cluster_id).blocked == 2


def test_cli_acts_on_a_cluster_like_the_api(client, auth, runtime, database_url, tmp_path):
    cluster_id = farm(client, auth, 3)
    env = {"KYC_DATABASE_URL": database_url, "KYC_DATA_DIR": str(tmp_path), "KYC_RULES_DIR": str(RULES_DIR),
           "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_DEV_KEY": ""}
    result = CliRunner().invoke(main, ["clusters", "act", cluster_id, "--action", "block", "--note", "seen"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{cluster_id}: block on 3 member(s)" in result.stdout
    assert decisions(client, auth, 3) == ["block"] * 3
    event = client.get(f"/v1/audit?cluster_id={cluster_id}", headers=auth).json["events"][0]
    assert event["actor"].startswith("cli:") and event["detail"]["note"] == "seen"
    missing = CliRunner().invoke(main, ["clusters", "act", "cl_nope", "--action", "block"], env=env)
    assert missing.exit_code == 1 and "not found" in missing.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.dictionaries(st.sampled_from(["action", "note", "members"]),
                    st.one_of(st.sampled_from(["block", "review", "release", "allow", "BLOCK", ""]), st.integers(),
                              st.none()), max_size=3),
    st.lists(st.text(max_size=3), max_size=2)))
@example(body={"action": 4111111111111111})
def test_a_bad_action_body_is_refused_naming_the_field_and_changes_nothing(client, auth, runtime, body):
    with runtime.session() as session:
        cluster_id = session.scalar(select(Cluster.id).where(Cluster.size > 1))
        if cluster_id is None:
            cluster_id = farm(client, auth, 2)
        events = session.scalar(select(func.count()).select_from(AuditEvent))
    response = client.post(f"/v1/clusters/{cluster_id}/actions", json=body, headers=auth)
    # A note is any text (or none): {"action": "block", "note": "review"} is a valid body.
    valid = (isinstance(body, dict) and body.get("action") in ("block", "review", "release")
             and set(body) <= {"action", "note"} and (body.get("note") is None or isinstance(body["note"], str)))
    if valid:
        assert response.status_code == 200 and response.json["members"] == 2
        return
    # A generated number can be a Luhn-valid 13-19 digits: refused before anything reads it.
    code = "card_number_refused" if contains_card_number(body) else "invalid_request"
    assert response.status_code == 400 and response.json["error"]["code"] == code
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == events


def test_an_action_racing_joining_signups_and_rescoring_leaves_every_counter_true(postgres_runtime):
    """PostgreSQL row locks: an action, signups joining the cluster and a rescore of its members,
    all at once, neither deadlock nor leave a member's blocked trait or the cluster's count wrong."""
    from concurrent.futures import ThreadPoolExecutor

    from kyc import create_app
    from kyc.rescore.background import drain
    from kyc.rescore.batch import enqueue_rescore
    from kyc.models import Account, ClusterMember
    from kyc.ops.actions import act_on_cluster
    from tests.flows import key_headers

    rt = postgres_runtime
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    cluster_id = farm(client, auth, 20)
    drain(rt)
    first = [f"acct_f{n}" for n in range(20)]

    # Each joiner's app is built here, not in its thread: CPython 3.11.7 keeps the AST
    # builder's recursion depth per interpreter, not per thread, and apps built in four
    # threads at once raised "AST constructor recursion depth mismatch" once (gh-106905).
    apps = [create_app(runtime=rt) for _ in range(4)]

    def join(n: int) -> int:
        return apps[n].test_client().post(
            "/v1/signups", json=signup(account_id=f"acct_late{n}", email=f"late.joiner{n}@gmail.com",
                                       device_id="dv_farm", phone=None), headers=auth).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        action = pool.submit(act_on_cluster, rt, cluster_id, "block", "race", "key:tests")
        joins = [pool.submit(join, n) for n in range(4)]
        rescore = pool.submit(enqueue_rescore, rt, first[:10], "race")
        assert action.result().members >= 20
        assert [j.result() for j in joins] == [200] * 4
        rescore.result()
    drain(rt)
    with rt.session() as session:
        standing = dict(session.execute(select(Account.id, Account.decision)).all())
        members = session.execute(select(ClusterMember.account_id, ClusterMember.cluster_id, ClusterMember.blocked)).all()
        clusters = {c.id: c.blocked for c in session.scalars(select(Cluster))}
    assert all(standing[a] == "block" for a in first)           # members when it began: blocked, and they stay
    for account_id, _, blocked in members:
        assert blocked == (standing[account_id] == "block"), account_id
    for cid, blocked in clusters.items():
        assert blocked == sum(1 for a, c, b in members if c == cid and b), cid


def test_an_action_meeting_a_late_member_keeps_the_lock_order_of_every_other_writer(postgres_runtime, monkeypatch):
    """Every writer locks accounts in id order, then clusters. A member that joined between an
    action's first read and its lock of the cluster (here acct_f0, the lowest id) must not be
    locked after higher ids: a bulk activity report holding it and waiting for another member
    would meet the action in a circle, and PostgreSQL would cancel the report (503)."""
    import threading
    import time

    from sqlalchemy import update

    from kyc import create_app
    from kyc.models import Account
    from kyc.ops import actions
    from tests.flows import key_headers

    rt = postgres_runtime
    client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
    cluster_id = farm(client, auth, 4)
    report_holds_late, action_holds_first = threading.Event(), threading.Event()
    reads, original = [], actions._member_ids

    def members(session, cluster):
        ids = original(session, cluster)
        reads.append(ids)
        if len(reads) == 1:                      # the first read missed the member joining
            assert report_holds_late.wait(60)
            return [i for i in ids if i != "acct_f0"]
        if len(reads) == 2:                      # the re-read after the cluster's lock sees it
            action_holds_first.set()
            time.sleep(0.3)                      # the report now waits for acct_f1
        return ids

    def report():
        # What record_reports does: lock its accounts in id order (acct_f0, then acct_f1).
        with rt.engine.begin() as conn:
            conn.execute(select(Account.id).where(Account.id == "acct_f0").with_for_update())
            report_holds_late.set()
            assert action_holds_first.wait(60)
            conn.execute(select(Account.id).where(Account.id == "acct_f1").with_for_update())
            conn.execute(update(Account).where(Account.id == "acct_f1").values(last_seen_at=func.now()))

    monkeypatch.setattr(actions, "_member_ids", members)
    outcome = {}

    def guarded(name, work):
        try:
            outcome[name] = work()
        except Exception as exc:  # noqa: BLE001 - the test reports which side failed, and how
            outcome[name] = exc

    threads = [threading.Thread(target=guarded, args=("report", report)),
               threading.Thread(target=guarded, args=("action", lambda: actions.act_on_cluster(
                   rt, cluster_id, "block", None, "key:tests")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not isinstance(outcome["report"], Exception), outcome["report"]
    assert outcome["action"].members == 4
    assert decisions(client, auth, 4) == ["block"] * 4
