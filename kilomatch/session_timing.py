"""Sessions whose waveforms sit at other samples than the rest (docs/method.md, section 2).

Sessions are sorted, and their mean waveforms cut out, one at a time. When one session's were
cut with another alignment (another sorter version, another ``ms_before``, samples dropped at
export), every unit of it is shifted in time against its matches in the other sessions, and
the waveform similarity, a correlation sample by sample, falls: one sample (33 us at 30 kHz)
of shift on a few sessions took F1 from 0.995 to 0.969 on SpikeInterface's templates, three
samples to 0.70 (benchmarks/RESULTS.md, "Session 26").

A unit's own trough sample says little (units differ in shape), but two units of one neuron
in two sessions share it: the delay of session b against session a is the median difference
of the trough samples over the unit pairs the initial motion superposes, most of which are
one neuron. One delay per session is fitted to those medians; aligned sessions give medians
of exactly 0 and delays of 0.
"""

from __future__ import annotations

import numpy as np

from .session_pairs import grouped_median

# Superposed unit pairs two sessions need before their relative delay is used.
MIN_PAIRS = 10


def session_delays(trough: np.ndarray, pairs: np.ndarray, session0: np.ndarray,
                   n_sessions: int, min_pairs: int = MIN_PAIRS) -> np.ndarray:
    """Delay (samples) of each session's waveforms against the sessions' median.

    trough: (N,) int sample of each unit's trough on its peak channel; pairs: (K, 2) unit
    pairs that are probably one neuron, in two different sessions; session0: (N,) 0-based.
    Returns (S,) int64: the samples each session's troughs sit later than the median
    session's (0 for sessions tied to no other by ``min_pairs`` pairs).
    """
    trough = np.asarray(trough, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    a, b = session0[pairs[:, 0]], session0[pairs[:, 1]]
    lag = trough[pairs[:, 1]] - trough[pairs[:, 0]]
    keys, medians, counts = grouped_median(lag, a * n_sessions + b)
    used = counts >= min_pairs
    delays = np.zeros(n_sessions, np.int64)
    if not used.any():
        return delays
    keys, medians, counts = keys[used], medians[used], counts[used]
    rows = np.zeros((keys.size, n_sessions))
    rows[np.arange(keys.size), keys // n_sessions] = -1.0
    rows[np.arange(keys.size), keys % n_sessions] = 1.0
    w = np.sqrt(counts)
    design = rows * w[:, None]
    # The least-norm solution: within each group of sessions tied by pairs, the delays sum
    # to 0; a session tied to none keeps 0.
    fitted = np.linalg.lstsq(design, medians * w, rcond=None)[0]
    tied = np.abs(design).sum(axis=0) > 0
    # Against the median session, so that most sessions stay where they are.
    reference = np.sort(fitted[tied])[(tied.sum() - 1) // 2]
    delays[tied] = np.rint(fitted[tied] - reference).astype(np.int64)
    return delays


def describe_delays(delays: np.ndarray, n_pairs: int,
                    motion: str = "the initial motion estimate") -> str:
    """One log line naming the sessions (1-based) whose waveforms were shifted; ``motion``:
    what superposed the pairs."""
    moved = np.flatnonzero(delays)
    listed = ", ".join(f"session {s + 1}: {int(delays[s]):+d}" for s in moved)
    return (f"the waveforms of {moved.size} session(s) sit at other samples than the other "
            f"sessions' ({listed} samples, from the trough samples of {n_pairs} unit pairs "
            f"{motion} superposes): shifted back before they are compared "
            "(align_sessions_in_time). Were these sessions sorted or exported with another "
            "alignment?")
