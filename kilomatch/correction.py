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


# Units corrected per block of correct_local, at most; fewer when the windows are wide, so
# that a block's per-unit (W, W) matrices stay within BLOCK_FLOATS float32 (16 MB).
BLOCK_UNITS = 32
BLOCK_FLOATS = 4_000_000
# Kernels evaluated in float64 at once: 8 of (W, W) on NP1 windows, 0.6 MB each, stay in the
# cache (the ~100 kernels of a 128-unit block at once ran from memory at half the speed).
KERNEL_CHUNK = 8


def window_kernels(locations: np.ndarray, shifts_um: np.ndarray) -> np.ndarray:
    """K(v + (0, shift_g), v) of the channels v of window g (G, W, 2) um for its shift (G,) um:
    (G, W, W) float32, the kernels of kriging_kernel, KERNEL_CHUNK at a time."""
    g, w = locations.shape[:2]
    kernels = np.empty((g, w, w), dtype=np.float32)
    exponent = np.empty((min(g, KERNEL_CHUNK), w, w))
    across = np.empty_like(exponent)
    for start in range(0, g, KERNEL_CHUNK):
        loc = locations[start:start + KERNEL_CHUNK]
        e, a = exponent[:loc.shape[0]], across[:loc.shape[0]]
        # exp(-|dx|/sigma_x - |dy|/sigma_y), worked in place in two reused buffers
        np.subtract(loc[:, :, None, 0], loc[:, None, :, 0], out=a)
        np.abs(a, out=a)
        np.negative(a, out=a)
        a /= SIGMA_X
        np.add(loc[:, :, None, 1], shifts_um[start:start + KERNEL_CHUNK, None, None], out=e)
        np.subtract(e, loc[:, None, :, 1], out=e)
        np.abs(e, out=e)
        e /= SIGMA_Y
        np.subtract(a, e, out=e)
        kernels[start:start + KERNEL_CHUNK] = np.exp(e, out=e)
    return kernels


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
    correction. Units are corrected in blocks sorted by window and shift: in a block, units
    sharing a window share one weight matrix, and units that also share a shift (every unit
    of a session under rigid motion) one kernel evaluation. units: (m,)
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
    inverse32 = kinv.astype(np.float32)
    # units by window, then by shift: a block's units share few windows, and units of one
    # session under rigid motion share a kernel
    order = np.lexsort((shift_um[rows], window_of))
    n_window = windows.shape[1]
    step = int(np.clip(BLOCK_FLOATS // max(n_window ** 2, 1), 1, BLOCK_UNITS))

    def correct(blocks):
        for block in blocks:  # positions in rows (and out), sorted by window and shift
            win, shift = window_of[block], shift_um[rows[block]]
            new_window = np.r_[True, win[1:] != win[:-1]]
            new_kernel = new_window | np.r_[True, shift[1:] != shift[:-1]]
            channels = windows[win[new_window]]  # (u, W): the block's distinct windows
            # the data weights: the inverse restricted to each window
            weights_of_data = inverse32[channels[:, :, None], channels[:, None, :]]
            weights = np.matmul(weights_of_data[np.cumsum(new_window) - 1],
                                local.values[rows[block]])
            kernels = window_kernels(locs[windows[win[new_kernel]]], shift[new_kernel])
            out[block] = np.matmul(kernels[np.cumsum(new_kernel) - 1], weights)

    # a few large numpy calls per block, so two threads overlap (with a group per window, a
    # few units each, they waited on each other for the GIL and gained nothing)
    blocks = [order[start:start + step] for start in range(0, order.size, step)]
    parallel.for_each_in_threads(correct, blocks, None if len(blocks) >= 4 else 1)
    if units is None:
        return LocalWaveforms(out, local.channels, local.n_channels, local.windows)
    return LocalWaveforms(out, local.channels[rows], local.n_channels,
                          (windows[0], window_of, local.windows[2]))
