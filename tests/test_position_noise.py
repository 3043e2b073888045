"""Tests of kilomatch.position_noise: the spread of one neuron's units, learned by amplitude."""

import numpy as np
import pytest

from kilomatch import position_noise
from kilomatch.position_noise import (SESSION_MIN_PAIRS, PositionNoise, distance_ratio,
                                      distance_ratio_of_many, fit_position_noise, grid_period,
                                      learn_position_noise, noise_of_pairs)
from kilomatch.simulate import probe_geometry

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


def test_a_session_that_places_every_neuron_off_widens_only_its_own_pairs():
    """150 neurons, one unit per session in 4 sessions, placed within ~1 um, except that
    session 2 places each neuron 6 um off in a direction of its own (the channel grid at
    another phase). Session 2 adds about 36 um^2, the others about none, none below 0; the
    floor comes down to the sessions that agree (~1.3 um, where the pooled fit says 3.6).
    So a match 18 um apart across sessions 0 and 2 lies within 4 spreads, beyond 4 of the
    pooled fit, and two units 9 um apart across sessions 0 and 1 lie beyond 4 spreads,
    within 4 of the pooled fit."""
    rng = np.random.default_rng(5)
    n_neurons, n_sessions = 150, 4
    place = np.column_stack([rng.uniform(0, 40, n_neurons), rng.uniform(0, 3000, n_neurons)])
    angle = rng.uniform(0, 2 * np.pi, n_neurons)
    neuron = np.tile(np.arange(n_neurons), n_sessions)
    session = np.repeat(np.arange(n_sessions), n_neurons)
    positions = place[neuron] + rng.normal(0, 0.7, (neuron.size, 2))
    off = session == 2
    positions[off] += 6.0 * np.column_stack([np.cos(angle), np.sin(angle)])[neuron[off]]
    amplitude = np.full(neuron.size, 150.0)
    i, j = np.triu_indices(neuron.size, 1)
    pairs = np.column_stack([i, j])[(neuron[i] == neuron[j])]

    noise = noise_of_pairs(positions, amplitude, pairs, session)
    extra = noise.session_um2
    assert extra.shape == (4,) and (extra >= 0).all()
    assert extra[2] == pytest.approx(36.0, rel=0.25)
    assert extra[[0, 1, 3]].max() < 2

    test_positions = np.array([[0.0, 0.0], [0.0, 18.0], [0.0, 500.0], [0.0, 509.0]])
    test_pairs = np.array([[0, 1], [2, 3]])
    test_amplitude = np.full(4, 150.0)
    across_off = np.array([0, 2, 0, 1])  # the first pair spans sessions 0 and 2
    pooled = distance_ratio(test_positions, test_amplitude, test_pairs,
                            noise_of_pairs(positions, amplitude, pairs))
    own = distance_ratio(test_positions, test_amplitude, test_pairs, noise, across_off)
    assert pooled[0] > 4 > own[0]
    assert own[1] > 4 > pooled[1]


def test_sessions_that_differ_only_by_chance_add_little():
    """300 neurons, each in 4 of 20 sessions, every session alike: each session's median
    is of about 180 pairs, so the spread of every pair of sessions stays within 15% of the
    pooled fit's, at 50 and at 300 uV."""
    rng = np.random.default_rng(7)
    n_neurons, n_sessions = 300, 20
    sessions = np.array([rng.choice(n_sessions, 4, replace=False) for _ in range(n_neurons)])
    neuron = np.repeat(np.arange(n_neurons), 4)
    session = sessions.ravel()
    place = np.column_stack([rng.uniform(0, 40, n_neurons), rng.uniform(0, 3000, n_neurons)])
    positions = place[neuron] + rng.normal(0, 2.0, (neuron.size, 2))
    amplitude = np.exp(rng.uniform(np.log(40), np.log(300), n_neurons))[neuron]
    i, j = np.triu_indices(neuron.size, 1)
    pairs = np.column_stack([i, j])[neuron[i] == neuron[j]]
    own = noise_of_pairs(positions, amplitude, pairs, session)
    pooled = noise_of_pairs(positions, amplitude, pairs)
    sa, sb = (x.ravel() for x in np.meshgrid(np.arange(n_sessions), np.arange(n_sessions)))
    for amp in (50.0, 300.0):
        a = np.full(sa.size, amp)
        ratio = own.spread(a, a, sa, sb) / pooled.spread(a[:1], a[:1])[0]
        assert np.abs(ratio - 1).max() < 0.15


def test_a_session_of_few_pairs_adds_nothing():
    """A session whose only 5 pairs lie 40 um from their partners (wrong pairs, say) adds
    nothing: fewer than SESSION_MIN_PAIRS pairs."""
    rng = np.random.default_rng(9)
    d, a, b = matches(rng, 600)
    sa = rng.integers(0, 5, d.size)
    sb = (sa + 1 + rng.integers(0, 4, d.size)) % 5
    d[:5], sa[:5] = 40.0, 5
    noise = fit_position_noise(d, a, b, sa, sb, 6)
    assert noise.session_um2[5] == 0
    d[:12], sa[:12] = 40.0, 5
    assert fit_position_noise(d, a, b, sa, sb, 6).session_um2[5] > 100


@pytest.mark.parametrize("probe, period", [("NP1", 40.0), ("NP2", 15.0), ("NP2-4shank", 15.0)])
def test_the_layout_repeats_after_its_period(probe, period):
    """NP1's staggered rows repeat every second row (40 um: one row down, the contacts sit at
    other x); NP2's aligned columns every row (15 um), on each of four shanks."""
    locations, shanks = probe_geometry(probe)
    assert grid_period(locations, shanks) == period


def test_an_irregular_layout_has_no_period():
    """Contacts at random depths (or too few rows) repeat at no shift: 0, no phase term."""
    rng = np.random.default_rng(0)
    irregular = np.column_stack([np.zeros(64), np.sort(rng.uniform(0, 2000, 64))])
    assert grid_period(irregular) == 0.0
    assert grid_period(np.array([[0.0, 0.0], [0.0, 20.0]])) == 0.0
    # a layout that repeats only after 5 rows is looked for up to 4
    five = np.column_stack([np.tile([0.0, 8.0, 16.0, 24.0, 32.0], 20), np.arange(100) * 10.0])
    assert grid_period(five) == 0.0
    # one missing contact in 96 does not hide the period
    locations, _ = probe_geometry("NP1")
    assert grid_period(np.delete(locations[:96], 40, axis=0)) == 40.0


def test_the_phase_widens_only_pairs_seen_at_another_phase():
    """The phase term adds phase_um2 sin^2(pi shift / period): nothing at a shift of a whole
    period or without a shift, all of it at half a period."""
    noise = PositionNoise(1.0, 0.0, None, 24.0, 40.0)
    a = np.full(4, 100.0)
    spread = noise.spread(a, a, shift=np.array([0.0, 40.0, 20.0, -60.0]))
    assert spread == pytest.approx([1.0, 1.0, 5.0, 5.0])
    assert noise.spread(a, a) == pytest.approx(np.ones(4))


def test_the_ratios_of_many_pairs_are_worked_out_in_blocks_alike(monkeypatch):
    """The join reads every candidate pair's distance ratio (28 M at 10^5 units) a block at
    a time: the same ratios (float32) as all at once, with sessions and phases; None without
    a noise model."""
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 100, (50, 2))
    amplitude = rng.uniform(40, 300, 50)
    session = np.repeat(np.arange(5), 10)
    motion = rng.uniform(-30, 30, 50)
    pairs = np.array([(i, j) for i in range(50) for j in range(i + 1, 50)])
    noise = PositionNoise(1.0, 60.0, np.array([0.0, 1.0, 0.0, 4.0, 0.0]), 9.0, 40.0)
    monkeypatch.setattr(position_noise, "RATIO_BLOCK", 97)
    many = distance_ratio_of_many(positions, amplitude, pairs, noise, session, motion)
    assert many.dtype == np.float32 and many.shape == (len(pairs),)
    np.testing.assert_allclose(many, distance_ratio(positions, amplitude, pairs, noise,
                                                    session, motion), rtol=1e-6)
    assert distance_ratio_of_many(positions, amplitude, pairs, None) is None


def test_units_seen_at_another_phase_of_the_grid_may_lie_farther_apart():
    """200 neurons in 8 sessions whose motions put the channel grid (period 40 um) at phases
    0, 10, 20, 30 um twice over; a neuron's fitted position turns on a circle of 3 um radius
    as the phase goes round (its own start), so two of its units lie 6 sqrt(h) um apart, h =
    sin^2(pi shift / 40), plus 0.5 um of noise. The phase variance comes out near 36 um^2;
    a match 24 um apart seen half a period apart lies within 4 spreads (beyond 4 without
    the phase term), and pairs seen at one phase keep the spread they had without it."""
    rng = np.random.default_rng(11)
    n_neurons, period = 200, 40.0
    motion = np.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    neuron = np.tile(np.arange(n_neurons), motion.size)
    session = np.repeat(np.arange(motion.size), n_neurons)
    start = rng.uniform(0, 2 * np.pi, n_neurons)[neuron]
    turn = 2 * np.pi * motion[session] / period + start
    place = np.column_stack([rng.uniform(0, 40, n_neurons), rng.uniform(0, 3000, n_neurons)])
    positions = place[neuron] + 3.0 * np.column_stack([np.cos(turn), np.sin(turn)]) \
        + rng.normal(0, 0.5, (neuron.size, 2))
    amplitude = np.full(neuron.size, 200.0)
    unit_motion = motion[session]
    i, j = np.triu_indices(neuron.size, 1)
    pairs = np.column_stack([i, j])[neuron[i] == neuron[j]]

    noise = noise_of_pairs(positions, amplitude, pairs, session, unit_motion, period)
    plain = noise_of_pairs(positions, amplitude, pairs, session)
    assert noise.phase_um2 == pytest.approx(36.0, rel=0.3) and noise.period_um == period
    assert plain.phase_um2 == 0.0
    assert noise_of_pairs(positions, amplitude, pairs, session, unit_motion).phase_um2 == 0.0

    test_positions = np.array([[0.0, 0.0], [0.0, 24.0], [0.0, 500.0], [0.0, 505.0]])
    test_pairs = np.array([[0, 1], [2, 3]])
    test_session = np.array([0, 2, 0, 4])  # half a period apart; one phase (0 and 40 um)
    test_motion = motion[test_session]
    a = np.full(4, 200.0)
    with_phase = distance_ratio(test_positions, a, test_pairs, noise, test_session, test_motion)
    without = distance_ratio(test_positions, a, test_pairs, plain, test_session, test_motion)
    assert with_phase[0] < 4 < without[0]
    assert with_phase[1] == pytest.approx(without[1])
