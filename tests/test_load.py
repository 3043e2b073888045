"""Bad input folders: one KilomatchError naming the culprit, every problem at once."""

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kilomatch import KilomatchError
from kilomatch.load import load_dataset

N_UNITS, N_CH, N_T = 6, 8, 12


def write_folder(folder, n_units=N_UNITS, sessions=None, peth=True):
    """A small valid input folder: 3 sessions x 2 units on an 8-channel 2-column probe."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "waveform_all.npy", rng.normal(size=(n_units, N_CH, N_T)).astype(np.float32))
    locs = np.column_stack([np.tile([0.0, 32.0], N_CH // 2), np.repeat(np.arange(N_CH // 2) * 20.0, 2)])
    np.save(folder / "channel_locations.npy", locs)
    if sessions is None:
        sessions = np.repeat(np.arange(1, 4), n_units // 3)
    np.save(folder / "session_index.npy", np.asarray(sessions))
    if peth:
        np.save(folder / "peth.npy", rng.random((n_units, 20)))
    (folder / "spike_times").mkdir(exist_ok=True)
    for k in range(n_units):
        np.save(folder / "spike_times" / f"Unit{k}.npy", np.sort(rng.uniform(0, 1e4, 50)))
    return folder


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "data")


def problems_of(folder):
    with pytest.raises(KilomatchError) as err:
        load_dataset(folder)
    return str(err.value), err.value.problems


def test_valid_folder_loads(folder):
    data = load_dataset(folder)
    assert data.n_units == N_UNITS and data.n_sessions == 3 and data.n_channels == N_CH
    assert data.peth.shape == (N_UNITS, 20)
    assert len(data.spike_times) == N_UNITS


def test_path_to_data_missing(tmp_path):
    text, _ = problems_of(tmp_path / "nowhere")
    assert "path_to_data" in text and "nowhere" in text


@pytest.mark.parametrize("name", ["waveform_all.npy", "channel_locations.npy", "session_index.npy"])
def test_required_file_missing(folder, name):
    (folder / name).unlink()
    text, _ = problems_of(folder)
    assert name in text and "missing" in text


def test_spike_times_folder_missing(folder):
    shutil.rmtree(folder / "spike_times")
    text, _ = problems_of(folder)
    assert "spike_times" in text and "missing" in text


def test_spike_time_file_missing(folder):
    (folder / "spike_times" / "Unit3.npy").unlink()
    text, _ = problems_of(folder)
    assert "spike_times/Unit3.npy: missing" in text and "unit 3" in text
    assert "Unit0.npy .. Unit5.npy" in text
    (folder / "spike_times" / "Unit5.npy").unlink()
    text, _ = problems_of(folder)
    assert "spike_times/Unit3.npy: missing" in text and "also missing: Unit5.npy" in text


def test_more_spike_files_than_units(folder):
    np.save(folder / "spike_times" / "Unit6.npy", np.arange(3.0))
    text, _ = problems_of(folder)
    assert "more units than waveform_all.npy" in text and "Unit6.npy" in text


def test_waveforms_not_3d(folder):
    np.save(folder / "waveform_all.npy", np.zeros((N_UNITS, N_CH)))
    text, _ = problems_of(folder)
    assert "waveform_all.npy" in text and "3 dimensions" in text


def test_channel_count_mismatch(folder):
    np.save(folder / "waveform_all.npy", np.zeros((N_UNITS, N_CH + 1, N_T)))
    text, _ = problems_of(folder)
    assert f"{N_CH + 1} channels" in text and f"has {N_CH}" in text


def test_waveforms_saved_as_units_samples_channels_are_named(folder):
    """(units, samples, channels), as SpikeInterface keeps templates: the error says so and
    how to transpose; a plain channel count mismatch does not."""
    np.save(folder / "waveform_all.npy", np.zeros((N_UNITS, N_T, N_CH), dtype=np.float32))
    text, _ = problems_of(folder)
    assert f"({N_UNITS}, {N_T}, {N_CH}) looks like (units, samples, channels)" in text
    np.save(folder / "waveform_all.npy", np.zeros((N_UNITS, N_CH + 1, N_T)))
    text, _ = problems_of(folder)
    assert "looks like (units, samples, channels)" not in text


@pytest.mark.parametrize("shape", [(N_UNITS, N_CH, 0), (N_UNITS, 0, N_T)])
def test_waveforms_without_samples_or_channels_named(folder, shape):
    """Waveforms with no sample or no channel: one problem naming the file and its shape."""
    np.save(folder / "waveform_all.npy", np.zeros(shape, dtype=np.float32))
    if shape[1] == 0:
        np.save(folder / "channel_locations.npy", np.zeros((0, 2)))
    text, _ = problems_of(folder)
    assert "waveform_all.npy" in text and str(shape) in text
    if shape[1] == 0:
        assert "channel_locations.npy: lists no channels" in text


def test_channel_locations_not_c_by_2(folder):
    np.save(folder / "channel_locations.npy", np.zeros((N_CH, 3)))
    text, _ = problems_of(folder)
    assert "channel_locations.npy" in text and "(channels, 2)" in text


@pytest.mark.parametrize("name, where", [
    ("waveform_all.npy", (2, 1, 3)), ("channel_locations.npy", (5, 1)), ("peth.npy", (4, 7))])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_named(folder, name, where, bad):
    arr = np.load(folder / name)
    arr[where] = bad
    np.save(folder / name, arr)
    text, _ = problems_of(folder)
    assert name in text and "NaN or Inf" in text and str(where[0]) in text


@pytest.mark.parametrize("sessions, words", [
    (np.array([1, 1, 2, 2, 3]), ["5 entries", "6 units"]),
    (np.array([1, 1, 2, 2.5, 3, 3]), ["whole numbers", "units 3"]),
    (np.array([0, 0, 1, 1, 2, 2]), ["numbered from 1", "0-based"]),
    (np.array([1, 1, 2, 2, 4, 4]), ["without gaps", "missing 3"]),
    (np.array([1, 1, 1, 1, 1, 1]), ["only one session"]),
    (np.array(["a", "b", "c", "a", "b", "c"]), ["session_index.npy", "not numeric"]),
])
def test_bad_session_index(folder, sessions, words):
    np.save(folder / "session_index.npy", sessions)
    text, _ = problems_of(folder)
    for word in words:
        assert word in text, text


def test_float_whole_session_numbers_accepted(folder):
    """MATLAB users save doubles: 1.0, 2.0, 3.0 are fine."""
    np.save(folder / "session_index.npy", np.repeat([1.0, 2.0, 3.0], 2))
    assert load_dataset(folder).session_index.dtype == np.int64


def test_peth_wrong_rows(folder):
    np.save(folder / "peth.npy", np.zeros((N_UNITS - 1, 20)))
    text, _ = problems_of(folder)
    assert "peth.npy" in text and f"({N_UNITS}, points)" in text


def test_python_objects_refused(folder):
    np.save(folder / "session_index.npy", np.array([1, 1, 2, 2, 3, None], dtype=object),
            allow_pickle=True)
    text, _ = problems_of(folder)
    assert "session_index.npy" in text and "Python objects" in text and "allow_pickle" in text


def test_every_problem_reported(folder):
    """Several mistakes at once are all listed, each naming its file."""
    (folder / "channel_locations.npy").unlink()
    np.save(folder / "session_index.npy", np.repeat([0, 1, 2], 2))
    (folder / "spike_times" / "Unit1.npy").unlink()
    text, problems = problems_of(folder)
    assert len(problems) == 3
    assert "channel_locations.npy" in text and "session_index.npy" in text and "Unit0.npy" in text


def test_unsorted_spike_times_sorted_with_warning(folder, caplog):
    np.save(folder / "spike_times" / "Unit2.npy", np.array([5.0, 1.0, 3.0]))
    data = load_dataset(folder)
    assert np.all(np.diff(data.spike_times[2]) > 0)
    assert any("units 2" in r.getMessage() and "sorted" in r.getMessage() for r in caplog.records)


def test_input_folder_is_not_written(folder):
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    load_dataset(folder)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    wave_dtype=st.sampled_from([np.float32, np.float64, np.int16, np.bool_]),
    wave=hnp.arrays(dtype=np.float64,
                    shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
                    elements=st.floats(-1e3, 1e3, width=16) | st.sampled_from(
                        [0.0, float("nan"), float("inf")])),
    locs=hnp.arrays(dtype=np.float64, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                    elements=st.floats(-1e4, 1e4, width=32) | st.just(float("nan"))),
    sessions=hnp.arrays(dtype=st.sampled_from([np.int64, np.float64, np.int8]),
                        shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
                        elements=st.integers(-1, 4)),
    n_spike_files=st.integers(0, 6),
)
def test_loader_never_fails_with_a_foreign_error(tmp_path_factory, wave_dtype, wave, locs,
                                                 sessions, n_spike_files):
    """Random shapes, dtypes and values: the loader loads or raises KilomatchError, nothing else."""
    folder = tmp_path_factory.mktemp("prop")
    with np.errstate(invalid="ignore", over="ignore"):
        np.save(folder / "waveform_all.npy", wave.astype(wave_dtype))
    np.save(folder / "channel_locations.npy", locs)
    np.save(folder / "session_index.npy", sessions)
    (folder / "spike_times").mkdir()
    for k in range(n_spike_files):
        np.save(folder / "spike_times" / f"Unit{k}.npy", np.arange(k, dtype=float))
    try:
        data = load_dataset(folder)
    except KilomatchError as err:
        assert str(err)
    else:
        assert data.waveforms.ndim == 3
        assert data.channel_locations.shape == (data.waveforms.shape[1], 2)
        assert data.session_index.min() == 1 and len(np.unique(data.session_index)) >= 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_run_names_nan_waveforms_and_keeps_old_outputs(folder, tmp_path, bad):
    """A run reads the waveforms once (unit_features checks them): NaN or Inf there still
    gives one KilomatchError naming the file and unit, before the output folder is touched."""
    import kilomatch

    wf = np.load(folder / "waveform_all.npy")
    wf[4, 2, 3] = bad
    np.save(folder / "waveform_all.npy", wf)
    out = tmp_path / "out"
    out.mkdir()
    (out / "IdxCluster.npy").write_bytes(b"an earlier run's result")
    with pytest.raises(KilomatchError) as err:
        kilomatch.run({"path_to_data": str(folder), "output_folder": str(out)})
    text = str(err.value)
    assert "waveform_all.npy" in text and "NaN or Inf" in text and "units 4" in text
    assert (out / "IdxCluster.npy").read_bytes() == b"an earlier run's result"


@pytest.mark.parametrize("value", [
    np.array([0.5, 1.25, 3e9]), np.array([], dtype=np.float64), np.arange(7, dtype=">i4"),
    np.array([True, False]), np.arange(5, dtype=np.float32)])
def test_vector_fast_path_reads_what_np_load_reads(tmp_path, value):
    """The spike-time reader's fast path gives np.load's array, dtype and byte order
    included."""
    from kilomatch.load import read_vector_npy
    np.save(tmp_path / "v.npy", value)
    got = read_vector_npy(tmp_path / "v.npy")
    expect = np.load(tmp_path / "v.npy", allow_pickle=False)
    assert got is not None and got.dtype == expect.dtype
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("value", [np.zeros((3, 2)), np.asfortranarray(np.zeros((3, 2))),
                                   np.array(4.0), np.array(["a", "b"]),
                                   np.array([1, None], dtype=object)])
def test_vector_fast_path_leaves_other_arrays_to_np_load(tmp_path, value):
    from kilomatch.load import read_vector_npy
    np.save(tmp_path / "v.npy", value, allow_pickle=True)
    assert read_vector_npy(tmp_path / "v.npy") is None


def test_truncated_spike_times_named(folder):
    """A spike-time file cut short is one problem naming it, not a short array."""
    path = folder / "spike_times" / "Unit3.npy"
    path.write_bytes(path.read_bytes()[:-8])
    text, _ = problems_of(folder)
    assert "Unit3.npy" in text


@pytest.mark.skipif(not hasattr(__import__("os"), "posix_fadvise"), reason="no posix_fadvise")
def test_spike_time_files_are_announced_to_the_os_before_they_are_read(folder, monkeypatch):
    """Every unit's spike-time file is advised WILLNEED (read ahead by the OS: a cold disk's
    30k files load in a third of the time) before the first one is read."""
    import os

    from kilomatch import load
    events = []
    real_advise, real_read = os.posix_fadvise, load.read_vector_npy

    def advise(fd, offset, length, how):
        events.append(("advise", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), how))
        return real_advise(fd, offset, length, how)

    def read(path):
        events.append(("read", path.name, None))
        return real_read(path)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(load, "read_vector_npy", read)
    load_dataset(folder)
    advised = [e[1] for e in events if e[0] == "advise" and e[2] == os.POSIX_FADV_WILLNEED]
    assert sorted(advised) == sorted(f"Unit{k}.npy" for k in range(N_UNITS))
    units = [e for e in events if e[1].startswith("Unit")]
    assert [e[0] for e in units] == ["advise"] * N_UNITS + ["read"] * N_UNITS


@pytest.mark.parametrize("stop", [None, 1])
def test_rows_read_ahead_are_the_file_s_rows(tmp_path, stop):
    """iter_rows reads the next block of a memory-mapped file while the caller works on this
    one: the blocks are the file's rows in order; a caller that stops early leaves no read
    behind (the file can go)."""
    from kilomatch.load import iter_rows
    values = np.random.default_rng(1).normal(size=(10, 3, 4)).astype(np.float32)
    np.save(tmp_path / "w.npy", values)
    mapped = np.load(tmp_path / "w.npy", mmap_mode="r")
    got = []
    for k, (start, rows) in enumerate(iter_rows(mapped, block=3)):
        got.append((start, rows.copy()))
        if k == stop:
            break
    assert [s for s, _ in got] == [0, 3, 6, 9][:len(got)]
    assert len(got) == (4 if stop is None else stop + 1)
    np.testing.assert_array_equal(np.concatenate([r for _, r in got]),
                                  values[:sum(r.shape[0] for _, r in got)])
    del mapped
    (tmp_path / "w.npy").unlink()
