"""The API gateway's usage reports: POST /v1/accounts/{id}/activity and POST /v1/activity (bulk).

Both record and link in one transaction and answer each report with the account's decision
after it: a report that made the account riskier, or whose identifiers moved it into another
cluster (kyc.usage.identifiers.link_reports), re-evaluated it before the commit (kyc/usage/).
"""

from __future__ import annotations

from typing import Callable

from flask import g, request

from kyc.api import documented, parse, read_json, respond, runtime, v1
from kyc.api.responses import Activity, BulkActivity
from kyc.api.errors import ApiError, invalid
from kyc.errors import NotFound, UnknownAccounts
from kyc.idempotency import KEY_SCHEMA, Call, key_problem
from kyc.inputs import MAX_ACCOUNT_ID, MAX_BULK_REPORTS, ActivityInput, BulkActivityInput, rfc3339
from kyc.persist import pipelined
from kyc.security import KeyedHashes
from kyc.usage.identifiers import link_reports, linked
from kyc.usage.reevaluate import accounts_to_reevaluate, reevaluate
from kyc.usage.reports import Recorded, record_reports, unknown_accounts

BULK_MAX_BODY_BYTES = 4 * 1024 * 1024


IDEMPOTENCY = {"Idempotency-Key": "Optional, unique per call (1-255 visible ASCII characters): the same call "
                                   "sent again within 24 hours is answered as the first time and changes "
                                   "nothing; reused for another body, 409 (kyc/idempotency.py)"}
IDEMPOTENCY_SCHEMA = {"Idempotency-Key": KEY_SCHEMA}


@v1.post("/accounts/<account_id>/activity")
@documented("Report activity", body=ActivityInput, responses={200: Activity}, errors=(409,), tag="gateway",
            headers=IDEMPOTENCY, header_schemas=IDEMPOTENCY_SCHEMA)
def report_activity(account_id: str):
    """What the gateway served to the account since its last report. Updates last-seen and the
    usage counters; a report that makes the account riskier evaluates it again at once."""
    inp = parse(ActivityInput)
    _check_tiers([inp], lambda i: "tier")
    call = _call(lambda: {"account_id": account_id, **inp.model_dump(mode="json", exclude_unset=True)})
    try:
        (answer,) = _record([(account_id, inp)], call)
    except UnknownAccounts:
        raise NotFound("account", account_id) from None
    return respond(Activity, answer)


@v1.post("/activity")
@documented("Report activity in bulk", body=BulkActivityInput, responses={200: BulkActivity}, errors=(409,),
            tag="gateway", headers=IDEMPOTENCY, header_schemas=IDEMPOTENCY_SCHEMA)
def report_activity_bulk():
    """1 to 1,000 reports, all or nothing (errors keyed by index); bodies up to 4 MiB."""
    data = read_json(BULK_MAX_BODY_BYTES)
    try:
        bulk = parse(BulkActivityInput, data)
        _check_tiers(bulk.reports, lambda i: f"reports[{i}].tier")
    except ApiError as refused:
        raise _every_error(refused, data) from None
    call = _call(lambda: bulk.model_dump(mode="json", exclude_unset=True))
    answers = _record([(r.account_id, r) for r in bulk.reports], call)   # UnknownAccounts: 400, fields by index
    return respond(BulkActivity, {"results": answers})


def _call(body: Callable[[], dict]) -> Call | None:
    """The call's idempotency key, if it sent one (400 if it is not one). `body` is dumped only
    then: a bulk call's 1,000 reports take 2.3 ms to dump, for nothing without a key."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    problem = key_problem(key)
    if problem is not None:
        raise invalid("the Idempotency-Key header is not a key", {"Idempotency-Key": problem})
    return Call(runtime().config.secret_key, g.api_key, request.path, key, body())


def _check_tiers(reports: list[ActivityInput], name) -> None:
    wrong = _unknown_tiers([(name(i), r.tier) for i, r in enumerate(reports)])
    if wrong:
        raise invalid("the request has invalid fields", wrong)


def _unknown_tiers(named: list[tuple[str, object]]) -> dict[str, str]:
    tiers = runtime().tiers.tiers
    return {field: f"unknown tier; one of {', '.join(tiers)}" for field, tier in named
            if isinstance(tier, str) and tier.strip() not in tiers}


def _every_error(refused: ApiError, data: object) -> ApiError:
    """A refused bulk call names at once every report the gateway must drop or mend: beside the
    fields refused, the unknown tiers and accounts of all its reports. (Found one kind after the
    other, a gateway that resends the rest met them in as many rounds.) A call with no invalid
    field still finds all its unknown accounts at once, as it records (UnknownAccounts)."""
    reports = data.get("reports") if isinstance(data, dict) else None
    if not isinstance(reports, list) or not 0 < len(reports) <= MAX_BULK_REPORTS:
        return refused                      # the envelope itself is wrong: nothing more to name
    readable = [(i, r) for i, r in enumerate(reports) if isinstance(r, dict)]
    fields = _unknown_tiers([(f"reports[{i}].tier", r.get("tier")) for i, r in readable])
    named = {i: r["account_id"].strip() for i, r in readable
             if isinstance(r.get("account_id"), str) and 0 < len(r["account_id"].strip()) <= MAX_ACCOUNT_ID}
    with runtime().read_connection() as conn:
        unknown = unknown_accounts(conn, list(named.values()))
    fields.update({f"reports[{i}].account_id": "unknown account" for i, a in named.items() if a in unknown})
    fields.update(refused.fields)           # a field's own error first: it says why it is wrong
    return invalid(refused.message, fields)


class _AnsweredBefore(Exception):
    """A call with the same idempotency key committed first: roll back, answer as it was."""


def _record(reports: list[tuple[str, ActivityInput]], call: Call | None) -> list[dict]:
    rt = runtime()
    try:
        # Pipelined (kyc.persist.pipelined): the batch's writes (uses, days, reports, accounts,
        # links) travel with the next read and the COMMIT, not one round trip each.
        with rt.session() as session, pipelined(session):
            hashes = KeyedHashes(rt.config.secret_key)
            recorded, standing = record_reports(session, reports, secret=rt.config.secret_key,
                                                dormancy_threshold=rt.config.dormant_days, hashes=hashes)
            shown, moved = link_reports(rt, session, reports, hashes)
            redone = set(accounts_to_reevaluate(rt, session, recorded, standing)) | set(moved)
            decisions = {a: row.decision for a, row in standing.items()}
            decisions.update(reevaluate(rt, session, sorted(redone)))
            answers = [_answer(r, decisions[r.account_id], r.account_id in redone) for r in recorded]
            if call is not None and not call.keep(session, answers):
                raise _AnsweredBefore
    except _AnsweredBefore:
        with rt.session() as session:
            return call.kept(session)
    linked(rt).add(shown)               # committed
    return answers


def _answer(r: Recorded, decision: str, reevaluated: bool) -> dict:
    return {
        "account_id": r.account_id, "requests_today": r.requests_today, "decision": decision,
        "day": r.day.isoformat(), "last_seen_at": rfc3339(r.last_seen_at), "dormant_days": r.dormant_days,
        "woke_up": r.woke_up, "reevaluated": reevaluated, "rescore_requested": reevaluated,
    }
