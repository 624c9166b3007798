"""The JSON log lines' contract, as the formatter's short path writes them: the same object,
field by field and in the same order, as python-json-logger's own format (the access line of
every request takes the short path)."""

from __future__ import annotations

import datetime
import io
import json
import logging
import time

from gunicorn.config import Config
from pythonjsonlogger.json import JsonFormatter

from kyc.logs import KycJsonFormatter
from kyc.serving import Logger


def _generic(formatter: KycJsonFormatter, record: logging.LogRecord) -> str:
    return JsonFormatter.format(formatter, record)


def _record(msg, args=(), extra=None, exc_info=None) -> logging.LogRecord:
    return logging.getLogger("kyc.test").makeRecord("kyc.test", logging.INFO, __file__, 1, msg, args, exc_info,
                                                   extra=extra)


def test_the_short_path_writes_what_python_json_logger_writes():
    formatter = KycJsonFormatter()
    records = [
        _record("request", extra={"method": "GET", "path": "/v1/accounts/jane@example.com/entitlement", "status": 200,
                                  "bytes": 321, "duration_ms": 1.25, "user_agent": "curl/8.5 (10.1.2.3)",
                                  "request_id": "9c1f5e3a7b2d48e6a0c4f1b3d5e7a9c2"}),
        _record("scored signup %s for %s", ("acct_1", "+14155550123"), extra={"nested": {"ip": "10.0.0.1"},
                                                                           "items": ["4111 1111 1111 1111"]}),
        _record("café ünïcode", extra={"time": "an extra named as an own field", "_private": 1, "n": None}),
    ]
    for record in records:
        assert formatter.format(record) == _generic(formatter, record)
    line = json.loads(formatter.format(records[0]))
    assert list(line) == ["time", "level", "logger", "message", "method", "path", "status", "bytes", "duration_ms",
                          "user_agent", "request_id"]
    assert line["path"] == "/v1/accounts/[email]/entitlement" and line["user_agent"] == "curl/8.5 ([ip])"
    try:
        raise ValueError("jane@example.com")
    except ValueError:
        import sys

        failed = _record("failed", exc_info=sys.exc_info())
    assert "[email]" in formatter.format(failed) and "jane@example.com" not in formatter.format(failed)


def test_the_access_line_holds_what_ops_read():
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = Logger(cfg)
    stream = io.StringIO()
    for handler in logger.access_log.handlers:
        handler.setStream(stream)

    class Response:
        status, sent = "404 NOT FOUND", 87

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/accounts/caf\xc3\xa9/entitlement",
               "QUERY_STRING": "tier=free", "HTTP_USER_AGENT": "gateway/1.0", "REMOTE_ADDR": "10.9.8.7",
               "kyc.request_id": "req-1"}
    logger.access(Response(), None, environ, datetime.timedelta(microseconds=2346))
    line = json.loads(stream.getvalue())
    assert {k: v for k, v in line.items() if k != "time"} == {
        "level": "INFO", "logger": "gunicorn.access", "message": "request", "method": "GET",
        "path": "/v1/accounts/café/entitlement", "status": 404, "bytes": 87, "duration_ms": 2.35,
        "user_agent": "gateway/1.0", "request_id": "req-1"}
    assert "10.9.8.7" not in stream.getvalue() and "tier=free" not in stream.getvalue()


def test_the_time_is_each_lines_own_second():
    formatter = KycJsonFormatter()
    for created in (1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.1, 1_600_000_000.5, 1_700_000_001.7):
        record = _record("tick")
        record.created = created
        expected = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created))
        assert json.loads(formatter.format(record))["time"] == expected
