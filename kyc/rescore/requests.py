"""What a transaction asks to happen once it commits: the one object that carries work out of a
transaction (AfterCommit), attached to its session once.

Rescoring is asked for inside a transaction (the graph asks when a cluster's standing rises, a
fraud label asks for the account's cluster) and written into that same transaction as one
rescore_asks row, so a rolled-back evaluation asks for nothing and a committed one's ask
survives a process killed right after the commit. Once the transaction has committed, the
process's background rescoring (kyc.rescore.background) is woken to turn the rows into a run,
so a signup that makes a farm's cluster cross a size step answers without waiting for the farm
to be rescored. Other work that must follow a commit and never a rollback (velocity marks
written to Redis, decision webhooks woken) is collected here too, each kind in its own list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from kyc.models import RescoreAsk

if TYPE_CHECKING:
    from kyc.runtime import Runtime

_KEY = "kyc.after_commit"          # the session's one entry: its AfterCommit

log = logging.getLogger("kyc.jobs")


@dataclass
class AfterCommit:
    """The work one session's current transaction asks for after its commit; emptied by the
    commit (which hands it over) or by a rollback (which drops it).

    Rescoring: `ask_rescore` records accounts and clusters; `hand_over` says which runtime
    rescores them and which account asked (its own evaluation is current: left out); the commit
    writes them as one rescore_asks row and wakes that runtime's background rescoring. A rescore
    batch scores many accounts in one transaction, so each ask remembers the account whose
    scoring asked first, and only that one is left out, as if each had had its own transaction.
    Asks no `hand_over` followed are dropped with the transaction.
    """

    accounts: dict[str, str | None] = field(default_factory=dict)    # account -> the asker left out
    clusters: dict[str, str | None] = field(default_factory=dict)    # cluster -> the asker left out
    unowned: set[tuple[str, str]] = field(default_factory=set)       # ("accounts" | "clusters", id) not handed over yet
    runtime: Runtime | None = None
    recorded: bool = False                                           # a rescore_asks row is in the transaction
    collected: dict[Any, tuple[list, Callable[[list], None]]] = field(default_factory=dict)

    def ask_rescore(self, *, accounts: Iterable[str] = (), clusters: Iterable[str] = ()) -> None:
        """Ask for accounts, and every member of clusters, to be rescored after the commit."""
        self.unowned.update(("accounts", a) for a in accounts if a not in self.accounts)
        self.unowned.update(("clusters", c) for c in clusters if c not in self.clusters)

    def hand_over(self, runtime: Runtime, *, exclude: str | None = None) -> None:
        """The rescoring asked for so far goes to `runtime` once the transaction commits;
        `exclude` is the account whose scoring (just now) asked for it."""
        for kind, item in self.unowned:
            getattr(self, kind).setdefault(item, exclude)
        self.unowned.clear()
        self.runtime = runtime

    def collect(self, kind: Any, deliver: Callable[[list], None]) -> list:
        """The list of `kind` of work this transaction asks for (append to it), given to
        `deliver` once it commits; the first caller's `deliver` is the one called."""
        return self.collected.setdefault(kind, ([], deliver))[0]

    def _committing(self, session: Session) -> None:
        """Write the rescoring handed over into the transaction about to commit (one row)."""
        if self.runtime is None:
            return
        for kind, item in self.unowned:     # asks made after the last hand_over too
            getattr(self, kind).setdefault(item, None)
        self.unowned.clear()
        accounts = sorted(a for a, asker in self.accounts.items() if a != asker)
        # The clusters' members are read by the background thread, not by the request that asked.
        clusters = dict(sorted(self.clusters.items()))
        if accounts or clusters:
            session.execute(insert(RescoreAsk), [{"accounts": accounts, "clusters": clusters}])
            self.recorded = True

    def _committed(self) -> None:
        runtime, recorded, collected = self.runtime, self.recorded, list(self.collected.values())
        self._clear()
        # Each kind of work on its own: one that fails (its own errors are its to report) must
        # not cost the others, and the commit has happened whatever they do.
        for work, deliver in collected:
            try:
                deliver(work)
            except Exception:  # noqa: BLE001
                log.exception("after-commit work failed: %r", deliver)
        if runtime is not None and recorded:
            runtime.rescoring().wake()

    def _clear(self) -> None:
        self.accounts, self.clusters, self.unowned, self.runtime, self.collected = {}, {}, set(), None, {}
        self.recorded = False


def after_commit(session: Session) -> AfterCommit:
    """The session's AfterCommit, attached on first use (the listeners below find it)."""
    found = session.info.get(_KEY)
    if found is None:
        found = session.info[_KEY] = AfterCommit()
    return found


# Listeners for every session, registered once: adding a pair to each session that asks (every
# signup's did) cost 0.2 ms of CPU a signup, 2% of it (py-spy, in-process signups on PostgreSQL),
# where a dict lookup at each commit costs nothing measurable.
@event.listens_for(Session, "before_commit")
def _session_committing(session: Session) -> None:
    found = session.info.get(_KEY)
    if found is not None:
        found._committing(session)


@event.listens_for(Session, "after_commit")
def _session_committed(session: Session) -> None:
    found = session.info.get(_KEY)
    if found is not None:
        found._committed()


@event.listens_for(Session, "after_rollback")
def _session_rolled_back(session: Session) -> None:
    found = session.info.get(_KEY)
    if found is not None:
        found._clear()
