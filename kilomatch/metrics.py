"""Scoring a kilomatch run against ground truth (e.g. from kilomatch.simulate).

Pairs are unordered pairs of units from different sessions. A predicted pair is two units with
the same cluster id (not -1); a true pair is two units of the same ground-truth neuron. All
counts come from group sizes (contingency tables), never from N x N arrays, so N = 10^5 is cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kilomatch.checks import as_integers, as_vector, collect
from kilomatch.errors import KilomatchError
from kilomatch.formats.folder import SESSION_INDEX

__all__ = ["pair_scores", "motion_rms_error", "score_run", "AMPLITUDE_BANDS_UV", "band_labels",
           "unit_amplitudes", "recall_by_amplitude", "calibration_bins", "calibration_misses",
           "calibration_miss_chance",
           "CALIBRATION_MIN_PAIRS", "CALIBRATION_TOLERANCE", "wrong_pairs_by_kind",
           "WRONG_PAIR_KINDS"]

# A calibration bin is judged when it holds this many pairs or more, and missed when its true
# fraction lies more than CALIBRATION_TOLERANCE outside it (issue 12, item 3).
CALIBRATION_MIN_PAIRS = 50
CALIBRATION_TOLERANCE = 0.05

# Edges (uV) of the amplitude bands recall is reported in: <60, 60-120, 120-250, >=250.
AMPLITUDE_BANDS_UV = (60.0, 120.0, 250.0)


def _n_pairs(counts: np.ndarray) -> int:
    """Sum of C(n, 2) over group sizes (exact integer)."""
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def _group_pairs(*keys: np.ndarray) -> int:
    """Number of unordered pairs of rows that agree on every key column. keys: (n,) int64."""
    if keys[0].size == 0:
        return 0
    codes = np.zeros(keys[0].size, dtype=np.int64)
    for k in keys:
        # Dense re-coding keeps the combined code small: codes * n_levels + level < N^2.
        _, inv = np.unique(k, return_inverse=True)
        inv = inv.reshape(-1)
        codes = codes * (int(inv.max()) + 1) + inv
        _, codes = np.unique(codes, return_inverse=True)
        codes = codes.reshape(-1)
    return _n_pairs(np.bincount(codes))


def _labels(idx_cluster, gt_neuron, session_index, **other):
    """The three label vectors (N,) int64, checked, and of one length with any ``other``
    named (N,) array."""
    named = {"idx_cluster": as_integers(idx_cluster, "idx_cluster"),
             "gt_neuron": as_integers(gt_neuron, "gt_neuron"),
             "session_index": as_integers(session_index, "session_index")}
    sizes = [v.size for v in (*named.values(), *other.values())]
    if len(set(sizes)) > 1:
        names = list(named) + list(other)
        raise KilomatchError(f"{', '.join(names[:-1])} and {names[-1]} must have the same "
                             f"length, got {', '.join(map(str, sizes))}")
    return tuple(named.values())


def pair_scores(idx_cluster, gt_neuron, session_index) -> dict:
    """Pairwise precision / recall / F1 of a clustering against ground truth.

    Parameters
    ----------
    idx_cluster : (N,) or (N, 1) int, cluster id per unit, -1 = unmatched.
    gt_neuron : (N,) int, true neuron id per unit.
    session_index : (N,) int, session of each unit (any integer labels).

    Returns
    -------
    dict with precision (correct / predicted, 1.0 if nothing predicted), recall (correct / true,
    1.0 if there are no true pairs), f1 (harmonic mean, 0 when both are 0), n_true_pairs,
    n_pred_pairs, n_correct_pairs (cross-session pairs only), n_conflicts (same-session pairs
    sharing a cluster), n_units.
    """
    cl, gt, ss = _labels(idx_cluster, gt_neuron, session_index)
    m = cl != -1
    # Cross-session pairs = all pairs in the group - pairs that also share the session.
    same_cluster_session = _group_pairs(cl[m], ss[m])
    n_pred = _group_pairs(cl[m]) - same_cluster_session
    n_true = _group_pairs(gt) - _group_pairs(gt, ss)
    n_correct = _group_pairs(cl[m], gt[m]) - _group_pairs(cl[m], gt[m], ss[m])

    precision = n_correct / n_pred if n_pred > 0 else 1.0
    recall = n_correct / n_true if n_true > 0 else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "n_true_pairs": int(n_true), "n_pred_pairs": int(n_pred),
        "n_correct_pairs": int(n_correct), "n_conflicts": int(same_cluster_session),
        "n_units": int(cl.size),
    }


# How the two neurons of a wrong pair lie in time within their cluster (wrong_pairs_by_kind).
WRONG_PAIR_KINDS = ("succession", "interleaved", "same_session")


def wrong_pairs_by_kind(idx_cluster, gt_neuron, session_index) -> dict:
    """The wrong pairs of a clustering (units of two neurons in one cluster, two sessions) by
    how the two neurons' units lie in time within that cluster.

    ``succession``: all of one neuron's units in the cluster come before all of the other's
    (a neuron stops being recorded and another, alike and near, starts); ``interleaved``: their
    sessions interleave, none shared; ``same_session``: both neurons have a unit in one session
    of the cluster (a same-session conflict kept, e.g. as a sorter split). Sessions are ordered
    by ``session_index``. Arguments as :func:`pair_scores`. Returns {kind: number of wrong
    pairs} (ints); the three add up to n_pred_pairs - n_correct_pairs of pair_scores.
    """
    cl, gt, ss = _labels(idx_cluster, gt_neuron, session_index)
    counts = dict.fromkeys(WRONG_PAIR_KINDS, 0)
    units = np.flatnonzero(cl != -1)
    units = units[np.lexsort((gt[units], cl[units]))]
    for members in np.split(units, np.flatnonzero(np.diff(cl[units])) + 1):
        neurons = np.unique(gt[members])
        # clusters of one neuron hold no wrong pair; the rest are few and small
        for i, a in enumerate(neurons[:-1]):
            sa = ss[members[gt[members] == a]]
            for b in neurons[i + 1:]:
                sb = ss[members[gt[members] == b]]
                n = sa.size * sb.size - int(np.count_nonzero(sa[:, None] == sb[None, :]))
                if np.intersect1d(sa, sb).size:
                    kind = "same_session"
                elif sa.max() < sb.min() or sb.max() < sa.min():
                    kind = "succession"
                else:
                    kind = "interleaved"
                counts[kind] += n
    return counts


def band_labels(edges=AMPLITUDE_BANDS_UV) -> list:
    """Names of the bands cut at ``edges`` (uV): ['<60', '60-120', '120-250', '>=250']."""
    e = [f"{v:g}" for v in edges]
    return [f"<{e[0]}"] + [f"{a}-{b}" for a, b in zip(e[:-1], e[1:])] + [f">={e[-1]}"]


def unit_amplitudes(waveforms) -> np.ndarray:
    """Amplitude of each unit: largest peak-to-trough over channels, (N, C, T) uV -> (N,) uV.
    Reads a memory-mapped input in blocks."""
    from kilomatch.features import peak_to_trough

    return peak_to_trough(waveforms).max(axis=1)


def recall_by_amplitude(idx_cluster, gt_neuron, session_index, amplitude_uv,
                        edges=AMPLITUDE_BANDS_UV) -> list:
    """Recall of the true cross-session pairs, by the amplitude of the pair's smaller unit.

    Parameters
    ----------
    idx_cluster, gt_neuron, session_index : as in pair_scores.
    amplitude_uv : (N,) amplitude of each unit, uV (e.g. unit_amplitudes).
    edges : increasing band edges, uV; a pair falls in band b when
        edges[b-1] <= min(amplitude) < edges[b].

    Returns
    -------
    One dict per band (len(edges) + 1): band (label), n_true_pairs, n_found (true pairs the
    clustering puts in one cluster, not -1), recall (None when the band holds no true pair).
    The true pairs are listed per neuron, so memory grows with the pairs, not with N^2.
    """
    amp = np.asarray(amplitude_uv, dtype=np.float64).reshape(-1)
    cl, gt, ss = _labels(idx_cluster, gt_neuron, session_index, amplitude_uv=amp)
    order = np.argsort(gt, kind="stable")
    starts = np.flatnonzero(np.r_[True, gt[order][1:] != gt[order][:-1]])
    sizes = np.diff(np.r_[starts, gt.size])
    first, second = [], []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        i, j = np.triu_indices(int(size), 1)
        first.append(order[start + i])
        second.append(order[start + j])
    a = np.concatenate(first) if first else np.zeros(0, np.int64)
    b = np.concatenate(second) if second else np.zeros(0, np.int64)
    cross = ss[a] != ss[b]
    a, b = a[cross], b[cross]
    found = (cl[a] == cl[b]) & (cl[a] != -1)
    band = np.searchsorted(np.asarray(edges, np.float64), np.minimum(amp[a], amp[b]),
                           side="right")
    out = []
    for k, label in enumerate(band_labels(edges)):
        n_true = int(np.count_nonzero(band == k))
        n_found = int(np.count_nonzero(found[band == k]))
        out.append({"band": label, "n_true_pairs": n_true, "n_found": n_found,
                    "recall": n_found / n_true if n_true else None})
    return out


def motion_rms_error(motion_est, motion_true) -> float:
    """RMS difference (um) of two (S,) motion traces after removing each one's mean.

    The mean is arbitrary (only relative motion between sessions is observable). (S, 1) inputs
    are accepted.
    """
    est = as_vector(np.asarray(motion_est, dtype=np.float64), "motion_est", "S")
    tru = as_vector(np.asarray(motion_true, dtype=np.float64), "motion_true", "S")
    if est.size != tru.size or est.size == 0:
        raise KilomatchError("motion_est and motion_true must both be (S,) with the same S >= 1, "
                             f"got {np.shape(motion_est)} and {np.shape(motion_true)}")
    d = (est - est.mean()) - (tru - tru.mean())
    return float(np.sqrt(np.mean(d * d)))


def _load(folder: Path, name: str) -> np.ndarray:
    f = folder / name
    if not f.exists():
        raise KilomatchError(f"{f} not found")
    return np.load(f, allow_pickle=False)


def score_run(output, data_folder) -> dict:
    """Score a run against the ground truth written by kilomatch.simulate.

    output : an output folder holding IdxCluster.npy (and optionally motion.npy), or the
        IdxCluster array itself ((N,) or (N, 1)).
    data_folder : folder with gt_neuron.npy, session_index.npy and (for motion) gt_motion.npy.

    Returns pair_scores(...) plus, when motion.npy is present and is (S,) or (S, 1),
    motion_rms_um (mean-removed RMS error against gt_motion, um).
    """
    data = Path(data_folder)
    gt = _load(data, "gt_neuron.npy")
    sess = _load(data, SESSION_INDEX)
    motion = None
    if isinstance(output, (str, Path)):
        out = Path(output)
        idx = _load(out, "IdxCluster.npy")
        if (out / "motion.npy").exists():
            motion = np.load(out / "motion.npy", allow_pickle=False)
    else:
        idx = np.asarray(output)
    result = pair_scores(idx, gt, sess)
    if motion is not None and (data / "gt_motion.npy").exists():
        gt_motion = np.load(data / "gt_motion.npy", allow_pickle=False)
        flat = collect([], as_vector, motion, "motion.npy")  # None for per-shank motion
        if flat is not None and flat.size == gt_motion.size:
            result["motion_rms_um"] = motion_rms_error(flat, gt_motion)
    return result


def _probability_bins(p: np.ndarray, n_bins: int) -> tuple:
    """Edges (n_bins + 1,) of [k/n, (k+1)/n) and each probability's bin (P,) (the last bin
    includes 1): the one binning of calibration_bins and calibration_miss_chance."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return edges, np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)


def calibration_bins(probability, truth, n_bins: int = 10) -> dict:
    """Reliability of a match probability: pairs binned by probability in [k/n, (k+1)/n)
    (the last bin includes 1). probability (P,), truth (P,) bool (the pair is one neuron).
    Returns arrays (n_bins,): low, high, n_pairs, mean_probability and true_fraction (NaN in
    empty bins)."""
    p = np.asarray(probability, np.float64)
    truth = np.asarray(truth, bool)
    edges, k = _probability_bins(p, n_bins)
    n = np.bincount(k, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(k, p, minlength=n_bins) / n
        frac = np.bincount(k, truth.astype(np.float64), minlength=n_bins) / n
    return {"low": edges[:-1], "high": edges[1:], "n_pairs": n, "mean_probability": mean_p,
            "true_fraction": frac}


def calibration_misses(bins: dict, min_pairs: int = CALIBRATION_MIN_PAIRS,
                       tolerance: float = CALIBRATION_TOLERANCE) -> tuple:
    """The bins of :func:`calibration_bins` that are judged (``min_pairs`` pairs or more) and
    the judged bins whose true fraction lies more than ``tolerance`` outside [low, high].

    Returns (n_judged, misses): misses is a list of dicts low, high, n_pairs,
    true_fraction (floats, n_pairs an int), in bin order."""
    judged = np.asarray(bins["n_pairs"]) >= min_pairs
    frac = np.asarray(bins["true_fraction"], np.float64)
    low, high = np.asarray(bins["low"]), np.asarray(bins["high"])
    off = judged & ((frac < low - tolerance) | (frac > high + tolerance))
    misses = [{"low": float(low[k]), "high": float(high[k]), "n_pairs": int(bins["n_pairs"][k]),
               "true_fraction": float(frac[k])} for k in np.flatnonzero(off)]
    return int(judged.sum()), misses


# calibration_miss_chance: a bin of at most this many pairs gets the exact distribution of its
# count of true pairs (a sum of Bernoulli trials, one per pair); a larger one the normal
# approximation, with a continuity correction (it then errs by less than 0.01 a bin).
EXACT_MAX_PAIRS = 5000


def calibration_miss_chance(probability, n_bins: int = 10,
                            min_pairs: int = CALIBRATION_MIN_PAIRS,
                            tolerance: float = CALIBRATION_TOLERANCE) -> np.ndarray:
    """The chance (n_bins,) that each bin of :func:`calibration_bins` judged by
    :func:`calibration_misses` would be missed if every pair's probability were exact: each
    pair a match with its own probability, independently (NaN for bins not judged). Their
    sum is the number of misses that binomial noise alone gives, to read the misses of a
    study against (50 pairs at 0.75 lie outside [0.65, 0.85] once in ten draws).

    probability (P,) in [0, 1]."""
    p = np.asarray(probability, np.float64)
    edges, k = _probability_bins(p, n_bins)
    out = np.full(n_bins, np.nan)
    for b in range(n_bins):
        q = p[k == b]
        n = q.size
        if n < min_pairs:
            continue
        # true counts c with c / n inside [low - tolerance, high + tolerance] are no miss
        first = int(np.ceil((edges[b] - tolerance) * n - 1e-9))
        last = int(np.floor((edges[b + 1] + tolerance) * n + 1e-9))
        first, last = max(first, 0), min(last, n)
        if n <= EXACT_MAX_PAIRS:
            count = np.zeros(n + 1)
            count[0] = 1.0
            for i, x in enumerate(q):  # one trial at a time: the count's distribution
                count[1:i + 2] = count[1:i + 2] * (1 - x) + count[:i + 1] * x
                count[0] *= 1 - x
            inside = float(count[first:last + 1].sum()) if first <= last else 0.0
        else:
            from scipy.stats import norm
            mean, sd = q.sum(), np.sqrt(np.sum(q * (1 - q)))
            if sd == 0:
                inside = float(first <= mean <= last)
            else:  # a count cannot leave [0, n]: no tail beyond either end
                below = norm.cdf((first - 0.5 - mean) / sd) if first > 0 else 0.0
                above = norm.sf((last + 0.5 - mean) / sd) if last < n else 0.0
                inside = 1.0 - below - above
        out[b] = min(max(1.0 - inside, 0.0), 1.0)
    return out
