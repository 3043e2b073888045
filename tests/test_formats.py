"""The input folder's one writer (kilomatch.formats.folder): replacing a folder leaves none of
its files, a failed write leaves the old folder as it was, inputs are never inside the output;
and the command lines' one error path."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from test_io import units, write_v7  # noqa: F401  (units: the spikeInfo fixture)

from kilomatch import KilomatchError
from kilomatch import simulate as simulate_module
from kilomatch.cli import main as kilomatch_main
from kilomatch.formats import folder as folder_module
from kilomatch.formats.folder import (CHANNEL_LOCATIONS, CHANNEL_SHANKS, PETH, SESSION_INDEX,
                                      UNITS_SOURCE, WAVEFORMS, FolderWriter)
from kilomatch.io import main as io_main
from kilomatch.io import spikeinfo_to_folder
from kilomatch.load import load_dataset
from kilomatch.simulate import simulate_to_folder

SMALL = dict(n_sessions=2, n_neurons=15, duration_s=5.0, seed=2, with_peth=False)


def write_folder(out, n_units, n_channels=4, overwrite=False, extras=True):
    """A valid input folder of n_units units (2 sessions) through the writer; with extras,
    also peth.npy, channel_shanks.npy and units_source.csv."""
    rng = np.random.default_rng(n_units)
    with FolderWriter(out, overwrite=overwrite) as w:
        w.save(WAVEFORMS, rng.normal(size=(n_units, n_channels, 12)).astype(np.float32))
        w.save(CHANNEL_LOCATIONS, np.column_stack([np.zeros(n_channels),
                                                   20.0 * np.arange(n_channels)]))
        w.save(SESSION_INDEX, np.repeat([1, 2], [n_units // 2, n_units - n_units // 2]))
        for k in range(n_units):
            w.save_spike_times(k, np.sort(rng.uniform(0, 1e4, 30)))
        if extras:
            w.save(PETH, rng.random((n_units, 8)))
            w.save(CHANNEL_SHANKS, np.repeat([0, 1], [n_channels // 2, n_channels // 2]))
            w.write_text(UNITS_SOURCE, "unit,session,session_path,original_unit_id\n")
    return out


def files_of(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in files_of(folder)}


def test_writer_replaces_a_10_unit_folder_with_a_5_unit_one(tmp_path):
    out = write_folder(tmp_path / "data", 10)
    assert load_dataset(out).n_units == 10
    with pytest.raises(KilomatchError, match="not empty"):
        write_folder(out, 5, extras=False)
    write_folder(out, 5, overwrite=True, extras=False)
    data = load_dataset(out)
    assert data.n_units == 5 and data.peth is None and data.channel_shanks is None
    assert files_of(out) == sorted([WAVEFORMS, CHANNEL_LOCATIONS, SESSION_INDEX]
                                   + [f"spike_times/Unit{k}.npy" for k in range(5)])
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left


def test_converter_overwrite_leaves_no_stale_file(tmp_path, units):
    """spikeInfo.mat (5 units) over a 10-unit folder: nothing of the old folder is left."""
    out = write_folder(tmp_path / "data", 10, n_channels=6)
    (out / "notes.txt").write_text("old")
    mat = tmp_path / "spikeInfo.mat"
    write_v7(mat, units)
    spikeinfo_to_folder(mat, out, overwrite=True)
    data = load_dataset(out)
    assert data.n_units == 5 and data.peth.shape == (5, 12)
    assert not (out / UNITS_SOURCE).exists() and not (out / "notes.txt").exists()
    assert len(list((out / "spike_times").iterdir())) == 5


def test_simulator_overwrite_leaves_no_stale_file(tmp_path):
    out = write_folder(tmp_path / "data", 200)          # more units than the simulation
    with pytest.raises(KilomatchError, match="not a kilomatch simulation"):
        simulate_to_folder(out, **SMALL)
    sim = simulate_to_folder(out, **SMALL, overwrite=True)
    data = load_dataset(out)
    assert data.n_units == sim.n_units < 200
    assert data.peth is None and data.channel_shanks is None
    assert not (out / UNITS_SOURCE).exists()


def test_failed_write_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    out = write_folder(tmp_path / "data", 10)
    before = snapshot(out)
    with pytest.raises(RuntimeError):
        with FolderWriter(out, overwrite=True) as w:
            w.save(WAVEFORMS, np.zeros((2, 4, 12), np.float32))
            raise RuntimeError("disk full")
    assert snapshot(out) == before
    # A simulation that fails half-way through its spike trains.
    calls = []

    def failing(self, unit):
        calls.append(unit)
        if len(calls) > 3:
            raise OSError("disk full")
        return np.arange(3.0)

    monkeypatch.setattr(simulate_module.Simulation, "spike_times", failing)
    with pytest.raises(KilomatchError, match=f"could not write {out}: disk full"):
        simulate_to_folder(out, **SMALL, overwrite=True)
    assert len(calls) == 4 and snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


class _FillingFile:
    """A file on a disk that is full after ``room`` bytes."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_disk_that_fills_during_the_waveforms_is_one_message(tmp_path, monkeypatch):
    """The waveforms are streamed with plain writes, not through a memory map (which dies
    with SIGBUS on a full disk): the error names the folder and the old folder stays."""
    out = write_folder(tmp_path / "data", 10)
    before = snapshot(out)
    monkeypatch.setattr(folder_module, "open",
                        lambda path, mode: _FillingFile(open(path, mode), 5000), raising=False)
    with pytest.raises(KilomatchError, match=f"could not write {out}: No space left"):
        simulate_to_folder(out, **SMALL, overwrite=True)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_rows_writes_the_file_np_save_writes(tmp_path):
    rng = np.random.default_rng(0)
    wf = rng.normal(size=(7, 3, 5)).astype(np.float32)
    with FolderWriter(tmp_path / "a") as w:
        w.save(WAVEFORMS, wf)
    with FolderWriter(tmp_path / "b") as w:
        with w.rows(WAVEFORMS, wf.shape) as out:
            out.write(wf[:4])
            out.write(wf[4:5])
            out.write(wf[5:].astype(np.float64))   # cast to the declared dtype
    assert (tmp_path / "a" / WAVEFORMS).read_bytes() == (tmp_path / "b" / WAVEFORMS).read_bytes()
    with pytest.raises(KilomatchError, match="6 of 7 rows"):
        with FolderWriter(tmp_path / "c") as w:
            with w.rows(WAVEFORMS, wf.shape) as out:
                out.write(wf[:6])
    with pytest.raises(KilomatchError, match="does not fit"):
        with FolderWriter(tmp_path / "d") as w:
            with w.rows(WAVEFORMS, wf.shape) as out:
                out.write(wf[:, :2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_an_input_inside_the_output_is_refused(tmp_path, units):
    out = tmp_path / "data"
    out.mkdir()
    mat = out / "spikeInfo.mat"
    write_v7(mat, units)
    with pytest.raises(KilomatchError, match="holds or is the input"):
        spikeinfo_to_folder(mat, out, overwrite=True)
    assert mat.is_file()
    with pytest.raises(KilomatchError, match="is a file"):
        spikeinfo_to_folder(mat, mat, overwrite=True)


# ---------------------------------------------------------------- one command-line error path

def test_simulate_cli_bad_parameter_exits_2_with_one_message(tmp_path):
    cmd = [sys.executable, "-m", "kilomatch.simulate", str(tmp_path / "sim"), "--p-present",
           "1.5", "--sessions", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.startswith("kilomatch: error: Bad SimulationParams")
    assert "p_present" in run.stderr and "n_sessions" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "sim").exists()
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_converter_cli_errors_share_the_prefix(tmp_path, capsys):
    assert io_main([str(tmp_path / "none.mat"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("kilomatch: error: spikeInfo file not found")
    with pytest.raises(KilomatchError):
        io_main([str(tmp_path / "none.mat"), str(tmp_path / "out"), "--debug"])


def test_converters_are_sub_commands_of_kilomatch(tmp_path, capsys):
    assert kilomatch_main(["simulate", str(tmp_path / "sim"), "--probe", "NP9"]) == 2
    assert capsys.readouterr().err.startswith("kilomatch: error: probe must be one of")
    assert kilomatch_main(["spikeinfo", str(tmp_path / "none.mat"), str(tmp_path / "o")]) == 2
    assert "spikeInfo file not found" in capsys.readouterr().err
    assert kilomatch_main(["import", "phy", str(tmp_path / "o"), str(tmp_path)]) == 2
    assert "at least two sessions" in capsys.readouterr().err


def test_a_result_file_that_cannot_be_written_is_one_message_and_keeps_the_old(tmp_path):
    from kilomatch.atomic import atomic_write
    path = tmp_path / "Output.npz"
    path.write_bytes(b"old")

    def full(f):
        f.write(b"new, part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(KilomatchError, match=f"could not write {path}: No space left"):
        atomic_write(path, full)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_input_that_fails_to_read_during_a_write_is_named(tmp_path):
    out = tmp_path / "data"
    with pytest.raises(KilomatchError, match=r"could not write .*data: Input/output error "
                                             r"\(.*session3\.bin\)"):
        with FolderWriter(out):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "session3.bin"))
    assert not out.exists() and list(tmp_path.iterdir()) == []
