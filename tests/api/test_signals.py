"""The new signals through POST /v1/signups: rules that read them, identifiers they record."""

from __future__ import annotations

import phonenumbers
from sqlalchemy import select

from kyc.models import Sighting
from tests.conftest import signup

GB_VOIP = phonenumbers.format_number(phonenumbers.example_number_for_type("GB", phonenumbers.PhoneNumberType.VOIP),
                                     phonenumbers.PhoneNumberFormat.E164)
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")


def _rules(body: dict) -> list[str]:
    return [r["rule"] for r in body["reasons"]]


def test_signals_of_a_signup_from_a_cloud_network(client, auth):
    body = client.post("/v1/signups", json=signup(ip="52.94.0.1"), headers=auth).json
    ip = body["signals"]["ip"]
    assert ip["asn"] == 16509 and ip["hosting"] is True and ip["country"] == "US"
    assert "hosting_ip" in _rules(body) and body["decision"] == "allow"       # evidence, not friction
    assert set(body["signals"]["email"]) >= {"provider", "local_randomness", "template", "role"}
    assert body["signals"]["device"]["browser"] == "Chrome"


def test_voip_number_from_another_country_than_the_ip(client, auth):
    # A GB VoIP number (phonenumbers' own example) signing up from a UK broadband IP is consistent ...
    home = client.post("/v1/signups", json=signup(phone=GB_VOIP, ip="81.2.69.160",
                                                  timezone="Europe/London", locale="en-GB"), headers=auth).json
    assert home["signals"]["phone"]["voip"] is True
    assert home["signals"]["ip"]["phone_country_mismatch"] is False
    assert "voip_phone_foreign_ip" not in _rules(home)
    # ... from a US network it is not.
    away = client.post("/v1/signups", json=signup(account_id="acct_2", email="sam.lee@example.org", device_id="dv_2",
                                                  phone=GB_VOIP, ip="73.15.1.1"),
                       headers=auth).json
    assert away["signals"]["ip"]["phone_country_mismatch"] is True
    assert {"voip_phone_foreign_ip", "phone_country_mismatch"} <= set(_rules(away))
    assert away["required_verifications"] == ["phone", "document"]


def test_browser_timezone_and_locale_from_another_country(client, auth):
    body = client.post("/v1/signups", json=signup(ip="81.2.69.160", timezone="Asia/Ho_Chi_Minh",
                                                  locale="vi-VN"), headers=auth).json
    assert body["signals"]["device"]["timezone_country"] == "VN"
    assert body["signals"]["ip"]["timezone_country_mismatch"] is True
    assert "browser_country_mismatch" in _rules(body)


def test_client_hints_that_contradict_the_user_agent_send_it_to_review(client, auth):
    hints = {"sec-ch-ua-platform": '"Linux"', "sec-ch-ua-mobile": "?0"}
    body = client.post("/v1/signups", json=signup(user_agent=CHROME, client_hints=hints), headers=auth).json
    assert body["signals"]["device"]["hints_platform_mismatch"] is True
    assert "client_hints_contradict_user_agent" in _rules(body) and body["decision"] == "review"


def test_missing_optional_inputs_leave_their_signals_missing(client, auth):
    body = client.post("/v1/signups", json={"account_id": "bare", "email": "jo@example.org", "ip": "10.1.2.3"},
                       headers=auth).json
    assert body["signals"]["phone"] == {}
    assert body["signals"]["device"] == {"ua_missing": True}
    assert body["signals"]["ip"] == {"version": 4, "private": True, "prefix": "10.1.2.0/24"}


def test_new_identifier_kinds_are_recorded_as_keyed_hashes(client, auth, runtime):
    client.post("/v1/signups", json=signup(email="Mark.Hale84@gmail.com", ip="73.15.1.1"), headers=auth)
    with runtime.session() as session:
        kinds = {row.kind: row.value_hash for row in session.execute(select(Sighting)).scalars()}
    assert {"email", "email_domain", "email_template", "phone", "phone_range", "ip", "ip_prefix", "asn",
            "device"} <= set(kinds)
    assert all(len(h) == 32 and "gmail" not in h and "15169" not in h for h in kinds.values())
