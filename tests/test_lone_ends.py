"""A lone unit at either end of a cluster, far in time and weakly linked (kilomatch.lone_ends)."""

import numpy as np

from kilomatch.lone_ends import LONE_END_PROBABILITY, split_lone_ends


def cluster(sessions, p_of, label=0, first=0):
    """One cluster's units (ids from ``first``) in ``sessions``, every pair of units of two
    sessions with probability p_of(a, b) (a, b: places in the cluster): labels, session,
    pairs, probability."""
    n = len(sessions)
    pairs, p = [], []
    for a in range(n):
        for b in range(a + 1, n):
            if sessions[a] != sessions[b]:
                pairs.append((first + a, first + b))
                p.append(p_of(a, b))
    return [label] * n, list(sessions), pairs, p


def build(*clusters):
    labels, session, pairs, p = [], [], [], []
    for c, (sessions, p_of) in enumerate(clusters):
        l, s, q, v = cluster(sessions, p_of, c, len(labels))
        labels += l
        session += s
        pairs += q
        p += v
    return (np.array(labels), np.array(session), np.array(pairs, np.int64).reshape(-1, 2),
            np.array(p, np.float64))


def weak_first(a, b):
    """The first unit linked weakly to the rest, which are one neuron for sure."""
    return 0.05 if a == 0 else 0.99


def test_a_weakly_linked_unit_three_sessions_before_the_rest_is_taken_out():
    labels, session, pairs, p = build(((0, 3, 4, 5), weak_first), ((0, 2, 3, 4), weak_first))
    out, removed = split_lone_ends(labels, pairs, p, session, 3)
    # cluster 0: unit 0 is 3 sessions from the rest, taken out with its 3 pairs; cluster 1:
    # its first unit is 2 sessions from the rest, kept
    assert out[0] == -1 and np.all(out[1:4] == 0) and np.all(out[4:] == 1)
    assert removed.tolist() == [[0, 1], [0, 2], [0, 3]]
    # a gap of 2 is enough where min_gap says so; 0 leaves everything
    assert split_lone_ends(labels, pairs, p, session, 2)[0][4] == -1
    out, removed = split_lone_ends(labels, pairs, p, session, 0)
    assert np.array_equal(out, labels) and removed.shape == (0, 2)


def test_one_pair_at_the_level_keeps_the_unit():
    def one_good(a, b):
        return LONE_END_PROBABILITY if (a, b) == (0, 2) else weak_first(a, b)

    labels, session, pairs, p = build(((0, 3, 4, 5), one_good))
    out, removed = split_lone_ends(labels, pairs, p, session, 3)
    assert np.array_equal(out, labels) and len(removed) == 0
    # a pair that is not a candidate (no probability) or NaN counts as nothing
    p[pairs[:, 0] == 0] = np.nan
    assert split_lone_ends(labels, pairs, p, session, 3)[0][0] == -1


def test_only_a_lone_unit_at_the_ends_is_looked_at():
    # two units in the first session (a sorter split): neither is lone; a unit in the
    # middle of a long gap is not at an end
    labels, session, pairs, p = build(((0, 0, 4, 5), lambda a, b: 0.01 if a < 2 and b >= 2
                                       else 0.99),
                                      ((0, 1, 5, 9, 10), lambda a, b: 0.01 if 2 in (a, b)
                                       else 0.99))
    out, removed = split_lone_ends(labels, pairs, p, session, 3)
    assert np.array_equal(out, labels) and len(removed) == 0


def test_both_ends_and_what_is_left():
    # weak units at both ends; after the last one goes, the unit before it is an end too
    def weak_ends(a, b):
        return 0.02 if a == 0 or b >= 3 else 0.99

    labels, session, pairs, p = build(((0, 4, 5, 9, 13), weak_ends))
    out, removed = split_lone_ends(labels, pairs, p, session, 3)
    assert out.tolist() == [-1, 0, 0, -1, -1]
    assert len(removed) == 4 + 3 + 2  # 0 against all, then 4, then 3 against what was left
    # a two-unit cluster of a weak pair is dissolved: both units in no cluster
    labels, session, pairs, p = build(((1, 6), lambda a, b: 0.01))
    out, removed = split_lone_ends(labels, pairs, p, session, 3)
    assert out.tolist() == [-1, -1] and removed.tolist() == [[0, 1]]


def test_the_pipeline_step_records_the_pairs_it_takes_apart_and_why():
    from kilomatch import curation
    from kilomatch.pipeline import split_lone_end_units

    labels, session, pairs, p = build(((0, 3, 4, 5), weak_first), ((0, 1, 2), weak_first))
    cur = curation.CurationResult(labels, labels, np.array([[20, 21]]),
                                  np.array([curation.SPLIT], np.int8))
    split_lone_end_units(cur, pairs, p, session, 3)
    assert cur.labels.tolist() == [-1, 0, 0, 0, 1, 1, 1]
    assert cur.removed_pairs.tolist() == [[20, 21], [0, 1], [0, 2], [0, 3]]
    assert cur.removed_reason.dtype == np.int8
    assert cur.removed_reason.tolist() == [curation.SPLIT] + [curation.LONE_END] * 3
    assert curation.REASONS[curation.LONE_END] == "split_lone_end"
