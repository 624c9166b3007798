"""Never a card number: a full PAN anywhere in a payment-method body is refused with 400, and
the number appears in no error body, no log line (application, SQL, werkzeug and gunicorn access
logs) and no database row."""

from __future__ import annotations

import http.client
import unicodedata
import urllib.parse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import MetaData, func, select

from kyc.models import Account, Evaluation, Sighting
from kyc.security import luhn_ok
from tests.conftest import free_port, payment, signup


def with_check_digit(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


# Distinctive numbers, so finding their digits anywhere cannot be a coincidence.
VISA = with_check_digit("453957812736401")                 # 16 digits
AMEX = with_check_digit("37649281735012")                  # 15 digits
LONG = with_check_digit("621483957261039485")              # 19 digits
PANS = (VISA, AMEX, LONG)


def spaced(pan: str) -> str:
    return " ".join(pan[i:i + 4] for i in range(0, len(pan), 4))


def dashed(pan: str) -> str:
    return "-".join(pan[i:i + 4] for i in range(0, len(pan), 4))


# Where a careless integration puts a card number.
PLACES = [
    pytest.param({"fingerprint": VISA}, id="fingerprint"),
    pytest.param({"fingerprint": spaced(VISA)}, id="fingerprint-spaced"),
    pytest.param({"billing_postal_code": dashed(AMEX)}, id="postal-dashed-amex"),
    pytest.param({"card_number": VISA}, id="unknown-field"),
    pytest.param({"metadata": {"card": {"number": spaced(LONG)}}}, id="nested-19-digits"),
    pytest.param({"metadata": {"cards": [1, {"pan": int(VISA)}]}}, id="json-number"),
    pytest.param({"metadata": {VISA: "as a key"}}, id="object-key"),
    pytest.param({"metadata": {"note": f"customer typed {dashed(VISA)} into the name field"}}, id="in-text"),
]


def leaks(text: str) -> list[str]:
    """The card numbers found in `text`, in any grouping (digits only, spaced, dashed)."""
    found = []
    digits = re.sub(r"[ -]", "", text)
    for pan in PANS:
        if pan in text or pan in digits or spaced(pan) in text or dashed(pan) in text:
            found.append(pan)
    return found


def _counts(runtime) -> tuple[int, int, int]:
    with runtime.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Account, Evaluation, Sighting))


def _every_row(runtime) -> list[str]:
    """Every cell of every table, as text."""
    metadata = MetaData()
    metadata.reflect(runtime.engine)
    cells = []
    with runtime.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(table.select()):
                cells.extend(str(value) for value in row)
    return cells


def test_the_test_numbers_are_card_numbers():
    assert all(luhn_ok(p) for p in PANS) and [len(p) for p in PANS] == [16, 15, 19]
    assert leaks(f"x {spaced(VISA)} y") == [VISA] and leaks("no card here 4539 5781") == []


@pytest.mark.parametrize("place", PLACES)
def test_refused_with_400_and_never_echoed(client, auth, runtime, place):
    # The card's own BIN and last4 in the same body are fine; only the full number is refused.
    response = client.post("/v1/payment-methods", json=payment(bin=VISA[:8], last4=VISA[-4:], **place), headers=auth)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "card_number_refused"
    assert leaks(response.get_data(as_text=True)) == []
    assert leaks(str(dict(response.headers))) == []
    assert _counts(runtime) == (0, 0, 0)


def test_malformed_json_with_a_card_number_is_not_echoed(client, auth):
    raw = '{"account_id": "a", "fingerprint": "' + VISA + '", '
    response = client.post("/v1/payment-methods", data=raw, headers=auth, content_type="application/json")
    assert response.status_code == 400
    assert leaks(response.get_data(as_text=True)) == []


def test_no_database_row_holds_the_number(client, auth, runtime):
    # Real data first, with the card's BIN and last4 stored as they should be, so the scan has
    # something to look through and would see a number glued together from its parts.
    client.post("/v1/signups", json=signup(), headers=auth)
    ok = client.post("/v1/payment-methods", json=payment(bin=VISA[:8], last4=VISA[-4:], billing_postal_code="94103"),
                     headers=auth)
    assert ok.status_code == 200
    before = _counts(runtime)
    for place in PLACES:
        response = client.post("/v1/payment-methods", json=payment(bin=VISA[:8], last4=VISA[-4:], **place.values[0]),
                               headers=auth)
        assert response.status_code == 400
    refused = client.post("/v1/signups", json=signup(device_id=VISA, metadata={"pan": spaced(LONG)}), headers=auth)
    assert refused.status_code == 400
    assert _counts(runtime) == before
    cells = _every_row(runtime)
    assert any(VISA[:8] in cell for cell in cells)            # the scan does see the stored BIN
    assert [cell for cell in cells if leaks(cell)] == []


def test_no_log_line_holds_the_number(client, auth, caplog):
    caplog.set_level(logging.DEBUG)
    # SQL statements and their parameters too, as an operator debugging would log them.
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    for place in PLACES:
        response = client.post("/v1/payment-methods", json=payment(**place.values[0]), headers=auth)
        assert response.status_code == 400
    assert client.post("/v1/payment-methods", json=payment(bin=VISA[:8], last4=VISA[-4:]),
                       headers=auth).status_code == 200
    assert any("scored payment_method" in r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)    # the SQL log was on
    assert leaks(caplog.text) == []
    for record in caplog.records:
        assert leaks(record.getMessage()) == [] and leaks(repr(record.args)) == []


def _post(port: int, path: str, body: dict | str, key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, str) else json.dumps(body)
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                   "Authorization": f"Bearer {key}"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_werkzeug_access_log_never_holds_the_number(app, api_key, caplog):
    from werkzeug.serving import make_server

    caplog.set_level(logging.INFO, logger="werkzeug")
    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for place in PLACES:
            assert _post(server.server_port, "/v1/payment-methods", payment(**place.values[0]), api_key) == 400
    finally:
        server.shutdown()
        thread.join()
    # werkzeug colours the request line on a terminal; strip the escapes to read it.
    access = [re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage()) for r in caplog.records if r.name == "werkzeug"]
    assert sum('"POST /v1/payment-methods HTTP/1.1" 400' in line for line in access) == len(PLACES)
    assert leaks("\n".join(access)) == [] and leaks(caplog.text) == []


def test_gunicorn_access_and_error_logs_never_hold_the_number(tmp_path):
    """The real `kyc serve` (gunicorn, access log to stdout) on the embedded SQLite default."""
    port = free_port()
    env = {**os.environ, "KYC_DATABASE_URL": f"sqlite:///{tmp_path / 'kyc.db'}", "KYC_DATA_DIR": str(tmp_path),
           "KYC_LOG_LEVEL": "DEBUG"}
    env.pop("KYC_DEV_KEY", None)
    kyc = Path(sys.executable).with_name("kyc")
    out = (tmp_path / "out.log").open("w+")
    proc = subprocess.Popen([str(kyc), "serve", "--port", str(port), "--workers", "1"], env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    pytest.fail(f"kyc serve did not start:\n{out.read()}")
                time.sleep(0.2)
        for place in PLACES:
            assert _post(port, "/v1/payment-methods", payment(**place.values[0]), "kyc_dev_local_only") == 400
        assert _post(port, "/v1/payment-methods", payment(bin=VISA[:8], last4=VISA[-4:]), "kyc_dev_local_only") == 200
        for target, headers in ((f"/healthz?card={VISA}", {}), (f"/v1/accounts/{spaced(VISA).replace(' ', '%20')}", {}),
                                (f"/v1/accounts/{VISA}/entitlement?tier=high_volume", {}),
                                ("/healthz", {"User-Agent": f"card {dashed(AMEX)}"})):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", target, headers={"Authorization": "Bearer kyc_dev_local_only", **headers})
            response = conn.getresponse()
            assert response.status == 400 and json.loads(response.read())["error"]["code"] == "card_number_refused"
            conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out.seek(0)
    text = out.read()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert sum((a["method"], a["path"], a["status"]) == ("POST", "/v1/payment-methods", 400)
               for a in access) == len(PLACES), text
    assert any(line["message"].startswith("scored payment_method") for line in lines)
    assert {"method": "GET", "path": "/healthz", "status": 400}.items() <= next(
        a for a in access if a["path"] == "/healthz").items()           # logged, without its query string
    assert any(a["path"] == "/v1/accounts/[card]/entitlement" and a["status"] == 400 for a in access)  # masked
    assert leaks(text) == [] and "127.0.0.1" not in json.dumps(access)   # nor the client's address


# --- generated: any script, any separators, any place ------------------------------------------

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kyc.security import has_card_number  # noqa: E402

# The zero of each script; a digit d of that script is chr(zero + d).
ZEROS = [0x30, 0xFF10, 0x660, 0x6F0, 0x966, 0x9E6, 0xE50, 0x1D7CE, 0x1040, 0x0AE6]
SEPARATORS = [" ", "  ", " - ", "-", ".", "/", "_", "\t", "\n", "\r\n", "\u00a0", "\u2013", "\u2014", "\u2009",
              "\u3000", "*", "\\", "|", "+", " . ", "--"]


@st.composite
def card_numbers(draw) -> tuple[str, str]:
    """(ASCII digits, as written): 13-19 digits passing Luhn, in random scripts and groupings."""
    body = draw(st.lists(st.integers(0, 9), min_size=12, max_size=18))
    ascii_digits = with_check_digit("".join(map(str, body)))
    out, i = "", 0
    while i < len(ascii_digits):
        size = draw(st.integers(1, 6))
        group = ascii_digits[i:i + size]
        zero = draw(st.sampled_from(ZEROS))
        out += "".join(chr(zero + int(d)) if draw(st.booleans()) else d for d in group) if zero != 0x30 else group
        i += size
        if i < len(ascii_digits):
            out += draw(st.sampled_from(SEPARATORS)) if draw(st.booleans()) else ""
    # Dots joining a group of one or two digits make a version or an address, and only zeros
    # make no card number (kyc.security).
    assume(ascii_digits.strip("0"))
    assume(not (len(ascii_digits) == 14 and ascii_digits[:2] in ("19", "20")))
    assume(not re.search(r"(?:^|[^\d])\d{1,2}\s*\.|\.\s*\d{1,2}(?:[^\d]|$)", out))
    if len(ascii_digits) >= 16 and draw(st.booleans()):
        out = "+" + out                     # no phone number is that long
    return ascii_digits, out


def digits_of(text: str) -> str:
    """Every decimal digit of `text`, in ASCII, with everything else dropped."""
    return "".join(str(unicodedata.decimal(ch)) for ch in text if ch.isdecimal())


surround = st.text(alphabet=st.characters(codec="utf-8", categories=["Zs", "P", "S"], exclude_characters="+"),
                   max_size=3)
PLACES_GENERATED = ["metadata", "fingerprint", "account_id", "key", "json_number", "path", "query", "header"]
NUMBER_FORMS = ["negative", "point zero", "exponent"]


def number_form(pan: str, form: str) -> str:
    """A card number as a JSON number whose value is the number: -4111111111111111,
    4111111111111111.0 or 4.111111111111111e15. (With a leading zero the number is not JSON.)"""
    if form == "negative" or pan[0] == "0":
        return f"-{pan}"
    return f"{pan}.0" if form == "point zero" else f"{pan[0]}.{pan[1:]}e{len(pan) - 1}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(card=card_numbers(), place=st.sampled_from(PLACES_GENERATED), before=surround, after=surround,
       escaped=st.booleans(), form=st.sampled_from(NUMBER_FORMS))
def test_generated_card_numbers_are_refused_and_kept_nowhere(redis_app, caplog, card, place, before, after, escaped,
                                                             form):
    app, rt, conn, key = redis_app
    pan, written = card
    text = before + written + after
    assert has_card_number(text)
    body, path, query, headers = payment(), "/v1/payment-methods", "", {"Authorization": f"Bearer {key}"}
    if place == "metadata":
        body["metadata"] = {"note": text}
    elif place in ("fingerprint", "account_id"):
        body[place] = text
    elif place == "key":
        body["metadata"] = {text: 1}
    elif place == "path":
        path = "/v1/accounts/" + urllib.parse.quote(text, safe="") + "/activity"
    elif place == "query":
        query = "?ref=" + urllib.parse.quote(text, safe="")
    elif place == "header":
        headers["X-Customer-Ref"] = text.encode("utf-8").decode("latin-1").replace("\n", " ").replace("\r", " ")
    # Escaped (\uXXXX for every non-ASCII character) or as typed: the body is searched whole
    # when it holds no escape, text by text when it does (kyc/api/guard.py).
    raw = json.dumps(body, ensure_ascii=escaped)
    if place == "json_number":
        raw = json.dumps(payment())[:-1] + f', "metadata": {{"n": {number_form(pan, form)}}}}}'
    before_counts, before_keys = _counts(rt), conn.dbsize()
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    response = app.test_client().post(path + query, data=raw, headers=headers, content_type="application/json")
    assert response.status_code == 400, (place, text, response.get_data()[:200])
    # -0411... is not JSON (no leading zeros): refused as such, and nothing is kept either way.
    refused_as = "invalid_request" if place == "json_number" and pan[0] == "0" else "card_number_refused"
    assert response.json["error"]["code"] == refused_as
    assert pan not in digits_of(response.get_data(as_text=True)) and pan not in digits_of(str(response.headers))
    assert _counts(rt) == before_counts and conn.dbsize() == before_keys
    assert pan not in digits_of(caplog.text)


@pytest.fixture(scope="module")
def redis_app(tmp_path_factory, _sqlite_template):
    """A SQLite-backed app whose velocity counters live in Redis, so a leak there would show."""
    import shutil

    from kyc import create_app
    from kyc.config import Config
    from kyc.models import ApiKey
    from kyc.runtime import Runtime
    from kyc.security import hash_api_key, new_api_key
    from tests.conftest import REDIS_URL, RULES_DIR, TEST_SECRET, redis_connection

    conn = redis_connection()
    conn.flushdb()
    path = tmp_path_factory.mktemp("cards") / "kyc.db"
    shutil.copy(_sqlite_template, path)
    config = Config.from_env({}, database_url=f"sqlite:///{path}", rules_dir=RULES_DIR, data_dir=path.parent,
                             secret_key=TEST_SECRET, redis_url=REDIS_URL, dev_key="")
    rt = Runtime.start(config, migrate=False)
    key = new_api_key()
    with rt.session() as session, session.begin():
        session.add(ApiKey(name="tests", prefix=key[:10], key_hash=hash_api_key(key)))
    app = create_app(runtime=rt)
    # Real traffic first, so Redis holds counters a leak would sit beside.
    assert app.test_client().post("/v1/signups", json=signup(), headers={"Authorization": f"Bearer {key}"}
                                  ).status_code == 200
    yield app, rt, conn, key
    rt.engine.dispose()


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),                             # E.164 phones
    st.from_regex(r"\+[1-9][0-9]{0,2} [0-9]{2,4} [0-9]{3,4} [0-9]{3,4}", fullmatch=True),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),                                   # times
    st.integers(0, 2**31).map(str),                                                      # Unix seconds
    st.uuids().map(str), st.uuids().map(lambda u: u.hex + u.hex),                       # ids, hashes
    st.binary(min_size=16, max_size=32).map(bytes.hex),
    st.ip_addresses(v=4).map(str), st.lists(st.ip_addresses(v=4).map(str), max_size=4).map(", ".join),
))
def test_phones_times_and_ordinary_ids_are_not_card_numbers(text):
    assert not has_card_number(text), text


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=500, deadline=None)
@given(st.one_of(finite.filter(lambda x: x != int(x)), st.integers(-10**11, 10**11)))
def test_computed_numbers_are_not_card_numbers(x):
    """A number smaller than any card number, as a program writes it (Python's repr, JSON.stringify
    alike): a float's 16 or 17 digits of fraction pass the Luhn check one time in ten, and are no
    card number (kyc.security.number_has_card_number)."""
    from kyc.security import contains_card_number, number_has_card_number

    assert not number_has_card_number(json.dumps(x)) and not contains_card_number({"n": x}), x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cvs=st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False), min_size=1,
                    max_size=50))
def test_reports_of_computed_floats_are_recorded(redis_app, cvs):
    """A gateway sends interval_cv as its language writes a float (0.8444218515250481): one such
    report in ten, and nearly every bulk call of them, was refused as holding a card number."""
    app, _, _, key = redis_app
    client, auth = app.test_client(), {"Authorization": f"Bearer {key}"}
    body = json.dumps({"requests": 10, "interval_cv": cvs[0], "occurred_at": "2026-11-24T21:00:00Z"})
    single = client.post("/v1/accounts/acct_1/activity", data=body, headers=auth, content_type="application/json")
    assert single.status_code == 200, single.json
    reports = [{"account_id": "acct_1", "requests": 1, "interval_cv": cv, "tokens_in": 10, "tokens_out": 20}
               for cv in cvs]
    bulk = client.post("/v1/activity", data=json.dumps({"reports": reports}), headers=auth,
                       content_type="application/json")
    assert bulk.status_code == 200, bulk.json


def test_real_user_agents_are_never_taken_for_card_numbers():
    """Every user agent of the real-traffic corpora (fake-useragent's browsers, uap-core's and
    isbot's test strings) passes the detector: a signup is never refused for its browser. A
    real iPhone's Google app (GSA/359.1.734651750) once was: its dotted version passes Luhn."""
    import yaml
    from fake_useragent.utils import load

    from kyc.security import has_card_number

    corpus = Path(__file__).resolve().parents[1] / "bench" / "data" / "user_agents"
    agents = {row["useragent"] for row in load()}
    agents |= {case["user_agent_string"] for case in yaml.safe_load((corpus / "uap-core-test_ua.yaml").read_text())["test_cases"]}
    for name in ("isbot-browsers.yml", "isbot-crawlers.yml"):
        listed = yaml.safe_load((corpus / name).read_text()) or []
        agents |= {str(ua) for group in (listed.values() if isinstance(listed, dict) else [listed])
                   for ua in (group if isinstance(group, list) else [group])}
    assert len(agents) > 1000
    # Left: one HTTP library's Debian build stamp (PHP/7.1.17-1+0~20180505045738.17), a time stamp
    # run into a version that no rule here tells from a card number.
    assert [ua for ua in agents if has_card_number(ua)] == [
        "GuzzleHttp/6.3.3 PHP/7.1.17-1+0~20180505045738.17+stretch~1.gbpde69c6"]
    assert has_card_number("Mozilla/5.0 4111.1111.1111.1111")             # a dotted card number still is one


def test_entity_tags_sent_back_are_not_scanned(client, auth):
    """A browser revalidating a static file sends back its entity tag (mtime.micros-size-checksum),
    whose digits pass Luhn one time in ten: the console's favicon was refused. Validators echo
    what this server issued and are neither logged nor stored."""
    tag = '"1796303473.474672-835-3912345670"'
    assert has_card_number(tag)                                     # the case, as the detector reads it
    answer = client.get("/v1/accounts/acct_nobody", headers={**auth, "If-None-Match": tag})
    assert answer.status_code == 404
    refused = client.get("/v1/accounts/acct_nobody", headers={**auth, "X-Note": tag})
    assert refused.status_code == 400 and refused.json["error"]["code"] == "card_number_refused"


def _rule_without_precheck(text: str) -> bool:
    from kyc.security import _RUN, _run_has_pan

    return any(_run_has_pan(text, *m.span()) for m in _RUN.finditer(text))


_DIGITS_AND_SEPARATORS = st.lists(st.sampled_from(
    [chr(zero + d) for zero in (0x30, 0xFF10, 0x660) for d in range(10)] * 3
    + [" ", "-", ".", "/", "_", "\t", "\u00a0", "\u2013", "*", "\\", "+", ",", ":", ";", "x", "T", "e", "      ",
       " \n\t  \u3000 "]), max_size=60).map("".join)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_DIGITS_AND_SEPARATORS, st.tuples(surround, card_numbers(), surround).map(
    lambda t: t[0] + t[1][1] + t[2]), st.tuples(_DIGITS_AND_SEPARATORS, card_numbers(), _DIGITS_AND_SEPARATORS).map(
    lambda t: t[0] + t[1][1] + t[2])))
def test_the_cheap_precheck_never_changes_the_answer(text):
    """has_card_number skips texts without 13 digits each at most 4 separators (or any whitespace) from the last: a
    necessary condition of the rule, so the answer is the rule's on any text."""
    assert has_card_number(text) == _rule_without_precheck(text), text


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_DIGITS_AND_SEPARATORS, st.text(max_size=80), st.tuples(st.text(max_size=20), card_numbers(),
                                                                        _DIGITS_AND_SEPARATORS).map(
    lambda t: t[0] + t[1][1] + t[2])))
def test_the_prefilter_of_texts_read_together_never_misses_a_card_number(text):
    """may_hold_card_number (a whole body or the headers at once, on bytes) is weaker than the
    rule: False only where the rule finds no card number, whatever the text."""
    from kyc.security import may_hold_card_number

    if _rule_without_precheck(text):
        assert may_hold_card_number(text), text


@settings(max_examples=300, deadline=None)
@given(card_numbers(), st.lists(st.text(alphabet=" \t\n\u00a0\u3000", min_size=5, max_size=40), min_size=1, max_size=6))
def test_whitespace_of_any_length_between_groups_still_joins_a_card_number(card, gaps):
    """The contract: "with or without spaces or dashes", however many spaces were pasted."""
    digits, _ = card
    cut = sorted({max(1, min(len(digits) - 1, (i + 1) * len(digits) // (len(gaps) + 1))) for i in range(len(gaps))})
    parts = [digits[a:b] for a, b in zip([0, *cut], [*cut, len(digits)])]
    text = "".join(part + (gaps[i] if i < len(gaps) and i < len(parts) - 1 else "") for i, part in enumerate(parts))
    assert has_card_number(text) and has_card_number(f"note: {text} thanks"), repr(text)
