"""Tests of kilomatch.similarity (docs/method.md, sections 3 and 4) against brute-force O(N^2)
references."""

import itertools

import numpy as np
import pytest

from kilomatch.similarity import (
    R_MAX,
    candidate_pairs,
    feature_similarity,
    fisher_z,
    waveform_similarity,
    weighted_similarity,
)


def brute_candidates(depth, session, max_distance, group=None):
    """All i < j with different sessions, |depth_i - depth_j| <= max_distance, same group."""
    out = [(i, j) for i, j in itertools.combinations(range(len(depth)), 2)
           if session[i] != session[j] and abs(depth[i] - depth[j]) <= max_distance
           and (group is None or group[i] == group[j])]
    return np.array(out, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------- candidate pairs

@pytest.mark.parametrize("seed", range(4))
def test_candidate_pairs_equal_brute_force_with_exact_ties(seed):
    """Integer depths (many pairs exactly max_distance apart, many equal depths): the sparse
    enumeration equals the O(N^2) one, pairs i < j sorted by (i, j)."""
    rng = np.random.default_rng(seed)
    n = 160
    depth = rng.integers(0, 400, n).astype(float)
    session = rng.integers(1, 5, n)
    got = candidate_pairs(depth, session, 100.0)
    expect = brute_candidates(depth, session, 100.0)
    n_ties = sum(abs(depth[i] - depth[j]) == 100.0 for i, j in expect)
    assert n_ties > 0  # the boundary is really exercised
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("seed", range(3))
def test_candidate_pairs_equal_brute_force_with_groups(seed):
    """With a group (shank) id, pairs must also share the group; real-valued depths."""
    rng = np.random.default_rng(10 + seed)
    n = 200
    depth = rng.uniform(0, 1000, n)
    session = rng.integers(0, 6, n)
    group = rng.integers(0, 3, n)
    got = candidate_pairs(depth, session, 75.0, group)
    np.testing.assert_array_equal(got, brute_candidates(depth, session, 75.0, group))
    assert len(got) > 100


def test_candidate_pairs_small_inputs():
    """One unit, or units all in one session, give an empty (0, 2) array; max_distance 0 keeps
    only equal depths."""
    assert candidate_pairs(np.array([5.0]), np.array([1]), 100.0).shape == (0, 2)
    assert candidate_pairs(np.arange(5.0), np.ones(5, int), 100.0).shape == (0, 2)
    got = candidate_pairs(np.array([3.0, 3.0, 4.0, 3.0]), np.array([1, 2, 3, 1]), 0.0)
    np.testing.assert_array_equal(got, [[0, 1], [1, 3]])


def test_candidate_pairs_boundary_matches_abs_difference_on_decimal_depths():
    """The documented rule |depth_i - depth_j| <= max_distance holds exactly in floating point."""
    depth = np.array([96.8, 196.8])
    assert abs(depth[1] - depth[0]) > 100.0
    got = candidate_pairs(depth, np.array([0, 1]), 100.0)
    np.testing.assert_array_equal(got, brute_candidates(depth, [0, 1], 100.0))


# ---------------------------------------------------------------- feature similarity

def test_feature_similarity_is_atanh_of_corrcoef():
    """Per pair, z = atanh(clip(np.corrcoef(f_i, f_j))); identical rows clip to atanh(R_MAX),
    reversed rows to -atanh(R_MAX)."""
    rng = np.random.default_rng(20)
    base = rng.normal(size=(4, 40))
    feat = np.vstack([base + rng.normal(scale=s, size=(4, 40)) for s in (0.2, 0.7, 2.0)])
    feat = np.vstack([feat, feat[0], -feat[1]])  # exact copy and exact negative
    n = feat.shape[0]
    pairs = np.array(list(itertools.combinations(range(n), 2)))
    got = feature_similarity(feat, pairs, block=7)  # several blocks
    c = np.corrcoef(feat)
    expect = np.arctanh(np.clip(c[pairs[:, 0], pairs[:, 1]], -R_MAX, R_MAX))
    np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-9)
    k = {tuple(p): z for p, z in zip(pairs.tolist(), got)}
    assert k[(0, n - 2)] == pytest.approx(np.arctanh(R_MAX))
    assert k[(1, n - 1)] == pytest.approx(-np.arctanh(R_MAX))
    assert np.all(np.isfinite(got))


def test_feature_similarity_constant_vectors_give_zero():
    """A constant (or all-zero) feature vector has undefined r: its similarity is exactly 0."""
    rng = np.random.default_rng(21)
    feat = np.vstack([np.zeros(30), np.full(30, 3.5), rng.normal(size=30), rng.normal(size=30)])
    pairs = np.array([[0, 2], [1, 3], [0, 1], [2, 3]])
    got = feature_similarity(feat, pairs)
    np.testing.assert_array_equal(got[:3], 0.0)
    assert got[3] == pytest.approx(np.arctanh(np.corrcoef(feat[2], feat[3])[0, 1]))


def test_fisher_z_clips_and_maps_nan_to_zero():
    """fisher_z: atanh inside (-1, 1), +-atanh(R_MAX) at and beyond +-1, 0 for NaN."""
    got = fisher_z(np.array([0.5, 1.0, -1.0, 1.5, np.nan]))
    np.testing.assert_allclose(got, [np.arctanh(0.5), np.arctanh(R_MAX), -np.arctanh(R_MAX),
                                     np.arctanh(R_MAX), 0.0])


def test_weighted_similarity_is_weighted_sum():
    """S = sum_f w_f S_f per pair."""
    f = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    np.testing.assert_allclose(weighted_similarity(f, np.array([0.5, 0.25, 0.25])),
                               [0.5 + 0.5 + 0.75, -0.25 + 1.0])


# ---------------------------------------------------------------- waveform similarity

def line_probe(n_channels):
    """Two columns (x = 11, 43), 20 um rows."""
    c = np.arange(n_channels)
    return np.column_stack([np.where(c % 2 == 0, 11.0, 43.0), 20.0 * (c // 2)])


def brute_channel_sets(waveforms, loc, n):
    """The channel set of docs/method.md, section 3: the n channels nearest the peak (max ptt)
    channel."""
    ptt = waveforms.max(axis=2) - waveforms.min(axis=2)
    sets = []
    for w in ptt:
        peak = int(np.argmax(w))
        d = np.hypot(*(loc - loc[peak]).T)
        sets.append(sorted(range(len(loc)), key=lambda k: (d[k], k))[:n])
    return np.array(sets)


def brute_waveform_z(wf, ch, i, j):
    """max over directions of atanh(r) of the two units flattened on one unit's channels."""
    rs = []
    for own in (i, j):
        a = wf[i][ch[own]].astype(np.float64).ravel()
        b = wf[j][ch[own]].astype(np.float64).ravel()
        rs.append(np.corrcoef(a, b)[0, 1])
    return np.arctanh(np.clip(max(rs), -R_MAX, R_MAX))


def make_units(rng, n_units, loc, t=16):
    """Units with a spatial footprint around a random depth and a shared-ish time course,
    float32 like the pipeline's waveforms."""
    time = np.sin(np.linspace(0, 2 * np.pi, t))[None, :]
    wf = np.empty((n_units, len(loc), t), np.float32)
    for k in range(n_units):
        y0 = rng.uniform(loc[:, 1].min(), loc[:, 1].max())
        foot = np.exp(-((loc[:, 1] - y0) ** 2) / (2 * 40.0 ** 2))
        wf[k] = 50 * foot[:, None] * (time + 0.3 * rng.normal(size=(1, t))) \
            + rng.normal(scale=2.0, size=(len(loc), t))
    return wf


def assert_same_z(got, expect):
    """Equal Fisher z. The implementation correlates float32 waveforms with a float32 dot
    product (r good to ~1e-7), and atanh magnifies r errors by 1/(1 - r^2) near r = 1, so the
    comparison is tight on r (1e-6) and relative on z (1e-4)."""
    np.testing.assert_allclose(np.tanh(got), np.tanh(expect), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)


def test_waveform_similarity_equals_brute_force_max_of_directions():
    """S_wf = max(Z_ij, Z_ji) with Z_ij the Pearson z of both units over unit i's nearest
    channels to its peak, all samples flattened (every pair of 14 units)."""
    rng = np.random.default_rng(30)
    loc = line_probe(48)
    wf = make_units(rng, 14, loc)
    ch = brute_channel_sets(wf, loc, 10)
    pairs = np.array(list(itertools.combinations(range(14), 2)))
    got = waveform_similarity(wf, ch, pairs)
    expect = np.array([brute_waveform_z(wf, ch, i, j) for i, j in pairs])
    assert_same_z(got, expect)
    assert np.ptp(got) > 1.0  # a real mix of similar and dissimilar pairs


def test_waveform_similarity_takes_the_larger_direction():
    """When the two directions disagree strongly, the larger one is returned, in either pair
    orientation: unit 1 copies unit 0 on unit 0's channels but is noise elsewhere."""
    rng = np.random.default_rng(31)
    wf = rng.normal(size=(2, 20, 10)).astype(np.float32)
    ch = np.array([np.arange(0, 6), np.arange(10, 16)])
    wf[1, 0:6] = 2 * wf[0, 0:6] + 0.1 * rng.normal(size=(6, 10))
    z_01 = brute_waveform_z(wf, ch, 0, 1)
    r_10 = np.corrcoef(wf[0][ch[1]].ravel(), wf[1][ch[1]].ravel())[0, 1]
    assert z_01 > 2.0 and abs(r_10) < 0.5
    got = waveform_similarity(wf, ch, np.array([[0, 1], [1, 0]]))
    assert_same_z(got, np.array([z_01, z_01]))


def test_waveform_similarity_two_templates_is_max_over_templates():
    """With (K=2, N, C, T) corrected waveforms and (2, N, n) channel sets the result is the
    larger of the two single-template similarities, which differ pair by pair."""
    rng = np.random.default_rng(32)
    loc = line_probe(40)
    wf = np.stack([make_units(rng, 10, loc), make_units(rng, 10, loc)])
    ch = np.stack([brute_channel_sets(wf[0], loc, 8), brute_channel_sets(wf[1], loc, 8)])
    pairs = np.array(list(itertools.combinations(range(10), 2)))
    got = waveform_similarity(wf, ch, pairs, templates=2)
    per = np.array([[brute_waveform_z(wf[k], ch[k], i, j) for i, j in pairs] for k in (0, 1)])
    assert_same_z(got, per.max(axis=0))
    assert np.any(per[0] > per[1] + 0.1) and np.any(per[1] > per[0] + 0.1)
    assert_same_z(waveform_similarity(wf[0], ch[0], pairs), per[0])


def test_waveform_similarity_of_flat_waveform_is_zero():
    """A flat (constant) waveform has no defined correlation: similarity 0, not NaN."""
    rng = np.random.default_rng(33)
    wf = rng.normal(size=(2, 8, 10)).astype(np.float32)
    wf[1] = 0.0
    ch = np.tile(np.arange(4), (2, 1))
    assert waveform_similarity(wf, ch, np.array([[0, 1]]))[0] == 0.0


# ---------------------------------------------------------------- products in tiles

def test_products_in_tiles_equal_brute_force(monkeypatch):
    """The products of a group are taken a few owners at a time against only the partner rows
    their pairs reach (similarity._tiled_products): with tiles of 2 owners, feature and
    waveform similarity of a sparse, uneven set of pairs (as a session gap leaves them) equal
    the brute-force values, and equal the untiled products."""
    from kilomatch import similarity
    rng = np.random.default_rng(32)
    loc = line_probe(48)
    wf = make_units(rng, 60, loc)
    ch = brute_channel_sets(wf, loc, 10)
    everything = np.array(list(itertools.combinations(range(60), 2)))
    near = np.abs(everything[:, 0] - everything[:, 1]) <= 7  # "sessions" near each other
    pairs = everything[near & (rng.random(len(everything)) < 0.7)]
    feat = rng.normal(size=(60, 25)) + np.sin(np.arange(25))[None, :]
    untiled_f = feature_similarity(feat, pairs, block=20)
    untiled_w = waveform_similarity(wf, ch, pairs)
    monkeypatch.setattr(similarity, "TILE_UNITS", 2)
    got_f = feature_similarity(feat, pairs, block=20)
    got_w = waveform_similarity(wf, ch, pairs)
    c = np.corrcoef(feat)
    np.testing.assert_allclose(got_f, np.arctanh(np.clip(c[pairs[:, 0], pairs[:, 1]],
                                                         -R_MAX, R_MAX)), rtol=1e-9, atol=1e-9)
    assert_same_z(got_w, np.array([brute_waveform_z(wf, ch, i, j) for i, j in pairs]))
    np.testing.assert_allclose(got_f, untiled_f, rtol=1e-12, atol=1e-12)
    assert_same_z(got_w, untiled_w)


def test_partner_norms_from_window_moments_on_narrow_windows():
    """A partner's norm on the owner's channels comes from its per-channel moments
    (LocalWaveforms.slot_moments), counting only channels inside its window: with windows
    narrower than the channel sets, the similarity still equals brute force on the waveforms
    zeroed outside each window, and the moments equal a direct sum."""
    from kilomatch.channel_windows import LocalWaveforms, window_table
    from kilomatch.features import peak_channels
    rng = np.random.default_rng(33)
    loc = line_probe(48)
    full = make_units(rng, 30, loc) + 5.0  # an offset: the norms must be centred
    windows = window_table(loc, None, 60.0)  # ~14 channels, fewer than the sets reach
    peak = peak_channels(full.max(axis=2) - full.min(axis=2))[0]
    local = LocalWaveforms(np.take_along_axis(full, windows[peak][:, :, None], axis=1),
                           windows[peak], 48)
    zeroed = local.full()
    sums, squares = local.slot_moments()
    np.testing.assert_allclose(sums, local.values.astype(np.float64).sum(axis=2), rtol=1e-12)
    np.testing.assert_allclose(squares, (local.values.astype(np.float64) ** 2).sum(axis=2),
                               rtol=1e-12)
    ch = brute_channel_sets(zeroed, loc, 16)
    pairs = np.array(list(itertools.combinations(range(30), 2)))
    outside = np.array([np.setdiff1d(ch[i], windows[peak[j]]).size > 0 for i, j in pairs])
    assert outside.mean() > 0.5  # most partners miss some of the owner's channels
    got = waveform_similarity(local, ch, pairs)

    def brute(i, j):  # a partner all zero on the owner's channels has r 0, as fisher_z says
        rs = []
        for own in (i, j):
            a, b = (zeroed[u][ch[own]].astype(np.float64).ravel() for u in (i, j))
            rs.append(0.0 if min(a.std(), b.std()) == 0 else np.corrcoef(a, b)[0, 1])
        return np.arctanh(np.clip(max(rs), -R_MAX, R_MAX))

    assert_same_z(got, np.array([brute(i, j) for i, j in pairs]))


def test_stable_order_is_numpys_stable_argsort():
    """stable_order gives np.argsort(kind="stable")'s permutation: ties in input order, for
    small keys (sorted as 16-bit integers) and for keys it leaves alone (negative, large,
    empty)."""
    from kilomatch.similarity import stable_order
    rng = np.random.default_rng(3)
    for key in (rng.integers(0, 40, 5000), rng.integers(0, 2**15, 5000, dtype=np.int64),
                rng.integers(-5, 40, 5000), rng.integers(0, 2**40, 5000),
                np.zeros(0, np.int64), np.full(300, 7)):
        assert np.array_equal(stable_order(key), np.argsort(key, kind="stable"))


def test_groups_read_in_batches_give_the_same_bits_as_one_by_one(monkeypatch):
    """_products_by_group reads the rows of several groups at once (BATCH_ROWS of owners and
    partners): batches of every size, down to one group each, and two threads give the same
    similarities, bit for bit, for the waveforms (one channel set per group) and the ACGs
    (blocks of units)."""
    import kilomatch.similarity as similarity
    from kilomatch.channel_windows import LocalWaveforms, window_table
    from kilomatch.features import peak_channels
    from kilomatch.parallel import threads_for_pairs
    rng = np.random.default_rng(34)
    loc = line_probe(48)
    full = make_units(rng, 60, loc)
    windows = window_table(loc, None, 80.0)
    peak = peak_channels(full.max(axis=2) - full.min(axis=2))[0]
    local = LocalWaveforms(np.take_along_axis(full, windows[peak][:, :, None], axis=1),
                           windows[peak], 48)
    ch = brute_channel_sets(local.full(), loc, 12)
    pairs = np.array(list(itertools.combinations(range(60), 2)))
    acg = rng.random((60, 40))
    results = []
    for batch_rows, threads, min_pairs in ((10 ** 9, 1, 10 ** 9), (40, 1, 10 ** 9),
                                           (1, 1, 10 ** 9), (40, 2, 0)):
        monkeypatch.setattr(similarity, "BATCH_ROWS", batch_rows)
        monkeypatch.setattr(similarity, "MIN_PAIRS_THREADED", min_pairs)
        with threads_for_pairs(threads):
            results.append((waveform_similarity(local, ch, pairs),
                            feature_similarity(acg, pairs, block=8)))
    assert np.unique(ch, axis=0).shape[0] > 10  # many groups, so batches hold several
    for wave, feature in results[1:]:
        np.testing.assert_array_equal(wave, results[0][0])
        np.testing.assert_array_equal(feature, results[0][1])
