"""A lone unit at either end of a cluster, far in time from the rest and weakly linked to it.

On high-turnover recordings a neuron is often recorded in a session or two, then not, and
another neuron of alike waveform appears at its place some sessions later: the clustering
chains the two, and no same-session conflict can show it. A neuron's own units seldom leave
such a gap (a sorted neuron missed in several sessions running), and where they do the match
probability still links the lone unit to the rest. So a cluster's only unit of its first (or
last) session that is ``min_gap`` sessions or more from every other unit of the cluster, and
none of whose pairs with them reaches ``max_probability``, is taken out of the cluster;
the cluster is then looked at again. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .curation import dissolve_singletons, held_together, pairs_across, sorted_pairs

# A lone end unit whose best pair with its cluster is below this leaves it. It lies above the
# match prior of pairs three or more sessions apart on the suite's high-turnover studies
# (0.01-0.07), so such pairs show little beyond that prior. Offline on 180 of the suite's
# runs, 0.2 cut one more true and one more wrong pair, 0.5 eleven more true ones
# (benchmarks/RESULTS.md, "Session 50").
LONE_END_PROBABILITY = 0.1


def split_lone_ends(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                    session: np.ndarray, min_gap: int,
                    max_probability: float = LONE_END_PROBABILITY):
    """Take out of each cluster the lone units at its ends that lie ``min_gap`` sessions or
    more from every other unit of it and whose highest match probability with them is below
    ``max_probability``, until none is left; a cluster left with one unit is dissolved.

    labels: (N,) clusters (-1 none); pairs: (Q, 2) candidate pairs (a pair of a cluster not
    listed counts as probability 0); probability: (Q,) their match probability (NaN counts
    as 0); session: (N,) session index (in recording order).
    Returns (labels (N,), removed (R, 2) pairs taken apart, sorted).
    """
    labels = np.array(labels, dtype=np.int64)
    session = np.asarray(session, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    p = np.nan_to_num(np.asarray(probability, np.float64), nan=0.0)
    # units only leave clusters here: the pairs held together now are all that can count
    inside = held_together(labels, pairs)
    pairs, p = pairs[inside], p[inside]
    removed = []
    while min_gap > 0:
        ends = lone_end_units(labels, session, min_gap)
        if not ends.size:
            break
        inside = held_together(labels, pairs)
        best = np.zeros(labels.size)
        np.maximum.at(best, pairs[inside, 0], p[inside])
        np.maximum.at(best, pairs[inside, 1], p[inside])
        ends = ends[best[ends] < max_probability]
        # one unit per cluster at a time: the two units of a two-unit cluster are each
        # other's ends, and the pair is taken apart once
        ends = ends[np.unique(labels[ends], return_index=True)[1]]
        if not ends.size:
            break
        for unit in ends:
            mates = np.flatnonzero(labels == labels[unit])
            removed.append(pairs_across(np.array([unit]), mates[mates != unit]))
        labels[ends] = -1
        labels = dissolve_singletons(labels)
    return labels, sorted_pairs(removed)


def lone_end_units(labels: np.ndarray, session: np.ndarray, min_gap: int) -> np.ndarray:
    """(K,) units that are their cluster's only unit of its first (or last) session and lie
    ``min_gap`` sessions or more from the cluster's next (or previous) session; a cluster's
    first end before its last. labels (N,) (-1 none); session (N,) int."""
    units = np.flatnonzero(labels >= 0)
    if not units.size:
        return units
    units = units[np.lexsort((session[units], labels[units]))]
    lab, ses = labels[units], session[units]
    start = np.flatnonzero(np.r_[True, (lab[1:] != lab[:-1]) | (ses[1:] != ses[:-1])])
    count = np.diff(np.r_[start, units.size])  # units of each (cluster, session)
    g_lab, g_ses = lab[start], ses[start]
    same_next = np.r_[g_lab[1:] == g_lab[:-1], False]
    step = np.r_[g_ses[1:] - g_ses[:-1], 0]  # to the next session of the cluster
    first = np.r_[True, ~same_next[:-1]] & same_next & (count == 1) & (step >= min_gap)
    last = np.r_[False, same_next[:-1]] & ~same_next & (count == 1) & (
        np.r_[0, step[:-1]] >= min_gap)
    return np.concatenate([units[start[first]], units[start[last]]])
