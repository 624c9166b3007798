"""The console's pages: queue, account, clusters, rules. Reads here; changes through kyc.ops."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import abort, flash, g, redirect, render_template, request, session, url_for
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select

from kyc.inputs import field_errors
from kyc.backtest import WindowTooLarge, backtest, parse_since
from kyc.engine import RuleSetError
from kyc.graph import cluster_summary, shared_kinds
from kyc.inputs import ClusterActionInput, ReviewInput
from kyc.models import (DECISIONS, Account, AccountLabel, ActivityDay, Cluster, ClusterMember, Evaluation, GraphEdge,
                        Verification, latest_of)
from kyc.ops.actions import act_on_cluster
from kyc.ops.audit import key_actor, list_events
from kyc.ops.console import CONSOLE_ROLES, caller_for_token, check_csrf, console, csrf_token, runtime
from kyc.ops.console.facts import identity, signal_facts, verification_target
from kyc.ops.console.graphics import cluster_picture, score_chart, usage_chart
from kyc.errors import AccountChanged, NotFound
from kyc.ops.reviews import review_account, review_queue
from kyc.runtime import load_policy
from kyc.security import contains_card_number

QUEUE_LIMIT = 100
# The console's backtest runs inside its request: at about 20,000 evaluations a second, 200,000
# answer in ~10 s, well before gunicorn's 30-second worker timeout kills the request (a 500).
CONSOLE_BACKTEST_MOST = 200_000
HISTORY = 50
USAGE_DAYS = 30
PICTURE_MEMBERS = 60
MEMBERS_LISTED = 200          # a farm of 25,000 is read in pages of the API (GET /v1/clusters/{id}?limit=N)


# --- signing in ---------------------------------------------------------------------------------

@console.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        check_csrf()
        caller = caller_for_token(request.form.get("api_key", "").strip())
        if caller is None:
            error = "That key is not valid or has been revoked."
        elif caller["role"] not in CONSOLE_ROLES:
            error = f"That key's role is {caller['role']}; the console needs a key of role ops or admin."
        else:
            # A fresh session (and CSRF token) at every sign-in: nothing chosen before it survives.
            session.clear()
            session.permanent = True
            session["key_hash"] = caller["key_hash"]
            csrf_token()
            target = request.args.get("next") or ""
            # Only a path of this console: never an absolute or scheme-relative URL.
            if not target.startswith("/console/") or target.startswith("//"):
                target = url_for("console.queue")
            return redirect(target)
    return render_template("console/login.html", error=error), 401 if error else 200


@console.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("console.login"))


@console.get("/")
def home():
    return redirect(url_for("console.queue"))


# --- the review queue ---------------------------------------------------------------------------

@console.get("/queue")
def queue():
    with runtime().session() as s:
        entries = review_queue(s, QUEUE_LIMIT)
        latest = latest_evaluations(s, [e["account_id"] for e in entries])
        held = held_count(s) if len(entries) >= QUEUE_LIMIT else len(entries)
    # Farms fill a queue: one action on their cluster decides all of its members at once.
    clusters: dict[str, dict[str, Any]] = {}
    for entry in entries:
        cluster_ref = entry["cluster"]
        if cluster_ref and cluster_ref["size"] > 1:
            clusters.setdefault(cluster_ref["id"], {**cluster_ref, "held": 0})["held"] += 1
        _, signals, signup_input = latest.get(entry["account_id"], (None, {}, None))
        entry["facts"] = signal_facts(signals)
        entry["identity"] = identity(signup_input)
    farms = sorted((c for c in clusters.values() if c["held"] >= 2), key=lambda c: -c["held"])
    return render_template("console/queue.html", entries=entries, nav="queue", held=held, farms=farms)


def held_count(s) -> int:
    """Accounts in the queue (held at review, undecided by a person), however many."""
    return s.scalar(select(func.count()).select_from(Account).where(Account.review_since.is_not(None)))


def latest_evaluations(s, account_ids: list[str]) -> dict[str, tuple[Evaluation | None, dict, dict | None]]:
    """Per account: its latest evaluation; the signals a reviewer reads (its latest signup's,
    with the families only a later evaluation has, such as a card's); its signup's input."""
    if not account_ids:
        return {}
    accounts = s.execute(select(Account.id, Account.last_evaluation_id, Account.subjects)
                         .where(Account.id.in_(account_ids))).all()
    wanted: dict[str, tuple[str | None, str | None]] = {}
    for account_id, last_id, subjects in accounts:
        signup = latest_of(subjects, "signup")
        wanted[account_id] = (last_id, signup["evaluation_id"] if signup else None)
    ids = {i for pair in wanted.values() for i in pair if i}
    evaluations = {e.id: e for e in s.execute(select(Evaluation).where(Evaluation.id.in_(ids))).scalars()} if ids else {}
    out = {}
    for account_id, (last_id, signup_id) in wanted.items():
        latest, signup = evaluations.get(last_id), evaluations.get(signup_id)
        signals = dict(signup.signals) if signup else {}
        for family, values in (latest.signals if latest else {}).items():
            signals.setdefault(family, values)
        out[account_id] = (latest, signals, signup.input if signup else None)
    return out


# --- an account ---------------------------------------------------------------------------------

@console.get("/accounts")
def find_account():
    account_id = request.args.get("q", "").strip()
    if not account_id:
        return redirect(url_for("console.queue"))
    return redirect(url_for("console.account", account_id=account_id))


@console.get("/accounts/<account_id>")
def account(account_id: str):
    with runtime().session() as s:
        acct = s.get(Account, account_id)
        if acct is None:
            abort(404, f"No account {account_id}.")
        history = list(reversed(s.execute(
            select(Evaluation).where(Evaluation.account_id == account_id)
            .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(HISTORY)).scalars().all()))
        verifications = s.execute(select(Verification).where(Verification.account_id == account_id)
                                  .order_by(Verification.created_at.desc()).limit(HISTORY)).scalars().all()
        labels = s.execute(select(AccountLabel).where(AccountLabel.account_id == account_id)
                           .order_by(AccountLabel.id.desc()).limit(10)).scalars().all()
        last_day = s.scalar(select(func.max(ActivityDay.day)).where(ActivityDay.account_id == account_id))
        days = s.execute(select(ActivityDay).where(
            ActivityDay.account_id == account_id,
            ActivityDay.day > last_day - timedelta(days=USAGE_DAYS)).order_by(ActivityDay.day)).scalars().all() \
            if last_day else []
        totals = s.execute(select(func.count(), func.coalesce(func.sum(ActivityDay.requests), 0))
                           .where(ActivityDay.account_id == account_id)).one()
        member = s.get(ClusterMember, account_id)
        cluster = s.get(Cluster, member.cluster_id) if member else None
        linked_by = shared_kinds(s, [account_id]).get(account_id, []) if cluster and cluster.size > 1 else []
        latest, signals, signup_input = latest_evaluations(s, [account_id]).get(account_id, (None, {}, None))
        rows = [_evaluation_row(e) for e in history]
        audit = list_events(s, account_id=account_id, limit=20)["events"]
    return render_template(
        "console/account.html", nav="queue", account=acct, evaluations=rows, chart=score_chart(rows),
        latest=latest, facts=signal_facts(signals), identity=identity(signup_input),
        verifications=[{"kind": v.kind, "status": v.status, "target": verification_target(v.kind, v.target),
                        "created_at": v.created_at, "completed_at": v.completed_at, "provider": v.provider,
                        "reason": v.reason, "attempts": v.attempts} for v in verifications],
        labels=labels, usage=usage_chart(days, last_day, USAGE_DAYS),
        usage_totals={"days": totals[0], "requests": totals[1], "last_day": last_day},
        cluster=cluster, linked_by=linked_by, audit=audit)


def _evaluation_row(e: Evaluation) -> dict[str, Any]:
    return {"id": e.id, "subject": e.subject, "trigger": e.trigger, "decision": e.decision, "score": e.score,
            "occurred_at": e.occurred_at, "created_at": e.created_at, "rules_version": e.rules_version,
            "rules": [r["rule"] for r in e.reasons if r.get("action") != "satisfied"],
            "reasons": e.reasons}


# --- clusters -----------------------------------------------------------------------------------

@console.get("/clusters")
def clusters():
    min_size = max(request.args.get("min_size", 2, type=int) or 2, 1)
    with runtime().session() as s:
        rows = s.execute(select(Cluster).where(Cluster.size >= min_size)
                         .order_by(Cluster.size.desc(), Cluster.id).limit(50)).scalars().all()
        decisions: dict[str, dict[str, int]] = {c.id: dict.fromkeys(DECISIONS, 0) for c in rows}
        if rows:
            for cid, decision, n in s.execute(
                    select(ClusterMember.cluster_id, Account.decision, func.count())
                    .join(Account, Account.id == ClusterMember.account_id)
                    .where(ClusterMember.cluster_id.in_(list(decisions))).group_by(ClusterMember.cluster_id,
                                                                                   Account.decision)):
                decisions[cid][decision] = n
    return render_template("console/clusters.html", nav="clusters", clusters=rows, decisions=decisions,
                           min_size=min_size)


@console.get("/clusters/<cluster_id>")
def cluster(cluster_id: str):
    with runtime().session() as s:
        row = s.get(Cluster, cluster_id)
        if row is None:
            abort(404, f"No cluster {cluster_id}.")
        summary = cluster_summary(s, row, members=MEMBERS_LISTED)
        audit = list_events(s, cluster_id=cluster_id, limit=20)["events"]
        shown = [m["account_id"] for m in summary["members"][:PICTURE_MEMBERS]]
        edges = s.execute(select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
                          .where(GraphEdge.account_id.in_(shown))).all() if shown else []
    picture = cluster_picture(summary["members"][:PICTURE_MEMBERS], summary["identifiers"], edges)
    return render_template("console/cluster.html", nav="clusters", cluster=summary, picture=picture,
                           shown=len(shown), audit=[e for e in audit if e["account_id"] is None])


# --- decisions (kyc.ops services, as the API calls them) ------------------------------------------

def form_input(model: type[BaseModel], fields: tuple[str, ...], whole: tuple[str, ...] = ()) -> BaseModel | None:
    """The form's fields through the API's own input model; on a mistake, flash it and None.
    `whole`: fields sent as digits that the model takes as a number."""
    data = {name: request.form.get(name) or None for name in fields}
    data.update({name: int(data[name]) for name in whole if data.get(name) and data[name].isdigit()})
    if contains_card_number(data):
        flash("The note contains a full card number; nothing was changed. Never paste card numbers here.", "error")
        return None
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{name}: {message}" for name, message in field_errors(exc).items())
        flash(f"Nothing was changed: {problems}.", "error")
        return None


def actor() -> str:
    """Who changed something, as the API records it: the signed-in key's name."""
    return key_actor(g.console_caller["name"])


@console.post("/accounts/<account_id>/review")
def review(account_id: str):
    back = request.form.get("back", "")
    if not back.startswith("/console/") or back.startswith("//"):
        back = url_for("console.account", account_id=account_id)
    inp = form_input(ReviewInput, ("outcome", "note", "state_version"), whole=("state_version",))
    if inp is None:
        return redirect(back)
    rt = runtime()
    try:
        with rt.session() as s, s.begin():
            account = review_account(rt, s, account_id, inp.outcome, inp.note, actor(),
                                     seen_version=inp.state_version)
            decision = account.decision
    except NotFound:
        abort(404, f"No account {account_id}.")
    except AccountChanged:
        flash(f"Nothing was changed: {account_id} changed while you were reading it (new evidence or another "
              f"reviewer). Read it again and decide on what it holds now.", "error")
        return redirect(url_for("console.account", account_id=account_id))
    flash(f"{account_id} is now {decision}: decided by {actor()}, out of the review queue.", "ok")
    return redirect(back)


@console.post("/clusters/<cluster_id>/actions")
def cluster_action(cluster_id: str):
    inp = form_input(ClusterActionInput, ("action", "note"))
    if inp is None:
        return redirect(url_for("console.cluster", cluster_id=cluster_id))
    try:
        done = act_on_cluster(runtime(), cluster_id, inp.action, inp.note, actor())     # its own transaction
    except NotFound:
        abort(404, f"No cluster {cluster_id}.")
    kept = f" {done.kept:,} blocked by a person on their own kept as they are." if done.kept else ""
    flash(f"{inp.action.capitalize()}: {done.changed:,} of {done.members:,} members changed decision.{kept}", "ok")
    return redirect(url_for("console.cluster", cluster_id=cluster_id))


# --- the rule set and backtests -----------------------------------------------------------------

@console.get("/rules")
def rules():
    return _rules_page()


@console.post("/rules/backtest")
def rules_backtest():
    folder = request.form.get("folder", "").strip()
    since_text = request.form.get("since", "").strip() or "30d"
    until_text = request.form.get("until", "").strip()
    form = {"folder": folder, "since": since_text, "until": until_text}
    if not folder:
        return _rules_page(form=form, form_error="Give the folder of the candidate rules.")
    try:
        since = parse_since(since_text)
        until = parse_since(until_text) if until_text else None
    except ValueError as exc:
        return _rules_page(form=form, form_error=str(exc))
    if until is not None and until <= since:
        return _rules_page(form=form, form_error="The window's end must be after its start.")
    try:
        candidate, _ = load_policy(Path(folder))
    except RuleSetError as exc:
        return _rules_page(form=form, candidate_errors=[e.as_dict() for e in exc.errors])
    try:
        report = backtest(runtime().engine, candidate, since, until, limit_changed=50, most=CONSOLE_BACKTEST_MOST)
    except WindowTooLarge as exc:
        return _rules_page(form=form, form_error=(
            f"The window holds {exc.total:,} evaluations; the console replays at most {exc.most:,} (a page must "
            f"answer before the server's timeout). Narrow the window, or run kyc rules backtest --since "
            f"{since_text} --rules {folder} on a server, which has no limit."))
    return _rules_page(form=form, report=report)


def _rules_page(*, form: dict | None = None, form_error: str | None = None, candidate_errors=None, report=None):
    rt = runtime()
    running = rt.rules
    subjects = {subject: sorted(compiled.rules + compiled.disabled, key=lambda r: (r.file, r.line))
                for subject, compiled in running.subjects.items()}
    status = rt.rules_status()
    return render_template(
        "console/rules.html", nav="rules", status=status, subjects=subjects, decisions=DECISIONS,
        form=form or {"folder": str(running.root), "since": "30d", "until": ""}, form_error=form_error,
        candidate_errors=candidate_errors, report=report), 422 if candidate_errors or form_error else 200
