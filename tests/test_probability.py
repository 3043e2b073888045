"""Match probability learned from same-session non-matches, its use and its outputs."""

import numpy as np
import pytest

from kilomatch import curation, linking, metrics
from kilomatch.probability import (fit_match_probability, match_prior, pair_evidence,
                                   same_session_pairs)


def _mixture(seed, n_non=1500, n_cand=6000, prior=0.15):
    """Evidence of a toy study: (z similarity, dy um, log amplitude). Non-matches: z ~ N(0, 1),
    dy uniform on [0, 100]. Matches: z ~ N(2.5 + amplitude, 1) (bigger units correlate
    better), dy ~ |N(0, 4)|. Returns candidates (P, 3), their truth (P,), non-matches (Q, 3)."""
    rng = np.random.default_rng(seed)

    def draw(n, match):
        amp = rng.uniform(0, 1.5, n)
        z = rng.normal(2.5 * amp if match else 0.0, 1.0, n)
        dy = np.abs(rng.normal(0, 4, n)) if match else rng.uniform(0, 100, n)
        return np.column_stack([z, dy, amp])

    truth = rng.random(n_cand) < prior
    cand = np.empty((n_cand, 3))
    cand[truth] = draw(truth.sum(), True)
    cand[~truth] = draw((~truth).sum(), False)
    return cand, truth, draw(n_non, False)


def test_probability_is_calibrated_on_a_known_mixture():
    """Among pairs given probability in [a, b), the matched fraction lies within 0.05 of the
    bin (deciles of >= 50 pairs, four toy studies pooled, so that one fit's noise does not
    decide); each prior is found within 0.03 of the true 0.15.

    With 1,500 non-matches per study. One isotonic fit (no bootstrap) misses [0.2, 0.3) here
    (0.12 true): its steps follow the noise of the few non-matches; the mean of the
    bootstrap fits does not."""
    probability, truths = [], []
    for seed in range(4):
        cand, truth, non = _mixture(seed)
        model = fit_match_probability(cand, non, cand[:, 1] > 30, non[:, 1] > 30, seed=0)
        assert abs(model.prior - truth.mean()) < 0.03
        probability.append(model.candidate_probability)
        truths.append(truth)
        # and it ranks: at p >= 0.5 most pairs are matches and most matches are found
        chosen = model.candidate_probability >= 0.5
        assert truth[chosen].mean() > 0.75 and chosen[truth].mean() > 0.7
    bins = metrics.calibration_bins(np.concatenate(probability), np.concatenate(truths))
    judged, misses = metrics.calibration_misses(bins)
    assert judged >= 5, bins
    assert not misses, misses


def test_fast_bins_give_the_classifier_its_own_trees():
    """The classifier fitted on bin indices (bin_edges, to_bins) predicts exactly what it
    predicts fitted on the raw weighted evidence, also for values it never saw: continuous
    columns, a column of few distinct values, one with many ties (a unit's amplitude repeats
    in all its pairs), and classes weighted to equal totals."""
    from kilomatch.probability import _balanced_weight, _classifier, bin_edges, to_bins
    rng = np.random.default_rng(5)
    n = 3000
    y = (rng.random(n) < 0.2).astype(np.int8)
    x = np.column_stack([rng.normal(y * 1.5, 1.0), rng.integers(0, 20, n) * 0.5,
                         np.round(rng.normal(y, 1.0), 1), rng.exponential(1 + y, n)])
    weight = _balanced_weight(y)
    raw = _classifier(0).fit(x, y, sample_weight=weight)
    edges = bin_edges(x, weight)
    binned = _classifier(0).fit(to_bins(x, edges), y, sample_weight=weight)
    unseen = np.column_stack([rng.normal(0.5, 2.0, 500), rng.uniform(-1, 11, 500),
                              rng.normal(0.5, 2.0, 500), rng.exponential(2.0, 500)])
    for q in (x, unseen):
        assert np.array_equal(raw.predict_proba(q), binned.predict_proba(to_bins(q, edges)))


def test_the_raw_evidence_copy_scores_as_the_binned_model():
    """on_raw_evidence's copy of a model fitted on bin indices scores the evidence itself
    exactly as the model scores its bin indices: values on the edges, just beside them,
    beyond the first and last edge, unseen values, a column of three distinct values (its
    edges are midpoints) and a constant one; evidence with a NaN takes the binned path."""
    from kilomatch.probability import (_balanced_weight, _classifier, _score, bin_edges,
                                       on_raw_evidence, to_bins)
    rng = np.random.default_rng(7)
    n = 4000
    y = (rng.random(n) < 0.3).astype(np.int8)
    x = np.column_stack([rng.normal(y * 1.5, 1.0), rng.integers(0, 3, n) + 0.5 * y,
                         np.round(rng.normal(y, 1.0), 1), np.full(n, 2.0)])
    weight = _balanced_weight(y)
    edges = bin_edges(x, weight)
    model = _classifier(0).fit(to_bins(x, edges), y, sample_weight=weight)
    raw = on_raw_evidence(model, edges)
    assert raw is not None
    on_edges = np.column_stack([np.resize(e, 600) if e.size else np.full(600, 2.0)
                                for e in edges])
    beside = on_edges + rng.choice([-1e-12, 1e-12, 0.0], on_edges.shape)
    unseen = np.column_stack([rng.normal(0.5, 3.0, 600), rng.uniform(-2, 5, 600),
                              rng.normal(0.5, 3.0, 600), rng.normal(2.0, 1.0, 600)])
    for q in (x, on_edges, beside, unseen):
        expected = model.predict_proba(to_bins(q, edges))[:, 1]
        assert np.array_equal(raw.predict_proba(q)[:, 1], expected)
        assert np.array_equal(_score(model, edges, raw, q), expected)
    q = unseen.copy()
    q[3, 0] = np.nan
    assert np.array_equal(_score(model, edges, raw, q),
                          model.predict_proba(to_bins(q, edges))[:, 1])
    # a copy whose thresholds do not mean what it assumes (another layout) is not used
    from kilomatch.probability import _checked_raw
    assert _checked_raw(model, edges, raw, x) is raw
    wrong = on_raw_evidence(model, [e + 0.05 for e in edges])
    assert _checked_raw(model, edges, wrong, x) is None


def test_prior_from_anchor_region():
    """Half of the non-matches and 40% of the candidates lie in the anchor: 20% are matches."""
    anchor_non = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    anchor = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    assert match_prior(anchor, anchor_non) == pytest.approx(0.2)
    assert match_prior(anchor, np.zeros(10, bool)) == 0.0


def test_fit_is_deterministic_and_refuses_too_few_pairs():
    cand, _, non = _mixture(1, n_non=300, n_cand=1000)
    a = fit_match_probability(cand, non, cand[:, 1] > 30, non[:, 1] > 30, seed=4)
    b = fit_match_probability(cand, non, cand[:, 1] > 30, non[:, 1] > 30, seed=4)
    assert np.array_equal(a.candidate_probability, b.candidate_probability)
    assert np.array_equal(a.predict(cand[:7]), b.predict(cand[:7]))
    assert fit_match_probability(cand[:49], non, cand[:49, 1] > 30, non[:, 1] > 30) is None


def test_trees_train_on_one_in_three_pairs_beyond_the_anchor(monkeypatch):
    """The candidate rows beyond the anchor are thinned to about one in THIN_ANCHOR for the
    trees, each kept one weighing THIN_ANCHOR (so the class keeps its share of the far
    region); every other row (the candidates within the anchor, every known non-match) is
    kept at its own weight; the same rows for the same seed."""
    from kilomatch import probability
    rng = np.random.default_rng(0)
    anchor = rng.random(30_000) < 0.7
    usable, far = probability._thinned(anchor, 5000, seed=2)
    np.testing.assert_array_equal(far, np.r_[anchor, np.zeros(5000, bool)])
    assert usable[~far].all()
    kept = usable[far].mean()
    assert abs(kept - 1 / probability.THIN_ANCHOR) < 0.01
    # drawn in chunks: the draws of one call
    monkeypatch.setattr(probability, "CHUNK_ROWS", 7_000)
    again, _ = probability._thinned(anchor, 5000, seed=2)
    other, _ = probability._thinned(anchor, 5000, seed=3)
    assert np.array_equal(usable, again) and not np.array_equal(usable, other)
    once = np.random.default_rng([2, 11]).random(far.size) * probability.THIN_ANCHOR < 1
    np.testing.assert_array_equal(usable, ~far | once)
    # the weights: THIN_ANCHOR for a kept far row, the rows' own otherwise, each class half
    y = np.r_[np.ones(30_000, np.int8), np.zeros(5000, np.int8)]
    train = np.flatnonzero(usable)
    non_weight = rng.uniform(0.5, 2, 5000)
    for own in (None, np.r_[np.ones(30_000), non_weight]):
        w = probability._tree_weight(train, y, own, far)
        base = np.ones(train.size) if own is None else own[train]
        ratio = w / base
        cand = y[train] == 1
        near = ratio[cand & ~far[train]]
        assert np.allclose(near, near[0])
        assert np.allclose(ratio[far[train]], probability.THIN_ANCHOR * near[0])
        assert np.allclose(ratio[~cand], ratio[~cand][0])  # the non-matches' own weights kept
        assert np.isclose(w[cand].sum(), w[~cand].sum())
    # fewer pairs beyond the anchor than THIN_MIN_ROWS: every pair trains the trees
    few = np.zeros(30_000, bool)
    few[:probability.THIN_MIN_ROWS - 1] = True
    assert probability._thinned(few, 5000, seed=2) == (None, None)


def test_row_weights_read_as_the_array_of_every_row():
    """RowWeight (the candidates' ones, then the non-matches' weights) gives what the whole
    array would, by slice and by index, and so the same trees' weights and calibration."""
    from kilomatch.probability import RowWeight, _fit_calibration, _tree_weight
    rng = np.random.default_rng(3)
    non = rng.uniform(0.1, 2, 700)
    whole = np.r_[np.ones(1000), non]
    lazy = RowWeight(1000, non)
    assert len(lazy) == whole.size
    for rows in (slice(0, 1700), slice(900, 1200), slice(1500, 5000), slice(0, 0),
                 rng.choice(1700, 300, replace=False), np.array([999, 1000, 1699])):
        np.testing.assert_array_equal(lazy[rows], whole[rows])
    y = np.r_[np.ones(1000, np.int8), np.zeros(700, np.int8)]
    train = np.sort(rng.choice(1700, 900, replace=False))
    np.testing.assert_array_equal(_tree_weight(train, y, lazy, None),
                                  _tree_weight(train, y, whole, None))
    score = rng.random(1700) + y * 0.3
    a, b = (_fit_calibration(score, y, n_bags=0, weight=w) for w in (lazy, whole))
    np.testing.assert_array_equal(a.share, b.share)


def test_thinning_the_far_pairs_keeps_every_probability_close(monkeypatch):
    """Trees trained on a third of the pairs beyond the anchor score every pair (those left
    out of the training too, from the models of the other folds). Their probabilities differ
    from those of trees trained on every pair by less than two fits on every pair with
    different seeds differ (0.037 against 0.056 here), and are as accurate (Brier score)."""
    from kilomatch import probability
    cand, truth, non = _mixture(3, n_non=1500, n_cand=6000)
    monkeypatch.setattr(probability, "THIN_MIN_ROWS", 1000)  # the toy's 4,200 far pairs
    p = {}
    for thin, seed in ((1, 1), (1, 2), (3, 1)):
        monkeypatch.setattr(probability, "THIN_ANCHOR", thin)
        p[thin, seed] = fit_match_probability(cand, non, cand[:, 1] > 30, non[:, 1] > 30,
                                              seed=seed).candidate_probability
    assert np.isfinite(p[3, 1]).all() and not np.array_equal(p[1, 1], p[3, 1])
    seeds_apart = np.mean(np.abs(p[1, 1] - p[1, 2]))
    assert np.mean(np.abs(p[1, 1] - p[3, 1])) < 0.8 * seeds_apart

    def brier(q):
        return np.mean((q - truth) ** 2)
    assert brier(p[3, 1]) < 1.05 * brier(p[1, 1])


def test_folds_fitted_in_threads_give_the_same_probability():
    """The fold models are fitted in the run's threads; the training rows each fold draws
    (max_train below the rows, so they are drawn) and so every probability do not depend on
    it."""
    from kilomatch.parallel import threads_for_pairs
    cand, _, non = _mixture(2, n_non=600, n_cand=2400)
    fits = []
    for threads in (1, 2, 2):
        with threads_for_pairs(threads):
            fits.append(fit_match_probability(cand, non, cand[:, 1] > 30, non[:, 1] > 30,
                                              seed=3, max_train=1500))
    for other in fits[1:]:
        assert np.array_equal(fits[0].candidate_probability, other.candidate_probability)
        assert np.array_equal(fits[0].non_match_probability, other.non_match_probability)


def test_same_session_pairs_stay_in_session_shank_and_distance():
    depth = np.array([0.0, 10.0, 50.0, 200.0, 5.0, 8.0])
    session = np.array([0, 0, 0, 0, 1, 1])
    shank = np.array([0, 0, 1, 0, 0, 0])
    pairs = same_session_pairs(depth, session, 100.0, shank)
    assert pairs.tolist() == [[0, 1], [4, 5]]


@pytest.mark.parametrize("seed", range(3))
def test_same_session_pairs_equal_brute_force(seed):
    """Every pair of units of one session and shank within max_distance, each once (i < j),
    sorted; integer depths so that many pairs sit exactly at the limit."""
    rng = np.random.default_rng(seed)
    n = 250
    depth = rng.integers(0, 400, n).astype(float)
    session, shank = rng.integers(0, 5, n), rng.integers(0, 2, n)
    i, j = np.triu_indices(n, k=1)
    keep = ((session[i] == session[j]) & (shank[i] == shank[j])
            & (np.abs(depth[i] - depth[j]) <= 40.0))
    expect = np.column_stack([i[keep], j[keep]])
    got = same_session_pairs(depth, session, 40.0, shank)
    assert got.dtype == np.int64 and len(expect) > 300
    np.testing.assert_array_equal(got, expect)


def test_pair_evidence_columns():
    sims = np.array([[1.0, 2.0]])
    pos = np.array([[0.0, 10.0, 5.0], [3.0, 14.0, 5.0]])
    x = pair_evidence(sims, pos, np.array([100.0, 10.0]), np.array([99, 999]),
                      np.array([[0, 1]]))
    assert x.tolist() == [[1.0, 2.0, 3.0, 4.0, 0.0, 5.0, 1.0, 1.0, 2.0]]


def _lookalikes(seed, n_cand=6000, n_non=400, prior=0.15, share_alike=0.1):
    """Evidence of a toy study in space: matches have similarity z ~ N(2.5, 1) and lie
    N(0, 3 um) apart on each axis; non-matches z ~ N(0, 1), 0 to 100 um apart in a random
    direction, except a share of neighbours that look alike (z ~ N(2.5, 1)) 12 to 30 um
    apart. Few non-matches (400), as in a study of many short sessions. Returns candidates'
    evidence (P, K), truth (P,), lookalike (P,), non-matches' evidence (Q, K)."""
    rng = np.random.default_rng(seed)

    def draw(n, match):
        alike = np.ones(n, bool) if match else rng.random(n) < share_alike
        z = rng.normal(np.where(alike, 2.5, 0.0), 1.0)
        if match:
            offset = rng.normal(0, 3, (n, 3))
        else:
            direction = rng.normal(size=(n, 3))
            direction /= np.linalg.norm(direction, axis=1)[:, None]
            offset = direction * np.where(alike, rng.uniform(12, 30, n),
                                          rng.uniform(0, 100, n))[:, None]
        pos = np.zeros((2 * n, 3))
        pos[1::2] = offset  # pair k: units 2k (at 0) and 2k + 1
        ones = np.ones(2 * n)
        return pair_evidence(z[:, None], pos, 100 * ones, 1000 * ones,
                             np.arange(2 * n).reshape(-1, 2)), alike & ~match

    truth = rng.random(n_cand) < prior
    (x_m, _), (x_n, alike_n) = draw(truth.sum(), True), draw((~truth).sum(), False)
    cand = np.empty((n_cand, x_m.shape[1]))
    alike = np.zeros(n_cand, bool)
    cand[truth], cand[~truth], alike[~truth] = x_m, x_n, alike_n
    return cand, truth, alike, draw(n_non, False)[0]


def test_alike_neighbours_tens_of_um_apart_are_not_matches():
    """Two alike waveforms 12-30 um apart in space are two neurons. With few non-matches,
    trees that see |dx|, |dy|, |dz| only one at a time gave them a mean probability of
    0.18 and p >= 0.5 held 77% matches (3 seeds); with the distance as a column of the
    evidence, 0.15 and 82% (0.16 and 79% since the calibration is the mean of bootstrap
    fits)."""
    alike_p, precision = [], []
    for seed in range(3):
        cand, truth, alike, non = _lookalikes(seed)
        dy = cand[:, 2]  # the anchor: pairs more than 30 um apart in depth hold no match
        model = fit_match_probability(cand, non, dy > 30, non[:, 2] > 30, seed=0)
        p = model.candidate_probability
        alike_p.append(p[alike].mean())
        precision.append(truth[p >= 0.5].mean())
    assert np.mean(alike_p) < 0.167 and np.mean(precision) > 0.785, (alike_p, precision)


def test_average_link_split_breaks_a_chain_that_components_keep():
    """Units 0-2 and 3-5 are two neurons, joined by one strong link (2, 3): the connected
    components at 0.5 keep one cluster; the mean probability between the groups is low, so
    the average-link split takes them apart and records the cross pairs."""
    labels = np.zeros(6, np.int64)
    pairs = curation.within_cluster_pairs(labels)
    same_group = (pairs[:, 0] < 3) == (pairs[:, 1] < 3)
    p = np.where(same_group, 0.95, 0.05)
    p[(pairs[:, 0] == 2) & (pairs[:, 1] == 3)] = 0.9
    kept, _ = curation.split_clusters(labels, pairs, p, np.ones(len(p), bool), 0.5)
    assert np.unique(kept).size == 1
    split, removed = curation.split_by_average_link(labels, pairs, p, 0.5)
    assert split[:3].tolist() == [0, 0, 0] and len(set(split[3:])) == 1 and split[3] != 0
    assert len(removed) == 9
    # one neuron whose pairs are all probable stays whole
    whole, none = curation.split_by_average_link(labels, pairs, np.full(len(p), 0.7), 0.5)
    assert np.unique(whole).size == 1 and len(none) == 0


def test_curation_by_probability_records_reasons():
    """Average-link split first, then a same-session conflict dropped by probability."""
    labels = np.array([0, 0, 0, 0])
    session = np.array([0, 1, 2, 2])
    pairs = curation.within_cluster_pairs(labels)  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    # unit 3 is on average not probably the neuron of 0-2: split off, then dissolved
    cur = curation.curate_by_probability(labels, session, pairs,
                                         np.array([0.9, 0.9, 0.6, 0.9, 0.5, 0.0]), 0.5)
    assert cur.labels.tolist() == [0, 0, 0, -1]
    assert {curation.REASONS[k] for k in cur.removed_reason} == {"split_average_probability"}
    # unit 3 joins on average (mean 0.53), but clashes with unit 2 of its session and is
    # less probably matched to the rest (0.53 vs 0.6): the conflict drops it
    cur = curation.curate_by_probability(labels, session, pairs,
                                         np.array([0.9, 0.9, 0.8, 0.9, 0.8, 0.0]), 0.5)
    assert cur.labels.tolist() == [0, 0, 0, -1]
    assert {curation.REASONS[k] for k in cur.removed_reason} == {"same_session_conflict"}


def test_match_confidence_and_table():
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    conf = linking.match_confidence(4, pairs, np.array([0.9, 0.6, 0.8]))
    assert conf[:3].tolist() == [0.6, 0.8, 0.6] and np.isnan(conf[3])
    # the evidence is kept for the pairs of probability >= 0.05 only (the first and third)
    links = linking.ProbabilityLinks(None, ["Waveform"], np.array([0.9, 0.01, 0.3]),
                                     np.array([[1.0], [3.0]]), np.zeros(4))
    table = linking.match_table([(np.array([0, 1, 2, 3]), np.array([[2, 3], [0, 1], [0, 2]]),
                                  links)], np.array([1, -1, 1, 1]), np.array([1, 2, 3, 4]),
                                np.zeros((4, 3)))
    assert table["unit_a"].tolist() == [0, 2] and table["unit_b"].tolist() == [2, 3]
    assert table["probability"].tolist() == [0.3, 0.9]
    assert table["Waveform"].tolist() == [3.0, 1.0]
    assert table["same_final_cluster"].tolist() == ["yes", "yes"]


def test_probability_is_learned_only_when_something_uses_it():
    """Learned for the default curation (cut_probability < 1 with a split on), when asked for,
    or to cluster by it; not when no split needs confirming and nothing asks for it."""
    from kilomatch.pipeline import needs_probability
    from kilomatch.settings import load as load_settings

    def settings(**ac):
        return load_settings({"path_to_data": ".", "output_folder": "out",
                              "autoCuration": ac})
    assert needs_probability(settings())
    assert not needs_probability(settings(cut_probability=1.0))
    assert not needs_probability(settings(auto_split=False, position_split=False))
    assert needs_probability(load_settings({"path_to_data": ".", "output_folder": "out",
                                            "autoCuration": {"cut_probability": 1.0},
                                            "clustering": {"match_probability": True}}))


def test_non_match_level_rises_when_the_prior_is_overestimated():
    """The probability that 90% of the known non-matches stay under rises with the prior's
    error (every non-match then gets some probability), which is when a fixed low
    cut_probability would veto every cut. On this toy mixture 10% of the non-matches lie as
    close as matches (dy < 10 um), so the level is 0.15 with the prior right (and the median
    non-match gets 0.01: the mean of bootstrap calibrations has no floor at exactly 0)."""
    cand, _, non = _mixture(0)
    right = fit_match_probability(cand, non, cand[:, 1] > 30, non[:, 1] > 30, seed=0)
    assert right.non_match_level(0.9) < 0.2 and right.non_match_level(0.5) < 0.02
    # an anchor holding a third as many candidates as it should: prior ~0.7 instead of 0.15
    anchor = (cand[:, 1] > 30) & (np.arange(len(cand)) % 3 == 0)
    high = fit_match_probability(cand, non, anchor, non[:, 1] > 30, seed=0)
    assert high.prior > 0.5 and high.non_match_level(0.9) > right.non_match_level(0.9) + 0.3
    assert high.non_match_level(0.5) > 0.3


def test_scoring_in_chunks_gives_the_same_probability(monkeypatch):
    """The classifier scores the pairs a chunk of rows at a time (memory at 10^5 units), and
    a subset of the candidates is fitted without copying them: neither changes a value."""
    from kilomatch import probability
    cand, _, non = _mixture(2, n_non=600, n_cand=2400)
    rows = np.flatnonzero(cand[:, 2] > 0.2)
    whole = fit_match_probability(cand[rows], non, cand[rows, 1] > 30, non[:, 1] > 30, seed=1)
    monkeypatch.setattr(probability, "CHUNK_ROWS", 97)
    parts = fit_match_probability(cand, non, cand[rows, 1] > 30, non[:, 1] > 30, seed=1,
                                  candidate_rows=rows)
    assert np.array_equal(whole.candidate_probability, parts.candidate_probability)
    assert np.array_equal(whole.non_match_probability, parts.non_match_probability)
    assert np.array_equal(whole.predict(cand), parts.predict(cand))


def test_evidence_read_lazily_is_the_same(monkeypatch):
    """The candidates' evidence is computed where its rows are read (LazyEvidence), never
    held whole: any rows read (index array, mask, slice) equal those rows of pair_evidence,
    and a fit and its predictions from it equal those from the whole matrix."""
    from kilomatch import probability
    rng = np.random.default_rng(3)
    n, p = 300, 2500
    positions = rng.uniform(0, 200, (n, 3))
    amplitude = rng.uniform(30, 300, n)
    n_spikes = rng.integers(10, 5000, n)
    pairs = np.sort(rng.integers(0, n, (p, 2)), axis=1)
    sims = rng.normal(size=(p, 2))
    sims[:, 0] += 3 * (np.abs(positions[pairs[:, 0], 1] - positions[pairs[:, 1], 1]) < 10)
    whole = pair_evidence(sims, positions, amplitude, n_spikes, pairs)
    lazy = probability.LazyEvidence(sims, positions, amplitude, n_spikes, pairs)
    assert len(lazy) == p
    idx = rng.permutation(p)[:700]
    mask = rng.random(p) < 0.3
    for rows in (idx, mask, slice(100, 900)):
        assert np.array_equal(lazy[rows], whole[rows])
    non_pairs = np.sort(rng.integers(0, n, (800, 2)), axis=1)
    non = pair_evidence(rng.normal(size=(800, 2)), positions, amplitude, n_spikes, non_pairs)
    far, far_non = whole[:, 3] > 60, non[:, 3] > 60
    monkeypatch.setattr(probability, "CHUNK_ROWS", 211)
    a = fit_match_probability(whole, non, far[idx], far_non, seed=2, candidate_rows=np.sort(idx))
    b = fit_match_probability(lazy, non, far[idx], far_non, seed=2, candidate_rows=np.sort(idx))
    assert np.array_equal(a.candidate_probability, b.candidate_probability)
    assert np.array_equal(a.predict(whole[mask]), b.predict(
        probability.LazyEvidence(sims[mask], positions, amplitude, n_spikes, pairs[mask])))


def test_calibration_on_binned_scores_is_the_fit_on_every_row(monkeypatch):
    """Without bootstrap, the calibration is fitted on the scores pooled into bins (memory at
    10^5 units) and applied in chunks: where every distinct score has a bin of its own it is
    the same map as scikit-learn's fit on every row with balanced weights, on scores with
    many ties; with 256 bins for ~600 distinct scores, its pairs move by 0.005 on average."""
    from sklearn.isotonic import IsotonicRegression

    from kilomatch import probability
    rng = np.random.default_rng(5)
    y = (rng.random(5000) < 0.3).astype(np.int8)
    score = np.round(rng.normal(y * 1.5, 1.0), 2)  # ~600 distinct values for 5,000 rows
    every_row = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        score, y, sample_weight=probability._balanced_weight(y))
    monkeypatch.setattr(probability, "CHUNK_ROWS", 333)
    binned = probability._fit_calibration(score, y, n_bags=0)
    assert binned.knots.size == np.unique(score).size
    probe = np.linspace(-5, 6, 2001)
    np.testing.assert_allclose(probability._calibrated(binned, probe),
                               every_row.predict(probe), rtol=0, atol=1e-12)
    np.testing.assert_allclose(probability._calibrated(binned, score),
                               every_row.predict(score), rtol=0, atol=1e-12)
    coarse = probability._fit_calibration(score, y, n_bags=0, n_bins=256)
    assert coarse.knots.size <= 256
    assert np.mean(np.abs(coarse.predict(score) - every_row.predict(score))) < 0.005


def test_calibration_is_the_mean_of_bootstrap_fits():
    """The calibration is the mean of seeded bootstrap fits: the same seed gives the same
    map, another seed another one; the map never decreases (the pairs' ranking is kept),
    and it has more distinct levels than one isotonic fit's staircase (a block of pairs
    no longer shares one value set by the noise of a few same-session pairs)."""
    from kilomatch import probability
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(3000), np.zeros(300)].astype(np.int8)
    score = np.r_[np.where(rng.random(3000) < 0.2, rng.normal(2, 1, 3000),
                           rng.normal(0, 1, 3000)), rng.normal(0, 1, 300)]
    probe = np.linspace(-4, 6, 5001)
    bagged = probability._fit_calibration(score, y, seed=0)
    again = probability._fit_calibration(score, y, seed=0)
    other = probability._fit_calibration(score, y, seed=1)
    single = probability._fit_calibration(score, y, n_bags=0)
    np.testing.assert_array_equal(bagged.predict(probe), again.predict(probe))
    assert not np.array_equal(bagged.predict(probe), other.predict(probe))
    assert np.all(np.diff(bagged.predict(probe)) >= -1e-12)
    assert np.unique(bagged.predict(score)).size > 3 * np.unique(single.predict(score)).size


def test_similarity_columns_read_as_one_array():
    """The probability's candidate similarities are read from the final clustering's own
    columns (no (P, F) copy): rows taken by index, mask or slice are those of the stacked
    array."""
    from kilomatch.pipeline import Columns
    rng = np.random.default_rng(0)
    held = rng.normal(size=(50, 3))
    extra = rng.normal(size=(50, 1))
    cols = Columns([held[:, 2], extra[:, 0], held[:, 0]], 50)
    whole = np.column_stack([held[:, 2], extra[:, 0], held[:, 0]])
    assert len(cols) == 50 and cols.shape == (50, 3)
    for rows in (np.array([4, 0, 49, 4]), rng.random(50) < 0.3, slice(5, 20), slice(None)):
        np.testing.assert_array_equal(cols[rows], whole[rows])
    assert np.shares_memory(cols.columns[0], held)


def test_non_match_share_is_the_tail_share_of_the_known_non_matches():
    """A score's share of the same-session pairs scoring at least as high, counting one more
    non-match at the score (never 0); every within-cluster pair that cannot link reads NaN,
    a candidate its stored score, another linkable pair the fold models' mean score."""
    from kilomatch.probability import MatchModel

    class Scored(MatchModel):
        def score(self, evidence):
            return np.asarray(evidence, np.float64)[:, 0]

    model = Scored([], None, 0.1, 0, 4, np.zeros(0), np.array([0.0, 0.0, 0.01, 0.5]),
                   non_match_score=np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    np.testing.assert_allclose(model.non_match_share(np.array([0.0, 0.25, 0.4, 0.5])),
                               [5 / 5, 3 / 5, 2 / 5, 1 / 5])
    links = linking.ProbabilityLinks(model, ["Waveform"], np.array([0.5, 0.5]),
                                     np.zeros((0, 1)), None,
                                     candidate_score=np.array([0.35, 0.05], np.float32))
    candidates = np.array([[0, 1], [0, 2]])
    q_pairs = np.array([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]])
    # the last pair's probability is above the non-matches' median (0.005): the probability
    # has ranked it, and its share is 1
    share = linking.within_cluster_share(links, lambda q: np.full((len(q), 1), 0.15),
                                         candidates, q_pairs,
                                         np.array([True, True, True, False, True]), 4,
                                         np.array([0.005, 0.0, 0.005, 0.0, 0.3]))
    np.testing.assert_allclose(share[[0, 1, 2, 4]], [2 / 5, 5 / 5, 4 / 5, 1.0])
    assert np.isnan(share[3])


def test_the_fit_runs_on_one_openmp_thread_even_as_scikit_learns_first_use():
    """The trees are fitted on one OpenMP thread also in a process that has not imported
    scikit-learn before the fit (a notebook using this module alone): threadpoolctl's limit
    reaches only the runtimes already loaded, so the classifier is loaded first."""
    import subprocess
    import sys
    from pathlib import Path
    code = """
import sys
import numpy as np
from threadpoolctl import threadpool_info
from kilomatch import parallel, probability
assert 'sklearn' not in sys.modules
seen = []
real = probability._classifier
def spy(seed, *trees):
    seen.append([p['num_threads'] for p in threadpool_info() if p['user_api'] == 'openmp'])
    return real(seed, *trees)
probability._classifier = spy
rng = np.random.default_rng(0)
cand, non = rng.normal(size=(400, 3)), rng.normal(size=(300, 3))
probability.fit_match_probability(cand, non, cand[:, 1] > 1, non[:, 1] > 1, n_folds=2)
with parallel.threads_for_pairs(2):  # the folds fitted in threads: each on one OpenMP thread
    probability.fit_match_probability(cand, non, cand[:, 1] > 1, non[:, 1] > 1, n_folds=3)
sys.exit(0 if seen and all(t == [1] for t in seen) else f'openmp threads {seen}')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_far_apart_pairs_in_blocks_are_those_of_the_whole():
    """The prior's anchor (pairs farther apart than 30% of max_distance) is found a block of
    pairs at a time (28 M pairs' depths were 1 GB at 10^5 units): the same pairs as at once."""
    from kilomatch.linking import _far_apart
    rng = np.random.default_rng(2)
    depth = rng.uniform(0, 3000, 400)
    pairs = rng.integers(0, 400, (5000, 2))
    rows = np.sort(rng.choice(5000, 3000, replace=False)).astype(np.int32)
    whole = np.abs(np.diff(depth[pairs[rows]], axis=1))[:, 0] > 30.0
    assert whole.any() and not whole.all()
    every = np.abs(np.diff(depth[pairs], axis=1))[:, 0] > 30.0
    for block in (1, 7, 4096):
        np.testing.assert_array_equal(_far_apart(depth, pairs, rows, 30.0, block), whole)
        # rows None: every pair, read in slices
        np.testing.assert_array_equal(_far_apart(depth, pairs, None, 30.0, block), every)


def _study_with_sorter_splits(seed, n_neurons=150, n_sessions=4, n_split=40):
    """A toy study for fit_links: every neuron in every session, 2 um position noise, three
    similarity features from noisy per-unit codes (one neuron's units alike). In session 0
    the sorter split ``n_split`` neurons in two units each, as alike as a match. Returns
    (pairs, similarities callable, positions, session, neuron, split pairs (n_split, 2))."""
    rng = np.random.default_rng(seed)
    neuron = np.r_[np.tile(np.arange(n_neurons), n_sessions), np.arange(n_split)]
    session = np.r_[np.repeat(np.arange(n_sessions), n_neurons), np.zeros(n_split, int)]
    pairs, similarities, positions = _toy_units(rng, neuron, session, n_neurons, 0.3)
    split = np.column_stack([np.arange(n_split), n_sessions * n_neurons + np.arange(n_split)])
    return pairs, similarities, positions, session, neuron, split


def _toy_units(rng, neuron, session, n_neurons, code_noise):
    """Units of the toy studies: each neuron (of n_neurons) at a random depth (0-2000 um) and
    x (0-40 um), with a code of three numbers; each unit (neuron (N,), session (N,)) at its
    neuron's place +- 2 um, its code +- code_noise. Returns (candidate pairs within 100 um,
    similarities callable: 2.5 - 2 |code difference| per feature, positions (N, 3))."""
    from kilomatch.similarity import candidate_pairs
    depth = rng.uniform(0, 2000, n_neurons)
    x = rng.uniform(0, 40, n_neurons)
    code = rng.normal(size=(n_neurons, 3))
    n = neuron.size
    positions = np.column_stack([x[neuron], depth[neuron], np.full(n, 20.0)])
    positions += rng.normal(0, 2, (n, 3))
    unit_code = code[neuron] + rng.normal(0, code_noise, (n, 3))
    pairs = candidate_pairs(positions[:, 1], session, 100.0, None, int(session.max()) + 1)

    def similarities(q):
        return 2.5 - 2.0 * np.abs(unit_code[q[:, 0]] - unit_code[q[:, 1]])

    return pairs, similarities, positions


def test_sorter_splits_are_left_out_of_the_non_matches():
    """A unit the sorter split in two makes a same-session pair as alike as a match. Left
    among the known non-matches, it tells the classifier such evidence is no match: the true
    matches' probability fell (mean 0.72 against 0.92 here, 40 splits among ~3,900
    same-session pairs; the prior came out 0.058 against 0.066, truly 0.066). Left out
    (fit_links' not_non_matches, the refractory test's splits), the matches get their
    probability back, and only those pairs leave the fit."""
    pairs, similarities, positions, session, neuron, split = _study_with_sorter_splits(0)
    n = len(session)
    ones = np.ones(n)
    fits = {}
    for name, exclude in (("kept", None), ("left out", split)):
        links, _ = linking.fit_links(pairs, similarities, positions, 100 * ones, 1000 * ones,
                                     session, np.zeros(n, int), 100.0, 4, seed=0,
                                     with_clusters=False, not_non_matches=exclude)
        fits[name] = links
    truth = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    p_kept = fits["kept"].candidate_probability[truth].mean()
    p_out = fits["left out"].candidate_probability[truth].mean()
    assert p_out > p_kept + 0.05, (p_kept, p_out)
    assert p_out > 0.9
    # the split pairs inside the fit's window, and no other, left the known non-matches
    removed = fits["kept"].model.n_non_matches - fits["left out"].model.n_non_matches
    inside = linking.full_window(positions[:, 1], session, 100.0)
    assert removed == np.count_nonzero(inside[split[:, 0]] & inside[split[:, 1]]) > 20


def test_prior_by_gap_follows_the_evidence_of_each_gap_at_the_pooled_level():
    """Pairs whose evidence is sure either way (probability 0 or 1 at the pooled prior) hold
    their gap's share of matches outright: gaps holding 30%, 20%, 10% sure matches get
    shares in that proportion, scaled so that their mean over the pairs is the pooled prior.
    A study whose gaps look alike gets one prior; a gap of too few pairs takes the one
    before it."""
    from kilomatch.probability import prior_by_gap
    rng = np.random.default_rng(0)
    gap = np.repeat([1, 2, 3], 2000)
    sure = np.r_[rng.random(2000) < 0.3, rng.random(2000) < 0.2, rng.random(2000) < 0.1]
    p = np.where(sure, 1.0, 0.0)
    share = np.array([sure[gap == g].mean() for g in (1, 2, 3)])
    for prior in (0.2, 0.1):
        fitted = prior_by_gap(p, gap, prior)
        np.testing.assert_allclose(fitted[1:], share * prior / share.mean(), rtol=1e-3)
        assert fitted[0] == fitted[1]
    # evidence of mixed strength: the shares are those whose probabilities average to them
    p = rng.uniform(0, 1, 6000)
    np.testing.assert_allclose(prior_by_gap(p, gap, 0.3)[1:], 0.3, atol=0.02)
    few = np.r_[gap, np.full(20, 4)]
    fitted = prior_by_gap(np.r_[np.where(sure, 1.0, 0.0), np.ones(20)], few, 0.2)
    assert fitted[4] == fitted[3]


def test_probability_moved_to_its_gaps_prior_keeps_the_evidence():
    """A probability fitted with one prior, moved to another: the odds scale by the priors'
    odds (the likelihood ratio of the evidence is kept); at the same prior nothing moves;
    0 and 1 stay; gaps past the fitted ones take the last."""
    from kilomatch.probability import with_gap_prior
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 0.5])
    gap = np.array([1, 1, 1, 2, 2, 9])
    gap_prior = np.array([0.1, 0.1, 0.01])
    out = with_gap_prior(p, 0.1, gap_prior, gap)
    np.testing.assert_allclose(out[:3], p[:3])
    odds = lambda q: q / (1 - q)  # noqa: E731
    assert odds(out[3]) == pytest.approx(odds(0.9) * odds(0.01) / odds(0.1))
    assert out[4] == 1.0 and out[0] == 0.0
    assert out[5] == pytest.approx(odds(0.01) / odds(0.1) / (1 + odds(0.01) / odds(0.1)))
    np.testing.assert_array_equal(with_gap_prior(p, 0.0, gap_prior, gap), p)


def _study_with_turnover(seed, n_alive=150, n_sessions=6, loss=0.4):
    """A toy study for fit_links whose neurons are lost: after each session a neuron is
    replaced by a new one elsewhere with probability ``loss``. Units as in
    _study_with_sorter_splits. Returns (pairs, similarities, positions, session, neuron)."""
    rng = np.random.default_rng(seed)
    alive = np.arange(n_alive)
    next_neuron = n_alive
    neuron, session = [], []
    for s in range(n_sessions):
        neuron.append(alive.copy())
        session.append(np.full(n_alive, s))
        lost = rng.random(n_alive) < loss
        alive[lost] = next_neuron + np.arange(lost.sum())
        next_neuron += lost.sum()
    neuron, session = np.concatenate(neuron), np.concatenate(session)
    pairs, similarities, positions = _toy_units(rng, neuron, session, next_neuron, 0.5)
    return pairs, similarities, positions, session, neuron


def test_pairs_many_sessions_apart_get_their_own_prior():
    """With 40% of the neurons lost per session over 8 sessions, a pair 4-7 sessions apart
    is a match 3-20 times less often than a pair of neighbouring sessions. One prior for all
    gaps gives the long gaps' pairs in all more probability than they hold matches (376 for
    177, 242 for 155 here) and the neighbouring sessions' less (588 for 653, 462 for 617);
    the prior of each gap takes the long gaps' at least 50% closer (193, 159) and the two
    groups' misses together at least a third closer (264 -> 125, 242 -> 59). Off, no prior
    by gap. (The neighbouring sessions' pairs alone: 762 and 562, over-corrected at the
    first seed. With one cross-fit in place of the mean of three, linking.PROBABILITY_FITS,
    723 and 543, closer at both, and the long gaps' 202 and 190: a single fit's misses move
    with its draw, 25-82 over the long gaps and 70-94 over the neighbouring sessions at
    seed 0 with three seeds of its own. Six sessions, as before the pairs beyond the
    prior's anchor read 0, no longer tell: the noise of those pairs was most of one
    prior's excess there. This study is a large fit, THIN_MIN_ROWS pairs beyond the anchor
    or more.)"""
    for seed in (0, 1):
        pairs, similarities, positions, session, neuron = _study_with_turnover(
            seed, n_sessions=8)
        n = len(session)
        ones = np.ones(n)
        truth = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
        gap = np.abs(session[pairs[:, 1]] - session[pairs[:, 0]])
        fits = {}
        for on in (False, True):
            fits[on], _ = linking.fit_links(pairs, similarities, positions, 100 * ones,
                                            1000 * ones, session, np.zeros(n, int), 100.0, 8,
                                            seed=0, with_clusters=False, gap_prior=on)
        miss = {on: [fits[on].candidate_probability[rows].sum() - truth[rows].sum()
                     for rows in (gap >= 4, gap == 1)] for on in fits}
        assert abs(miss[True][0]) < 0.5 * abs(miss[False][0]), (seed, miss)
        assert np.abs(miss[True]).sum() < 2 / 3 * np.abs(miss[False]).sum(), (seed, miss)
        # one prior overestimated the long gaps' pairs and underestimated the neighbouring
        # sessions'
        assert miss[False][0] > 0 > miss[False][1], (seed, miss)
        assert fits[False].gap_prior is None
        # falls with the gap (up to 0.002: the long gaps' few pairs, two pairs of sessions 6
        # apart; the truth falls throughout)
        prior = fits[True].gap_prior[1:]
        assert np.all(np.diff(prior) < 0.002) and prior[0] > 3 * prior[-1], prior


def _assert_far_pairs_read_zero(links, trees_alone, evidence, pairs, far, n):
    """The candidate pairs ``far`` (P,) bool read 0, the others keep the trees' probability
    (``trees_alone``: the links fitted without the rule); pairs that are not candidates (here:
    the far ones left out of the list) read the fold models' mean, and the same rule."""
    import dataclasses
    assert np.all(links.candidate_probability[far] == 0)
    np.testing.assert_array_equal(links.candidate_probability[~far],
                                  trees_alone.candidate_probability[~far])
    near_only = dataclasses.replace(links,
                                    candidate_probability=links.candidate_probability[~far])
    p = linking.within_cluster_probability(near_only, evidence, pairs[~far], pairs,
                                           np.ones(len(pairs), bool), n)
    assert np.all(p[far] == 0)
    np.testing.assert_array_equal(p[~far], links.candidate_probability[~far])


def test_pairs_beyond_the_prior_anchor_read_no_match(monkeypatch):
    """The prior rests on pairs farther apart in corrected depth than 30% of max_distance
    holding no match. The trees alone give such pairs the non-matches' level with noise
    around it: here 200+ of them over 0.05, 50 matches' worth of probability in all, where
    none is a match. They read 0, candidates and other linkable pairs alike; the nearer
    pairs keep their probability, and the known non-matches' level is that of the nearer
    ones."""
    pairs, similarities, positions, session, neuron = _study_with_turnover(0)
    n = len(session)
    ones = np.ones(n)
    depth = positions[:, 1]
    far = np.abs(depth[pairs[:, 1]] - depth[pairs[:, 0]]) > 30.0
    assert not (far & (neuron[pairs[:, 0]] == neuron[pairs[:, 1]])).any()

    def fit():
        return linking.fit_links(pairs, similarities, positions, 100 * ones, 1000 * ones,
                                 session, np.zeros(n, int), 100.0, 6, seed=0,
                                 with_clusters=False, gap_prior=True)

    links, evidence = fit()
    with monkeypatch.context() as patch:
        patch.setattr(linking, "no_match_beyond_anchor", lambda p, *args: p)
        trees_alone, _ = fit()
    assert (trees_alone.candidate_probability[far] > 0.05).sum() > 100
    assert trees_alone.candidate_probability[far].sum() > 20
    _assert_far_pairs_read_zero(links, trees_alone, evidence, pairs, far, n)
    # the known non-matches' level (the cut veto's floor) is read among the same-session
    # pairs of the fit within the anchor, not the far ones the rule gives 0
    from kilomatch.probability import same_session_pairs
    non = same_session_pairs(depth, session, 100.0, np.zeros(n, int))
    inside = linking.full_window(depth, session, 100.0)
    non = non[inside[non[:, 0]] & inside[non[:, 1]]]
    near = np.abs(depth[non[:, 1]] - depth[non[:, 0]]) <= 30.0
    assert len(links.model.non_match_probability) == near.sum() < 0.5 * len(non)


def test_pairs_far_apart_across_the_probe_read_no_match(monkeypatch):
    """x does not drift: pairs farther apart across the probe than LATERAL_ANCHOR_FACTOR
    times the anchor (60 um here) hold no match and read 0, candidates and other linkable
    pairs alike, whatever the trees say; the nearer pairs keep the trees' probability."""
    pairs, similarities, positions, session, neuron = _study_with_turnover(0)
    positions = positions.copy()
    positions[neuron % 2 == 1, 0] += 80.0  # the odd neurons across the probe
    n = len(session)
    ones = np.ones(n)
    x = positions[:, 0]
    across = np.abs(x[pairs[:, 1]] - x[pairs[:, 0]]) > 60.0
    assert across.sum() > 100 and not (across & (neuron[pairs[:, 0]] == neuron[pairs[:, 1]])).any()

    def fit():
        return linking.fit_links(pairs, similarities, positions, 100 * ones, 1000 * ones,
                                 session, np.zeros(n, int), 100.0, 6, seed=0,
                                 with_clusters=False)

    links, evidence = fit()
    with monkeypatch.context() as patch:
        patch.setattr(linking, "LATERAL_ANCHOR_FACTOR", np.inf)
        trees_alone, _ = fit()
    assert (trees_alone.candidate_probability[across] > 0).sum() > 10
    _assert_far_pairs_read_zero(links, trees_alone, evidence, pairs, across, n)


def test_match_confidence_skips_pairs_of_unknown_probability():
    """A within-cluster pair with no probability (NaN: a join's pair that is no candidate)
    neither hides a unit's known lowest probability nor makes it NaN."""
    from kilomatch.linking import match_confidence
    pairs = np.array([[0, 1], [1, 2], [0, 2], [3, 4]])
    p = np.array([0.9, 0.6, np.nan, np.nan])
    conf = match_confidence(6, pairs, p)
    np.testing.assert_allclose(conf[:3], [0.9, 0.6, 0.6])
    assert np.isnan(conf[3:]).all()  # units 3 and 4: nothing known; unit 5: in no cluster


def test_the_probability_is_the_mean_of_fits_that_move_less_with_the_seed(monkeypatch):
    """One cross-fit's probability of a pair moves with its draws (folds, training rows,
    calibration); linking.PROBABILITY_FITS fits with their own seeds are averaged. The mean
    is each pair's mean over the single fits (and MatchModel.predict the mean of their
    predictions), and between settings seeds 0 and 1 it moves less than one fit does (mean
    |change| 0.0058 against 0.0083 here). A fit of more than linking.FITS_MAX_PAIRS
    candidate pairs is made once."""
    pairs, similarities, positions, session, neuron = _study_with_turnover(0)
    n = len(session)
    ones = np.ones(n)

    def fit(seed, n_fits):
        monkeypatch.setattr(linking, "PROBABILITY_FITS", n_fits)
        links, evidence = linking.fit_links(pairs, similarities, positions, 100 * ones,
                                            1000 * ones, session, np.zeros(n, int), 100.0, 6,
                                            seed=seed, with_clusters=False)
        return links, evidence

    mean, evidence = fit(0, 3)
    single = [fit(linking.FIT_SEED_STRIDE * r, 1)[0] for r in range(3)]
    np.testing.assert_allclose(mean.candidate_probability,
                               np.mean([s.candidate_probability for s in single], axis=0),
                               atol=1e-12)
    other = np.column_stack([np.arange(0, n - 1, 7), np.arange(1, n, 7)])  # not all candidates
    x = evidence(other)
    np.testing.assert_allclose(mean.model.predict(x),
                               np.mean([s.model.predict(x) for s in single], axis=0), atol=1e-12)
    assert len(mean.model.members) == 2
    moved = {k: np.abs(fit(1, k)[0].candidate_probability
                       - (mean if k == 3 else single[0]).candidate_probability).mean()
             for k in (1, 3)}
    assert moved[3] < 0.8 * moved[1], moved
    # a fit of more candidate pairs than FITS_MAX_PAIRS is made once
    monkeypatch.setattr(linking, "FITS_MAX_PAIRS", 1000)
    large, _ = fit(0, 3)
    assert not large.model.members
    np.testing.assert_array_equal(large.candidate_probability, single[0].candidate_probability)
