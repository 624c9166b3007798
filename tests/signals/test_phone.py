"""Phone signals on phonenumbers' own example numbers: every line type, every region it knows."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from kyc.signals.phone import phone_identifiers, phone_signals

TYPES = {
    PhoneNumberType.MOBILE: "mobile", PhoneNumberType.FIXED_LINE: "fixed_line", PhoneNumberType.VOIP: "voip",
    PhoneNumberType.TOLL_FREE: "toll_free", PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost", PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager", PhoneNumberType.UAN: "uan", PhoneNumberType.VOICEMAIL: "voicemail",
}


def _examples():
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type, name in TYPES.items():
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is not None:
                yield region, name, example


EXAMPLES = list(_examples())


def test_the_example_corpus_is_large_and_covers_every_line_type():
    assert len({region for region, _, _ in EXAMPLES}) > 200
    assert {name for _, name, _ in EXAMPLES} == set(TYPES.values())


def test_every_example_number_is_valid_with_its_region_and_a_consistent_line_type():
    wrong, exact = [], 0
    for region, name, example in EXAMPLES:
        e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
        facts = phone_signals(e164, None, frozenset())
        # Regions sharing a calling code (NANP, +358 FI/AX, +7 RU/KZ) can hold numbers that belong to
        # the code's main region (toll-free +1 800 is "US").
        if not facts["valid"] or facts.get("region") not in phonenumbers.region_codes_for_country_code(
                example.country_code):
            wrong.append((region, name, e164, facts))
            continue
        exact += facts["region"] == region
        # Where fixed-line and mobile ranges coincide the metadata answers fixed_line_or_mobile.
        allowed = {name, "fixed_line_or_mobile"} if name in ("mobile", "fixed_line") else {name}
        if facts["line_type"] not in allowed:
            wrong.append((region, name, e164, facts["line_type"]))
    assert wrong == []
    assert exact > 0.85 * len(EXAMPLES)      # 992 of 1129 with phonenumbers 9.0


def test_national_form_with_a_region_parses_like_e164():
    example = phonenumbers.example_number_for_type("GB", PhoneNumberType.MOBILE)
    national = phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)
    e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
    assert phone_signals(national, "GB", frozenset()) == phone_signals(e164, None, frozenset())
    assert phone_identifiers(national, "GB") == phone_identifiers(e164, None)


def test_voip_is_typed_where_metadata_defines_it_and_listed_elsewhere():
    gb_voip = phonenumbers.format_number(phonenumbers.example_number_for_type("GB", PhoneNumberType.VOIP),
                                         PhoneNumberFormat.E164)
    assert phone_signals(gb_voip, None, frozenset())["voip"] is True
    # The US metadata has no VoIP ranges: a US number is fixed_line_or_mobile ...
    us = phonenumbers.format_number(phonenumbers.example_number_for_type("US", PhoneNumberType.MOBILE),
                                    PhoneNumberFormat.E164)
    facts = phone_signals(us, None, frozenset())
    assert facts["line_type"] == "fixed_line_or_mobile" and facts["voip"] is False
    # ... unless the operator lists its range.
    listed = phone_signals(us, None, frozenset({us[:7]}))
    assert listed["voip"] is True and listed["listed_voip"] is True


def test_carrier_is_reported_where_the_metadata_has_it():
    mobiles = [phonenumbers.format_number(ex, PhoneNumberFormat.E164)
               for region, name, ex in EXAMPLES if name == "mobile"]
    with_carrier = [n for n in mobiles if "carrier" in phone_signals(n, None, frozenset())]
    assert len(with_carrier) > len(mobiles) // 3


def test_range_identifier_hides_the_last_three_digits():
    ids = dict(phone_identifiers("+447400123456", None))
    assert ids == {"phone": "+447400123456", "phone_range": "+447400123"}


@pytest.mark.parametrize("number, region", [
    ("not a number", None), ("12", None), ("+999 123", None), ("0207 946 0000", None),  # national, no region
    ("+1" + "5" * 30, None), ("☎☎☎", "US"),
])
def test_malformed_numbers_are_invalid_not_errors(number, region):
    facts = phone_signals(number, region, frozenset())
    assert facts.get("valid") is False
    assert "region" not in facts or facts["valid"] is False


@pytest.mark.parametrize("number", [None, "", 447400123456, ["+447400123456"]])
def test_absent_or_wrongly_typed_input_gives_missing_signals(number):
    assert phone_signals(number, None, frozenset()) == {}
    assert phone_identifiers(number, None) == []


def test_warm_compiles_every_regions_patterns_once_per_process():
    from phonenumbers import re_util

    from kyc.signals import phone

    phone.warm.cache_clear()
    phone.warm()
    compiled = dict(re_util._COMPILED_PATTERNS)
    assert len(compiled) > 1000                      # about 245 regions' metadata, not one
    phone.warm()                                     # a second call (another create_app) does nothing
    assert phone.warm.cache_info().hits == 1
    assert phone.phone_signals("+40721234567", None, frozenset())["region"] == "RO"
