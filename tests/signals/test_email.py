"""Email signals on real-world address forms: provider spellings, quoted local parts, IDN domains,
trailing dots, role boxes, throwaway domains from the maintained list, generated local parts."""

from __future__ import annotations

import pytest
from disposable_email_domains import blocklist

from kyc.signals.email import canonical, email_identifiers, email_signals, parse, randomness, template

FREE = frozenset({"gmail.com", "outlook.com", "yahoo.com"})


@pytest.mark.parametrize("address, mailbox", [
    ("Jane.Doe+newsletter@gmail.com", "janedoe@gmail.com"),
    ("j.a.n.e.doe@googlemail.com", "janedoe@gmail.com"),
    ("jane.doe+shop@outlook.com", "jane.doe@outlook.com"),       # Outlook: +tags, dots kept
    ("jane.doe+x@hotmail.com", "jane.doe@hotmail.com"),
    ("janedoe-shopping@yahoo.com", "janedoe@yahoo.com"),        # Yahoo disposable -keyword
    ("jane+promo@protonmail.com", "jane@proton.me"),
    ("jane+promo@pm.me", "jane@proton.me"),
    ("jane+promo@me.com", "jane@icloud.com"),
    ("jane.doe+x@example.com", "jane.doe+x@example.com"),       # unknown providers are left alone
])
def test_provider_canonical_form_links_spellings_of_one_mailbox(address, mailbox):
    local, domain = parse(address)
    assert canonical(local, domain) == mailbox
    assert ("email", mailbox) in email_identifiers(address)


def test_signals_of_a_plain_free_mail_address():
    facts = email_signals("j.smith84@gmail.com", FREE)
    assert facts["valid"] and facts["free"] and not facts["disposable"] and not facts["role"]
    assert facts["provider"] == "gmail" and facts["canonical_differs"]
    assert (facts["local_length"], facts["local_digits"], facts["digit_suffix"]) == (9, 2, 2)
    assert facts["template"] == "l.lllll99"


def test_idn_domain_is_reported_in_ascii_and_lower_case():
    facts = email_signals("Info@Bücher.Example", FREE)
    assert facts["domain"] == "xn--bcher-kva.example"
    assert facts["role"] is True


def test_quoted_local_part_is_valid_and_measured_without_quotes():
    facts = email_signals('"john smith"@example.com', FREE)
    assert facts["valid"] is True
    assert facts["local_length"] == 10 and facts["template"] == "llll lllll"


@pytest.mark.parametrize("address", [
    "jane@example.com.",         # trailing dot: FQDN notation, not allowed in an address
    "jane..doe@example.com",     # consecutive dots outside quotes
    ".jane@example.com",
    "jane@",
    "@example.com",
    "jane@exa mple.com",
    "jane@@example.com",
    "jane@-example.com",         # label starting with a hyphen
])
def test_malformed_addresses_are_invalid_not_errors(address):
    assert email_signals(address, FREE) == {"valid": False}
    assert email_identifiers(address) == []


@pytest.mark.parametrize("value", [None, "", 42, b"jane@example.com", ["jane@example.com"]])
def test_absent_or_wrongly_typed_input_gives_missing_signals(value):
    assert email_signals(value, FREE) == {}
    assert email_identifiers(value if isinstance(value, str) or value is None else None) == []


def test_disposable_domains_come_from_the_maintained_list_with_subdomains():
    listed = sorted(blocklist)[:50]
    for domain in listed:
        assert email_signals(f"someone@{domain}", FREE)["disposable"] is True, domain
        assert email_signals(f"someone@mx1.{domain}", FREE)["disposable"] is True, domain
    assert email_signals("someone@gmail.com", FREE)["disposable"] is False


def test_randomness_separates_names_from_keyboard_noise():
    names = ["j.smith84", "jane.doe", "mariagarcia1990", "wang.wei", "nguyen.van.an", "alexander.petrov",
             "ahmed.khan92", "john_smith", "tomhanks"]
    noise = ["xk2q9vbn7t", "qwpzkrtx", "kxqjzv", "vhfjdkslq", "k8s9d7f6", "zxcvbnmq"]
    assert max(randomness(n) for n in names) < 0.45
    assert min(randomness(n) for n in noise) > 0.6
    assert randomness("12345") is None       # no letters: nothing to judge
    facts = email_signals("xk2q9vbn7t@gmail.com", FREE)
    assert facts["local_randomness"] > 0.6


def test_template_links_names_generated_from_one_pattern():
    assert template("Jane.Doe84") == "Llll.Lll99"
    first = dict(email_identifiers("Mark.Hale84@gmail.com"))["email_template"]
    second = dict(email_identifiers("Lisa.Wong19@gmail.com"))["email_template"]
    assert first == second == "Llll.Llll99@gmail.com"


@pytest.mark.parametrize("address, relay", [
    ("k7x2mq9d4f@privaterelay.appleid.com", "apple_hide_my_email"),
    ("abc123xyz@mozmail.com", "firefox_relay"),
    ("shop.x7q2@jane.mozmail.com", "firefox_relay"),            # per-user subdomain
    ("quick-brown-fox@duck.com", "duckduckgo"),
    ("random_word123@aleeas.com", "simplelogin"),
    ("newsletter@jane.addy.io", "addy"),
    ("fluffy.cat42@passmail.net", "proton_pass"),
])
def test_privacy_relays_are_their_own_fact_not_disposable(address, relay):
    facts = email_signals(address, frozenset())
    assert facts["privacy_relay"] == relay
    assert facts["disposable"] is False


def test_ordinary_and_throwaway_domains_are_no_relay():
    assert "privacy_relay" not in email_signals("jane.smith84@gmail.com", frozenset())
    assert "privacy_relay" not in email_signals("x@icloud.com", frozenset())
    throwaway = email_signals("x7k2q9@mailinator.com", frozenset())
    assert throwaway["disposable"] is True and "privacy_relay" not in throwaway
