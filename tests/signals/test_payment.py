"""The `card` signal family: BIN table, brand ranges, merging with the processor's facts, and
the history-based counts (through the real pipeline, on SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from kyc.inputs import PaymentMethodInput
from kyc.signals.payment import (
    BUNDLED_BIN_TABLE,
    BinInfo,
    BinTableError,
    brand_from_iin,
    card_facts,
    context_facts,
    load_bin_table,
    payment_identifiers,
)
from tests.conftest import payment, signup


def card(**over) -> PaymentMethodInput:
    return PaymentMethodInput.model_validate(payment(**over))


# --- BIN table ---------------------------------------------------------------------------------

def test_bundled_table_loads_and_answers_the_contract_example():
    table = load_bin_table()
    assert table.path == str(BUNDLED_BIN_TABLE)
    assert table.lookup("424242") == BinInfo("visa", "credit", "US", None)
    assert table.lookup("51051051").funding == "prepaid"       # 8 digits fall back to their 6-digit BIN
    assert table.lookup("123456") is None


def test_operator_table_longest_prefix_wins_and_extra_columns_are_ignored(tmp_path):
    path = tmp_path / "bins.csv"
    path.write_text(
        "# exported from our processor\n"
        "BIN,Brand,Funding,Issuer_Country,Issuer_Name,category\n"
        "999111,visa,debit,gb,Example Bank,classic\n"
        "99911122,visa,prepaid,DE,Example Prepaid,gift\n"
        "999222,,,,\n"
    )
    table = load_bin_table(str(path))
    assert table.lookup("999111") == BinInfo("visa", "debit", "GB", "Example Bank")
    assert table.lookup("99911122") == BinInfo("visa", "prepaid", "DE", "Example Prepaid")
    assert table.lookup("99911133") == BinInfo("visa", "debit", "GB", "Example Bank")
    assert table.lookup("999222") == BinInfo(None, None, None, None)


@pytest.mark.parametrize("content,message", [
    ("", "empty"),
    ("brand,funding\nvisa,credit\n", "'bin' column"),
    ("bin,brand\n42424\n", ":2: bin must be 6 to 8 digits"),
    ("bin,brand\n4242x2,visa\n", "bin must be 6 to 8 digits"),
    ("bin,funding\n424242,charge\n", "funding must be one of"),
    ("bin,issuer_country\n424242,USA\n", "issuer_country must be"),
    ("bin\n424242\n# note\n424242\n", ":4: bin 424242 listed twice"),
])
def test_a_bad_table_is_refused_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(BinTableError) as exc:
        load_bin_table(str(path))
    assert str(path) in str(exc.value)
    assert message in str(exc.value)


def test_a_missing_table_is_refused(tmp_path):
    with pytest.raises(BinTableError, match="cannot read"):
        load_bin_table(str(tmp_path / "nope.csv"))


def test_a_bad_table_stops_start_up(database_url, make_config, tmp_path):
    from kyc.runtime import Runtime

    path = tmp_path / "bins.csv"
    path.write_text("bin\n12\n")
    with pytest.raises(BinTableError):
        Runtime.start(make_config(database_url, bin_table=str(path)), migrate=False)


@pytest.mark.parametrize("bin_digits,brand", [
    ("424242", "visa"), ("400005", "visa"),
    ("510510", "mastercard"), ("555555", "mastercard"), ("222100", "mastercard"), ("272099", "mastercard"),
    ("340000", "amex"), ("378282", "amex"),
    ("601111", "discover"), ("644000", "discover"), ("650000", "discover"),
    ("352800", "jcb"), ("358999", "jcb"),
    ("362272", "diners"), ("305693", "diners"),
    ("620000", "unionpay"),
    ("220000", "mir"),
    ("272100", None), ("999999", None), ("100000", None),
])
def test_brand_from_iin_ranges(bin_digits, brand):
    assert brand_from_iin(bin_digits) == brand


# --- merging the processor's facts with the table -----------------------------------------------

def test_processor_facts_win_over_the_table():
    info = BinInfo("visa", "debit", "GB", "Example Bank")
    facts = card_facts(card(funding="prepaid", issuer_country="fr"), info)
    assert facts == {"bin": "424242", "bin_known": True, "brand": "visa", "funding": "prepaid", "prepaid": True,
                     "issuer_country": "FR", "issuer_name": "Example Bank", "billing_country": "US"}


def test_table_fills_what_the_processor_did_not_send():
    info = BinInfo("visa", "prepaid", "GB", None)
    facts = card_facts(card(funding="unknown", issuer_country=None, billing_country=None), info)
    assert facts["funding"] == "prepaid" and facts["prepaid"] is True
    assert facts["issuer_country"] == "GB"
    assert "billing_country" not in facts and "issuer_name" not in facts


def test_unknown_bin_and_unknown_funding_leave_prepaid_missing():
    facts = card_facts(card(bin="99999912", funding="unknown", issuer_country=None), None)
    assert facts["bin"] == "999999"
    assert facts["bin_known"] is False
    assert facts["funding"] == "unknown"
    assert "prepaid" not in facts and "brand" not in facts and "issuer_country" not in facts
    assert card_facts(card(bin="51234567", funding=None), None)["brand"] == "mastercard"
    assert "funding" not in card_facts(card(funding=None), None)


def test_context_facts_take_ip_country_and_signup_phone_region():
    assert context_facts({"country": "DE"}, {"phone": {"region": "GB"}}) == {
        "account_has_signup": True, "ip_country": "DE", "phone_region": "GB"}
    assert context_facts({}, {"phone": {}}) == {"account_has_signup": True}
    assert context_facts({"version": 4}, None) == {"account_has_signup": False}


def test_identifiers_never_hold_more_than_fingerprint_bin_and_postal():
    ids = payment_identifiers(card(bin="42424242", billing_postal_code="sw1a 1aa", billing_country="gb"))
    assert ids == [("card_fingerprint", "pm_fp_91ab"), ("card_bin", "424242"),
                   ("card_bin_postal", "424242:GB:SW1A1AA")]
    assert payment_identifiers(card(billing_postal_code=" - ")) == [("card_fingerprint", "pm_fp_91ab"),
                                                                      ("card_bin", "424242")]


# --- through the pipeline: history-based signals ----------------------------------------------------

def post(client, auth, **over) -> dict:
    response = client.post("/v1/payment-methods", json=payment(**over), headers=auth)
    assert response.status_code == 200, response.json
    return response.json


def test_fingerprint_reuse_counts_distinct_accounts_over_24h_and_30d(client, auth):
    post(client, auth, account_id="a1", occurred_at="2026-09-29T12:00:00Z")     # 25 days before
    post(client, auth, account_id="a2", occurred_at="2026-10-24T09:00:00Z")
    post(client, auth, account_id="a2", occurred_at="2026-10-24T10:00:00Z")     # same account again
    last = post(client, auth, account_id="a3", occurred_at="2026-10-24T21:00:00Z")["signals"]["card"]
    assert (last["fingerprint_accounts_24h"], last["fingerprint_accounts_30d"]) == (2, 3)
    # Another card is counted on its own.
    other = post(client, auth, account_id="a4", fingerprint="pm_fp_other")["signals"]["card"]
    assert other["fingerprint_accounts_30d"] == 1
    # A month on, only the window's accounts count (event time, not wall clock): a2, a3 and a5.
    # (Every time here is in the past: occurred_at more than a day ahead of now is refused.)
    late = post(client, auth, account_id="a5", occurred_at="2026-11-23T08:00:00Z")["signals"]["card"]
    assert (late["fingerprint_accounts_24h"], late["fingerprint_accounts_30d"]) == (1, 3)


def test_bin_burst_counts_accounts_per_six_digit_bin_over_1h_and_24h(client, auth):
    for i in range(3):
        post(client, auth, account_id=f"b{i}", fingerprint=f"fp_{i}", bin="51051051",
             occurred_at=f"2026-11-24T20:{10 * i:02d}:00Z")
    post(client, auth, account_id="b9", fingerprint="fp_9", bin="510510", occurred_at="2026-11-24T10:00:00Z")
    last = post(client, auth, account_id="b3", fingerprint="fp_3", bin="510510",
                occurred_at="2026-11-24T20:45:00Z")["signals"]["card"]
    assert (last["bin_accounts_1h"], last["bin_accounts_24h"]) == (4, 5)
    assert last["bin"] == "510510"


def test_cards_per_account_count_distinct_cards_in_24h(client, auth):
    for i, fp in enumerate(["c1", "c2", "c2", "c3"]):
        last = post(client, auth, fingerprint=fp, occurred_at=f"2026-11-24T20:0{i}:00Z")["signals"]["card"]
    assert last["cards_on_account_24h"] == 3
    day_later = post(client, auth, fingerprint="c4", occurred_at="2026-11-25T20:02:30Z")["signals"]["card"]
    assert day_later["cards_on_account_24h"] == 2          # c3 (20:03 the day before) and c4


def test_cards_per_device_count_cards_from_any_account(client, auth):
    for i in range(4):
        post(client, auth, account_id=f"d{i}", fingerprint=f"card_{i}", device_id="dv_tester",
             occurred_at=f"2026-11-24T20:0{i}:00Z")
    # A signup from the same device adds no card.
    client.post("/v1/signups", json=signup(account_id="d9", device_id="dv_tester",
                                           occurred_at="2026-11-24T20:05:00Z"), headers=auth)
    last = post(client, auth, account_id="d9", fingerprint="card_0", device_id="dv_tester",
                occurred_at="2026-11-24T20:06:00Z")["signals"]["card"]
    assert last["cards_on_device_24h"] == 4
    assert last["cards_on_account_24h"] == 1
    other_device = post(client, auth, account_id="d9", fingerprint="card_5", device_id="dv_other",
                        occurred_at="2026-11-24T20:07:00Z")["signals"]["card"]
    assert other_device["cards_on_device_24h"] == 1
    assert "cards_on_device_24h" not in post(client, auth, device_id=None)["signals"]["card"]


def test_phone_region_comes_from_the_latest_signup_at_event_time(client, auth):
    client.post("/v1/signups", json=signup(phone="+447400123456", occurred_at="2026-11-24T10:00:00Z"),
                headers=auth)
    client.post("/v1/signups", json=signup(phone="+33612345678", occurred_at="2026-11-24T20:00:00Z"), headers=auth)
    early = post(client, auth, occurred_at="2026-11-24T12:00:00Z")["signals"]["card"]
    late = post(client, auth, occurred_at="2026-11-24T21:00:00Z")["signals"]["card"]
    before_any = post(client, auth, occurred_at="2026-11-24T09:00:00Z")["signals"]["card"]
    assert (early["phone_region"], late["phone_region"]) == ("GB", "FR")
    assert early["account_has_signup"] is True
    assert before_any["account_has_signup"] is False and "phone_region" not in before_any


def test_response_carries_card_and_ip_families(client, auth):
    body = post(client, auth, bin="51051051", funding="unknown", issuer_country=None)
    facts = body["signals"]["card"]
    assert facts["brand"] == "mastercard" and facts["funding"] == "prepaid" and facts["prepaid"] is True
    assert facts["bin_known"] is True and "issuer_country" not in facts
    assert body["signals"]["ip"]["prefix"] == "73.15.1.0/24"


def test_operator_bin_table_is_used(database_url, make_config, tmp_path):
    from kyc import create_app
    from kyc.runtime import Runtime

    path = tmp_path / "bins.csv"
    path.write_text("bin,brand,funding,issuer_country,issuer_name\n999111,visa,prepaid,GB,Example Bank\n")
    rt = Runtime.start(make_config(database_url, bin_table=str(path), dev_key="dev"), migrate=False)
    try:
        client = create_app(runtime=rt).test_client()
        body = client.post("/v1/payment-methods", json=payment(bin="999111", funding=None, issuer_country=None),
                           headers={"Authorization": "Bearer dev"}).json
    finally:
        rt.engine.dispose()
    facts = body["signals"]["card"]
    assert (facts["issuer_name"], facts["issuer_country"], facts["prepaid"]) == ("Example Bank", "GB", True)
    assert "prepaid_card" in [r["rule"] for r in body["reasons"]]


def test_windows_exclude_an_event_exactly_their_length_old(client, auth):
    post(client, auth, account_id="e1", fingerprint="fp_edge", bin="601111", device_id="dv_edge",
         occurred_at="2026-11-23T21:00:00Z")
    post(client, auth, account_id="e2", fingerprint="fp_edge2", bin="601111", device_id="dv_edge",
         occurred_at="2026-11-24T20:00:00Z")
    # Exactly 24 h and exactly 1 h after them: (at - window, at] leaves each one out.
    day = post(client, auth, account_id="e3", fingerprint="fp_edge", bin="601111", device_id="dv_edge",
               occurred_at="2026-11-24T21:00:00Z")["signals"]["card"]
    assert (day["fingerprint_accounts_24h"], day["fingerprint_accounts_30d"]) == (1, 2)
    assert (day["bin_accounts_1h"], day["bin_accounts_24h"]) == (1, 2)
    assert day["cards_on_device_24h"] == 2                     # fp_edge2 (20:00) and this card


def test_card_signals_are_the_same_with_redis_velocity(on_sql_and_redis):
    """Payment methods through the API with SQL-backed and Redis-backed velocity: identical card signals."""
    bodies = [payment(account_id=f"acct_{n}", fingerprint=f"fp_{n % 3}", bin=f"51051{n % 2}",
                      device_id=f"dv_{n % 2}", occurred_at=f"2026-11-24T{10 + n:02d}:00:00Z") for n in range(10)]
    answers = on_sql_and_redis("/v1/payment-methods", bodies, "card")
    assert answers["sql"] == answers["redis"]
    assert max(c["fingerprint_accounts_24h"] for c in answers["sql"]) == 4
    assert max(c["cards_on_device_24h"] for c in answers["sql"]) == 3
