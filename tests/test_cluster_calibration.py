"""The match probability calibrated to the final clusters (linking.calibrate_to_clusters)."""

import numpy as np

from kilomatch import linking
from kilomatch.probability import fit_cluster_calibration


def test_the_map_is_the_share_held_together_at_each_probability():
    # pairs of probability p are held together with chance p^2: the map must find p^2, not p
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    together = rng.random(p.size) < p ** 2
    fitted = fit_cluster_calibration(p, together, n_bins=64)
    grid = np.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(fitted.predict(grid), grid ** 2, atol=0.02)
    assert np.all(np.diff(fitted.predict(np.linspace(0, 1, 101))) >= 0)  # monotone


def _links(p, confidence):
    sims = np.column_stack([np.arange(len(p), dtype=float)])[linking.in_match_table(p)]
    return linking.ProbabilityLinks(None, ["Waveform"], p.copy(), sims, None,
                                    match_confidence=confidence)


def test_clusters_reorder_nothing_and_confidence_follows_the_probability():
    # 30 units in 10 clusters of 3 (one neuron each) and 3 units in none: every pair is a
    # candidate. Pairs across clusters are of lower probability than any within, so the
    # within pairs of probability 0.02-0.05 (small units' matches) read 1 and join the
    # MatchTable; a few across pairs of high probability keep the map below 1. Unit 30 is
    # in no cluster despite a pair of 0.9 (a session conflict left it out); units 31 and 32
    # are alone, as their pairs (all below 0.015) say
    rng = np.random.default_rng(1)
    labels = np.r_[np.repeat(np.arange(10), 3), -1, -1, -1]
    iu, ju = np.triu_indices(33, 1)
    pairs = np.column_stack([iu, ju])
    within = (labels[iu] == labels[ju]) & (labels[iu] >= 0)
    clustered = (labels[iu] >= 0) & (labels[ju] >= 0)
    judged = (iu != 30) & (ju != 30)
    p = np.where(within, rng.uniform(0.02, 1.0, len(pairs)), rng.uniform(0, 0.015, len(pairs)))
    p[np.flatnonzero(clustered & ~within)[:10]] = 0.97
    p[np.flatnonzero(within)[:3]] = 0.03
    p[np.flatnonzero((iu == 0) & (ju == 30))] = 0.9
    p[5] = np.nan  # a pair whose probability is unknown stays unknown
    np.testing.assert_array_equal(linking.units_alone(labels, pairs, p),
                                  np.arange(33) >= 31)
    kept = pairs[within]
    confidence = linking.match_confidence(33, kept, p[within])
    links = _links(p, confidence)

    def evidence(q):  # the Waveform column of a pair: its row number, as in _links
        rows = [int(np.flatnonzero((pairs == r).all(axis=1))[0]) for r in q]
        return np.column_stack([np.array(rows, float), np.zeros(len(rows))])

    assert linking.calibrate_to_clusters(links, evidence, pairs, labels)
    q = links.candidate_probability
    np.testing.assert_array_equal(links.pair_probability[~np.isnan(p)], p[~np.isnan(p)])
    assert np.isnan(q[5]) and np.isnan(links.pair_probability[5])
    # a pair with a unit left out despite a likely match keeps its probability: no cluster
    # judged it; the pairs of the units alone are held apart, mapped as the others are
    np.testing.assert_array_equal(q[~judged], p[~judged])
    ok = judged & ~np.isnan(p)
    assert not np.array_equal(q[ok], p[ok])
    alone = ok & ~clustered
    assert alone.sum() == 61 and np.all(q[alone] == 0) and np.all(p[alone] > 0)
    # same order (ties allowed), and the mean is the share held together
    order = np.argsort(p[ok], kind="stable")
    assert np.all(np.diff(q[ok][order]) >= -1e-12)
    assert np.isclose(q[ok].mean(), within[ok].mean())
    # each unit's weakest link read in the new probability is its mapped confidence
    np.testing.assert_allclose(links.match_confidence,
                               linking.match_confidence(33, kept, q[within]))
    # the MatchTable rows: every pair of probability or pair probability >= 0.05, each with
    # its own evidence (those the map lifted above 0.05 computed now)
    rows = links.table_rows()
    assert (rows & (p < 0.05)).any()  # the map lifted some pairs into the table
    np.testing.assert_array_equal(rows, (q >= 0.05) | (p >= 0.05))
    np.testing.assert_array_equal(links.candidate_similarity[:, 0], np.flatnonzero(rows))
    table = linking.match_table([(np.arange(33), pairs, links)], labels + 1,
                                np.arange(33), np.zeros((33, 3)))
    assert len(table["unit_a"]) == rows.sum()
    np.testing.assert_array_equal(table["pair_probability"], p[rows])
    np.testing.assert_array_equal(table["probability"], q[rows])


def test_too_few_pairs_held_together_change_nothing():
    # 18 pairs held together (three clusters of 4 units), 48 in two clusters, and the pairs
    # of 4 units in none: too few to learn a map from
    iu, ju = np.triu_indices(16, 1)
    pairs = np.column_stack([iu, ju])
    labels = np.r_[np.repeat(np.arange(3), 4), -np.ones(4, int)]
    p = np.linspace(0.01, 0.99, len(pairs))
    links = _links(p, None)
    assert not linking.calibrate_to_clusters(links, None, pairs, labels)
    assert links.pair_probability is None and links.candidate_probability.tolist() == p.tolist()


def test_pairs_the_map_lowers_below_the_table_level_stay_in_the_table():
    # within-cluster pairs of probability 0.9-1, pairs across clusters of 0.1 (none held
    # together: the map reads them 0) or 0: the pairs of pair probability 0.1 stay in the
    # MatchTable, with the evidence they had, though their probability is now below 0.05
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 3)
    iu, ju = np.triu_indices(30, 1)
    pairs = np.column_stack([iu, ju])
    within = labels[iu] == labels[ju]
    p = np.where(within, rng.uniform(0.9, 1.0, len(pairs)), 0.0)
    p[np.flatnonzero(~within)[::2]] = 0.1
    links = _links(p, None)
    evidence_before = links.candidate_similarity.copy()
    assert linking.calibrate_to_clusters(links, None, pairs, labels)  # no row to add
    q = links.candidate_probability
    lowered = (p >= 0.05) & (q < 0.05)
    assert lowered.sum() == np.count_nonzero(p == 0.1)
    np.testing.assert_array_equal(links.table_rows(), p >= 0.05)
    np.testing.assert_array_equal(links.candidate_similarity, evidence_before)
    table = linking.match_table([(np.arange(30), pairs, links)], labels + 1,
                                np.arange(30), np.zeros((30, 3)))
    np.testing.assert_array_equal(table["pair_probability"], p[p >= 0.05])
    np.testing.assert_array_equal(table["Waveform"], np.flatnonzero(p >= 0.05))
