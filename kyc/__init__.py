"""kyc: account-registration fraud scoring and identity verification."""

from __future__ import annotations

import gc
import sys
import time

from flask import Flask, g, request

from kyc import logs
from kyc.config import Config
from kyc.runtime import Runtime, warn_if_stale


def create_app(config: Config | None = None, runtime: Runtime | None = None, *, watch_rules: bool = False) -> Flask:
    """Application factory: config, database, rules, blueprints, error handlers.

    watch_rules: the serving process (each worker, after fork) polls the rule files and
    reloads them when they change and load cleanly (KYC_RULES_POLL_SECONDS).
    """
    config = config or (runtime.config if runtime else Config.from_env())
    logs.configure(config.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    app.extensions["kyc"] = runtime or Runtime.start(config)
    app.config["KYC_WATCH_RULES"] = watch_rules     # read by kyc.serving: gunicorn workers watch from their start
    if watch_rules:
        warn_if_stale(app.extensions["kyc"].geoip)

    from kyc import api, metrics, signals
    from kyc.ops import console

    signals.warm()              # once per process, before gunicorn forks its workers

    api.register(app)
    console.register(app)

    # These hooks run at every request: the request and g are each looked up once (a lookup
    # through Flask's proxies costs about 0.5 us).
    @app.before_request
    def _enter() -> None:
        ctx_g, environ = g._get_current_object(), request.environ
        ctx_g.kyc_started = time.perf_counter()
        ctx_g.request_id = environ[logs.ENVIRON_KEY] = logs.request_id(environ.get(logs.REQUEST_ID_ENVIRON))
        # Background rescoring without Redis waits for moments when no request is in flight.
        app.extensions["kyc"].traffic.enter()
        ctx_g.kyc_in_flight = True

    @app.after_request
    def _answered(response):
        ctx_g = g._get_current_object()
        response.headers[logs.REQUEST_ID_HEADER] = ctx_g.get("request_id") or ""
        started = ctx_g.get("kyc_started")
        if started is not None:
            req = request._get_current_object()
            route = req.url_rule.rule if req.url_rule is not None else "unmatched"
            metrics.REQUEST_SECONDS.labels(req.method, route, response.status_code).observe(
                time.perf_counter() - started)
        return response

    @app.teardown_request
    def _leave(_exc) -> None:
        if g.pop("kyc_in_flight", False):
            app.extensions["kyc"].traffic.leave()

    if watch_rules:
        @app.before_request
        def _watch_rules() -> None:
            # Under gunicorn each worker starts it as it starts (kyc.serving.post_worker_init);
            # under another server, from the first request of each process.
            app.extensions["kyc"].watch_rules()

    return app


GC_YOUNG = 10_000


def settle_for_serving() -> None:
    """What a serving process does once its app is built (kyc serve, wsgi.py, the benches).

    - Start-up's objects (rules, GeoIP readers, parsers) live as long as the process: they are
      kept out of the collector's full passes (a 90 ms pause became 7 ms) and shared after fork.
    - A thread waiting for the interpreter gets it within 0.5 ms, not the default 5: a request
      thread back from the database waited behind in-process cluster rescoring. On the
      payment bench's workload (PostgreSQL) 4 of 5 alternating pairs of runs had a lower p99
      with it (10.9-11.9 ms against 11.9-15.2 ms; the fifth 14.6 against 10.2, on a machine
      whose noise is of that order).
    - The youngest generation is collected every GC_YOUNG allocations, not Python's 700: a
      bulk activity call's ~1,000 days, rows and reports live a few hundred milliseconds, and
      at 700 they were promoted until a full pass walked them all, about once a call (19 full
      passes in 21 bulk calls). bench/activity.py, 10,000 reports in bulk, 1,000 single (one
      run each way, load ~4): the collector's CPU over the whole run 1,365 -> 374 ms, bulk
      calls' median request CPU 251 -> 226 ms (first of the day) and 227 -> 202 ms (again). A
      young pass costs ~1.5 ms instead of ~0.04; single reports met 3 passes in 1,000, not 64.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    sys.setswitchinterval(0.0005)
