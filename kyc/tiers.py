"""Entitlement: tier policy x account state.

The policy is rules/tiers.yaml, loaded and checked with the rule files (a bad tiers file never
replaces a good running one). `entitlement()` is on the API gateway's hot path: one statement
reads the account row and what the tier can be decided by (its latest dormancy, its completed
verifications: _reads); only a tier whose conditions read evaluation signals also reads those
(immutable, so cached by evaluation id).
Nothing about an account's standing is cached in-process: a block, a fraud label or a
rescoring is seen by the very next call.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import bindparam, exists, literal_column, or_, select
from sqlalchemy.engine import Connection

from kyc.engine import CompiledConditions, Condition, RuleError, RuleSetError, compile_conditions
from kyc.engine.compiler import difflib_close
from kyc.engine.loader import ACTIONS, ID, VERIFICATIONS, _Mapping, read_yaml
from kyc.engine.schema import Schema
from kyc.errors import NotFound
from kyc.models import Account, ActivityDay, Evaluation, Verification
from kyc.signals.account import account_signals
from kyc.verification import payment_verified
from kyc.models import SEVERITY
from kyc.persist import fetch, in_list

TIER_KEYS = ("id", "description", "quota", "requires", "max_decision", "forbid_phone_line_types", "conditions")
QUOTA_KEYS = ("requests_per_day", "requests_per_minute")
CONDITION_KEYS = ("id", "description", "when")
LINE_TYPES = ("mobile", "fixed_line", "fixed_line_or_mobile", "voip", "toll_free", "premium_rate", "shared_cost",
              "personal_number", "pager", "uan", "voicemail", "unknown")
FRAUD_LABEL = "fraud"


@dataclass(frozen=True)
class Tier:
    id: str
    description: str
    quota: dict[str, int]
    requires: tuple[str, ...]
    max_decision: str
    forbid_phone_line_types: frozenset[str]
    conditions: CompiledConditions | None
    condition_descriptions: tuple[str, ...] = ()     # aligned with conditions.conditions


@dataclass(frozen=True)
class TierPolicy:
    tiers: dict[str, Tier]

    def get(self, tier_id: str | None) -> Tier | None:
        return self.tiers.get(tier_id) if tier_id else None

    @cached_property
    def daily_quotas(self) -> dict[str, int]:
        """tier -> requests_per_day, for the tiers that set one (the usage signals' quotas)."""
        return {t.id: t.quota["requests_per_day"] for t in self.tiers.values() if "requests_per_day" in t.quota}

    def refused_line_types(self, tier_id: str | None = None) -> frozenset[str]:
        """Phone line types phone verification refuses: the named tier's, or every tier's."""
        tiers = [self.tiers[tier_id]] if tier_id else self.tiers.values()
        return frozenset().union(*(t.forbid_phone_line_types for t in tiers))


# --- loading ----------------------------------------------------------------------------------

def load_tiers(root: Path, schema: Schema, lists: dict[str, frozenset]) -> TierPolicy:
    """Read rules/tiers.yaml (absent: no tiers). Every mistake is collected into one RuleSetError."""
    path = Path(root) / "tiers.yaml"
    if not path.exists():
        return TierPolicy({})
    display = f"{Path(root).name}/tiers.yaml"
    data = read_yaml(path, display) or []
    if not isinstance(data, list):
        raise RuleSetError([RuleError(display, getattr(data, "line", 1), None,
                                      "the tiers file is a list of tiers, each starting with '- id:'")])
    errors: list[RuleError] = []
    tiers: dict[str, Tier] = {}
    for raw in data:
        tier = _check_tier(raw, display, schema, lists, tiers, errors)
        if tier is not None:
            tiers[tier.id] = tier
    if errors:
        raise RuleSetError(errors)
    return TierPolicy(tiers)


MAX_QUOTA = 2**53 - 1                               # the largest integer a gateway's JSON holds exactly


def _check_tier(raw: Any, display: str, schema: Schema, lists: dict[str, frozenset], seen: dict[str, Tier],
                errors: list[RuleError]) -> Tier | None:
    if not isinstance(raw, _Mapping):
        errors.append(RuleError(display, getattr(raw, "line", 1), None, "each tier is a mapping (id:, quota:, ...)"))
        return None
    tier_id = raw.get("id")
    before = len(errors)

    def err(message: str, key: str | None = None, suggestion: str | None = None, line: int | None = None) -> None:
        errors.append(RuleError(display, line or raw.key_lines.get(key, raw.line), tier_id if isinstance(tier_id, str)
                                else None, message, suggestion, kind="tier"))

    for key in raw:
        if key not in TIER_KEYS:
            close = difflib_close(str(key), TIER_KEYS)
            err(f"unknown key '{key}'", key, f"did you mean {close}?" if close else f"keys: {', '.join(TIER_KEYS)}")
    if not isinstance(tier_id, str) or not ID.fullmatch(tier_id):
        err("id must be lower_snake_case text (a-z, 0-9, _), at most 64 characters", "id")
    elif tier_id in seen:
        err("duplicate tier id", "id")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        err("description is required: say who the tier is for", "description")
    quota = raw.get("quota")
    if not isinstance(quota, dict) or not quota:
        err(f"quota is required: {', '.join(QUOTA_KEYS)}", "quota")
        quota = {}
    for key, value in quota.items():
        if key not in QUOTA_KEYS:
            close = difflib_close(str(key), QUOTA_KEYS)
            err(f"unknown quota '{key}'", "quota", f"did you mean {close}?" if close else f"one of {', '.join(QUOTA_KEYS)}")
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
            err(f"quota {key} must be a whole number from 0 to {MAX_QUOTA}", "quota")
    requires = raw.get("requires", [])
    if not isinstance(requires, list) or any(r not in VERIFICATIONS for r in requires):
        err(f"requires lists verifications: {', '.join(VERIFICATIONS)}", "requires")
        requires = []
    max_decision = raw.get("max_decision")
    if max_decision not in ACTIONS:
        close = difflib_close(str(max_decision), ACTIONS)
        err(f"max_decision must be one of {', '.join(ACTIONS)}", "max_decision", f"did you mean {close}?" if close else None)
    forbid = raw.get("forbid_phone_line_types", [])
    if not isinstance(forbid, list) or any(t not in LINE_TYPES for t in forbid):
        err(f"forbid_phone_line_types lists line types: {', '.join(LINE_TYPES)}", "forbid_phone_line_types")
        forbid = []
    described = _check_conditions(raw.get("conditions", []), raw, err)
    conditions = [c for c, _ in described]
    if len(errors) > before:
        return None
    compiled = None
    if conditions:
        try:
            compiled = compile_conditions(conditions, schema, lists, display, f"tier_{tier_id}")
        except RuleSetError as exc:
            errors.extend(exc.errors)
            return None
    return Tier(tier_id, description.strip(), dict(quota), tuple(v for v in VERIFICATIONS if v in requires),
                max_decision, frozenset(forbid), compiled, tuple(d for _, d in described))


def _check_conditions(raw_conditions: Any, tier: _Mapping, err) -> list[tuple[Condition, str]]:
    if not isinstance(raw_conditions, list):
        err("conditions is a list of {id, description, when}", "conditions")
        return []
    conditions: list[tuple[Condition, str]] = []
    ids: set[str] = set()
    for raw in raw_conditions:
        line = getattr(raw, "line", tier.key_lines.get("conditions", tier.line))
        if not isinstance(raw, _Mapping):
            err("each condition is a mapping with id, description and when", line=line)
            continue
        unknown = [k for k in raw if k not in CONDITION_KEYS]
        for key in unknown:
            err(f"unknown condition key '{key}'", line=raw.key_lines.get(key, line), suggestion=f"keys: {', '.join(CONDITION_KEYS)}")
        cid, description, when = raw.get("id"), raw.get("description"), raw.get("when")
        if not isinstance(cid, str) or not cid or cid in ids:
            err("each condition needs a unique id", line=line)
        if not isinstance(description, str) or not description.strip():
            err("each condition needs a description (shown when it refuses the tier)", line=line)
        if not isinstance(when, str) or not when.strip():
            err("each condition needs when: a condition that must hold", line=line)
        elif not unknown and isinstance(cid, str) and isinstance(description, str):
            ids.add(cid)
            conditions.append((Condition(cid, when, raw.key_lines.get("when", line)), description.strip()))
    return conditions


# --- entitlement ------------------------------------------------------------------------------

_SIGNALS_CACHE: OrderedDict[str, dict] = OrderedDict()
_SIGNALS_CACHE_SIZE = 50_000
_SIGNALS_LOCK = threading.Lock()


# An activity batch's accounts are mostly read cold (a gateway's customers outnumber the cache):
# one statement whose id list is one parameter (kyc.persist.in_list), not 1,000.
_SIGNALS_OF = select(Evaluation.id, Evaluation.signals).where(in_list(Evaluation.id, "ids"))


def evaluation_signals(conn: Connection, evaluation_ids: list[str]) -> dict[str, dict]:
    """Signals of evaluations by id; evaluations never change, so they are cached (LRU)."""
    found: dict[str, dict] = {}
    missing = []
    with _SIGNALS_LOCK:
        for ev_id in evaluation_ids:
            if ev_id in _SIGNALS_CACHE:
                _SIGNALS_CACHE.move_to_end(ev_id)
                found[ev_id] = _SIGNALS_CACHE[ev_id]
            else:
                missing.append(ev_id)
    if missing:
        rows = fetch(conn, _SIGNALS_OF, {"ids": missing})
        with _SIGNALS_LOCK:
            for ev_id, signals in rows:
                found[ev_id] = _SIGNALS_CACHE[ev_id] = signals
            while len(_SIGNALS_CACHE) > _SIGNALS_CACHE_SIZE:
                _SIGNALS_CACHE.popitem(last=False)
    return found


CODE_AND_DOCUMENT = ("email", "phone", "document")      # payment is read from the account's subjects


class _Reads(NamedTuple):
    """What a tier's check reads beside the account's standing (decision, label, state
    version, reasons), which every check reads."""

    details: bool                   # its step-up, subjects (the payment method) and first seen
    dormancy: bool                  # its latest dormancy
    kinds: tuple[str, ...]          # which of these kinds of verification it completed


@lru_cache(maxsize=64)
def _account_state(forbidden_phone_lines: frozenset[str], reads: _Reads):
    """One statement per tier shape, built once: the account row and, in the same round trip,
    what the tier's check reads besides; only the parameters change per call."""
    def completed(kind: str):
        where = [Verification.account_id == Account.id, Verification.kind == kind, Verification.status == "verified"]
        if kind == "phone" and forbidden_phone_lines:
            # A phone verified on a line type the tier forbids does not count for it. The types
            # are written into the statement (LINE_TYPES names, checked when the tiers load): a
            # bound list is expanded into the statement's text again at every call.
            forbidden = [literal_column(f"'{t}'") for t in sorted(forbidden_phone_lines)]
            where.append(or_(Verification.line_type.is_(None), Verification.line_type.not_in(forbidden)))
        return exists().where(*where)

    # The latest activity day up to the check's time (`at` replays a past check).
    latest_dormancy = (select(ActivityDay.dormant_days)
                       .where(ActivityDay.account_id == Account.id, ActivityDay.day <= bindparam("until"))
                       .order_by(ActivityDay.day.desc()).limit(1).scalar_subquery())
    return select(
        Account.decision, Account.label, Account.state_version, Account.reasons,
        *((Account.required_verifications, Account.subjects, Account.first_seen_at) if reads.details else ()),
        *((latest_dormancy,) if reads.dormancy else ()),
        *(completed(kind) for kind in reads.kinds),
    ).where(Account.id == bindparam("account_id"))


def _reads(tier: Tier) -> _Reads:
    """What can decide a tier's check: the account's step-up (wanted when a verify decision is
    too severe for the tier), its payment method (a requirement, or a step-up), the kinds of
    verification the tier requires (every kind where a step-up can be wanted or its conditions
    read the account's), and whatever its conditions read. Why: the free tier needs none of
    them; its read took 131 us wall and 84 us CPU, 150 and 95 with the step-up, subjects and
    first seen, 194 and 112 with the verifications and dormancy too (the best of 8 alternated
    runs of 1,500 reads in one process, 1,000,000 accounts)."""
    reads_account = tier.conditions is not None and "account" in tier.conditions.families
    step_up = SEVERITY["verify"] > SEVERITY[tier.max_decision]
    details = tier.conditions is not None or step_up or "payment" in tier.requires
    if reads_account or step_up:
        return _Reads(details, reads_account, CODE_AND_DOCUMENT)
    return _Reads(details, False, tuple(kind for kind in CODE_AND_DOCUMENT if kind in tier.requires))


def entitlement(conn: Connection, tier: Tier, account_id: str, *, dormancy_threshold: int,
                now: datetime | None = None) -> dict[str, Any]:
    """The contract's entitlement body for one account and tier (NotFound if none)."""
    # Without `at`, every day recorded counts (a gateway's clock may run a little ahead of ours).
    until = now.date() if now is not None else date.max
    now = now or datetime.now(timezone.utc)
    reads = _reads(tier)
    rows = fetch(conn, _account_state(tier.forbid_phone_line_types, reads),
                 {"account_id": account_id, "until": until} if reads.dormancy else {"account_id": account_id})
    if not rows:
        raise NotFound("account", account_id)
    row = list(rows[0])
    decision, label, state_version, reasons = row[:4]
    required, subjects, first_seen_at = row[4:7] if reads.details else (None, None, None)
    at = 7 if reads.details else 4
    dormant_days = row[at] if reads.dormancy else None
    done = row[at + reads.dormancy:]
    verified = {kind for kind, completed in zip(reads.kinds, done) if completed}
    if payment_verified(subjects):
        verified.add("payment")

    denied_by: list[dict[str, str]] = []
    if label == FRAUD_LABEL:
        denied_by.append({"check": "label", "description": "the account is labelled fraud"})
    too_severe = SEVERITY[decision] > SEVERITY[tier.max_decision]
    if too_severe:
        denied_by.append({"check": "decision",
                          "description": f"decision {decision} is worse than the {tier.max_decision} this tier tolerates"})
    # What would lift the refusal: the tier's own requirements, and the account's step-up if
    # its verify decision is what stands in the way.
    wanted = set(tier.requires) | (set(required or ()) if too_severe and decision == "verify" else set())
    missing = [v for v in VERIFICATIONS if v in wanted and v not in verified]
    if missing:
        denied_by.append({"check": "verifications", "description": "missing verifications: " + ", ".join(missing)})
    if tier.conditions is not None:
        signals = _condition_signals(conn, tier.conditions, subjects, first_seen_at, dormant_days, now,
                                     dormancy_threshold, frozenset(verified))
        holding = set(tier.conditions.match(signals))
        for index, condition in enumerate(tier.conditions.conditions):
            if index not in holding:
                denied_by.append({"check": condition.id, "description": tier.condition_descriptions[index]})
    return {
        "account_id": account_id,
        "tier": tier.id,
        "allowed": not denied_by,
        "decision": decision,
        "missing_verifications": missing,
        "reasons": [r for r in reasons if not r.get("shadow")],
        "quota": tier.quota,
        "denied_by": denied_by,
        "label": label,
        "state_version": state_version,
    }


def _condition_signals(conn: Connection, conditions: CompiledConditions, subjects: dict | None,
                       first_seen_at: datetime, dormant_days: int | None, now: datetime, threshold: int,
                       verified: frozenset[str]) -> dict[str, dict]:
    signals: dict[str, dict] = {}
    evaluation_families = conditions.families - {"account"}
    if evaluation_families and subjects:
        # Latest evaluation of each subject; where two subjects fill one family, the later wins.
        latest = sorted(subjects.values(), key=lambda s: s["occurred_at"])
        by_id = evaluation_signals(conn, [s["evaluation_id"] for s in latest])
        for s in latest:
            for family, facts in (by_id.get(s["evaluation_id"]) or {}).items():
                if family in evaluation_families:
                    signals[family] = facts
    if "account" in conditions.families:
        signals["account"] = account_signals(first_seen_at, now, dormant_days, threshold, verified)
    return signals


def etag(state_version: int, served: bytes) -> str:
    """State version plus a digest of the answer as served: any change to what the gateway would
    act on (including a tier or time-dependent condition) changes the tag, not only a version
    bump. The digest is of the bytes written anyway, not of the body encoded a second time."""
    return f"{state_version}-{hashlib.blake2b(served, digest_size=8).hexdigest()}"
