"""The review queue and a person's decisions:

    GET  /v1/reviews?limit=N                 accounts held at review, oldest first
    POST /v1/accounts/{id}/review            {"outcome": "allow" | "block", "note"}
    POST /v1/clusters/{id}/actions           {"action": "block" | "review" | "release", "note"}
"""

from __future__ import annotations

from flask import g, jsonify

from kyc.api import parse, runtime, v1
from kyc.api.accounts import get_account
from kyc.api.clusters import _int_arg
from kyc.inputs import ClusterActionInput, ReviewInput
from kyc.ops.actions import act_on_cluster
from kyc.ops.audit import key_actor
from kyc.ops.reviews import review_account, review_queue


@v1.get("/reviews")
def reviews():
    limit = _int_arg("limit", 50, 1, 500)
    with runtime().session() as session:
        return jsonify({"reviews": review_queue(session, limit)})


@v1.post("/accounts/<account_id>/review")
def review(account_id: str):
    inp = parse(ReviewInput)
    rt = runtime()
    with rt.session() as session, session.begin():
        review_account(rt, session, account_id, inp.outcome, inp.note, key_actor(g.get("api_key")))
    return get_account(account_id)


@v1.post("/clusters/<cluster_id>/actions")
def cluster_action(cluster_id: str):
    inp = parse(ClusterActionInput)
    done = act_on_cluster(runtime(), cluster_id, inp.action, inp.note, key_actor(g.get("api_key")))
    return jsonify({"cluster_id": done.cluster_id, "members": done.members, "changed": done.changed,
                    "audit_event_id": done.event_id})
