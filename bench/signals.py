"""Time the signup signals per family and in total, on real-world inputs.

Inputs: browser user agents collected from real traffic, with their share of it (fake-useragent's
data, when installed, without the rows a generator wrote, which are bots; else crawler-user-agents'
samples), phonenumbers' example numbers for every region with varied last digits, public IPv4/IPv6
addresses drawn at random, place-name based email addresses, tzdata zones and locales.

Three passes:
  cold   every input new to the process: emails, phones and addresses are distinct, and the user
         agents are taken in turn with the parsers' caches cleared (untimed) each time the list
         wraps, so every user agent is parsed as one never seen. The bound for a signup whose
         browser the worker has not met; the budget is checked here.
  warm   the same inputs again: every parser cached.
  live   what a worker serves: user agents drawn by their share of real traffic, after as much
         traffic drawn the same way (a few browsers carry most signups, and the worker has met
         them); emails, phones and addresses still new.

Baseline, measured in the same run: user-agents' own parse() of the same user agents (ua-parser's
legacy pure-Python path) -- what the device family cost before ua-parser 1.x went underneath.

Before measuring, one pass over a different set of inputs loads what a running worker has loaded
once (phonenumbers' per-region metadata and carrier tables, ua-parser's matchers, the GeoIP
pages), then the process settles as a serving one does (kyc.settle_for_serving: start-up's objects
out of the collector's full passes); then the caches are cleared so the measured inputs miss them.

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

from kyc import settle_for_serving  # noqa: E402
from kyc.config import PROJECT_ROOT  # noqa: E402
from kyc.engine.loader import load_list  # noqa: E402
from kyc.inputs import SignupInput  # noqa: E402
from kyc.signals import Lookups, _hashed, device, email, network, phone, static_signals  # noqa: E402
from kyc.signals.geoip import open_geoip  # noqa: E402
from kyc.simulate import GENERATED_CHROME  # noqa: E402  (a generator's rows: bots, not browsers)

from stats import percentile  # noqa: E402  (bench/, the script's folder)

AT = datetime(2026, 11, 24, 21, 0, tzinfo=timezone.utc)


def user_agents() -> tuple[list[str], list[float]]:
    """Distinct browser user agents and their shares of real traffic."""
    try:
        text = resources.files("fake_useragent").joinpath("data/browsers.jsonl").read_text()
    except ModuleNotFoundError:
        import crawleruseragents

        agents = sorted({ua for e in crawleruseragents.CRAWLER_USER_AGENTS_DATA for ua in e.get("instances", [])})
        return agents, [1.0] * len(agents)
    shares: dict[str, float] = {}
    for line in text.splitlines():
        row = json.loads(line)
        if not GENERATED_CHROME.search(row["useragent"]):
            shares[row["useragent"]] = shares.get(row["useragent"], 0.0) + max(row.get("percent") or 0.0, 0.0001)
    agents = sorted(shares)
    return agents, [shares[ua] for ua in agents]


def inputs(n: int, rng: random.Random, by_share: bool = False) -> list[SignupInput]:
    """n signups with distinct emails, phones and addresses; user agents in turn, or drawn by share."""
    from phonenumbers.geodata import GEOCODE_DATA

    words = sorted({w for names in list(GEOCODE_DATA.values())[:20000] if names.get("en")
                    for w in names["en"].lower().replace(",", " ").split() if w.isalpha() and len(w) > 2})
    numbers = [phonenumbers.format_number(ex, PhoneNumberFormat.E164)
               for region in sorted(phonenumbers.SUPPORTED_REGIONS)
               if (ex := phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE))]
    agents, shares = user_agents()
    drawn = rng.choices(agents, shares, k=n) if by_share else [agents[i % len(agents)] for i in range(n)]
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
                               user_agent=drawn[i],
                               client_hints={"sec-ch-ua-platform": '"Windows"', "sec-ch-ua-mobile": "?0"},
                               device_id=f"dv_{i}", timezone=rng.choice(zones), locale=rng.choice(locales),
                               form_fill_ms=rng.randrange(500, 60000)))
    return out


def clear_caches() -> None:
    for fn in (email.parse, phone.parse, phone._number_facts, network._address, network._facts, device._ua_facts):
        fn.cache_clear()
    resolver = device._parser().resolver
    resolver.cache = type(resolver.cache)(2000)


def timed(fn, items, clear_every: int | None = None) -> list[float]:
    """Microseconds per item; with clear_every, the caches are cleared (untimed) every that many items."""
    samples = []
    for n, item in enumerate(items):
        if clear_every and n % clear_every == 0:
            clear_caches()
        start = time.perf_counter_ns()
        fn(item)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def report(name: str, samples: list[float], baseline: float | None = None) -> float:
    median = statistics.median(samples)
    p99 = percentile(samples, 0.99)
    ratio = f"  {baseline / median:6.1f}x faster than baseline" if baseline else ""
    print(f"  {name:<28} median {median:8.1f} µs   p99 {p99:8.1f} µs{ratio}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 signups instead of 5000")
    parser.add_argument("-n", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (400 if args.quick else 5000)
    items = inputs(n, random.Random(7))
    live = inputs(n, random.Random(13), by_share=True)
    wraps = len(user_agents()[0])                     # the cold pass clears the caches as the agents wrap
    lists = {name: load_list(PROJECT_ROOT / "rules" / "lists" / f"{name}.txt")
             for name in ("free_email_domains", "voip_prefixes")}
    geoip = open_geoip(None, None, None)
    lookups = Lookups(lists, store=None, secret=b"bench-secret", geoip=geoip)
    warmup = inputs(2 * n, random.Random(11), by_share=True)
    for inp in warmup:                                # load-once data, as a running worker has
        static_signals(inp, lookups, AT)
    settle_for_serving()                              # as a serving process does once it has started

    from user_agents import parse as legacy_parse

    print(f"{n} signups, {wraps} distinct user agents; bundled GeoIP: city={geoip.city is not None} "
          f"asn={geoip.asn is not None}")
    print("baseline (same run):")
    base = report("user-agents parse (legacy)", timed(lambda i: legacy_parse(i.user_agent + " b"), items))
    fams = {
        "email": lambda i: email.email_signals(i.email, lists["free_email_domains"]),
        "phone": lambda i: phone.phone_signals(i.phone, None, lists["voip_prefixes"]),
        "ip": lambda i: network.network_signals(i.ip, geoip),
        "device": lambda i: device.device_signals(i.user_agent, i.form_fill_ms, client_hints=i.client_hints,
                                                  timezone=i.timezone, locale=i.locale, at=AT),
    }
    total = lambda i: _hashed(lookups, static_signals(i, lookups, AT)[1])  # noqa: E731
    for label in ("cold (every input new, every user agent unseen)", "warm (cached parsers)",
                  "live (user agents by traffic share, after as much traffic; all else new)"):
        cold, batch = label.startswith("cold"), live if label.startswith("live") else items
        if label.startswith("warm"):
            for inp in items:                         # every parser has met these inputs
                static_signals(inp, lookups, AT)
        if label.startswith("live"):
            clear_caches()
            for inp in warmup:                        # the browsers a serving worker has met
                static_signals(inp, lookups, AT)
        print(label + ":")
        for name, fn in fams.items():
            report(name, timed(fn, batch, wraps if cold else None), base if name == "device" else None)
        if cold:
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
        if label.startswith("live"):
            clear_caches()                            # emails, phones, addresses new; the user agents met
            for inp in warmup:
                device.device_signals(inp.user_agent, inp.form_fill_ms, client_hints=inp.client_hints,
                                      timezone=inp.timezone, locale=inp.locale, at=AT)
        median = report("total (4 families + ids)", timed(total, batch, wraps if cold else None))
        print(f"  target: total median < 300 µs -> {'met' if median < 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
