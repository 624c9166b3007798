"""The usage phase of `kyc simulate`: a week of API usage by labeled populations, reported by a
simulated gateway through the real API, and what kyc's decisions cost each of them.

Populations (all sign up cleanly first, weeks before the week of usage):
- light users: a few days of sporadic use, human-irregular, one or two popular tools' prompts;
- heavy users: batch jobs all day, every day, at a machine-regular pace near their tier's quota,
  on their own prompt templates (some back after a long silence); the steady ones have run for
  the eight weeks before the week, reported one day's window at a time, so kyc's usage history
  begins before the agent tool below launches (its first days are where kyc began watching);
- companies: several accounts each, one office IP, sharing the company's internal templates,
  office hours;
- users of popular tools: thousands of people sending the same few tools' system prompts;
- users of a mid-size agent tool: a few hundred developers who adopted one agent framework over
  the six weeks before the week (and during it), each running it every day since, at a
  machine-regular pace, on the tool's handful of system-prompt templates (too few users for them
  to be popular); the weeks before the week are reported one day's window at a time;
- a workshop (a course's lab session): participants who signed up weeks before, at enrolment, and
  never used the API, all begin together in one two-hour session, from the campus's one address,
  on the course's handful of templates that nobody else uses, at a human pace; about half come
  back from home on a later day. Usage alone shows what a farm's wake shows (dormant accounts
  acting together on rare templates); the pace is what differs;
- a distillation farm: clean signups through residential proxies, dormant, then waking within
  hours of each other, each account about 27 calls a day, machine-regular, drawing its prompts
  from one rare set of templates nobody else uses.

Honest accounts use the API from where people do (HABITS): most from one network a day, some
from two or three (home, the office, a café), some from a phone on a carrier's NAT pool, a VPN's
few exits, IPv6 privacy addresses in their home's /64, or jobs on a new cloud address each run.

The gateway asks nothing it would not: it serves an account's hour of traffic while the
account's last answer (a report's decision) is one the free tier tolerates, refuses it
otherwise (reporting the refused requests), and reports each hour in bulk calls of up to 1,000.
kyc's daily rescore of the held accounts refused the day before runs at 03:00 of each simulated day.
The simulated accounts complete no verifications, so the gate is the decision (free tier:
worst tolerated `verify`). Nothing here reads the rules.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from kyc.simulate import (BIG_MAIL, FIRST, LAST, NATIONAL_MAIL, SHARES, mailbox, relay_address, unique_mailbox,
                          weighted)

SIGNUPS_FROM = datetime(2026, 8, 1, tzinfo=timezone.utc)
WEEK_FROM = datetime(2026, 11, 20, tzinfo=timezone.utc)
CAMPUS_IP = "128.59.1.10"                # a university's NAT address: the lab session's one address
DAYS = 7
TOOLS = [f"pf_tool_{name}" for name in ("codeassist", "chatui", "sqlhelper", "translator", "summariser")]
AGENT_TEMPLATES = [f"pf_agent_{name}" for name in ("system", "planner", "tool_call", "critic", "summary")]
ADOPTION_DAYS = 42                       # the agent tool's users adopted it over the six weeks before the week
HEAVY_HISTORY_DAYS = 56                  # the steady heavy users ran for the eight weeks before it
TOLERATED = ("allow", "verify")          # the free tier's max_decision and below
BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
           "Safari/537.36")
# A consumer broadband network (Comcast, 73.0.0.0/8): homes and the
# residential proxies that rent them look alike.
HOME_PREFIXES = ["73"]


@dataclass
class Account:
    id: str
    population: str
    tier: str
    ip: str
    hours: dict[int, list[dict]] = field(default_factory=lambda: defaultdict(list))   # hour index -> reports


def _home_ip(rng: random.Random) -> str:
    return f"{rng.choice(HOME_PREFIXES)}.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _email(rng: random.Random, account: Account, taken: set[str]) -> str:
    """An address of the account's population as the signup phase draws people's (kyc.simulate:
    the shapes and providers of real mailboxes, some privacy relays): a company's staff at the
    company's domain, in its one shape; a course's participants, half at the university's; a farm
    human-looking at the big providers. (Every address was first.lastN@gmail.com before: each shape
    held by fewer accounts than a super-node, so coincidental links that people do not make.)"""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    if account.population == "company":
        company = account.id.split("_")[1]
        local, domain = f"{first}.{last}", f"{LAST[int(company) % len(LAST)]}-works{company}.com"
    elif account.population == "workshop" and rng.random() < 0.5:
        local, domain = f"{first[0]}{last}{rng.randrange(1, 99)}", "university.edu"
    elif account.population != "farm" and rng.random() < SHARES["privacy_relay_email"]:
        local, _, domain = relay_address(rng).partition("@")
    else:
        local = mailbox(rng, first, last)[0]
        domain = weighted(rng, BIG_MAIL) if account.population == "farm" or rng.random() < 0.8 else \
            rng.choice([d for domains in NATIONAL_MAIL.values() for d in domains])
    return unique_mailbox(rng, local, domain, taken)


def _signup(rng: random.Random, account: Account, email: str, at: datetime) -> dict:
    return {"account_id": account.id, "email": email, "ip": account.ip,
            "user_agent": BROWSER, "device_id": f"dv_{account.id}", "form_fill_ms": rng.randrange(4000, 30000),
            "timezone": "America/New_York", "locale": "en-US", "occurred_at": _z(at)}


def _z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _hour_end(hour: int) -> str:
    """When a report of the week's `hour` is filed: the end of its hour's window."""
    return _z(WEEK_FROM + timedelta(hours=hour + 1))


def _without_cv(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "interval_cv"}


def _hourly(account: Account, hour: int, requests: int, cv: float, prompts: dict[str, int], rng: random.Random,
            tokens: tuple[int, int] = (800, 1200)) -> None:
    report = {
        "account_id": account.id, "occurred_at": _hour_end(hour), "window_seconds": 3600, "requests": requests,
        "tier": account.tier, "ip": account.ip, "api_key_id": f"key_{account.id}",
        "user_agent": "python-httpx/0.27.0", "tokens_in": requests * tokens[0],
        "tokens_out": requests * tokens[1], "models": {"model-large": requests},
        "prompt_fingerprints": prompts}
    if requests >= 2:                  # the contract: absent when the window had fewer than 2
        report["interval_cv"] = round(cv, 3)
    account.hours[hour].append(report)


def _wake_later(account: Account, hours: int) -> None:
    """Move the account's usage `hours` later, each report with its hour; what falls past the week is dropped."""
    if not hours:
        return
    moved: dict[int, list[dict]] = defaultdict(list)
    for hour, reports in account.hours.items():
        if hour + hours < DAYS * 24:
            for report in reports:
                report["occurred_at"] = _hour_end(hour + hours)
            moved[hour + hours] = reports
    account.hours = moved


def _human_pace(account: Account, rng: random.Random) -> None:
    """Give the account's reports a person's irregular pace (what they carry of interval_cv)."""
    for reports in account.hours.values():
        for report in reports:
            if "interval_cv" in report:
                report["interval_cv"] = round(rng.uniform(0.6, 2.0), 3)


# Where honest accounts use the API from, report by report. Most work from one place; some from two
# or three in a day (home, the office, a café); some from a phone or its hotspot on a carrier's NAT
# pool, whose address moves between the pool's networks; some through a VPN with a few exits; some
# run their jobs on CI runners or cloud functions, a new cloud address each run; some on IPv6,
# rotating addresses inside their home's /64. The shares are this simulator's assumptions, in the
# ranges ../realism.md gives (a quarter to a third of people use a VPN at least sometimes); the
# farm's exits, an address an hour, are drawn with its usage above.
HABITS = {
    "light": {"home": 50, "places": 20, "phone": 12, "vpn": 10, "ipv6": 8},
    "tool_user": {"home": 50, "places": 20, "phone": 12, "vpn": 10, "ipv6": 8},
    "agent_tool": {"home": 45, "places": 20, "cloud_jobs": 20, "vpn": 10, "ipv6": 5},
    "heavy": {"home": 70, "cloud_jobs": 30},
    "company": {"home": 70, "remote_days": 30},          # "home" here: the office's one address
}
CARRIER_POOL = ipaddress.ip_network("172.56.0.0/14")    # T-Mobile US's carrier-grade NAT: 1,024 /24s its subscribers share
CLOUD_PREFIXES = ("3", "18", "20", "34", "52")           # AWS, Azure and Google ranges runners come from
VPN_PREFIXES = ("185", "193", "45")                      # hosting ranges commercial VPNs rent exits in


def _roam(account: Account, rng: random.Random) -> None:
    """Give an honest account's reports the addresses its habit (HABITS) uses, hour by hour."""
    habits = HABITS.get(account.population)
    if not habits:
        return
    habit = rng.choices(list(habits), weights=list(habits.values()))[0]
    if habit == "home":
        return
    places = [account.ip] + [_home_ip(rng) for _ in range(rng.randint(1, 2))]
    exits = [f"{rng.choice(VPN_PREFIXES)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
             for _ in range(rng.randint(2, 4))]
    home_64 = ipaddress.ip_network(f"2601:{rng.randrange(0x10000):x}:{rng.randrange(0x10000):x}:"
                                   f"{rng.randrange(0x10000):x}::/64")
    ip, day = account.ip, None
    for hour in sorted(account.hours):
        new_day = hour // 24 != day
        day = hour // 24
        if habit == "places":
            # A day at one place, now and then moving on (home to the office, the office to a café).
            ip = rng.choice(places) if new_day or rng.random() < 0.25 else ip
        elif habit == "phone":
            if new_day or rng.random() < 0.6:
                ip = str(CARRIER_POOL[rng.randrange(CARRIER_POOL.num_addresses)])
        elif habit == "vpn":
            ip = rng.choice(exits) if new_day or rng.random() < 0.3 else ip
        elif habit == "ipv6":
            ip = str(home_64[rng.randrange(1, 1 << 64)])       # a privacy address each hour
        elif habit == "cloud_jobs":
            ip = f"{rng.choice(CLOUD_PREFIXES)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        elif habit == "remote_days" and new_day:
            ip = places[1] if rng.random() < 0.3 else account.ip
        for report in account.hours[hour]:
            report["ip"] = ip


def _sticky_exits(account: Account) -> None:
    """Keep one proxy exit a day (a residential proxy's sticky session): each day's reports come
    from the exit its first report drew."""
    exits: dict[int, str] = {}
    for hour in sorted(account.hours):
        for report in account.hours[hour]:
            report["ip"] = exits.setdefault(hour // 24, report["ip"])


def _spread(total: int, slots: int) -> list[int]:
    base, extra = divmod(total, slots)
    return [base + (1 if i < extra else 0) for i in range(slots)]


def populations(seed: int, light: int, heavy: int, companies: int, tool_users: int, farm: int, agent_users: int = 0,
                workshop: int = 0, *, farm_wake_days: int = 1, farm_human_pace: bool = False,
                farm_sticky_exits: bool = False,
                mailboxes: set[str] | None = None) -> tuple[list[Account], list[dict]]:
    """The accounts with their week of hourly usage, and their signups (in time order). Hours
    before the week (negative) are the steady heavy users' and the agent tool's users' history,
    one report a day. `farm_wake_days`: the farm wakes over that many days, an equal share each
    day (a more careful farm; 1: within hours); `farm_human_pace`: the farm jitters its requests'
    timing as people's is (interval_cv 0.6-2.0, as the popular tools' users; the pace is measured
    on traffic the farm sends, so it can fake it); `farm_sticky_exits`: each farm account keeps
    one proxy exit a day instead of one an hour; everything else is drawn the same. `mailboxes`:
    the addresses taken already (the signup phase's World.mailboxes, added to here): no address is
    drawn twice across the phases."""
    rng = random.Random(seed)
    agent_rng = random.Random(seed * 7919 + 1)                 # the other populations draw as before
    history_rng = random.Random(seed * 7919 + 2)
    workshop_rng = random.Random(seed * 7919 + 3)
    pace_rng = random.Random(seed * 7919 + 4)
    accounts: list[Account] = []
    for i in range(light):
        a = Account(f"light_{i}", "light", "free", _home_ip(rng))
        mine = rng.sample(TOOLS, rng.choice([1, 1, 2])) + [f"pf_own_light_{i}"]
        for day in rng.sample(range(DAYS), rng.randint(1, 3)):
            for h in rng.sample(range(8, 23), rng.randint(1, 4)):
                n = rng.randint(2, 40)
                _hourly(a, day * 24 + h, n, rng.uniform(0.8, 2.5), {p: max(1, n // len(mine)) for p in mine}, rng)
        accounts.append(a)
    for i in range(heavy):
        a = Account(f"heavy_{i}", "heavy", "standard", _home_ip(rng) if i % 2 else f"34.{i}.7.9")
        own = [f"pf_batch_{i}_{k}" for k in range(rng.randint(2, 4))]
        per_day = rng.randint(5000, 9500)
        first_day = 0 if i % 4 else rng.randrange(1, 4)       # some start (or come back) mid-week
        for day in range(-HEAVY_HISTORY_DAYS, 0) if first_day == 0 else ():
            _hourly(a, day * 24 + 23, per_day, history_rng.uniform(0.01, 0.08), {p: per_day // len(own) for p in own},
                    history_rng, tokens=(1500, 400))           # history: the day's window in one report
            a.hours[day * 24 + 23][-1]["window_seconds"] = 24 * 3600
        for day in range(first_day, DAYS):
            for h, n in enumerate(_spread(per_day, 24)):
                _hourly(a, day * 24 + h, n, rng.uniform(0.01, 0.08), {p: n // len(own) for p in own}, rng,
                        tokens=(1500, 400))
        accounts.append(a)
    for c in range(companies):
        office = _home_ip(rng)
        internal = [f"pf_company_{c}_{k}" for k in range(rng.randint(4, 7))]
        for j in range(rng.randint(3, 6)):
            a = Account(f"company_{c}_{j}", "company", "standard", office)
            per_day = rng.randint(500, 4000)
            for day in range(DAYS):
                if day % 7 in (5, 6) and rng.random() < 0.8:
                    continue                                   # weekends, mostly
                for h, n in zip(range(9, 18), _spread(per_day, 9)):
                    used = rng.sample(internal, rng.randint(3, len(internal)))
                    _hourly(a, day * 24 + h, n, rng.uniform(0.05, 1.2), {p: max(1, n // len(used)) for p in used}, rng)
            accounts.append(a)
    for i in range(tool_users):
        a = Account(f"tooluser_{i}", "tool_user", "free", _home_ip(rng))
        mine = rng.sample(TOOLS, rng.choices([1, 2, 3], weights=[6, 3, 1])[0])
        for day in rng.sample(range(DAYS), rng.randint(1, 5)):
            for h in rng.sample(range(7, 24), rng.randint(1, 5)):
                n = rng.randint(1, 60)
                _hourly(a, day * 24 + h, n, rng.uniform(0.6, 2.0), {p: max(1, n // len(mine)) for p in mine}, rng)
        accounts.append(a)
    templates = [f"pf_farm_{k}" for k in range(12)]
    wake = 4 * 24 + rng.randrange(0, 12)                       # day 4 of the week, within hours
    for i in range(farm):
        a = Account(f"farm_{i}", "farm", "free", _home_ip(rng))
        start = wake + rng.randrange(0, 4)
        for day_start in range(start, DAYS * 24, 24):
            drawn = rng.sample(templates, 6)
            for h, n in zip(range(day_start, min(day_start + 24, DAYS * 24)), _spread(27, 24)):
                a.ip = _home_ip(rng)                            # a residential proxy exit per hour
                _hourly(a, h, n, rng.uniform(0.02, 0.08), {rng.choice(drawn): n} if n else {}, rng,
                        tokens=(300, 2400))
        _wake_later(a, (i % farm_wake_days) * 24)              # drawn as above, so nothing else changes
        if farm_human_pace:
            _human_pace(a, pace_rng)
        if farm_sticky_exits:
            _sticky_exits(a)
        accounts.append(a)
    for i in range(agent_users):
        a = Account(f"agent_{i}", "agent_tool", "free", _home_ip(agent_rng))
        adopted = agent_rng.randrange(-ADOPTION_DAYS, DAYS)    # spread over weeks, some during the week
        start, length = agent_rng.randrange(6, 15), agent_rng.randint(6, 10)
        per_hour = agent_rng.randint(20, 80)
        for day in range(adopted, DAYS):                       # every day since: never dormant
            cv = agent_rng.uniform(0.03, 0.2)
            if day < 0:                                        # history: the day's window in one report
                used = {t: max(1, per_hour * length // 4) for t in agent_rng.sample(AGENT_TEMPLATES, 4)}
                _hourly(a, day * 24 + start + length - 1, per_hour * length, cv, used, agent_rng)
                a.hours[day * 24 + start + length - 1][-1]["window_seconds"] = length * 3600
                continue
            for h in range(start, start + length):
                used = agent_rng.sample(AGENT_TEMPLATES, agent_rng.randint(3, 5))
                _hourly(a, day * 24 + h, per_hour, cv, {t: max(1, per_hour // len(used)) for t in used}, agent_rng)
        accounts.append(a)
    course = [f"pf_course_{seed}_{k}" for k in range(6)]
    session = workshop_rng.randrange(0, DAYS - 2) * 24 + workshop_rng.randrange(13, 19)   # 13-19 UTC: a US class
    for i in range(workshop):
        a = Account(f"workshop_{i}", "workshop", "free", CAMPUS_IP)
        for h in (session, session + 1):
            n = workshop_rng.randint(3, 40)
            used = workshop_rng.sample(course, workshop_rng.randint(3, 5))
            _hourly(a, h, n, workshop_rng.uniform(0.5, 2.0), {t: max(1, n // len(used)) for t in used}, workshop_rng)
        a.ip = _home_ip(workshop_rng)                          # signed up, and comes back, from home
        if workshop_rng.random() < 0.5:
            day = workshop_rng.randrange(session // 24 + 1, DAYS)
            n = workshop_rng.randint(2, 20)
            used = workshop_rng.sample(course, workshop_rng.randint(2, 3))
            _hourly(a, day * 24 + workshop_rng.randrange(14, 23), n, workshop_rng.uniform(0.5, 2.0),
                    {t: max(1, n // len(used)) for t in used}, workshop_rng)
        accounts.append(a)
    roam_rng = random.Random(seed * 7919 + 6)
    for a in accounts:
        _roam(a, roam_rng)
    signups = []
    email_rng, taken = random.Random(seed * 7919 + 5), mailboxes if mailboxes is not None else set()
    for a in accounts:
        at = SIGNUPS_FROM + timedelta(days=rng.uniform(0, 40))
        signups.append(_signup(rng, a, _email(email_rng, a, taken), at))
    signups.sort(key=lambda s: s["occurred_at"])
    return accounts, signups


def daily_rescore(runtime, now: datetime) -> None:
    """The daily schedule's rescore of held accounts the gateway refused the day before
    (kyc.rescore.schedule.rescore_daily), on the simulated clock. Its other run, of dormant
    accounts, selects by the wall clock, which the simulated weeks are not on."""
    from kyc.rescore.background import drain
    from kyc.rescore.batch import dispatch
    from kyc.rescore.runs import start_run

    dispatch(runtime, start_run(runtime, "refused", params={"day": (now - timedelta(days=1)).date().isoformat()},
                                reason="simulated daily schedule"))
    drain(runtime)


def run(client, headers: dict, accounts: list[Account], signups: list[dict], echo=print, *,
        interval_cv: bool = True) -> dict:
    """Sign everyone up, then play the week hour by hour through the gateway's bulk reports
    (`interval_cv=False`: a gateway that does not time requests sends no interval_cv)."""
    from kyc.rescore.background import drain

    for i, body in enumerate(signups):
        answer = client.post("/v1/signups", json=body, headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"signup {body['account_id']} refused: {answer.status_code} {answer.get_json()}")
        if echo and (i + 1) % 1000 == 0:
            echo(f"  signed up {i + 1}/{len(signups)}")
    drain(client.application.extensions["kyc"])
    population = {a.id: a.population for a in accounts}
    decision = {a.id: client.get(f"/v1/accounts/{a.id}", headers=headers).get_json()["decision"] for a in accounts}
    wanted: dict[str, int] = defaultdict(int)
    served: dict[str, int] = defaultdict(int)
    denied_accounts: dict[str, set[str]] = defaultdict(set)
    started, reports = time.perf_counter(), 0
    first = min((h for a in accounts for h in a.hours), default=0)
    for hour in range(min(first, 0), DAYS * 24):
        if hour % 24 == 3:              # the daily rescore's hour (KYC_RESCORE_DAILY_AT)
            daily_rescore(client.application.extensions["kyc"], WEEK_FROM + timedelta(hours=hour))
        batch = []
        counted = hour >= 0             # the weeks before the week are history: gated as the week is, not counted
        for a in accounts:
            for report in a.hours.get(hour, ()):
                wanted[a.population] += report["requests"] if counted else 0
                if decision[a.id] in TOLERATED:
                    served[a.population] += report["requests"] if counted else 0
                else:                                            # the gateway refuses the hour
                    denied_accounts[a.population].add(a.id)
                    report = {**_without_cv(report), "refused": report["requests"], "requests": 0,
                              "prompt_fingerprints": {}}
                batch.append(report if interval_cv else _without_cv(report))
        for i in range(0, len(batch), 1000):
            answer = client.post("/v1/activity", json={"reports": batch[i:i + 1000]}, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"bulk report refused: {answer.status_code} {answer.get_json()}")
            for result in answer.get_json()["results"]:
                decision[result["account_id"]] = result["decision"]
        reports += len(batch)
        if echo and hour % 24 == 23 and counted:
            echo(f"  day {hour // 24 + 1}: {reports} reports")
    drain(client.application.extensions["kyc"])
    final = defaultdict(lambda: defaultdict(int))
    for a in accounts:
        final[a.population][client.get(f"/v1/accounts/{a.id}", headers=headers).get_json()["decision"]] += 1
    return {"wanted": dict(wanted), "served": dict(served), "final": {p: dict(c) for p, c in final.items()},
            "denied_accounts": {p: sorted(ids) for p, ids in denied_accounts.items()},
            "accounts": {p: sum(1 for a in accounts if a.population == p) for p in set(population.values())},
            "reports": reports, "seconds": time.perf_counter() - started}


def summary(result: dict) -> dict[str, float]:
    legit = [p for p in result["wanted"] if p != "farm"]
    wanted_legit = sum(result["wanted"][p] for p in legit)
    served_legit = sum(result["served"].get(p, 0) for p in legit)
    farm_wanted = result["wanted"].get("farm", 0)
    return {
        "farm_served_share": result["served"].get("farm", 0) / farm_wanted if farm_wanted else 0.0,
        "legit_denied_share": 1 - served_legit / wanted_legit if wanted_legit else 0.0,
        "heavy_or_company_denied": float(len(result["denied_accounts"].get("heavy", ()))
                                         + len(result["denied_accounts"].get("company", ()))),
        # Of the agent tool's users and the workshop's participants, the share the gateway refused at
        # any time (the weeks before too).
        "agent_tool_denied_share": _ever_denied(result, "agent_tool"),
        "workshop_denied_share": _ever_denied(result, "workshop"),
    }


def _ever_denied(result: dict, population: str) -> float:
    accounts = result["accounts"].get(population)
    return len(result["denied_accounts"].get(population, ())) / accounts if accounts else 0.0


def report(result: dict, echo=print) -> None:
    decisions = ("allow", "verify", "review", "block")
    echo(f"\nusage week: {result['reports']} reports in {result['seconds']:.0f} s")
    echo(f"{'population':<12}{'accounts':>9}{'wanted':>11}{'served':>11}{'denied accts':>14}"
         + "".join(f"{d:>8}" for d in decisions))
    for p in sorted(result["wanted"]):
        final = result["final"].get(p, {})
        echo(f"{p:<12}{result['accounts'].get(p, 0):>9}{result['wanted'][p]:>11}{result['served'].get(p, 0):>11}"
             f"{len(result['denied_accounts'].get(p, ())):>14}" + "".join(f"{final.get(d, 0):>8}" for d in decisions))
    s = summary(result)
    echo(f"farm requests served before denial  {s['farm_served_share']:7.2%} of what it meant to send (goal <= 10%)")
    echo(f"legitimate requests denied          {s['legit_denied_share']:7.2%} (goal <= 1%)")
    echo(f"heavy-user or company accounts denied {int(s['heavy_or_company_denied'])} (goal 0)")
    if result["accounts"].get("agent_tool"):
        echo(f"agent-tool users denied at any time  {s['agent_tool_denied_share']:7.2%} of "
             f"{result['accounts']['agent_tool']} (goal 0)")
    if result["accounts"].get("workshop"):
        echo(f"workshop participants denied at any time {s['workshop_denied_share']:7.2%} of "
             f"{result['accounts']['workshop']} (goal 0)")
