"""Device facts from the user agent and client hints."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from user_agents import parse as parse_ua

from kyc.engine.schema import Field

FIELDS = (
    Field("device.browser", "str", "Browser family from the user agent.", "Chrome"),
    Field("device.browser_major", "int", "Browser major version.", 131),
    Field("device.os", "str", "Operating system family.", "Windows"),
    Field("device.class", "str", "desktop | mobile | tablet | bot | other", "desktop"),
    Field("device.bot", "bool", "The user agent is a bot, crawler, headless browser or HTTP library.", False),
    Field("device.headless", "bool", "Headless or automation marker in the user agent.", False),
    Field("device.ua_missing", "bool", "No user agent was sent.", False),
    Field("device.form_fill_ms", "int", "Milliseconds from form render to submit, as reported.", 5400),
)

_AUTOMATION_MARKERS = ("headlesschrome", "phantomjs", "selenium", "webdriver", "puppeteer", "playwright",
                       "python-requests", "python-urllib", "aiohttp", "httpx", "curl/", "wget/",
                       "go-http-client", "okhttp", "java/", "libwww-perl", "node-fetch", "axios/", "scrapy")


@lru_cache(maxsize=16384)
def _ua_facts(ua: str) -> dict[str, Any]:
    parsed = parse_ua(ua)
    lowered = ua.lower()
    headless = any(marker in lowered for marker in _AUTOMATION_MARKERS)
    bot = parsed.is_bot or headless
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
    major = parsed.browser.version[0] if parsed.browser.version else None
    return {
        "browser": parsed.browser.family,
        "browser_major": major if isinstance(major, int) else None,
        "os": parsed.os.family,
        "class": device_class,
        "bot": bot,
        "headless": headless,
    }


def device_signals(user_agent: str | None, form_fill_ms: int | None) -> dict[str, Any]:
    facts: dict[str, Any] = dict(_ua_facts(user_agent)) if user_agent else {"ua_missing": True}
    facts.setdefault("ua_missing", False)
    if form_fill_ms is not None:
        facts["form_fill_ms"] = form_fill_ms
    return facts


def device_identifiers(device_id: str | None) -> list[tuple[str, str]]:
    return [("device", device_id)] if device_id else []
