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

from .curation import (dissolve_singletons, held_together, pairs_across, sorted_pairs,
                       split_by_value, spread_limit, within_cluster_pairs)

# Groups whose mean match probability across is below this are candidates for the split:
# by their pairs more likely two neurons than one (the review's `groups` flag level).
RATE_SPLIT_PROBABILITY = 0.5
# ... and their median firing rates must differ by this factor at least, whatever the
# clusters' spread says (as the amplitude's AMPLITUDE_STEP_MIN_FACTOR).
RATE_STEP_MIN_FACTOR = 1.5
# A step of firing rate in time that no match probability overrules: the two sides' median
# rates this many times one neuron's spread apart (in log), and every rate of one side beyond
# that spread from every rate of the other. 3, as for the amplitude (a step beyond
# curation.AMPLITUDE_STEP_SURE x autoCuration.amplitude_step = 2 x 1.5 spreads is cut
# whatever the probability): the probability does not read the rate, and gave a 6x step
# between a neuron and its successor 0.96-0.99 (benchmarks/RESULTS.md, "Session 63").
RATE_STEP_SURE = 3.0


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


def rate_spread(labels, session, rate, min_factor: float = RATE_STEP_MIN_FACTOR
                ) -> tuple[np.ndarray, float]:
    """Each unit's neuron's log rate (:func:`log_rate_in_clusters`) and one neuron's spread
    of it across sessions: the 99th percentile of |log rate ratio| of the pairs of sessions
    the clusters hold (read from their median as a half-normal's), ``min_factor`` at least
    (log). labels: (N,) clusters (-1 none); session: (N,); rate: (N,) (:func:`unit_rates`).
    Returns ((N,) log rates, the spread; inf when the clusters hold no such pair)."""
    labels = np.asarray(labels, np.int64)
    session = np.asarray(session)
    log_rate = log_rate_in_clusters(labels, session, rate)
    held = within_cluster_pairs(labels)
    held = held[session[held[:, 0]] != session[held[:, 1]]]
    return log_rate, max(spread_limit(labels, held, log_rate), np.log(min_factor))


def split_at_rates(labels, pairs, probability, session, rate,
                   level: float = RATE_SPLIT_PROBABILITY,
                   min_factor: float = RATE_STEP_MIN_FACTOR, limit: float | None = None):
    """Split each cluster into groups whose mean match probability across is below
    ``level`` (average linkage) and whose median firing rates differ by more than one
    neuron's spread (:func:`rate_spread`, or ``limit`` (log) when given).

    labels: (N,) clusters (-1 none); pairs: (Q, 2) candidate pairs; probability: (Q,) their
    match probability (pairs of a cluster not listed count as 0); session: (N,); rate: (N,)
    firing rates (:func:`unit_rates`). Returns (labels (N,), removed (R, 2) pairs taken
    apart, sorted; the limit in log rate, inf when the clusters hold no pair).
    """
    labels = np.asarray(labels, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    probability = np.nan_to_num(np.asarray(probability, np.float64))
    if limit is None:
        log_rate, limit = rate_spread(labels, session, rate, min_factor)
    else:  # the spread is known: only the rates of the clusters as they are now
        log_rate = log_rate_in_clusters(labels, session, rate)
    if not np.isfinite(limit):
        return labels, np.empty((0, 2), np.int64), limit
    inside = held_together(labels, pairs)
    split, removed = split_by_value(labels, pairs[inside], probability[inside], log_rate,
                                    level, limit)
    return split, removed, limit


def split_rate_steps(labels, session, log_rate, limit: float,
                     factor: float = RATE_STEP_SURE):
    """Split each cluster in time where its firing rate steps beyond doubt: at the cut
    between two sessions where every rate on one side is more than ``limit`` from every
    rate on the other and their medians differ by more than ``factor`` x ``limit`` (the
    cut of largest median difference); each side is tried again. The match probability is
    not read: a neuron followed at its place by a neighbour of alike waveform is the case.

    labels: (N,) clusters (-1 none); session: (N,); log_rate: (N,) natural log of each
    unit's neuron's rate in its session (:func:`log_rate_in_clusters`, so that both halves
    of a sorter's split stay on one side with the rate of the whole); limit: one neuron's
    spread (log), as :func:`split_at_rates` learns it. Returns (labels (N,), removed (R, 2)
    pairs taken apart, sorted)."""
    labels = np.array(labels, dtype=np.int64)
    session = np.asarray(session, np.int64)
    log_rate = np.asarray(log_rate, np.float64)
    if not np.isfinite(limit) or not (labels >= 0).any():
        return labels, np.empty((0, 2), np.int64)
    held = np.flatnonzero(labels >= 0)
    n = int(labels.max()) + 1
    top, bottom = np.full(n, -np.inf), np.full(n, np.inf)
    np.maximum.at(top, labels[held], log_rate[held])
    np.minimum.at(bottom, labels[held], log_rate[held])
    # a cluster whose rates span less than the step cannot hold one (nearly all of them)
    clusters = np.flatnonzero(top - bottom > factor * limit)
    by_cluster = held[np.argsort(labels[held], kind="stable")]
    unit_cluster = labels[by_cluster]
    next_label = n
    removed = []
    for cluster in clusters:
        todo = [by_cluster[np.searchsorted(unit_cluster, cluster):
                           np.searchsorted(unit_cluster, cluster, side="right")]]
        while todo:
            units = todo.pop()
            cut = _rate_step(units, session, log_rate, limit, factor)
            if cut is None:
                continue
            before, after = units[cut], units[~cut]
            labels[after] = next_label  # the earlier side keeps the cluster's number
            next_label += 1
            removed.append(pairs_across(before, after))
            todo += [before, after]
    return dissolve_singletons(labels), sorted_pairs(removed)


def _rate_step(units, session, log_rate, limit, factor):
    """(len(units),) bool, the units before the cut :func:`split_rate_steps` makes in one
    cluster, or None for no cut."""
    order = np.argsort(session[units], kind="stable")
    ses, rate = session[units][order], log_rate[units][order]
    ends = np.flatnonzero(np.diff(ses)) + 1  # a cut after each session but the last
    best, best_step = None, factor * limit
    for k in ends:
        early, late = rate[:k], rate[k:]
        gap = max(late.min() - early.max(), early.min() - late.max())
        if gap <= limit:
            continue
        step = abs(np.median(late) - np.median(early))
        if step > best_step:
            best, best_step = k, step
    if best is None:
        return None
    cut = np.zeros(units.size, bool)
    cut[order[:best]] = True
    return cut
