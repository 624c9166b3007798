"""Device facts from the user agent, client hints, timezone, locale and form timing.

The user agent is parsed by ua-parser 1.x (its Rust `regex` resolver, cached), and the result is
handed to user-agents for its device-class rules (mobile, tablet, pc, bot). user-agents' own
`parse` goes through ua-parser's legacy pure-Python path, about fifty times slower.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import ua_parser
from user_agents.parsers import UserAgent, parse_browser, parse_device, parse_operating_system

from kyc.engine.schema import Field

_UA = "ua-parser 1.x (uap-core regexes) and user-agents"

FIELDS = (
    Field("device.browser", "str", "Browser family from the user agent.", "Chrome", _UA),
    Field("device.browser_major", "int", "Browser major version.", 131, _UA),
    Field("device.browser_versions_behind", "int",
          "Major versions between this browser and the one its vendor ships at the event time (Chrome, Edge "
          "and Firefox release every 4 weeks); large values mean a stale or spoofed user agent.", 2,
          "kyc (release cadence)"),
    Field("device.os", "str", "Operating system family.", "Windows", _UA),
    Field("device.class", "str", "desktop | mobile | tablet | bot | other", "desktop", _UA),
    Field("device.bot", "bool", "The user agent is a bot, crawler, headless browser or HTTP library: ua-parser's "
                                "Spider family, a self-declared bot (bot, crawler, spider, a contact URL), or an "
                                "automation marker.", False, _UA),
    Field("device.headless", "bool", "Headless browser, automation framework or HTTP library marker in the user "
                                     "agent or client hints (user-agents' is_bot misses these).", False, "kyc"),
    Field("device.automation", "str", "The automation marker found (headlesschrome, selenium, python-requests, "
                                      "curl, ...).", "python-requests", "kyc"),
    Field("device.non_browser", "bool", "The user agent does not start like any browser's (Mozilla/, Opera/): "
                                        "an app, script or tool.", False, "kyc"),
    Field("device.ua_missing", "bool", "No user agent was sent.", False, "input"),
    Field("device.hints_platform_mismatch", "bool", "sec-ch-ua-platform names another OS than the user agent "
                                                    "(UA says Windows, hints say Linux).", False, "client hints"),
    Field("device.hints_mobile_mismatch", "bool", "sec-ch-ua-mobile disagrees with the user agent's device "
                                                  "class.", False, "client hints"),
    Field("device.hints_browser_mismatch", "bool", "Client hints contradict the browser: sent by a browser that "
                                                   "never sends them (Firefox, Safari), or sec-ch-ua names another "
                                                   "major version.", False, "client hints"),
    Field("device.timezone_country", "str", "Country of the browser's IANA timezone (links resolved).", "US",
          "tzdata zone.tab"),
    Field("device.locale_region", "str", "Region of the browser locale (en-US -> US).", "US", "BCP 47 locale"),
    Field("device.form_fill_ms", "int", "Milliseconds from form render to submit, as reported.", 5400, "input"),
)

# Lower-cased substrings of automation tools and HTTP libraries, most specific first.
AUTOMATION_MARKERS = (
    "headlesschrome", "phantomjs", "slimerjs", "selenium", "webdriver", "puppeteer", "playwright",
    "python-requests", "python-urllib", "python-httpx", "aiohttp", "httpx", "scrapy", "curl/", "wget/",
    "go-http-client", "okhttp", "java/", "apache-httpclient", "libwww-perl", "node-fetch", "axios/", "undici",
    "got (", "postmanruntime", "insomnia", "guzzlehttp", "ruby", "httpie", "powershell", "winhttp",
)

# Browsers on a 4-week major release cadence: (a major, its stable release date).
_CADENCE = {
    "Chrome": (121, date(2024, 1, 23)), "Chrome Mobile": (121, date(2024, 1, 23)),
    "Chrome Mobile iOS": (121, date(2024, 1, 23)), "Chromium": (121, date(2024, 1, 23)),
    "Edge": (121, date(2024, 1, 25)), "Edge Mobile": (121, date(2024, 1, 25)),
    "Firefox": (122, date(2024, 1, 23)), "Firefox Mobile": (122, date(2024, 1, 23)),
    "Firefox iOS": (122, date(2024, 1, 23)),
}
# Browsers that never send client hints.
_NO_HINTS = ("Firefox", "Safari", "Mobile Safari")
_PLATFORMS = {  # ua-parser OS family -> sec-ch-ua-platform value
    "Windows": "Windows", "Mac OS X": "macOS", "Linux": "Linux", "Ubuntu": "Linux", "Fedora": "Linux",
    "Android": "Android", "Chrome OS": "Chrome OS", "iOS": "iOS",
}
# Self-declared robots: real browsers never put these words or a contact URL in their user agent.
_SELF_DECLARED_BOT = re.compile(r"bot\b|bot[/_-]|robot|crawl|spider|scrap|slurp|https?://|\+http|www\.|"
                                r"checker|monitor|validator|fetcher|archiver|scanner|preview", re.IGNORECASE)
_BRAND = re.compile(r'"([^"]*)"\s*;\s*v\s*=\s*"(\d+)')
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z]{4})?[-_]([A-Za-z]{2}|\d{3})(?:[-_.@]|$)")

@cache
def _parser() -> ua_parser.Parser:
    # Built on first use (about 0.5 s: uap-core's regexes into the Rust matcher), once per process.
    return ua_parser.Parser.from_matchers(ua_parser.load_builtins())


class _ParsedAgent(UserAgent):
    """user-agents' UserAgent filled from a ua-parser 1.x result instead of its legacy parser."""

    def __init__(self, ua: str):  # noqa: D107 - same fields as the base class
        result = _parser().parse(ua)
        browser, os_, device = result.user_agent, result.os, result.device
        self.ua_string = ua
        self.browser = parse_browser(*((browser.family, browser.major, browser.minor, browser.patch)
                                       if browser else ("Other",)))
        self.os = parse_operating_system(*((os_.family, os_.major, os_.minor, os_.patch) if os_ else ("Other",)))
        self.device = parse_device(*((device.family, device.brand, device.model) if device
                                     else ("Other", None, None)))


@lru_cache(maxsize=16384)
def _ua_facts(ua: str) -> dict[str, Any]:
    parsed = _ParsedAgent(ua)
    lowered = ua.lower()
    marker = next((m for m in AUTOMATION_MARKERS if m in lowered), None)
    bot = parsed.is_bot or marker is not None or _SELF_DECLARED_BOT.search(ua) is not None
    if bot:
        device_class = "bot"
    elif parsed.is_tablet:
        device_class = "tablet"
    elif parsed.is_mobile:
        device_class = "mobile"
    elif parsed.is_pc:
        device_class = "desktop"
    else:
        device_class = "other"
    facts: dict[str, Any] = {
        "browser": parsed.browser.family,
        "os": parsed.os.family,
        "class": device_class,
        "bot": bot,
        "headless": marker is not None,
        "non_browser": not lowered.strip('"').startswith(("mozilla/", "opera/")),
    }
    major = parsed.browser.version[0] if parsed.browser.version else None
    if isinstance(major, int):
        facts["browser_major"] = major
    if marker:
        facts["automation"] = marker.rstrip("/ (")
    return facts


def current_major(browser: str, on: date) -> int | None:
    cadence = _CADENCE.get(browser)
    if cadence is None:
        return None
    major, released = cadence
    return major + (on - released).days // 28


def _hint(hints: dict[str, str], name: str) -> str | None:
    for key, value in hints.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value.strip()
    return None


def _hints_facts(hints: dict, ua: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    brands = _hint(hints, "sec-ch-ua")
    platform = (_hint(hints, "sec-ch-ua-platform") or "").strip('"') or None
    mobile = _hint(hints, "sec-ch-ua-mobile")
    if brands is None and platform is None and mobile is None:
        return facts
    if brands and "headless" in brands.lower():
        facts.update(headless=True, bot=True, automation=ua.get("automation", "headlesschrome"))
        facts["class"] = "bot"
    expected_platform = _PLATFORMS.get(ua.get("os", ""))
    if platform and expected_platform:
        facts["hints_platform_mismatch"] = platform.lower() != expected_platform.lower()
    if mobile in ("?0", "?1") and ua.get("class") in ("desktop", "mobile", "tablet"):
        facts["hints_mobile_mismatch"] = (mobile == "?1") != (ua["class"] == "mobile")
    browser = ua.get("browser", "")
    mismatch = browser in _NO_HINTS
    if brands and not mismatch and "browser_major" in ua and browser in _CADENCE:
        majors = {int(v) for name, v in _BRAND.findall(brands) if "brand" not in name.lower()}
        mismatch = bool(majors) and ua["browser_major"] not in majors
    if browser and browser != "Other":
        facts["hints_browser_mismatch"] = mismatch
    return facts


@cache
def _zone_countries() -> dict[str, str]:
    """IANA zone (and every link to it) -> country, from tzdata's zone.tab and tzdata.zi."""
    root = resources.files("tzdata").joinpath("zoneinfo")
    zones: dict[str, str] = {}
    for line in root.joinpath("zone.tab").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            country, _coords, zone = line.split("\t")[:3]
            zones[zone] = country
    for line in root.joinpath("tzdata.zi").read_text(encoding="utf-8").splitlines():
        if line.startswith("L "):
            _l, target, alias = line.split()[:3]
            if target in zones:
                zones.setdefault(alias, zones[target])
    return zones


def timezone_country(zone: str | None) -> str | None:
    return _zone_countries().get(zone.strip()) if zone and isinstance(zone, str) else None


def locale_region(locale: str | None) -> str | None:
    match = _LOCALE.match(locale.strip()) if locale and isinstance(locale, str) else None
    region = match.group(1).upper() if match else None
    return region if region and region.isalpha() else None      # 419 (Latin America) is no country


def device_signals(user_agent: str | None, form_fill_ms: int | None, *, client_hints: dict | None = None,
                   timezone: str | None = None, locale: str | None = None,
                   at: datetime | None = None) -> dict[str, Any]:
    if user_agent and isinstance(user_agent, str):
        facts: dict[str, Any] = dict(_ua_facts(user_agent))
        facts["ua_missing"] = False
        if at is not None and "browser_major" in facts:
            current = current_major(facts["browser"], at.date())
            if current is not None:
                facts["browser_versions_behind"] = max(0, current - facts["browser_major"])
    else:
        facts = {"ua_missing": True}
    if client_hints and isinstance(client_hints, dict):
        facts.update(_hints_facts(client_hints, facts))
    zone_country = timezone_country(timezone)
    if zone_country:
        facts["timezone_country"] = zone_country
    region = locale_region(locale)
    if region:
        facts["locale_region"] = region
    if isinstance(form_fill_ms, int) and not isinstance(form_fill_ms, bool) and form_fill_ms >= 0:
        facts["form_fill_ms"] = form_fill_ms
    return facts


def device_identifiers(device_id: str | None) -> list[tuple[str, str]]:
    return [("device", device_id)] if device_id and isinstance(device_id, str) else []
