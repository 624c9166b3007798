"""The simulated population: every item of realism.md among the honest users, at its magnitude,
drawn from real data (the bundled GeoIP networks, fake-useragent's browsers); farms that look
like people one by one."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from kyc import simulate as sim
from kyc.signals.device import device_signals
from kyc.signals.geoip import open_geoip



@pytest.fixture(scope="module")
def geoip():
    return open_geoip(None, None, None)


@pytest.fixture(scope="module")
def world(geoip):
    # The datacenter ASNs of the bundled network intelligence, as `kyc simulate` passes them.
    return sim.history(seed=5, legit=2000, farms=2, farm_size=80, days=2, geoip=geoip,
                       hosting_asns=geoip.netintel.datacenter_asns,
                       warmup_days=1)


def _legit(world):
    return [a for a in world.accounts.values() if a.population == "legit" and a.measured]


def _signups(world, population="legit"):
    return {e.body["account_id"]: e.body for e in world.events if e.kind == "signup" and e.population == population}


# Each realism item's share of measured honest accounts: (at least, at most).
MAGNITUDES = {
    "big_bank_bin": (0.15, 0.35),        # of everyone, about 45% add a card and most come from top BINs
    "carrier_nat": (0.15, 0.35), "ipv6_rotation": (0.08, 0.25), "shared_network": (0.05, 0.15),
    "big_free_mail": (0.50, 0.80), "name_shape": (0.25, 0.50), "privacy_relay_email": (0.03, 0.08),
    "shared_device": (0.02, 0.10), "vpn": (0.05, 0.12), "private_relay": (0.02, 0.07),
    "cloud_desktop": (0.01, 0.05), "traveller": (0.03, 0.08), "locale_mismatch": (0.01, 0.06),
    "old_browser": (0.03, 0.08), "fast_form": (0.08, 0.16), "team_onboarding": (0.01, 0.04),
}


def test_every_realism_item_is_in_the_honest_population_at_its_magnitude(world):
    assert set(MAGNITUDES) == set(sim.REALISM)
    legit = len(_legit(world))
    composition = world.composition()
    shares = {item: composition[item] / legit for item in sim.REALISM}
    for item, (low, high) in MAGNITUDES.items():
        assert low <= shares[item] <= high, (item, shares[item])


def test_networks_come_from_the_operators_they_claim(world, geoip):
    signups = _signups(world)
    asn_of = {}
    for account_id, account in world.accounts.items():
        if account.population == "legit" and account.measured:
            asn_of[account_id] = geoip.lookup(ipaddress.ip_address(signups[account_id]["ip"])).get("asn")
    traits = {i: a.traits for i, a in world.accounts.items() if i in asn_of}
    vpn = [asn_of[i] for i, t in traits.items() if "vpn" in t and not t & {"shared_device", "traveller"}]
    relay = [asn_of[i] for i, t in traits.items() if "private_relay" in t and not t & {"shared_device", "traveller"}]
    cloud = [asn_of[i] for i, t in traits.items() if "cloud_desktop" in t and not t & {"shared_device", "traveller"}]
    assert vpn and all(asn in sim.VPN_ASNS for asn in vpn)
    assert relay and all(asn in sim.PRIVATE_RELAY_ASNS + sim.WARP_ASNS for asn in relay)
    assert cloud and all(asn in sim.CLOUD_DESKTOP_ASNS for asn in cloud)
    # A carrier NAT address is shared by many subscribers; IPv6 users rotate inside their /64.
    nat = Counter(signups[i]["ip"] for i, t in traits.items() if "carrier_nat" in t and "traveller" not in t)
    assert max(nat.values()) >= 10
    v6 = [signups[i]["ip"] for i, t in traits.items() if "ipv6_rotation" in t]
    assert v6 and all(ipaddress.ip_address(ip).version == 6 for ip in v6)


def test_big_banks_hold_most_cards(world):
    bins = Counter(e.body["bin"] for e in world.events
                   if e.kind == "payment_method" and e.population == "legit" and e.body["issuer_country"] == "US")
    top = bins.most_common(1)[0][1]
    assert top / sum(bins.values()) >= 0.15


def test_user_agents_are_real_browsers_and_farms_hints_agree(world):
    rows, _ = sim._browser_corpus()
    corpus = {row["useragent"] for row in rows}
    for population in ("legit", "farm_0", "farm_1"):
        for body in _signups(world, population).values():
            assert body["user_agent"] in corpus
            facts = device_signals(body["user_agent"], body["form_fill_ms"], client_hints=body.get("client_hints"))
            assert not facts.get("bot") and not facts.get("headless")
            assert not any(facts.get(f) for f in ("hints_platform_mismatch", "hints_mobile_mismatch",
                                                  "hints_browser_mismatch")), body["user_agent"]


def test_farms_look_like_people_one_by_one_and_share_rare_identifiers(world):
    farm = _signups(world, "farm_0")
    assert all(body["email"].split("@")[1] in {"gmail.com", "outlook.com", "yahoo.com", "hotmail.com"}
               or body["email"].split("@")[1].endswith("mail.com") for body in farm.values())
    devices = Counter(body["device_id"] for body in farm.values())
    phones = Counter(body["phone"][:-3] for body in farm.values())
    assert max(devices.values()) >= 3 and max(phones.values()) >= 5
    tactics = world.composition("farm_0")
    assert tactics["burst"] + tactics["drip"] == len(farm)
    assert tactics["residential_proxy"] + tactics["mobile_proxy"] == len(farm)


def _mailboxes(emails) -> list[str]:
    from kyc.signals.email import email_identifiers

    return [dict(email_identifiers(e))["email"] for e in emails]


def test_no_two_accounts_sign_up_with_one_mailbox(world, geoip):
    """The API's owner refuses an address already registered: honest people and farms alike each
    hold their own (a farm's human-looking first.last@gmail.com had been an honest user's too, and
    linked that user into the farm's cluster). The usage phase, drawn against the same register,
    takes none of them either."""
    from kyc.usage import simulate as usage_sim

    emails = [e.body["email"] for e in world.events if e.kind == "signup"]
    assert len({e.body["account_id"] for e in world.events if e.kind == "signup"}) == len(emails)
    signed_up = _mailboxes(emails)
    assert len(set(signed_up)) == len(signed_up)
    assert {world.accounts[e.body["account_id"]].population for e in world.events} >= {"legit", "farm_0"}
    _, usage_signups = usage_sim.populations(5, 300, 10, 6, 2000, 400, 600, 40, mailboxes=set(world.mailboxes))
    later = _mailboxes(s["email"] for s in usage_signups)
    assert len(set(later)) == len(later) and not set(later) & set(signed_up)


def test_the_same_seed_draws_the_same_world(geoip):
    one = sim.history(seed=9, legit=200, farms=1, farm_size=20, days=1, geoip=geoip, warmup_days=0.5)
    two = sim.history(seed=9, legit=200, farms=1, farm_size=20, days=1, geoip=geoip, warmup_days=0.5)
    assert [e.body for e in one.events] == [e.body for e in two.events]
    three = sim.history(seed=10, legit=200, farms=1, farm_size=20, days=1, geoip=geoip, warmup_days=0.5)
    assert [e.body for e in one.events] != [e.body for e in three.events]


def test_teams_sign_up_together_from_their_office_and_leave_the_rest_as_it_was(world, geoip, monkeypatch):
    """Each team: five to twelve colleagues within an hour from one address nobody else in the
    world signs up from, each on a device of its own; most at one organisation's domain. Drawn
    last from a generator of their own, so every other signup is what the seed drew without them."""
    from datetime import datetime, timedelta

    def team(account_id: str) -> bool:
        return account_id.startswith("legit_team")

    teams: dict[str, list[dict]] = {}
    for account_id, body in _signups(world).items():
        if team(account_id):
            teams.setdefault(account_id.split("_")[1], []).append(body)
    assert len(teams) >= 3
    others = {body["ip"] for account_id, body in _signups(world).items() if not team(account_id)}
    at_own_domain = 0
    for colleagues in teams.values():
        assert 5 <= len(colleagues) <= 12
        assert len({b["ip"] for b in colleagues}) == 1 and colleagues[0]["ip"] not in others
        assert len({b["device_id"] for b in colleagues}) == len(colleagues)
        times = sorted(datetime.fromisoformat(b["occurred_at"].replace("Z", "+00:00")) for b in colleagues)
        assert times[-1] - times[0] <= timedelta(hours=1)
        domains = {b["email"].split("@")[1] for b in colleagues}
        at_own_domain += len(domains) == 1 and not domains & {d for d, _ in sim.BIG_MAIL}
    assert at_own_domain >= len(teams) // 2
    monkeypatch.setitem(sim.SHARES, "team_onboarding", 0)
    without = sim.history(seed=5, legit=2000, farms=2, farm_size=80, days=2, geoip=geoip,
                          hosting_asns=geoip.netintel.datacenter_asns, warmup_days=1)
    assert not any(team(e.body["account_id"]) for e in without.events)
    assert [e.body for e in without.events] == [e.body for e in world.events if not team(e.body["account_id"])]
