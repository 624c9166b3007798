"""settle_for_serving: start-up's objects frozen out of the collector's passes, and a young
generation large enough that a bulk activity call's short-lived rows die young instead of
being promoted into a full pass (kyc/__init__.py has the figures)."""

from __future__ import annotations

import gc

import pytest

from kyc import GC_YOUNG, settle_for_serving
from tests.conftest import signup


@pytest.fixture
def settled():
    thresholds = gc.get_threshold()
    settle_for_serving()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_is_frozen_and_the_young_generation_widened(settled):
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_YOUNG


def test_bulk_calls_of_1000_reports_run_no_full_collection(settled, client, auth):
    """Three calls of 1,000 reports: their objects die young, and nothing walks the whole heap
    (at Python's 700 such calls ran 5-7 collections of the middle generation each, so a full
    one every other call; here about one of the middle generation in three calls)."""
    body = signup(account_id="acct_bulk", email="jane.bulk@gmail.com", device_id="dv_bulk", phone=None,
                  occurred_at="2026-11-20T12:00:00Z")
    assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
    full = []

    def count(phase, info):
        if phase == "stop" and info["generation"] == 2:
            full.append(info)

    gc.collect()                                # the counts start from nothing, as after any full pass
    gc.callbacks.append(count)
    try:
        for call in range(3):
            reports = [{"account_id": "acct_bulk", "occurred_at": f"2026-11-2{call + 2}T{i % 24:02d}:{i % 60:02d}:00Z",
                        "requests": 1, "ip": f"203.0.{i % 250}.{i % 200 + 1}", "api_key_id": f"key_{i % 7}",
                        "prompt_fingerprints": {f"pf_{i % 50}": 1, f"pf_own_{i}": 1}} for i in range(1000)]
            answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
            assert answer.status_code == 200 and len(answer.json["results"]) == 1000
    finally:
        gc.callbacks.remove(count)
    assert full == []
