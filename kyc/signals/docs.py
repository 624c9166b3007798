"""docs/signals.md, generated from the signal schema (`kyc signals doc`; a test keeps it current)."""

from __future__ import annotations

import importlib

from kyc.signals import SCHEMA

# family -> module whose docstring introduces it
_MODULES = {"email": "kyc.signals.email", "phone": "kyc.signals.phone", "ip": "kyc.signals.network",
            "device": "kyc.signals.device", "velocity": "kyc.signals.velocity"}

_HEADER = """\
# Signals

Generated from the signal schema by `kyc signals doc`; do not edit by hand.

Every signal is `family.field` with a type (bool, int, float, str). A signal whose input is
absent or malformed is **missing**: it is left out of the evaluation's `signals`, and any rule
comparison that reads it is false. Rules read them by name (`rules/signup.yaml`); `kyc rules
check` refuses a name or type that is not listed here.

Linking and velocity identifiers (stored as keyed hashes, never in clear): `email` (provider
canonical form), `email_domain`, `email_template` (local-part shape + domain), `phone` (E.164),
`phone_range` (E.164 without its last 3 digits), `ip`, `ip_prefix` (/24 or /64), `asn`, `device`.

Data shipped with kyc and where it comes from: `kyc/data/geoip/ATTRIBUTION.txt` (DB-IP Lite,
RouteViews, NRO; CC BY 4.0, rebuilt by `kyc geoip build`), `kyc/data/netintel/` (datacenter,
VPN, cloud, crawler, Tor and privacy-relay ranges from X4B lists_vpn, MIT, lord-alfred/ipranges,
CC0, and a Tor exit list, MIT; licences and SOURCE lines beside the data; rebuilt from newer
copies by `kyc netintel build --from DIR`), `kyc/data/letter_bigrams.json` (`kyc signals
bigrams`), and the operator-edited lists in `rules/lists/`. MaxMind's own databases
replace the bundled ones through `KYC_GEOIP_CITY_DB`, `KYC_GEOIP_ASN_DB` and `KYC_GEOIP_ANON_DB`.

**Phone line types.** phonenumbers types a number as VoIP only where the country's metadata
defines VoIP ranges (GB, FR, CA, AU, NL, ...). US numbers come back `fixed_line_or_mobile`, so
VoIP and SMS-activation ranges there can only be caught by listing their E.164 prefixes in
`rules/lists/voip_prefixes.txt` (`phone.listed_voip`, which also sets `phone.voip`).
"""


def _cell(value: object) -> str:
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    lines = [_HEADER]
    fields = list(SCHEMA)
    for family in SCHEMA.families:
        try:
            module = importlib.import_module(_MODULES.get(family, f"kyc.signals.{family}"))
        except ImportError:
            module = None
        intro = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ") if module else ""
        lines.append(f"## {family}\n")
        if intro:
            lines.append(f"{intro}\n")
        lines.append("| Signal | Type | Meaning | Example | Source |")
        lines.append("| --- | --- | --- | --- | --- |")
        for f in fields:
            if f.family == family:
                example = f"`{_cell(f.example)}`" if f.example is not None else ""
                lines.append(f"| `{f.name}` | {f.type} | {_cell(f.description)} | {example} | {_cell(f.source)} |")
        lines.append("")
    return "\n".join(lines)
