"""What ops staff do and see: scoped API keys, the audit trail, the review queue and a
person's decisions, farm (cluster) actions, and the decision webhooks that push every change
of an account's decision to the API gateway.

Services here take a session (the caller owns the transaction) and raise the domain errors of
kyc/errors.py; kyc/api maps those to HTTP, the CLI to messages.
"""
