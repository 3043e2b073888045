"""Units moved to the cluster the match probability says they belong to.

The clustering can chain two neurons at one place into one cluster. Where both were recorded
in one session, the same-session conflict step takes one of the two units out, and the units
it took out, all of one neuron, are gathered again by the join. But the units of that
neuron recorded in sessions where the other was not stay in the first cluster: no split
cuts them out, for the mean probability across the cut (0.1-0.3 on a sparse study) is above
the cut level the splits need (0.02), which protects the small units of one neuron. Their
pairs, though, say where they belong: sure (about 1) to the units taken out, unlikely to
the rest of their cluster.

So a unit moves from its cluster to another where the mean match probability of its
candidate pairs into its own cluster is below ``MOVE_UNLIKELY`` (more likely two neurons
than one), into the other cluster at least ``MOVE_SURE`` over ``MOVE_MIN_PAIRS`` pairs or
more, and the other cluster has no unit of its session. The moves of a pass are made
together (the surest first where two units of one session would go to one cluster), and
passes repeat until none is left. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .curation import dissolve_singletons, mean_in_cluster, pairs_across, sorted_pairs

# The levels of a move: into the new cluster the level of a sure match (the joins' and the
# split at distance's), out of the old one more likely two neurons than one. A single pair
# into the new cluster is not enough: with one pair, moves on 3 of 64 sparse studies and the
# sorter-error study at +38000 took true pairs apart (benchmarks/RESULTS.md, "Session 70").
MOVE_SURE = 0.9
MOVE_UNLIKELY = 0.5
MOVE_MIN_PAIRS = 2
MOVE_PASSES = 5


def move_units(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
               session: np.ndarray, sure: float = MOVE_SURE,
               unlikely: float = MOVE_UNLIKELY, min_pairs: int = MOVE_MIN_PAIRS):
    """Move units between clusters (module docstring).

    labels: (N,) clusters, -1 for units in none; pairs: (P, 2) candidate pairs (units of
    different sessions); probability: (P,) their match probability; session: (N,) session of
    each unit. Returns (labels (N,), moved (M,) the units moved, sorted, removed (R, 2) the
    pairs each moved unit had with the units of the cluster it left, sorted); a cluster left
    with one unit is dissolved.
    """
    labels = np.asarray(labels, np.int64).copy()
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    probability = np.asarray(probability, np.float64)
    session = np.asarray(session, np.int64)
    moved, removed = [], []
    for _ in range(MOVE_PASSES):
        unit, target = _moves(labels, pairs, probability, session, sure, unlikely, min_pairs)
        if unit.size == 0:
            break
        before = labels.copy()
        labels[unit] = target
        for u in unit:
            # the units of the cluster it left that are not where it went
            left = np.flatnonzero((before == before[u]) & (labels != labels[u]))
            removed.append(pairs_across(np.array([u]), left))
        moved.append(unit)
    moved = np.unique(np.concatenate(moved)) if moved else np.zeros(0, np.int64)
    # sorted, once each: two units that left one cluster for two both list their pair
    removed = np.unique(sorted_pairs(removed), axis=0)
    return dissolve_singletons(labels), moved, removed


def _moves(labels, pairs, probability, session, sure, unlikely, min_pairs):
    """One pass: the units (M,) that move and their new clusters (M,)."""
    n_clusters = int(labels.max(initial=-1)) + 1
    if n_clusters < 2 or len(pairs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first, second = labels[pairs[:, 0]], labels[pairs[:, 1]]
    # the mean into each unit's own cluster first: only the few units it finds unlikely
    # there are looked at further (at 10^5 units the candidate pairs are 28 M)
    held = (first == second) & (first >= 0)
    looked = mean_in_cluster(labels, pairs, probability) < unlikely  # NaN: no pair there
    if not looked.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # each pair of a looked-at unit counts towards the other unit's cluster
    from_first = looked[pairs[:, 0]] & (second >= 0) & ~held
    from_second = looked[pairs[:, 1]] & (first >= 0) & ~held
    unit = np.r_[pairs[from_first, 0], pairs[from_second, 1]]
    other = np.r_[second[from_first], first[from_second]]
    p = np.r_[probability[from_first], probability[from_second]]
    keys, inverse = np.unique(unit * n_clusters + other, return_inverse=True)
    count = np.bincount(inverse)
    mean = np.bincount(inverse, weights=p) / count
    k_unit, k_cluster = keys // n_clusters, keys % n_clusters
    # clusters that already hold a unit of a session
    n_sessions = int(session.max()) + 1
    inside = labels >= 0
    occupied = np.unique(labels[inside] * n_sessions + session[inside])
    slot = k_cluster * n_sessions + session[k_unit]
    go = (mean >= sure) & (count >= min_pairs) & ~np.isin(slot, occupied)
    if not go.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.flatnonzero(go)
    # the surest move first: of a unit's possible targets one, and of the units of one
    # session bound for one cluster one (ties: the lower unit, the lower cluster)
    rows = rows[np.lexsort((k_cluster[rows], k_unit[rows], -mean[rows]))]
    _, first_row = np.unique(k_unit[rows], return_index=True)
    rows = rows[np.sort(first_row)]
    _, first_row = np.unique(slot[rows], return_index=True)
    rows = np.sort(rows[first_row])
    return k_unit[rows], k_cluster[rows]
