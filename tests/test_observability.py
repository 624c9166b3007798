"""What an operator sees of a real deployment: `kyc serve` (gunicorn, 2 workers) and `kyc
worker` on PostgreSQL and Redis, after real traffic.

- /metrics adds up both workers (prometheus_client's multiprocess mode) and shows every family
  with values that match the traffic sent; the worker serves its own metrics.
- Every log line is one JSON object; every line logged during a request carries its request id
  (the caller's X-Request-Id when sane), and no line holds an email, phone, IP or card number
  that the requests carried.
- /readyz says what is wrong, and `kyc serve` refuses an unmigrated database.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from kyc import create_app
from kyc.logs import request_id, scrub
from kyc.models import ApiKey
from kyc.runtime import upgrade_database
from kyc.security import hash_api_key, new_api_key
from tests.conftest import free_port, REDIS_URL, RULES_DIR, TEST_SECRET, pg_schema_url, redis_connection

KYC = str(Path(sys.executable).with_name("kyc"))
CARD = "4111 1111 1111 1111"


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"process did not start listening on {port}:\n{log.read_text()}")
            time.sleep(0.2)


def _call(port: int, method: str, path: str, body=None, key: str | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = dict(headers or {})
    if key:
        sent["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body)
        sent["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    ctype = response.getheader("Content-Type", "")
    return response.status, (json.loads(raw) if ctype.startswith("application/json") else raw.decode()), response


def _families(text: str) -> dict[str, list]:
    """metric family name -> its samples."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


# Raw values the traffic carries, none of which may appear in a log line.
PEOPLE = [
    {"email": f"jane.doe{i}@example-mail.com", "phone": f"+1415555{i:04d}", "ip": f"203.0.113.{10 + i}"}
    for i in range(8)
]
FARM_DEVICE = "dv_farm_shared"


def _signup(i: int) -> dict:
    p = PEOPLE[i]
    body = {"account_id": f"acct_obs_{i}", "email": p["email"], "ip": p["ip"], "phone": p["phone"],
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                          "Chrome/131.0.0.0 Safari/537.36",
            "timezone": "America/New_York", "locale": "en-US", "form_fill_ms": 5400,
            "device_id": FARM_DEVICE if i < 4 else f"dv_obs_{i}"}
    if i == 5:
        body["email"] = "jsmith1234567@example-mail.com"     # the shadow rule random_local_part
        PEOPLE[5]["email"] = body["email"]
    return body


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Run kyc serve (2 workers) and kyc worker on PostgreSQL + Redis, send traffic, scrape."""
    tmp = tmp_path_factory.mktemp("deployment")
    database_url = pg_schema_url("kyc_observability")
    upgrade_database(database_url)
    redis = redis_connection()
    redis.flushdb()                       # only the db number of KYC_TEST_REDIS_URL
    key = new_api_key()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(ApiKey.__table__.insert().values(name="ops", prefix=key[:10], key_hash=hash_api_key(key)))
    engine.dispose()
    metrics_dir = tmp / "metrics"
    env = {**os.environ, "KYC_DATABASE_URL": database_url, "KYC_REDIS_URL": REDIS_URL,
           "KYC_SECRET_KEY": TEST_SECRET.decode(), "KYC_DATA_DIR": str(tmp), "KYC_RULES_POLL_SECONDS": "0",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "KYC_LOG_LEVEL": "INFO"}
    env.pop("KYC_DEV_KEY", None)
    port, worker_port = free_port(), free_port()
    serve_log, worker_log = tmp / "serve.log", tmp / "worker.log"
    serve = subprocess.Popen([KYC, "serve", "--port", str(port), "--workers", "2"], env=env, cwd=tmp,
                             stdout=(tmp / "serve.out").open("w"), stderr=serve_log.open("w"), start_new_session=True)
    worker = None
    run: dict = {"port": port, "key": key, "metrics_dir": metrics_dir}
    try:
        _wait_for_port(port, serve, serve_log)
        # Signups on concurrent connections, so both workers serve some (each records its own).
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: _call(port, "POST", "/v1/signups", _signup(i), key), range(8)))
        assert [a[0] for a in answers] == [200] * 8, answers
        run["signups"] = 8
        status, body, _ = _call(port, "POST", "/v1/payment-methods",
                                {"account_id": "acct_obs_0", "fingerprint": "pm_fp_obs", "bin": "424242",
                                 "last4": "4242", "funding": "prepaid", "issuer_country": "US",
                                 "billing_country": "GB", "ip": PEOPLE[0]["ip"]}, key)
        assert status == 200, body
        status, body, response = _call(port, "POST", "/v1/signups",
                                       {**_signup(6), "metadata": {"note": f"card {CARD}"}}, key,
                                       headers={"X-Request-Id": "req-card-1"})
        assert status == 400 and body["error"]["code"] == "card_number_refused"
        assert response.getheader("X-Request-Id") == "req-card-1"
        status, body, response = _call(port, "POST", "/v1/signups", {**_signup(7), "email": "not an email"}, key,
                                       headers={"X-Request-Id": "bad id with spaces"})
        assert status == 400
        run["generated_id"] = response.getheader("X-Request-Id")
        assert _call(port, "POST", "/v1/accounts/acct_obs_4/activity",
                     {"requests": 30, "ip": PEOPLE[4]["ip"]}, key)[0] == 200
        assert _call(port, "GET", "/v1/accounts/acct_obs_4/entitlement?tier=standard", key=key)[0] == 200
        assert _call(port, "GET", "/v1/accounts/nobody/entitlement?tier=standard", key=key)[0] == 404
        for kind in ("email", "phone"):
            status, body, _ = _call(port, "POST", "/v1/accounts/acct_obs_4/verifications", {"kind": kind}, key,
                                    headers={"X-Request-Id": f"req-verify-{kind}"})
            assert status == 201, body
        # A fraud label on a member of the farm's cluster: its members are queued for rescoring.
        status, body, _ = _call(port, "POST", "/v1/accounts/acct_obs_0/labels", {"label": "fraud"}, key,
                                headers={"X-Request-Id": "req-label-1"})
        assert status == 200, body
        run["rules_version"] = _call(port, "GET", "/v1/ops/rules", key=key)[1]["version"]
        # The label's commit hands its rescoring to the serving process's background thread,
        # which records and enqueues it a moment later: wait (bounded) until it has.
        deadline = time.monotonic() + 30
        while True:
            run["before_worker"] = _call(port, "GET", "/metrics")[1]
            samples = _families(run["before_worker"])
            if (_total(samples.get("kyc_rescore_batches_pending", []), "kyc_rescore_batches_pending") >= 1
                    and _total(samples.get("kyc_queue_depth", []), "kyc_queue_depth", queue="rescore") >= 1):
                break
            assert time.monotonic() < deadline, "the label's rescoring was never recorded"
            time.sleep(0.2)
        # Until both workers have answered (they share the traffic; wait, bounded, for the second).
        pids = set()
        for _ in range(100):
            pids = {name.rsplit("_", 1)[-1] for name in os.listdir(metrics_dir) if name.startswith("counter_")}
            if len(pids) >= 2:
                break
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: _call(port, "GET", "/readyz"), range(8)))
        run["pids"] = pids
        assert _call(port, "GET", "/readyz")[0] == 200

        worker = subprocess.Popen([KYC, "worker", "--metrics-port", str(worker_port), "--without-scheduler"],
                                  env=env, cwd=tmp, stdout=worker_log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        _wait_for_port(worker_port, worker, worker_log)
        deadline = time.monotonic() + 120
        while True:                      # the rescoring the label asked for, worked by the worker
            samples = _families(_call(port, "GET", "/metrics")[1])
            if (_total(samples.get("kyc_rescore_batches_pending", []), "kyc_rescore_batches_pending") == 0
                    and _total(samples.get("kyc_queue_depth", []), "kyc_queue_depth", queue="rescore") == 0):
                break
            assert time.monotonic() < deadline, worker_log.read_text()
            time.sleep(0.5)
        run["after_worker"] = _call(port, "GET", "/metrics")[1]
        conn = http.client.HTTPConnection("127.0.0.1", worker_port, timeout=10)
        conn.request("GET", "/metrics")
        run["worker_metrics"] = conn.getresponse().read().decode()
        conn.close()
    finally:
        # Each in a session of its own, stopped with what it started: nothing it does to its
        # process group reaches the test run, and nothing outlives the test.
        for proc in (worker, serve):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                finally:
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=10)
    run["logs"] = serve_log.read_text() + worker_log.read_text()
    run["serve_stdout"] = (tmp / "serve.out").read_text()
    return run


def test_metrics_under_gunicorn_add_up_both_workers(deployment):
    assert len(deployment["pids"]) >= 2, "both gunicorn workers served and wrote their samples"
    before = _families(deployment["before_worker"])
    after = _families(deployment["after_worker"])
    signups = deployment["signups"]

    latency = after["kyc_http_request_duration_seconds"]
    assert _total(latency, "kyc_http_request_duration_seconds_count", method="POST", route="/v1/signups",
                  status="200") == signups
    assert _total(latency, "kyc_http_request_duration_seconds_count", route="/v1/signups", status="400") == 2
    assert _total(latency, "kyc_http_request_duration_seconds_count",
                  route="/v1/accounts/<account_id>/entitlement", status="404") == 1
    mean = (_total(latency, "kyc_http_request_duration_seconds_sum", route="/v1/signups", status="200")
            / signups)
    assert 0 < mean < 5
    assert _total(latency, "kyc_http_request_duration_seconds_bucket", route="/v1/signups", status="200",
                  le="+Inf") == signups

    decisions = after["kyc_decisions"]
    assert _total(decisions, "kyc_decisions_total", subject="signup", trigger="live") == signups
    assert _total(decisions, "kyc_decisions_total", subject="payment_method", trigger="live") == 1
    hits = after["kyc_rule_hits"]
    # Every evaluation of the prepaid card (live, and rescored in this process) hits prepaid_card.
    assert _total(hits, "kyc_rule_hits_total", subject="payment_method", rule="prepaid_card", mode="active") == \
        _total(decisions, "kyc_decisions_total", subject="payment_method") >= 1
    assert _total(hits, "kyc_rule_hits_total", subject="signup", rule="random_local_part", mode="shadow") >= 1
    assert _total(hits, "kyc_rule_hits_total", rule="random_local_part", mode="active") == 0

    signal_time = after["kyc_signals_duration_seconds"]
    assert _total(signal_time, "kyc_signals_duration_seconds_count", subject="signup") >= signups
    assert 0 < _total(signal_time, "kyc_signals_duration_seconds_sum", subject="signup") < signups * 5
    degraded = after["kyc_signals_degraded"]
    assert {s.labels["family"] for s in degraded if s.name == "kyc_signals_degraded_total"} >= {
        "email", "phone", "ip", "device", "velocity", "card"}
    assert _total(degraded, "kyc_signals_degraded_total") == 0
    errors = after["kyc_velocity_backend_errors"]
    assert [s.value for s in errors if s.name == "kyc_velocity_backend_errors_total"] == [0, 0]

    assert _total(after["kyc_rescore_runs"], "kyc_rescore_runs_total") >= 1
    assert _total(before["kyc_rescore_batches_pending"], "kyc_rescore_batches_pending") >= 1
    assert _total(before["kyc_queue_depth"], "kyc_queue_depth", queue="rescore") >= 1
    assert _total(after["kyc_rescore_batches_pending"], "kyc_rescore_batches_pending") == 0
    assert {s.labels["queue"] for s in after["kyc_queue_depth"]} == set(__import__("kyc.rescore.queue").rescore.queue.QUEUES)
    info = after["kyc_rules_info"]
    assert [(s.name, s.labels, s.value) for s in info] == [
        ("kyc_rules_info", {"version": deployment["rules_version"]}, 1.0)]
    # No KYC_DECISION_WEBHOOK_URL here: nothing waits in the decision webhook outbox.
    assert _total(after["kyc_webhook_outbox_backlog"], "kyc_webhook_outbox_backlog") == 0
    assert _total(after["kyc_webhook_outbox_oldest_seconds"], "kyc_webhook_outbox_oldest_seconds") == 0


def test_the_worker_serves_its_own_metrics(deployment):
    worker = _families(deployment["worker_metrics"])
    assert _total(worker["kyc_rescore_batches"], "kyc_rescore_batches_total") >= 1
    rescored = _total(worker["kyc_rescore_accounts"], "kyc_rescore_accounts_total")
    assert rescored >= 3                       # the farm's other members (the labelled one included)
    # One evaluation per subject of each account (its signup, and its card for one of them).
    assert rescored <= _total(worker["kyc_decisions"], "kyc_decisions_total", trigger="rescore") <= 2 * rescored
    assert _total(worker["kyc_rescore_accounts"], "kyc_rescore_accounts_total", new="block") >= 1
    assert worker["kyc_rules_info"][0].labels == {"version": deployment["rules_version"]}


def test_logs_are_json_lines_with_request_ids_and_no_personal_data(deployment):
    text = deployment["logs"]
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        if line.startswith("development API key") or line.startswith("kyc on ") or line.startswith("worker metrics"):
            continue                          # kyc serve's and kyc worker's own start-up banner
        records.append(json.loads(line))      # every other line is one JSON object
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert len(access) >= 20 and all(r.get("request_id") for r in access)
    # Log lines go to stderr, access lines included; stdout holds only kyc serve's banner.
    assert all(line.startswith(("development API key", "kyc on ", "jobs: ")) for line in
               deployment["serve_stdout"].splitlines() if line.strip()), deployment["serve_stdout"][:2000]
    by_id = {r["request_id"]: r for r in access}
    assert by_id["req-card-1"]["status"] == 400 and by_id["req-label-1"]["status"] == 200
    generated = deployment["generated_id"]
    assert generated in by_id and len(generated) == 32 and generated != "bad id with spaces"
    # App lines logged during a request carry its id: the codes sent, the scorings.
    sent = [r for r in records if r["message"].startswith("code for ")]
    assert {r.get("request_id") for r in sent} == {"req-verify-email", "req-verify-phone"}
    scored = [r for r in records if r["message"].startswith("scored signup") and "trigger=live" in r["message"]]
    assert len(scored) == 8 and all(r.get("request_id") in by_id for r in scored)
    # No raw personal value the requests carried appears anywhere.
    raw = [CARD, CARD.replace(" ", "")]
    for person in PEOPLE:
        raw += [person["email"], person["phone"], person["ip"], person["phone"][1:]]
    found = [value for value in raw if value in text]
    assert found == [], found
    assert "127.0.0.1" not in json.dumps(access)


def test_a_sane_request_id_is_kept_and_anything_else_replaced():
    assert request_id("7f3c2a9e-1b4d-4c1e-9a7b-2f6d8e0c5a11") == "7f3c2a9e-1b4d-4c1e-9a7b-2f6d8e0c5a11"
    assert request_id("req_42.a:b") == "req_42.a:b"
    for bad in (None, "", "x" * 129, "has space", "jane@example.com", "<script>", "a\nb", "+14155550123"):
        replaced = request_id(bad)
        assert replaced != bad and len(replaced) == 32 and int(replaced, 16) >= 0


@settings(max_examples=200, deadline=None)
@given(st.emails(), st.ip_addresses().filter(lambda ip: not str(ip).endswith(".0.0.0")),   # a /8: nobody's
       st.from_regex(r"\+[1-9][0-9]{9,13}", fullmatch=True), st.text(alphabet="abc =:-_", max_size=20))
def test_scrub_removes_any_email_ip_and_phone(email, ip, phone, noise):
    line = f"{noise} email={email} ip={ip} phone={phone} {noise} ip6={ipaddress.ip_address(ip)}"
    cleaned = scrub(line)
    assert email not in cleaned and phone not in cleaned
    assert f"ip={ip} " not in cleaned


@settings(max_examples=200, deadline=None)
@given(st.emails().filter(lambda e: "/" not in e))
def test_scrub_keeps_the_path_around_an_email_in_a_url(email):
    # An account id that is an address, in an access line's path: only the address goes.
    assert scrub(f"GET /v1/accounts/{email}/entitlement 200") == "GET /v1/accounts/[email]/entitlement 200"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 255), st.sampled_from(["Chrome", "Edg", "OPR", "YaBrowser"]), st.ip_addresses(v=4))
def test_scrub_keeps_a_chromium_version_and_still_takes_the_address_beside_it(major, product, address):
    # Since the reduced user agent every Chromium browser writes its version as N.0.0.0.
    agent = f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) {product}/{major}.0.0.0"
    assert scrub(agent) == agent
    if not str(address).endswith(".0.0.0"):
        assert scrub(f"{agent} from {address} ok") == f"{agent} from [ip] ok"


def test_readyz_names_what_is_wrong(make_config, tmp_path):
    url = f"sqlite:///{tmp_path / 'never_migrated.db'}"
    app = create_app(make_config(url, redis_url="redis://127.0.0.1:1/0"), )
    # The embedded SQLite default migrates itself at start; undo that to see the check.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM alembic_version")
    engine.dispose()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert response.json["status"] == "unavailable"
    assert checks["database"]["ok"] and not checks["migrations"]["ok"]
    assert "kyc db upgrade" in checks["migrations"]["error"]
    assert checks["rules"]["ok"] and checks["rules"]["version"].startswith("sha256:")
    assert not checks["redis"]["ok"] and "unreachable" in checks["redis"]["error"]
    assert app.test_client().get("/healthz").status_code == 200        # alive, not ready


def test_kyc_serve_refuses_an_unmigrated_database(tmp_path):
    url = pg_schema_url("kyc_unmigrated")
    env = {**os.environ, "KYC_DATABASE_URL": url, "KYC_SECRET_KEY": "x", "KYC_DATA_DIR": str(tmp_path)}
    done = subprocess.run([KYC, "serve", "--port", str(free_port())], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "not migrated" in done.stderr and "kyc db upgrade" in done.stderr, done.stderr
    upgrade_database(url, "0005")
    done = subprocess.run([KYC, "serve", "--port", str(free_port())], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "at revision 0005" in done.stderr and "kyc db upgrade" in done.stderr


def test_the_webhook_outbox_backlog_is_read_at_scrape_time(runtime, client):
    from datetime import timedelta

    from kyc.models import DecisionWebhook, utcnow

    with runtime.session() as session, session.begin():
        session.add(DecisionWebhook(event_id="evt_1", account_id="acct_1", body="{}",
                                    created_at=utcnow() - timedelta(minutes=5)))
        session.add(DecisionWebhook(event_id="evt_2", account_id="acct_1", body="{}", delivered_at=utcnow()))
    samples = _families(client.get("/metrics").get_data(as_text=True))
    assert _total(samples["kyc_webhook_outbox_backlog"], "kyc_webhook_outbox_backlog") == 1
    assert 300 <= _total(samples["kyc_webhook_outbox_oldest_seconds"], "kyc_webhook_outbox_oldest_seconds") < 400


def test_a_scrape_skips_a_process_file_still_being_created(runtime, tmp_path, monkeypatch):
    """prometheus_client creates a process's file empty, then sizes it: a scrape in between read
    an empty file and /metrics answered 500 (a `kyc worker` starting during a scrape, seen once
    in the deployment test above). The scrape leaves that file out until it is ready."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from kyc import metrics

    directory = tmp_path / "metrics"                        # (tmp_path holds the SQLite database)
    directory.mkdir()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    ready = MmapedDict(str(directory / "counter_101.db"))
    ready.write_value(mmap_key("kyc_probe", "kyc_probe_total", [], [], "a probe"), 3.0, 0)
    ready.close()
    (directory / "counter_102.db").touch()                   # another process's, being created
    text = metrics.exposition(runtime).decode()
    assert "kyc_probe_total 3.0" in text


def test_each_network_data_source_dates_itself_on_metrics(client):
    """kyc_data_source_timestamp_seconds: the bundled GeoIP files by their build date, each
    network list by its upstream commit's date (the Tor list's offset honoured)."""
    from datetime import datetime, timedelta, timezone

    import maxminddb

    from kyc.signals.geoip import BUNDLED_ASN

    samples = _families(client.get("/metrics").get_data(as_text=True))["kyc_data_source_timestamp_seconds"]
    dated = {s.labels["source"]: s.value for s in samples}
    assert set(dated) == {"geoip_asn", "geoip_city", "netintel_ipranges", "netintel_tor", "netintel_x4bnet-lists_vpn"}
    assert dated["netintel_tor"] == datetime(2024, 2, 27, 9, 27, 52, tzinfo=timezone(timedelta(hours=5, minutes=30))).timestamp()
    assert dated["geoip_asn"] == maxminddb.open_database(str(BUNDLED_ASN)).metadata().build_epoch


def test_network_data_older_than_a_month_is_named_at_start_up(caplog):
    from datetime import datetime, timezone

    from kyc.runtime import warn_if_stale
    from kyc.signals.geoip import open_geoip

    bundled = open_geoip(None, None, None)
    # Three weeks after the bundled country file (June 1, 2026), before the lists (August 22):
    # only the Tor list (February 2024) is stale.
    with caplog.at_level("WARNING", logger="kyc"):
        assert warn_if_stale(bundled, now=datetime(2026, 6, 22, tzinfo=timezone.utc)) == ["netintel_tor"]
    assert "netintel_tor 845 days" in caplog.text and "geoip" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kyc"):
        assert warn_if_stale(bundled, now=datetime(2024, 3, 1, tzinfo=timezone.utc)) == []
    assert caplog.text == ""


def test_the_serving_app_names_stale_data_and_a_cli_command_does_not(runtime, tmp_path, caplog):
    """The bundled Tor list dates from February 2024: stale whenever this runs. A serving
    process (create_app(watch_rules=True): `kyc serve`, wsgi.py) names it as it starts; a CLI
    command that opens the same runtime, such as `kyc keys list`, says nothing of it."""
    from click.testing import CliRunner

    from kyc.cli import main

    with caplog.at_level("WARNING", logger="kyc"):
        create_app(runtime=runtime)
    assert "network data older than" not in caplog.text
    with caplog.at_level("WARNING", logger="kyc"):
        create_app(runtime=runtime, watch_rules=True)
    assert "network data older than" in caplog.text and "netintel_tor" in caplog.text
    caplog.clear()
    env = {"KYC_DATABASE_URL": runtime.config.database_url, "KYC_DATA_DIR": str(tmp_path),
           "KYC_RULES_DIR": str(RULES_DIR), "KYC_SECRET_KEY": "test"}
    with caplog.at_level("WARNING", logger="kyc"):
        listed = CliRunner().invoke(main, ["keys", "list"], env=env, catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert "network data older than" not in caplog.text + listed.output
