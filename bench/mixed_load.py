"""Mixed traffic over HTTP, from outside: every call of the external contract at once, on a few
hundred accounts and a farm, against gunicorn, an rq worker and `kyc rescore --all`; prints what
went wrong.

    python bench/mixed_load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/mixed \\
        [--redis-url redis://127.0.0.1:6379/11] [--duration 180] [--clients 16] [--seed 1] [--recreate]

The database must be empty or missing (created then); `--recreate` drops and creates it, and
flushes the Redis db. A SQLite file (`--database-url sqlite:////tmp/mixed.db`, no `--redis-url`) runs
the embedded default `kyc serve` runs, jobs in-process. kyc runs as in production: migrated, one API key per role, gunicorn
(`wsgi:app`, -w 3 --threads 4), with `--redis-url` a `kyc worker`, and `kyc rescore --all` every
`--rescore-every` seconds while traffic runs. Codes go to an HTTP sender and decisions to a
webhook receiver, both stubs in this process (as an SMS provider and the gateway are); document
verifications are decided by signed identity-provider webhooks. `--clients` threads, each on its
own keep-alive connection and its own random stream (`--seed`: the same calls in the same
proportions), mix signups (and re-posts backfilling an earlier `occurred_at`), payment methods,
single and bulk activity reports, entitlement checks (with `at=`, revalidated by ETag), account
reads, labels, reviews, clusters and cluster actions, verifications, the audit trail and the
rules. A farm shares devices, an address range, an email domain, cards, a gateway API key and
rare prompt templates: one large cluster, which wakes up together a quarter into the run and
which many calls touch at once (where the concurrency bugs were). Answers are checked as an
outside caller would: the statuses the contract allows for that call and that account's state
(404 only for an account never posted), error bodies' codes, required keys. Deliberate bad calls
(a card number in a body, an unknown tier, an unknown account in a bulk call, a bad webhook
signature, a key of the wrong role) must be refused as the contract says.

Prints per call: count, statuses, median and p99 latency; answered requests/s; the answers that
broke the contract (with the server's error); the server's, worker's and rescore's logs
grouped (tracebacks by exception and innermost kyc frame, deadlocks, database_unavailable,
ERROR lines). Logs are kept in `--log-dir`. Exits 1 on any 5xx, transport error, unexpected
answer or traceback. Every process it starts is stopped when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from kyc.models import Account, ApiKey  # noqa: E402
from kyc.runtime import upgrade_database  # noqa: E402
from kyc.security import hash_api_key, new_api_key  # noqa: E402

from http_load import free_port, start, stop  # noqa: E402  (bench/, the script's folder)
from stats import percentile  # noqa: E402

PROVIDER, PROVIDER_SECRET, DECISION_SECRET = "idv", "mixed-idv-secret", "mixed-decision-secret"
TIERS = ("free", "standard", "high_volume")
POPULAR_TEMPLATES = [f"pf_popular_{i}" for i in range(6)]        # a popular tool's: every kind of user has them
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1"]
API_CLIENTS = ["python-httpx/0.27.0", "OpenAI/Python 1.52.0", "node-fetch/1.0", "curl/8.5.0"]
TEST_BINS = ["424242", "400005", "555555", "222300", "520082", "510510"]    # kyc/data/bins.csv: Stripe's test BINs
# What a call's 200 must carry (the contract's fields; kyc/api/responses.py has them all).
EVALUATION = {"evaluation_id", "account_id", "decision", "score", "reasons", "required_verifications", "cluster",
              "signals", "rules_version"}
ACTIVITY = {"account_id", "requests_today", "decision"}
ACCOUNT = {"account_id", "decision", "score", "reasons", "verifications", "cluster", "state_version"}
VERIFICATION = {"verification_id", "kind", "status", "expires_at"}
ENTITLEMENT = {"account_id", "tier", "allowed", "decision", "missing_verifications", "reasons", "quota"}


def rfc3339(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def luhn_card(rng: random.Random, bin_: str) -> str:
    """A 16-digit number starting with `bin_` whose check digit passes Luhn: a test card as a
    processor sees it (kyc only ever gets its BIN, last4 and fingerprint)."""
    body = bin_ + "".join(str(rng.randint(0, 9)) for _ in range(15 - len(bin_)))
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(map(int, reversed(body))))
    return body + str((10 - total % 10) % 10)


def interval_cv(rng: random.Random, regular: bool) -> float:
    """The coefficient of variation of simulated gaps, computed as a gateway computes it: a float
    with all its digits (0.8444218515250481), which a card-number check must not mistake."""
    gaps = [rng.gauss(2.0, 0.1) if regular else rng.expovariate(0.5) for _ in range(rng.randint(3, 40))]
    return statistics.pstdev(gaps) / statistics.fmean(gaps)


@dataclass
class Person:
    """One account as the driver knows it: what it signed up with, and whether kyc knows it yet
    (`new`: never posted, so 404 is right; `posting`: a first call in flight, 404 or 200;
    `known`: answered 200, so 404 is a bug)."""

    id: str
    farm: bool
    signup: dict
    signed_up_at: datetime
    phone: str
    cards: list[dict]
    state: str = "new"


def population(rng: random.Random, seed: int, accounts: int, farm: int, now: datetime) -> list[Person]:
    people = []
    farm_cards = [luhn_card(rng, rng.choice(TEST_BINS)) for _ in range(4)]
    for n in range(accounts + farm):
        is_farm = n >= accounts
        account_id = f"mx{seed}_{'farm' if is_farm else 'user'}{n:04d}"
        if is_farm:
            # Shared devices, one /22 of a hosting range, one domain, a few numbers and cards:
            # strong and weak links that merge the farm into one cluster as it signs up.
            signup = {"email": f"qz{rng.randint(1000, 99999)}x@inboxfarm.net", "ip": f"45.134.{rng.randint(8, 11)}.{rng.randint(2, 250)}",
                      "device_id": f"dv_farm_{rng.randint(0, 3)}", "user_agent": BROWSERS[0], "timezone": "Europe/Moscow",
                      "locale": "en-US", "form_fill_ms": rng.randint(700, 1500)}
            phone, cards = f"+1415200{rng.randint(0, 19):04d}", [rng.choice(farm_cards)]
            signed_up_at = now - timedelta(days=rng.uniform(9, 11))      # aged, to wake together later
        else:
            signup = {"email": f"{rng.choice(['ana', 'li', 'omar', 'jo', 'kim'])}.{rng.choice(['smith', 'ng', 'diaz'])}{n}@"
                               f"{rng.choice(['gmail.com', 'outlook.com', 'proton.me', 'example.org'])}",
                      "ip": f"{rng.choice([73, 98, 24, 71, 68])}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                      "device_id": f"dv_{hashlib.sha1(account_id.encode()).hexdigest()[:16]}", "user_agent": rng.choice(BROWSERS),
                      "timezone": rng.choice(["America/New_York", "Europe/Berlin", "Asia/Tokyo"]),
                      "locale": rng.choice(["en-US", "de-DE", "ja-JP"]), "form_fill_ms": rng.randint(3000, 40000)}
            phone = f"+1415{rng.randint(300, 999)}{rng.randint(0, 9999):04d}"
            cards = [luhn_card(rng, rng.choice(TEST_BINS)) for _ in range(rng.randint(1, 2))]
            signed_up_at = now - timedelta(days=rng.uniform(0.2, 45))      # some dormant beyond KYC_DORMANT_DAYS
        signup.update(account_id=account_id, phone=phone,
                      client_hints={"sec-ch-ua-platform": "\"Windows\"", "sec-ch-ua-mobile": "?0"},
                      metadata={"campaign": rng.choice(["ads", "organic"]), "score_hint": interval_cv(rng, False)})
        people.append(Person(account_id, is_farm, signup, signed_up_at, phone, cards))
    rng.shuffle(people)                      # the farm signs up among everyone else, over the run
    return people


class Stubs:
    """The outside systems kyc calls: an SMS/email provider (codes, by verification id) and the
    gateway's decision webhook (signature checked, events counted)."""

    def __init__(self):
        self.codes: dict[str, str] = {}
        self.decisions = Counter()
        stubs = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/codes":
                    message = json.loads(raw)
                    stubs.codes[message["verification_id"]] = message["code"]
                else:
                    good = hmac.compare_digest(hmac.new(DECISION_SECRET.encode(), raw, hashlib.sha256).hexdigest(),
                                               self.headers.get("X-Signature", ""))
                    stubs.decisions["delivered" if good else "bad_signature"] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128          # kyc delivers 16 webhooks at once: the default 5 resets some

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@dataclass
class Tally:
    """Every answer: status and latency by call kind, and what broke the contract."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict = field(default_factory=lambda: defaultdict(Counter))
    ms: dict = field(default_factory=lambda: defaultdict(list))
    findings: dict = field(default_factory=lambda: defaultdict(list))       # (kind, what) -> examples

    def record(self, kind: str, status: int, ms: float) -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.ms[kind].append(ms)

    def finding(self, kind: str, what: str, example: str) -> None:
        with self.lock:
            self.findings[(kind, what)].append(example[:400])


class Client:
    """One client thread's keep-alive connection; each call is recorded and checked."""

    def __init__(self, port: int, keys: dict[str, str], tally: Tally):
        self.port, self.keys, self.tally = port, keys, tally
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, kind: str, method: str, path: str, role: str | None, body=None, expect=(200,),
             required: set | None = None, error_code: str | None = None, headers: dict | None = None,
             raw: bytes | None = None):
        """Send one request; returns (status, parsed body or None, headers). Status 0: no answer."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent_headers = {"Content-Type": "application/json", **(headers or {})}
        if role:
            sent_headers["Authorization"] = f"Bearer {self.keys[role]}"
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=sent_headers)
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                # A keep-alive connection the server closed while idle: reconnect once, as any
                # HTTP client library does; a second failure is a finding.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    self.tally.record(kind, 0, (time.perf_counter() - started) * 1000)
                    self.tally.finding(kind, f"transport {type(exc).__name__}", f"{method} {path}")
                    return 0, None, {}
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                self.tally.record(kind, 0, (time.perf_counter() - started) * 1000)
                self.tally.finding(kind, f"transport {type(exc).__name__}", f"{method} {path}")
                return 0, None, {}
        status = response.status
        self.tally.record(kind, status, (time.perf_counter() - started) * 1000)
        try:
            answer = json.loads(payload) if payload else None
        except ValueError:
            answer = None
        error = (answer or {}).get("error") if isinstance(answer, dict) else None
        where = f"{method} {path} -> {status} {json.dumps(error) if error else payload[:200]!r}"
        if status >= 500 or status not in expect:
            sent = (data or b"")[:300].decode(errors="replace")
            self.tally.finding(kind, f"{status} {error.get('code') if error else ''}".strip(), f"{where} body={sent}")
        elif status >= 400:
            if not error or not {"code", "message"} <= error.keys():
                self.tally.finding(kind, f"{status} not in the error shape", where)
            elif error_code and error["code"] != error_code:
                self.tally.finding(kind, f"{status} {error['code']}, expected {error_code}", where)
            elif status in (429, 503) and not response.getheader("Retry-After"):
                self.tally.finding(kind, f"{status} without Retry-After", where)
        elif status == 200 and required and not (isinstance(answer, dict) and required <= answer.keys()):
            missing = required - (answer.keys() if isinstance(answer, dict) else set())
            self.tally.finding(kind, "200 missing keys", f"{where}: missing {sorted(missing)}")
        return status, answer, dict(response.getheaders())


class Traffic:
    """The calls, chosen at random with fixed weights; the shared state is what an outside
    caller knows (which accounts it posted, the verifications it started, the clusters it saw)."""

    def __init__(self, people: list[Person], ghosts: list[str], stubs: Stubs, wake_at: float):
        self.people, self.ghosts, self.stubs, self.wake_at = people, ghosts, stubs, wake_at
        self.lock = threading.Lock()
        self.unposted = list(reversed(people))
        self.verifications: list[tuple[str, str]] = []          # (verification id, kind)
        self.clusters: list[str] = []
        self.events = 0
        self.weights = {
            self.signup: 14, self.backfill: 3, self.payment_method: 6, self.activity: 18, self.activity_bulk: 5,
            self.activity_bulk_unknown: 1, self.entitlement: 18, self.entitlement_refused: 1, self.account: 5,
            self.label: 1, self.reviews: 3, self.clusters_read: 3, self.cluster_action: 1, self.verification: 5,
            self.confirm: 4, self.document_decision: 2, self.ops_reads: 2, self.refused_bodies: 1}

    def known(self, rng: random.Random, farm: bool | None = None) -> Person | None:
        pool = [p for p in self.people if p.state == "known" and (farm is None or p.farm == farm)]
        return rng.choice(pool) if pool else None

    def signup(self, c: Client, rng: random.Random) -> None:
        with self.lock:
            person = self.unposted.pop() if self.unposted else None
            if person:
                person.state = "posting"
        if person is None:
            return self.backfill(c, rng)
        body = {**person.signup, "occurred_at": rfc3339(person.signed_up_at)}
        status, answer, _ = c.call("signup", "POST", "/v1/signups", "signup", body, required=EVALUATION)
        person.state = "known" if status == 200 else "new"
        if status == 200 and answer.get("account_id") != person.id:
            c.tally.finding("signup", "answer names another account", f"{person.id}: {answer.get('account_id')}")

    def backfill(self, c: Client, rng: random.Random) -> None:
        """The same account posted again with an earlier occurred_at: a caller importing history."""
        person = self.known(rng)
        if person:
            person.signed_up_at -= timedelta(days=rng.uniform(0.5, 20))
            c.call("signup backfill", "POST", "/v1/signups", "signup",
                   {**person.signup, "occurred_at": rfc3339(person.signed_up_at)}, required=EVALUATION)

    def payment_method(self, c: Client, rng: random.Random) -> None:
        person = self.known(rng)
        if person:
            card = rng.choice(person.cards)
            c.call("payment method", "POST", "/v1/payment-methods", "signup", {
                "account_id": person.id, "fingerprint": "pm_fp_" + hashlib.sha1(card.encode()).hexdigest()[:14],
                "bin": card[:rng.choice((6, 8))], "last4": card[-4:],
                "funding": rng.choice(["credit", "debit", "prepaid", "unknown"]), "issuer_country": "US",
                "billing_country": rng.choice(["US", "US", "GB"]), "ip": person.signup["ip"],
                "device_id": person.signup["device_id"]}, required=EVALUATION)

    def report(self, rng: random.Random, person: Person, at: datetime | None = None) -> dict:
        """A gateway's report: the farm on its shared key and rare templates at a machine's pace."""
        window = rng.choice([60, 300, 3600])
        requests = rng.randint(50, 600) if person.farm else rng.randint(1, 200)
        templates = ({f"pf_farm_{i}": requests // 2 for i in range(3)} if person.farm
                     else {f"pf_{person.id}": requests})
        templates.update({t: rng.randint(1, 30) for t in rng.sample(POPULAR_TEMPLATES, 2)})
        body = {"occurred_at": rfc3339(at or datetime.now(timezone.utc) - timedelta(seconds=rng.uniform(0, 30))),
                "window_seconds": window, "requests": requests,
                "ip": person.signup["ip"], "api_key_id": "key_farm" if person.farm else f"key_{person.id}",
                "tier": rng.choice(TIERS), "user_agent": API_CLIENTS[0] if person.farm else rng.choice(API_CLIENTS),
                "tokens_in": requests * rng.randint(100, 900), "tokens_out": requests * rng.randint(100, 2000),
                "models": {"model-large": requests - requests // 4, "model-small": requests // 4},
                "prompt_fingerprints": templates, "refused": rng.choice([0, 0, 0, rng.randint(1, 20)])}
        if requests >= 2:
            body["interval_cv"] = interval_cv(rng, person.farm)
        return body

    def reporter(self, rng: random.Random) -> Person | None:
        # The farm stays quiet until it wakes, then all of it reports at once.
        if time.monotonic() >= self.wake_at and rng.random() < 0.4:
            return self.known(rng, farm=True)
        return self.known(rng, farm=False)

    def activity(self, c: Client, rng: random.Random) -> None:
        person = self.reporter(rng)
        if person:
            body = self.report(rng, person)
            status, answer, _ = c.call("activity", "POST", f"/v1/accounts/{quote(person.id)}/activity", "gateway",
                                       body, required=ACTIVITY)
            if status == 200 and answer.get("day") == body["occurred_at"][:10] and answer["requests_today"] < body["requests"]:
                c.tally.finding("activity", "requests_today below the report's requests", f"{body['requests']}: {answer}")

    def bulk_reports(self, rng: random.Random, size: int) -> list[dict]:
        reports = []
        for _ in range(size):
            person = self.reporter(rng)
            if person:
                # A gateway catching up: some reports from the account's past, after its signup.
                past = rng.random() < 0.2
                at = person.signed_up_at + (datetime.now(timezone.utc) - person.signed_up_at) * rng.random() if past else None
                reports.append({"account_id": person.id, **self.report(rng, person, at)})
        return reports

    def activity_bulk(self, c: Client, rng: random.Random) -> None:
        reports = self.bulk_reports(rng, 1000 if rng.random() < 0.03 else rng.randint(2, 60))
        if not reports:
            return
        body = {"reports": reports}
        headers = {"Idempotency-Key": f"gw-{rng.getrandbits(64):016x}"} if rng.random() < 0.3 else None
        status, answer, _ = c.call("activity bulk", "POST", "/v1/activity", "gateway", body, headers=headers)
        if status == 200 and (not isinstance(answer, dict) or not isinstance(answer.get("results"), list) or len(answer["results"]) != len(reports)
                              or any(not ACTIVITY <= r.keys() for r in answer["results"])
                              or [r["account_id"] for r in answer["results"]] != [r["account_id"] for r in reports]):
            c.tally.finding("activity bulk", "results not one per report", json.dumps(answer)[:300])
        if status == 200 and headers:           # the gateway's retry after a timeout: answered as the first
            again, repeat, _ = c.call("activity bulk (idempotent resend)", "POST", "/v1/activity", "gateway", body,
                                      headers=headers)
            if again == 200 and [r["requests_today"] for r in repeat["results"]] != \
                    [r["requests_today"] for r in answer["results"]]:
                c.tally.finding("activity bulk (idempotent resend)", "answer differs from the first", str(repeat)[:300])

    def activity_bulk_unknown(self, c: Client, rng: random.Random) -> None:
        """One report for an account nobody posted: refused whole, naming that index only."""
        reports = self.bulk_reports(rng, rng.randint(1, 10))
        index = rng.randint(0, len(reports))
        reports.insert(index, {"account_id": rng.choice(self.ghosts), "requests": 3})
        status, answer, _ = c.call("activity bulk, unknown account", "POST", "/v1/activity", "gateway",
                                   {"reports": reports}, expect=(400,), error_code="invalid_request")
        if status == 400 and set(answer["error"].get("fields", {})) != {f"reports[{index}].account_id"}:
            c.tally.finding("activity bulk, unknown account", "400 names other fields", json.dumps(answer)[:300])

    def entitlement(self, c: Client, rng: random.Random) -> None:
        person = self.known(rng)
        if not person:
            return
        path = f"/v1/accounts/{quote(person.id)}/entitlement?tier={rng.choice(TIERS)}"
        if rng.random() < 0.3:
            at = person.signed_up_at + (datetime.now(timezone.utc) - person.signed_up_at) * rng.random()
            path += f"&at={quote(rfc3339(at))}"
        status, answer, headers = c.call("entitlement", "GET", path, "gateway", required=ENTITLEMENT)
        if status == 200 and answer["allowed"] and (answer["missing_verifications"] or answer["decision"] == "block"):
            c.tally.finding("entitlement", "allowed despite missing verifications or a block", json.dumps(answer)[:300])
        if status == 200 and headers.get("ETag") and rng.random() < 0.3:
            c.call("entitlement revalidated", "GET", path, "gateway", expect=(200, 304),
                   headers={"If-None-Match": headers["ETag"]}, required=ENTITLEMENT)

    def entitlement_refused(self, c: Client, rng: random.Random) -> None:
        person = self.known(rng)
        c.call("entitlement, unknown account", "GET", f"/v1/accounts/{rng.choice(self.ghosts)}/entitlement?tier=free",
               "gateway", expect=(404,), error_code="not_found")
        if person:
            c.call("entitlement, unknown tier", "GET", f"/v1/accounts/{quote(person.id)}/entitlement?tier=platinum",
                   "gateway", expect=(400,))

    def account(self, c: Client, rng: random.Random) -> None:
        person = self.known(rng)
        if person:
            c.call("account", "GET", f"/v1/accounts/{quote(person.id)}", "ops", required=ACCOUNT)
        c.call("account, unknown", "GET", f"/v1/accounts/{rng.choice(self.ghosts)}", "ops", expect=(404,))

    def label(self, c: Client, rng: random.Random) -> None:
        person = self.known(rng)
        if person:
            label = "fraud" if person.farm and rng.random() < 0.5 else "legit"
            status, answer, _ = c.call("label", "POST", f"/v1/accounts/{quote(person.id)}/labels", "ops",
                                       {"label": label, "note": "mixed load"}, required={"account_id", "decision", "label"})
            if status == 200 and (answer["label"] != label or (label == "fraud" and answer["decision"] != "block")):
                c.tally.finding("label", f"{label} label not in the answer", json.dumps(answer)[:300])

    def reviews(self, c: Client, rng: random.Random) -> None:
        status, answer, _ = c.call("reviews", "GET", f"/v1/reviews?limit={rng.randint(1, 50)}", "ops",
                                   required={"reviews"})
        if status == 200 and answer["reviews"]:
            entry = rng.choice(answer["reviews"])
            body = {"outcome": rng.choice(["allow", "block"]), "note": "mixed load"}
            if rng.random() < 0.7 and "state_version" in entry:   # as the console: 409 if the account moved on
                body["state_version"] = entry["state_version"]
            status, answer, _ = c.call("review", "POST", f"/v1/accounts/{quote(entry['account_id'])}/review", "ops",
                                       body, expect=(200, 409) if "state_version" in body else (200,), required=ACCOUNT)
            if status == 200 and answer["decision"] != body["outcome"] and answer.get("label") is None:
                c.tally.finding("review", "answer's decision is not the outcome",
                                f"{body['outcome']} -> {answer['decision']} {json.dumps(answer.get('override'))[:200]}")

    def clusters_read(self, c: Client, rng: random.Random) -> None:
        status, answer, _ = c.call("clusters", "GET", f"/v1/clusters?min_size={rng.choice([2, 5, 20])}&limit=10", "ops",
                                   required={"clusters"})
        if status == 200 and answer["clusters"]:
            with self.lock:
                self.clusters = [cl["id"] for cl in answer["clusters"]]
            # A cluster merged into another since the list was read is gone: 404 is right then.
            c.call("cluster", "GET", f"/v1/clusters/{rng.choice(self.clusters)}?limit=100", "ops", expect=(200, 404),
                   required={"id", "size", "members"})

    def cluster_action(self, c: Client, rng: random.Random) -> None:
        if self.clusters:
            c.call("cluster action", "POST", f"/v1/clusters/{self.clusters[0]}/actions", "ops",
                   {"action": rng.choice(["block", "review", "release"]), "note": "mixed load"}, expect=(200, 404),
                   required={"cluster_id", "members", "changed"})

    def verification(self, c: Client, rng: random.Random) -> None:
        person = self.known(rng)
        if not person:
            return
        kind = rng.choice(["email", "phone", "document", "payment"])
        body = {"kind": kind, **({"phone": person.phone} if kind == "phone" else {}),
                **({"provider": PROVIDER} if kind == "document" else {})}
        # 409: a farm's shared number verified by another account; 429: a code sent moments ago.
        status, answer, _ = c.call(f"verification start {kind}", "POST", f"/v1/accounts/{quote(person.id)}/verifications",
                                   "signup", body, expect=(200, 201, 409, 429), required=VERIFICATION)
        if status in (200, 201):
            with self.lock:
                self.verifications.append((answer["verification_id"], kind))
            c.call("verification read", "GET", f"/v1/verifications/{answer['verification_id']}", "signup",
                   required=VERIFICATION)

    def confirm(self, c: Client, rng: random.Random) -> None:
        codes = [(v, k) for v, k in self.verifications if k in ("email", "phone")]
        if codes:
            verification_id, _ = rng.choice(codes)
            right = self.stubs.codes.get(verification_id)
            code = right if right and rng.random() < 0.8 else f"{rng.randint(0, 999999):06d}"
            # 200 with attempts left for a wrong code; 409 once it ended; 429 past the day's wrong codes.
            status, answer, _ = c.call("verification confirm", "POST", f"/v1/verifications/{verification_id}/confirm",
                                       "signup", {"code": code}, expect=(200, 409, 429), required=VERIFICATION)
            if status == 200 and (answer["status"] == "verified") != (code == right):
                c.tally.finding("verification confirm", f"{'right' if code == right else 'wrong'} code answered "
                                f"{answer['status']}", json.dumps(answer)[:300])

    def document_decision(self, c: Client, rng: random.Random) -> None:
        documents = [v for v, k in self.verifications if k == "document"]
        if not documents:
            return
        with self.lock:
            self.events += 1
            event_id = f"evt_{self.events}"
        raw = json.dumps({"event_id": event_id, "verification_id": rng.choice(documents),
                          "status": rng.choice(["approved", "approved", "declined"]), "timestamp": int(time.time())}).encode()
        signature = hmac.new(PROVIDER_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        # 409: the verification was decided already (several pending → one provider decision each).
        c.call("document webhook", "POST", f"/v1/webhooks/{PROVIDER}", None, raw=raw, expect=(200, 409),
               headers={"X-Signature": signature}, required=VERIFICATION)
        if rng.random() < 0.3:
            c.call("document webhook replayed", "POST", f"/v1/webhooks/{PROVIDER}", None, raw=raw, expect=(409,),
                   headers={"X-Signature": signature})
        c.call("document webhook, bad signature", "POST", f"/v1/webhooks/{PROVIDER}", None, raw=raw, expect=(401,),
               headers={"X-Signature": "0" * 64}, error_code="bad_signature")

    def ops_reads(self, c: Client, rng: random.Random) -> None:
        c.call("audit", "GET", f"/v1/audit?limit={rng.randint(1, 100)}", "ops", required={"events", "next"})
        c.call("rules", "GET", "/v1/ops/rules", "ops", required={"version"})

    def refused_bodies(self, c: Client, rng: random.Random) -> None:
        """What the contract refuses, refused and leaving nothing: a card number in metadata, a
        key of the wrong role."""
        ghost = rng.choice(self.ghosts)
        card = luhn_card(rng, rng.choice(TEST_BINS))
        c.call("signup with a card number", "POST", "/v1/signups", "signup",
               {"account_id": ghost, "email": "x@example.org", "ip": "73.1.2.3", "metadata": {"note": card}},
               expect=(400,), error_code="card_number_refused")
        c.call("account after a refused signup", "GET", f"/v1/accounts/{ghost}", "ops", expect=(404,))
        person = self.known(rng)
        if person:
            c.call("activity with 101 templates", "POST", f"/v1/accounts/{quote(person.id)}/activity", "gateway",
                   {"requests": 101, "prompt_fingerprints": {f"pf_{i}": 1 for i in range(101)}}, expect=(400,))
            c.call("signup with an unknown field", "POST", "/v1/signups", "signup",
                   {**person.signup, "emial": "typo@example.org"}, expect=(400,), error_code="invalid_request")
            c.call("label with a gateway key", "POST", f"/v1/accounts/{quote(person.id)}/labels", "gateway",
                   {"label": "legit"}, expect=(403,), error_code="forbidden")

    def run(self, c: Client, rng: random.Random, until: float) -> None:
        actions, weights = list(self.weights), list(self.weights.values())
        while time.monotonic() < until:
            # Signups come first as the population grows: most calls need a known account.
            action = self.signup if self.unposted and rng.random() < 0.25 else rng.choices(actions, weights)[0]
            try:
                action(c, rng)
            except Exception as exc:          # the driver's own mistake (an answer it misread): say so, go on
                c.tally.finding(action.__name__, f"driver error {type(exc).__name__}", repr(exc))


def prepare(database_url: str, redis_url: str | None, recreate: bool) -> None:
    """An empty, migrated database (and an empty Redis db with --recreate)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":         # the embedded default: a file
        if recreate and url.database:
            for suffix in ("", "-wal", "-shm"):
                Path(url.database + suffix).unlink(missing_ok=True)
        upgrade_database(database_url)
        return
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if recreate:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": url.database}).scalar():
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    if recreate and redis_url:
        import redis
        redis.Redis.from_url(redis_url).flushdb()
    upgrade_database(database_url)


def scan_logs(paths: list[Path]) -> dict:
    """Tracebacks grouped by exception type and innermost kyc frame, deadlocks, database
    unavailable, ERROR/CRITICAL lines (JSON lines, or plain text from gunicorn and rq)."""
    frame = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
    found = {"tracebacks": Counter(), "errors": Counter(), "warnings": Counter(), "deadlock lines": 0,
             "database_unavailable lines": 0}

    def traceback(text_: str) -> None:
        frames = frame.findall(text_)
        ours = [f for f in frames if "/kyc/" in f[0]] or frames
        where = f"{ours[-1][0].split('/kyc/')[-1]}:{ours[-1][1]} in {ours[-1][2]}" if ours else "?"
        last = [line for line in text_.strip().splitlines() if line.strip()][-1]
        found["tracebacks"][(last.split(":")[0].strip()[:80], where)] += 1

    for path in paths:
        block: list[str] | None = None
        for line in path.read_text(errors="replace").splitlines():
            low = line.lower()
            found["deadlock lines"] += "deadlock" in low
            found["database_unavailable lines"] += "database_unavailable" in low
            if block is not None:
                block.append(line)
                if line and not line[0].isspace():
                    traceback("\n".join(block))
                    block = None
                continue
            if line.startswith("Traceback (most recent call last)"):
                block = [line]
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if re.search(r"\b(ERROR|CRITICAL)\b", line):
                    found["errors"][(path.name, line[:120])] += 1
                continue
            if not isinstance(record, dict):
                continue
            if record.get("exc_info"):
                traceback(str(record["exc_info"]))
            if record.get("level") in ("ERROR", "CRITICAL"):
                found["errors"][(path.name, f"{record.get('logger')}: {str(record.get('message'))[:100]}")] += 1
            elif record.get("level") == "WARNING":      # grouped by their words: numbers and ids vary
                message = re.sub(r"\d+", "N", str(record.get("message")))[:90]
                found["warnings"][(path.name, f"{record.get('logger')}: {message}")] += 1
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="PostgreSQL (psycopg), or a SQLite file (the embedded "
                                                               "default); empty or missing, or --recreate")
    parser.add_argument("--redis-url", default="", help="a Redis db of its own; empty: jobs run in-process")
    parser.add_argument("--recreate", action="store_true", help="drop and create the database, flush the Redis db")
    parser.add_argument("--duration", type=int, default=180, help="seconds of traffic")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--farm", type=int, default=80, help="accounts in the farm")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads a worker")
    parser.add_argument("--rescore-every", type=int, default=45, help="seconds between `kyc rescore --all`")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-dir", type=Path, default=None, help="default: a new temporary directory")
    args = parser.parse_args()

    prepare(args.database_url, args.redis_url, args.recreate)
    engine = create_engine(args.database_url)
    with Session(engine) as session, session.begin():
        if session.scalar(select(func.count()).select_from(Account)):
            sys.exit("the database holds accounts: give an empty one, or --recreate")
        keys = {role: new_api_key() for role in ("signup", "gateway", "ops")}
        session.add_all(ApiKey(name=f"mixed-{role}", prefix=key[:10], key_hash=hash_api_key(key), role=role)
                        for role, key in keys.items())
    engine.dispose()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="kyc-mixed-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = {name: log_dir / f"{name}.log" for name in ("server", "worker", "rescore")}
    for path in logs.values():
        path.write_bytes(b"")
    stubs = Stubs()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KYC_DATABASE_URL": args.database_url,
           "KYC_RULES_DIR": str(ROOT / "rules"), "KYC_DATA_DIR": str(log_dir), "KYC_SECRET_KEY": "mixed-load",
           "KYC_REDIS_URL": args.redis_url, "KYC_DEV_KEY": "", "KYC_LOG_LEVEL": "INFO",
           "KYC_SENDER": "http", "KYC_SENDER_URL": f"{stubs.url}/codes",
           "KYC_WEBHOOK_SECRETS": f"{PROVIDER}:{PROVIDER_SECRET}",
           "KYC_DECISION_WEBHOOK_URL": f"{stubs.url}/decisions", "KYC_DECISION_WEBHOOK_SECRET": DECISION_SECRET}
    rng = random.Random(args.seed)
    now = datetime.now(timezone.utc)
    people = population(rng, args.seed, args.accounts, args.farm, now)
    ghosts = [f"mx{args.seed}_ghost{n:03d}" for n in range(50)]
    tally, processes, rescores = Tally(), [], []
    stopping = threading.Event()
    port = free_port()
    try:
        server = start("wsgi:app", port, args.workers, env, ROOT, threads=args.threads, log=logs["server"])
        processes.append(server)
        if args.redis_url:
            with open(logs["worker"], "ab") as out:
                processes.append(subprocess.Popen([sys.executable, "-m", "kyc.cli", "worker"], cwd=ROOT, env=env,
                                                  stdout=out, stderr=out))

        def rescore_loop() -> None:
            while not stopping.wait(args.rescore_every):
                started = time.monotonic()
                with open(logs["rescore"], "ab") as out:
                    rescore = subprocess.Popen([sys.executable, "-m", "kyc.cli", "rescore", "--all", "--reason",
                                                "mixed load"], cwd=ROOT, env=env, stdout=out, stderr=out)
                processes.append(rescore)           # stopped with the others if the run ends meanwhile
                rescores.append((rescore.wait(), time.monotonic() - started))
                processes.remove(rescore)

        rescorer = threading.Thread(target=rescore_loop, daemon=True)
        rescorer.start()
        began = time.monotonic()
        until = began + args.duration
        traffic = Traffic(people, ghosts, stubs, wake_at=began + args.duration / 4)
        clients = [threading.Thread(target=traffic.run, args=(Client(port, keys, tally),
                                                              random.Random(args.seed * 1000 + i), until))
                   for i in range(args.clients)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        elapsed = time.monotonic() - began
        stopping.set()
        rescorer.join(timeout=600)
        # Every account kyc answered 200 for must still be there.
        final = Client(port, keys, tally)
        for person in people:
            if person.state == "known":
                final.call("account, after the run", "GET", f"/v1/accounts/{quote(person.id)}", "ops",
                           required=ACCOUNT)
        time.sleep(5)                          # the worker's and the outbox's last webhooks
    finally:
        stopping.set()
        for process in list(processes):
            stop(process)
        stubs.server.shutdown()

    answered = sum(n for kind, counts in tally.statuses.items() for status, n in counts.items()
                   if status and kind != "account, after the run")
    print(f"mixed load: {args.duration}s, {args.clients} clients, seed {args.seed}, gunicorn -w {args.workers} "
          f"--threads {args.threads}, {'rq worker' if args.redis_url else 'jobs in-process'}, "
          f"{sum(p.state == 'known' for p in people)} of {len(people)} accounts posted ({args.farm} in the farm)")
    print(f"{'call':<38} {'count':>6} {'median':>8} {'p99':>8}  statuses")
    for kind in sorted(tally.statuses):
        ms = tally.ms[kind]
        print(f"{kind:<38} {len(ms):>6} {statistics.median(ms):>6.0f}ms {percentile(ms, 0.99):>6.0f}ms  "
              + " ".join(f"{s or 'none'}:{n}" for s, n in sorted(tally.statuses[kind].items())))
    print(f"answered: {answered} requests in {elapsed:.0f}s, {answered / elapsed:.1f} requests/s; "
          f"rescore --all: {len(rescores)} runs, exit codes {Counter(rc for rc, _ in rescores)}, "
          f"{max((s for _, s in rescores), default=0):.0f}s longest; decision webhooks: {dict(stubs.decisions)}")
    five_xx = sum(n for counts in tally.statuses.values() for status, n in counts.items() if status >= 500)
    print(f"\nanswers that broke the contract ({sum(len(v) for v in tally.findings.values())}):")
    for (kind, what), examples in sorted(tally.findings.items(), key=lambda item: -len(item[1])):
        print(f"  {len(examples):>5} x {kind}: {what}\n          e.g. {examples[0]}")
    found = scan_logs([path for path in logs.values() if path.exists()])
    print(f"\nlogs ({log_dir}): {found['deadlock lines']} lines naming a deadlock, "
          f"{found['database_unavailable lines']} naming database_unavailable")
    for (exc, where), n in found["tracebacks"].most_common():
        print(f"  {n:>5} x traceback {exc} at {where}")
    for (name, line), n in found["errors"].most_common(15):
        print(f"  {n:>5} x {name}: {line}")
    for (name, line), n in found["warnings"].most_common(10):
        print(f"  {n:>5} x {name} (warning): {line}")
    failed = (five_xx or tally.findings or found["tracebacks"] or stubs.decisions["bad_signature"]
              or any(rc for rc, _ in rescores))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
