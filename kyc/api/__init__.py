"""HTTP API: thin blueprints that parse, call the domain, and answer.

Every /v1 route except /v1/webhooks/* requires `Authorization: Bearer <api key>`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from kyc.errors import ApiError, invalid
from kyc.ops import errors as ops_errors
from kyc.ops.keys import authenticate, may_call, roles_for
from kyc.runtime import Runtime
from kyc.security import contains_card_number

M = TypeVar("M", bound=BaseModel)

v1 = Blueprint("v1", __name__, url_prefix="/v1")


def runtime() -> Runtime:
    return current_app.extensions["kyc"]


@v1.before_request
def _authenticate() -> None:
    if request.path.startswith("/v1/webhooks/"):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    token = token.strip()
    rt = runtime()
    if rt.config.dev_key and token == rt.config.dev_key:
        g.api_key, g.api_role = "development", "admin"
        return
    # A plain connection and a prebuilt statement: this runs before every request, the
    # gateway's entitlement calls included. On PostgreSQL, autocommit: one round trip, not
    # BEGIN, SELECT and the ROLLBACK that hands the connection back (SQLite has no round trips,
    # and switching its connection's mode costs more than the read).
    with rt.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        caller = authenticate(conn, token)
    if caller is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    g.api_key, g.api_role = caller.name, caller.role
    rule = request.url_rule
    if rule is not None and not may_call(caller.role, request.method, rule.rule):
        raise ApiError(403, "forbidden", f"a key with the role {caller.role} may not call {request.method} {rule.rule}; "
                                         f"roles that may: {', '.join(roles_for(request.method, rule.rule))}")


def read_json(limit: int | None = None) -> Any:
    """The request body as JSON, refusing what the contract refuses before anything else runs.
    `limit`: the largest body accepted, when the endpoint accepts more than KYC_MAX_BODY_BYTES."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON with Content-Type: application/json")
    limit = limit or runtime().config.max_body_bytes
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    if contains_card_number(data):
        # Never echoed, stored or logged: the message does not say where or what it was.
        raise ApiError(400, "card_number_refused",
                       "the body contains a full card number; send the processor's fingerprint, bin and last4 only")
    return data


def _not_json(constant: str) -> None:
    # Python's json reads NaN and Infinity, which JSON does not have (and no field accepts).
    raise ValueError(f"{constant} is not a JSON value")


def parse(model: type[M], data: Any = None, *, limit: int | None = None) -> M:
    data = read_json(limit) if data is None else data
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid("the request has invalid fields", field_errors(exc)) from None


def field_errors(exc: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        name = field_name(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "unknown field; free-form data goes in metadata"
        elif err["type"] == "missing":
            message = "required"
        else:
            message = err["msg"].removeprefix("Value error, ")
        fields.setdefault(name, message)
    return fields


def field_name(loc: tuple) -> str:
    """A field's name in an error: dotted, list positions in brackets (reports[3].requests)."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"


def register(app: Flask) -> None:
    from kyc.api import (  # noqa: F401 - routes register on v1
        accounts, activity, audit, clusters, ops, payment_methods, reviews, signups, tiers, verifications, webhooks)

    app.register_blueprint(v1)

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response = jsonify(exc.body())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    # Domain errors of kyc/ops, mapped to HTTP here only.
    @app.errorhandler(ops_errors.AccountNotFound)
    def _account_not_found(exc):
        return _api_error(ApiError(404, "not_found", "account not found"))

    @app.errorhandler(ops_errors.ClusterNotFound)
    def _cluster_not_found(exc):
        return _api_error(ApiError(404, "not_found", "cluster not found"))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}
        return _api_error(ApiError(exc.code or 500, codes.get(exc.code, "http_error"), exc.description or exc.name))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _api_error(ApiError(500, "internal_error", "internal error; nothing was changed"))
