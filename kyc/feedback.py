"""Ops feedback: labels on accounts, which flow through the account's cluster.

A label is a person's decision too (kyc/ops/standing.py): `fraud` blocks the account and
`legit` allows it, releasing the tiers it qualifies for, until a person decides otherwise (or,
for legit, new evidence the person did not see sends it back to the review queue).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from kyc import graph
from kyc.db import write_lock
from kyc.models import Account, AccountLabel, ClusterMember
from kyc.ops.audit import key_actor
from kyc.ops.reviews import person_decides
from kyc.rescore.requests import after_commit
from kyc.runtime import Runtime

LABEL_DECISIONS = {"fraud": "block", "legit": "allow"}


def label_account(runtime: Runtime, session: Session, account_id: str, label: str, note: str | None,
                  source: str | None) -> Account | None:
    """Set the account's label, keep the history, decide the account as the label says, and on
    a fraud label queue every member of its cluster (the account included) for rescoring once
    the transaction commits."""
    write_lock(session)
    account = session.execute(
        select(Account).where(Account.id == account_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if account is None:
        return None
    session.add(AccountLabel(account_id=account.id, label=label, note=note, source=source))
    graph.set_flags(session, graph.Policy.from_config(runtime.config), account.id,
                    {"labeled_fraud": label == "fraud"})
    version = account.state_version
    person_decides(runtime, session, account, LABEL_DECISIONS[label], "label", key_actor(source), note,
                   action="account.labeled", detail={"label": label})
    if account.label != label:
        account.label = label
        # One change the gateway sees, however many of label and standing moved.
        account.state_version = version + 1
    if label == "fraud":
        member = session.get(ClusterMember, account.id)
        after_commit(session).ask_rescore(accounts=[account.id], clusters=[member.cluster_id] if member else [])
    after_commit(session).hand_over(runtime)
    return account
