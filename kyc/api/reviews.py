"""The review queue and a person's decisions:

    GET  /v1/reviews?limit=N                 accounts held at review, oldest first
    POST /v1/accounts/{id}/review            {"outcome": "allow" | "block", "note"}
    POST /v1/clusters/{id}/actions           {"action": "block" | "review" | "release", "note"}
"""

from __future__ import annotations

from flask import g
from pydantic import BaseModel, Field

from kyc.api import documented, parse, parse_query, respond, runtime, v1
from kyc.api.accounts import get_account
from kyc.api.responses import Account, ClusterActionResult, Reviews
from kyc.inputs import ClusterActionInput, ReviewInput
from kyc.ops.actions import act_on_cluster
from kyc.ops.audit import key_actor
from kyc.ops.reviews import review_account, review_queue


class ReviewsQuery(BaseModel):
    limit: int = Field(50, ge=1, le=500, description="Most entries listed")


@v1.get("/reviews")
@documented("Review queue", query=ReviewsQuery, responses={200: Reviews}, errors=(400,), tag="ops")
def reviews():
    """Accounts held at review that no person has decided yet, oldest first."""
    limit = parse_query(ReviewsQuery).limit
    with runtime().session() as session:
        return respond(Reviews, {"reviews": review_queue(session, limit)})


@v1.post("/accounts/<account_id>/review")
@documented("Decide a review", body=ReviewInput, responses={200: Account}, errors=(400, 404, 409), tag="ops")
def review(account_id: str):
    """A person's decision: the account's decision becomes `outcome` (entitlements follow at
    once), recorded with the key's name and time, and the account leaves the queue. Answers
    with the account."""
    inp = parse(ReviewInput)
    rt = runtime()
    with rt.session() as session, session.begin():
        review_account(rt, session, account_id, inp.outcome, inp.note, key_actor(g.get("api_key")),
                       seen_version=inp.state_version)
    return get_account(account_id)


@v1.post("/clusters/<cluster_id>/actions")
@documented("Act on a cluster", body=ClusterActionInput, responses={200: ClusterActionResult}, tag="ops")
def cluster_action(cluster_id: str):
    """One decision (block, review or release) for every current member of the cluster at once."""
    inp = parse(ClusterActionInput)
    done = act_on_cluster(runtime(), cluster_id, inp.action, inp.note, key_actor(g.get("api_key")))
    return respond(ClusterActionResult, {"cluster_id": done.cluster_id, "members": done.members,
                                         "changed": done.changed, "kept": done.kept,
                                         "audit_event_id": done.event_id})
