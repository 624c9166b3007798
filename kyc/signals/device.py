"""Device facts from the user agent, client hints, timezone, locale and form timing, and whether
the user agent is a browser kyc recognises (a positive model: a known family on its engine and
system, with tokens of its version's era), not merely absent from a list of bots.

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
    Field("device.real_browser", "bool",
          "The user agent is a browser kyc recognises, whose parts fit together: a known browser family on a "
          "rendering engine it ships with (Blink, WebKit, Gecko, Servo, LibWeb, Trident, EdgeHTML, Presto), on "
          "an operating system it runs on (Safari only on Apple systems, every iOS browser on WebKit, Internet "
          "Explorer on Windows, up to 5 also on Macs, Unix and WebTV), with engine tokens of its version's era "
          "(Safari's WebKit build, Firefox's rv:, Chrome's build number, Edge's Chromium), a version already "
          "released at the event time, and client hints that agree. "
          "Old but real browsers (ESR, old iPhones, smart TVs) are real browsers, and so are the forms device "
          "standards write instead (feature phones' MIDP and WAP browsers, HbbTV televisions), Netscape Navigator's "
          "own engineless form, a device's name before a browser's Mozilla form, and another vendor's product "
          "token (name/version) after a current browser's last token. False for bots, HTTP "
          "libraries, apps' own clients, unknown strings and injection probes.", True, "kyc (ua-parser family)"),
    Field("device.browser_mismatch", "str",
          "Why the user agent is not a real browser: unrecognised (no known browser and engine, or a tool "
          "uap-core names before any browser: a library, app, monitor, unknown string or probe), bot (a bot or automation marker), os (family on a system it does not "
          "run on), engine (engine tokens that do not fit the family or its version), mobile (an iPhone without "
          "its Mobile token), tokens (a word after the browser's own last token that is no vendor's product token "
          "(a bare word, a tool's function, a comment), in Firefox's comment after "
          "rv: or inside WebKit's (KHTML, like Gecko), where tools that drive or copy a browser sign), version "
          "(not released at the event time), hints (client hints disagree).", "engine",
          "kyc"),
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

# Lower-cased substrings of automation tools and HTTP libraries, most specific first. The headless
# renderers built on QtWebKit, as PhantomJS was, write a browser's WebKit form with their own name in
# it and nothing else amiss: Scrapy's Splash (`(KHTML, like Gecko) splash Version/9.0 Safari/602.1`)
# and wkhtmltopdf's `wkhtmltoimage`/`wkhtmltopdf`.
AUTOMATION_MARKERS = (
    "headlesschrome", "phantomjs", "slimerjs", "splash ", "wkhtmlto", "selenium", "webdriver", "puppeteer", "playwright",
    "python-requests", "python-urllib", "python-httpx", "aiohttp", "httpx", "scrapy", "curl/", "wget/",
    "go-http-client", "okhttp", "java/", "apache-httpclient", "libwww-perl", "node-fetch", "axios/", "undici",
    "got (", "postmanruntime", "insomnia", "guzzlehttp", "ruby", "httpie", "powershell", "winhttp",
)

# `Java/` with a version is the JDK's own HTTP client (`Java/1.8.0_25`, `Java/17.0.2`); a feature
# phone's J2ME virtual machine writes its name there instead, next to its MIDP profile
# (`Java/ASVM/1.1 Profile/MIDP-2.1`, LG's phones' browsers): that is the phone, not the library.
_JDK_CLIENT = re.compile(r"java/\d")

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
# Self-declared robots: real browsers never put these words, a contact URL or a contact address
# (`+collection@infegy.com`, `mailto:`) in their user agent.
# Searched in the lower-cased string: with re.IGNORECASE the alternation took 21 µs a browser's string
# (a quarter of an unseen user agent's cost), on the lower-cased one 5.
_SELF_DECLARED_BOT = re.compile(r"(?<!cu)bot(?:\b|[/_-])|robot|crawl|spider|scrap|slurp|https?://|\+http|www\.|"
                                r"checker|monitor|validator|fetcher|archiver|scanner|preview|mailto:|"
                                r"[\w.+-]@[a-z0-9-]+\.[a-z]{2,}")
_BRAND = re.compile(r'"([^"]*)"\s*;\s*v\s*=\s*"(\d+)')
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z]{4})?[-_]([A-Za-z]{2}|\d{3})(?:[-_.@]|$)")

# --- the positive model of a browser ----------------------------------------------------------
# What a browser's user agent is made of: the form browsers have sent since Mosaic's successors
# (Mozilla/1.x to Amiga browsers' Mozilla/6.0, then a space or, as Apple's iPad of iOS 3.2 wrote
# it, straight its comment: `Mozilla/5.0(iPad; U; ..`), and one rendering engine's tokens. Apps'
# own HTTP clients (Dalvik, CFNetwork, okhttp), libraries, tools and unknown strings have neither.
_BROWSER_FORM = re.compile(r"^(?:Mozilla/[1-6]\.\d+[ (]|Opera/9\.\d+ \()")
# What no browser puts in its user agent: quotes, markup brackets, backticks, backslashes, and
# template and shell expansions (${..}, {{..}}, $(..)). Injection probes (${jndi:...}, ' OR 1=1,
# <script>) carry them; bare braces do not make a probe (an IE toolbar writes `CK={}`).
_PROBE = re.compile(r"[\"'<>`\\]|\$\{|\{\{|\$\(")
_UC_ENGINE = re.compile(r"U[23]/\d")
_ENGINES = (   # (engine, test that proves it), most specific first; substring tests are cheap
    ("edgehtml", re.compile(r"Edge/1[2-9]\.").search),
    ("blink", lambda ua: ("AppleWebKit/537.36" in ua and "Chrome/" in ua) or "CrMo/" in ua),
    ("webkit", re.compile(r"AppleWebKit(?:[/ ]|\d)", re.IGNORECASE).search),   # early in-app and Haiku builds,
                                                    # and China's TD phones' `Browser/AppleWebKit534.30`
    ("gecko", re.compile(r"\) (?:Gecko|Goanna)/\d").search),  # a build date, or Firefox for Android's
                                                                # version; Goanna is Pale Moon's Gecko fork
    ("servo", lambda ua: ") Servo/" in ua),         # Mozilla's Servo, in Gecko's place in Firefox's form
    ("libweb", lambda ua: "LibWeb" in ua or "Ladybird/" in ua),   # Ladybird's own engine (SerenityOS's before),
                                                    # named or proven by Ladybird's name, as KHTML by Konqueror's
    ("trident", lambda ua: "MSIE " in ua or "Trident/" in ua),
    ("presto", lambda ua: "Presto/" in ua or ua.startswith("Opera/9.")),
    ("khtml", lambda ua: "KHTML/" in ua or "Konqueror/" in ua),   # KHTML was Konqueror's own engine, which
                                                    # wrote no token of it before 3.2 (`(compatible; Konqueror/3.1; Linux)`)
    ("ucweb", lambda ua: "UCWEB" in ua or "UCBrowser" in ua or _UC_ENGINE.search(ua) is not None),
)
# ua-parser families that are not a browser even with browser-like tokens: HTTP clients and
# frameworks that copy a browser's user agent.
_NOT_BROWSERS = frozenset({"HeadlessChrome", "PhantomJS", "Electron", "Python Requests", "curl",
                           "Java", "Apache-HttpClient", "okhttp", "Go-http-client", "Python-urllib"})
# Browsers ua-parser knows whose user agents carry no modern engine's tokens: text browsers,
# feature-phone and WAP browsers (Opera Mini renders on Opera's servers), early smartphones,
# the browsers of other systems (AmigaOS, Haiku), and browsers on an engine of their own before
# they moved to WebKit (iCab up to 3: `iCab/3.0.5 (Macintosh; U; PPC Mac OS X)`). Real, and rare;
# not a tool's string.
ENGINELESS_BROWSERS = frozenset({
    "Lynx", "Links", "ELinks", "w3m", "NCSA Mosaic", "Dillo", "NetSurf", "Amaya", "IBrowse", "AWeb", "Voyager",
    "Opera", "Opera Mini", "Opera Mobile", "UC Browser", "Ovi Browser", "Nokia Browser", "Nokia OSS Browser",
    "Nokia Services (WAP) Browser", "NetFront", "NetFront NX", "BlackBerry", "Obigo", "Openwave", "Polaris",
    "Teleca Browser", "iCab"})
# The grammar of today's big browsers' user agents (Chrome, Chromium Edge and Firefox 100 and
# later, desktop Safari 13 and later), which nothing follows but a vendor's own token (OPR/,
# YaBrowser/, HeyTapBrowser/: ua-parser then names that vendor instead) or a comment in
# parentheses: `... Chrome/131.0.0.0 Safari/537.36`, `...; rv:137.0) Gecko/20100101 Firefox/137.0`.
# A tool that drives or copies a current browser adds its own word after it (Chrome-Lighthouse,
# RuxitSynthetic/1.0, Manus-User/1.0) or inside Firefox's comment after rv: (`rv:45.0; Rigor)`).
# Older browsers carried vendors' and proxies' tokens (ChromePlus, Novarra-Vision), smart TVs pin an
# older Chrome and add their own (WebAppManager on webOS's Chrome 79), and iOS apps append their
# names to Safari's string (BingWeb/6): none is read this way.
# HarmonyOS NEXT's web engine, ArkWeb (Chromium's Blink), writes Chrome's string with its own token and,
# on phones, the device class after it (`Safari/537.36 ArkWeb/4.1.6.1 Mobile`), then the app's tokens.
_CHROME_ENDING = re.compile(r"Safari/[\d.]+(?: ArkWeb/[\d.]+(?: Mobile)?)?$")
_ENDS_AS = {   # family: (the first major read, how its string ends)
    "Chrome": (100, _CHROME_ENDING), "Chrome Mobile": (100, _CHROME_ENDING),
    "Edge": (100, re.compile(r"Edg/[\d.]+$")), "Firefox": (100, re.compile(r"Firefox/[\d.]+$")),
    "Safari": (13, re.compile(r"Safari/[\d.]+$")),
}
# Browsers built on those engines by other vendors keep the grammar and add their own product token
# after it, name and version (`Safari/537.36 Kinza/7.4.1`, a car's `Tesla/2022.40.25.4-c2f2b1b6ffc8`,
# an Android app's `Mobile Safari/537.36 RakutenWebsearch/5.100.07`, the new Outlook's
# `Edg/120.0.0.0 OneOutlook/1.2023.1117.300`). Tools sign there too, and name what they do
# (`CookieHubScan/3.0`, `TestLocally/1.0`, `CloudflareObservatory/1.0`, `Chrome-Lighthouse`,
# `DatadogSynthetics`): a token that names a tool's function, that has no version, that comes after
# a semicolon or that carries a comment (`Scope3/2.0 (scope3.com)`) is not a vendor's.
_VENDOR_TOKEN = re.compile(r"(?![\w-]*(?i:scan|verif|test|check|monitor|audit|observ|inspect|synthetic|agent|"
                           r"lighthouse|header|optimi|crawl|fetch|render|preview|proxy))[A-Za-z][\w-]*/\d[\w.-]*")


def _ends_as_after_vendor_tokens(ending: str, grammar: re.Pattern) -> bool:
    """Whether the string ends as its browser's grammar once up to three vendors' product tokens are
    taken off its end, one by one from the right (one regex anchored at the end would restart at
    every earlier token: quadratic in a long string of them, 16 ms on 1,024 characters)."""
    for _ in range(3):
        head, _space, last = ending.rpartition(" ")
        if not head or not _VENDOR_TOKEN.fullmatch(last):
            return False
        ending = head
        if grammar.search(ending):
            return True
    return False


# Desktop Chrome's platform comment is its system's and nothing else: `(Windows NT 10.0; Win64; x64)`,
# `(Macintosh; Intel Mac OS X 10_15_7)`, `(X11; Linux x86_64)` (a distribution may name itself
# before Linux; embedded builds write `(Linux;)`), `(X11; CrOS x86_64 14541.0.0)`. Tools that drive or copy it sign there (`X11; Linux
# x86_64; Rigor`, `iplabel; Windows NT 6.3`, `feeder.co; Intel Mac OS X`, `compatible; ..`).
_CHROME_DESKTOP_OS = frozenset({"Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Chrome OS"})
_CHROME_PLATFORM = re.compile(r"Mozilla/5\.0 \((?:Windows NT \d+\.\d(?:; (?:Win64; x64|WOW64|Win64; IA64|ARM64))?|"
                              r"Macintosh; Intel Mac OS X \d+(?:[_.]\d+)*|"
                              r"(?:X11; ?(?:[A-Z][a-z]+; )?)?(?:Linux(?: [\w-]+)?;?|CrOS [\w-]+ [\d.]+))\)")
# Chrome on ARM Linux or Fuchsia is an embedded device's (a TV, a Chromecast, a smart display):
# those name themselves after Chrome's last token (`CrKey/1.56.500000`, `VIZIO SmartCast(..)`).
# Desktops are on x86 and Chromebooks say CrOS; the tools that sign there run on servers' x86.
_EMBEDDED_CHROME = re.compile(r"Mozilla/5\.0 \((?:X11; ?Linux (?:armv\d\w*|aarch64)|Fuchsia)\)")
# WebKit's own comment is "(KHTML, like Gecko)" (old Safari and OmniWeb add ", Safari/.."); a word
# after a semicolon there is a tool's (googleweblight, Google Page Speed Insights, compatible; BW/1.2).
_KHTML_WORDS = re.compile(r"\(KHTML[^()]*;")
# Comments after the last token, in parentheses or, as in-app browsers write theirs, in brackets
# (`[FB_IAB/FB4A;FBAV/..;]`, `[Pinterest/Android]`, `[LinkedInApp]`).
_TRAILING_COMMENTS = re.compile(r"(?:\s*(?:\([^()]*\)|\[[^\[\]]*\]))+\s*$")
_RV_LAST = re.compile(r"rv:[\w.]+\) (?:Gecko|Goanna|Servo)/")
# Firefox OS and KaiOS phones write their device class first and may name the phone or its
# carrier build after rv: (`(Mobile; rv:48.0; A405DL) Gecko/48.0 Firefox/48.0 KAIOS/2.5`).
_GECKO_DEVICE_COMMENT = re.compile(r"\((?:Mobile|Tablet|TV)\s*;")
# An Android WebView (`; wv)`, the `Version/4.0 Chrome/` form of Android 4.4, or before it the stock
# WebKit's own `Version/4.0 Mobile Safari/534.30` form, which apps' WebViews shared) is an app's
# own browser: the app names itself after it (`YandexSearch/7.52`), as monitors copying desktop
# Chrome also do; a WebView's string is read as a browser's whatever the app adds.
_WEBVIEW = re.compile(r"; wv\)|Android [\d.]+;.*Version/4\.0 Chrome/|Android [1-4]\.[\d.]*;.*Version/4\.0 (?:Mobile )?Safari/")
# The device model in an Android browser's comment (`(Linux; Android 7.0; M bot 51 Build/NRD90M)`)
# is the vendor's product name: words in it (bot, Ruby) say nothing about the software.
_ANDROID_MODEL = re.compile(r"(Android[ ]?[\d.]*;(?: ?[a-z]{2,3}[-_][a-zA-Z]{2,4};)?)[^;)]*(?=[;)])")
# Apps that open pages in a browser of their own (in-app browsers, WebViews, QQ's and other
# vendors' shells) may put their product token before the browser's Mozilla/5.0 form
# (`Job Search/24.4.0 Mozilla/5.0 (Linux; ..`, `MQQBrowser/39 Mozilla/5.0 (iPhone; ..`): the rest is
# then judged as any browser's string.
_APP_THEN_BROWSER = re.compile(r"^[A-Za-z][\w .-]{0,40}/[\w.]+[ /]Mozilla/5\.0 \(")
# Devices that put their own tokens before a browser's Mozilla form: a phone's or set-top box's
# name (`HTC_Touch2_T3333 Mozilla/4.0 (compatible; MSIE 6.0; Windows CE..`, `BrightSign/8.0.48
# (LS424-W)Mozilla/5.0 (X11; ..`, `MOT-XT615/Mozilla/5.0 (Linux; ..`), a TV's platform
# (`Opera/9.80 NETTV/4.5.0 Mozilla/5.0 (Linux armv7i; ..`, `HbbTV/1.4.1 (..) FVC/2.0 (..) Mozilla/5.0`):
# the Mozilla form that follows is then judged as any browser's string.
_MOZILLA_FORM = re.compile(r"Mozilla/[45]\.0 ?\(")
_DEVICE_PREFIX = re.compile(r"[\w.+/ ()-]*")   # product tokens and comments: no commas, quotes or other words


def _embeds_browser_form(ua: str) -> bool:
    at = ua.find("Mozilla/", 1)
    return at > 0 and _MOZILLA_FORM.match(ua, at) is not None and _DEVICE_PREFIX.fullmatch(ua, 0, at) is not None
# The forms of browsers on devices that follow a device standard instead of the desktop form:
# feature phones (the J2ME profile `Profile/MIDP-2.0 Configuration/CLDC-1.1`, Openwave's
# `UP.Browser/`, MediaTek's MAUI and MRE platform, i-mode's `DoCoMo/1.0/..`, a WAP browser naming
# itself one: `lephone K10/Dorado WAP-Browser/1.0.0`), the carrier form of
# China's TD-SCDMA phones (`Linux/3.4.5 Android/4.2.2 Release/03.26.2013 Browser/AppleWebKit534.30`)
# and TV standards (HbbTV's `HbbTV/1.5.1 (<capabilities>; <vendor>; <model>; ..)`, CE-HTML, NetTV).
# No crawler, library or tool writes these without a bot's own words (which are read first).
_DEVICE_FORM = re.compile(r"\bMIDP-?\d|UP\.Browser/|\bMAUI\b|\bMRE/\d|^DoCoMo/\d|\bWAP-Browser/\d|"
                          r"\bAndroid/[\d.]+ +Release/|^HbbTV/\d|\bCE-HTML/|\bNETTV/")
# The engines of feature-phone and proxy browsers (UC's U2/U3, Opera's Presto) write their own
# string, which need not start like a desktop browser's (`UCWEB/2.0 (Java; ..) U2/1.0.0 UCBrowser/..`,
# `Opera/9.80 (J2ME/MIDP; Opera Mini/..) Presto/..`): their engine's tokens with their browser's
# name prove a browser.
_OWN_FORM = re.compile(r"Presto/\d|UC(?:WEB|Browser|Pro)")
# Netscape Navigator 2 to 4 (and browsers that copied it) wrote no engine token: it was the Mozilla.
# Its form is the version, an optional language and a platform comment with the build's encryption
# strength, U, I or N (`Mozilla/4.8 [en] (Windows NT 5.1; U)`, `Mozilla/3.01 (Macintosh; I; PPC)`);
# other products' strings say `compatible` there.
_NETSCAPE_FORM = re.compile(r"Mozilla/[234]\.\d+\w* (?:\[[\w-]+\] ?)?\((?:[^();]*; ?)*[UIN](?:;[^()]*)?\)")
# Systems whose only clients that fetch web pages are their own browsers, which predate or never
# adopted a modern engine (AmigaOS, MorphOS and AROS: IBrowse, AWeb, Voyager; BeOS, Haiku, RISC OS,
# Syllable, OS/2; Palm OS: Blazer, WebPro, Xiino): no crawler, library or tool names them, so a
# string naming one as its system is that system's browser, in whatever form it writes it.
_BROWSER_ONLY_SYSTEMS = re.compile(r"\bAmiga|MorphOS|\bAROS\b|\bBeOS\b|\bHaiku\b|RISC ?OS|\bSyllable\b|\bOS/2\b|"
                                   r"\bPalm ?OS\b")
_BROWSER_ONLY_SYSTEM_WORDS = ("Amiga", "MorphOS", "AROS", "BeOS", "Haiku", "RISC", "Syllable", "OS/2", "Palm")


def _names_browser_only_system(ua: str) -> bool:
    # Substring tests first: re's scan of that alternation took 30 µs a string, most of the model's time.
    return any(word in ua for word in _BROWSER_ONLY_SYSTEM_WORDS) and _BROWSER_ONLY_SYSTEMS.search(ua) is not None
# Families that run only on some systems (ua-parser OS families).
_APPLE_OS = frozenset({"Mac OS X", "iOS", "Mac OS", "ATV OS X", "tvOS", "iPadOS", "watchOS"})
_OS_OF = {
    "Mobile Safari": frozenset({"iOS"}), "Mobile Safari UI/WKWebView": frozenset({"iOS"}),
    "Chrome Mobile iOS": frozenset({"iOS"}), "Firefox iOS": frozenset({"iOS"}), "Edge Mobile iOS": frozenset({"iOS"}),
}
# An iPad asks for desktop sites (iPadOS 13 and later): its browsers then write a Mac's platform,
# frozen at 10_15, on iOS's WebKit, and keep their own iOS token (`FxiOS/119.0`, `EdgiOS/108`).
_IPAD_DESKTOP = re.compile(r"Mozilla/5\.0 \(Macintosh; Intel Mac OS X 10_15(?:_\d+)?\) AppleWebKit/605\.1\.15 ")
_WINDOWS_ONLY = frozenset({"IE", "IE Mobile", "IE Large Screen"})
# Internet Explorer up to 5 also ran on Macs (IE for Mac: `MSIE 5.23; Mac_PowerPC`), on Unix
# workstations (IE for UNIX: `MSIE 5.0; SunOS 5.9 sun4u; X11`) and on Microsoft's WebTV set-top
# boxes, which named themselves first (`Mozilla/4.0 WebTV/2.6 (compatible; MSIE 4.0)`); from 6 on,
# on Windows only.
_IE_BEFORE_6_BEYOND_WINDOWS = re.compile(r"MSIE [2-5]\.\d+\w*; (?:Mac_|[^()]*\bX11\b)|"
                                         r"WebTV/[\d.]+ \(compatible; MSIE [2-5]\.")
_CHROME_BUILDS = ((28, 1500), (44, 2403), (50, 2661), (60, 3112), (70, 3538), (80, 3987), (90, 4430),
                  (100, 4896), (110, 5481), (120, 6099), (130, 6723), (140, 7339))  # major, its first build
_CHROME_VERSION = re.compile(r"(?:Chrome|CriOS|Chromium)/(\d+)\.(\d+)\.(\d+)")
_EDG = re.compile(r"Edg(?:A|iOS)?/(\d+)")
_FIREFOX = re.compile(r"rv:(\d+)\.\d+\) Gecko/\S+ Firefox/(\d+)")
_WEBKIT_BUILD = re.compile(r"AppleWebKit/(\d+)(?:\.(\d+))?")
_SAFARI_VERSION = re.compile(r"Version/(\d+)")

@cache
def _parser() -> ua_parser.Parser:
    # Built on first use (about 0.5 s: uap-core's regexes into the Rust matcher), once per process.
    return ua_parser.Parser.from_matchers(ua_parser.load_builtins())


@cache
def _tool_rules() -> ua_parser.Parser:
    """uap-core's rules that come before its first browser rule (HbbTV): GIS and podcast apps'
    clients, CFNetwork, uptime and synthetic-testing monitors (Pingdom, RuxitSynthetic,
    StatusCake, WebPageTest), link previewers, HTTP libraries and its generic bot rules. uap-core
    matches them first because they copy a browser's tokens, which would otherwise name a browser
    (`... Chrome/144 Safari/537.36 RuxitSynthetic/1.0` is "Ruxit Synthetic"). A user agent one of
    them matches is not a browser, whatever tokens it carries; Facebook's in-app browser, matched
    there for its [FB..] tokens, is a WebView and keeps its browser reading. Built on the same
    matcher as the full parser (a few µs a string; Python's re over these rules takes milliseconds)."""
    matchers = ua_parser.load_builtins()[0]
    head = matchers[:next(i for i, m in enumerate(matchers) if m.regex.startswith("(HbbTV)"))]
    return ua_parser.Parser(ua_parser.BestAvailableResolver(([m for m in head if "Facebook" not in m.family],
                                                              [], [])))


# ua-parser gives the family of the first rule that matches and the tool rules come first, so a
# browser-form user agent it calls one of these browsers matched none of them: the check (a few µs)
# is left out for them. (A tool rule names "Safari" only from an app's `Safari/9537 CFNetwork/..`,
# which has no browser's form and is refused before.)
_NAMED_BY_BROWSER_RULES = frozenset({
    "Chrome", "Chrome Mobile", "Chrome Mobile iOS", "Chrome Mobile WebView", "Mobile Safari",
    "Mobile Safari UI/WKWebView", "Safari", "Firefox", "Firefox Mobile", "Firefox iOS", "Edge", "Edge Mobile",
    "Samsung Internet", "Opera", "IE"})


def _tool_named(ua: str, family: str) -> bool:
    return family not in _NAMED_BY_BROWSER_RULES and _tool_rules().parse_user_agent(ua) is not None


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


def _chrome_build_fits(major: int, build: int) -> bool:
    """Chrome's build number grows with its major version (M120 shipped builds 6099.x): a build
    far from its major's (interpolated) first build is a generated string. Reduced user agents
    send M.0.0.0."""
    if build == 0 or major < _CHROME_BUILDS[0][0]:
        return True
    below = [p for p in _CHROME_BUILDS if p[0] <= major][-1]
    above = next((p for p in _CHROME_BUILDS if p[0] > major), None)
    (m0, b0), (m1, b1) = (below, above) if above else (_CHROME_BUILDS[-2], _CHROME_BUILDS[-1])
    expected = b0 + (b1 - b0) * (major - m0) / (m1 - m0)
    return abs(build - expected) <= 250


def _model_mismatch(ua: str, family: str, major: Any, os_family: str, os_major: Any) -> str | None:
    """Why this user agent is not a browser kyc recognises, or None. Date-free checks only."""
    if _PROBE.search(ua):
        return "unrecognised"
    engine = next((name for name, proves in _ENGINES if proves(ua)), None)
    if (family in ENGINELESS_BROWSERS and engine in (None, "presto", "ucweb")) \
            or (engine in ("presto", "ucweb", "webkit") and _OWN_FORM.search(ua)) \
            or (engine is None and _NETSCAPE_FORM.match(ua)) \
            or _names_browser_only_system(ua):
        return None
    if not (_BROWSER_FORM.match(ua) or _APP_THEN_BROWSER.match(ua) or _embeds_browser_form(ua)):
        return None if _DEVICE_FORM.search(ua) else "unrecognised"
    if engine in ("gecko", "servo") and "rv:" in ua and not _RV_LAST.search(ua) \
            and not _GECKO_DEVICE_COMMENT.search(ua):
        return "tokens"                          # Gecko's comment ends with rv:
    if engine is None and _DEVICE_FORM.search(ua):
        return None
    if engine is None or family in _NOT_BROWSERS or (_tool_named(ua, family) and not _WEBVIEW.search(ua)):
        return "unrecognised"
    if _KHTML_WORDS.search(ua):
        return "tokens"
    if family == "Other":
        return None                              # a build of a known engine ua-parser has no name for
    grammar = _ENDS_AS.get(family)
    if grammar is not None and isinstance(major, int) and major >= grammar[0]:
        ending = ua.rstrip()
        # (most strings end with the token itself: the comments are stripped, 10 µs, only when not)
        if not grammar[1].search(ending) and not grammar[1].search(_TRAILING_COMMENTS.sub("", ending)) \
                and not _ends_as_after_vendor_tokens(ending, grammar[1]) and not _EMBEDDED_CHROME.match(ua):
            return "tokens"
    if family == "Chrome" and isinstance(major, int) and major >= 30 and os_family in _CHROME_DESKTOP_OS \
            and not _CHROME_PLATFORM.match(ua, max(0, ua.find("Mozilla/5.0 ("))) and not _DEVICE_FORM.search(ua):
        return "tokens"                          # (TV standards' strings write their own comment)
    if family in _OS_OF and os_family not in _OS_OF[family] and not _IPAD_DESKTOP.match(ua):
        return "os"
    if family == "Safari" and "Version/" in ua and os_family not in _APPLE_OS and os_family != "Other" \
            and not ("SmartTV" in ua or "Web0S" in ua or "Tizen" in ua or "(X11;" in ua) \
            and os_family not in ("Linux", "Android") \
            and not (os_family.startswith("Windows") and _SAFARI_VERSION.search(ua)
                     and int(_SAFARI_VERSION.search(ua).group(1)) <= 5):
        return "os"                              # Apple's Safari (Version/N) runs on Apple systems (and Windows up to 5.1);
                                                 # on Linux, `Version/N Safari/` is WebKit's own form (GNOME Web,
                                                 # WPE and set-top boxes' embedded WebKit; on X11 whichever
                                                 # distribution or BSD it names: `X11; Ubuntu; Linux x86_64`,
                                                 # `X11; FreeBSD amd64`), on Android the stock
                                                 # (AOSP) browser's, and TVs write it too
    if family in _WINDOWS_ONLY and not os_family.startswith("Windows") and not _IE_BEFORE_6_BEYOND_WINDOWS.search(ua):
        return "os"
    if os_family == "iOS" and engine not in ("webkit",):
        return "engine"                          # every iOS browser is WebKit (Apple's App Store rule)
    if family == "Chrome" and os_family == "iOS":
        return "os"                              # Chrome on iOS says CriOS
    if engine == "blink":
        version = _CHROME_VERSION.search(ua)
        if version and not _chrome_build_fits(int(version.group(1)), int(version.group(3))):
            return "engine"
        edge = _EDG.search(ua)
        if edge and version and int(edge.group(1)) >= 79 and int(edge.group(1)) != int(version.group(1)):
            return "engine"                      # Chromium Edge's major is its Chromium's major
    if engine == "gecko" and "Firefox/" in ua:
        firefox = _FIREFOX.search(ua)
        if firefox:
            rv, major = int(firefox.group(1)), int(firefox.group(2))
            if family.startswith("Firefox") and major >= 5 and rv != major \
                    and not (rv == 109 and 110 <= major <= 119):
                return "engine"                  # rv is Firefox's own major from 5 (4 was rv:2.0), frozen at
                                                 # 109 for 110-119; forks (Pale Moon, Waterfox) number their own
    if engine == "webkit" and family in ("Safari", "Mobile Safari"):
        build, version = _WEBKIT_BUILD.search(ua), _SAFARI_VERSION.search(ua)
        if build and version:
            webkit, safari = (int(build.group(1)), int(build.group(2) or 0)), int(version.group(1))
            if safari >= 13 and webkit != (605, 1):
                return "engine"                  # Safari 13+ froze WebKit at 605.1.15
            if 11 <= safari <= 12 and not 604 <= webkit[0] <= 606:
                return "engine"
            if family == "Mobile Safari" and isinstance(os_major, int) and os_major >= 8 and safari != os_major \
                    and not (os_major == 18 and safari >= 26):
                return "engine"                  # iOS Safari's version is iOS's; iOS 26 reports OS 18_x
    if family.startswith("Mobile Safari") and "(iPhone" in ua and "Mobile/" not in ua:
        return "mobile"     # Apple's own iPhone string (Safari, WKWebView) always has Mobile/; apps and
                            # other browsers (Snapchat, Puffin, PHX) write their own
    return None


@lru_cache(maxsize=16384)
def _ua_facts(ua: str) -> dict[str, Any]:
    facts = _facts_of(ua)
    if (facts["bot"] or facts.get("browser_mismatch") == "unrecognised") and "Android" in ua \
            and not _PROBE.search(ua):
        model_free = _ANDROID_MODEL.sub(r"\1", ua, count=1)   # (rare: bots and strangers only)
        if model_free != ua:
            again = _facts_of(model_free)
            if again["real_browser"]:
                return again
    return facts


# The app's own product token at the end of a WebView's string (`Mobile Safari/537.36
# CamScanner/6.60.0`): the app's name, in which a bot's word (a document scanner, a baby monitor)
# says nothing about the software that fetches the page.
_WEBVIEW_APP_TOKENS = re.compile(r"(safari/[\d.]+)(?: [a-z][\w-]*/\d[\w.]*)+$")


def _self_declared_bot(ua: str, lowered: str) -> bool:
    if _SELF_DECLARED_BOT.search(lowered) is None:
        return False
    if not _WEBVIEW.search(ua):           # (only strings with a bot's word pay for the WebView test)
        return True
    return _SELF_DECLARED_BOT.search(_WEBVIEW_APP_TOKENS.sub(r"\1", lowered)) is not None


def _facts_of(ua: str) -> dict[str, Any]:
    parsed = _ParsedAgent(ua)
    lowered = ua.lower()
    marker = next((m for m in AUTOMATION_MARKERS if m in lowered and (m != "java/" or _JDK_CLIENT.search(lowered))),
                  None)
    bot = parsed.is_bot or marker is not None or _self_declared_bot(ua, lowered)
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
    os_major = parsed.os.version[0] if parsed.os.version else None
    mismatch = "bot" if bot else _model_mismatch(ua, parsed.browser.family, major, parsed.os.family, os_major)
    facts["real_browser"] = mismatch is None
    if mismatch:
        facts["browser_mismatch"] = mismatch
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
                if facts["real_browser"] and facts["browser_major"] > current + 1:   # beta/dev are a step ahead
                    facts.update(real_browser=False, browser_mismatch="version")
    else:
        facts = {"ua_missing": True}
    if client_hints and isinstance(client_hints, dict):
        facts.update(_hints_facts(client_hints, facts))
        if facts.get("real_browser") and (facts.get("hints_platform_mismatch") or facts.get("hints_mobile_mismatch")
                                          or facts.get("hints_browser_mismatch")):
            facts.update(real_browser=False, browser_mismatch="hints")
        elif facts.get("bot") and facts.get("real_browser"):        # HeadlessChrome in the hints
            facts.update(real_browser=False, browser_mismatch="bot")
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
