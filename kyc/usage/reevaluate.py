"""Usage changes decisions at once: a report that makes an account riskier re-evaluates it.

Which accounts: those a report woke up (account.woke_up), and those whose new usage facts
would make the rules hit harder. The second is asked of the rules themselves, not of fixed
thresholds: each subject's latest evaluation is evaluated again with its stored signals and
the new usage facts (a microsecond-scale check, its signals cached by evaluation id), and an
account whose decision or score would rise is re-evaluated. The check only selects accounts;
what they become is decided by the one pipeline (kyc.rescore.batch.rescore_chunk -> kyc.scoring), in
the report's transaction, so the answer to the report and the next entitlement check carry the
new decision. Each re-evaluated account's cluster is then rescored after the commit.

The group rules (kyc.usage.lockstep) count the other accounts, so a farm reported one account at a
time is seen whole only by its last reports: of ten woken together, one report each, the first seven
are served until their next report (a gateway reports its active accounts every hour or so).
Tried: each woken account held here asking for the rescoring of the group it woke with (woken too,
on its uncommon templates, not held). All ten were held. But `kyc simulate --usage` (bulk reports:
nothing to gain there) held the agent tool's users at some time 31 -> 53 (seed 7474) and 24 -> 49
(seed 8585, a farm of 10): its launch adopters, each read with its whole day. Reverted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from kyc.engine import RuleSet
from kyc.models import SEVERITY, Account, ClusterMember
from kyc.persist import in_list
from kyc.scoring.decide import evaluate
from kyc.rescore.batch import rescore_chunk
from kyc.rescore.requests import after_commit
from kyc.usage.days import ClusterDaysOnce, lockstep_wanted, usage_facts
from kyc.usage.lockstep import lockstep_facts
from kyc.usage.reports import Recorded

if TYPE_CHECKING:
    from kyc.runtime import Runtime

_CLUSTERS = select(ClusterMember.account_id, ClusterMember.cluster_id).where(in_list(ClusterMember.account_id, "ids"))
_DECISIONS = select(Account.id, Account.decision).where(in_list(Account.id, "ids"))


def riskier(rules: RuleSet, subjects: dict[str, Any] | None, usage: dict[str, Any],
            stored: dict[str, dict], cluster_size: int | None = None) -> bool:
    """Whether the rules, given `usage` in place of each latest evaluation's usage facts, hit any
    subject harder than its stored outcome (`stored`: evaluation id -> its signals).

    `cluster_size`: the account's cluster's size now (read with its lock), in place of the one
    stored. Why: an evaluation made before its cluster grew holds the size it had then, and a rule
    reading the size with usage (cluster_far_beyond_quota) missed the cluster's first members
    until the cluster's rescore, after the commit: two of six linked accounts reported far beyond
    their quotas answered `allow`."""
    for slot, latest in (subjects or {}).items():
        signals = stored.get(latest["evaluation_id"])
        if signals is None:
            continue
        graph = signals.get("graph")
        if cluster_size is not None and graph is not None and graph.get("cluster_size") != cluster_size:
            signals = {**signals, "graph": {**graph, "cluster_size": cluster_size}}
        elif (signals.get("usage") or {}) == usage:
            continue
        outcome = evaluate(rules, latest.get("subject", slot), {**signals, "usage": usage})
        if SEVERITY[outcome.decision] > SEVERITY[latest["decision"]] or outcome.score > latest["score"]:
            return True
    return False


def accounts_to_reevaluate(runtime: Runtime, session: Session, recorded: Iterable[Recorded],
                           standing: dict[str, Any]) -> list[str]:
    """The accounts among `recorded` to re-evaluate now. `standing`: account id -> its row as
    locked for the report (subjects, first_seen_at, cluster_size, cluster_id)."""
    from kyc.tiers import evaluation_signals

    latest: dict[str, Recorded] = {}
    woke: set[str] = set()
    for r in recorded:
        if r.woke_up:
            woke.add(r.account_id)
        if r.account_id not in latest or r.day >= latest[r.account_id].day:
            latest[r.account_id] = r
    rules = runtime.rules
    candidates = [a for a in latest if a not in woke and standing[a].subjects]
    stored = evaluation_signals(session, [s["evaluation_id"] for a in candidates
                                          for s in standing[a].subjects.values()]) if candidates else {}
    # Most accounts are clusters of one: their cluster facts are their own (nothing to read).
    linked = {a for a in candidates if (standing[a].cluster_size or 1) > 1}
    rising = set(woke)
    # The lockstep facts of all candidates in two statements (kyc.usage.lockstep), not per account.
    wanted = [w for w in (lockstep_wanted(runtime, a, latest[a].usage_day, latest[a].usage_day["last_at"])
                          for a in candidates) if w is not None]
    lockstep = lockstep_facts(session, wanted, popular=runtime.config.usage_popular_prompt)
    # A cluster's days read once for the batch's accounts of it (kyc.usage.days.cluster_days): read
    # account by account, a bulk call of 400 steady reports of a cluster of 400 read 160,000 rows.
    read_once = ClusterDaysOnce()
    for account_id in candidates:
        day = latest[account_id].usage_day
        # A cluster of one: its cluster's day is its own (nothing to read).
        members = read_once(session, standing[account_id].cluster_id, day["day"]) if account_id in linked else []
        usage = usage_facts(runtime, session, account_id, day, day["last_at"], standing[account_id].first_seen_at,
                            lockstep=lockstep, members=members)
        if riskier(rules, standing[account_id].subjects, usage, stored, standing[account_id].cluster_size or 1):
            rising.add(account_id)
    return sorted(rising)


def reevaluate(runtime: Runtime, session: Session, account_ids: list[str]) -> dict[str, str]:
    """Re-evaluate accounts through the pipeline in the caller's transaction and ask for their
    clusters' rescoring once it commits; returns each account's new decision."""
    if not account_ids:
        return {}
    rules = runtime.rules
    rescore_chunk(runtime, session, account_ids, rules, trigger="usage")
    for account_id, cluster_id in session.execute(_CLUSTERS, {"ids": account_ids}).all():
        after_commit(session).ask_rescore(clusters=[cluster_id])
        after_commit(session).hand_over(runtime, exclude=account_id)
    return dict(session.execute(_DECISIONS, {"ids": account_ids}).all())
