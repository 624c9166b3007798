"""Degraded sources: which signal sources did not answer from their primary store in time.

Every evaluation carries this family (all false when nothing was degraded), so rules can weigh
what a degraded source means (`degraded.velocity`), rule tests and backtests replay it as it
was, and the stored evaluation says which decisions were made on partial knowledge (its
`signals` column; the API's `degraded` list is read from it, see kyc.scoring.evaluation_body).
"""

from __future__ import annotations

from kyc.engine.schema import Field

SOURCES = {
    "velocity": "Velocity counts did not come from Redis (unreachable, or slower than KYC_REDIS_TIMEOUT_MS): "
                "they were counted from the database's sightings instead (the same counts for events posted "
                "in order; see README, Velocity). False when velocity is counted in the database anyway.",
}

FIELDS = tuple(Field(f"degraded.{source}", "bool", meaning, False) for source, meaning in SOURCES.items())


def degraded_signals(store) -> dict[str, bool]:
    return {"velocity": bool(store.degraded)}


def degraded_sources(signals: dict) -> list[str]:
    """The names of the degraded sources of an evaluation's signals, for the API's `degraded` list."""
    return [source for source, flag in (signals.get("degraded") or {}).items() if flag is True]
