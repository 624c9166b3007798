"""Ops endpoints for the rule set: what is running, and reload now.

    GET  /v1/ops/rules          version, loaded_at, counts, last refused reload (file/line/rule/...)
    POST /v1/ops/rules/reload   load the files now; swap only if clean, else 422 with the errors

Each answer is about the process that served it (`process`); every process also polls the
files (KYC_RULES_POLL_SECONDS), so all workers converge on the same version.
"""

from __future__ import annotations

from flask import g

from kyc.api import runtime, v1
from kyc.engine import RuleSetError
from kyc.errors import ApiError
from kyc.ops.audit import key_actor


@v1.get("/ops/rules")
def rules_status():
    return runtime().rules_status()


@v1.post("/ops/rules/reload")
def rules_reload():
    rt = runtime()
    before = rt.rules.version
    try:
        rt.reload_rules(actor=key_actor(g.get("api_key")))
    except RuleSetError as exc:
        raise ApiError(422, "rules_invalid",
                       f"the rule files have {len(exc.errors)} error(s); still running {before}",
                       details={"errors": [e.as_dict() for e in exc.errors], "running_version": before}) from None
    status = rt.rules_status()
    status["reloaded"] = status["version"] != before
    return status
