"""Logs: one JSON object per line (python-json-logger), each line of a request carrying its id.

Every process (kyc serve's master and workers, gunicorn's access log, kyc worker, the CLI) logs
through `configure`. A request's id is the caller's `X-Request-Id` when it is sane (1-128 of
letters, digits and . _ : -), else a new one; it is echoed in the response's `X-Request-Id`
and added to every line logged while the request runs (app lines and the access line).

Values are masked where they are logged (kyc.security.mask_*). As a second line of defence,
every line is scrubbed before it is written: an email address, an IPv4 or IPv6 address, an
E.164 phone number or a card number (13-19 digits passing Luhn) left in a message, an
exception or an extra field is replaced by a placeholder.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from typing import Any

from gunicorn.glogging import Logger
from pythonjsonlogger.json import JsonFormatter

from kyc.security import may_hold_card_number, redact_card_numbers

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"  # the same header in the WSGI environ
ENVIRON_KEY = "kyc.request_id"            # where the WSGI environ holds it (gunicorn's access line reads it)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id(incoming: str | None) -> str:
    """The caller's id if it is sane, else a new random one (32 hex digits)."""
    if incoming and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return os.urandom(16).hex()


# --- scrubbing --------------------------------------------------------------------------------

# An address is found from its "@" and domain, then its local part (RFC 5322 atext) read backwards
# from the "@": a pattern starting with the local part tried every position of every line.
_DOMAIN = re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-")
_KEY = re.compile(r"^[A-Za-z_]+=")            # a message's "email=" before an address is kept
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![0-9A-Fa-f:])")
_E164 = re.compile(r"\+\d(?:[ .()-]{0,2}\d){7,14}(?!\d)")


def _scrub_emails(text: str) -> str:
    for match in reversed(list(_DOMAIN.finditer(text))):
        at = start = match.start()
        while start > 0 and text[start - 1] in _ATEXT:
            start -= 1
        local = text[start:at]
        path = local.startswith("/")
        if path:
            # A URL path (`/v1/accounts/jane@example.com/entitlement`): "/" is atext, but the
            # address is the path's last segment, not the path.
            start = at - len(local.rpartition("/")[2])
            local = text[start:at]
        if not local or local.endswith("***"):    # no address, or already masked (mask_email)
            continue
        key = None if path else _KEY.match(local)
        text = text[:start] + (key.group() if key else "") + "[email]" + text[match.end():]
    return text


def _ip_or_same(match: re.Match) -> str:
    text = match.group()
    whole = match.string
    if match.re is _IPV4 and ((match.start() and whole[match.start() - 1] in "0123456789.")
                              or whole[match.end():match.end() + 1] in tuple("0123456789.")):
        return text                           # part of a longer dotted number (a version, an OID)
    if match.re is _IPV4 and text.endswith(".0.0.0"):
        # A /8's network number identifies nobody, and it is how every Chromium browser writes its
        # version since the reduced user agent (Chrome/131.0.0.0, Edg/131.0.0.0): scrubbed, ops
        # read "Chrome/[ip]" in the access line of most browser traffic.
        return text
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return text
    return "[ip]"


_NOT_DIGITS = str.maketrans("", "", "0123456789")


def scrub(text: str) -> str:
    """The text with emails, IP addresses, E.164 phones and card numbers replaced.

    Each pattern runs only when the text could hold it (an "@", enough digits, two colons):
    most lines hold none, and a line costs a few microseconds instead of a hundred."""
    if len(text) < 7:
        return text
    if "@" in text:
        text = _scrub_emails(text)
    digits = len(text) - len(text.translate(_NOT_DIGITS))
    if digits < 13 and not text.isascii():
        digits = sum(ch.isdecimal() for ch in text)    # fullwidth, Arabic-Indic, ... digits
    # The rule's byte-level necessary condition first: a request id kyc made (32 hex digits, about
    # 20 of them decimal) went to the rule's regex, in every access line: its scrub 7 -> 1.1 us.
    if digits >= 13 and may_hold_card_number(text):
        text = redact_card_numbers(text)
    if digits >= 8 and "+" in text:
        text = _E164.sub("[phone]", text)
    if digits >= 4 and "." in text:
        text = _IPV4.sub(_ip_or_same, text)
    if text.count(":") >= 2:
        text = _IPV6.sub(_ip_or_same, text)
    return text


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    return value


_OWN_FIELDS = frozenset({"time", "level", "logger"})


class KycJsonFormatter(JsonFormatter):
    """JSON lines: time, level, logger, message, request_id (inside a request), extras; scrubbed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         datefmt="%Y-%m-%dT%H:%M:%S%z")
        # What json.dumps(..., cls=, default=, ensure_ascii=) builds at each line, built once.
        self._encoder = self.json_encoder(default=self.json_default, ensure_ascii=self.json_ensure_ascii,
                                          indent=self.json_indent)
        self._second: tuple[int, str] = (-1, "")

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        return self._encoder.encode(log_data)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Whole seconds (the format has no fraction): formatted once a second, not once a line.
        second, text = self._second
        if int(record.created) != second or datefmt != self.datefmt:
            text = super().formatTime(record, datefmt)
            if datefmt == self.datefmt:
                self._second = (int(record.created), text)
        return text

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # time, level and logger are the formatter's own: everything else may carry a value.
        return {k: v if k in _OWN_FIELDS else _scrubbed(v) for k, v in log_data.items()}

    def format(self, record: logging.LogRecord) -> str:
        """python-json-logger's format, its generic steps (defaults, static fields, a dict as
        the message) left out for a line without an exception or a stack: the same object,
        field by field and in the same order. The access line of every request is one."""
        if record.exc_info or record.exc_text or record.stack_info or isinstance(record.msg, dict):
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        log_data = {"time": record.asctime, "level": record.levelname, "logger": record.name,
                    "message": record.message}
        skip = self._skip_fields
        for key, value in record.__dict__.items():      # pythonjsonlogger.core.merge_record_extra
            if key not in skip and not (hasattr(key, "startswith") and key.startswith("_")):
                log_data[key] = value
        return self.serialize_log_record(self.process_log_record(log_data))


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to a record logged inside a Flask request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            from flask import g, has_request_context

            if has_request_context():
                rid = g.get("request_id")
                if rid:
                    record.request_id = rid
        return True


def json_handler(stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KycJsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.set_name("kyc-json")
    return handler


def configure(level: str | int = "INFO") -> None:
    """Root logging to stderr as JSON lines (idempotent: one handler however often it runs)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(h.get_name() == "kyc-json" for h in root.handlers):
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                    sys.stderr, sys.stdout):
                root.removeHandler(handler)
        root.addHandler(json_handler())


# --- gunicorn ---------------------------------------------------------------------------------

class GunicornLogger(Logger):
    """gunicorn's Logger with JSON lines for its error log and a structured access line:
    method, path (no query string), status, bytes, duration, user agent and request id, never
    the client's address. `kyc serve` uses it; with plain gunicorn: --logger-class kyc.logs.GunicornLogger."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        # Read once: gunicorn's settings are looked up by name at each read.
        self._logs_access = bool(cfg.accesslog or cfg.logconfig or cfg.logconfig_dict or cfg.syslog)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(KycJsonFormatter())
                # Every log line on stderr, access lines too (gunicorn writes `accesslog = "-"`
                # to stdout): stdout keeps only what a command prints for its user.
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                    handler.setStream(sys.stderr)

    def access(self, resp, req, environ, request_time) -> None:
        self.log_access(resp, environ, environ.get("PATH_INFO"), environ.get("HTTP_USER_AGENT"), request_time)

    def log_access(self, resp, environ, path: str | None, user_agent: str | None, request_time) -> None:
        log = self.access_log
        if not self._logs_access or not log.isEnabledFor(logging.INFO):
            return
        status = str(resp.status).split(None, 1)[0]
        extra = {
            "method": environ.get("REQUEST_METHOD"),
            "path": path,
            "status": int(status) if status.isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "user_agent": user_agent,
        }
        if environ.get(ENVIRON_KEY):
            extra["request_id"] = environ[ENVIRON_KEY]
        try:
            # Logger.info's record without its search of the stack for the caller (pathname,
            # lineno: no line of kyc's holds them, and this one is always here).
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "request", (), None, extra=extra))
        except Exception:       # noqa: BLE001 - gunicorn's own access() never fails a request either
            self.error("failed to log the access line")
