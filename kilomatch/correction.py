"""Waveform correction by Kriging (docs/method.md, section 7).

Sign convention (kilomatch-wide): ``motion[s]`` is the apparent shift of unit depths in
session s, so a unit seen at probe depth y in session s sits at corrected depth y - p_s(y).
Its corrected waveform at a reference channel v is the session's waveform interpolated at
v + (0, shift) with shift = p_s(y) - p_ref: the waveform moves by -shift along the probe.
"""

from __future__ import annotations

import numpy as np

from . import parallel
from .channel_windows import LocalWaveforms

SIGMA_X = 20.0  # um
SIGMA_Y = 30.0  # um
RIDGE = 0.01


def kriging_kernel(a: np.ndarray, b: np.ndarray, sigma_x: float = SIGMA_X,
                   sigma_y: float = SIGMA_Y) -> np.ndarray:
    """K(u, v) = exp(-|dx|/sigma_x - |dy|/sigma_y) between points a (n, 2) and b (m, 2) um."""
    dx = np.abs(a[:, None, 0] - b[None, :, 0])
    dy = np.abs(a[:, None, 1] - b[None, :, 1])
    return np.exp(-dx / sigma_x - dy / sigma_y)


# Kernel values (float32) evaluated at once by correct_local: 16 M is 64 MB.
KERNEL_FLOATS = 16_000_000


def shifted_kernels(locations: np.ndarray, shifts_um: np.ndarray) -> np.ndarray:
    """K(v + (0, shift), v) of channels v (W, 2) um for each shift (G,) um: (G, W, W) float32,
    the kernels of kriging_kernel for every shift at once."""
    dx = np.abs(locations[:, None, 0] - locations[None, :, 0])
    dy = np.abs(locations[None, :, None, 1] + shifts_um[:, None, None]
                - locations[None, None, :, 1])
    return np.exp(-dx / SIGMA_X - dy / SIGMA_Y).astype(np.float32)


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

    shift_um: (N,) shift of each unit (p_s(y) - p_ref, um). The full-probe form of
    :func:`correct_local` (every unit's window is the whole probe).
    """
    corrected = correct_local(LocalWaveforms.from_full(waveforms), channel_locations,
                              shift_um, kinv).values
    if out is None:
        return corrected
    out[...] = corrected
    return out


def correct_local(local: LocalWaveforms, channel_locations: np.ndarray, shift_um: np.ndarray,
                  kinv: np.ndarray | None = None, units: np.ndarray | None = None,
                  out: np.ndarray | None = None) -> LocalWaveforms:
    """Kriging correction of each unit on its own channel window (same windows out).

    shift_um: (N,) um. The data weights are (K + 0.01 I)^-1 restricted to the window (the
    probe-wide inverse, computed once): the waveform is ~0 outside the window, and this
    inverse couples only nearby channels, so the result on the window matches the full-probe
    correction. Units sharing a window share one weight matrix; units that also share a shift
    (every unit of a session under rigid motion) share one kernel evaluation. units: (m,)
    rows of ``local`` to correct (default all): the result holds those m units, in that order.
    out: (m, W, T) float32 to write the result into; may be ``local.values`` itself (all
    units): each block of units is read before it is written and blocks do not overlap, so
    the original window copy becomes the corrected one without a second copy beside it.
    """
    locs = np.asarray(channel_locations, dtype=np.float64)
    if kinv is None:
        kinv = kriging_inverse(locs)
    shift_um = np.asarray(shift_um, dtype=np.float64)
    windows, window_of_all = local.window_index()
    rows = np.arange(local.n_units) if units is None else np.asarray(units, dtype=np.int64)
    window_of = window_of_all[rows]
    shape = (rows.size,) + local.values.shape[1:]
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out is local.values and units is not None:
        raise ValueError("correcting in place needs every unit (units=None)")
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {shape}, not {out.dtype} {out.shape}")
    order = np.argsort(window_of, kind="stable")
    bounds = np.flatnonzero(np.diff(window_of[order])) + 1

    def correct(groups):
        for members in groups:  # positions in rows (and out)
            win = windows[window_of[members[0]]]
            weights_of_data = kinv[np.ix_(win, win)].astype(np.float32)
            values, group = np.unique(shift_um[rows[members]], return_inverse=True)
            group = group.ravel()
            # units at a time: their kernels (n, W, W) stay within ~64 MB
            step = int(np.clip(KERNEL_FLOATS // max(win.size ** 2, 1), 1, 1024))
            for start in range(0, members.size, step):
                block = members[start:start + step]
                shared, which = np.unique(group[start:start + step], return_inverse=True)
                kernels = shifted_kernels(locs[win], values[shared])
                weights = np.einsum("ij,njt->nit", weights_of_data, local.values[rows[block]],
                                    optimize=True)
                # one batched product for the block instead of one per distinct shift
                out[block] = np.matmul(kernels[which.ravel()], weights)

    # windows in threads (each writes its own units); small studies in this thread
    parallel.for_each_in_threads(correct, [m for m in np.split(order, bounds) if m.size],
                                 None if rows.size >= parallel.MIN_UNITS_THREADED else 1)
    if units is None:
        return LocalWaveforms(out, local.channels, local.n_channels, local.windows)
    return LocalWaveforms(out, local.channels[rows], local.n_channels,
                          (windows[0], window_of, local.windows[2]))
