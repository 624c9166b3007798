"""GET /v1/clusters and /v1/clusters/{id} — linked-account clusters for ops, largest first."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sqlalchemy import select

from kyc.api import documented, parse_query, respond, runtime, v1
from kyc.api.responses import Cluster as ClusterBody, Clusters
from kyc.api.errors import not_found
from kyc.graph import cluster_summary
from kyc.models import Cluster


class ClustersQuery(BaseModel):
    min_size: int = Field(2, ge=1, le=10_000_000, description="Smallest cluster size listed")
    limit: int = Field(50, ge=1, le=500, description="Most clusters listed")


class ClusterQuery(BaseModel):
    limit: int = Field(1000, ge=1, le=10_000, description="Most members listed")


@v1.get("/clusters")
@documented("List clusters", query=ClustersQuery, responses={200: Clusters}, errors=(400,), tag="ops")
def list_clusters():
    """Linked-account clusters, largest first, with their growth, member decisions and the
    (hashed) identifiers that link them."""
    query = parse_query(ClustersQuery)
    min_size, limit = query.min_size, query.limit
    with runtime().session() as session:
        clusters = session.execute(
            select(Cluster).where(Cluster.size >= min_size).order_by(Cluster.size.desc(), Cluster.id).limit(limit)
        ).scalars().all()
        return respond(Clusters, {"clusters": [cluster_summary(session, c) for c in clusters]})


@v1.get("/clusters/<cluster_id>")
@documented("Read a cluster", query=ClusterQuery, responses={200: ClusterBody}, errors=(400, 404), tag="ops")
def get_cluster(cluster_id: str):
    """One cluster and its members, each with the identifier kinds that link it."""
    limit = parse_query(ClusterQuery).limit
    with runtime().session() as session:
        cluster = session.get(Cluster, cluster_id)
        if cluster is None:
            raise not_found("cluster")
        return respond(ClusterBody, cluster_summary(session, cluster, members=limit))
