"""Per-unit features: peak channel, amplitude, location, centring, ACG and ISI (ALGORITHM.md s.2).

All functions take arrays and return arrays. Units: um for positions, uV for waveforms,
ms for spike times and lags.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import least_squares

from .errors import KilomatchError


def peak_to_trough(waveforms, chunk: int = 2048) -> np.ndarray:
    """Peak-to-trough amplitude of every channel: (N, C, T) uV -> (N, C) float32 uV.

    Reads a memory-mapped input in blocks of ``chunk`` units.
    """
    n = waveforms.shape[0]
    out = np.empty(waveforms.shape[:2], dtype=np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(waveforms[start:start + chunk], dtype=np.float32)
        out[start:start + chunk] = block.max(axis=2) - block.min(axis=2)
    return out


def peak_channels(ptt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak channel (argmax of peak-to-trough) and its amplitude: (N, C) -> (N,) int64, (N,) uV."""
    peak = np.argmax(ptt, axis=1).astype(np.int64)
    return peak, ptt[np.arange(ptt.shape[0]), peak].astype(np.float64)


def nearest_channels(channel_locations: np.ndarray, center_channels: np.ndarray,
                     n: int) -> np.ndarray:
    """The ``n`` channels nearest each centre channel, nearest first: (N,) -> (N, n) int64.

    Ties in distance go to the lower channel index, so the order is reproducible.
    """
    n = min(int(n), channel_locations.shape[0])
    d = np.linalg.norm(channel_locations[:, None, :] - channel_locations[None, :, :], axis=2)
    # Rank once per channel (C x C), then look up per unit: cheap for any N.
    order = np.argsort(d, axis=1, kind="stable")[:, :n]
    return order[np.asarray(center_channels, dtype=np.int64)]


def center_of_mass(ptt: np.ndarray, channel_locations: np.ndarray,
                   channels: np.ndarray) -> np.ndarray:
    """ptt-weighted centre of mass on each unit's channels: -> (N, 3) um, z = 0."""
    w = np.take_along_axis(ptt, channels, axis=1).astype(np.float64)
    w = np.clip(w, 0, None)
    total = w.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    xy = np.einsum("nc,ncd->nd", w, channel_locations[channels]) / total
    # A flat waveform has no weight anywhere: put it at its first channel.
    flat = w.sum(axis=1) == 0
    xy[flat] = channel_locations[channels[flat, 0]]
    return np.column_stack([xy, np.zeros(len(xy))])


def _monopolar_fit(ptt_c: np.ndarray, pos_c: np.ndarray, start_xy: np.ndarray) -> np.ndarray:
    """Fit ptt_c ~ alpha / sqrt((x-x_c)^2 + (y-y_c)^2 + z^2) for one unit -> (x, y, z)."""
    if not np.any(ptt_c > 0):
        return np.array([start_xy[0], start_xy[1], 1.0])
    z0 = 20.0
    r0 = np.sqrt(((pos_c - start_xy) ** 2).sum(axis=1) + z0 ** 2)
    alpha0 = float(np.max(ptt_c * r0))
    scale = float(np.max(ptt_c))  # residuals in units of the peak amplitude: well conditioned

    def residual(p):
        dx, dy = p[0] - pos_c[:, 0], p[1] - pos_c[:, 1]
        r = np.sqrt(dx * dx + dy * dy + p[2] * p[2])
        return (p[3] / r - ptt_c) / scale

    def jacobian(p):
        dx, dy = p[0] - pos_c[:, 0], p[1] - pos_c[:, 1]
        r2 = dx * dx + dy * dy + p[2] * p[2]
        r = np.sqrt(r2)
        g = -p[3] / (r2 * r)
        return np.column_stack([g * dx, g * dy, g * p[2], 1.0 / r]) / scale

    lower = [start_xy[0] - 100, start_xy[1] - 100, 1.0, 0.0]
    upper = [start_xy[0] + 100, start_xy[1] + 100, 100.0 + z0, np.inf]
    fit = least_squares(residual, [start_xy[0], start_xy[1], z0, alpha0], jac=jacobian,
                        bounds=(lower, upper), method="trf", x_scale="jac",
                        xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=200)
    return fit.x[:3]


def locate_units(ptt: np.ndarray, channel_locations: np.ndarray, peak: np.ndarray,
                 n_nearest_channels: int = 20,
                 algorithm: str = "monopolar_triangulation") -> np.ndarray:
    """Unit positions (x, y, z) in um: (N, C) ptt -> (N, 3).

    ``monopolar_triangulation`` (Boussard et al. 2021): bounded least squares of a point
    source with amplitude falling as 1/distance, on the ``n_nearest_channels`` around the peak,
    started from the centre of mass, z >= 1 um, x and y within 100 um of the start.
    ``center_of_mass``: the ptt-weighted mean channel position, z = 0.
    """
    channels = nearest_channels(channel_locations, peak, n_nearest_channels)
    com = center_of_mass(ptt, channel_locations, channels)
    if algorithm == "center_of_mass":
        return com
    if algorithm != "monopolar_triangulation":
        raise KilomatchError(f"unknown location algorithm '{algorithm}'; allowed: "
                             "monopolar_triangulation, center_of_mass")
    out = np.empty((ptt.shape[0], 3))
    for k in range(ptt.shape[0]):
        ch = channels[k]
        out[k] = _monopolar_fit(ptt[k, ch].astype(np.float64), channel_locations[ch], com[k, :2])
    return out


def center_waveforms(waveforms: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Shift each unit in time so the trough of its peak channel is at sample ceil(T/2)-1.

    (N, C, T) -> (N, C, T) float32; samples shifted in from outside take the edge values.
    """
    w = np.asarray(waveforms, dtype=np.float32)
    n, c, t = w.shape
    target = int(np.ceil(t / 2)) - 1
    trough = np.argmin(w[np.arange(n), peak], axis=1)
    shift = trough - target  # positive: move earlier
    # Index form of the shift, clipped to the edges = padding with the edge values.
    idx = np.clip(np.arange(t)[None, :] + shift[:, None], 0, t - 1)
    return np.take_along_axis(w, idx[:, None, :].repeat(c, axis=1), axis=2)


def acg_lags(window: float, binwidth: float) -> np.ndarray:
    """Lags (ms) of the autocorrelogram bins: -window..window in steps of binwidth, (2B+1,)."""
    n_bins = int(np.floor(window / binwidth + 1e-9))
    return np.arange(-n_bins, n_bins + 1) * binwidth


def spike_count_pairs(spike_times: np.ndarray, window: float, binwidth: float) -> np.ndarray:
    """Counts of positive spike-time differences per lag bin: bin b holds differences that round
    to b*binwidth, b = 1..B with B = floor(window / binwidth): -> (B,) float64.

    Differences are taken between all spike pairs (not only neighbours) up to the window.
    """
    t = np.asarray(spike_times, dtype=np.float64)
    n_bins = int(np.floor(window / binwidth + 1e-9))
    counts = np.zeros(n_bins + 1)
    for shift in range(1, t.size):
        dt = t[shift:] - t[:-shift]
        b = np.rint(dt / binwidth).astype(np.int64)
        b = b[b <= n_bins]
        if b.size == 0:
            break  # times are sorted: every larger shift gives larger differences
        counts += np.bincount(b, minlength=n_bins + 1)
    return counts[1:]


def auto_correlogram(spike_times: np.ndarray, window: float = 300.0, binwidth: float = 1.0,
                     gaussian_sigma: float = 5.0) -> np.ndarray:
    """Autocorrelogram of one unit (ALGORITHM.md s.2): (2B+1,) on :func:`acg_lags`.

    Each side is smoothed with a Gaussian of ``gaussian_sigma`` ms, the zero lag is excluded
    (set to 0) and the result is scaled to a maximum of 1. Fewer than 2 spikes give zeros.
    """
    right = spike_count_pairs(spike_times, window, binwidth)
    if gaussian_sigma > 0:
        right = gaussian_filter1d(right, gaussian_sigma / binwidth, mode="nearest")
    acg = np.concatenate([right[::-1], [0.0], right])
    top = acg.max()
    return acg / top if top > 0 else acg


def isi_histogram(spike_times: np.ndarray, window: float = 100.0, binwidth: float = 1.0,
                  gaussian_sigma: float = 1.0) -> np.ndarray:
    """Histogram of successive inter-spike intervals in [0, window) ms, normalised to sum 1 and
    smoothed with a Gaussian of ``gaussian_sigma`` ms: -> (B,) with B = floor(window/binwidth)."""
    n_bins = int(np.floor(window / binwidth + 1e-9))
    isi = np.diff(np.asarray(spike_times, dtype=np.float64))
    b = np.floor(isi / binwidth).astype(np.int64)
    b = b[(b >= 0) & (b < n_bins)]
    hist = np.bincount(b, minlength=n_bins).astype(np.float64)
    total = hist.sum()
    if total > 0:
        hist /= total
    if gaussian_sigma > 0:
        hist = gaussian_filter1d(hist, gaussian_sigma / binwidth, mode="nearest")
    return hist


def auto_correlograms(spike_times: list, window=300.0, binwidth=1.0, gaussian_sigma=5.0):
    """:func:`auto_correlogram` of every unit: list of N arrays -> (N, 2B+1)."""
    return np.array([auto_correlogram(t, window, binwidth, gaussian_sigma) for t in spike_times])


def isi_histograms(spike_times: list, window=100.0, binwidth=1.0, gaussian_sigma=1.0):
    """:func:`isi_histogram` of every unit: list of N arrays -> (N, B)."""
    return np.array([isi_histogram(t, window, binwidth, gaussian_sigma) for t in spike_times])
