"""Graph facts: the cluster of accounts this one is linked to (kyc/graph builds it)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from kyc.engine.schema import Field

if TYPE_CHECKING:
    from kyc.graph import ClusterFacts

FIELDS = (
    Field("graph.cluster_id", "str", "Id of the account's cluster (accounts linked by shared identifiers).", "cl_..."),
    Field("graph.cluster_size", "int", "Accounts in the cluster, this one included (1 when it links to none).", 1),
    Field("graph.cluster_growth_24h", "int",
          "Cluster members whose first event lies in the 24 hours up to this evaluation (event time).", 1),
    Field("graph.cluster_age_days", "float", "Days from the cluster's earliest member event to this evaluation.", 0.0),
    Field("graph.cluster_disposable_share", "float", "Share of members (0-1) that signed up with a disposable email.", 0.0),
    Field("graph.cluster_voip_share", "float", "Share of members with a VoIP or listed virtual phone number.", 0.0),
    Field("graph.cluster_hosting_share", "float",
          "Share of members whose signup IP is a hosting / data-centre address (the ip.hosting signal).", 0.0),
    Field("graph.cluster_headless_share", "float", "Share of members that signed up from a headless or automated browser.", 0.0),
    Field("graph.linked_by_work_only", "bool",
          "The account is linked to its cluster only with what people who work together share: prompt templates "
          "and the network activity reports came from (an office, a campus); false when it shares an identity "
          "(device, mailbox, phone, card, API key, or weak kinds enough without those) or links to none.", False),
    Field("graph.cluster_labeled_fraud", "int", "Members labeled fraud by ops.", 0),
    Field("graph.cluster_blocked", "int", "Members currently blocked.", 0),
)


def member_flags(signals: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The traits a cluster counts, from one evaluation's signals (families absent: unchanged)."""
    flags = {}
    if "email" in signals:
        flags["disposable"] = bool(signals["email"].get("disposable"))
    if "phone" in signals:
        flags["voip"] = bool(signals["phone"].get("voip"))
    if "ip" in signals:
        flags["hosting"] = bool(signals["ip"].get("hosting"))     # filled once the ip family has it
    if "device" in signals:
        flags["headless"] = bool(signals["device"].get("headless"))
    return flags


def graph_signals(cluster: ClusterFacts, at: datetime) -> dict[str, Any]:
    """The graph family from a cluster's facts (kyc.graph.ClusterFacts)."""
    size = max(cluster.size, 1)
    return {
        "cluster_id": cluster.id,
        "cluster_size": cluster.size,
        "cluster_growth_24h": cluster.growth_24h,
        "cluster_age_days": round(max((at - cluster.first_seen_at).total_seconds(), 0) / 86400, 3),
        "cluster_disposable_share": round(cluster.disposable / size, 4),
        "cluster_voip_share": round(cluster.voip / size, 4),
        "cluster_hosting_share": round(cluster.hosting / size, 4),
        "cluster_headless_share": round(cluster.headless / size, 4),
        "linked_by_work_only": cluster.linked_by_work_only,
        "cluster_labeled_fraud": cluster.labeled_fraud,
        "cluster_blocked": cluster.blocked,
    }
