"""POST /v1/payment-methods — score a payment method. Never sees a card number.

read_json() refuses a full card number anywhere in the body before anything is parsed,
stored or logged; the processor's fingerprint, BIN and last4 are all kyc needs.

An account kyc has not seen yet (its signup was never scored, e.g. it predates kyc) is not
refused: the payment method is scored and creates the account, with `card.account_has_signup`
false for rules to weigh. A 404 here would leave such accounts unscorable at the one moment
they show intent to pay.
"""

from __future__ import annotations

from kyc.api import documented, parse, respond, runtime, v1
from kyc.api.responses import Evaluation
from kyc.persist import pipelined
from kyc.inputs import PaymentMethodInput
from kyc.scoring import evaluation_body, score


@v1.post("/payment-methods")
@documented("Score a payment method", body=PaymentMethodInput, responses={200: Evaluation}, tag="scoring")
def score_payment_method():
    """Scores a card as the payment processor describes it (fingerprint, BIN, last4, funding,
    countries); a body holding a full card number is refused. An account kyc has not seen is
    scored and created."""
    inp = parse(PaymentMethodInput)
    rt = runtime()
    with rt.session() as session, pipelined(session):
        evaluation = score(rt, session, "payment_method", inp)
    return respond(Evaluation, evaluation_body(evaluation))
