"""Sessions whose units are rarely tracked to any other session.

A session of other neurons (another animal's or another implant's files, a session index
that is off by one) or a session whose motion went wrong gives a run that finishes without
an error: its units mostly stay unmatched, and the few that match are likely wrong. The
share of each session's units tracked to another session tells it apart. Measured
(benchmarks/RESULTS.md, "Session 25"): on the accuracy suite's 153 runs and 159 other
kilomatch runs at hand (SpikeInterface's studies sorted perfectly, by mountainsort5 and by
Kilosort 4; earlier suite runs), no session holds less than 0.61 of the other sessions'
median share; a session replaced by another simulation's units holds 0.02-0.10 of it, and
so did sessions that pyDANT 1.1.4 misplaced on SpikeInterface's studies (0.08-0.21; its
motion 9-42 um RMS off).
"""

from __future__ import annotations

import logging

import numpy as np

from .checks import name_items

log = logging.getLogger("kilomatch")

# A session is named when its share is under this fraction of the others' median ...
RATIO = 0.25
# ... and the others' median is at least this (with little tracked anywhere, as in a study
# of two sessions far apart in time, a low share says nothing about one session) ...
MIN_MEDIAN = 0.2
# ... and it holds at least this many units (a share of 3 units is noise).
MIN_UNITS = 10


def tracked_share(idx_cluster: np.ndarray, session: np.ndarray, n_sessions: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(share, count): for each session 1..n_sessions, the share of its units that share a
    cluster with a unit of another session (S,), and its number of units (S,).

    idx_cluster: (N,) cluster of each unit, -1 or 0 for none; session: (N,) 1..n_sessions.
    """
    idx = np.asarray(idx_cluster).ravel()
    session = np.asarray(session).ravel()
    count = np.bincount(session, minlength=n_sessions + 1)[1:]
    tracked = np.zeros(idx.size, bool)
    inside = np.flatnonzero(idx > 0)
    if inside.size:
        # a cluster is tracked across sessions when its units span more than one session
        ids, where = np.unique(idx[inside], return_inverse=True)
        first = np.full(ids.size, np.iinfo(np.int64).max)
        last = np.full(ids.size, np.iinfo(np.int64).min)
        np.minimum.at(first, where, session[inside])
        np.maximum.at(last, where, session[inside])
        tracked[inside] = (last > first)[where]
    hits = np.bincount(session[tracked], minlength=n_sessions + 1)[1:]
    share = np.divide(hits, count, out=np.zeros(n_sessions), where=count > 0)
    return share, count


def lone_sessions(share: np.ndarray, count: np.ndarray) -> list:
    """Sessions (1-based) whose tracked share is under RATIO of the median of the other
    sessions that hold MIN_UNITS units or more, that median being MIN_MEDIAN or more."""
    usable = count >= MIN_UNITS
    out = []
    for s in np.flatnonzero(usable):
        others = share[usable & (np.arange(share.size) != s)]
        if others.size == 0:
            continue
        median = float(np.median(others))
        if median >= MIN_MEDIAN and share[s] < RATIO * median:
            out.append(int(s) + 1)
    return out


def warn_lone_sessions(idx_cluster: np.ndarray, session: np.ndarray, n_sessions: int) -> list:
    """Log one warning naming the sessions whose units are rarely tracked; returns them."""
    share, count = tracked_share(idx_cluster, session, n_sessions)
    lone = lone_sessions(share, count)
    if lone:
        usable = count >= MIN_UNITS
        median = float(np.median(share[usable & ~np.isin(np.arange(1, n_sessions + 1), lone)]))
        each = "; ".join(f"session {s}: {round(share[s - 1] * count[s - 1])} of "
                         f"{count[s - 1]} units ({share[s - 1]:.0%})" for s in lone)
        log.warning("few units of %s are tracked to another session (%s; the other sessions' "
                    "median is %.0f%%): a session of other neurons (another animal's or "
                    "implant's files, a session index that is off) or a motion that went "
                    "wrong there. Check its input files and Motion.png; its few matches are "
                    "the likeliest to be wrong", "session " + name_items(lone)
                    if len(lone) == 1 else "sessions " + name_items(lone), each, 100 * median)
    return lone
