"""Time the signup signals per family and in total, on distinct real-world inputs.

Inputs: browser user agents collected from real traffic (fake-useragent's data, when installed;
else crawler-user-agents' samples), phonenumbers' example numbers for every region with varied
last digits, public IPv4/IPv6 addresses drawn at random, place-name based email addresses,
tzdata zones and locales. Every input is distinct, so the parsers' caches miss as they do on
live traffic ("cold"); a second pass over the same inputs shows the cached ("warm") cost.

Baseline, measured in the same run: user-agents' own parse() of the same user agents (ua-parser's
legacy pure-Python path) -- what the device family cost before ua-parser 1.x went underneath.

Before measuring, one pass over a different set of inputs loads what a running worker has loaded
once (phonenumbers' per-region metadata and carrier tables, ua-parser's matchers, the GeoIP
pages); then the caches are cleared so the measured inputs still miss them.

    python bench/signals.py            # 5000 signups
    python bench/signals.py --quick    # 400 signups
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import phonenumbers  # noqa: E402
from phonenumbers import PhoneNumberFormat  # noqa: E402

from kyc.config import PROJECT_ROOT  # noqa: E402
from kyc.engine.loader import load_list  # noqa: E402
from kyc.inputs import SignupInput  # noqa: E402
from kyc.signals import Lookups, _hashed, device, email, network, phone, static_signals  # noqa: E402
from kyc.signals.geoip import open_geoip  # noqa: E402

AT = datetime(2026, 11, 24, 21, 0, tzinfo=timezone.utc)


def user_agents() -> list[str]:
    try:
        text = resources.files("fake_useragent").joinpath("data/browsers.jsonl").read_text()
        return sorted({json.loads(line)["useragent"] for line in text.splitlines()})
    except ModuleNotFoundError:
        import crawleruseragents

        return sorted({ua for e in crawleruseragents.CRAWLER_USER_AGENTS_DATA for ua in e.get("instances", [])})


def inputs(n: int, rng: random.Random) -> list[SignupInput]:
    from phonenumbers.geodata import GEOCODE_DATA

    words = sorted({w for names in list(GEOCODE_DATA.values())[:20000] if names.get("en")
                    for w in names["en"].lower().replace(",", " ").split() if w.isalpha() and len(w) > 2})
    numbers = [phonenumbers.format_number(ex, PhoneNumberFormat.E164)
               for region in sorted(phonenumbers.SUPPORTED_REGIONS)
               if (ex := phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE))]
    agents = user_agents()
    zones = sorted(device._zone_countries())
    locales = ["en-US", "en-GB", "de-DE", "fr-FR", "pt-BR", "es-MX", "ja-JP", "zh-CN", "hi-IN", "ru"]
    domains = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "mailinator.com", "example.org"]
    out = []
    for i in range(n):
        if rng.random() < 0.8:
            ip = str(ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24)))
        else:
            ip = str(ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(120)))
        number = rng.choice(numbers)
        number = number[:-3] + f"{rng.randrange(1000):03d}"
        local = f"{rng.choice(words)}.{rng.choice(words)}{rng.randrange(100)}" if rng.random() < 0.7 else \
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))
        out.append(SignupInput(account_id=f"a{i}", email=f"{local}@{rng.choice(domains)}", ip=ip, phone=number,
                               user_agent=agents[i % len(agents)] + ("" if i < len(agents) else f" x{i}"),
                               client_hints={"sec-ch-ua-platform": '"Windows"', "sec-ch-ua-mobile": "?0"},
                               device_id=f"dv_{i}", timezone=rng.choice(zones), locale=rng.choice(locales),
                               form_fill_ms=rng.randrange(500, 60000)))
    return out


def clear_caches() -> None:
    for fn in (email.parse, phone.parse, phone._number_facts, network._address, device._ua_facts):
        fn.cache_clear()
    resolver = device._parser().resolver
    resolver.cache = type(resolver.cache)(2000)


def timed(fn, items) -> list[float]:
    samples = []
    for item in items:
        start = time.perf_counter_ns()
        fn(item)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def report(name: str, samples: list[float], baseline: float | None = None) -> float:
    samples = sorted(samples)
    median = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    ratio = f"  {baseline / median:6.1f}x faster than baseline" if baseline else ""
    print(f"  {name:<28} median {median:8.1f} µs   p99 {p99:8.1f} µs{ratio}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 signups instead of 5000")
    parser.add_argument("-n", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (400 if args.quick else 5000)
    rng = random.Random(7)
    items = inputs(n, rng)
    lists = {name: load_list(PROJECT_ROOT / "rules" / "lists" / f"{name}.txt")
             for name in ("free_email_domains", "voip_prefixes")}
    geoip = open_geoip(None, None, None)
    lookups = Lookups(lists, store=None, secret=b"bench-secret", geoip=geoip)
    warmup = inputs(2 * n, random.Random(11))
    for inp in warmup:                                # load-once data, as a running worker has
        static_signals(inp, lookups, AT)

    from user_agents import parse as legacy_parse

    print(f"{n} distinct signups; bundled GeoIP: city={geoip.city is not None} asn={geoip.asn is not None}")
    print("baseline (same run):")
    base = report("user-agents parse (legacy)", timed(lambda i: legacy_parse(i.user_agent + " b"), items))
    for label in ("cold (caches miss)", "warm (cached parsers)"):
        if label.startswith("cold"):
            clear_caches()
        print(label + ":")
        fams = {
            "email": lambda i: email.email_signals(i.email, lists["free_email_domains"]),
            "phone": lambda i: phone.phone_signals(i.phone, None, lists["voip_prefixes"]),
            "ip": lambda i: network.network_signals(i.ip, geoip),
            "device": lambda i: device.device_signals(i.user_agent, i.form_fill_ms, client_hints=i.client_hints,
                                                      timezone=i.timezone, locale=i.locale, at=AT),
        }
        for name, fn in fams.items():
            report(name, timed(fn, items), base if name == "device" else None)
        if label.startswith("cold"):
            # Parts of the families above, on the same inputs: the network-intelligence lookup
            # (inside ip) and the positive browser model (inside device's parse).
            parsed = [(network._address(i.ip), i) for i in items]
            report("  of ip: netintel lookup", timed(lambda p: geoip.netintel.facts(p[0][0], None), parsed))
            agents = [(device._ParsedAgent(i.user_agent), i.user_agent) for i in items]
            report("  of device: browser model", timed(
                lambda a: device._model_mismatch(a[1], a[0].browser.family,
                                                 a[0].browser.version[0] if a[0].browser.version else None,
                                                 a[0].os.family, a[0].os.version[0] if a[0].os.version else None),
                agents))
        if label.startswith("cold"):
            clear_caches()
        total = report("total (4 families + ids)",
                       timed(lambda i: _hashed(lookups, static_signals(i, lookups, AT)[1]), items))
        print(f"  target: total median < 300 µs -> {'met' if total < 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
