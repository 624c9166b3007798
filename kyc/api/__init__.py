"""HTTP API: thin blueprints that parse, call the domain, and answer.

Every /v1 route except /v1/webhooks/* requires `Authorization: Bearer <api key>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from kyc.api import guard
from kyc.api.errors import ApiError, answer, invalid
from kyc.errors import DomainError
from kyc.inputs import field_errors
from kyc.ops.keys import authenticate, may_call, roles_for
from kyc.runtime import Runtime

M = TypeVar("M", bound=BaseModel)

v1 = Blueprint("v1", __name__, url_prefix="/v1")

# Values a field takes from what this kyc runs with, not from code: its schema names them
# (json_schema_extra={VALUES: "tiers"}) and the OpenAPI document lists them as its enum
# (kyc.api.openapi.runtime_values), so that what the document allows is what the route accepts.
VALUES = "x-kyc-values"


def runtime() -> Runtime:
    return current_app.extensions["kyc"]


@v1.before_request
def _authenticate() -> None:
    # This runs before every request, the gateway's calls included: the request, the app and g
    # are each looked up once (a lookup through Flask's proxies costs about 0.5 us).
    req, app, ctx_g = request._get_current_object(), current_app._get_current_object(), g._get_current_object()
    view = app.view_functions.get(req.endpoint or "")
    operation = getattr(view, "openapi", None)
    if operation is not None and operation.public:
        return                  # webhooks (signed instead) and the API's own documentation
    header = req.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    token = token.strip()
    rt = app.extensions["kyc"]
    if rt.config.dev_key and token == rt.config.dev_key:
        ctx_g.api_key, ctx_g.api_role = "development", "admin"
        return
    # A key read in the past seconds is not read again (kyc/ops/keys.py says how revocation is
    # honoured).
    caller = authenticate(rt.read_connection, token)
    if caller is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    ctx_g.api_key, ctx_g.api_role = caller.name, caller.role
    rule = req.url_rule
    if rule is not None and not may_call(caller.role, req.method, rule.rule):
        raise ApiError(403, "forbidden", f"a key with the role {caller.role} may not call {req.method} {rule.rule}; "
                                         f"roles that may: {', '.join(roles_for(req.method, rule.rule))}")


@v1.url_value_preprocessor
def _account_id_as_stored(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    # Surrounding whitespace is trimmed from an account id in a body (the inputs strip text),
    # so from one in a path too: " acct_1 " names the account stored as "acct_1".
    if values and isinstance(values.get("account_id"), str):
        values["account_id"] = values["account_id"].strip()


def read_json(limit: int | None = None) -> Any:
    """The request body as JSON, refusing what the contract refuses before anything else runs
    (kyc/api/guard.py: size however sent, strict JSON, NUL, lone surrogates, card numbers).
    `limit`: the largest body accepted, when the endpoint accepts more than KYC_MAX_BODY_BYTES."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON with Content-Type: application/json")
    return guard.decode_json(guard.read_body(limit or runtime().config.max_body_bytes))


def parse(model: type[M], data: Any = None, *, limit: int | None = None) -> M:
    data = read_json(limit) if data is None else data
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid("the request has invalid fields", field_errors(exc, model)) from None


def parse_query(model: type[M]) -> M:
    """The query string validated into `model` (lax: "5" is an int; unknown parameters ignored)."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise invalid("the request has invalid query parameters", field_errors(exc)) from None


def respond(model: type[BaseModel], body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Answer with `body` validated against `model`, the response model the OpenAPI document
    shows for this route: a body that does not match its model is an error (500, logged), so
    the document cannot drift from what is served."""
    answer = model.model_validate(body)
    response = current_app.response_class(answer.model_dump_json(exclude_unset=True), status=status,
                                          mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


@dataclass(frozen=True)
class Operation:
    """How a route is documented (kyc/api/openapi.py builds the OpenAPI document from these)."""

    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    public: bool = False                       # no API key (webhooks, probes, the document itself)
    media_type: str = "application/json"       # of the success responses
    tag: str | None = None
    headers: dict[str, str] = field(default_factory=dict)     # request headers: name -> description
    header_schemas: dict[str, dict] = field(default_factory=dict)   # name -> its value's schema (default: a string)


def documented(summary: str, **operation: Any) -> Callable:
    """Document a route; stack it under the Flask route decorator:

        @v1.post("/signups")
        @documented("Score a signup", body=SignupInput, responses={200: Evaluation})
        def score_signup(): ... return respond(Evaluation, body)

    `body` and `query` are the pydantic models the view validates with (parse, parse_query);
    `responses` maps status -> the pydantic model of its body (None: no body); `errors` lists
    the error statuses the route can answer beyond those every route of its kind can (400,
    413 and 415 for a body; 401 unless public). The view's docstring is the description.
    """
    op = Operation(summary, **operation)

    def mark(view: Callable) -> Callable:
        view.openapi = op
        return view

    return mark


class AnyIdConverter(PathConverter):
    """A path segment that may hold '/' anywhere, first and last included (an account id of `/`, or
    `/a`, arrives as `/v1/accounts//`, `/v1/accounts//a`); Werkzeug's path converter wants a first
    character other than '/'."""

    regex = ".+?"
    part_isolating = False      # (Werkzeug infers it from a '/' in the regex, which this one has not)


def register(app: Flask) -> None:
    from kyc.api import (  # noqa: F401 - routes register on v1
        accounts, activity, audit, clusters, monitoring, openapi, ops, payment_methods, reviews, signups, tiers,
        verifications, webhooks)

    # First of all hooks: a card number in the URL or a header is refused before anything reads it.
    app.before_request_funcs.setdefault(None, []).insert(0, guard.check_url_and_headers)
    # An id in a path may hold '/': a caller's account id is any 1-128 characters (the contract),
    # and one with a slash, sent percent-encoded, arrives decoded. (Routes keep their `<name>`
    # form, which the role map, the metrics' route label and the OpenAPI document read.)
    app.url_map.converters["default"] = AnyIdConverter
    # ... so slashes in a path are an id's own: `a//b` is not `a/b` (Werkzeug would merge them and
    # redirect to another account's URL).
    app.url_map.merge_slashes = False
    app.register_blueprint(v1)
    app.register_blueprint(monitoring.probes)
    app.register_blueprint(openapi.reference)

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response = jsonify(exc.body())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    # Every refusal of a service, mapped to HTTP here only (kyc/api/errors.py).
    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        return _api_error(answer(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}
        # The exception's own headers, but its HTML's type: a 405's Allow, which RFC 9110 requires.
        headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
        return _api_error(ApiError(exc.code or 500, codes.get(exc.code, "http_error"), exc.description or exc.name,
                                   headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if database_unavailable(exc):
            # Not a bug: the caller should retry. A connection cut while its commit was under way
            # may or may not have committed, so the answer does not claim nothing was changed.
            current_app.logger.warning("database unavailable on %s %s: %s: %s", request.method, request.path,
                                       exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
            return _api_error(ApiError(503, "database_unavailable",
                                       "the database did not answer; retry after Retry-After seconds",
                                       headers={"Retry-After": str(DATABASE_RETRY_AFTER)}))
        current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _api_error(ApiError(500, "internal_error", "internal error; nothing was changed"))


DATABASE_RETRY_AFTER = 2          # seconds: a restart, a failover or a cut connection is over by then


def database_unavailable(exc: BaseException) -> bool:
    """The database is away or cut the connection (refused, terminated, restarting, pool
    exhausted, a serialisation failure or deadlock to retry, SQLite busy): a 503, not a bug.
    Errors in what was asked (a constraint, a bad statement) are not among them."""
    from sqlalchemy import exc as sa

    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, sa.TimeoutError):             # no pooled connection freed in time
            return True
        if isinstance(exc, sa.DBAPIError):
            if exc.connection_invalidated:
                return True
            exc = exc.orig
            continue
        module = type(exc).__module__
        if module.startswith("psycopg"):
            import psycopg

            # OperationalError: connection refused or lost, admin shutdown, query cancelled,
            # serialisation failure, deadlock. InterfaceError here: the connection is closed.
            return isinstance(exc, psycopg.OperationalError) or (
                isinstance(exc, psycopg.InterfaceError) and "closed" in str(exc))
        if module == "sqlite3":
            return "locked" in str(exc) or "busy" in str(exc)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
