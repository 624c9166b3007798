"""A labeled history of signups and cards, posted through the real API in event-time order, and
how it scored.

The honest population is drawn from what real traffic holds (the shared realism notes, in the
repository's words: "every measured population must contain all of it"), each item at roughly
its magnitude, because each one trips a naive rule:

- shared by many: big banks' BINs (a handful of issuers per country hold most cards, the top
  BIN about a quarter), mobile carriers' NAT addresses, office, campus and café networks, IPv6
  addresses that rotate inside a /64, gmail/outlook/yahoo and `first.last` / `first.lastNN`
  mailboxes, privacy-relay addresses (Hide My Email, Firefox Relay, duck.com, SimpleLogin,
  addy.io), families sharing a computer;
- ordinary but odd-looking: VPN exits, iCloud Private Relay and Cloudflare WARP, corporate cloud
  desktops, travellers and expatriates (phone, timezone or locale of another country than the
  IP), old browsers that cannot update (ESR, pinned Chrome, old iPhones), password managers that
  fill a form in one to three seconds.

User agents are real ones, weighted by how often they are seen (fake-useragent's corpus); the
networks come from the bundled GeoIP data the service reads itself (which operator announces
an address, and where). Farms are at least as careful as the ones we know: residential and mobile
proxies, human-looking mailboxes at the big providers, current real browsers with matching
client hints, bursts or a steady drip, and a few rare identifiers they cannot help sharing (an
anti-detect browser profile, a block of SMS-activation numbers, a handful of virtual cards).

Nothing here reads the rules. The history is built by `history` (a World: events in time order
and each simulated account's population and traits), posted by `run` phase by phase (PHASES:
signups and cards, then settling: cluster rescoring and each account's final decision), and
measured by `summary` on the accounts created after the warm-up (the service had been running:
the warm-up gives every key the history its baseline needs).
"""

from __future__ import annotations

import ipaddress
import json
import re
import random
import string
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from typing import Callable

import phonenumbers
from phonenumbers import PhoneNumberType

from kyc.rescore.background import drain
from kyc.security import contains_card_number

COUNTRIES = {  # region: (timezone, locale, share of signups)
    "US": ("America/New_York", "en-US", 24), "IN": ("Asia/Kolkata", "en-IN", 10), "GB": ("Europe/London", "en-GB", 6),
    "DE": ("Europe/Berlin", "de-DE", 6), "BR": ("America/Sao_Paulo", "pt-BR", 6), "FR": ("Europe/Paris", "fr-FR", 5),
    "JP": ("Asia/Tokyo", "ja-JP", 4), "CA": ("America/Toronto", "en-CA", 4), "MX": ("America/Mexico_City", "es-MX", 4),
    "ES": ("Europe/Madrid", "es-ES", 3), "IT": ("Europe/Rome", "it-IT", 3), "AU": ("Australia/Sydney", "en-AU", 3),
    "KR": ("Asia/Seoul", "ko-KR", 3), "NG": ("Africa/Lagos", "en-NG", 3), "PH": ("Asia/Manila", "en-PH", 3),
    "PL": ("Europe/Warsaw", "pl-PL", 3), "TR": ("Europe/Istanbul", "tr-TR", 3), "NL": ("Europe/Amsterdam", "nl-NL", 3),
    "ZA": ("Africa/Johannesburg", "en-ZA", 2), "SE": ("Europe/Stockholm", "sv-SE", 2),
}
_REGIONS = list(COUNTRIES)
_REGION_WEIGHTS = [COUNTRIES[c][2] for c in _REGIONS]
FIRST = ["james", "maria", "wei", "olga", "ahmed", "sofia", "lucas", "emma", "noah", "li", "fatima", "ivan",
         "yuki", "carlos", "ana", "david", "sarah", "chen", "priya", "omar", "lena", "mateo", "zoe", "arjun",
         "hana", "tom", "nina", "felix", "amara", "kofi", "ines", "pablo", "mia", "jonas", "leila", "sam",
         "john", "michael", "jennifer", "linda", "robert", "laura", "daniel", "anna", "rahul", "minh", "sara"]
LAST = ["smith", "garcia", "wang", "ivanova", "khan", "rossi", "silva", "muller", "kim", "nguyen", "patel",
        "tanaka", "lopez", "brown", "dubois", "novak", "jensen", "okafor", "haddad", "schmidt", "costa",
        "martin", "sato", "cohen", "ali", "berg", "moreau", "santos", "yilmaz", "kowalski", "reyes", "lee",
        "johnson", "williams", "jones", "miller", "davis", "singh", "kumar", "park", "chen", "fischer"]
BIG_MAIL = [("gmail.com", 45), ("outlook.com", 7), ("hotmail.com", 5), ("yahoo.com", 8), ("icloud.com", 5)]
NATIONAL_MAIL = {"DE": ["gmx.de", "web.de", "t-online.de"], "FR": ["orange.fr", "free.fr", "laposte.net"],
                 "IT": ["libero.it"], "KR": ["naver.com", "daum.net"], "JP": ["yahoo.co.jp"], "PL": ["wp.pl", "o2.pl"],
                 "GB": ["btinternet.com", "yahoo.co.uk"], "BR": ["uol.com.br", "bol.com.br"], "TR": ["yandex.com"]}
PRIVACY_RELAYS = [("privaterelay.appleid.com", 60), ("mozmail.com", 15), ("duck.com", 15), ("simplelogin.com", 6),
                  ("anonaddy.me", 4)]
SMS_ACTIVATION_REGIONS = ["GB", "ID", "RU", "PH", "NL", "SE", "PL", "KE"]

# Networks (autonomous systems) ordinary people reach the internet through when they are not at
# home, from rules/lists/hosting_asns.txt's own categories.
VPN_ASNS = (9009, 60068, 212238, 39351, 62371, 209103, 136787, 147049)    # M247, Datacamp, Mullvad, Proton, Nord
PRIVATE_RELAY_ASNS = (36183, 20940, 54113)                                 # iCloud Private Relay egress
WARP_ASNS = (13335, 209242)                                                # Cloudflare WARP
CLOUD_DESKTOP_ASNS = (16509, 14618, 8075, 12076)                           # AWS WorkSpaces, Azure Virtual Desktop

# What a share of honest signups carry, the realism item each stands for (counted by composition).
REALISM = {
    "big_bank_bin": "a card from one of its country's top three BINs",
    "carrier_nat": "a mobile carrier's NAT address, shared by its subscribers",
    "ipv6_rotation": "an IPv6 address that changes inside its /64 between visits",
    "shared_network": "an office, campus, school, hotel or café network",
    "big_free_mail": "gmail, outlook, hotmail, yahoo or icloud",
    "name_shape": "a first.last or first.lastNN mailbox",
    "privacy_relay_email": "Hide My Email, Firefox Relay, duck.com, SimpleLogin or addy.io",
    "shared_device": "a device a family member already signed up on",
    "vpn": "a commercial VPN exit",
    "private_relay": "iCloud Private Relay or Cloudflare WARP",
    "cloud_desktop": "a corporate cloud desktop or security proxy on a cloud network",
    "traveller": "phone from another country than the IP",
    "locale_mismatch": "timezone and locale of another country than the IP",
    "old_browser": "a browser many versions behind (ESR, pinned Chrome, an old iPhone)",
    "fast_form": "a password manager or autofill: the form filled in 1-3 s",
    "team_onboarding": "colleagues signing up together, within the hour, from their office's one address",
}
# Shares of honest signups (ranges in realism.md; see each draw below).
SHARES = {"vpn": 0.08, "private_relay": 0.04, "cloud_desktop": 0.03, "shared_network": 0.10, "carrier_nat": 0.25,
          "ipv6_home": 0.12, "traveller": 0.05, "old_browser": 0.05, "fast_form": 0.12, "privacy_relay_email": 0.05,
          "shared_device": 0.06, "card": 0.45, "hints": 0.6, "team_onboarding": 0.02}


@dataclass
class Event:
    kind: str                    # "signup" | "payment_method"
    at: datetime
    population: str              # "legit" or "farm_<n>"
    body: dict


@dataclass
class SimAccount:
    population: str
    measured: bool               # created after the warm-up
    traits: set[str] = field(default_factory=set)


@dataclass
class World:
    events: list[Event]
    accounts: dict[str, SimAccount]
    measured_since: datetime
    # Every mailbox an account signed up with (dots ignored): the API's owner refuses an address
    # already registered, so no two accounts, honest or a farm's, share one (unique_mailbox).
    # The usage phase draws its accounts' addresses against it too.
    mailboxes: set[str] = field(default_factory=set)

    def composition(self, population: str = "legit") -> Counter:
        """How many measured accounts of a population carry each trait (realism items, farm tactics)."""
        counts: Counter = Counter()
        for account in self.accounts.values():
            if account.population == population and account.measured:
                counts.update(account.traits)
        return counts


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- networks --------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def _announced_networks(geoip, hosting: frozenset) -> tuple[dict, dict]:
    """Every network of the ASN database: ({country: {asn: [networks]}} of non-hosting operators,
    {asn: [networks]} of the VPN, relay and cloud ones we draw from). One pass, a few seconds."""
    wanted = set(VPN_ASNS + PRIVATE_RELAY_ASNS + WARP_ASNS + CLOUD_DESKTOP_ASNS)
    by_country: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    special: dict[int, list] = defaultdict(list)
    for network, record in geoip.asn:
        asn = record.get("autonomous_system_number") if isinstance(record, dict) else None
        if not asn:
            continue
        if asn in wanted:
            special[asn].append(network)
            continue
        if asn in hosting or network.prefixlen > (24 if network.version == 4 else 48):
            continue
        if not network.network_address.is_global:
            continue
        facts = geoip.lookup(network.network_address)
        if facts.get("hosting") or facts.get("vpn"):       # where network intelligence says so
            continue
        if facts.get("country") in COUNTRIES:
            by_country[facts["country"]][asn].append(network)
    return ({c: dict(v) for c, v in by_country.items()}, dict(special))


class Networks:
    """Where honest people and proxies come from, per country: the biggest operators' networks
    (home broadband and mobile carriers), carrier NAT addresses, institutions' /24s; and the
    VPN, relay and cloud networks of the named operators. Without GeoIP data, any public space."""

    def __init__(self, rng: random.Random, geoip=None, hosting_asns: frozenset = frozenset()):
        self.rng = rng
        self.isps: dict[str, list[list]] = {}
        self.special: dict[int, list] = {}
        if geoip is not None and geoip.asn is not None and geoip.city is not None:
            by_country, self.special = _announced_networks(geoip, frozenset(hosting_asns))
            for country, operators in by_country.items():
                # The largest operators by announced networks: national ISPs and carriers.
                biggest = sorted(operators.values(), key=len, reverse=True)[:6]
                self.isps[country] = biggest
        self.nat: dict[str, list[str]] = {c: [self._address(self._v4(c, operator=i % 2)) for i in range(6)]
                                          for c in COUNTRIES}        # two carriers, three NAT addresses each
        self.institutions: dict[str, list[ipaddress.IPv4Network]] = {
            c: [self._slash24(self._v4(c)) for _ in range(4)] for c in COUNTRIES}

    def _v4(self, country: str, operator: int | None = None) -> ipaddress.IPv4Network:
        operators = [v4 for nets in self.isps.get(country, []) if (v4 := [n for n in nets if n.version == 4])]
        if not operators:
            return ipaddress.ip_network(f"{_public_prefix(self.rng)}/24")
        nets = operators[operator % len(operators)] if operator is not None else self.rng.choice(operators)
        return self.rng.choice(nets)

    def _v6(self, country: str) -> ipaddress.IPv6Network | None:
        nets = [n for nets in self.isps.get(country, []) for n in nets if n.version == 6]
        return self.rng.choice(nets) if nets else None

    def _slash24(self, network: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if network.prefixlen >= 24:
            return ipaddress.ip_network(f"{network.network_address}/24", strict=False)
        subnets = 2 ** (24 - network.prefixlen)
        base = int(network.network_address) + self.rng.randrange(subnets) * 256
        return ipaddress.ip_network(f"{ipaddress.IPv4Address(base)}/24")

    def _address(self, network) -> str:
        size = network.num_addresses
        offset = self.rng.randrange(1, size - 1) if size > 2 else 0
        return str(network.network_address + offset)

    def home_v4(self, country: str) -> str:
        return self._address(self._slash24(self._v4(country)))

    def home_v6_prefix(self, country: str) -> ipaddress.IPv6Network | None:
        """A household's /64 inside its ISP's allocation (None where the data has no IPv6)."""
        network = self._v6(country)
        if network is None:
            return None
        subnets = 2 ** min(64 - network.prefixlen, 60)
        base = int(network.network_address) + self.rng.randrange(subnets) * 2 ** 64
        return ipaddress.ip_network(f"{ipaddress.IPv6Address(base)}/64")

    def rotate(self, prefix: ipaddress.IPv6Network) -> str:
        """A privacy-extension address: a fresh interface id in the household's /64."""
        return str(prefix.network_address + self.rng.getrandbits(64))

    def carrier_nat(self, country: str) -> str:
        return self.rng.choice(self.nat[country])

    def institution(self, country: str) -> str:
        network = self.rng.choice(self.institutions[country])
        return str(network.network_address + self.rng.randrange(1, 16))      # a few NAT addresses

    def operator(self, asns: tuple[int, ...]) -> str | None:
        nets = [n for asn in asns for n in self.special.get(asn, []) if n.version == 4]
        return self._address(self.rng.choice(nets)) if nets else None


def _public_prefix(rng: random.Random) -> str:
    first = rng.choice([2, 5, 24, 31, 37, 41, 46, 49, 62, 66, 71, 78, 80, 82, 86, 89, 91, 95, 101, 103, 109,
                        112, 118, 121, 125, 151, 176, 177, 179, 181, 186, 187, 188, 189, 190, 197, 200, 201])
    return f"{first}.{rng.randrange(0, 256)}.{rng.randrange(0, 256)}.0"


# --- people ----------------------------------------------------------------------------------

def _device_id(rng: random.Random) -> str:
    # Letters only: a long all-digit id could pass the API's card-number guard.
    return "dv_" + "".join(rng.choice(string.ascii_lowercase) for _ in range(14))


_MOBILE_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)


def _mobile(rng: random.Random, region: str, block: str | None = None) -> str:
    """A valid mobile number of the region, spread over its numbering plan as subscribers' are;
    within `block` (E.164 without its last 3 digits) if given."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    for _ in range(400):
        if block:
            candidate = block + f"{rng.randrange(1000):03d}"
        else:
            national = str(example.national_number)
            keep = max(len(national) - 8, 1)
            candidate = f"+{example.country_code}{national[:keep]}" + "".join(
                rng.choice(string.digits) for _ in range(len(national) - keep))
        parsed = phonenumbers.parse(candidate)
        # Numbers of 13+ digits that pass the Luhn check are refused as card numbers by the API
        # (a known limitation of the card-number guard); draw another.
        if (phonenumbers.is_valid_number(parsed) and not contains_card_number(candidate)
                and phonenumbers.number_type(parsed) in _MOBILE_TYPES):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)


def weighted(rng: random.Random, pairs):
    items, weights = zip(*pairs)
    return rng.choices(items, weights)[0]


def mailbox(rng: random.Random, first: str, last: str) -> tuple[str, bool]:
    """A person's local part, and whether it is a first.last(NN) shape."""
    shape = rng.random()
    if shape < 0.22:
        return f"{first}.{last}", True
    if shape < 0.40:
        return f"{first}.{last}{rng.randrange(1, 99)}", True
    if shape < 0.55:
        return f"{first}{last}{rng.randrange(10, 99)}", False
    if shape < 0.68:
        return f"{first[0]}{last}", False
    if shape < 0.82:
        return f"{first}{rng.choice(['', '_', '.'])}{rng.randrange(1960, 2008)}", False
    return f"{first}{rng.choice(string.ascii_lowercase)}{rng.choice(['x', 'z', 'o', ''])}{rng.randrange(0, 999)}", False


def unique_mailbox(rng: random.Random, local: str, domain: str, taken: set[str]) -> str:
    """local@domain, with digits added to the local part while `taken` holds its mailbox already
    (a mailbox belongs to one person; gmail ignores dots: james.smith is jamessmith); recorded
    in `taken`."""
    while f"{local.replace('.', '')}@{domain}" in taken:
        local = f"{local}{rng.randrange(2, 99)}"
    taken.add(f"{local.replace('.', '')}@{domain}")
    return f"{local}@{domain}"


def relay_address(rng: random.Random) -> str:
    domain = weighted(rng, PRIVACY_RELAYS)
    alnum = string.ascii_lowercase + string.digits
    if domain == "duck.com":
        local = "-".join(rng.choice(["quiet", "amber", "river", "stone", "maple", "swift", "cloud", "lunar",
                                     "ember", "frost", "cedar", "tidal", "opal", "brisk", "hazel", "north"])
                         for _ in range(3)) + str(rng.randrange(10, 99))
    elif domain == "simplelogin.com":
        local = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{rng.randrange(100, 999)}"
    else:
        local = "".join(rng.choice(alnum) for _ in range(rng.randrange(8, 13)))
    return f"{local}@{domain}"


@dataclass(frozen=True)
class Browser:
    user_agent: str
    hints: dict | None
    old: bool


# fake-useragent's rows that a generator made, not a browser: Chrome 39-60 with four-digit
# patch numbers Chrome never shipped (Blink on iOS 11, say). bench/ua_corpora.py reads the same.
GENERATED_CHROME = re.compile(r"\bChrome/(39|[45]\d|60)\.0\.\d+\.\d{4}\b")


@lru_cache(maxsize=1)
def _browser_corpus() -> tuple[list[dict], list[float]]:
    """fake-useragent's corpus of real browser user agents, with how often each is seen (its
    generated rows left out: honest people do not send them)."""
    text = resources.files("fake_useragent").joinpath("data/browsers.jsonl").read_text(encoding="utf-8")
    rows = [row for row in (json.loads(line) for line in text.splitlines() if line.strip())
            if not GENERATED_CHROME.search(row["useragent"])]
    return rows, [max(row.get("percent") or 0.0, 0.0001) for row in rows]


def _is_old(row: dict) -> bool:
    major = int(float(row.get("browser_version_major_minor") or 0))
    browser = row["browser"]
    return ((browser in ("Chrome", "Edge") and major <= 116) or (browser == "Firefox" and major <= 128)
            or (browser in ("Mobile Safari", "Safari") and major <= 16))


_HINT_BRANDS = {"Chrome": "Google Chrome", "Chrome Mobile": "Google Chrome", "Edge": "Microsoft Edge"}
_HINT_PLATFORMS = {"Windows": "Windows", "Mac OS X": "macOS", "Android": "Android", "Linux": "Linux",
                   "Chrome OS": "Chrome OS", "Ubuntu": "Linux"}


def _hints(row: dict) -> dict | None:
    """The client hints the browser itself sends (Chromium browsers only), agreeing with its UA."""
    brand = _HINT_BRANDS.get(row["browser"])
    platform = _HINT_PLATFORMS.get(row["os"])
    if brand is None or platform is None:
        return None
    major = int(float(row["browser_version_major_minor"]))
    return {"sec-ch-ua": f'"Chromium";v="{major}", "{brand}";v="{major}", "Not.A/Brand";v="99"',
            "sec-ch-ua-mobile": "?1" if row["type"] == "mobile" else "?0", "sec-ch-ua-platform": f'"{platform}"'}


def _browser(rng: random.Random, old: bool = False, current: bool = False, mobile: bool | None = None) -> Browser:
    rows, weights = _browser_corpus()
    for _ in range(1000):
        row = rng.choices(rows, weights)[0] if not old else rng.choice(rows)
        if old != _is_old(row) or (current and row["browser"] not in _HINT_BRANDS):
            continue
        if mobile is not None and (row["type"] == "mobile") != mobile:
            continue
        return Browser(row["useragent"], _hints(row), _is_old(row))
    row = rng.choices(rows, weights)[0]
    return Browser(row["useragent"], _hints(row), _is_old(row))


@dataclass
class Cards:
    """Each country's issuers: a dozen BINs whose shares fall off steeply (the top one about a
    quarter of the country's cards), and prepaid programmes."""

    rng: random.Random

    def __post_init__(self):
        self.bins: dict[str, list[str]] = {}
        for country in COUNTRIES:
            self.bins[country] = [f"{self.rng.choice('45')}{self.rng.randrange(10000, 99999)}" for _ in range(12)]
        self.prepaid = [f"4{self.rng.randrange(10000, 99999)}" for _ in range(6)]
        self.weights = [1 / (rank + 1) ** 1.2 for rank in range(12)]

    def draw(self, country: str) -> tuple[str, bool]:
        """A BIN of the country, and whether it is one of the top three."""
        rank = self.rng.choices(range(12), self.weights)[0]
        return self.bins[country][rank], rank < 3


def _card_body(rng: random.Random, account: str, at: datetime, bin_: str, funding: str, issuer: str, billing: str,
               ip: str, device: str, fingerprint: str) -> dict:
    return {"account_id": account, "fingerprint": fingerprint, "bin": bin_, "last4": f"{rng.randrange(10000):04d}",
            "funding": funding, "issuer_country": issuer, "billing_country": billing, "ip": ip, "device_id": device,
            "occurred_at": _iso(at)}


def _fingerprint(rng: random.Random) -> str:
    return "pm_fp_" + "".join(rng.choice(string.ascii_lowercase) for _ in range(16))


def _arrival(rng: random.Random, start: datetime, days: float) -> datetime:
    """A moment in the period, more of them in the day than at night (local time roughly UTC)."""
    while True:
        at = start + timedelta(days=rng.uniform(0, days))
        if rng.random() < 0.35 + 0.65 * (8 <= at.hour <= 22):
            return at


def _company_domain(rng: random.Random, tag: str) -> str:
    return f"{rng.choice(LAST)}{rng.choice(['corp', 'labs', 'group', 'media', 'works'])}{tag}.com"


def _signup_body(rng: random.Random, account: str, email: str, ip: str, phone: str, browser: Browser, device: str,
                 tz: str, locale: str, form_fill: int, at: datetime) -> dict:
    """An honest signup's body: some leave the phone out, and browsers that send client hints
    mostly do."""
    body = {"account_id": account, "email": email, "ip": ip, "phone": phone, "user_agent": browser.user_agent,
            "device_id": device, "timezone": tz, "locale": locale, "form_fill_ms": form_fill, "occurred_at": _iso(at)}
    if rng.random() < 0.3:
        body.pop("phone")
    if browser.hints and rng.random() < SHARES["hints"]:
        body["client_hints"] = browser.hints
    return body


def legit_population(rng: random.Random, count: int, start: datetime, days: float, networks: Networks, cards: Cards,
                     measured_since: datetime, world: World) -> None:
    companies = [_company_domain(rng, str(i)) for i in range(200)]
    households: list[dict] = []
    for i in range(count):
        account = f"legit_{i}"
        region = rng.choices(_REGIONS, _REGION_WEIGHTS)[0]
        tz, locale, _ = COUNTRIES[region]
        at = _arrival(rng, start, days)
        traits: set[str] = set()
        first, last = rng.choice(FIRST), rng.choice(LAST)
        browser = _browser(rng, old=rng.random() < SHARES["old_browser"])
        if browser.old:
            traits.add("old_browser")
        device = _device_id(rng)
        household = None
        draw = rng.random()
        open_households = [h for h in households[-300:] if h["members"] < 3]   # two or three to a device
        if open_households and rng.random() < SHARES["shared_device"]:
            household = rng.choice(open_households)                 # a family member's computer, at home
            household["members"] += 1
            device, region, browser = household["device"], household["region"], household["browser"]
            tz, locale, _ = COUNTRIES[region]
            ip = networks.rotate(household["v6"]) if household["v6"] else household["ip"]
            traits.add("shared_device")
            if household["v6"]:
                traits.add("ipv6_rotation")
        elif draw < SHARES["vpn"]:
            ip = networks.operator(VPN_ASNS) or networks.home_v4(region)
            traits.add("vpn")
        elif draw < SHARES["vpn"] + SHARES["private_relay"]:
            ip = networks.operator(PRIVATE_RELAY_ASNS if rng.random() < 0.7 else WARP_ASNS) or networks.home_v4(region)
            traits.add("private_relay")
        elif draw < SHARES["vpn"] + SHARES["private_relay"] + SHARES["cloud_desktop"]:
            ip = networks.operator(CLOUD_DESKTOP_ASNS) or networks.home_v4(region)
            traits.add("cloud_desktop")
            if rng.random() < 0.3:                                  # managed, pinned browser builds
                browser = _browser(rng, old=True)
                traits.add("old_browser")
        elif draw < 0.15 + SHARES["shared_network"]:
            ip = networks.institution(region)
            traits.add("shared_network")
        elif draw < 0.25 + SHARES["carrier_nat"]:
            ip = networks.carrier_nat(region)
            traits.add("carrier_nat")
        elif draw < 0.50 + SHARES["ipv6_home"]:
            prefix = networks.home_v6_prefix(region)
            ip = networks.rotate(prefix) if prefix else networks.home_v4(region)
            if prefix:
                traits.add("ipv6_rotation")
            households.append({"device": device, "region": region, "browser": browser, "v6": prefix, "ip": ip,
                               "members": 1})
        else:
            ip = networks.home_v4(region)
            households.append({"device": device, "region": region, "browser": browser, "v6": None, "ip": ip,
                               "members": 1})
        home = region
        if household is None and rng.random() < SHARES["traveller"]:
            # Abroad: travelling, studying, working; the phone and often the browser stay at home.
            ip_country = rng.choice([c for c in _REGIONS if c != home])
            ip = networks.carrier_nat(ip_country) if rng.random() < 0.4 else networks.home_v4(ip_country)
            traits -= {"vpn", "private_relay", "cloud_desktop", "shared_network", "carrier_nat", "ipv6_rotation"}
            traits.add("traveller")
            if rng.random() < 0.6:
                traits.add("locale_mismatch")
            else:
                tz = COUNTRIES[ip_country][0]                       # clock set to local time
        email_draw = rng.random()
        if email_draw < SHARES["privacy_relay_email"]:
            local, _, domain = relay_address(rng).partition("@")
            email = unique_mailbox(rng, local, domain, world.mailboxes)
            traits.add("privacy_relay_email")
        else:
            local, named = mailbox(rng, first, last)
            if named:
                traits.add("name_shape")
            roll = rng.random()
            if roll < 0.70:
                domain = weighted(rng, BIG_MAIL)
                traits.add("big_free_mail")
            elif roll < 0.82 and home in NATIONAL_MAIL:
                domain = rng.choice(NATIONAL_MAIL[home])
            else:
                domain = rng.choice(companies)
            email = unique_mailbox(rng, local, domain, world.mailboxes)
        form_fill = int(rng.lognormvariate(9.4, 0.55))
        if rng.random() < SHARES["fast_form"]:
            form_fill = rng.randrange(1000, 3000)
            traits.add("fast_form")
        body = _signup_body(rng, account, email, ip, _mobile(rng, home), browser, device, tz, locale, form_fill, at)
        world.events.append(Event("signup", at, "legit", body))
        if rng.random() < SHARES["card"]:
            bin_, big = cards.draw(home)
            funding = rng.choice(["credit", "debit"])
            if rng.random() < 0.03:
                bin_, big, funding = rng.choice(cards.prepaid), False, "prepaid"   # gift and payroll cards
            if big:
                traits.add("big_bank_bin")
            later = at + timedelta(minutes=rng.lognormvariate(3.5, 1.5))
            card_ip = networks.rotate(household["v6"]) if household and household["v6"] else ip
            if ":" in ip and not household and "ipv6_rotation" in traits:
                card_ip = networks.rotate(ipaddress.ip_network(f"{ip}/64", strict=False))
            world.events.append(Event("payment_method", later, "legit", _card_body(
                rng, account, later, bin_, funding, home, home, card_ip, device, _fingerprint(rng))))
        world.accounts[account] = SimAccount("legit", at >= measured_since, traits)


def team_population(rng: random.Random, count: int, start: datetime, days: float, networks: Networks,
                    measured_since: datetime, world: World) -> None:
    """About `count` honest signups that arrive as teams onboarded together (realism.md: offices
    put their staff behind one address; a company runs several accounts): five to twelve
    colleagues within the hour from their office's one address (a business line's), each on a
    laptop of their own; most at the organisation's own domain, a startup's on free mail."""
    made = team = 0
    while made < count:
        region = rng.choices(_REGIONS, _REGION_WEIGHTS)[0]
        tz, locale, _ = COUNTRIES[region]
        office, began = networks.home_v4(region), _arrival(rng, start, days)
        domain = _company_domain(rng, f"-t{team}") if rng.random() < 0.8 else None
        for j in range(rng.randint(5, 12)):
            account, at = f"legit_team{team}_{j}", began + timedelta(minutes=rng.uniform(0, 60))
            first, last = rng.choice(FIRST), rng.choice(LAST)
            local, named = mailbox(rng, first, last)
            traits = {"team_onboarding"} | ({"name_shape"} if named else set())
            if domain is None:
                traits.add("big_free_mail")
            browser = _browser(rng, old=rng.random() < SHARES["old_browser"])
            if browser.old:
                traits.add("old_browser")
            email = unique_mailbox(rng, local, domain or weighted(rng, BIG_MAIL), world.mailboxes)
            body = _signup_body(rng, account, email, office, _mobile(rng, region), browser, _device_id(rng), tz, locale,
                                int(rng.lognormvariate(9.4, 0.55)), at)
            world.events.append(Event("signup", at, "legit", body))
            world.accounts[account] = SimAccount("legit", at >= measured_since, traits)
            made += 1
        team += 1


def farm_population(rng: random.Random, farm: int, count: int, start: datetime, days: float, networks: Networks,
                    cards: Cards, world: World) -> None:
    tactics = {"burst" if rng.random() < 0.5 else "drip"}
    # A residential proxy pool: home networks in one or many countries; some pools are mobile.
    countries = rng.sample(_REGIONS, rng.randrange(1, 6))
    mobile_proxies = rng.random() < 0.4
    tactics.add("mobile_proxy" if mobile_proxies else "residential_proxy")
    exits = [(c, networks.carrier_nat(c) if mobile_proxies and rng.random() < 0.5 else networks.home_v4(c))
             for c in (rng.choice(countries) for _ in range(rng.randrange(150, 400)))]
    regions = rng.sample(SMS_ACTIVATION_REGIONS, rng.randrange(1, 4))
    blocks = [_mobile(rng, rng.choice(regions))[:-3] for _ in range(rng.randrange(3, 9))]
    numbers = [_mobile(rng, rng.choice(regions), rng.choice(blocks)) for _ in range(max(count // 2, 1))]
    profiles = [_device_id(rng) for _ in range(max(count // rng.choice([3, 8]), 1))]     # anti-detect profiles
    domains = rng.sample(["gmail.com", "outlook.com", "yahoo.com", "hotmail.com"], 2)
    if rng.random() < 0.3:
        domains.append(f"{rng.choice(LAST)}{rng.randrange(100)}mail.com")             # a catch-all domain
        tactics.add("catch_all_domain")
    browsers = [_browser(rng, current=True) for _ in range(rng.randrange(1, 4))]
    virtual_bins = [f"5{rng.randrange(10000, 99999)}" for _ in range(2)]               # a virtual-card issuer
    farm_cards = [_fingerprint(rng) for _ in range(max(count // 6, 1))]
    billing_matches = rng.random() < 0.5          # careful farms bill to the card's own country
    if "burst" in tactics:
        waves = sorted(start + timedelta(days=rng.uniform(0, days - 0.5)) for _ in range(rng.randrange(2, 6)))
        times = [rng.choice(waves) + timedelta(hours=rng.uniform(0, rng.choice([2, 6, 20]))) for _ in range(count)]
    else:
        times = [start + timedelta(days=rng.uniform(0, days)) for _ in range(count)]      # a steady drip
    for i, at in enumerate(times):
        account = f"farm{farm}_{i}"
        exit_country, ip = rng.choice(exits)
        # Half the anti-detect profiles are set to the proxy exit's country, half are not.
        region = exit_country if rng.random() < 0.5 else rng.choice(_REGIONS)
        tz, locale, _ = COUNTRIES[region]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        local = rng.choice([f"{first}.{last}{rng.randrange(10, 99)}", f"{first}{last}{rng.randrange(100, 9999)}",
                            f"{first}.{last}", f"{last}.{first}{rng.randrange(10, 99)}"])
        browser = rng.choice(browsers)
        email = unique_mailbox(rng, local, rng.choice(domains), world.mailboxes)
        body = {"account_id": account, "email": email, "ip": ip,
                "phone": rng.choice(numbers), "user_agent": browser.user_agent, "device_id": rng.choice(profiles),
                "timezone": tz, "locale": locale, "occurred_at": _iso(at),
                "form_fill_ms": rng.randrange(1800, 9000) if rng.random() < 0.5 else int(rng.lognormvariate(9.4, 0.5))}
        if browser.hints:
            body["client_hints"] = browser.hints
        world.events.append(Event("signup", at, f"farm_{farm}", body))
        if rng.random() < 0.6:
            later = at + timedelta(minutes=rng.uniform(2, 90))
            world.events.append(Event("payment_method", later, f"farm_{farm}", _card_body(
                rng, account, later, rng.choice(virtual_bins), rng.choice(["prepaid", "debit"]), "US",
                "US" if billing_matches else rng.choice(countries), ip, body["device_id"], rng.choice(farm_cards))))
        world.accounts[account] = SimAccount(f"farm_{farm}", True, set(tactics))


def history(seed: int, legit: int, farms: int, farm_size: int, days: float, geoip=None,
            hosting_asns: frozenset = frozenset(), warmup_days: float = 2.0) -> World:
    """`legit` honest signups over `days` (plus the same rate over `warmup_days` before, not
    measured) and `farms` farms of `farm_size` accounts within the measured period."""
    rng = random.Random(seed)
    networks = Networks(random.Random(seed), geoip, hosting_asns)
    cards = Cards(random.Random(seed + 1))
    # The corpus of user agents is from 2025: the calendar is set in it, so current browsers are current.
    measured_since = datetime(2025, 5, 1, tzinfo=timezone.utc)
    start = measured_since - timedelta(days=warmup_days)
    world = World([], {}, measured_since)
    total = int(legit * (days + warmup_days) / days)
    legit_population(rng, total, start, days + warmup_days, networks, cards, measured_since, world)
    for farm in range(farms):
        farm_population(rng, farm, farm_size, measured_since, days, networks, cards, world)
    # Drawn last, from a generator of their own: the populations above are what they were before.
    team_population(random.Random(seed * 7919 + 11), int(total * SHARES["team_onboarding"]), start,
                    days + warmup_days, networks, measured_since, world)
    world.events.sort(key=lambda e: e.at)
    return world


# --- running ---------------------------------------------------------------------------------

_PATHS = {"signup": "/v1/signups", "payment_method": "/v1/payment-methods"}


def post_events(client, headers: dict, world: World, result: dict, echo=print) -> None:
    """Every signup and card, in event-time order; what each measured signup was told."""
    durations = []
    for i, event in enumerate(world.events):
        started = time.perf_counter()
        response = client.post(_PATHS[event.kind], json=event.body, headers=headers)
        durations.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{event.kind} {event.body['account_id']} refused: {response.status_code} "
                               f"{response.get_json()}")
        if event.kind == "signup" and world.accounts[event.body["account_id"]].measured:
            result["at_signup"][event.population][response.get_json()["decision"]] += 1
        if echo and (i + 1) % 1000 == 0:
            echo(f"  posted {i + 1}/{len(world.events)}")
    durations.sort()
    result["median_ms"] = durations[len(durations) // 2] * 1000 if durations else 0.0
    result["p99_ms"] = durations[int(len(durations) * 0.99)] * 1000 if durations else 0.0


def settle(client, headers: dict, world: World, result: dict, echo=print) -> None:
    """Let the cluster rescoring queued along the way finish, then read each measured account's
    final decision."""
    drain(client.application.extensions["kyc"])
    for account_id, account in world.accounts.items():
        if account.measured:
            decision = client.get(f"/v1/accounts/{account_id}", headers=headers).get_json()["decision"]
            result["final"][account.population][decision] += 1


# Phases run in order, each (client, headers, world, result, echo). A later phase (gateway usage
# reports, say) goes between post_events and settle, so that settle reads its consequences.
PHASES: list[Callable] = [post_events, settle]


def run(client, headers: dict, world: World, echo=print, phases: list[Callable] | None = None) -> dict:
    result: dict = {"at_signup": defaultdict(Counter), "final": defaultdict(Counter)}
    for phase in phases or PHASES:
        phase(client, headers, world, result, echo)
    return result


def summary(result: dict) -> dict[str, float]:
    def share(table: dict[str, Counter], populations, decisions) -> float:
        total = sum(sum(table[p].values()) for p in populations)
        hit = sum(table[p][d] for p in populations for d in decisions)
        return hit / total if total else 0.0

    farms = [p for p in result["final"] if p != "legit"]
    return {
        "farm_recall_at_signup": share(result["at_signup"], farms, ("verify", "review", "block")),
        "farm_recall_final": share(result["final"], farms, ("verify", "review", "block")),
        "legit_non_allow_at_signup": share(result["at_signup"], ["legit"], ("verify", "review", "block")),
        "legit_non_allow_final": share(result["final"], ["legit"], ("verify", "review", "block")),
        "legit_blocked_final": share(result["final"], ["legit"], ("block",)),
    }
