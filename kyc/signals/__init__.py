"""Signals: plain facts about an input, one module per family.

Each family module declares FIELDS (the schema rules are checked against) and plain functions
that turn input into facts. `collect` runs the families a subject needs; history lookups go
through the Store so the same code serves live scoring, workers and backtests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kyc.engine.schema import Schema
from kyc.inputs import PaymentMethodInput, SignupInput
from kyc.security import keyed_hash
from kyc.signals import account, degraded, device, email, graph, network, payment, phone, usage, velocity
from kyc.signals.geoip import GeoIP
from kyc.signals.payment import BinTable, load_bin_table
from kyc.store import Store

SCHEMA = Schema(f for family in (email, phone, network, device, velocity, account, graph, payment, degraded, usage)
                for f in family.FIELDS)

Signals = dict[str, dict[str, Any]]
Identifiers = list[tuple[str, str]]      # (kind, keyed hash)


@dataclass(frozen=True)
class Lookups:
    """What signals may consult besides the input itself. Graph signals need the account's
    cluster after linking, so the pipeline (kyc/scoring.py) adds them after collection."""

    lists: dict[str, frozenset]
    store: Store
    secret: bytes
    geoip: GeoIP | None = None       # readers opened once per process (Runtime.geoip)
    bins: BinTable | None = None     # None: the bundled BIN table


def warm() -> None:
    """Load what the signals load once per process (the user-agent matcher, the letter-pair and
    timezone tables, the phone metadata), so the first request does not pay for it."""
    device._parser()
    device._zone_countries()
    email._surprisal_table()
    phone.warm()


def clear_value_caches() -> None:
    """Empty the per-value caches of the signal families (parsed emails, phones, addresses, user
    agents). A batch worker sees most values once: emptied between batches, its memory stays flat
    instead of growing to the caches' bounds. Process-wide tables (matchers) are kept."""
    for family in (email, phone, network, device):
        for value in vars(family).values():
            limit = value.cache_parameters().get("maxsize") if hasattr(value, "cache_parameters") else None
            if limit is not None and limit >= 1024:
                value.cache_clear()


def _hashed(lookups: Lookups, raw: list[tuple[str, str]]) -> Identifiers:
    seen: dict[tuple[str, str], None] = {}
    for kind, value in raw:
        seen.setdefault((kind, keyed_hash(lookups.secret, kind, value)), None)
    return list(seen)


def static_signals(inp: SignupInput, lookups: Lookups, at: datetime) -> tuple[Signals, list[tuple[str, str]]]:
    """The signals that need no history: email, phone, ip, device; and the raw identifiers."""
    lists = lookups.lists
    ip_facts = network.network_signals(inp.ip, lookups.geoip)
    phone_facts = phone.phone_signals(inp.phone, inp.phone_region, lists.get("voip_prefixes", frozenset()))
    device_facts = device.device_signals(inp.user_agent, inp.form_fill_ms, client_hints=inp.client_hints,
                                         timezone=inp.timezone, locale=inp.locale, at=at)
    ip_facts.update(network.mismatches(ip_facts.get("country"), phone_facts.get("region"),
                                       device_facts.get("timezone_country"), device_facts.get("locale_region")))
    signals: Signals = {
        "email": email.email_signals(inp.email, lists.get("free_email_domains", frozenset())),
        "phone": phone_facts,
        "ip": ip_facts,
        "device": device_facts,
    }
    raw = [
        *email.email_identifiers(inp.email),
        *phone.phone_identifiers(inp.phone, inp.phone_region),
        *network.network_identifiers(inp.ip, ip_facts.get("asn"), at),
        *device.device_identifiers(inp.device_id),
    ]
    return signals, raw


def relisted(signals: Signals, inp: dict[str, Any], lists: dict[str, frozenset]) -> Signals:
    """Stored signals with the facts that rules/lists/ decide (email.free, phone.listed_voip and
    phone.voip) read again under `lists`, from the stored input: a backtest of a list edit sees
    what it changes. Everything else is as it was stored."""
    email_facts, phone_facts = signals.get("email"), signals.get("phone")
    if email_facts and "domain" in email_facts:
        signals["email"] = {**email_facts, "free": email_facts["domain"] in lists.get("free_email_domains", frozenset())}
    if phone_facts and "line_type" in phone_facts and isinstance(inp.get("phone"), str):
        region = inp.get("phone_region")
        signals["phone"] = phone.listed_facts(dict(phone_facts), phone.e164(inp["phone"], region if isinstance(
            region, str) else None), lists.get("voip_prefixes", frozenset()))
    return signals


def signup_signals(inp: SignupInput, lookups: Lookups, at: datetime) -> tuple[Signals, Identifiers]:
    signals, raw = static_signals(inp, lookups, at)
    identifiers = _hashed(lookups, raw)
    counts = lookups.store.distinct_accounts(
        [key for key in identifiers if key[0] in velocity.VELOCITY_KEYS], at, inp.account_id)
    signals["velocity"] = velocity.velocity_signals(counts)
    signals["degraded"] = degraded.degraded_signals(lookups.store)
    return signals, identifiers


CARD_TESTING_WINDOW = timedelta(hours=24)


def payment_method_signals(inp: PaymentMethodInput, lookups: Lookups, at: datetime
                           ) -> tuple[Signals, Identifiers]:
    ip_facts = network.network_signals(inp.ip, lookups.geoip)
    identifiers = _hashed(lookups, [
        *payment.payment_identifiers(inp),
        *network.network_identifiers(inp.ip, ip_facts.get("asn")),
        *device.device_identifiers(inp.device_id),
    ])
    key = {kind: (kind, value_hash) for kind, value_hash in identifiers}
    store, card = lookups.store, key["card_fingerprint"]
    counts, (cards_on_account, cards_on_device, signup) = store.payment_history(
        [k for k in identifiers if k[0] in velocity.VELOCITY_KEYS], at, inp.account_id, card[1], CARD_TESTING_WINDOW,
        key.get("device"))
    usage = payment.usage_facts(counts[card], counts[key["card_bin"]], cards_on_account, cards_on_device)
    bins = lookups.bins or load_bin_table()
    signals: Signals = {
        "card": {
            **payment.card_facts(inp, bins.lookup(inp.bin)),
            **payment.context_facts(ip_facts, signup),
            **usage,
        },
        "ip": ip_facts,
        "velocity": velocity.velocity_signals(counts),
        "degraded": degraded.degraded_signals(store),
    }
    return signals, identifiers


COLLECTORS = {"signup": signup_signals, "payment_method": payment_method_signals}
