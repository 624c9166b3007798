"""A small, realistic history for the console's tests and screenshots, posted through the API.

`seed(post)` takes `post(path, body) -> (status, json)` (a Flask test client or real HTTP) and
returns the ids the tests look for. It holds:
- ordinary customers, each on its own phone, device and network, allowed, some with usage;
- a household: two people on one computer (a cluster of two);
- single accounts held for review for their own reasons (a crawler's user agent, a private IP);
- a farm: accounts sharing a phone range, a /24 and an email shape, signed up minutes apart
  through fast form fills; as it grows the rules hold its members for review.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/18.1 Safari/605.1.15")
CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

# Full values the pages must never show (the tests look for each in every page).
CUSTOMERS = [
    {"account_id": "acct_jane", "email": "jane.smith84@gmail.com", "ip": "73.15.1.1", "phone": "+14155550123",
     "device_id": "dv_jane", "timezone": "America/New_York", "locale": "en-US", "user_agent": CHROME},
    {"account_id": "acct_omar", "email": "omar.haddad@outlook.com", "ip": "81.2.69.142", "phone": "+447700900123",
     "device_id": "dv_omar", "timezone": "Europe/London", "locale": "en-GB", "user_agent": SAFARI},
    {"account_id": "acct_lena", "email": "lena.k@web.de", "ip": "89.246.64.10", "phone": "+4915112345678",
     "device_id": "dv_lena", "timezone": "Europe/Berlin", "locale": "de-DE", "user_agent": CHROME},
]
# Two people of one household on one computer: a cluster of two, linked by the device, allowed.
HOUSEHOLD = [
    {"account_id": "acct_sam", "email": "sam.okafor@icloud.com", "ip": "73.162.10.4", "phone": "+12065550111",
     "device_id": "dv_home", "timezone": "America/Los_Angeles", "locale": "en-US", "user_agent": SAFARI},
    {"account_id": "acct_ada", "email": "ada.okafor@icloud.com", "ip": "73.162.10.4", "phone": "+12065550177",
     "device_id": "dv_home", "timezone": "America/Los_Angeles", "locale": "en-US", "user_agent": SAFARI},
]
HELD = [
    {"account_id": "acct_crawler", "email": "crawler.ops@outlook.com", "ip": "66.249.66.1", "phone": "+16175550188",
     "device_id": "dv_crawler", "timezone": "America/Los_Angeles", "locale": "en-US", "user_agent": CRAWLER},
    {"account_id": "acct_office", "email": "m.garcia@yahoo.com", "ip": "10.1.2.3", "phone": "+13125550142",
     "device_id": "dv_office", "timezone": "America/Chicago", "locale": "en-US", "user_agent": SAFARI},
]
FARM_SIZE = 12


def farm_member(n: int, at: datetime) -> dict[str, Any]:
    return {"account_id": f"farm_{n:02d}", "email": f"qz{4711 + n * 37}x@mailinator.com",
            "ip": f"185.220.101.{10 + n}", "phone": f"+4479460{n:05d}", "device_id": f"dv_farm_{n}",
            "timezone": "Europe/London", "locale": "en-GB", "user_agent": CHROME, "form_fill_ms": 900,
            "occurred_at": _iso(at)}


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def seed(post: Callable[[str, dict], tuple[int, Any]], *, farm_size: int = FARM_SIZE) -> dict[str, Any]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    if now.hour < 3:
        # The farm member's usage (from two hours ago to one) must fall on one UTC day: the
        # account page counts active days. In the first hours after midnight the whole history
        # is set three hours back, into the day before.
        now -= timedelta(hours=3)
    decisions: dict[str, str] = {}

    def send(path: str, body: dict) -> Any:
        status, answer = post(path, body)
        assert status == 200, (path, status, answer)
        return answer

    for i, customer in enumerate(CUSTOMERS + HOUSEHOLD):
        body = dict(customer, form_fill_ms=6200 + 900 * i, occurred_at=_iso(now - timedelta(days=20 - i)))
        decisions[customer["account_id"]] = send("/v1/signups", body)["decision"]
    for i, held in enumerate(HELD):
        body = dict(held, form_fill_ms=4800, occurred_at=_iso(now - timedelta(hours=5 - i)))
        decisions[held["account_id"]] = send("/v1/signups", body)["decision"]
    cluster_id = None
    for n in range(farm_size):
        answer = send("/v1/signups", farm_member(n, now - timedelta(hours=3) + timedelta(minutes=6 * n)))
        decisions[answer["account_id"]] = answer["decision"]
        cluster_id = answer["cluster"]["id"]
    # A farm member adds a prepaid card, as farms do to reach paid tiers.
    card = {"account_id": "farm_03", "fingerprint": "pm_fp_farm03", "bin": "424242", "last4": "4242",
            "funding": "prepaid", "issuer_country": "US", "billing_country": "GB", "ip": farm_member(3, now)["ip"],
            "device_id": "dv_farm_3", "occurred_at": _iso(now - timedelta(hours=2, minutes=30))}
    send("/v1/payment-methods", card)
    # Usage the gateway reported: a steady customer, and a farm member's burst once it woke.
    for day in range(14):
        at = now - timedelta(days=14 - day)
        send("/v1/accounts/acct_jane/activity",
             {"occurred_at": _iso(at), "requests": 300 + (day * 37) % 220})
    for day in range(3):
        at = now - timedelta(hours=2) + timedelta(minutes=30 * day)
        send("/v1/accounts/farm_03/activity",
             {"occurred_at": _iso(at), "requests": 4000 + 1500 * day})
    return {"decisions": decisions, "farm_cluster": cluster_id,
            "farm": [f"farm_{n:02d}" for n in range(farm_size)],
            "held": [h["account_id"] for h in HELD],
            "pii": [p[k] for p in CUSTOMERS + HOUSEHOLD + HELD for k in ("email", "phone", "ip")]
            + [farm_member(n, now)[k] for n in range(farm_size) for k in ("email", "phone", "ip")]}
