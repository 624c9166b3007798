"""The API gateway's tier check: GET /v1/accounts/{id}/entitlement?tier= (its usage reports: kyc/api/activity.py).

The entitlement answer is cacheable by the gateway: ETag = the account's state version plus a
digest of the answer, with Cache-Control: no-cache so the gateway revalidates every time
(If-None-Match -> 304, no body). It never serves a revoked account from cache, and still pays
for a small 304 only.
"""

from __future__ import annotations

from flask import Response, jsonify, request

from kyc.api import parse, runtime, v1
from kyc.errors import invalid, not_found
from kyc.tiers import UnknownAccount, entitlement, etag

CACHE_CONTROL = "private, no-cache"


@v1.get("/accounts/<account_id>/entitlement")
def get_entitlement(account_id: str):
    rt = runtime()
    tier_id = request.args.get("tier")
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
        response = jsonify(body)
    response.set_etag(tag)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response
