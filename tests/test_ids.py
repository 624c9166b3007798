"""Public ids: made one at a time or together, they look alike and sort by creation time."""

from kyc.ids import _ALPHABET, new_id, new_ids


def test_ids_made_together_look_like_ids_made_one_at_a_time_and_sort_by_time():
    before = new_id("cl")
    batch = new_ids("cl", 5000)
    after = new_id("cl")
    assert len(set(batch)) == 5000
    for made in (before, *batch, after):
        prefix, digits = made.split("_")
        assert prefix == "cl" and len(digits) == 26 and set(digits) <= set(_ALPHABET)
    # The 48 bits of milliseconds lead: later ids sort after earlier ones.
    assert before[:13] <= min(batch)[:13] and max(batch)[:13] <= after[:13]
    # 80 random bits each: every digit of the random part takes all 32 values across the batch.
    assert all(len({b[13 + i] for b in batch}) == 32 for i in range(16))
