"""Device signals on real user agents: browsers seen in real traffic (fake-useragent's collected
data), the crawler corpus of crawler-user-agents, and user-agents' own test strings."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources

import crawleruseragents
import pytest
from user_agents import parse as legacy_parse

from kyc.signals.device import current_major, device_identifiers, device_signals, locale_region, timezone_country

BROWSERS = [json.loads(line) for line in
            resources.files("fake_useragent").joinpath("data/browsers.jsonl").read_text().splitlines()]
REAL_UAS = sorted({b["useragent"].strip('"') for b in BROWSERS})
CRAWLERS = sorted({ua for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA for ua in entry.get("instances", [])})
AT = datetime(2026, 11, 24, tzinfo=timezone.utc)
CHROME_WIN = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")


def test_corpora_are_large():
    assert len(REAL_UAS) > 500 and len(CRAWLERS) > 1500


def test_no_real_browser_is_called_a_bot_headless_or_non_browser():
    flagged = [ua for ua in REAL_UAS
               if (f := device_signals(ua, None))["bot"] or f["headless"] or f["non_browser"]]
    assert flagged == []


def test_device_class_agrees_with_the_corpus_labels():
    agree = sum(device_signals(b["useragent"].strip('"'), None)["class"] == b["type"] for b in BROWSERS)
    assert agree / len(BROWSERS) > 0.98


def test_same_browser_os_and_version_as_user_agents_legacy_parser():
    for ua in REAL_UAS[:300]:
        facts, legacy = device_signals(ua, None), legacy_parse(ua)
        assert facts["browser"] == legacy.browser.family, ua
        assert facts["os"] == legacy.os.family, ua
        if legacy.browser.version and isinstance(legacy.browser.version[0], int):
            assert facts["browser_major"] == legacy.browser.version[0], ua


def test_most_crawlers_are_bots_and_nearly_all_are_bots_or_non_browsers():
    facts = [device_signals(ua, None) for ua in CRAWLERS]
    bots = sum(f["bot"] for f in facts)
    either = sum(f["bot"] or f["non_browser"] for f in facts)
    # user-agents alone (is_bot: ua-parser's Spider family) finds far fewer.
    legacy = sum(legacy_parse(ua).is_bot for ua in CRAWLERS)
    assert bots / len(CRAWLERS) > 0.8 and either / len(CRAWLERS) > 0.93
    assert bots > legacy * 1.3


@pytest.mark.parametrize("ua, marker", [
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.109 "
     "Safari/537.36", "headlesschrome"),
    ("Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
     "phantomjs"),
    ("python-requests/2.31.0", "python-requests"),
    ("curl/8.5.0", "curl"),
    ("Go-http-client/1.1", "go-http-client"),
    ("Wget/1.21.4", "wget"),
    ("okhttp/4.12.0", "okhttp"),
])
def test_automation_markers_that_user_agents_misses(ua, marker):
    assert legacy_parse(ua).is_bot is False          # the gap this signal closes
    facts = device_signals(ua, None)
    assert facts["headless"] is True and facts["bot"] is True and facts["class"] == "bot"
    assert facts["automation"] == marker


def test_crawler_corpus_automation_tools_are_marked():
    tools = [ua for ua in CRAWLERS if ua.lower().startswith(("curl/", "python-requests", "go-http-client",
                                                             "wget/", "okhttp", "python-urllib"))]
    assert tools and all(device_signals(ua, None)["headless"] for ua in tools)


def test_browser_age_follows_the_release_cadence():
    assert current_major("Chrome", datetime(2024, 11, 12).date()) == 131      # Chrome 131: 12 Nov 2024
    assert current_major("Firefox", datetime(2024, 11, 26).date()) == 133     # Firefox 133: 26 Nov 2024
    fresh = device_signals(CHROME_WIN, None, at=datetime(2024, 11, 20, tzinfo=timezone.utc))
    stale = device_signals(CHROME_WIN, None, at=AT)
    assert fresh["browser_versions_behind"] == 0
    assert stale["browser_versions_behind"] >= 25
    assert "browser_versions_behind" not in device_signals("curl/8.5.0", None, at=AT)


def test_client_hints_contradicting_the_user_agent():
    honest = {"sec-ch-ua": '"Chromium";v="131", "Not_A Brand";v="24", "Google Chrome";v="131"',
              "sec-ch-ua-platform": '"Windows"', "sec-ch-ua-mobile": "?0"}
    facts = device_signals(CHROME_WIN, None, client_hints=honest)
    assert (facts["hints_platform_mismatch"], facts["hints_mobile_mismatch"], facts["hints_browser_mismatch"]) == \
        (False, False, False)
    linux_hints = {k: v for k, v in honest.items() if k != "sec-ch-ua-platform"}
    linux = device_signals(CHROME_WIN, None, client_hints={**linux_hints, "Sec-CH-UA-Platform": '"Linux"'})
    assert linux["hints_platform_mismatch"] is True
    mobile = device_signals(CHROME_WIN, None, client_hints={**honest, "sec-ch-ua-mobile": "?1"})
    assert mobile["hints_mobile_mismatch"] is True
    older = device_signals(CHROME_WIN, None, client_hints={**honest, "sec-ch-ua": '"Google Chrome";v="120"'})
    assert older["hints_browser_mismatch"] is True
    firefox = next(ua for ua in REAL_UAS if "Firefox/" in ua and "Windows" in ua)
    assert device_signals(firefox, None, client_hints=honest)["hints_browser_mismatch"] is True
    headless = device_signals(CHROME_WIN, None, client_hints={"sec-ch-ua": '"HeadlessChrome";v="131"'})
    assert headless["headless"] is True and headless["bot"] is True


@pytest.mark.parametrize("zone, country", [
    ("America/New_York", "US"), ("Europe/Berlin", "DE"), ("Asia/Kolkata", "IN"),
    ("Asia/Calcutta", "IN"),                  # a backward link, resolved
    ("US/Eastern", "US"), ("Europe/Kyiv", "UA"), ("Etc/UTC", None), ("Mars/Olympus", None), ("", None),
])
def test_timezone_country_from_tzdata(zone, country):
    assert timezone_country(zone) == country


@pytest.mark.parametrize("locale, region", [
    ("en-US", "US"), ("pt_BR", "BR"), ("zh-Hant-TW", "TW"), ("en_GB.UTF-8", "GB"), ("de", None),
    ("es-419", None), ("not a locale", None), ("", None),
])
def test_locale_region(locale, region):
    assert locale_region(locale) == region


def test_form_fill_time_and_missing_user_agent():
    assert device_signals(None, 800) == {"ua_missing": True, "form_fill_ms": 800}
    assert device_signals("", None) == {"ua_missing": True}


@pytest.mark.parametrize("junk", ["", "\x00\x01", "a" * 1024, "Mozilla/5.0 (", "()()()", "😀" * 50])
def test_malformed_input_never_raises(junk):
    facts = device_signals(junk, -5, client_hints={"sec-ch-ua": junk, 3: None, "sec-ch-ua-mobile": junk},
                           timezone=junk, locale=junk, at=AT)
    assert "form_fill_ms" not in facts
    assert isinstance(facts, dict)


def test_device_identifier():
    assert device_identifiers("dv_1") == [("device", "dv_1")]
    assert device_identifiers(None) == device_identifiers("") == []
