"""POST /v1/signups — score a signup."""

from __future__ import annotations

from kyc.api import documented, parse, respond, runtime, v1
from kyc.api.responses import Evaluation
from kyc.persist import pipelined
from kyc.inputs import SignupInput
from kyc.scoring import evaluation_body, score


@v1.post("/signups")
@documented("Score a signup", body=SignupInput, responses={200: Evaluation}, tag="scoring")
def score_signup():
    """Scores a signup and answers with the decision, the reasons that produced it and the
    signals. Re-posting the same account_id scores it again."""
    inp = parse(SignupInput)
    rt = runtime()
    with rt.session() as session, pipelined(session):
        evaluation = score(rt, session, "signup", inp)
    return respond(Evaluation, evaluation_body(evaluation))
