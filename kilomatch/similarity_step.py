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

# The similarity the step compares: Waveform + AUTOCORR_WEIGHT x AutoCorr (Fisher z). On the
# accuracy suite the AutoCorr z of one neuron's pairs spreads 2-3 times as widely as the
# Waveform z (interquartile range / 1.349 over the pairs the clusters hold: 0.8-1.4
# against 0.4-0.7), so each counts about alike per unit of its own spread; with flat ACGs the
# AutoCorr z barely varies and the Waveform decides (benchmarks/RESULTS.md, "Session 37").
AUTOCORR_WEIGHT = 0.3


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
              value: np.ndarray, slope: float = 0.0) -> tuple[float, int]:
    """The cut in time of one cluster where the pairs across are least alike compared with
    the pairs within either side: (step, cut session), step = the mean over the pairs across
    of (value - expected), expected = the mean value of the pairs within, moved by ``slope``
    (per session, <= 0: a neuron's own decline over days, gap_slope) from their mean
    session gap to the pair's; (nan, -1) when no cut has pairs both across and within.

    sessions: (S,) sorted distinct sessions of the cluster's units (a cut after each but the
    last); first, second: (M,) the sessions of each pair's units, first < second; value: (M,)
    the pairs' similarity. The pairs across a cut span larger gaps than the pairs within:
    read at their own gaps, a neuron whose waveform changes slowly shows no step."""
    cuts = sessions[:-1]
    across = (first[:, None] <= cuts[None, :]) & (second[:, None] > cuts[None, :])  # (M, T)
    gap = (second - first).astype(np.float64)
    n_a = across.sum(axis=0)
    n_w = first.size - n_a
    v_a, g_a = value @ across, gap @ across  # sums over the pairs across each cut
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_v, mean_g = (value.sum() - v_a) / n_w, (gap.sum() - g_a) / n_w  # within
        step = (v_a - slope * g_a) / n_a - (mean_v - slope * mean_g)
    step = np.where((n_a > 0) & (n_w > 0), step, np.nan)
    if np.isnan(step).all():
        return float("nan"), -1
    k = int(np.nanargmin(step))
    return float(step[k]), int(cuts[k])


def split_at_similarity_step(labels: np.ndarray, pairs: np.ndarray, similarity: np.ndarray,
                             session: np.ndarray, step: float):
    """Split each cluster at its cut in time (cut_steps) where the candidate pairs across
    are less alike than the pairs within either side by more than ``step`` (Fisher z), the
    pairs read at their session gaps along gap_slope of every cluster (at most 0): the
    units of the sessions up to the cut keep the label, those after get a new one; each side
    is then tried again (three neurons in turn can take two cuts). A side of one unit leaves
    every cluster.

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
    # a neuron may grow less alike to itself over days, never more
    slope = min(gap_slope(members, pairs, similarity, session), 0.0)
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
                                   similarity[rows], slope)
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


def gap_slope(members: list, pairs: np.ndarray, similarity: np.ndarray,
              session: np.ndarray) -> float:
    """How a neuron's similarity to itself changes per session of gap: the median over the
    clusters ``members`` [(units, rows of ``pairs`` (P, 2) within it, across sessions)] of
    the least-squares slope of their pairs' similarity (P,) in the session gap (clusters
    whose pairs span two gaps or more; 0 when none does). The median, so that the few
    clusters that hold two neurons in turn, whose pairs far apart are the least alike, do
    not set it."""
    slopes = []
    for _, rows in members:
        gap = np.abs(session[pairs[rows, 0]] - session[pairs[rows, 1]]).astype(np.float64)
        gap -= gap.mean() if gap.size else 0.0
        spread = gap @ gap
        if spread > 1e-9:
            value = similarity[rows]
            slopes.append(gap @ (value - value.mean()) / spread)
    return float(np.median(slopes)) if slopes else 0.0
