"""A bare Flask JSON endpoint: the floor bench/gateway_http.py and bench/signup_http.py measure kyc's
calls against (the same routes, a fixed answer, JSON parsed and written)."""

from flask import Flask, jsonify, request

app = Flask(__name__)
BODY = {"account_id": "acct_1", "tier": "free", "allowed": True, "decision": "allow", "missing_verifications": [],
        "reasons": [], "quota": {"requests_per_day": 1000, "requests_per_minute": 20}}


@app.get("/v1/accounts/<account_id>/entitlement")
def entitlement(account_id):
    return jsonify({**BODY, "account_id": account_id})


@app.post("/v1/accounts/<account_id>/activity")
def activity(account_id):
    body = request.get_json()
    return jsonify({"account_id": account_id, "requests_today": body.get("requests", 0), "decision": "allow"})


@app.post("/v1/signups")
def signup():
    body = request.get_json()
    return jsonify({"account_id": body["account_id"], "evaluation_id": "ev_1", "decision": "allow", "score": 0,
                    "reasons": [], "required_verifications": []})
