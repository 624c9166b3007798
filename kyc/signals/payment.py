"""Card facts for a payment method (the `card` family of signals). Never sees a card number.

The caller sends what its payment processor gives it: a stable card fingerprint, the BIN (first
6-8 digits), last4, funding type and countries. The API refuses any full card number before
parsing (kyc.security.contains_card_number), so nothing here can hold one.

BIN metadata comes from a CSV table (KYC_BIN_TABLE, or the small bundled kyc/data/bins.csv):

    bin,brand,funding,issuer_country,issuer_name
    424242,visa,credit,US,

- `bin`: 6 to 8 digits; the longest prefix of the card's BIN found in the table wins.
- `brand`, `funding` (credit | debit | prepaid | unknown), `issuer_country` (ISO 3166 alpha-2),
  `issuer_name`: each may be empty (unknown). Other columns are ignored; lines starting with
  `#` are comments. A malformed table stops start-up with the file and line at fault.

What the processor sends wins over the table (it knows the card); the table fills the gaps.
Without a brand in the table, the brand comes from the card networks' published IIN ranges.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from kyc.engine.schema import Field

BUNDLED_BIN_TABLE = Path(__file__).resolve().parent.parent / "data" / "bins.csv"
BIN_COLUMNS = ("bin", "brand", "funding", "issuer_country", "issuer_name")
FUNDING = ("credit", "debit", "prepaid", "unknown")

FIELDS = (
    Field("card.bin", "str", "The card's BIN: the first six digits, as sent.", "424242"),
    Field("card.bin_known", "bool", "The BIN is in the BIN table (KYC_BIN_TABLE or the bundled one).", True),
    Field("card.brand", "str", "visa | mastercard | amex | discover | jcb | diners | unionpay | mir, or the "
                               "BIN table's brand; from the IIN range when the table does not say.", "visa"),
    Field("card.funding", "str", "credit | debit | prepaid | unknown: the processor's, else the BIN table's.",
          "credit"),
    Field("card.prepaid", "bool", "The funding type is prepaid (missing when the funding is unknown).", False),
    Field("card.issuer_country", "str", "ISO country of the issuer: the processor's, else the BIN table's.", "US"),
    Field("card.issuer_name", "str", "Issuing bank, where the BIN table has it.", "Example Bank"),
    Field("card.billing_country", "str", "ISO country of the billing address.", "US"),
    Field("card.ip_country", "str", "Country of the payment request's IP, where IP geolocation answers.", "US"),
    Field("card.phone_region", "str", "Region of the phone on the account's latest signup at or before this "
                                      "event.", "US"),
    Field("card.account_has_signup", "bool", "The account had a signup scored at or before this event.", True),
    Field("card.fingerprint_accounts_24h", "int", "Distinct accounts that added this card (processor "
                                                  "fingerprint) in the last 24h, this one included.", 1),
    Field("card.fingerprint_accounts_30d", "int", "Distinct accounts that added this card in the last 30d, "
                                                  "this one included.", 1),
    Field("card.bin_accounts_1h", "int", "Distinct accounts that added a card of this BIN (six digits) in the "
                                         "last hour, this one included.", 1),
    Field("card.bin_accounts_24h", "int", "Distinct accounts that added a card of this BIN in the last 24h, "
                                          "this one included.", 1),
    Field("card.cards_on_account_24h", "int", "Distinct cards this account added in the last 24h, this one "
                                               "included (card testing).", 1),
    Field("card.cards_on_device_24h", "int", "Distinct cards added from this device id in the last 24h, by any "
                                              "account, this one included (card testing); missing without a "
                                              "device id.", 1),
)


# --- the BIN table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BinInfo:
    brand: str | None
    funding: str | None
    issuer_country: str | None
    issuer_name: str | None


class BinTableError(ValueError):
    """A BIN table that cannot be read; names the file and line."""


@dataclass(frozen=True)
class BinTable:
    path: str
    entries: Mapping[str, BinInfo]

    def lookup(self, bin_digits: str) -> BinInfo | None:
        """The entry for the longest prefix of `bin_digits` in the table (8 down to 6 digits)."""
        for length in range(min(len(bin_digits), 8), 5, -1):
            info = self.entries.get(bin_digits[:length])
            if info is not None:
                return info
        return None


@lru_cache(maxsize=8)
def load_bin_table(path: str = "") -> BinTable:
    """Read a BIN table once per process; "" means the bundled one."""
    file = Path(path) if path else BUNDLED_BIN_TABLE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise BinTableError(f"{file}: cannot read the BIN table ({exc.strerror})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    if not lines:
        raise BinTableError(f"{file}: empty; the first line is the header {','.join(BIN_COLUMNS)}")
    rows = csv.reader(line for _, line in lines)
    header = [h.strip().lower() for h in next(rows)]
    if "bin" not in header:
        raise BinTableError(f"{file}:{lines[0][0]}: the header must name a 'bin' column "
                            f"(format: {','.join(BIN_COLUMNS)})")
    col = {name: header.index(name) for name in BIN_COLUMNS if name in header}
    entries: dict[str, BinInfo] = {}
    for (line_no, _), row in zip(lines[1:], rows):
        def cell(name: str) -> str | None:
            i = col.get(name)
            value = row[i].strip() if i is not None and i < len(row) else ""
            return value or None

        bin_digits = cell("bin") or ""
        if not (bin_digits.isdigit() and 6 <= len(bin_digits) <= 8):
            raise BinTableError(f"{file}:{line_no}: bin must be 6 to 8 digits, got {bin_digits!r}")
        funding = (cell("funding") or "").lower() or None
        if funding is not None and funding not in FUNDING:
            raise BinTableError(f"{file}:{line_no}: funding must be one of {', '.join(FUNDING)} or empty")
        country = (cell("issuer_country") or "").upper() or None
        if country is not None and not (len(country) == 2 and country.isalpha()):
            raise BinTableError(f"{file}:{line_no}: issuer_country must be an ISO 3166 two-letter code or empty")
        if bin_digits in entries:
            raise BinTableError(f"{file}:{line_no}: bin {bin_digits} listed twice")
        brand = cell("brand")
        entries[bin_digits] = BinInfo(brand.lower() if brand else None, funding, country, cell("issuer_name"))
    return BinTable(str(file), entries)


def brand_from_iin(bin_digits: str) -> str | None:
    """The card network from its published IIN ranges (ISO/IEC 7812 prefixes each network owns)."""
    d2, d3, d4 = int(bin_digits[:2]), int(bin_digits[:3]), int(bin_digits[:4])
    if bin_digits[0] == "4":
        return "visa"
    if 51 <= d2 <= 55 or 2221 <= d4 <= 2720:
        return "mastercard"
    if d2 in (34, 37):
        return "amex"
    if d4 == 6011 or 644 <= d3 <= 649 or d2 == 65:
        return "discover"
    if 3528 <= d4 <= 3589:
        return "jcb"
    if d2 == 36 or 300 <= d3 <= 305:
        return "diners"
    if d2 == 62:
        return "unionpay"
    if 2200 <= d4 <= 2204:
        return "mir"
    return None


# --- signals ---------------------------------------------------------------------------------

def card_facts(inp, info: BinInfo | None) -> dict[str, Any]:
    """What the card itself says: BIN metadata merged with what the processor sent."""
    funding = inp.funding if inp.funding and inp.funding != "unknown" else None
    funding = funding or (info.funding if info else None) or inp.funding
    issuer_country = inp.issuer_country or (info.issuer_country if info else None)
    facts = {
        "bin": inp.bin[:6],
        "bin_known": info is not None,
        "brand": (info.brand if info else None) or brand_from_iin(inp.bin),
        "funding": funding,
        "prepaid": None if funding in (None, "unknown") else funding == "prepaid",
        "issuer_country": issuer_country,
        "issuer_name": info.issuer_name if info else None,
        "billing_country": inp.billing_country,
    }
    return {k: v for k, v in facts.items() if v is not None}


def context_facts(ip_facts: dict[str, Any], signup_signals: dict[str, Any] | None) -> dict[str, Any]:
    """What surrounds the card: the request's IP country and the account's signup."""
    facts: dict[str, Any] = {"account_has_signup": signup_signals is not None}
    if ip_facts.get("country"):
        facts["ip_country"] = ip_facts["country"]
    region = ((signup_signals or {}).get("phone") or {}).get("region")
    if region:
        facts["phone_region"] = region
    return facts


def usage_facts(fingerprint: dict[str, int], bin_counts: dict[str, int], cards_on_account: int,
                cards_on_device: int | None) -> dict[str, int]:
    """How the card and its BIN are being used across accounts and devices."""
    facts = {
        "fingerprint_accounts_24h": fingerprint["24h"],
        "fingerprint_accounts_30d": fingerprint["30d"],
        "bin_accounts_1h": bin_counts["1h"],
        "bin_accounts_24h": bin_counts["24h"],
        "cards_on_account_24h": cards_on_account,
    }
    if cards_on_device is not None:
        facts["cards_on_device_24h"] = cards_on_device
    return facts


def payment_identifiers(inp) -> list[tuple[str, str]]:
    """Linking and velocity keys of a card, before keyed hashing. Never the card number.

    The BIN is cut to six digits so that processors sending 6 or 8 digits agree; BIN plus
    billing postal code is a weak identifier (many people share it, a farm shares it more).
    """
    bin6 = inp.bin[:6]
    ids = [("card_fingerprint", inp.fingerprint), ("card_bin", bin6)]
    if inp.billing_postal_code:
        postal = "".join(ch for ch in inp.billing_postal_code.upper() if ch.isalnum())
        if postal:
            ids.append(("card_bin_postal", f"{bin6}:{inp.billing_country or ''}:{postal}"))
    return ids
