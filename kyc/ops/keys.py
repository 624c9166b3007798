"""Scoped API keys: each key has one role, and the role says which routes it may call.

    signup   scoring signups and payment methods, verifications (the signup flow)
    gateway  entitlement checks and activity reports (the API gateway)
    ops      every read, labels, reviews, cluster actions, rules reload (ops staff, the console)
    admin    everything

So a leaked signup-flow key cannot label, review, act on clusters or reload rules. Keys made
before roles existed were migrated to admin, so nothing that worked stops working. Every key
created or revoked is an audit event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from kyc.models import ApiKey
from kyc.ops import audit
from kyc.errors import NotFound, UnknownRole
from kyc.persist import fetch
from kyc.security import hash_api_key, new_api_key

ROLES = ("signup", "gateway", "ops", "admin")

SIGNUP, GATEWAY, OPS = frozenset({"signup"}), frozenset({"gateway"}), frozenset({"ops"})

# (method, Flask URL rule) -> roles besides admin that may call it. A GET not listed is a read,
# open to ops; any other route not listed is admin's only, so a new write route is closed to
# scoped keys until it is given its roles here.
ROUTE_ROLES: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/signups"): SIGNUP,
    ("POST", "/v1/payment-methods"): SIGNUP,
    ("POST", "/v1/accounts/<account_id>/verifications"): SIGNUP,
    ("POST", "/v1/verifications/<verification_id>/confirm"): SIGNUP,
    ("GET", "/v1/verifications/<verification_id>"): SIGNUP | OPS,
    ("GET", "/v1/accounts/<account_id>/entitlement"): GATEWAY | OPS,
    ("POST", "/v1/accounts/<account_id>/activity"): GATEWAY,
    ("POST", "/v1/activity"): GATEWAY,
    ("POST", "/v1/accounts/<account_id>/labels"): OPS,
    ("POST", "/v1/accounts/<account_id>/review"): OPS,
    ("POST", "/v1/clusters/<cluster_id>/actions"): OPS,
    ("POST", "/v1/ops/rules/reload"): OPS,
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name (recorded with what it changes) and its role."""

    name: str
    role: str


def may_call(role: str, method: str, rule: str) -> bool:
    """Whether a key of `role` may call the route `rule` (Flask's URL rule) with `method`."""
    if role == "admin":
        return True
    method = "GET" if method == "HEAD" else method
    allowed = ROUTE_ROLES.get((method, rule))
    if allowed is None:
        return role == "ops" and method == "GET"
    return role in allowed


def roles_for(method: str, rule: str) -> list[str]:
    """The roles that may call a route (for the 403 message)."""
    return [role for role in ROLES if may_call(role, method, rule)]


_ACTIVE_KEY = select(ApiKey.name, ApiKey.role).where(ApiKey.key_hash == bindparam("key_hash"),
                                                     ApiKey.revoked_at.is_(None))


# Active keys as read, for KEY_CACHE_SECONDS: the key read was a third of the gateway's
# entitlement check. Only active keys are kept (a new key works at once; an unknown or revoked
# one is read every time). A revocation through revoke_key drops the key here at once; one made
# in another process (`kyc keys revoke` beside the server's workers) or straight in the
# database is honoured by every worker within KEY_CACHE_SECONDS.
KEY_CACHE_SECONDS = 2.0
_ACTIVE: dict[str, tuple[Caller, float]] = {}


def authenticate(conn_for, token: str) -> Caller | None:
    """The active key `token` is, or None. `conn_for`: a callable giving a connection context,
    opened only when the key is not among those read in the past KEY_CACHE_SECONDS."""
    key_hash = hash_api_key(token)
    held = _ACTIVE.get(key_hash)
    now = time.monotonic()
    if held is not None and held[1] > now:
        return held[0]
    with conn_for() as conn:
        caller = caller_for_hash(conn, key_hash)
    if caller is None:
        _ACTIVE.pop(key_hash, None)
    else:
        _ACTIVE[key_hash] = (caller, now + KEY_CACHE_SECONDS)
    return caller


def forget_cached_keys() -> None:
    """Drop every key read (revoke_key does; so do tests that revoke keys in the database)."""
    _ACTIVE.clear()


def caller_for_hash(conn: Connection, key_hash: str) -> Caller | None:
    """The active key whose SHA-256 is `key_hash` (a console session keeps the hash, never the
    key), or None once it is revoked."""
    rows = fetch(conn, _ACTIVE_KEY, {"key_hash": key_hash})
    return Caller(*rows[0]) if rows else None


def create_key(session: Session, name: str, role: str, actor: str) -> tuple[ApiKey, str]:
    """A new key for `role`: the row (its hash only) and the key itself, to show once."""
    if role not in ROLES:
        raise UnknownRole(role, ROLES)
    plaintext = new_api_key()
    key = ApiKey(name=name, role=role, prefix=plaintext[:10], key_hash=hash_api_key(plaintext))
    session.add(key)
    session.flush()
    audit.record(session, "key.created", actor, detail={"key_id": key.id, "name": name, "role": role,
                                                         "prefix": key.prefix})
    return key, plaintext


def revoke_key(session: Session, key_id: int, actor: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("API key", key_id)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(timezone.utc)
        _ACTIVE.pop(key.key_hash, None)
        audit.record(session, "key.revoked", actor, detail={"key_id": key.id, "name": key.name, "role": key.role,
                                                             "prefix": key.prefix})
    return key
