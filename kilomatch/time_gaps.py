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

The gap is evidence of its own, which the pair probability does not carry: a neuron that was
there all along went unseen in each of the g sessions between. How often a neuron goes unseen
is learned from the data (:func:`unseen_share`): within each cluster's first and last
session, the share of sessions with no unit of it, for clusters of like amplitude (small
units near the detection threshold go unseen far more often). With q the median match
probability of the pairs across and m that share, the probability that the two sides are one
neuron is

    q m^g / (q m^g + 1 - q),

taking the g sessions as missed independently, and the second neuron as free to start after
any gap (its likelihood 1). That is read only where q is below ``UNSEEN_MAX_PROBABILITY``
(0.3), where the pairs across already lean to two neurons: small units go unseen in runs of
sessions rather than independently, and above it the gap cut more true pairs than wrong ones.
Elsewhere, and without amplitudes, it is q itself.

So: where a cluster's sessions leave a gap of ``min_gap`` sessions or more (no unit of it
in between), and that probability is below ``level``, the cluster is cut there (at the gap of
lowest probability, then each part again); a part of one unit leaves every cluster. Arrays
in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .curation import dissolve_singletons, held_together, pairs_across, sorted_pairs
from .session_pairs import grouped_median

# unseen_share's amplitude bins: quantiles of the clusters' median amplitudes, each holding
# this many clusters or more, at most this many bins
UNSEEN_BIN_CLUSTERS = 10
UNSEEN_MAX_BINS = 12
# The gap is read only where the pairs across already lean to two neurons (median below
# this): there it was right on the suite; above it, it cut more true pairs than wrong ones,
# for small units go unseen in runs of sessions, not each session on its own, and a gap in a
# cluster can be the work of an earlier split (benchmarks/RESULTS.md, "Session 54").
UNSEEN_MAX_PROBABILITY = 0.3


def split_at_gaps(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                  session: np.ndarray, min_gap: int, level: float,
                  amplitude: np.ndarray | None = None):
    """Cut each cluster at its gaps in time of ``min_gap`` sessions or more across which the
    probability that the two sides are one neuron is below ``level`` (module docstring; the
    pipeline's level is autoCuration.time_gap_probability; benchmarks/RESULTS.md, "Session
    51" for the median alone, "Session 54" for the unseen sessions).

    labels: (N,) clusters (-1 none); pairs: (Q, 2) candidate pairs; probability: (Q,) their
    match probability (NaN counts as 0); session: (N,) session index (in recording order,
    consecutive); amplitude: (N,) uV, from which the share of sessions a neuron goes unseen
    is learned (:func:`unseen_share`), or None to read the median probability alone.
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
    with_gap = _clusters_with_gap(labels, session, min_gap)
    unseen = (None if amplitude is None or with_gap.size == 0 else
              unseen_share(labels, session, np.asarray(amplitude, np.float64)))
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
    for cluster in with_gap:
        units = by_cluster[np.searchsorted(unit_cluster, cluster):
                           np.searchsorted(unit_cluster, cluster, side="right")]
        rows = slice(np.searchsorted(pair_cluster, cluster),
                     np.searchsorted(pair_cluster, cluster, side="right"))
        m = 1.0 if unseen is None else unseen[cluster]
        parts = _cut(units, pairs[rows], p[rows], session, min_gap, level, m)
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


def unseen_share(labels: np.ndarray, session: np.ndarray, amplitude: np.ndarray,
                 clusters_per_bin: int = UNSEEN_BIN_CLUSTERS, max_bins: int = UNSEEN_MAX_BINS
                 ) -> dict:
    """The share of sessions in which a neuron goes unseen, per cluster, learned from all.

    Between each cluster's first and last session, the sessions with no unit of it are
    counted; clusters are binned by their median amplitude (quantiles, ``clusters_per_bin``
    clusters or more per bin, at most ``max_bins`` bins: small units near the detection
    threshold are missed far more often than large ones), and each bin's share is
    (unseen + 1) / (sessions + 2). Clusters with gaps of two neurons make the shares
    higher, which only makes the cut more careful.

    labels: (N,) clusters (-1 none); session: (N,) consecutive session indices; amplitude:
    (N,) uV. Returns {cluster id: share in (0, 1)} for every cluster.
    """
    ids, level, edges, share = _unseen_bins(labels, session, amplitude, clusters_per_bin,
                                            max_bins)
    return dict(zip(ids.tolist(), share[np.searchsorted(edges, level)].tolist()))


def unseen_by_amplitude(labels: np.ndarray, session: np.ndarray, amplitude: np.ndarray,
                        clusters_per_bin: int = UNSEEN_BIN_CLUSTERS,
                        max_bins: int = UNSEEN_MAX_BINS):
    """:func:`unseen_share`'s bins, to read the share of any group of units: returns a
    function (K,) median amplitudes (uV) -> (K,) shares."""
    _, _, edges, share = _unseen_bins(labels, session, amplitude, clusters_per_bin, max_bins)
    return lambda median_amplitude: share[np.searchsorted(edges, median_amplitude)]


def _unseen_bins(labels, session, amplitude, clusters_per_bin, max_bins):
    """(cluster ids (K,), their median amplitudes (K,) uV, bin edges (B - 1,) uV, each bin's
    unseen share (B,)) of :func:`unseen_share`."""
    units = np.flatnonzero(labels >= 0)
    ids, inverse = np.unique(labels[units], return_inverse=True)
    if ids.size == 0:
        return ids, np.empty(0), np.empty(0), np.array([0.5])
    ses = session[units]
    first = np.full(ids.size, np.iinfo(np.int64).max)
    last = np.full(ids.size, -1)
    np.minimum.at(first, inverse, ses)
    np.maximum.at(last, inverse, ses)
    # sessions with a unit of the cluster: distinct (cluster, session) pairs
    key = np.unique(inverse.astype(np.int64) * (int(ses.max()) + 1) + ses)
    seen = np.bincount(key // (int(ses.max()) + 1), minlength=ids.size)
    between = last - first - 1          # sessions strictly between the first and the last
    unseen = last - first + 1 - seen
    level = grouped_median(amplitude[units], inverse)[1]   # each cluster's median amplitude
    several = seen >= 2
    n_bins = int(max(1, min(max_bins, np.count_nonzero(several) // clusters_per_bin)))
    edges = (np.quantile(level[several], np.linspace(0, 1, n_bins + 1)[1:-1])
             if several.any() else np.empty(0))
    bin_of = np.searchsorted(edges, level)
    n_unseen = np.bincount(bin_of[several], weights=unseen[several], minlength=n_bins)
    n_between = np.bincount(bin_of[several], weights=np.maximum(between[several], 0),
                            minlength=n_bins)
    share = (n_unseen + 1.0) / (n_between + 2.0)
    return ids, level, edges, share


def _clusters_with_gap(labels: np.ndarray, session: np.ndarray, min_gap: int) -> np.ndarray:
    """Sorted ids of the clusters of labels (N,) whose sessions leave a gap of ``min_gap``
    sessions or more: the only ones a cut can change."""
    units = np.flatnonzero(labels >= 0)
    units = units[np.lexsort((session[units], labels[units]))]
    lab, ses = labels[units], session[units]
    gap = (lab[1:] == lab[:-1]) & (ses[1:] - ses[:-1] >= min_gap)
    return np.unique(lab[1:][gap])


def _cut(units: np.ndarray, pairs: np.ndarray, p: np.ndarray, session: np.ndarray,
         min_gap: int, level: float, unseen: float = 1.0) -> list:
    """The parts (sorted unit arrays) of one cluster's ``units`` after cutting at its gaps
    across which the probability of one neuron is below ``level``, lowest first; ``pairs``
    (Q, 2) and ``p`` (Q,) are the cluster's candidate pairs, ``unseen`` the share of sessions
    a neuron like it goes unseen (1: the median probability alone)."""
    sessions = np.unique(session[units])
    best, best_at = level, None
    for k in np.flatnonzero(np.diff(sessions) >= min_gap):
        early = session[pairs] <= sessions[k]
        across = early[:, 0] != early[:, 1]
        if not across.any():
            continue
        median = float(np.median(p[across]))
        missed = (unseen ** float(sessions[k + 1] - sessions[k] - 1)
                  if median < UNSEEN_MAX_PROBABILITY else 1.0)
        one = (median if missed == 1.0 or median >= 1.0 else   # the median alone, exactly
               median * missed / (median * missed + 1.0 - median))
        if one < best:
            best, best_at = one, sessions[k]
    if best_at is None:
        return [units]
    parts = []
    for side in (session[units] <= best_at, session[units] > best_at):
        keep = np.isin(pairs, units[side]).all(axis=1)
        parts += _cut(units[side], pairs[keep], p[keep], session, min_gap, level, unseen)
    return parts
