"""Velocity: how many distinct accounts showed the same identifier in a recent window, against
that identifier's own usual rate, and whether many people share it.

Counted in event time (the evaluation's occurred_at), so a backfilled history gives the same
counts live traffic would have.

A count alone cannot tell a farm from a crowd: a big bank's BIN, a mobile carrier's NAT address,
a university's /24 and gmail.com honestly see many new accounts every hour. So each key also
carries
- a *surge* per short window: the count now divided by the key's own mean count per window of
  that length over a trailing base period (1h against the 7 days before that hour, 24h against
  the 6 days before that day: a week covers weekdays and weekends, and a new deployment or a
  new key has a baseline within days), the mean floored at one account, so that a key with no history
  reads its plain count (a surge of 5 on a rare key is 5 accounts) and a busy key reads how far
  above its usual rate it is (a surge of 5 on a BIN that sees 40 accounts an hour is 200); an IP
  with no history of its own is read against its /24's (or /64's) rate instead of one account
  (PARENT): a new address of a busy carrier NAT pool or campus network is as busy as its network;
- *popularity*: POPULAR_ACCOUNTS or more other accounts in the 30 days before the current day.
  The current day is left out, so a burst cannot make its own key look popular (unless the
  day alone saturates the count: more than COUNT_CAP accounts in a day is a crowd).

The counts come from the Store (kyc/store.py), identical on the SQL and Redis backends, so the
surges and popularity are too. Counts saturate at COUNT_CAP other accounts: when a base window
is saturated, the base period shrinks to the longest window that is not (a key seeing more than
COUNT_CAP accounts a week has its rate measured over the last day), and with none the surge is
1 (no evidence either way).
"""

from __future__ import annotations

from kyc.engine.schema import Field
from kyc.store import COUNT_CAP, WINDOWS, Key

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

# A key with no history of its own is read against its parent's rate: an IP against its network's.
PARENT = {"ip": "ip_prefix"}
# Surge windows: each compared with the key's mean over its base windows, longest first (the
# first whose count is not saturated is used).
SURGES: dict[str, tuple[str, ...]] = {"1h": ("7d", "24h"), "24h": ("7d",)}
POPULAR_ACCOUNTS = 25          # other accounts in the 30 days before the current day
_POPULAR_WINDOW, _RECENT = "30d", "24h"
_SATURATED = COUNT_CAP + 1      # a count at the cap: the window holds at least this many
_BASES = {w: tuple((base, WINDOWS[base] / WINDOWS[w] - 1) for base in bases) for w, bases in SURGES.items()}

FIELDS = tuple(
    Field(f"velocity.{kind}_{window}", "int",
          f"Distinct accounts seen with {meaning} in the last {window} (event time), this one included.", 1)
    for kind, meaning in VELOCITY_KEYS.items()
    for window in WINDOWS
) + tuple(
    Field(f"velocity.{kind}_surge_{window}", "float",
          f"Accounts seen with {meaning} in the last {window}, divided by the mean per {window} over the "
          f"{bases[0]} up to that {window} (floored at 1 account): the plain count for a rare key, the multiple of "
          f"its usual rate for a busy one." + (f" With no history of its own, against its {PARENT[kind]}'s mean."
                                               if kind in PARENT else ""), 1.0)
    for kind, meaning in VELOCITY_KEYS.items()
    for window, bases in SURGES.items()
) + tuple(
    Field(f"velocity.{kind}_popular", "bool",
          f"{POPULAR_ACCOUNTS} or more other accounts were seen with {meaning} in the 30 days before the last 24 "
          f"hours: an identifier many people share (a big bank's BIN, a carrier NAT, gmail.com).", False)
    for kind, meaning in VELOCITY_KEYS.items()
)


def base_mean(per_window: dict[str, int], window: str) -> float | None:
    """The key's mean count per `window` over its base period (None: every base window saturated)."""
    count = per_window[window]
    for base, ratio in _BASES[window]:
        total = per_window[base]
        if total < _SATURATED:
            # Accounts whose latest event lies in the base period before the window, per window.
            return (total - count) / ratio
    return None


def surge(per_window: dict[str, int], window: str, prior: float = 0.0) -> float:
    """The count in `window` over the key's mean count per such window in its base period.
    `prior`: the mean to read a key with no history of its own against (an IP never seen before,
    against its network's rate: a carrier NAT pool's or a campus's new address is as busy as its
    network usually is, a farm's fresh address on a quiet network is not)."""
    mean = base_mean(per_window, window)
    if mean is None:
        return 1.0
    if mean == 0:
        mean = prior
    count = per_window[window]
    return round(count / mean, 2) if mean > 1.0 else float(count)


def popular(per_window: dict[str, int]) -> bool:
    """Shared by many over the month before today; a key saturated even within a day (more than
    COUNT_CAP accounts) is popular whatever its month looked like."""
    recent = per_window[_RECENT]
    return per_window[_POPULAR_WINDOW] - recent >= POPULAR_ACCOUNTS or recent >= _SATURATED


# Field names per kind, built once: formatting names per signup costs more than the arithmetic.
_NAMES = {kind: ({w: f"{kind}_{w}" for w in WINDOWS}, {w: f"{kind}_surge_{w}" for w in SURGES}, f"{kind}_popular")
          for kind in VELOCITY_KEYS}


def velocity_signals(counts: dict[Key, dict[str, int]]) -> dict[str, int | float | bool]:
    facts: dict[str, int | float | bool] = {}
    by_kind = {kind: per_window for (kind, _hash), per_window in counts.items()}
    for (kind, _hash), per_window in counts.items():
        names = _NAMES.get(kind)
        if names is not None:
            counts_named, surges_named, popular_named = names
            for window, count in per_window.items():
                facts[counts_named[window]] = count
            parent = by_kind.get(PARENT.get(kind, ""))
            for window, name in surges_named.items():
                prior = (base_mean(parent, window) or 0.0) if parent is not None else 0.0
                facts[name] = surge(per_window, window, prior)
            facts[popular_named] = popular(per_window)
    return facts
