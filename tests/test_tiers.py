"""Tier policy loading and GET /v1/accounts/{id}/entitlement for each tier and decision."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import update

from kyc.engine import RuleSetError
from kyc.models import Account
from kyc.runtime import Runtime
from kyc.signals import SCHEMA
from kyc.tiers import load_tiers
from tests.conftest import GB_VOIP, RULES_DIR, signup
from tests.flows import WEBHOOK_SECRET, allow_payment_method, verify_by_code, verify_document

HEADLESS = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36"
DECISION_SIGNUPS = {
    "allow": {},
    "verify": {"email": "x@mailinator.com"},
    "review": {"ip": "10.1.2.3"},
    "block": {"user_agent": HEADLESS},
}


@pytest.fixture
def runtime(database_url, make_config):
    rt = Runtime.start(make_config(database_url, webhook_secrets={"idv": WEBHOOK_SECRET}), migrate=False)
    yield rt
    rt.engine.dispose()


def entitlement(client, auth, tier, account_id="acct_1", **headers):
    return client.get(f"/v1/accounts/{account_id}/entitlement?tier={tier}", headers={**auth, **headers})


def grant_high_volume(client, auth, runtime):
    client.post("/v1/signups", json=signup(phone="+447911123456"), headers=auth)
    verify_by_code(client, auth, runtime, "phone")
    verify_document(client, auth)
    allow_payment_method(runtime)
    granted = entitlement(client, auth, "high_volume")
    assert granted.json["allowed"] is True, granted.json
    return granted


# --- policy -----------------------------------------------------------------------------------

def test_shipped_tiers_load_with_sensible_defaults():
    rules_lists = {"voip_prefixes": frozenset()}
    policy = load_tiers(RULES_DIR, SCHEMA, rules_lists)
    assert list(policy.tiers) == ["free", "standard", "high_volume"]
    high = policy.tiers["high_volume"]
    assert {"document", "payment"} <= set(high.requires) and high.max_decision == "allow"
    assert "voip" in high.forbid_phone_line_types
    assert policy.tiers["free"].requires == ()


def _rules_copy(tmp_path, tiers_yaml: str):
    root = tmp_path / "rules"
    shutil.copytree(RULES_DIR, root)
    (root / "tiers.yaml").write_text(tiers_yaml)
    return root


def test_tier_mistakes_name_file_line_tier_and_suggestion(tmp_path):
    root = _rules_copy(tmp_path, """\
- id: gold
  description: Gold
  quota: {requests_per_day: 10, requests_per_hour: 5}
  requires: [passport]
  max_decision: alow
  conditions:
    - id: old_enough
      description: Old enough
      when: account.agee_days >= 3
""")
    with pytest.raises(RuleSetError) as caught:
        load_tiers(root, SCHEMA, {})
    text = str(caught.value)
    assert "rules/tiers.yaml:3: tier 'gold': unknown quota 'requests_per_hour' (did you mean requests_per_day?)" in text
    assert "rules/tiers.yaml:4: tier 'gold': requires lists verifications" in text
    assert "rules/tiers.yaml:5:" in text and "(did you mean allow?)" in text
    root = _rules_copy(tmp_path / "b", """\
- id: gold
  description: Gold
  quota: {requests_per_day: 10}
  max_decision: allow
  conditions:
    - id: old_enough
      description: Old enough
      when: account.agee_days >= 3
""")
    with pytest.raises(RuleSetError) as caught:
        load_tiers(root, SCHEMA, {})
    error = caught.value.errors[0]
    assert (error.file.endswith("tiers.yaml"), error.line, error.rule_id) == (True, 8, "old_enough")
    assert error.suggestion == "did you mean account.age_days?"
    assert "tiers.yaml:8: condition 'old_enough': unknown" in str(error)      # named as what it is, not a rule


def test_bad_tiers_file_never_replaces_the_running_policy(runtime, tmp_path):
    root = _rules_copy(tmp_path, "- id: broken\n  quota: 12\n")
    with pytest.raises(RuleSetError):
        runtime.reload_rules(root)
    assert list(runtime.tiers.tiers) == ["free", "standard", "high_volume"]


def test_tier_conditions_read_evaluation_signals(runtime, client, auth, tmp_path):
    root = _rules_copy(tmp_path, """\
- id: vetted
  description: Accounts whose signup came from a quiet network
  quota: {requests_per_day: 5}
  max_decision: allow
  conditions:
    - id: quiet_network
      description: Few accounts from the signup's network
      when: velocity.ip_prefix_24h < 2 and ip.private == false
""")
    runtime.reload_rules(root)
    client.post("/v1/signups", json=signup(), headers=auth)
    assert entitlement(client, auth, "vetted").json["allowed"] is True
    client.post("/v1/signups", json=signup(account_id="acct_2", email="b.other@gmail.com", device_id="dv_9"),
                headers=auth)
    denied = entitlement(client, auth, "vetted", "acct_2").json
    assert denied["allowed"] is False
    assert denied["denied_by"] == [{"check": "quiet_network", "description": "Few accounts from the signup's network"}]


# --- the endpoint -------------------------------------------------------------------------------

def test_unknown_tier_400_unknown_account_404(client, auth):
    client.post("/v1/signups", json=signup(), headers=auth)
    unknown = entitlement(client, auth, "platinum")
    assert unknown.status_code == 400 and "tier" in unknown.json["error"]["fields"]
    missing = client.get("/v1/accounts/acct_1/entitlement", headers=auth)
    assert missing.status_code == 400 and "tier" in missing.json["error"]["fields"]
    assert entitlement(client, auth, "free", "acct_nobody").status_code == 404
    assert entitlement(client, auth, "platinum", "acct_nobody").status_code == 400
    assert client.get("/v1/accounts/acct_1/entitlement?tier=free").status_code == 401


def test_contract_shape(client, auth):
    client.post("/v1/signups", json=signup(**GB_VOIP), headers=auth)
    body = entitlement(client, auth, "high_volume").json
    assert {"account_id", "tier", "allowed", "decision", "missing_verifications", "reasons", "quota"} <= set(body)
    assert body["account_id"] == "acct_1" and body["tier"] == "high_volume"
    assert body["allowed"] is False and body["decision"] == "verify"
    assert body["missing_verifications"] == ["phone", "payment", "document"]
    assert body["quota"]["requests_per_day"] == 100000
    assert [r["rule"] for r in body["reasons"]] == ["voip_phone"]


EXPECTED = {  # tier -> decision -> allowed, with no verification done
    "free": {"allow": True, "verify": True, "review": False, "block": False},
    "standard": {"allow": False, "verify": False, "review": False, "block": False},
    "high_volume": {"allow": False, "verify": False, "review": False, "block": False},
}


@pytest.mark.parametrize("decision", list(DECISION_SIGNUPS))
def test_each_tier_for_each_decision_without_verifications(client, auth, decision):
    scored = client.post("/v1/signups", json=signup(**DECISION_SIGNUPS[decision]), headers=auth).json
    assert scored["decision"] == decision
    for tier, by_decision in EXPECTED.items():
        body = entitlement(client, auth, tier).json
        assert body["allowed"] is by_decision[decision], (tier, decision, body)
        assert body["decision"] == decision
        checks = {d["check"] for d in body["denied_by"]}
        assert ("decision" in checks) is (tier == "free" and decision in ("review", "block")
                                          or tier != "free" and decision != "allow")


@pytest.mark.parametrize("decision", list(DECISION_SIGNUPS))
def test_standard_with_email_verified_for_each_decision(client, auth, runtime, decision):
    client.post("/v1/signups", json=signup(**DECISION_SIGNUPS[decision]), headers=auth)
    verify_by_code(client, auth, runtime, "email")
    body = entitlement(client, auth, "standard").json
    assert body["missing_verifications"] == ([] if decision != "verify" else ["phone"])
    assert body["allowed"] is (decision == "allow")


def test_verify_decision_lists_its_step_up_as_missing(client, auth, runtime):
    client.post("/v1/signups", json=signup(email="x@mailinator.com"), headers=auth)
    body = entitlement(client, auth, "standard").json
    assert body["missing_verifications"] == ["email", "phone"]
    verify_by_code(client, auth, runtime, "phone")      # lifts the verify decision
    verify_by_code(client, auth, runtime, "email")
    body = entitlement(client, auth, "standard").json
    assert body["allowed"] is True and body["decision"] == "allow"


def test_high_volume_needs_every_verification(client, auth, runtime):
    client.post("/v1/signups", json=signup(phone="+447911123456"), headers=auth)
    verify_by_code(client, auth, runtime, "phone")
    assert entitlement(client, auth, "high_volume").json["missing_verifications"] == ["payment", "document"]
    verify_document(client, auth)
    assert entitlement(client, auth, "high_volume").json["missing_verifications"] == ["payment"]
    allow_payment_method(runtime, decision="review")
    assert entitlement(client, auth, "high_volume").json["allowed"] is False
    allow_payment_method(runtime)
    body = entitlement(client, auth, "high_volume").json
    assert body["allowed"] is True and body["missing_verifications"] == [] and body["denied_by"] == []


def test_voip_phone_verified_for_free_does_not_count_for_high_volume(client, auth, runtime):
    client.post("/v1/signups", json=signup(**GB_VOIP), headers=auth)
    verify_by_code(client, auth, runtime, "phone", tier="free")
    verify_document(client, auth)
    allow_payment_method(runtime)
    body = entitlement(client, auth, "high_volume").json
    assert body["decision"] == "allow"          # the document lifted the VoIP step-up...
    assert body["missing_verifications"] == ["phone"] and body["allowed"] is False   # ...the VoIP phone counts not


def test_block_revokes_a_granted_tier_on_the_next_call(client, auth, runtime):
    granted = grant_high_volume(client, auth, runtime)
    client.post("/v1/signups", json=signup(phone="+447911123456", user_agent=HEADLESS,
                                           occurred_at="2026-11-24T21:30:00Z"), headers=auth)
    revoked = entitlement(client, auth, "high_volume", **{"If-None-Match": granted.headers["ETag"]})
    assert revoked.status_code == 200
    assert revoked.json["allowed"] is False and revoked.json["decision"] == "block"
    assert revoked.headers["ETag"] != granted.headers["ETag"]


def test_fraud_label_revokes_every_tier_on_the_next_call(client, auth, runtime):
    granted = grant_high_volume(client, auth, runtime)
    with runtime.session() as s, s.begin():
        # What the labels endpoint does (it also bumps state_version); without the bump the
        # answer's digest still changes the ETag, so no cached grant survives.
        s.execute(update(Account).where(Account.id == "acct_1").values(label="fraud"))
    for tier in ("free", "standard", "high_volume"):
        body = entitlement(client, auth, tier).json
        assert body["allowed"] is False and {"check": "label", "description": "the account is labelled fraud"} \
            in body["denied_by"]
    revalidated = entitlement(client, auth, "high_volume", **{"If-None-Match": granted.headers["ETag"]})
    assert revalidated.status_code == 200 and revalidated.json["allowed"] is False


def test_legit_label_grants_nothing_by_itself(client, auth, runtime):
    client.post("/v1/signups", json=signup(ip="10.1.2.3"), headers=auth)
    with runtime.session() as s, s.begin():
        s.execute(update(Account).where(Account.id == "acct_1").values(label="legit"))
    assert entitlement(client, auth, "free").json["allowed"] is False


def test_etag_and_cache_control_follow_the_state_version(client, auth, runtime):
    client.post("/v1/signups", json=signup(), headers=auth)
    first = entitlement(client, auth, "standard")
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert first.headers["ETag"].startswith(f'"{first.json["state_version"]}-')
    same = entitlement(client, auth, "standard")
    assert same.headers["ETag"] == first.headers["ETag"]
    cached = entitlement(client, auth, "standard", **{"If-None-Match": first.headers["ETag"]})
    assert cached.status_code == 304 and cached.data == b""
    assert cached.headers["ETag"] == first.headers["ETag"] and cached.headers["Cache-Control"] == "private, no-cache"
    # The tag as a compressing proxy hands it on (weak), and among others: still a revalidation.
    weak = entitlement(client, auth, "standard", **{"If-None-Match": f'"other", W/{first.headers["ETag"]}'})
    assert weak.status_code == 304 and weak.data == b""
    verify_by_code(client, auth, runtime, "email")
    changed = entitlement(client, auth, "standard", **{"If-None-Match": f'W/{first.headers["ETag"]}'})
    assert changed.status_code == 200 and changed.json["allowed"] is True
    assert changed.json["state_version"] > first.json["state_version"]
    assert entitlement(client, auth, "free", **{"If-None-Match": first.headers["ETag"]}).status_code == 200


def test_state_version_bumps_on_rescore_and_verification(client, auth, runtime):
    from kyc.rescore.batch import enqueue_rescore

    client.post("/v1/signups", json=signup(), headers=auth)
    versions = [entitlement(client, auth, "free").json["state_version"]]
    enqueue_rescore(runtime, ["acct_1"], "test")
    versions.append(entitlement(client, auth, "free").json["state_version"])
    verify_by_code(client, auth, runtime, "email")
    versions.append(entitlement(client, auth, "free").json["state_version"])
    assert versions == sorted(set(versions))


def test_ops_status_shows_the_running_tiers(client, auth):
    status = client.get("/v1/ops/rules", headers=auth).json
    assert status["tiers"]["high_volume"]["requires"] == ["phone", "payment", "document"]
    assert status["tiers"]["free"]["max_decision"] == "verify"


def test_at_evaluates_the_check_as_of_that_time(runtime, client, auth, tmp_path):
    """The contract's `at=`: a condition on the account's age reads it as of `at` (a replay of
    the gateway's checks), and a malformed time is a field error."""
    root = _rules_copy(tmp_path, """\
- id: seasoned
  description: Accounts a week old
  quota: {requests_per_day: 5}
  max_decision: allow
  conditions:
    - id: a_week_old
      description: The account is at least seven days old
      when: account.age_days >= 7
""")
    runtime.reload_rules(root)
    client.post("/v1/signups", json=signup(occurred_at="2026-11-01T12:00:00Z"), headers=auth)

    def check(at: str):
        return client.get(f"/v1/accounts/acct_1/entitlement?tier=seasoned&at={at}", headers=auth)

    assert check("2026-11-03T12:00:00Z").json["allowed"] is False
    assert check("2026-11-09T12:00:00Z").json["allowed"] is True
    # An offset: encoded, and with its '+' sent unencoded (a query string decodes it to a space).
    assert check("2026-11-03T13:00:00%2B01:00").json["allowed"] is False
    assert check("2026-11-08T13:00:00+01:00").json["allowed"] is True
    assert check("2026-11-08T10:00:00-01:00").json["allowed"] is False
    assert entitlement(client, auth, "seasoned").json["allowed"] is True          # now: a month old
    for bad in ("yesterday", "2026-11-09", "2026-11-09T12:00:00", "1999-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                "2026-11-09T12:00:00+01", "2026-11-09 12:00:00Z", "2026-11-09T12:00:00++01:00"):
        refused = check(bad)
        assert refused.status_code == 400 and "at" in refused.json["error"]["fields"], refused.json


def test_at_reads_the_dormancy_and_wake_up_as_of_that_time(runtime, client, auth):
    """high_volume's not_just_woken, replayed: before the wake-up the account had not just woken."""
    client.post("/v1/signups", json=signup(occurred_at="2026-08-01T12:00:00Z"), headers=auth)
    for at in ("2026-08-10T12:00:00Z", "2026-11-01T12:00:00Z"):
        woke = client.post("/v1/accounts/acct_1/activity", json={"requests": 10, "occurred_at": at}, headers=auth).json
    assert woke["woke_up"] is True

    def not_just_woken_denies(at: str | None) -> bool:
        answer = client.get("/v1/accounts/acct_1/entitlement?tier=high_volume" + (f"&at={at}" if at else ""),
                            headers=auth).json
        return "not_just_woken" in {d["check"] for d in answer["denied_by"]}

    assert not_just_woken_denies(None) and not_just_woken_denies("2026-11-01T18:00:00Z")
    assert not not_just_woken_denies("2026-10-20T12:00:00Z")      # dormant, not yet woken
    assert not not_just_woken_denies("2026-08-05T12:00:00Z")      # before any use


@pytest.mark.parametrize("tier_id,quota,refused", [
    ("prémium", 10, "id must be lower_snake_case"), ("Gold", 10, "id must be lower_snake_case"),
    ("9gold", 10, "id must be lower_snake_case"), ("gold tier", 10, "id must be lower_snake_case"),
    ("gold", 10**26, "quota requests_per_day must be a whole number from 0 to 9007199254740991"),
])
def test_a_tier_id_is_ascii_snake_case_and_a_quota_a_json_exact_number(tmp_path, tier_id, quota, refused):
    """Tier ids travel in URLs (?tier=) and gateway configs; a quota beyond 2^53 - 1 is no
    longer exact in a gateway's JSON."""
    root = _rules_copy(tmp_path, f"""\
- id: {tier_id}
  description: A tier
  quota: {{requests_per_day: {quota}}}
  max_decision: allow
""")
    with pytest.raises(RuleSetError) as caught:
        load_tiers(root, SCHEMA, {})
    assert refused in str(caught.value)


def test_each_tier_reads_only_what_can_decide_it_and_answers_as_a_full_read_would(runtime, client, auth, tmp_path,
                                                                                    monkeypatch):
    """A tier's statement leaves out the columns and the verification and dormancy lookups
    that cannot change its answer (kyc.tiers._reads); every answer is the one a read of
    everything gives."""
    import kyc.tiers
    from sqlalchemy import event

    root = _rules_copy(tmp_path, (RULES_DIR / "tiers.yaml").read_text() + """
- id: documented
  description: Held for review at worst, with a document
  quota: {requests_per_day: 50}
  requires: [document]
  max_decision: review
""")
    runtime.reload_rules(root)
    client.post("/v1/signups", json=signup(email="x@mailinator.com"), headers=auth)          # verify
    client.post("/v1/signups", json=signup(account_id="acct_2", email="b.two@gmail.com", phone="+447911123456",
                                           device_id="dv_2"), headers=auth)
    verify_by_code(client, auth, runtime, "phone", account_id="acct_2")
    verify_document(client, auth, account_id="acct_2")
    client.post("/v1/signups", json=signup(account_id="acct_3", email="c.three@gmail.com", device_id="dv_3",
                                           **GB_VOIP), headers=auth)
    verify_by_code(client, auth, runtime, "phone", account_id="acct_3", tier="free")
    client.post("/v1/signups", json=signup(account_id="acct_4", email="d.four@gmail.com", device_id="dv_4",
                                           ip="10.1.2.3"), headers=auth)                      # review
    statements = []
    event.listen(runtime.engine, "before_cursor_execute",
                 lambda _conn, _cursor, statement, *_: statements.append(statement))
    answers = {(tier, account): entitlement(client, auth, tier, account).json
               for tier in runtime.tiers.tiers for account in ("acct_1", "acct_2", "acct_3", "acct_4")}
    free = entitlement(client, auth, "free", "acct_2")
    assert free.status_code == 200 and not {"FROM verifications", "activity_days", "subjects"} & {
        part for part in ("FROM verifications", "activity_days", "subjects") if part in statements[-1]}
    monkeypatch.setattr(kyc.tiers, "_reads", lambda tier: kyc.tiers._Reads(True, True, kyc.tiers.CODE_AND_DOCUMENT))
    for (tier, account), answer in answers.items():
        assert entitlement(client, auth, tier, account).json == answer, (tier, account)
    assert {a["allowed"] for a in answers.values()} == {True, False}
