"""Waveform correction by Kriging (ALGORITHM.md s.6).

Sign convention (kilomatch-wide): ``motion[s]`` is the apparent shift of unit depths in
session s, so a unit seen at probe depth y in session s sits at corrected depth y - p_s(y).
Its corrected waveform at a reference channel v is the session's waveform interpolated at
v + (0, shift) with shift = p_s(y) - p_ref: the waveform moves by -shift along the probe.
"""

from __future__ import annotations

import numpy as np

SIGMA_X = 20.0  # um
SIGMA_Y = 30.0  # um
RIDGE = 0.01


def kriging_kernel(a: np.ndarray, b: np.ndarray, sigma_x: float = SIGMA_X,
                   sigma_y: float = SIGMA_Y) -> np.ndarray:
    """K(u, v) = exp(-|dx|/sigma_x - |dy|/sigma_y) between points a (n, 2) and b (m, 2) um."""
    dx = np.abs(a[:, None, 0] - b[None, :, 0])
    dy = np.abs(a[:, None, 1] - b[None, :, 1])
    return np.exp(-dx / sigma_x - dy / sigma_y)


def kriging_inverse(channel_locations: np.ndarray) -> np.ndarray:
    """(K(v_C, v_C) + 0.01 I)^-1, the same for every unit: (C, 2) -> (C, C)."""
    k = kriging_kernel(channel_locations, channel_locations)
    return np.linalg.inv(k + RIDGE * np.eye(len(k)))


def shift_matrix(channel_locations: np.ndarray, shift_um: float,
                 kinv: np.ndarray | None = None) -> np.ndarray:
    """(C, C) matrix M with corrected = M @ waveform (C, T) for a depth shift in um."""
    if kinv is None:
        kinv = kriging_inverse(channel_locations)
    target = channel_locations + np.array([0.0, shift_um])
    return kriging_kernel(target, channel_locations) @ kinv


def correct_waveforms(waveforms: np.ndarray, channel_locations: np.ndarray,
                      shift_um: np.ndarray, kinv: np.ndarray | None = None,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Move every unit's waveform to the reference probe: (N, C, T) -> (N, C, T) float32.

    shift_um: (N,) shift of each unit (p_s(y) - p_ref, um). Units sharing a shift (every unit of
    a session under rigid motion) share one C x C matrix and one matrix product.
    """
    n, c, t = waveforms.shape
    if kinv is None:
        kinv = kriging_inverse(channel_locations)
    if out is None:
        out = np.empty((n, c, t), dtype=np.float32)
    shift_um = np.asarray(shift_um, dtype=np.float64)
    kinv32 = kinv.astype(np.float32)
    # Units sharing a shift share one kernel evaluation; with linear motion every unit has its
    # own shift, so the kernel is applied to Kinv @ W (two C x C products per unit, no C^3).
    values, group = np.unique(shift_um, return_inverse=True)
    order = np.argsort(group, kind="stable")
    for start in range(0, n, 1024):
        block = order[start:start + 1024]
        weights = np.einsum("ij,njt->nit", kinv32, np.asarray(waveforms[block], np.float32),
                            optimize=True)
        for g in np.unique(group[block]):
            members = (group[block] == g)
            target = channel_locations + np.array([0.0, values[g]])
            k = kriging_kernel(target, channel_locations).astype(np.float32)
            out[block[members]] = np.einsum("ij,njt->nit", k, weights[members], optimize=True)
    return out
