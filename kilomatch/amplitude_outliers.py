"""A unit whose amplitude lies off the rest of its cluster, weakly linked to it.

A neuron recorded in one session only, beside a neighbour that went unseen in that session,
can end in the neighbour's cluster: no same-session conflict shows it, and its waveform can
be as alike to the neighbour's as the neighbour's own units are (benchmarks/RESULTS.md,
"Session 74"). Its pairs with the cluster often read low, but so do the pairs of a small
neuron's own units, and taking out every weakly linked unit took out as many of a
cluster's own units as others (sessions 71-72, 77). The footprint amplitude tells the two
apart where it lies off the cluster: one neuron's footprint amplitude is steady from day to
day, so a unit beyond the largest (or under the smallest) amplitude of the rest of its
cluster, farther from their median than one neuron's units lie apart and at least
``MIN_FACTOR`` times, and whose mean match probability with them is low, is another
neuron. Such a unit is taken out of its cluster. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .curation import (POOLED_AMPLITUDE_QUANTILE, dissolve_singletons, mean_in_cluster,
                       pairs_across, sorted_pairs, spread_limit, within_cluster_pairs)

# The least ratio of a unit's footprint amplitude to the median of the rest of its cluster,
# whatever the clusters' spread says. On SpikeInterface's sharp templates one neuron's
# learned spread is narrow (its 99th percentile 1.05-1.07x) and units of one neuron lie
# 1.2-1.35x off the rest of their cluster (10 such units on 20 perfect-sorter studies, one
# with mean probability below 0.3); on the accuracy suite no unit lay 1.2-1.35x off and
# beyond the spread (benchmarks/RESULTS.md, "Session 78").
MIN_FACTOR = 1.35


def amplitude_outliers(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                       log_amplitude: np.ndarray, max_probability: float,
                       limit: float | None = None, min_factor: float = MIN_FACTOR
                       ) -> np.ndarray:
    """(K,) units, sorted, whose log amplitude lies beyond every other unit of their cluster
    (of three units or more), by ``limit`` at least from the median of the others and by
    log(``min_factor``), and whose mean match probability with the others over their
    candidate pairs is below ``max_probability``.

    labels: (N,) clusters (-1 none); pairs: (P, 2) candidate pairs; probability: (P,) their
    match probability (a unit with no candidate pair in its cluster is never an outlier);
    log_amplitude: (N,) natural log of each unit's amplitude (uV); limit: one neuron's spread
    of log amplitude, None: the ``POOLED_AMPLITUDE_QUANTILE`` of the pairs the clusters hold
    (:func:`kilomatch.curation.spread_limit`, read as a half-normal from their median).
    """
    labels = np.asarray(labels, np.int64)
    log_amplitude = np.asarray(log_amplitude, np.float64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    p = np.asarray(probability, np.float64)
    if limit is None:
        limit = spread_limit(labels, within_cluster_pairs(labels), log_amplitude,
                             POOLED_AMPLITUDE_QUANTILE)
    gap = max(limit, np.log(min_factor))
    if not np.isfinite(gap):
        return np.empty(0, np.int64)
    mean = mean_in_cluster(labels, pairs, p)  # NaN (never below): no candidate pair there
    units = np.flatnonzero(labels >= 0)
    units = units[np.lexsort((log_amplitude[units], labels[units]))]
    start = np.flatnonzero(np.r_[True, labels[units][1:] != labels[units][:-1]])
    stop = np.r_[start[1:], units.size]
    found = []
    for a, b in zip(start, stop):
        if b - a < 3:
            continue
        members = units[a:b]
        values = log_amplitude[members]
        # only the highest and the lowest unit can lie beyond every other one
        for unit, rest in ((members[-1], values[:-1]), (members[0], values[1:])):
            if abs(log_amplitude[unit] - np.median(rest)) >= gap \
                    and mean[unit] < max_probability:
                found.append(unit)
    return np.sort(np.asarray(found, np.int64))


def split_amplitude_outliers(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                             log_amplitude: np.ndarray, max_probability: float,
                             min_factor: float = MIN_FACTOR):
    """Take the :func:`amplitude_outliers` out of their clusters (once, all together); a
    cluster left with one unit is dissolved. Arguments as there. Returns (labels (N,), the
    units taken out (K,), removed (R, 2) the pairs of each with the rest of its cluster,
    sorted)."""
    labels = np.array(labels, dtype=np.int64)
    out = amplitude_outliers(labels, pairs, probability, log_amplitude, max_probability,
                             min_factor=min_factor)
    removed = []
    for unit in out:
        mates = np.flatnonzero(labels == labels[unit])
        removed.append(pairs_across(np.array([unit]), mates[mates != unit]))
    labels[out] = -1
    # a cluster's highest and lowest units both taken out share one pair
    removed = np.unique(sorted_pairs(removed), axis=0)
    return dissolve_singletons(labels), out, removed.reshape(-1, 2)
