"""`kyc clusters list|rebuild` and `kyc simulate` through click, on a real database."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from kyc import simulate as sim
from kyc.cli import main
from tests.conftest import TEST_SECRET, signup


@pytest.fixture
def cli_env(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("KYC_DATABASE_URL", database_url)
    monkeypatch.setenv("KYC_SECRET_KEY", TEST_SECRET.decode())
    monkeypatch.setenv("KYC_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KYC_REDIS_URL", raising=False)


def test_clusters_list_and_rebuild(cli_env, client, auth):
    for n in (1, 2, 3):
        body = signup(account_id=f"acct_{n}", email=f"u{n}@example{n}.org", phone=f"+1415{200 + n}{n:04d}",
                      ip=f"81.2.{n}.1", device_id="dv_shared" if n < 3 else "dv_own")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
    runner = CliRunner()
    listed = runner.invoke(main, ["clusters", "list"])
    assert listed.exit_code == 0, listed.output
    first = listed.output.splitlines()[0]
    assert "size=2" in first and re.search(r"(allow|verify|review|block)=2$", first)
    assert "device" in listed.output and "dv_shared" not in listed.output
    rebuilt = runner.invoke(main, ["clusters", "rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "clusters=2" in rebuilt.output
    assert runner.invoke(main, ["clusters", "list", "--min-size", "3"]).output.startswith("no clusters")


def test_simulated_farms_are_caught_and_ordinary_users_pass(client, auth, runtime):
    world = sim.history(seed=11, legit=150, farms=1, farm_size=60, days=2, geoip=runtime.geoip,
                        hosting_asns=runtime.geoip.netintel.datacenter_asns, warmup_days=1)
    assert {e.population for e in world.events} == {"legit", "farm_0"}
    result = sim.run(client, auth, world, echo=None)
    figures = sim.summary(result)
    assert figures["farm_recall_final"] >= 0.9
    assert figures["legit_non_allow_final"] <= 0.05
    assert figures["legit_blocked_final"] == 0
