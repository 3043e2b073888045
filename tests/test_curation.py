"""Tests of kilomatch.curation (docs/method.md, section 9) on hand-made clusters."""

import itertools

import numpy as np
import pytest
from scipy import sparse

from kilomatch import curation
from kilomatch.clustering import renumber
from kilomatch.curation import (
    AMPLITUDE,
    AMPLITUDE_STEP,
    CONFLICT,
    DISTANCE,
    LOW_PROBABILITY,
    POSITION,
    REASONS,
    SPLIT,
    SUCCESSION,
    UNLINKED,
    curate,
    dissolve_singletons,
    equal_prior_threshold,
    resolve_conflicts,
    split_by_position,
    split_clusters,
    sure_split_threshold,
    within_cluster_pairs,
)


def pair_values(pairs, table, default):
    """Per-pair values from a {(i, j): value} table (i < j), default elsewhere."""
    return np.array([table.get((int(i), int(j)), default) for i, j in pairs], dtype=float)


def as_set(pairs):
    return {tuple(p) for p in np.asarray(pairs).tolist()}


def brute_within(labels):
    return [(i, j) for i, j in itertools.combinations(range(len(labels)), 2)
            if labels[i] >= 0 and labels[i] == labels[j]]


# ---------------------------------------------------------------- within_cluster_pairs

@pytest.mark.parametrize("seed", range(3))
def test_within_cluster_pairs_lists_exactly_all_pairs(seed):
    """All (i < j) with equal labels >= 0, sorted, no duplicates; -1 units pair with nobody."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 8, 60)
    got = within_cluster_pairs(labels)
    np.testing.assert_array_equal(got, np.array(brute_within(labels)).reshape(-1, 2))
    assert got.dtype == np.int64


def test_within_cluster_pairs_empty():
    """No cluster with two units -> an empty (0, 2) array."""
    assert within_cluster_pairs(np.array([-1, 0, 1, -1])).shape == (0, 2)
    assert within_cluster_pairs(np.array([], dtype=int)).shape == (0, 2)


# ---------------------------------------------------------------- conflicts

def test_same_session_conflict_drops_lower_mean_similarity():
    """Cluster {0, 1, 2, 3} with units 1 and 2 both from session 2: unit 2 has the lower mean
    similarity to the rest, so it is dropped (-1) and its pairs with the remaining members are
    recorded as same_session_conflict; the rest stays one cluster."""
    labels = np.array([5, 5, 5, 5, -1])
    session = np.array([1, 2, 2, 3, 1])
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 1): 3.0, (1, 3): 2.5, (0, 3): 2.8, (0, 2): 1.0, (2, 3): 0.8,
                              (1, 2): 0.0}, 0.0)
    res = curate(labels, session, pairs, sim, np.ones(len(pairs), bool), threshold=0.5)
    # mean similarity: unit 1 -> (3.0 + 0.0 + 2.5) / 3, unit 2 -> (1.0 + 0.0 + 0.8) / 3
    assert res.labels[2] == -1 and res.labels_after_conflicts[2] == -1
    assert res.labels[0] == res.labels[1] == res.labels[3] >= 0 and res.labels[4] == -1
    assert as_set(res.removed_pairs) == {(0, 2), (1, 2), (2, 3)}
    assert REASONS[CONFLICT] == "same_session_conflict"
    np.testing.assert_array_equal(res.removed_reason, [CONFLICT] * 3)


def test_conflict_is_decided_by_mean_not_max_similarity():
    """Unit 1 has the single best pair but the lower mean: unit 1 (not 2) is dropped."""
    labels = np.zeros(4, int)
    session = np.array([1, 2, 2, 3])
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 1): 5.0, (1, 3): -2.0, (0, 2): 1.6, (2, 3): 1.6}, 0.0)
    new, removed = resolve_conflicts(labels, session, pairs, sim)
    np.testing.assert_array_equal(new, [0, -1, 0, 0])
    assert as_set(removed) == {(0, 1), (1, 2), (1, 3)}


def test_three_way_conflict_keeps_one_unit_per_session():
    """Three units of session 1 in one cluster: the two worst go, one at a time (the mean is
    recomputed after each removal), leaving one unit per session."""
    labels = np.zeros(5, int)
    session = np.array([1, 1, 1, 2, 3])
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 3): 3.0, (0, 4): 3.0, (1, 3): 1.0, (1, 4): 1.0,
                              (2, 3): 2.0, (2, 4): 2.0, (3, 4): 3.0}, 0.0)
    new, removed = resolve_conflicts(labels, session, pairs, sim)
    np.testing.assert_array_equal(new, [0, -1, -1, 0, 0])
    # unit 1 first (pairs with 0, 2, 3, 4), then unit 2 (pairs with 0, 3, 4)
    assert [tuple(p) for p in removed.tolist()] == [(0, 1), (1, 2), (1, 3), (1, 4),
                                                    (0, 2), (2, 3), (2, 4)]


def test_conflict_pair_alone_dissolves_both():
    """A cluster of two units of one session: one is dropped (ties: the higher index), the
    other becomes a singleton and is dissolved too; the pair is recorded as a conflict."""
    labels = np.array([0, 0, 1, 1])
    session = np.array([1, 1, 1, 2])
    pairs = within_cluster_pairs(labels)
    sim = np.array([2.0, 2.0])
    res = curate(labels, session, pairs, sim, np.ones(2, bool), threshold=0.0)
    np.testing.assert_array_equal(res.labels_after_conflicts, [-1, -1, 1, 1])
    np.testing.assert_array_equal(renumber(res.labels), [-1, -1, 1, 1])
    np.testing.assert_array_equal(res.removed_pairs, [[0, 1]])
    np.testing.assert_array_equal(res.removed_reason, [CONFLICT])


def test_conflict_tie_drops_higher_index():
    """Equal mean similarity: the documented tie rule drops the higher unit index."""
    labels = np.zeros(3, int)
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 2): 2.0, (1, 2): 2.0}, 0.0)
    new, removed = resolve_conflicts(labels, np.array([1, 1, 2]), pairs, sim)
    np.testing.assert_array_equal(new, [0, -1, 0])
    assert as_set(removed) == {(0, 1), (1, 2)}


# ---------------------------------------------------------------- split

def split_case():
    """Cluster {0..3} (sessions 1-4): (0, 1) and (2, 3) above threshold 1.0, cross pairs below;
    cluster {4, 5} untouched."""
    labels = np.array([0, 0, 0, 0, 1, 1])
    session = np.array([1, 2, 3, 4, 1, 2])
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 1): 2.0, (2, 3): 1.8, (4, 5): 1.5}, 0.2)
    return labels, session, pairs, sim


def test_split_into_linkable_components():
    """A cluster whose above-threshold edges form two components becomes two clusters; the
    four cross pairs are recorded as split_below_threshold; the other cluster is kept."""
    labels, session, pairs, sim = split_case()
    res = curate(labels, session, pairs, sim, np.ones(len(pairs), bool), threshold=1.0)
    np.testing.assert_array_equal(renumber(res.labels), [1, 1, 2, 2, 3, 3])
    assert as_set(res.removed_pairs) == {(0, 2), (0, 3), (1, 2), (1, 3)}
    assert REASONS[SPLIT] == "split_below_threshold"
    np.testing.assert_array_equal(res.removed_reason, [SPLIT] * 4)
    np.testing.assert_array_equal(res.labels_after_conflicts, labels)


def test_auto_split_false_leaves_cluster():
    """With auto_split=False the same cluster stays whole and nothing is removed."""
    labels, session, pairs, sim = split_case()
    res = curate(labels, session, pairs, sim, np.ones(len(pairs), bool), threshold=1.0,
                 auto_split=False)
    np.testing.assert_array_equal(renumber(res.labels), renumber(labels))
    assert res.removed_pairs.shape == (0, 2) and res.removed_reason.size == 0


def test_chain_above_threshold_is_not_split():
    """Connectivity, not all-pairs: 0-1 and 1-2 above threshold keep {0, 1, 2} together even
    though (0, 2) is below."""
    labels = np.zeros(3, int)
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 1): 2.0, (1, 2): 2.0}, -1.0)
    new, removed = split_clusters(labels, pairs, sim, np.ones(3, bool), 1.0)
    assert new[0] == new[1] == new[2] >= 0 and removed.shape == (0, 2)


def test_unlinkable_pair_is_not_an_edge():
    """A pair above threshold but not linkable (e.g. beyond max_distance) does not hold the
    cluster together: the cluster splits and the unit left alone is dissolved."""
    labels = np.array([0, 0, 0])
    session = np.array([1, 2, 3])
    pairs = within_cluster_pairs(labels)  # (0,1), (0,2), (1,2)
    sim = np.array([2.0, 2.0, 0.0])
    linkable = np.array([True, False, False])
    res = curate(labels, session, pairs, sim, linkable, threshold=1.0)
    np.testing.assert_array_equal(renumber(res.labels), [1, 1, -1])
    assert as_set(res.removed_pairs) == {(0, 2), (1, 2)}


def test_threshold_is_strict():
    """A pair exactly at the threshold is not above it: the cluster splits."""
    labels = np.array([0, 0])
    new, removed = split_clusters(labels, np.array([[0, 1]]), np.array([1.0]),
                                  np.array([True]), 1.0)
    assert new[0] != new[1]
    np.testing.assert_array_equal(removed, [[0, 1]])


# ---------------------------------------------------------------- singletons

def test_singletons_dissolved():
    """Clusters of one unit become -1; larger ones and -1 are kept."""
    np.testing.assert_array_equal(dissolve_singletons(np.array([3, -1, 3, 7, 0, 0, 0, 2])),
                                  [3, -1, 3, -1, 0, 0, 0, -1])
    np.testing.assert_array_equal(dissolve_singletons(np.array([-1, -1])), [-1, -1])


def test_split_leaving_singleton_dissolves_it():
    """{0, 1, 2} where only (0, 1) is above threshold: {0, 1} stays, 2 becomes -1 and its two
    pairs are recorded as split."""
    labels = np.zeros(3, int)
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 1): 3.0}, 0.1)
    res = curate(labels, np.array([1, 2, 3]), pairs, sim, np.ones(3, bool), threshold=1.0)
    np.testing.assert_array_equal(renumber(res.labels), [1, 1, -1])
    assert as_set(res.removed_pairs) == {(0, 2), (1, 2)}
    np.testing.assert_array_equal(res.removed_reason, [SPLIT, SPLIT])


def test_conflict_then_split_reasons_in_order():
    """Both steps in one cluster: conflict pairs are listed first with their reason, then the
    split pairs; every final cluster has one unit per session and at least two units."""
    labels = np.zeros(6, int)
    session = np.array([1, 2, 2, 3, 4, 5])
    pairs = within_cluster_pairs(labels)
    sim = pair_values(pairs, {(0, 1): 3.0, (1, 3): 3.0, (0, 3): 3.0, (4, 5): 3.0,
                              (2, 4): 0.5, (2, 5): 0.5}, -0.5)
    res = curate(labels, session, pairs, sim, np.ones(len(pairs), bool), threshold=1.0)
    np.testing.assert_array_equal(renumber(res.labels), [1, 1, -1, 1, 2, 2])
    n_conf = int(np.sum(res.removed_reason == CONFLICT))
    assert as_set(res.removed_pairs[:n_conf]) == {(0, 2), (1, 2), (2, 3), (2, 4), (2, 5)}
    assert as_set(res.removed_pairs[n_conf:]) == {(0, 4), (0, 5), (1, 4), (1, 5), (3, 4),
                                                 (3, 5)}
    assert np.all(res.removed_reason[n_conf:] == SPLIT)
    for c in np.unique(res.labels[res.labels >= 0]):
        members = np.flatnonzero(res.labels == c)
        assert members.size >= 2 and np.unique(session[members]).size == members.size



def test_probability_vetoes_a_cut_between_probable_matches():
    """Two groups {0, 1, 2} and {3, 4, 5} of one cluster, in six sessions, with the similarity
    across them below threshold. Where the match probability across is high (small units of
    one neuron whose similarity is low), the cluster stays whole and the pairs the cut would
    have removed are kept_pairs; where it is low, the cut stands with its reason and the
    probability of each removed pair."""
    labels = np.zeros(6, int)
    session = np.arange(6)
    pairs = within_cluster_pairs(labels)
    inside = {(0, 1): 3.0, (0, 2): 3.0, (1, 2): 3.0, (3, 4): 3.0, (3, 5): 3.0, (4, 5): 3.0}
    sim = pair_values(pairs, inside, 0.2)
    across = {tuple(p) for p in pairs.tolist()} - set(inside)
    link = np.ones(len(pairs), bool)
    for p_across, whole in ((0.6, True), (0.01, False)):
        p = pair_values(pairs, {k: 0.95 for k in inside}, p_across)
        res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02)
        if whole:
            np.testing.assert_array_equal(renumber(res.labels), [1] * 6)
            assert len(res.removed_pairs) == 0 and as_set(res.kept_pairs) == across
        else:
            np.testing.assert_array_equal(renumber(res.labels), [1, 1, 1, 2, 2, 2])
            assert as_set(res.removed_pairs) == across and len(res.kept_pairs) == 0
            assert np.all(res.removed_reason == SPLIT)
    # cut_probability 1 keeps every cut whatever the probability (the 0.0.5 curation)
    res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=np.ones(15),
                 cut_probability=1.0)
    np.testing.assert_array_equal(renumber(res.labels), [1, 1, 1, 2, 2, 2])


def test_rejoin_by_average_link_keeps_a_chain_apart():
    """Three parts A={0,1}, B={2,3}, C={4,5} of one cluster: A-B probable (0.9), B-C not
    (0.01), A-C not (0.0). A and B join again; C stays apart, and a unit dropped to -1 by a
    split (6, lone) joins the part it is probably one neuron with."""
    before = np.zeros(7, int)
    after = np.array([0, 0, 1, 1, 2, 2, -1])
    pairs = within_cluster_pairs(before)
    group = np.array([0, 0, 1, 1, 2, 2, 2])
    table = {}
    for i, j in pairs.tolist():
        g = {group[i], group[j]}
        table[(i, j)] = 0.9 if g in ({0}, {1}, {2}, {0, 1}) else 0.01 if g == {1, 2} else 0.0
    p = pair_values(pairs, table, 0.0)
    labels, removed = curation.rejoin_by_probability(before, after, pairs, p, 0.05)
    np.testing.assert_array_equal(renumber(labels), [1, 1, 1, 1, 2, 2, 2])
    assert as_set(removed) == {(i, j) for i in range(4) for j in range(4, 7)}


def test_a_cut_most_pairs_across_deny_is_undone_with_the_median():
    """Two parts {0, 1, 2} and {3, 4, 5} of one neuron: 7 of the 9 pairs across sure (1.0),
    two read 0.3 (a fold model's noise). Their mean, 0.84, is under a level of 0.9, their
    median, 1.0, above: with ``median`` the cut is undone, without it the cut stands."""
    before = np.zeros(6, int)
    after = np.array([0, 0, 0, 1, 1, 1])
    pairs = within_cluster_pairs(before)
    p = pair_values(pairs, {(0, 3): 0.3, (1, 4): 0.3}, 1.0)
    labels, removed = curation.rejoin_by_probability(before, after, pairs, p, 0.9)
    assert len(set(labels[:3])) == 1 and labels[0] != labels[3] and len(removed) == 9
    labels, removed = curation.rejoin_by_probability(before, after, pairs, p, 0.9, median=True)
    assert len(set(labels)) == 1 and len(removed) == 0
    # most pairs across low: the median keeps the cut
    p = pair_values(pairs, {(0, 3): 1.0, (1, 4): 1.0}, 0.3)
    labels, removed = curation.rejoin_by_probability(before, after, pairs, p, 0.9, median=True)
    assert labels[0] != labels[3] and len(removed) == 9


def test_a_cut_farther_apart_than_position_noise_stands_whatever_its_probability():
    """Two groups {0, 1, 2} and {3, 4, 5} cut by the similarity, probable matches across
    (0.6: alike neighbours the probability cannot tell apart). With their distance ratio
    across at 6 (six times the spread of one neuron's units) the cut stands at a limit of
    4, and is vetoed at a limit of 8 or without the ratio."""
    labels = np.zeros(6, int)
    session = np.arange(6)
    pairs = within_cluster_pairs(labels)
    inside = {(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)}
    sim = pair_values(pairs, {k: 3.0 for k in inside}, 0.2)
    p = pair_values(pairs, {k: 0.95 for k in inside}, 0.6)
    ratio = pair_values(pairs, {k: 1.0 for k in inside}, 6.0)
    link = np.ones(len(pairs), bool)
    for limit, apart in ((4.0, True), (8.0, False), (np.inf, False)):
        res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02, distance_ratio=ratio, max_distance_ratio=limit)
        expected = [1, 1, 1, 2, 2, 2] if apart else [1] * 6
        np.testing.assert_array_equal(renumber(res.labels), expected)
        assert (len(res.kept_pairs) == 0) == apart


def _study_of_clusters(rng, n_neurons=40, n_sessions=6, jitter_um=2.0):
    """Clusters of one neuron each, its units (one per session) scattered by ``jitter_um``
    around its place: (labels, session, positions (N, 2) um, amplitude (N,) uV)."""
    neuron = np.repeat(np.arange(n_neurons), n_sessions)
    session = np.tile(np.arange(n_sessions), n_neurons)
    place = np.column_stack([rng.uniform(-20, 40, n_neurons), 100.0 * np.arange(n_neurons)])
    positions = place[neuron] + rng.normal(0, jitter_um, (neuron.size, 2))
    amplitude = rng.uniform(40, 300, n_neurons)[neuron]
    return neuron.copy(), session, positions, amplitude


def test_split_by_distance_takes_apart_groups_farther_than_the_limit():
    """The last step splits a cluster where its groups lie more spreads apart than
    split_distance_ratio (reason split_at_distance), the spread learned from the pairs the
    curated clusters hold: a cluster of two neurons recorded in turn 30 um apart (units of
    one neuron scatter ~3 um) is split unless the probability across is sure of a match
    (0.95: large units of a precise probe lie several spreads apart); the clusters of one
    neuron stay whole even where a tighter spread (the probability's sure pairs', passed as
    distance_ratio) puts their units many spreads apart."""
    labels, session, positions, amplitude = _study_of_clusters(np.random.default_rng(3))
    last = labels == labels.max()
    positions[last & (session >= 3), 1] += 30.0  # a second neuron takes over
    pairs = within_cluster_pairs(labels)
    sim = np.full(len(pairs), 3.0)
    link = np.ones(len(pairs), bool)
    both = last[pairs[:, 0]] & last[pairs[:, 1]]
    across = both & ((session[pairs[:, 0]] >= 3) != (session[pairs[:, 1]] >= 3))
    tight = np.full(len(pairs), 7.0)  # every pair 7 "spreads" apart by a too tight spread
    for p_across, apart in ((0.6, True), (0.95, False)):
        p = np.where(across, p_across, 0.8)  # probable matches, not sure ones
        res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02, distance_ratio=tight, split_distance_ratio=5.0,
                     unit_positions=positions, amplitude=amplitude)
        expected = labels.copy()
        if apart:
            expected[last & (session >= 3)] = labels.max() + 1
        np.testing.assert_array_equal(renumber(res.labels), renumber(expected))
        assert REASONS[DISTANCE] == "split_at_distance"
        assert np.all(res.removed_reason == DISTANCE)
        assert len(res.removed_pairs) == (9 if apart else 0)
        assert res.split_distance_ratio.shape == (len(pairs),)
    # at a level of 0.5 (autoCuration.split_distance_probability) the pairs across at 0.6,
    # more likely one neuron than two, keep the cluster whole; at 0.3 it is split
    for p_across, apart in ((0.6, False), (0.3, True)):
        p = np.where(across, p_across, 0.8)
        res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02, distance_ratio=tight, split_distance_ratio=5.0,
                     unit_positions=positions, amplitude=amplitude,
                     distance_split_probability=0.5)
        assert len(res.removed_pairs) == (9 if apart else 0)
    # without positions (or without the probability) there is no split at distance
    res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                 cut_probability=0.02, distance_ratio=tight, split_distance_ratio=5.0)
    assert len(res.removed_pairs) == 0 and res.split_distance_ratio is None


def test_the_join_keeps_apart_what_the_split_at_distance_cut():
    """The split at distance keeps the spread it read (split_position_noise): with it the
    join by probability reads the distance of any pair, and does not join back the two
    neurons in turn 30 um apart that the split cut at 0.85 across (a mean the join accepts);
    without the distances it does."""
    from kilomatch.joining import join_by_probability
    from kilomatch.position_noise import distance_ratio
    labels, session, positions, amplitude = _study_of_clusters(np.random.default_rng(3))
    last = labels == labels.max()
    positions[last & (session >= 3), 1] += 30.0
    pairs = within_cluster_pairs(labels)
    both = last[pairs[:, 0]] & last[pairs[:, 1]]
    across = both & ((session[pairs[:, 0]] >= 3) != (session[pairs[:, 1]] >= 3))
    p = np.where(across, 0.85, 0.95)
    res = curate(labels, session, pairs, np.full(len(pairs), 3.0), np.ones(len(pairs), bool),
                 threshold=1.0, probability=p, cut_probability=0.02,
                 distance_ratio=np.ones(len(pairs)), split_distance_ratio=5.0,
                 unit_positions=positions, amplitude=amplitude)
    assert len(res.removed_pairs) == 9
    ratio = distance_ratio(positions, amplitude, pairs, res.split_position_noise, session)
    np.testing.assert_allclose(ratio, res.split_distance_ratio)
    kept = join_by_probability(res.labels, pairs, p, session=session, distance_ratio=ratio,
                               max_distance_ratio=5.0, sure_level=0.9)
    np.testing.assert_array_equal(renumber(kept), renumber(res.labels))
    joined = join_by_probability(res.labels, pairs, p, session=session)
    np.testing.assert_array_equal(renumber(joined), renumber(labels))


# ---------------------------------------------------------------- against the reference
# The reference is the straightforward implementation the vectorised one replaced
# (combinations + lexsort; a sparse lookup read one pair at a time): outputs must be equal,
# values, order, dtype and shape.

def reference_within_cluster_pairs(labels):
    labels = np.asarray(labels)
    units = np.flatnonzero(labels >= 0)
    order = units[np.argsort(labels[units], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    chunks = [list(itertools.combinations(sorted(g.tolist()), 2))
              for g in np.split(order, bounds) if g.size > 1]
    pairs = np.array([p for c in chunks for p in c], dtype=np.int64).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if pairs.size else pairs


def reference_resolve_conflicts(labels, session, pairs, similarity):
    labels = np.array(labels, dtype=np.int64)
    n = labels.size
    m = sparse.coo_matrix((np.asarray(similarity, float), (pairs[:, 0], pairs[:, 1])),
                          shape=(n, n)).tocsr()
    sim = (m + m.T).tolil()
    removed = []
    for c in np.unique(labels[labels >= 0]):
        members = list(np.flatnonzero(labels == c))
        while True:
            sess = session[members]
            uniq, counts = np.unique(sess, return_counts=True)
            clash = set(uniq[counts > 1].tolist())
            if not clash:
                break
            scores = []
            for u in members:
                if session[u] in clash:
                    others = [v for v in members if v != u]
                    scores.append((np.mean([sim[u, v] for v in others]), -u, u))
            _, _, worst = min(scores)
            members.remove(worst)
            labels[worst] = -1
            removed += [(min(worst, v), max(worst, v)) for v in members]
    return labels, np.array(removed, dtype=np.int64).reshape(-1, 2)


def assert_same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def random_clusters(rng, n_clusters, max_size, n_sessions, clash_frac, n_loose=20):
    """Labels (non-contiguous ids, units shuffled, n_loose units at -1) and sessions: one
    unit per session in each cluster, except the first one and clash_frac of the others
    (unless clash_frac is 0) where 1-4 units are moved onto sessions already used there
    (two-, three-way and several clashes)."""
    sizes = rng.integers(2, max_size + 1, n_clusters)
    n = sizes.sum() + n_loose
    ids = rng.permutation(n)
    labels = np.full(n, -1, np.int64)
    session = rng.integers(0, n_sessions, n)
    start = 0
    for c, size in enumerate(sizes):
        members = ids[start:start + size]
        start += size
        labels[members] = 3 * c + 1
        sess = rng.permutation(max(n_sessions, size))[:size]
        if clash_frac > 0 and (c == 0 or rng.random() < clash_frac):
            k = rng.integers(1, min(4, size - 1) + 1)
            sess[rng.choice(size, k, replace=False)] = rng.choice(sess, k)
        session[members] = sess
    return labels, session


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [3, 1 << 20])
def test_within_cluster_pairs_matches_reference(seed, block, monkeypatch):
    """Random labels (small and >128-unit clusters, gaps in ids, -1 units, int32), filled in
    one block or in many tiny ones: the same (Q, 2) int64 array as the reference."""
    monkeypatch.setattr(curation, "_BLOCK", block)
    rng = np.random.default_rng(seed)
    labels, _ = random_clusters(rng, 12, 150 if seed % 2 else 6, 200, 0.0)
    labels[rng.random(labels.size) < 0.1] = -1
    for lab in (labels, labels.astype(np.int32), labels[:1], labels[:0], -np.ones(5, int)):
        assert_same(within_cluster_pairs(lab), reference_within_cluster_pairs(lab))


SIMILARITY_KINDS = {
    # coarse steps: many candidates share a mean, so the tie rule decides
    "coarse": lambda rng, q: rng.integers(-2, 3, q) / 2.0,
    # many magnitudes: the mean is rounded, its value depends on the summation order
    "magnitudes": lambda rng, q: rng.standard_normal(q) * 10.0 ** rng.uniform(-8, 8, q),
    # cancelling +-1e16 terms: the rounded mean changes with the order and the number of
    # terms summed, so only the reference's exact sum gives the reference's choices
    "cancelling": lambda rng, q: rng.choice([-1e16, 1e16, 1.0, 2.0], q, p=[.15, .15, .35, .35]),
}


@pytest.mark.parametrize("seed", range(12))
def test_resolve_conflicts_matches_reference(seed):
    """Random clusters, some without a clash, some with one or several; similarities with
    ties, over many magnitudes or cancelling; missing pairs (count as 0), pairs across
    clusters or with -1 units, repeated pairs, pairs in any row order and orientation: the
    same labels and removed pairs (same order) as the reference."""
    rng = np.random.default_rng(seed)
    big = seed % 2 == 1  # clusters of up to 140 units: numpy's blocked pairwise sum kicks in
    labels, session = random_clusters(rng, 6 if big else 40, 140 if big else 12,
                                      150 if big else 8, 0.5)
    pairs = within_cluster_pairs(labels)
    sim = SIMILARITY_KINDS[list(SIMILARITY_KINDS)[seed % 3]](rng, len(pairs))
    keep = rng.random(len(pairs)) > 0.2
    extra = rng.integers(0, labels.size, (30, 2))
    extra = extra[extra[:, 0] != extra[:, 1]]
    pairs = np.vstack([pairs[keep], extra])
    sim = np.concatenate([sim[keep], rng.standard_normal(len(extra))])
    order = rng.permutation(len(pairs))
    pairs, sim = pairs[order], sim[order]
    flip = rng.random(len(pairs)) < 0.5
    pairs[flip] = pairs[flip, ::-1]
    want_labels, want_removed = reference_resolve_conflicts(labels, session, pairs, sim)
    assert want_removed.shape[0] > 0  # the case has conflicts to resolve
    got_labels, got_removed = resolve_conflicts(labels, session, pairs, sim)
    assert_same(got_labels, want_labels)
    assert_same(got_removed, want_removed)


def test_resolve_conflicts_all_tied_matches_reference():
    """Every similarity equal or missing (every mean ties): the higher unit index goes first,
    cluster after cluster, exactly as in the reference; no pairs at all works too."""
    rng = np.random.default_rng(11)
    labels, session = random_clusters(rng, 30, 10, 4, 0.7)
    pairs = within_cluster_pairs(labels)
    for p, s in ((pairs, np.ones(len(pairs))), (pairs[:0], np.zeros(0))):
        want = reference_resolve_conflicts(labels, session, p, s)
        got = resolve_conflicts(labels, session, p, s)
        assert_same(got[0], want[0])
        assert_same(got[1], want[1])


def test_resolve_conflicts_without_clash_is_identity():
    """No cluster with two units of one session: labels unchanged, nothing removed."""
    rng = np.random.default_rng(5)
    labels, session = random_clusters(rng, 20, 15, 20, 0.0)
    pairs = within_cluster_pairs(labels)
    new, removed = resolve_conflicts(labels, session, pairs, rng.standard_normal(len(pairs)))
    assert_same(new, labels)
    assert_same(removed, np.empty((0, 2), np.int64))


@pytest.mark.parametrize("seed", range(4))
def test_resolve_conflicts_summation_order_matches_reference(seed):
    """Every cluster (8-40 units) clashes and the similarities cancel (+-1e16 with small
    terms): a mean summed in another order or over other terms (e.g. with the unit itself
    as a 0) drops other units, so the outputs must equal the reference's exactly."""
    rng = np.random.default_rng(100 + seed)
    labels, session = random_clusters(rng, 30, 40, 40, 1.0)
    labels[np.isin(labels, np.flatnonzero(np.bincount(labels[labels >= 0]) < 8))] = -1
    pairs = within_cluster_pairs(labels)
    sim = SIMILARITY_KINDS["cancelling"](rng, len(pairs))
    want = reference_resolve_conflicts(labels, session, pairs, sim)
    got = resolve_conflicts(labels, session, pairs, sim)
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])


# ---------------------------------------------------------------- split_by_position

def _two_neurons(n_a=4, n_b=4, gap_um=20.0, inside=2.5, across=1.5, seed=0):
    """One cluster holding neuron A (units 0..n_a-1) then neuron B, positions (N, 2) um with
    1 um scatter, B ``gap_um`` away; similarity ``inside`` within A and B, ``across`` between."""
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    pos = rng.normal(0, 1.0, (n, 2)) + np.array([0.0, 100.0])
    pos[n_a:, 1] += gap_um
    labels = np.zeros(n, np.int64)
    pairs = within_cluster_pairs(labels)
    same = (pairs[:, 0] < n_a) == (pairs[:, 1] < n_a)
    sim = np.where(same, inside, across)
    return labels, pos, pairs, sim, np.ones(len(pairs), bool)


def test_position_split_takes_apart_two_neurons_recorded_in_turn():
    """A jump in position that coincides with a drop in similarity: two clusters, every pair
    across the cut removed with its reason."""
    labels, pos, pairs, sim, link = _two_neurons()
    new, removed = split_by_position(labels, pos, pairs, sim, link, threshold=1.4)
    assert len(set(new[:4])) == 1 and len(set(new[4:])) == 1 and new[0] != new[4]
    assert as_set(removed) == {(i, j) for i in range(4) for j in range(4, 8)}
    cur = curate(labels, np.arange(8), pairs, sim, link, 1.4, positions=pos)
    assert (cur.removed_reason == POSITION).sum() == 16


def test_position_split_keeps_one_neuron_with_scattered_positions():
    """The same position gap without a drop in similarity (localisation scatter of one
    neuron) keeps the cluster whole."""
    labels, pos, pairs, sim, link = _two_neurons(inside=2.5, across=2.4)
    new, removed = split_by_position(labels, pos, pairs, sim, link, threshold=1.4)
    assert len(set(new)) == 1 and removed.shape == (0, 2)


def test_position_split_needs_the_minimum_gap():
    """A similarity drop across a gap below position_gap_um is not enough."""
    labels, pos, pairs, sim, link = _two_neurons(gap_um=3.0)
    new, _ = split_by_position(labels, pos, pairs, sim, link, threshold=1.4, min_gap_um=7.0)
    assert len(set(new)) == 1
    new, _ = split_by_position(labels, pos, pairs, sim, link, threshold=1.4, min_gap_um=1.0)
    assert len(set(new)) == 2


def test_position_split_leaves_two_unit_clusters_alone():
    """With two units there is no similarity inside the parts to compare with."""
    labels, pos, pairs, sim, link = _two_neurons(n_a=1, n_b=1, gap_um=40.0)
    new, removed = split_by_position(labels, pos, pairs, sim, link, threshold=1.4)
    assert new[0] == new[1] and removed.shape == (0, 2)


def test_position_split_recurses_into_three_neurons():
    """Three neurons in turn, 20 um apart: two cuts, three clusters."""
    rng = np.random.default_rng(3)
    pos = np.repeat(np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 40.0]]), 3, axis=0)
    pos += rng.normal(0, 0.5, pos.shape)
    labels = np.zeros(9, np.int64)
    pairs = within_cluster_pairs(labels)
    sim = np.where(pairs[:, 0] // 3 == pairs[:, 1] // 3, 2.5, 1.5)
    new, _ = split_by_position(labels, pos, pairs, sim, np.ones(len(pairs), bool), 1.4)
    assert len(set(new.tolist())) == 3
    assert all(len(set(new[k:k + 3])) == 1 for k in (0, 3, 6))


def test_equal_prior_threshold_is_halfway_between_class_means():
    sim = np.array([3.0, 2.0, 0.0, 0.5, 1.0])
    matched = np.array([True, True, False, False, False])
    assert equal_prior_threshold(sim, matched) == pytest.approx(0.5 * (2.5 + 0.5))
    assert equal_prior_threshold(sim, np.zeros(5, bool)) == np.inf
    # every candidate pair matched: no boundary, and nothing below it to split
    assert equal_prior_threshold(sim, np.ones(5, bool)) == -np.inf


def test_sure_split_threshold_is_where_the_lda_posterior_of_a_match_falls_to_the_level():
    """Two classes with pooled variance v and means m1 > m0: at equal priors the LDA's
    posterior of a match at S is 1 / (1 + exp(-(m1 - m0) (S - (m1 + m0) / 2) / v)); the
    threshold is the S where that equals the level, below the equal-prior one."""
    rng = np.random.default_rng(3)
    sim = np.concatenate([rng.normal(2.0, 0.4, 30), rng.normal(0.2, 0.5, 200)])
    matched = np.arange(230) < 30
    m1, m0 = sim[matched].mean(), sim[~matched].mean()
    v = (((sim[matched] - m1) ** 2).sum() + ((sim[~matched] - m0) ** 2).sum()) / 230
    t = sure_split_threshold(sim, matched, 0.02)
    posterior = 1 / (1 + np.exp(-(m1 - m0) * (t - 0.5 * (m1 + m0)) / v))
    assert posterior == pytest.approx(0.02)
    assert t < equal_prior_threshold(sim, matched)
    assert sure_split_threshold(sim, matched, 0.5) == pytest.approx(
        equal_prior_threshold(sim, matched))
    assert sure_split_threshold(sim, np.zeros(230, bool), 0.02) == np.inf
    assert sure_split_threshold(sim, np.ones(230, bool), 0.02) == -np.inf


def test_split_successions_takes_apart_one_neuron_followed_by_another():
    """A cluster of six units, {0, 1, 2} and {3, 4, 5} each sure to be one neuron (0.95),
    unlikely one across (0.1): split (reason split_at_succession) when the second group's
    sessions all follow the first's (a neighbour took over at the neuron's place); left whole
    when the groups interleave in time (one neuron that the probability splits by noise),
    when the probability across is above the level (0.5), when the groups are not sure
    inside (0.8: small units, whose matches the probability doubts), when one pair across
    is a sure match (a long neuron with a few doubtful sessions). When no pair across is
    within max_session_gap, nothing is known across: the succession rule cannot cut, and
    the two groups are taken apart as unlinked (split_unlinked)."""
    labels = np.zeros(6, int)
    pairs = within_cluster_pairs(labels)
    inside = {(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)}
    sim = np.full(len(pairs), 3.0)
    link = np.ones(len(pairs), bool)
    for session, p_inside, p_across, gap, apart, reason in (
            ([0, 1, 2, 3, 4, 5], 0.95, 0.1, 0, True, SUCCESSION),
            ([0, 1, 2, 3, 4, 5], 0.95, 0.1, -1, False, SUCCESSION),
            ([0, 1, 2, 3, 4, 5], 0.95, 0.1, 1, True, SUCCESSION),
            ([0, 1, 2, 13, 14, 15], 0.95, 0.1, 10, True, UNLINKED),
            ([0, 2, 4, 1, 3, 5], 0.95, 0.1, 0, False, SUCCESSION),
            ([0, 1, 2, 3, 4, 5], 0.95, 0.5, 0, False, SUCCESSION),
            ([0, 1, 2, 3, 4, 5], 0.8, 0.1, 0, False, SUCCESSION)):
        sure_across = {(2, 3): 0.95} if gap < 0 else {}  # one sure pair across: one neuron
        p = pair_values(pairs, {**{k: p_inside for k in inside}, **sure_across}, p_across)
        res = curate(labels, np.array(session), pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02, succession_probability=0.3,
                     max_session_gap=max(gap, 0))
        np.testing.assert_array_equal(renumber(res.labels),
                                      [1, 1, 1, 2, 2, 2] if apart else [1] * 6)
        assert np.all(res.removed_reason == reason)
        assert len(res.removed_pairs) == (9 if apart else 0)
        assert REASONS[SUCCESSION] == "split_at_succession"
    # off at 0
    res = curate(labels, np.arange(6), pairs, sim, link, threshold=1.0,
                 probability=pair_values(pairs, {k: 0.95 for k in inside}, 0.1),
                 cut_probability=0.02, succession_probability=0.0)
    assert len(res.removed_pairs) == 0


def test_amplitude_step_takes_apart_a_neuron_followed_by_one_of_other_amplitude():
    """Four units of one neuron (95-105 uV, sure: 0.95) followed in the last session by a
    unit of 400 uV (0.2 across): a step of amplitude far beyond one neuron's spread (learned
    from the cluster's pairs), so the lone unit is taken apart (reason
    split_at_amplitude_step, its 4 pairs), though the sure-groups rule cannot cut a side of
    one unit. Left whole when the last unit is 115 uV (within one neuron's spread), when it
    is 200 uV and the probability across is 0.6 (it says one neuron; the step, ~2x, is
    under AMPLITUDE_STEP_SURE times the learned one, ~1.63x, so ~2.7x), when the 400 uV
    unit's session lies among the others (no cut in time has the step: the medians agree)
    and when the setting is 0. At 400 uV (~4x) the cut stands at 0.6 too. When nothing
    across is known (beyond max_session_gap) the step cannot cut, and the lone unit is
    taken apart as unlinked (split_unlinked)."""
    labels = np.zeros(5, int)
    pairs = within_cluster_pairs(labels)
    inside = {k: 0.95 for k in itertools.combinations(range(4), 2)}
    sim = np.full(len(pairs), 3.0)
    link = np.ones(len(pairs), bool)
    for session, last_uv, p_across, gap, step, apart, reason in (
            ([0, 1, 2, 3, 4], 400.0, 0.2, 0, 1.5, True, AMPLITUDE_STEP),
            ([0, 1, 2, 3, 4], 115.0, 0.2, 0, 1.5, False, AMPLITUDE_STEP),
            ([0, 1, 2, 3, 4], 200.0, 0.6, 0, 1.5, False, AMPLITUDE_STEP),
            ([0, 1, 2, 3, 4], 200.0, 0.2, 0, 1.5, True, AMPLITUDE_STEP),
            ([0, 1, 2, 3, 4], 400.0, 0.6, 0, 1.5, True, AMPLITUDE_STEP),
            ([0, 1, 3, 4, 2], 400.0, 0.2, 0, 1.5, False, AMPLITUDE_STEP),
            ([0, 1, 2, 3, 14], 400.0, 0.2, 5, 1.5, True, UNLINKED),
            ([0, 1, 2, 3, 4], 400.0, 0.2, 0, 0.0, False, AMPLITUDE_STEP)):
        amplitude = np.array([100.0, 105.0, 95.0, 102.0, last_uv])
        res = curate(labels, np.array(session), pairs, sim, link, threshold=1.0,
                     probability=pair_values(pairs, inside, p_across), cut_probability=0.02,
                     succession_probability=0.3, max_session_gap=gap,
                     unit_positions=np.zeros((5, 2)), amplitude=amplitude,
                     amplitude_step=step)
        np.testing.assert_array_equal(renumber(res.labels),
                                      [1, 1, 1, 1, -1] if apart else [1] * 5)
        assert as_set(res.removed_pairs) == ({(k, 4) for k in range(4)} if apart else set())
        assert np.all(res.removed_reason == reason)
    assert REASONS[AMPLITUDE_STEP] == "split_at_amplitude_step"


def test_amplitude_step_compares_the_amplitudes_it_is_given_to_compare():
    """The cluster of the test above, its last unit at 400 uV on its peak channel: given the
    footprints' amplitudes to compare (``compared_amplitude``), steady at ~1,000 uV as one
    neuron's are when only its place against the channel grid changed, nothing is cut; with
    the peaks steady and the footprints stepping 4x, the lone unit is taken apart."""
    labels = np.zeros(5, int)
    pairs = within_cluster_pairs(labels)
    inside = {k: 0.95 for k in itertools.combinations(range(4), 2)}
    peak = np.array([100.0, 105.0, 95.0, 102.0, 400.0])
    steady = np.array([1000.0, 1050.0, 950.0, 1020.0, 1010.0])
    for amplitude, compared, apart in ((peak, steady, False), (steady / 10, peak * 10, True)):
        res = curate(labels, np.arange(5), pairs, np.full(len(pairs), 3.0),
                     np.ones(len(pairs), bool), threshold=1.0,
                     probability=pair_values(pairs, inside, 0.2), cut_probability=0.02,
                     succession_probability=0.3, unit_positions=np.zeros((5, 2)),
                     amplitude=amplitude, amplitude_step=1.5, compared_amplitude=compared)
        np.testing.assert_array_equal(renumber(res.labels),
                                      [1, 1, 1, 1, -1] if apart else [1] * 5)


def test_amplitude_split_cuts_a_unit_of_other_amplitude_that_fills_a_gap():
    """Units 0-3 are one neuron of ~400 uV in sessions 0, 1, 3, 4 (sure: 0.95); unit 4,
    in session 2 where that neuron was not recorded, is alike enough for the similarity
    (no split below the threshold) but its probability to each of them is 0.005 (below the
    cut level 0.02) and it is 90 uV: it is taken apart (reason split_at_amplitude, its 4
    pairs), in the middle of the neuron's sessions where no cut in time has a step. Whole
    when it is 330 uV (within one neuron's spread of amplitude, as a small unit of the same
    neuron whose probability is low), when its probability is 0.05 (above the level), and
    with the setting off."""
    labels = np.zeros(5, int)
    pairs = within_cluster_pairs(labels)
    inside = {k: 0.95 for k in itertools.combinations(range(4), 2)}
    session = np.array([0, 1, 3, 4, 2])
    for odd_uv, p_odd, on, apart in ((90.0, 0.005, True, True),
                                     (330.0, 0.005, True, False),
                                     (90.0, 0.05, True, False),
                                     (90.0, 0.005, False, False)):
        amplitude = np.array([400.0, 420.0, 380.0, 410.0, odd_uv])
        res = curate(labels, session, pairs, np.full(len(pairs), 3.0),
                     np.ones(len(pairs), bool), threshold=1.0,
                     probability=pair_values(pairs, inside, p_odd), cut_probability=0.02,
                     unit_positions=np.zeros((5, 2)), amplitude=amplitude,
                     amplitude_step=1.5, amplitude_split=on)
        np.testing.assert_array_equal(renumber(res.labels),
                                      [1, 1, 1, 1, -1] if apart else [1] * 5)
        assert as_set(res.removed_pairs) == ({(k, 4) for k in range(4)} if apart else set())
        assert np.all(res.removed_reason == AMPLITUDE)
    assert REASONS[AMPLITUDE] == "split_at_amplitude"


def test_amplitude_split_keeps_two_neurons_alike_in_amplitude_and_splits_two_that_are_not():
    """Two groups of three units each sure among themselves (0.95), 0.01 across (below the
    cut level): where the groups' amplitudes are 100 and 105 uV (one neuron's spread) the
    cluster stays whole (the probability alone proposes no cut); at 100 and 250 uV it is
    cut between the groups (9 pairs). Small units at the probability's floor (0.01 among
    all six, 80-130 uV: a span beyond the step, but no gap in it) stay one cluster. A
    second cluster of eight units of one neuron (within 3% of 60 uV, sure) sets one
    neuron's spread of amplitude."""
    labels = np.repeat([0, 1], [6, 8])
    pairs = within_cluster_pairs(labels)
    other = {k: 0.95 for k in itertools.combinations(range(6, 14), 2)}
    inside = {k: 0.95 for g in ((0, 1, 2), (3, 4, 5)) for k in itertools.combinations(g, 2)}
    for group, table, apart in (([100, 98, 102, 105, 107, 103], inside, False),
                                ([100, 98, 102, 250, 255, 245], inside, True),
                                ([80, 90, 100, 110, 120, 130], {}, False)):
        amplitude = np.r_[np.array(group, float), 60 * (1 + 0.03 * np.sin(np.arange(8)))]
        res = curate(labels, np.r_[np.arange(6), np.arange(8)], pairs,
                     np.full(len(pairs), 3.0), np.ones(len(pairs), bool), threshold=1.0,
                     probability=pair_values(pairs, {**table, **other}, 0.01),
                     cut_probability=0.02, unit_positions=np.zeros((14, 2)),
                     amplitude=amplitude, amplitude_split=True)
        np.testing.assert_array_equal(renumber(res.labels)[:6],
                                      [1, 1, 1, 2, 2, 2] if apart else [1] * 6)
        assert len(res.removed_pairs) == (9 if apart else 0)


def test_probability_split_cuts_where_the_probability_says_two_neurons_and_the_veto_agrees():
    """Two groups of three units, sure among themselves (0.95), 0.005 across (below the cut
    level 0.02) and alike in amplitude (100 and 105 uV: no amplitude split), all above the
    similarity's threshold (no cut proposed by the similarity): probability_split cuts
    between the groups (the 9 pairs, reason split_at_low_probability); off, the cluster stays
    whole. Where the pairs across, pooled, are unlike non-matches (each scoring above all
    but 0.1% of the known non-matches: small units of one neuron at the probability's
    floor), the veto joins the groups back. A second cluster of eight units of one neuron
    sets one neuron's spread of amplitude."""
    labels = np.repeat([0, 1], [6, 8])
    pairs = within_cluster_pairs(labels)
    other = {k: 0.95 for k in itertools.combinations(range(6, 14), 2)}
    inside = {k: 0.95 for g in ((0, 1, 2), (3, 4, 5)) for k in itertools.combinations(g, 2)}
    amplitude = np.r_[np.array([100, 98, 102, 105, 107, 103], float),
                      60 * (1 + 0.03 * np.sin(np.arange(8)))]
    across = {(a, b) for a in (0, 1, 2) for b in (3, 4, 5)}
    for on, share_across, apart in ((True, 0.5, True), (False, 0.5, False),
                                    (True, 0.001, False)):
        share = np.array([share_across if (int(a), int(b)) in across else 0.5
                          for a, b in pairs])
        res = curate(labels, np.r_[np.arange(6), np.arange(8)], pairs,
                     np.full(len(pairs), 3.0), np.ones(len(pairs), bool), threshold=1.0,
                     probability=pair_values(pairs, {**inside, **other}, 0.005),
                     cut_probability=0.02, unit_positions=np.zeros((14, 2)),
                     amplitude=amplitude, amplitude_split=True, non_match_share=share,
                     pooled_level=0.05, probability_split=on)
        np.testing.assert_array_equal(renumber(res.labels)[:6],
                                      [1, 1, 1, 2, 2, 2] if apart else [1] * 6)
        assert as_set(res.removed_pairs) == (across if apart else set())
        assert np.all(res.removed_reason == LOW_PROBABILITY)
    assert REASONS[LOW_PROBABILITY] == "split_at_low_probability"


def test_a_step_of_amplitude_under_the_least_step_is_no_cut():
    """Seven units of one neuron within 2% of 100 uV (sure: 0.95), then one of 140 uV (0.2
    across). The clusters' spread puts the learned step near 1.06x, but a step must be 1.5x
    at least (curation.AMPLITUDE_STEP_MIN_FACTOR: a neuron's peak amplitude moves 20-60%
    with the channel grid's phase after drift), so 140 uV stays; 200 uV is cut."""
    labels = np.zeros(8, int)
    pairs = within_cluster_pairs(labels)
    inside = {k: 0.95 for k in itertools.combinations(range(7), 2)}
    for last_uv, apart in ((140.0, False), (200.0, True)):
        amplitude = np.array([100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 101.0, last_uv])
        res = curate(labels, np.arange(8), pairs, np.full(len(pairs), 3.0),
                     np.ones(len(pairs), bool), threshold=1.0,
                     probability=pair_values(pairs, inside, 0.2), cut_probability=0.02,
                     unit_positions=np.zeros((8, 2)), amplitude=amplitude, amplitude_step=1.5)
        np.testing.assert_array_equal(renumber(res.labels), [1] * 7 + [-1] if apart else [1] * 8)
        assert np.all(res.removed_reason == AMPLITUDE_STEP)


def test_pooled_non_match_p_is_fishers_combination():
    """One pair: its own share. Two pairs of share 0.1: -2 ln(0.01) against chi-square with 4
    degrees of freedom, 0.01 (1 + ln 100). NaN (pairs that cannot link) are left out; no pair
    is no evidence."""
    assert curation.pooled_non_match_p(np.array([0.3])) == pytest.approx(0.3)
    assert curation.pooled_non_match_p(np.array([[0.1, np.nan], [0.1, np.nan]])) == \
        pytest.approx(0.01 * (1 + np.log(100)))
    assert curation.pooled_non_match_p(np.array([np.nan])) == 1.0


def test_pooled_evidence_keeps_a_small_unit_its_pairs_one_by_one_cannot():
    """Units 0-4 are one neuron (similar, probable); unit 5, of another session, has every
    pair to them below the similarity threshold and at the probability's floor (0.01, below
    the veto's 0.02), as a small unit of the same neuron has. Its five pairs' scores each
    rank above 97% of the known non-matches (share 0.03): pooled (Fisher, p ~ 1e-4) the cut is
    undone at pooled_level 0.05 and stands without pooling. It stands when the shares are
    those of a typical non-match (0.5), when the probability rules the pairs out (0: they
    count as non-matches), when unit 5's amplitude is three times the neuron's, when it
    lies farther than cut_distance_ratio, and when one of its pairs scores like a plain
    non-match (share 0.7: Fisher's combination alone would still join, p ~ 1e-3)."""
    labels = np.zeros(6, int)
    session = np.arange(6)
    pairs = within_cluster_pairs(labels)
    inside = {(i, j) for i in range(5) for j in range(i + 1, 5)}
    sim = pair_values(pairs, {k: 3.0 for k in inside}, 0.5)
    link = np.ones(len(pairs), bool)
    amplitude = np.array([50.0, 52.0, 48.0, 51.0, 49.0, 50.0])
    ratio = pair_values(pairs, {k: 1.0 for k in inside}, 2.0)

    def cut_stands(share_across=0.03, p_across=0.01, level=0.05, amp5=50.0, ratio_limit=4.0,
                   one_plain=False):
        p = pair_values(pairs, {k: 0.95 for k in inside}, p_across)
        share = pair_values(pairs, {k: 0.001 for k in inside}, share_across)
        if one_plain:  # one pair across scores like a plain non-match (below their median)
            share[np.flatnonzero((pairs[:, 1] == 5))[0]] = 0.7
        res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02, distance_ratio=ratio, max_distance_ratio=ratio_limit,
                     amplitude=np.r_[amplitude[:5], amp5], non_match_share=share,
                     pooled_level=level)
        whole = np.all(res.labels[:5] == res.labels[0]) and res.labels[0] >= 0
        assert whole  # the neuron's own units always stay together
        return res.labels[5] != res.labels[0]

    assert not cut_stands()
    assert cut_stands(level=0.0)
    assert cut_stands(share_across=0.5)
    assert cut_stands(p_across=0.0)
    assert cut_stands(amp5=150.0)
    assert cut_stands(ratio_limit=1.5)
    assert cut_stands(one_plain=True)


def test_rejoin_alike_undoes_a_cut_that_only_the_similarity_makes():
    """Ten neurons of six units each (sessions 0-5, about 50 uV, within ~1 um of their place:
    enough pairs to learn one neuron's spread). Unit 5 of neuron 0 has every pair below the
    similarity threshold and at the probability's floor (0.01, below the veto's 0.02), as a
    small unit of the neuron has: the split cuts it and the veto lets the cut stand. At its
    neuron's place, amplitude and the session after the others, rejoin_distance_ratio joins
    it back (its five pairs go to kept_pairs). The cut stands when the setting is 0, when
    the probability rules a pair across out (0), when its amplitude is three times the
    neuron's, when it lies 30 um away, when its session is not next to the others', and
    when the position split made the cut (unit 5 8 um off in the positions it reads, its
    similarity above the threshold): that cut rests on position, not on similarity.
    The neurons' units lie within ~4% of their amplitude, so the learned 90th percentile of
    one neuron's spread is near 1.1x; a unit 1.16x its neuron's median (58 uV) is joined all
    the same (1.2x at least: curation.REJOIN_AMPLITUDE_MIN_FACTOR), one 1.3x (65 uV) is not."""
    rng = np.random.default_rng(0)
    n_neurons, per = 10, 6
    labels = np.repeat(np.arange(n_neurons), per)
    pairs = within_cluster_pairs(labels)
    base_xy = np.column_stack([np.repeat(np.arange(n_neurons) * 100.0, per),
                               np.zeros(n_neurons * per)])
    jitter = rng.normal(0, 1.0, base_xy.shape)
    base_amp = 50.0 + rng.normal(0, 2.0, n_neurons * per)
    small = {(k, 5) for k in range(5)}
    link = np.ones(len(pairs), bool)

    def cut_stands(ratio=4.0, one_ruled_out=False, amp5=50.0, dy5=0.0, session5=5,
                   position_cut=False):
        session = np.tile(np.arange(per), n_neurons)
        session[5] = session5
        xy = base_xy + jitter
        xy[5, 1] += dy5
        amplitude = base_amp.copy()
        amplitude[5] = amp5
        sim = pair_values(pairs, {k: 1.2 if position_cut else 0.5 for k in small}, 3.0)
        positions = None
        if position_cut:
            positions = xy.copy()
            positions[5, 1] += 8.0
        p = pair_values(pairs, {k: 0.01 for k in small}, 0.95)
        if one_ruled_out:  # one pair across ruled out is enough
            p[np.flatnonzero((pairs[:, 0] == 0) & (pairs[:, 1] == 5))] = 0.0
        res = curate(labels, session, pairs, sim, link, threshold=1.0, probability=p,
                     cut_probability=0.02, unit_positions=xy, amplitude=amplitude,
                     rejoin_distance_ratio=ratio, positions=positions)
        assert np.all(res.labels[:5] == res.labels[0]) and res.labels[0] >= 0
        stands = res.labels[5] != res.labels[0]
        assert as_set(res.kept_pairs) == (set() if stands else small)
        return stands

    assert not cut_stands()
    assert cut_stands(ratio=0.0)
    assert cut_stands(one_ruled_out=True)
    assert cut_stands(amp5=150.0)
    assert not cut_stands(amp5=58.0)
    assert cut_stands(amp5=65.0)
    assert cut_stands(dy5=30.0)
    assert cut_stands(session5=7)
    assert cut_stands(position_cut=True)


def test_split_unlinked_cuts_parts_that_no_candidate_pair_connects():
    """Cluster 0 holds {0, 1} and {2, 3} with no linked pair across (sessions too far apart
    to have been compared): two parts, the 4 pairs across removed. Cluster 5 is a chain
    (4-5, 5-6 linked, 4-6 not): whole, its label kept. In cluster 7, unit 9 has no linked
    pair: it leaves ({7, 8} stay), and a part of one unit is in no cluster."""
    labels = np.array([0, 0, 0, 0, 5, 5, 5, 7, 7, 7])
    pairs = within_cluster_pairs(labels)
    linked = np.array([tuple(p) in {(0, 1), (2, 3), (4, 5), (5, 6), (7, 8)}
                       for p in pairs.tolist()])
    new, removed = curation.split_unlinked(labels, pairs, linked)
    assert new[0] == new[1] == 0 and new[2] == new[3] != 0
    np.testing.assert_array_equal(new[4:9], [5, 5, 5, 7, 7])
    assert new[9] == -1
    assert as_set(removed) == {(0, 2), (0, 3), (1, 2), (1, 3), (7, 9), (8, 9)}
    # every pair linked: nothing changes
    same, none = curation.split_unlinked(labels, pairs, np.ones(len(pairs), bool))
    np.testing.assert_array_equal(same, labels)
    assert len(none) == 0
