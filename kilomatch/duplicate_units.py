"""Duplicate units: two units of one session that hold the same spikes.

A template-matching sorter can give one neuron's spikes to two units at once: a second
template fits the residual that the first left at the same time point, or two templates of
one neuron both survive (Kilosort's "double-counted spikes"). The two units then have the
same waveform at the same place, and most spikes of the smaller one lie within a fraction of
a millisecond of a spike of the other. They are one neuron, which a user counting neurons
or spikes would count twice. Kilosort 4 left 19-30 such units among the 198-205 of each
SpikeInterface study it sorted (benchmarks/RESULTS.md, "Session 22"), most with templates a
few samples apart, whose mean waveforms then do not look alike.

Two units of different neurons share few spikes: at the rates of cortical neurons (1-50 Hz)
a window of +-0.5 ms catches 0.1-5% of a train by chance, and even tightly synchronous pairs
share far less than half (mountainsort5 on the same recordings: under 20%). Half of the
smaller unit's spikes is the default line.

Each duplicate is still tracked as a unit of its own: giving it its twin's cluster, leaving
it out of the tracking, or out of the match probability's known non-matches measured no
better on those studies. The output names, for each, the unit of its group with the most
spikes (units.csv ``duplicate_of``), so that a user can keep one of them. Arrays in, arrays
out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Spikes of two units this close in time (ms) are the same spike: sorters place one spike's
# templates a few samples apart (Kilosort 4's duplicates on drift40: 0.1-0.25 ms).
DUPLICATE_LAG_MS = 0.5


@dataclass
class Duplicates:
    """The shared-spike test of same-session pairs (K of them) of N units.

    pairs: (K, 2) tested pairs (i < j); shared: (K,) share of the smaller unit's spikes with
    a spike of the other within DUPLICATE_LAG_MS; is_duplicate: (K,) bool; primary: (N,) the
    unit of each unit's group of duplicates with the most spikes (itself when it has no
    duplicate).
    """

    pairs: np.ndarray
    shared: np.ndarray
    is_duplicate: np.ndarray
    primary: np.ndarray

    @classmethod
    def none(cls, n_units: int) -> "Duplicates":
        return cls(np.empty((0, 2), np.int64), np.zeros(0), np.zeros(0, bool),
                   np.arange(n_units))

    def duplicate_pairs(self) -> np.ndarray:
        """(J, 2) the pairs found to be duplicates."""
        return self.pairs[self.is_duplicate]

    @property
    def secondary(self) -> np.ndarray:
        """(N,) bool: units that duplicate a unit with more spikes."""
        return self.primary != np.arange(self.primary.size)

    @property
    def twin(self) -> np.ndarray:
        """(N,) int64: the unit each secondary unit duplicates (its group's primary), -1 for
        every other unit (units.csv duplicate_of, tracked.duplicate_tracks)."""
        return np.where(self.secondary, self.primary, -1).astype(np.int64)


def shared_spikes(times_a: np.ndarray, times_b: np.ndarray,
                  lag_ms: float = DUPLICATE_LAG_MS) -> float:
    """Share of the shorter train's spikes that have a spike of the other within ``lag_ms``
    (both (n,) ms, sorted); 0 when either is empty."""
    short, other = (times_a, times_b) if len(times_a) <= len(times_b) else (times_b, times_a)
    if not len(short):
        return 0.0
    lo = np.searchsorted(other, short - lag_ms, "left")
    hi = np.searchsorted(other, short + lag_ms, "right")
    return float(np.count_nonzero(hi > lo)) / len(short)


def _sorted(times) -> np.ndarray:
    """A spike train as sorted float64: the array itself when it already is one."""
    times = np.asarray(times, np.float64)
    return times if times.size < 2 or np.all(times[1:] >= times[:-1]) else np.sort(times)


def find_duplicates(spike_times: list, session: np.ndarray, positions: np.ndarray,
                    max_distance_um: float, min_share: float,
                    shank: np.ndarray | None = None) -> Duplicates:
    """The duplicate units of a dataset.

    spike_times: N arrays of spike times (ms); session, shank: (N,); positions: (N, D) um (the
    first column across the probe, the second along it). Every pair of units of one session
    (and shank) at most ``max_distance_um`` apart is tested; a pair is a duplicate when at
    least ``min_share`` of the smaller unit's spikes are shared (shared_spikes). Duplicates
    form groups (connected pairs); each group's primary is its unit with the most spikes
    (ties: the lowest index). min_share 0 tests nothing.
    """
    from .sorter_splits import close_pairs
    n = len(spike_times)
    if min_share <= 0 or n < 2:
        return Duplicates.none(n)
    pairs = close_pairs(positions, session, max_distance_um, shank)
    # no copies kept: 10^5 units' trains are gigabytes, and the loader's are sorted already
    shared = np.array([shared_spikes(_sorted(spike_times[a]), _sorted(spike_times[b]))
                       for a, b in pairs])
    is_duplicate = shared >= min_share
    primary = np.arange(n)
    if is_duplicate.any():
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        linked = pairs[is_duplicate]
        graph = coo_matrix((np.ones(len(linked)), (linked[:, 0], linked[:, 1])), shape=(n, n))
        _, group = connected_components(graph, directed=False)
        n_spikes = np.array([len(t) for t in spike_times])
        # within each group, most spikes first, then the lowest index
        order = np.lexsort((np.arange(n), -n_spikes, group))
        first = np.r_[True, group[order][1:] != group[order][:-1]]
        head = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        primary[order] = order[head]
    return Duplicates(pairs, shared.reshape(-1), is_duplicate, primary)
