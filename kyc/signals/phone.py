"""Phone facts from phonenumbers' metadata: validity, region, line type, carrier.

phonenumbers types a number as VoIP only where the country's metadata defines VoIP ranges
(GB, FR, CA, AU, NL, ...); US numbers come back fixed_line_or_mobile. Operators list known
VoIP / SMS-activation ranges in rules/lists/voip_prefixes.txt (E.164 prefixes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberType, carrier

from kyc.engine.schema import Field

_SOURCE = "phonenumbers (libphonenumber metadata)"

FIELDS = (
    Field("phone.valid", "bool", "The number is a valid, assigned-range number for its region.", True, _SOURCE),
    Field("phone.possible", "bool", "The number has a possible length for its region.", True, _SOURCE),
    Field("phone.region", "str", "ISO 3166 region of the number.", "US", _SOURCE),
    Field("phone.country_code", "int", "International calling code.", 1, _SOURCE),
    Field("phone.line_type", "str", "mobile | fixed_line | fixed_line_or_mobile | voip | toll_free | "
                                    "premium_rate | shared_cost | personal_number | pager | uan | voicemail | unknown. "
                                    "VoIP only where the country's metadata defines VoIP ranges (GB, FR, CA, AU, "
                                    "NL, ...); US numbers are fixed_line_or_mobile.", "mobile", _SOURCE),
    Field("phone.voip", "bool", "VoIP by phonenumbers' metadata, or in an operator-listed VoIP range.", False,
          f"{_SOURCE}; rules/lists/voip_prefixes.txt"),
    Field("phone.listed_voip", "bool", "The number starts with an operator-listed VoIP / SMS-activation prefix.",
          False, "rules/lists/voip_prefixes.txt"),
    Field("phone.carrier", "str", "Original carrier of the range, where the metadata has it (numbers may "
                                  "have been ported since).", "Vodafone", "phonenumbers carrier data"),
)

_TYPES = {
    PhoneNumberType.FIXED_LINE: "fixed_line", PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile", PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate", PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip", PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager", PhoneNumberType.UAN: "uan", PhoneNumberType.VOICEMAIL: "voicemail",
}
# The types carrier data covers (phonenumbers' carrier.name_for_number answers "" for the others).
_CARRIER_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.PAGER})
# Keep phonenumbers' compiled metadata patterns: with numbers from many regions the re module's own
# 512-entry cache thrashes and every check recompiles (about 250 µs instead of 5). Newer releases only.
getattr(phonenumbers, "enable_pattern_cache", lambda: None)()

@lru_cache(maxsize=1)
def warm() -> None:
    """Load every region's metadata and carrier names and compile their patterns once per process
    (about 0.2 s): otherwise the first number from each region pays for it (up to 1.5 ms)."""
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                _number_facts.__wrapped__(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164),
                                          None)


RANGE_HIDDEN_DIGITS = 3       # the number-range identifier is E.164 without its last 3 digits


@lru_cache(maxsize=65536)
def parse(number: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(number, region)
    except (phonenumbers.NumberParseException, TypeError, ValueError):
        return None


def e164(number: str | None, region: str | None) -> str | None:
    parsed = parse(number, region) if number and isinstance(number, str) else None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if parsed else None


@lru_cache(maxsize=65536)
def _number_facts(number: str, region: str | None) -> dict[str, Any]:
    parsed = parse(number, region)
    if parsed is None:
        return {"valid": False, "possible": False}
    # What is_valid_number and carrier.name_for_number compute, with the number's region and
    # type looked up once each (each lookup matches the number against its regions' patterns):
    # is_valid_number is "the type for the number's region is known".
    number_region = phonenumbers.region_code_for_number(parsed)
    line_type = phonenumbers.number_type(parsed)
    facts: dict[str, Any] = {
        "valid": line_type != PhoneNumberType.UNKNOWN,
        "possible": phonenumbers.is_possible_number(parsed),
        "country_code": parsed.country_code,
        "line_type": _TYPES.get(line_type, "unknown"),
    }
    if number_region and number_region != "001":        # 001: non-geographic (satellite, UIFN)
        facts["region"] = number_region
    name = carrier.name_for_valid_number(parsed, "en") if line_type in _CARRIER_TYPES else None
    if name:
        facts["carrier"] = name
    return facts


def phone_signals(number: str | None, region: str | None, voip_prefixes: frozenset) -> dict[str, Any]:
    if not number or not isinstance(number, str):
        return {}
    facts = dict(_number_facts(number, region if isinstance(region, str) else None))
    if "line_type" not in facts:
        return facts
    return listed_facts(facts, e164(number, region), voip_prefixes)


def listed_facts(facts: dict[str, Any], formatted: str, voip_prefixes: frozenset) -> dict[str, Any]:
    """The facts rules/lists/voip_prefixes.txt decides, set on a valid number's `facts` (also how
    a backtest reads a stored number under a candidate's lists)."""
    listed = bool(voip_prefixes) and any(formatted.startswith(p) for p in voip_prefixes)
    facts["listed_voip"] = listed
    facts["voip"] = facts["line_type"] == "voip" or listed
    return facts


def phone_identifiers(number: str | None, region: str | None) -> list[tuple[str, str]]:
    formatted = e164(number, region)
    if not formatted:
        return []
    # The range prefix links numbers bought in bulk from one block (SMS-activation services).
    return [("phone", formatted), ("phone_range", formatted[:-RANGE_HIDDEN_DIGITS])]
