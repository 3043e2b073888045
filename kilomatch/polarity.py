"""Sessions whose waveforms were written with the opposite sign (docs/method.md, section 2).

Extracellular spikes are mostly troughs: on the suite's 45 studies, the sorted study and the
speed study, at most 18% of a session's units (6% at the median) peak positive on their peak
channel. A session written with the opposite sign (another exporter's or amplifier's
convention) has 93-100% of them: every unit of it then correlates negatively with its own
neuron on other days (F1 0.995 -> 0.881 on SpikeInterface's templates when one session of
eight was inverted; benchmarks/RESULTS.md, "Session 27"). Such a session is turned back.
"""

from __future__ import annotations

import numpy as np

# A session with more positive-peaked units than this share is inverted, when the sessions'
# median share is under NORMAL_SHARE (a study of positive spikes throughout is left alone).
FLIP_SHARE = 0.75
NORMAL_SHARE = 0.25


def positive_peaked(peak_waveform: np.ndarray) -> np.ndarray:
    """(n, T) waveforms on each unit's peak channel -> (n,) bool: the positive peak is larger
    than the trough."""
    return peak_waveform.max(axis=1) > -peak_waveform.min(axis=1)


def inverted_sessions(positive: np.ndarray, session0: np.ndarray, n_sessions: int
                      ) -> np.ndarray:
    """(S,) bool: sessions whose share of positive-peaked units (positive: (N,) bool) is above
    FLIP_SHARE while the sessions' median share is under NORMAL_SHARE."""
    share = np.full(n_sessions, np.nan)
    for s in np.unique(session0):
        share[s] = positive[session0 == s].mean()
    out = np.zeros(n_sessions, dtype=bool)
    if np.nanmedian(share) < NORMAL_SHARE:
        out = np.nan_to_num(share) > FLIP_SHARE
    return out


def describe_inverted(sessions: np.ndarray, positive: np.ndarray, session0: np.ndarray) -> str:
    """One log line naming the sessions (1-based) turned back."""
    listed = ", ".join(f"session {s + 1}: {positive[session0 == s].mean():.0%}"
                       for s in np.flatnonzero(sessions)[:12])
    others = np.median([positive[session0 == s].mean() for s in np.unique(session0)])
    return (f"waveforms with the opposite sign: most units peak positive ({listed}; "
            f"{others:.0%} at the sessions' median); these sessions' waveforms are multiplied "
            "by -1 before anything is compared (flip_inverted_sessions). Were they exported "
            "with another sign convention?")
