"""The identity graph: accounts linked by the identifiers they share, clustered with union-find.

    core.py     identifier kinds (LINK_KINDS: add a kind there), super-node policy, the pure
                clustering both linking and rebuild follow, the typed results below
    link.py     attach an account for an evaluation: record its identifiers, link, merge, split
    readout.py  a cluster's facts for an evaluation; what ops see of a cluster
    chunk.py    a rescore chunk's read-ahead of its accounts' memberships and clusters
    rebuild.py  recompute nodes, edges and clusters from the recorded sightings

What scoring does with the graph, in order: `attach` (or, rescoring a chunk, ChunkGraph.attach)
gives an Attachment; `settle_flags` counts the account's traits in its cluster;
`cluster_facts` reads the cluster's ClusterFacts for the rules; `write_new` writes a new
membership once its traits are final. A cluster whose standing rises asks for its members'
rescoring once the transaction commits.
"""

from kyc.graph.chunk import ChunkGraph, ChunkStale
from kyc.graph.core import (GROWTH_CAP, GROWTH_SPAN, LINK_KINDS, SHARED_WORK, STRONG, WEAK, WEAK_KINDS_NEEDED,
                            Attachment, ClusterFacts, Node, Policy, UnionFind, components, linked_accounts)
from kyc.graph.link import (attach, ensure_member, link, link_many, locked_cluster, merge, recluster, set_flags,
                            settle_flags, write_new)
from kyc.graph.readout import cluster_facts, cluster_summary, growth, link_reasons, newest_join, shared_kinds
from kyc.graph.rebuild import rebuild

__all__ = ["GROWTH_CAP", "GROWTH_SPAN", "LINK_KINDS", "SHARED_WORK", "STRONG", "WEAK", "WEAK_KINDS_NEEDED",
           "Attachment", "ChunkGraph", "ChunkStale", "ClusterFacts", "Node", "Policy", "UnionFind", "attach",
           "cluster_facts", "cluster_summary", "components", "ensure_member", "growth", "link", "link_many",
           "link_reasons", "linked_accounts", "locked_cluster", "merge", "newest_join", "rebuild", "recluster",
           "set_flags", "settle_flags", "shared_kinds", "write_new"]
