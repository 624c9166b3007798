"""POST /v1/payment-methods end to end, and the account decision combining signup and cards."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from kyc.rescore.batch import enqueue_rescore
from kyc.models import Account, Evaluation, Sighting
from tests.conftest import assert_field_error, payment, signup


def _counts(runtime) -> tuple[int, int, int]:
    with runtime.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Account, Evaluation, Sighting))


def post(client, auth, **over) -> dict:
    response = client.post("/v1/payment-methods", json=payment(**over), headers=auth)
    assert response.status_code == 200, response.json
    return response.json


# A prepaid card issued in a country that is neither the phone's nor the IP's (both US): asks for
# a document. (A prepaid card from home adds score without friction.)
PREPAID_ABROAD = {"funding": "prepaid", "issuer_country": "GB", "billing_country": "GB"}


def account(client, auth, account_id="acct_1") -> dict:
    response = client.get(f"/v1/accounts/{account_id}", headers=auth)
    assert response.status_code == 200
    return response.json


def rules_of(body: dict) -> list[str]:
    return [r["rule"] for r in body["reasons"]]


def card_testing(client, auth, account_id="acct_1", cards=4) -> dict:
    """Add `cards` different cards to one account within minutes: the last one is blocked."""
    for i in range(cards):
        body = post(client, auth, account_id=account_id, fingerprint=f"fp_{account_id}_{i}",
                    occurred_at=f"2026-11-24T21:1{i}:00Z")
    return body


def test_same_shape_as_a_signup_evaluation_and_stored_on_the_account(client, auth, runtime):
    signed = client.post("/v1/signups", json=signup(), headers=auth).json
    body = post(client, auth)
    assert set(body) == set(signed)
    assert body["evaluation_id"].startswith("ev_") and body["evaluation_id"] != signed["evaluation_id"]
    assert (body["account_id"], body["subject"], body["decision"], body["score"]) == (
        "acct_1", "payment_method", "allow", 0)
    assert body["reasons"] == [] and body["required_verifications"] == []
    assert body["rules_version"] == signed["rules_version"]
    assert set(body["signals"]) == {"card", "ip", "account", "velocity", "graph", "degraded"}
    # The shared velocity counters see the card's keys too (same counts as the card family's).
    assert body["signals"]["velocity"]["card_fingerprint_30d"] == body["signals"]["card"]["fingerprint_accounts_30d"]
    assert body["signals"]["velocity"]["card_bin_1h"] == body["signals"]["card"]["bin_accounts_1h"]
    with runtime.session() as s:
        stored = s.get(Evaluation, body["evaluation_id"])
        assert (stored.account_id, stored.subject, stored.trigger) == ("acct_1", "payment_method", "live")
        assert stored.input["fingerprint"] == "pm_fp_91ab" and stored.signals == body["signals"]
        kinds = sorted(s.scalars(select(Sighting.kind).where(Sighting.evaluation_id == body["evaluation_id"])))
    assert kinds == ["asn", "card_bin", "card_fingerprint", "device", "ip", "ip_prefix"]
    history = account(client, auth)["evaluations"]
    assert [(e["evaluation_id"], e["subject"]) for e in history] == [
        (body["evaluation_id"], "payment_method"), (signed["evaluation_id"], "signup")]


def test_identifiers_are_keyed_hashes_never_raw_values(client, auth, runtime):
    post(client, auth, billing_postal_code="94103")
    with runtime.session() as s:
        rows = s.execute(select(Sighting.kind, Sighting.value_hash)).all()
    assert {kind for kind, _ in rows} == {"asn", "card_bin", "card_bin_postal", "card_fingerprint", "device", "ip",
                                          "ip_prefix"}
    for _, value_hash in rows:
        assert len(value_hash) == 32 and "424242" not in value_hash and "pm_fp" not in value_hash


def test_signup_allow_and_payment_block_make_the_account_block(client, auth):
    assert client.post("/v1/signups", json=signup(), headers=auth).json["decision"] == "allow"
    blocked = card_testing(client, auth)
    assert blocked["decision"] == "block" and "card_testing_account" in rules_of(blocked)
    standing = account(client, auth)
    assert (standing["decision"], standing["score"]) == ("block", blocked["score"])
    assert "card_testing_account" in rules_of(standing)


def test_signup_verify_and_clean_card_keep_the_signup_verifications(client, auth):
    signed = client.post("/v1/signups", json=signup(email="x@mailinator.com"), headers=auth).json
    assert (signed["decision"], signed["required_verifications"]) == ("verify", ["phone"])
    assert post(client, auth)["decision"] == "allow"
    standing = account(client, auth)
    assert (standing["decision"], standing["required_verifications"]) == ("verify", ["phone"])


def test_both_verify_require_the_union_of_verifications(client, auth):
    client.post("/v1/signups", json=signup(email="x@mailinator.com"), headers=auth)
    body = post(client, auth, billing_country="GB")          # issuer US, billing GB, IP (73.15.1.1) US
    assert (body["decision"], body["required_verifications"]) == ("verify", ["payment"])
    standing = account(client, auth)
    assert (standing["decision"], standing["required_verifications"]) == ("verify", ["phone", "payment"])
    assert set(rules_of(standing)) == {"disposable_email", "issuer_not_billing_country", "billing_not_ip_country"}


def test_a_later_clean_signup_does_not_clear_a_blocked_card(client, auth):
    card_testing(client, auth)
    client.post("/v1/signups", json=signup(occurred_at="2026-11-24T22:00:00Z"), headers=auth)
    assert account(client, auth)["decision"] == "block"


def test_a_clean_second_card_does_not_clear_a_blocked_one(client, auth):
    client.post("/v1/signups", json=signup(), headers=auth)
    assert post(client, auth, fingerprint="fp_prepaid", **PREPAID_ABROAD)["decision"] == "verify"
    assert post(client, auth, fingerprint="fp_clean", occurred_at="2026-11-24T21:30:00Z")["decision"] == "allow"
    standing = account(client, auth)
    assert (standing["decision"], standing["required_verifications"]) == ("verify", ["document"])


def test_rescoring_the_same_card_replaces_its_own_evaluation(client, auth):
    client.post("/v1/signups", json=signup(), headers=auth)
    post(client, auth, **PREPAID_ABROAD)
    assert account(client, auth)["decision"] == "verify"
    post(client, auth, funding="credit", occurred_at="2026-11-24T21:30:00Z")
    assert account(client, auth)["decision"] == "allow"
    # An older event for the card does not override the newer one.
    post(client, auth, **PREPAID_ABROAD, occurred_at="2026-11-24T21:10:00Z")
    assert account(client, auth)["decision"] == "allow"


def test_rescore_runs_every_subject_and_card_again(client, auth, runtime):
    client.post("/v1/signups", json=signup(), headers=auth)
    post(client, auth, fingerprint="fp_a")
    post(client, auth, fingerprint="fp_b", **PREPAID_ABROAD)
    before = _counts(runtime)
    assert enqueue_rescore(runtime, ["acct_1"], reason="test") == 1
    after = _counts(runtime)
    assert after == (before[0], before[1] + 3, before[2])        # no new sightings on a rescore
    with runtime.session() as s:
        rescored = s.scalars(select(Evaluation).where(Evaluation.trigger == "rescore")).all()
        stored = s.get(Account, "acct_1")
    assert sorted(e.subject for e in rescored) == ["payment_method", "payment_method", "signup"]
    assert sorted(e.input.get("fingerprint", "") for e in rescored) == ["", "fp_a", "fp_b"]
    assert stored.decision == "verify"
    # Rescoring sees the same history: fp_b is still the account's second card, not its fourth.
    fp_b = next(e for e in rescored if e.input.get("fingerprint") == "fp_b")
    assert fp_b.signals["card"]["cards_on_account_24h"] == 2


def test_unknown_account_is_scored_and_created(client, auth, runtime):
    body = post(client, auth, account_id="acct_new")
    assert body["decision"] == "allow"
    assert rules_of(body) == ["payment_before_signup"]
    assert body["signals"]["card"]["account_has_signup"] is False
    standing = account(client, auth, "acct_new")
    assert (standing["decision"], standing["score"]) == ("allow", 10)
    # The signup scored afterwards joins it on the same account.
    client.post("/v1/signups", json=signup(account_id="acct_new", occurred_at="2026-11-24T21:10:00Z"), headers=auth)
    assert [e["subject"] for e in account(client, auth, "acct_new")["evaluations"]] == ["signup", "payment_method"]


def test_farm_cards_shared_across_accounts_are_blocked(client, auth):
    for i in range(4):
        client.post("/v1/signups", json=signup(account_id=f"farm{i}", email=f"farm{i}@example.com",
                                               device_id=f"dv_{i}"), headers=auth)
        body = post(client, auth, account_id=f"farm{i}", fingerprint="pm_fp_farm", bin="51051051",
                    **PREPAID_ABROAD, device_id=f"dv_{i}", occurred_at=f"2026-11-24T21:1{i}:00Z")
    assert body["decision"] == "block"
    assert {"card_reused_widely", "card_shared_across_accounts", "prepaid_card"} <= set(rules_of(body))
    assert account(client, auth, "farm3")["decision"] == "block"
    assert account(client, auth, "farm0")["decision"] == "verify"       # the first was only prepaid from abroad then


BAD_BODIES = [
    ({"account_id": None}, "account_id", "required"),
    ({"fingerprint": None}, "fingerprint", "required"),
    ({"bin": None}, "bin", "required"),
    ({"fingerprint": ""}, "fingerprint", "at least 1"),
    ({"bin": "42424"}, "bin", "pattern"),
    ({"bin": "424242424"}, "bin", "pattern"),
    ({"bin": 424242}, "bin", "string"),
    ({"last4": "42"}, "last4", "pattern"),
    ({"funding": "gift"}, "funding", "pattern"),
    ({"issuer_country": "USA"}, "issuer_country", "pattern"),
    ({"billing_country": "1A"}, "billing_country", "pattern"),
    ({"ip": "300.1.2.3"}, "ip", "IPv4 or IPv6"),
    ({"device_id": "x" * 129}, "device_id", "at most 128"),
    ({"occurred_at": "yesterday"}, "occurred_at", "RFC 3339"),
    ({"card_number": "4242"}, "card_number", "unknown field"),
    ({"metadata": []}, "metadata", "dictionary"),
]


@pytest.mark.parametrize("change,field,message", BAD_BODIES, ids=[b[1] + ":" + b[2] for b in BAD_BODIES])
def test_bad_fields_are_400_naming_the_field_and_change_nothing(client, auth, runtime, change, field, message):
    response = client.post("/v1/payment-methods", json=payment(**change), headers=auth)
    assert_field_error(response, field, message)
    assert _counts(runtime) == (0, 0, 0)


def test_lower_case_countries_are_accepted_as_iso(client, auth):
    facts = post(client, auth, issuer_country="us", billing_country="us")["signals"]["card"]
    assert (facts["issuer_country"], facts["billing_country"]) == ("US", "US")


def test_requires_an_api_key(client, runtime):
    response = client.post("/v1/payment-methods", json=payment())
    assert response.status_code == 401
    assert _counts(runtime) == (0, 0, 0)


def test_readme_payment_example_gives_the_documented_answer(database_url, make_config):
    import json
    import re

    from kyc import create_app
    from kyc.config import DEV_KEY, PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    signup_body = json.loads(re.search(r"curl -s \S+/v1/signups.*?-d '(.*?)'", readme, re.S).group(1))
    payment_body = json.loads(re.search(r"curl -s \S+/v1/payment-methods.*?-d '(.*?)'", readme, re.S).group(1))
    documented = json.loads(re.search(r"shaped like a signup's \(signals abridged\):\n\n```json\n(.*?)\n```",
                                      readme, re.S).group(1))
    client = create_app(make_config(database_url, dev_key=DEV_KEY)).test_client()
    headers = {"Authorization": f"Bearer {DEV_KEY}"}
    assert client.post("/v1/signups", json=signup_body, headers=headers).status_code == 200
    answer = client.post("/v1/payment-methods", json=payment_body, headers=headers).json
    for key in ("account_id", "subject", "decision", "score", "reasons", "required_verifications"):
        assert answer[key] == documented[key], key
    for key, value in documented["signals"]["card"].items():
        if key != "...":
            assert answer["signals"]["card"][key] == value, key
    standing = client.get("/v1/accounts/acct_demo", headers=headers).json
    assert standing["required_verifications"] == ["phone", "payment"]     # as the README says


def test_two_cards_hitting_one_rule_give_the_account_that_reason_once(client, auth):
    client.post("/v1/signups", json=signup(), headers=auth)
    post(client, auth, fingerprint="fp_p1", funding="prepaid")
    post(client, auth, fingerprint="fp_p2", funding="prepaid", occurred_at="2026-11-24T21:06:00Z")
    assert rules_of(account(client, auth)) == ["prepaid_card"]


def test_an_allowed_card_completes_a_payment_verification(client, auth):
    client.post("/v1/signups", json=signup(), headers=auth)
    pending = client.post("/v1/accounts/acct_1/verifications", json={"kind": "payment"}, headers=auth)
    assert pending.status_code == 201 and pending.json["status"] == "pending"
    # A prepaid card asking for a document proves nothing; a clean card added later does.
    assert post(client, auth, fingerprint="fp_prepaid", **PREPAID_ABROAD)["decision"] == "verify"
    again = client.post("/v1/accounts/acct_1/verifications", json={"kind": "payment"}, headers=auth)
    assert again.json["status"] == "pending"
    assert post(client, auth, fingerprint="fp_clean", occurred_at="2026-11-24T21:30:00Z")["decision"] == "allow"
    done = client.post("/v1/accounts/acct_1/verifications", json={"kind": "payment"}, headers=auth)
    assert done.json["status"] == "verified" and done.json["verification_id"] == pending.json["verification_id"]
    later = post(client, auth, fingerprint="fp_third", occurred_at="2026-11-24T21:40:00Z")
    assert later["signals"]["account"]["payment_verified"] is True


def test_countries_compare_with_the_ip_country_from_geolocation(client, auth):
    client.post("/v1/signups", json=signup(), headers=auth)                 # phone +1 415: US
    home = post(client, auth)                                                # US card, US billing, 73.15.1.1
    assert home["signals"]["card"]["ip_country"] == "US" and home["decision"] == "allow" and home["score"] == 0
    abroad = post(client, auth, ip="193.0.6.139", occurred_at="2026-11-24T21:10:00Z")     # RIPE NCC, NL
    assert abroad["signals"]["card"]["ip_country"] == "NL"
    assert (abroad["decision"], set(rules_of(abroad))) == ("allow", {"issuer_not_ip_country", "billing_not_ip_country"})
    foreign = post(client, auth, fingerprint="fp_br", issuer_country="BR", occurred_at="2026-11-24T21:20:00Z")
    assert foreign["decision"] == "review"
    assert {"card_country_fits_nothing", "issuer_not_ip_country", "issuer_not_phone_region"} <= set(rules_of(foreign))


def test_a_card_added_from_a_cloud_network_adds_score_without_friction(client, auth):
    """VPNs, iCloud Private Relay, WARP and cloud desktops are on hosting networks: ordinary
    people add cards from them, so the network alone is evidence, not a decision."""
    client.post("/v1/signups", json=signup(), headers=auth)
    body = post(client, auth, ip="52.94.0.1")                                # AWS (AS16509), US
    assert body["signals"]["ip"]["hosting"] is True
    assert (body["decision"], rules_of(body), body["score"]) == ("allow", ["card_from_hosting_network"], 10)


def test_a_card_does_not_reset_the_traits_the_signup_gave_the_cluster(client, auth, runtime):
    from kyc.models import ClusterMember

    client.post("/v1/signups", json=signup(ip="52.94.0.1"), headers=auth)          # AWS: hosting
    post(client, auth)                                                               # card from 73.15.1.1
    with runtime.session() as s:
        assert s.get(ClusterMember, "acct_1").hosting is True


def test_a_card_that_proves_payment_evaluates_the_other_cards_again(client, auth, runtime):
    """Card A asks for proof of payment; card B, evaluated allow, is that proof: card A's slot is
    evaluated again at once (before, the account stayed at verify, requiring payment, until a
    full rescore)."""
    client.post("/v1/signups", json=signup(), headers=auth)
    first = post(client, auth, fingerprint="fp_a", billing_country="GB")
    assert (first["decision"], first["required_verifications"]) == ("verify", ["payment"]), first["reasons"]
    assert account(client, auth)["decision"] == "verify"
    second = post(client, auth, fingerprint="fp_b", occurred_at="2026-11-24T21:10:00Z")
    assert second["decision"] == "allow"
    standing = account(client, auth)
    assert (standing["decision"], standing["required_verifications"]) == ("allow", [])
    with runtime.session() as s:
        again = s.scalars(select(Evaluation).where(Evaluation.trigger == "rescore")).all()
    # Only the other subjects were evaluated again (signup, card A), not the proving card.
    assert sorted(e.input.get("fingerprint", "signup") for e in again) == ["fp_a", "signup"]
    card_a = next(e for e in again if e.input.get("fingerprint") == "fp_a")
    assert card_a.decision == "allow" and card_a.signals["account"]["payment_verified"] is True
