"""Bare Flask plus one PostgreSQL statement per call: the floor of any design that reads or
writes the account once per gateway call, which bench/gateway_http.py measures beside bare Flask
and kyc in the same run.

The same routes as bench/bare_flask.py, each sending one statement on the worker's own psycopg
connection (autocommit, prepared after its first use; no pool, no ORM, no authentication):
the entitlement reads the account's decision by primary key, an activity report updates the
account's last_seen_at. What kyc adds beyond this floor is its own work (the API key, the
verifications and dormancy the tier reads, the answer's ETag, the report stored and judged).
"""

import os

import psycopg
from flask import Flask, abort, jsonify, request

app = Flask(__name__)
_connection: psycopg.Connection | None = None


def connection() -> psycopg.Connection:
    # One connection per gunicorn worker (sync workers answer one request at a time), opened
    # on first use: after the fork, never shared between processes.
    global _connection
    if _connection is None or _connection.closed:
        url = os.environ["KYC_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
        _connection = psycopg.connect(url, autocommit=True, prepare_threshold=1)
    return _connection


@app.get("/v1/accounts/<account_id>/entitlement")
def entitlement(account_id):
    row = connection().execute("SELECT decision, state_version FROM accounts WHERE id = %s",
                               (account_id,)).fetchone()
    if row is None:
        abort(404)
    return jsonify({"account_id": account_id, "tier": request.args.get("tier"), "allowed": row[0] == "allow",
                    "decision": row[0], "state_version": row[1]})


@app.post("/v1/accounts/<account_id>/activity")
def activity(account_id):
    body = request.get_json()
    row = connection().execute("UPDATE accounts SET last_seen_at = now() WHERE id = %s RETURNING decision",
                               (account_id,)).fetchone()
    if row is None:
        abort(404)
    return jsonify({"account_id": account_id, "requests_today": body.get("requests", 0), "decision": row[0]})
