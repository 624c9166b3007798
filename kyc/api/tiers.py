"""The API gateway's calls: GET /v1/accounts/{id}/entitlement?tier= and POST /v1/accounts/{id}/activity.

The entitlement answer is cacheable by the gateway: ETag = the account's state version plus a
digest of the answer, with Cache-Control: no-cache so the gateway revalidates every time
(If-None-Match -> 304, no body). It never serves a revoked account from cache, and still pays
for a small 304 only.
"""

from __future__ import annotations

from flask import Response, request
from pydantic import BaseModel, Field

from kyc.activity import record_activity
from kyc.api import documented, parse, parse_query, respond, runtime, v1
from kyc.api.responses import Activity, Entitlement
from kyc.errors import invalid, not_found
from kyc.inputs import ActivityInput, rfc3339
from kyc.jobs import enqueue_rescore
from kyc.tiers import UnknownAccount, entitlement, etag

CACHE_CONTROL = "private, no-cache"


class EntitlementQuery(BaseModel):
    tier: str = Field(min_length=1, max_length=64, description="A tier of rules/tiers.yaml, e.g. high_volume")


@v1.get("/accounts/<account_id>/entitlement")
@documented("Gate a tier", query=EntitlementQuery, responses={200: Entitlement, 304: None}, errors=(400, 404),
            headers={"If-None-Match": "The ETag of an earlier answer: 304 without a body if it still holds"},
            tag="gateway")
def get_entitlement(account_id: str):
    """Whether the account may use the tier now, and the quota the gateway enforces. The answer
    carries an ETag and Cache-Control: private, no-cache; revalidate with If-None-Match."""
    rt = runtime()
    tier_id = parse_query(EntitlementQuery).tier
    tiers = rt.tiers
    tier = tiers.get(tier_id)
    if tier is None:
        known = ", ".join(tiers.tiers)
        raise invalid("unknown tier" if tier_id else "tier is required",
                      {"tier": f"{'unknown tier' if tier_id else 'required'}; one of {known}"})
    with rt.engine.connect() as conn:
        try:
            body = entitlement(conn, tier, account_id, dormancy_threshold=rt.config.dormant_days)
        except UnknownAccount:
            raise not_found("account") from None
    tag = etag(body)
    if request.if_none_match.contains(tag):
        response = Response(status=304)
    else:
        response = respond(Entitlement, body)
    response.set_etag(tag)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response


@v1.post("/accounts/<account_id>/activity")
@documented("Report activity", body=ActivityInput, responses={200: Activity}, tag="gateway")
def report_activity(account_id: str):
    """What the gateway served to the account since its last report. Updates last-seen and the
    usage counters; activity after a long dormancy rescores the account."""
    inp = parse(ActivityInput)
    rt = runtime()
    with rt.session() as session, session.begin():
        result = record_activity(session, account_id, inp.at(), inp.requests, inp.ip, rt.config.secret_key,
                                 rt.config.dormant_days)
    if result.woke_up:
        # After the commit: the rescore reads the activity just recorded (account.woke_up).
        enqueue_rescore(rt, [account_id], f"activity after {result.dormant_days} dormant days")
    return respond(Activity, {
        "account_id": account_id, "last_seen_at": rfc3339(result.last_seen_at), "day": result.day.isoformat(),
        "requests_today": result.requests_today, "dormant_days": result.dormant_days, "woke_up": result.woke_up,
        "rescore_requested": result.woke_up,
    })
