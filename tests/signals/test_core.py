"""Each signal family on its own: plain functions, facts out, never an exception on bad input."""

from __future__ import annotations

import phonenumbers
import pytest

from kyc.signals.device import device_signals
from kyc.signals.email import canonical, email_identifiers, email_signals
from kyc.signals.network import network_identifiers, network_signals
from kyc.signals.phone import phone_identifiers, phone_signals

FREE = frozenset({"gmail.com"})


def test_email_facts():
    facts = email_signals("Jane.Doe+x@GMAIL.com", FREE)
    assert facts.items() >= {"valid": True, "domain": "gmail.com", "disposable": False, "free": True,
                             "local_length": 10, "local_digits": 0, "plus_tag": True}.items()
    assert email_signals("abc@mailinator.com", FREE)["disposable"] is True
    assert email_signals("abc@sub.mailinator.com", FREE)["disposable"] is True     # subdomain of a listed one


@pytest.mark.parametrize("address,expected", [
    ("Jane.Doe+promo@googlemail.com", "janedoe@gmail.com"),
    ("j.a.n.e@gmail.com", "jane@gmail.com"),
    ("Jane.Doe+x@outlook.com", "jane.doe@outlook.com"),
    ("jane.doe+x@example.com", "jane.doe+x@example.com"),          # unknown providers keep +tags
])
def test_canonical_mailbox_links_spellings_of_one_inbox(address, expected):
    kinds = dict(email_identifiers(address))
    assert kinds["email"] == expected
    local, _, domain = address.rpartition("@")
    assert canonical(local, domain.lower().replace("googlemail.com", "gmail.com")) == expected


@pytest.mark.parametrize("bad", ["", None, "no-at-sign", "a@", "@b.com", "a@b", "a b@c.com"])
def test_email_never_raises(bad):
    facts = email_signals(bad, FREE)
    assert facts in ({}, {"valid": False})
    assert email_identifiers(bad) == []


@pytest.mark.parametrize("region,kind,expected", [
    ("GB", phonenumbers.PhoneNumberType.VOIP, "voip"),
    ("GB", phonenumbers.PhoneNumberType.MOBILE, "mobile"),
    ("FR", phonenumbers.PhoneNumberType.MOBILE, "mobile"),
    ("DE", phonenumbers.PhoneNumberType.FIXED_LINE, "fixed_line"),
    ("US", phonenumbers.PhoneNumberType.TOLL_FREE, "toll_free"),
    ("US", phonenumbers.PhoneNumberType.MOBILE, "fixed_line_or_mobile"),    # the US has no VoIP metadata
])
def test_phone_line_types_from_phonenumbers_example_numbers(region, kind, expected):
    number = phonenumbers.format_number(phonenumbers.example_number_for_type(region, kind),
                                        phonenumbers.PhoneNumberFormat.E164)
    facts = phone_signals(number, None, frozenset())
    assert facts["valid"] is True and facts["region"] == region and facts["line_type"] == expected
    assert facts["voip"] is (expected == "voip")


def test_phone_operator_listed_voip_range_and_national_form():
    facts = phone_signals("(415) 555-0123", "US", frozenset({"+1415555"}))
    assert facts["voip"] is True and facts["region"] == "US"
    assert dict(phone_identifiers("(415) 555-0123", "US")) == {"phone": "+14155550123", "phone_range": "+14155550"}


@pytest.mark.parametrize("bad", [None, "", "not a number", "+999"])
def test_phone_never_raises(bad):
    facts = phone_signals(bad, None, frozenset())
    assert facts == {} or facts["valid"] is False


@pytest.mark.parametrize("ua,headless,bot,device_class", [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
     "Safari/537.36", False, False, "desktop"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Mobile/15E148 Safari/604.1", False, False, "mobile"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 "
     "Safari/537.36", True, True, "bot"),
    ("python-requests/2.31.0", True, True, "bot"),
    ("curl/8.4.0", True, True, "bot"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", False, True, "bot"),
])
def test_device_facts(ua, headless, bot, device_class):
    facts = device_signals(ua, 4000)
    assert (facts["headless"], facts["bot"], facts["class"]) == (headless, bot, device_class)
    assert facts["form_fill_ms"] == 4000 and facts["ua_missing"] is False


def test_device_missing_ua():
    assert device_signals(None, None) == {"ua_missing": True}
    assert device_signals("", None) == {"ua_missing": True}
    assert device_signals("\x00garbage\xff", None)["ua_missing"] is False


@pytest.mark.parametrize("ip,version,private,prefix", [
    ("8.8.8.8", 4, False, "8.8.8.0/24"),
    ("10.1.2.3", 4, True, "10.1.2.0/24"),
    ("192.168.0.2", 4, True, "192.168.0.0/24"),
    ("2001:4860:4860::8888", 6, False, "2001:4860:4860::/64"),
    ("::1", 6, True, "::/64"),
])
def test_network_facts(ip, version, private, prefix):
    assert network_signals(ip) == {"version": version, "private": private, "prefix": prefix}
    assert dict(network_identifiers(ip))["ip_prefix"] == prefix


@pytest.mark.parametrize("bad", [None, "", "999.1.1.1", "example.com"])
def test_network_never_raises(bad):
    assert network_signals(bad) == {} and network_identifiers(bad) == []
