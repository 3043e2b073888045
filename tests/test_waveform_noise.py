"""Each unit's mean-waveform noise, and the Waveform correlation measured against it (the match
probability's evidence, kilomatch.waveform_noise)."""

import numpy as np

from kilomatch import features
from kilomatch.probability import pair_evidence
from kilomatch.similarity import fisher_z
from kilomatch.simulate import simulate
from kilomatch.waveform_noise import beyond_noise, farthest_first, noise_share


def _measured(sim, noisy, ptt):
    return noise_share(noisy, ptt, np.argmax(ptt, axis=1),
                       farthest_first(sim.channel_locations), 38)


def test_noise_share_is_the_simulators_noise(true_noise_share):
    """Units of many spike counts: the share measured on each unit's quiet channels is the
    simulator's noise share within 15% (one unit in ten may miss by more)."""
    sim = simulate(n_sessions=2, n_neurons=40, duration_s=60.0, peth_points=50,
                   waveform_noise_per_spike_uv=40.0, rate_sigma=1.5, seed=5)
    truth, noisy, ptt = true_noise_share(sim)
    measured = _measured(sim, noisy, ptt)
    assert truth.min() < 0.05 and truth.max() > 0.3, "need units from clean to noisy"
    error = np.abs(measured / truth - 1)
    assert np.median(error) < 0.08
    assert np.mean(error > 0.15) <= 0.1


def test_flat_channels_are_not_quiet_channels(true_noise_share):
    """Channels that read 0 (dead, or not recorded in that session) are not noise 0: the share
    is the same as with them recorded."""
    sim = simulate(n_sessions=2, n_neurons=20, duration_s=60.0, peth_points=50,
                   waveform_noise_per_spike_uv=40.0, seed=6)
    _, noisy, ptt = true_noise_share(sim)
    dead = noisy.copy()
    far = farthest_first(sim.channel_locations)[np.argmax(ptt, axis=1)]
    dead[np.arange(sim.n_units)[:, None], far[:, :150:2]] = 0.0  # 75 of the farthest 150
    np.testing.assert_allclose(_measured(sim, dead, features.peak_to_trough(dead)),
                               _measured(sim, noisy, ptt), rtol=0.15)
    zeros = np.zeros((2, 8, 10), np.float32)
    assert noise_share(zeros, np.zeros((2, 8)), np.zeros(2, int),
                       farthest_first(np.column_stack([np.zeros(8), np.arange(8.0)])),
                       4).tolist() == [0, 0]


def test_beyond_noise_ranks_by_shape_not_by_noise():
    """A noisy unit's match (two copies of one waveform, a third of each unit's variance
    noise) correlates less than two clean units of different shapes; measured against their
    noise, the match reads about 0 and ranks above them."""
    rng = np.random.default_rng(0)
    t = np.linspace(-1, 1, 120)
    one = np.exp(-(t / 0.1) ** 2) - 0.4 * np.exp(-((t - 0.3) / 0.2) ** 2)
    other = np.exp(-((t - 0.05) / 0.1) ** 2) - 0.4 * np.exp(-((t - 0.35) / 0.2) ** 2)  # r 0.87

    def copies(w, share, n=300):
        sd = np.sqrt(share / (1 - share) * w.var())
        return w + sd * rng.standard_normal((n, w.size))

    def z(a, b):
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        return fisher_z((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1)))

    noisy, clean = np.full(300, 1 / 3), np.full(300, 0.02)
    match = z(copies(one, 1 / 3), copies(one, 1 / 3))
    different = z(copies(one, 0.02), copies(other, 0.02))
    assert np.median(match) < np.median(different)
    match_beyond = beyond_noise(match, noisy, noisy)
    different_beyond = beyond_noise(different, clean, clean)
    assert abs(np.median(match_beyond)) < 0.2
    assert np.percentile(match_beyond, 10) > np.percentile(different_beyond, 90)
    # at one noise level it ranks pairs as their correlation does
    order = np.argsort(match)
    assert np.all(np.diff(beyond_noise(match[order], noisy, noisy)) >= 0)


def test_pair_evidence_gains_the_column_against_noise():
    sims = np.array([[1.0, 2.0], [0.5, 0.1]])
    pos = np.zeros((3, 3))
    share = np.array([0.0, 0.2, 0.5])
    pairs = np.array([[0, 1], [1, 2]])
    args = (sims, pos, np.array([100.0, 10.0, 20.0]), np.array([99, 999, 50]), pairs)
    without, with_noise = pair_evidence(*args), pair_evidence(*args, noise_share=share)
    np.testing.assert_array_equal(with_noise[:, :-1], without)
    np.testing.assert_allclose(with_noise[:, -1], beyond_noise(
        sims[:, 0], share[pairs[:, 0]], share[pairs[:, 1]]))


def test_a_short_probe_leaves_the_noise_unknown():
    """On a 32-channel probe of 300 um the farthest channels still carry a large unit's
    signal: no channel is 300 um from the middle, so the share is 0 (nothing corrected), not
    the unit's own signal read as noise. The same unit on a 384-channel probe reads its noise."""
    rng = np.random.default_rng(1)
    t = np.linspace(-1, 1, 64)
    shape = np.exp(-(t / 0.1) ** 2) - 0.4 * np.exp(-((t - 0.3) / 0.2) ** 2)

    def unit(n_channels, noise_sd=2.0):
        xy = np.column_stack([np.tile([11.0, 43.0], n_channels // 2),
                              np.repeat(np.arange(n_channels // 2) * 20.0, 2)])
        mid = xy[n_channels // 2, 1]
        r = np.hypot(xy[:, 0] - 27.0, xy[:, 1] - mid) + 20.0
        w = 200.0 * 20.0 / r[:, None] * shape[None, :]
        w = w + noise_sd * rng.standard_normal(w.shape)
        block = w[None].astype(np.float32)
        ptt = features.peak_to_trough(block)
        return noise_share(block, ptt, ptt.argmax(axis=1), farthest_first(xy), 38)[0], w, ptt

    short, _, _ = unit(32)
    assert short == 0.0
    long, w, ptt = unit(384)
    near = np.argsort(-ptt[0])[:38]
    assert abs(long / (4.0 / w[near].var()) - 1) < 0.1
