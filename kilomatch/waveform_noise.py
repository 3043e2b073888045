"""How much of each unit's mean waveform is noise, for the match probability (README, "Match
probability"; docs/method.md, section 10).

A mean waveform is the average of a unit's spikes: what is not the neuron's own signal
averages down with the spike count but stays, on every channel alike. Two mean waveforms of
one neuron therefore correlate less the noisier they are: at the suite's smallest units the
noise is a third of a unit's variance near its peak, and its matches correlate about as
little as two different neurons of clean waveforms. Two noisy copies of one waveform, noise
shares f_a and f_b, correlate r_max = sqrt((1 - f_a) (1 - f_b)); two neurons differ by that
and by their shapes. So the ratio (1 - r) / (1 - r_max) is about 1 for a unit's matches at
any noise and larger for two neurons (beyond_noise). The noiseless waveforms of the units the
probability had wrongly joined on the suite differ by a sine of 0.4-0.7, a neuron's own
units by 0.2 at most (benchmarks/RESULTS.md, session 46).

The noise is measured on each unit's quiet channels, those farthest from its peak channel and
300 um from it at least: far from the unit the mean waveform is noise only. (Not the channels
of lowest peak-to-trough: among channels of noise only, those are the ones whose noise
happened to be small, and the noise read 20% low.) A probe too short for that (a 32-channel
probe of 300 um, where the farthest channels still carry a large unit's signal and read as
noise 0.45 of it) leaves the noise unknown: share 0, nothing corrected.
"""

from __future__ import annotations

import numpy as np

from .features import channel_distances

# Quiet channels: the quarter of the channels farthest from a unit's peak channel (on a 384-
# channel probe 1 mm and more from the unit, far outside its footprint), none nearer than
# QUIET_UM, and MIN_QUIET of them at least.
QUIET_SHARE = 0.25
QUIET_UM = 300.0
MIN_QUIET = 8
# A noise share is kept below this: a unit that is noise only would divide by 0.
MAX_SHARE = 0.9
# 1 - r and 1 - r_max are kept above this in beyond_noise (r = 1: a noiseless unit).
FLOOR = 1e-6


def farthest_first(channel_locations: np.ndarray) -> np.ndarray:
    """For each channel, the channels QUIET_UM or more away from it, farthest first, then -1:
    (C, C) int32. channel_locations: (C, 2) um."""
    d = channel_distances(channel_locations)
    order = np.argsort(-d, axis=1, kind="stable")
    far = np.take_along_axis(d, order, axis=1) >= QUIET_UM
    return np.where(far, order, -1).astype(np.int32)


def noise_share(block: np.ndarray, ptt: np.ndarray, peak: np.ndarray, far_order: np.ndarray,
                n_near: int) -> np.ndarray:
    """Share of each unit's waveform variance near its peak that is noise: (n,) in [0, 0.9].

    block: (n, C, T) mean waveforms, uV; ptt: (n, C) their peak-to-trough per channel, uV;
    peak: (n,) peak channels; far_order: (C, C) farthest_first of the probe; n_near: channels
    compared near the peak (waveformCorrection.n_nearest_channels). The noise is the median
    variance over time of the unit's quiet channels (the quarter of the channels farthest from
    its peak, QUIET_UM away at least; channels flat in that unit, dead or not recorded, are
    passed over); the unit's variance is that of its n_near channels of highest
    peak-to-trough, all samples together. 0 where there are fewer than MIN_QUIET quiet
    channels.
    """
    block = np.asarray(block, np.float32)
    n, c, _ = block.shape
    if n == 0:
        return np.zeros(0)
    rows = np.arange(n)[:, None]
    n_quiet = int(c * QUIET_SHARE)
    n_near = int(min(max(n_near, 1), c))
    if n_quiet < 1:
        return np.zeros(n)
    order = far_order[np.asarray(peak, np.int64)]              # (n, C), farthest first
    # a flat channel (peak-to-trough 0: dead or not recorded) would read as noise 0
    recorded = (order >= 0) & (ptt[rows, np.maximum(order, 0)] > 0)
    quiet = recorded & (np.cumsum(recorded, axis=1) <= n_quiet)
    # the variance over time of the quiet channels only, not of every channel
    at = np.argsort(~quiet, axis=1, kind="stable")[:, :n_quiet]  # quiet ones first, in order
    taken = np.take_along_axis(quiet, at, axis=1)
    channel = np.take_along_axis(order, at, axis=1)
    quiet_var = np.where(taken, block[rows, np.maximum(channel, 0)].var(axis=2, dtype=np.float64),
                         np.nan)
    usable = taken.sum(axis=1) >= MIN_QUIET
    noise = np.zeros(n)
    if usable.any():
        noise[usable] = np.nanmedian(quiet_var[usable], axis=1)
    near = np.argsort(-ptt, axis=1, kind="stable")[:, :n_near]
    total = block[rows, near].reshape(n, -1).var(axis=1, dtype=np.float64)
    share = np.divide(noise, total, out=np.zeros(n), where=total > 0)
    return np.clip(share, 0.0, MAX_SHARE)


def beyond_noise(z: np.ndarray, share_a: np.ndarray, share_b: np.ndarray) -> np.ndarray:
    """How much more two units' mean waveforms differ than their noise alone makes them
    differ: (P,) -ln((1 - r) / (1 - r_max)), higher for more alike (as a similarity).

    z: (P,) Fisher z of the observed correlation r; share_a, share_b: (P,) noise shares
    (noise_share) of the two units; r_max = sqrt((1 - share_a) (1 - share_b)) is the
    correlation of two noisy copies of one waveform. Two units of one neuron read about 0 at
    any noise; two neurons read below, by their difference in shape. 1 - r and 1 - r_max are
    kept above 1e-6 (a noiseless unit).
    """
    r = np.tanh(np.asarray(z, np.float64))
    highest = np.sqrt((1.0 - np.asarray(share_a)) * (1.0 - np.asarray(share_b)))
    return -np.log(np.maximum(1.0 - r, FLOOR) / np.maximum(1.0 - highest, FLOOR))
