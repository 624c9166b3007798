"""Idempotency keys: a call sent again is answered as the first time and changes nothing.

A gateway that times out on a usage report cannot know whether kyc recorded it; sent again
without a key, its requests would count twice, and an honest heavy user's day could read as
twice its volume. With `Idempotency-Key: <key>` (the activity endpoints; 1-255 visible ASCII
characters, unique per call), the call's answer is kept with its key for KEEP_HOURS, in the
call's own transaction: the same key sent again by the same caller is answered with the kept
answer; sent with another body or to another route it is refused (409), as the key was reused
for another call. Two calls with one key at once: the second waits for the first's commit, then
rolls back what it did and answers as the first.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kyc.errors import IdempotencyKeyReused
from kyc.models import IdempotentAnswer, utcnow
from kyc.persist import dialect_of, keep_answer_statement
from kyc.security import keyed_hash

KEEP_HOURS = 24
MAX_KEY_LENGTH = 255


# What key_problem accepts, as the OpenAPI document states it.
KEY_SCHEMA = {"type": "string", "pattern": f"^[!-~]{{1,{MAX_KEY_LENGTH}}}$"}


def key_problem(key: str) -> str | None:
    """Why `key` is not an idempotency key, or None."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return f"1 to {MAX_KEY_LENGTH} characters"
    if not all("!" <= c <= "~" for c in key):
        return "visible ASCII characters only (no spaces)"
    return None


class Call:
    """One call sent with an idempotency key: who sent it (the key is the caller's own), where and
    what (the route and its validated body)."""

    def __init__(self, secret: bytes, caller: str, route: str, key: str, body: Any):
        self.key_hash = keyed_hash(secret, "idempotency", f"{caller}\n{key}")
        self.body_hash = hashlib.sha256(json.dumps([route, body], sort_keys=True, separators=(",", ":"),
                                                   default=str).encode()).hexdigest()

    def kept(self, session: Session) -> Any | None:
        """The answer kept for this call, or None; IdempotencyKeyReused if the key answered another body."""
        row = session.execute(select(IdempotentAnswer.body_hash, IdempotentAnswer.answer)
                              .where(IdempotentAnswer.key_hash == self.key_hash)).first()
        if row is None:
            return None
        if row.body_hash != self.body_hash:
            raise IdempotencyKeyReused()
        return row.answer

    def keep(self, session: Session, answer: Any) -> bool:
        """Keep `answer` in the caller's transaction; False if a call with this key kept one first
        (this call's transaction must then be rolled back, and answered with kept())."""
        return session.execute(keep_answer_statement(dialect_of(session)), {
            "key_hash": self.key_hash, "body_hash": self.body_hash, "answer": answer,
            "created_at": utcnow()}).first() is not None


def purge(session: Session) -> int:
    """Delete answers kept longer than KEEP_HOURS; how many."""
    return session.execute(delete(IdempotentAnswer).where(
        IdempotentAnswer.created_at < utcnow() - timedelta(hours=KEEP_HOURS))).rowcount
