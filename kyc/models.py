"""Storage: SQLAlchemy 2.0 typed models. Every schema change goes through migrations/."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        literal_column, text)
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
    # The latest evaluation of each subject (signup; payment methods one slot per card, keyed
    # "payment_method:<card hash>"); the account's decision is the most severe of them.
    # {slot: {subject, evaluation_id, occurred_at, decision, score, ...}}
    subjects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label: Mapped[str | None] = mapped_column(String(16))
    # Bumped on every change that can alter an entitlement; gateways cache on it (ETag).
    state_version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # A person's decision standing over the rules (a review, a cluster action, a label), with
    # what they saw when they made it; or, once new evidence reopened it, what changed
    # (kyc/ops/standing.py). None: the rules decide alone.
    override: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Held at review with no person's decision since then: the review queue, oldest first.
    review_since: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_accounts_last_seen_at", "last_seen_at"),
                      Index("ix_accounts_review_since", "review_since"))


def latest_of(subjects: dict[str, Any] | None, subject: str) -> dict[str, Any] | None:
    """The latest entry of `subject` in Account.subjects; for payment methods, which hold one
    slot per card, the most recently evaluated card."""
    entries = [e for slot, e in (subjects or {}).items() if e.get("subject", slot) == subject]
    return max(entries, key=lambda e: datetime.fromisoformat(e["occurred_at"]), default=None)


class Evaluation(Base):
    """One scoring of one subject, kept forever with everything that produced it."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    subject: Mapped[str] = mapped_column(String(32))          # signup | payment_method
    trigger: Mapped[str] = mapped_column(String(32))          # live | rescore | usage (kyc.scoring.pipeline.AGAIN)
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
        # A usage re-evaluation keeps its event's time but reads the facts of when it was made:
        # the backtest windows those by created_at (kyc/backtest.py). Partial: live inserts pay nothing.
        Index("ix_evaluations_usage_created", "created_at", "id", postgresql_where=text("trigger = 'usage'"),
              sqlite_where=text("trigger = 'usage'")),
    )


# The kinds velocity counts (kyc.signals.velocity.VELOCITY_KEYS; a test holds the two equal), the
# only sightings read by their key (ix_sightings_key_time holds them alone).
VELOCITY_KINDS = ("asn", "card_bin", "card_fingerprint", "device", "email", "email_domain", "email_template", "ip",
                  "ip_prefix", "phone_range")
VELOCITY_SIGHTINGS = "kind IN ({})".format(", ".join(f"'{kind}'" for kind in VELOCITY_KINDS))


def velocity_kind(kind_column):
    """`kind_column` IN VELOCITY_KINDS, written as constants: a statement that reads sightings by
    their key states it, so that the planners (a generic plan on PostgreSQL, which does not know
    its parameters) may read them through ix_sightings_key_time, which holds no other kind."""
    return kind_column.in_([literal_column(f"'{kind}'") for kind in VELOCITY_KINDS])


class Sighting(Base):
    """An identifier (keyed hash, never the raw value) seen on an account at an event time.

    The basis of velocity counters (distinct accounts per identifier in a window) and of
    linking accounts that share infrastructure.
    """

    __tablename__ = "sightings"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    value_hash: Mapped[str] = mapped_column(String(32))
    # No foreign key: see ActivityDay.account_id.
    account_id: Mapped[str] = mapped_column(String(128))
    evaluation_id: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Velocity kinds only: nothing reads another kind by its key (linking reads the graph's
        # nodes; a rebuild scans them all), and 4 of an activity report's 6 sightings are of
        # linking kinds (its API key, its templates, its network that day), each an insertion
        # for nothing (migration 0019 has the figure). Its readers state VELOCITY_SIGHTINGS.
        Index("ix_sightings_key_time", "kind", "value_hash", "occurred_at",
              postgresql_where=text(VELOCITY_SIGHTINGS), sqlite_where=text(VELOCITY_SIGHTINGS)),
        # Cards added from one device (values seen together in one evaluation) and cards added
        # to one account in a window. Both lead with the column that narrows most, so SQLite's
        # planner (which has no statistics) picks them over ix_sightings_key_time. The second
        # serves every lookup by account, all of velocity kinds (the cards on an account, the
        # keys an evaluation counted, what linking finds sighted that day): it holds those only,
        # as ix_sightings_key_time does, and its readers state VELOCITY_SIGHTINGS (migration 0021).
        Index("ix_sightings_evaluation_kind", "evaluation_id", "kind"),
        Index("ix_sightings_account_kind_time", "account_id", "kind", "occurred_at",
              postgresql_where=text(VELOCITY_SIGHTINGS), sqlite_where=text(VELOCITY_SIGHTINGS)),
    )


class VelocityMark(Base):
    """The latest event time at which an account showed a velocity key (SQL velocity backend).

    One row per (key, account): counting distinct accounts in a window is an index range scan,
    capped (kyc/store.py), so a super-hot key such as gmail.com costs the same as a quiet one.
    """

    __tablename__ = "velocity_marks"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # account_id carried in the index (PostgreSQL): a velocity count reads the index alone
    # (migration 0013 has the figure).
    __table_args__ = (Index("ix_velocity_marks_key_time", "kind", "value_hash", "last_at",
                            postgresql_include=["account_id"]),)


class GraphNode(Base):
    """A linking identifier (keyed hash) and how many accounts share it.

    A node shared by more accounts than its kind's threshold is a super-node (carrier NAT,
    university network): it stops linking accounts, while velocity still counts it.
    """

    __tablename__ = "graph_nodes"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    accounts: Mapped[int] = mapped_column(Integer, default=0)
    super_node: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GraphEdge(Base):
    """An account holds a linking identifier (derived from its sightings)."""

    __tablename__ = "graph_edges"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = (Index("ix_graph_edges_account", "account_id"),)


# Member traits a cluster counts, kept on the membership row so merges and splits add up.
MEMBER_FLAGS = ("blocked", "labeled_fraud", "disposable", "voip", "hosting", "headless")


class Cluster(Base):
    """Accounts linked by shared identifiers: a connected component of the identity graph."""

    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)      # earliest member event time
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    blocked: Mapped[int] = mapped_column(Integer, default=0)
    labeled_fraud: Mapped[int] = mapped_column(Integer, default=0)
    disposable: Mapped[int] = mapped_column(Integer, default=0)
    voip: Mapped[int] = mapped_column(Integer, default=0)
    hosting: Mapped[int] = mapped_column(Integer, default=0)
    headless: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_clusters_size", "size"),)


class ClusterMember(Base):
    """An account's place in a cluster and the traits its cluster counts."""

    __tablename__ = "cluster_members"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(String(40))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)          # the account's first event time
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    labeled_fraud: Mapped[bool] = mapped_column(Boolean, default=False)
    disposable: Mapped[bool] = mapped_column(Boolean, default=False)
    voip: Mapped[bool] = mapped_column(Boolean, default=False)
    hosting: Mapped[bool] = mapped_column(Boolean, default=False)
    headless: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_cluster_members_cluster_joined", "cluster_id", "joined_at"),)


class AccountLabel(Base):
    """Ops feedback on an account (fraud | legit), kept as history; the latest is on the account."""

    __tablename__ = "account_labels"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    label: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(64))            # the API key's name
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key. Only its SHA-256 is stored; the key itself is shown once, at creation.
    Its role says which routes it may call (kyc/ops/keys.py)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))           # shown in listings to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")  # signup | gateway | ops | admin


_AUTO_ID = BigInteger().with_variant(Integer, "sqlite")



class Verification(Base):
    """One verification of one kind on one account: pending -> verified | failed | expired.

    Codes are never stored, only their HMAC (code_hash). `target` is the email or phone the
    code goes to (needed to resend); `target_hash` its keyed hash, to find a number verified
    on another account without reading PII.
    """

    __tablename__ = "verifications"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))             # email | phone | document | payment
    status: Mapped[str] = mapped_column(String(16), default="pending")
    target: Mapped[str | None] = mapped_column(String(320))
    target_hash: Mapped[str | None] = mapped_column(String(32))
    line_type: Mapped[str | None] = mapped_column(String(32))  # phone only
    code_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)           # the provider's or kyc's reason for the outcome

    __table_args__ = (
        Index("ix_verifications_account_kind_status", "account_id", "kind", "status"),
        Index("ix_verifications_target", "kind", "target_hash", "status"),
    )


class PhoneClaim(Base):
    """The account that verified a phone number first: one row per number (keyed hash), so two
    accounts confirming one number at the same moment cannot both have it (KYC_PHONE_UNIQUE).
    The primary key is the constraint; a check-then-write would let both through."""

    __tablename__ = "phone_claims"

    target_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    verification_id: Mapped[str] = mapped_column(String(40))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VerificationEvent(Base):
    """The audit trail: every state change and attempt of a verification, append-only."""

    __tablename__ = "verification_events"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    verification_id: Mapped[str] = mapped_column(ForeignKey("verifications.id"))
    account_id: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(String(32))   # created | sent | attempt_failed | verified | failed | expired
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_verification_events_verification", "verification_id", "id"),)


class OutboxMessage(Base):
    """A code message written by the default sender, for a relay to deliver (or a developer to read)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    verification_id: Mapped[str] = mapped_column(ForeignKey("verifications.id"))
    channel: Mapped[str] = mapped_column(String(16))        # email | sms
    recipient: Mapped[str] = mapped_column(String(320))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEvent(Base):
    """Every provider event id accepted once; a second delivery of the same id is a replay."""

    __tablename__ = "webhook_events"

    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    verification_id: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ActivityDay(Base):
    """Usage reported by the gateway, one row per account and UTC day: the day's totals, which
    the usage signals read (kyc/signals/usage.py), so a signal costs one row read.

    What the day's first report learns about the account's past is kept with the row (dormancy,
    trailing baseline, first use), so nothing later needs the older days again.
    """

    __tablename__ = "activity_days"

    # No foreign key to accounts (nor on activity_reports and sightings): each row is written
    # with its account's row locked (an activity batch naming an unknown account is refused
    # whole: kyc.usage.reports.record_reports), and no account is ever deleted, so a check per
    # row proved nothing (migration 0020 has its cost).
    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Whole days without activity before this day's first report: the dormancy it ended.
    dormant_days: Mapped[int] = mapped_column(Integer, default=0)
    last_ip_hash: Mapped[str | None] = mapped_column(String(32))
    refused: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    # Requests per UTC hour of the day (24 numbers; a report's window spread over the hours it covers).
    hours: Mapped[list[int] | None] = mapped_column(JSON)
    # Request-weighted interval_cv: the sum of cv x requests over the reports that gave one, and their requests.
    cv_sum: Mapped[float] = mapped_column(Float, default=0.0)
    cv_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    models: Mapped[dict[str, int] | None] = mapped_column(JSON)              # model -> requests
    fingerprints: Mapped[dict[str, int] | None] = mapped_column(JSON)        # keyed hash -> requests (top 100)
    tier: Mapped[str | None] = mapped_column(String(64))                     # the latest report's tier
    # Read when the day's first report arrives: mean requests per day over the trailing
    # BASELINE_DAYS days since first use (days without activity count 0), how many days that
    # mean covers, and the account's first use of the API.
    baseline: Mapped[float] = mapped_column(Float, default=0.0)
    history_days: Mapped[int] = mapped_column(Integer, default=0)
    first_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The day of the account's latest wake (a day whose first report ended a dormancy longer than
    # KYC_DORMANT_DAYS, or was its first use AGED_FIRST_USE_DAYS or more after signup:
    # kyc.usage.lockstep), carried forward by each new day: lockstep counts an account as woken for
    # that day and the next (kyc.usage.lockstep.WOKE_WITHIN), so a farm waking in the last hour of a
    # UTC day is still a group that woke together after midnight. None: never woke.
    woke_on: Mapped[date | None] = mapped_column(Date)
    # The networks (/24, /64) the day's reports came from, as a set of NETWORK_BUCKETS buckets, each
    # network's keyed hash to one bit (kyc.usage.reports.network_bit): a bounded, hashed count of how
    # many networks the account used that day (usage.networks_today), merged by OR; no address kept.
    networks: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    # The first day of usage kyc holds, read by lockstep (kyc/usage/lockstep.py: where kyc began
    # watching). min(day) through it: 0.07 ms; the index costs a new day's row about 0.5 us more
    # to insert (100,000 rows a statement, 4.7 us a row without it; PostgreSQL 15).
    __table_args__ = (Index("ix_activity_days_day", "day"),)


class ActivityReport(Base):
    """One report of the API gateway, as sent, identifiers as keyed hashes (never in clear)."""

    __tablename__ = "activity_reports"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128))              # no foreign key: see ActivityDay
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    window_seconds: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(BigInteger)
    refused: Mapped[int | None] = mapped_column(BigInteger)
    ip_hash: Mapped[str | None] = mapped_column(String(32))
    api_key_hash: Mapped[str | None] = mapped_column(String(32))
    tier: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(1024))
    tokens_in: Mapped[int | None] = mapped_column(BigInteger)
    tokens_out: Mapped[int | None] = mapped_column(BigInteger)
    models: Mapped[dict[str, int] | None] = mapped_column(JSON)
    prompt_fingerprints: Mapped[dict[str, int] | None] = mapped_column(JSON)   # keyed hash -> requests
    interval_cv: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # No index besides the primary key: nothing reads reports by account, and an index cost
    # each report an insertion (migration 0018 has the figure).


class IdempotentAnswer(Base):
    """kyc's answer to a call sent with an Idempotency-Key (kyc/idempotency.py), kept a day: the
    same call sent again is answered with it and changes nothing. `key_hash`: keyed hash of the
    caller, the route and the key; `body_hash`: digest of the validated body it answered."""

    __tablename__ = "idempotent_answers"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    answer: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class PendingLink(Base):
    """Identifiers activity reports showed, not linked into the identity graph yet: an earlier
    release wrote one row per report transaction and linked it after the commit; reports now link
    in their own transaction, and rows it left are linked (and deleted) by
    kyc.usage.identifiers.link_pending.
    `shown`: [account id, kind, keyed hash, first time shown (RFC 3339)] rows."""

    __tablename__ = "pending_links"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    shown: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RescoreAsk(Base):
    """Rescoring a committed transaction asked for, written in that transaction (kyc.rescore.requests)
    and turned into a rescore run, and deleted, by kyc.rescore.background.settle_asks: a process
    killed between the commit and the run leaves the row for the next one.
    `accounts`: account ids; `clusters`: cluster id -> the member whose scoring asked (left out) or null."""

    __tablename__ = "rescore_asks"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    accounts: Mapped[list] = mapped_column(JSON)
    clusters: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PromptUse(Base):
    """An account used a prompt template (keyed hash of the gateway's fingerprint) on a UTC day,
    in these hours (bit h = UTC hour h): what lockstep detection compares (kyc/usage/lockstep.py)."""

    __tablename__ = "prompt_uses"

    value_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hours: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_prompt_uses_account_day", "account_id", "day"),)


class PromptDay(Base):
    """How many accounts used a prompt template on a UTC day, and how many of them began on it
    that day (their first use of it ever): its popularity. A template many accounts used, most of
    them for days already (a popular tool's system prompt), says nothing about who acts together;
    one a burst of newcomers took up (a farm set going on its templates) says the most."""

    __tablename__ = "prompt_days"

    value_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    accounts: Mapped[int] = mapped_column(Integer, default=0)
    began: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PromptStart(Base):
    """The UTC day an account began on a prompt template (its first use kept): a farm's accounts
    begin on their shared templates together, a tool's users adopt it over weeks
    (kyc/usage/lockstep.py, usage.lockstep_began_together)."""

    __tablename__ = "prompt_starts"

    value_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date)


class RescoreRun(Base):
    """One rescoring request (dormant, all, a cluster, since a rules change, or given ids).

    The run and its batches live in the database, not in the queue, so progress survives a
    killed worker or a flushed Redis, and `kyc jobs` can summarise it from committed facts.
    """

    __tablename__ = "rescore_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    selector: Mapped[str] = mapped_column(String(32))       # dormant | all | cluster | rules_change | ids
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text)
    rules_version: Mapped[str] = mapped_column(String(80))  # rules on disk when the run was started
    total: Mapped[int] = mapped_column(Integer)             # accounts selected
    batches: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_rescore_runs_selector_created", "selector", "created_at"),)


class RescoreBatch(Base):
    """A slice of a run's accounts, worked by one job.

    `cursor` counts the leading account_ids already rescored; it is advanced in the same
    transaction that stores their evaluations, so a job killed mid-batch resumes exactly
    where the last commit left it and never rescores a committed account twice.
    """

    __tablename__ = "rescore_batches"

    run_id: Mapped[str] = mapped_column(ForeignKey("rescore_runs.id"), primary_key=True)
    batch_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_ids: Mapped[list[str]] = mapped_column(JSON)
    cursor: Mapped[int] = mapped_column(Integer, default=0)
    # {"allow>block": 3, ...}: old -> new account decision of every account rescored so far.
    changes: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    escalated: Mapped[int] = mapped_column(Integer, default=0)   # new decision more severe
    held: Mapped[int] = mapped_column(Integer, default=0)        # block kept although the rescore relaxed it
    missing: Mapped[int] = mapped_column(Integer, default=0)     # account gone since selection
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # The batches no job has begun (kyc.rescore.background.settle_asks leaves out what they will
    # rescore anyway): few, among every batch ever worked.
    __table_args__ = (Index("ix_rescore_batches_unstarted", "run_id", postgresql_where=text("started_at IS NULL"),
                            sqlite_where=text("started_at IS NULL")),)


class AuditEvent(Base):
    """Who or what changed something ops care about: a decision (the rules of a version, a
    reviewer's key, a cluster action), the rules, an API key. Append-only."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))        # "key:<name>", "rules:<version>", "cli:<user>"
    action: Mapped[str] = mapped_column(String(32))        # decision.changed | account.reviewed | ...
    account_id: Mapped[str | None] = mapped_column(String(128))
    cluster_id: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_audit_events_account", "account_id", "id"),
        Index("ix_audit_events_cluster", "cluster_id", "id"),
        Index("ix_audit_events_action", "action", "id"),
    )


class DecisionWebhook(Base):
    """A decision change to push to the gateway (the outbox), written in the transaction that
    made the change. `body` is the exact bytes sent (and signed) on every attempt, so a retry
    never sends different content; `event_id` lets the receiver drop a repeat."""

    __tablename__ = "decision_webhooks"

    id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    account_id: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Due time of the next attempt; while an attempt is under way, the end of its lease.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_decision_webhooks_pending", "delivered_at", "id"),)


def lock_existing_account(session, account_id: str) -> Account:
    """The account row, locked for this transaction (SQLite: the database write lock), or NotFound."""
    from sqlalchemy import select

    from kyc.db import write_lock
    from kyc.errors import NotFound

    write_lock(session)
    account = session.execute(
        select(Account).where(Account.id == account_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if account is None:
        raise NotFound("account", account_id)
    return account
