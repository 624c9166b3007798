"""Background jobs: plain functions taking ids.

Until a queue is configured these run in-process, synchronously, through the same functions a
worker would call.
"""

from __future__ import annotations

import logging
from typing import Iterable

from kyc.runtime import Runtime
from kyc.scoring import rescore_account

log = logging.getLogger("kyc.jobs")


def rescore_accounts(runtime: Runtime, account_ids: Iterable[str]) -> int:
    """Rescore each account in its own transaction; returns how many were rescored."""
    done = 0
    for account_id in account_ids:
        with runtime.session() as session, session.begin():
            if rescore_account(runtime, session, account_id):
                done += 1
    return done


def enqueue_rescore(runtime: Runtime, account_ids: Iterable[str], reason: str) -> int:
    """Ask for accounts to be rescored (in-process until a worker queue is configured)."""
    ids = list(dict.fromkeys(account_ids))
    log.info("rescore requested for %d account(s): %s", len(ids), reason)
    return rescore_accounts(runtime, ids)
