"""The ops console at /console: server-rendered pages over the same services as the API.

Who may enter: a person signs in with an API key of role `ops` or `admin` (the key is checked
once, then a signed session cookie carries the key's hash (what the database stores, never the key); every request re-reads the key, so a
revoked key or a changed role takes effect at once), or a tool sends the same key as
`Authorization: Bearer`. Every state-changing form carries the session's CSRF token.

Nothing here decides anything: reviews and cluster actions call kyc.ops' services, the same
functions the API calls. PII is shown masked, as the API's logs mask it (kyc.security).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from flask import Blueprint, Flask, abort, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from kyc.ops.keys import caller_for_hash
from kyc.security import hash_api_key

console = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                    static_folder="static", static_url_path="/static")

CONSOLE_ROLES = ("ops", "admin")
SESSION_HOURS = 8
_OPEN_ENDPOINTS = {"console.login", "console.static"}


def runtime():
    return current_app.extensions["kyc"]


def register(app: Flask) -> None:
    # The session cookie is signed with a key derived from the runtime's secret, never the
    # secret itself (that one keys the linking hashes).
    app.secret_key = hmac.new(runtime_secret(app), b"kyc console session", hashlib.sha256).hexdigest()
    app.config.update(SESSION_COOKIE_NAME="kyc_console", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/console",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))
    app.session_interface = ConsoleSessions()
    from kyc.ops.console import pages  # noqa: F401 - routes register on the blueprint

    app.register_blueprint(console)


class ConsoleSessions(SecureCookieSessionInterface):
    """The console's signed cookie session.

    Opened under /console only (its cookie's path): the API authenticates by API key and never
    reads a session, and opening one (a signing serializer built per request) was 7% of an
    entitlement check's CPU in process. Its cookie is marked Secure whenever the console was
    reached over HTTPS (directly, or through a proxy the WSGI server trusts for
    X-Forwarded-Proto, as gunicorn's forwarded_allow_ips does): it stands for an ops key and
    must never travel in clear. Plain HTTP (`kyc serve` on a laptop) keeps working."""

    def open_session(self, app: Flask, request):
        if not request.path.startswith(console.url_prefix + "/") and request.path != console.url_prefix:
            return self.make_null_session(app)
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def runtime_secret(app: Flask) -> bytes:
    return app.extensions["kyc"].config.secret_key


# --- who is calling -----------------------------------------------------------------------------

def bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@console.before_request
def _require_caller() -> Any:
    if request.endpoint in _OPEN_ENDPOINTS:
        return None
    token = bearer_token()
    if token is not None:
        caller = caller_for_token(token)
        if caller is None:
            return _error_page(401, "Unauthorized", "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
        if caller["role"] not in CONSOLE_ROLES:
            abort(403, f"the key's role is {caller['role']}; the console needs ops or admin")
        g.console_caller, g.console_bearer = caller, True
        return None
    key_hash = session.get("key_hash")
    caller = caller_for_key_hash(key_hash) if key_hash else None
    if caller is None or caller["role"] not in CONSOLE_ROLES:
        session.clear()
        return redirect(url_for("console.login", next=request.full_path if request.method == "GET" else None))
    g.console_caller, g.console_bearer = caller, False
    if request.method == "POST":
        check_csrf()
    return None


# Pages only load what this console serves; no other site may frame them (a framed page could
# trick a person's two clicks), and none is kept in a cache or sent on as a referrer.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@console.after_request
def _page_headers(response):
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def check_csrf() -> None:
    """A POST from the session must carry the session's token (a form of another site cannot)."""
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form has expired or did not come from this console; reload the page and try again")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@console.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "caller": g.get("console_caller")}


# --- keys --------------------------------------------------------------------------------------

def caller_for_token(token: str) -> dict[str, Any] | None:
    return caller_for_key_hash(hash_api_key(token))


def caller_for_key_hash(key_hash: str) -> dict[str, Any] | None:
    """The active key with this hash as {name, role, key_hash}, or None (revoked or unknown).
    The development key (KYC_DEV_KEY) is admin, as the API takes it."""
    rt = runtime()
    if rt.config.dev_key and hmac.compare_digest(key_hash, hash_api_key(rt.config.dev_key)):
        return {"name": "development", "role": "admin", "key_hash": key_hash}
    with rt.engine.connect() as conn:
        caller = caller_for_hash(conn, key_hash)
    return None if caller is None else {"name": caller.name, "role": caller.role, "key_hash": key_hash}


# --- errors as pages ---------------------------------------------------------------------------

@console.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return _error_page(exc.code or 500, exc.name, exc.description)


def _error_page(status: int, title: str, message: str | None, headers: dict[str, str] | None = None):
    return render_template("console/error.html", status=status, title=title, message=message), status, headers or {}


# --- template filters -------------------------------------------------------------------------

def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@console.app_template_filter("when")
def _when(value: Any) -> str:
    at = _as_datetime(value)
    return "-" if at is None else at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@console.app_template_filter("ago")
def _ago(value: Any) -> str:
    at = _as_datetime(value)
    if at is None:
        return "-"
    seconds = max((datetime.now(timezone.utc) - at).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


@console.app_template_filter("num")
def _num(value: Any) -> str:
    # PostgreSQL's SUM of a bigint is a Decimal.
    return f"{int(value):,}" if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else str(value)


@console.app_template_filter("changed")
def _changed(value: Any) -> str:
    """What new evidence put a decided account back in the queue, in a line."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                         for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


@console.errorhandler(Exception)
def _unexpected(exc: Exception):
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return render_template("console/error.html", status=500, title="Something went wrong",
                           message="Nothing was changed. The error is in the service's log."), 500
