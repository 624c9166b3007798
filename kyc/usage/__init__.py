"""Usage: what the API gateway reports an account did, read as evidence.

- reports.py: activity reports (single and bulk) recorded in one transaction: the report as
  sent (identifiers as keyed hashes) and the account's day of totals.
- days.py: reading the days back, for the usage signals (kyc/signals/usage.py) and dormancy.
- reevaluate.py: a report that makes an account riskier re-evaluates it through the one
  pipeline (kyc.scoring) before its transaction commits, and asks for its cluster's rescore.
"""
