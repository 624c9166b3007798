"""The ops console as a person uses it: headless Chromium (Debian's `chromium`, driven by
Playwright) against a real `kyc serve` (gunicorn, two workers) on a test database, with a local
receiver standing in for the API gateway's decision webhook.

Flow: sign in, open the queue, open an account, allow it (it leaves the queue, its entitlement
follows), block its farm's cluster from the cluster page, and see the gateway receive one
signed decision event per change.

Under CI=true these tests run (`.ci/run` installs chromium when it is missing); elsewhere they
skip with a message when chromium or Playwright is missing. Set KYC_CONSOLE_SCREENSHOTS=docs to
refresh the README's screenshots from this flow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from kyc.models import RescoreRun
from tests.conftest import free_port, CI, RULES_DIR, TEST_SECRET, wait_until
from tests.ops.console_data import seed

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEBHOOK_SECRET = "gateway-webhook-secret"


def _missing(what: str) -> None:
    message = f"{what}; install it with: apt-get install -y chromium chromium-driver (.ci/run does)"
    if CI:
        pytest.fail(message + " -- required under CI=true", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Gateway:
    """A local stand-in for the API gateway's webhook endpoint: keeps each signed event."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.bad_signatures = 0
        self.changed = threading.Condition()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
                with gateway.changed:
                    if hmac.compare_digest(self.headers.get("X-Signature", ""), expected):
                        gateway.events.append(json.loads(raw))
                    else:
                        gateway.bad_signatures += 1
                    gateway.changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/kyc-decisions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 30.0) -> list[dict]:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.events), timeout=timeout):
                raise AssertionError(f"the gateway received only {self.events}")
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Server:
    """`kyc serve` on a free port, and plain HTTP calls to its API."""

    def __init__(self, database_url: str, data_dir: Path, webhook_url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, KYC_DATABASE_URL=database_url, KYC_RULES_DIR=str(RULES_DIR),
                   KYC_DATA_DIR=str(data_dir), KYC_SECRET_KEY=TEST_SECRET.decode(), KYC_DEV_KEY="",
                   KYC_REDIS_URL="", KYC_LOG_LEVEL="WARNING", KYC_DECISION_WEBHOOK_URL=webhook_url,
                   KYC_DECISION_WEBHOOK_SECRET=WEBHOOK_SECRET)
        self.log = open(data_dir / "server.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "kyc.cli", "serve", "--port", str(self.port),
                                         "--workers", "2"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until(self._up, what="kyc serve to answer")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"kyc serve exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=2):
                return True
        except OSError:
            return False

    def call(self, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "close"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def gateway():
    receiver = Gateway()
    yield receiver
    receiver.close()


@pytest.fixture
def served(database_url, make_config, tmp_path, gateway):
    """A real server on the test database, with a history posted through its API."""
    from kyc.ops.keys import create_key
    from kyc.runtime import Runtime

    rt = Runtime.start(make_config(database_url), migrate=False)
    with rt.session() as s, s.begin():
        _, admin = create_key(s, "seeder", "admin", "tests")
        _, ops = create_key(s, "alice", "ops", "tests")
    rt.engine.dispose()
    server = Server(database_url, tmp_path, gateway.url)
    try:
        data = seed(lambda path, body: server.call("POST", path, admin, body))
        # The farm's growth queued its members for rescoring on the server's threads: wait until
        # they are settled (every member held, no run left), so the pages hold still.
        engine = create_engine(database_url)

        def settled() -> bool:
            decisions = {a: server.call("GET", f"/v1/accounts/{a}", admin)[1]["decision"] for a in data["farm"]}
            with engine.connect() as conn:
                running = conn.scalar(select(func.count()).select_from(RescoreRun)
                                      .where(RescoreRun.finished_at.is_(None)))
            return running == 0 and set(decisions.values()) == {"review"}

        wait_until(settled, what="the farm's rescoring")
        engine.dispose()
        yield server, data, {"admin": admin, "ops": ops}
    finally:
        server.stop()


def open_queue(page, server: Server) -> None:
    """Click the queue in the navigation and wait for it to load (reading the page before the
    navigation lands would read the previous one)."""
    with page.expect_navigation(url=server.base + "/console/queue"):
        page.click("nav a:text-is('Review queue')")
    page.wait_for_load_state("load")


def shots_dir(tmp_path: Path) -> Path:
    wanted = os.environ.get("KYC_CONSOLE_SCREENSHOTS")
    return Path(wanted) if wanted else tmp_path


def test_a_person_reviews_an_account_and_blocks_a_farm(browser, served, gateway, tmp_path, database_url):
    server, data, keys = served
    admin = keys["admin"]
    shots = shots_dir(tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("request", lambda req: None if req.url.startswith(server.base) else errors.append(f"fetched {req.url}"))

    # Sign in: the console sends a person to its sign-in page first.
    page.goto(server.base + "/console/")
    assert page.url.startswith(server.base + "/console/login")
    page.fill("#api_key", keys["ops"])
    page.click("button[type=submit]")
    page.wait_for_url(server.base + "/console/queue")
    held = sorted(data["held"] + data["farm"])
    queued = page.locator("article.entry").evaluate_all("nodes => nodes.map(n => n.dataset.account)")
    assert sorted(queued) == held
    assert page.locator("[data-testid=queue-count]").inner_text() == str(len(held))
    page.screenshot(path=str(shots / "console-queue.png"))

    # Open an account from the queue and allow it: two clicks.
    status, before = server.call("GET", "/v1/accounts/acct_office/entitlement?tier=free", admin)
    assert status == 200 and before["allowed"] is False
    page.click("a.acct:text-is('acct_office')")
    page.wait_for_url(server.base + "/console/accounts/acct_office")
    assert page.locator("h1 .badge").inner_text() == "review"
    page.click("details.confirm summary[data-action=allow]")
    page.fill("details.confirm[open] input[name=note]", "office network, known customer")
    page.click("details.confirm[open] button[type=submit]")
    page.wait_for_selector(".flash.ok")
    assert page.locator("h1 .badge").inner_text() == "allow"
    status, after = server.call("GET", "/v1/accounts/acct_office/entitlement?tier=free", admin)
    assert after["allowed"] is True and after["decision"] == "allow"
    open_queue(page, server)
    queued = page.locator("article.entry").evaluate_all("nodes => nodes.map(n => n.dataset.account)")
    assert "acct_office" not in queued and len(queued) == len(held) - 1

    # A farm member's page: its history, usage and cluster; then the cluster, blocked in two clicks.
    page.goto(server.base + "/console/accounts/farm_03")
    assert page.locator("svg.chart circle.pt").count() >= 1 and page.locator("svg.chart rect.bar").count() == 30
    page.screenshot(path=str(shots / "console-account.png"), full_page=True)
    page.click(f"a[href='/console/clusters/{data['farm_cluster']}']")
    page.wait_for_url(server.base + f"/console/clusters/{data['farm_cluster']}")
    assert page.locator("svg.graph circle.member").count() == len(data["farm"])
    page.screenshot(path=str(shots / "console-cluster.png"), full_page=True)
    page.click("details.confirm summary[data-action=block]")
    page.click("details.confirm[open] button[type=submit]")
    flash = page.wait_for_selector(".flash.ok").inner_text()
    assert f"{len(data['farm'])} of {len(data['farm'])} members changed" in flash
    for account_id in data["farm"]:
        assert server.call("GET", f"/v1/accounts/{account_id}", admin)[1]["decision"] == "block"
    open_queue(page, server)
    queued = page.locator("article.entry").evaluate_all("nodes => nodes.map(n => n.dataset.account)")
    assert queued == ["acct_crawler"]

    # The gateway heard of every change, signed: the allowed account and each farm member.
    def heard(events: list[dict]) -> bool:
        changes = {(e["account_id"], e["new"]) for e in events}
        return ("acct_office", "allow") in changes and all((a, "block") in changes for a in data["farm"])

    events = gateway.wait_for(heard, timeout=60)
    office = [e for e in events if e["account_id"] == "acct_office" and e["new"] == "allow"]
    assert office[0]["event"] == "account.decision_changed" and office[0]["old"] == "review"
    assert gateway.bad_signatures == 0
    assert errors == []
    page.close()
