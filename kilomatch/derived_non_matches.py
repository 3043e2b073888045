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
           depth: np.ndarray, usable: np.ndarray, max_distance: float, seed: int = 0,
           max_session_gap: int = 0):
    """The known non-matches derived from the same-session pairs (Q, 2) and the groups (N,).

    For each same-session pair (a, b) of two groups, every pair (u, v) of a unit u of a's
    group and a unit v of b's group, of two sessions (at most ``max_session_gap`` apart in
    session order, when > 0), at most ``max_distance`` um apart in ``depth`` (N,), both
    ``usable`` (N,) bool; where the pairs of the groups' units number
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
    if max_session_gap > 0:
        # the candidates' own gaps: known non-matches from farther apart are not of the
        # population the candidate pairs' non-matches come from, and none of their
        # similarities is held (at 10^5 units in 200 sessions, computing them took 24 s)
        keep &= np.abs(session[u] - session[v]) <= max_session_gap
    source, u, v = source[keep], u[keep], v[keep]
    same_session_weight = 1.0 / (1.0 + np.bincount(source, minlength=len(same_session)))
    key = np.minimum(u, v) * n + np.maximum(u, v)
    unique, at = np.unique(key, return_inverse=True)
    weight = np.bincount(at, weights=same_session_weight[source], minlength=unique.size)
    return np.column_stack([unique // n, unique % n]), weight, same_session_weight


# Pairs handled at once by group_folds and by the derived pairs' evidence (linking).
BLOCK = 1_000_000


def group_folds(pairs: np.ndarray, group: np.ndarray, n_folds: int, seed: int = 0,
                rows: np.ndarray | None = None) -> np.ndarray:
    """Cross-fitting fold (P',) int8 of the pairs (P, 2) (only the ``rows`` (P',) when given):
    every pair of two groups (N,) gets the fold of that pair of groups, a seeded hash of the
    two group ids, so that every pair of two neurons (a same-session pair, the pairs derived
    from it, and the candidate pairs of the same two groups) falls in one fold: the model
    that scores one of them has seen none of their near copies. -1 for a pair within one
    group (the caller draws its fold at random). Computed a block at a time, without a copy
    of the pairs or a sort: 25 M candidate pairs at 10^5 units."""
    n = len(pairs) if rows is None else len(rows)
    out = np.empty(n, np.int8)
    salt = np.uint64((0x9E3779B97F4A7C15 * (int(seed) + 1)) % 2**64)
    for a in range(0, n, BLOCK):
        at = slice(a, min(a + BLOCK, n))
        block = pairs[at] if rows is None else pairs[rows[at]]
        ga, gb = group[block[:, 0]], group[block[:, 1]]
        key = (np.minimum(ga, gb).astype(np.uint64) << np.uint64(32)) | np.maximum(
            ga, gb).astype(np.uint64)
        out[at] = np.where(ga == gb, -1, _mix(key ^ salt) % np.uint64(n_folds))
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of uint64 keys (n,): a well-spread uint64 hash (n,)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
