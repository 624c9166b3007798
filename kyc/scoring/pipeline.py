"""The pipeline every evaluation goes through: Input -> signals -> engine -> decide -> persist.

Live signups, payment methods, worker rescoring and backtests all call into here; there is
no second scoring path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from time import perf_counter
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from kyc.db import deferred
from kyc.engine import RuleSet
from kyc.ids import new_id
from kyc.inputs import INPUTS, rfc3339
from kyc import graph, metrics
from kyc.models import Account, ActivityDay, ClusterMember, Evaluation, Sighting, Verification, utcnow
from kyc.ops import decisions
from kyc.rescore.requests import after_commit
from kyc.scoring.decide import evaluate, settle
from kyc.security import mask_email, mask_ip
from kyc.signals import COLLECTORS, Identifiers, Lookups
from kyc.signals.account import account_signals
from kyc.signals.degraded import degraded_sources
from kyc.signals.graph import graph_signals, member_flags
from kyc.signals.payment import load_bin_table
from kyc.signals.velocity import VELOCITY_KEYS
from kyc.store import ReadAhead, velocity_store
from kyc.usage.days import latest_day, latest_days, usage_facts
from kyc.verification import stored_verified_kinds, verified_kinds

if TYPE_CHECKING:
    from kyc.runtime import Runtime   # which starts the background rescoring: it imports this module

log = logging.getLogger("kyc.scoring")


def score(runtime: Runtime, session: Session, subject: str, inp, *, trigger: str = "live",
          at: datetime | None = None, rules: RuleSet | None = None, record: bool = True,
          chunk: Chunk | None = None) -> Evaluation:
    """Score one input and persist the evaluation and the account, in the caller's transaction.

    `record=False` (rescoring) adds no sightings: no new event happened, so velocity and links
    must not count the account twice. Linking happens before the rules run, so graph signals
    see the cluster this evaluation joins; the account's traits and block status update the
    cluster's counters, and a cluster whose standing rises queues its members for rescoring
    once this transaction commits. `chunk` (rescoring, with record=False): what is read about
    the account was read with its chunk (read_chunk), so nothing is read here.

    Returns the evaluation as a plain record, with its `settlement` (decide.Settlement: what
    it did to the account's standing; a block is kept unless a releases_block rule acts).

    The account and the evaluation are plain records written with Core statements, as for a
    chunk (the ORM's unit of work cost more than the writes themselves); writes nobody reads
    back are `deferred`, so in a pipelined transaction they travel with the commit.
    """
    rules = rules or runtime.rules          # read once: a reload mid-request does not split the set
    at = at or inp.at()
    stored_member = None
    if chunk is None:
        account, created, dormancy, verified, stored_member = _lock_account(session, inp.account_id, at,
                                                                            likely_new=subject == "signup")
    else:
        account, created = chunk.accounts[inp.account_id], False
        dormancy, verified = chunk.dormancy.get(account.id), chunk.verified.get(account.id, ())
    # Account facts describe the account now when it is rescored (a wake-up is why it is),
    # and as of the event for a live or backfilled input. They include the verifications
    # completed, which satisfy verify rules (see RuleSet.evaluate).
    facts_at = max(at, utcnow()) if trigger == "rescore" else at
    account_facts = account_signals(
        at if created else account.first_seen_at, facts_at, dormancy, runtime.config.dormant_days,
        frozenset() if created else verified_kinds(verified, account.subjects))
    lookups = Lookups(rules.lists, chunk.store if chunk else velocity_store(runtime, session),
                      runtime.config.secret_key, runtime.geoip,
                      load_bin_table(runtime.config.bin_table))
    started = perf_counter()
    signals, identifiers = COLLECTORS[subject](inp, lookups, at)
    signal_seconds = perf_counter() - started
    signals["account"] = account_facts
    # Usage as of the event for a live or backfilled input; a rescore reads the account's
    # latest day of usage as of its latest report (what a report re-evaluates it for).
    if chunk is not None:
        usage_day = chunk.usage.get(account.id)
    else:
        usage_day = None if created or dormancy is None else latest_day(
            session, account.id, None if trigger == "rescore" else at.date())
    if usage_day is not None:
        usage_at = usage_day["last_at"] if trigger == "rescore" else at
        signals["usage"] = usage_facts(runtime, session, account.id, usage_day, usage_at, account.first_seen_at)
    policy = graph.Policy.from_config(runtime.config)
    # Traits describe the registration: a card added later from another network must not reset
    # the signup's hosting (or any other) trait, nor give a new account's cluster its traits.
    flags = member_flags(signals) if subject == "signup" else {}
    if chunk is not None:
        attachment = chunk.graph.attach(account.id, at, flags=flags)
    else:
        attachment = graph.attach(session, policy, account.id, at, identifiers=identifiers if record else None,
                                  flags=flags, new_account=created, stored=stored_member)
    cluster = attachment.cluster
    graph.settle_flags(session, policy, attachment, flags)
    signals["graph"] = graph_signals(graph.cluster_facts(session, attachment, at, as_of_newest=trigger == "rescore"),
                                     at)
    outcome = evaluate(rules, subject, signals)
    metrics.evaluated(subject, trigger, outcome.decision, outcome.reasons, signal_seconds)
    values = dict(
        id=new_id("ev"), account_id=account.id, subject=subject, trigger=trigger, occurred_at=at,
        input=inp.stored(), signals=signals, reasons=outcome.reasons, decision=outcome.decision,
        score=outcome.score, required_verifications=outcome.required_verifications,
        rules_version=rules.version,
    )
    evaluation = chunk.add(values) if chunk else SimpleNamespace(**values)
    slot = _slot(subject, identifiers)
    evaluation.settlement = settle(account, slot, subject, evaluation.id, outcome, at, cluster=cluster,
                                   steps=runtime.config.graph_rescore_sizes)
    if chunk is None and not created and evaluation.settlement.new != evaluation.settlement.old:
        # A new account's first decision is not a change. A rescore chunk records its
        # accounts' changes itself (kyc.rescore.batch.rescore_chunk), once per account.
        decisions.record(runtime, session, [decisions.by_rules(account, evaluation.settlement.old, rules.version,
                                                               trigger)])
    graph.settle_flags(session, policy, attachment, {"blocked": account.decision == "block"})
    if chunk is None:
        # A new membership and cluster first, with their final values (graph.attach),
        # then what the session holds, the account's row and its evaluation.
        graph.write_new(session, attachment.member, attachment.cluster)
        session.flush()
        session.execute(_ACCOUNT_WRITE, {"account_id": account.id, **{c: getattr(account, c) for c in _WRITTEN}})
        session.execute(_EVALUATION_INSERT, values)
    if record:
        if identifiers:
            session.execute(_SIGHTINGS_INSERT, [
                {"kind": k, "value_hash": h, "account_id": account.id, "evaluation_id": evaluation.id,
                 "occurred_at": at} for k, h in identifiers])
        lookups.store.record([key for key in identifiers if key[0] in VELOCITY_KEYS], at, account.id)
    if evaluation.settlement.proved_payment and chunk is None:
        # A card that proves payment is a completed verification: as one does (kyc.verification
        # .service), it evaluates the account's other subjects again at once, which may have
        # asked for that proof. (A chunk rescores every subject of the account anyway.)
        rescore_account(runtime, session, account.id, rules=rules, skip=slot)
    after_commit(session).hand_over(runtime, exclude=account.id)
    # Masked identifiers only: never a full email or IP, and payment inputs hold no card number.
    log.info("scored %s account=%s email=%s ip=%s decision=%s score=%d trigger=%s", subject, account.id,
             mask_email(getattr(inp, "email", None)), mask_ip(getattr(inp, "ip", None)),
             outcome.decision, outcome.score, trigger)
    return evaluation


def rescore_account(runtime: Runtime, session: Session, account_id: str, *, rules: RuleSet | None = None,
                    chunk: Chunk | None = None, skip: str | None = None) -> list[Evaluation]:
    """Score again the latest input of each subject of an account, with current rules and history.

    Each new evaluation is marked trigger="rescore" and keeps the original event time. `chunk`:
    the account is one of a chunk read by read_chunk (which holds its account and inputs).
    `skip`: a slot left as it is (the evaluation just made, which asked for the others).
    """
    if chunk:
        account = chunk.accounts.get(account_id)
        subjects = account.subjects if account else None
    else:
        subjects = session.execute(select(Account.subjects).where(Account.id == account_id)).scalar_one_or_none()
    if subjects is None:
        return []
    results = []
    for slot, latest in sorted(subjects.items()):
        if slot == skip:
            continue
        subject = latest.get("subject", slot)
        if subject not in COLLECTORS:
            # Written by a build that scores this subject (a newer release, or an evaluation
            # recorded by another part of the system); its latest evaluation stays as it is.
            log.warning("rescore of %s keeps its %s evaluation: this build cannot score %s", account_id,
                        subject, subject)
            continue
        original = chunk.originals[latest["evaluation_id"]] if chunk else session.get(Evaluation, latest["evaluation_id"])
        inp = INPUTS[subject].model_validate(original.input)
        results.append(score(runtime, session, subject, inp, trigger="rescore", at=original.occurred_at,
                             rules=rules, record=False, chunk=chunk))
    return results


@dataclass
class Chunk:
    """What score() reads about the accounts of a rescore chunk, read for all of them at once:
    the accounts (locked), their latest inputs, dormancy, verified kinds, memberships and
    clusters, and the velocity counts of each input as of its event time. Scoring them then
    reads nothing per account, and `write` stores all their evaluations and accounts."""

    accounts: dict[str, SimpleNamespace]      # copies of the rows, changed by scoring
    read: dict[str, tuple]                     # each account's written columns as read
    originals: dict[str, Any]            # evaluation id -> (id, account_id, subject, occurred_at, input)
    dormancy: dict[str, int]
    usage: dict[str, dict[str, Any]]         # each account's latest day of usage (kyc.usage.days)
    verified: dict[str, set[str]]
    graph: graph.ChunkGraph
    store: Any
    evaluations: list[dict[str, Any]] = field(default_factory=list)     # scored, not yet inserted

    def add(self, values: dict[str, Any]) -> Any:
        """An evaluation of the chunk, inserted with the others by `write`. It is never changed
        once made, so a plain record stands for it (building an ORM object cost more)."""
        self.evaluations.append(values)
        return SimpleNamespace(**values)

    def write(self, session: Session) -> None:
        """Call after scoring the chunk: its evaluations and its changed accounts, each in one
        statement (every account with the same columns: one executemany), then its cluster
        counter changes (graph.ChunkGraph.write)."""
        if self.evaluations:
            session.execute(insert(Evaluation.__table__), self.evaluations)
            self.evaluations = []
        changed = [a for a in self.accounts.values() if _written(a) != self.read[a.id]]
        if changed:
            session.execute(_ACCOUNT_UPDATE, [{"account_id": a.id, **{c: getattr(a, c) for c in _WRITTEN}}
                                              for a in changed])
            self.read.update((a.id, _written(a)) for a in changed)
        self.graph.write(session)


# What scoring an account changes on its row (score(), decide.settle).
_WRITTEN = ("decision", "score", "reasons", "required_verifications", "subjects", "state_version",
            "last_evaluation_id", "first_seen_at", "last_seen_at", "override", "review_since")


def _written(account) -> tuple:
    return tuple(getattr(account, column) for column in _WRITTEN)


_ACCOUNT_UPDATE = update(Account.__table__).where(Account.__table__.c.id == bindparam("account_id"))
_ACCOUNT_WRITE = deferred(_ACCOUNT_UPDATE)
_EVALUATION_INSERT = insert(Evaluation.__table__)
_SIGHTINGS_INSERT = insert(Sighting.__table__)


def read_chunk(runtime: Runtime, session: Session, ids: list[str]) -> Chunk:
    """Lock and read a chunk of accounts for rescoring (rescore_account(..., chunk=...))."""
    # Plain copies of the rows, which the session never sees: Chunk.write writes what changed.
    accounts = {row["id"]: SimpleNamespace(**row) for row in session.execute(
        select(*Account.__table__.c).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()).mappings()}
    found = sorted(accounts)
    latest = [s["evaluation_id"] for a in accounts.values() for s in (a.subjects or {}).values()]
    # Rows, not evaluations: only the input and what locates it are read (not the signals).
    originals = {row.id: row for row in session.execute(
        select(Evaluation.id, Evaluation.account_id, Evaluation.subject, Evaluation.occurred_at, Evaluation.input)
        .where(Evaluation.id.in_(latest)))} if latest else {}
    usage = latest_days(session, found)
    return Chunk(accounts=accounts, read={a.id: _written(a) for a in accounts.values()}, originals=originals,
                 dormancy={a: day["dormant_days"] for a, day in usage.items()}, usage=usage,
                 verified=stored_verified_kinds(session, found) if found else {},
                 graph=graph.ChunkGraph(session, found),
                 store=ReadAhead(velocity_store(runtime, session), _velocity_requests(session, originals.values())))


def _velocity_requests(session: Session, originals: Iterable) -> list[tuple[list, datetime, str]]:
    """The velocity keys each input will be counted on, from the sightings its original
    evaluation recorded (the same identifiers the collectors derive again; a key they derive
    that is not here is counted when asked, see ReadAhead)."""
    wanted = {(e.account_id, e.occurred_at) for e in originals if e.subject in COLLECTORS}
    if not wanted:
        return []
    keys: dict[tuple[str, datetime], set] = {w: set() for w in wanted}
    for account_id, occurred_at, kind, value_hash in session.execute(
            select(Sighting.account_id, Sighting.occurred_at, Sighting.kind, Sighting.value_hash).where(
                Sighting.account_id.in_(sorted({a for a, _ in wanted})),
                Sighting.occurred_at.in_(sorted({at for _, at in wanted})),
                Sighting.kind.in_(sorted(VELOCITY_KEYS)))):
        if (account_id, occurred_at) in keys:
            keys[(account_id, occurred_at)].add((kind, value_hash))
    return [(sorted(k), at, account_id) for (account_id, at), k in keys.items() if k]


def _lock_account(session: Session, account_id: str, at: datetime, *, likely_new: bool = True
                  ) -> tuple[SimpleNamespace, bool, int | None, list[str], dict[str, Any] | None]:
    """The account's row (a plain record, see score()), locked for this transaction, whether
    this transaction created it, and what was read with it (see _locked_account; a new account
    has none of it): the dormancy of its latest active day, the kinds of its completed
    verifications and its cluster membership.

    Insert-if-absent, so two concurrent first posts of one id never collide. The insert returns
    the row it created (locked as ours until commit): one statement for a new account. When the
    row exists (or a concurrent first post just created it) it is read with FOR UPDATE.
    `likely_new=False` (a payment method: its account signed up first) reads first, which is
    then the only statement.
    """
    if not likely_new and (found := _locked_account(session, account_id)) is not None:
        return found[0], False, *found[1:]
    new = session.execute(_new_account_statement(session.get_bind().dialect.name),
                          {"id": account_id, "first_seen_at": at, "last_seen_at": at}).mappings().one_or_none()
    if new is not None:
        return SimpleNamespace(**new), True, None, [], None
    account, dormancy, verified, member = _locked_account(session, account_id)
    return account, False, dormancy, verified, member


def _locked_account(session: Session, account_id: str
                    ) -> tuple[SimpleNamespace, int | None, list[str], dict[str, Any] | None] | None:
    """The account row locked, with what its facts and its linking need, in the same round trip."""
    row = session.execute(_LOCKED_ACCOUNT, {"id": account_id}).mappings().one_or_none()
    if row is None:
        return None
    account = dict(row)
    dormancy, verified = account.pop("_dormancy"), account.pop("_verified")
    member = {column: account.pop(f"_member_{column}") for column in _MEMBER_COLUMNS}
    return (SimpleNamespace(**account), dormancy, verified.split(",") if verified else [],
            member if member["account_id"] is not None else None)


_MEMBER_COLUMNS = tuple(ClusterMember.__table__.c.keys())
_LOCKED_ACCOUNT = (
    select(*Account.__table__.c,
           # the dormancy of the latest day, as usage.days.latest_days reads it
           select(ActivityDay.dormant_days).where(ActivityDay.account_id == Account.id, ActivityDay.requests > 0)
           .order_by(ActivityDay.day.desc()).limit(1).scalar_subquery().label("_dormancy"),
           # as verification.stored_verified_kinds
           select(func.aggregate_strings(Verification.kind, ","))
           .where(Verification.account_id == Account.id, Verification.status == "verified")
           .scalar_subquery().label("_verified"),
           # as graph.ensure_member (the membership is not locked: only its cluster is, by linking)
           *(column.label(f"_member_{column.key}") for column in ClusterMember.__table__.c))
    .select_from(Account.__table__.outerjoin(ClusterMember.__table__, ClusterMember.account_id == Account.id))
    .where(Account.id == bindparam("id")).with_for_update(of=Account.__table__)
)


@lru_cache(maxsize=4)
def _new_account_statement(dialect: str):
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (insert(Account.__table__)
            .values(id=bindparam("id"), first_seen_at=bindparam("first_seen_at"),
                    last_seen_at=bindparam("last_seen_at"), decision="allow", score=0, reasons=[],
                    required_verifications=[], subjects={}, state_version=0)
            .on_conflict_do_nothing(index_elements=["id"]).returning(*Account.__table__.c))


def _slot(subject: str, identifiers: Identifiers) -> str:
    """Where an evaluation sits in account.subjects: the latest one per subject, except payment
    methods, which get one slot per card, so adding a clean card never clears a blocked one."""
    if subject == "payment_method":
        card = next(value_hash for kind, value_hash in identifiers if kind == "card_fingerprint")
        return f"payment_method:{card}"
    return subject


def cluster_ref(cluster_id: str | None, size: int | None) -> dict[str, Any] | None:
    return {"id": cluster_id, "size": size} if cluster_id else None


def evaluation_body(evaluation: Evaluation, account: Account | None = None) -> dict[str, Any]:
    """The contract's evaluation response; the cluster is the one the evaluation saw."""
    seen = (evaluation.signals or {}).get("graph", {})
    return {
        "evaluation_id": evaluation.id,
        "account_id": evaluation.account_id,
        "subject": evaluation.subject,
        "decision": evaluation.decision,
        "score": evaluation.score,
        "reasons": evaluation.reasons,
        "required_verifications": evaluation.required_verifications,
        "cluster": cluster_ref(seen.get("cluster_id"), seen.get("cluster_size")),
        "signals": evaluation.signals,
        # Sources that did not answer in time: this decision was made without them (or from a fallback).
        "degraded": degraded_sources(evaluation.signals or {}),
        "rules_version": evaluation.rules_version,
        "occurred_at": rfc3339(evaluation.occurred_at),
    }
