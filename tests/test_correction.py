"""Tests of kilomatch.correction (docs/method.md, section 7, Kriging).

Tolerance for "shift 0 returns the waveform": Kriging with the 0.01 ridge returns
K (K + 0.01 I)^-1 W = W - 0.01 (K + 0.01 I)^-1 W, so the error is ~0.01/lambda on the kernel
eigen-directions W lives in. A smooth spatial footprint (Gaussian, sd >= 20 um) lies in the
large-eigenvalue directions: measured relative error 0.5-1%, so we require < 5%.
"""

import numpy as np
import pytest

from kilomatch.correction import (
    RIDGE,
    correct_waveforms,
    kriging_inverse,
    kriging_kernel,
    shift_matrix,
)

ROW = 20.0


def two_column_probe(n_rows=40):
    """Two columns x = 11, 43 um, rows every 20 um: channel 2r (left), 2r+1 (right) at 20 r."""
    c = np.arange(2 * n_rows)
    return np.column_stack([np.where(c % 2 == 0, 11.0, 43.0), ROW * (c // 2)])


def np1_probe(n_channels=96):
    """NP1-like: x = 43, 11 | 59, 27 by row pairs, 20 um rows (a column repeats every 40 um)."""
    c = np.arange(n_channels)
    return np.column_stack([np.array([43.0, 11.0, 59.0, 27.0])[c % 4], ROW * (c // 2 + 1)])


def footprint(loc, y0, x0=27.0, sd_y=30.0, sd_x=30.0, t=12):
    """Smooth spatial footprint (Gaussian around (x0, y0)) times a spike-like time course."""
    space = np.exp(-((loc[:, 1] - y0) ** 2) / (2 * sd_y ** 2) - (loc[:, 0] - x0) ** 2 / (2 * sd_x ** 2))
    time = -np.exp(-((np.arange(t) - 4.0) ** 2) / 2.0) + 0.4 * np.exp(-((np.arange(t) - 8.0) ** 2) / 8.0)
    return (100.0 * space[:, None] * time[None, :]).astype(np.float32)


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b))


def test_kernel_closed_form():
    """K(u, v) = exp(-|dx|/20 - |dy|/30), and the inverse is (K + 0.01 I)^-1."""
    a = np.array([[0.0, 0.0], [10.0, 5.0]])
    b = np.array([[3.0, -9.0], [10.0, 5.0], [-20.0, 60.0]])
    k = kriging_kernel(a, b)
    for i in range(2):
        for j in range(3):
            dx, dy = abs(a[i, 0] - b[j, 0]), abs(a[i, 1] - b[j, 1])
            assert k[i, j] == pytest.approx(np.exp(-dx / 20.0 - dy / 30.0), rel=1e-14)
    loc = two_column_probe(6)
    kinv = kriging_inverse(loc)
    np.testing.assert_allclose(kinv @ (kriging_kernel(loc, loc) + RIDGE * np.eye(12)),
                               np.eye(12), atol=1e-10)


@pytest.mark.parametrize("sd", [20.0, 30.0, 60.0])
def test_shift_zero_returns_the_waveform(sd):
    """Shift 0 gives back a smooth waveform within 5% relative error (ridge 0.01, see top)."""
    loc = two_column_probe()
    w = footprint(loc, 400.0, sd_y=sd)
    out = correct_waveforms(w[None], loc, np.array([0.0]))[0]
    assert rel_err(out, w) < 0.05
    # The error is the ridge term exactly: W - 0.01 (K + 0.01 I)^-1 W.
    kinv = kriging_inverse(loc)
    np.testing.assert_allclose(out, w - RIDGE * (kinv @ w), atol=1e-3)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_shift_of_one_row_moves_waveform_by_one_row(sign):
    """Docstring convention: corrected waveform at channel v = session waveform at v + (0,
    shift). A shift of +20 um (-20 um) makes channel c carry what was on the channel one row
    up (down); on interior channels this equals the shift-0 Kriging at that channel exactly
    and the original waveform within the ridge tolerance."""
    loc = two_column_probe()
    w = footprint(loc, 400.0)
    shifted = correct_waveforms(w[None], loc, np.array([sign * ROW]))[0]
    same = correct_waveforms(w[None], loc, np.array([0.0]))[0]
    step = 2 if sign > 0 else -2  # next row, same column
    interior = np.arange(2, len(loc) - 2)
    np.testing.assert_allclose(shifted[interior], same[interior + step], atol=1e-3)
    assert rel_err(shifted[interior], w[interior + step]) < 0.05
    # and it really moved: far from the unshifted waveform
    assert rel_err(shifted[interior], w[interior]) > 0.2
    # the trough row moves down by one row for a positive shift
    peak = np.argmax(w.max(1) - w.min(1))
    assert np.argmax(shifted.max(1) - shifted.min(1)) == peak - step


def test_np1_shift_of_two_rows_maps_onto_same_column():
    """On NP1 the same column repeats every 2 rows (40 um): a +40 um shift makes channel c
    carry channel c + 4 (same x, 40 um up)."""
    loc = np1_probe()
    w = footprint(loc, 900.0, x0=35.0)
    shifted = correct_waveforms(w[None], loc, np.array([2 * ROW]))[0]
    same = correct_waveforms(w[None], loc, np.array([0.0]))[0]
    interior = np.arange(4, len(loc) - 4)
    assert np.all(loc[interior + 4, 0] == loc[interior, 0])
    np.testing.assert_allclose(shifted[interior], same[interior + 4], atol=1e-3)
    assert rel_err(shifted[interior], w[interior + 4]) < 0.05


def test_correction_undoes_motion_in_the_pipeline_convention():
    """A unit at true depth 400 um appears at 400 + p in a session whose motion is p = 13 um
    (off the 20 um grid). Correcting with shift p brings its waveform back towards the
    reference-probe footprint; the opposite sign moves it further away. Off-grid values are
    interpolated with the exponential kernel, which rounds a Gaussian's peak (measured error
    8% for sd 30 um vs 30% without correction), hence the 10% bound."""
    loc = two_column_probe()
    p = 13.0
    ref = footprint(loc, 400.0)
    seen = footprint(loc, 400.0 + p)
    good = correct_waveforms(seen[None], loc, np.array([p]))[0]
    bad = correct_waveforms(seen[None], loc, np.array([-p]))[0]
    interior = np.arange(4, len(loc) - 4)
    err_good = rel_err(good[interior], ref[interior])
    assert err_good < 0.10
    assert err_good < 0.5 * rel_err(seen[interior], ref[interior])
    assert rel_err(bad[interior], ref[interior]) > 4 * err_good


def test_grouped_shifts_equal_per_unit_shift_matrices():
    """correct_waveforms over 1100 units (many blocks of correct_local) with few shared
    (rigid) shifts and with all-different (per-unit, linear) shifts equals applying
    shift_matrix(shift) to each unit separately; a rigid group gives the same result as
    the same shifts handled one unit at a time."""
    rng = np.random.default_rng(0)
    loc = two_column_probe(16)
    n = 1100
    w = rng.normal(size=(n, len(loc), 6)).astype(np.float32)
    rigid = rng.choice([-17.5, 0.0, 4.0, 22.0], n)
    per_unit = rigid + rng.uniform(-1, 1, n)
    kinv = kriging_inverse(loc)
    for shifts in (rigid, per_unit):
        out = correct_waveforms(w, loc, shifts, kinv)
        assert out.dtype == np.float32 and out.shape == w.shape
        for k in rng.choice(n, 40, replace=False).tolist() + [0, 1023, 1024, n - 1]:
            ref = shift_matrix(loc, shifts[k], kinv) @ w[k].astype(np.float64)
            np.testing.assert_allclose(out[k], ref, atol=2e-4, rtol=1e-4)
    one_by_one = np.stack([correct_waveforms(w[k:k + 1], loc, rigid[k:k + 1], kinv)[0]
                           for k in range(0, n, 50)])
    np.testing.assert_allclose(correct_waveforms(w, loc, rigid, kinv)[::50], one_by_one,
                               atol=1e-5)


def test_out_argument_and_default_inverse():
    """Writing into ``out`` and computing the inverse internally give the same result."""
    rng = np.random.default_rng(1)
    loc = two_column_probe(8)
    w = rng.normal(size=(5, 16, 4)).astype(np.float32)
    shifts = np.array([0.0, 5.0, 5.0, -9.0, 30.0])
    out = np.empty_like(w)
    ret = correct_waveforms(w, loc, shifts, kriging_inverse(loc), out=out)
    assert ret is out
    np.testing.assert_allclose(correct_waveforms(w, loc, shifts), out, atol=1e-5)


def test_local_windows_each_unit_uses_its_own_window_and_shift():
    """correct_local on units of many different channel windows, blocks of units mixing
    windows and shifts, in two threads: each unit gets the Kriging of its own window at its
    own shift, K(v_w + (0, shift), v_w) (K + 0.01 I)^-1 restricted to w, times its waveform;
    the same for a subset of the units (``units``) and in place (``out`` = the values)."""
    from kilomatch.channel_windows import LocalWaveforms, window_table
    from kilomatch.correction import correct_local
    from kilomatch.parallel import threads_for_pairs

    rng = np.random.default_rng(3)
    loc = np1_probe(192)
    table = window_table(loc, None, 150.0)
    n = 700
    peak = rng.integers(0, len(loc), n)
    channels = table[peak]
    values = rng.normal(size=(n, table.shape[1], 5)).astype(np.float32)
    shifts = rng.choice([-25.0, -3.0, 0.0, 11.5, 40.0], n) + np.where(
        rng.random(n) < 0.3, rng.uniform(-2, 2, n), 0.0)
    kinv = kriging_inverse(loc)

    def expected(k):
        win = channels[k]
        kernel = kriging_kernel(loc[win] + np.array([0.0, shifts[k]]), loc[win])
        return kernel @ kinv[np.ix_(win, win)] @ values[k].astype(np.float64)

    with threads_for_pairs(2):
        every = correct_local(LocalWaveforms(values.copy(), channels, len(loc)), loc, shifts,
                              kinv).values
        some = rng.choice(n, 90, replace=False)
        subset = correct_local(LocalWaveforms(values.copy(), channels, len(loc)), loc, shifts,
                               kinv, units=some).values
        local = LocalWaveforms(values.copy(), channels, len(loc))
        in_place = correct_local(local, loc, shifts, kinv, out=local.values).values
    for k in range(n):
        np.testing.assert_allclose(every[k], expected(k), atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(subset, every[some])
    np.testing.assert_array_equal(in_place, every)
