"""The `kyc` command."""

from __future__ import annotations

import sys

import click
from sqlalchemy import select

from kyc.config import DEV_KEY, Config
from kyc.engine import RuleSet, RuleSetError


def _config(**overrides) -> Config:
    return Config.from_env(**overrides)


def _runtime(migrate: bool | None = None):
    from kyc.runtime import Runtime, check_migrated

    try:
        runtime = Runtime.start(_config(), migrate=migrate)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)
    if not runtime.config.is_sqlite:
        # A shared database is migrated on purpose (`kyc db upgrade`): a command on one that is
        # not at head says so, instead of failing on the first table that is missing.
        check_migrated(runtime.engine)
    return runtime


def _rule_errors(exc: RuleSetError) -> None:
    click.echo(f"rules: {len(exc.errors)} error(s)", err=True)
    for error in exc.errors:
        click.echo(f"  {error}", err=True)


class _Group(click.Group):
    """Failures an operator mends (a setting, a database or Redis that does not answer, a
    database not migrated, a BIN table that cannot be read) end a command with one line naming
    what to mend, not a traceback."""

    def invoke(self, ctx: click.Context):
        from alembic.util.exc import CommandError
        from redis.exceptions import ConnectionError as RedisUnavailable, ResponseError, TimeoutError as RedisTimeout
        from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

        from kyc.config import SettingError
        from kyc.runtime import NotMigrated
        from kyc.signals.payment import BinTableError

        try:
            return super().invoke(ctx)
        except (SettingError, BinTableError) as exc:
            raise click.ClickException(str(exc)) from None
        except NotMigrated as exc:
            raise click.ClickException(f"{exc} (database {_safe_url(Config.from_env().database_url)})") from None
        except CommandError as exc:                 # alembic: e.g. an unknown --revision
            raise click.ClickException(f"migrations: {exc}") from None
        except (OperationalError, InterfaceError, ProgrammingError) as exc:
            # ProgrammingError: refused before any statement, e.g. a bad parameter in the URL
            first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise click.ClickException(f"the database did not answer "
                                       f"({_safe_url(Config.from_env().database_url)}): {first}") from None
        except (RedisUnavailable, RedisTimeout, ResponseError) as exc:
            raise click.ClickException(f"Redis did not answer (KYC_REDIS_URL): {exc}") from None


@click.group(cls=_Group)
def main() -> None:
    """kyc: account-registration fraud scoring and identity verification."""


# --- serve ------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP service (gunicorn). On the embedded SQLite default, migrates and prints a dev key."""
    import os
    import shutil
    import tempfile

    from gunicorn.app.base import BaseApplication

    from kyc import create_app, logs, metrics, serving, settle_for_serving
    from kyc.db import make_engine, pause_checkpoints
    from kyc.runtime import NotMigrated, check_migrated

    config = _config()
    logs.configure(config.log_level)
    if not config.is_sqlite:
        # The embedded SQLite default migrates itself; a shared database is migrated on purpose,
        # by `kyc db upgrade`, before a new release serves from it.
        engine = make_engine(config.database_url)
        try:
            check_migrated(engine)
        except NotMigrated as exc:
            raise click.ClickException(f"{exc} (database {_safe_url(config.database_url)})") from None
        finally:
            engine.dispose()
    # The workers' metrics add up through files in one directory (prometheus_client's multiprocess
    # mode, chosen when it is first imported: kyc.metrics imports it at the first metric used).
    if "prometheus_client" in sys.modules:
        raise click.ClickException("internal: prometheus_client was imported before kyc serve chose its mode")
    metrics_dir = os.environ.get(metrics.MULTIPROC_ENV)
    own_metrics_dir = not metrics_dir
    if own_metrics_dir:
        metrics_dir = os.environ[metrics.MULTIPROC_ENV] = tempfile.mkdtemp(prefix="kyc-metrics-")
    metrics.prepare_multiprocess_dir(metrics_dir)
    if config.is_sqlite and not config.dev_key and "KYC_DEV_KEY" not in os.environ:
        config = _config(dev_key=DEV_KEY)
        click.echo(f"development API key (embedded default only): {DEV_KEY}")
    try:
        app = create_app(config, watch_rules=True)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)
    runtime = app.extensions["kyc"]
    settle_for_serving()          # as wsgi.py does
    click.echo(f"kyc on http://{host}:{port}  database={_safe_url(config.database_url)}  "
               f"rules={runtime.rules.version[:19]}")
    if not config.redis_url:
        click.echo("jobs: in-process (no KYC_REDIS_URL); one web worker runs the rescore schedule")

    def _reload_rules_in_master(_server) -> None:
        # SIGHUP: gunicorn starts fresh workers from the master and retires the old ones once
        # their requests finish; load first so the new workers inherit the newest clean set.
        try:
            runtime.reload_rules(actor="sighup")
        except RuleSetError:
            pass                                  # logged and kept as the last refused reload

    class _Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("accesslog", "-")
            # JSON lines; the access line has no client address and no query string: a log must
            # not hold an IP or whatever a caller put in a URL (bodies are checked, URLs are not).
            # JSON logs with card numbers as sent, JSON errors from gunicorn, metrics of exited
            # workers; each worker leaves the parent's pooled connections and, without Redis,
            # one runs the schedule (kyc/serving.py).
            serving.configure(self.cfg)
            self.cfg.set("when_ready", lambda _server: runtime.watch_rules())
            self.cfg.set("on_reload", _reload_rules_in_master)

        def load(self):
            return app

    pause_checkpoints(runtime.engine)      # the master forks workers: it runs no database thread
    master = os.getpid()
    try:
        _Server().run()
    finally:
        # Workers are forked inside run() and leave it by SystemExit through this block too: only
        # the master may remove the directory (a worker retired by SIGHUP removed it, and every
        # later worker answered 500 on its first metric).
        if own_metrics_dir and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- jobs -------------------------------------------------------------------------------------

@main.command()
@click.option("--burst", is_flag=True, help="work until the queues are empty, then exit")
@click.option("--with-scheduler/--without-scheduler", default=True, show_default=True,
              help="also move due scheduled jobs (daily rescore, rules watch) onto their queues")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=0, show_default=True,
              help="serve this worker's Prometheus metrics on 127.0.0.1:PORT/metrics (0: off)")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
def worker(burst: bool, with_scheduler: bool, metrics_port: int, metrics_host: str) -> None:
    """Run an rq worker on KYC_REDIS_URL for the queues default and rescore (default first)."""
    from redis.exceptions import RedisError
    from rq import Queue, SimpleWorker

    from kyc import jobs, logs, metrics
    from kyc.rescore import queue, schedule
    from kyc.runtime import warn_if_stale

    logs.configure(_config().log_level)
    runtime = _runtime(migrate=False)
    warn_if_stale(runtime.geoip)
    connection = queue.redis_connection(runtime.config)
    if connection is None:
        raise click.ClickException("KYC_REDIS_URL is not set; without Redis, `kyc serve` runs jobs in-process")
    jobs.use_runtime(runtime)
    schedule.ensure_schedule(connection, runtime.config)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry(runtime))
        click.echo(f"worker metrics on http://{metrics_host}:{metrics_port}/metrics")
    # Re-creates the schedules if Redis loses them and re-enqueues batches a killed worker left.
    schedule.WorkerMaintenance(runtime, connection).start()
    # SimpleWorker runs each job in this process (no fork per job): the Runtime (database pool,
    # compiled rules, lookup tables) is built once here and reused by every job.
    queues = [Queue(name, connection=connection) for name in queue.QUEUES]
    queue.children_die_with_this_process()          # rq's scheduler child: not left holding our sockets
    heartbeat = queue.WorkerHeartbeat(connection)   # what `kyc jobs` tells a running job from an abandoned one by
    heartbeat.start()
    while True:
        worker = SimpleWorker(queues, connection=connection)
        heartbeat.follow(worker.name)
        try:
            worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=runtime.config.log_level)
        except RedisError as exc:
            # rq's loop quits when Redis goes away mid-job, and its teardown then fails too.
            if burst:
                raise
            click.echo(f"worker: Redis unavailable ({exc.__class__.__name__}); waiting for it", err=True)
        # A stop asked for by a signal: rq marks a busy worker _stop_requested, an idle one only
        # with the date of the request (it leaves its loop at once). Either way, stop.
        if burst or getattr(worker, "_stop_requested", False) or getattr(worker, "_shutdown_requested_date", None):
            return
        # rq quit on its own (a Redis outage, an error outside a job): serve again once Redis
        # answers; the maintenance thread re-creates what an empty Redis lost.
        queue.wait_for_redis(connection)


@main.command()
@click.option("--dormant-days", type=click.IntRange(min=0), help="accounts with no activity for N days")
@click.option("--refused-on", type=click.DateTime(formats=["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="held accounts (verify, review) the gateway refused requests of on that UTC day")
@click.option("--all", "all_accounts", is_flag=True, help="every account")
@click.option("--cluster", "cluster_id", help="the accounts of one cluster")
@click.option("--since-rules-change", is_flag=True, help="accounts last scored under another rules version")
@click.option("--resume", "resume_run", metavar="RUN_ID|all", help="finish the unfinished batches of a run")
@click.option("--batch-size", type=click.IntRange(min=1), help="accounts per job (default KYC_RESCORE_BATCH_SIZE)")
@click.option("--reason", default="manual", show_default=True)
def rescore(dormant_days: int | None, refused_on, all_accounts: bool, cluster_id: str | None,
            since_rules_change: bool, resume_run: str | None, batch_size: int | None, reason: str) -> None:
    """Rescore accounts in batches: enqueued on rq with Redis, run here without."""
    from kyc.rescore import batch, queue, runs
    from kyc.rescore.background import drain

    chosen = [dormant_days is not None, refused_on is not None, all_accounts, cluster_id is not None,
              since_rules_change, bool(resume_run)]
    if sum(chosen) != 1:
        raise click.UsageError("give exactly one of --dormant-days N, --refused-on DAY, --all, --cluster ID, "
                               "--since-rules-change, --resume RUN_ID")
    runtime = _runtime(migrate=False)
    queued = queue.redis_connection(runtime.config) is not None
    if resume_run:
        if resume_run != "all":
            from kyc.models import RescoreRun

            with runtime.session() as session:
                if session.get(RescoreRun, resume_run) is None:
                    raise click.ClickException(f"no rescore run {resume_run!r} (`kyc jobs` shows the last one)")
        pending = batch.resume(runtime, None if resume_run == "all" else resume_run)
        if not queued:
            drain(runtime)
        click.echo(f"{len(pending)} unfinished batch(es) {'enqueued' if queued else 'rescored'}")
        return
    if dormant_days is not None:
        selector, params = "dormant", {"dormant_days": dormant_days}
    elif refused_on is not None:
        selector, params = "refused", {"day": refused_on.date().isoformat()}
    elif all_accounts:
        selector, params = "all", {}
    elif cluster_id is not None:
        from kyc.models import Cluster

        with runtime.session() as session:
            if session.get(Cluster, cluster_id) is None:
                raise click.ClickException(f"no cluster {cluster_id!r} (`kyc clusters list` shows them)")
        selector, params = "cluster", {"cluster_id": cluster_id}
    else:
        selector, params = "rules_change", {}
    run = runs.start_run(runtime, selector, params=params, reason=reason, batch_size=batch_size)
    done = batch.dispatch(runtime, run)
    if done == "enqueued":
        click.echo(f"run {run.id}: {run.total} account(s) in {run.batches} batch(es) enqueued on 'rescore'")
    elif done == "recorded":
        click.echo(f"run {run.id}: {run.total} account(s) in {run.batches} batch(es) recorded; Redis did not answer, "
                   f"a kyc worker enqueues them once it is back")
    else:
        # What the run's own evaluations asked for (a member's new block rescores its cluster) is
        # worked here too, before the command ends and takes its background thread with it.
        drain(runtime)
        with runtime.session() as session:
            _print_summary(runs.run_summary(session, session.get(type(run), run.id)))


@main.command("jobs")
def jobs_status() -> None:
    """Queued, running, failed and finished jobs, and the last rescore run's summary."""
    from kyc.rescore import queue, runs

    runtime = _runtime(migrate=False)
    connection = queue.redis_connection(runtime.config)
    if connection is None:
        click.echo("queues: none (no KYC_REDIS_URL; jobs run in-process)")
    else:
        click.echo(f"{'queue':<10}{'queued':>8}{'scheduled':>11}{'running':>9}{'abandoned':>11}{'failed':>8}"
                   f"{'finished':>10}")
        for name, c in queue.queue_counts(connection).items():
            click.echo(f"{name:<10}{c['queued']:>8}{c['scheduled']:>11}{c['running']:>9}{c['abandoned']:>11}"
                       f"{c['failed']:>8}{c['finished']:>10}")
    with runtime.session() as session:
        run = runs.last_run(session)
        if run is None:
            click.echo("no rescore run yet")
            return
        _print_summary(runs.run_summary(session, run))


def _print_summary(s: dict) -> None:
    from kyc.models import DECISIONS

    params = " ".join(f"{k}={v}" for k, v in s["params"].items())
    state = f"finished {s['finished_at']:%Y-%m-%d %H:%M:%S}Z" if s["finished_at"] else \
        f"in progress ({s['batches_done']}/{s['batches']} batches)"
    click.echo(f"last run {s['run_id']}: {s['selector']} {params}".rstrip() + f"  ({s['reason']})")
    click.echo(f"  started {s['created_at']:%Y-%m-%d %H:%M:%S}Z, {state}, rules {s['rules_version'][:19]}")
    click.echo(f"  accounts: {s['total']} selected, {s['seen']} seen, {s['changed']} changed, "
               f"{s['escalated']} more severe, {s['held']} kept at block, {s['missing']} missing")
    click.echo("  old \\ new " + "".join(f"{d:>8}" for d in DECISIONS))
    for old in DECISIONS:
        click.echo(f"  {old:<9} " + "".join(f"{s['matrix'].get((old, new), 0):>8}" for new in DECISIONS))


# --- db ---------------------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (never back: a database past it stays where it is)."""
    from kyc.db import make_engine
    from kyc.runtime import database_revision, upgrade_database

    config = _config()
    upgrade_database(config.database_url, revision)
    engine = make_engine(config.database_url)
    try:
        reached = database_revision(engine)
    finally:
        engine.dispose()
    past = f" (past {revision}: upgrade never goes back)" if revision not in ("head", reached) else ""
    click.echo(f"database at {'head' if revision == 'head' else reached}{past}: {_safe_url(config.database_url)}")


# --- keys -------------------------------------------------------------------------------------

@main.group()
def keys() -> None:
    """API keys (only their hashes are stored)."""


@keys.command("create")
@click.option("--name", required=True, help="who uses the key, e.g. signup-flow")
@click.option("--role", required=True, type=click.Choice(["signup", "gateway", "ops", "admin"]),
              help="what the key may call: signup (scoring, verifications), gateway (entitlement, activity), "
                   "ops (reads, labels, reviews, cluster actions, rules reload), admin (everything)")
def keys_create(name: str, role: str) -> None:
    """Create a key for a role and print it once."""
    from kyc.ops.audit import cli_actor
    from kyc.ops.keys import create_key

    runtime = _runtime()
    with runtime.session() as session, session.begin():
        _, key = create_key(session, name, role, cli_actor())
    click.echo(key)
    click.echo(f"(stored hashed as '{name}', role {role}; it cannot be shown again)", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (id, name, role, prefix, created, revoked)."""
    from kyc.models import ApiKey

    runtime = _runtime()
    with runtime.session() as session:
        for key in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars():
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            click.echo(f"{key.id:>4}  {key.name:<24} {key.role:<8} {key.prefix}...  {key.created_at:%Y-%m-%d}  {state}")


@keys.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke a key by its id (see `kyc keys list`)."""
    from kyc.ops.audit import cli_actor
    from kyc.errors import NotFound
    from kyc.ops.keys import revoke_key

    runtime = _runtime()
    try:
        with runtime.session() as session, session.begin():
            revoke_key(session, key_id, cli_actor())
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked key {key_id}")


# --- audit ------------------------------------------------------------------------------------

@main.command("audit")
@click.option("--action", help="e.g. decision.changed, cluster.action, rules.reloaded; or a prefix: decision, key")
@click.option("--actor", help='e.g. "key:ops-anna", "rules:sha256:...", "cli:root"')
@click.option("--account", "account_id", help="events about one account")
@click.option("--cluster", "cluster_id", help="events about one cluster")
@click.option("--since", default=None, help="window start: 30d, 12h, 2w or a date")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def audit_list(action: str | None, actor: str | None, account_id: str | None, cluster_id: str | None,
               since: str | None, limit: int, as_json: bool) -> None:
    """The audit trail, newest first: decision changes, reviews, cluster actions, rules reloads, key changes."""
    import json

    from kyc.backtest import parse_since
    from kyc.ops.audit import list_events

    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    runtime = _runtime()
    with runtime.session() as session:
        page = list_events(session, action=action, actor=actor, account_id=account_id, cluster_id=cluster_id,
                           since=start, limit=limit)
    for e in page["events"]:
        if as_json:
            click.echo(json.dumps(e, sort_keys=True))
            continue
        about = " ".join(f"{k}={e[k]}" for k in ("account_id", "cluster_id") if e[k])
        detail = " ".join(f"{k}={v}" for k, v in e["detail"].items() if k not in ("errors",))
        click.echo(f"{e['at']}  {e['id']:>6}  {e['action']:<16} {e['actor']:<28} {about}  {detail}")
    if not page["events"]:
        click.echo("no audit events", err=True)


# --- rules ------------------------------------------------------------------------------------

@main.group()
def rules() -> None:
    """Rule files: check, test, backtest."""


def _load_policy(rules_dir: str | None):
    """The rules folder as kyc would serve it (kyc.runtime.load_policy): rules and tiers."""
    from pathlib import Path

    from kyc.runtime import load_policy

    try:
        return load_policy(Path(rules_dir) if rules_dir else _config().rules_dir)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)


def _load_rules(rules_dir: str | None) -> RuleSet:
    return _load_policy(rules_dir)[0]


def _load_cases(ruleset: RuleSet) -> list:
    """The rule test cases, checked against the schema and the rules; exit 1 with readable errors."""
    from kyc.ruletests import load_cases, unknown_rule_hits
    from kyc.signals import SCHEMA

    try:
        cases = load_cases(ruleset.root, SCHEMA)
    except RuleSetError as exc:
        _rule_errors(exc)
        sys.exit(1)
    stale = unknown_rule_hits(cases, ruleset)
    if stale:
        _rule_errors(RuleSetError(stale))
        sys.exit(1)
    return cases


_RULES_OPTION = click.option("--rules", "rules_dir", type=click.Path(file_okay=False),
                             help="rules directory (default KYC_RULES_DIR)")


@rules.command("check")
@_RULES_OPTION
def rules_check(rules_dir: str | None) -> None:
    """Load and type-check every rule file, list and test case; exit non-zero with readable errors."""
    ruleset, tiers = _load_policy(rules_dir)
    cases = _load_cases(ruleset)
    summary = ruleset.summary()
    click.echo(f"ok  {ruleset.version}")
    for subject, counts in summary["subjects"].items():
        click.echo(f"  {subject + '.yaml':<24} {counts['active']} active, {counts['shadow']} shadow, "
                   f"{counts['disabled']} disabled")
    for name, values in sorted(ruleset.lists.items()):
        kind = getattr(values, "kind", "text")
        folding = ", case-folded" if getattr(values, "casefold", False) else ""
        click.echo(f"  {'lists/' + name + '.txt':<24} {len(values)} {kind} values{folding}")
    click.echo(f"  {'tiers.yaml':<24} {len(tiers.tiers)} tiers: {', '.join(tiers.tiers) or 'none'}")
    click.echo(f"  {'tests/':<24} {len(cases)} cases (run them: kyc rules test)")


@rules.command("fields")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True)
def rules_fields(fmt: str) -> None:
    """Print every field a rule can read (the signal schema) and the functions of the language."""
    from kyc.engine.compiler import FUNCTIONS
    from kyc.signals import SCHEMA

    fields = list(SCHEMA)
    if fmt == "markdown":
        click.echo("| Field | Type | Meaning | Example |\n| --- | --- | --- | --- |")
        for f in fields:
            click.echo(f"| `{f.name}` | {f.type} | {f.description} | `{f.example!r}` |")
        click.echo("\n| Function | Example |\n| --- | --- |")
        for name, fn in sorted(FUNCTIONS.items()):
            click.echo(f"| `{name}` | `{fn.doc}` |")
        return
    width = max(len(f.name) for f in fields)
    family = None
    for f in fields:
        if f.family != family:
            family = f.family
            click.echo(f"\n{family}")
        click.echo(f"  {f.name:<{width}}  {f.type:<5}  {f.description}  (e.g. {f.example!r})")
    click.echo("\nfunctions")
    for name, fn in sorted(FUNCTIONS.items()):
        click.echo(f"  {name:<{width}}  {fn.doc}")


@rules.command("test")
@_RULES_OPTION
@click.option("--verbose", "-v", is_flag=True, help="print the signals and outcome of failing cases")
def rules_test(rules_dir: str | None, verbose: bool) -> None:
    """Run rules/tests/*.yaml against the rules; print a pass/fail table; exit 1 on any failure."""
    from kyc.ruletests import case_signals, run_case

    ruleset = _load_rules(rules_dir)
    cases = _load_cases(ruleset)
    if not cases:
        click.echo(f"no cases in {ruleset.root / 'tests'}", err=True)
        sys.exit(1)
    failed = 0
    width = min(60, max(len(c.name) for c in cases))
    click.echo(f"{'':<4} {'case':<{width}}  {'where':<28} {'decision':<9} hits")
    for case in cases:
        result = run_case(case, ruleset)
        failed += not result.passed
        mark = "PASS" if result.passed else "FAIL"
        click.echo(f"{mark:<4} {case.name[:width]:<{width}}  {case.file + ':' + str(case.line):<28} "
                   f"{result.decision:<9} {', '.join(result.hits) or '-'}")
        for problem in result.problems:
            click.echo(f"{'':<5}  -> {problem}")
        if verbose and not result.passed and case.subject in ruleset.subjects:
            try:
                click.echo(f"{'':<5}     signals: {case_signals(case, ruleset)}")
            except Exception as exc:  # noqa: BLE001 - the problem is already listed above
                click.echo(f"{'':<5}     signals: ({exc})")
    click.echo(f"\n{len(cases) - failed} passed, {failed} failed  ({ruleset.version[:19]})")
    sys.exit(1 if failed else 0)


@rules.command("backtest")
@click.option("--since", default="30d", show_default=True, help="window start: 30d, 12h, 2w or a date")
@click.option("--until", default=None, help="window end (default now): a duration back from now or a date")
@_RULES_OPTION
@click.option("--limit-changed", default=20, show_default=True, type=click.IntRange(min=0),
              help="accounts with a changed decision to list")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1),
              help="evaluations read per query")
def rules_backtest(since: str, until: str | None, rules_dir: str | None, limit_changed: int, batch_size: int) -> None:
    """Replay stored live evaluations in the window through candidate rules and compare decisions."""
    from kyc.backtest import backtest, format_report, parse_since
    from kyc.db import make_engine
    from kyc.models import utcnow

    now = utcnow()                      # one clock for both ends
    try:
        start = parse_since(since, now)
        end = parse_since(until, now) if until else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if end is not None and end <= start:
        raise click.BadParameter(f"the window's end ({until}) must be after its start ({since})", param_hint="--until")
    ruleset = _load_rules(rules_dir)
    engine = make_engine(_config().database_url)

    def progress(done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds else 0
        click.echo(f"\r  {done:,} / {total:,} evaluations  ({rate:,.0f}/s)", err=True, nl=False)

    report = backtest(engine, ruleset, start, end, limit_changed=limit_changed, batch_size=batch_size,
                      progress=progress)
    click.echo("", err=True)
    click.echo(format_report(report))


# --- outbox -----------------------------------------------------------------------------------

@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
def outbox(limit: int) -> None:
    """Latest code messages of the outbox sender. Codes are shown in development only (the
    embedded SQLite default or KYC_DEV_KEY set); elsewhere they are masked."""
    import re

    from kyc.models import OutboxMessage
    from kyc.security import mask_email, mask_phone

    runtime = _runtime()
    show = runtime.config.development
    with runtime.session() as session:
        rows = session.execute(select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)).scalars().all()
    for m in rows:
        to = m.recipient if show else (mask_email(m.recipient) if m.channel == "email" else mask_phone(m.recipient))
        body = m.body if show else re.sub(r"\d{6}", "******", m.body)
        click.echo(f"{m.created_at:%Y-%m-%d %H:%M:%S}  {m.verification_id}  {m.channel:<5} {to}  {body}")
    if not show:
        click.echo("(codes hidden: not a development setup)", err=True)


# --- geoip ------------------------------------------------------------------------------------

@main.group()
def geoip() -> None:
    """Bundled GeoIP data: rebuild it, look an address up."""


@geoip.command("build")
@click.option("--packages", "pkgdir", type=click.Path(file_okay=False), default="var/geoip-packages",
              show_default=True, help="directory holding the pinned npm tarballs")
@click.option("--out", "outdir", type=click.Path(file_okay=False), default=None,
              help="output directory (default: the package's kyc/data/geoip)")
@click.option("--fetch", is_flag=True, help="first `npm pack` the pinned packages into --packages")
@click.option("--only", type=click.Choice(["asn", "country", "city"]), multiple=True,
              help="build only these (default: asn and country, the bundled files; city is opt-in)")
def geoip_build(pkgdir: str, outdir: str | None, fetch: bool, only: tuple[str, ...]) -> None:
    """Rebuild kyc-asn.mmdb and kyc-country.mmdb from the pinned @ip-location-db npm packages."""
    from pathlib import Path

    from kyc import geoip_build as builder
    from kyc.signals.geoip import DATA_DIR

    packages, only = Path(pkgdir), only or ("asn", "country")
    if fetch:
        builder.fetch(packages, builder.packages_for(only))
    try:
        results = builder.build(packages, Path(outdir) if outdir else DATA_DIR, only)
    except builder.BuildError as exc:
        raise click.ClickException(str(exc)) from None
    for result in results:
        click.echo(f"{result['file']}: {result['records']} records, {result['networks']} networks, "
                   f"{result['bytes']} bytes")


@geoip.command("lookup")
@click.argument("address")
def geoip_lookup(address: str) -> None:
    """Print the ip.* signals for ADDRESS with the configured (or bundled) databases."""
    import ipaddress
    import json

    from kyc.signals import network
    from kyc.signals.geoip import open_geoip

    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise click.BadParameter("not an IPv4 or IPv6 address", param_hint="ADDRESS") from None
    config = _config()
    readers = open_geoip(config.geoip_city_db or None, config.geoip_asn_db or None, config.geoip_anon_db or None)
    facts = network.network_signals(address, readers)
    click.echo(json.dumps(facts, indent=2))


# --- netintel ---------------------------------------------------------------------------------

@main.group()
def netintel() -> None:
    """Bundled network intelligence (datacenter, VPN, cloud, crawler, Tor, privacy relays)."""


@netintel.command("build")
@click.option("--from", "src", type=click.Path(file_okay=False, exists=True), required=True,
              help="directory holding x4bnet-lists_vpn/, ipranges/ and tor/ (copies of the upstream repositories)")
@click.option("--out", "outdir", type=click.Path(file_okay=False), default=None,
              help="output directory (default: the package's kyc/data/netintel)")
def netintel_build(src: str, outdir: str | None) -> None:
    """Compile the lists into kyc-netintel.mmdb and the ASN lists, licences and SOURCE lines beside them."""
    from pathlib import Path

    from kyc import netintel_build as builder
    from kyc.signals.netintel import DATA_DIR

    try:
        result = builder.build(Path(src), Path(outdir) if outdir else DATA_DIR)
    except builder.BuildError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{result['file']}: {result['ranges']} listed ranges -> {result['networks']} networks, "
               f"{result['records']} records, {result['bytes']} bytes")


# --- signals ----------------------------------------------------------------------------------

@main.group()
def signals() -> None:
    """The signal schema."""


@signals.command("doc")
@click.option("--check", is_flag=True, help="exit non-zero if docs/signals.md is not up to date")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="default: docs/signals.md")
def signals_doc(check: bool, out: str | None) -> None:
    """Write docs/signals.md from the signal schema."""
    from pathlib import Path

    from kyc.config import PROJECT_ROOT
    from kyc.signals.docs import render

    path = Path(out) if out else PROJECT_ROOT / "docs" / "signals.md"
    text = render()
    if check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            raise click.ClickException(f"{path} is out of date: run `kyc signals doc`")
        click.echo(f"{path} is up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}")


@signals.command("bigrams")
def signals_bigrams() -> None:
    """Rebuild kyc/data/letter_bigrams.json (email.local_randomness) from phonenumbers' place names."""
    import json

    from kyc.signals.email import BIGRAMS_PATH, build_bigram_model

    model = build_bigram_model()
    BIGRAMS_PATH.write_text(json.dumps(model, indent=0, sort_keys=True) + "\n")
    click.echo(f"wrote {BIGRAMS_PATH}: {model['source']}")


# --- clusters ---------------------------------------------------------------------------------

@main.group()
def clusters() -> None:
    """Linked-account clusters (the identity graph)."""


@clusters.command("list")
@click.option("--min-size", default=2, show_default=True, type=int)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--identifiers", "show_identifiers", default=3, show_default=True, type=int,
              help="linking identifiers shown per cluster")
def clusters_list(min_size: int, limit: int, show_identifiers: int) -> None:
    """Clusters largest first: size, growth, member decisions, linking identifiers (hashed)."""
    from kyc.graph import cluster_summary
    from kyc.models import Cluster

    runtime = _runtime()
    with runtime.session() as session:
        rows = session.execute(select(Cluster).where(Cluster.size >= min_size)
                               .order_by(Cluster.size.desc(), Cluster.id).limit(limit)).scalars().all()
        if not rows:
            click.echo(f"no clusters of {min_size} or more accounts")
        for cluster in rows:
            c = cluster_summary(session, cluster)
            decisions = " ".join(f"{d}={n}" for d, n in c["decisions"].items() if n)
            click.echo(f"{c['id']}  size={c['size']}  growth_24h={c['growth_24h']}  blocked={c['blocked']}  "
                       f"fraud={c['labeled_fraud']}  first={c['first_seen_at']}  {decisions}")
            for ident in c["identifiers"][:show_identifiers]:
                click.echo(f"    {ident['kind']:<16} {ident['strength']:<6} {ident['hash']}  "
                           f"accounts={ident['accounts']}")


@clusters.command("act")
@click.argument("cluster_id")
@click.option("--action", required=True, type=click.Choice(["block", "review", "release"]),
              help="block every member, hold every member for review, or release (allow) every member")
@click.option("--note", default=None, help="why (kept in the audit trail and on each member)")
def clusters_act(cluster_id: str, action: str, note: str | None) -> None:
    """One decision for every current member of a cluster, in one transaction (one audit event)."""
    import time

    from kyc.ops.actions import act_on_cluster
    from kyc.ops.audit import cli_actor
    from kyc.errors import NotFound

    runtime = _runtime()
    started = time.perf_counter()
    try:
        done = act_on_cluster(runtime, cluster_id, action, note, cli_actor())
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{cluster_id}: {action} on {done.members} member(s), {done.changed} changed, "
               f"{done.kept} kept (blocked by a person on their own) in {time.perf_counter() - started:.2f}s "
               f"(audit event {done.event_id})")
    _deliver_before_exit(runtime)


def _deliver_before_exit(runtime) -> None:
    """A command that changed decisions: without Redis, its process delivers the webhooks it
    wrote before it exits (what it cannot deliver stays in the outbox for `kyc serve`)."""
    from kyc.rescore.queue import redis_connection
    from kyc.ops import webhooks

    if webhooks.enabled(runtime.config) and redis_connection(runtime.config) is None:
        sent = webhooks.deliver_due(runtime)
        if sent:
            click.echo(f"decision webhooks: {sent} delivered", err=True)


@clusters.command("rebuild")
def clusters_rebuild() -> None:
    """Recompute the identity graph and clusters from the recorded sightings (one transaction)."""
    import time

    from kyc.graph import Policy, rebuild

    runtime = _runtime()
    started = time.perf_counter()
    with runtime.session() as session, session.begin():
        stats = rebuild(session, Policy.from_config(runtime.config))
    click.echo(f"rebuilt in {time.perf_counter() - started:.1f}s: " + ", ".join(f"{k}={v}" for k, v in stats.items()))


# --- simulate ---------------------------------------------------------------------------------

def _usage_sizes(_ctx, _param, value: str) -> tuple[int, ...]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (5, 6, 7) or not all(p.isdigit() for p in parts):
        raise click.BadParameter("five whole numbers separated by commas: light,heavy,companies,tool users,farm "
                                 "(or six: then agent-tool users; seven: then workshop participants)")
    return tuple(int(p) for p in parts)


@main.command()
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--legit", default=3000, show_default=True, type=click.IntRange(min=1),
              help="ordinary users in the measured period")
@click.option("--farms", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--farm-size", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--days", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="measured period")
@click.option("--warmup-days", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="ordinary traffic at the same rate before the measured period (not measured)")
@click.option("--database-url", default="", help="default: a fresh SQLite file in a temporary directory")
@click.option("--redis-url", default="", help="velocity in this Redis (use a db of its own: it is flushed)")
@click.option("--usage", "usage_phase", is_flag=True,
              help="then a week of API usage (kyc/usage/simulate.py): light, heavy, company, popular-tool, agent-tool "
                   "users, a workshop's participants and a distillation farm, reported in bulk; prints farm requests "
                   "served and legitimate requests denied")
@click.option("--usage-sizes", default="300,30,8,2000,400,600,40", show_default=True, callback=_usage_sizes,
              help="usage phase: light users, heavy users, companies, popular-tool users, farm accounts, and "
                   "(optional, 0 without) users of a mid-size agent tool who adopted it over the weeks before, "
                   "and (optional, 0 without) participants of a workshop who begin together in one lab session")
@click.option("--usage-without-interval-cv", "usage_without_cv", is_flag=True,
              help="usage phase: the simulated gateway does not time requests (sends no interval_cv)")
@click.option("--usage-farm-wake-days", default=1, show_default=True, type=click.IntRange(1, 3),
              help="usage phase: the farm wakes over this many days, an equal share each day (1: within hours)")
@click.option("--usage-farm-human-pace", "usage_farm_human_pace", is_flag=True,
              help="usage phase: the farm jitters its requests' timing as people's is (interval_cv 0.6-2.0)")
@click.option("--usage-farm-sticky-exits", "usage_farm_sticky_exits", is_flag=True,
              help="usage phase: each farm account keeps one proxy exit a day (a sticky session), not one an hour")
def simulate(seed: int, legit: int, farms: int, farm_size: int, days: float, warmup_days: float, database_url: str,
             redis_url: str, usage_phase: bool, usage_sizes: tuple[int, ...], usage_without_cv: bool,
             usage_farm_wake_days: int, usage_farm_human_pace: bool, usage_farm_sticky_exits: bool) -> None:
    """Post a labeled history (ordinary users as realism.md describes them, and farms) of signups
    and cards through the API; print how it scored and how well the scores rank. `--usage` then
    adds a week of API usage."""
    import secrets
    import tempfile
    from datetime import timedelta
    from pathlib import Path

    from sqlalchemy import update

    from kyc import create_app
    from kyc import simulate as sim
    from kyc.backtest import backtest, rule_column
    from kyc.db import pause_checkpoints
    from kyc.models import Account

    tmp = tempfile.TemporaryDirectory(prefix="kyc-simulate-")
    url = database_url or f"sqlite:///{Path(tmp.name) / 'simulate.db'}"
    key = secrets.token_urlsafe(24)
    config = _config(database_url=url, redis_url=redis_url, dev_key=key, data_dir=Path(tmp.name),
                     secret_key=b"simulation", log_level="WARNING")
    from kyc.runtime import Runtime, upgrade_database

    upgrade_database(config.database_url)
    runtime = Runtime.start(config, migrate=False)
    if runtime.redis is not None:
        runtime.redis.flushdb()
    app = create_app(runtime=runtime)
    netintel = runtime.geoip.netintel
    world = sim.history(seed, legit, farms, farm_size, days, runtime.geoip,
                        netintel.datacenter_asns if netintel else frozenset(), warmup_days=warmup_days)
    measured = sum(1 for a in world.accounts.values() if a.measured)
    # Which rules: KYC_RULES_DIR's default, `rules`, is read from the working directory when it has
    # one, so a copy of the code run from another checkout scores with that checkout's rules.
    click.echo(f"rules: {runtime.rules.root} ({runtime.rules.version})")
    click.echo(f"posting {len(world.events)} events for {len(world.accounts)} accounts, {measured} measured (seed {seed}, "
               f"{legit} legit over {days:g} days after {warmup_days:g} days of warm-up, {farms} farm(s) of {farm_size})")
    composition = world.composition()
    legit_measured = sum(1 for a in world.accounts.values() if a.population == "legit" and a.measured)
    click.echo("realism items among measured legit accounts: " + ", ".join(
        f"{item} {composition[item]} ({composition[item] / max(legit_measured, 1):.1%})" for item in sim.REALISM))
    result = sim.run(app.test_client(), {"Authorization": f"Bearer {key}"}, world, echo=click.echo)
    decisions = ("allow", "verify", "review", "block")
    for stage in ("at_signup", "final"):
        click.echo(f"\n{stage.replace('_', ' ')}:  {'population':<10}" + "".join(f"{d:>8}" for d in decisions))
        for population in sorted(result[stage]):
            counts = result[stage][population]
            click.echo(f"{'':>13}{population:<10}" + "".join(f"{counts[d]:>8}" for d in decisions))
    click.echo("")
    for name, value in sim.summary(result).items():
        click.echo(f"{name:<26} {value:7.2%}")
    click.echo(f"latency (test client; cluster rescoring runs on a background thread): median {result['median_ms']:.1f} ms, "
               f"p99 {result['p99_ms']:.1f} ms")
    # Label the measured accounts as ops would, and replay them: how well the live scores rank.
    with runtime.session() as session, session.begin():
        for population, label in (("legit", "legit"), (None, "fraud")):
            ids = [i for i, a in world.accounts.items() if a.measured and (a.population == "legit") == (label == "legit")]
            for chunk in range(0, len(ids), 500):
                session.execute(update(Account).where(Account.id.in_(ids[chunk:chunk + 500])).values(label=label))
    last = max(e.at for e in world.events) + timedelta(seconds=1)
    report = backtest(runtime.engine, runtime.rules, world.measured_since, last)
    click.echo(f"\nlive evaluations replayed on labeled accounts: ROC AUC {report.auc:.3f}" if report.auc is not None
               else "\nno labeled accounts to rank")
    for t in report.thresholds:
        click.echo(f"  decision >= {t.decision:<7} precision {t.precision or 0:7.2%}  recall {t.recall or 0:7.2%}  "
                   f"legit share {t.legit_share or 0:7.2%}")
    click.echo("rules hit at live time, by labeled accounts (fraud / legit):")
    hit = [stats for stats in sorted(report.rules.values(), key=lambda r: (-len(r.legit), -len(r.fraud)))
           if stats.fraud or stats.legit]
    width = rule_column(hit, 36)
    for stats in hit:
        click.echo(f"  {stats.subject:<15}{stats.rule:<{width}}{len(stats.fraud):>6} /{len(stats.legit):>5}")
    if usage_phase:
        from kyc.usage import simulate as usage_sim

        accounts, signups = usage_sim.populations(seed, *usage_sizes, farm_wake_days=usage_farm_wake_days,
                                                  farm_human_pace=usage_farm_human_pace,
                                                  farm_sticky_exits=usage_farm_sticky_exits, mailboxes=world.mailboxes)
        click.echo(f"\nusage phase: {len(accounts)} accounts sign up, then a week of usage")
        usage_sim.report(usage_sim.run(app.test_client(), {"Authorization": f"Bearer {key}"}, accounts, signups,
                                       echo=click.echo, interval_cv=not usage_without_cv), echo=click.echo)
    pause_checkpoints(runtime.engine)      # its thread opens the file by path: stopped before the file goes
    runtime.engine.dispose()
    tmp.cleanup()


if __name__ == "__main__":  # pragma: no cover
    main()
