"""Scoring: the one pipeline every evaluation goes through (pipeline.py), the account as it
reads it, live or read ahead for a rescore chunk (accounts.py), the one place that decides what
rule hits mean for an evaluation and for its account (decide.py), and what it writes (persist.py)."""

from kyc.scoring.accounts import AccountRecord, AccountView, Chunk, EvaluationRecord, read_chunk
from kyc.scoring.decide import Outcome, Settlement, combine, evaluate, settle
from kyc.scoring.pipeline import cluster_ref, evaluation_body, rescore_account, score

__all__ = ["AccountRecord", "AccountView", "Chunk", "EvaluationRecord", "Outcome", "Settlement", "cluster_ref",
           "combine", "evaluate", "evaluation_body", "read_chunk", "rescore_account", "score", "settle"]
