"""Latency statistics shared by the load generators (``benchmarks.loadgen``, ``loadtest``).

Pure Python on lists: ``benchmarks.loadgen`` runs in its own process and imports no NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of the values at or
    below it (``q`` in 0..100; q=0 gives the minimum, q=100 the maximum). ``nan`` when empty.

    Always an observed latency, never an interpolation between two (unlike ``numpy.percentile``'s
    default), which is what an SLO such as "p99 <= 50 ms" is checked against. Sorting an
    already-sorted list is linear, so callers need not sort first.
    """
    s = sorted(values)
    if not s:
        return math.nan
    rank = min(len(s), max(1, math.ceil(q / 100.0 * len(s))))
    return s[rank - 1]
