"""Storage: SQLAlchemy 2.0 typed models. Every schema change goes through migrations/."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from kyc.db import Base

DECISIONS = ("allow", "verify", "review", "block")
SEVERITY = {d: i for i, d in enumerate(DECISIONS)}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Account(Base):
    """The caller's account as kyc currently judges it (the latest evaluation wins)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    required_verifications: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_evaluation_id: Mapped[str | None] = mapped_column(String(40))
    # The latest evaluation of each subject (signup, payment_method); the account's decision
    # is the most severe of them. {subject: {evaluation_id, occurred_at, decision, score, ...}}
    subjects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cluster_id: Mapped[str | None] = mapped_column(String(40), index=True)
    label: Mapped[str | None] = mapped_column(String(16))
    # Bumped on every change that can alter an entitlement; gateways cache on it (ETag).
    state_version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_accounts_last_seen_at", "last_seen_at"),)


class Evaluation(Base):
    """One scoring of one subject, kept forever with everything that produced it."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    subject: Mapped[str] = mapped_column(String(32))          # signup | payment_method
    trigger: Mapped[str] = mapped_column(String(32))          # live | rescore
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    signals: Mapped[dict[str, Any]] = mapped_column(JSON)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[int] = mapped_column(Integer)
    required_verifications: Mapped[list[str]] = mapped_column(JSON)
    rules_version: Mapped[str] = mapped_column(String(80))

    __table_args__ = (
        Index("ix_evaluations_occurred_at", "occurred_at"),
        Index("ix_evaluations_account_occurred", "account_id", "occurred_at"),
    )


class Sighting(Base):
    """An identifier (keyed hash, never the raw value) seen on an account at an event time.

    The basis of velocity counters (distinct accounts per identifier in a window) and of
    linking accounts that share infrastructure.
    """

    __tablename__ = "sightings"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    value_hash: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    evaluation_id: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_sightings_key_time", "kind", "value_hash", "occurred_at"),
        Index("ix_sightings_account", "account_id"),
    )


class ApiKey(Base):
    """An API key. Only its SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))           # shown in listings to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)
