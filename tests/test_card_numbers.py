"""Never a card number: a full PAN anywhere in a payment-method body is refused with 400, and
the number appears in no error body, no log line (application, SQL, werkzeug and gunicorn access
logs) and no database row."""

from __future__ import annotations

import http.client
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
from tests.conftest import payment, signup


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
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
