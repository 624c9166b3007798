"""The audit trail: rules reloads with their diff, filters and paging of GET /v1/audit and `kyc audit`."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kyc.inputs import MAX_ROW_ID
from kyc.ops import audit
from tests.engine.test_reload import auth_for, live_rules, replace_file, with_rule  # noqa: F401 - fixtures


def test_a_rules_reload_records_version_and_the_rule_ids_added_removed_and_changed(live_rules, auth_for):
    rt, root = live_rules
    client, auth = auth_for(rt)
    signup_file = root / "signup.yaml"
    original, before = signup_file.read_text(), rt.rules.version
    first_id = next(r.id for r in rt.rules.subjects["signup"].rules)
    edited = with_rule(original, "brand_new_rule").replace(f"- id: {first_id}\n", f"- id: {first_id}_renamed\n", 1)
    replace_file(signup_file, edited)
    assert client.post("/v1/ops/rules/reload", headers=auth).json["reloaded"] is True
    page = client.get("/v1/audit?action=rules.reloaded", headers=auth).json
    event = page["events"][0]
    assert event["actor"] == "key:tests"
    assert event["detail"]["version"] == rt.rules.version and event["detail"]["previous"] == before
    assert event["detail"]["added"] == sorted(["signup:brand_new_rule", f"signup:{first_id}_renamed"])
    assert event["detail"]["removed"] == [f"signup:{first_id}"]
    assert event["detail"]["changed"] == []

    # A changed score is a changed rule; the same version reloaded again is not a new event.
    current = signup_file.read_text()
    replace_file(signup_file, re.sub(r"  score: (\d+)", lambda m: f"  score: {int(m.group(1)) ^ 1}", current, count=1))
    client.post("/v1/ops/rules/reload", headers=auth)
    client.post("/v1/ops/rules/reload", headers=auth)
    events = client.get("/v1/audit?action=rules", headers=auth).json["events"]
    assert [e["action"] for e in events] == ["rules.reloaded", "rules.reloaded"]
    assert len(events[0]["detail"]["changed"]) == 1 and not events[0]["detail"]["added"]

    # A refused reload is recorded with its errors, once.
    replace_file(signup_file, current.replace("when: ", "when: emial.nope and ", 1))
    for _ in range(2):
        assert client.post("/v1/ops/rules/reload", headers=auth).status_code == 422
    refused = client.get("/v1/audit?action=rules.refused", headers=auth).json["events"]
    assert len(refused) == 1 and refused[0]["detail"]["running_version"] == rt.rules.version
    assert "emial.nope" in refused[0]["detail"]["errors"][0]["message"]


def test_audit_filters_and_pages_newest_first(client, auth, runtime):
    with runtime.session() as session, session.begin():
        for i in range(7):
            audit.record(session, "account.labeled", "key:a" if i % 2 else "key:b", account_id=f"acct_{i % 3}",
                         detail={"i": i})
        audit.record(session, "cluster.action", "key:a", cluster_id="cl_1", detail={"i": 7})
    seen, before = [], None
    while True:
        query = "/v1/audit?limit=3" + (f"&before={before}" if before else "")
        page = client.get(query, headers=auth).json
        seen += [e["detail"]["i"] for e in page["events"]]
        before = page["next"]
        if before is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1, 0]
    assert [e["detail"]["i"] for e in client.get("/v1/audit?account_id=acct_1", headers=auth).json["events"]] == [4, 1]
    assert [e["detail"]["i"] for e in client.get("/v1/audit?actor=key:a&action=account", headers=auth)
            .json["events"]] == [5, 3, 1]
    assert [e["detail"]["i"] for e in client.get("/v1/audit?cluster_id=cl_1", headers=auth).json["events"]] == [7]
    assert client.get("/v1/audit?since=2999-01-01T00:00:00Z", headers=auth).json == {"events": [], "next": None}
    event = client.get("/v1/audit?limit=1", headers=auth).json["events"][0]
    assert set(event) == {"id", "at", "actor", "action", "account_id", "cluster_id", "detail"}
    assert event["at"].endswith("Z")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["limit", "before", "since", "until", "action", "colour"]),
       value=st.text(max_size=12))
def test_a_bad_audit_query_is_refused_naming_the_parameter(client, auth, name, value):
    response = client.get("/v1/audit", query_string={name: value}, headers=auth)
    if response.status_code == 200:
        # Only what the parameter accepts gets through.
        if name == "limit":
            assert 1 <= int(value) <= 500
        elif name == "before":
            assert 1 <= int(value) <= MAX_ROW_ID
        elif name == "action":
            assert value.strip() == "" or value.strip().replace(".", "").replace("_", "").isalpha()
        else:
            assert name in ("since", "until") and value.strip()
        return
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_request"
    assert name in response.json["error"]["fields"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_ROW_ID + 1)))
def test_a_page_cursor_no_row_id_can_be_is_refused(client, auth, before):
    # Past a 64-bit integer, SQLite's INTEGER overflowed in the query: a 500, before the bound.
    response = client.get("/v1/audit", query_string={"before": str(before)}, headers=auth)
    error = response.json["error"]
    assert response.status_code == 400
    # 13 to 19 digits that pass Luhn's check are refused first, as any card number in a URL.
    assert "before" in error.get("fields", {}) or error["code"] == "card_number_refused"


def test_the_largest_row_id_is_a_page_cursor(client, auth):
    assert client.get("/v1/audit", query_string={"before": str(MAX_ROW_ID)}, headers=auth).status_code == 200
