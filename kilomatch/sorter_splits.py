"""Sorter splits: two units of one session that are one neuron, told apart from two neurons.

A spike sorter often cuts one neuron's spikes into two units (an amplitude distribution cut
in two, drift within the session). Both units then belong to that neuron's cluster, and the
same-session conflict step of the curation must not throw one of them away. Two different
neurons that the clustering joined must still be taken apart.

The spike trains of one session tell the two cases apart: a neuron does not fire twice within
its refractory period, so the two halves of a split neuron have (almost) no spikes of one
within ~1.5 ms of a spike of the other, while two neurons firing independently have as many
such near-coincidences as their rates give (lambda, from the session's span). Each tested pair
is a split with a near-coincidence count ~ Poisson(SPLIT_CONTAMINATION * lambda) or two neurons
with ~ Poisson(lambda); the share of splits among the tested pairs is estimated from the
pairs themselves (EM; those expected to show at least one near-coincidence, the only ones
whose count can show it), since it depends on the sorter: a study whose pairs with many spikes
are all independent (two neurons joined by the clustering) lends little belief to the pairs
with few, and one whose sorter splits often lends much. A pair is called a split when its
posterior probability of being one is at least 0.5 and its own count favours a split (a pair
with no spikes to compare is never called one). With short sessions or low rates the count
says little, and the estimated share decides. A neuron's units sit at one place, so two units
farther apart than ``max_distance_um`` (their estimated positions; 20 um by default, about the
largest error of the position of a small unit) are never called a split.

Arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .curation import within_cluster_pairs

# Lags below this are left out: sorters assign one spike to two overlapping templates (lag ~0)
# and miss the second of two near-simultaneous spikes of nearby neurons, so the count there
# says nothing about one neuron or two.
CENSORED_MS = 0.5
# Near-coincidences of the two halves of a split neuron, as a share of the count independent
# trains would give: spikes of noise or of another neuron that the sorter assigned to either.
SPLIT_CONTAMINATION = 0.05
# A pair is a split when its posterior probability of being one is at least this.
SPLIT_POSTERIOR = 0.5
# Pseudo-pairs (splits, two neurons) added to the tested pairs when the share of splits is
# estimated.
SHARE_PRIOR = (1.0, 3.0)
# The share of splits is learned from the pairs whose independent expectation is at least
# this many near-coincidences: only such a pair's count can tell a split (no coincidence,
# chance 0.95) from two neurons (chance 0.37 or less). Pairs with fewer most often show none
# whatever they are, and a count of 0 leans only a little to a split (likelihood ratio
# exp(0.95 * expected) < 2.6); a handful of them, all of two alike neighbours, had raised the
# share to 0.45 on a study without a single sorter split, and two neurons were joined as one
# across eight sessions (benchmarks/RESULTS.md, "Session 56").
SHARE_MIN_EXPECTED = 1.0
# A sorter that splits a neuron cuts one amplitude range in two: the two units' mean
# amplitudes lie close (at most 1.22x apart in 337 sorter splits called right on the suite,
# the sparse studies and SpikeInterface's, where the simulator's halves differ by 10%; a
# drifting or bursting neuron's halves by up to about 2x). Two units farther apart than
# this are never called a split: a 96 uV and a 621 uV unit 4 um apart, two neurons whose
# near-coincidences the sorter had missed, were kept together as one neuron
# (benchmarks/RESULTS.md, "Session 70").
SPLIT_MAX_AMPLITUDE_RATIO = 3.0


@dataclass
class SplitEvidence:
    """The refractory test of same-session pairs (K of them).

    pairs: (K, 2) unit pairs (i < j) of one session; coincidences: (K,) spikes of one unit at
    lags in (CENSORED_MS, refractory_ms] of a spike of the other; expected: (K,) that count for
    independent trains of the same rates; posterior: (K,) probability that the pair is one
    neuron; is_split: (K,) bool, posterior >= SPLIT_POSTERIOR and a count that favours a split
    (below the independent expectation); split_share: estimated share of
    splits among the tested pairs.
    """

    pairs: np.ndarray
    coincidences: np.ndarray
    expected: np.ndarray
    posterior: np.ndarray
    is_split: np.ndarray
    split_share: float = float("nan")

    @classmethod
    def empty(cls) -> "SplitEvidence":
        return cls(np.empty((0, 2), np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0),
                   np.zeros(0, bool))

    def split_pairs(self) -> np.ndarray:
        """(J, 2) the pairs judged one neuron."""
        return self.pairs[self.is_split]


def near_coincidences(times_a: np.ndarray, times_b: np.ndarray, low_ms: float,
                      high_ms: float) -> int:
    """Spikes of ``times_b`` at lags low_ms < |t_b - t_a| <= high_ms of a spike of
    ``times_a``, summed over the spikes of ``times_a``. Both (n,) ms, sorted."""
    a, b = np.asarray(times_a, np.float64), np.asarray(times_b, np.float64)
    after = np.searchsorted(b, a + high_ms, "right") - np.searchsorted(b, a + low_ms, "right")
    before = np.searchsorted(b, a - low_ms, "left") - np.searchsorted(b, a - high_ms, "left")
    return int(after.sum() + before.sum())


def same_session_pairs_in_clusters(labels: np.ndarray, session: np.ndarray) -> np.ndarray:
    """(K, 2) every pair (i < j) of units of one session that share a cluster (labels (N,),
    -1 none), sorted."""
    labels = np.asarray(labels, np.int64)
    session = np.asarray(session, np.int64)
    # a (cluster, session) key: pairs sharing it are the same-session pairs of a cluster
    code = np.unique(session, return_inverse=True)[1].reshape(-1)
    key = np.where(labels >= 0, labels * (int(code.max(initial=0)) + 1) + code, -1)
    return within_cluster_pairs(key)


def judge_pairs(pairs: np.ndarray, spike_times: list, session: np.ndarray,
                refractory_ms: float = 1.5, positions: np.ndarray | None = None,
                max_distance_um: float = np.inf,
                amplitude: np.ndarray | None = None) -> SplitEvidence:
    """The refractory test of each pair (K, 2) of units of one session.

    spike_times: N arrays of spike times (ms); session: (N,); positions: (N, D) um, or None;
    a pair farther apart than max_distance_um is tested but never called a split, nor one
    whose amplitudes (N,) uV, when given, lie more than SPLIT_MAX_AMPLITUDE_RATIO apart. The
    independent expectation is n_a n_b 2 (refractory_ms - CENSORED_MS) / T, with T the
    session's span (first to last spike of any of its units): a pair that shares the
    session's slow rate changes has more near-coincidences than that, so it is not called a
    split by mistake.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if not len(pairs):
        return SplitEvidence.empty()
    session = np.asarray(session)
    span = {}
    for s in np.unique(session[pairs[:, 0]]):
        trains = [spike_times[u] for u in np.flatnonzero(session == s) if len(spike_times[u])]
        span[s] = (max(float(np.max(t)) for t in trains) - min(float(np.min(t)) for t in trains)
                   if trains else 0.0)
    width = 2.0 * (refractory_ms - CENSORED_MS)
    observed = np.zeros(len(pairs), np.int64)
    expected = np.zeros(len(pairs))
    for k, (a, b) in enumerate(pairs):
        ta, tb = np.sort(spike_times[a]), np.sort(spike_times[b])
        observed[k] = near_coincidences(ta, tb, CENSORED_MS, refractory_ms)
        t = span[session[a]]
        expected[k] = ta.size * tb.size * width / t if t > 0 else 0.0
    posterior, is_split, share = call_splits(observed, expected)
    if positions is not None:
        positions = np.asarray(positions, np.float64)
        apart = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
        is_split &= apart <= max_distance_um
    if amplitude is not None:
        amplitude = np.abs(np.asarray(amplitude, np.float64))
        low = np.minimum(amplitude[pairs[:, 0]], amplitude[pairs[:, 1]])
        high = np.maximum(amplitude[pairs[:, 0]], amplitude[pairs[:, 1]])
        is_split &= high <= SPLIT_MAX_AMPLITUDE_RATIO * low
    return SplitEvidence(pairs, observed, expected, posterior, is_split, share)


def call_splits(observed: np.ndarray, expected: np.ndarray):
    """Which pairs are sorter splits, from their near-coincidence counts ``observed`` (K,) and
    independent expectations ``expected`` (K,): (posterior (K,), is_split (K,) bool, share).
    A split needs posterior >= SPLIT_POSTERIOR and a count below its expectation: the share
    of splits in the study never calls a pair whose own count does not favour one."""
    posterior, share = split_posterior(observed, expected)
    expected = np.asarray(expected, np.float64)
    favours = (expected > 0) & (np.asarray(observed) < expected)
    return posterior, favours & (posterior >= SPLIT_POSTERIOR), share


def split_posterior(observed: np.ndarray, expected: np.ndarray, n_iter: int = 1000):
    """Posterior probability (K,) that each pair is a sorter split, and the estimated share of
    splits, from near-coincidence counts ``observed`` (K,) and their independent expectation
    ``expected`` (K,): a two-part Poisson mixture (rates SPLIT_CONTAMINATION * expected and
    expected) whose share is fitted by EM on the pairs expected to show at least
    SHARE_MIN_EXPECTED near-coincidences (the others cannot show the share) and applied to
    every pair. The share starts from SHARE_PRIOR pseudo-pairs (one split, three pairs of two
    neurons), so that a few pairs cannot push it to 0 or 1 and pairs that carry no evidence
    (expected ~0) lean to two neurons, as the conflict step assumes; without an informative
    pair the share is the prior's, 0.25."""
    # scipy.stats pulls in scipy.ndimage: imported here, so that the writers that read pairs
    # of one session (export, apply-curation) start without it
    from scipy.stats import poisson
    observed = np.asarray(observed, np.float64)
    expected = np.asarray(expected, np.float64)
    if not observed.size:
        return np.zeros(0), float("nan")
    informative = expected > 0
    lam = np.where(informative, expected, 1.0)
    log_ratio = np.where(informative, poisson.logpmf(observed, SPLIT_CONTAMINATION * lam)
                         - poisson.logpmf(observed, lam), 0.0)
    ratio = np.exp(np.clip(log_ratio, -700, 700))
    learn = ratio[expected >= SHARE_MIN_EXPECTED]
    share = SHARE_PRIOR[0] / sum(SHARE_PRIOR)
    for _ in range(n_iter if learn.size else 0):
        odds = learn * share / (1 - share)
        new = ((odds / (1 + odds)).sum() + SHARE_PRIOR[0]) / (learn.size + sum(SHARE_PRIOR))
        if abs(new - share) < 1e-12:
            break
        share = new
    odds = ratio * share / (1 - share)
    return odds / (1 + odds), float(share)


def alike_pairs(positions: np.ndarray, session: np.ndarray, similarity, threshold: float,
                max_distance_um: float, shank: np.ndarray | None = None) -> np.ndarray:
    """Pairs (i < j) of units of one session (and shank) at most ``max_distance_um`` apart
    (positions (N, D) um, the first column across the probe, the second along it) whose
    similarity would make them a good match across sessions: ``similarity(pairs)`` (K, 2) ->
    (K,) weighted similarity, at least ``threshold``. -> (J, 2) int64, sorted.

    These are the same-session pairs the match probability would learn most from as
    non-matches, and where a sorter's duplicates or halves of one neuron lie: a sorter that
    cuts neurons in two leaves such a pair at a fraction of a micrometre with the same
    amplitude, the probability learned "that close, that alike: two neurons", and gave a
    neuron's own units on other days probability 0 (mountainsort5: benchmarks/RESULTS.md,
    "Session 18")."""
    pairs = close_pairs(positions, session, max_distance_um, shank)
    if len(pairs):
        pairs = pairs[np.asarray(similarity(pairs)) >= threshold]
    return pairs


def close_pairs(positions: np.ndarray, session: np.ndarray, max_distance_um: float,
                shank: np.ndarray | None = None) -> np.ndarray:
    """Pairs (i < j) of units of one session (and shank) at most ``max_distance_um`` apart
    (positions (N, D) um, the second column along the probe): (J, 2) int64, sorted. Where a
    sorter's two units of one neuron lie (alike_pairs, kilomatch.duplicate_units)."""
    from .probability import same_session_pairs
    positions = np.asarray(positions, np.float64)
    pairs = same_session_pairs(positions[:, 1], session, max_distance_um, shank)
    if len(pairs):
        apart = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
        pairs = pairs[apart <= max_distance_um]
    return pairs


def find_splits(labels: np.ndarray, session: np.ndarray, spike_times: list,
                refractory_ms: float = 1.5, positions: np.ndarray | None = None,
                max_distance_um: float = np.inf,
                amplitude: np.ndarray | None = None) -> SplitEvidence:
    """The refractory test of every pair of units of one session that share a cluster.

    labels: (N,) clusters (-1 none); session: (N,); spike_times: N arrays (ms); positions,
    max_distance_um, amplitude: as for :func:`judge_pairs`."""
    pairs = same_session_pairs_in_clusters(labels, session)
    return judge_pairs(pairs, spike_times, session, refractory_ms, positions, max_distance_um,
                       amplitude)
