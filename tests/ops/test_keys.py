"""Scoped API keys: each role calls what it is for and gets 403 elsewhere; key changes are audited."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kyc.cli import main
from kyc.ops.keys import ROLES, ROUTE_ROLES, create_key, may_call
from tests.conftest import RULES_DIR, TEST_SECRET, signup


@pytest.fixture
def keys(runtime) -> dict[str, dict[str, str]]:
    """An Authorization header per role."""
    headers = {}
    with runtime.session() as session, session.begin():
        for role in ROLES:
            _, key = create_key(session, f"{role}-key", role, "cli:tests")
            headers[role] = {"Authorization": f"Bearer {key}"}
    return headers


def _calls(account_id: str, cluster_id: str) -> dict[str, tuple[str, str, dict | None]]:
    return {
        "signup": ("POST", "/v1/signups", signup(account_id="acct_other")),
        "payment": ("POST", "/v1/payment-methods", {"account_id": account_id, "fingerprint": "fp_1", "bin": "424242",
                                                    "last4": "4242", "funding": "credit"}),
        "verification": ("POST", f"/v1/accounts/{account_id}/verifications", {"kind": "email"}),
        "entitlement": ("GET", f"/v1/accounts/{account_id}/entitlement?tier=standard", None),
        "activity": ("POST", f"/v1/accounts/{account_id}/activity", {"requests": 10}),
        "account": ("GET", f"/v1/accounts/{account_id}", None),
        "clusters": ("GET", "/v1/clusters", None),
        "reviews": ("GET", "/v1/reviews", None),
        "audit": ("GET", "/v1/audit", None),
        "rules": ("GET", "/v1/ops/rules", None),
        "label": ("POST", f"/v1/accounts/{account_id}/labels", {"label": "legit"}),
        "review": ("POST", f"/v1/accounts/{account_id}/review", {"outcome": "allow"}),
        "cluster_action": ("POST", f"/v1/clusters/{cluster_id}/actions", {"action": "review"}),
        "reload": ("POST", "/v1/ops/rules/reload", None),
    }


ALLOWED = {
    "signup": {"signup", "payment", "verification"},
    "gateway": {"entitlement", "activity"},
    "ops": {"entitlement", "account", "clusters", "reviews", "audit", "rules", "label", "review", "cluster_action",
            "reload"},
}


@pytest.mark.parametrize("role", ["signup", "gateway", "ops", "admin"])
def test_each_role_calls_what_it_is_for_and_is_refused_the_rest(client, keys, role):
    admin = keys["admin"]
    scored = client.post("/v1/signups", json=signup(), headers=admin).json
    for name, (method, path, body) in _calls(scored["account_id"], scored["cluster"]["id"]).items():
        response = client.open(path, method=method, json=body, headers=keys[role])
        if role == "admin" or name in ALLOWED[role]:
            assert response.status_code in (200, 201, 202), (role, name, response.status_code, response.json)
        else:
            assert response.status_code == 403, (role, name, response.status_code)
            error = response.json["error"]
            assert error["code"] == "forbidden" and role in error["message"], error


def test_the_signup_flows_key_cannot_label_review_act_on_clusters_or_reload_rules():
    for method, rule in [("POST", "/v1/accounts/<account_id>/labels"), ("POST", "/v1/accounts/<account_id>/review"),
                         ("POST", "/v1/clusters/<cluster_id>/actions"), ("POST", "/v1/ops/rules/reload")]:
        assert not may_call("signup", method, rule) and not may_call("gateway", method, rule)
        assert may_call("ops", method, rule) and may_call("admin", method, rule)
    # A write route nobody gave roles to is admin's only; a read is open to ops.
    assert not may_call("ops", "POST", "/v1/some/new/route") and may_call("admin", "POST", "/v1/some/new/route")
    assert may_call("ops", "GET", "/v1/some/new/read") and not may_call("gateway", "GET", "/v1/some/new/read")
    assert all(roles <= set(ROLES) for roles in ROUTE_ROLES.values())


def test_revoked_and_unknown_keys_are_401_not_403(client, keys, runtime):
    from kyc.ops.keys import revoke_key
    from kyc.models import ApiKey
    from sqlalchemy import select

    with runtime.session() as session, session.begin():
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == "ops-key"))
        revoke_key(session, key_id, "cli:tests")
    assert client.get("/v1/audit", headers=keys["ops"]).status_code == 401
    assert client.get("/v1/audit", headers={"Authorization": "Bearer kyc_nope"}).status_code == 401


def test_a_key_read_is_kept_seconds_and_a_revocation_is_honoured(client, keys, runtime, monkeypatch):
    """Keys read are kept KEY_CACHE_SECONDS (on a stepped clock here): revoke_key drops one at
    once; a revocation written elsewhere (another process, the database) holds once they pass."""
    from types import SimpleNamespace

    from sqlalchemy import select, update

    from kyc.models import ApiKey, utcnow
    from kyc.ops import keys as key_module

    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(key_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    key_module.forget_cached_keys()
    assert client.get("/v1/audit", headers=keys["ops"]).status_code == 200
    assert client.get("/v1/audit", headers=keys["admin"]).status_code == 200
    with runtime.session() as session, session.begin():
        key_module.revoke_key(session, session.scalar(select(ApiKey.id).where(ApiKey.name == "ops-key")), "cli:tests")
        session.execute(update(ApiKey).where(ApiKey.name == "admin-key").values(revoked_at=utcnow()))
    assert client.get("/v1/audit", headers=keys["ops"]).status_code == 401          # revoke_key: at once
    assert client.get("/v1/audit", headers=keys["admin"]).status_code == 200        # kept, within the seconds
    clock.now += key_module.KEY_CACHE_SECONDS
    assert client.get("/v1/audit", headers=keys["admin"]).status_code == 401        # read again: revoked
    clock.now += 3600
    assert client.get("/v1/audit", headers=keys["admin"]).status_code == 401        # never kept once refused


def test_cli_creates_a_key_for_a_role_and_records_creation_and_revocation(database_url, tmp_path, runtime):
    env = {"KYC_DATABASE_URL": database_url, "KYC_DATA_DIR": str(tmp_path), "KYC_RULES_DIR": str(RULES_DIR),
           "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_DEV_KEY": ""}
    runner = CliRunner()
    missing_role = runner.invoke(main, ["keys", "create", "--name", "x"], env=env)
    assert missing_role.exit_code == 2 and "--role" in missing_role.stderr
    bad_role = runner.invoke(main, ["keys", "create", "--name", "x", "--role", "root"], env=env)
    assert bad_role.exit_code == 2
    created = runner.invoke(main, ["keys", "create", "--name", "gw", "--role", "gateway"], env=env)
    assert created.exit_code == 0, created.output
    listing = runner.invoke(main, ["keys", "list"], env=env).stdout
    assert "gw" in listing and "gateway" in listing
    key_id = listing.split()[0]
    assert runner.invoke(main, ["keys", "revoke", key_id], env=env).exit_code == 0
    assert runner.invoke(main, ["keys", "revoke", "999999"], env=env).exit_code == 1
    trail = runner.invoke(main, ["audit", "--action", "key", "--json"], env=env)
    assert trail.exit_code == 0
    import json

    events = [json.loads(line) for line in trail.stdout.splitlines()]
    assert [e["action"] for e in events] == ["key.revoked", "key.created"]
    assert all(e["actor"].startswith("cli:") for e in events)
    assert events[1]["detail"]["role"] == "gateway" and events[1]["detail"]["name"] == "gw"
    assert created.stdout.strip() not in trail.stdout            # never the key itself
