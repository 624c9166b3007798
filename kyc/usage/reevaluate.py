"""Usage changes decisions at once: a report that makes an account riskier re-evaluates it.

Which accounts: those a report woke up (account.woke_up), and those whose new usage facts
would make the rules hit harder. The second is asked of the rules themselves, not of fixed
thresholds: each subject's latest evaluation is evaluated again with its stored signals and
the new usage facts (a microsecond-scale check, its signals cached by evaluation id), and an
account whose decision or score would rise is re-evaluated. The check only selects accounts;
what they become is decided by the one pipeline (kyc.rescore.batch.rescore_chunk -> kyc.scoring), in
the report's transaction, so the answer to the report and the next entitlement check carry the
new decision. Each re-evaluated account's cluster is then rescored after the commit, and so is the
group a held account woke with (the group rules count the others: reported one account at a time,
the group's first accounts are held only once its last reports show it whole).
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kyc.engine import RuleSet
from kyc.models import SEVERITY, Account, ClusterMember
from kyc.persist import in_list
from kyc.scoring.decide import evaluate
from kyc.rescore.batch import rescore_chunk
from kyc.rescore.requests import after_commit
from kyc.usage.days import ClusterDaysOnce, lockstep_wanted, usage_facts
from kyc.usage.lockstep import HELD, lockstep_facts, woken, woken_peers
from kyc.usage.reports import Recorded

if TYPE_CHECKING:
    from kyc.runtime import Runtime

_CLUSTERS = select(ClusterMember.account_id, ClusterMember.cluster_id).where(in_list(ClusterMember.account_id, "ids"))
_DECISIONS = select(Account.id, Account.decision).where(in_list(Account.id, "ids"))


def _latest(recorded: Iterable[Recorded]) -> dict[str, Recorded]:
    """Each account's report of its latest day (the last of that day's)."""
    latest: dict[str, Recorded] = {}
    for r in recorded:
        if r.account_id not in latest or r.day >= latest[r.account_id].day:
            latest[r.account_id] = r
    return latest


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


def accounts_to_reevaluate(runtime: Runtime, session: Session, recorded: Sequence[Recorded],
                           standing: dict[str, Any]) -> list[str]:
    """The accounts among `recorded` to re-evaluate now. `standing`: account id -> its row as
    locked for the report (subjects, first_seen_at, cluster_size, cluster_id)."""
    from kyc.tiers import evaluation_signals

    latest = _latest(recorded)
    woke = {r.account_id for r in recorded if r.woke_up}
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


def reevaluate(runtime: Runtime, session: Session, account_ids: list[str],
               recorded: Sequence[Recorded] = ()) -> dict[str, str]:
    """Re-evaluate accounts through the pipeline in the caller's transaction and ask for their
    clusters' rescoring once it commits; returns each account's new decision.

    `recorded`: the reports that made them riskier. Each account woken (kyc.usage.lockstep.woken)
    on the latest day of its reports and held now asks, once the transaction commits, for the
    rescoring of the group it woke with (kyc.usage.lockstep.woken_peers: woken too, on its uncommon
    templates, not held). Why: the group rules count the others, so a group reported one account
    at a time was seen whole only by its last reports, and its first accounts were served until
    their next report (10 accounts of a farm, one report each: the first 7 allowed)."""
    if not account_ids:
        return {}
    rules = runtime.rules
    rescore_chunk(runtime, session, account_ids, rules, trigger="usage")
    for account_id, cluster_id in session.execute(_CLUSTERS, {"ids": account_ids}).all():
        after_commit(session).ask_rescore(clusters=[cluster_id])
        after_commit(session).hand_over(runtime, exclude=account_id)
    decisions = dict(session.execute(_DECISIONS, {"ids": account_ids}).all())
    held: dict[date, list[str]] = {}
    for account_id, r in _latest(recorded).items():
        if decisions.get(account_id) in HELD and woken(r.usage_day.get("woke_on"), r.day):
            held.setdefault(r.day, []).append(account_id)
    if held:
        peers = woken_peers(session, held, popular=runtime.config.usage_popular_prompt) - set(account_ids)
        if peers:
            after_commit(session).ask_rescore(accounts=sorted(peers))
            after_commit(session).hand_over(runtime)
    return decisions
