"""The OpenAPI 3.1 document, built from the running app: GET /openapi.json, and the
reference page rendered from it on the server, GET /docs. Both outside /v1 and open to anyone
without a key (the contract: every /v1 route but the webhooks requires one).

Nothing here is written by hand per route. Paths and methods come from Flask's URL map; each
route's request, query and response schemas are the pydantic models its view validates with
(`documented`, `parse`, `parse_query`, `respond` in kyc/api/__init__.py); its description is the
view's docstring. Both routes are public: the API's shape is no secret (the contract is public),
and the page must open in a browser without a key.
"""

from __future__ import annotations

import inspect
import re
from functools import lru_cache
from typing import Any

from flask import Blueprint, Flask, current_app, render_template_string
from markupsafe import Markup, escape
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kyc.api import VALUES, Operation, documented
from kyc.api.responses import Error

reference = Blueprint("reference", __name__)

TITLE = "kyc"

# Blueprints whose routes are not part of the API and stay out of the document: HTML pages for
# people in a browser, behind their own sign-in.
NOT_API = {"console": "the ops console (kyc/ops/console): HTML pages and form posts", "static": "static files"}
VERSION = "1.1"
REF = "#/components/schemas/{model}"

# Why each error status happens; the body is always the Error schema.
ERRORS = {
    400: "Bad input: `error.fields` names each field and why. Nothing was changed.",
    401: "No API key, or a bad or revoked one (webhooks: a missing or bad X-Signature).",
    403: "The key's role may not call this route (`error.message` names the roles that may).",
    404: "Not found.",
    409: "Conflict with the current state.",
    413: "The body is larger than KYC_MAX_BODY_BYTES.",
    415: "The body is not JSON (send Content-Type: application/json).",
    422: "The rule files have errors; the running rules stay.",
    429: "Rate limited: retry after the Retry-After header's seconds.",
    502: "The code sender failed; nothing was started.",
    503: "A dependency is unavailable.",
}
STATUS_TEXT = {200: "OK", 201: "Created", 304: "Not modified (If-None-Match matched the ETag)"}


def _path(rule) -> tuple[str, list[dict[str, Any]]]:
    """/v1/accounts/<account_id> -> /v1/accounts/{account_id} and its path parameters."""
    names: list[str] = []

    def brace(match: re.Match) -> str:
        names.append(match.group(2))
        return "{" + match.group(2) + "}"

    path = re.sub(r"<(?:([a-z]+):)?(\w+)>", brace, rule.rule)
    params = [{"name": n, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 128}} for n in names]
    return path, params


def _query_parameters(model: type[BaseModel], schemas: dict) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _description(view) -> str | None:
    doc = inspect.getdoc(view)
    return doc or None


def _operation(op: Operation, view, endpoint: str, path_params: list, refs: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": endpoint.replace(".", "_"), "summary": op.summary}
    description = _description(view)
    if description:
        out["description"] = description
    out["tags"] = [op.tag or (endpoint.split(".")[0] if "." in endpoint else "kyc")]
    params = list(path_params)
    if op.query is not None:
        params += _query_parameters(op.query, refs)
    for name, text in op.headers.items():
        params.append({"name": name, "in": "header", "required": False, "description": text,
                       "schema": op.header_schemas.get(name, {"type": "string"})})
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": refs[(op.body, "validation")]}}}
    responses: dict[str, Any] = {}
    for status, model in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": STATUS_TEXT.get(status, ERRORS.get(status, "Answer"))}
        if model is not None:
            entry["content"] = {op.media_type: {"schema": refs[(model, "serialization")]}}
        elif status != 304:
            entry["content"] = {op.media_type: {"schema": {"type": "string"}}}
        responses[str(status)] = entry
    errors = set(op.errors)
    if op.body is not None:
        errors |= {400, 413, 415}
    if not op.public:
        errors |= {401, 403}
    if path_params:
        errors.add(404)                        # an id that names nothing
    for status in sorted(errors - set(op.responses)):
        entry = {"description": ERRORS[status], "content": {"application/json": {"schema": refs[(Error, "serialization")]}}}
        if status == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}
        responses[str(status)] = entry
    out["responses"] = responses
    out["security"] = [] if op.public else [{"bearer": []}]
    return out


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of `app`."""
    routes = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        op = getattr(view, "openapi", None)
        if op is not None:
            routes.append((rule, view, op))
    models: list[tuple[type[BaseModel], str]] = [(Error, "serialization")]
    for _, _, op in routes:
        if op.body is not None:
            models.append((op.body, "validation"))
        models += [(m, "serialization") for m in op.responses.values() if m is not None]
    models = list(dict.fromkeys(models))
    refs, definitions = models_json_schema(models, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for rule, view, op in sorted(routes, key=lambda r: r[0].rule):
        path, path_params = _path(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(op, view, rule.endpoint, path_params, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE, "version": VERSION,
            "summary": "Account-registration fraud scoring and identity verification",
            "description": "Every /v1 route except the webhooks requires "
                           "`Authorization: Bearer <api key>`. Bodies are JSON; times are RFC 3339 UTC. "
                           "Unknown top-level fields and full card numbers anywhere in a body are refused "
                           "(400), and a refused request changes nothing.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from `kyc keys create`"}},
        },
    }


def runtime_values(app: Flask) -> dict[str, tuple[str, ...]]:
    """The values of each VALUES name: the tiers of the rule files loaded, the identity providers
    configured (KYC_WEBHOOK_SECRETS)."""
    rt = app.extensions["kyc"]
    return {"tiers": tuple(rt.tiers.tiers) if rt.tiers else (),
            "providers": tuple(sorted(rt.config.webhook_secrets))}


def _with_values(node: Any, values: dict[str, tuple[str, ...]]) -> Any:
    if isinstance(node, dict):
        out = {k: _with_values(v, values) for k, v in node.items() if k != VALUES}
        if VALUES in node:
            out["enum"] = list(values[node[VALUES]])
        return out
    if isinstance(node, list):
        return [_with_values(v, values) for v in node]
    return node


@lru_cache(maxsize=8)
def _cached(app: Flask, values: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
    return _with_values(build(app), dict(values))


def document() -> dict[str, Any]:
    """This app's document, its runtime values (VALUES) as they are now."""
    app = current_app._get_current_object()
    return _cached(app, tuple(sorted(runtime_values(app).items())))


@reference.get("/openapi.json")
@documented("This OpenAPI document", responses={200: None}, public=True, tag="documentation")
def openapi_json():
    """The OpenAPI 3.1 document of this API, generated from the code that validates it."""
    return document()


@reference.get("/docs")
@documented("API reference page", responses={200: None}, public=True, tag="documentation",
            media_type="text/html")
def docs_page():
    """The API reference as an HTML page, rendered on the server from the OpenAPI document."""
    doc = document()
    return render_template_string(_PAGE, doc=doc, schemas=doc["components"]["schemas"], resolve=_resolve,
                                  type_of=_type_of, prose=_prose)


def _prose(text: str | None) -> Markup:
    """A description as HTML: escaped, with its `code` spans set as code."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text or ""))))


def _resolve(schema: dict) -> tuple[str | None, dict]:
    ref = schema.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        return name, document()["components"]["schemas"][name]
    return None, schema


def _type_of(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type_of(schema['additionalProperties'])}"
    text = str(kind)
    limits = [f"{k} {schema[k]}" for k in ("minLength", "maxLength", "minimum", "maximum", "maxProperties",
                                            "pattern", "format") if k in schema]
    return f"{text} ({', '.join(limits)})" if limits else text


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ doc.info.title }} API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2330}
h2{margin-top:2.5rem;border-bottom:1px solid #ccd}code,pre{font:13px ui-monospace,monospace}
.op{margin:1.5rem 0;padding:.5rem 1rem;border-left:4px solid #5b7bd5;background:#f6f8fc}
.m{font-weight:700;text-transform:uppercase;margin-right:.5rem}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #dde;padding:.2rem .5rem;text-align:left;vertical-align:top}.req{color:#b42}
nav a{margin-right:.75rem}
</style></head><body>
<h1>{{ doc.info.title }} API reference <small>v{{ doc.info.version }}</small></h1>
<p>{{ prose(doc.info.description) }}</p>
<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI {{ doc.openapi }}).</p>
<nav>{% for path, ops in doc.paths.items() %}{% for method, op in ops.items() %}
<a href="#{{ op.operationId }}">{{ method|upper }} {{ path }}</a>{% endfor %}{% endfor %}</nav>
{% for path, ops in doc.paths.items() %}{% for method, op in ops.items() %}
<div class="op" id="{{ op.operationId }}">
<h3><span class="m">{{ method }}</span><code>{{ path }}</code> — {{ op.summary }}</h3>
{% if op.description %}<p>{{ prose(op.description) }}</p>{% endif %}
<p>{% if op.security %}Requires <code>Authorization: Bearer &lt;api key&gt;</code>.{% else %}No API key.{% endif %}</p>
{% if op.parameters %}<table><tr><th>parameter</th><th>in</th><th>type</th><th>about</th></tr>
{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code>{% if p.required %} <span class="req">required</span>{% endif %}</td>
<td>{{ p.in }}</td><td>{{ type_of(p.schema) }}</td><td>{{ prose(p.description) }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}{% set name, body = resolve(op.requestBody.content["application/json"].schema) %}
<p>Body: <a href="#schema-{{ name }}">{{ name }}</a></p>{% endif %}
<table><tr><th>status</th><th>body</th><th>when</th></tr>
{% for status, r in op.responses.items() %}<tr><td>{{ status }}</td><td>{% for media, c in (r.content or {}).items() %}{% set name, s = resolve(c.schema) %}{% if name %}<a href="#schema-{{ name }}">{{ name }}</a>{% else %}{{ media }}{% endif %}{% endfor %}</td>
<td>{{ prose(r.description) }}</td></tr>{% endfor %}</table>
</div>{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in schemas.items() %}<div id="schema-{{ name }}"><h3>{{ name }}</h3>
{% if schema.description %}<p>{{ prose(schema.description) }}</p>{% endif %}
{% if schema.properties %}<table><tr><th>field</th><th>type</th><th>about</th></tr>
{% for field, prop in schema.properties.items() %}<tr><td><code>{{ field }}</code>{% if field in (schema.required or []) %} <span class="req">required</span>{% endif %}</td>
<td>{{ type_of(prop) }}</td><td>{{ prose(prop.description) }}</td></tr>{% endfor %}</table>
{% if schema.additionalProperties == false %}<p>Other fields are refused.</p>{% endif %}{% endif %}</div>
{% endfor %}
</body></html>
"""
