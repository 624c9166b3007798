"""Secrets and PII handling in one place: keyed hashes, API keys, card-number detection, masking.

Identifiers used for linking are HMAC-SHA256 keyed hashes: without the key, a stolen database
cannot be joined against a list of known emails or phone numbers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal, InvalidOperation
import hmac
import re
import secrets
import unicodedata
from functools import lru_cache
from typing import Any


def keyed_hash(secret: bytes, kind: str, value: str) -> str:
    """128-bit keyed hash of a normalised identifier; the kind is mixed in so kinds never collide."""
    mac = _keyed(secret).copy()         # the key's padding hashed once, not per identifier: 7.5 -> 4.9 us
    mac.update(f"{kind}\x00{value}".encode())
    return mac.hexdigest()[:32]


class KeyedHashes:
    """keyed_hash with one secret, each (kind, value) computed once: a batch of activity
    reports hashes an identifier for its day, its report and its linking (9 hashes a report,
    4 of them repeats, in a bulk call of 1,000). Lives as long as the batch."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self._done: dict[tuple[str, str], str] = {}

    def __call__(self, kind: str, value: str) -> str:
        key = (kind, value)
        digest = self._done.get(key)
        if digest is None:
            digest = self._done[key] = keyed_hash(self.secret, kind, value)
        return digest


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    return hmac.new(secret, digestmod=hashlib.sha256)


# --- API keys -------------------------------------------------------------------------------

KEY_PREFIX = "kyc_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys are 256-bit random strings, so a plain SHA-256 is as strong as a slow hash here
    # and keeps authentication off the hot path's budget.
    return hashlib.sha256(key.encode()).hexdigest()


# --- Card numbers (PAN) ---------------------------------------------------------------------
#
# The rule, precisely. Text holds a card number when it holds a *run*: decimal digits of any
# script (str.isdecimal: ASCII, fullwidth, Arabic-Indic, Devanagari, ...), in groups joined by
# separators of 1 to 4 characters each, or by whitespace however long (a number pasted from a
# formatted table, "4242     4242 ..."), where a separator is any character that is neither a
# letter nor a digit (whitespace of every kind, dashes, dots, slashes, underscores, plus signs,
# symbols, control characters) except the list and time punctuation ',', ';' and ':', and where
# some span of whole consecutive groups holds 13 to 19 digits and passes the Luhn check.
# Not card numbers:
#   - a run written right after '+' with at most 15 digits in all: an E.164 phone number
#     (one in ten passes Luhn by chance). A '+' before 16-19 digits does not exempt them.
#   - a group glued to a letter ("x4111...", the digits of a hex hash or id): a number inside
#     a word, as data-loss scanners read word boundaries. Its other groups still count.
#   - a single unseparated group longer than 19 digits (ids); spans never cut a group.
#   - only zeros (a nil UUID, 00000000-0000-0000-0000-000000000000): no card number is.
#   - 14 digits that read as a time stamp YYYYMMDDhhmmss from 19xx or 20xx.
#   - groups joined by dots where one has one or two digits: a version or an address
#     (GSA/359.1.734651750, in a real iPhone user agent, passes Luhn).
# RFC 3339 times (':' and 'T' break them), Unix seconds (10 digits), IPv4 addresses (12 digits
# at most), lists of numbers (', '), UUIDs and hex hashes never match; a 13-19 digit integer
# (Unix milliseconds, a 64-bit id) that passes Luhn does, as it must: it cannot be told apart.

_SEPARATOR = r"(?:[^\w,;:]|_)"
_JOIN = r"(?:" + _SEPARATOR + r"{1,4}|\s+)"
_RUN = re.compile(r"\d+(?:" + _JOIN + r"\d+)*")
_GROUP = re.compile(r"\d+")
# A necessary condition of the rule, checked first in one C-level search: 13 digits, each next
# one after at most 4 separator characters or any whitespace. Every run holding 13 or more digits holds such a
# stretch, so text without one holds no card number, and the rule proper (a Python loop per
# run) only reads the few texts with one. The card scan was ~17% of a bulk activity call.
_MAYBE_PAN = re.compile(r"\d(?:(?:" + _SEPARATOR + r"{0,4}|\s+)\d){12}")
_MIN_PAN, _MAX_PAN, _MAX_PHONE = 13, 19, 15


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ascii_digits(group: str) -> str:
    return group if group.isascii() else "".join(str(unicodedata.decimal(ch)) for ch in group)


def _run_has_pan(text: str, start: int, end: int) -> bool:
    found = [(m.start(), m.end(), _ascii_digits(m.group())) for m in _GROUP.finditer(text, start, end)]
    if sum(len(g) for _, _, g in found) < _MIN_PAN:
        return False
    if start > 0 and text[start - 1] == "+" and sum(len(g) for _, _, g in found) <= _MAX_PHONE:
        return False                                   # +44 20 7946 0958: a phone number
    if start > 0 and text[start - 1].isalpha():
        found = found[1:]                              # x4111...: digits inside a word
    if end < len(text) and text[end].isalpha():
        found = found[:-1]
    for i in range(len(found)):
        digits = ""
        for j in range(i, len(found)):
            digits += found[j][2]
            if len(digits) > _MAX_PAN:
                break
            if (len(digits) >= _MIN_PAN and luhn_ok(digits) and digits.strip("0")
                    and not _dotted_version(text, found[i:j + 1]) and not _date_stamp(digits)):
                return True
    return False


def _date_stamp(digits: str) -> bool:
    """YYYYMMDDhhmmss (20100715071639 in an archive URL): no network issues 14-digit numbers
    starting 19 or 20 (Diners' 14-digit ones start 30, 36 or 38)."""
    if len(digits) != 14 or digits[:2] not in ("19", "20"):
        return False
    try:
        datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


def _dotted_version(text: str, groups: list[tuple[int, int, str]]) -> bool:
    """Groups joined by dots with one of one or two digits: a version or an address
    (GSA/359.1.734651750 in a real iPhone user agent), never how a card number is written."""
    return len(groups) > 1 and any(
        len(digits) < 3 and "." in text[max(groups[0][0], begin - 4):min(groups[-1][1], finish + 4)]
        for begin, finish, digits in groups)


def card_number_spans(text: str) -> list[tuple[int, int]]:
    """Where `text` holds a card number: the (start, end) of each run holding one."""
    if _MAYBE_PAN.search(text) is None:
        return []
    return [m.span() for m in _RUN.finditer(text) if _run_has_pan(text, *m.span())]


# A weaker necessary condition for long texts read together, on the text's UTF-8 bytes in two
# C-level passes (bytes.translate, then a substring search) where the regex above steps through
# every digit: a bulk activity call's body (1,000 reports, 391 KB) 26 -> 0.55 ms, a gateway call's
# URL and headers (kyc.api.guard's hook) 20.1 -> 11.2 us the whole hook (best of 5). Separators are
# deleted however many stand between two digits, and each byte of a non-ASCII character counts
# as a digit (a Unicode digit is one; a non-ASCII separator or letter then lengthens a run of
# digits, never breaks one): whatever the regex finds, this finds too.
_BYTE_CLASSES = bytes(ord("d") if chr(b).isdigit() or b >= 0x80 else ord("b") for b in range(256))
_SEPARATOR_BYTES = bytes(b for b in range(0x80) if re.fullmatch(_SEPARATOR, chr(b)))
_DIGIT_RUN = b"d" * _MIN_PAN


def may_hold_card_number(text: str) -> bool:
    """A necessary condition of the rule: False means no card number; True, ask has_card_number.
    A prefilter for texts read together (a request's headers, a JSON body)."""
    return _DIGIT_RUN in text.encode("utf-8", "surrogatepass").translate(_BYTE_CLASSES, _SEPARATOR_BYTES)


def has_card_number(text: str) -> bool:
    if _MAYBE_PAN.search(text) is None:
        return False
    return any(_run_has_pan(text, *m.span()) for m in _RUN.finditer(text))


def redact_card_numbers(text: str) -> str:
    """The text with every run holding a card number replaced by "[card]": for log lines,
    which cannot refuse (gunicorn's access log of a request line, kyc's own log records)."""
    for start, end in reversed(card_number_spans(text)):
        text = text[:start] + "[card]" + text[end:]
    return text


def number_has_card_number(literal: str) -> bool:
    """A JSON number as written whose whole part is a card number (-4111111111111111,
    4111111111111111.0, 4.111111111111111e15). Not the digits of a fraction: a float a gateway
    computes (interval_cv = 0.8444218515250481) holds 16 or 17 of them, which pass the Luhn
    check one time in ten; read as a card number, one report in ten and nearly every bulk call
    of such reports were refused."""
    mantissa = re.split(r"[eE]", literal, maxsplit=1)[0]
    if has_card_number(mantissa.split(".", 1)[0]):
        return True
    # A whole value written otherwise (4.111111111111111e15, 4111.111111111111e12), read exactly:
    # a float would round the last digits of 17 to 19.
    try:
        value = abs(Decimal(literal))
    except InvalidOperation:
        return False
    return (value.is_finite() and _LEAST_PAN <= value < _PAST_PAN and value == value.to_integral_value()
            and has_card_number(str(int(value))))


_LEAST_PAN, _PAST_PAN = Decimal(10) ** 12, Decimal(10) ** 20


def contains_card_number(value: Any) -> bool:
    """True if a card number appears anywhere in a parsed JSON value (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if has_card_number(item):
                return True
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, (int, float)):
            if number_has_card_number(repr(item)):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# --- Masking for logs -----------------------------------------------------------------------

def mask_email(email: str | None) -> str:
    if not email or "@" not in email:
        return "-"
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_ip(ip: str | None) -> str:
    if not ip:
        return "-"
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + ":*"
    parts = ip.split(".")
    return ".".join(parts[:2] + ["*", "*"]) if len(parts) == 4 else "*"


def mask_phone(phone: str | None) -> str:
    if not phone:
        return "-"
    return phone[:4] + "***" + phone[-2:] if len(phone) > 6 else "***"
