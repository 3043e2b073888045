"""Known non-matches derived from sure matches (kilomatch.derived_non_matches) and the match
probability's second fit with them (kilomatch.linking.fit_with_derived)."""

import numpy as np
import pytest

from kilomatch import derived_non_matches as dnm
from kilomatch import linking
from kilomatch.probability import _calibrated, _fit_calibration

# Neuron A: units 0 (session 0), 2 (session 1), 4 (session 2); neuron B: units 1 (session 0)
# and 3 (session 1). Sure matches join A's units and B's units.
SESSION = np.array([0, 0, 1, 1, 2])
DEPTH = np.array([100.0, 120.0, 101.0, 119.0, 100.0])
SURE = np.array([[0, 2], [2, 4], [1, 3]])
GROUP = dnm.sure_groups(5, np.vstack([SURE, [[0, 3]]]),
                        np.array([0.995, 0.99, 0.999, 0.98]) >= dnm.SURE_PROBABILITY)
SAME_SESSION = np.array([[0, 1], [2, 3]])


def test_sure_matches_group_units_and_a_less_sure_pair_does_not():
    assert GROUP[0] == GROUP[2] == GROUP[4] != GROUP[1] == GROUP[3]


def test_two_units_of_one_session_make_every_pair_of_their_groups_a_known_non_match():
    pairs, weight, same_weight = dnm.derive(SAME_SESSION, GROUP, SESSION, DEPTH,
                                            np.ones(5, bool), 100.0)
    # every pair of an A unit and a B unit of two sessions (pairs of one session are the
    # same-session pairs themselves)
    assert pairs.tolist() == [[0, 3], [1, 2], [1, 4], [3, 4]]
    # each same-session pair and its four derived pairs weigh 1 together; every derived
    # pair is reached from both same-session pairs
    np.testing.assert_allclose(same_weight, [0.2, 0.2])
    np.testing.assert_allclose(weight, [0.4] * 4)
    assert same_weight.sum() + weight.sum() == pytest.approx(len(SAME_SESSION))


def test_far_unusable_and_within_group_pairs_are_not_derived():
    usable = np.ones(5, bool)
    usable[3] = False
    depth = DEPTH.copy()
    depth[4] = 400.0  # 280-300 um from B's units
    pairs, weight, same_weight = dnm.derive(SAME_SESSION, GROUP, SESSION, depth, usable, 100.0)
    assert pairs.tolist() == [[1, 2]]
    # a same-session pair whose two units are one group (a sorter's split) proves nothing
    one_group = np.zeros(5, np.int64)
    pairs, weight, same_weight = dnm.derive(SAME_SESSION, one_group, SESSION, DEPTH,
                                            np.ones(5, bool), 100.0)
    assert len(pairs) == 0 and same_weight.tolist() == [1.0, 1.0]


def test_past_the_budget_a_seeded_draw_of_the_pairs_is_taken(monkeypatch):
    # 2 same-session pairs x 6 pairs of their groups' units: 12, of which 8 pass
    monkeypatch.setattr(dnm, "PER_SAME_SESSION", 3)
    args = (SAME_SESSION, GROUP, SESSION, DEPTH, np.ones(5, bool), 100.0)
    pairs, weight, same_weight = dnm.derive(*args, seed=1)
    assert set(map(tuple, pairs)) <= {(0, 3), (1, 2), (1, 4), (3, 4)}
    # 6 of the 12 drawn: fewer derived pairs reached from each same-session pair, which
    # with them still weighs 1
    assert np.all(same_weight > 0.2)
    assert same_weight.sum() + weight.sum() == pytest.approx(len(SAME_SESSION))
    again = dnm.derive(*args, seed=1)
    np.testing.assert_array_equal(again[0], pairs)
    np.testing.assert_array_equal(again[1], weight)
    monkeypatch.setattr(dnm, "PER_SAME_SESSION", 100)
    assert len(dnm.derive(*args, seed=1)[0]) == 4


def test_derived_pairs_keep_to_the_candidates_session_gap():
    """Pairs more sessions apart than the candidates' max_session_gap are no candidates'
    kin: they are not derived (B's unit 1 of session 0 and A's unit 4 of session 2 here)."""
    args = (SAME_SESSION, GROUP, SESSION, DEPTH, np.ones(5, bool), 100.0)
    pairs, weight, same_weight = dnm.derive(*args, max_session_gap=1)
    assert pairs.tolist() == [[0, 3], [1, 2], [3, 4]]
    assert same_weight.sum() + weight.sum() == pytest.approx(len(SAME_SESSION))
    assert dnm.derive(*args, max_session_gap=0)[0].tolist() == [[0, 3], [1, 2], [1, 4],
                                                               [3, 4]]


def test_the_pairs_of_two_groups_share_a_fold(monkeypatch):
    pairs = np.array([[0, 1], [2, 3], [0, 3], [4, 1], [0, 2]])
    fold = dnm.group_folds(pairs, GROUP, 3, seed=0)
    assert fold.dtype == np.int8
    assert fold[0] == fold[1] == fold[2] == fold[3] >= 0
    assert fold[4] == -1  # within one group: a random fold
    np.testing.assert_array_equal(dnm.group_folds(pairs, GROUP, 3, seed=0, rows=[3, 4]),
                                  fold[[3, 4]])
    # many pairs of groups: each fold gets a third of them, and in blocks as at once
    rng = np.random.default_rng(0)
    group = np.arange(3000)
    many = rng.integers(0, 3000, (60_000, 2))
    whole = dnm.group_folds(many, group, 3, seed=4)
    share = np.bincount(whole[whole >= 0], minlength=3) / np.count_nonzero(whole >= 0)
    assert np.all(np.abs(share - 1 / 3) < 0.02)
    # the seed draws other folds
    assert np.mean(dnm.group_folds(many, group, 3, seed=5) == whole) < 0.5
    monkeypatch.setattr(dnm, "BLOCK", 7_000)
    np.testing.assert_array_equal(dnm.group_folds(many, group, 3, seed=4), whole)


def test_weighted_calibration_is_the_calibration_of_the_rows_repeated():
    """Weights count as repeated rows: the knots (each bin's mean score) stay the scores',
    not the scores over the weighted counts (which put them out of order)."""
    rng = np.random.default_rng(0)
    score = np.round(rng.random(400), 3)
    score = np.unique(score)[:300]
    y = (rng.random(score.size) < score).astype(np.int8)
    w = rng.integers(1, 4, score.size)
    weighted = _fit_calibration(score, y, n_bags=0, weight=w.astype(float))
    repeated = _fit_calibration(np.repeat(score, w), np.repeat(y, w), n_bags=0)
    np.testing.assert_allclose(_calibrated(weighted, score), _calibrated(repeated, score))


def _toy_study(seed=0, n_neurons=120, n_sessions=5):
    """Units of neurons seen in every session: positions jitter by 2 um, similarity is high
    for a neuron's own pairs and falls with distance for two neurons'."""
    rng = np.random.default_rng(seed)
    place = np.column_stack([rng.uniform(0, 40, n_neurons), rng.uniform(0, 2000, n_neurons),
                             rng.uniform(10, 60, n_neurons)])
    neuron = np.tile(np.arange(n_neurons), n_sessions)
    session = np.repeat(np.arange(n_sessions), n_neurons)
    positions = place[neuron] + rng.normal(0, 2.0, (neuron.size, 3))
    depth = positions[:, 1]
    i, j = np.triu_indices(neuron.size, 1)
    near = (np.abs(depth[i] - depth[j]) <= 100) & (session[i] != session[j])
    pairs = np.column_stack([i[near], j[near]])
    same = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    z = np.where(same, rng.normal(1.4, 0.35, len(pairs)), rng.normal(0.5, 0.35, len(pairs)))

    def similarities(q):
        q = np.asarray(q)
        out = np.empty((len(q), 2))
        key = {(a, b): v for (a, b), v in zip(map(tuple, pairs), z)}
        for k, (a, b) in enumerate(q):
            if (a, b) in key:
                out[k] = key[(a, b)], key[(a, b)] * 0.8
            else:  # a same-session pair: two neurons
                v = np.random.default_rng([seed, a, b]).normal(0.5, 0.35)
                out[k] = v, v * 0.8
        return out
    return pairs, similarities, positions, session, neuron


def test_the_second_fit_runs_on_its_own_rows_and_keeps_the_same_session_level():
    pairs, similarities, positions, session, neuron = _toy_study()
    n = len(session)
    ones = np.ones(n)

    def fit(derived):
        return linking.fit_links(pairs, similarities, positions, 100 * ones, 1000 * ones,
                                 session, np.zeros(n, int), 100.0, 5, seed=0,
                                 with_clusters=False, gap_prior=True, derived=derived)

    off, _ = fit(False)
    on, _ = fit(True)
    again, _ = fit(True)
    np.testing.assert_array_equal(on.candidate_probability, again.candidate_probability)
    assert not np.array_equal(on.candidate_probability, off.candidate_probability)
    # the second model saw the derived pairs among its known non-matches ...
    assert on.model.n_non_matches > 2 * off.model.n_non_matches
    # ... while the cut veto's level is still read over the same-session pairs alone
    assert on.model.non_match_probability.size == off.model.non_match_probability.size
    truth = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    # a plain study: both fits tell the matches from the non-matches
    for links in (off, on):
        p = links.candidate_probability
        assert p[truth].mean() > 0.9 and p[~truth].mean() < 0.05


def test_sure_pairs_given_fit_the_probability_once_with_the_derived_pairs(monkeypatch):
    """With the sure pairs given (clustering.derived_from 'clustering': the final clustering's
    good matches), the known non-matches are derived from their groups and the probability
    is fitted once, with them; without, a first fit finds the sure pairs and a second fit
    follows."""
    pairs, similarities, positions, session, neuron = _toy_study()
    n = len(session)
    ones = np.ones(n)
    truth = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    fits = []
    fit_match_probability = linking.fit_match_probability

    def counted(*args, **kwargs):
        fits.append(len(args[1]))  # the known non-matches of this fit
        return fit_match_probability(*args, **kwargs)

    monkeypatch.setattr(linking, "fit_match_probability", counted)
    # one cross-fit, not the mean of linking.PROBABILITY_FITS (each makes the same fits)
    monkeypatch.setattr(linking, "PROBABILITY_FITS", 1)

    def fit(derived, sure=None):
        fits.clear()
        links, _ = linking.fit_links(pairs, similarities, positions, 100 * ones, 1000 * ones,
                                     session, np.zeros(n, int), 100.0, 5, seed=0,
                                     with_clusters=False, gap_prior=True, derived=derived,
                                     sure=sure)
        return links, list(fits)

    off, off_fits = fit(False)
    given, given_fits = fit(True, sure=truth)
    _, two_fits = fit(True)
    assert len(off_fits) == 1 and len(two_fits) == 2 and len(given_fits) == 1
    # the one fit saw the derived pairs among its known non-matches, in two folds (the
    # plain fit: three)
    assert given_fits[0] > 2 * off_fits[0]
    assert len(given.model.models) == 2 and len(off.model.models) == 3
    assert given.model.non_match_probability.size == off.model.non_match_probability.size
    p = given.candidate_probability
    assert p[truth].mean() > 0.9 and p[~truth].mean() < 0.05
    # sure pairs with no same-session pair between their groups derive nothing: the
    # probability is the plain fit's
    none_sure, none_fits = fit(True, sure=np.zeros(len(pairs), bool))
    assert len(none_fits) == 1
    np.testing.assert_array_equal(none_sure.candidate_probability, off.candidate_probability)
