"""Prometheus metrics (the official prometheus_client), served at GET /metrics.

Under `kyc serve` every gunicorn worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode: `kyc serve` creates or empties the directory before the
workers start, and gunicorn's child_exit hook marks a dead worker's files), and a scrape of any
worker adds them all up. A process without that variable (tests, the CLI, `kyc worker`) keeps
its samples in memory. prometheus_client picks the mode when it is first imported, so the
metrics are made at their first use (module __getattr__), and `kyc serve` sets the variable first.

Counted where they happen (cheap: a dictionary lookup and an add, or an mmap write):
    kyc_http_request_duration_seconds{method,route,status}  every HTTP request, by Flask route
    kyc_decisions_total{subject,decision,trigger}           evaluations computed (live and rescore)
    kyc_rule_hits_total{subject,rule,mode}                  rule hits; mode active or shadow
    kyc_signals_duration_seconds{subject}                   time to collect an input's signals
    kyc_signals_degraded_total{family}                      signal families answered without their backend
    kyc_velocity_backend_errors_total{backend,operation}    velocity store failures (read, record)
    kyc_rescore_runs_total{selector}                        rescore runs started
    kyc_rescore_batches_total                               rescore batches worked to the end
    kyc_rescore_accounts_total{old,new}                     accounts rescored, by decision before and after
Read from the database and Redis at each scrape (StateCollector):
    kyc_queue_depth{queue}                                  jobs waiting on each rq queue (with Redis)
    kyc_rescore_batches_pending                             rescore batches recorded and not finished
    kyc_webhook_outbox_backlog                              decision webhooks not yet delivered
    kyc_webhook_outbox_oldest_seconds                       age of the oldest of them (0 when none)
    kyc_rules_info{version}                                 the rules version of the process answering
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from typing import Any, Iterable

log = logging.getLogger("kyc.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIGNAL_FAMILIES = ("email", "phone", "ip", "device", "velocity", "account", "graph", "card")


def _define() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    defined = dict(
        REQUEST_SECONDS=Histogram("kyc_http_request_duration_seconds", "HTTP request latency by Flask route",
                                  ["method", "route", "status"], buckets=_FAST),
        DECISIONS=Counter("kyc_decisions_total", "Evaluations computed, by subject, decision and trigger",
                          ["subject", "decision", "trigger"]),
        RULE_HITS=Counter("kyc_rule_hits_total", "Rule hits by subject and rule; mode active (acting) or shadow (recorded only)",
                          ["subject", "rule", "mode"]),
        SIGNALS_SECONDS=Histogram("kyc_signals_duration_seconds", "Time to collect the signals of one input",
                                  ["subject"], buckets=_FAST),
        SIGNALS_DEGRADED=Counter("kyc_signals_degraded_total",
                                 "Signal families answered without their backend (an evaluation marked degraded)",
                                 ["family"]),
        VELOCITY_ERRORS=Counter("kyc_velocity_backend_errors_total", "Velocity store failures",
                                ["backend", "operation"]),
        RESCORE_RUNS=Counter("kyc_rescore_runs_total", "Rescore runs started", ["selector"]),
        RESCORE_BATCHES=Counter("kyc_rescore_batches_total", "Rescore batches worked to the end"),
        RESCORE_ACCOUNTS=Counter("kyc_rescore_accounts_total", "Accounts rescored, by decision before and after",
                                 ["old", "new"]),
    )
    for family in SIGNAL_FAMILIES:       # present at 0 from the start: an alert can read "no increase"
        defined["SIGNALS_DEGRADED"].labels(family=family)
    for operation in ("read", "record"):
        defined["VELOCITY_ERRORS"].labels(backend="redis", operation=operation)
    return defined


_NAMES = ("REQUEST_SECONDS", "DECISIONS", "RULE_HITS", "SIGNALS_SECONDS", "SIGNALS_DEGRADED", "VELOCITY_ERRORS",
          "RESCORE_RUNS", "RESCORE_BATCHES", "RESCORE_ACCOUNTS")
_define_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """The metrics are made at their first use, not at import: prometheus_client chooses between
    in-memory and multiprocess values when it is imported, and `kyc serve` sets the directory
    after the kyc package is imported. Once made they are plain module attributes."""
    if name not in _NAMES:
        raise AttributeError(name)
    with _define_lock:
        if name not in globals():
            globals().update(_define())
    return globals()[name]


def defined() -> bool:
    return "DECISIONS" in globals()


def evaluated(subject: str, trigger: str, decision: str, reasons: Iterable[dict[str, Any]],
              signal_seconds: float | None = None) -> None:
    """One evaluation computed: its decision, its rule hits and its signal time."""
    if "DECISIONS" not in globals():
        __getattr__("DECISIONS")
    DECISIONS.labels(subject, decision, trigger).inc()
    for reason in reasons:
        RULE_HITS.labels(subject, reason["rule"], "shadow" if reason.get("shadow") else "active").inc()
    if signal_seconds is not None:
        SIGNALS_SECONDS.labels(subject).observe(signal_seconds)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def prepare_multiprocess_dir(path: str) -> None:
    """Before the workers start: make the directory, and remove what a previous run left (its
    counters would be added to this run's)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges stop counting (its counters and
    histograms stay, so totals never go backwards)."""
    if not multiprocess():
        return
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(pid)


class _AllProcesses:
    """Every process's samples (multiprocess mode): prometheus_client's MultiProcessCollector
    over the files that are ready. A process creates its file empty and then sizes it (its
    MmapedDict), so a scrape between the two read an empty file and /metrics answered 500 (a
    `kyc worker` starting during a scrape; tests/test_observability.py's deployment failed so
    once in a CI run). A file's size only grows, so one left out now is read by the next scrape."""

    def __init__(self, path: str):
        self.path = path

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector

        return MultiProcessCollector.merge(_ready_files(self.path), accumulate=True)


def _ready_files(path: str) -> list[str]:
    ready = []
    for name in glob.glob(os.path.join(path, "*.db")):
        try:
            if os.path.getsize(name) > 0:
                ready.append(name)
        except FileNotFoundError:        # a dead worker's live gauges, removed meanwhile
            continue
    return ready


class _ThisProcess:
    """The samples this process keeps in memory (no multiprocess directory)."""

    def collect(self):
        from prometheus_client import REGISTRY

        return REGISTRY.collect()


class StateCollector:
    """Gauges read at scrape time from where the state lives (database, Redis, the rule set)."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
        from sqlalchemy import func, select

        from kyc.models import DecisionWebhook, RescoreBatch, utcnow

        rt = self.runtime
        info = InfoMetricFamily("kyc_rules", "Rules version running in the process that answered the scrape")
        info.add_metric([], {"version": rt.rules.version})
        yield info
        dated = GaugeMetricFamily("kyc_data_source_timestamp_seconds",
                                  "When each network data source was made (GeoIP build date, each list's upstream "
                                  "commit): alert on time() minus it", labels=["source"])
        for source, date in sorted(rt.geoip.data_dates().items()):
            dated.add_metric([source], date.timestamp())
        yield dated
        pending = GaugeMetricFamily("kyc_rescore_batches_pending", "Rescore batches recorded and not finished")
        backlog = GaugeMetricFamily("kyc_webhook_outbox_backlog", "Decision webhooks not yet delivered")
        oldest = GaugeMetricFamily("kyc_webhook_outbox_oldest_seconds",
                                   "Age of the oldest decision webhook not yet delivered (0 when none)")
        try:
            with rt.session() as session:
                pending.add_metric([], session.scalar(
                    select(func.count()).select_from(RescoreBatch).where(RescoreBatch.finished_at.is_(None))))
                count, first = session.execute(
                    select(func.count(), func.min(DecisionWebhook.created_at))
                    .where(DecisionWebhook.delivered_at.is_(None))).one()
                backlog.add_metric([], count)
                oldest.add_metric([], (utcnow() - first).total_seconds() if first else 0.0)
        except Exception:                      # noqa: BLE001 - a scrape must answer; /readyz says why
            log.warning("metrics: database unreachable, its gauges are left out", exc_info=True)
        else:
            yield pending
            yield backlog
            yield oldest
        if rt.config.redis_url:
            from rq import Queue

            from kyc.rescore.queue import QUEUES, redis_connection

            depth = GaugeMetricFamily("kyc_queue_depth", "Jobs waiting on each rq queue", labels=["queue"])
            try:
                connection = redis_connection(rt.config)
                for name in QUEUES:
                    depth.add_metric([name], Queue(name, connection=connection).count)
            except Exception:                  # noqa: BLE001
                log.warning("metrics: Redis unreachable, kyc_queue_depth is left out", exc_info=True)
            else:
                yield depth


def registry(runtime):
    """Every kyc metric: all processes' (multiprocess mode) or this one's, and the state gauges."""
    from prometheus_client import CollectorRegistry

    __getattr__("DECISIONS")              # defined, so a scrape shows every family from the start
    reg = CollectorRegistry(auto_describe=False)
    if multiprocess():
        reg.register(_AllProcesses(os.environ[MULTIPROC_ENV]))
    else:
        reg.register(_ThisProcess())
    reg.register(StateCollector(runtime))
    return reg


def exposition(runtime) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry(runtime))
