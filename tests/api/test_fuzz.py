"""Bad input never 500s: hypothesis sends generated requests to every route the app serves and
asserts no 5xx, every error in the contract's shape {"error": {"code", "message", "fields"?}},
and nothing stored for a refused request. Runs on SQLite and PostgreSQL (NUL is PostgreSQL's).

Bodies start from a valid body of the route (where it has one) and are mutated: a field
replaced by any JSON value (NUL, lone surrogates, huge and non-finite numbers, deep nesting,
times at the calendar's edges), a field dropped, an unknown one added, or the raw text edited
(Infinity, NaN, 1e999999, invalid UTF-8, 5,000 brackets). Path parameters and query strings get
the same treatment. Routes added later are fuzzed too, with generic bodies.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from kyc import create_app
from kyc.rescore.background import drain
from kyc.models import Base
from kyc.runtime import Runtime
from kyc.verification.webhooks import sign
from kyc.api.openapi import NOT_API
from tests.conftest import payment, signup

WEBHOOK_SECRET = b"fuzz-webhook-secret"
EXAMPLES = 300

# --- values -------------------------------------------------------------------------------------

nasty_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec=None), max_size=30),           # lone surrogates included
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff x", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                     "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-11-24", "2026-11-24T21:00:00",
                     "2026-W48-2T21:00:00Z", "20261124T210000Z", "2026-11-24 21:00:00Z", "2026-11-24T21:00:00.1234567890Z",
                     "٤٢٤٢٤٢", "424242\n", "४२४२४२४२", "１２３４５６", "+14155550123", "", " ", "a" * 5000,
                     "fraud", "legit", "phone", "email", "document", "payment", "approved", "high_volume"]),
)
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=False, allow_infinity=False), nasty_text,
)
json_value = st.recursive(leaf, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(nasty_text, children, max_size=4)), max_leaves=12)

BASE_BODIES = {
    "/v1/signups": signup(),
    "/v1/payment-methods": payment(),
    "/v1/accounts/<account_id>/activity": {"requests": 5, "ip": "8.8.8.8", "occurred_at": "2026-11-24T21:00:00Z"},
    "/v1/accounts/<account_id>/verifications": {"kind": "phone", "phone": "+14155550123"},
    "/v1/verifications/<verification_id>/confirm": {"code": "123456"},
    "/v1/accounts/<account_id>/labels": {"label": "fraud", "note": "fuzz"},
    "/v1/webhooks/<provider>": {"event_id": "ev_1", "verification_id": "vf_1", "status": "approved",
                                "reason": "ok", "timestamp": "2026-11-24T21:00:00Z"},
}

RAW_EDITS = [
    lambda t: t.replace("5400", "Infinity"), lambda t: t.replace("5400", "NaN"),
    lambda t: t.replace("5400", "-Infinity"), lambda t: t.replace("5400", "1e999999"),
    lambda t: t.replace("5400", "1" + "0" * 5000), lambda t: t[:-1] + ', "metadata": ' + "[" * 5000 + "]" * 5000 + "}",
    lambda t: t[:-1] + ', "metadata": {"k": ' + "[" * 40 + "1" + "]" * 40 + "}}",
    lambda t: t.replace('"', '"\\u0000', 1), lambda t: t.replace('": "', '": "\\ud800', 1),
    lambda t: t[: len(t) // 2], lambda t: t.encode("utf-16").decode("latin-1"),
]


@st.composite
def body_for(draw, route: str) -> bytes:
    base = BASE_BODIES.get(route)
    if base is None or draw(st.integers(0, 9)) == 0:
        value = draw(json_value)
    else:
        value = dict(base)
        for _ in range(draw(st.integers(1, 3))):
            action = draw(st.sampled_from(["replace", "drop", "add", "metadata"]))
            if action == "replace" and value:
                value[draw(st.sampled_from(sorted(value)))] = draw(json_value)
            elif action == "drop" and value:
                value.pop(draw(st.sampled_from(sorted(value))))
            elif action == "add":
                value[draw(nasty_text)] = draw(json_value)
            else:
                value["metadata"] = draw(st.dictionaries(nasty_text, json_value, max_size=3))
    text = json.dumps(value, allow_nan=True)
    if draw(st.integers(0, 4)) == 0:
        text = draw(st.sampled_from(RAW_EDITS))(text)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        data = draw(st.binary(max_size=64)) + data
    return data


path_param = st.one_of(
    st.sampled_from(["acct_1", "acct_fuzz", "vf_1", "cl_1", "idv"]),
    nasty_text.map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(["%00", "a%00b", "%ED%A0%80", "%FF", "a" * 3000]),
)
query = st.one_of(
    st.just(""),
    st.sampled_from(["tier=high_volume", "tier=", "tier=%00", "min_size=0", "min_size=abc", "limit=99999999999999999999",
                     "limit=-1", "min_size=%ED%A0%80", "tier=standard&tier=high_volume"]),
    st.dictionaries(nasty_text, nasty_text, max_size=3).map(
        lambda d: urllib.parse.urlencode({k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
                                          for k, v in d.items()})),
)

# --- the test -------------------------------------------------------------------------------


def _counts(rt: Runtime) -> dict[str, int]:
    with rt.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in Base.metadata.sorted_tables}


def assert_contract_error(response) -> None:
    assert response.mimetype == "application/json", (response.status_code, response.get_data()[:200])
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert "fields" not in error or (isinstance(error["fields"], dict) and
                                     all(isinstance(k, str) and isinstance(v, str)
                                         for k, v in error["fields"].items())), body


def test_every_route_answers_bad_input_without_5xx_in_the_contract_shape(database_url, make_config, api_key_for):
    rt = Runtime.start(make_config(database_url, webhook_secrets={"idv": WEBHOOK_SECRET}), migrate=False)
    app = create_app(runtime=rt)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {api_key_for(rt)}"}
    # Something to find: an account with a signup, a verification and a payment method.
    assert client.post("/v1/signups", json=signup(), headers=headers).status_code == 200
    assert client.post("/v1/payment-methods", json=payment(), headers=headers).status_code == 200
    # The API's routes: the console's HTML pages answer HTML errors by design (kyc.api.openapi.NOT_API).
    routes = sorted((rule.rule, method) for rule in app.url_map.iter_rules()
                    if rule.endpoint.split(".")[0] not in NOT_API and rule.endpoint != "static"
                    for method in rule.methods - {"HEAD", "OPTIONS"})
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def fuzz(data):
        rule, method = data.draw(st.sampled_from(routes))
        path = rule
        for name in ("account_id", "verification_id", "cluster_id", "provider"):
            path = path.replace(f"<{name}>", data.draw(path_param))
        q = data.draw(query)
        url = f"{path}?{q}" if q else path
        request_headers = dict(headers)
        body = b""
        if method == "POST":
            body = data.draw(body_for(rule))
            request_headers["Content-Type"] = data.draw(st.sampled_from(
                ["application/json"] * 8 + ["text/plain", "application/json; charset=latin-1"]))
            if rule.startswith("/v1/webhooks/"):
                request_headers["X-Signature"] = sign(WEBHOOK_SECRET, body)
        before = _counts(rt)
        response = client.open(url, method=method, data=body, headers=request_headers)
        seen[f"{response.status_code}"] = seen.get(f"{response.status_code}", 0) + 1
        assert response.status_code < 500, (method, url, body[:300], response.get_data()[:300])
        if response.status_code >= 400:
            assert_contract_error(response)
            assert _counts(rt) == before, (method, url, body[:300])
        drain(rt)                 # background work a request started ends before the next counts

    try:
        fuzz()
    finally:
        drain(rt)
        rt.engine.dispose()
    print(f"fuzzed {sum(seen.values())} requests over {len(routes)} routes: statuses {dict(sorted(seen.items()))}")
    assert set(seen) & {"400"} and set(seen) & {"200", "201"}     # the fuzz reached both sides


# Deterministic repros of what the fuzz found, one per defect (each failed before its fix).

def test_non_finite_numbers_anywhere_are_refused_by_field(client, auth, runtime):
    for raw, field in (('"form_fill_ms": Infinity', "form_fill_ms"), ('"metadata": {"x": NaN}', "metadata.x"),
                       ('"metadata": {"x": [1e999999]}', "metadata.x[0]"), ('"form_fill_ms": -Infinity', "form_fill_ms")):
        text = json.dumps(signup())[:-1] + ", " + raw + "}"
        text = text.replace('"form_fill_ms": 5400, ', "") if "form_fill_ms" in raw else text
        response = client.post("/v1/signups", data=text, headers=auth, content_type="application/json")
        assert response.status_code == 400, raw
        assert response.json["error"]["fields"][field].startswith("must be a finite number"), response.json
    assert _counts(runtime)["accounts"] == 0


def test_nul_and_lone_surrogates_are_refused_in_identifiers_and_text(client, auth, runtime):
    for field, value in (("account_id", "acct\x00"), ("device_id", "\ud800"), ("email", "a\x00@gmail.com")):
        text = json.dumps(signup(**{field: value}))
        response = client.post("/v1/signups", data=text, headers=auth, content_type="application/json")
        assert response.status_code == 400 and field in response.json["error"]["fields"], response.json
    text = json.dumps(signup(metadata={"note": "a\x00b", "k\udc00": 1}))
    response = client.post("/v1/signups", data=text, headers=auth, content_type="application/json")
    assert response.status_code == 400 and set(response.json["error"]["fields"]) == {"metadata.note", "metadata"}
    for path in ("/v1/accounts/acct%00/entitlement?tier=high_volume", "/v1/accounts/%ED%A0%80"):
        response = client.get(path, headers=auth)
        assert response.status_code in (400, 404), path
        assert_contract_error(response)
    assert client.get("/v1/accounts/acct%00", headers=auth).json["error"]["fields"] == {"path": "contains a NUL character"}
    assert _counts(runtime)["accounts"] == 0


def test_deeply_nested_json_is_refused(client, auth, runtime):
    for depth in (40, 5000):
        text = json.dumps(signup())[:-1] + ', "metadata": {"k": ' + "[" * depth + "]" * depth + "}}"
        response = client.post("/v1/signups", data=text, headers=auth, content_type="application/json")
        assert response.status_code == 400 and "deeper than 32" in json.dumps(response.json), response.json
    assert _counts(runtime)["accounts"] == 0


def test_phone_null_is_no_phone(client, auth):
    response = client.post("/v1/signups", json=signup(phone=None) | {"phone": None}, headers=auth)
    assert response.status_code == 200, response.json


def test_times_are_rfc3339_within_2000_and_a_day_ahead(client, auth, runtime):
    from datetime import datetime, timedelta, timezone

    soon = (datetime.now(timezone.utc) + timedelta(hours=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for good in ("2026-11-24T21:00:00Z", "2026-11-24t21:00:00z", "2026-11-24T22:00:00+01:00",
                 "2026-11-24T21:00:00.123456789Z", "2000-01-01T00:00:00Z", soon):
        response = client.post("/v1/accounts/acct_1/activity", json={"requests": 1, "occurred_at": good}, headers=auth)
        assert response.status_code in (200, 404), (good, response.json)    # 404: no such account yet
        assert "fields" not in response.json.get("error", {}), (good, response.json)
    for bad in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00+23:59", "1999-12-31T23:59:59Z", "2026-11-24",
                "2026-11-24T21:00:00", "20261124T210000Z", "2026-W48-2T21:00:00Z", "2026-11-24 21:00:00Z",
                "２０２６-11-24T21:00:00Z", "2026-02-30T00:00:00Z", "2026-11-24T21:00:00+24:00", 1732482000):
        response = client.post("/v1/signups", json=signup(occurred_at=bad), headers=auth)
        assert response.status_code == 400 and "occurred_at" in response.json["error"]["fields"], (bad, response.json)
    assert _counts(runtime)["accounts"] == 0


def test_bin_and_last4_are_ascii_digits_exactly(client, auth, runtime):
    for fields in ({"bin": "٤٢٤٢٤٢"}, {"bin": "424242\n"}, {"bin": " 424242"}, {"bin": "４２４２４２"},
                   {"last4": "٤٢٤٢"}, {"last4": "4242\n"}):
        response = client.post("/v1/payment-methods", json=payment(**fields), headers=auth)
        assert response.status_code == 400 and set(response.json["error"]["fields"]) == set(fields), response.json
    assert _counts(runtime)["accounts"] == 0


def test_confirm_code_is_ascii_digits(client, auth):
    response = client.post("/v1/verifications/vf_x/confirm", json={"code": "١٢٣٤٥٦"}, headers=auth)
    assert response.status_code == 400 and "code" in response.json["error"]["fields"]


def _api_key(rt: Runtime) -> str:
    from kyc.models import ApiKey
    from kyc.security import hash_api_key, new_api_key

    key = new_api_key()
    with rt.session() as session, session.begin():
        session.add(ApiKey(name="fuzz", prefix=key[:10], key_hash=hash_api_key(key), role="admin"))
    return key



@pytest.fixture
def api_key_for():
    return _api_key



# A key given twice: a parser keeps the last value, so every check would see only that one.
DUPLICATED_IN = {
    "/v1/signups": signup(metadata={"note": "hello"}),
    "/v1/accounts/acct_dup/activity": {"requests": 5, "tier": "free", "user_agent": "python-httpx/0.27.0"},
    "/v1/activity": {"reports": [{"account_id": "acct_dup", "requests": 5, "api_key_id": "key_1"}]},
}


def _with_first_value(text: str, key: str, first: str) -> str:
    """`text` with `"key": first, ` put before the object's own `"key": ...` (each key's first
    occurrence in these bodies is the one to shadow)."""
    at = text.index(json.dumps(key) + ":")
    return text[:at] + json.dumps(key) + ": " + first + ", " + text[at:]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(sorted(DUPLICATED_IN)), data=st.data())
def test_a_key_given_twice_is_refused_whatever_its_first_value_held(client, auth, runtime, route, data):
    from tests.test_card_numbers import card_numbers

    client.post("/v1/signups", json=signup(account_id="acct_dup"), headers=auth)
    before = _counts(runtime)
    text = json.dumps(DUPLICATED_IN[route])
    keys = sorted({k for k in ("account_id", "metadata", "note", "requests", "user_agent", "api_key_id", "reports",
                               "tier", "email") if json.dumps(k) + ":" in text})
    key = data.draw(st.sampled_from(keys))
    first = data.draw(st.one_of(
        card_numbers().map(lambda pair: json.dumps(pair[1])),
        st.sampled_from(["NaN", "Infinity", '"a\\u0000b"', "[" * 40 + "]" * 40, '{"x": "4242 4242 4242 4242"}']),
        json_value.map(lambda v: json.dumps(v)),
    ))
    response = client.post(route, data=_with_first_value(text, key, first), headers=auth,
                           content_type="application/json")
    assert response.status_code == 400, (key, first, response.json)
    assert_contract_error(response)
    error = response.json["error"]
    assert error["code"] == "card_number_refused" or error.get("fields"), error
    assert _counts(runtime) == before


def test_a_duplicated_key_is_named(client, auth):
    text = json.dumps(signup())[:-1] + ', "metadata": {"note": "card 4242 4242 4242 4242"}, "metadata": {}}'
    assert client.post("/v1/signups", data=text, headers=auth, content_type="application/json").json["error"]["code"] \
        == "card_number_refused"
    text = '{"email": "a@b.com", "account_id": "acct_x", "email": "c@d.com", "ip": "73.15.1.1"}'
    answer = client.post("/v1/signups", data=text, headers=auth, content_type="application/json").json
    assert answer["error"]["fields"] == {"email": "is given more than once in one object; send each field once"}
