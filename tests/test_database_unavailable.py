"""PostgreSQL unreachable: every route that needs the database answers 503 with Retry-After in
the contract's error shape (a client can tell "retry" from a bug), never 500."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest

from kyc import create_app
from kyc.runtime import Runtime
from tests.conftest import free_port, payment, signup


@pytest.fixture
def unreachable(make_config):
    """An app whose PostgreSQL refuses connections (nothing listens on its port)."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/kyc"
    rt = Runtime.start(make_config(url, dev_key="dev", webhook_secrets={"idv": b"s3cret"}), migrate=False)
    yield create_app(runtime=rt)
    rt.engine.dispose()


BODIES = {
    "/v1/signups": signup(),
    "/v1/payment-methods": payment(),
    "/v1/accounts/<account_id>/labels": {"label": "fraud"},
    "/v1/accounts/<account_id>/activity": {"requests": 10, "occurred_at": "2026-11-24T21:00:00Z"},
    "/v1/accounts/<account_id>/verifications": {"kind": "phone"},
    "/v1/verifications/<verification_id>/confirm": {"code": "123456"},
    "/v1/accounts/<account_id>/review": {"outcome": "allow", "note": "checked by a person"},
    "/v1/clusters/<cluster_id>/actions": {"action": "block", "note": "a farm"},
}


def _assert_503(response, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.get_data(as_text=True)[:300])
    assert response.headers["Retry-After"].isdigit(), what
    assert response.json["error"]["code"] == "database_unavailable", what
    assert response.json["error"]["message"], what


def test_every_route_answers_503_with_retry_after(unreachable):
    client = unreachable.test_client()
    checked = 0
    for rule in unreachable.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        path = rule.rule.replace("<account_id>", "acct_1").replace("<verification_id>", "vf_1") \
            .replace("<cluster_id>", "cl_1").replace("<provider>", "idv")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            query = "?tier=high_volume" if rule.endpoint.endswith("entitlement") else ""
            if rule.endpoint.endswith("provider_webhook"):
                raw = json.dumps({"event_id": "e1", "verification_id": "vf_1", "status": "approved",
                                  "timestamp": datetime.now(timezone.utc).isoformat()}).encode()
                headers = {"X-Signature": hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest(),
                           "Content-Type": "application/json"}
                response = client.open(path, method=method, data=raw, headers=headers)
                _assert_503(response, f"{method} {rule.rule}")
                checked += 1
                continue
            body = BODIES.get(rule.rule, {}) if method == "POST" else None
            if rule.rule in ("/openapi.json", "/docs"):
                # The API's own description needs neither a key nor the database.
                assert client.open(path, method=method).status_code == 200, rule.rule
                continue
            # A real API key: its check before every call needs the database too.
            response = client.open(path + query, method=method, json=body,
                                   headers={"Authorization": "Bearer kyc_live_not_checkable"})
            _assert_503(response, f"{method} {rule.rule} (key check)")
            # The development key skips the key check: the route itself meets the database.
            response = client.open(path + query, method=method, json=body, headers={"Authorization": "Bearer dev"})
            if rule.endpoint.endswith(("rules_status", "rules_reload")):
                assert response.status_code == 200, rule.rule      # rules live in the process
            elif method == "POST" and rule.rule not in BODIES:
                # A route this test has no valid body for refuses it before the database: never a 500.
                assert response.status_code in (400, 503), (rule.rule, response.status_code)
            else:
                _assert_503(response, f"{method} {rule.rule}")
            checked += 1
    assert checked >= 14


def test_a_constraint_error_is_still_a_500_not_a_retry():
    from sqlalchemy.exc import IntegrityError

    from kyc.api import database_unavailable

    assert not database_unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not database_unavailable(ValueError("a bug"))
