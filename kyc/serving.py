"""gunicorn, as kyc serves with it (`kyc serve`, or `gunicorn -c python:kyc.serving wsgi:app`): errors gunicorn answers itself are JSON in the contract's
shape, and its logs never hold a card number.

gunicorn answers some requests before the app sees them (a request line past 4094 bytes: 414;
a NUL or other bad character in a header: 400; a worker killed by the timeout: 500) with an
HTML page written by gunicorn.util.write_error. Every worker calls that one function, so kyc
replaces it (install()) with one writing {"error": {"code", "message"}}. A request line that
holds a card number cannot be refused before gunicorn logs it: kyc/logs.py redacts card numbers
in every log line (kyc.security's rule); the Logger here hands it the path as sent.
"""

from __future__ import annotations

import json
import os

from gunicorn import util

from kyc import metrics
from kyc.db import pause_checkpoints, resume_checkpoints
from kyc.logs import GunicornLogger
from kyc.security import redact_card_numbers

_CODES = {400: "invalid_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
          431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's signature, answering in the contract's error shape."""
    if status_int == 500:
        message = "internal error or timeout; nothing was changed"
    else:
        message = f"{reason}: {redact_card_numbers(mesg)[:200]}" if mesg else reason
    body = json.dumps({"error": {"code": _CODES.get(status_int, "http_error"), "message": message}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    util.write_error = write_json_error


class Logger(GunicornLogger):
    """kyc's JSON gunicorn logger (kyc/logs.py scrubs card numbers, emails, IPs from every line),
    reading the path and user agent as the UTF-8 the client sent: WSGI hands them over as
    latin-1, and a fullwidth-digit card number would otherwise be logged as mojibake that still
    holds its digits' bytes."""

    def access(self, resp, req, environ, request_time) -> None:
        self.log_access(resp, environ, _as_sent(environ.get("PATH_INFO")), _as_sent(environ.get("HTTP_USER_AGENT")),
                        request_time)


def _as_sent(value: str | None) -> str | None:
    """A WSGI text (latin-1) read as the UTF-8 the client sent, when it is."""
    if isinstance(value, str) and not value.isascii():
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    return value


# Read as a gunicorn config file too: `gunicorn -c python:kyc.serving wsgi:app`, and by
# gunicorn.conf.py (what `gunicorn wsgi:app` from the repository root reads): one set of settings.
logger_class = "kyc.serving.Logger"
accesslog = "-"


def on_starting(_server) -> None:
    install()
    # Multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before gunicorn starts; empty it.
    if metrics.multiprocess():
        metrics.prepare_multiprocess_dir(os.environ[metrics.MULTIPROC_ENV])


def child_exit(_server, worker) -> None:
    metrics.worker_exited(worker.pid)


def pre_fork(server, _worker) -> None:
    """In the parent, before each worker is forked from an app it loaded (`--preload`): its SQLite
    checkpoint thread stops (kyc.db.pause_checkpoints: a child forked while that thread held a
    lock would find it held forever); each worker runs its own (post_worker_init). `kyc serve`
    pauses it itself before gunicorn starts."""
    app = getattr(server.app, "callable", None)
    runtime = getattr(app, "extensions", {}).get("kyc") if app is not None else None
    if runtime is not None:
        pause_checkpoints(runtime.engine)


def post_worker_init(worker) -> None:
    """In each worker, once its app is loaded and before it serves:
    - an app loaded before the fork (`kyc serve`, `--preload`) drops the pooled connections it
      shares with the parent and restarts its SQLite checkpoint thread (kyc.db);
    - it starts watching the rule files (create_app(watch_rules=True));
    - without Redis, the schedule (daily dormant rescore, planner statistics, webhooks, purges)
      runs in one worker: each offers to start it, and a lock file lets exactly one run it
      (InProcessSchedule.start_once). Not in wsgi.py: a parent that loads the app before forking
      must not start threads."""
    runtime = getattr(worker.wsgi, "extensions", {}).get("kyc")
    if runtime is None:
        return
    runtime.engine.dispose(close=False)
    resume_checkpoints(runtime.engine)
    if worker.wsgi.config.get("KYC_WATCH_RULES"):
        runtime.watch_rules()           # now, not at its first request: an idle worker stays current
    if not runtime.config.redis_url:
        from kyc.rescore.schedule import InProcessSchedule

        InProcessSchedule.start_once(runtime)


def configure(cfg) -> None:
    """The gunicorn settings of every kyc server (kyc serve; the tests' gunicorn)."""
    install()
    for name in ("logger_class", "accesslog", "child_exit", "pre_fork", "post_worker_init"):
        cfg.set(name, globals()[name])
    if "control_socket_disable" in cfg.settings:           # gunicorn 24 and later
        cfg.set("control_socket_disable", control_socket_disable)


# gunicorn's control interface (a Unix socket the master serves, gunicornc) is not used by kyc, and
# its default path is one per user (~/.gunicorn/gunicorn.ctl): every gunicorn of that user (a
# second kyc, another service, a benchmark's bare Flask) binds the same path, the last one started
# takes it over, and the first one stopped unlinks it from under the others.
control_socket_disable = True
