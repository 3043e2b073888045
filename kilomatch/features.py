"""Per-unit features: peak channel, amplitude, location, centring, ACG and ISI
(docs/method.md, section 2).

All functions take arrays and return arrays. Units: um for positions, uV for waveforms,
ms for spike times and lags.
"""

from __future__ import annotations

import numpy as np

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
                     n: int, channel_shanks: np.ndarray | None = None) -> np.ndarray:
    """The ``n`` channels nearest each centre channel, nearest first: (N,) -> (N, n) int64.

    Ties in distance go to the lower channel index, so the order is reproducible. With
    ``channel_shanks`` (C,), channels of other shanks come after every channel of the
    centre's own shank.
    """
    n = min(int(n), channel_locations.shape[0])
    d = channel_distances(channel_locations, channel_shanks)
    # Rank once per channel (C x C), then look up per unit: cheap for any N.
    order = np.argsort(d, axis=1, kind="stable")[:, :n]
    return order[np.asarray(center_channels, dtype=np.int64)]


def channel_distances(channel_locations: np.ndarray,
                      channel_shanks: np.ndarray | None = None) -> np.ndarray:
    """(C, C) distances between channels (um); inf between channels of different shanks
    when ``channel_shanks`` (C,) is given."""
    locs = np.asarray(channel_locations, dtype=np.float64)
    d = np.linalg.norm(locs[:, None, :] - locs[None, :, :], axis=2)
    if channel_shanks is not None:
        shanks = np.asarray(channel_shanks)
        d = np.where(shanks[:, None] == shanks[None, :], d, np.inf)
    return d


# Reach (um) around a unit's peak channel of its footprint amplitude.
FOOTPRINT_UM = 60.0
FOOTPRINT_BLOCK = 8192  # units at a time: (block, C) float64 temporaries


def footprint_amplitude(ptt: np.ndarray, peak: np.ndarray, channel_locations: np.ndarray,
                        channel_shanks: np.ndarray | None = None,
                        reach_um: float = FOOTPRINT_UM) -> np.ndarray:
    """Each unit's peak-to-trough amplitude summed over the channels of its shank within
    ``reach_um`` of its peak channel: ptt (N, C) uV, peak (N,), channel_locations (C, 2) um,
    channel_shanks (C,) or None -> (N,) uV.

    What the curation compares between units of one neuron. The peak channel's amplitude
    moves with where the neuron sits against the channel grid, which drift changes: on
    SpikeInterface's templates one neuron's peak amplitude read 72-203 uV in seven sessions,
    and one neuron's 99th percentile of |ln amplitude ratio| is 0.47 there (0.46 on this
    project's simulator). Summed over the footprint, the same field is sampled at more
    points: 0.15 and 0.35 (benchmarks/RESULTS.md, "Session 71")."""
    near = channel_distances(channel_locations, channel_shanks) <= reach_um
    out = np.empty(len(peak))
    for a in range(0, len(peak), FOOTPRINT_BLOCK):
        b = min(a + FOOTPRINT_BLOCK, len(peak))
        out[a:b] = np.einsum("ij,ij->i", np.asarray(ptt[a:b], np.float64), near[peak[a:b]])
    return out


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


# Bounds of a unit's fitted decay exponent (:func:`decay_exponents`): 1 is the monopole; a
# neuron's return currents make its amplitude fall faster away from the soma (the far field
# of a dipole falls as 1/r^2, of a quadrupole as 1/r^3).
DECAY_BOUNDS = (0.5, 3.0)
# At most this many units (evenly spread over the units' order) give the dataset's exponent.
DECAY_FIT_UNITS = 5000


def monopolar_triangulation(ptt_c: np.ndarray, pos_c: np.ndarray, start_xy: np.ndarray,
                            max_iter: int = 200, live: np.ndarray | None = None) -> np.ndarray:
    """Fit a point source to many units at once: (n, m) ptt on each unit's m channels at
    positions (n, m, 2) um, started at (n, 2) -> (n, 3) x, y, z in um.

    Model: ptt_c = alpha / sqrt((x - x_c)^2 + (y - y_c)^2 + z^2), bounded least squares with
    x, y within 100 um of the start, 1 <= z <= 120 um, alpha >= 0. Solved by a projected
    Levenberg-Marquardt iteration run on all units together: scipy's least_squares gives the
    same optimum (tested) but one unit at a time, ~100x slower at 10^5 units. ``live``
    (n, m) bool: the channels to fit on (the others, such as a dead channel's filled-in
    value, are left out); None: all.
    """
    return point_source_fit(ptt_c, pos_c, start_xy, 1.0, max_iter, live)


def point_source_fit(ptt_c: np.ndarray, pos_c: np.ndarray, start_xy: np.ndarray,
                     decay: float = 1.0, max_iter: int = 200,
                     live: np.ndarray | None = None) -> np.ndarray:
    """As :func:`monopolar_triangulation`, with the amplitude falling as 1 / r^``decay``:
    ptt_c = alpha / r^decay, r = sqrt((x - x_c)^2 + (y - y_c)^2 + z^2). -> (n, 3) um."""
    y, ok, p, lower, upper, weight = _source_start(ptt_c, pos_c, start_xy, live)

    def residual_and_jacobian(q, idx):
        if decay == 1.0:  # the monopole, as published
            dx, dy, r2 = _offsets(q, pos_c, idx)
            r = np.sqrt(r2)
            model, g, fall = q[:, None, 3] / r, -q[:, None, 3] / (r2 * r), 1.0 / r
        else:
            dx, dy, r2, fall, model, g = _power_source(q, pos_c, idx, decay)
        jac = np.stack([g * dx, g * dy, g * q[:, None, 2], fall], axis=2)
        return _weighted(model - y[idx], jac, weight, idx)

    return _fit_sources(p, lower, upper, ok, residual_and_jacobian, max_iter)[:, :3]


def decay_exponents(ptt_c: np.ndarray, pos_c: np.ndarray, start_xy: np.ndarray,
                    max_iter: int = 200, live: np.ndarray | None = None) -> np.ndarray:
    """Each unit's decay exponent: the point source of :func:`point_source_fit` with the
    exponent fitted too (started at 1, within DECAY_BOUNDS). (n, m) ptt, (n, m, 2) um,
    (n, 2) start -> (n,), NaN for a flat unit.

    One unit's exponent is poorly pinned (it trades against the source's distance z from
    the probe), so positions are not fitted this way: the exponents of many units give the
    dataset's one exponent (:func:`shared_decay`)."""
    y, ok, p, lower, upper, weight = _source_start(ptt_c, pos_c, start_xy, live)
    n = len(p)
    p = np.column_stack([p, np.ones(n)])
    lower = np.column_stack([lower, np.full(n, DECAY_BOUNDS[0])])
    upper = np.column_stack([upper, np.full(n, DECAY_BOUNDS[1])])

    def residual_and_jacobian(q, idx):
        dx, dy, r2, fall, model, g = _power_source(q, pos_c, idx, q[:, None, 4])
        jac = np.stack([g * dx, g * dy, g * q[:, None, 2], fall,
                        -0.5 * model * np.log(r2)], axis=2)
        return _weighted(model - y[idx], jac, weight, idx)

    exponent = _fit_sources(p, lower, upper, ok, residual_and_jacobian, max_iter)[:, 4]
    exponent[~ok] = np.nan
    return exponent


def _offsets(q, pos_c, idx):
    """x and y offsets (k, m) um of sources q (k, >= 3) from the channels of units ``idx``
    (pos_c (n, m, 2) um), and their squared distances r^2 (k, m) with z."""
    dx = q[:, None, 0] - pos_c[idx, :, 0]
    dy = q[:, None, 1] - pos_c[idx, :, 1]
    return dx, dy, dx * dx + dy * dy + q[:, None, 2] ** 2


def _power_source(q, pos_c, idx, decay):
    """A source falling as alpha / r^decay (decay a number, or (k, 1) per source):
    _offsets' dx, dy, r^2, then 1 / r^decay, the model alpha / r^decay and g, its
    derivative along x over dx (the same along y and z)."""
    dx, dy, r2 = _offsets(q, pos_c, idx)
    fall = r2 ** (-0.5 * decay)
    model = q[:, None, 3] * fall
    return dx, dy, r2, fall, model, -decay * model / r2


def _weighted(res, jac, weight, idx):
    """Residuals (k, m) and Jacobian (k, m, q) of units ``idx`` with the left-out channels'
    rows zeroed (``weight`` (n, m) 0/1, or None)."""
    if weight is None:
        return res, jac
    w = weight[idx]
    return res * w, jac * w[:, :, None]


def _source_start(ptt_c, pos_c, start_xy, live=None):
    """The point-source fits' shared start: ptt scaled to each unit's peak (n, m), which
    units have signal (n,), start parameters x, y, z, alpha (n, 4), their bounds, and the
    channels' weights (n, m) float or None."""
    ptt_c = np.asarray(ptt_c, dtype=np.float64)
    weight = None if live is None else np.asarray(live, dtype=np.float64)
    n = ptt_c.shape[0]
    scale = (ptt_c if weight is None else ptt_c * weight).max(axis=1)
    ok = scale > 0
    scale[~ok] = 1.0
    y = ptt_c / scale[:, None]  # residuals in units of the peak amplitude: well conditioned
    z0 = 20.0
    r0 = np.sqrt(((pos_c - start_xy[:, None, :]) ** 2).sum(axis=2) + z0 ** 2)
    p = np.column_stack([start_xy, np.full(n, z0), (y * r0).max(axis=1)])
    lower = np.column_stack([start_xy - 100, np.full(n, 1.0), np.zeros(n)])
    upper = np.column_stack([start_xy + 100, np.full(n, 100.0 + z0), np.full(n, np.inf)])
    return y, ok, p, lower, upper, weight


def _fit_sources(p, lower, upper, ok, residual_and_jacobian, max_iter):
    """Projected Levenberg-Marquardt of every unit's parameters p (n, k) within their bounds
    (n, k), all units at once (only those ``ok`` (n,)); residual_and_jacobian(q, idx) ->
    (len(idx), m) residuals and (len(idx), m, k) Jacobian. -> (n, k), z = 1 um for the
    others."""
    n = len(p)
    res, jac = residual_and_jacobian(p, np.arange(n))
    cost = (res ** 2).sum(axis=1)
    lam = np.full(n, 1e-3)
    active = ok.copy()
    eye = np.eye(p.shape[1])
    for _ in range(max_iter):
        if not active.any():
            break
        a = np.flatnonzero(active)
        ja, ra = jac[a], res[a]
        h = np.einsum("nmi,nmj->nij", ja, ja)
        grad = np.einsum("nmi,nm->ni", ja, ra)
        # Parameters held at a bound by the gradient are frozen for this step (active set),
        # so the others still take a full Gauss-Newton step.
        pinned = (((p[a] <= lower[a]) & (grad > 0)) | ((p[a] >= upper[a]) & (grad < 0)))
        free = (~pinned).astype(np.float64)
        h = h * free[:, :, None] * free[:, None, :] + eye * (1.0 - free)[:, :, None]
        grad = grad * free
        damp = lam[a, None, None] * (h * eye + 1e-12 * eye)
        step = np.linalg.solve(h + damp, -grad[:, :, None])[:, :, 0]
        trial = np.clip(p[a] + step, lower[a], upper[a])
        res_t, jac_t = residual_and_jacobian(trial, a)
        cost_t = (res_t ** 2).sum(axis=1)
        better = cost_t < cost[a]
        b = a[better]
        moved = np.abs(trial[better] - p[b]).max(axis=1)
        gain = cost[b] - cost_t[better]
        p[b], res[b], jac[b], cost[b] = trial[better], res_t[better], jac_t[better], cost_t[better]
        lam[b] *= 0.3
        lam[a[~better]] *= 10.0
        done = np.zeros(n, bool)
        done[b] = (moved < 1e-7) | (gain <= 1e-14 * np.maximum(cost[b], 1e-30))
        done[a[~better]] = lam[a[~better]] > 1e12  # no downhill step left: at the optimum
        active &= ~done
    p[~ok, 2] = 1.0  # a flat waveform stays at its start
    return p


LOCATION_ALGORITHMS = ("decay_triangulation", "monopolar_triangulation", "center_of_mass")


def shared_decay(ptt: np.ndarray, channel_locations: np.ndarray, channels: np.ndarray,
                 live: np.ndarray | None = None, max_units: int = DECAY_FIT_UNITS) -> float:
    """The dataset's decay exponent: the median of :func:`decay_exponents` over at most
    ``max_units`` units evenly spread over their order (all of them when fewer). ptt (N, C)
    uV, channels (N, m) the channels nearest each unit's peak, live (N, m) bool or None.
    1.0 (the monopole) when no unit has signal.

    Shared, not per unit: how fast a spike's amplitude falls with distance is a property of
    the tissue, the neurons and the probe that all units of a recording share, and a unit's
    own exponent trades against its distance from the probe."""
    n = ptt.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n, max_units)).round().astype(np.int64)) \
        if n else np.zeros(0, np.int64)
    ch = channels[rows]
    ptt_c = np.take_along_axis(np.asarray(ptt[rows], np.float64), ch, axis=1)
    start = center_of_mass(ptt[rows], channel_locations, ch)[:, :2]
    exponent = decay_exponents(ptt_c, channel_locations[ch], start,
                               live=None if live is None else live[rows])
    exponent = exponent[np.isfinite(exponent)]
    return float(np.median(exponent)) if exponent.size else 1.0


def locate_units(ptt: np.ndarray, channel_locations: np.ndarray, peak: np.ndarray,
                 n_nearest_channels: int = 20,
                 algorithm: str = "monopolar_triangulation",
                 channels: np.ndarray | None = None, live: np.ndarray | None = None,
                 decay: float | None = None) -> np.ndarray:
    """Unit positions (x, y, z) in um: (N, C) ptt -> (N, 3).

    ``monopolar_triangulation`` (Boussard et al. 2021): bounded least squares of a point
    source with amplitude falling as 1/distance, on the ``n_nearest_channels`` around the peak,
    started from the centre of mass, z >= 1 um, x and y within 100 um of the start.
    ``decay_triangulation``: the same with the amplitude falling as 1/distance^``decay``
    (:func:`point_source_fit`; when None, learned from these units, :func:`shared_decay`).
    ``center_of_mass``: the ptt-weighted mean channel position, z = 0. ``channels``: the
    (N, n) :func:`nearest_channels` of the peaks when already known (a caller that locates
    units block by block finds them once: each call ranks every channel pair, C x C).
    ``live`` (N, n) bool: which of those channels recorded in the unit's session (the fits
    leave the others out); None: all.
    """
    if algorithm not in LOCATION_ALGORITHMS:
        raise KilomatchError(f"unknown location algorithm '{algorithm}'; allowed: "
                             + ", ".join(LOCATION_ALGORITHMS))
    if channels is None:
        channels = nearest_channels(channel_locations, peak, n_nearest_channels)
    com = center_of_mass(ptt, channel_locations, channels)
    if algorithm == "center_of_mass":
        return com
    if algorithm == "monopolar_triangulation":
        decay = 1.0
    elif decay is None:
        decay = shared_decay(ptt, channel_locations, channels, live)
    ptt_c = np.take_along_axis(ptt, channels, axis=1)
    return point_source_fit(ptt_c, channel_locations[channels], com[:, :2], decay, live=live)


def trough_samples(peak_waveform: np.ndarray) -> np.ndarray:
    """Sample of each unit's trough on its peak channel: (N, T) uV -> (N,) int64."""
    return np.argmin(np.asarray(peak_waveform), axis=1).astype(np.int64)


def centring_shift(peak_waveform: np.ndarray) -> np.ndarray:
    """Samples each unit moves earlier (:func:`shift_in_time`) so that the trough of its
    peak channel sits at sample ceil(T/2)-1: (N, T) -> (N,) int64."""
    t = np.shape(peak_waveform)[1]
    return trough_samples(peak_waveform) - (int(np.ceil(t / 2)) - 1)


def shift_in_time(waveforms: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Each unit's samples moved ``shift`` samples earlier (later when negative) on every
    channel; samples shifted in from outside take the edge values.

    waveforms: (N, C, T) or (N, T); shift: (N,) int -> float32 of the same shape.
    """
    w = np.asarray(waveforms, dtype=np.float32)
    t = w.shape[-1]
    # The index form of the shift, clipped to the edges = padding with the edge values.
    idx = np.clip(np.arange(t)[None, :] + np.asarray(shift, dtype=np.int64)[:, None], 0, t - 1)
    if w.ndim == 2:
        return np.take_along_axis(w, idx, axis=1)
    return np.take_along_axis(w, np.broadcast_to(idx[:, None, :], w.shape), axis=2)


def shift_rows(values: np.ndarray, shift: np.ndarray, chunk: int = 2048) -> None:
    """:func:`shift_in_time` in place: values (N, W, T) or (N, T) float32, shift (N,) int;
    only the units that move are copied, ``chunk`` at a time."""
    moving = np.flatnonzero(shift)
    for start in range(0, moving.size, chunk):
        rows = moving[start:start + chunk]
        values[rows] = shift_in_time(values[rows], shift[rows])


def center_waveforms(waveforms: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Shift each unit in time so the trough of its peak channel is at sample ceil(T/2)-1.

    (N, C, T) -> (N, C, T) float32; samples shifted in from outside take the edge values.
    """
    w = np.asarray(waveforms, dtype=np.float32)
    return shift_in_time(w, centring_shift(w[np.arange(w.shape[0]), peak]))


def gaussian_filter1d(values: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d, imported on first use: scipy.ndimage takes most of a
    second to import, and the writers that need only this module's channel helpers do not
    smooth anything."""
    from scipy.ndimage import gaussian_filter1d as smooth
    return smooth(values, sigma, mode=mode)


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
    # Differences past this cannot round into a bin; most are, so the rounding below runs
    # only on the few that are not (half a bin of margin: the rounding decides).
    reach = (n_bins + 1) * binwidth
    within = []
    for shift in range(1, t.size):
        dt = t[shift:] - t[:-shift]
        dt = dt[dt < reach]
        if dt.size == 0:
            break  # times are sorted: every larger shift gives larger differences
        within.append(dt)
    if not within:
        return np.zeros(n_bins)
    # rounded and counted once for all shifts (a count per shift was a fifth of the ACGs'
    # time); a difference under ``reach`` rounds to at most bin n_bins + 1, which is dropped
    b = np.rint(np.concatenate(within) / binwidth).astype(np.int64)
    return np.bincount(b, minlength=n_bins + 2)[1:n_bins + 1].astype(np.float64)


def auto_correlogram(spike_times: np.ndarray, window: float = 300.0, binwidth: float = 1.0,
                     gaussian_sigma: float = 5.0) -> np.ndarray:
    """Autocorrelogram of one unit (docs/method.md, section 2): (2B+1,) on :func:`acg_lags`.

    Each side is smoothed with a Gaussian of ``gaussian_sigma`` ms, the zero lag is excluded
    (set to 0) and the result is scaled to a maximum of 1. Fewer than 2 spikes give zeros.
    """
    return auto_correlograms([spike_times], window, binwidth, gaussian_sigma)[0]


def isi_histogram(spike_times: np.ndarray, window: float = 100.0, binwidth: float = 1.0,
                  gaussian_sigma: float = 1.0) -> np.ndarray:
    """Histogram of successive inter-spike intervals in [0, window) ms, normalised to sum 1 and
    smoothed with a Gaussian of ``gaussian_sigma`` ms: -> (B,) with B = floor(window/binwidth)."""
    return isi_histograms([spike_times], window, binwidth, gaussian_sigma)[0]


def _smooth_rows(rows: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Each row (N, B) smoothed by a Gaussian of ``sigma_bins`` bins, edges repeated ('nearest'):
    one call for every unit, the same values as one row at a time."""
    if sigma_bins <= 0 or rows.size == 0:
        return rows
    return gaussian_filter1d(rows, sigma_bins, mode="nearest")


def auto_correlograms(spike_times: list, window=300.0, binwidth=1.0, gaussian_sigma=5.0):
    """:func:`auto_correlogram` of every unit: list of N arrays -> (N, 2B+1). The rows are
    smoothed together (one call, the same values as row by row)."""
    n_bins = int(np.floor(window / binwidth + 1e-9))
    right = np.zeros((len(spike_times), n_bins))
    for k, t in enumerate(spike_times):
        right[k] = spike_count_pairs(t, window, binwidth)
    right = _smooth_rows(right, gaussian_sigma / binwidth)
    acg = np.concatenate([right[:, ::-1], np.zeros((len(right), 1)), right], axis=1)
    top = acg.max(axis=1, initial=0.0)
    scale = np.where(top > 0, top, 1.0)
    return acg / scale[:, None]


def isi_histograms(spike_times: list, window=100.0, binwidth=1.0, gaussian_sigma=1.0):
    """:func:`isi_histogram` of every unit: list of N arrays -> (N, B), the rows smoothed
    together."""
    n_bins = int(np.floor(window / binwidth + 1e-9))
    hist = np.zeros((len(spike_times), n_bins))
    for k, t in enumerate(spike_times):
        b = np.floor(np.diff(np.asarray(t, dtype=np.float64)) / binwidth).astype(np.int64)
        hist[k] = np.bincount(b[(b >= 0) & (b < n_bins)], minlength=n_bins)
    total = hist.sum(axis=1, keepdims=True)
    np.divide(hist, total, out=hist, where=total > 0)
    return _smooth_rows(hist, gaussian_sigma / binwidth)
