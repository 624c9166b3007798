"""The API gateway's tier check: GET /v1/accounts/{id}/entitlement?tier= (its usage reports: kyc/api/activity.py).

The entitlement answer is cacheable by the gateway: ETag = the account's state version plus a
digest of the answer, with Cache-Control: no-cache so the gateway revalidates every time
(If-None-Match -> 304, no body). It never serves a revoked account from cache, and still pays
for a small 304 only.
"""

from __future__ import annotations

import re
from typing import Annotated

from flask import Response, request
from pydantic import BaseModel, Field, field_validator

from kyc.api import VALUES, documented, parse_query, respond, runtime, v1
from kyc.api.responses import Entitlement
from kyc.api.errors import invalid
from kyc.inputs import event_time, parse_time
from kyc.tiers import entitlement, etag

CACHE_CONTROL = "private, no-cache"
# A '+' offset sent unencoded in a query string arrives as a space (form decoding): `at=...T09:00:00+01:00`
# reads `...T09:00:00 01:00`. A space is never part of an RFC 3339 time there, so it is read back
# as the '+' the gateway meant, not refused.
_UNENCODED_PLUS = re.compile(r"(.*T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?) ([0-9]{2}:[0-9]{2})", re.IGNORECASE)


class EntitlementQuery(BaseModel):
    tier: str = Field(min_length=1, max_length=64, description="A tier of rules/tiers.yaml, e.g. high_volume",
                      json_schema_extra={VALUES: "tiers"})
    at: Annotated[str, Field(max_length=40, json_schema_extra={"format": "date-time"})] | None = Field(
        None, description="Evaluate the check as of this RFC 3339 time (backfills and replays; default now): the "
                          "tier's time-dependent conditions (account age, dormancy, wake-up) as of then, the "
                          "account's standing (decision, label, verifications) as kyc knows it now")

    @field_validator("at")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is not None:
            value = _UNENCODED_PLUS.sub(r"\1+\2", value)
            event_time(value)          # from 2000-01-01 to a day ahead, as every time kyc reads
        return value


@v1.get("/accounts/<account_id>/entitlement")
@documented("Gate a tier", query=EntitlementQuery, responses={200: Entitlement, 304: None}, errors=(400, 404),
            headers={"If-None-Match": "The ETag of an earlier answer: 304 without a body if it still holds"},
            tag="gateway")
def get_entitlement(account_id: str):
    """Whether the account may use the tier now, and the quota the gateway enforces. The answer
    carries an ETag and Cache-Control: private, no-cache; revalidate with If-None-Match."""
    rt = runtime()
    query = parse_query(EntitlementQuery)
    tier_id = query.tier
    tiers = rt.tiers
    tier = tiers.get(tier_id)
    if tier is None:
        known = ", ".join(tiers.tiers)
        raise invalid("unknown tier" if tier_id else "tier is required",
                      {"tier": f"{'unknown tier' if tier_id else 'required'}; one of {known}"})
    with rt.read_connection() as conn:
        body = entitlement(conn, tier, account_id, dormancy_threshold=rt.config.dormant_days,
                           now=parse_time(query.at) if query.at else None)
    response = respond(Entitlement, body)
    tag = etag(body["state_version"], response.get_data())
    # Weak comparison, as RFC 9110 asks of If-None-Match: a proxy that compresses the answer
    # (nginx with gzip) hands the gateway the tag as W/"...".
    if request.if_none_match.contains_weak(tag):
        response = Response(status=304)
    response.set_etag(tag)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response
