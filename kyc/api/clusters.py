"""GET /v1/clusters and /v1/clusters/{id} — linked-account clusters for ops, largest first."""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select

from kyc.api import runtime, v1
from kyc.errors import invalid, not_found
from kyc.graph import cluster_summary
from kyc.models import Cluster


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid("the request has invalid fields", {name: "must be an integer"}) from None
    if not low <= value <= high:
        raise invalid("the request has invalid fields", {name: f"must be between {low} and {high}"})
    return value


@v1.get("/clusters")
def list_clusters():
    min_size = _int_arg("min_size", 2, 1, 10_000_000)
    limit = _int_arg("limit", 50, 1, 500)
    with runtime().session() as session:
        clusters = session.execute(
            select(Cluster).where(Cluster.size >= min_size).order_by(Cluster.size.desc(), Cluster.id).limit(limit)
        ).scalars().all()
        return jsonify({"clusters": [cluster_summary(session, c) for c in clusters]})


@v1.get("/clusters/<cluster_id>")
def get_cluster(cluster_id: str):
    limit = _int_arg("limit", 1000, 1, 10_000)
    with runtime().session() as session:
        cluster = session.get(Cluster, cluster_id)
        if cluster is None:
            raise not_found("cluster")
        return jsonify(cluster_summary(session, cluster, members=limit))
