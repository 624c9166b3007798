"""The response bodies of the API, as pydantic models: what `respond` validates every answer
against, and what the OpenAPI document (kyc/api/openapi.py) describes.

Top-level bodies forbid fields they do not declare: a field added to an answer without its
model makes that answer fail loudly in the tests instead of going undocumented. Nested parts
that are free-form by design (signals, rule-set details) stay open.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["allow", "verify", "review", "block"]
VerificationKind = Literal["email", "phone", "document", "payment"]
Time = str          # RFC 3339 UTC, e.g. 2026-11-24T21:00:00Z (documented as date-time)
TIME = {"format": "date-time"}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Reason(Open):
    """A rule that matched: its score and action. `shadow` hits never move the decision;
    `satisfied` verify hits are met by completed verifications."""

    rule: str
    score: int
    action: Decision
    description: str
    shadow: bool | None = None
    satisfied: bool | None = None


class ClusterRef(Body):
    id: str
    size: int = Field(ge=1)


class Evaluation(Body):
    """A scored signup or payment method."""

    evaluation_id: str
    account_id: str
    subject: Literal["signup", "payment_method"]
    decision: Decision
    score: int = Field(ge=0, le=100)
    reasons: list[Reason]
    required_verifications: list[VerificationKind]
    cluster: ClusterRef | None
    signals: dict[str, dict[str, Any]] = Field(description="Facts by family; every field is in docs/signals.md")
    rules_version: str
    occurred_at: Time = Field(json_schema_extra=TIME)
    degraded: list[str] = Field(description="Signal sources that did not answer in time and were read another "
                                            "way or left missing (e.g. velocity: counted from the database); "
                                            "empty when none")


class EvaluationSummary(Body):
    evaluation_id: str
    subject: str
    trigger: str
    decision: Decision
    score: int
    occurred_at: Time = Field(json_schema_extra=TIME)
    rules_version: str


class Verification(Body):
    verification_id: str
    account_id: str
    kind: VerificationKind
    status: str = Field(description="pending, verified, approved, failed, declined or expired")
    expires_at: Time | None = Field(json_schema_extra=TIME)
    created_at: Time | None = Field(json_schema_extra=TIME)
    completed_at: Time | None = Field(json_schema_extra=TIME)
    to: str | None = Field(None, description="Where the code went, masked (email and phone)")
    attempts_remaining: int | None = None
    line_type: str | None = None
    reason: str | None = None
    provider: str | None = None


class Account(Body):
    """An account's current standing: the most severe latest evaluation of its signup and cards."""

    account_id: str
    decision: Decision
    score: int
    reasons: list[Reason]
    required_verifications: list[VerificationKind]
    verifications: list[Verification]
    cluster: ClusterRef | None
    label: Literal["fraud", "legit"] | None
    override: dict[str, Any] | None = Field(
        description="A person's decision standing over the rules' (review, cluster action, label) and what they "
                    "saw, or what new evidence reopened it; null: the rules decide alone")
    review_since: Time | None = Field(json_schema_extra=TIME, description="Held for review since (null: not in the queue)")
    first_seen_at: Time | None = Field(json_schema_extra=TIME)
    last_seen_at: Time | None = Field(json_schema_extra=TIME)
    state_version: int
    evaluations: list[EvaluationSummary] = Field(description="The latest 20, newest first")


class DeniedBy(Open):
    check: str
    description: str


class Entitlement(Body):
    """Whether the account may use the tier now; the gateway enforces `quota`."""

    account_id: str
    tier: str
    allowed: bool
    decision: Decision
    missing_verifications: list[VerificationKind]
    reasons: list[Reason]
    quota: dict[str, int] = Field(description="e.g. requests_per_day, requests_per_minute")
    denied_by: list[DeniedBy]
    label: Literal["fraud", "legit"] | None
    state_version: int


class Activity(Body):
    account_id: str
    requests_today: int
    decision: Decision = Field(description="The account's decision after this report")
    last_seen_at: Time | None = Field(json_schema_extra=TIME)
    day: str = Field(json_schema_extra={"format": "date"})
    dormant_days: int
    woke_up: bool
    reevaluated: bool = Field(description="The account was evaluated again before this answer: the report made it "
                                          "riskier, or linked it into another cluster")
    rescore_requested: bool


class BulkActivity(Body):
    results: list[Activity] = Field(description="One answer per report, in order")


class SharedIdentifier(Body):
    kind: str
    hash: str
    strength: Literal["strong", "weak"]
    accounts: int


class ClusterMember(Body):
    account_id: str
    decision: Decision
    score: int
    label: Literal["fraud", "legit"] | None
    joined_at: Time | None = Field(json_schema_extra=TIME)
    linked_by: list[str]


class Cluster(Body):
    id: str
    size: int
    growth_24h: int
    first_seen_at: Time | None = Field(json_schema_extra=TIME)
    last_joined_at: Time | None = Field(json_schema_extra=TIME)
    decisions: dict[Decision, int]
    blocked: int
    labeled_fraud: int
    shares: dict[str, float]
    identifiers: list[SharedIdentifier]
    members: list[ClusterMember] | None = None


class Clusters(Body):
    clusters: list[Cluster]


class RulesStatus(Body):
    """The rule set running in the process that answered."""

    version: str
    loaded_at: Time = Field(json_schema_extra=TIME)
    subjects: dict[str, dict[str, int]]
    lists: dict[str, int]
    tiers: dict[str, dict[str, Any]]
    process: int
    checked_at: Time | None = Field(json_schema_extra=TIME)
    last_error: dict[str, Any] | None
    reloaded: bool | None = None


class ReviewEntry(Body):
    account_id: str
    score: int
    reasons: list[Reason]
    cluster: ClusterRef | None
    since: Time | None = Field(json_schema_extra=TIME)
    changed: list[Any] = Field(description="What reopened a person's earlier allow, when that is why it is here")
    state_version: int = Field(description="Send it with the review: if the account changes meanwhile, the review is "
                                           "refused (409 account_changed) rather than recorded as seen")


class Reviews(Body):
    reviews: list[ReviewEntry] = Field(description="Oldest first")


class ClusterActionResult(Body):
    cluster_id: str
    members: int
    changed: int
    kept: int = Field(description="Members a person blocked on their own (a review's block, a fraud label), "
                                  "left as they are")
    audit_event_id: int | None


class AuditEvent(Body):
    id: int
    at: Time = Field(json_schema_extra=TIME)
    actor: str = Field(description="key:NAME, rules:VERSION, cli:USER, ...")
    action: str = Field(description="e.g. decision.changed, account.reviewed, rules.reloaded, key.created")
    account_id: str | None
    cluster_id: str | None
    detail: dict[str, Any] | None


class AuditEvents(Body):
    events: list[AuditEvent]
    next: int | None = Field(description="Pass as `before` for the next page; null on the last")


class ErrorDetail(Open):
    code: str = Field(description="invalid_request, unauthorized, not_found, ...")
    message: str
    fields: dict[str, str] | None = Field(None, description="What is wrong with each named field")


class Error(Body):
    error: ErrorDetail


class Health(Body):
    status: Literal["ok"]
    rules_version: str


class Check(Open):
    ok: bool
    error: str | None = None


class Readiness(Body):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]
