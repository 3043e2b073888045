"""Known non-matches across sessions, derived from sure matches (README, "Match probability").

The match probability learns what a non-match looks like from pairs of units of one session,
which are two neurons by definition. Those are few where matches and non-matches meet (a few
dozen on a study of 1,000-2,000 units), and that number, not the method's formula, limits how
well the probability is calibrated (benchmarks/RESULTS.md, "Session 35"). More known
non-matches follow from the sure matches: units joined by pairs of probability
SURE_PROBABILITY or more form a group (one neuron, as far as the data tell); when two units
of one session lie in two groups, every unit of the one group is another neuron than every
unit of the other, so their pairs across sessions are known non-matches, with all the noise
of real candidate pairs (motion correction, days between). Two groups that no session holds
together prove nothing: they may be one neuron.

Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

# A candidate pair at least this probable joins its two units into one group.
SURE_PROBABILITY = 0.99
# Pairs of the two groups' units considered (before the session, distance and window tests)
# at most this many times the same-session pairs, and at most MAX_DERIVED: beyond, that many
# are drawn at random (seeded). Groups grow with the sessions a neuron is seen in: a study
# of 10,285 units in 20 sessions gave over 5,000,000; on the accuracy suite (8-24 sessions)
# a budget of 20 drew on 8 of 20 studies and lowered F1, 50 on none at seed 0
# (benchmarks/RESULTS.md, "Session 35").
PER_SAME_SESSION = 50
MAX_DERIVED = 5_000_000


def sure_groups(n_units: int, pairs: np.ndarray, sure: np.ndarray) -> np.ndarray:
    """Group id (N,) int64 of every unit: the connected components of the candidate pairs
    (P, 2) that ``sure`` (P,) bool marks (e.g. probability >= SURE_PROBABILITY); a unit in
    no such pair is a group of its own."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    joined = np.asarray(pairs)[np.asarray(sure, bool)]
    graph = sparse.coo_matrix((np.ones(len(joined)), (joined[:, 0], joined[:, 1])),
                              shape=(n_units, n_units))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def derive(same_session: np.ndarray, group: np.ndarray, session: np.ndarray,
           depth: np.ndarray, usable: np.ndarray, max_distance: float, seed: int = 0):
    """The known non-matches derived from the same-session pairs (Q, 2) and the groups (N,).

    For each same-session pair (a, b) of two groups, every pair (u, v) of a unit u of a's
    group and a unit v of b's group, of two sessions, at most ``max_distance`` um apart in
    ``depth`` (N,), both ``usable`` (N,) bool; where the pairs of the groups' units number
    more than PER_SAME_SESSION x Q (or MAX_DERIVED), that many of them drawn at random
    (``seed``) before those tests. Returns (pairs (D, 2) int64, u < v, unique, sorted; weight
    (D,); same_session_weight (Q,)). A same-session pair and the d pairs derived from it weigh
    1 together, 1 / (1 + d) each, so that every same-session pair counts once whatever its
    neurons' groups (a pair derived from several same-session pairs carries the sum)."""
    same_session = np.asarray(same_session, np.int64).reshape(-1, 2)
    n = group.size
    order = np.argsort(group, kind="stable")
    start = np.searchsorted(group[order], np.arange(int(group.max(initial=-1)) + 2))
    size = np.diff(start)
    ga, gb = group[same_session[:, 0]], group[same_session[:, 1]]
    count = np.where(ga != gb, size[ga] * size[gb], 0)
    total = int(count.sum())
    budget = min(PER_SAME_SESSION * len(same_session), MAX_DERIVED)
    # every (member of a's group, member of b's group) of every same-session pair, or a
    # random draw of them: the i-th of them is the k-th of same-session pair `source`
    index = np.arange(total) if total <= budget else np.sort(
        np.random.default_rng([seed, 11]).choice(total, budget, replace=False))
    end = np.cumsum(count)
    source = np.searchsorted(end, index, side="right")
    k = index - (end - count)[source]
    width = size[gb][source]
    u = order[start[ga[source]] + k // width]
    v = order[start[gb[source]] + k % width]
    keep = ((session[u] != session[v]) & (np.abs(depth[u] - depth[v]) <= max_distance)
            & usable[u] & usable[v])
    source, u, v = source[keep], u[keep], v[keep]
    same_session_weight = 1.0 / (1.0 + np.bincount(source, minlength=len(same_session)))
    key = np.minimum(u, v) * n + np.maximum(u, v)
    unique, at = np.unique(key, return_inverse=True)
    weight = np.bincount(at, weights=same_session_weight[source], minlength=unique.size)
    return np.column_stack([unique // n, unique % n]), weight, same_session_weight


def fold_keys(pairs: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Cross-fitting key (P,) int64 of pairs (P, 2): one key per pair of two groups, so that
    every pair of two neurons (a same-session pair, the pairs derived from it, and the
    candidate pairs of the same two groups) falls in one fold: the model that scores one of
    them has seen none of their near copies. -1 for a pair within one group (random folds)."""
    a, b = group[pairs[:, 0]], group[pairs[:, 1]]
    key = np.minimum(a, b) * (int(group.max(initial=0)) + 1) + np.maximum(a, b)
    return np.where(a == b, -1, key)
