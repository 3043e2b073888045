"""What each figure of a run shows, as small arrays and strings (numpy only, no matplotlib).

:func:`figure_inputs` reduces a :class:`kilomatch.results.Result` to what
:mod:`kilomatch.figures` draws: per-unit depths, histogram counts, the motion curves, a
subsample of pairs for the scatter. The inputs of a 10^5-unit run are a few MB whatever the
number of candidate pairs, so they can be handed to another process to draw
(:mod:`kilomatch.figure_worker`) while this one writes the results.
"""

from __future__ import annotations

import textwrap

import numpy as np

SCATTER_POINTS = 20000  # FeatureScatter's pairs at most: a readable figure


def same_final(result) -> np.ndarray:
    """(P,) bool: the final round's candidate pair ends in one final cluster."""
    pairs, idx = result.final.pairs, result.idx_cluster
    return (idx[pairs[:, 0]] == idx[pairs[:, 1]]) & (idx[pairs[:, 0]] > 0)


def unit_depth(result) -> dict:
    """Each unit's session (N,), depth before and after correction (N,) um, cluster (N,)."""
    return {"session": result.data.session_index, "depth": result.units.locations[:, 1],
            "corrected_depth": result.final.corrected_depth, "idx_cluster": result.idx_cluster}


def motion(result) -> dict:
    """The motion curves per session: each round's, the initial estimate's, the final one
    with its 95% band, and, for a linear motion, the final one near either end of the
    units; the title and the warnings."""
    m = result.motion
    choice = m.choice
    sessions = np.arange(1, m.offset.size + 1)
    set_aside = {} if choice is None else choice.set_aside
    rounds = [(mk.displacement(), k in set_aside) for k, (_, mk) in enumerate(result.rounds, 1)]
    initial = None
    if choice is not None and choice.initial is not None:
        init = choice.initial.displacement()
        # A linear motion's displacement at its reference depth need not have mean 0 (its
        # offsets do): drawn in the final motion's gauge, the two curves differ where the
        # estimates do, not by a constant that moves no unit against another.
        gauge = float(np.mean(m.displacement()) - np.mean(init)) if m.linear else 0.0
        initial = init + gauge
    ends = []
    if m.linear:  # the drift depends on depth: the final motion near either end of the units
        depth = result.units.locations[:, 1]
        # a bend is followed in the middle too
        for q in ((5, 50, 95) if m.bend is not None else (5, 95)):
            at = float(np.percentile(depth, q))
            ends.append((q, at, m.at(sessions - 1, np.full(sessions.size, at))))
    title = "Probe motion per session" + (", bent along the probe" if m.bend is not None else
                                          ", linear in depth" if m.linear else "")
    if choice is not None:
        title += "\n" + "\n".join(textwrap.wrap(f"motion used: {choice.source} ({choice.why})",
                                               95))
    warnings = []
    if choice is not None and choice.warnings:
        warnings = [line for w in choice.warnings[:4] for line in textwrap.wrap(w, 120)]
        if len(choice.warnings) > 4:
            warnings.append(f"... and {len(choice.warnings) - 4} more (see kilomatch.log)")
    return {"sessions": sessions, "rounds": rounds, "initial": initial,
            "ci_low": m.ci_low, "ci_high": m.ci_high, "final": m.displacement(),
            "linear": bool(m.linear), "ref_depth": float(m.ref_depth), "ends": ends,
            "title": title, "warnings": warnings}


def similarity_features(result) -> dict:
    """Per feature of the final clustering: its weight and the density histograms of its
    similarity (Fisher z) over unmatched and matched candidate pairs (None: no such pair)."""
    final = result.final
    same = same_final(result)
    features = []
    for k, name in enumerate(final.feature_names):
        z = final.pair_similarities[:, k]
        bins = np.linspace(z.min(), z.max(), 60) if z.size else 10
        features.append({
            "name": name, "weight": float(final.clustering.weights[k]),
            # a density of no pairs is undefined
            "unmatched": np.histogram(z[~same], bins, density=True) if (~same).any() else None,
            "matched": np.histogram(z[same], bins, density=True) if same.any() else None})
    return {"features": features, "any_pairs": bool(len(same))}


def weighted_similarity(result) -> dict:
    """Histograms of the weighted similarity of unmatched and matched candidate pairs and
    the LDA threshold."""
    cl = result.final.clustering
    same = same_final(result)
    similarity = cl.similarity
    bins = np.linspace(similarity.min(), similarity.max(), 80) if similarity.size else 10
    return {"unmatched": np.histogram(similarity[~same], bins),
            "matched": np.histogram(similarity[same], bins),
            "threshold": float(cl.threshold), "any_pairs": bool(similarity.size)}


def matched_units_by_session(idx_cluster: np.ndarray, session0: np.ndarray,
                             n_sessions: int) -> np.ndarray:
    """(S, S) float64: entry (a, b), a != b, counts the units of session a whose cluster also
    has a unit in session b (both halves of a neuron the sorter split count); diagonal 0.

    idx_cluster (N,) > 0 tracked, session0 (N,) 0-based. One sparse product of the clusters'
    unit counts per session (K, S) with their presence: a loop over clusters cost O(K N),
    seconds at 10^5 units."""
    from scipy import sparse
    tracked = idx_cluster > 0
    _, cluster = np.unique(idx_cluster[tracked], return_inverse=True)
    counts = sparse.csr_matrix((np.ones(cluster.size, dtype=np.int64),
                                (cluster.reshape(-1), session0[tracked])),
                               shape=(cluster.max(initial=-1) + 1, n_sessions))
    present = (counts > 0).astype(np.int64)
    matched = np.asarray((counts.T @ present).todense(), dtype=np.float64)
    np.fill_diagonal(matched, 0)
    return matched


def match_probability(result) -> dict:
    """(S, S) share of the units of session a that are tracked into session b."""
    n_s = result.data.n_sessions
    share = matched_units_by_session(result.idx_cluster, result.units.session0, n_s)
    counts = np.bincount(result.units.session0, minlength=n_s).astype(float)
    return {"share": share / np.maximum(counts[:, None], 1)}


def feature_scatter(result, max_points: int = SCATTER_POINTS) -> dict:
    """The final clustering's per-feature similarities (n, F) of at most ``max_points``
    candidate pairs (the same subset every run) and whether each ends in one cluster."""
    final = result.final
    z = final.pair_similarities
    same = same_final(result)
    keep = np.arange(len(z))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(z), max_points, replace=False))
    return {"names": list(final.feature_names), "similarities": z[keep], "same": same[keep]}


def probability_calibration(result, gt_neuron: np.ndarray) -> dict:
    """Per probability decile (metrics.calibration_bins), the fraction of candidate pairs
    that are one neuron by the ground truth (N,) neuron ids; under "pair", the same of the
    pair probability where the reported one is calibrated to the final clusters."""
    from .metrics import calibration_bins
    pairs = result.final.pairs
    links = result.curated.links
    truth = gt_neuron[pairs[:, 0]] == gt_neuron[pairs[:, 1]]
    bins = calibration_bins(links.candidate_probability, truth)
    if links.pair_probability is not None:
        bins["pair"] = calibration_bins(links.pair_probability, truth)
    return bins


def figure_inputs(result, gt_neuron: np.ndarray | None = None) -> dict:
    """{figure name: its inputs} for every figure of a run; with ground truth (N,) neuron
    ids and a match probability, the calibration figure's too."""
    inputs = {"UnitDepth": unit_depth(result), "Motion": motion(result),
              "SimilarityFeatures": similarity_features(result),
              "WeightedSimilarity": weighted_similarity(result),
              "MatchProbability": match_probability(result),
              "FeatureScatter": feature_scatter(result)}
    if gt_neuron is not None and result.curated.links is not None:
        inputs["MatchProbability_calibration"] = probability_calibration(result, gt_neuron)
    return inputs
