"""The pipeline every evaluation goes through: Input -> signals -> engine -> decide -> persist.

Live signups, payment methods, worker rescoring and backtests all call into here; there is
no second scoring path.
"""

from __future__ import annotations

import logging
from datetime import datetime
from time import perf_counter
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from kyc import graph, metrics
from kyc.engine import RuleSet
from kyc.ids import new_id
from kyc.inputs import INPUTS, PaymentMethodInput, SignupInput, rfc3339
from kyc.models import Account, Evaluation, utcnow
from kyc.rescore.requests import after_commit
from kyc.scoring.accounts import AccountView, Chunk, EvaluationRecord, LiveAccount
from kyc.scoring.decide import evaluate, settle
from kyc.security import mask_email, mask_ip
from kyc.signals import COLLECTORS, Identifiers, Lookups
from kyc.signals.account import account_signals
from kyc.signals.degraded import degraded_sources
from kyc.signals.graph import graph_signals, member_flags
from kyc.signals.payment import load_bin_table
from kyc.usage.days import usage_facts
from kyc.verification import verified_kinds

if TYPE_CHECKING:
    from kyc.runtime import Runtime   # which starts the background rescoring: it imports this module

log = logging.getLogger("kyc.scoring")


# What an evaluation was made for (evaluations.trigger): "live", an event as it came (a signup,
# a card; a backfilled one too); the others score an account again, reading its facts as of now:
# "rescore" (rules, cluster or verifications changed) and "usage" (a usage report made it
# riskier; the backtest replays these with the live ones, kyc.backtest).
AGAIN = ("rescore", "usage")


def score(runtime: Runtime, session: Session, subject: str, inp: SignupInput | PaymentMethodInput, *,
          trigger: str = "live", at: datetime | None = None, rules: RuleSet | None = None, record: bool = True,
          view: AccountView | None = None) -> EvaluationRecord:
    """Score one input and persist the evaluation and the account, in the caller's transaction.

    `view`: the account as scoring reads it (kyc.scoring.accounts); by default the account of
    `inp` on its own (LiveAccount: its row locked, or created). A rescore chunk passes its
    read-ahead view of the account (Chunk.view), with record=False.

    `record=False` (rescoring) adds no sightings: no new event happened, so velocity and links
    must not count the account twice. Linking happens before the rules run, so graph signals
    see the cluster this evaluation joins; the account's traits and block status update the
    cluster's counters, and a cluster whose standing rises queues its members for rescoring
    once this transaction commits.

    Returns the evaluation, with its `settlement` (decide.Settlement: what it did to the
    account's standing; a block is kept unless a releases_block rule acts).
    """
    rules = rules or runtime.rules          # read once: a reload mid-request does not split the set
    at = at or inp.at()
    if view is None:
        view = LiveAccount.open(session, inp.account_id, at, likely_new=subject == "signup")
    account, created = view.account, view.created
    # Account facts describe the account now when it is rescored (a wake-up is why it is),
    # and as of the event for a live or backfilled input. They include the verifications
    # completed, which satisfy verify rules (see RuleSet.evaluate).
    facts_at = max(at, utcnow()) if trigger in AGAIN else at
    account_facts = account_signals(
        at if created else account.first_seen_at, facts_at, view.dormancy, runtime.config.dormant_days,
        frozenset() if created else verified_kinds(view.verified, account.subjects))
    lookups = Lookups(rules.lists, view.velocity(runtime), runtime.config.secret_key, runtime.geoip,
                      load_bin_table(runtime.config.bin_table))
    started = perf_counter()
    signals, identifiers = COLLECTORS[subject](inp, lookups, at)
    signal_seconds = perf_counter() - started
    signals["account"] = account_facts
    # Usage as of the event for a live or backfilled input; a rescore reads the account's
    # latest day of usage as of its latest report (what a report re-evaluates it for), with
    # the prompt templates' adopters known now (kyc.usage.lockstep: a tool's first users,
    # held as a group, are released once the tool has grown past them).
    usage_day = view.usage_day(session, None if trigger in AGAIN else at.date())
    if usage_day is not None:
        usage_at = usage_day["last_at"] if trigger in AGAIN else at
        adopted_by = facts_at.date() if trigger in AGAIN else None
        # What the view read ahead (a rescore chunk: its accounts' lockstep and clusters' days).
        ahead = view.lockstep(adopted_by) if adopted_by else None
        signals["usage"] = usage_facts(runtime, session, account.id, usage_day, usage_at, account.first_seen_at,
                                       adopted_by=adopted_by, lockstep=ahead,
                                       members=view.cluster_days(session, usage_day["day"]))
    policy = graph.Policy.from_config(runtime.config)
    # Traits describe the registration: a card added later from another network must not reset
    # the signup's hosting (or any other) trait, nor give a new account's cluster its traits.
    flags = member_flags(signals) if subject == "signup" else {}
    new_event = identifiers if record else None
    attachment = view.attach(session, policy, at, new_event, flags)
    cluster = attachment.cluster
    graph.settle_flags(session, policy, attachment, flags)
    signals["graph"] = graph_signals(graph.cluster_facts(session, attachment, at, as_of_newest=trigger in AGAIN),
                                     at)
    outcome = evaluate(rules, subject, signals)
    metrics.evaluated(subject, trigger, outcome.decision, outcome.reasons, signal_seconds)
    evaluation = EvaluationRecord(
        id=new_id("ev"), account_id=account.id, subject=subject, trigger=trigger, occurred_at=at,
        input=inp.stored(), signals=signals, reasons=outcome.reasons, decision=outcome.decision,
        score=outcome.score, required_verifications=outcome.required_verifications,
        rules_version=rules.version,
    )
    slot = _slot(subject, identifiers)
    evaluation.settlement = settle(account, slot, subject, evaluation.id, outcome, at, cluster=cluster,
                                   steps=runtime.config.graph_rescore_sizes)
    graph.settle_flags(session, policy, attachment, {"blocked": account.decision == "block"})
    view.keep(runtime, session, evaluation, attachment, new_event)
    if evaluation.settlement.proved_payment and view.rescores_alone:
        # A card that proves payment is a completed verification: as one does (kyc.verification
        # .service), it evaluates the account's other subjects again at once, which may have
        # asked for that proof.
        rescore_account(runtime, session, account.id, rules=rules, skip=slot)
    after_commit(session).hand_over(runtime, exclude=account.id)
    # Masked identifiers only: never a full email or IP, and payment inputs hold no card number.
    log.info("scored %s account=%s email=%s ip=%s decision=%s score=%d trigger=%s", subject, account.id,
             mask_email(getattr(inp, "email", None)), mask_ip(getattr(inp, "ip", None)),
             outcome.decision, outcome.score, trigger)
    return evaluation


def rescore_account(runtime: Runtime, session: Session, account_id: str, *, rules: RuleSet | None = None,
                    chunk: Chunk | None = None, skip: str | None = None, trigger: str = "rescore"
                    ) -> list[EvaluationRecord]:
    """Score again the latest input of each subject of an account, with current rules and history.

    Each new evaluation is marked `trigger` (one of AGAIN: "rescore", or "usage" when a usage
    report re-evaluates it) and keeps the original event time. `chunk`:
    the account is one of a chunk read by read_chunk (which holds its account and inputs).
    `skip`: a slot left as it is (the evaluation just made, which asked for the others).
    """
    if chunk:
        account = chunk.accounts.get(account_id)
        subjects = account.subjects if account else None
    else:
        subjects = session.execute(select(Account.subjects).where(Account.id == account_id)).scalar_one_or_none()
    if subjects is None:
        return []
    results = []
    for slot, latest in sorted(subjects.items()):
        if slot == skip:
            continue
        subject = latest.get("subject", slot)
        if subject not in COLLECTORS:
            # Written by a build that scores this subject (a newer release, or an evaluation
            # recorded by another part of the system); its latest evaluation stays as it is.
            log.warning("rescore of %s keeps its %s evaluation: this build cannot score %s", account_id,
                        subject, subject)
            continue
        evaluation_id = latest["evaluation_id"]
        original = chunk.originals.get(evaluation_id) if chunk else session.get(Evaluation, evaluation_id)
        if original is None:
            # The account names an evaluation the database does not hold (rows restored or
            # loaded by hand): nothing to score again; the others are, and the slot stays.
            log.warning("rescore of %s keeps its %s slot: its evaluation %s is not stored", account_id, slot,
                        evaluation_id)
            continue
        try:
            inp = INPUTS[subject].model_validate(original.input)
        except ValidationError as exc:
            # Stored by a release that accepted what this one refuses (a field's check tightened
            # since): raised here, it failed the whole batch at every try, and the accounts after
            # this one were never rescored. The slot keeps its evaluation. Field names only: the
            # values may be an email or an address.
            fields = sorted({".".join(map(str, error["loc"])) for error in exc.errors()})
            log.warning("rescore of %s keeps its %s slot: this build refuses its stored input (%s)", account_id,
                        slot, ", ".join(fields))
            continue
        results.append(score(runtime, session, subject, inp, trigger=trigger, at=original.occurred_at,
                             rules=rules, record=False, view=chunk.view(account_id) if chunk else None))
    return results


def _slot(subject: str, identifiers: Identifiers) -> str:
    """Where an evaluation sits in account.subjects: the latest one per subject, except payment
    methods, which get one slot per card, so adding a clean card never clears a blocked one."""
    if subject == "payment_method":
        card = next(value_hash for kind, value_hash in identifiers if kind == "card_fingerprint")
        return f"payment_method:{card}"
    return subject


def cluster_ref(cluster_id: str | None, size: int | None) -> dict[str, Any] | None:
    return {"id": cluster_id, "size": size} if cluster_id else None


def evaluation_body(evaluation: Evaluation | EvaluationRecord, account: Account | None = None) -> dict[str, Any]:
    """The contract's evaluation response; the cluster is the one the evaluation saw."""
    seen = (evaluation.signals or {}).get("graph", {})
    return {
        "evaluation_id": evaluation.id,
        "account_id": evaluation.account_id,
        "subject": evaluation.subject,
        "decision": evaluation.decision,
        "score": evaluation.score,
        "reasons": evaluation.reasons,
        "required_verifications": evaluation.required_verifications,
        "cluster": cluster_ref(seen.get("cluster_id"), seen.get("cluster_size")),
        "signals": evaluation.signals,
        # Sources that did not answer in time: this decision was made without them (or from a fallback).
        "degraded": degraded_sources(evaluation.signals or {}),
        "rules_version": evaluation.rules_version,
        "occurred_at": rfc3339(evaluation.occurred_at),
    }
