"""Sessions whose mean waveforms carry a constant offset on each channel (docs/method.md,
section 2).

Mean waveforms averaged from a recording that was not high-pass filtered (Neuropixels 2.0
records from 0.5 Hz; a pipeline of one's own, or templates of an unfiltered recording) keep
each channel's DC level: a constant per channel, the same for every unit of the session and
another in the next. The waveform correlation then compares those levels more than the
spikes: offsets of +-30 uV took F1 from 0.9995 to 0.86 (precision 0.88) on a suite study,
and from 0.995 to 0.73 on SpikeInterface's templates (benchmarks/RESULTS.md, "Session 27").

A unit's baseline on a channel is the median of the first and last eighth of its samples.
Filtered means have baselines within 2% of the unit's amplitude (the median over channels:
0.2-0.8% on the suite and a sorted study, under 2% for every unit); a session whose units'
median is above ``OFFSET_SHARE`` has offsets, and every unit of it has its baselines
subtracted before anything is compared.
"""

from __future__ import annotations

import numpy as np

# A session's median over units of (median over channels of |baseline|) / amplitude above
# this has offsets: 6x the highest session median of the suite (0.008, noisy small units).
OFFSET_SHARE = 0.05


def edge_baseline(values: np.ndarray) -> np.ndarray:
    """Baseline of each unit on each channel: (n, W, T) uV -> (n, W) float32 uV, the median
    of the first and last max(T // 8, 3) samples (finite waveforms: the loader refuses
    others)."""
    t = values.shape[2]
    edge = max(t // 8, 3)
    if 2 * edge >= t:
        return np.median(values, axis=2).astype(np.float32)
    # np.median's value (the mean of the two middle samples), from one sort of the few edge
    # samples: np.median's own machinery took twice as long (0.09 s of the features at
    # 1,615 units)
    edges = np.sort(np.concatenate([values[:, :, :edge], values[:, :, -edge:]], axis=2),
                    axis=2)
    return ((edges[:, :, edge - 1] + edges[:, :, edge]) / 2).astype(np.float32)


def offset_share(baseline: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """(n,) median over channels of |baseline| over the unit's largest peak-to-trough, from
    baselines (n, W) and each unit's largest peak-to-trough over its channels (n,) uV (the
    peak channel's, which the caller has: recomputing it from the waveforms was 0.08 s of
    the features at 1,615 units); 0 for a flat unit."""
    level = np.median(np.abs(baseline), axis=1)
    return np.where(amplitude > 0, level / np.where(amplitude > 0, amplitude, 1.0), 0.0)


def sessions_with_offsets(share: np.ndarray, session0: np.ndarray, n_sessions: int
                          ) -> np.ndarray:
    """(S,) bool: sessions whose units' median offset_share is above OFFSET_SHARE."""
    out = np.zeros(n_sessions, dtype=bool)
    for s in np.unique(session0):
        out[s] = np.median(share[session0 == s]) > OFFSET_SHARE
    return out


def describe_offsets(sessions: np.ndarray, share: np.ndarray, session0: np.ndarray) -> str:
    """One log line naming the sessions (1-based) with offsets and their median share."""
    flagged = np.flatnonzero(sessions)
    listed = ", ".join(f"session {s + 1}: {np.median(share[session0 == s]):.0%}"
                       for s in flagged[:12])
    more = f" and {flagged.size - 12} more sessions" if flagged.size > 12 else ""
    return (f"mean waveforms with a constant offset on each channel ({listed}{more} of the "
            "units' amplitude at the median; filtered waveforms stay under 2%): each unit's "
            "baseline (median of the first and last eighth of its samples) is subtracted "
            "before anything is compared (remove_channel_offsets). Were they averaged from "
            "a recording that was not high-pass filtered?")
