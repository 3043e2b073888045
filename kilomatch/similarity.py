"""Candidate pairs and their similarities (ALGORITHM.md s.3).

Only candidate pairs exist: units of different sessions whose motion-corrected depths differ
by at most ``max_distance``. Every similarity is a Fisher z (atanh of a Pearson r, r clipped to
+-R_MAX); a constant feature vector (e.g. the zero ACG of a unit with one spike) has z = 0.
"""

from __future__ import annotations

import numpy as np

R_MAX = 1 - 1e-6  # Pearson r is clipped here before atanh (z <= 7.25)


def candidate_pairs(depth: np.ndarray, session: np.ndarray, max_distance: float,
                    group: np.ndarray | None = None) -> np.ndarray:
    """Pairs (i < j) of units in different sessions with |depth_i - depth_j| <= max_distance.

    depth: (N,) corrected depth in um; session: (N,) session ids; group: optional (N,) ids
    (e.g. shank) that must also agree. Returns (P, 2) int64, sorted by (i, j). Cost is
    O(N log N + P): no N x N array.
    """
    depth = np.asarray(depth, dtype=np.float64)
    order = np.argsort(depth, kind="stable")
    d = depth[order]
    # Search a hair wide, then keep exactly |d_i - d_j| <= max_distance (the float sum d + max
    # can round either way; the test below is the definition).
    hi = np.searchsorted(d, d + max_distance * (1 + 1e-9) + 1e-9, side="right")
    counts = hi - np.arange(d.size) - 1
    a = np.repeat(np.arange(d.size), counts)
    # Offsets 1..count within each run give the partner's sorted position.
    starts = np.cumsum(counts) - counts
    b = a + 1 + (np.arange(a.size) - np.repeat(starts, counts))
    i, j = order[a], order[b]
    keep = (session[i] != session[j]) & (np.abs(depth[i] - depth[j]) <= max_distance)
    if group is not None:
        keep &= group[i] == group[j]
    i, j = i[keep], j[keep]
    pairs = np.column_stack([np.minimum(i, j), np.maximum(i, j)]).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def fisher_z(r: np.ndarray) -> np.ndarray:
    """atanh of r clipped to +-R_MAX; NaN (undefined r) becomes 0."""
    r = np.nan_to_num(np.asarray(r, dtype=np.float64), nan=0.0)
    return np.arctanh(np.clip(r, -R_MAX, R_MAX))


def _standardize(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Rows to zero mean and unit norm, so a dot product is the Pearson r. Constant rows -> 0."""
    x = np.asarray(x, dtype=dtype)
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def feature_similarity(feature: np.ndarray, pairs: np.ndarray, block: int = 8192) -> np.ndarray:
    """Fisher z of the Pearson r between the two units' feature vectors: (N, L), (P, 2) -> (P,).

    Pairs are taken in blocks so the gathered rows stay small (block x L)."""
    f = _standardize(feature)
    out = np.empty(pairs.shape[0])
    for start in range(0, pairs.shape[0], block):
        p = pairs[start:start + block]
        out[start:start + block] = np.einsum("pl,pl->p", f[p[:, 0]], f[p[:, 1]])
    return fisher_z(out)


def waveform_similarity(waveforms: np.ndarray, channels: np.ndarray, pairs: np.ndarray,
                        templates: int = 1) -> np.ndarray:
    """Waveform similarity of each pair: (P,) Fisher z.

    waveforms: (N, C, T) corrected waveforms, or (K, N, C, T) for K reference probes;
    channels: (N, n) nearest channels of each unit, or (K, N, n).
    For pair (i, j): Z_ij correlates both units over i's channels (all samples flattened),
    Z_ji over j's channels; S = max(Z_ij, Z_ji), and the max over reference probes.
    """
    if waveforms.ndim == 3:
        waveforms, channels = waveforms[None], channels[None]
    best = np.full(pairs.shape[0], -np.inf)
    for wf, ch in zip(waveforms, channels):
        r = np.maximum(_directed_corr(wf, ch, pairs[:, 0], pairs[:, 1]),
                       _directed_corr(wf, ch, pairs[:, 1], pairs[:, 0]))
        best = np.maximum(best, r)
    return fisher_z(best)


def _standardized_on(wf: np.ndarray, units: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Waveforms of ``units`` on ``channels``, flattened, zero mean and unit norm: (n, c*T)."""
    return _standardize(np.asarray(wf[np.ix_(units, channels)]).reshape(units.size, -1),
                        dtype=np.float32)


def _directed_corr(wf: np.ndarray, ch: np.ndarray, own: np.ndarray, other: np.ndarray):
    """Pearson r of units own[p] and other[p] on own's channels.

    Units with the same channel set (on a regular probe: the same peak channel) are handled
    together: their partners are read once and all correlations come from one matrix product,
    instead of one gather per unit.
    """
    r = np.zeros(own.size)
    if own.size == 0:
        return r
    sets, set_of_unit = np.unique(ch, axis=0, return_inverse=True)
    set_of_pair = set_of_unit.ravel()[own]
    order = np.argsort(set_of_pair, kind="stable")
    bounds = np.flatnonzero(np.diff(set_of_pair[order])) + 1
    for idx in np.split(order, bounds):
        channels = sets[set_of_pair[idx[0]]]
        owners, own_pos = np.unique(own[idx], return_inverse=True)
        partners, other_pos = np.unique(other[idx], return_inverse=True)
        x = _standardized_on(wf, owners, channels)
        y = _standardized_on(wf, partners, channels)
        r[idx] = (x @ y.T)[own_pos.ravel(), other_pos.ravel()]
    return r


LOCATION_SCALE_UM = 10.0


def location_similarity(positions: np.ndarray, pairs: np.ndarray,
                        scale_um: float = LOCATION_SCALE_UM) -> np.ndarray:
    """Closeness of the two units' motion-corrected positions as a Fisher z: (N, 3) um -> (P,).

    r = exp(-d / scale) with d the 3-D distance, so d = 0 gives the clip value (z 7.25),
    d = scale gives r = 0.37 (z 0.39) and units 50 um apart r < 0.01 (z ~ 0).
    """
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    return fisher_z(np.exp(-d / scale_um))


def weighted_similarity(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """S = sum_f w_f S_f: (P, F), (F,) -> (P,)."""
    return np.asarray(features, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)
