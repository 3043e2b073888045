"""Mean waveforms kept to the temporal shapes that spikes take (README, "Settings",
``denoise_waveforms``; docs/method.md, section 2).

A mean waveform is a few dozen samples per channel, but spikes vary in time along few
directions: on the suite's probes 8 to 11 components of the 64 samples hold all the signal
of the units' strongest channels, on a real sorter's output (mountainsort5) 13 to 14 of 61.
The noise left in a mean waveform (the average of a unit's spikes: std about the background
over the square root of the spike count) spreads over every direction alike. Projecting each
channel's waveform on the components that rise above that noise keeps the signal and drops
most of the noise: at the suite's smallest units the noise is a third of the waveform's
variance near its peak, and what is left of it after the projection is an eighth of that.
Everything that reads a waveform (positions, the noise share, the similarities, the
correction for motion) then reads the projected one.

The components are the right singular vectors of the waveforms, on their TOP_CHANNELS
channels of highest peak-to-trough, of up to SAMPLE_UNITS units spread over the input; those
kept are the ones whose singular value squared is FLOOR_TIMES the noise floor (the median of
the lower half of them, where only noise is) or more, MIN_COMPONENTS at least and half the
samples at most, and the constant besides (a channel's offset passes unchanged). The units
are read in blocks: at 10^5 units x 384 channels the sample is 25 MB at a time. The
projection is used only where it takes away MIN_SHARE_REMOVED of the median unit's waveform
or more: clean mean waveforms are read as they are.
"""

from __future__ import annotations

import numpy as np

from .features import peak_to_trough
from .load import read_rows

# Units read to learn the components, spread evenly over the input (all when fewer).
SAMPLE_UNITS = 2000
# The channels of each sampled unit that the components are learned on: its strongest.
TOP_CHANNELS = 8
# A component is kept when its energy is this many times the noise floor's.
FLOOR_TIMES = 3.0
MIN_COMPONENTS = 3
# Units read at a time while learning.
READ_UNITS = 128
# The share taken away is measured on each sampled unit's strongest channels, as many as the
# similarities compare (waveformCorrection.n_nearest_channels' default).
NEAR_CHANNELS = 38
# The projection is used only where it takes away this much of the median unit's waveform
# (denoise_waveforms): on the benchmarks' noisy simulations 0.044-0.12, on their cleaner ones
# 0.019-0.038, and on spike sorters' mean waveforms of simulated recordings 0.004-0.011
# (benchmarks/RESULTS.md, session 48). Where the noise is that small the projection takes
# nothing that hides a difference, and the sharper similarities of the clean units split a
# few neurons' clusters.
MIN_SHARE_REMOVED = 0.04


def learn_projection(waveforms, sample_units: int = SAMPLE_UNITS,
                     n_near: int = NEAR_CHANNELS) -> tuple[np.ndarray | None, float]:
    """The (T, T) float32 orthogonal projection on the temporal components of the units'
    mean waveforms that rise above their noise, and the share of a unit's waveform it takes
    away (the median over the sampled units, on each one's ``n_near`` channels of highest
    peak-to-trough): about the noise share of the median unit. The projection is None when
    there is too little to learn from (fewer sampled channel waveforms than samples, or
    T < 2 MIN_COMPONENTS; the share is then 0).

    waveforms: (N, C, T) mean waveforms, uV, an array or a memory map (read in blocks of
    READ_UNITS units); sample_units: how many units, spread evenly, to learn from.
    Deterministic: the same input gives the same projection.
    """
    n, c, t = waveforms.shape
    if n == 0 or t < 2 * MIN_COMPONENTS:
        return None, 0.0
    units = np.unique(np.linspace(0, n - 1, min(n, sample_units)).astype(np.int64))
    n_kept = min(max(TOP_CHANNELS, n_near), c)
    near = np.empty((units.size, n_kept, t), dtype=np.float32)
    for start in range(0, units.size, READ_UNITS):
        block = read_rows(waveforms, units[start:start + READ_UNITS])
        top = np.argsort(-peak_to_trough(block), axis=1, kind="stable")[:, :n_kept]
        near[start:start + block.shape[0]] = np.take_along_axis(block, top[:, :, None], axis=1)
    sample = near[:, :TOP_CHANNELS].reshape(-1, t).astype(np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if sample.shape[0] < t:
        return None, 0.0
    _, singular, components = np.linalg.svd(sample, full_matrices=False)
    energy = singular ** 2
    floor = np.median(energy[t // 2:])
    k = int(np.count_nonzero(energy > FLOOR_TIMES * floor))
    k = min(max(k, MIN_COMPONENTS), t // 2)
    projection = _with_constant(components[:k]).astype(np.float32)
    share = np.full(units.size, np.nan)
    for start in range(0, units.size, READ_UNITS):  # float64 a block at a time
        part = near[start:start + READ_UNITS, :n_near].astype(np.float64)
        total = np.einsum("uct,uct->u", part, part)
        removed = part - part @ projection
        ok = np.isfinite(total) & (total > 0)
        share[start:start + part.shape[0]][ok] = np.einsum("uct,uct->u", removed,
                                                          removed)[ok] / total[ok]
    share = share[np.isfinite(share)]
    return projection, float(np.median(share)) if share.size else 0.0


def _with_constant(components: np.ndarray) -> np.ndarray:
    """(T, T) projection on the span of ``components`` (k, T), orthonormal rows, and of the
    constant: a channel's constant offset (mean waveforms of a recording not high-pass
    filtered, kilomatch.channel_offsets) passes unchanged, to be found and subtracted later,
    instead of leaving a spike-shaped part of itself behind."""
    t = components.shape[1]
    constant = np.full(t, 1.0 / np.sqrt(t))
    rest = constant - components.T @ (components @ constant)
    if np.linalg.norm(rest) > 1e-6:
        components = np.vstack([components, rest / np.linalg.norm(rest)])
    return components.T @ components


def project(block: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """(n, C, T) waveforms projected on the components of ``projection`` (learn_projection),
    a new float32 array; ``block`` itself when ``projection`` is None."""
    if projection is None:
        return block
    return np.matmul(block, projection, dtype=np.float32)


def n_components(projection: np.ndarray | None) -> int:
    """How many components a projection keeps (its rank, the constant included; 0 for
    None)."""
    return 0 if projection is None else int(round(float(np.trace(projection))))
