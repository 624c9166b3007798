"""Services refuse with domain errors (kyc/errors.py); only kyc/api turns them into HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kyc
from kyc import errors as domain
from kyc.api.errors import ApiError, answer

KYC = Path(kyc.__file__).parent
# The HTTP layers: the API, and the console's pages (HTML, with their own error pages).
HTTP_LAYERS = (KYC / "api", KYC / "ops" / "console")
HTTP_MODULES = {"flask", "werkzeug", "kyc.api"}


def _outside_api() -> list[Path]:
    return sorted(p for p in KYC.rglob("*.py") if not p.is_relative_to(KYC / "api"))


def _http_uses(path: Path, *, modules: set[str]) -> list[str]:
    """Lines of `path` that import from `modules` or name ApiError."""
    where = path.relative_to(KYC.parent) if path.is_relative_to(KYC.parent) else path
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if any(node.module == m or node.module.startswith(m + ".") for m in modules):
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                      if any(a.name == m or a.name.startswith(m + ".") for m in modules)]
        elif isinstance(node, (ast.Name, ast.Attribute)) and (getattr(node, "id", None) == "ApiError"
                                                                 or getattr(node, "attr", None) == "ApiError"):
            found.append(f"{where}:{node.lineno}: ApiError")
    return found


def test_no_module_outside_kyc_api_raises_or_imports_api_errors():
    found = [use for path in _outside_api() for use in _http_uses(path, modules={"kyc.api.errors"})]
    assert not found, "services raise domain errors (kyc/errors.py); kyc/api maps them:\n" + "\n".join(found)


def test_services_know_nothing_of_http():
    """Domain packages import neither Flask nor werkzeug nor kyc.api (the app factory, the logs'
    request context and the console are HTTP layers themselves)."""
    allowed = {KYC / "__init__.py", KYC / "logs.py"}
    found = [use for path in _outside_api()
             if path not in allowed and not any(path.is_relative_to(layer) for layer in HTTP_LAYERS)
             for use in _http_uses(path, modules=HTTP_MODULES)]
    assert not found, "\n".join(found)


def test_the_scan_sees_an_api_error_raised_from_a_service(tmp_path):
    service = tmp_path / "service.py"
    service.write_text("from kyc.api.errors import ApiError\n\ndef f():\n    raise ApiError(409, 'x', 'y')\n")
    assert len(_http_uses(service, modules={"kyc.api.errors"})) == 2


# One instance of every domain error, with facts a service would give.
EXAMPLES = [
    domain.NotFound("verification", "vf_1"),
    domain.UnknownAccounts([0, 3]),
    domain.UnknownRole("root", ("signup", "ops", "admin")),
    domain.InvalidInput("no email to verify", {"email": "required: the account has no email on file"}),
    domain.Throttled("a code was sent moments ago", retry_after=17),
    domain.PhoneRefused("voip", "pro"),
    domain.PhoneInUse(),
    domain.VerificationNotPending("vf_1", "expired", "verification vf_1 is not pending"),
    domain.WrongVerificationKind("vf_1", "email", expected="document"),
    domain.WrongVerificationKind("vf_1", "document", expected="code"),
    domain.ReplayedEvent("idv", "ev_1"),
    domain.SendFailed("the code could not be sent: sender answered 503"),
    domain.IdempotencyKeyReused(),
    domain.AccountChanged("acct_1", seen=3, now=5),
    domain.WrongProvider("vf_1", "idv", "other"),
]


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct} | _subclasses(direct)}


def test_every_domain_error_has_an_http_answer():
    assert {type(e) for e in EXAMPLES} == _subclasses(domain.DomainError), "add the new error to EXAMPLES"
    for exc in EXAMPLES:
        api = answer(exc)
        assert isinstance(api, ApiError) and 400 <= api.status < 600 and api.code, exc


@pytest.mark.parametrize("exc, status, body, headers", [
    (domain.NotFound("account", "acct_9"), 404,
     {"error": {"code": "not_found", "message": "account not found"}}, {}),
    (domain.Throttled("at most 5 codes per verification", retry_after=42), 429,
     {"error": {"code": "rate_limited", "message": "at most 5 codes per verification; retry in 42s"}},
     {"Retry-After": "42"}),
    (domain.PhoneInUse(), 409,
     {"error": {"code": "phone_in_use", "message": "this number is already verified on another account",
                "fields": {"phone": "already verified on another account"}}}, {}),
    (domain.PhoneRefused("voip", None), 400,
     {"error": {"code": "phone_refused", "message": "voip numbers cannot be verified under the tier policy",
                "fields": {"phone": "voip line type is refused; use a mobile number"}}}, {}),
    (domain.VerificationNotPending("vf_1", "verified", "this verification is already verified; start a new one"), 409,
     {"error": {"code": "verification_verified", "message": "this verification is already verified; start a new one"}},
     {}),
    (domain.WrongVerificationKind("vf_1", "email", expected="document"), 409,
     {"error": {"code": "not_a_document_verification", "message": "verification vf_1 is a email verification"}}, {}),
    (domain.WrongVerificationKind("vf_1", "document", expected="code"), 409,
     {"error": {"code": "no_code", "message": "a document verification is not completed with a code"}}, {}),
    (domain.UnknownAccounts([2]), 400,
     {"error": {"code": "invalid_request", "message": "the request names unknown accounts; nothing was recorded",
                "fields": {"reports[2].account_id": "unknown account"}}}, {}),
    (domain.SendFailed("the code could not be sent: sender unreachable"), 502,
     {"error": {"code": "sender_failed",
                "message": "the code could not be sent: sender unreachable; nothing was started, try again"}}, {}),
])
def test_domain_errors_answer_as_the_contract_says(exc, status, body, headers):
    api = answer(exc)
    assert (api.status, api.body(), api.headers) == (status, body, headers)


@pytest.mark.parametrize("method, path, allowed", [
    ("TRACE", "/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("PUT", "/v1/signups", {"POST", "OPTIONS"}),
    # An account id may hold '/': this is also GET /v1/accounts/{id} of "acct_1/activity".
    ("DELETE", "/v1/accounts/acct_1/activity", {"GET", "HEAD", "POST", "OPTIONS"}),
])
def test_a_method_a_route_does_not_take_is_405_saying_which_it_takes(client, auth, method, path, allowed):
    answer = client.open(path, method=method, headers=auth)
    assert answer.status_code == 405 and answer.json["error"]["code"] == "method_not_allowed"
    assert answer.content_type == "application/json"
    # RFC 9110: a 405 carries Allow, the methods the route takes.
    assert {m.strip() for m in answer.headers["Allow"].split(",")} == allowed
