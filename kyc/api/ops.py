"""Ops endpoints for the rule set: what is running, and reload now.

    GET  /v1/ops/rules          version, loaded_at, counts, last refused reload (file/line/rule/...)
    POST /v1/ops/rules/reload   load the files now; swap only if clean, else 422 with the errors

Each answer is about the process that served it (`process`); every process also polls the
files (KYC_RULES_POLL_SECONDS), so all workers converge on the same version.
"""

from __future__ import annotations

from flask import g

from kyc.api import documented, respond, runtime, v1
from kyc.api.responses import RulesStatus
from kyc.engine import RuleSetError
from kyc.api.errors import ApiError
from kyc.ops.audit import key_actor


@v1.get("/ops/rules")
@documented("Running rule set", responses={200: RulesStatus}, tag="ops")
def rules_status():
    """The rules version running in the process that answered, when it was loaded, rule and
    list counts, the tiers, and the last refused reload."""
    return respond(RulesStatus, runtime().rules_status())


@v1.post("/ops/rules/reload")
@documented("Reload the rules", responses={200: RulesStatus}, errors=(422,), tag="ops")
def rules_reload():
    """Loads the rule files now in the process that answered; swaps them in only if they load
    cleanly, else 422 with every error (file, line, rule)."""
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
    return respond(RulesStatus, status)
