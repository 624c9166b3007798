"""The account as scoring sees it: its row as a typed record, and the view score() reads it
through, behind one Protocol (AccountView) with two implementations:

- LiveAccount: one evaluation as it comes (a signup, a payment method, one account rescored
  after a verification): opening it locks the account's row, or creates it, reading what the
  account's facts and its linking need in the same round trip; scoring ends by writing its
  evaluation, its row and its sightings (kyc.scoring.persist).
- ChunkAccount: an account of a rescore chunk (read_chunk): everything was read for the whole
  chunk beforehand, nothing is read or locked per account, and the evaluations and rows are
  written for the whole chunk at once (Chunk.write).

Neither holds an ORM object: the session never sees the rows, so its unit of work costs
nothing and what was written is what score() decided.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from kyc import graph
from kyc.db import write_lock
from kyc.models import Account, ActivityDay, ClusterMember, Evaluation, Sighting, Verification, utcnow, velocity_kind
from kyc.ops import decisions
from kyc.persist import dialect_of, fetch, new_account_statement
from kyc.scoring import persist
from kyc.scoring.decide import Settlement
from kyc.signals import COLLECTORS, Identifiers
from kyc.signals.velocity import VELOCITY_KEYS
from kyc.store import ReadAhead, Store, velocity_store
from kyc.usage.days import ClusterDaysOnce, latest_day, latest_days, latest_lockstep
from kyc.verification import stored_verified_kinds

if TYPE_CHECKING:
    from kyc.runtime import Runtime   # which starts the background rescoring: it imports scoring


@dataclass
class AccountRecord:
    """An account's row as scoring reads and changes it (kyc.models.Account's columns)."""

    id: str
    first_seen_at: datetime
    last_seen_at: datetime
    decision: str
    score: int
    reasons: list[dict[str, Any]]
    required_verifications: list[str]
    subjects: dict[str, Any]
    state_version: int
    last_evaluation_id: str | None = None
    label: str | None = None
    override: dict[str, Any] | None = None
    review_since: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AccountRecord:
        return cls(**{name: row[name] for name in _ACCOUNT_FIELDS if name in row})


_ACCOUNT_FIELDS = tuple(f.name for f in fields(AccountRecord))


@dataclass
class EvaluationRecord:
    """One evaluation as score() made it (kyc.models.Evaluation's columns but created_at) and
    what it did to its account's standing. Evaluations never change once made."""

    id: str
    account_id: str
    subject: str
    trigger: str
    occurred_at: datetime
    input: dict[str, Any]
    signals: dict[str, Any]
    reasons: list[dict[str, Any]]
    decision: str
    score: int
    required_verifications: list[str]
    rules_version: str
    settlement: Settlement | None = None

    def row(self) -> dict[str, Any]:
        """The evaluations table's columns (persist.write)."""
        return {name: getattr(self, name) for name in _EVALUATION_COLUMNS}


_EVALUATION_COLUMNS = tuple(f.name for f in fields(EvaluationRecord) if f.name != "settlement")


class AccountView(Protocol):
    """What score() reads about one account, and where what it decides goes."""

    account: AccountRecord          # the row, locked for this transaction; scoring changes it
    created: bool                   # this transaction created the account (its first event)
    dormancy: int | None            # the dormant days of its latest day of usage (None: no usage)
    verified: Collection[str]       # the kinds of its completed verifications
    rescores_alone: bool            # a proof of payment rescores its other subjects at once
    #                                 (a chunk rescores every subject of its accounts anyway)

    def velocity(self, runtime: Runtime) -> Store:
        """The velocity counters its signals count on."""

    def usage_day(self, session: Session, day: date | None) -> dict[str, Any] | None:
        """Its latest day of usage up to `day` (None: the latest reported)."""

    def lockstep(self, adopted_by: date) -> Mapping[tuple[str, date], dict[str, Any]] | None:
        """The lockstep facts of its latest day of usage, as a rescore reads them with the adopters
        known by `adopted_by`, read ahead (None: usage_facts reads them)."""

    def cluster_days(self, session: Session, day: date) -> list[dict[str, Any]] | None:
        """Its cluster's days of usage on `day`, read ahead (None: usage_facts reads them; []: alone in it)."""

    def attach(self, session: Session, policy: graph.Policy, at: datetime, identifiers: Identifiers | None,
               flags: dict[str, bool]) -> graph.Attachment:
        """Its place in the graph (with `identifiers`, a new event: linked first)."""

    def keep(self, runtime: Runtime, session: Session, evaluation: EvaluationRecord, attachment: graph.Attachment,
             identifiers: Identifiers | None) -> None:
        """Write what scoring made (or gather it for the chunk's write): the evaluation, the
        account's row, its new membership and cluster, the sightings of `identifiers` (a new
        event) and the decision change, if any."""


# --- live: one evaluation as it comes -----------------------------------------------------------

class LiveAccount:
    """An account scored on its own, in the caller's transaction (see the module's docstring)."""

    rescores_alone = True

    def __init__(self, session: Session, account: AccountRecord, created: bool, dormancy: int | None,
                 verified: Collection[str], member: dict[str, Any] | None):
        self.session, self.account, self.created = session, account, created
        self.dormancy, self.verified, self._member = dormancy, verified, member
        self._store: Store | None = None

    @classmethod
    def open(cls, session: Session, account_id: str, at: datetime, *, likely_new: bool = True) -> LiveAccount:
        """The account's row locked for this transaction, created first seen at `at` if absent,
        with what was read with it: the dormancy of its latest active day, the kinds of its
        completed verifications and its cluster membership (a new account has none of it).

        Insert-if-absent, so two concurrent first posts of one id never collide. The insert
        returns the row it created (locked as ours until commit): one statement for a new
        account. When the row exists (or a concurrent first post just created it) it is read
        with FOR UPDATE. `likely_new=False` (a payment method: its account signed up first)
        reads first, which is then the only statement. On SQLite, where FOR UPDATE locks
        nothing, the database's write lock is taken before the read (kyc.db.write_lock): else a
        review committed between the read and this transaction's first write is written over."""
        write_lock(session)
        if not likely_new and (found := cls._locked(session, account_id)) is not None:
            return found
        new = fetch(session, new_account_statement(dialect_of(session)),
                    {"id": account_id, "first_seen_at": at, "last_seen_at": at})
        if new:
            return cls(session, AccountRecord.from_row(new[0]._asdict()), True, None, (), None)
        found = cls._locked(session, account_id)
        assert found is not None, "an account that exists or was just created by another transaction"
        return found

    @classmethod
    def _locked(cls, session: Session, account_id: str) -> LiveAccount | None:
        rows = fetch(session, _LOCKED_ACCOUNT, {"id": account_id})
        if not rows:
            return None
        row = rows[0]._asdict()
        member = {column: row[f"_member_{column}"] for column in _MEMBER_COLUMNS}
        verified = row["_verified"]
        return cls(session, AccountRecord.from_row(row), False, row["_dormancy"],
                   verified.split(",") if verified else (), member if member["account_id"] is not None else None)

    def velocity(self, runtime: Runtime) -> Store:
        if self._store is None:
            self._store = velocity_store(runtime, self.session)
        return self._store

    def usage_day(self, session: Session, day: date | None) -> dict[str, Any] | None:
        if self.created or self.dormancy is None:
            return None
        return latest_day(session, self.account.id, day)

    def lockstep(self, adopted_by: date) -> Mapping[tuple[str, date], dict[str, Any]] | None:
        return None

    def cluster_days(self, session: Session, day: date) -> list[dict[str, Any]] | None:
        return None

    def attach(self, session: Session, policy: graph.Policy, at: datetime, identifiers: Identifiers | None,
               flags: dict[str, bool]) -> graph.Attachment:
        return graph.attach(session, policy, self.account.id, at, identifiers=identifiers, flags=flags,
                            new_account=self.created, stored=self._member)

    def keep(self, runtime: Runtime, session: Session, evaluation: EvaluationRecord, attachment: graph.Attachment,
             identifiers: Identifiers | None) -> None:
        settlement = evaluation.settlement
        if not self.created and settlement is not None and settlement.new != settlement.old:
            # A new account's first decision is not a change.
            decisions.record(runtime, session, [decisions.by_rules(self.account, settlement.old,
                                                                   evaluation.rules_version, evaluation.trigger)])
        # A new membership and cluster first, with their final values (graph.attach), then what
        # the session holds, then the account's row, its evaluation and its sightings.
        graph.write_new(session, attachment.member, attachment.cluster)
        session.flush()
        persist.write(session, evaluations=[evaluation.row()], accounts=[persist.account_row(self.account)],
                      sightings=_sightings(evaluation, identifiers))
        if identifiers:
            self.velocity(runtime).record([key for key in identifiers if key[0] in VELOCITY_KEYS],
                                          evaluation.occurred_at, self.account.id)


def _sightings(evaluation: EvaluationRecord, identifiers: Identifiers | None) -> list[dict[str, Any]]:
    return [{"kind": kind, "value_hash": value_hash, "account_id": evaluation.account_id,
             "evaluation_id": evaluation.id, "occurred_at": evaluation.occurred_at}
            for kind, value_hash in identifiers or ()]


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
           # as graph.attach reads it (the membership is not locked: only its cluster is, by linking)
           *(column.label(f"_member_{column.key}") for column in ClusterMember.__table__.c))
    .select_from(Account.__table__.outerjoin(ClusterMember.__table__, ClusterMember.account_id == Account.id))
    .where(Account.id == bindparam("id")).with_for_update(of=Account.__table__)
)


# --- read ahead: the accounts of a rescore chunk -------------------------------------------------

@dataclass
class Chunk:
    """What score() reads about the accounts of a rescore chunk, read for all of them at once:
    the accounts (locked), their latest inputs, dormancy, verified kinds, memberships and
    clusters, and the velocity counts of each input as of its event time. Scoring them then
    reads nothing per account, and `write` stores all their evaluations and accounts."""

    accounts: dict[str, AccountRecord]      # the rows, changed by scoring
    read: dict[str, tuple]                  # each account's written columns as read
    originals: dict[str, Any]               # evaluation id -> (id, account_id, subject, occurred_at, input)
    dormancy: dict[str, int]
    usage: dict[str, dict[str, Any]]        # each account's latest day of usage (kyc.usage.days)
    lockstep: dict[tuple[str, date], dict[str, Any]]    # their lockstep facts (kyc.usage.days.latest_lockstep)
    lockstep_by: date                       # ... with the adopters known by that day
    verified: dict[str, set[str]]
    graph: graph.ChunkGraph
    store: ReadAhead
    evaluations: list[EvaluationRecord] = field(default_factory=list)     # scored, not yet inserted
    cluster_days: ClusterDaysOnce = field(default_factory=ClusterDaysOnce)     # read when first asked

    def view(self, account_id: str) -> ChunkAccount:
        return ChunkAccount(self, self.accounts[account_id])

    def write(self, session: Session) -> None:
        """Call after scoring the chunk: its evaluations and its changed accounts, each in one
        statement (every account with the same columns: one executemany), then its cluster
        counter changes (graph.ChunkGraph.write)."""
        changed = [a for a in self.accounts.values() if persist.written(a) != self.read[a.id]]
        persist.write(session, evaluations=[e.row() for e in self.evaluations],
                      accounts=[persist.account_row(a) for a in changed])
        self.evaluations = []
        self.read.update((a.id, persist.written(a)) for a in changed)
        self.graph.write(session)


class ChunkAccount:
    """An account of a rescore chunk (see the module's docstring). A rescore is no new event:
    nothing is recorded for velocity or linking, and the chunk records decision changes."""

    created = False
    rescores_alone = False

    def __init__(self, chunk: Chunk, account: AccountRecord):
        self.chunk, self.account = chunk, account
        self.dormancy = chunk.dormancy.get(account.id)
        self.verified: Collection[str] = chunk.verified.get(account.id, ())

    def velocity(self, runtime: Runtime) -> Store:
        return self.chunk.store

    def usage_day(self, session: Session, day: date | None) -> dict[str, Any] | None:
        return self.chunk.usage.get(self.account.id)         # the latest, read with the chunk

    def lockstep(self, adopted_by: date) -> Mapping[tuple[str, date], dict[str, Any]] | None:
        return self.chunk.lockstep if adopted_by == self.chunk.lockstep_by else None

    def cluster_days(self, session: Session, day: date) -> list[dict[str, Any]] | None:
        member = self.chunk.graph.members.get(self.account.id)
        if member is None:
            return None
        cluster = self.chunk.graph.read.get(member.cluster_id)
        if cluster is None or cluster.size <= 1:
            # Alone in its cluster (a rescore links nothing): the cluster's day is its own, which
            # usage_facts has. Read anyway, each was a statement: 1,000 accounts of a farm woken
            # together and re-evaluated in their report's transaction read 1,000 of them.
            return []
        return self.chunk.cluster_days(session, member.cluster_id, day)

    def attach(self, session: Session, policy: graph.Policy, at: datetime, identifiers: Identifiers | None,
               flags: dict[str, bool]) -> graph.Attachment:
        assert identifiers is None, "a rescore links nothing"
        return self.chunk.graph.attach(self.account.id, at, flags=flags)

    def keep(self, runtime: Runtime, session: Session, evaluation: EvaluationRecord, attachment: graph.Attachment,
             identifiers: Identifiers | None) -> None:
        assert identifiers is None, "a rescore records nothing"
        self.chunk.evaluations.append(evaluation)


def read_chunk(runtime: Runtime, session: Session, ids: list[str]) -> Chunk:
    """Lock and read a chunk of accounts for rescoring (rescore_account(..., chunk=...))."""
    write_lock(session)                 # SQLite: FOR UPDATE below locks nothing (LiveAccount.open)
    # Records of the rows, which the session never sees: Chunk.write writes what changed.
    accounts = {row["id"]: AccountRecord.from_row(row) for row in session.execute(
        select(*Account.__table__.c).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()).mappings()}
    found = sorted(accounts)
    latest = [s["evaluation_id"] for a in accounts.values() for s in (a.subjects or {}).values()]
    # Rows, not evaluations: only the input and what locates it are read (not the signals).
    originals = {row.id: row for row in session.execute(
        select(Evaluation.id, Evaluation.account_id, Evaluation.subject, Evaluation.occurred_at, Evaluation.input)
        .where(Evaluation.id.in_(latest)))} if latest else {}
    usage = latest_days(session, found)
    today = utcnow().date()                 # a rescore's adopters are those known now (score)
    return Chunk(accounts=accounts, read={a.id: persist.written(a) for a in accounts.values()}, originals=originals,
                 dormancy={a: day["dormant_days"] for a, day in usage.items()}, usage=usage,
                 lockstep=latest_lockstep(runtime, session, usage, today), lockstep_by=today,
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
                Sighting.kind.in_(sorted(VELOCITY_KEYS)), velocity_kind(Sighting.kind))):
        if (account_id, occurred_at) in keys:
            keys[(account_id, occurred_at)].add((kind, value_hash))
    return [(sorted(k), at, account_id) for (account_id, at), k in keys.items() if k]
