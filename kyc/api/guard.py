"""What every request is refused for before a view runs: the one place requests are read.

- A card number (kyc.security's rule) in the URL path, the query string or any header: 400
  `card_number_refused` before authentication, routing errors or any log line of kyc's, so an
  account id that is a card number never reaches the service log, the database or Redis.
- NUL characters and lone surrogates in the path or query: 400 (PostgreSQL refuses NUL; a
  lone surrogate cannot be encoded).
- The body, however it is sent (Content-Length or chunked): at most KYC_MAX_BODY_BYTES, else
  413; never truncated and scored.
- JSON bodies: strict UTF-8; no NaN, Infinity or numbers past the float range (1e999999);
  nesting at most MAX_JSON_DEPTH; no NUL or lone surrogate in any key or text; no card number
  in any key, text or number as written; no key twice in one object (a parser keeps the last,
  and every check would see only that one: a card number, NaN or NUL in the first went by).
  Errors name the field where one can be named, and a card number is never echoed (its error
  names no field, since a key may be the number).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import request

from kyc.api.errors import ApiError, invalid
from kyc.security import has_card_number, may_hold_card_number, number_has_card_number

MAX_JSON_DEPTH = 32
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def card_number_refused(where: str = "the body") -> ApiError:
    return ApiError(400, "card_number_refused",
                    f"{where} contains a full card number; send the processor's fingerprint, bin and last4 only")


def _text_problem(text: str) -> str | None:
    match = _BAD_TEXT.search(text)
    if match is None:
        return None
    return "contains a NUL character" if match.group() == "\x00" else "contains a lone surrogate (not Unicode text)"


# Conditional-request headers echo entity tags this server issued and are neither logged nor
# stored; a static file's tag (mtime.micros-size-checksum) passes Luhn one time in ten, and
# browsers revalidating the console's favicon were refused.
_VALIDATORS = frozenset({"if-none-match", "if-match", "if-range"})
# The same headers as the WSGI environ names them, and the two it names without HTTP_.
_VALIDATOR_KEYS = frozenset({"HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH", "HTTP_IF_RANGE"})
_UNPREFIXED = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


def check_url_and_headers() -> None:
    """Flask before_request hook, registered before every other one."""
    req = request._get_current_object()
    environ = req.environ
    path = req.path
    query = req.query_string.decode("latin-1")
    args = [part for pair in req.args.items(multi=True) for part in pair]
    # Everything read at once first (almost never a hit), each part on its own only then: the
    # per-part checks were most of this hook's CPU on the gateway's calls. A line break joins
    # the parts: it neither hides a card number (it is a separator of the rule) nor makes one.
    # The headers are read from the environ as the server wrote them (their names as
    # HTTP_USER_AGENT: the same letters and digits), not through request.headers, which spells
    # each name anew: 9.0 -> 4.5 us this hook (in-process, best of 5).
    url = "\n".join((path, *args))
    together = "\n".join((url, query, *(f"{key}\n{value}" for key, value in environ.items()
                                        if (key.startswith("HTTP_") or key in _UNPREFIXED)
                                        and key not in _VALIDATOR_KEYS and isinstance(value, str))))
    if may_hold_card_number(together) or (not together.isascii() and may_hold_card_number(_as_utf8(together))):
        headers = [(name, value) for name, value in req.headers.items() if name.lower() not in _VALIDATORS]
        _refuse_a_card_number(path, query, args, headers)
    if _BAD_TEXT.search(url) is None:
        return
    problem = _text_problem(path)
    if problem:
        raise invalid(f"the URL path {problem}", {"path": problem})
    for name, value in request.args.items(multi=True):
        problem = _text_problem(name) or _text_problem(value)
        if problem:
            raise invalid(f"the query string {problem}", {name if not _text_problem(name) else "query": problem})


def _as_utf8(value: str) -> str:
    # WSGI hands header bytes over as latin-1; a client sending UTF-8 (fullwidth digits) is
    # read both ways.
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


def _refuse_a_card_number(path: str, query: str, args: list[str], headers: list[tuple[str, str]]) -> None:
    """Raise card_number_refused naming where the card number is, if there is one."""
    if has_card_number(path):
        raise card_number_refused("the URL path")
    if has_card_number(query) or any(has_card_number(a) for a in args):
        raise card_number_refused("the query string")
    for name, value in headers:
        if has_card_number(value) or has_card_number(_as_utf8(value)) or has_card_number(name):
            raise card_number_refused(f"the {name} header")


def read_body(limit: int) -> bytes:
    """The raw body, refused with 413 past `limit` bytes whether or not Content-Length was sent."""
    too_large = ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    request.max_content_length = limit       # the app's MAX_CONTENT_LENGTH, raised for this endpoint
    length = request.content_length
    if length is not None:
        if length > limit:
            raise too_large
        return request.get_data(cache=False)
    if not request.environ.get("wsgi.input_terminated"):
        return b""                  # no length and a server that does not end the stream: no body
    # Chunked: the server ends the stream; read one byte past the limit to know it was passed.
    # (request.stream would stop quietly at the limit: a longer body scored as its first part.)
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise too_large
    return raw


class _NonFinite(float):
    """A number the JSON held that is not a finite float (NaN, Infinity, 1e999999)."""


def _parse_float(literal: str) -> float:
    if number_has_card_number(literal):
        raise card_number_refused()
    value = float(literal)
    return value if math.isfinite(value) else _NonFinite(value)


def _parse_int(literal: str) -> int:
    if len(literal) >= 13 and number_has_card_number(literal):
        raise card_number_refused()
    return int(literal)


def _parse_constant(literal: str) -> float:
    return _NonFinite(literal.replace("Infinity", "inf"))


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: an object naming a key twice is refused. It costs 0.9 ms of a bulk
    activity call of 1,000 reports (2.7 ms to parse its body, 1.8 without; the call takes about
    240 ms)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


def decode_json(raw: bytes) -> Any:
    """Parse and check a JSON body; every refusal is an ApiError in the contract's shape."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"the body is not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant,
                          object_pairs_hook=_object)
    except _DuplicateKey as exc:
        # Refused either way; a card number anywhere in the body (a shadowed value's) is named as one.
        if has_card_number(text):
            raise card_number_refused() from None
        field = exc.key if len(exc.key) <= 128 and _text_problem(exc.key) is None else "body"
        raise invalid("the request has invalid fields",
                      {field: "is given more than once in one object; send each field once"}) from None
    except RecursionError:
        raise invalid(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:      # json.JSONDecodeError, and ints past Python's 4,300 digits
        message = str(exc).split(":")[0] if "Exceeds the limit" in str(exc) else str(exc)
        raise invalid(f"the body is not valid JSON: {message}") from None
    # Without a backslash every decoded text (key or value) is a piece of the body as sent, and
    # can hold neither NUL (refused raw by the parser) nor a lone surrogate (refused by the
    # UTF-8 decoding): one search of the whole body for the card rule's necessary condition
    # then clears every text at once. It was 18% of a bulk activity call's CPU text by text.
    problems = _check(data, texts=False) if "\\" not in text and not may_hold_card_number(text) else _check(data)
    if problems:
        raise invalid("the request has invalid fields", problems)
    return data


def _check(data: Any, texts: bool = True) -> dict[str, str]:
    """Walk the parsed body once, without recursion: card numbers first (refused outright),
    then depth, non-finite numbers, NUL and lone surrogates (named by field). `texts=False`:
    keys and strings are known clean (decode_json says when)."""
    problems: dict[str, str] = {}
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            problems.setdefault(path or "body", f"nested deeper than {MAX_JSON_DEPTH} levels")
            continue
        if isinstance(item, str):
            if not texts:
                continue
            if has_card_number(item):
                raise card_number_refused()
            problem = _text_problem(item)
            if problem:
                problems.setdefault(path or "body", problem)
        elif isinstance(item, _NonFinite):
            problems.setdefault(path or "body", "must be a finite number (no NaN, Infinity or 1e999999)")
        elif isinstance(item, dict):
            for key, value in item.items():
                if not texts:
                    stack.append((value, f"{path}.{key}" if path else key, depth + 1))
                    continue
                if has_card_number(key):
                    raise card_number_refused()
                problem = _text_problem(key)
                if problem:
                    problems.setdefault(path or "body", f"a key {problem}")
                    continue
                stack.append((value, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            stack.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(item))
    return problems
