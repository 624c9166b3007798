"""The OpenAPI document agrees with the contract (docs/contract.md, a copy of the shared one),
and documents every route the app serves.

The contract's routes, their request fields, the fields it says are required and the fields
of the answers it shows are read from the contract file itself. Routes and fields the contract
has but the code does not yet are listed in NOT_YET; the test fails when one of them is served
but undocumented, or documented while still listed (take it off the list).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field

import pytest
from hypothesis import given, strategies as st

from kyc import create_app
from kyc.api.openapi import build
from kyc.config import PROJECT_ROOT

CONTRACT = (PROJECT_ROOT / "docs" / "contract.md").read_text()

# Contract routes whose code is still being written (issue numbers), and contract fields of
# served routes not yet in their models.
NOT_YET: dict[tuple[str, str], str] = {}
NOT_YET_FIELDS: dict[tuple[str, str, str], set[str]] = {}

ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/v1/[^`?\s]*)")


@dataclass
class ContractRoute:
    method: str
    path: str                                  # parameters written {}
    request: set[str] = field(default_factory=set)
    response: set[str] = field(default_factory=set)
    required: set[str] | None = None           # None: the contract does not say


def normalise(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def top_level_keys(text: str) -> set[str]:
    """The keys of a JSON-like object as the contract writes them (comments, `...`, bare keys)."""
    text = re.sub(r"//[^\n]*", "", text)
    keys, depth, i, previous = set(), 0, 0, ""
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = text.index('"', i + 1)
            if depth == 1 and previous in "{,":
                keys.add(text[i + 1:end])
            previous, i = '"', end + 1
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if not ch.isspace():
            previous = ch
        i += 1
    return keys


def _objects(segment: str) -> list[str]:
    """The JSON objects of a segment of the contract: fenced json blocks and inline `{...}`."""
    found = [(m.start(), m.group(1)) for m in re.finditer(r"```json\n(.*?)```", segment, re.S)]
    without_blocks = re.sub(r"```json\n.*?```", lambda m: " " * len(m.group()), segment, flags=re.S)
    found += [(m.start(), m.group(1)) for m in re.finditer(r"`(\{.*?\})`", without_blocks, re.S)]
    return [text for _, text in sorted(found)]


def contract_routes(text: str = CONTRACT) -> dict[tuple[str, str], ContractRoute]:
    """Each route the contract names, with what its segment shows: the text from the route to
    the next route, heading or list item (not one about its answer or a field). For a POST the first object is its request and the
    next ones its answers; for a GET every object is an answer."""
    # A list item about the route above (its answer, one of its fields) belongs to its segment.
    items = re.finditer(r"^(## |- (?!Response|`\w+`:))", text, re.M)
    boundaries = sorted({m.start() for m in ROUTE.finditer(text)} | {m.start() for m in items} | {len(text)})
    routes: dict[tuple[str, str], ContractRoute] = {}
    for match in ROUTE.finditer(text):
        end = next(b for b in boundaries if b > match.start())
        segment = text[match.end():end]
        method, path = match.group(1), normalise(match.group(2))
        route = routes.setdefault((method, path), ContractRoute(method, path))
        objects = _objects(segment)
        if method == "POST" and objects and not re.search(r"Response[^`]*$", segment[:segment.find(objects[0])]):
            route.request |= top_level_keys(objects.pop(0))
        for obj in objects:
            route.response |= top_level_keys(obj)
        required = re.search(r"[Oo]nly ((?:`\w+`(?:, | and )?)+) (?:is|are) required", segment)
        if required:
            route.required = set(re.findall(r"`(\w+)`", required.group(1)))
    return routes


def test_the_contract_parser_reads_what_the_contract_says():
    routes = contract_routes()
    signup = routes[("POST", "/v1/signups")]
    assert signup.required == {"account_id", "email", "ip"}
    assert {"phone", "device_id", "client_hints", "timezone", "locale", "metadata"} <= signup.request
    assert {"evaluation_id", "decision", "score", "reasons", "cluster", "rules_version"} <= signup.response
    assert routes[("POST", "/v1/accounts/{}/activity")].required == {"requests"}
    assert routes[("POST", "/v1/accounts/{}/labels")].request == {"label", "note"}
    assert routes[("POST", "/v1/accounts/{}/verifications")].response == {"verification_id", "kind", "status",
                                                                         "expires_at"}
    assert routes[("GET", "/v1/accounts/{}/entitlement")].response >= {"allowed", "quota", "missing_verifications"}
    assert routes[("POST", "/v1/clusters/{}/actions")].response == {"cluster_id", "members", "changed"}
    assert {"account_id", "requests_today", "decision"} <= routes[("POST", "/v1/accounts/{}/activity")].response
    assert routes[("POST", "/v1/activity")].response == {"results"}
    assert len(routes) == 14


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app (on a throwaway SQLite file) and its OpenAPI document, as served."""
    from kyc.config import Config

    from tests.conftest import RULES_DIR, TEST_SECRET

    tmp = tmp_path_factory.mktemp("openapi")
    app = create_app(Config.from_env({}, database_url=f"sqlite:///{tmp / 'kyc.db'}", rules_dir=RULES_DIR,
                                     data_dir=tmp, secret_key=TEST_SECRET, dev_key=""))
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return app, response.json


def _schema(doc: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return doc["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def _served_routes(app) -> dict[tuple[str, str], object]:
    """The API's routes: every route but those of the blueprints openapi.NOT_API names."""
    from kyc.api.openapi import NOT_API

    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in NOT_API:
            continue
        path = normalise(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes[(method, path)] = app.view_functions[rule.endpoint]
    return routes


def _documented(doc: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), normalise(path)): op for path, ops in doc["paths"].items() for method, op in ops.items()}


def test_every_served_route_is_documented(served):
    app, doc = served
    documented = _documented(doc)
    undocumented = sorted(set(_served_routes(app)) - set(documented))
    assert undocumented == [], "add @documented(...) under the route decorator of each"
    assert doc["openapi"] == "3.1.0"


@pytest.mark.parametrize("route", sorted(contract_routes()), ids=lambda r: f"{r[0]} {r[1]}")
def test_the_document_agrees_with_the_contract(served, route):
    app, doc = served
    contract = contract_routes()[route]
    documented = _documented(doc)
    if route in NOT_YET:
        assert route not in _served_routes(app) or route in documented, \
            f"{route} is served but not documented ({NOT_YET[route]})"
        assert route not in documented, f"{route} is documented now: take it off NOT_YET"
        return
    assert route in documented, f"the contract's {route} is not in the OpenAPI document"
    op = documented[route]
    method, path = route
    pending = {part: NOT_YET_FIELDS.get((method, path, part), set()) for part in ("request", "required", "response")}
    if contract.request:
        body = _schema(doc, op["requestBody"]["content"]["application/json"]["schema"])
        properties = set(body.get("properties", {}))
        assert contract.request - pending["request"] <= properties, "request fields missing from the document"
        assert not pending["request"] & properties, "documented now: take them off NOT_YET_FIELDS"
        if contract.required is not None:
            required = set(body.get("required", []))
            assert contract.required - pending["required"] == required - pending["required"], \
                "the document's required request fields differ from the contract's"
            assert not pending["required"] & required, "required now: take them off NOT_YET_FIELDS"
        assert body.get("additionalProperties") is False, "the contract refuses unknown top-level fields"
    if contract.response:
        ok = next(op["responses"][s] for s in ("200", "201") if s in op["responses"])
        answer = _schema(doc, ok["content"]["application/json"]["schema"])
        properties = set(answer.get("properties", {}))
        assert contract.response - pending["response"] <= properties, "answer fields missing from the document"
        assert not pending["response"] & properties, "documented now: take them off NOT_YET_FIELDS"
    secured = bool(op["security"])
    assert secured == (not path.startswith("/v1/webhooks/")), "every /v1 route but the webhooks needs a key"
    if secured:
        assert "401" in op["responses"]


def test_values_the_running_kyc_holds_are_listed_as_what_a_field_accepts(tmp_path):
    """An unknown tier is a 400, so the document lists the tiers of the rule files loaded (and of
    a reload), and the identity providers configured: what it allows a caller to send is what the
    route accepts."""
    from kyc import create_app
    from kyc.config import Config
    from tests.conftest import RULES_DIR, TEST_SECRET

    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    app = create_app(Config.from_env({"KYC_WEBHOOK_SECRETS": "onfido:s3cret,veriff:0ther"},
                                     database_url=f"sqlite:///{tmp_path / 'kyc.db'}", rules_dir=rules,
                                     data_dir=tmp_path, secret_key=TEST_SECRET, dev_key="dev-key"))
    client = app.test_client()

    def tier_values(doc: dict) -> list[str]:
        query = doc["paths"]["/v1/accounts/{account_id}/entitlement"]["get"]["parameters"]
        return next(p["schema"]["enum"] for p in query if p["name"] == "tier")

    doc = client.get("/openapi.json").json
    assert tier_values(doc) == ["free", "standard", "high_volume"]
    start = doc["components"]["schemas"]["StartBody"]["properties"]
    assert [s.get("enum") for s in start["provider"]["anyOf"]] == [["onfido", "veriff"], None]
    assert "x-kyc-values" not in json.dumps(doc)
    tiers = rules / "tiers.yaml"
    tiers.write_text(tiers.read_text().replace("- id: standard", "- id: team"))
    app.extensions["kyc"].reload_rules(rules)
    assert tier_values(client.get("/openapi.json").json) == ["free", "team", "high_volume"]
    answer = client.get("/v1/accounts/none/entitlement?tier=standard", headers={"Authorization": "Bearer dev-key"})
    assert answer.status_code == 400 and answer.json["error"]["fields"]["tier"]


def test_payment_methods_answer_as_signups_do(served):
    _, doc = served
    answers = [doc["paths"][p]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
               for p in ("/v1/signups", "/v1/payment-methods")]
    assert answers[0] == answers[1]


def test_the_reference_page_shows_every_route_and_field(served):
    app, doc = served
    page = app.test_client().get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for path, ops in doc["paths"].items():
        for method in ops:
            assert f"<code>{path}</code>" in html and f'<span class="m">{method}</span>' in html
    signup = _schema(doc, doc["paths"]["/v1/signups"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    for name in signup["properties"]:
        assert f"<code>{name}</code>" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html   # nothing fetched


def test_probes_and_documentation_need_no_key(served):
    app, doc = served
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path
        assert _documented(doc)[("GET", path)]["security"] == []
    assert client.get("/v1/ops/rules").status_code == 401
    # The contract: every /v1 route but the webhooks needs a key; nothing under /v1 is open.
    for path in ("/v1/openapi.json", "/v1/docs"):
        assert client.get(path).status_code == 404, path          # moved out of /v1
    assert all(op["security"] for (method, path), op in _documented(doc).items()
               if path.startswith("/v1/") and not path.startswith("/v1/webhooks/")), "an open /v1 route"


@given(key=st.text(max_size=300) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7f), max_size=300))
def test_the_documented_idempotency_key_is_what_the_endpoints_accept(served, key):
    """The header's schema in the document and kyc.idempotency.key_problem agree on every key."""
    from kyc.idempotency import key_problem

    _, doc = served
    for path in ("/v1/activity", "/v1/accounts/{account_id}/activity"):
        header = next(p for p in doc["paths"][path]["post"]["parameters"] if p["name"] == "Idempotency-Key")
        assert (re.fullmatch(header["schema"]["pattern"], key) is not None) == (key_problem(key) is None), key
