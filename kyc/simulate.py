"""A labeled signup history, posted through the real API in event-time order, and how it scored.

Ordinary users come from many countries, on their own devices and home or office networks,
with everyday email shapes. Farms rotate residential-proxy IPs, use anti-detect browsers (a
fresh-looking device id that is in fact a reused browser profile), generated names, and
SMS-activation numbers bought in blocks and recycled. Nothing here reads the rules: the
populations are drawn from their own descriptions, and the seed changes every draw.
"""

from __future__ import annotations

import ipaddress
import random
import string
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import phonenumbers
from phonenumbers import PhoneNumberType

from kyc.jobs import drain
from kyc.security import contains_card_number

COUNTRIES = {  # region: (timezone, locale)
    "US": ("America/New_York", "en-US"), "GB": ("Europe/London", "en-GB"), "DE": ("Europe/Berlin", "de-DE"),
    "FR": ("Europe/Paris", "fr-FR"), "BR": ("America/Sao_Paulo", "pt-BR"), "IN": ("Asia/Kolkata", "en-IN"),
    "JP": ("Asia/Tokyo", "ja-JP"), "NG": ("Africa/Lagos", "en-NG"), "MX": ("America/Mexico_City", "es-MX"),
    "ES": ("Europe/Madrid", "es-ES"), "IT": ("Europe/Rome", "it-IT"), "CA": ("America/Toronto", "en-CA"),
    "AU": ("Australia/Sydney", "en-AU"), "PL": ("Europe/Warsaw", "pl-PL"), "TR": ("Europe/Istanbul", "tr-TR"),
    "KR": ("Asia/Seoul", "ko-KR"), "PH": ("Asia/Manila", "en-PH"), "ZA": ("Africa/Johannesburg", "en-ZA"),
    "NL": ("Europe/Amsterdam", "nl-NL"), "SE": ("Europe/Stockholm", "sv-SE"),
}
FIRST = ["james", "maria", "wei", "olga", "ahmed", "sofia", "lucas", "emma", "noah", "li", "fatima", "ivan",
         "yuki", "carlos", "ana", "david", "sarah", "chen", "priya", "omar", "lena", "mateo", "zoe", "arjun",
         "hana", "tom", "nina", "felix", "amara", "kofi", "ines", "pablo", "mia", "jonas", "leila", "sam"]
LAST = ["smith", "garcia", "wang", "ivanova", "khan", "rossi", "silva", "muller", "kim", "nguyen", "patel",
        "tanaka", "lopez", "brown", "dubois", "novak", "jensen", "okafor", "haddad", "schmidt", "costa",
        "martin", "sato", "cohen", "ali", "berg", "moreau", "santos", "yilmaz", "kowalski", "reyes", "lee"]
FREE = ["gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com", "gmx.de", "web.de", "mail.ru",
        "yandex.ru", "orange.fr", "libero.it", "naver.com", "proton.me"]
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
]
SMS_ACTIVATION_REGIONS = ["GB", "ID", "RU", "PH", "NL", "SE", "PL", "KE"]


@dataclass
class Signup:
    population: str              # "legit" or "farm_<n>"
    body: dict


class Networks:
    """Home and office /24s per country, drawn from the GeoIP data the service itself reads:
    announced, not a hosting network, and located in the country. Without GeoIP data, any
    public /24 will do."""

    def __init__(self, rng: random.Random, geoip=None, hosting_asns: frozenset = frozenset(), per_country: int = 40):
        self.rng = rng
        self.by_country: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        if geoip is None or geoip.asn is None:
            return
        wanted = set(COUNTRIES)
        for _ in range(5_000_000):
            if not wanted:
                break
            addr = ipaddress.IPv4Address(rng.getrandbits(32))
            if not addr.is_global:
                continue
            facts = geoip.lookup(addr)
            country = facts.get("country")
            if (country in wanted and facts.get("announced") and facts.get("asn") not in hosting_asns
                    and not facts.get("hosting") and not facts.get("vpn")):
                octets = addr.packed
                self.by_country[country].append((octets[0], octets[1], octets[2]))
                if len(self.by_country[country]) >= per_country:
                    wanted.discard(country)

    def prefix(self, country: str) -> tuple[int, int, int]:
        pool = self.by_country.get(country)
        return self.rng.choice(pool) if pool else _public_prefix(self.rng)


def _device_id(rng: random.Random) -> str:
    # Letters only: a long all-digit id could pass the API's card-number guard.
    return "dv_" + "".join(rng.choice(string.ascii_lowercase) for _ in range(14))


def _public_ip(rng: random.Random, prefix: tuple[int, int, int] | None = None) -> str:
    if prefix is None:
        prefix = _public_prefix(rng)
    return f"{prefix[0]}.{prefix[1]}.{prefix[2]}.{rng.randrange(1, 255)}"


def _public_prefix(rng: random.Random) -> tuple[int, int, int]:
    first = rng.choice([2, 5, 24, 31, 37, 41, 46, 49, 62, 66, 71, 78, 80, 82, 86, 89, 91, 95, 101, 103, 109,
                        112, 118, 121, 125, 151, 176, 177, 179, 181, 186, 187, 188, 189, 190, 197, 200, 201])
    return first, rng.randrange(0, 256), rng.randrange(0, 256)


def _mobile(rng: random.Random, region: str, block: str | None = None) -> str:
    """A valid mobile number of the region; within `block` (E.164 without its last 3 digits) if given."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    for _ in range(200):
        if block:
            candidate = block + f"{rng.randrange(1000):03d}"
        else:
            national = str(example.national_number)
            keep = max(len(national) - 6, 1)
            candidate = f"+{example.country_code}{national[:keep]}" + "".join(
                rng.choice(string.digits) for _ in range(len(national) - keep))
        parsed = phonenumbers.parse(candidate)
        # Numbers of 13+ digits that pass the Luhn check are refused as card numbers by the API
        # (a known limitation of the card-number guard); draw another.
        if phonenumbers.is_valid_number(parsed) and not contains_card_number(candidate):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)


def _legit_email(rng: random.Random, domains: list[str]) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    shape = rng.random()
    if shape < 0.3:
        local = f"{first}.{last}"
    elif shape < 0.5:
        local = f"{first}{last}{rng.randrange(10, 99)}"
    elif shape < 0.65:
        local = f"{first[0]}{last}"
    elif shape < 0.8:
        local = f"{first}{rng.choice(['', '_', '.'])}{rng.randrange(1960, 2006)}"
    else:
        local = f"{first}{rng.choice(string.ascii_lowercase)}{rng.choice(['x', 'z', 'o', ''])}{rng.randrange(0, 999)}"
    domain = rng.choice(FREE) if rng.random() < 0.7 else rng.choice(domains)
    return f"{local}@{domain}"


def legit_population(rng: random.Random, count: int, start: datetime, days: int, networks: Networks) -> list[Signup]:
    companies = [f"{rng.choice(LAST)}{rng.choice(['corp', 'labs', 'group', 'media', 'works'])}{i}.com"
                 for i in range(300)]
    isps = ["comcast.net", "t-online.de", "free.fr", "bt.com", "virginmedia.com", "shaw.ca", "bigpond.com"]
    offices = {c: [networks.prefix(c) for _ in range(2)] for c in COUNTRIES}    # offices, campuses: shared networks
    out: list[Signup] = []
    devices: list[str] = []
    for i in range(count):
        region = rng.choice(list(COUNTRIES))
        tz, locale = COUNTRIES[region]
        # Daytime-weighted arrival over the period.
        at = start + timedelta(days=rng.uniform(0, days))
        device = _device_id(rng)
        if devices and rng.random() < 0.03:
            device = rng.choice(devices[-200:])                  # a household sharing a computer
        devices.append(device)
        ip = _public_ip(rng, rng.choice(offices[region]) if rng.random() < 0.15 else networks.prefix(region))
        body = {
            "account_id": f"legit_{i}", "email": _legit_email(rng, companies + isps), "ip": ip,
            "phone": _mobile(rng, region), "user_agent": rng.choice(BROWSERS), "device_id": device,
            "timezone": tz, "locale": locale, "form_fill_ms": int(rng.lognormvariate(9.6, 0.5)),
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
        }
        if rng.random() < 0.3:
            body.pop("phone")
        out.append(Signup("legit", body))
    return out


def farm_population(rng: random.Random, farm: int, count: int, start: datetime, days: int,
                    networks: Networks) -> list[Signup]:
    # A residential proxy pool: home networks in many countries.
    proxy_prefixes = []
    for _ in range(rng.randrange(150, 400)):
        country = rng.choice(list(COUNTRIES))
        proxy_prefixes.append((country, networks.prefix(country)))
    regions = rng.sample(SMS_ACTIVATION_REGIONS, rng.randrange(1, 4))
    blocks = []
    for _ in range(rng.randrange(3, 9)):                 # number blocks the SMS-activation service rents
        number = _mobile(rng, rng.choice(regions))
        blocks.append(number[:-3])
    numbers = [_mobile(rng, rng.choice(regions), rng.choice(blocks)) for _ in range(max(count // 2, 1))]
    profiles = [_device_id(rng) for _ in range(max(count // 3, 1))]   # anti-detect profiles
    domains = rng.sample(["gmail.com", "outlook.com", "yahoo.com", "hotmail.com"], 2)
    if rng.random() < 0.3:
        domains.append(f"{rng.choice(LAST)}{rng.randrange(100)}mail.com")             # a catch-all domain
    ua = rng.choice(BROWSERS[:2] + BROWSERS[4:5])
    waves = rng.randrange(2, 6)
    wave_starts = sorted(start + timedelta(days=rng.uniform(0, days - 1)) for _ in range(waves))
    out = []
    for i in range(count):
        at = rng.choice(wave_starts) + timedelta(hours=rng.uniform(0, rng.choice([2, 6, 20])))
        exit_country, exit_prefix = rng.choice(proxy_prefixes)
        # Half the anti-detect profiles are set to the proxy exit's country, half are not.
        region = exit_country if rng.random() < 0.5 else rng.choice(list(COUNTRIES))
        tz, locale = COUNTRIES[region]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        local = rng.choice([f"{first}.{last}{rng.randrange(1000, 9999)}", f"{first}{last}{rng.randrange(100, 9999)}",
                            f"{last}.{first}{rng.randrange(10, 99)}{rng.choice(string.ascii_lowercase)}"])
        body = {
            "account_id": f"farm{farm}_{i}", "email": f"{local}@{rng.choice(domains)}",
            "ip": _public_ip(rng, exit_prefix), "phone": rng.choice(numbers),
            "user_agent": ua, "device_id": rng.choice(profiles), "timezone": tz, "locale": locale,
            "form_fill_ms": rng.randrange(1800, 9000), "occurred_at": at.isoformat().replace("+00:00", "Z"),
        }
        out.append(Signup(f"farm_{farm}", body))
    return out


def history(seed: int, legit: int, farms: int, farm_size: int, days: int, geoip=None,
            hosting_asns: frozenset = frozenset()) -> list[Signup]:
    rng = random.Random(seed)
    networks = Networks(random.Random(seed), geoip, hosting_asns)
    start = datetime(2026, 10, 1, tzinfo=timezone.utc)
    signups = legit_population(rng, legit, start, days, networks)
    for farm in range(farms):
        signups += farm_population(rng, farm, farm_size, start, days, networks)
    signups.sort(key=lambda s: s.body["occurred_at"])
    return signups


def run(client, headers: dict, signups: list[Signup], echo=print) -> dict:
    """Post every signup, then read each account's final standing (after cluster rescoring)."""
    at_signup: dict[str, Counter] = defaultdict(Counter)
    final: dict[str, Counter] = defaultdict(Counter)
    durations = []
    for i, s in enumerate(signups):
        started = time.perf_counter()
        response = client.post("/v1/signups", json=s.body, headers=headers)
        durations.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"signup {s.body['account_id']} refused: {response.status_code} {response.get_json()}")
        at_signup[s.population][response.get_json()["decision"]] += 1
        if echo and (i + 1) % 1000 == 0:
            echo(f"  posted {i + 1}/{len(signups)}")
    drain(client.application.extensions["kyc"])         # cluster rescoring queued along the way
    for s in signups:
        account = client.get(f"/v1/accounts/{s.body['account_id']}", headers=headers).get_json()
        final[s.population][account["decision"]] += 1
    durations.sort()
    return {"at_signup": at_signup, "final": final,
            "median_ms": durations[len(durations) // 2] * 1000, "p99_ms": durations[int(len(durations) * 0.99)] * 1000}


def summary(result: dict) -> dict[str, float]:
    def share(table: dict[str, Counter], populations, decisions) -> float:
        total = sum(sum(table[p].values()) for p in populations)
        hit = sum(table[p][d] for p in populations for d in decisions)
        return hit / total if total else 0.0

    farms = [p for p in result["final"] if p != "legit"]
    return {
        "farm_recall_at_signup": share(result["at_signup"], farms, ("verify", "review", "block")),
        "farm_recall_final": share(result["final"], farms, ("verify", "review", "block")),
        "legit_non_allow_final": share(result["final"], ["legit"], ("verify", "review", "block")),
        "legit_blocked_final": share(result["final"], ["legit"], ("block",)),
    }
