"""Usage facts: what the account does with the API, from the API gateway's activity reports.

Read from the account's day of usage (kyc/usage/ keeps one row of totals per account and UTC
day), as of the evaluation: a live evaluation reads the day of its event time, a rescore the
account's latest day of usage (the day its latest report falls in). An account that never
reported usage has none of these facts (every rule reading them is false); on a day without
usage the day's counts are 0.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Mapping

from kyc.engine.schema import Field

HOURS = 24


def hour_of(at: datetime) -> int:
    """The UTC hour of its day that `at` falls in, hours being (h:00, h+1:00] as a report's
    window is (at - window, at]: a report ending on the hour (a gateway reporting hourly) is the
    hour before's. The day's first moment, 00:00:00, is its hour 0."""
    seconds = at.hour * 3600 + at.minute * 60 + at.second + at.microsecond / 1e6
    return max(0, math.ceil(seconds / 3600) - 1)
BASELINE_DAYS = 28          # the trailing window of usage.baseline_requests

FIELDS = (
    Field("usage.requests_today", "int", "Requests served to the account on the UTC day (activity reports).", 1200),
    Field("usage.requests_hour", "int", "Requests served in the UTC hour of the latest report, hours being (h:00, h+1:00] as windows are: a report ending on the hour is the hour before's.", 150),
    Field("usage.refused_today", "int", "Requests the gateway refused the account on the day (not entitled, over quota).", 0),
    Field("usage.tier", "str",
          "Tier whose quota the day is measured against: the latest report's tier, else the tier with the "
          "smallest daily quota in rules/tiers.yaml.", "free"),
    Field("usage.quota", "int", "That tier's requests_per_day quota (rules/tiers.yaml).", 1000),
    Field("usage.quota_ratio", "float", "requests_today / the tier's daily quota (1.0 = the whole quota used).", 1.2),
    Field("usage.active_hours", "int",
          "UTC hours of the day with any request (a report's window spread over the hours it covers).", 9),
    Field("usage.active_share", "float", "Share of the day's 24 hours that had requests (0-1).", 0.375),
    Field("usage.interval_cv", "float",
          "Request-weighted mean of the reports' interval_cv on the day: near 0 is machine-regular traffic. "
          "Missing when no report gave one.", 0.9),
    Field("usage.tokens_in", "int", "Input tokens on the day (reports that gave them).", 250000),
    Field("usage.tokens_out", "int", "Output tokens on the day.", 910000),
    Field("usage.token_ratio", "float",
          "Output tokens / input tokens on the day (distillation harvests long outputs from short prompts). "
          "Missing without input tokens.", 3.64),
    Field("usage.models", "int", "Distinct models the account called on the day.", 2),
    Field("usage.top_model_share", "float",
          "Share of the day's per-model requests that went to its most used model (missing without models).", 0.96),
    Field("usage.fingerprints", "int", "Distinct prompt templates (prompt_fingerprints) on the day, up to 100.", 2),
    Field("usage.networks_today", "int",
          "Distinct networks (/24, /64) the day's activity reports came from, as hashed buckets (up to 63; two "
          "networks rarely share one): one or two for a person at home and at work, one an hour for an account "
          "behind a rotating proxy or a job on a new cloud address each run. 0 for a day stored before kyc counted "
          "them, or reports without an IP.", 1),
    Field("usage.signup_to_first_use_days", "float",
          "Days from the account's first sighting (signup) to its first reported usage.", 0.2),
    Field("usage.baseline_requests", "float",
          f"The account's own mean requests per day over the {BASELINE_DAYS} days before the day, counted since "
          "its first use (days without usage count 0).", 900.0),
    Field("usage.history_days", "int",
          f"Days of usage history that baseline covers (0 to {BASELINE_DAYS}; 0: the day is the first use).", 28),
    Field("usage.lockstep_accounts", "int",
          "Other accounts acting in lockstep with this one on the day: sharing 3 or more of its prompt templates "
          "that are not popular (KYC_USAGE_POPULAR_PROMPT), in a common UTC hour (kyc/usage/lockstep.py).", 0),
    Field("usage.lockstep_woke", "int",
          "Of those, accounts woken: that woke the same UTC day or the day before (a wake late in a day is still "
          "one the next), from a dormancy longer than KYC_DORMANT_DAYS or by a first use of the API 7 days or more "
          "after signup (farms age their accounts; kyc/usage/lockstep.py).", 0),
    Field("usage.lockstep_began_together", "int",
          "Of those, accounts that began on the templates they share with this one (their first use of any of "
          "them) within a day of when this one began on them: a farm's accounts are set going together, a tool's "
          "users adopt it over weeks (kyc/usage/lockstep.py). A start in kyc's first two days of usage is where "
          "kyc began watching, and counts for no pair, unless the account signed up on or after kyc's first day "
          "of usage (kyc saw all its uses). Compare it with lockstep_accounts.", 0),
    Field("usage.lockstep_adopters", "int",
          "Other accounts that had begun, by the day, on the template most accounts began on of those this one "
          "shares in lockstep, whether or not they used it that day (prompt_starts; a rescore counts those begun "
          "by the day it runs, but of those begun on the day it reads or since, none that kyc holds now): a "
          "farm's group is the farm, a tool's users keep adding up over weeks, and the gateway refusing some of "
          "them does not shrink it (kyc/usage/lockstep.py); 0 without lockstep. Compare lockstep_began_together "
          "with it.", 0),
    Field("usage.lockstep_adopters_together", "int",
          "Of lockstep_adopters, those that began on that template within a day of when this one did, whether or "
          "not they used it that day: a farm's accounts set going together stay together in it when the gateway "
          "holds most of them, which shrinks lockstep_began_together (kyc/usage/lockstep.py). A start in kyc's "
          "first two days of usage counts for none (but an account's signed up since), as for "
          "lockstep_began_together.", 0),
    Field("usage.lockstep_addresses", "int",
          "Distinct addresses the lockstep group (this account and lockstep_accounts) acted from on the day, each "
          "account's last activity IP of the day: as many as the accounts, a farm behind residential proxies; one or "
          "a few, a group that shows itself (a class on its campus's NAT address, an office); 0 without lockstep.", 1),
    Field("usage.woke_together", "int",
          "On the day the account woke (as for lockstep_woke), and the day after: other "
          "accounts woken too (that day or the day before) that used any of its prompt templates that are not "
          "popular (KYC_USAGE_POPULAR_PROMPT) that day (kyc/usage/lockstep.py); 0 on other days.", 0),
    Field("usage.woke_together_share", "float",
          "On the day the account woke, and the day after: of the other accounts that used any of those templates "
          "that day, the share woken too (1.0: everyone on its templates woke with it, a farm; a tool's users coming back "
          "from a break are a small share of its users); missing on other days.", 1.0),
    Field("usage.woke_together_roaming", "int",
          "Of woke_together, the accounts that used three networks (/24, /64) or more that day (as "
          "usage.networks_today): a farm behind rotating residential proxies, an exit an hour, roams as a whole; "
          "a tool's users back from a break are at home or at work, and few of them roam. Missing on other days.",
          0),
    Field("usage.woke_together_addresses", "int",
          "Distinct addresses the woken group (this account and woke_together) acted from that day, each account's "
          "last activity IP of the day (as usage.lockstep_addresses): as many as the accounts, a small farm behind "
          "residential proxies, an exit each; one or a few, a team's office or a class on its campus's address. "
          "Missing on other days.", 1),
    Field("usage.earlier_adopters", "int",
          "On the day the account woke, and the day after: the other accounts that began before that day on the "
          "one of its templates of woke_together (not popular that day) that most accounts began on before it "
          "(prompt_starts), used that day or not (kyc/usage/lockstep.py). Missing on other days, and when "
          "woke_together is 0.", 0),
    Field("usage.earlier_adopters_held", "int",
          "Of earlier_adopters, those kyc holds now (review or block): a farm that wakes in waves finds its earlier "
          "waves held on the templates its next wave wakes on; a tool's earlier users are served. Missing as "
          "earlier_adopters is.", 0),
    Field("usage.cluster_requests_today", "int",
          "Requests the account's whole cluster (graph.cluster_id) was served on the day.", 1200),
    Field("usage.cluster_quota_ratio", "float",
          "The cluster's requests on the day / the sum of its active members' daily quotas.", 0.12),
    Field("usage.cluster_active_hour", "int", "Cluster members with requests in the UTC hour of the latest report (as usage.requests_hour).", 1),
    Field("usage.cluster_woke_today", "int",
          "Cluster members whose usage that day ended a dormancy longer than KYC_DORMANT_DAYS.", 0),
    Field("usage.baseline_ratio", "float",
          "requests_today / the baseline (1 = an ordinary day for this account; missing without history).", 1.1),
)


def quota_tier(tier: str | None, quotas: Mapping[str, int]) -> str | None:
    """The tier a day is measured against: the reported one when kyc knows it, else the tier
    with the smallest daily quota (what an account is served without an entitlement)."""
    if tier in quotas:
        return tier
    return min(quotas, key=lambda t: (quotas[t], t)) if quotas else None


def cluster_usage_signals(days: list[Mapping[str, Any]], at: datetime, quotas: Mapping[str, int],
                          dormancy_threshold: int) -> dict[str, Any]:
    """The cluster facts from its members' rows of the day of `at` (members without usage that
    day are absent)."""
    requests = sum(d["requests"] for d in days)
    quota = sum(quotas.get(quota_tier(d.get("tier"), quotas), 0) for d in days)
    return {
        "cluster_requests_today": requests,
        "cluster_quota_ratio": round(requests / quota, 4) if quota else 0.0,
        "cluster_active_hour": sum(1 for d in days if (d.get("hours") or [0] * HOURS)[hour_of(at)] > 0),
        "cluster_woke_today": sum(1 for d in days if (d.get("dormant_days") or 0) > dormancy_threshold),
    }


def usage_signals(day: Mapping[str, Any] | None, at: datetime, first_seen_at: datetime | None,
                  quotas: Mapping[str, int]) -> dict[str, Any]:
    """The usage facts as of `at` from the account's latest day row at or before it (None: no
    usage ever). `quotas`: tier -> requests_per_day."""
    if day is None:
        return {}
    facts: dict[str, Any] = {}
    first_used = day.get("first_used_at") or day["first_at"]
    if first_seen_at is not None:
        facts["signup_to_first_use_days"] = round(max((first_used - first_seen_at).total_seconds(), 0) / 86400, 3)
    today = day["day"] == at.date()
    requests = day["requests"] if today else 0
    hours = (day.get("hours") or [0] * HOURS) if today else [0] * HOURS
    active = sum(1 for n in hours if n > 0)
    tier = quota_tier(day.get("tier"), quotas)
    facts.update(requests_today=requests, requests_hour=hours[hour_of(at)] if today else 0,
                 refused_today=(day.get("refused") or 0) if today else 0,
                 active_hours=active, active_share=round(active / HOURS, 4))
    if tier is not None:
        quota = quotas[tier]
        facts.update(tier=tier, quota=quota, quota_ratio=round(requests / quota, 4) if quota else float(requests > 0))
    if not today:
        return facts
    if day.get("cv_requests"):
        facts["interval_cv"] = round(day["cv_sum"] / day["cv_requests"], 4)
    tokens_in, tokens_out = day.get("tokens_in") or 0, day.get("tokens_out") or 0
    facts.update(tokens_in=tokens_in, tokens_out=tokens_out)
    if tokens_in:
        facts["token_ratio"] = round(tokens_out / tokens_in, 4)
    models = day.get("models") or {}
    facts["models"] = len(models)
    if models and sum(models.values()):
        facts["top_model_share"] = round(max(models.values()) / sum(models.values()), 4)
    facts["fingerprints"] = len(day.get("fingerprints") or {})
    facts["networks_today"] = (day.get("networks") or 0).bit_count()
    history = day.get("history_days") or 0
    facts.update(baseline_requests=round(day.get("baseline") or 0.0, 2), history_days=history)
    if history:
        facts["baseline_ratio"] = round(requests / max(day.get("baseline") or 0.0, 1.0), 4)
    return facts
