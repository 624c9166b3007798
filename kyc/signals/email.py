"""Email facts: syntax, domain, provider canonical form, disposable, free-mail and role addresses,
and the shape of the local part (length, digits, randomness, template)."""

from __future__ import annotations

import importlib
import json
import math
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS
from email_validator import EmailNotValidError, validate_email

from kyc.engine.schema import Field

FIELDS = (
    Field("email.valid", "bool", "The address is syntactically valid (RFC 5321/5322 practical subset).", True,
          "email-validator"),
    Field("email.domain", "str", "Lower-cased ASCII (IDNA) domain, trailing dot removed.", "gmail.com",
          "email-validator"),
    Field("email.provider", "str", "Mailbox provider whose address rules give the canonical form: gmail | "
                                   "outlook | yahoo | proton | icloud | fastmail.", "gmail", "kyc"),
    Field("email.canonical_differs", "bool", "The address differs from its provider canonical form (dots, "
                                             "+tag or -keyword that the provider ignores).", False, "kyc"),
    Field("email.disposable", "bool", "Domain (or a parent domain) is a known throwaway provider.", False,
          "disposable-email-domains package"),
    Field("email.privacy_relay", "str", "The domain is a privacy relay's that forwards to a real mailbox: "
                                        "apple_hide_my_email, firefox_relay, duckduckgo, simplelogin, addy, "
                                        "proton_pass, 33mail. Random-looking local parts are normal there; these "
                                        "are not throwaway mailboxes.", "firefox_relay",
          "kyc (the relays' published domains)"),
    Field("email.free", "bool", "Domain is a free-mail provider.", True, "rules/lists/free_email_domains.txt"),
    Field("email.role", "bool", "The local part is a role or shared mailbox (admin@, info@, support@, ...).",
          False, "kyc"),
    Field("email.local_length", "int", "Length of the local part.", 8, "kyc"),
    Field("email.local_digits", "int", "Number of digits in the local part.", 2, "kyc"),
    Field("email.digit_suffix", "int", "Length of the run of digits that ends the local part.", 2, "kyc"),
    Field("email.plus_tag", "bool", "The local part carries a +tag.", False, "kyc"),
    Field("email.local_randomness", "float",
          "0 (name-like) to 1 (keyboard noise): mean surprisal of the local part's letter pairs under a "
          "letter-bigram model of real place names, digits inside words counted as noise.", 0.23,
          "kyc/data/letter_bigrams.json (phonenumbers' English geocoding names)"),
    Field("email.template", "str", "Shape of the local part: L upper, l lower, 9 digit, punctuation kept "
                                   "(Jane.Doe84 -> Llll.Lll99). Farms generating names from one pattern "
                                   "share it.", "llll.lllll99", "kyc"),
)

# Provider address rules: which spellings reach the same mailbox.
_PROVIDERS = {
    "gmail": {"gmail.com", "googlemail.com"},
    "outlook": {"outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "hotmail.fr",
                "outlook.fr", "live.co.uk", "live.fr", "hotmail.de", "hotmail.it", "hotmail.es"},
    "yahoo": {"yahoo.com", "ymail.com", "rocketmail.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de",
              "yahoo.co.jp", "yahoo.es", "yahoo.it", "yahoo.ca", "yahoo.com.au", "yahoo.co.in"},
    "proton": {"proton.me", "protonmail.com", "protonmail.ch", "pm.me"},
    "icloud": {"icloud.com", "me.com", "mac.com"},
    "fastmail": {"fastmail.com", "fastmail.fm"},
}
_PROVIDER_OF = {domain: name for name, domains in _PROVIDERS.items() for domain in domains}
# Domains that are aliases of one mailbox namespace.
_DOMAIN_ALIAS = {"googlemail.com": "gmail.com", "protonmail.com": "proton.me", "protonmail.ch": "proton.me",
                 "pm.me": "proton.me", "me.com": "icloud.com", "mac.com": "icloud.com"}
_PLUS_TAGS = {"gmail", "outlook", "proton", "icloud", "fastmail"}

# Privacy relays: an alias that forwards to the user's real mailbox (each service's documented
# alias domains; addy.io, Firefox Relay and 33mail also give each user a subdomain).
PRIVACY_RELAYS = {
    "privaterelay.appleid.com": "apple_hide_my_email",
    "mozmail.com": "firefox_relay", "relay.firefox.com": "firefox_relay",
    "duck.com": "duckduckgo",
    "simplelogin.com": "simplelogin", "simplelogin.co": "simplelogin", "simplelogin.fr": "simplelogin",
    "aleeas.com": "simplelogin", "slmail.me": "simplelogin", "slmails.com": "simplelogin",
    "silomails.com": "simplelogin", "8alias.com": "simplelogin", "8shield.net": "simplelogin",
    "addy.io": "addy", "anonaddy.com": "addy", "anonaddy.me": "addy",
    "passmail.net": "proton_pass", "passmail.com": "proton_pass", "passinbox.com": "proton_pass",
    "passfwd.com": "proton_pass",
    "33mail.com": "33mail",
}

# RFC 2142 mailbox names and common shared inboxes.
ROLE_LOCAL_PARTS = frozenset({
    "abuse", "accounts", "admin", "administrator", "billing", "careers", "contact", "help", "hello", "hostmaster",
    "hr", "info", "jobs", "mail", "marketing", "news", "newsletter", "no-reply", "noc", "noreply", "office",
    "postmaster", "root", "sales", "security", "support", "sysadmin", "team", "test", "webmaster",
})

BIGRAMS_PATH = Path(__file__).resolve().parent.parent / "data" / "letter_bigrams.json"
_INNER_DIGITS_BITS = 12.0     # entering and leaving a digit run inside letters (xk2q9): two unlikely steps
_SURPRISAL_FLOOR, _SURPRISAL_SPAN = 3.0, 5.0   # bits: names sit near 3-4.5, keyboard noise above 6.5
_TOKENS = re.compile(r"[a-z]+|[0-9]+")


def is_disposable(domain: str) -> bool:
    if domain in DISPOSABLE_DOMAINS:
        return True
    parts = domain.split(".")
    return any(".".join(parts[i:]) in DISPOSABLE_DOMAINS for i in range(1, len(parts) - 1))


def privacy_relay(domain: str) -> str | None:
    parts = domain.split(".")
    return next((PRIVACY_RELAYS[".".join(parts[i:])] for i in range(len(parts) - 1)
                 if ".".join(parts[i:]) in PRIVACY_RELAYS), None)


def canonical(local: str, domain: str) -> str:
    """The mailbox an address reaches, for linking: Jane.Doe+x@googlemail.com -> janedoe@gmail.com."""
    local = local.lower()
    provider = _PROVIDER_OF.get(domain)
    if provider in _PLUS_TAGS:
        local = local.split("+", 1)[0]
    if provider == "gmail":
        local = local.replace(".", "")
    elif provider == "yahoo":
        local = local.split("-", 1)[0]          # Yahoo disposable addresses: base-keyword@
    return f"{local}@{_DOMAIN_ALIAS.get(domain, domain)}"


def template(local: str) -> str:
    return "".join("9" if ch.isdigit() else "L" if ch.isupper() else "l" if ch.isalpha() else ch
                   for ch in local)


def build_bigram_model() -> dict[str, Any]:
    """Letter-pair counts over the distinct words of phonenumbers' English geocoding names
    (place names from every country): a real, multilingual sample of pronounceable words."""
    from collections import Counter

    import phonenumbers
    from phonenumbers.geodata import GEOCODE_DATA

    words: set[str] = set()
    for names in GEOCODE_DATA.values():
        if names.get("en"):
            words.update(re.findall(r"[a-z]+", names["en"].lower()))
    pairs: Counter = Counter()
    for word in words:
        padded = f"^{word}$"
        pairs.update(a + b for a, b in zip(padded, padded[1:]))
    return {"source": f"phonenumbers {phonenumbers.__version__} geodata, English names, {len(words)} distinct words",
            "pairs": dict(sorted(pairs.items()))}


@cache
def _surprisal_table() -> dict[str, float]:
    pairs: dict[str, int] = json.loads(BIGRAMS_PATH.read_text())["pairs"]
    totals: dict[str, int] = {}
    for pair, n in pairs.items():
        totals[pair[0]] = totals.get(pair[0], 0) + n
    alphabet = "^abcdefghijklmnopqrstuvwxyz$"
    # Add-half smoothing: unseen pairs are rare, not impossible.
    return {a + b: -math.log2((pairs.get(a + b, 0) + 0.5) / (totals.get(a, 0) + 0.5 * len(alphabet)))
            for a in alphabet[:-1] for b in alphabet[1:]}


def randomness(local: str) -> float | None:
    table = _surprisal_table()
    bits: list[float] = []
    for word in re.split(r"[^a-z0-9]+", local.lower()):
        parts = _TOKENS.findall(word)
        for i, part in enumerate(parts):
            if part[0].isdigit():
                if 0 < i < len(parts) - 1:
                    bits.extend((_INNER_DIGITS_BITS, _INNER_DIGITS_BITS))
                continue
            padded = f"^{part}$"
            bits.extend(table[a + b] for a, b in zip(padded, padded[1:]))
    if not bits:
        return None
    mean = sum(bits) / len(bits)
    return round(min(1.0, max(0.0, (mean - _SURPRISAL_FLOOR) / _SURPRISAL_SPAN)), 3)


# email_validator checks an address's domain (IDNA, UTS 46: most of the cost of a validation)
# every time. Domains repeat where addresses do not, so this process remembers the check per
# domain: a pure function of its arguments, whose result validate_email only reads (a failed
# check raises and is not remembered). Bounded, and emptied with the other per-value caches.
_validator = importlib.import_module("email_validator.validate_email")
_domain_check = _validator.validate_email_domain_name = lru_cache(maxsize=4096)(_validator.validate_email_domain_name)


@lru_cache(maxsize=65536)
def parse(address: str) -> tuple[str, str] | None:
    """(local part, ASCII domain) of a valid address, else None. Never raises."""
    try:
        result = validate_email(address, check_deliverability=False, allow_quoted_local=True)
    except (EmailNotValidError, UnicodeError, ValueError, TypeError):
        return None
    return result.local_part, (result.ascii_domain or result.domain).lower().rstrip(".")


def email_signals(address: str | None, free_domains: frozenset) -> dict[str, Any]:
    if not address or not isinstance(address, str):
        return {}
    parsed = parse(address)
    if parsed is None:
        return {"valid": False}
    local, domain = parsed
    bare = _unquoted(local)
    digits = re.search(r"[0-9]*$", bare).group()
    facts: dict[str, Any] = {
        "valid": True,
        "domain": domain,
        "canonical_differs": canonical(local, domain) != f"{local.lower()}@{domain}",
        "disposable": is_disposable(domain),
        "free": domain in free_domains,
        "role": bare.lower().split("+", 1)[0] in ROLE_LOCAL_PARTS,
        "local_length": len(bare),
        "local_digits": sum(ch.isdigit() for ch in bare),
        "digit_suffix": len(digits),
        "plus_tag": "+" in bare,
        "template": template(bare),
    }
    provider = _PROVIDER_OF.get(domain)
    if provider:
        facts["provider"] = provider
    relay = privacy_relay(domain)
    if relay:
        facts["privacy_relay"] = relay
    score = randomness(bare)
    if score is not None:
        facts["local_randomness"] = score
    return facts


def email_identifiers(address: str | None) -> list[tuple[str, str]]:
    parsed = parse(address) if address and isinstance(address, str) else None
    if parsed is None:
        return []
    local, domain = parsed
    return [("email", canonical(local, domain)), ("email_domain", domain),
            ("email_template", f"{template(_unquoted(local))}@{domain}")]


def _unquoted(local: str) -> str:
    # A quoted local part ("john smith"@x) is measured without its quotes.
    return local[1:-1] if len(local) >= 2 and local[0] == local[-1] == '"' else local
