"""Tests of the channel-window path: kilomatch.channel_windows (window_table, LocalWaveforms,
reduce_block), windowed Kriging (correction.correct_local), block reads (load.iter_rows) and
the similarity functions' new arguments (candidate_pairs max_session_gap / chunk_pairs,
feature_similarity unit_order / block, waveform_similarity on LocalWaveforms).

Every windowed result is compared with its full-probe (or brute-force) definition.
"""

import numpy as np
import pytest

from kilomatch.channel_windows import (
    LocalWaveforms,
    StoredWaveforms,
    reduce_block,
    window_table,
)
from kilomatch.correction import (
    correct_local,
    correct_waveforms,
    kriging_inverse,
    shift_matrix,
)
from kilomatch.load import iter_rows
from kilomatch.similarity import (
    R_MAX,
    candidate_pairs,
    feature_similarity,
    waveform_similarity,
)

C_NP1 = 384
RADIUS = 500.0


def np1_probe(n_channels=C_NP1):
    """NP1: 4 staggered columns x = 43, 11 | 59, 27 by row pairs, 2 channels a row, 20 um rows."""
    c = np.arange(n_channels)
    return np.column_stack([np.array([43.0, 11.0, 59.0, 27.0])[c % 4], 20.0 * (c // 2)])


def four_shank_probe():
    """4 NP1-like shanks of 96 channels (0..940 um), 250 um apart: (384, 2), (384,) shank ids."""
    one = np1_probe(96)
    loc = np.concatenate([one + np.array([250.0 * k, 0.0]) for k in range(4)])
    return loc, np.repeat(np.arange(4), 96)


def distances(loc):
    return np.linalg.norm(loc[:, None, :] - loc[None, :, :], axis=2)


def brute_window(d_row, w):
    """The w channels nearest one channel, ties to the lower index (the documented order)."""
    return sorted(range(d_row.size), key=lambda k: (d_row[k], k))[:w]


# ------------------------------------------------------------------------- window_table

def test_window_table_np1_peak_first_within_radius_and_complete():
    """NP1, radius 500 um: W = the largest +-500 um neighbourhood (98 channels); every window
    starts with its own channel, is sorted by distance (ties to lower index), holds every
    channel within the radius; mid-probe windows hold nothing beyond the radius."""
    loc = np1_probe()
    d = distances(loc)
    win = window_table(loc, None, RADIUS)
    assert win.dtype == np.int64
    n_within = (d <= RADIUS).sum(axis=1)
    assert win.shape == (C_NP1, n_within.max()) and win.shape[1] == 98
    np.testing.assert_array_equal(win[:, 0], np.arange(C_NP1))
    for c in range(C_NP1):
        assert len(set(win[c].tolist())) == win.shape[1]  # no channel twice
        np.testing.assert_array_equal(win[c], brute_window(d[c], win.shape[1]))
        assert set(np.flatnonzero(d[c] <= RADIUS)) <= set(win[c].tolist())
    mid = np.flatnonzero((loc[:, 1] >= 500) & (loc[:, 1] <= loc[:, 1].max() - 500))
    assert mid.size > 150
    for c in mid:
        assert d[c, win[c]].max() <= RADIUS
        assert set(win[c].tolist()) == set(np.flatnonzero(d[c] <= RADIUS).tolist())
    # Channels near the tip see the W nearest, reaching farther up the probe.
    assert d[0, win[0]].max() > RADIUS


def test_window_table_multishank_keeps_each_window_on_its_shank():
    """4 shanks 250 um apart, radius 300 um: without shank ids windows pick up the
    neighbouring shank; with them no window holds another shank's channel, and each still
    holds every same-shank channel within the radius, nearest first."""
    loc, shank = four_shank_probe()
    d = distances(loc)
    radius = 300.0
    plain = window_table(loc, None, radius)
    assert np.any(shank[plain] != shank[:, None])  # the test geometry really mixes shanks
    win = window_table(loc, shank, radius)
    same = shank[:, None] == shank[None, :]
    n_within = ((d <= radius) & same).sum(axis=1)
    assert win.shape == (len(loc), n_within.max()) and win.shape[1] < 96
    np.testing.assert_array_equal(win[:, 0], np.arange(len(loc)))
    np.testing.assert_array_equal(shank[win], np.repeat(shank[:, None], win.shape[1], axis=1))
    for c in range(len(loc)):
        inside = np.flatnonzero((d[c] <= radius) & same[c])
        assert set(inside.tolist()) <= set(win[c].tolist())
        assert np.all(np.diff(d[c, win[c]]) >= 0)


def test_window_table_multishank_windows_larger_than_a_shank_put_own_shank_first():
    """min_channels beyond a shank's 96 channels: the window holds the whole own shank first,
    then other shanks' channels (never an own-shank channel after a foreign one)."""
    loc, shank = four_shank_probe()
    win = window_table(loc, shank, 300.0, min_channels=120)
    assert win.shape == (len(loc), 120)
    for c in range(len(loc)):
        own = shank[win[c]] == shank[c]
        assert own[:96].all() and not own[96:].any()
        assert set(win[c, :96].tolist()) == set(np.flatnonzero(shank == shank[c]).tolist())


def test_window_table_min_channels_and_at_most_all_channels():
    """A radius holding only the channel itself gives W = min_channels nearest channels;
    W never exceeds C (huge min_channels or radius give every channel, each window a
    permutation of the probe)."""
    loc = np1_probe()
    d = distances(loc)
    assert window_table(loc, None, 1.0).shape == (C_NP1, 1)
    win = window_table(loc, None, 1.0, min_channels=10)
    assert win.shape == (C_NP1, 10)
    for c in (0, 1, 100, 383):
        np.testing.assert_array_equal(win[c], brute_window(d[c], 10))
    for table in (window_table(loc, None, 1.0, min_channels=1000),
                  window_table(loc, None, 1e6)):
        assert table.shape == (C_NP1, C_NP1)
        np.testing.assert_array_equal(np.sort(table, axis=1),
                                      np.broadcast_to(np.arange(C_NP1), (C_NP1, C_NP1)))
    small = np1_probe(6)
    assert window_table(small, None, 1.0, min_channels=50).shape == (6, 6)


# ------------------------------------------------------------------------- LocalWaveforms

def random_local(rng, n=30, c=50, w=12, t=5):
    """N units on random windows (distinct channels, random order) of a C-channel probe."""
    channels = np.stack([rng.permutation(c)[:w] for _ in range(n)]).astype(np.int64)
    values = rng.normal(size=(n, w, t)).astype(np.float32)
    return LocalWaveforms(values, channels, c)


def test_full_puts_values_on_window_channels_and_zero_elsewhere():
    rng = np.random.default_rng(0)
    lw = random_local(rng)
    full = lw.full()
    assert full.shape == lw.shape == (30, 50, 5) and full.dtype == np.float32
    for k in range(lw.n_units):
        np.testing.assert_array_equal(full[k, lw.channels[k]], lw.values[k])
        outside = np.setdiff1d(np.arange(50), lw.channels[k])
        assert not full[k, outside].any()


@pytest.mark.parametrize("per_unit", [False, True])
def test_on_equals_full_indexing(per_unit):
    """on(units, channels) == full()[units][:, channels] (shared (c,)) or per unit (n, c):
    zeros on channels outside a unit's window; units may repeat; values are not modified."""
    rng = np.random.default_rng(1)
    lw = random_local(rng)
    before = lw.values.copy()
    full = lw.full()
    units = rng.integers(0, lw.n_units, 40)  # repeats included
    if per_unit:
        # Half the channels from each unit's own window (so both branches are exercised).
        own = np.take_along_axis(lw.channels[units], rng.integers(0, 12, (40, 4)), axis=1)
        channels = np.concatenate([own, rng.integers(0, 50, (40, 5))], axis=1)
        expect = np.take_along_axis(full[units], channels[:, :, None], axis=1)
    else:
        channels = rng.integers(0, 50, 9)
        expect = full[units][:, channels]
    got = lw.on(units, channels)
    assert got.shape == expect.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, expect)
    assert (got == 0).any() and (got != 0).any()
    np.testing.assert_array_equal(lw.values, before)
    # slots: -1 exactly where the channel is outside the window, else the window slot.
    slot = lw.slots(units, channels)
    ch = np.broadcast_to(channels, slot.shape)
    for r in range(units.size):
        win = lw.channels[units[r]].tolist()
        np.testing.assert_array_equal(slot[r], [win.index(x) if x in win else -1
                                                for x in ch[r].tolist()])


def test_from_full_round_trip_subset_and_reduce_block():
    """from_full(w).full() == w and on == plain indexing; subset keeps its rows;
    reduce_block of a full block on each unit's window gives the window values."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(7, 20, 4)).astype(np.float32)
    lw = LocalWaveforms.from_full(w)
    assert lw.shape == w.shape and lw.n_channels == 20
    np.testing.assert_array_equal(lw.full(), w)
    np.testing.assert_array_equal(lw.on(np.array([3, 0]), np.array([19, 2, 2])),
                                  w[[3, 0]][:, [19, 2, 2]])
    # subset: same rows, same probe, consistent with the parent's full()
    local = random_local(rng)
    members = np.array([5, 0, 29, 5])
    sub = local.subset(members)
    np.testing.assert_array_equal(sub.values, local.values[members])
    np.testing.assert_array_equal(sub.channels, local.channels[members])
    assert sub.n_channels == local.n_channels
    np.testing.assert_array_equal(sub.full(), local.full()[members])
    mask = np.zeros(local.n_units, bool)
    mask[[1, 2, 17]] = True
    np.testing.assert_array_equal(local.subset(mask).full(), local.full()[mask])
    # reduce_block: full-probe block -> each unit's window, and back
    full = local.full()
    np.testing.assert_array_equal(reduce_block(full, local.channels), local.values)
    wide = rng.normal(size=full.shape).astype(np.float32)
    back = LocalWaveforms(reduce_block(wide, local.channels), local.channels, 50).full()
    inside = full != 0
    np.testing.assert_array_equal(back[inside], wide[inside])
    assert not back[~inside].any()


# ------------------------------------------------------------------------- correct_local

def compact_units(loc, peaks, t=8, sd=30.0, cut=100.0, amp=100.0):
    """Gaussian footprint (sd um) around each peak channel, exactly 0 beyond ``cut`` um."""
    d2 = ((loc[peaks][:, None, :] - loc[None, :, :]) ** 2).sum(axis=2)
    space = np.where(d2 <= cut ** 2, np.exp(-d2 / (2 * sd ** 2)), 0.0)
    time = -np.exp(-((np.arange(t) - 3.0) ** 2) / 2.0) + 0.3 * np.exp(-((np.arange(t) - 6.0) ** 2) / 4.0)
    return (amp * space[:, :, None] * time[None, None, :]).astype(np.float32)


def edge_distance(loc, window):
    """Per window channel, vertical distance (um) to the nearest channel outside the window."""
    outside = np.setdiff1d(np.arange(len(loc)), window)
    if outside.size == 0:
        return np.full(window.size, np.inf)
    return np.abs(loc[window, 1][:, None] - loc[outside, 1][None, :]).min(axis=1)


def test_correct_local_on_windows_matches_full_probe_for_compact_units():
    """Units with a compact footprint (sd 30 um, zero beyond 100 um) on NP1, shifts up to
    +-60 um (rigid per session and per unit), each on its 500 um window: on window channels
    at least 150 um inside the window edge the windowed correction equals the full-probe
    one within 1e-3 of the unit's peak amplitude (measured: ~3e-7, float32 rounding)."""
    rng = np.random.default_rng(3)
    loc = np1_probe()
    kinv = kriging_inverse(loc)
    table = window_table(loc, None, RADIUS)
    peaks = np.concatenate([[0, 1, 2, 383, 191, 192], rng.integers(0, C_NP1, 34)])
    wf = compact_units(loc, peaks)
    shifts = np.concatenate([rng.choice([-60.0, 0.0, 13.0, 60.0], 20), rng.uniform(-60, 60, 20)])
    full = correct_waveforms(wf, loc, shifts, kinv)
    local = LocalWaveforms(reduce_block(wf, table[peaks]), table[peaks], C_NP1)
    out = correct_local(local, loc, shifts, kinv)
    assert out.values.dtype == np.float32 and out.values.shape == local.values.shape
    np.testing.assert_array_equal(out.channels, local.channels)
    for k in range(len(peaks)):
        win = table[peaks[k]]
        inner = edge_distance(loc, win) >= 150.0
        assert inner.sum() >= 60
        peak_amp = np.abs(wf[k]).max()
        err = np.abs(out.values[k] - full[k, win]).max(axis=1)
        assert err[inner].max() <= 1e-3 * peak_amp, (k, err[inner].max() / peak_amp)
        # and the correction really moved the waveform (not a trivial identity)
        if abs(shifts[k]) >= 20:
            assert np.abs(out.values[k] - wf[k, win]).max() > 0.1 * peak_amp
    # default kinv (computed inside) gives the same
    np.testing.assert_allclose(correct_local(local, loc, shifts).values, out.values,
                               atol=1e-5 * np.abs(wf).max())


def test_correct_local_error_decays_from_the_window_edge():
    """Worst case for the docstring claim 'the inverse couples only nearby channels': signal
    filling the whole window up to its edge (zero outside). The windowed result then differs
    from the full-probe one near the edge, but the difference falls off quickly inside:
    <= 1e-3 of the peak amplitude 250 um inside the edge, <= 1e-5 at 400 um (measured
    ~2e-4 and < 1e-6). With a 500 um window, a unit's nearest channels (within ~100 um of its
    peak) are >= 400 um inside."""
    rng = np.random.default_rng(4)
    loc = np1_probe()
    kinv = kriging_inverse(loc)
    table = window_table(loc, None, RADIUS)
    peaks = rng.integers(0, C_NP1, 30)
    wf = np.zeros((30, C_NP1, 6), np.float32)
    for k, p in enumerate(peaks):
        wf[k, table[p]] = rng.normal(size=(table.shape[1], 6))
    shifts = rng.uniform(-60, 60, 30)
    full = correct_waveforms(wf, loc, shifts, kinv)
    out = correct_local(LocalWaveforms(reduce_block(wf, table[peaks]), table[peaks], C_NP1),
                        loc, shifts, kinv)
    worst_near = 0.0
    for k, p in enumerate(peaks):
        win = table[p]
        edge = edge_distance(loc, win)
        rel = np.abs(out.values[k] - full[k, win]).max(axis=1) / np.abs(wf[k]).max()
        assert rel[edge >= 250].max() <= 1e-3
        assert rel[edge >= 400].max() <= 1e-5
        worst_near = max(worst_near, rel[edge <= 40].max(initial=0.0))
    assert worst_near > 1e-2  # the comparison is sensitive: near the edge it does differ


def test_correct_local_with_whole_probe_windows_equals_correct_waveforms():
    """Windows covering the whole probe (each a different permutation of all channels, as
    window_table gives for a huge radius) reproduce correct_waveforms, and the per-unit
    shift_matrix reference, to float32 precision (1e-5 of the peak amplitude)."""
    rng = np.random.default_rng(5)
    loc = np1_probe()
    kinv = kriging_inverse(loc)
    table = window_table(loc, None, 1e6)
    assert table.shape == (C_NP1, C_NP1)
    peaks = rng.integers(0, C_NP1, 12)
    wf = rng.normal(size=(12, C_NP1, 5)).astype(np.float32)
    shifts = np.concatenate([np.full(6, 17.5), rng.uniform(-60, 60, 6)])
    local = LocalWaveforms(reduce_block(wf, table[peaks]), table[peaks], C_NP1)
    out = correct_local(local, loc, shifts, kinv).full()
    ref = correct_waveforms(wf, loc, shifts, kinv)
    tol = 1e-5 * np.abs(wf).max()
    np.testing.assert_allclose(out, ref, atol=tol, rtol=0)
    for k in (0, 5, 6, 11):
        exact = shift_matrix(loc, shifts[k], kinv) @ wf[k].astype(np.float64)
        np.testing.assert_allclose(out[k], exact, atol=tol, rtol=0)


# ------------------------------------------------------------------------- iter_rows

def collect(arr, block):
    """Concatenated blocks of iter_rows, checking the starts and dtype on the way (each
    block copied: its buffer is read into again for a later block)."""
    parts, expected_start = [], 0
    for start, rows in iter_rows(arr, block):
        assert start == expected_start
        assert rows.dtype == np.float32 and 1 <= rows.shape[0] <= block
        assert not isinstance(rows, np.memmap)
        expected_start += rows.shape[0]
        parts.append(rows.copy())
    assert expected_start == arr.shape[0]
    return np.concatenate(parts) if parts else np.empty((0,) + arr.shape[1:], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, ">f4", ">i2", np.float64])
@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_iter_rows_on_saved_memmap_is_exact(tmp_path, dtype, block):
    """A C-ordered .npy opened with mmap_mode='r' (the read-by-file path), N = 53 not a
    multiple of the block: blocks concatenate to exactly the array as float32."""
    rng = np.random.default_rng(6)
    x = rng.integers(-3000, 3000, (53, 6, 5)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        x = x + rng.random(x.shape).astype(dtype)
    np.save(tmp_path / "w.npy", x)
    mm = np.load(tmp_path / "w.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap) and mm.flags.c_contiguous
    np.testing.assert_array_equal(collect(mm, block), x.astype(np.float32))


@pytest.mark.parametrize("layout", ["fortran", "row_slice", "step_slice", "channel_slice",
                                    "plain", "plain_view", "one_dim", "offset_memmap"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_iter_rows_fallbacks_are_exact(tmp_path, layout, dtype):
    """Fortran-ordered and sliced memmaps (whose file offset is not the view's start), plain
    arrays and views, a 1-D memmap and an np.memmap at an offset: exactly the array."""
    rng = np.random.default_rng(7)
    x = rng.integers(-3000, 3000, (41, 6, 5)).astype(dtype)
    path = tmp_path / "w.npy"
    if layout == "fortran":
        np.save(path, np.asfortranarray(x))
        arr = np.load(path, mmap_mode="r")
        assert not arr.flags.c_contiguous
    elif layout in ("row_slice", "step_slice", "channel_slice"):
        np.save(path, x)
        mm = np.load(path, mmap_mode="r")
        index = {"row_slice": np.s_[5:33], "step_slice": np.s_[3::2],
                 "channel_slice": np.s_[:, 2:5]}[layout]
        arr, x = mm[index], x[index]
    elif layout == "plain":
        arr = x
    elif layout == "plain_view":
        arr, x = x[::3, ::-1], x[::3, ::-1]
    elif layout == "one_dim":
        x = x.ravel()
        np.save(path, x)
        arr = np.load(path, mmap_mode="r")
    else:  # offset_memmap: rows 4.. of a raw file, as an importer would map them
        raw = tmp_path / "w.bin"
        x.tofile(raw)
        arr = np.memmap(raw, dtype=dtype, mode="r", offset=4 * x[0].nbytes, shape=(30, 6, 5))
        x = x[4:34]
    for block in (1, 8, 17, 100):
        np.testing.assert_array_equal(collect(arr, block), x.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_iter_rows_block_holds_until_the_next_is_asked_for(tmp_path, dtype):
    """The next block is read in a thread while the caller works on this one, into buffers
    used in turn: a caller that takes its time still sees its block's own values."""
    import time
    x = np.arange(40 * 3 * 4).reshape(40, 3, 4).astype(dtype)
    np.save(tmp_path / "w.npy", x)
    mm = np.load(tmp_path / "w.npy", mmap_mode="r")
    for start, rows in iter_rows(mm, 3):
        time.sleep(0.01)  # the reader has read the next block by now
        np.testing.assert_array_equal(rows, x[start:start + 3].astype(np.float32))


def test_block_rows_reads_a_bounded_number_of_bytes():
    """Blocks of READ_BLOCK_BYTES (as float32 at least), one row at least."""
    from kilomatch.load import READ_BLOCK_BYTES, block_rows
    row = np.zeros((1, 384, 64), np.int16)
    assert block_rows(row) == READ_BLOCK_BYTES // (384 * 64 * 4)
    assert block_rows(np.zeros((1, 384, 64), np.float64)) == READ_BLOCK_BYTES // (384 * 64 * 8)
    assert block_rows(np.zeros((2, READ_BLOCK_BYTES), np.float32)) == 1


def test_iter_rows_empty_array(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 3, 2), np.float32))
    assert collect(np.load(tmp_path / "e.npy", mmap_mode="r"), 4).shape == (0, 3, 2)


def test_iter_rows_copy_on_write_memmap_sees_in_memory_changes(tmp_path):
    """A copy-on-write map (mmap_mode='c') may hold in-place changes (e.g. int16 counts
    scaled to uV) that are not in the file: iter_rows must yield the array, not the file."""
    x = np.arange(40 * 3 * 2, dtype=np.float32).reshape(40, 3, 2)
    np.save(tmp_path / "w.npy", x)
    mm = np.load(tmp_path / "w.npy", mmap_mode="c")
    mm *= 2.0  # in memory only
    np.testing.assert_array_equal(collect(mm, 16), np.asarray(mm))


def test_iter_rows_read_write_memmap_sees_unflushed_writes(tmp_path):
    """A shared read-write map ('r+', as the simulator and importers write waveform_all.npy)
    read back before flush(): iter_rows sees the writes."""
    x = np.zeros((20, 3, 2), np.float32)
    np.save(tmp_path / "w.npy", x)
    mm = np.load(tmp_path / "w.npy", mmap_mode="r+")
    mm[7] = 5.0
    expect = x.copy()
    expect[7] = 5.0
    np.testing.assert_array_equal(collect(mm, 6), expect)


# ------------------------------------------------------------------------- candidate_pairs

def brute_pairs(depth, session, max_distance, gap=0, group=None):
    """All i < j: different sessions, |dy| <= max_distance, |s_i - s_j| <= gap (if gap > 0),
    same group."""
    i, j = np.triu_indices(depth.size, k=1)
    keep = (session[i] != session[j]) & (np.abs(depth[i] - depth[j]) <= max_distance)
    if gap > 0:
        keep &= np.abs(session[i].astype(np.int64) - session[j]) <= gap
    if group is not None:
        keep &= group[i] == group[j]
    return np.column_stack([i[keep], j[keep]]).astype(np.int64)


@pytest.mark.parametrize("gap", [0, 1, 2, 4])
@pytest.mark.parametrize("seed", range(3))
def test_candidate_pairs_session_gap_equals_brute_force(gap, seed):
    """max_session_gap g keeps exactly the pairs whose sessions differ by 1..g (0: no limit);
    integer depths so many pairs sit exactly at max_distance; with and without groups."""
    rng = np.random.default_rng(40 + seed)
    n = 220
    depth = rng.integers(0, 500, n).astype(float)
    session = rng.integers(1, 8, n)
    group = rng.integers(0, 2, n)
    got = candidate_pairs(depth, session, 60.0, max_session_gap=gap)
    expect = brute_pairs(depth, session, 60.0, gap)
    assert got.dtype == np.int64 and len(expect) > 200
    np.testing.assert_array_equal(got, expect)
    if gap:
        assert len(expect) < len(brute_pairs(depth, session, 60.0))  # the gap does remove pairs
    np.testing.assert_array_equal(candidate_pairs(depth, session, 60.0, group, gap),
                                  brute_pairs(depth, session, 60.0, gap, group))
    # session ids of an unsigned type (differences must not wrap around)
    np.testing.assert_array_equal(candidate_pairs(depth, session.astype(np.uint8), 60.0,
                                                  max_session_gap=gap), expect)


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_candidate_pairs_chunking_does_not_change_the_result(chunk):
    """Tiny chunk_pairs (many chunks, chunks smaller than one unit's run) gives exactly the
    default array, real-valued and tied depths, with a session gap and groups."""
    rng = np.random.default_rng(50)
    n = 300
    depth = np.concatenate([rng.uniform(0, 800, n - 40), np.full(40, 400.0)])
    session = rng.integers(1, 6, n)
    group = rng.integers(0, 3, n)
    for args in ((None, 0), (None, 2), (group, 1)):
        default = candidate_pairs(depth, session, 75.0, *args)
        got = candidate_pairs(depth, session, 75.0, *args, chunk_pairs=chunk)
        assert got.dtype == default.dtype == np.int64
        np.testing.assert_array_equal(got, default)
        np.testing.assert_array_equal(default, brute_pairs(depth, session, 75.0, args[1], args[0]))


# ------------------------------------------------------------------------- feature_similarity

def brute_feature_z(feature, pairs):
    """Per pair, atanh(clip(Pearson r)); 0 when a vector is constant."""
    out = []
    for i, j in pairs:
        a, b = feature[i], feature[j]
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            out.append(0.0)
        else:
            out.append(np.arctanh(np.clip(np.corrcoef(a, b)[0, 1], -R_MAX, R_MAX)))
    return np.array(out)


def test_feature_similarity_independent_of_unit_order_and_block():
    """Random pairs (either orientation, repeats, self-pairs), a constant row, an exact copy
    and negative: the same z for every unit_order and block, equal to per-pair Pearson."""
    rng = np.random.default_rng(60)
    n = 90
    feat = rng.normal(size=(n, 25)) + rng.normal(size=(1, 25))
    feat[3] = 2.0  # constant
    feat[4] = 3 * feat[10] + 1  # r = 1
    feat[5] = -feat[11]  # r = -1
    pairs = rng.integers(0, n, (700, 2))
    pairs = np.vstack([pairs, [[4, 10], [10, 4], [5, 11], [3, 7], [7, 3], [8, 8], [4, 10]]])
    expect = brute_feature_z(feat, pairs)
    reference = feature_similarity(feat, pairs)
    np.testing.assert_allclose(reference, expect, rtol=1e-9, atol=1e-9)
    assert reference[-7] == pytest.approx(np.arctanh(R_MAX))
    assert reference[-5] == pytest.approx(-np.arctanh(R_MAX))
    assert reference[-4] == reference[-3] == 0.0
    orders = [None, np.arange(n), np.arange(n)[::-1], rng.permutation(n),
              np.argsort(rng.uniform(size=n))]
    for order in orders:
        for block in (1, 3, 17, 128, 10_000):
            got = feature_similarity(feat, pairs, unit_order=order, block=block)
            np.testing.assert_allclose(got, reference, rtol=1e-12, atol=1e-12)
    assert feature_similarity(feat, np.empty((0, 2), np.int64), rng.permutation(n), 5).shape == (0,)


# ------------------------------------------------------------------------- waveform_similarity

def test_waveform_similarity_on_windows_equals_full_arrays():
    """Waveforms nonzero on every channel, kept only on each unit's 500 um window; channel sets
    of 20 channels around the peak; pairs within 100 um: the windows cover every compared
    channel, so LocalWaveforms (one, or a list of two reference probes) give the same z as the
    full arrays. Windows too small to cover (30 um) change the result (the test is sensitive).
    For any windows, the result equals the full arrays zero-padded outside the windows."""
    rng = np.random.default_rng(70)
    loc = np1_probe()
    n, t = 60, 10
    peaks = np.sort(rng.integers(0, C_NP1, n))
    table = window_table(loc, None, RADIUS)
    wf = np.stack([compact_units(loc, peaks, t=t, sd=60.0, cut=1e9)
                   + rng.normal(scale=3.0, size=(n, C_NP1, t)).astype(np.float32)
                   for _ in range(2)])
    ch = table[peaks][:, :20]
    pairs = candidate_pairs(loc[peaks, 1], np.arange(n), 100.0)
    assert len(pairs) > 50
    d_pair = np.abs(loc[peaks[pairs[:, 0]], 1] - loc[peaks[pairs[:, 1]], 1])
    assert d_pair.max() > 60  # partners with different peaks
    locals_ = [LocalWaveforms(reduce_block(w, table[peaks]), table[peaks], C_NP1) for w in wf]

    expect = waveform_similarity(wf[0], ch, pairs)
    got = waveform_similarity(locals_[0], ch, pairs)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)
    assert np.ptp(expect) > 0.5

    ch2 = np.stack([ch, table[np.clip(peaks + 4, 0, C_NP1 - 1)][:, :20]])
    expect2 = waveform_similarity(wf, ch2, pairs, templates=2)
    np.testing.assert_allclose(waveform_similarity(locals_, ch2, pairs, templates=2), expect2,
                               rtol=1e-6, atol=1e-6)

    narrow = window_table(loc, None, 30.0)
    small = LocalWaveforms(reduce_block(wf[0], narrow[peaks]), narrow[peaks], C_NP1)
    differs = waveform_similarity(small, ch, pairs)
    assert np.abs(differs - expect).max() > 0.1
    np.testing.assert_allclose(differs, waveform_similarity(small.full(), ch, pairs),
                               rtol=1e-6, atol=1e-6)


def test_narrowed_reads_its_channels_exactly_as_the_window_does():
    """narrowed(channels) keeps (N, n, T) values that read on those channels as the whole
    window does, 0 where a channel is outside the unit's window (a run keeps this for the
    written waveforms once nothing compares them)."""
    rng = np.random.default_rng(7)
    lw = random_local(rng)
    own = np.take_along_axis(lw.channels, rng.integers(0, 12, (lw.n_units, 4)), axis=1)
    channels = np.concatenate([own, rng.integers(0, 50, (lw.n_units, 3))], axis=1)
    narrow = lw.narrowed(channels)
    assert narrow.values.shape == (lw.n_units, 7, 5) and narrow.n_channels == lw.n_channels
    np.testing.assert_array_equal(narrow.channels, channels)
    units = np.arange(lw.n_units)
    expect = lw.on(units, channels)
    assert (expect == 0).any() and (expect != 0).any()
    np.testing.assert_array_equal(narrow.on(units, channels), expect)
    kept = np.zeros((lw.n_units, 50), dtype=bool)
    kept[units[:, None], channels] = True
    np.testing.assert_array_equal(narrow.full(), np.where(kept[:, :, None], lw.full(), 0))


def test_correct_local_in_place_equals_a_separate_copy():
    """Writing the correction over the window copy itself (out=local.values, as the final
    correction of a narrowing run does) gives the bytes of a separate copy: each block of
    units is read before it is written. Several windows and shifts, more units than one
    kernel block and than the threaded minimum."""
    rng = np.random.default_rng(5)
    loc = np1_probe()
    kinv = kriging_inverse(loc)
    table = window_table(loc, None, RADIUS)
    peaks = rng.integers(0, C_NP1, 2500)
    local = LocalWaveforms(reduce_block(compact_units(loc, peaks), table[peaks]), table[peaks],
                           C_NP1)
    shifts = rng.choice([-40.0, -7.5, 0.0, 22.0], peaks.size) + rng.uniform(-1, 1, peaks.size)
    separate = correct_local(local, loc, shifts, kinv)
    values = local.values
    in_place = correct_local(local, loc, shifts, kinv, out=local.values)
    assert in_place.values is values
    np.testing.assert_array_equal(in_place.values, separate.values)
    with pytest.raises(ValueError, match="every unit"):
        correct_local(local, loc, shifts, kinv, units=np.arange(3), out=local.values)


@pytest.mark.parametrize("centred, projected", [(False, False), (True, False), (True, True)])
def test_stored_waveforms_read_as_the_narrowed_window_copy(tmp_path, centred, projected):
    """The original waveforms read again from the input file (memory-mapped, more units than
    one read block) or from memory, on the written channels, equal the window copy narrowed to
    them, with the shift in time the copy was made with (here the centring's) and through the
    temporal projection it was read through (denoise_waveforms: projected first, then
    shifted); on two shanks, channels of the other shank (outside a unit's window) read 0 in
    both. The export writes them with np.save's bytes."""
    from kilomatch.export import save_npy
    from kilomatch.features import center_waveforms, centring_shift, nearest_channels
    rng = np.random.default_rng(7)
    loc = np1_probe(64)
    shanks = np.repeat([0, 1], 32)
    table = window_table(loc, shanks, 100.0, min_channels=12)
    n, t = 2100, 10
    wf = rng.normal(size=(n, 64, t)).astype(np.float32)
    np.save(tmp_path / "waveforms.npy", wf)
    source = np.load(tmp_path / "waveforms.npy", mmap_mode="r")
    peak = rng.integers(0, 64, n)
    projection = None
    read = wf
    if projected:
        basis = np.linalg.qr(rng.normal(size=(t, 3)))[0]
        projection = (basis @ basis.T).astype(np.float32)
        read = np.matmul(wf, projection, dtype=np.float32)
    made = center_waveforms(read, peak) if centred else read
    shift = centring_shift(read[np.arange(n), peak]) if centred else None
    window = LocalWaveforms(reduce_block(made, table[peak]), table[peak], 64)
    written = nearest_channels(loc, peak, 12)  # across shanks: some outside the window
    assert (window.slots(np.arange(n), written) < 0).any()
    expected = window.narrowed(written)
    for where in (source, wf):  # read from the file, and from memory
        stored = StoredWaveforms.of_window_copy(window, where, written, shift, projection)
        if projected:
            # the projection is one float32 matmul over a block's rows: OpenBLAS (0.3.31 on an
            # AMD EPYC) rounds a row by where the block's shape puts it, by a float32 ulp
            np.testing.assert_allclose(stored.values, expected.values, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(stored.values, expected.values)
    stored = StoredWaveforms.of_window_copy(window, source, written, shift, projection)
    assert stored.shape == window.shape
    save_npy(tmp_path / "stored.npy", stored)
    np.save(tmp_path / "whole.npy", stored.values)
    assert (tmp_path / "stored.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_stored_waveforms_name_the_input_file_when_it_is_gone(tmp_path):
    """An input file removed or cut short before waveforms.npy is written ends in one
    KilomatchError naming it, not an OSError."""
    from kilomatch.errors import KilomatchError
    loc = np1_probe(64)
    table = window_table(loc, None, 100.0, min_channels=12)
    wf = np.random.default_rng(1).normal(size=(30, 64, 8)).astype(np.float32)
    path = tmp_path / "waveforms.npy"
    np.save(path, wf)
    source = np.load(path, mmap_mode="r")
    peak = np.arange(30) * 2
    window = LocalWaveforms(reduce_block(wf, table[peak]), table[peak], 64)
    stored = StoredWaveforms.of_window_copy(window, source, table[peak][:, :12])
    path.unlink()
    with pytest.raises(KilomatchError, match="waveforms.npy.*leave the input folder"):
        stored.values


@pytest.mark.skipif(not hasattr(__import__("os"), "posix_fadvise"), reason="no posix_fadvise")
def test_stored_waveforms_announce_each_unit_s_span_before_reading_it(tmp_path, monkeypatch):
    """Read again from the input to write waveforms.npy, each unit's span of channels is
    advised WILLNEED (the OS reads it from the disk in the background: 30k units from a cold
    disk, 5.3-6.0 s -> 1.6-1.7 s) before it is read, a block ahead; the values are the
    file's."""
    import os
    values = np.random.default_rng(2).normal(size=(7, 10, 5)).astype(np.float32)
    np.save(tmp_path / "w.npy", values)
    source = np.load(tmp_path / "w.npy", mmap_mode="r")
    channels = np.array([[k % 6, k % 6 + 2, k % 6 + 3] for k in range(7)])
    advised = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, how: (
        advised.append((offset, length, how)), real(fd, offset, length, how))[1])
    stored = StoredWaveforms(source, channels, np.zeros(channels.shape, bool), 10)
    got = []
    for start, block in stored.blocks(block=3):
        got.append(block)
        # by the time a block is handed out, its units and the next block's were advised
        ahead = min(start + 6, 7)
        starts = [source.offset + u * source.strides[0] + channels[u].min() * source.strides[1]
                  for u in range(ahead)]
        assert {a[0] for a in advised} >= set(starts)
    np.testing.assert_array_equal(np.concatenate(got),
                                  np.take_along_axis(values, channels[:, :, None], axis=1))
    spans = {(o, n) for o, n, how in advised if how == os.POSIX_FADV_WILLNEED}
    assert spans == {(source.offset + u * source.strides[0]
                      + channels[u].min() * source.strides[1], 4 * source.strides[1])
                     for u in range(7)}
