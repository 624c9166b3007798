"""POST /v1/signups — score a signup."""

from __future__ import annotations

from flask import jsonify

from kyc.api import parse, runtime, v1
from kyc.db import pipelined
from kyc.inputs import SignupInput
from kyc.scoring import evaluation_body, score


@v1.post("/signups")
def score_signup():
    inp = parse(SignupInput)
    rt = runtime()
    with rt.session() as session, pipelined(session):
        evaluation = score(rt, session, "signup", inp)
    return jsonify(evaluation_body(evaluation))
