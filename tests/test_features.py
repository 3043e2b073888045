"""Tests of kilomatch.features (docs/method.md, section 2) against closed forms and brute force."""

import itertools

import numpy as np
import pytest

from kilomatch.errors import KilomatchError
from kilomatch.features import (
    acg_lags,
    auto_correlogram,
    auto_correlograms,
    center_of_mass,
    center_waveforms,
    footprint_amplitude,
    isi_histogram,
    isi_histograms,
    locate_units,
    nearest_channels,
    peak_channels,
    peak_to_trough,
    shared_decay,
    spike_count_pairs,
)


def np1_geometry(n_channels=192):
    """Neuropixels-1.0-like probe: 2 channels per 20 um row, x = 43, 11 | 59, 27 | 43, 11 ..."""
    c = np.arange(n_channels)
    x = np.array([43.0, 11.0, 59.0, 27.0])[c % 4]
    y = 20.0 * (c // 2 + 1)
    return np.column_stack([x, y])


def point_source_ptt(sources, alpha, loc, decay=1.0):
    """Noise-free amplitudes alpha / r^decay, r = sqrt((x-x_c)^2 + (y-y_c)^2 + z^2): (N, C)
    (decay 1: the monopole)."""
    d2 = ((sources[:, None, :2] - loc[None]) ** 2).sum(-1) + sources[:, 2:3] ** 2
    return alpha[:, None] / d2 ** (decay / 2)


def random_sources(n, seed):
    """n sources over an NP1 probe's width and 60-3700 um of depth, 5-60 um from it."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, 70, n), rng.uniform(60, 3700, n),
                            rng.uniform(5, 60, n)])


# ---------------------------------------------------------------- amplitude, peak, location

def test_peak_to_trough_and_peak_channel_match_brute_force():
    """ptt is max - min over time per channel; the peak channel is its argmax with that amplitude."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, 12, 30)).astype(np.float32)
    ptt = peak_to_trough(w, chunk=3)  # several blocks
    for n in range(7):
        for c in range(12):
            assert ptt[n, c] == pytest.approx(float(w[n, c].max() - w[n, c].min()), abs=1e-5)
    peak, amp = peak_channels(ptt)
    np.testing.assert_array_equal(peak, [int(np.argmax(ptt[n])) for n in range(7)])
    np.testing.assert_allclose(amp, ptt.max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("sources", [
    [[30.0, 400.0, 5.0], [50.0, 410.0, 20.0], [20.0, 515.0, 40.0], [5.0, 300.0, 60.0]],
    [[70.0, 600.0, 15.0], [-10.0, 1500.0, 30.0], [43.0, 200.0, 10.0], [27.0, 1003.0, 50.0]],
])
def test_monopolar_triangulation_recovers_point_source(sources):
    """A noise-free point source on an NP1-like probe is located within 2 um in x, y and z,
    whatever its amplitude (z from 5 to 60 um)."""
    loc = np1_geometry()
    src = np.array(sources)
    alpha = np.array([800.0, 3000.0, 150.0, 10000.0])
    ptt = point_source_ptt(src, alpha, loc)
    peak, _ = peak_channels(ptt)
    est = locate_units(ptt, loc, peak, n_nearest_channels=20)
    assert est.shape == (4, 3)
    np.testing.assert_allclose(est, src, atol=2.0)


@pytest.mark.parametrize("decay", [1.0, 2.0, 2.7])
def test_shared_decay_recovers_the_footprints_exponent(decay):
    """Units whose amplitude falls as 1/r^decay (with noise) give back that exponent within
    0.1 from every unit, within 0.15 from an evenly spread half."""
    loc = np1_geometry(384)
    src = random_sources(400, 3)
    ptt = point_source_ptt(src, np.full(400, 60.0 * 20.0 ** decay), loc, decay)
    ptt = np.clip(ptt + np.random.default_rng(4).normal(0, 0.5, ptt.shape), 0, None)
    near = nearest_channels(loc, peak_channels(ptt)[0], 20)
    assert shared_decay(ptt, loc, near) == pytest.approx(decay, abs=0.1)
    assert shared_decay(ptt, loc, near, max_units=200) == pytest.approx(decay, abs=0.15)


def test_decay_triangulation_locates_footprints_that_fall_faster_than_1_over_r():
    """Where the amplitude falls as 1/r^2, the monopole misplaces the units (z by tens of
    um, x and y by several); the point source with the learned exponent puts them within
    1 um (median) on every axis."""
    loc = np1_geometry(384)
    src = random_sources(300, 5)
    ptt = point_source_ptt(src, np.full(300, 30000.0), loc, 2.0)
    ptt = np.clip(ptt + np.random.default_rng(6).normal(0, 1.0, ptt.shape), 0, None)
    peak = peak_channels(ptt)[0]
    mono = np.median(np.abs(locate_units(ptt, loc, peak, 20) - src), axis=0)
    fitted = np.median(np.abs(locate_units(ptt, loc, peak, 20, "decay_triangulation") - src),
                       axis=0)
    assert mono[2] > 10 and mono[:2].max() > 1.5
    assert fitted.max() < 1.0


@pytest.mark.parametrize("algorithm", ["monopolar_triangulation", "decay_triangulation"])
def test_location_leaves_out_channels_that_did_not_record(algorithm):
    """A channel whose value is no measurement (a dead site filled in from its neighbours)
    moves a unit's position when fitted; marked as not live, the unit lands where it does
    without it (within 0.05 um)."""
    loc = np1_geometry(192)
    src = np.array([[30.0, 800.0, 15.0], [50.0, 1510.0, 25.0]])
    ptt = point_source_ptt(src, np.full(2, 40000.0), loc, 2.0)
    peak = peak_channels(ptt)[0]
    near = nearest_channels(loc, peak, 20)
    live = np.ones(near.shape, bool)
    live[:, 1] = False  # the channel next to each peak stopped recording
    kw = dict(channels=near, decay=2.0)
    clean = locate_units(ptt, loc, peak, 20, algorithm, live=live, **kw)
    filled = ptt.copy()
    filled[np.arange(2), near[:, 1]] *= 0.5  # a filled-in value, off the true footprint
    ignored = locate_units(filled, loc, peak, 20, algorithm, live=live, **kw)
    fitted = locate_units(filled, loc, peak, 20, algorithm, **kw)
    np.testing.assert_allclose(ignored, clean, atol=0.05)
    assert np.abs(fitted - clean).max() > 1.0


@pytest.mark.parametrize("z", [10.0, 20.0])
def test_footprint_amplitude_stays_steady_where_the_peak_channels_moves_with_the_grid(z):
    """A sharp source (amplitude falling as 1/r^2) 10 or 20 um from an NP1 probe, moved
    along it over two rows of channels (drift): its peak channel's amplitude spans 2.8x
    (1.5x at 20 um) as it passes over and between the channels; summed over the channels
    within 60 um of the peak, under a third of that in log."""
    loc = np1_geometry(192)
    y = np.linspace(1000.0, 1040.0, 81)
    src = np.column_stack([np.full(y.size, 30.0), y, np.full(y.size, z)])
    ptt = point_source_ptt(src, np.full(y.size, 30000.0), loc, 2.0)
    peak, amplitude = peak_channels(ptt)
    footprint = footprint_amplitude(ptt, peak, loc)
    spread = np.log(amplitude.max() / amplitude.min())
    assert spread > 0.35
    assert np.log(footprint.max() / footprint.min()) < spread / 3
    # and it is the sum over those channels, no more
    near = np.linalg.norm(loc - loc[peak[0]], axis=1) <= 60.0
    assert footprint[0] == pytest.approx(ptt[0, near].sum())


def test_footprint_amplitude_sums_only_its_own_shanks_channels():
    """Two shanks side by side, 30 um apart: with the shanks given, a unit's footprint
    leaves the other shank's channels out, however near."""
    one = np1_geometry(64)
    loc = np.vstack([one, one + [30.0, 0.0]])
    shanks = np.repeat([0, 1], 64)
    ptt = np.ones((1, 128))
    peak = np.array([20])
    own = np.linalg.norm(one - one[20], axis=1) <= 60.0
    assert footprint_amplitude(ptt, peak, loc, shanks)[0] == own.sum()
    assert footprint_amplitude(ptt, peak, loc)[0] > own.sum()


def test_center_of_mass_is_ptt_weighted_mean_on_nearest_channels():
    """center_of_mass = sum(ptt_c * pos_c) / sum(ptt_c) over the n nearest channels, z = 0;
    locate_units(algorithm='center_of_mass') returns the same."""
    rng = np.random.default_rng(1)
    loc = np1_geometry(96)
    ptt = rng.uniform(0, 50, size=(10, 96))
    peak = np.argmax(ptt, axis=1)
    ch = nearest_channels(loc, peak, 12)
    com = center_of_mass(ptt, loc, ch)
    for n in range(10):
        w = ptt[n, ch[n]]
        expect = (w[:, None] * loc[ch[n]]).sum(0) / w.sum()
        np.testing.assert_allclose(com[n, :2], expect, rtol=1e-12)
    np.testing.assert_array_equal(com[:, 2], 0.0)
    np.testing.assert_allclose(
        locate_units(ptt, loc, peak, 12, algorithm="center_of_mass"), com, rtol=1e-12)


def test_center_of_mass_flat_unit_sits_on_its_centre_channel():
    """A unit with zero amplitude everywhere is placed at its centre (first) channel, not NaN."""
    loc = np1_geometry(32)
    ptt = np.zeros((1, 32))
    ch = nearest_channels(loc, np.array([9]), 8)
    np.testing.assert_array_equal(center_of_mass(ptt, loc, ch)[0], [loc[9, 0], loc[9, 1], 0.0])


def test_unknown_location_algorithm_is_an_error():
    """An unknown algorithm name raises a KilomatchError naming the allowed values."""
    loc = np1_geometry(32)
    ptt = np.ones((1, 32))
    with pytest.raises(KilomatchError, match="center_of_mass"):
        locate_units(ptt, loc, np.array([0]), 8, algorithm="grid")


def test_nearest_channels_nearest_first_centre_first():
    """Each row lists the n channels closest to the centre, sorted by distance (ties by index),
    with the centre channel itself first."""
    loc = np1_geometry(64)
    centres = np.array([0, 5, 17, 40, 63])
    got = nearest_channels(loc, centres, 20)
    assert got.shape == (5, 20)
    for row, c in zip(got, centres):
        d = np.hypot(*(loc - loc[c]).T)
        expect = sorted(range(64), key=lambda k: (d[k], k))[:20]
        np.testing.assert_array_equal(row, expect)
        assert row[0] == c
        assert np.all(np.diff(d[row]) >= 0)


# ---------------------------------------------------------------- centring

@pytest.mark.parametrize("t", [30, 31])
def test_center_waveforms_moves_trough_to_centre_with_edge_padding(t):
    """The peak channel's trough lands at sample ceil(T/2)-1; every channel is shifted by the
    same amount and samples from outside the window repeat the edge value."""
    rng = np.random.default_rng(2)
    n, c = 6, 5
    w = rng.normal(size=(n, c, t)).astype(np.float32)
    peak = rng.integers(0, c, n)
    troughs = [0, 3, t // 2, t - 1, t - 5, int(np.ceil(t / 2)) - 1]
    for k in range(n):
        w[k, peak[k], troughs[k]] = -100.0  # unique trough
    target = int(np.ceil(t / 2)) - 1
    out = center_waveforms(w, peak)
    for k in range(n):
        assert out[k, peak[k], target] == -100.0  # (edge padding may repeat the trough)
        shift = troughs[k] - target
        for s in range(t):
            src = min(max(s + shift, 0), t - 1)
            np.testing.assert_array_equal(out[k, :, s], w[k, :, src])


# ---------------------------------------------------------------- ACG

def brute_force_pair_counts(times, window, binwidth):
    """Counts over all spike pairs i < j of round(|t_j - t_i| / binwidth) in 1..B."""
    n_bins = int(np.floor(window / binwidth + 1e-9))
    counts = np.zeros(n_bins)
    for a, b in itertools.combinations(times, 2):
        k = int(np.floor(abs(b - a) / binwidth + 0.5))
        if 1 <= k <= n_bins:
            counts[k - 1] += 1
    return counts


@pytest.mark.parametrize("seed,window,binwidth", [(3, 50.0, 1.0), (4, 30.0, 0.5), (5, 20.0, 2.0)])
def test_spike_count_pairs_equals_brute_force(seed, window, binwidth):
    """Pair counts per lag bin equal a brute-force count over all spike pairs (not only
    neighbours), differences rounded to the nearest bin, bins 1..window/binwidth."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 2000, 250))
    times = np.concatenate([times, times[:5] + 0.2 * binwidth])  # close pairs (bin 0)
    times.sort()
    got = spike_count_pairs(times, window, binwidth)
    np.testing.assert_array_equal(got, brute_force_pair_counts(times, window, binwidth))


def test_spike_count_pairs_integer_times_and_window_edge():
    """Exact integer lags: a difference equal to the window is counted in the last bin, one
    above is not; bursts count every pair (3 spikes 1 ms apart -> lag 1 twice, lag 2 once)."""
    times = np.array([0.0, 1.0, 2.0, 100.0, 110.0, 211.0])
    got = spike_count_pairs(times, window=10.0, binwidth=1.0)
    expect = np.zeros(10)
    expect[0] = 2  # lag 1: (0,1), (1,2)
    expect[1] = 1  # lag 2: (0,2)
    expect[9] = 1  # lag 10: (100,110); 101 (110 -> 211) is outside
    np.testing.assert_array_equal(got, expect)


def test_acg_unsmoothed_is_normalised_mirrored_brute_force():
    """With gaussian_sigma=0 the ACG is [reversed counts, 0, counts] / max: symmetric, zero
    lag 0, maximum 1, on lags -window..window."""
    rng = np.random.default_rng(6)
    times = np.sort(rng.uniform(0, 3000, 300))
    window, binwidth = 40.0, 1.0
    acg = auto_correlogram(times, window, binwidth, gaussian_sigma=0)
    counts = brute_force_pair_counts(times, window, binwidth)
    expect = np.concatenate([counts[::-1], [0.0], counts]) / counts.max()
    assert acg.shape == acg_lags(window, binwidth).shape == (81,)
    np.testing.assert_allclose(acg, expect, rtol=1e-12)
    assert acg[40] == 0.0
    np.testing.assert_array_equal(acg, acg[::-1])
    assert acg.max() == 1.0
    np.testing.assert_array_equal(acg_lags(window, binwidth), np.arange(-40, 41))


def test_acg_smoothed_keeps_shape_properties():
    """With Gaussian smoothing the ACG is still symmetric, 0 at zero lag and scaled to max 1."""
    rng = np.random.default_rng(7)
    times = np.sort(rng.uniform(0, 10000, 500))
    acg = auto_correlogram(times)  # defaults: 300 ms, 1 ms, sigma 5 ms
    assert acg.shape == (601,)
    assert acg[300] == 0.0
    np.testing.assert_allclose(acg, acg[::-1], atol=0)
    assert acg.max() == pytest.approx(1.0)
    assert np.all(acg >= 0)


@pytest.mark.parametrize("times", [np.array([]), np.array([12.5])])
def test_acg_and_isi_of_fewer_than_two_spikes_are_zero(times):
    """Units with 0 or 1 spike give all-zero ACG and ISI of the right length (no NaN)."""
    acg = auto_correlogram(times, 50.0, 1.0, 2.0)
    isi = isi_histogram(times, 20.0, 1.0, 1.0)
    assert acg.shape == (101,) and isi.shape == (20,)
    np.testing.assert_array_equal(acg, 0.0)
    np.testing.assert_array_equal(isi, 0.0)


# ---------------------------------------------------------------- ISI

def test_isi_unsmoothed_equals_brute_force_histogram():
    """ISI = histogram of successive intervals in [0, window) bins of binwidth, sum 1."""
    rng = np.random.default_rng(8)
    times = np.cumsum(rng.exponential(15.0, 400))
    window, binwidth = 100.0, 1.0
    got = isi_histogram(times, window, binwidth, gaussian_sigma=0)
    expect = np.zeros(100)
    for a, b in zip(times[:-1], times[1:]):
        k = int((b - a) // binwidth)
        if k < 100:
            expect[k] += 1
    expect /= expect.sum()
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    assert got.sum() == pytest.approx(1.0)


def test_isi_window_is_half_open():
    """An interval exactly equal to the window is excluded, one just below is in the last bin."""
    got = isi_histogram(np.array([0.0, 10.0, 20.0 - 1e-9]), window=10.0, binwidth=1.0,
                        gaussian_sigma=0)
    expect = np.zeros(10)
    expect[9] = 1.0  # only the 9.999999999 ms interval
    np.testing.assert_allclose(got, expect)


def test_batch_versions_stack_single_unit_results():
    """auto_correlograms / isi_histograms return one row per unit equal to the single versions,
    and the rows smoothed together equal each unit's counts smoothed on their own."""
    from scipy.ndimage import gaussian_filter1d
    rng = np.random.default_rng(9)
    trains = [np.sort(rng.uniform(0, 2000, k)) for k in (0, 1, 50, 300)]
    acgs = auto_correlograms(trains, 30.0, 1.0, 2.0)
    isis = isi_histograms(trains, 50.0, 1.0, 1.0)
    assert acgs.shape == (4, 61) and isis.shape == (4, 50)
    for k, t in enumerate(trains):
        np.testing.assert_array_equal(acgs[k], auto_correlogram(t, 30.0, 1.0, 2.0))
        np.testing.assert_array_equal(isis[k], isi_histogram(t, 50.0, 1.0, 1.0))
        right = gaussian_filter1d(spike_count_pairs(t, 30.0, 1.0), 2.0, mode="nearest")
        one = np.concatenate([right[::-1], [0.0], right])
        np.testing.assert_array_equal(acgs[k], one / one.max() if one.max() > 0 else one)
        counts = np.bincount(np.floor(np.diff(t)).astype(np.int64), minlength=60)[:50]
        hist = counts / counts.sum() if counts.sum() else counts.astype(float)
        np.testing.assert_array_equal(isis[k], gaussian_filter1d(hist, 1.0, mode="nearest"))
