"""The usage phase of `kyc simulate` at a small size: the farm is stopped, nobody legitimate is."""

from __future__ import annotations

import pytest

from kyc import create_app
from kyc.rescore.background import drain
from kyc.runtime import Runtime
from kyc.usage import simulate as usage_sim


@pytest.mark.parametrize("interval_cv", [True, False], ids=["gateway_times_requests", "gateway_without_interval_cv"])
def test_a_small_usage_week_stops_the_farm_and_serves_everyone_else(tmp_path, make_config, _sqlite_template,
                                                                    interval_cv):
    """interval_cv is optional in the contract: a gateway that does not time requests sends none.
    The farm is then stopped later (its first hours are told from a tool's users by their pace),
    but within the week, and nobody legitimate is denied either way."""
    import shutil

    db = tmp_path / "sim.db"
    shutil.copy(_sqlite_template, db)
    rt = Runtime.start(make_config(f"sqlite:///{db}", dev_key="sim"), migrate=False)
    try:
        accounts, signups = usage_sim.populations(3, 10, 3, 2, 40, 50)
        assert {a.population for a in accounts} == {"light", "heavy", "company", "tool_user", "farm"}
        result = usage_sim.run(create_app(runtime=rt).test_client(), {"Authorization": "Bearer sim"}, accounts,
                               signups, echo=None, interval_cv=interval_cv)
        drain(rt)
    finally:
        rt.engine.dispose()
    summary = usage_sim.summary(result)
    assert result["wanted"]["farm"] > 0 and result["wanted"]["heavy"] > result["wanted"]["light"]
    assert summary["heavy_or_company_denied"] == 0, result["denied_accounts"]
    assert summary["legit_denied_share"] <= 0.01, result
    # Every farm account is held (its accounts woke together on templates nobody else uses),
    # within its first hours: a small farm's group reaches twenty later than a large one's.
    assert result["final"]["farm"].get("review", 0) + result["final"]["farm"].get("block", 0) == 50, result["final"]
    # Without interval_cv the rules that read the pace stay silent, and the farm is held only once its
    # accounts share three templates in common hours: 24% served here, 25% at full size (seed 5151).
    assert summary["farm_served_share"] < (0.15 if interval_cv else 0.35), result
    with_cv = _reports_with_cv(db)
    assert with_cv > 0 if interval_cv else with_cv == 0


def _reports_with_cv(db) -> int:
    """Stored activity reports that carried an interval_cv."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM activity_reports WHERE interval_cv IS NOT NULL").fetchone()[0]
