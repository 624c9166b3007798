"""The review queue and a person's decisions (contract: GET /v1/reviews, POST /v1/accounts/{id}/review)."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kyc.rescore.background import drain
from kyc.rescore.batch import enqueue_rescore
from tests.conftest import signup


def held(client, auth, n: int, **fields) -> dict:
    """A signup the rules hold at review (a private IP), with identifiers of its own."""
    body = signup(**{"account_id": f"acct_r{n}", "email": f"held.person{n}@gmail.com", "ip": f"10.{n}.0.1",
                     "device_id": f"dv_r{n}", "phone": None, **fields})
    answer = client.post("/v1/signups", json=body, headers=auth).json
    assert answer["decision"] == "review", answer
    return answer


def queue(client, auth, limit=50) -> list[dict]:
    response = client.get(f"/v1/reviews?limit={limit}", headers=auth)
    assert response.status_code == 200
    return response.json["reviews"]


def entitled(client, auth, account_id, tier="free") -> bool:
    return client.get(f"/v1/accounts/{account_id}/entitlement?tier={tier}", headers=auth).json["allowed"]


def test_the_queue_lists_held_accounts_oldest_first_and_a_review_decides_at_once(client, auth, runtime):
    for n in range(3):
        held(client, auth, n)
    client.post("/v1/signups", json=signup(account_id="acct_fine", email="fine.user@gmail.com", phone=None),
                headers=auth)
    entries = queue(client, auth)
    assert [e["account_id"] for e in entries] == ["acct_r0", "acct_r1", "acct_r2"]
    assert set(entries[0]) == {"account_id", "score", "reasons", "cluster", "since", "changed", "state_version"}
    assert entries[0]["reasons"][0]["rule"] == "private_ip" and entries[0]["since"].endswith("Z")
    assert entries[0]["cluster"]["size"] == 1 and entries[0]["changed"] == []
    assert [e["account_id"] for e in queue(client, auth, limit=2)] == ["acct_r0", "acct_r1"]
    assert not entitled(client, auth, "acct_r0")

    allowed = client.post("/v1/accounts/acct_r0/review", json={"outcome": "allow", "note": "known customer"},
                          headers=auth)
    assert allowed.status_code == 200
    body = allowed.json
    assert body["decision"] == "allow" and body["required_verifications"] == []
    assert body["override"]["decision"] == "allow" and body["override"]["by"] == "key:tests"
    assert body["override"]["note"] == "known customer" and body["review_since"] is None
    assert body["reasons"][0]["rule"] == "ops:review" and body["reasons"][1]["rule"] == "private_ip"
    assert entitled(client, auth, "acct_r0")                       # entitlements follow at once

    blocked = client.post("/v1/accounts/acct_r1/review", json={"outcome": "block"}, headers=auth).json
    assert blocked["decision"] == "block" and not entitled(client, auth, "acct_r1")
    assert [e["account_id"] for e in queue(client, auth)] == ["acct_r2"]

    trail = client.get("/v1/audit?action=account.reviewed", headers=auth).json["events"]
    assert [(e["account_id"], e["actor"], e["detail"]["old"], e["detail"]["new"]) for e in trail] == [
        ("acct_r1", "key:tests", "review", "block"), ("acct_r0", "key:tests", "review", "allow")]
    assert trail[1]["detail"]["note"] == "known customer" and trail[1]["at"].endswith("Z")
    assert client.post("/v1/accounts/acct_nobody/review", json={"outcome": "allow"}, headers=auth).status_code == 404


def test_a_review_sent_with_the_state_it_saw_is_refused_once_the_account_moved_on(client, auth, runtime):
    """The reviewer saw one rule; the signup came again from a headless browser and the rules now
    block it. An allow on what they saw must not record the new evidence as seen; nor may a second
    reviewer's decision silently replace the first's."""
    held(client, auth, 1)
    (entry,) = queue(client, auth)
    seen = entry["state_version"]
    assert seen == client.get("/v1/accounts/acct_r1", headers=auth).json["state_version"]
    again = signup(account_id="acct_r1", email="held.person1@gmail.com", ip="10.1.0.1", device_id="dv_r1", phone=None,
                   user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                              "HeadlessChrome/120.0.0.0 Safari/537.36")
    assert client.post("/v1/signups", json=again, headers=auth).json["decision"] == "block"
    before = client.get("/v1/accounts/acct_r1", headers=auth).json

    stale = client.post("/v1/accounts/acct_r1/review", json={"outcome": "allow", "state_version": seen}, headers=auth)
    assert stale.status_code == 409 and stale.json["error"]["code"] == "account_changed"
    assert stale.json["error"]["fields"] == {"state_version": f"now {before['state_version']}"}
    assert client.get("/v1/accounts/acct_r1", headers=auth).json == before           # nothing changed
    assert not client.get("/v1/audit?action=account.reviewed", headers=auth).json["events"]

    current = client.post("/v1/accounts/acct_r1/review", json={"outcome": "block", "state_version": before["state_version"]},
                          headers=auth)
    assert current.status_code == 200 and current.json["decision"] == "block"
    second = client.post("/v1/accounts/acct_r1/review",
                         json={"outcome": "allow", "state_version": before["state_version"]}, headers=auth)
    assert second.status_code == 409 and client.get("/v1/accounts/acct_r1", headers=auth).json["decision"] == "block"


def test_a_persons_decision_stands_over_rescoring_until_evidence_they_did_not_see(client, auth, runtime):
    held(client, auth, 1, device_id="dv_shared")
    client.post("/v1/accounts/acct_r1/review", json={"outcome": "allow"}, headers=auth)
    assert enqueue_rescore(runtime, ["acct_r1"], "test") == 1
    again = client.get("/v1/accounts/acct_r1", headers=auth).json
    assert again["decision"] == "allow" and again["override"]["decision"] == "allow"
    assert not client.get("/v1/audit?action=decision.changed&account_id=acct_r1", headers=auth).json["events"]

    # A second account on the same device joins the cluster and is labeled fraud: the first
    # account's rescore sees a fraud label nearby (and a rule hit on it) that the reviewer did not.
    client.post("/v1/signups", json=signup(account_id="acct_bad", email="other.guy77@gmail.com",
                                           device_id="dv_shared", phone=None), headers=auth)
    client.post("/v1/accounts/acct_bad/labels", json={"label": "fraud"}, headers=auth)
    drain(runtime)
    reopened = client.get("/v1/accounts/acct_r1", headers=auth).json
    assert reopened["decision"] in ("review", "block") and reopened["override"]["decision"] is None
    changed = reopened["override"]["reopened"]["changed"]
    assert "fraud labels in the cluster rose from 0 to 1" in changed
    assert any(c.startswith("new rule hit: ") for c in changed)
    if reopened["decision"] == "review":
        entry = next(e for e in queue(client, auth) if e["account_id"] == "acct_r1")
        assert entry["changed"] == changed and entry["reasons"][0]["rule"] == "ops:reopened"
    change = client.get("/v1/audit?action=decision.changed&account_id=acct_r1", headers=auth).json["events"][0]
    assert change["detail"]["old"] == "allow" and change["actor"].startswith("rules:sha256:")
    assert change["detail"]["trigger"] == "rescore"

    # A person's block is not lifted by rescoring, whatever the rules say.
    client.post("/v1/accounts/acct_r1/review", json={"outcome": "block"}, headers=auth)
    enqueue_rescore(runtime, ["acct_r1"], "test")
    assert client.get("/v1/accounts/acct_r1", headers=auth).json["decision"] == "block"


def test_a_legit_label_releases_the_tiers_the_account_qualifies_for(client, auth):
    held(client, auth, 1)
    assert not entitled(client, auth, "acct_r1", "free")
    labeled = client.post("/v1/accounts/acct_r1/labels", json={"label": "legit", "note": "called them"},
                          headers=auth).json
    assert labeled["decision"] == "allow" and labeled["override"]["source"] == "label"
    assert entitled(client, auth, "acct_r1", "free")
    # A tier that needs a verification the account lacks is still refused: the label vouches for
    # the person, it does not verify them.
    standard = client.get("/v1/accounts/acct_r1/entitlement?tier=standard", headers=auth).json
    assert not standard["allowed"] and standard["missing_verifications"] == ["email"]
    assert queue(client, auth) == []
    fraud = client.post("/v1/accounts/acct_r1/labels", json={"label": "fraud"}, headers=auth).json
    assert fraud["decision"] == "block" and not entitled(client, auth, "acct_r1", "free")
    events = client.get("/v1/audit?action=account.labeled", headers=auth).json["events"]
    assert [(e["detail"]["label"], e["detail"]["old"], e["detail"]["new"]) for e in events] == [
        ("fraud", "allow", "block"), ("legit", "review", "allow")]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.dictionaries(st.sampled_from(["outcome", "note", "Outcome", "reason"]),
                    st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans()), max_size=3),
    st.lists(st.integers(), max_size=2), st.text(max_size=5)))
@example(body={"note": 4111111111111111})
def test_a_bad_review_body_is_refused_naming_the_field_and_changes_nothing(client, auth, runtime, body):
    from sqlalchemy import func, select

    from kyc.models import Account, AuditEvent
    from kyc.security import contains_card_number

    with runtime.session() as session:
        if session.get(Account, "acct_r9") is None:
            held(client, auth, 9)
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    response = client.post("/v1/accounts/acct_r9/review", json=body, headers=auth)
    valid = (isinstance(body, dict) and body.get("outcome") in ("allow", "block")
             and set(body) <= {"outcome", "note"} and (body.get("note") is None or isinstance(body["note"], str)))
    if valid:
        assert response.status_code == 200
        client.post("/v1/accounts/acct_r9/labels", json={"label": "fraud"}, headers=auth)
        return
    if contains_card_number(body):
        # A generated number can be a Luhn-valid 13-19 digits: refused before anything reads it.
        assert response.status_code == 400 and response.json["error"]["code"] == "card_number_refused"
    else:
        assert response.status_code == 400 and response.json["error"]["code"] == "invalid_request"
        if isinstance(body, dict):
            assert set(response.json["error"]["fields"]) & ({"outcome", "note"} | set(body))
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == before


def test_a_review_block_that_is_its_clusters_first_rescores_the_other_members(client, auth, runtime):
    from sqlalchemy import select

    from kyc.models import Evaluation

    held(client, auth, 1, device_id="dv_pair")
    client.post("/v1/signups", json=signup(account_id="acct_pair", email="pair.person@gmail.com",
                                           device_id="dv_pair", phone=None), headers=auth)
    drain(runtime)
    with runtime.session() as session:
        before = session.scalars(select(Evaluation.id).where(Evaluation.account_id == "acct_pair",
                                                             Evaluation.trigger == "rescore")).all()
    client.post("/v1/accounts/acct_r1/review", json={"outcome": "block"}, headers=auth)
    drain(runtime)
    with runtime.session() as session:
        after = session.scalars(select(Evaluation.id).where(Evaluation.account_id == "acct_pair",
                                                            Evaluation.trigger == "rescore")).all()
    assert len(after) > len(before)
