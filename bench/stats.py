"""How every bench turns samples into the figures it prints: one definition of a percentile, so
that the p99 of one script compares with another's."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest sample that at least a share `q` of the samples are at or below
    (p99 of 100 samples is the 99th smallest; of fewer than 100, the largest)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
