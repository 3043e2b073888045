"""Two neurons recorded in turn at one place, told apart by a step of similarity in time
(docs/method.md, section 9).

On studies where neurons stop being recorded and others start, a neuron that appears where
another vanished, with an alike waveform, can end in the other's cluster: the distance and
each pair's similarity cannot tell it from one neuron, and the match probability of small
units' true pairs is often as low as of these. What differs is the cluster as a whole: the
units of one neuron are about as alike across any cut in time as within either side, while
two neurons in turn are alike within each side and less so across the cut between them.

Arrays in, arrays out. Similarities are Fisher z of the final clustering's features.
"""

from __future__ import annotations

import numpy as np

from .curation import _cluster_members, dissolve_singletons, pairs_across
from .session_pairs import grouped_median, pair_code

# The similarity the step compares: Waveform + AUTOCORR_WEIGHT x AutoCorr (Fisher z). On the
# accuracy suite the AutoCorr z of one neuron's pairs spreads 2-3 times as widely as the
# Waveform z (interquartile range / 1.349 over the pairs the clusters hold: 0.8-1.4
# against 0.4-0.7), so each counts about alike per unit of its own spread; with flat ACGs the
# AutoCorr z barely varies and the Waveform decides (benchmarks/RESULTS.md, "Session 37").
AUTOCORR_WEIGHT = 0.3
# A pair of sessions' own median counts in full only with many more pairs than this.
BASELINE_PRIOR_PAIRS = 10


def step_similarity(similarities: np.ndarray, feature_names: list) -> np.ndarray | None:
    """(P,) the similarity the step compares, from the per-feature similarities (P, F) of
    ``feature_names`` (F,); None when there is no Waveform feature."""
    names = list(feature_names)
    if "Waveform" not in names:
        return None
    out = np.asarray(similarities[:, names.index("Waveform")], np.float64).copy()
    if "AutoCorr" in names:
        out += AUTOCORR_WEIGHT * np.asarray(similarities[:, names.index("AutoCorr")])
    return out


def cut_steps(sessions: np.ndarray, first: np.ndarray, second: np.ndarray,
              value: np.ndarray) -> tuple[float, int]:
    """The cut in time of one cluster where the pairs across are least alike compared with
    the pairs within either side: (step, cut session), step = the mean value of the pairs
    across minus the mean value of the pairs within; (nan, -1) when no cut has pairs both
    across and within.

    sessions: (S,) sorted distinct sessions of the cluster's units (a cut after each but the
    last); first, second: (M,) the sessions of each pair's units, first < second; value: (M,)
    the pairs' similarity over what is usual for their pair of sessions
    (session_pair_baseline). The pairs across a cut span other pairs of sessions than the
    pairs within, often farther apart in time: read against their own sessions' usual
    value, a neuron whose waveform changes slowly, or a study whose every neuron looks
    different after a jump of the probe, shows no step."""
    cuts = sessions[:-1]
    across = (first[:, None] <= cuts[None, :]) & (second[:, None] > cuts[None, :])  # (M, T)
    n_a = across.sum(axis=0)
    n_w = first.size - n_a
    v_a = value @ across  # sums over the pairs across each cut
    with np.errstate(invalid="ignore", divide="ignore"):
        step = v_a / n_a - (value.sum() - v_a) / n_w
    step = np.where((n_a > 0) & (n_w > 0), step, np.nan)
    if np.isnan(step).all():
        return float("nan"), -1
    k = int(np.nanargmin(step))
    return float(step[k]), int(cuts[k])


def split_at_similarity_step(labels: np.ndarray, pairs: np.ndarray, similarity: np.ndarray,
                             session: np.ndarray, step: float):
    """Split each cluster at its cut in time (cut_steps) where the candidate pairs across
    are less alike than the pairs within either side by more than ``step`` (Fisher z), each
    pair read against what is usual for its pair of sessions (session_pair_baseline, from
    every cluster): the units of the sessions up to the cut keep the label, those after get
    a new one; each side is then tried again (three neurons in turn can take two cuts). A
    side of one unit leaves every cluster.

    labels: (N,) clusters (-1 none); pairs: (P, 2) candidate pairs (any: those within a
    cluster and across sessions are used); similarity: (P,) step_similarity; session: (N,).
    Returns (labels (N,), removed (R, 2) pairs across the cuts, sorted, step (K,) of each
    cut, in the order they were made).
    """
    labels = np.array(labels, dtype=np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    session = np.asarray(session)
    similarity = np.asarray(similarity, np.float64)

    def members_of(clusters):  # [(units, rows of their pairs across sessions)]
        return [(units, rows[session[pairs[rows, 0]] != session[pairs[rows, 1]]])
                for units, rows in _cluster_members(labels, pairs, clusters)]

    members = members_of(np.unique(labels[labels >= 0]))
    # only the clusters' own pairs are read (a cut's sides are parts of a cluster): at 10^5
    # units they are a third of the 28 M candidate pairs
    rows, baseline = session_pair_baseline(members, pairs, similarity, session)
    similarity = similarity.copy()
    similarity[rows] -= baseline
    removed, steps = [], []
    while members:
        next_label = labels.max() + 1
        cut_now = []
        for units, rows in members:
            sessions = np.unique(session[units])
            if sessions.size < 3:  # no pair within a side of any cut
                continue
            s0, s1 = session[pairs[rows, 0]], session[pairs[rows, 1]]
            found, cut = cut_steps(sessions, np.minimum(s0, s1), np.maximum(s0, s1),
                                   similarity[rows])
            if not found < -step:  # also NaN
                continue
            later = units[session[units] > cut]
            earlier = units[session[units] <= cut]
            labels[later] = next_label
            cut_now += [labels[earlier[0]], next_label]
            next_label += 1
            removed.append(pairs_across(earlier, later))
            steps.append(found)
        members = members_of(np.unique(cut_now)) if cut_now else []
    labels = dissolve_singletons(labels)
    if not removed:
        return labels, np.empty((0, 2), np.int64), np.zeros(0)
    removed = np.concatenate(removed)
    return labels, removed[np.lexsort((removed[:, 1], removed[:, 0]))], np.array(steps)


def session_pair_baseline(members: list, pairs: np.ndarray, similarity: np.ndarray,
                          session: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The usual similarity of a neuron's units in each pair's two sessions, for the pairs
    of the clusters ``members`` [(units, rows of ``pairs`` (P, 2) within it, across
    sessions)]: (rows (R,) of those pairs, baseline (R,)). The baseline is the median
    similarity (P,) of the clusters' pairs in the same two sessions, shrunk toward the
    median of their pairs as far apart in time by n / (n + BASELINE_PRIOR_PAIRS) for n
    pairs, which is shrunk the same way toward the median of all their pairs.

    Medians, of neurons: the few clusters that hold two neurons in turn hardly move them.
    Per pair of sessions, not a line in the gap: a neuron may grow less alike to itself
    over days, a jump of the probe makes every neuron less alike across it, and sessions
    whose motion differs by whole contact rows see every neuron alike, others less so
    (SpikeInterface's drift40: pairs three sessions apart above pairs one apart)."""
    rows = np.concatenate([r for _, r in members]) if members else np.zeros(0, np.int64)
    if rows.size == 0:
        return rows, np.zeros(0)
    session = np.asarray(session, np.int64)
    n_sessions = int(session.max()) + 1
    s0, s1 = session[pairs[rows, 0]], session[pairs[rows, 1]]
    value = similarity[rows]
    # every median shrunk toward the one above it: all pairs, then the gap, then the sessions
    overall = float(np.median(value))
    gap = np.abs(s0 - s1)
    gaps, median, count = grouped_median(value, gap)
    at_gap = np.full(int(gap.max()) + 1, overall)
    at_gap[gaps] = _shrunk(median, count, overall)
    code = pair_code(s0, s1, n_sessions)
    codes, median, count = grouped_median(value, code)
    k = np.searchsorted(codes, code)  # every pair's own sessions are among the codes
    return rows, _shrunk(median[k], count[k], at_gap[gap])


def _shrunk(median: np.ndarray, count: np.ndarray, prior) -> np.ndarray:
    """A group's median of count values moved toward ``prior`` by n / (n + BASELINE_PRIOR_PAIRS)."""
    w = count / (count + BASELINE_PRIOR_PAIRS)
    return w * median + (1 - w) * prior
