"""A neuron's firing rate as evidence of its identity across sessions.

A neuron keeps its firing rate from day to day within a spread that each dataset shows in
its own clusters, while two neighbours' rates differ by a factor of two or more as often as
not. Where the match probability already says a cluster's groups of units are more likely
two neurons than one, and their firing rates differ beyond one neuron's spread, the cluster
is split. Where the data's rates are not stable (brain state, a sorter that splits units)
the learned spread is wide and little or nothing is cut. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .curation import held_together, split_by_value, spread_limit, within_cluster_pairs

# Groups whose mean match probability across is below this are candidates for the split:
# by their pairs more likely two neurons than one (the review's `groups` flag level).
RATE_SPLIT_PROBABILITY = 0.5
# ... and their median firing rates must differ by this factor at least, whatever the
# clusters' spread says (as the amplitude's AMPLITUDE_STEP_MIN_FACTOR).
RATE_STEP_MIN_FACTOR = 1.5


def unit_rates(spike_times: list, session: np.ndarray) -> np.ndarray:
    """(N,) firing rate of each unit in spikes per ms: its spike count over its session's
    span, from the earliest to the latest spike of any unit of that session (sessions
    recorded for different times compare fairly, and so do sessions whose spike times do not
    start at 0, as cut from one concatenated recording; one spike at least, so that no rate
    is 0).

    spike_times: N arrays of spike times (ms), sorted; session: (N,)."""
    session = np.asarray(session, np.int64)
    count = np.array([max(len(t), 1) for t in spike_times], np.float64)
    first = np.array([float(t[0]) if len(t) else np.inf for t in spike_times])
    last = np.array([float(t[-1]) if len(t) else -np.inf for t in spike_times])
    n = int(session.max(initial=0)) + 1
    start, end = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(start, session, first)
    np.maximum.at(end, session, last)
    span = np.where(end > start, end - start, 0.0)
    return count / np.maximum(span[session], 1.0)


def log_rate_in_clusters(labels: np.ndarray, session: np.ndarray, rate: np.ndarray
                         ) -> np.ndarray:
    """(N,) natural log of the firing rate of each unit's neuron in its session: the rates
    of its cluster's units of that session summed (a neuron the sorter split into two
    units kept whole fires at their sum); a unit in no cluster keeps its own."""
    labels = np.asarray(labels, np.int64)
    session = np.asarray(session, np.int64)
    rate = np.asarray(rate, np.float64)
    inside = labels >= 0
    key = np.where(inside, labels * (int(session.max(initial=0)) + 1) + session, -1)
    _, group = np.unique(key[inside], return_inverse=True)
    summed = rate.copy()
    summed[inside] = np.bincount(group, weights=rate[inside])[group]
    return np.log(summed)


def split_at_rates(labels, pairs, probability, session, rate,
                   level: float = RATE_SPLIT_PROBABILITY,
                   min_factor: float = RATE_STEP_MIN_FACTOR):
    """Split each cluster into groups whose mean match probability across is below
    ``level`` (average linkage) and whose median firing rates differ by more than one
    neuron's spread: the 99th percentile of |log rate ratio| of the pairs the clusters hold
    (read from their median as a half-normal's), and by ``min_factor`` at least.

    labels: (N,) clusters (-1 none); pairs: (Q, 2) candidate pairs; probability: (Q,) their
    match probability (pairs of a cluster not listed count as 0); session: (N,); rate: (N,)
    firing rates (:func:`unit_rates`). Returns (labels (N,), removed (R, 2) pairs taken
    apart, sorted; the limit in log rate, inf when the clusters hold no pair).
    """
    labels = np.asarray(labels, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    probability = np.nan_to_num(np.asarray(probability, np.float64))
    log_rate = log_rate_in_clusters(labels, session, rate)
    held = within_cluster_pairs(labels)
    held = held[np.asarray(session)[held[:, 0]] != np.asarray(session)[held[:, 1]]]
    limit = max(spread_limit(labels, held, log_rate), np.log(min_factor))
    if not np.isfinite(limit):
        return labels, np.empty((0, 2), np.int64), limit
    inside = held_together(labels, pairs)
    split, removed = split_by_value(labels, pairs[inside], probability[inside], log_rate,
                                    level, limit)
    return split, removed, limit
