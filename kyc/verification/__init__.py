"""Verifications: email and phone codes, identity-document providers, payment.

Each verification is a state machine, pending -> verified | failed | expired, with every
step written to an append-only audit trail (verification_events). The flows live in
service.py, codes in codes.py, senders in senders.py, provider webhooks in webhooks.py.
What an account has proven is read here, by the pipeline and the entitlement check alike.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import select

from kyc.models import Verification, latest_of

CODE_KINDS = ("email", "phone")


def payment_verified(subjects: dict[str, Any] | None) -> bool:
    """Payment is proven by the account's latest payment method being evaluated allow."""
    return (latest_of(subjects, "payment_method") or {}).get("decision") == "allow"


def verified_kinds(stored: Iterable[str], subjects: dict[str, Any] | None) -> frozenset[str]:
    """The kinds of verification the account has completed: its verified rows' kinds (read with
    the account, see kyc.scoring.accounts.LiveAccount and stored_verified_kinds) and payment."""
    kinds = set(stored)
    if payment_verified(subjects):
        kinds.add("payment")
    return frozenset(kinds)


def stored_verified_kinds(conn, account_ids: list[str]) -> dict[str, set[str]]:
    """The kinds of the verified rows of many accounts in one query (rescoring a chunk)."""
    kinds: dict[str, set[str]] = {}
    for account_id, kind in conn.execute(
            select(Verification.account_id, Verification.kind)
            .where(Verification.account_id.in_(account_ids), Verification.status == "verified")):
        kinds.setdefault(account_id, set()).add(kind)
    return kinds
