"""A cluster cut in time at a gap that most of its pairs across deny (kilomatch.time_gaps)."""

import numpy as np
from test_lone_ends import build

from kilomatch.parameters import default_dict
from kilomatch.time_gaps import split_at_gaps

# the pipeline's level
LEVEL = default_dict()["autoCuration"]["time_gap_probability"]


def two_neurons(first_group: int, sure_across=((2, 3),), across: float = 0.01):
    """Units before place ``first_group`` are one neuron, the rest another: sure within
    each, ``across`` between them, except the pairs ``sure_across`` (places), read sure."""
    def p_of(a, b):
        if (a < first_group) == (b < first_group) or (a, b) in sure_across:
            return 0.99
        return across
    return p_of


def test_one_sure_pair_across_a_gap_does_not_hold_two_neurons_together():
    # sessions 0-2, then 6-8: a gap of 4 sessions; 9 pairs across, one of them sure
    labels, session, pairs, p = build(((0, 1, 2, 6, 7, 8), two_neurons(3)))
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL)
    assert out[:3].tolist() == [0, 0, 0] and len(set(out[3:])) == 1 and out[3] not in (-1, 0)
    assert removed.tolist() == [[a, b] for a in range(3) for b in range(3, 6)]
    # the median decides: with most pairs across at the level the cluster stays whole
    labels, session, pairs, p = build(((0, 1, 2, 6, 7, 8),
                                       two_neurons(3, across=LEVEL)))
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL)
    assert np.array_equal(out, labels) and len(removed) == 0


def test_only_gaps_of_min_gap_sessions_are_cut():
    labels, session, pairs, p = build(((0, 1, 2, 4, 5, 6), two_neurons(3)))  # a gap of 2
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL)
    assert np.array_equal(out, labels) and len(removed) == 0
    out, removed = split_at_gaps(labels, pairs, p, session, 2, LEVEL)
    assert out[0] != out[3] and len(removed) == 9
    out, removed = split_at_gaps(labels, pairs, p, session, 0, LEVEL)
    assert np.array_equal(out, labels) and len(removed) == 0


def test_pairs_that_are_not_candidates_do_not_count():
    labels, session, pairs, p = build(((0, 1, 2, 6, 7, 8), two_neurons(3, sure_across=())))
    # only the sure pair across is a candidate: its median is sure, no cut
    across = (pairs[:, 0] < 3) & (pairs[:, 1] >= 3)
    keep = ~across | ((pairs[:, 0] == 2) & (pairs[:, 1] == 3))
    p[(pairs[:, 0] == 2) & (pairs[:, 1] == 3)] = 0.99
    out, removed = split_at_gaps(labels, pairs[keep], p[keep], session, 3, LEVEL)
    assert np.array_equal(out, labels) and len(removed) == 0
    # no candidate pair across at all: nothing to read, no cut
    out, removed = split_at_gaps(labels, pairs[~across], p[~across], session, 3, LEVEL)
    assert np.array_equal(out, labels) and len(removed) == 0


def test_the_lowest_gap_first_then_each_part_and_a_lone_unit_leaves():
    # three neurons: sessions 0-1, 5-6 and 10; every pair of two neurons at 0.01
    def p_of(a, b):
        return 0.99 if (a < 2) == (b < 2) and (a < 4) == (b < 4) else 0.01

    labels, session, pairs, p = build(((0, 1, 5, 6, 10), p_of), ((0, 4), lambda a, b: 0.99))
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL)
    assert out[0] == out[1] == 0 and out[2] == out[3] and out[2] not in (-1, 0, 1)
    assert out[4] == -1  # the last neuron's single unit is in no cluster
    assert out[5:].tolist() == [1, 1]  # a two-unit cluster of one neuron is left alone
    assert len(removed) == 4 + 2 + 2


def test_the_pipeline_step_records_the_pairs_it_takes_apart_and_why():
    from kilomatch import curation
    from kilomatch.pipeline import split_at_time_gaps

    labels, session, pairs, p = build(((0, 1, 5), two_neurons(2, sure_across=())))
    cur = curation.CurationResult(labels, labels, np.array([[20, 21]]),
                                  np.array([curation.SPLIT], np.int8))
    split_at_time_gaps(cur, pairs, p, session, 3, LEVEL)
    assert cur.labels.tolist() == [0, 0, -1]
    assert cur.removed_pairs.tolist() == [[20, 21], [0, 2], [1, 2]]
    assert cur.removed_reason.dtype == np.int8
    assert cur.removed_reason.tolist() == [curation.SPLIT] + [curation.TIME_GAP] * 2
    assert curation.REASONS[curation.TIME_GAP] == "split_at_time_gap"


def test_unseen_share_is_learned_per_amplitude_of_the_clusters():
    """Small clusters seen in every other session, large ones in every session: each bin of
    amplitude gets its own share, (unseen + 1) / (sessions between + 2)."""
    from kilomatch.time_gaps import unseen_share
    every_other = [(0, 2, 4, 6, 8), lambda a, b: 0.99]   # 4 of 7 sessions between unseen
    every = [(0, 1, 2, 3, 4, 5, 6, 7, 8), lambda a, b: 0.99]
    labels, session, _, _ = build(*[every_other] * 10, *[every] * 10)
    amplitude = np.where(labels < 10, 40.0, 300.0)
    share = unseen_share(labels, session, amplitude, clusters_per_bin=10)
    assert sorted(share) == list(range(20))
    np.testing.assert_allclose([share[c] for c in range(10)], (40 + 1) / (70 + 2))
    np.testing.assert_allclose([share[c] for c in range(10, 20)], 1 / (70 + 2))
    # too few clusters for two bins: one share of all
    one = unseen_share(labels, session, amplitude, clusters_per_bin=11)
    np.testing.assert_allclose(list(one.values()), (40 + 1) / (140 + 2))


def test_a_long_gap_where_neurons_are_seldom_unseen_cuts_what_the_median_keeps():
    """Two groups with 2 sessions between, their pairs across at 0.2 (far above the level):
    alone the median keeps them; but beside 20 clusters of like amplitude seen in every
    session (m = 3/147), one neuron unseen 2 sessions running is unlikely (0.2 m^2 /
    (0.2 m^2 + 0.8) < the level), so the cluster is cut. Where clusters of its amplitude go
    unseen every other session (m = 63/147: 0.044), it stays whole. Where the pairs across
    lean to one neuron (0.4, at or above UNSEEN_MAX_PROBABILITY), the gap is not read."""
    steady = [(0, 1, 2, 3, 4, 5, 6, 7, 8), lambda a, b: 0.99]
    patchy = [(0, 2, 4, 6, 8), lambda a, b: 0.99]
    test = [(0, 1, 2, 5, 6, 7), two_neurons(3, sure_across=(), across=0.2)]
    labels, session, pairs, p = build(test, *[steady] * 20)
    amplitude = np.full(labels.size, 100.0)
    kept, _ = split_at_gaps(labels, pairs, p, session, 3, LEVEL)
    assert np.array_equal(kept, labels)
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL, amplitude)
    assert out[0] == out[2] == 0 and out[3] == out[5] and out[3] not in (-1, 0)
    assert len(removed) == 9 and np.array_equal(out[6:], labels[6:])
    # the same cluster among clusters of its amplitude that go unseen every other session
    labels, session, pairs, p = build(test, *[patchy] * 20)
    amplitude = np.full(labels.size, 100.0)
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL, amplitude)
    assert np.array_equal(out, labels) and len(removed) == 0
    # pairs across at 0.4 among the steady clusters: the gap alone does not cut
    leaning = [(0, 1, 2, 5, 6, 7), two_neurons(3, sure_across=(), across=0.4)]
    labels, session, pairs, p = build(leaning, *[steady] * 20)
    out, removed = split_at_gaps(labels, pairs, p, session, 3, LEVEL, np.full(labels.size, 100.))
    assert np.array_equal(out, labels) and len(removed) == 0
