"""Lockstep (kyc/usage/lockstep.py): accounts sharing uncommon prompt templates in the same
hours are a group; popular templates link nobody; a farm waking together is held at once."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from kyc import create_app
from kyc.models import Evaluation, PromptDay, PromptStart, PromptUse
from kyc.runtime import Runtime
from kyc.security import keyed_hash
from kyc.usage.lockstep import SHARED, at_least
from kyc.usage.reports import window_hours
from tests.conftest import TEST_SECRET, signup
from tests.flows import key_headers

SIGNED_UP = "2026-10-01T12:00:00Z"
WOKE = "2026-11-24"


_EMAIL_SHAPES = ("{p}.person{i}", "{p}{i}x", "x_{p}_{i}", "{p}-{i}-mail", "{i}{p}")
_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")


def _signups(client, auth, prefix: str, n: int, signed_up: str = SIGNED_UP, network: int = 1) -> list[str]:
    """`n` people signing up, each from an address of its own (in 73.x.`network`.0/24: groups signed up on
    other networks are not linked by their signup addresses)."""
    ids = []
    for i in range(n):
        account = f"{prefix}_{i}"
        # People, not a farm: addresses of many shapes at many providers.
        body = signup(account_id=account, email=_EMAIL_SHAPES[i % 5].format(p=prefix, i=i) + "@" + _DOMAINS[i // 5 % 5],
                      device_id=f"dv_{prefix}_{i}",
                      phone=None, ip=f"73.{15 + i}.{network}.{i + 1}",
                      occurred_at=signed_up)
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
        ids.append(account)
    return ids


def _report(account: str, fingerprints: dict, hour: int = 10, cv: float | None = 0.04, requests: int = 27) -> dict:
    """A report of half an hour; `cv=None`: a gateway that does not time requests sends no interval_cv."""
    report = {"account_id": account, "occurred_at": f"{WOKE}T{hour:02d}:30:00Z", "window_seconds": 1800,
              "requests": requests, "prompt_fingerprints": fingerprints, "tier": "free"}
    return report if cv is None else {**report, "interval_cv": cv}


def test_a_farm_waking_in_the_last_hour_of_a_utc_day_is_held_after_midnight(client, auth, runtime):
    """Woken counts for the wake's day and the next (activity_days.woke_on): a farm woken at 23:00
    UTC sent one template each before midnight, too few to show its group that day, and was read as
    never woken from midnight on (dormant_days 0 on its new day) and went free."""
    from kyc.models import ActivityDay

    farm = _signups(client, auth, "farm", 25)
    templates = [f"pf_farm_{k}" for k in range(6)]
    late = [_report(a, {templates[i % 6]: 5}, hour=23) for i, a in enumerate(farm)]
    results = client.post("/v1/activity", json={"reports": late}, headers=auth).json["results"]
    assert all(r["woke_up"] for r in results) and {r["decision"] for r in results} == {"allow"}
    after = [{**_report(a, {t: 5 for t in templates if t != templates[i % 6]}, hour=1),
              "occurred_at": f"{_days_before(WOKE, -1)}T01:30:00Z"} for i, a in enumerate(farm)]
    results = client.post("/v1/activity", json={"reports": after}, headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results) and {r["dormant_days"] for r in results} == {0}
    assert [r["decision"] for r in results] == ["review"] * 25
    reasons = {r["rule"] for r in client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["reasons"]}
    assert {"lockstep_farm_waking", "woke_together_on_rare_templates"} <= reasons
    # The wake is carried by each new day; woken only on its day and the next.
    later = [{**_report(farm[0], {templates[0]: 1}), "occurred_at": f"{_days_before(WOKE, -3)}T10:30:00Z"}]
    assert client.post("/v1/activity", json={"reports": later}, headers=auth).status_code == 200
    with runtime.session() as s:
        days = s.execute(select(ActivityDay.day, ActivityDay.dormant_days, ActivityDay.woke_on)
                         .where(ActivityDay.account_id == farm[0]).order_by(ActivityDay.day)).all()
    woke = date.fromisoformat(WOKE)
    assert [(d, w) for d, _, w in days] == [(woke, woke), (woke + timedelta(days=1), woke),
                                            (woke + timedelta(days=3), woke)]
    from kyc.usage.lockstep import woken
    assert [woken(w, d) for d, _, w in days] == [True, True, False]


def test_a_farm_registered_at_a_steady_drip_is_held_when_it_wakes(client, auth, runtime):
    """Farms let their accounts age before using them, registering at a steady drip: signed up one a
    day over the 40 days before the wake, three in four are younger than KYC_DORMANT_DAYS. A first
    use AGED_FIRST_USE_DAYS or more after signup is a wake for lockstep (not account.woke_up)."""
    farm = []
    for back in range(40):
        signed_up = f"{_days_before(WOKE, 40 - back)}T12:00:00Z"
        farm += _signups(client, auth, f"drip{back}", 1, signed_up=signed_up)
    # kyc has watched the gateway's usage for ten days (a first use in its own first days is where it
    # began watching, not the account's: test_a_tool_s_users_already_on_it_when_kyc_began_watching_..).
    (person,) = _signups(client, auth, "person", 1)
    _post_before(client, auth, 10, [_report(person, {"pf_own": 3})])
    # Its first hour: two of three templates each (too few for lockstep, which needs three shared),
    # so what shows the farm is that it woke together (woke_together_on_rare_templates).
    templates = [f"pf_farm_{k}" for k in range(3)]
    reports = [_report(a, {t: 5 for t in templates if t != templates[i % 3]}) for i, a in enumerate(farm)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert sum(r["woke_up"] for r in results) == 9                       # dormant more than 30 days
    held = [a for a, r in zip(farm, results) if r["decision"] == "review"]
    # All but the seven signed up in the week before (a first use then is no wake; they are held
    # once the group acts in lockstep); with the dormancy alone (9 woken of 40), none was.
    assert held == farm[:33]
    reasons = {r["rule"] for r in client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["reasons"]}
    assert "woke_together_on_rare_templates" in reasons and not {"lockstep_farm_waking", "lockstep_machine_group"} & reasons


def test_a_farm_waking_together_on_shared_rare_templates_is_held(client, auth, runtime):
    farm = _signups(client, auth, "farm", 25)
    templates = [f"pf_farm_{k}" for k in range(6)]
    # Each account draws five of the six templates: any two share at least four.
    reports = [_report(a, {t: 5 for t in templates if t != templates[i % 6]}) for i, a in enumerate(farm)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert all(r["woke_up"] for r in results)
    assert [r["decision"] for r in results] == ["review"] * 25
    account = client.get(f"/v1/accounts/{farm[0]}", headers=auth).json
    assert "lockstep_farm_waking" in {r["rule"] for r in account["reasons"]}
    assert client.get(f"/v1/accounts/{farm[0]}/entitlement?tier=free", headers=auth).json["allowed"] is False


def test_a_group_waking_together_at_a_person_s_pace_is_held_behind_many_addresses_not_on_one(client, auth, runtime):
    """Dormant accounts waking together on six rare templates at a person's pace: behind an
    address each (a farm's residential proxies) they are held; on one address (a course's lab
    session behind its campus's NAT) they are served."""
    templates = [f"pf_farm_{k}" for k in range(6)]
    farm = _signups(client, auth, "farm", 25)
    reports = [{**_report(a, {t: 5 for t in templates if t != templates[i % 6]}, cv=1.1), "ip": f"73.{40 + i}.9.9"}
               for i, a in enumerate(farm)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["review"] * 25
    assert "lockstep_farm_waking" in {r["rule"] for r in client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["reasons"]}
    assert _facts_today(runtime, farm[0])["lockstep_addresses"] == 25
    course = [f"pf_course_{k}" for k in range(6)]
    students = _signups(client, auth, "student", 25)
    reports = [{**_report(a, {t: 5 for t in course if t != course[i % 6]}, cv=1.1), "ip": "128.59.1.10"}
               for i, a in enumerate(students)]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    # (They enrolled in the same second, so the cluster their address and templates make grew by 25
    # in a day; linked only by working together, growing_cluster leaves them to the usage rules.)
    reasons = {r["rule"] for r in client.get(f"/v1/accounts/{students[0]}", headers=auth).json["reasons"]}
    assert reasons == set()
    assert all(client.get(f"/v1/accounts/{a}/entitlement?tier=free", headers=auth).json["allowed"] for a in students)
    facts = _facts_today(runtime, students[0])
    assert (facts["lockstep_accounts"], facts["lockstep_woke"], facts["lockstep_addresses"]) == (24, 24, 1)


def test_a_small_farm_waking_together_at_a_machine_pace_from_an_address_each_is_held(client, auth, runtime):
    """Ten dormant accounts waking together on six rare templates at a machine pace, each behind a
    residential proxy exit of its own: fewer than the twenty the other group rules ask, and none of
    them linked (a probe: 5, 10, 15 and 20 such accounts were served for twelve hours, 30 were
    held in their first). The same ten from one office address, or at a person's pace, are served."""
    templates = [f"pf_farm_{k}" for k in range(6)]

    def wake(prefix: str, cv: float, ip, network: int) -> list[str]:
        accounts = _signups(client, auth, prefix, 10, network=network)
        reports = [{**_report(a, {f"{prefix}_{t}": 5 for t in templates if t != templates[i % 6]}, cv=cv), "ip": ip(i)}
                   for i, a in enumerate(accounts)]
        results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
        assert all(r["woke_up"] for r in results)
        return [r["decision"] for r in results]

    assert wake("farm", 0.05, lambda i: f"73.{40 + i}.9.9", 1) == ["review"] * 10
    farm = client.get("/v1/accounts/farm_0", headers=auth).json
    assert {r["rule"] for r in farm["reasons"]} == {"small_group_waking_together"} and farm["cluster"]["size"] == 1
    usage = _usage_of(runtime, "farm_0")
    assert (usage["woke_together"], usage["woke_together_share"], usage["woke_together_addresses"]) == (9, 1.0, 10)
    assert client.get("/v1/accounts/farm_0/entitlement?tier=free", headers=auth).json["allowed"] is False
    # Served: the team's shared address links it, by working together only (which growing_cluster
    # leaves to the usage rules).
    for people in (wake("team", 0.05, lambda i: "198.51.100.20", 2), wake("class", 1.1, lambda i: f"73.{60 + i}.9.9", 3)):
        assert set(people) <= {"allow", "verify"}
    for account in ("team_0", "class_0"):
        reasons = {r["rule"] for r in client.get(f"/v1/accounts/{account}", headers=auth).json["reasons"]}
        assert "small_group_waking_together" not in reasons, (account, reasons)
        assert client.get(f"/v1/accounts/{account}/entitlement?tier=free", headers=auth).json["allowed"] is True


def test_a_farm_waking_together_is_held_before_any_two_accounts_share_three_templates(client, auth, runtime):
    farm = _signups(client, auth, "farm", 24)
    # A careful farm's first hour: one template per account and report, so no two accounts
    # share three (the pairwise lockstep sees nothing); its users woke together that day.
    reports = [_report(a, {"pf_farm_0": 2}, requests=2) for a in farm]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["review"] * 24
    reasons = {r["rule"] for r in client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["reasons"]}
    assert "woke_together_on_rare_templates" in reasons and "lockstep_machine_group" not in reasons
    assert client.get(f"/v1/accounts/{farm[0]}/entitlement?tier=free", headers=auth).json["allowed"] is False


def _statements_of_a_rescore_chunk(runtime, account_ids: list[str]) -> list[str]:
    """The statements a rescore chunk of `account_ids` sends (committed)."""
    from sqlalchemy import event

    from kyc.rescore.batch import rescore_chunk

    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        with runtime.session() as s, s.begin():
            rescore_chunk(runtime, s, account_ids, runtime.rules)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    return statements


def test_a_rescore_chunk_reads_its_group_once_and_gives_each_account_what_it_reads_alone(client, auth, runtime):
    """A rescore chunk of a cluster in lockstep reads the group's template uses (lockstep) and the
    cluster's days once for the chunk (kyc.usage.days.latest_lockstep, cluster_days), not once an
    account: a cluster of 400 in lockstep took 49 s to rescore, 82% of it reading its group again
    for each member. Each account gets the usage facts it reads on its own."""
    from kyc.models import Account, utcnow
    from kyc.rescore.background import drain
    from kyc.usage.days import latest_day, usage_facts

    farm = _signups(client, auth, "farm", 30)
    templates = [f"pf_farm_{k}" for k in range(6)]
    # One API key for all (a strong link: one cluster), five of six templates each.
    reports = [{**_report(a, {t: 5 for t in templates if t != templates[i % 6]}), "api_key_id": "key_farm"}
               for i, a in enumerate(farm)]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    assert client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["cluster"]["size"] == 30
    drain(runtime)                          # the cluster's own rescore, asked by the reports, done first
    statements = _statements_of_a_rescore_chunk(runtime, farm)
    assert len([st for st in statements if "FROM prompt_uses" in st]) <= 4      # 62 read account by account
    assert len([st for st in statements if "WHERE cluster_members.cluster_id" in st and "activity_days" in st]) == 1
    with runtime.session() as s:
        for account_id in farm:
            rescored = s.scalars(select(Evaluation).where(Evaluation.account_id == account_id)
                                 .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(1)).one()
            assert rescored.trigger == "rescore"
            day = latest_day(s, account_id)
            alone = usage_facts(runtime, s, account_id, day, day["last_at"], s.get(Account, account_id).first_seen_at,
                                adopted_by=utcnow().date())
            assert rescored.signals["usage"] == alone and alone["lockstep_accounts"] == 29


def test_a_rescore_chunk_reads_no_cluster_days_for_accounts_alone_in_their_cluster(client, auth, runtime):
    """An account alone in its cluster has its own day as its cluster's: a rescore chunk (a farm's
    wake re-evaluated in its report's transaction is one) reads no cluster days for it, and its
    usage facts are the ones it reads on its own. (1,000 such accounts read 1,000 of them.)"""
    from kyc.models import Account, utcnow
    from kyc.rescore.background import drain
    from kyc.usage.days import latest_day, usage_facts

    people = _signups(client, auth, "alone", 6)
    reports = [_report(a, {f"pf_own_{a}": 5, "pf_tool": 3}) for a in people]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["cluster"]["size"] for a in people} == {1}
    drain(runtime)
    statements = _statements_of_a_rescore_chunk(runtime, people)
    assert [st for st in statements if "cluster_members" in st and "activity_days" in st] == []
    with runtime.session() as s:
        for account_id in people:
            rescored = s.scalars(select(Evaluation).where(Evaluation.account_id == account_id)
                                 .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(1)).one()
            day = latest_day(s, account_id)
            alone = usage_facts(runtime, s, account_id, day, day["last_at"], s.get(Account, account_id).first_seen_at,
                                adopted_by=utcnow().date())
            assert rescored.trigger == "rescore" and rescored.signals["usage"] == alone
            assert alone["cluster_requests_today"] == 27


def test_a_farm_held_the_day_it_woke_stays_held_through_refused_days_and_rescores(client, auth, runtime):
    from kyc.rescore.batch import enqueue_rescore

    farm = _signups(client, auth, "farm", 24)
    reports = [_report(a, {"pf_farm_0": 2}, requests=2) for a in farm]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    # The next day the gateway refuses it everything; then a rescore (a schedule, a rules change).
    refused = {"account_id": farm[0], "occurred_at": "2026-11-25T10:30:00Z", "window_seconds": 3600,
               "requests": 0, "refused": 2, "tier": "free"}
    results = client.post("/v1/activity", json={"reports": [refused]}, headers=auth).json["results"]
    assert results[0]["decision"] == "review"
    assert enqueue_rescore(runtime, [farm[0]], "test") == 1
    account = client.get(f"/v1/accounts/{farm[0]}", headers=auth).json
    assert account["decision"] == "review"
    assert "woke_together_on_rare_templates" in {r["rule"] for r in account["reasons"]}


def test_people_waking_the_same_day_on_one_uncommon_tool_at_a_human_pace_are_served(client, auth, runtime):
    users = _signups(client, auth, "user", 24)
    reports = [_report(a, {"pf_tool_0": 2}, requests=2, cv=1.3) for a in users]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["allow"] * 24


def test_a_farm_at_a_person_s_pace_on_a_new_proxy_exit_each_hour_is_held_once_it_roams(client, auth, runtime):
    """Dormant accounts waking together on a rare template, jittered as people's requests
    are (so no machine pace, and no lockstep: no two share three templates): on a new residential
    exit each hour they are held in their third hour, when each has used three networks
    (usage.woke_together_roaming). The same group at home, one address each, is served all day."""
    from kyc.usage.lockstep import lockstep_facts

    def hours(prefix: str, roams: bool) -> tuple[list[list[str]], dict]:
        accounts = _signups(client, auth, prefix, 24)
        decisions = []
        for hour in (9, 10, 11):
            reports = [{**_report(a, {f"pf_{prefix}": 2}, hour=hour, requests=2, cv=1.2),
                        "ip": f"73.{i + 20}.{hour if roams else 1}.7"} for i, a in enumerate(accounts)]
            results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
            decisions.append(sorted({r["decision"] for r in results}))
        with runtime.session() as s:
            facts = lockstep_facts(s, [(accounts[0], date.fromisoformat(WOKE), True)],
                                   popular=runtime.config.usage_popular_prompt)[(accounts[0], date.fromisoformat(WOKE))]
        return decisions, facts

    decisions, facts = hours("farm", roams=True)
    assert decisions == [["allow"], ["allow"], ["review"]]
    assert facts["woke_together"] == 23 and 23 >= facts["woke_together_roaming"] >= 12
    reasons = {r["rule"] for r in client.get("/v1/accounts/farm_0", headers=auth).json["reasons"]}
    assert reasons == {"woke_together_on_rare_templates"}
    decisions, facts = hours("home", roams=False)
    assert decisions == [["allow"], ["allow"], ["allow"]]
    assert facts["woke_together"] == 23 and facts["woke_together_roaming"] == 0


def test_a_company_sharing_internal_templates_is_not_a_farm(client, auth, runtime):
    company = _signups(client, auth, "acme", 4)
    internal = {f"pf_acme_{k}": 50 for k in range(5)}
    reports = [{**_report(a, internal, cv=0.02, requests=2000), "tier": "standard"} for a in company]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["decision"] for r in results] == ["allow"] * 4


def test_popular_templates_link_nobody(database_url, make_config):
    rt = Runtime.start(make_config(database_url, usage_popular_prompt=10), migrate=False)
    try:
        client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
        users = _signups(client, auth, "user", 25)
        tools = {f"pf_tool_{k}": 3 for k in range(4)}          # four popular tools' system prompts
        results = client.post("/v1/activity", json={"reports": [_report(a, tools) for a in users]},
                              headers=auth).json["results"]
        assert [r["decision"] for r in results] == ["allow"] * 25
        with rt.session() as s:
            counted = s.execute(select(PromptDay.accounts)).scalars().all()
        assert counted == [25] * 4
    finally:
        rt.engine.dispose()


def test_a_farm_larger_than_the_popular_count_does_not_make_its_own_templates_popular(database_url, make_config):
    """A burst of newcomers never makes its own template popular: a farm of more accounts than
    KYC_USAGE_POPULAR_PROMPT, set going on its templates together, is held; a tool its users took
    up over the days before stays popular and links nobody."""
    rt = Runtime.start(make_config(database_url, usage_popular_prompt=10), migrate=False)
    try:
        client, auth = create_app(runtime=rt).test_client(), key_headers(rt)
        users = _signups(client, auth, "user", 25)
        tool = {f"pf_tool_{k}": 3 for k in range(4)}
        for back in range(10, 0, -1):                           # taken up over ten days, a few a day
            _post_before(client, auth, back, [_report(a, tool, cv=1.3) for a in users[:(11 - back) * 25 // 10]])
        farm = _signups(client, auth, "farm", 25)
        templates = [f"pf_farm_{k}" for k in range(6)]
        reports = [_report(a, {t: 5 for t in templates if t != templates[i % 6]}) for i, a in enumerate(farm)]
        results = client.post("/v1/activity", json={"reports": reports + [_report(a, tool, cv=1.3) for a in users]},
                              headers=auth).json["results"]
        assert [r["decision"] for r in results] == ["review"] * 25 + ["allow"] * 25
        assert _facts_today(rt, farm[0])["lockstep_accounts"] == 24 and _facts_today(rt, users[0])["lockstep_accounts"] == 0
        with rt.session() as s:
            days = {(d.value_hash, d.day.isoformat()): (d.accounts, d.began) for d in s.scalars(select(PromptDay))}
        farm_template, tool_template = (keyed_hash(TEST_SECRET, "prompt", t) for t in (templates[0], "pf_tool_0"))
        assert days[(farm_template, WOKE)] == (20, 20)          # five of the six templates each: all newcomers
        assert days[(tool_template, WOKE)] == (25, 0)
        assert days[(tool_template, _days_before(WOKE, 1))] == (25, 3)
    finally:
        rt.engine.dispose()


def test_uses_are_kept_per_template_day_and_hours(client, auth, runtime):
    (account,) = _signups(client, auth, "solo", 1)
    for hour in (9, 10, 10):
        assert client.post("/v1/activity", json={"reports": [_report(account, {"pf_a": 1, "pf_b": 2}, hour=hour)]},
                           headers=auth).status_code == 200
    with runtime.session() as s:
        uses = s.execute(select(PromptUse.value_hash, PromptUse.day, PromptUse.hours)).all()
        days = dict(s.execute(select(PromptDay.value_hash, PromptDay.accounts)).all())
    assert sorted(uses) == sorted((keyed_hash(TEST_SECRET, "prompt", f), date(2026, 11, 24), (1 << 9) | (1 << 10))
                                  for f in ("pf_a", "pf_b"))
    assert set(days.values()) == {1}
    # Another account's first use of one of them, then its second: counted once.
    (other,) = _signups(client, auth, "pair", 1)
    for hour in (11, 12):
        assert client.post("/v1/activity", json={"reports": [_report(other, {"pf_a": 1}, hour=hour)]},
                           headers=auth).status_code == 200
    with runtime.session() as s:
        days = dict(s.execute(select(PromptDay.value_hash, PromptDay.accounts)).all())
        mine = s.scalar(select(PromptUse.hours).where(PromptUse.account_id == other))
    assert days == {keyed_hash(TEST_SECRET, "prompt", "pf_a"): 2, keyed_hash(TEST_SECRET, "prompt", "pf_b"): 1}
    assert mine == (1 << 11) | (1 << 12)


def test_an_account_s_start_on_a_template_is_its_earliest_use(client, auth, runtime):
    (account,) = _signups(client, auth, "solo", 1)
    # A day, a later one, then a backfilled earlier one: the start moves back only.
    for day, prints in (("2026-11-24", {"pf_a": 1}), ("2026-11-26", {"pf_a": 1, "pf_b": 1}),
                        ("2026-11-22", {"pf_a": 1}), ("2026-11-26", {"pf_b": 3})):
        report = {**_report(account, prints), "occurred_at": f"{day}T10:30:00Z"}
        assert client.post("/v1/activity", json={"reports": [report]}, headers=auth).status_code == 200
    with runtime.session() as s:
        starts = dict(s.execute(select(PromptStart.value_hash, PromptStart.day)).all())
        began = {(d.value_hash, d.day.isoformat()): d.began for d in s.scalars(select(PromptDay))}
    a, b = (keyed_hash(TEST_SECRET, "prompt", t) for t in ("pf_a", "pf_b"))
    assert starts == {a: date(2026, 11, 22), b: date(2026, 11, 26)}
    # Each day a start was written counts a newcomer; the 24th keeps its newcomer after the start
    # moved back to the 22nd (replayed out of order: the 24th reads as more of a burst, not less).
    assert began == {(a, "2026-11-24"): 1, (a, "2026-11-26"): 0, (b, "2026-11-26"): 1, (a, "2026-11-22"): 1}


@given(sets=st.lists(st.sets(st.integers(0, 200)), max_size=12), n=st.integers(1, 5))
def test_at_least_n_sets_hold_a_bit_as_counting_says(sets, n):
    """The sets of accounts lockstep counts on are the bits of ints: a bit in `n` or more of them."""
    counts = Counter(member for members in sets for member in members)
    found = at_least(n, [sum(1 << m for m in members) for members in sets])
    assert {m for m in range(201) if found >> m & 1} == {m for m, k in counts.items() if k >= n}


def test_window_hours():
    from datetime import datetime, timezone

    at = datetime(2026, 11, 24, 10, 30, tzinfo=timezone.utc)
    assert window_hours(at, 0) == 1 << 10
    assert window_hours(at, 1800) == 1 << 10
    assert window_hours(at, 7200) == (1 << 8) | (1 << 9) | (1 << 10)


def test_a_batch_reads_the_lockstep_facts_each_account_alone_would(client, auth, runtime):
    from kyc.usage.lockstep import lockstep_facts

    farm = _signups(client, auth, "farm", 8)
    people = _signups(client, auth, "person", 4)
    templates = [f"pf_farm_{k}" for k in range(5)]
    reports = [_report(a, {t: 5 for t in templates if t != templates[i % 5]}, hour=9 + i % 2) for i, a in enumerate(farm)]
    reports += [_report(p, {f"pf_own_{i}_{k}": 2 for k in range(3)} | {templates[0]: 1}, hour=14)
                for i, p in enumerate(people)]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    day = date(2026, 11, 24)
    wanted = [(a, day, i % 3 == 0) for i, a in enumerate(farm + people)]
    settings = {"popular": runtime.config.usage_popular_prompt}
    with runtime.session() as s:
        together = lockstep_facts(s, wanted, **settings)
        alone = {w[:2]: lockstep_facts(s, [w], **settings)[w[:2]] for w in wanted}
    assert together == alone
    # The farm account at 09:00 shares four templates with the three others at 09:00, none with those
    # at 10:00 in a common hour; the people share one template with some of the farm.
    assert together[(farm[0], day)]["lockstep_accounts"] == 3 and together[(people[0], day)]["lockstep_accounts"] == 0
    assert together[(farm[0], day)]["woke_together"] == 7 and together[(farm[1], day)]["woke_together"] == 0


# A day of template uses: (account, template, hours mask) with each account's latest wake. Six of
# the twelve accounts on five templates, at least ten uses: groups sharing SHARED templates arise
# in most examples (with fewer, reading one template too few passed under most seeds).
_USE = st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(1, 0b1111))
_DAY = date(2026, 11, 24)


def _brute_force(uses: dict[tuple[str, str], int], held: Counter, woke_on: dict[str, date | None], wanted, *,
                 popular: int, starts: dict[tuple[str, str], date], since: date, signed_up: dict[str, date],
                 adopted_by: date | None = None, ips: dict[str, str | None] | None = None,
                 networks: dict[str, int] | None = None, held_now: set[str] = frozenset()):
    """The definitions of lockstep_facts, pair by pair: every other account, every template
    (`held`: template -> the accounts that used it; `starts`: (account, template) -> the day it
    began on it, the day itself when absent; `since`: kyc's first day of usage; `adopted_by`: the
    later day a rescore counts adopters by; `ips`: each account's last address of the day;
    `networks`: how many networks each account used that day; `held_now`: the accounts kyc holds now (review,
    block), which count as no adopter begun after the day read again later;
    `signed_up`: each account's signup day, a start in kyc's first days counting only for an account
    signed up on or after kyc's first day of usage;
    `woke_on`: each account's latest wake, woken on its day and the next)."""
    from kyc.usage.lockstep import BEGAN_WITHIN, ROAMING_NETWORKS

    out = {}
    near = timedelta(days=BEGAN_WITHIN)

    def uncommon(t, day):
        # Popular: more than `popular` accounts that day, fewer than half as many newcomers (begun on it
        # that day or the day before), unless the day is among kyc's first (there the count alone).
        newcomers = sum(1 for (_, t2), d in starts.items() if t2 == t and day - timedelta(days=1) <= d <= day)
        return held[t] <= popular or (newcomers * 2 >= held[t] and day > since + near)

    def counts(a, d):
        return d > since + near or signed_up[a] >= since

    for account, day, woke in wanted:
        mine = {t: h for (a, t), h in uses.items() if a == account and uncommon(t, day)}
        facts = {"lockstep_accounts": 0, "lockstep_woke": 0, "lockstep_began_together": 0, "lockstep_adopters": 0,
                 "lockstep_adopters_together": 0, "lockstep_addresses": 0, "woke_together": 0}
        if len(mine) >= SHARED or (woke and mine):
            others = {a for (a, t) in uses if t in mine and a != account}
            woken = {a for a in others if woke_on.get(a) in (day, day - timedelta(days=1))}
            if woke:
                facts["woke_together"] = len(woken)
                facts["woke_together_share"] = round(len(woken) / len(others), 4) if others else 0.0
                facts["woke_together_roaming"] = sum(1 for a in woken
                                                     if (networks or {}).get(a, 0) >= ROAMING_NETWORKS)
                facts["woke_together_addresses"] = len({(ips or {}).get(a) for a in woken | {account}} - {None})
                # Earlier adopters: the other accounts whose kept start on a template is before the day, for
                # the template with the most (the first by name of as many); and of them, those held now.

                def earlier_of(t):
                    return [a for (a, t2), d in starts.items() if t2 == t and a != account and d < day]

                if woken:                               # read for a woken group only
                    widest = max(sorted(mine), key=lambda t: len(earlier_of(t)))
                    facts["earlier_adopters"] = len(earlier_of(widest))
                    facts["earlier_adopters_held"] = sum(1 for a in earlier_of(widest) if a in held_now)
            if len(mine) >= SHARED:
                mask = 0
                for h in mine.values():
                    mask |= h
                together = {o for o in others
                            if sum(1 for t in mine if uses.get((o, t), 0) & mask) >= SHARED}
                began, group_templates = 0, set()
                for o in together:
                    shared = [t for t in mine if uses.get((o, t), 0) & mask]
                    group_templates.update(shared)
                    theirs = min(starts.get((o, t), day) for t in shared)
                    ours = min(starts.get((account, t), day) for t in shared)
                    began += (abs(theirs - ours) <= timedelta(days=BEGAN_WITHIN)
                              and counts(o, theirs) and counts(account, ours))
                # Adopters: the accounts other than this one whose start on a template is kept, by the day
                # (or the later adopted_by), for the template of the group's with the most (the first by
                # name of those with as many); of them, those begun within BEGAN_WITHIN days of this one's
                # start on it, both counted (after kyc's first days, or signed up since).
                by = max(day, adopted_by or day)

                def begun_on(t):
                    return [(a, d) for (a, t2), d in starts.items() if t2 == t and a != account and d <= by
                            and not (d > day and a in held_now)]

                def adopters_of(t):
                    # Read again later, those begun on the day itself and held now are no adopters either
                    # (but they did begin together with it).
                    return [(a, d) for a, d in begun_on(t)
                            if not (by > day and d == day and a in held_now)]

                adopters, adopters_together = 0, 0
                if group_templates:
                    widest = max(sorted(group_templates), key=lambda t: len(adopters_of(t)))
                    ours = starts.get((account, widest), day)
                    adopters = len(adopters_of(widest))
                    adopters_together = sum(1 for a, d in begun_on(widest) if abs(d - ours) <= near
                                            and counts(a, d)) if counts(account, ours) else 0
                facts.update(lockstep_accounts=len(together), lockstep_woke=len(together & woken),
                             lockstep_began_together=began, lockstep_adopters=adopters,
                             lockstep_adopters_together=adopters_together,
                             lockstep_addresses=len({(ips or {}).get(a) for a in together | {account}} - {None})
                             if together else 0)
        out[(account, day)] = facts
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uses=st.lists(_USE, min_size=10, max_size=60),
       wakes=st.lists(st.sampled_from([None, None, 0, 1, 2]), min_size=12, max_size=12),
       woke=st.lists(st.booleans(), min_size=12, max_size=12), popular=st.integers(3, 12),
       began=st.lists(st.sampled_from([None, 0, 1, 2, 3]), min_size=60, max_size=60),
       watched=st.sampled_from([0, 1, 2, 3, 4, 10]), later=st.sampled_from([None, 0, 1, 2]),
       ips=st.lists(st.sampled_from([None, "ip_a", "ip_b", "ip_c"]), min_size=12, max_size=12),
       signed=st.lists(st.sampled_from([0, 1, 3, 5, 30]), min_size=12, max_size=12),
       networks=st.lists(st.sampled_from([0, 1, 2, 3, 4, 9]), min_size=12, max_size=12),
       held_now=st.lists(st.booleans(), min_size=12, max_size=12))
def test_lockstep_facts_are_their_definition_on_generated_days(runtime, uses, wakes, woke, popular, began, watched,
                                                                 later, ips, signed, networks, held_now):
    """Whatever the day's uses, the batch read (least used templates first, then the candidates'
    uses) gives what comparing every pair of accounts gives; read again `later` days after, as a
    rescore does, the adopters counted by then."""
    from kyc.models import Account, ActivityDay
    from kyc.usage.lockstep import lockstep_facts

    day_uses: dict[tuple[str, str], int] = {}
    for account, template, hours in uses:
        key = (f"ls_{account}", f"t{template}")
        day_uses[key] = day_uses.get(key, 0) | hours
    held = Counter(t for _, t in day_uses)
    # When each (account, template) began: days before the day, or no start kept (None). An account that
    # does not use a template that day may have begun on it before (a user the gateway now refuses) or
    # after (a replayed day: it had not begun by then, so it is no adopter; one or two days after, so
    # a rescore reading the day again later counts some of them).
    starts = {(f"ls_{a}", f"t{t}"): _DAY - timedelta(days=began[a * 5 + t] if (f"ls_{a}", f"t{t}") in day_uses
                                                     else began[a * 5 + t] or -1 - a % 2)
              for a in range(12) for t in range(5) if began[a * 5 + t] is not None}
    accounts = [f"ls_{i}" for i in range(12)]
    at = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
    with runtime.session() as s, s.begin():
        for table in (PromptUse, PromptDay, PromptStart, ActivityDay, Account):     # the example before's
            s.execute(delete(table))
        # Each signed up `signed` days before the day: before kyc's first day of usage or since.
        # Each allowed, or held now (a later day's adopter held counts as none for a rescore).
        s.execute(insert(Account), [{"id": a, "first_seen_at": at - timedelta(days=d), "last_seen_at": at,
                                     "decision": "review" if h else "allow", "score": 0}
                                    for a, d, h in zip(accounts, signed, held_now)])
        # Each account's latest wake: that day, the day before (woken still), two days before or never.
        woke_on = {a: None if w is None else _DAY - timedelta(days=w) for a, w in zip(accounts, wakes)}
        s.execute(insert(ActivityDay), [{"account_id": a, "day": _DAY, "first_at": at, "last_at": at,
                                         "woke_on": woke_on[a], "last_ip_hash": ip, "networks": (1 << n) - 1}
                                        for a, ip, n in zip(accounts, ips, networks)])
        if watched:                    # kyc's first day of usage, `watched` days before (else the day)
            s.execute(insert(ActivityDay), [{"account_id": accounts[0], "day": _DAY - timedelta(days=watched),
                                             "first_at": at, "last_at": at}])
        if day_uses:
            s.execute(insert(PromptUse), [{"value_hash": t, "day": _DAY, "account_id": a, "hours": h}
                                          for (a, t), h in day_uses.items()])
            # Each template's newcomers that day and the day before: the starts kept on those days.
            newcomers = Counter((t, d) for (_, t), d in starts.items() if _DAY - timedelta(days=1) <= d <= _DAY)
            s.execute(insert(PromptDay), [{"value_hash": t, "day": _DAY, "accounts": n, "began": newcomers[(t, _DAY)]}
                                          for t, n in held.items()])
            before = [{"value_hash": t, "day": d, "accounts": n, "began": n} for (t, d), n in newcomers.items()
                      if d < _DAY]
            if before:
                s.execute(insert(PromptDay), before)
        if starts:
            s.execute(insert(PromptStart), [{"value_hash": t, "account_id": a, "day": d} for (a, t), d in starts.items()])
    wanted = [(a, _DAY, w) for a, w in zip(accounts, woke)]
    with runtime.session() as s:
        adopted_by = None if later is None else _DAY + timedelta(days=later)
        found = lockstep_facts(s, wanted, popular=popular, adopted_by=adopted_by)
    assert found == _brute_force(day_uses, held, woke_on, wanted, popular=popular,
                                 starts=starts, since=_DAY - timedelta(days=watched), adopted_by=adopted_by,
                                 signed_up={a: _DAY - timedelta(days=d) for a, d in zip(accounts, signed)},
                                 ips=dict(zip(accounts, ips)), networks=dict(zip(accounts, networks)),
                                 held_now={a for a, h in zip(accounts, held_now) if h})


def test_a_tool_s_users_some_back_from_a_break_are_not_a_farm_waking(client, auth, runtime):
    """An outside test: 600 users of an agent tool (four shared system prompts, machine pace), 60 of
    them back from a break the same day, were all blocked by lockstep_farm_waking. A farm wakes
    whole; here 21 of 50 wake (enough for the old counts: lockstep_woke >= 10, woke_together >= 20)."""
    users = _signups(client, auth, "tooluser", 50)
    tool = {f"pf_agent_{k}": 5 for k in range(4)}
    # The others started on the tool one or two a day over the weeks before: not waking today.
    regulars = users[21:]
    earlier = [{**_report(a, tool, cv=0.1), "occurred_at": f"2026-11-{1 + i % 20:02d}T10:30:00Z"}
               for i, a in enumerate(regulars)]
    assert client.post("/v1/activity", json={"reports": earlier}, headers=auth).status_code == 200
    reports = [_report(a, tool | {f"pf_own_{a}": 2}, cv=0.1) for a in users]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert sum(r["woke_up"] for r in results) == 21
    waker = _usage_of(runtime, users[0])
    assert (waker["lockstep_accounts"], waker["lockstep_woke"], waker["woke_together"]) == (49, 20, 20)
    assert waker["woke_together_share"] == round(20 / 49, 4)
    for a in users:
        answer = client.get(f"/v1/accounts/{a}", headers=auth).json
        reasons = {r["rule"] for r in answer["reasons"]}
        assert "lockstep_farm_waking" not in reasons and "woke_together_on_rare_templates" not in reasons, (a, reasons)
        assert answer["decision"] != "block"


def _facts_today(runtime, account: str) -> dict:
    """The lockstep facts of an account on WOKE, read as a report that day would (not woken)."""
    from kyc.usage.lockstep import lockstep_facts

    with runtime.session() as s:
        return lockstep_facts(s, [(account, date.fromisoformat(WOKE), False)],
                              popular=runtime.config.usage_popular_prompt)[(account, date.fromisoformat(WOKE))]


def _usage_of(runtime, account: str, trigger: str | None = None, first: bool = False) -> dict:
    """The usage facts of the account's latest evaluation (`first`: its earliest), of `trigger` only if given."""
    order = (Evaluation.created_at, Evaluation.id) if first else (Evaluation.created_at.desc(), Evaluation.id.desc())
    query = select(Evaluation.signals).where(Evaluation.account_id == account)
    if trigger is not None:
        query = query.where(Evaluation.trigger == trigger)
    with runtime.session() as s:
        return s.execute(query.order_by(*order).limit(1)).scalar_one()["usage"]


def _days_before(day: str, n: int) -> str:
    from datetime import timedelta

    return (date.fromisoformat(day) - timedelta(days=n)).isoformat()


def _post_before(client, auth, back: int, reports: list[dict], time: str = "10:30:00") -> None:
    """Post `reports` in one bulk call as of `back` days before WOKE, at `time`."""
    day = _days_before(WOKE, back)
    reports = [{**report, "occurred_at": f"{day}T{time}Z"} for report in reports]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200


def _own_trickle(client, auth, accounts: list[str], days: int = 10, last: int = 1) -> None:
    """A request a day on each account's own template, at a human pace, over the `days` days
    before WOKE up to `last` days before it: active, so not waking today."""
    for back in range(days, last - 1, -1):
        _post_before(client, auth, back, [_report(a, {f"pf_own_{a}": 1}, requests=1, cv=1.5) for a in accounts],
                     time="08:30:00")


# Machine-regular traffic, and a gateway that does not time requests (no interval_cv): a group's
# beginnings decide alone then (lockstep_machine_group).
PACES = pytest.mark.parametrize("cv", [0.1, None], ids=["machine_pace", "no_interval_cv"])


@PACES
def test_an_agent_tool_s_users_who_adopted_it_over_weeks_are_not_a_machine_group(client, auth, runtime, cv):
    """An outside red-team: 600 of 600 users of a mid-size agent tool (its handful of system
    prompts, machine-regular, never dormant) were held by lockstep_machine_group. They share the
    tool's templates in the same hours, as a farm does; but they began on them one or two a day
    over weeks, where a farm's accounts begin together (CopyCatch's window)."""
    users = _signups(client, auth, "agent", 24)
    tool = {f"pf_agent_{k}": 5 for k in range(4)}
    # User i adopted the tool 24 - i days before today and has used it every day since.
    for back in range(24, 0, -1):
        _post_before(client, auth, back, [_report(a, tool, cv=cv) for a in users[:25 - back]])
    results = client.post("/v1/activity", json={"reports": [_report(a, tool, cv=cv) for a in users]},
                          headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results)
    facts = _facts_today(runtime, users[12])
    # In lockstep with all 23 others today; of those, only the neighbours in adoption began with it.
    assert facts["lockstep_accounts"] == 23 and facts["lockstep_began_together"] == 2
    assert [r["decision"] for r in results] == ["allow"] * 24


@PACES
def test_a_farm_that_began_on_its_templates_together_is_held_without_waking(client, auth, runtime, cv):
    """Never dormant (its accounts kept up a trickle of their own traffic), a farm still begins on
    its shared templates together: lockstep_machine_group holds it."""
    farm = _signups(client, auth, "farm", 24)
    _own_trickle(client, auth, farm)
    templates = {f"pf_farm_{k}": 5 for k in range(4)}
    results = client.post("/v1/activity", json={"reports": [_report(a, templates, cv=cv) for a in farm]},
                          headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results)
    assert [r["decision"] for r in results] == ["review"] * 24
    reasons = {r["rule"] for r in client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["reasons"]}
    assert "lockstep_machine_group" in reasons


@PACES
def test_a_tool_s_next_adopters_are_not_a_machine_group_while_its_first_are_refused(client, auth, runtime, cv):
    """A tool's earlier adopters that the gateway refuses today send no templates, so today's lockstep
    group is only the newest adopters, all begun together. In `kyc simulate --usage` that held each next
    day's adopters of an agent tool in turn; the tool's adopters (prompt_starts) still count everyone."""
    tool = {f"pf_agent_{k}": 5 for k in range(4)}
    earlier = _signups(client, auth, "early", 60)
    for i in range(0, 60, 6):                       # six a day over the ten days before, then refused
        _post_before(client, auth, 3 + i // 6, [_report(a, tool, cv=cv) for a in earlier[i:i + 6]])
    newest = _signups(client, auth, "newest", 24)
    _own_trickle(client, auth, newest)
    results = client.post("/v1/activity", json={"reports": [_report(a, tool, cv=cv) for a in newest]},
                          headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results)
    usage = _facts_today(runtime, newest[0])
    # Today's group alone began together, as a farm's does; the tool's adopters are 83 besides this one.
    assert (usage["lockstep_accounts"], usage["lockstep_began_together"], usage["lockstep_adopters"]) == (23, 23, 83)
    assert [r["decision"] for r in results] == ["allow"] * 24


@PACES
def test_a_farm_s_remnant_is_a_machine_group_while_the_gateway_refuses_the_rest(client, auth, runtime, cv):
    """The mirror of the tool's next adopters: 40 of a farm's accounts began on its templates
    yesterday and are held (refused today, they send no templates); 24 more began today. Today's
    group alone is 24 of 63 adopters, as a tool's newest adopters are; but every adopter began within a day of
    this one (lockstep_adopters_together), where the tool's began over weeks. `kyc simulate --usage` without
    interval_cv: the farm's accounts whose lockstep group stayed small on the day it woke were served
    for the rest of the week, 25% of what the farm meant to send."""
    templates = {f"pf_farm_{k}": 5 for k in range(4)}
    first, rest = _signups(client, auth, "first", 40), _signups(client, auth, "rest", 24)
    # Their own trickle before (not dormant), on other days than the farm's: a day's interval_cv is
    # its reports' that gave one.
    _own_trickle(client, auth, first, last=2)
    _own_trickle(client, auth, rest)
    _post_before(client, auth, 1, [_report(a, templates, cv=cv) for a in first], time="11:30:00")
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in first} == {"review"}
    refused = [{**_report(a, {}, cv=None), "requests": 0, "refused": 27} for a in first]
    results = client.post("/v1/activity", json={"reports": refused + [_report(a, templates, cv=cv) for a in rest]},
                          headers=auth).json["results"][40:]
    usage = _facts_today(runtime, rest[0])
    assert (usage["lockstep_accounts"], usage["lockstep_began_together"], usage["lockstep_adopters"],
            usage["lockstep_adopters_together"]) == (23, 23, 63, 63)
    assert [r["decision"] for r in results] == ["review"] * 24
    reasons = {r["rule"] for r in client.get(f"/v1/accounts/{rest[0]}", headers=auth).json["reasons"]}
    assert "lockstep_machine_group" in reasons


def test_a_tool_s_users_already_on_it_when_kyc_began_watching_are_not_a_machine_group(client, auth, runtime):
    """kyc put in front of a gateway sees every account's templates first on its first days: those
    starts are where kyc began watching (left-censored), not where the accounts began on them.
    Read as beginnings, a tool's existing users all 'began together' that day, for good."""
    users = _signups(client, auth, "existing", 24, signed_up="2026-11-12T12:00:00Z")   # not dormant
    tool = {f"pf_agent_{k}": 5 for k in range(4)}
    for back in (2, 1):                              # kyc's first day of usage: two days before today
        _post_before(client, auth, back, [_report(a, tool, cv=0.1) for a in users])
    results = client.post("/v1/activity", json={"reports": [_report(a, tool, cv=0.1) for a in users]},
                          headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results)
    facts = _facts_today(runtime, users[0])
    assert (facts["lockstep_accounts"], facts["lockstep_began_together"], facts["lockstep_adopters"]) == (23, 0, 23)
    assert [r["decision"] for r in results] == ["allow"] * 24


@pytest.mark.parametrize("signed_up", ["2026-11-24T08:00:00Z", "2026-11-23T08:00:00Z"], ids=["since", "before"])
def test_a_farm_signed_up_on_kyc_s_first_day_of_usage_and_querying_at_once_is_held(client, auth, runtime, signed_up):
    """A start in kyc's first days counts for an account signed up on or after its first day of usage:
    kyc saw every use it made. Censored, a farm that signed up and queried in a fresh kyc's first day
    (machine-paced, on twelve rare templates, an address each) went free: none of 30 held in 30 hours.
    An account signed up before then may have used the API unseen, as a gateway's existing customers
    did (the test above): its start there stays censored."""
    farm = _signups(client, auth, "farm", 30, signed_up=signed_up)
    templates = [f"pf_farm_{k}" for k in range(12)]
    for hour in range(9, 15):                        # kyc's first day of usage: the farm's first hours
        reports = [{**_report(a, {templates[(i + hour) % 12]: 20, templates[(5 * i + hour) % 12]: 7}, hour=hour),
                    "ip": f"73.{40 + i}.{hour}.9"} for i, a in enumerate(farm)]
        results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert not any(r["woke_up"] for r in results)
    facts = _facts_today(runtime, farm[0])
    if signed_up.startswith("2026-11-24"):
        assert facts["lockstep_began_together"] == facts["lockstep_accounts"] >= 20
        assert facts["lockstep_adopters_together"] == facts["lockstep_adopters"] >= 20
        assert [r["decision"] for r in results] == ["review"] * 30
        reasons = client.get(f"/v1/accounts/{farm[0]}", headers=auth).json["reasons"]
        assert "lockstep_machine_group" in {r["rule"] for r in reasons}
    else:
        assert (facts["lockstep_began_together"], facts["lockstep_adopters_together"]) == (0, 0)
        assert facts["lockstep_accounts"] >= 20


@pytest.mark.parametrize("waking", [False, True], ids=["active_before", "waking_on_launch"])
def test_a_tool_s_launch_adopters_held_as_a_group_are_released_once_it_grows_and_a_farm_is_not(
        client, auth, runtime, waking):
    """A tool's first users begin on it together, as a farm's accounts do, and are held. Held, they
    send nothing that would re-evaluate them: `kyc simulate --usage` found them held for good. The
    daily rescore takes the held accounts the gateway refused the day before, and counts the
    templates' adopters known now that kyc does not hold: the tool has grown past twice its first
    users, the farm has not.
    `waking`: the first users signed up long before and wake on the tool's launch day, as a farm
    waking does (lockstep_farm_waking); `kyc simulate --usage --seed 7373` found 22 of them
    blocked for good when that rule blocked."""
    from kyc.rescore.background import drain
    from kyc.rescore.schedule import rescore_daily

    tool = {f"pf_agent_{k}": 5 for k in range(4)}
    farm_templates = {f"pf_farm_{k}": 5 for k in range(4)}
    launch, farm = _signups(client, auth, "launch", 24), _signups(client, auth, "farm", 24)
    later = _signups(client, auth, "later", 25) + _signups(client, auth, "newer", 25)   # (50 of one prefix share mailboxes)
    held = launch + farm
    active = farm + later + ([] if waking else launch)
    for back in range(16, 12, -1):                  # kyc watching since 16 days before: dormant only if waking
        _post_before(client, auth, back, [_report(a, {f"pf_own_{a}": 1}, requests=1, cv=1.5) for a in active])
    _post_before(client, auth, 12, [_report(a, tool, cv=0.1) for a in launch]
                 + [_report(a, farm_templates) for a in farm])
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in held} == {"review"}
    for back in range(11, 0, -1):
        # The gateway refuses the held accounts; five new users a day take up the tool (not twenty within
        # three days: those would begin together, lockstep_machine_group).
        refused = [{**_report(a, {}), "requests": 0, "refused": 27} for a in held]
        newcomers = later[(10 - back) * 5:(11 - back) * 5] if back <= 10 else []
        _post_before(client, auth, back, refused + [_report(a, tool, cv=0.1) for a in newcomers])
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in later} == {"allow"}
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in held} == {"review"}

    dormant, refused_run = rescore_daily(runtime, now=datetime.fromisoformat(f"{WOKE}T03:00:00+00:00"))
    drain(runtime)
    assert refused_run.total == 48                   # the held accounts refused the day before, no one else
    for a in launch:
        assert client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] == "allow", a
        assert client.get(f"/v1/accounts/{a}/entitlement?tier=free", headers=auth).json["allowed"] is True
    # The first rescore's (the run of refused accounts; those after it count the launch peers, released).
    usage = _usage_of(runtime, launch[0], trigger="rescore", first=True)
    # Began (and woke) together with its 23 launch peers; 50 adopters by now that kyc does not hold (the
    # newcomers: the launch peers, held now, are no growth, kyc.usage.lockstep._HELD_SINCE), more than twice as
    # many. With 46 newcomers or fewer, the launch adopters stay held (before, 24 newcomers released them).
    assert (usage["lockstep_began_together"], usage["lockstep_adopters"]) == (23, 50)
    assert usage["lockstep_woke"] == (23 if waking else 0)
    for a in farm:
        answer = client.get(f"/v1/accounts/{a}", headers=auth).json
        assert answer["decision"] == "review" and "lockstep_machine_group" in {r["rule"] for r in answer["reasons"]}


@pytest.mark.parametrize("second_wave", [(2, "10:30:00"), (1, "15:30:00")], ids=["next_day", "later_same_day"])
def test_a_farm_waking_in_waves_on_the_same_templates_does_not_release_its_first_wave(client, auth, runtime,
                                                                                       second_wave):
    """A farm at a person's pace, an address per account, wakes in two waves on the same templates,
    a day apart or hours apart the same day; each wave is held (lockstep_farm_waking). The daily
    rescore of refused accounts reads the first wave's day again with the adopters known now: the
    second wave, begun since or later that day and held, is no growth of the templates' own
    (kyc.usage.lockstep._HELD_SINCE). Counted, it made 44 adopters against the first wave's 20 woken
    in lockstep (hours apart, the second wave is not in the first's lockstep group) and released the
    whole first wave: `kyc simulate --usage --usage-farm-human-pace --usage-farm-sticky-exits --seed
    4646`, its farm waking within hours, ended its week with 15 of its 400 accounts allowed, released
    so; after, none. (A second wave no larger than the first is not held by this rule: counted live,
    the held first wave is among everyone who took up the templates, and the second is not half of
    them.)"""
    from kyc.rescore.background import drain
    from kyc.rescore.schedule import rescore_daily

    first_back, second_time = second_wave
    templates = {f"pf_farm_{k}": 5 for k in range(4)}
    first, second = _signups(client, auth, "farm", 21), _signups(client, auth, "wave", 24)
    watcher = _signups(client, auth, "watcher", 1)
    _post_before(client, auth, 12, [_report(a, {"pf_own": 1}, requests=1, cv=1.5) for a in watcher])   # kyc watching

    def wave(accounts: list[str], base: int) -> list[dict]:
        return [{**_report(a, templates, cv=1.2), "ip": f"73.{base + i}.3.3"} for i, a in enumerate(accounts)]

    _post_before(client, auth, first_back, wave(first, 20), time="09:30:00")
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in first} == {"review"}
    refused = [{**_report(a, {}), "requests": 0, "refused": 27} for a in first]
    _post_before(client, auth, 1, refused + wave(second, 60), time=second_time)
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in second} == {"review"}

    _, refused_run = rescore_daily(runtime, now=datetime.fromisoformat(f"{WOKE}T03:00:00+00:00"))
    drain(runtime)
    assert refused_run.total == 21                   # the first wave, refused the day before
    for a in first:
        answer = client.get(f"/v1/accounts/{a}", headers=auth).json
        assert answer["decision"] == "review" and "lockstep_farm_waking" in {r["rule"] for r in answer["reasons"]}, a
    usage = _usage_of(runtime, first[0], trigger="rescore")
    # Of the 44 begun by now, none that kyc does not hold (the first wave's own 20 others are held too).
    assert (usage["lockstep_woke"], usage["lockstep_adopters"]) == (20, 0)


def test_a_farm_s_next_wave_at_a_person_s_pace_on_sticky_exits_is_held_on_its_first_reports(client, auth, runtime):
    """A farm's second wave wakes on the templates of its first, held the day before: at a person's
    pace, an address each that it keeps all day (no roaming), one template each so far (no
    lockstep). What gives it away is whom it follows: those who began on its templates before are
    held (usage.earlier_adopters_held). `kyc simulate --usage --usage-farm-human-pace
    --usage-farm-wake-days 3 --usage-farm-sticky-exits`: each wave was served about nine hours of its
    first day. A group of people back from a break on templates whose earlier users are served, the
    same reports otherwise, is served."""
    templates = {f"pf_farm_{k}": 5 for k in range(4)}
    first, second = _signups(client, auth, "farm", 21), _signups(client, auth, "wave", 24)
    watcher = _signups(client, auth, "watcher", 1)
    _post_before(client, auth, 12, [_report(a, {"pf_own": 1}, requests=1, cv=1.5) for a in watcher])   # kyc watching
    _post_before(client, auth, 2, [{**_report(a, templates, cv=1.2), "ip": f"73.{20 + i}.3.3"}
                                   for i, a in enumerate(first)])
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in first} == {"review"}
    refused = [{**_report(a, {}), "requests": 0, "refused": 27} for a in first]
    _post_before(client, auth, 1, refused + [{**_report(a, {"pf_farm_0": 2, f"pf_farm_{1 + i % 3}": 1}, requests=3,
                                                        cv=1.2), "ip": f"73.{60 + i}.3.3"}
                                             for i, a in enumerate(second)])
    for a in second:
        answer = client.get(f"/v1/accounts/{a}", headers=auth).json
        assert answer["decision"] == "review", a
        assert "woke_together_on_rare_templates" in {r["rule"] for r in answer["reasons"]}, a
    usage = _usage_of(runtime, second[0])
    assert (usage["woke_together"], usage["woke_together_roaming"], usage["lockstep_accounts"]) == (23, 0, 0)
    assert (usage["earlier_adopters"], usage["earlier_adopters_held"]) == (21, 21)


def test_people_back_from_a_break_on_templates_whose_earlier_users_are_served_are_served(client, auth, runtime):
    """The control of the test above: the same second wave, the templates' earlier users served."""
    templates = {f"pf_farm_{k}": 5 for k in range(4)}
    earlier, second = _signups(client, auth, "user", 21), _signups(client, auth, "wave", 24)
    _own_trickle(client, auth, earlier, days=12, last=3)              # active users: they wake no one
    _post_before(client, auth, 2, [{**_report(a, templates, cv=1.2), "ip": f"73.{100 + i}.3.3"}
                                   for i, a in enumerate(earlier)])
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in earlier} == {"allow"}
    _post_before(client, auth, 1, [{**_report(a, {"pf_farm_0": 2, f"pf_farm_{1 + i % 3}": 1}, requests=3, cv=1.2),
                                    "ip": f"73.{60 + i}.3.3"} for i, a in enumerate(second)])
    assert {client.get(f"/v1/accounts/{a}", headers=auth).json["decision"] for a in second} == {"allow"}
    usage = _usage_of(runtime, second[0])
    assert (usage["woke_together"], usage["earlier_adopters"], usage["earlier_adopters_held"]) == (23, 21, 0)
