"""Velocity: how many distinct accounts showed the same identifier in a recent window.

Counted in event time (the evaluation's occurred_at), so a backfilled history gives the same
counts live traffic would have.
"""

from __future__ import annotations

from kyc.engine.schema import Field
from kyc.store import WINDOWS, Key

# Identifier kinds that are velocity keys, and what each counts.
# Keys whose identifiers no collector produces yet (asn, card_*) are declared so rules can be
# written against them; a missing signal never makes a condition true.
VELOCITY_KEYS = {
    "ip": "the same IP address",
    "ip_prefix": "the same /24 (IPv4) or /64 (IPv6) network",
    "asn": "the same autonomous system (network operator)",
    "device": "the same device id",
    "email": "the same mailbox (provider canonical form)",
    "email_domain": "the same email domain",
    "email_template": "the same email shape and domain (email.template at the domain: Llll.Lllll99@gmail.com)",
    "phone_range": "the same phone number range (E.164 without its last 3 digits)",
    "card_bin": "the same card BIN",
    "card_fingerprint": "the same card (processor fingerprint)",
}

FIELDS = tuple(
    Field(f"velocity.{kind}_{window}", "int",
          f"Distinct accounts seen with {meaning} in the last {window} (event time), this one included.", 1)
    for kind, meaning in VELOCITY_KEYS.items()
    for window in WINDOWS
)


def velocity_signals(counts: dict[Key, dict[str, int]]) -> dict[str, int]:
    facts: dict[str, int] = {}
    for (kind, _hash), per_window in counts.items():
        if kind in VELOCITY_KEYS:
            for window, count in per_window.items():
                facts[f"{kind}_{window}"] = count
    return facts
