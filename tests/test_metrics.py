"""Tests of kilomatch.metrics: pair counting, precision/recall/F1, motion error, score_run."""

import itertools

import numpy as np
import pytest

from kilomatch.errors import KilomatchError
from kilomatch.metrics import (calibration_bins, calibration_misses, motion_rms_error, pair_scores,
                               score_run, wrong_pairs_by_kind)


def brute_force(cl, gt, ss):
    """O(N^2) reference count of the pair statistics."""
    cl = np.asarray(cl).reshape(-1)
    true = pred = correct = conflicts = 0
    for i, j in itertools.combinations(range(cl.size), 2):
        same_c = cl[i] != -1 and cl[i] == cl[j]
        if ss[i] == ss[j]:
            conflicts += same_c
            continue
        t = gt[i] == gt[j]
        true += t
        pred += same_c
        correct += t and same_c
    return true, pred, correct, conflicts


# Six units: neuron 0 in sessions 1, 2, 3; neuron 1 in sessions 1, 2; neuron 2 in session 3.
GT = np.array([0, 0, 0, 1, 1, 2])
SS = np.array([1, 2, 3, 1, 2, 3])


def test_perfect_clustering():
    r = pair_scores(GT + 1, GT, SS)
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 1.0, 1.0)
    assert (r["n_true_pairs"], r["n_pred_pairs"], r["n_correct_pairs"]) == (4, 4, 4)
    assert r["n_conflicts"] == 0


def test_singletons_marked_minus_one_are_not_predictions():
    cl = np.array([1, 1, 1, 2, 2, -1])
    r = pair_scores(cl, GT, SS)
    assert r["precision"] == 1.0 and r["recall"] == 1.0


def test_all_unmatched():
    r = pair_scores(np.full(6, -1), GT, SS)
    assert r["n_pred_pairs"] == 0 and r["precision"] == 1.0
    assert r["recall"] == 0.0 and r["f1"] == 0.0


def test_minus_one_units_never_pair_with_each_other():
    # Two units of one neuron both -1: not a predicted pair even though the ids are equal.
    r = pair_scores(np.array([-1, -1]), np.array([0, 0]), np.array([1, 2]))
    assert r["n_pred_pairs"] == 0 and r["n_true_pairs"] == 1 and r["recall"] == 0.0


def test_one_wrong_merge():
    # The neuron-2 unit (session 3) is merged into neuron 1's cluster: 2 wrong pairs added.
    cl = np.array([1, 1, 1, 2, 2, 2])
    r = pair_scores(cl, GT, SS)
    assert (r["n_true_pairs"], r["n_pred_pairs"], r["n_correct_pairs"]) == (4, 6, 4)
    assert r["precision"] == pytest.approx(4 / 6) and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))


def test_one_missed_unit():
    cl = np.array([1, 1, -1, 2, 2, -1])  # the session-3 unit of neuron 0 left out
    r = pair_scores(cl, GT, SS)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(2 / 4)
    assert r["f1"] == pytest.approx(2 * 0.5 / 1.5)


def test_conflicts_counted_and_excluded_from_pairs():
    # Same-session pairs sharing a cluster are conflicts, not predicted pairs:
    # cluster 1 = {0 (s1), 3 (s1)}: 1 conflict, 0 cross-session pairs;
    # cluster 2 = {1 (s2), 2 (s3), 4 (s2)}: 1 conflict (1, 4), 2 cross pairs, (1, 2) correct.
    cl = np.array([1, 2, 2, 1, 2, -1])
    r = pair_scores(cl, GT, SS)
    assert r["n_conflicts"] == 2
    assert r["n_pred_pairs"] == 2 and r["n_correct_pairs"] == 1


def test_column_vector_and_float_labels_accepted():
    cl = (GT + 1).reshape(-1, 1).astype(float)
    assert pair_scores(cl, GT, SS)["f1"] == 1.0


def test_no_true_pairs_gives_recall_one():
    r = pair_scores(np.array([-1, -1]), np.array([0, 1]), np.array([1, 2]))
    assert r["recall"] == 1.0 and r["precision"] == 1.0 and r["f1"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    n = 120
    gt = rng.integers(0, 25, n)
    ss = rng.integers(1, 6, n)
    cl = np.where(rng.random(n) < 0.2, -1, rng.integers(1, 20, n))
    if seed % 2:
        cl = np.where(rng.random(n) < 0.6, gt + 1, cl)  # mostly right, to get correct pairs
    true, pred, correct, conflicts = brute_force(cl, gt, ss)
    r = pair_scores(cl.reshape(-1, 1) if seed == 3 else cl, gt, ss)
    assert (r["n_true_pairs"], r["n_pred_pairs"], r["n_correct_pairs"], r["n_conflicts"]) == (
        true, pred, correct, conflicts)
    assert r["precision"] == pytest.approx(correct / pred if pred else 1.0)
    assert r["recall"] == pytest.approx(correct / true if true else 1.0)
    # every wrong pair is of one kind
    assert sum(wrong_pairs_by_kind(cl, gt, ss).values()) == pred - correct


def test_large_labels_fast_and_exact():
    # 10^5 units with huge label values: no N x N arrays, exact integer counts.
    rng = np.random.default_rng(0)
    n = 100_000
    gt = rng.integers(0, 20_000, n) * 1_000_003
    ss = rng.integers(1, 201, n)
    r = pair_scores(gt, gt, ss)
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["n_pred_pairs"] == r["n_true_pairs"] > 0


@pytest.mark.parametrize("args", [
    (np.zeros(3), np.zeros(4), np.zeros(4)),
    (np.zeros((3, 2)), np.zeros(3), np.zeros(3)),
    (np.array([0.5, 1.0]), np.zeros(2), np.zeros(2)),
])
def test_bad_inputs(args):
    with pytest.raises(KilomatchError):
        pair_scores(*args)


def test_motion_rms_error_removes_means():
    true = np.array([-10.0, 0.0, 10.0])
    assert motion_rms_error(true + 7.5, true) == pytest.approx(0.0)
    est = np.array([-10.0, 0.0, 13.0])  # errors 0, 0, 3 -> centred -1, -1, 2
    assert motion_rms_error(est, true) == pytest.approx(np.sqrt((1 + 1 + 4) / 3))
    assert motion_rms_error(est.reshape(-1, 1), true) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(KilomatchError):
        motion_rms_error(np.zeros(3), np.zeros(4))


def test_score_run_from_folders(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    np.save(data / "gt_neuron.npy", GT)
    np.save(data / "session_index.npy", SS)
    np.save(data / "gt_motion.npy", np.array([-5.0, 0.0, 5.0]))
    np.save(out / "IdxCluster.npy", np.array([[1], [1], [1], [2], [2], [2]]))
    np.save(out / "motion.npy", np.array([[100.0], [105.0], [110.0]]))
    r = score_run(out, data)
    assert r["precision"] == pytest.approx(4 / 6) and r["motion_rms_um"] == pytest.approx(0.0)
    r2 = score_run(GT + 1, data)
    assert r2["f1"] == 1.0 and "motion_rms_um" not in r2
    with pytest.raises(KilomatchError):
        score_run(tmp_path / "missing", data)


def test_calibration_misses_judge_full_bins_by_their_true_fraction():
    """A bin of 50 pairs or more is missed when its true fraction lies more than 0.05 outside
    it, on either side; a bin of fewer pairs is not judged (issue 12, item 3's test)."""
    def pairs(p, n, n_true):
        return np.full(n, p), np.arange(n) < n_true

    groups = [pairs(0.05, 100, 4),    # [0.0, 0.1): 0.04, inside
              pairs(0.35, 60, 27),    # [0.3, 0.4): 0.45, at the edge of the tolerance
              pairs(0.55, 50, 33),    # [0.5, 0.6): 0.66, above it: missed
              pairs(0.75, 49, 0),     # [0.7, 0.8): 0.0 but too few pairs to judge
              pairs(0.95, 200, 160)]  # [0.9, 1.0]: 0.80, below it: missed
    p = np.concatenate([g[0] for g in groups])
    truth = np.concatenate([g[1] for g in groups])
    judged, misses = calibration_misses(calibration_bins(p, truth))
    assert judged == 4
    assert [(m["low"], m["n_pairs"]) for m in misses] == [(0.5, 50), (0.9, 200)]
    assert misses[0]["true_fraction"] == pytest.approx(0.66)
    assert misses[1]["true_fraction"] == pytest.approx(0.80)


def test_wrong_pairs_are_told_apart_by_how_their_neurons_lie_in_time():
    # cluster 1: neuron 0 in sessions 1-2, then neuron 1 in sessions 3-4 (a succession: 4
    # wrong pairs); cluster 2: neuron 2 in sessions 1 and 3, neuron 3 in session 2
    # (interleaved: 2); cluster 3: neurons 4 and 5 both in session 1, neuron 5 also in 2
    # (same session: pairs 4-5 across sessions only, 1); cluster 4: one neuron, right;
    # cluster 5: neuron 9 in session 3, then neuron 8 in session 4 (a succession: 1)
    cl = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, -1, 5, 5])
    gt = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 5, 6, 6, 7, 9, 8])
    ss = np.array([1, 2, 3, 4, 1, 3, 2, 1, 1, 2, 1, 2, 3, 3, 4])
    kinds = wrong_pairs_by_kind(cl, gt, ss)
    assert kinds == {"succession": 5, "interleaved": 2, "same_session": 1}
    r = pair_scores(cl, gt, ss)
    assert sum(kinds.values()) == r["n_pred_pairs"] - r["n_correct_pairs"]


def test_calibration_miss_chance_is_the_binomial_chance_of_a_miss():
    """Pairs all at 0.75 in [0.7, 0.8): a miss is a true count outside [0.65 n, 0.85 n], whose
    chance, were 0.75 exact, is binomial; pairs of unequal probability sum trials of their
    own (checked against drawing them); bins under 50 pairs are not judged (NaN)."""
    from scipy.stats import binom

    from kilomatch.metrics import calibration_miss_chance
    chance = calibration_miss_chance(np.r_[np.full(50, 0.75), np.full(49, 0.25)])
    assert abs(chance[7] - (1 - (binom.cdf(42, 50, 0.75) - binom.cdf(32, 50, 0.75)))) < 1e-12
    assert np.isnan(chance[2]) and np.isnan(chance[0])
    q = np.random.default_rng(0).uniform(0.70, 0.80, 80)
    drawn = (np.random.default_rng(1).random((20000, q.size)) < q).mean(axis=1)
    assert abs(calibration_miss_chance(q)[7] - np.mean((drawn < 0.65) | (drawn > 0.85))) < 0.01



def test_calibration_miss_chance_of_a_large_bin_is_near_the_exact_one(monkeypatch):
    """Above EXACT_MAX_PAIRS pairs a bin takes the normal approximation: 200 pairs at 0.75
    (a true count outside 130-170 is a miss) give nearly the binomial chance."""
    from scipy.stats import binom

    from kilomatch import metrics
    exact = 1 - (binom.cdf(170, 200, 0.75) - binom.cdf(129, 200, 0.75))
    assert abs(metrics.calibration_miss_chance(np.full(200, 0.75))[7] - exact) < 1e-12
    monkeypatch.setattr(metrics, "EXACT_MAX_PAIRS", 100)
    assert abs(metrics.calibration_miss_chance(np.full(200, 0.75))[7] - exact) < 1e-4
    # 12,000 pairs near 0 in [0, 0.1): 2 true pairs expected, a miss needs 1,800 (a count
    # below 0 is none)
    near_zero = np.r_[np.full(11998, 0.0), 0.9e-1, 0.9e-1]
    assert metrics.calibration_miss_chance(near_zero)[0] == 0.0
