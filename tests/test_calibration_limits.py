"""benchmarks/calibration_limits.py: the calibration judged with other known non-matches."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
limits = pytest.importorskip("calibration_limits")


def _study(seed=0):
    """Candidate scores of a study whose true match probability is known: non-matches
    uniform on [0, 0.9), matches uniform on [0.6, 1), so a pair scoring in [0.6, 0.9) is a
    match with probability 0.25 and every other pair is sure either way."""
    rng = np.random.default_rng(seed)
    non, match = rng.uniform(0.0, 0.9, 20000), rng.uniform(0.6, 1.0, 3000)
    score = np.r_[non, match]
    truth = np.r_[np.zeros(non.size, bool), np.ones(match.size, bool)]
    return score, truth, match.size / score.size


def test_the_true_non_matches_calibrate_the_probability_and_shifted_ones_do_not():
    score, truth, prior = _study()
    # With the candidates' own non-matches as the known ones, every bin holds the share of
    # matches it says (the pairs in the overlap read about 0.25).
    assert limits.misses_of(score, truth, score[~truth], prior, n_bags=0) == 0
    # Known non-matches that score 0.05 higher than the true ones (as cross-fitting's
    # held-out bias makes the same-session pairs) make the overlap's matches look rarer:
    # the probability of those pairs falls below what they are.
    shifted = np.minimum(score[~truth] + 0.05, 0.999)
    assert limits.misses_of(score, truth, shifted, prior, n_bags=0) > 0


def test_every_set_and_calibration_is_judged_and_draws_are_seeded():
    score, truth, prior = _study(1)
    same_session = np.random.default_rng(2).choice(score[~truth], 1500, replace=False)
    a = limits.limits(score, truth, same_session, prior, draws=2, seed=3)
    b = limits.limits(score, truth, same_session, prior, draws=2, seed=3)
    assert a == b
    sets = {k[0] for k in a}
    assert sets == {"same-session", "every non-match", "drawn x1", "drawn x2", "drawn x4"}
    assert {k[1] for k in a} == {"bagged", "one fit"}
    assert all(len(a[(f"drawn x{k}", c)]) == 2 for k in limits.MULTIPLES
               for c in ("bagged", "one fit"))
    assert a[("every non-match", "one fit")] == 0


def test_the_fit_rows_are_found_again_or_the_run_is_refused():
    depth = np.array([0.0, 100.0, 300.0, 10.0, 110.0, 290.0])
    session = np.array([0, 0, 0, 1, 1, 1])
    pairs = np.array([[1, 4], [0, 3], [2, 5]])
    # only units 60-240 um deep have every session's units 50 um above and below them
    assert limits.fit_rows(pairs, depth, session, 50.0, 1).tolist() == [0]
    assert limits.fit_rows(pairs, depth, session, 50.0, 3).tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="cannot be found again"):
        limits.fit_rows(pairs, depth, session, 50.0, 2)
