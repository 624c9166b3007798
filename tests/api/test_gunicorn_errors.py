"""Against a real gunicorn: its own errors answer in the contract's JSON shape, a chunked body
cannot pass KYC_MAX_BODY_BYTES, and a card number in a request line never reaches its logs."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port, payment, signup
from tests.test_card_numbers import card_numbers, digits_of
from tests.api.test_fuzz import assert_contract_error as _shape

KEY = "kyc_test_gunicorn_key"


def _start(args: list[str], tmp: Path, **env) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    environ = dict(os.environ, KYC_DATABASE_URL=f"sqlite:///{tmp / 'kyc.db'}", KYC_DATA_DIR=str(tmp),
                   KYC_DEV_KEY=KEY, KYC_LOG_LEVEL="INFO", **env)
    log = tmp / "server.log"
    proc = subprocess.Popen([a.replace("{port}", str(port)) for a in args], env=environ, cwd=Path(__file__).parents[2],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 40
    while True:
        # Ready once a worker answers: gunicorn's master listens, and the kernel accepts
        # connections into its backlog, before any worker has booted (on a loaded machine the
        # log then held no "Booting worker" line yet).
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            finally:
                conn.close()
            return proc, port, log
        except (OSError, http.client.HTTPException):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{log.read_text()}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def kyc_serve(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    proc, port, log = _start([sys.executable, "-m", "kyc.cli", "serve", "--port", "{port}", "--workers", "2"], tmp)
    yield port, log
    _stop(proc)


class _Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status_code, self.headers, self.body = status, headers, body
        self.mimetype = (headers.get("Content-Type") or "").split(";")[0]

    def get_json(self):
        return json.loads(self.body)

    def get_data(self):
        return self.body


def raw_request(port: int, data: bytes) -> _Answer:
    """Send bytes as they are (http.client refuses to send a malformed request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = http.client.HTTPResponse(_FakeSocket(b"".join(chunks)))
    response.begin()
    return _Answer(response.status, response.headers, response.read())


class _FakeSocket:
    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, *_args, **_kwargs):
        import io

        return io.BytesIO(self.data)


def test_kyc_serve_and_gunicorn_conf_leave_the_shared_control_socket_alone(kyc_serve):
    """gunicorn's control socket defaults to one path per user: kyc binds none (kyc/serving.py)."""
    import runpy

    from gunicorn.config import Config

    from kyc import serving

    _port, log = kyc_serve
    assert "Booting worker" in log.read_text() and "Control socket" not in log.read_text()
    cfg = Config()
    serving.configure(cfg)
    assert cfg.control_socket_disable is True
    conf = runpy.run_path(str(Path(__file__).parents[2] / "gunicorn.conf.py"))
    assert conf["control_socket_disable"] is True


def test_uri_too_long_is_json(kyc_serve):
    port, _log = kyc_serve
    answer = raw_request(port, b"GET /v1/accounts/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status_code == 414
    _shape(answer)
    assert answer.get_json()["error"]["code"] == "uri_too_long"


def test_nul_in_a_header_is_json(kyc_serve):
    port, _log = kyc_serve
    answer = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
    assert answer.status_code == 400
    _shape(answer)


def test_chunked_bodies_cannot_pass_the_size_limit(kyc_serve):
    port, _log = kyc_serve
    big = json.dumps(signup(account_id="acct_chunked", metadata={"pad": "x" * 70_000})).encode()
    small = json.dumps(signup(account_id="acct_chunked_ok")).encode()
    for body, status in ((big, 413), (small, 200)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/signups", body=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"}, encode_chunked=True)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        assert response.status == status, data[:300]
        if status == 413:
            assert json.loads(data)["error"]["code"] == "body_too_large"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/accounts/acct_chunked", headers={"Authorization": f"Bearer {KEY}"})
    assert conn.getresponse().status == 404                        # the large one was never scored


def _access_line_since(log, size: int) -> str:
    """What the log gained past `size` once it holds a whole access line. The line is written after
    the answer, and can be read while it is being written: waiting for the file to grow and
    reading it once saw a line cut after `"method":` (a full run with --hypothesis-seed=2026)."""
    deadline = time.monotonic() + 10
    while True:
        with log.open("rb") as f:
            f.seek(size)
            written = f.read().decode("utf-8", "replace")
        if any('"gunicorn.access"' in line for line in written.splitlines(keepends=True) if line.endswith("\n")):
            return written
        assert time.monotonic() < deadline, f"no whole access log line: {written!r}"
        time.sleep(0.02)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(card=card_numbers(), place=st.sampled_from(["path", "query", "header"]))
def test_generated_card_numbers_never_reach_gunicorn_logs(kyc_serve, card, place):
    port, log = kyc_serve
    pan, written = card
    quoted = urllib.parse.quote(written, safe="")
    target = {"path": f"/v1/accounts/{quoted}", "query": f"/healthz?ref={quoted}", "header": "/healthz"}[place]
    headers = {"Authorization": f"Bearer {KEY}"}
    if place == "header":
        headers["User-Agent"] = written.encode("utf-8").decode("latin-1").replace("\n", " ").replace("\r", " ")
    size = log.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", target, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value.encode("latin-1"))
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 400 and json.loads(body)["error"]["code"] == "card_number_refused"
    written_since = _access_line_since(log, size)
    assert "\"status\": 400" in written_since, written_since
    assert pan not in digits_of(written_since.encode("latin-1", "replace").decode("utf-8", "replace")) \
        and pan not in digits_of(written_since), written_since


def test_worker_timeout_is_json(tmp_path):
    """A worker killed by gunicorn's timeout: the client gets the contract's 500, not HTML."""
    proc, port, _log = _start([sys.executable, "-m", "gunicorn", "-c", "python:kyc.serving", "--timeout", "2",
                               "--workers", "1", "--bind", "127.0.0.1:{port}", "tests.api.slow_app:app"], tmp_path)
    try:
        answer = raw_request(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        _stop(proc)
    assert answer.status_code == 500
    _shape(answer)
