"""How far apart in space two units of one neuron can be, learned from each dataset.

A unit's estimated position carries noise that grows as its amplitude falls: the position
is fitted to amplitudes on the channels, and the fit of a small unit rests on channels near
the noise. After motion correction the distance between two units of one neuron is that
noise (and what the motion left), so its typical size at the pair's amplitudes is

    spread(a_i, a_j) = sqrt(floor^2 + k^2 (1 / a_i^2 + 1 / a_j^2))   (um; a in uV)

The two terms are learned from the pairs the match probability is sure of (p >= 0.9): the
median of the squared distance in bins of 1 / a_i^2 + 1 / a_j^2, fitted by non-negative
least squares. Medians, not a tail quantile: a few sure-looking wrong pairs (two alike
neighbours, the fault this guards against) sit in the tail and would widen a tail quantile
to their own distance. A pair's distance ratio is its distance over its spread: about 1 for
a typical match at any amplitude, so one limit on it serves large units, whose positions
are precise, and small ones, whose positions are not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("kilomatch")

# Candidate pairs of at least this probability describe the distance between matches.
SURE_PROBABILITY = 0.9
_N_BINS = 8
_MIN_PER_BIN = 10
_MIN_SURE = 50  # fewer sure pairs than this: the spread is not learned


@dataclass(frozen=True)
class PositionNoise:
    """spread(a_i, a_j)^2 = floor_um2 + k_um2_uv2 * (1 / a_i^2 + 1 / a_j^2)."""

    floor_um2: float
    k_um2_uv2: float

    def spread(self, amplitude_a: np.ndarray, amplitude_b: np.ndarray) -> np.ndarray:
        """Typical distance (um) between two units of one neuron of these amplitudes (uV)."""
        u = 1 / np.square(np.maximum(amplitude_a, 1e-3)) + \
            1 / np.square(np.maximum(amplitude_b, 1e-3))
        return np.sqrt(self.floor_um2 + self.k_um2_uv2 * u)


def fit_position_noise(distance: np.ndarray, amplitude_a: np.ndarray, amplitude_b: np.ndarray
                       ) -> PositionNoise | None:
    """PositionNoise from pairs of one neuron: distance (P,) um between the units' corrected
    positions, their amplitudes (P,) uV. None with fewer than 50 pairs, or when the fitted
    spread is 0."""
    from scipy.optimize import nnls
    distance = np.asarray(distance, np.float64)
    if distance.size < _MIN_SURE:
        return None
    u = 1 / np.square(np.maximum(amplitude_a, 1e-3)) + 1 / np.square(np.maximum(amplitude_b, 1e-3))
    # bins of equal count in u; a bin's median of d^2 against its median u
    edges = np.quantile(u, np.linspace(0, 1, _N_BINS + 1)[1:-1])
    which = np.searchsorted(edges, u, side="right")
    xs, ys = [], []
    for k in range(_N_BINS):
        in_bin = which == k
        if in_bin.sum() >= _MIN_PER_BIN:
            xs.append(np.median(u[in_bin]))
            ys.append(np.median(np.square(distance[in_bin])))
    if not xs:
        return None
    (floor, k), _ = nnls(np.column_stack([np.ones(len(xs)), xs]), np.array(ys))
    if floor + k * np.min(xs) <= 0:
        return None
    return PositionNoise(float(floor), float(k))


def distance_ratio(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray,
                   noise: PositionNoise | None) -> np.ndarray | None:
    """(Q,) distance between the units of each pair (Q, 2) over the spread of matches of
    their amplitudes; positions (N, D) um, amplitude (N,) uV. None without a noise model."""
    if noise is None:
        return None
    a, b = pairs[:, 0], pairs[:, 1]
    distance = np.linalg.norm(positions[a] - positions[b], axis=1)
    return distance / noise.spread(amplitude[a], amplitude[b])


def noise_of_pairs(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray
                   ) -> PositionNoise | None:
    """PositionNoise from pairs (P, 2) taken to be one neuron each; positions (N, D) um,
    amplitude (N,) uV (fit_position_noise)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    distance = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    return fit_position_noise(distance, amplitude[pairs[:, 0]], amplitude[pairs[:, 1]])


def learn_position_noise(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray,
                         probability: np.ndarray) -> PositionNoise | None:
    """PositionNoise from the candidate pairs (P, 2) whose match probability (P,) is at least
    SURE_PROBABILITY; positions (N, D) um, amplitude (N,) uV."""
    return noise_of_pairs(positions, amplitude, pairs[np.asarray(probability) >= SURE_PROBABILITY])


def learned_distance_ratio(positions: np.ndarray, amplitude: np.ndarray, candidates: np.ndarray,
                           candidate_probability: np.ndarray, pairs: np.ndarray
                           ) -> np.ndarray | None:
    """(Q,) distance ratio of the ``pairs`` (Q, 2), with the spread learned from the candidate
    pairs (P, 2) and their match probability (P,); positions (N, D) um, amplitude (N,) uV.
    None when too few candidate pairs are sure matches to learn it."""
    noise = learn_position_noise(positions, amplitude, candidates, candidate_probability)
    if noise is None:
        log.info("position noise: too few sure matches to learn it; no cut rests on distance")
        return None
    log.info("position noise of matches: %.1f um floor, %.1f um at 50 uV",
             np.sqrt(noise.floor_um2), float(noise.spread(np.array([50.0]), np.array([50.0]))[0]))
    return distance_ratio(positions, amplitude, pairs, noise)
