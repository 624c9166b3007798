"""Probes and metrics for whoever runs kyc, outside /v1 and without an API key:

    GET /healthz   liveness: the process answers (it does not look at the database)
    GET /readyz    readiness: database reachable and migrated to head, rules loaded, Redis
                   reachable when configured; 503 naming what is wrong otherwise
    GET /metrics   Prometheus metrics (kyc/metrics.py), all gunicorn workers added up
"""

from __future__ import annotations

from flask import Blueprint, Response

from kyc import metrics
from kyc.api import documented, respond, runtime
from kyc.api.responses import Health, Readiness

probes = Blueprint("probes", __name__)


@probes.get("/healthz")
@documented("Liveness", responses={200: Health}, public=True, tag="operations")
def healthz():
    """The process is up and serving. Restart it when this fails; it reads nothing external."""
    return respond(Health, {"status": "ok", "rules_version": runtime().rules.version})


@probes.get("/readyz")
@documented("Readiness", responses={200: Readiness, 503: Readiness}, public=True, tag="operations")
def readyz():
    """Whether this process can serve: the database is reachable and migrated to the code's
    head, the rules are loaded, and Redis answers when KYC_REDIS_URL is set. 503 names what is
    wrong in `checks`; take the process out of the load balancer until it answers 200."""
    checks = runtime().readiness()
    ready = all(check["ok"] for check in checks.values())
    return respond(Readiness, {"status": "ready" if ready else "unavailable", "checks": checks},
                   status=200 if ready else 503)


@probes.get("/metrics")
@documented("Prometheus metrics", responses={200: None}, public=True, tag="operations",
            media_type=metrics.CONTENT_TYPE)
def prometheus_metrics():
    """Prometheus text exposition of every kyc metric (see the README's metrics table). Keep
    it, like the rest of kyc, on the internal network: rule names are in its labels."""
    return Response(metrics.exposition(runtime()), mimetype=None, content_type=metrics.CONTENT_TYPE)
