"""The activity contract v1.1: every field of a report validated and stored, identifiers hashed,
and the bulk endpoint (all or nothing, errors keyed by index, 4 MiB bodies). Both backends."""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import func, select

from kyc.models import Account, ActivityDay, ActivityReport, Evaluation, GraphEdge, PromptUse, Sighting
from kyc.security import keyed_hash
from kyc.signals.usage import usage_signals
from kyc.usage.reports import network_bit, spread
from tests.conftest import TEST_SECRET, signup

FULL = {
    "occurred_at": "2026-11-24T21:00:00Z", "window_seconds": 3600, "requests": 1200, "ip": "203.0.113.7",
    "api_key_id": "key_91ab", "tier": "standard", "user_agent": "python-httpx/0.27.0",
    "tokens_in": 250000, "tokens_out": 910000, "models": {"model-large": 1150, "model-small": 50},
    "prompt_fingerprints": {"pf_3c9a1e": 800, "pf_77d1b0": 400}, "interval_cv": 0.08, "refused": 40,
}


@pytest.fixture
def accounts(client, auth):
    for i in range(3):
        body = signup(account_id=f"acct_{i}", email=f"jane.smith{i}@gmail.com", device_id=f"dv_{i}", phone=None,
                      occurred_at="2026-11-20T12:00:00Z")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
    return ["acct_0", "acct_1", "acct_2"]


def _counts(runtime) -> tuple[int, int, list]:
    with runtime.session() as s:
        return (s.scalar(select(func.count()).select_from(ActivityReport)),
                s.scalar(select(func.count()).select_from(ActivityDay)),
                s.execute(select(Account.id, Account.last_seen_at, Account.state_version).order_by(Account.id)).all())


def test_every_field_is_stored_and_identifiers_only_hashed(client, auth, runtime, accounts, caplog):
    caplog.set_level(logging.DEBUG)
    answer = client.post("/v1/accounts/acct_0/activity", json=FULL, headers=auth)
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body["account_id"] == "acct_0" and body["requests_today"] == 1200 and body["decision"] == "allow"
    with runtime.session() as s:
        report = s.execute(select(ActivityReport)).scalar_one()
        day = s.get(ActivityDay, ("acct_0", date(2026, 11, 24)))
        raw = json.dumps([list(map(str, s.execute(select(ActivityReport.__table__)).one())),
                          list(map(str, s.execute(select(ActivityDay.__table__)).one()))])
    assert report.window_seconds == 3600 and report.requests == 1200 and report.refused == 40
    assert report.tier == "standard" and report.user_agent == "python-httpx/0.27.0"
    assert (report.tokens_in, report.tokens_out, report.interval_cv) == (250000, 910000, 0.08)
    assert report.models == FULL["models"]
    assert report.ip_hash == keyed_hash(TEST_SECRET, "ip", "203.0.113.7")
    assert report.api_key_hash == keyed_hash(TEST_SECRET, "api_key", "key_91ab")
    assert report.prompt_fingerprints == {keyed_hash(TEST_SECRET, "prompt", f): n
                                          for f, n in FULL["prompt_fingerprints"].items()}
    # The day's totals: an hour-long window ending at 21:00 lies in hour 20.
    assert day.requests == 1200 and day.refused == 40 and day.tier == "standard"
    assert day.hours[20] == 1200 and sum(day.hours) == 1200
    assert day.cv_sum == pytest.approx(0.08 * 1200) and day.cv_requests == 1200
    assert day.models == FULL["models"] and sorted(day.fingerprints.values()) == [400, 800]
    # Nothing the rest of kyc hashes is stored or logged in clear.
    for clear in ("203.0.113.7", "key_91ab", "pf_3c9a1e", "pf_77d1b0"):
        assert clear not in raw
        assert clear not in caplog.text


def test_every_optional_field_may_be_sent_as_null(client, auth, runtime, accounts):
    """A gateway sends what it has: null stands for a field it does not have (window_seconds: a
    single moment, its default)."""
    body = {name: None for name in FULL if name != "requests"} | {"requests": 7}
    answer = client.post("/v1/accounts/acct_0/activity", json=body, headers=auth)
    assert answer.status_code == 200, answer.json
    assert answer.json["requests_today"] == 7
    with runtime.session() as s:
        report = s.scalars(select(ActivityReport)).one()
        assert report.window_seconds == 0 and report.ip_hash is None and report.models is None


def test_a_late_report_counts_in_its_own_day(client, auth, runtime, accounts):
    post = lambda **b: client.post("/v1/accounts/acct_0/activity", json=b, headers=auth).json  # noqa: E731
    post(occurred_at="2026-11-24T10:00:00Z", requests=10, tier="free")
    post(occurred_at="2026-11-25T10:00:00Z", requests=20, tier="standard")
    late = post(occurred_at="2026-11-24T11:00:00Z", requests=5, tier="standard")
    assert late["day"] == "2026-11-24" and late["requests_today"] == 15
    assert late["last_seen_at"] == "2026-11-25T10:00:00Z"
    with runtime.session() as s:
        day = s.get(ActivityDay, ("acct_0", date(2026, 11, 24)))
        # moments on the hour: the hour before's, as hours are (h:00, h+1:00] (spread)
        assert day.tier == "standard" and day.hours[9] == 10 and day.hours[10] == 5


def test_a_window_ending_at_midnight_counts_in_the_day_it_covers(client, auth, runtime, accounts):
    """A gateway reporting hourly on the hour: 00:00:00Z with a window of an hour is 23:00-24:00 of
    the day before (its hour 23), not the next day's; a single moment at midnight is the new day's."""
    post = lambda **b: client.post("/v1/accounts/acct_0/activity", json=b, headers=auth).json  # noqa: E731
    post(occurred_at="2026-11-24T23:00:00Z", window_seconds=3600, requests=10)
    last = post(occurred_at="2026-11-25T00:00:00Z", window_seconds=3600, requests=7)
    assert (last["day"], last["requests_today"]) == ("2026-11-24", 17)
    moment = post(occurred_at="2026-11-25T00:00:00Z", requests=1)
    assert (moment["day"], moment["requests_today"]) == ("2026-11-25", 1)
    with runtime.session() as s:
        day = s.get(ActivityDay, ("acct_0", date(2026, 11, 24)))
        assert (day.hours[22], day.hours[23]) == (10, 7)
        assert s.get(ActivityDay, ("acct_0", date(2026, 11, 25))).hours[0] == 1
        sent = sorted(r.occurred_at for r in s.scalars(select(ActivityReport)))
        assert [t.isoformat() for t in sent] == ["2026-11-24T23:00:00+00:00", "2026-11-25T00:00:00+00:00",
                                                 "2026-11-25T00:00:00+00:00"]      # stored as sent


def test_the_day_keeps_its_baseline_and_first_use(client, auth, runtime, accounts):
    for d in range(1, 11):
        r = client.post("/v1/accounts/acct_0/activity",
                        json={"occurred_at": f"2026-11-{d:02d}T12:00:00Z", "requests": 100 * d}, headers=auth)
        assert r.status_code == 200
    with runtime.session() as s:
        day = s.get(ActivityDay, ("acct_0", date(2026, 11, 10)))
        first = s.get(ActivityDay, ("acct_0", date(2026, 11, 1)))
    assert first.history_days == 0 and first.first_used_at.isoformat().startswith("2026-11-01T12:00")
    assert day.history_days == 9 and day.baseline == pytest.approx(sum(100 * d for d in range(1, 10)) / 9)
    assert day.first_used_at == first.first_used_at


def test_the_day_counts_the_networks_its_reports_came_from(client, auth, runtime, accounts):
    """Addresses of one /24 (or an IPv6 /64, its privacy addresses) are one network; each other is one
    more, in one bulk call or across calls; a report without an IP adds none."""
    ips = ["73.1.2.3", "73.1.2.99", "2601:1:2:3::5", "2601:1:2:3:aaaa::9", "172.56.9.1", None, "198.51.100.4"]
    reports = [{"account_id": "acct_0", "occurred_at": f"2026-11-24T{10 + i:02d}:00:00Z", "requests": 5,
                **({"ip": ip} if ip else {})} for i, ip in enumerate(ips[:4])]
    assert client.post("/v1/activity", json={"reports": reports}, headers=auth).status_code == 200
    for i, ip in enumerate(ips[4:]):
        body = {"occurred_at": f"2026-11-24T{15 + i:02d}:00:00Z", "requests": 5, **({"ip": ip} if ip else {})}
        assert client.post("/v1/accounts/acct_0/activity", json=body, headers=auth).status_code == 200
    with runtime.session() as s:
        networks = s.get(ActivityDay, ("acct_0", date(2026, 11, 24))).networks
    # Four networks, each a bucket of the day's set, unless two hashed to one (1 in 63 a pair).
    expected = {network_bit(keyed_hash(TEST_SECRET, "ip_prefix", n))
                for n in ("73.1.2.0/24", "2601:1:2:3::/64", "172.56.9.0/24", "198.51.100.0/24")}
    assert networks == sum(expected) and networks.bit_count() == len(expected)
    assert usage_signals({"day": date(2026, 11, 24), "networks": networks, "requests": 20, "first_at": None,
                          "last_at": None}, datetime(2026, 11, 24, 18, tzinfo=timezone.utc), None,
                         {})["networks_today"] == len(expected)


def test_each_day_keeps_the_latest_wake_within_one_batch_and_across_batches(client, auth, runtime, accounts):
    """activity_days.woke_on: the day a report ended a dormancy longer than KYC_DORMANT_DAYS (or was
    the account's first use 7 days or more after signup, once kyc has watched usage for two days),
    carried by each later day, whether the batch that starts it also started the wake or not."""
    # Another account's usage from the 1st: kyc has watched since then.
    assert client.post("/v1/accounts/acct_2/activity", headers=auth,
                       json={"occurred_at": "2026-11-01T09:00:00Z", "requests": 1}).status_code == 200
    # acct_0 (signed up on the 20th) first uses the API on the 29th: a first use 9 days after signup.
    # acct_1 on the 21st (a day after signup: no wake), then again on the 29th.
    reports = [{"account_id": a, "occurred_at": at, "requests": 1} for a, at in (
        ("acct_0", "2026-11-29T10:00:00Z"), ("acct_0", "2026-11-30T10:00:00Z"),
        ("acct_1", "2026-11-21T10:00:00Z"), ("acct_1", "2026-11-29T10:00:00Z"))]
    results = client.post("/v1/activity", json={"reports": reports}, headers=auth).json["results"]
    assert [r["woke_up"] for r in results] == [False] * 4            # account.woke_up: dormancy only
    assert client.post("/v1/accounts/acct_0/activity", headers=auth,
                       json={"occurred_at": "2026-12-04T10:00:00Z", "requests": 1}).status_code == 200
    with runtime.session() as s:
        found = s.execute(select(ActivityDay.account_id, ActivityDay.day, ActivityDay.woke_on)
                          .where(ActivityDay.account_id != "acct_2")
                          .order_by(ActivityDay.account_id, ActivityDay.day)).all()
    woke = date(2026, 11, 29)
    assert [(a, d.isoformat(), w) for a, d, w in found] == [
        ("acct_0", "2026-11-29", woke), ("acct_0", "2026-11-30", woke), ("acct_0", "2026-12-04", woke),
        ("acct_1", "2026-11-21", None), ("acct_1", "2026-11-29", None)]


@pytest.mark.parametrize("window,at,expected", [
    (0, "2026-11-24T21:30:00+00:00", {21: 100}),
    (3600, "2026-11-24T21:30:00+00:00", {20: 50, 21: 50}),
    (7200, "2026-11-24T21:00:00+00:00", {19: 50, 20: 50}),
    (86400, "2026-11-24T01:00:00+00:00", {0: 100}),
    # An hour is (h:00, h+1:00], as a window is (at - window, at]: what ends on the hour is the
    # hour before's (a gateway reporting hourly, on the hour); a day's first moment is its hour 0.
    (0, "2026-11-24T21:00:00+00:00", {20: 100}),
    (0, "2026-11-24T00:00:00+00:00", {0: 100}),
])
def test_a_window_is_spread_over_the_hours_it_covers(window, at, expected):
    from datetime import datetime

    hours = spread([0] * 24, datetime.fromisoformat(at), window, 100)
    assert {h: n for h, n in enumerate(hours) if n} == expected


@pytest.mark.parametrize("at,window", [("2026-11-24T15:00:00Z", 3600), ("2026-11-24T15:00:00Z", 0),
                                       ("2026-11-24T15:20:00Z", 1200), ("2026-11-24T15:20:00Z", 0)])
def test_the_hour_of_the_latest_report_holds_its_requests(client, auth, runtime, accounts, at, window):
    """usage.requests_hour reads the hour the report's requests were put in (an hourly report
    ending on the hour was read from the next, empty hour: the rules on it never fired)."""
    from datetime import datetime

    from kyc.signals.usage import usage_signals

    body = {"occurred_at": at, "window_seconds": window, "requests": 20000}
    assert client.post("/v1/accounts/acct_0/activity", json=body, headers=auth).status_code == 200
    with runtime.session() as s:
        row = s.get(ActivityDay, ("acct_0", date(2026, 11, 24)))
        day = {c: getattr(row, c) for c in ActivityDay.__table__.c.keys()}
    moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    assert usage_signals(day, moment, None, {})["requests_hour"] == 20000


def test_bulk_records_every_report_in_order(client, auth, runtime, accounts):
    reports = [{"account_id": a, **FULL, "requests": 10 * (i + 1)} for i, a in enumerate(accounts)]
    reports.append({"account_id": "acct_0", "requests": 1, "occurred_at": "2026-11-24T21:05:00Z"})
    answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [r["account_id"] for r in results] == ["acct_0", "acct_1", "acct_2", "acct_0"]
    assert [r["requests_today"] for r in results] == [10, 20, 30, 11]
    assert all(r["decision"] == "allow" for r in results)
    reports_stored, days, _ = _counts(runtime)
    assert (reports_stored, days) == (4, 3)


def test_bulk_is_all_or_nothing_with_errors_keyed_by_index(client, auth, runtime, accounts):
    before = _counts(runtime)
    reports = [{"account_id": "acct_0", "requests": 5}, {"account_id": "acct_1", "requests": 5},
               {"account_id": "acct_2", "requests": 5}, {"account_id": "acct_1", "requests": -1},
               {"account_id": "acct_2", "requests": 5, "prompt_fingerprints": {f"pf{i}": 1 for i in range(101)}}]
    answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
    assert answer.status_code == 400
    fields = answer.json["error"]["fields"]
    assert set(fields) == {"reports[3].requests", "reports[4].prompt_fingerprints"}, fields
    assert "100" in fields["reports[4].prompt_fingerprints"]
    unknown = client.post("/v1/activity", json={"reports": [{"account_id": "acct_0", "requests": 5},
                                                            {"account_id": "acct_nobody", "requests": 5}]}, headers=auth)
    assert unknown.status_code == 400
    assert unknown.json["error"]["fields"] == {"reports[1].account_id": "unknown account"}
    tier = client.post("/v1/activity", json={"reports": [{"account_id": "acct_0", "requests": 5, "tier": "gold"}]},
                       headers=auth)
    assert tier.status_code == 400 and "reports[0].tier" in tier.json["error"]["fields"]
    assert _counts(runtime) == before


def test_a_report_naming_an_unknown_account_writes_nothing_anywhere(client, auth, runtime, accounts):
    """The tables a report writes hold no foreign key to accounts (migration 0020): the batch's
    own check (its accounts locked, an unknown one refuses the batch) is what keeps rows of
    unknown accounts out, from every table a report writes or links into."""
    tables = (ActivityDay, ActivityReport, Sighting, PromptUse, GraphEdge)

    def rows() -> list[int]:
        with runtime.session() as s:
            return [s.scalar(select(func.count()).select_from(t)) for t in tables]

    before = rows()
    known = {**FULL, "account_id": "acct_0", "api_key_id": "key_shared"}
    unknown = {**FULL, "account_id": "acct_nobody", "api_key_id": "key_shared"}
    answer = client.post("/v1/activity", json={"reports": [known, unknown]}, headers=auth)
    assert answer.status_code == 400
    assert answer.json["error"]["fields"] == {"reports[1].account_id": "unknown account"}
    single = client.post("/v1/accounts/acct_nobody/activity", json=FULL, headers=auth)
    assert single.status_code == 404
    assert rows() == before
    with runtime.session() as s:
        assert all(s.scalar(select(func.count()).select_from(t).where(t.account_id == "acct_nobody")) == 0
                   for t in tables)
    # The same reports without the unknown account are recorded: nothing else refused them.
    assert client.post("/v1/activity", json={"reports": [known]}, headers=auth).status_code == 200
    assert all(after > was for after, was in zip(rows(), before))


@pytest.mark.parametrize("body,field", [
    ({"reports": []}, "reports"),
    ({"reports": [{"account_id": "acct_0", "requests": 1}] * 1001}, "reports"),
    ({"reports": [{"account_id": "acct_0", "requests": 1}], "extra": 1}, "extra"),
    ({}, "reports"),
])
def test_bulk_envelope_is_checked(client, auth, runtime, accounts, body, field):
    answer = client.post("/v1/activity", json=body, headers=auth)
    assert answer.status_code == 400 and field in answer.json["error"]["fields"], answer.json


def test_bulk_accepts_bodies_up_to_4_mib_and_only_there(client, auth, runtime, accounts):
    padding = "x" * 1000
    reports = [{"account_id": accounts[i % 3], "requests": 1, "user_agent": padding} for i in range(1000)]
    body = json.dumps({"reports": reports})
    assert 65536 < len(body) < 4 * 1024 * 1024
    ok = client.post("/v1/activity", data=body, content_type="application/json", headers=auth)
    assert ok.status_code == 200 and len(ok.json["results"]) == 1000
    too_big = json.dumps({"reports": reports, "pad": "y" * (4 * 1024 * 1024)})
    assert client.post("/v1/activity", data=too_big, content_type="application/json", headers=auth).status_code == 413
    single = json.dumps({"requests": 1, "user_agent": "x" * 70000})
    assert client.post("/v1/accounts/acct_0/activity", data=single, content_type="application/json",
                       headers=auth).status_code == 413


_names = st.text(alphabet="abcdef_0123456789", min_size=1, max_size=12)
# Numbers of at most 12 digits in all (a float's digits on both sides of its point count, the
# point reads as a separator): a 13-19 digit one passing the Luhn check is a card number, which
# the request guard refuses before any field is read (tests/test_card_numbers.py tests that).
_BIG = 10**12 - 1
_ints = st.integers(min_value=-_BIG, max_value=_BIG)
_floats = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False).map(lambda x: round(x, 2))
_bad_values = {
    "requests": st.one_of(st.integers(min_value=-_BIG, max_value=-1), st.integers(min_value=10**9 + 1, max_value=_BIG),
                          st.text(max_size=4), _floats, st.none(), st.booleans()),
    "window_seconds": st.one_of(st.integers(min_value=-_BIG, max_value=-1),
                                st.integers(min_value=7 * 86400 + 1, max_value=_BIG), st.text(max_size=3)),
    "tokens_in": st.one_of(st.integers(min_value=-_BIG, max_value=-1), st.text(max_size=3), _floats),
    "interval_cv": st.one_of(st.floats(min_value=-1e9, max_value=-0.01).map(lambda x: round(x, 2)),
                             st.floats(min_value=1000.01, max_value=1e9).map(lambda x: round(x, 2)), st.text(max_size=3)),
    # "::" is an address (IPv6's unspecified one): a generated text is not one by construction.
    "ip": st.text(alphabet="xyz:.", min_size=1, max_size=20).filter(lambda t: t != "::"),
    "models": st.one_of(st.dictionaries(_names, st.integers(min_value=-_BIG, max_value=-1), min_size=1, max_size=3),
                        st.lists(_ints, max_size=2)),
    "prompt_fingerprints": st.dictionaries(_names, st.integers(min_value=0, max_value=5), min_size=101, max_size=110),
    "occurred_at": st.text(alphabet="abc-:T0", max_size=10),
}


def test_a_refused_batch_names_every_report_to_drop_at_once(client, auth, runtime, accounts):
    """A field refused, an unknown tier and an unknown account, in one batch: all three in one
    answer, so a gateway that drops them and resends the rest succeeds at the second call."""
    before = _counts(runtime)
    reports = [{"account_id": "acct_0", "requests": 5}, {"account_id": "acct_nobody", "requests": 5},
               {"account_id": "acct_1", "requests": -5}, {"account_id": "acct_2", "requests": 5, "tier": "gold"},
               {"account_id": "acct_ghost", "requests": "x"}]
    answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
    assert answer.status_code == 400
    fields = answer.json["error"]["fields"]
    assert set(fields) == {"reports[1].account_id", "reports[2].requests", "reports[3].tier",
                           "reports[4].account_id", "reports[4].requests"}, fields
    assert fields["reports[1].account_id"] == "unknown account" and "unknown tier" in fields["reports[3].tier"]
    tier_and_account = client.post("/v1/activity", json={"reports": [
        {"account_id": "acct_nobody", "requests": 5}, {"account_id": "acct_0", "requests": 5, "tier": "gold"}]},
        headers=auth)
    assert set(tier_and_account.json["error"]["fields"]) == {"reports[0].account_id", "reports[1].tier"}
    assert _counts(runtime) == before
    kept = [r for i, r in enumerate(reports) if f"reports[{i}].account_id" not in fields
            and not any(f.startswith(f"reports[{i}].") for f in fields)]
    assert client.post("/v1/activity", json={"reports": kept}, headers=auth).status_code == 200


_mistakes = st.sampled_from(["ok", "unknown_account", "unknown_tier", "bad_field"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_mistakes, st.sampled_from(sorted(_bad_values)).flatmap(
    lambda f: st.tuples(st.just(f), _bad_values[f]))), min_size=1, max_size=6))
def test_a_generated_batch_is_refused_naming_every_bad_report(client, auth, runtime, accounts, plan):
    before = _counts(runtime)
    reports, bad = [], set()
    for i, (mistake, (field, value)) in enumerate(plan):
        report = {"account_id": accounts[i % 3], "requests": 3, "occurred_at": "2026-11-24T21:00:00Z"}
        if mistake == "unknown_account":
            report["account_id"] = f"acct_unknown_{i}"
        elif mistake == "unknown_tier":
            report["tier"] = "platinum"
        elif mistake == "bad_field":
            report[field] = value
        reports.append(report)
        if mistake != "ok":
            bad.add(i)
    answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
    if not bad:
        assert answer.status_code == 200
        return
    assert answer.status_code == 400
    if answer.json["error"]["code"] != "card_number_refused":      # a generated number may be one
        named = {int(f.split("]")[0].removeprefix("reports[")) for f in answer.json["error"]["fields"]}
        assert named == bad, (answer.json, plan)
        assert _counts(runtime) == before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(_bad_values)).flatmap(lambda f: st.tuples(st.just(f), _bad_values[f])),
       st.integers(min_value=0, max_value=4))
@example(("requests", 4111111111111111), 0)
def test_a_generated_bad_report_refuses_the_batch_and_changes_nothing(client, auth, runtime, accounts, bad, index):
    field, value = bad
    before = _counts(runtime)
    reports = [{"account_id": accounts[i % 3], "requests": 3, "occurred_at": "2026-11-24T21:00:00Z"} for i in range(5)]
    reports[index] = {**reports[index], field: value}
    # A generated number of 13-19 digits that passes Luhn is refused earlier, as a card number
    # (the request guard names no field for those): a refusal all the same.
    answer = client.post("/v1/activity", json={"reports": reports}, headers=auth)
    assert answer.status_code == 400, (field, value)
    if answer.json["error"]["code"] != "card_number_refused":
        assert any(name.startswith(f"reports[{index}].{field}") for name in answer.json["error"]["fields"])
    single = client.post(f"/v1/accounts/{accounts[0]}/activity",
                         json={k: v for k, v in reports[index].items() if k != "account_id"}, headers=auth)
    assert single.status_code == 400
    if single.json["error"]["code"] != "card_number_refused":
        assert any(n.startswith(field) for n in single.json["error"]["fields"])
    assert _counts(runtime) == before
    with runtime.session() as s:
        assert s.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.trigger == "rescore")) == 0


def test_the_readme_gateway_examples_work(client, auth, runtime):
    import re

    from kyc.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("## Gateway integration"):]
    section = section[:section.index("\n## ", 5)]
    bodies = [json.loads(b) for b in re.findall(r"-d '(.*?)'", section, re.S)]
    assert len(bodies) == 2
    for account in ("acct_demo", "acct_other"):
        body = signup(account_id=account, email=f"{account}@gmail.com", device_id=account,
                      occurred_at="2026-11-20T12:00:00Z")
        assert client.post("/v1/signups", json=body, headers=auth).status_code == 200
    single = client.post("/v1/accounts/acct_demo/activity", json=bodies[0], headers=auth)
    assert single.status_code == 200, single.json
    documented = json.loads(re.search(r"```json\n(.*?)\n *```", section, re.S).group(1))
    assert set(single.json) == set(documented)
    assert single.json["requests_today"] == documented["requests_today"]
    bulk = client.post("/v1/activity", json=bodies[1], headers=auth)
    assert bulk.status_code == 200 and [r["account_id"] for r in bulk.json["results"]] == ["acct_demo", "acct_other"]
    assert client.get("/v1/accounts/acct_demo/entitlement?tier=free", headers=auth).status_code == 200


def test_an_unknown_field_says_where_free_form_data_goes_only_where_there_is_such_a_place(client, auth, accounts):
    report = client.post("/v1/accounts/acct_0/activity", json={"requests": 1, "note": "x"}, headers=auth)
    assert report.json["error"]["fields"] == {"note": "unknown field"}
    bulk = client.post("/v1/activity", json={"reports": [{"account_id": "acct_0", "requests": 1, "note": "x"}]},
                       headers=auth)
    assert bulk.json["error"]["fields"] == {"reports[0].note": "unknown field"}
    signed_up = client.post("/v1/signups", json=signup(note="x"), headers=auth)
    assert signed_up.json["error"]["fields"] == {"note": "unknown field; free-form data goes in metadata"}
