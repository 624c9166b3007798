"""Migration 0021 (ix_sightings_account_kind_time holds the velocity kinds only): on an empty
database and on one holding sightings, both backends, and back down; its readers still read
through it, with PostgreSQL's generic plans (kyc.db._generic_plans), which do not know the
kinds or accounts they are given."""

from __future__ import annotations

from kyc.persist import _SHOWN_AND_SIGHTED
from kyc.runtime import upgrade_database
from kyc.store import _CARD_HISTORY
from tests.migrations import (grow_sightings, index_definition, query_plans,
                              sightings_kept_while_index_goes_partial)

INDEX = "ix_sightings_account_kind_time"


def _plans(url: str) -> list[str]:
    """The plans of a card's history (the cards on its account) and, on PostgreSQL, of linking's
    read of what its accounts were sighted on (generic plans: the statements prepared)."""
    return query_plans(url, postgresql=[_CARD_HISTORY, _SHOWN_AND_SIGHTED], sqlite=[_CARD_HISTORY])


def test_upgrade_on_an_empty_database_keeps_velocity_kinds_only_and_reads_through_it(empty_url):
    upgrade_database(empty_url)
    definition = index_definition(empty_url, INDEX)
    assert "WHERE" in definition and "'prompt'" not in definition
    grow_sightings(empty_url)
    for plan in _plans(empty_url):
        assert INDEX in plan, plan
    assert "ix_sightings_key_time" in _plans(empty_url)[0]     # the device's cards: still by its key


def test_upgrade_keeps_sightings_and_downgrades(empty_url):
    sightings_kept_while_index_goes_partial(empty_url, "0020", INDEX)
