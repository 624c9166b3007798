"""The audit trail: who or what changed a decision, the rules, or an API key.

Actions:
    decision.changed   the rules changed an account's decision (actor "rules:<version>"; detail:
                       old, new, trigger live|rescore|usage)
    account.reviewed   a person decided an account (actor "key:<name>"; outcome, note, old, new)
    account.labeled    a label (fraud | legit) and the decision change it made
    cluster.action     block | review | release of every member of a cluster: one event, with
                       members, changed and the old -> new counts
    rules.reloaded     a new rules version went live (version, previous, rule ids added,
                       removed, changed; lists changed); rules.refused: a reload that failed
    key.created, key.revoked

Writes join the caller's transaction: what is recorded is exactly what committed. On the scoring
path an event is one more deferred INSERT in a transaction that already writes the account, and
only when the decision changed: nothing is written or read for an unchanged decision.
"""

from __future__ import annotations

import getpass
import logging
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from kyc.persist import deferred
from kyc.inputs import rfc3339
from kyc.models import AuditEvent, utcnow

log = logging.getLogger("kyc.audit")

ACTIONS = ("decision.changed", "account.reviewed", "account.labeled", "cluster.action", "rules.reloaded",
           "rules.refused", "key.created", "key.revoked")

_INSERT = deferred(insert(AuditEvent.__table__))
_INSERT_RETURNING = insert(AuditEvent.__table__).returning(AuditEvent.__table__.c.id)


def key_actor(name: str | None) -> str:
    """The actor of a change made through the API: the calling key's name."""
    return f"key:{name or 'unknown'}"


def cli_actor() -> str:
    """The actor of a change made with the `kyc` command: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name (a container without one): still record it
        return "cli:unknown"


def rules_actor(version: str) -> str:
    return f"rules:{version}"


def event(action: str, actor: str, *, account_id: str | None = None, cluster_id: str | None = None,
          detail: dict[str, Any] | None = None, at: datetime | None = None) -> dict[str, Any]:
    """One event's row (for `record_many`)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return {"at": at or utcnow(), "actor": actor[:128], "action": action, "account_id": account_id,
            "cluster_id": cluster_id, "detail": detail or {}}


def record(session: Session, action: str, actor: str, *, returning: bool = False, **fields) -> int | None:
    """Record one event in the caller's transaction. `returning`: answer its id (one round
    trip); otherwise the INSERT is deferred (it travels with the commit when pipelined)."""
    row = event(action, actor, **fields)
    if returning:
        return session.execute(_INSERT_RETURNING, row).scalar_one()
    session.execute(_INSERT, row)
    return None


def record_many(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    rows = list(rows)
    if rows:
        session.execute(insert(AuditEvent.__table__), rows)
    return len(rows)


def event_body(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "at": rfc3339(e.at), "actor": e.actor, "action": e.action, "account_id": e.account_id,
            "cluster_id": e.cluster_id, "detail": e.detail}


def list_events(session: Session, *, action: str | None = None, actor: str | None = None,
                account_id: str | None = None, cluster_id: str | None = None, since: datetime | None = None,
                until: datetime | None = None, before: int | None = None, limit: int = 50) -> dict[str, Any]:
    """Events newest first, filtered; `before` is the `next` of the previous page (an event id),
    so paging is stable while new events arrive."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if action:
        # "decision" matches every decision.* action: a prefix ending at a dot.
        query = query.where(AuditEvent.action.startswith(action + ".") if "." not in action
                            else AuditEvent.action == action)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if account_id:
        query = query.where(AuditEvent.account_id == account_id)
    if cluster_id:
        query = query.where(AuditEvent.cluster_id == cluster_id)
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    if before:
        query = query.where(AuditEvent.id < before)
    rows = session.execute(query).scalars().all()
    page = rows[:limit]
    return {"events": [event_body(e) for e in page], "next": page[-1].id if len(rows) > limit else None}


# --- rules ---------------------------------------------------------------------------------------

def rules_diff(old, new) -> dict[str, Any]:
    """Rule ids added, removed and changed between two rule sets (kyc.engine.RuleSet), per
    subject file; and the lists whose values changed."""
    def definitions(ruleset) -> dict[str, tuple]:
        found = {}
        for subject, compiled in (ruleset.subjects if ruleset else {}).items():
            rules = list(compiled.rules) + list(getattr(compiled, "disabled", ()))
            for rule in rules:
                found[f"{subject}:{rule.id}"] = (rule.description, rule.when, rule.score, rule.action,
                                                 tuple(rule.requires), rule.mode, tuple(rule.tags),
                                                 getattr(rule, "enabled", True))
        return found

    before, after = definitions(old), definitions(new)
    old_lists, new_lists = (old.lists if old else {}), (new.lists if new else {})
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        "lists_changed": sorted(name for name in old_lists.keys() | new_lists.keys()
                                if old_lists.get(name) != new_lists.get(name)),
    }


def record_rules_reload(engine: Engine, old, new, actor: str) -> None:
    """A new rules version went live in a process. Every serving process and worker reloads the
    same files, so a version already recorded as the latest reload is not recorded again."""
    with Session(engine) as session, session.begin():
        latest = session.execute(select(AuditEvent.detail).where(AuditEvent.action == "rules.reloaded")
                                 .order_by(AuditEvent.id.desc()).limit(1)).scalar_one_or_none()
        if latest and latest.get("version") == new.version:
            return
        record(session, "rules.reloaded", actor,
               detail={"version": new.version, "previous": old.version if old else None, **rules_diff(old, new)})


def record_rules_refused(engine: Engine, version: str, errors: list[dict[str, Any]], actor: str) -> None:
    """A reload refused (the running set stays): recorded once per distinct set of errors."""
    with Session(engine) as session, session.begin():
        latest = session.execute(select(AuditEvent.action, AuditEvent.detail)
                                 .where(AuditEvent.action.in_(("rules.reloaded", "rules.refused")))
                                 .order_by(AuditEvent.id.desc()).limit(1)).one_or_none()
        if latest and latest.action == "rules.refused" and latest.detail.get("errors") == errors:
            return
        record(session, "rules.refused", actor, detail={"running_version": version, "errors": errors})
