"""Tests of kilomatch.position_noise: the spread of one neuron's units, learned by amplitude."""

import numpy as np
import pytest

from kilomatch.position_noise import distance_ratio, fit_position_noise, learn_position_noise

FLOOR_UM2, K_UM2_UV2 = 4.0, 120.0 ** 2


def matches(rng, n):
    """n pairs of one neuron: amplitudes (uV) log-uniform 30-400, 2-D position errors whose
    median squared distance is FLOOR + K (1/a^2 + 1/b^2)."""
    a, b = (np.exp(rng.uniform(np.log(30), np.log(400), n)) for _ in range(2))
    spread2 = FLOOR_UM2 + K_UM2_UV2 * (1 / a ** 2 + 1 / b ** 2)
    sigma = np.sqrt(spread2 / (2 * np.log(2)))  # per axis: median of d^2 is 2 sigma^2 ln 2
    return np.hypot(*(rng.normal(0, sigma) for _ in range(2))), a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spread_grows_as_amplitude_falls_and_ignores_a_tail_of_wrong_pairs(seed):
    """From 2000 matches and 5% sure-looking wrong pairs (alike neighbours 20-40 um apart)
    the fit finds the spread at 40 uV and at 300 uV within 25%: the wrong pairs, all in the
    tail, do not widen it. So a small unit's match 15 um away is within 4 spreads
    while two large units 15 um apart are not."""
    rng = np.random.default_rng(seed)
    d, a, b = matches(rng, 2000)
    wrong = 100
    d = np.r_[d, rng.uniform(20, 40, wrong)]
    a = np.r_[a, np.exp(rng.uniform(np.log(60), np.log(400), wrong))]
    b = np.r_[b, np.exp(rng.uniform(np.log(60), np.log(400), wrong))]
    noise = fit_position_noise(d, a, b)
    for amp in (40.0, 300.0):
        true = np.sqrt(FLOOR_UM2 + K_UM2_UV2 * 2 / amp ** 2)
        assert noise.spread(np.array([amp]), np.array([amp]))[0] == pytest.approx(true, rel=0.25)
    positions = np.array([[0.0, 0.0], [0.0, 15.0], [0.0, 100.0], [0.0, 115.0]])
    ratio = distance_ratio(positions, np.array([40.0, 40.0, 300.0, 300.0]),
                           np.array([[0, 1], [2, 3]]), noise)
    assert ratio[0] < 4 < ratio[1]


def test_learned_only_from_sure_pairs_and_only_when_enough():
    """The candidate pairs below probability 0.9 (here all far apart) do not enter the fit;
    with fewer than 50 sure pairs there is no model."""
    rng = np.random.default_rng(3)
    d, a, b = matches(rng, 300)
    n = d.size
    positions = np.zeros((2 * n + 200, 2))
    positions[n:2 * n, 1] = d  # unit n + k sits d_k from unit k
    positions[2 * n:, 1] = 60.0
    amplitude = np.r_[a, b, np.full(200, 100.0)]
    pairs = np.r_[np.column_stack([np.arange(n), n + np.arange(n)]),
                  np.column_stack([np.arange(200), 2 * n + np.arange(200)])]
    p = np.r_[np.full(n, 0.95), np.full(200, 0.5)]
    noise = learn_position_noise(positions, amplitude, pairs, p)
    assert noise.spread(np.array([300.0]), np.array([300.0]))[0] < 5  # not 60 um
    assert learn_position_noise(positions, amplitude, pairs[:40], p[:40]) is None
