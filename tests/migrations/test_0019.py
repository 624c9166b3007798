"""Migration 0019 (ix_sightings_key_time holds the velocity kinds only): on an empty database and
on one holding sightings, both backends, and back down; its readers still read through it, with
PostgreSQL's generic plans (kyc.db._generic_plans), which do not know the kind they are given."""

from __future__ import annotations

from kyc.models import VELOCITY_KINDS
from kyc.runtime import upgrade_database
from kyc.signals.velocity import VELOCITY_KEYS
from kyc.store import _CARD_HISTORY, _sighting_count_statement
from tests.migrations import (grow_sightings, index_definition, query_plans,
                              sightings_kept_while_index_goes_partial)



def _plans(url: str) -> list[str]:
    """The plans of the velocity counts from the sightings and of a card's history: generic plans
    (the statements prepared, the kinds parameters) on PostgreSQL, SQLite's query plans."""
    return query_plans(url, postgresql=[_sighting_count_statement(1), _CARD_HISTORY], sqlite=[_sighting_count_statement(1), _CARD_HISTORY])


def test_the_kinds_are_velocity_s():
    assert set(VELOCITY_KINDS) == set(VELOCITY_KEYS)


def test_upgrade_on_an_empty_database_keeps_velocity_kinds_only_and_reads_through_it(empty_url):
    upgrade_database(empty_url)
    definition = index_definition(empty_url, "ix_sightings_key_time")
    assert "WHERE" in definition and "'prompt'" not in definition
    grow_sightings(empty_url)               # planned with rows (0021's index costs the same empty)
    counts, cards = _plans(empty_url)
    assert "ix_sightings_key_time" in counts
    assert "ix_sightings_key_time" in cards           # the device's sightings (anchor)


def test_upgrade_keeps_sightings_and_downgrades(empty_url):
    sightings_kept_while_index_goes_partial(empty_url, "0018", "ix_sightings_key_time")
