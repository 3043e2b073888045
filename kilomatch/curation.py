"""Auto-curation of the final clusters (docs/method.md, section 9), recording every removed
pair.

Arrays in, arrays out: the pipeline supplies every within-cluster pair with its weighted
similarity and whether it may link two units at all (different sessions, within max_distance).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from . import position_noise

log = logging.getLogger("kilomatch")

REASONS = ("same_session_conflict", "split_below_threshold", "split_at_position_gap",
           "split_average_probability", "split_at_distance", "split_at_succession",
           "split_at_amplitude_step", "split_unlinked", "split_at_similarity_step",
           "split_at_amplitude", "split_at_low_probability", "split_lone_end",
           "split_at_time_gap", "split_at_rate", "split_at_rate_step", "moved_to_other_cluster",
           "split_amplitude_outlier")
(CONFLICT, SPLIT, POSITION, AVERAGE, DISTANCE, SUCCESSION, AMPLITUDE_STEP, UNLINKED,
 SIMILARITY_STEP, AMPLITUDE, LOW_PROBABILITY, LONE_END, TIME_GAP, RATE, RATE_STEP,
 MOVED, AMPLITUDE_OUTLIER) = range(17)
_BLOCK = 1 << 20  # rows of pairs filled at a time by within_cluster_pairs
# The split at distance stands unless the mean (or median) match probability across it is
# above this (the default of autoCuration.split_distance_probability): the level of the sure
# matches (kilomatch.position_noise.SURE_PROBABILITY). On NP2 data large units of one neuron
# lie 3-6 um apart, several times their typical 0.5-1 um, with probability 0.99.
DISTANCE_SPLIT_PROBABILITY = 0.9
# A group of units of a succession (split_successions) is one neuron when the mean match
# probability of its pairs across sessions is at least this; it holds at least two units.
SUCCESSION_SURE = 0.9
# A cut in time at a step of amplitude (split_successions' amplitude_step) stands where the
# mean match probability across is below this: the step says two neurons, and the
# probability must not say one. At 0.3 it left j +1000's and j +3000's successions of a
# lone unit whole (benchmarks/RESULTS.md, "Successions at a step of amplitude").
AMPLITUDE_STEP_PROBABILITY = 0.5
# ... and only where the sides' median amplitudes differ by this factor at least, whatever
# the clusters' spread says. The spread is read from their median as a half-normal's, which
# a neuron whose amplitude jumps in a session or two (its peak at another phase of the
# channel grid after the probe moved) does not fit: on SpikeInterface's sharp templates the
# learned step fell to 1.10-1.62 and its cuts took apart one neuron's units (39 of 42 pairs
# removed were true; on the accuracy suite, where the step is 1.64-2.21, the floor changes
# nothing). benchmarks/RESULTS.md, "Session 20".
AMPLITUDE_STEP_MIN_FACTOR = 1.5
# A step of amplitude this many times the step (in log amplitude: the step's factor squared,
# 3-4x on the suite) is cut whatever the probability across says. Where two alike neurons lie
# at one place, the trees can be sure of pairs of very different amplitude, because no
# known non-match as alike teaches them otherwise (a neuron of 50-58 uV followed by one of
# 355-475 uV, every pair across at 0.57-1.00, p +19000). In the final clusters of 260 suite
# runs, 12 clusters had a step beyond 3x in time, 11 of them two neurons (benchmarks/
# RESULTS.md, "Session 57").
AMPLITUDE_STEP_SURE = 2.0
# One neuron's spread of amplitude (_amplitude_limit): this quantile of |log amplitude
# ratio| of the pairs the clusters hold. A cut undone by pooled evidence
# (rejoin_by_probability's pooled_level) joins groups whose median amplitudes differ by at
# most that (a neuron's amplitude is stable across days, and the pooled test alone rejoined
# a 155 uV unit with a neuron of 65-79 uV (j) and a 712 uV unit with units of 184-238 uV
# (m +1000)); split_successions' step of amplitude is counted in it.
POOLED_AMPLITUDE_QUANTILE = 0.99
# ... and only where every pair across scores above the median of the known non-matches.
POOLED_MAX_SHARE = 0.5
# A cut undone because its sides are alike in all but similarity (rejoin_alike) joins sides
# whose median amplitudes differ by at most this quantile of one neuron's |log amplitude
# ratio|. At the 99th percentile (the pooled veto's) it joined a 67 uV unit of another
# neuron to a neuron of 72-116 uV recorded in the sessions around it (k +1000, 0.83 of the
# 99th percentile); the true cuts it undoes on the suite differ by 0.6 of it at most
# (benchmarks/RESULTS.md, "Session 10").
REJOIN_AMPLITUDE_QUANTILE = 0.9
# ... and by this factor at least, whatever the clusters' spread says: a neuron's peak
# amplitude moves 20-60% with the channel grid's phase after drift (as for
# AMPLITUDE_STEP_MIN_FACTOR). On SpikeInterface's sharp templates (drift40) the learned
# 90th percentile fell to 1.05-1.17, and small units of one neuron 1.1-1.2x apart stayed
# cut (drift40 +300, phy route: 46-71 uV); on the accuracy suite (144 runs) the floor
# changes no result. benchmarks/RESULTS.md, "Session 21".
REJOIN_AMPLITUDE_MIN_FACTOR = 1.2


def within_cluster_pairs(labels: np.ndarray) -> np.ndarray:
    """Every pair (i < j) of units sharing a cluster (labels (N,) >= 0): (Q, 2) int64,
    sorted by (i, j)."""
    labels = np.asarray(labels)
    units = np.flatnonzero(labels >= 0)
    order = units[np.argsort(labels[units], kind="stable")]  # by (label, index)
    position = np.empty(labels.size, np.int64)
    position[order] = np.arange(order.size)
    # unit i pairs with order[first_i:end_i], the later members of its cluster; taking the
    # units in increasing index gives rows already sorted by (i, j), so no (Q,) sort
    first = position[units] + 1
    n_later = np.searchsorted(labels[order], labels[units], side="right") - first
    row_end = np.cumsum(n_later)
    n_pairs = int(row_end[-1]) if units.size else 0
    out = np.empty((n_pairs, 2), np.int64)
    # row q of unit i holds order[first_i + q - row_start_i]
    shift = first - (row_end - n_later)
    # filled by blocks of whole units holding about _BLOCK rows, so that the (Q,) index
    # temporaries never exist and the (Q, 2) result is most of the peak memory
    cuts = np.searchsorted(row_end, np.arange(_BLOCK, n_pairs, _BLOCK)) + 1
    for a, b in itertools.pairwise([0, *cuts.tolist(), units.size]):
        q0, q1 = (int(row_end[a - 1]) if a else 0), (int(row_end[b - 1]) if b else 0)
        if q1 > q0:
            k = n_later[a:b]
            out[q0:q1, 0] = np.repeat(units[a:b], k)
            j = np.repeat(shift[a:b], k)
            j += np.arange(q0, q1)
            out[q0:q1, 1] = order[j]
    return out


@dataclass
class CurationResult:
    """labels: (N,) final clusters before renumbering (-1 none); removed_pairs: (R, 2) unit
    pairs taken apart; removed_reason: (R,) index into REASONS; labels_after_conflicts: (N,);
    threshold: the weighted similarity the splits used."""

    labels: np.ndarray
    labels_after_conflicts: np.ndarray
    removed_pairs: np.ndarray
    removed_reason: np.ndarray
    threshold: float = float("nan")
    links: object = None  # linking.ProbabilityLinks, when the probability made the clusters
    # (J, 2) pairs a similarity cut would have separated and the match probability kept
    # together (curate's cut_probability) or rejoin_alike joined back; (R,) match
    # probability of each removed pair
    # (NaN when no probability was fitted)
    kept_pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    removed_probability: np.ndarray | None = None
    # (R,) distance ratio of each removed pair (kilomatch.position_noise; None when not learned)
    removed_distance_ratio: np.ndarray | None = None
    # (Q,) distance ratio of the within-cluster pairs that the split at distance used (its
    # spread learned from the curated clusters, noise_of_clusters), or None
    split_distance_ratio: np.ndarray | None = None
    # the spread of one neuron's positions behind split_distance_ratio
    # (position_noise.PositionNoise), or None: the join reads its pairs' distances with it
    split_position_noise: object = None
    cut_probability: float = float("nan")  # the level the cuts were confirmed at (NaN: none)
    # the refractory test of the same-session pairs of the clusters (sorter_splits), or None
    # when sorter splits were not looked for (autoCuration.keep_sorter_splits off)
    splits: object = None
    # the refractory test of the pairs of one session as alike as a good match
    # (sorter_splits.alike_pairs): those judged one neuron are left out of the match
    # probability's known non-matches; None when not looked for
    alike_splits: object = None
    # (N,) the clusters before the probability joined any (kilomatch.joining), or None when
    # no join was tried (then the same as labels)
    labels_before_join: np.ndarray | None = None
    # (N,) the clusters before the curation joined groups recorded in turn
    # (joining.join_interleaved), or None when it was not run (then the same as labels)
    labels_before_in_turn: np.ndarray | None = None
    # the step of amplitude (natural log of the ratio of the two sides' medians) beyond which
    # split_successions cut a cluster in time (learned_step; inf when it did not run): the
    # join by probability never joins across AMPLITUDE_STEP_SURE times it
    amplitude_step: float = float("inf")


def _clashing_clusters(labels: np.ndarray, session: np.ndarray,
                       group: np.ndarray | None = None) -> np.ndarray:
    """Sorted ids of the clusters (labels (N,) >= 0) holding two units of one session (of two
    different ``group`` (N,), when given: units of one group never clash)."""
    units = np.flatnonzero(labels >= 0)
    if group is not None:  # a group counts once
        units = units[np.unique(np.column_stack([labels[units], group[units]]), axis=0,
                                return_index=True)[1]]
    # codes from np.unique so that sessions count as equal exactly when the per-cluster
    # np.unique of resolve_conflicts would merge them
    code = np.unique(session[units], return_inverse=True)[1].reshape(-1)
    lab = labels[units]
    order = np.lexsort((code, lab))
    lab, code = lab[order], code[order]
    twice = (lab[1:] == lab[:-1]) & (code[1:] == code[:-1])
    return np.unique(lab[1:][twice])


def _cluster_similarity(members: np.ndarray, pairs: np.ndarray, sim: np.ndarray,
                        missing: float = 0.0):
    """Dense symmetric (M, M) similarity between ``members`` (M,) sorted unit ids, from the
    (P, 2) ``pairs`` with both ends among them; pairs not given read ``missing`` (0, as in a
    sparse (N, N) lookup; repeated pairs add up, as there)."""
    m = members.size
    a = np.searchsorted(members, pairs[:, 0])
    b = np.searchsorted(members, pairs[:, 1])
    flat = np.concatenate([a * m + b, b * m + a])
    dense = np.bincount(flat, np.concatenate([sim, sim]), minlength=m * m)
    if missing != 0:  # also true for NaN
        dense[np.bincount(flat, minlength=m * m) == 0] = missing
    return dense.reshape(m, m)


def _cluster_members(labels: np.ndarray, pairs: np.ndarray, clusters: np.ndarray) -> list:
    """For each of ``clusters`` (sorted ids): (its units, sorted; the rows of ``pairs`` (Q, 2)
    with both ends in it). Only the pairs of those clusters are gathered: a (Q,) boolean mask
    finds them without (Q,) int64 label arrays (~80 MB each at 10^7 pairs)."""
    chosen = np.zeros(labels.size, bool)
    chosen[labels >= 0] = np.isin(labels[labels >= 0], clusters)
    keep = np.flatnonzero(chosen[pairs[:, 0]] & chosen[pairs[:, 1]])
    lab = labels[pairs[keep, 0]]
    same = lab == labels[pairs[keep, 1]]  # earlier steps may have split a listed cluster
    keep, lab = keep[same], lab[same]
    order = np.argsort(lab, kind="stable")
    keep = keep[order]
    pair_start = np.searchsorted(lab[order], clusters)
    pair_end = np.append(pair_start[1:], keep.size)
    units = np.flatnonzero(chosen)
    units = units[np.argsort(labels[units], kind="stable")]  # by (cluster, index)
    unit_start = np.searchsorted(labels[units], clusters)
    unit_end = np.append(unit_start[1:], units.size)
    return [(units[a:b], keep[c:d])
            for a, b, c, d in zip(unit_start, unit_end, pair_start, pair_end)]


def resolve_conflicts(labels, session, pairs, similarity, same_neuron=None):
    """While a cluster holds two units of one session, drop the conflicting unit with the
    lowest mean similarity to the rest of the cluster (ties: the higher unit index).

    same_neuron: (K, 2) pairs of units of one session that are one neuron (sorter splits,
    :mod:`kilomatch.sorter_splits`), or None. Units joined by them form one group that does not
    conflict with itself; a conflict between groups drops the group whose units have the
    lowest mean of their mean similarities (ties: the group of the higher highest index), all
    its units at once.

    labels: (N,) clusters (-1 none); session: (N,); pairs: (Q, 2) every within-cluster pair;
    similarity: (Q,). Pairs missing from ``pairs`` count as similarity 0.
    Returns (labels (N,), removed (R, 2)): each dropped unit's pairs with the members left,
    cluster by cluster in increasing id, units in the order they were dropped.
    """
    labels = np.array(labels, dtype=np.int64)
    session = np.asarray(session)
    pairs = np.asarray(pairs).reshape(-1, 2)
    similarity = np.asarray(similarity, float)
    group = _neuron_groups(labels.size, same_neuron)
    removed = []
    clashing = _clashing_clusters(labels, session, None if same_neuron is None else group)
    for members, rows in _cluster_members(labels, pairs, clashing):
        dense = _cluster_similarity(members, pairs[rows], similarity[rows])
        alive = np.arange(members.size)  # positions in ``members``, increasing
        while True:
            sess, grp = session[members[alive]], group[members[alive]]
            uniq, counts = np.unique(sess, return_counts=True)
            clashing_sessions = [s for s in uniq[counts > 1]
                                 if np.unique(grp[sess == s]).size > 1]
            if not clashing_sessions:
                break
            cand = alive[np.isin(sess, clashing_sessions)]
            # each candidate's similarities to the other alive members, in increasing index:
            # a row-wise mean over a C-ordered (C, A - 1) array sums each row exactly as
            # np.mean of that row alone, so the means (and ties) are the per-unit ones
            others = dense[np.ix_(cand, alive)][cand[:, None] != alive[None, :]]
            means = others.reshape(cand.size, alive.size - 1).mean(axis=1)
            cand_group = group[members[cand]]
            scores = []
            for g in np.unique(cand_group):
                own = cand_group == g
                # one unit: its own mean, so that without splits nothing changes
                score = means[own][0] if own.sum() == 1 else means[own].mean()
                scores.append((score, -members[cand[own]].max(), g))
            # lowest score, ties -> the group of the higher unit index
            worst_group = min(scores)[2]
            for worst in cand[cand_group == worst_group]:
                alive = alive[alive != worst]
                unit = members[worst]
                labels[unit] = -1
                rest = members[alive]
                removed.append(np.column_stack([np.minimum(unit, rest),
                                                np.maximum(unit, rest)]))
    if not removed:
        return labels, np.empty((0, 2), np.int64)
    return labels, np.concatenate(removed).astype(np.int64)


def _neuron_groups(n: int, same_neuron) -> np.ndarray:
    """(n,) group of each unit: units joined by the (K, 2) ``same_neuron`` pairs share the
    group of their lowest unit; every other unit is a group of its own (its index)."""
    if same_neuron is None or not len(same_neuron):
        return np.arange(n)
    same_neuron = np.asarray(same_neuron, np.int64).reshape(-1, 2)
    graph = sparse.coo_matrix((np.ones(len(same_neuron)), (same_neuron[:, 0], same_neuron[:, 1])),
                              shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    lowest = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(lowest, comp, np.arange(n))
    return lowest[comp]


def split_clusters(labels, pairs, similarity, linkable, threshold):
    """Split each cluster into the connected components of its pairs that are linkable and
    above ``threshold``. Returns (labels with new cluster ids, removed (R, 2)).

    labels: (N,); pairs: (Q, 2); similarity, linkable: (Q,).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    inside = held_together(labels, pairs)
    keep = inside & linkable & (np.asarray(similarity) > threshold)
    graph = sparse.coo_matrix((np.ones(keep.sum()), (pairs[keep, 0], pairs[keep, 1])),
                              shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    new = np.where(labels >= 0, comp, -1)
    broken = inside & (new[pairs[:, 0]] != new[pairs[:, 1]])
    return new, pairs[broken]


def split_unlinked(labels, pairs, linked):
    """Split each cluster into the parts that its ``linked`` pairs connect: (labels, removed
    (R, 2)), as :func:`split_clusters` with every linked pair kept.

    Why: the position split cuts a cluster by its units' positions, so one part may hold
    units with no candidate pair between them (sessions further apart than
    clustering.max_session_gap), and nothing compared them: on high-turnover studies two
    neurons that held one place many sessions apart (benchmarks/RESULTS.md, "Session 15").
    A neuron's units are linked through its own recordings.

    labels: (N,); pairs: (Q, 2) every within-cluster pair; linked: (Q,) bool, the pairs that
    are candidate pairs (linkable and within the session gap). A cluster left whole keeps
    its label; the other parts of a split one take new labels, and parts of one unit -1."""
    labels = np.array(labels, dtype=np.int64)
    parts, removed = split_clusters(labels, pairs, np.ones(len(pairs)), linked, 0.0)
    if not len(removed):
        return labels, removed
    next_label = int(labels.max()) + 1
    for cluster in np.unique(labels[removed[:, 0]]):
        units = np.flatnonzero(labels == cluster)
        part_ids, first = np.unique(parts[units], return_index=True)
        for part in part_ids[np.argsort(first)][1:]:  # the part of its lowest unit keeps it
            labels[units[parts[units] == part]] = next_label
            next_label += 1
    return dissolve_singletons(labels), removed


def split_by_average_link(labels, pairs, probability, threshold: float = 0.5,
                          clusters: np.ndarray | None = None):
    """Split each cluster where its groups of units are, on average, not probably one neuron.

    Within a cluster, groups of units are joined by average linkage on the match
    probability and kept apart where the mean probability between two groups is below
    ``threshold``: one strong link can no longer chain two neurons together (one neuron
    stops being recorded and another nearby starts), as it can with the connected
    components of :func:`split_clusters`.

    labels: (N,) clusters (-1 none); pairs: (Q, 2) every within-cluster pair; probability:
    (Q,) match probability (0 for pairs that cannot link). Pairs not listed count as 0.
    clusters: sorted ids of the only clusters to look at (None: all). Returns (labels,
    removed (R, 2) pairs across the splits).
    """
    return _split_average_linkage(labels, pairs, lambda units, rows: 1.0 - _cluster_similarity(
        units, pairs[rows], np.asarray(probability, np.float64)[rows]), 1.0 - threshold,
        clusters)


def split_by_distance(labels, pairs, distance_ratio, max_ratio: float):
    """Split each cluster where its groups of units lie farther apart than one neuron's
    units can: groups joined by average linkage on the pairs' distance ratio (distance over
    the spread of matches at the pair's amplitudes, :mod:`kilomatch.position_noise`) are kept
    apart where their mean ratio is above ``max_ratio``.

    labels: (N,) clusters (-1 none); pairs: (Q, 2) every within-cluster pair; distance_ratio:
    (Q,). Returns (labels, removed (R, 2) pairs across the splits).
    """
    labels = np.asarray(labels, np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    distance_ratio = np.asarray(distance_ratio, np.float64)
    # groups can lie farther apart than the limit on average only where some pair does: the
    # other clusters (nearly all) stay whole without a linkage
    far = (distance_ratio > max_ratio) & (labels[pairs[:, 0]] == labels[pairs[:, 1]])
    return _split_average_linkage(labels, pairs, lambda units, rows: _cluster_similarity(
        units, pairs[rows], distance_ratio[rows]), max_ratio,
        np.unique(labels[pairs[far, 0]][labels[pairs[far, 0]] >= 0]))


def held_together(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(Q,) bool: the pairs (Q, 2) whose two units are in one cluster of labels (N,), -1
    none."""
    return (labels[pairs[:, 0]] == labels[pairs[:, 1]]) & (labels[pairs[:, 0]] >= 0)


def mean_in_cluster(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray
                    ) -> np.ndarray:
    """(N,) each unit's mean ``probability`` (Q,) over its pairs of ``pairs`` (Q, 2) held in
    its cluster (labels (N,), -1 none); NaN for a unit with no such pair. Pairs of NaN
    probability (a shank the probability was not fitted on) are left out."""
    n = len(labels)
    held = held_together(labels, pairs) & np.isfinite(probability)
    total = (np.bincount(pairs[held, 0], probability[held], n)
             + np.bincount(pairs[held, 1], probability[held], n))
    count = np.bincount(pairs[held, 0], minlength=n) + np.bincount(pairs[held, 1],
                                                                   minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def clusters_below(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                   level: float) -> np.ndarray:
    """Sorted ids of the clusters (labels (N,), -1 none) that hold a pair of ``pairs``
    (Q, 2) whose ``probability`` (Q,) is below ``level``: the only ones a split on the
    probability at that level can cut."""
    inside = held_together(labels, pairs)
    return np.unique(labels[pairs[inside & (probability < level), 0]])


def split_by_amplitude(labels, pairs, probability, log_amplitude, max_probability: float,
                       step: float):
    """Split each cluster into groups that the match probability says are not one neuron
    and whose amplitudes say the same (:func:`split_by_value` on the natural log of the
    units' amplitudes, uV). A unit of another neuron that fills the session where a
    neuron was not recorded (high turnover) is alike enough for the similarity's clusters;
    where its probability and its amplitude both set it apart, it is cut. Small units of
    one neuron, whose probability is low because their waveforms correlate little, keep
    their amplitude and stay together.
    """
    return split_by_value(labels, pairs, probability, log_amplitude, max_probability, step)


def split_by_value(labels, pairs, probability, log_value, max_probability: float,
                   step: float):
    """Split each cluster into groups that the match probability says are not one neuron
    and whose units' values (a neuron's own: amplitude, firing rate) say the same: groups
    of average linkage on the probability whose mean probability across is below
    ``max_probability`` (:func:`split_by_average_link`) are joined again, closest median
    value first, while their median log values differ by at most ``step``.

    labels: (N,) clusters (-1 none); pairs: (Q, 2) every within-cluster pair; probability:
    (Q,) match probability (0 for pairs that cannot link); log_value: (N,) natural log of
    each unit's value; step: largest difference of median log value two groups may join
    at. Returns (labels, removed (R, 2) pairs across the splits, sorted).
    """
    log_value = np.asarray(log_value, np.float64)
    labels = np.asarray(labels, np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    probability = np.asarray(probability, np.float64)
    # a cluster can split only where some pair is below the level and its values span
    # more than the step: the other clusters (nearly all) stay whole without a linkage
    low = clusters_below(labels, pairs, probability, max_probability)
    held = labels >= 0
    top = np.full(labels.max(initial=-1) + 1, -np.inf)
    bottom = np.full(top.size, np.inf)
    np.maximum.at(top, labels[held], log_value[held])
    np.minimum.at(bottom, labels[held], log_value[held])
    clusters = low[top[low] - bottom[low] > step]
    split, _ = split_by_average_link(labels, pairs, probability, max_probability, clusters)

    def joinable(units, rows):
        def score(groups):
            med = np.array([np.median(log_value[units[g]]) for g in groups])
            apart = np.abs(med[:, None] - med[None, :])
            return np.where(apart <= step, -apart, -np.inf)
        return score
    return _join_parts(labels, split, pairs, joinable)


def split_successions(labels, pairs, probability, known, session, max_probability: float,
                      log_amplitude: np.ndarray | None = None, amplitude_step: float = np.inf):
    """Split each cluster where one neuron followed another at its place, at a cut in time
    (the units of sessions up to t against those after t) where either
    - (a succession, with ``max_probability`` above 0) each side holds two units or more,
      each side is one neuron for sure (mean match probability of its pairs at least
      SUCCESSION_SURE), no pair across is that sure, and the mean probability across is
      below ``max_probability``; or
    - (a step of amplitude, with ``log_amplitude``) the sides' median log amplitudes differ
      by more than ``amplitude_step`` and the mean probability across is below
      AMPLITUDE_STEP_PROBABILITY, or they differ by more than AMPLITUDE_STEP_SURE times
      ``amplitude_step`` (whatever the probability); a side may be one unit.
    Means are over the ``known`` pairs only (nothing known across: no cut); of the cuts that
    qualify, the one of lowest probability across is made, and each side is tried again.

    Why in time: on high-turnover studies a neuron stops being recorded and a neighbour of
    alike waveform starts at its place, which similarity and distance cannot tell from one
    neuron; the probability can (sure within each, unlikely across), but pairwise it also
    gives small units' true matches low values: groups that the probability tells apart
    but that interleave in time are left whole (on the suite this takes apart the wrong
    clusters of j +2000 and m +2000 and nothing else; benchmarks/RESULTS.md "Precision on
    high-turnover studies"). Why the amplitude: a neuron's amplitude is stable across days
    after motion correction, and the neighbour that takes over is rarely as large; every
    cluster left with wrong pairs on the high-turnover studies was such a succession, most
    of a lone unit, which the sure-groups rule cannot test (RESULTS.md, "Successions at a
    step of amplitude").

    labels: (N,) clusters (-1 none); pairs: (Q, 2) every within-cluster pair; probability:
    (Q,); known: (Q,) bool, the pairs whose probability counts (the caller's: pairs that
    may link, within clustering.max_session_gap, where the probability was fitted);
    session: (N,); log_amplitude: (N,) natural log of the amplitude (uV), or None.
    Returns (labels, removed (R, 2) pairs across the cuts, sorted, reason (R,) int8:
    SUCCESSION or AMPLITUDE_STEP, the rule of the cut that took each pair apart).
    """
    labels = np.array(labels, dtype=np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    known = np.asarray(known, bool)
    value = np.where(known, np.asarray(probability, np.float64), 0.0)
    session = np.asarray(session)
    steps = log_amplitude is not None and np.isfinite(amplitude_step)
    smallest = 2 if not steps else 1  # units on a side of a cut that may qualify
    next_label = labels.max() + 1 if labels.size else 0
    removed, reasons = [], []
    for units, rows in _cluster_members(labels, pairs, np.unique(labels[labels >= 0])):
        if units.size < 2 * smallest:
            continue
        order = np.argsort(session[units], kind="stable")
        units = units[order]  # by session: every cut in time is a prefix
        sess = session[units]

        def block(matrix):  # 2-D prefix sums: the sum over any block of rows and columns
            out = np.zeros((units.size + 1, units.size + 1))
            out[1:, 1:] = matrix.cumsum(0).cumsum(1)
            return lambda r0, r1, c0, c1: out[r1, c1] - out[r0, c1] - out[r1, c0] + out[r0, c0]

        unit_rank = np.argsort(order)  # _cluster_similarity orders by unit id
        p_sum = block(_cluster_similarity(np.sort(units), pairs[rows], value[rows])[
            np.ix_(unit_rank, unit_rank)])
        n_known = block(_cluster_similarity(np.sort(units), pairs[rows], known[rows].astype(
            np.float64))[np.ix_(unit_rank, unit_rank)])
        n_sure = block(_cluster_similarity(np.sort(units), pairs[rows], (
            value[rows] >= SUCCESSION_SURE).astype(np.float64))[np.ix_(unit_rank, unit_rank)])

        def mean(r0, r1, c0, c1):
            n = n_known(r0, r1, c0, c1)
            return p_sum(r0, r1, c0, c1) / n if n > 0 else np.nan

        def succession(lo, k, hi, across):
            return k - lo >= 2 and hi - k >= 2 and across < max_probability and \
                n_sure(lo, k, k, hi) == 0 and mean(lo, k, lo, k) >= SUCCESSION_SURE and \
                mean(k, hi, k, hi) >= SUCCESSION_SURE

        def jump(lo, k, hi):  # |difference| of the sides' median log amplitudes
            return abs(np.median(log_amplitude[units[lo:k]]) -
                       np.median(log_amplitude[units[k:hi]])) if steps else 0.0

        cuts, queue = [], [(0, units.size)]
        while queue:
            lo, hi = queue.pop()
            best = None
            for k in np.flatnonzero(sess[lo + 1:hi] != sess[lo:hi - 1]) + lo + 1:
                if k - lo < smallest or hi - k < smallest:
                    continue
                across = mean(lo, k, k, hi)
                gap = jump(lo, k, hi)
                sure_step = gap > AMPLITUDE_STEP_SURE * amplitude_step
                if np.isnan(across) or not (
                        across < max(max_probability, AMPLITUDE_STEP_PROBABILITY * steps)
                        or sure_step) or (best is not None and across >= best[0]):
                    continue  # (NaN: nothing known across)
                if succession(lo, k, hi, across):
                    best = (across, k, SUCCESSION)
                elif steps and (sure_step or (across < AMPLITUDE_STEP_PROBABILITY and
                                              gap > amplitude_step)):
                    best = (across, k, AMPLITUDE_STEP)
            if best is not None:
                cuts.append((lo, best[1], hi, best[2]))
                queue += [(best[1], hi), (lo, best[1])]
        if not cuts:
            continue
        # the parts are the ranges between the cuts; a pair is across the first cut that
        # separates its units, which lies inside the range both were in
        edges = sorted({0, units.size, *(k for _, k, _, _ in cuts)})
        for lo, hi in itertools.pairwise(edges[1:]):
            labels[units[lo:hi]] = next_label
            next_label += 1
        for lo, k, hi, reason in cuts:
            removed.append(pairs_across(units[lo:k], units[k:hi]))
            reasons.append(np.full(len(removed[-1]), reason, np.int8))
    if not removed:
        return labels, np.empty((0, 2), np.int64), np.empty(0, np.int8)
    removed, reasons = np.concatenate(removed), np.concatenate(reasons)
    order = np.lexsort((removed[:, 1], removed[:, 0]))
    return labels, removed[order], reasons[order]


def sorted_pairs(blocks: list) -> np.ndarray:
    """The pairs of a list of (k, 2) int blocks as one (R, 2) int64 array sorted by first then
    second unit: the removed pairs a split returns ((0, 2) for none)."""
    if not blocks:
        return np.empty((0, 2), np.int64)
    pairs = np.concatenate(blocks).astype(np.int64, copy=False)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def pairs_across(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Every pair (len(first) * len(second), 2) of a unit of ``first`` and one of ``second``,
    the lower unit id first, in the order of first then second."""
    a, b = np.meshgrid(first, second, indexing="ij")
    return np.column_stack([np.minimum(a, b).ravel(), np.maximum(a, b).ravel()])


def _split_average_linkage(labels, pairs, dissimilarity, limit: float,
                           clusters: np.ndarray | None = None):
    """Split each cluster of ``labels`` (N,) (or only the sorted ids ``clusters``) into the
    groups of average linkage on ``dissimilarity(units, rows)`` (its (M, M) matrix for the
    cluster's sorted units and the rows of ``pairs`` (Q, 2) inside it) cut at ``limit``; the
    group of the cluster's lowest unit keeps the label. Returns (labels, removed (R, 2) pairs
    across the splits, sorted)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    labels = np.array(labels, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    next_label = labels.max() + 1 if labels.size else 0
    removed = []
    if clusters is None:
        clusters = np.unique(labels[labels >= 0])
    for units, rows in _cluster_members(labels, pairs, clusters):
        if units.size < 2:
            continue
        distance = squareform(dissimilarity(units, rows), checks=False)
        groups = fcluster(linkage(distance, method="average"), t=limit, criterion="distance")
        if groups.max() == 1:
            continue
        for g in np.unique(groups[groups != groups[0]]):
            labels[units[groups == g]] = next_label
            next_label += 1
        apart = groups[:, None] != groups[None, :]
        i, j = np.nonzero(np.triu(apart, 1))
        removed.append(np.column_stack([units[i], units[j]]))
    return labels, sorted_pairs(removed)


def split_by_position(labels, positions, pairs, similarity, linkable, threshold,
                      min_gap_um: float = 7.0):
    """Take apart clusters that join two neurons recorded in turn.

    When one neuron stops being recorded and another, a few um away, starts, no session holds
    both, so no same-session conflict exposes the merge, and their similarity can sit above
    the threshold. After motion correction a neuron's position is stable, so such a cluster
    shows a jump in position that coincides with a drop in similarity. Each cluster is cut in
    two at the longest edge of the minimum spanning tree of its units' positions; the parts are
    taken apart when that edge is at least ``min_gap_um`` long and the pairs across the cut are
    closer to the threshold than to the pairs inside the parts:
    mean_within - mean_across > mean_across - threshold. Parts are tested again in turn.

    labels: (N,) clusters (-1 none); positions: (N, D) motion-corrected positions (um);
    pairs, similarity, linkable: every within-cluster pair of ``labels`` (Q arrays), as for
    :func:`split_clusters`. Returns (labels, removed (R, 2) pairs across the cuts).
    """
    labels = np.array(labels, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    # Non-linkable pairs carry no similarity, like pairs never listed.
    sim = np.where(np.asarray(linkable, bool), np.asarray(similarity, np.float64), np.nan)
    next_label = labels.max() + 1 if labels.size else 0
    removed = []
    clusters = np.unique(labels[labels >= 0])
    for units, rows in _cluster_members(labels, pairs, clusters):
        dense = _cluster_similarity(units, pairs[rows], sim[rows], missing=np.nan)
        n = units.size
        queue = [np.arange(n)]
        while queue:
            part = queue.pop(0)
            cut = _position_cut(positions[units[part]], dense[np.ix_(part, part)], threshold,
                                min_gap_um)
            if cut is None:
                continue
            a, b = part[~cut], part[cut]
            labels[units[b]] = next_label
            next_label += 1
            removed += [(min(units[i], units[j]), max(units[i], units[j])) for i in a for j in b]
            queue += [a, b]
    removed = np.array(sorted(removed), dtype=np.int64).reshape(-1, 2)
    return labels, removed


def _position_cut(pos, similarity, threshold, min_gap_um):
    """(n,) bool side of the cut of one cluster, or None when it stays whole.

    pos: (n, D) um; similarity: (n, n) weighted similarity of its units, NaN where unknown."""
    n = pos.shape[0]
    if n < 3:
        return None
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
    if not np.isfinite(d).all():
        return None
    # scipy reads a weight of about 0 as no edge: units at one position (e.g. every channel
    # given one position) left it no tree. Adding 1 um to every edge keeps the tree.
    tree = minimum_spanning_tree(d + (1 - np.eye(n))).tocoo()
    k = np.argmax(tree.data)
    if tree.data[k] - 1 < min_gap_um:
        return None
    keep = np.arange(tree.data.size) != k
    graph = sparse.coo_matrix((np.ones(keep.sum()), (tree.row[keep], tree.col[keep])),
                              shape=(n, n))
    _, side = connected_components(graph, directed=False)
    side = side == side[tree.col[k]]
    same = side[:, None] == side[None, :]
    upper = np.triu(np.ones((n, n), bool), 1) & ~np.isnan(similarity)
    within, across = similarity[upper & same], similarity[upper & ~same]
    if within.size == 0 or across.size == 0:
        return None
    w, x = within.mean(), across.mean()
    return side if w - x > x - threshold else None


def dissolve_one_session(labels: np.ndarray, session: np.ndarray) -> np.ndarray:
    """Clusters whose units are all of one session (the halves of a sorter split left
    without a match on any other day) become -1: labels (N,), session (N,) -> (N,)."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    units = np.flatnonzero(labels >= 0)
    if not units.size:
        return labels
    size = labels.max() + 1
    first = np.full(size, -1, np.int64)
    first[labels[units][::-1]] = np.asarray(session)[units][::-1]  # a session of each cluster
    other = np.zeros(size, bool)
    np.logical_or.at(other, labels[units], np.asarray(session)[units] != first[labels[units]])
    labels[units[~other[labels[units]]]] = -1
    return labels


def dissolve_singletons(labels: np.ndarray) -> np.ndarray:
    """Clusters with one unit become -1."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    valid = labels >= 0
    counts = np.bincount(labels[valid]) if valid.any() else np.zeros(0, np.int64)
    lone = valid.copy()
    lone[valid] = counts[labels[valid]] == 1
    labels[lone] = -1
    return labels


def equal_prior_threshold(similarity: np.ndarray, matched: np.ndarray) -> float:
    """The LDA boundary with equal class priors, in weighted-similarity units: halfway between
    the mean similarity of matched and of unmatched candidate pairs. (P,), (P,) bool -> float:
    inf when no pair is matched, -inf when every pair is (nothing below it to split)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    matched = np.asarray(matched, bool)
    if not matched.any():
        return float("inf")
    if matched.all():
        return float("-inf")
    return float(0.5 * (similarity[matched].mean() + similarity[~matched].mean()))


def sure_split_threshold(similarity: np.ndarray, matched: np.ndarray, level: float) -> float:
    """The weighted similarity below which a pair is a match with posterior at most ``level``
    as the LDA reads the final clustering's two classes (candidate pairs in one cluster, and
    the rest: one normal density each, their pooled variance, equal priors). It confirms the
    split's cuts where no match probability could be fitted (a small study), at the level
    the probability would confirm them (autoCuration.cut_probability). (P,), (P,) bool ->
    float: below the equal-prior threshold by log((1 - level) / level) variance / (mean
    matched - mean unmatched); inf when no pair is matched, -inf when every pair is (or the
    matched pairs are no more alike than the rest)."""
    middle = equal_prior_threshold(similarity, matched)  # and its empty classes
    if not np.isfinite(middle):
        return middle
    similarity = np.asarray(similarity, dtype=np.float64)
    matched = np.asarray(matched, bool)
    mean_m, mean_u = similarity[matched].mean(), similarity[~matched].mean()
    if mean_m <= mean_u:
        return float("-inf")
    variance = (((similarity[matched] - mean_m) ** 2).sum()
                + ((similarity[~matched] - mean_u) ** 2).sum()) / similarity.size
    odds = np.log((1.0 - level) / level)
    return float(middle - odds * variance / (mean_m - mean_u))


def curate(labels, session, pairs, similarity, linkable, threshold,
           auto_split: bool = True, positions: np.ndarray | None = None,
           position_gap_um: float = 7.0, probability: np.ndarray | None = None,
           cut_probability: float = 1.0, same_neuron: np.ndarray | None = None,
           distance_ratio: np.ndarray | None = None, max_distance_ratio: float = np.inf,
           split_distance_ratio: float = np.inf, unit_positions: np.ndarray | None = None,
           amplitude: np.ndarray | None = None, succession_probability: float = 0.0,
           max_session_gap: int = 0, non_match_share: np.ndarray | None = None,
           pooled_level: float = 0.0, amplitude_step: float = 0.0,
           rejoin_distance_ratio: float = 0.0, amplitude_split: bool = False,
           probability_split: bool = False,
           distance_split_probability: float = DISTANCE_SPLIT_PROBABILITY,
           split_below: float | None = None,
           compared_amplitude: np.ndarray | None = None,
           unit_motion: np.ndarray | None = None, grid_period_um: float = 0.0
           ) -> CurationResult:
    """The curation steps, then dissolve single-unit clusters: same-session conflicts, the split
    at ``threshold`` (``auto_split``; at ``split_below`` instead when given: a study too small
    to fit the probability, :func:`sure_split_threshold`), and with ``positions`` (N, D) um the
    split at position gaps (:func:`split_by_position`). With ``probability`` and
    ``cut_probability`` below 1, a cut of either split stands only where the mean match
    probability between its sides is at most ``cut_probability``
    (:func:`rejoin_by_probability`); the pairs it keeps together are ``kept_pairs``; with
    ``distance_ratio`` (Q,), a cut whose sides' mean ratio is above ``max_distance_ratio``
    stands whatever its probability. Last, with ``unit_positions`` (N, D) um and ``amplitude``
    (N,) uV, each cluster is split where its groups lie on average more than
    ``split_distance_ratio`` spreads apart (:func:`split_by_distance`), the spread learned from
    the pairs the curated clusters hold (:func:`noise_of_clusters`), unless the mean or the
    median probability across is above ``distance_split_probability``. With
    ``succession_probability`` above 0, clusters where one neuron followed another are split
    (:func:`split_successions`, on the linkable pairs at most ``max_session_gap`` sessions
    apart, 0: any); with ``amplitude`` and ``amplitude_step`` above 0, also where the amplitude
    steps in time by more than that many times the 99th percentile of one neuron's |log
    amplitude ratio| (the same step, reason split_at_amplitude_step). With ``probability``, each
    cluster is last split into the parts its pairs within ``max_session_gap`` that may link
    connect (:func:`split_unlinked`, reason split_unlinked). Units of one session joined by
    ``same_neuron`` (K, 2) (sorter splits) are one neuron for the conflict step
    (:func:`resolve_conflicts`). With ``non_match_share`` (Q,) and ``pooled_level`` above 0, the
    veto also undoes cuts whose pairs, pooled, are unlike non-matches
    (:func:`rejoin_by_probability`). With ``rejoin_distance_ratio`` above 0, the cuts left
    standing are also undone where the two sides are alike in all but similarity
    (:func:`rejoin_alike`, the spread learned from the curated clusters as for the split at
    distance). With ``amplitude_split``, ``probability``, ``amplitude`` and ``cut_probability``
    below 1, after the split at distance each cluster is also split where groups of its units
    are below ``cut_probability`` on average and their median amplitudes lie farther apart than
    one neuron's (:func:`split_by_amplitude`, reason split_at_amplitude). With
    ``probability_split``, then each cluster is split where groups of its units are below
    ``cut_probability`` on average and the veto lets the cut stand
    (:func:`split_by_probability`, reason split_at_low_probability).

    labels: (N,) clusters from the final clustering; session: (N,); pairs: (Q, 2) every
    within-cluster pair; similarity: (Q,) weighted similarity; linkable: (Q,) bool;
    probability: (Q,) match probability of the pairs, or None. compared_amplitude: (N,) uV,
    the amplitudes that the steps above compare between units (the footprints',
    features.footprint_amplitude), where ``amplitude`` stays the signal-to-noise of the
    spreads of position; None: ``amplitude`` for both. unit_motion: (N,) um, each unit's
    recorded less its corrected depth, and grid_period_um, the depth after which the contact
    layout repeats: the spreads of position widen between units seen at other phases of the
    channel grid (:mod:`kilomatch.position_noise`); None or 0: no phase term.
    """
    # the spreads of position read each unit's signal-to-noise; every other use compares
    # the amplitudes of two units or groups
    peak_amplitude = amplitude
    if compared_amplitude is not None:
        amplitude = compared_amplitude
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    session = np.asarray(session)
    after_conflicts, removed_c = resolve_conflicts(labels, session, pairs, similarity,
                                                   same_neuron)
    after_conflicts = dissolve_singletons(after_conflicts)
    removed_s = removed_p = np.empty((0, 2), np.int64)
    final = after_conflicts
    if auto_split:
        final, removed_s = split_clusters(after_conflicts, pairs, similarity, linkable,
                                          threshold if split_below is None else split_below)
        final = dissolve_singletons(final)
    if positions is not None and np.isfinite(threshold):
        final, removed_p = split_by_position(final, positions, pairs, similarity, linkable,
                                             threshold, position_gap_um)
    kept = np.empty((0, 2), np.int64)
    if probability is not None and cut_probability < 1:
        final, standing = rejoin_by_probability(after_conflicts, final, pairs, probability,
                                                cut_probability, distance_ratio,
                                                max_distance_ratio, non_match_share,
                                                pooled_level, amplitude)
        removed_s, kept_s = _split_rows(removed_s, standing)
        removed_p, kept_p = _split_rows(removed_p, standing)
        kept = np.vstack([kept_s, kept_p])
        kept = kept[np.lexsort((kept[:, 1], kept[:, 0]))]
    removed_d = np.empty((0, 2), np.int64)
    split_ratio = None
    rejoining = rejoin_distance_ratio > 0 and (len(removed_s) or len(removed_p))
    split_noise = None
    if probability is not None and unit_positions is not None and amplitude is not None \
            and (np.isfinite(split_distance_ratio) or rejoining):
        split_noise = noise_of_clusters(final, pairs, linkable, unit_positions,
                                        peak_amplitude, session, unit_motion, grid_period_um)
        split_ratio = position_noise.distance_ratio(unit_positions, peak_amplitude, pairs,
                                                    split_noise, session, unit_motion)
    if split_ratio is not None and rejoining:
        # only the threshold split's cuts: the position split's rest on a jump in position
        # (on e +5000, the fresh seeds' blind check, rejoining them joined three successions)
        final, standing = rejoin_alike(after_conflicts, final, pairs, probability, linkable,
                                       session, split_ratio, rejoin_distance_ratio, amplitude,
                                       pairs_in(pairs, removed_p))
        removed_s, back_s = _split_rows(removed_s, standing)
        removed_p, back_p = _split_rows(removed_p, standing)
        kept = np.vstack([kept, back_s, back_p])
        kept = kept[np.lexsort((kept[:, 1], kept[:, 0]))]
    if split_ratio is not None and np.isfinite(split_distance_ratio):
        split, removed_d = split_by_distance(final, pairs, split_ratio, split_distance_ratio)
        # a split at distance stands unless the probability is sure its sides are one
        split, removed_d = rejoin_by_probability(final, split, pairs, probability,
                                                 distance_split_probability, median=True)
        final = split
    removed_n, reason_n = np.empty((0, 2), np.int64), np.empty(0, np.int8)
    removed_a = np.empty((0, 2), np.int64)
    log_amplitude, step, limit = None, np.inf, np.inf
    if amplitude is not None and (amplitude_step > 0 or amplitude_split):
        # in units of one neuron's spread of amplitude, learned from the clusters as they
        # stand (their few wrong pairs hardly move its median)
        log_amplitude = log_amplitude_of(amplitude)
        limit = _amplitude_limit(final, pairs, amplitude)
    if amplitude_split and probability is not None and cut_probability < 1 \
            and np.isfinite(limit):
        # the cut level of the veto and the amplitude limit of its pooled evidence: a cut
        # there is one the veto would let stand, though the similarity did not make it
        before_split, gap = final, max(limit, np.log(AMPLITUDE_STEP_MIN_FACTOR))
        final, removed_a = split_by_amplitude(final, pairs, probability, log_amplitude,
                                              cut_probability, gap)
        if len(removed_a):
            log.info("split at a gap of amplitude (autoCuration.amplitude_split): %d clusters, "
                     "%d pairs taken apart (mean match probability across below %.3g, median "
                     "amplitudes more than %.2fx apart)",
                     np.unique(before_split[removed_a[:, 0]]).size, len(removed_a),
                     cut_probability, np.exp(gap))
    removed_b = np.empty((0, 2), np.int64)
    if probability_split and probability is not None and cut_probability < 1:
        before_split = final
        final, removed_b = split_by_probability(
            final, pairs, probability, cut_probability, distance_ratio, max_distance_ratio,
            non_match_share, pooled_level, amplitude)
        if len(removed_b):
            log.info("split where the match probability is low (autoCuration."
                     "probability_split): %d clusters, %d pairs taken apart (mean match "
                     "probability across below %.3g, and the veto did not join them back)",
                     np.unique(before_split[removed_b[:, 0]]).size, len(removed_b),
                     cut_probability)
    if amplitude is not None and amplitude_step > 0:
        step = learned_step(limit, amplitude_step)
        if np.isfinite(step):
            log.info("%samplitude of the clusters' units: one neuron's units within a "
                     "factor %.2f (99th percentile); a step of amplitude cuts beyond %.2f%s",
                     "peak " if compared_amplitude is None else "footprint ",
                     np.exp(limit), np.exp(step),
                     " (the least step)" if step > amplitude_step * limit else "")
    removed_u = np.empty((0, 2), np.int64)
    if probability is not None:
        near = np.asarray(linkable, bool)  # the candidate pairs: where anything was compared
        if max_session_gap > 0:  # (and where the probability was fitted)
            gap = np.abs(session[pairs[:, 0]] - session[pairs[:, 1]])
            near = near & (gap <= max_session_gap)
        if succession_probability > 0 or np.isfinite(step):
            final, removed_n, reason_n = split_successions(
                final, pairs, probability, near, session, succession_probability,
                log_amplitude, step)
        final, removed_u = split_unlinked(final, pairs, near)
    final = dissolve_one_session(final, session)
    removed = np.vstack([removed_c, removed_s, removed_p, removed_d, removed_a, removed_b,
                         removed_n, removed_u])
    reason = np.concatenate([np.full(len(removed_c), CONFLICT), np.full(len(removed_s), SPLIT),
                             np.full(len(removed_p), POSITION), np.full(len(removed_d), DISTANCE),
                             np.full(len(removed_a), AMPLITUDE),
                             np.full(len(removed_b), LOW_PROBABILITY), reason_n,
                             np.full(len(removed_u), UNLINKED)])
    return CurationResult(final, after_conflicts, removed, reason.astype(np.int8),
                          float(threshold), kept_pairs=kept, split_distance_ratio=split_ratio,
                          amplitude_step=float(step), split_position_noise=split_noise)


def noise_of_clusters(labels, pairs, linkable, positions, amplitude, session=None,
                      unit_motion=None, grid_period_um: float = 0.0):
    """The spread of one neuron's positions (position_noise.PositionNoise) learned from the
    linkable pairs (``linkable`` (Q,)) among ``pairs`` (Q, 2) that the clusters ``labels``
    (N,) hold; positions (N, D) um, amplitude (N,) uV; with ``session`` (N,) (0-based), each
    session's own variance; with ``unit_motion`` (N,) um and ``grid_period_um``, the
    variance of the grid's phase. None when too few pairs to learn it.

    Why the clusters and not the probability's sure pairs: the distance is part of the
    probability's evidence, so its sure pairs are the closest matches, and a spread learned
    from them is too tight where the motion left more error (at 200 sessions it cut 36,000 of
    49,000 true pairs). The curated clusters hold matches of every distance, and their few
    wrong pairs hardly move the medians the spread is fitted to."""
    labels = np.asarray(labels)
    held = np.asarray(linkable, bool) & (labels[pairs[:, 0]] == labels[pairs[:, 1]]) \
        & (labels[pairs[:, 0]] >= 0)
    noise = position_noise.noise_of_pairs(positions, amplitude, pairs[held], session,
                                          unit_motion, grid_period_um)
    if noise is not None:
        log.info("position noise of the curated clusters' pairs: %s",
                 position_noise.describe(noise))
    return noise


def _split_rows(rows: np.ndarray, among: np.ndarray):
    """Rows (R, 2) that are / are not rows of ``among`` (M, 2): (found (R1, 2), rest (R2, 2))."""
    rows = np.asarray(rows, np.int64).reshape(-1, 2)
    found = pairs_in(rows, among)
    return rows[found], rows[~found]


def pairs_in(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
    """(R,) bool: whether each unit pair of ``rows`` (R, 2) is a row of ``among`` (M, 2)."""
    view = np.dtype((np.void, 16))  # one int64 pair as one comparable item
    rows = np.ascontiguousarray(np.asarray(rows, np.int64).reshape(-1, 2))
    among = np.ascontiguousarray(np.asarray(among, np.int64).reshape(-1, 2))
    return np.isin(rows.view(view).ravel(), among.view(view).ravel())


def curate_by_probability(labels, session, pairs, probability, threshold: float = 0.5,
                          auto_split: bool = True, positions: np.ndarray | None = None,
                          position_gap_um: float = 7.0, same_neuron: np.ndarray | None = None
                          ) -> CurationResult:
    """Curation of clusters made from the match probability: split each cluster where the
    mean probability between its groups of units is below ``threshold``
    (:func:`split_by_average_link`, with ``auto_split``), then drop same-session conflicts
    by probability, then dissolve single-unit clusters. Splitting first lets two units of
    one session fall into different groups instead of one of them being dropped.

    labels: (N,); session: (N,); pairs: (Q, 2) every within-cluster pair of ``labels``;
    probability: (Q,) (0 for pairs that cannot link).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    removed_s = np.empty((0, 2), np.int64)
    split = np.asarray(labels, np.int64)
    if auto_split:
        split, removed_s = split_by_average_link(labels, pairs, probability, threshold)
    final, removed_c = resolve_conflicts(split, session, pairs, probability, same_neuron)
    final = dissolve_singletons(final)
    removed_p = np.empty((0, 2), np.int64)
    if positions is not None:
        final, removed_p = split_by_position(final, positions, pairs, probability,
                                             probability > 0, threshold, position_gap_um)
    final = dissolve_one_session(final, session)
    removed = np.vstack([removed_s, removed_c, removed_p])
    reason = np.concatenate([np.full(len(removed_s), AVERAGE),
                             np.full(len(removed_c), CONFLICT),
                             np.full(len(removed_p), POSITION)])
    return CurationResult(final, dissolve_singletons(split), removed, reason.astype(np.int8),
                          float(threshold))


def pooled_non_match_p(share: np.ndarray) -> float:
    """How likely pairs this unlike non-matches are if they all were non-matches: Fisher's
    combination of the pairs' non-match shares ``share`` (any shape; NaN: no evidence, left
    out), -2 sum(log share) against chi-square with 2k degrees of freedom. 1 without pairs."""
    from scipy.stats import chi2
    share = np.asarray(share, np.float64)
    share = share[~np.isnan(share)]
    if not share.size:
        return 1.0
    return float(chi2.sf(-2.0 * np.log(share).sum(), 2 * share.size))


def _pooled_join(share: np.ndarray, level: float) -> bool:
    """Whether the pairs across two groups, their non-match shares ``share`` (any shape), say
    together that the groups are not two neurons: each scores above the known non-matches'
    median (Fisher's combination would let a few strong pairs outweigh pairs that look like
    plain non-matches) and pooled_non_match_p is below ``level``."""
    if np.nanmax(share, initial=0.0) > POOLED_MAX_SHARE:
        return False
    return pooled_non_match_p(share) < level


def learned_step(limit: float, amplitude_step: float) -> float:
    """The step of amplitude (natural log) that cuts a cluster in time: ``amplitude_step``
    (autoCuration.amplitude_step) times one neuron's spread ``limit`` (_amplitude_limit, log),
    AMPLITUDE_STEP_MIN_FACTOR at least."""
    return max(amplitude_step * limit, np.log(AMPLITUDE_STEP_MIN_FACTOR))


def log_amplitude_of(amplitude: np.ndarray) -> np.ndarray:
    """Natural log of amplitudes (N,) uV, floored at 1e-3 uV (a flat unit reads 0)."""
    return np.log(np.maximum(np.asarray(amplitude, np.float64), 1e-3))


def _amplitude_limit(labels, pairs, amplitude,
                     quantile: float = POOLED_AMPLITUDE_QUANTILE) -> float:
    """``quantile`` of |log amplitude ratio| of one neuron's units, from the ``pairs`` (Q, 2)
    within the clusters ``labels`` (N,); amplitude (N,) uV. inf without such pairs."""
    return spread_limit(labels, pairs, log_amplitude_of(amplitude), quantile)


def spread_limit(labels, pairs, log_value, quantile: float = POOLED_AMPLITUDE_QUANTILE
                 ) -> float:
    """``quantile`` of |log ratio| of one neuron's units' values (log_value (N,), natural
    log), from the ``pairs`` (Q, 2) within the clusters ``labels`` (N,). inf without such
    pairs."""
    from scipy.stats import norm
    held = held_together(labels, pairs)
    if not held.any():
        return np.inf
    # from the median, as a half-normal's quantile: the clusters still hold the wrong pairs
    # the curation is removing (on high-turnover data their own 99th percentile was twice
    # the matches')
    median = np.median(np.abs(log_value[pairs[held, 0]] - log_value[pairs[held, 1]]))
    return float(median * norm.ppf(0.5 + quantile / 2) / norm.ppf(0.75))


def _join_parts(before, after, pairs, joinable):
    """Join again, within each cluster of ``before`` (N,) that ``after`` (N,) cut into parts
    (units -1 in ``after`` are parts of their own), the two groups of highest score while
    one may join: ``joinable(units, rows)`` gives, for a cluster's sorted units and the rows
    of ``pairs`` (Q, 2) inside it, a function of its groups (lists of positions in
    ``units``) that returns their (G, G) scores, -inf where two groups may not join.
    Returns (labels (N,), removed (R, 2) pairs of one cluster of ``before`` left apart,
    sorted)."""
    before = np.asarray(before, np.int64)
    labels = np.array(after, dtype=np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    next_label = max(int(labels.max(initial=-1)), int(before.max(initial=-1))) + 1
    inside = (before[pairs[:, 0]] == before[pairs[:, 1]]) & (before[pairs[:, 0]] >= 0)
    cut = inside & ((labels[pairs[:, 0]] != labels[pairs[:, 1]]) | (labels[pairs[:, 0]] < 0))
    removed = []
    for units, rows in _cluster_members(before, pairs, np.unique(before[pairs[cut, 0]])):
        score = joinable(units, rows)
        part = labels[units]
        # each unit dropped to -1 (a lone unit) is a part of its own
        lone = part < 0
        part[lone] = next_label + np.arange(lone.sum())
        next_label += int(lone.sum())
        groups = [np.flatnonzero(part == g) for g in np.unique(part)]
        while len(groups) > 1:
            scores = score(groups)
            np.fill_diagonal(scores, -np.inf)
            i, j = np.unravel_index(np.argmax(scores), scores.shape)
            if scores[i, j] == -np.inf:
                break
            i, j = min(i, j), max(i, j)
            groups[i] = np.sort(np.concatenate([groups[i], groups.pop(j)]))
        for g in groups:
            labels[units[g]] = part[g].min()
        group_of = np.empty(units.size, np.int64)
        for k, g in enumerate(groups):
            group_of[g] = k
        a, b = np.nonzero(np.triu(group_of[:, None] != group_of[None, :], 1))
        removed.append(np.column_stack([units[a], units[b]]))
    return labels, sorted_pairs(removed)


def rejoin_alike(before, after, pairs, probability, linkable, session, distance_ratio,
                 max_ratio: float, amplitude, keep_apart: np.ndarray | None = None):
    """Undo the cuts that only the units' similarity makes: join again two parts of a cut
    cluster when every linkable pair across has a match probability above 0 (the
    probability rules none out), the parts lie on average at most ``max_ratio`` spreads
    apart (``distance_ratio`` (Q,), :mod:`kilomatch.position_noise`), their median
    amplitudes differ by at most REJOIN_AMPLITUDE_QUANTILE of one neuron's (learned from the
    pairs ``after`` holds; REJOIN_AMPLITUDE_MIN_FACTOR at least), a pair across is of
    consecutive sessions, and no pair across is one of ``keep_apart`` (Q,) bool (cut by
    another rule). The two parts of highest mean probability across join first.

    Why: a small unit's waveform correlates little with its neuron's other units, so the
    similarity puts it below the threshold and the probability gives it its floor, the
    value of most non-matches (benchmarks/RESULTS.md, "Pooled evidence"): on the low
    amplitude and sorter-error studies the split at the threshold took such units from
    their neuron, and curation lowered F1. Position and amplitude do not fade with the
    amplitude as the waveform's correlation does. The consecutive sessions keep apart the
    successions of high-turnover studies, whose wrong cuts are of neurons recorded sessions
    apart (RESULTS.md, "Session 10").

    before, after: (N,) labels (-1 none); pairs: (Q, 2) every within-cluster pair of
    ``before``; probability: (Q,); linkable: (Q,) bool; session: (N,); amplitude: (N,) uV.
    Returns (labels (N,), removed (R, 2) pairs of one cluster of ``before`` left apart,
    sorted).
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    linkable = np.asarray(linkable, bool)
    session = np.asarray(session)
    amp_limit = max(_amplitude_limit(np.asarray(after), pairs, amplitude,
                                     REJOIN_AMPLITUDE_QUANTILE),
                    np.log(REJOIN_AMPLITUDE_MIN_FACTOR))
    log_amp = log_amplitude_of(amplitude)
    # per pair: its probability where it may link (NaN where not), ruled out where it is 0
    p = np.where(linkable, np.asarray(probability, np.float64), np.nan)
    gap = np.abs(session[pairs[:, 0]] - session[pairs[:, 1]]).astype(np.float64)
    nearest = np.where(linkable, gap, np.inf)
    barred = np.zeros(len(pairs)) if keep_apart is None else np.asarray(keep_apart, np.float64)

    def joinable(units, rows):
        prob = _cluster_similarity(units, pairs[rows], p[rows], missing=np.nan)
        far = _cluster_similarity(units, pairs[rows], distance_ratio[rows], missing=np.nan)
        gaps = _cluster_similarity(units, pairs[rows], nearest[rows], missing=np.inf)
        bar = _cluster_similarity(units, pairs[rows], barred[rows]) > 0

        def score(groups):
            out = np.full((len(groups), len(groups)), -np.inf)
            med = [np.median(log_amp[units[g]]) for g in groups]
            for i, a in enumerate(groups):
                for j, b in enumerate(groups[:i]):
                    across = prob[np.ix_(a, b)]
                    known = across[~np.isnan(across)]
                    if known.size and (known > 0).all() and not bar[np.ix_(a, b)].any() and \
                            np.nanmean(far[np.ix_(a, b)]) <= max_ratio and \
                            abs(med[i] - med[j]) <= amp_limit and \
                            gaps[np.ix_(a, b)].min() <= 1:
                        out[i, j] = out[j, i] = known.mean()
            return out
        return score
    return _join_parts(before, after, pairs, joinable)


def split_by_probability(labels, pairs, probability, level: float,
                         distance_ratio: np.ndarray | None = None,
                         max_distance_ratio: float = np.inf,
                         non_match_share: np.ndarray | None = None, pooled_level: float = 0.0,
                         amplitude: np.ndarray | None = None):
    """Split the clusters that hold a pair below the cut level of the match probability where
    groups of their units are, on average, below it (average linkage,
    :func:`split_by_average_link`), then let the veto of the similarity's cuts judge each cut
    (:func:`rejoin_by_probability` with the same arguments: pooled evidence of small units'
    pairs at the probability's floor, amplitudes, distance ratio). The cuts the clustering's
    similarity never proposed: IHDBSCAN joins two neurons whose pairs are above its split
    threshold though the probability says they are two (benchmarks/RESULTS.md, session 48).

    labels: (N,); pairs: (Q, 2) within-cluster pairs; probability: (Q,); level: the cut
    level. Returns (labels, removed (R, 2) pairs across the cuts that stand).
    """
    labels = np.asarray(labels)
    probability = np.asarray(probability, np.float64)
    clusters = clusters_below(labels, pairs, probability, level)
    split, _ = split_by_average_link(labels, pairs, probability, level, clusters)
    return rejoin_by_probability(labels, split, pairs, probability, level, distance_ratio,
                                 max_distance_ratio, non_match_share, pooled_level, amplitude)


def rejoin_by_probability(before, after, pairs, probability, threshold: float,
                          distance_ratio: np.ndarray | None = None,
                          max_distance_ratio: float = np.inf,
                          non_match_share: np.ndarray | None = None, pooled_level: float = 0.0,
                          amplitude: np.ndarray | None = None, median: bool = False):
    """Undo the cuts of a split that the match probability contradicts.

    ``after`` splits the clusters of ``before`` into parts (units of one cluster of
    ``before`` with different labels in ``after``, or -1). Within each split cluster the parts
    are joined again by average linkage: the two groups with the highest mean probability
    between them merge while that mean is above ``threshold``. A cut survives only where
    the units on its two sides are, on average, probably not one neuron; with ``median``
    two groups also merge where the median probability of their pairs across is above
    ``threshold`` (one or two pairs read low do not keep them apart). With
    ``distance_ratio`` (Q,) (each pair's distance over the spread of matches at its
    amplitudes, :mod:`kilomatch.position_noise`), two groups whose mean ratio is above
    ``max_distance_ratio`` never merge, whatever their probability: they lie farther apart
    than the position noise lets one neuron's units lie.

    With ``pooled_level`` above 0, two groups also merge where the evidence of all the pairs
    across, pooled, says they are not non-matches (:func:`_pooled_join`: each pair's
    ``non_match_share`` (Q,), the share of known non-matches scoring at least as high as
    the pair, linking.within_cluster_share, at most POOLED_MAX_SHARE, and their
    :func:`pooled_non_match_p` below ``pooled_level``), their median amplitudes
    (``amplitude`` (N,) uV) within POOLED_AMPLITUDE_QUANTILE of the cut clusters' pairs, and
    not farther apart than ``max_distance_ratio``. The calibrated probability gives most
    pairs of small units its floor, the value of most non-matches (one neuron's small units
    correlate little); their scores still rank above most non-matches', and a unit's several
    pairs to the rest of its cluster say together what one pair cannot. Pairs of
    probability 0 count as non-matches (share 1).

    before, after: (N,) labels (-1 none); pairs: (Q, 2) every within-cluster pair of
    ``before``; probability: (Q,) (0 for pairs that cannot link; pairs not listed count 0).
    Returns (labels (N,), removed (R, 2) pairs of one cluster of ``before`` left apart,
    sorted).
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    probability = np.asarray(probability, np.float64)
    pooling = bool(pooled_level) and non_match_share is not None
    if pooling:
        # a pair the probability rules out (0; or that cannot link) is a non-match's
        share = np.where(probability > 0, np.asarray(non_match_share, np.float64), 1.0)
        amp_limit = np.inf if amplitude is None else _amplitude_limit(
            np.asarray(after), pairs, amplitude)
        log_amp = log_amplitude_of(np.ones(len(before)) if amplitude is None else amplitude)

    def joinable(units, rows):
        p = _cluster_similarity(units, pairs[rows], probability[rows])
        far = None if distance_ratio is None else \
            _cluster_similarity(units, pairs[rows], distance_ratio[rows])
        pooled = None if not pooling else _cluster_similarity(
            units, pairs[rows], share[rows], missing=np.nan)

        def score(groups):
            mean = np.array([[p[np.ix_(a, b)].mean() for b in groups] for a in groups])
            # above the level: more probable than non-matches; or, pooled over the pairs
            # across, unlike non-matches (pooled_non_match_p)
            join = mean > threshold
            if median:  # or most pairs across: one pair a fold model reads low is not a cut
                join |= np.array([[np.median(p[np.ix_(a, b)]) for b in groups]
                                  for a in groups]) > threshold
            if far is not None:
                apart = np.array([[far[np.ix_(a, b)].mean() for b in groups] for a in groups])
                join &= apart <= max_distance_ratio
            if pooled is not None:
                med = np.array([np.median(log_amp[units[g]]) for g in groups])
                unlike = np.array([[_pooled_join(pooled[np.ix_(a, b)], pooled_level)
                                    for b in groups] for a in groups])
                unlike &= np.abs(med[:, None] - med[None, :]) <= amp_limit
                if far is not None:
                    unlike &= apart <= max_distance_ratio
                join |= unlike
            mean[~join] = -np.inf
            return mean
        return score
    return _join_parts(before, after, pairs, joinable)
