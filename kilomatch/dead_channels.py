"""Channels that stopped recording in some sessions (docs/method.md, section 2).

Sites of a chronic probe fail over the months, and each session is sorted with its own
channel map: a site left out of a session's map reads 0 in the mean waveforms written for
every unit of that session (the map padded to the whole probe). The same neuron then has
signal on that channel in the sessions before and none after: its waveform correlation with
itself falls, and its peak channel, amplitude and position move when the dead channel was
its peak. A tenth of the channels dying over a study cost 0.03-0.05 of F1, a quarter of them
up to 0.09 (benchmarks/RESULTS.md, "Session 27").

A channel is dead in a session when every unit of that session is constant on it while at
least one of those units peaks within ``NEAR_UM``: a live site records noise at least, and a
unit that close to it leaves its spike there, so a quiet stretch of the probe is not taken for
a dead site (at 50 um a fifth of the dead sites of a study went unfound). Nor are a sorter's
sparse waveforms (0 beyond a radius of each unit's peak, 100 um by default in
SpikeInterface): a unit vouches for a channel only as far from its peak as its own farthest
channel that is not constant (the whole probe for dense waveforms). A dead channel's values are then
filled in from the live channels around it by Kriging (the kernel of the motion correction,
its weights scaled to sum to 1), so that every later step sees the whole footprint.
"""

from __future__ import annotations

import numpy as np

from .correction import RIDGE, kriging_kernel
from .features import channel_distances

# A unit peaking this close to a channel leaves signal on it (NP1's nearest 20 sites).
NEAR_UM = 100.0
# Live channels within this distance of a dead one fill it in (Kriging's kernel is down to
# e^-3 at 90 um along the probe).
FILL_REACH_UM = 100.0
# Units judged at a time by find_dead.
CHUNK_UNITS = 8192
# Constant: a channel whose peak-to-trough is at most this share of the unit's amplitude
# (float rounding of a padded 0; a live channel's noise is 1e-4 of it or more).
CONSTANT_SHARE = 1e-6


def find_dead(ptt: np.ndarray, session0: np.ndarray, n_sessions: int,
              channel_locations: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """(S, C) bool: channel c is dead in session s.

    ptt: (N, C) float uV, each unit's peak-to-trough on every channel; session0: (N,) 0-based;
    channel_locations: (C, 2) um; peak: (N,) each unit's peak channel.
    """
    ptt = np.asarray(ptt)
    n, c = ptt.shape
    session0 = np.asarray(session0)
    apart = channel_distances(channel_locations)  # (C, C) um
    silent = np.ones((n_sessions, c), dtype=bool)   # constant in every unit of the session
    vouched = np.zeros((n_sessions, c), dtype=bool)  # a unit of the session should record it
    for start in range(0, n, CHUNK_UNITS):  # (N, C) floats at once were 0.35 GB at 10^5 units
        rows = slice(start, start + CHUNK_UNITS)
        amplitude = ptt[rows].max(axis=1, initial=0)
        constant = ptt[rows] <= CONSTANT_SHARE * amplitude[:, None]
        constant[amplitude == 0] = True  # flat units say nothing (and are named elsewhere)
        from_peak = apart[peak[rows]]
        # Sparse waveforms (0 beyond a radius of each unit's peak): a unit vouches for a
        # channel only as far from its peak as its own farthest channel that is not constant
        # (the whole probe for dense waveforms, whose far channels carry noise).
        reach = np.where(constant, 0.0, from_peak).max(axis=1, initial=0.0)
        near = (from_peak <= np.minimum(NEAR_UM, reach)[:, None]) & (amplitude[:, None] > 0)
        mine = session0[rows]
        for s in np.unique(mine):
            silent[s] &= constant[mine == s].all(axis=0)
            vouched[s] |= near[mine == s].any(axis=0)
    return silent & vouched


def fill_dead(values: np.ndarray, channels: np.ndarray, session0: np.ndarray,
              dead: np.ndarray, channel_locations: np.ndarray) -> np.ndarray:
    """Fill in, in place, each unit's values on the channels dead in its session.

    values: (N, W, T) float32, each unit's waveform on its channels ``channels`` (N, W);
    session0: (N,); dead: (S, C) bool (find_dead). Each dead channel gets the Kriging
    interpolation of the unit's live channels within FILL_REACH_UM. Units with the same
    session and channels share one interpolation matrix. Returns (N,) bool: the units
    changed.
    """
    locs = np.asarray(channel_locations, dtype=np.float64)
    changed = np.zeros(values.shape[0], dtype=bool)
    hit = np.flatnonzero(dead[session0[:, None], channels].any(axis=1))
    if hit.size == 0:
        return changed
    key = np.column_stack([session0[hit], channels[hit]])
    groups, which, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    members = np.split(hit[np.argsort(which.reshape(-1), kind="stable")], np.cumsum(counts)[:-1])
    for row, units in zip(groups, members):
        s, chans = int(row[0]), row[1:]
        gone = dead[s, chans]
        live = np.flatnonzero(~gone)
        gone = np.flatnonzero(gone)
        dist = np.linalg.norm(locs[chans[gone]][:, None, :] - locs[chans[live]][None, :, :],
                              axis=2)
        live = live[(dist <= FILL_REACH_UM).any(axis=0)]
        if live.size == 0:
            continue  # nothing recorded near: left as read
        k_live = kriging_kernel(locs[chans[live]], locs[chans[live]])
        weights = np.linalg.solve(k_live + RIDGE * np.eye(live.size),
                                  kriging_kernel(locs[chans[live]], locs[chans[gone]])).T
        # Weights summing to 1 (an interpolation, not a shrinkage towards 0): a dead site
        # 30 um from its live neighbours would otherwise read a third less than they do.
        weights /= weights.sum(axis=1, keepdims=True)
        block = values[units]
        block[:, gone] = np.einsum("gl,nlt->ngt", weights.astype(np.float32), block[:, live])
        values[units] = block
        changed[units] = True
    return changed


def describe_dead(dead: np.ndarray) -> str:
    """One log line naming the sessions (1-based) with dead channels, and how many."""
    sessions = np.flatnonzero(dead.any(axis=1))
    listed = ", ".join(f"session {s + 1}: {int(dead[s].sum())}" for s in sessions[:12])
    more = f" and {sessions.size - 12} more sessions" if sessions.size > 12 else ""
    return (f"channels constant in every unit of a session, next to units that peak there "
            f"({listed}{more}): read as sites that stopped recording, and filled in from "
            "the live channels around them (Kriging) before anything is compared "
            "(fill_dead_channels)")
