"""Values grouped by the session, or the pair of sessions, two units come from.

Much of what two units of one neuron share depends on their sessions as well as on the
neuron: a pair of sessions far apart in time, or a session whose motion differs by part of
a contact row, places and shapes every neuron a little differently. These helpers give each
group its own median, for the steps that compare a pair with what is usual there (the
position noise per session, the similarity step per pair of sessions, the sessions'
delays in time).
"""

from __future__ import annotations

import numpy as np


def pair_code(session_a: np.ndarray, session_b: np.ndarray, n_sessions: int) -> np.ndarray:
    """(P,) int64 code of each unordered pair of sessions (P,) (0-based, below n_sessions):
    lower * n_sessions + higher."""
    lo = np.minimum(session_a, session_b).astype(np.int64)
    hi = np.maximum(session_a, session_b).astype(np.int64)
    return lo * n_sessions + hi


def grouped_median(values: np.ndarray, codes: np.ndarray):
    """Median of values (P,) in each group of codes (P,) int: (codes (G,) sorted distinct,
    median (G,), count (G,))."""
    order = np.lexsort((values, codes))
    distinct, start, count = np.unique(codes[order], return_index=True, return_counts=True)
    ranked = np.asarray(values, np.float64)[order]
    median = 0.5 * (ranked[start + (count - 1) // 2] + ranked[start + count // 2])
    return distinct, median, count
