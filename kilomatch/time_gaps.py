"""A cluster cut in time at a gap of several sessions that most of its pairs across deny.

On high-turnover recordings one neuron is recorded for some sessions, then none of it for
several, and another neuron of alike waveform is recorded at its place after: the clustering
chains the two groups. Across such a gap the match probability of most pairs is at the floor,
yet a pair or two may read sure: where known non-matches are few, the cross-fitted trees of
one fold can score a pair far above the other fold's (on the suite's 24-session study 0.96
against 0.55 for a pair 23 um apart whose every similarity lay below the matches' 5th
percentile). One pair should not hold two groups together, so the cut reads the median
of the pairs across, not their best. A neuron's own units seldom leave a gap of three
sessions (a sorted neuron missed three sessions running), and where they do their pairs
across still read as matches.

So: where a cluster's sessions leave a gap of ``min_gap`` sessions or more (no unit of it
in between), and the median match probability of the candidate pairs across the gap is below
``level``, the cluster is cut there (at the gap of lowest median, then each part again); a
part of one unit leaves every cluster. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .curation import dissolve_singletons, held_together, pairs_across, sorted_pairs


def split_at_gaps(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                  session: np.ndarray, min_gap: int, level: float):
    """Cut each cluster at its gaps in time of ``min_gap`` sessions or more across which the
    median match probability of the candidate pairs is below ``level`` (module docstring;
    the pipeline's level is autoCuration.time_gap_probability: offline on 220 of the
    suite's runs, at gaps of 3 sessions or more, a level of 0.05 cut 53 wrong pairs and no
    true one, 0.1 three true ones more, 0.2 twelve; benchmarks/RESULTS.md, "Session 51").

    labels: (N,) clusters (-1 none); pairs: (Q, 2) candidate pairs; probability: (Q,) their
    match probability (NaN counts as 0); session: (N,) session index (in recording order).
    Pairs that are not candidates (farther apart than the candidates reach) do not count; a
    gap with no candidate pair across is not cut. Returns (labels (N,), removed (R, 2) pairs
    taken apart, sorted). min_gap 0 cuts nothing.
    """
    labels = np.array(labels, dtype=np.int64)
    session = np.asarray(session, np.int64)
    if min_gap <= 0:
        return labels, np.empty((0, 2), np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    p = np.nan_to_num(np.asarray(probability, np.float64), nan=0.0)
    inside = held_together(labels, pairs)
    pairs, p = pairs[inside], p[inside]
    # each cluster's units and pairs as slices of arrays sorted by cluster, found once
    order = np.argsort(labels[pairs[:, 0]], kind="stable")
    pairs, p = pairs[order], p[order]
    pair_cluster = labels[pairs[:, 0]]
    by_cluster = np.argsort(labels, kind="stable")  # each cluster's units in increasing order
    unit_cluster = labels[by_cluster]
    next_label = int(labels.max(initial=-1)) + 1
    removed = []
    for cluster in _clusters_with_gap(labels, session, min_gap):
        units = by_cluster[np.searchsorted(unit_cluster, cluster):
                           np.searchsorted(unit_cluster, cluster, side="right")]
        rows = slice(np.searchsorted(pair_cluster, cluster),
                     np.searchsorted(pair_cluster, cluster, side="right"))
        parts = _cut(units, pairs[rows], p[rows], session, min_gap, level)
        if len(parts) == 1:
            continue
        for k, part in enumerate(parts):
            if k:  # the first part keeps the cluster's number
                labels[part] = next_label
                next_label += 1
        for k in range(len(parts)):
            for other in parts[k + 1:]:
                removed.append(pairs_across(parts[k], other))
    labels = dissolve_singletons(labels)
    return labels, sorted_pairs(removed)


def _clusters_with_gap(labels: np.ndarray, session: np.ndarray, min_gap: int) -> np.ndarray:
    """Sorted ids of the clusters of labels (N,) whose sessions leave a gap of ``min_gap``
    sessions or more: the only ones a cut can change."""
    units = np.flatnonzero(labels >= 0)
    units = units[np.lexsort((session[units], labels[units]))]
    lab, ses = labels[units], session[units]
    gap = (lab[1:] == lab[:-1]) & (ses[1:] - ses[:-1] >= min_gap)
    return np.unique(lab[1:][gap])


def _cut(units: np.ndarray, pairs: np.ndarray, p: np.ndarray, session: np.ndarray,
         min_gap: int, level: float) -> list:
    """The parts (sorted unit arrays) of one cluster's ``units`` after cutting at its gaps
    whose median probability across is below ``level``, lowest first; ``pairs`` (Q, 2) and
    ``p`` (Q,) are the cluster's candidate pairs."""
    sessions = np.unique(session[units])
    best, best_at = level, None
    for k in np.flatnonzero(np.diff(sessions) >= min_gap):
        early = session[pairs] <= sessions[k]
        across = early[:, 0] != early[:, 1]
        if not across.any():
            continue
        median = float(np.median(p[across]))
        if median < best:
            best, best_at = median, sessions[k]
    if best_at is None:
        return [units]
    parts = []
    for side in (session[units] <= best_at, session[units] > best_at):
        keep = np.isin(pairs, units[side]).all(axis=1)
        parts += _cut(units[side], pairs[keep], p[keep], session, min_gap, level)
    return parts
