"""Scoring: the one pipeline every evaluation goes through (pipeline.py) and the one place
that decides what rule hits mean for an evaluation and for its account (decide.py)."""

from kyc.scoring.decide import Outcome, Settlement, combine, evaluate, settle
from kyc.scoring.pipeline import (Chunk, cluster_ref, evaluation_body, read_chunk, rescore_account,
                                  score)

__all__ = ["Chunk", "Outcome", "Settlement", "cluster_ref", "combine", "evaluate", "evaluation_body",
           "read_chunk", "rescore_account", "score", "settle"]
