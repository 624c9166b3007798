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

FIELDS = (
    Field("phone.valid", "bool", "The number is a valid, assigned-range number for its region.", True),
    Field("phone.possible", "bool", "The number has a possible length for its region.", True),
    Field("phone.region", "str", "ISO 3166 region of the number.", "US"),
    Field("phone.line_type", "str", "mobile | fixed_line | fixed_line_or_mobile | voip | toll_free | "
                                    "premium_rate | shared_cost | personal_number | pager | uan | voicemail | unknown",
          "mobile"),
    Field("phone.voip", "bool", "VoIP by phonenumbers' metadata, or in an operator-listed VoIP range.", False),
    Field("phone.carrier", "str", "Carrier name where the metadata has it.", "Vodafone"),
)

_TYPES = {
    PhoneNumberType.FIXED_LINE: "fixed_line", PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile", PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate", PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip", PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager", PhoneNumberType.UAN: "uan", PhoneNumberType.VOICEMAIL: "voicemail",
}


@lru_cache(maxsize=65536)
def parse(number: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None


def e164(number: str | None, region: str | None) -> str | None:
    parsed = parse(number, region) if number else None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if parsed else None


def phone_signals(number: str | None, region: str | None, voip_prefixes: frozenset) -> dict[str, Any]:
    if not number:
        return {}
    parsed = parse(number, region)
    if parsed is None:
        return {"valid": False, "possible": False}
    line_type = _TYPES.get(phonenumbers.number_type(parsed), "unknown")
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    listed = any(formatted.startswith(p) for p in voip_prefixes) if voip_prefixes else False
    return {
        "valid": phonenumbers.is_valid_number(parsed),
        "possible": phonenumbers.is_possible_number(parsed),
        "region": phonenumbers.region_code_for_number(parsed),
        "line_type": line_type,
        "voip": line_type == "voip" or listed,
        "carrier": carrier.name_for_number(parsed, "en") or None,
    }


def phone_identifiers(number: str | None, region: str | None) -> list[tuple[str, str]]:
    formatted = e164(number, region)
    if not formatted:
        return []
    # The range prefix links numbers bought in bulk from one block (SMS-activation services).
    return [("phone", formatted), ("phone_range", formatted[:-3])]
