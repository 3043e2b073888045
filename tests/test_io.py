"""spikeInfo.mat (MATLAB v7.3 and v7) -> kilomatch input folder."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy.io import savemat

from kilomatch import KilomatchError
from kilomatch.io import spikeinfo_to_folder
from kilomatch.load import load_dataset

N_UNITS, N_CH, N_T = 5, 6, 9


@pytest.fixture
def units():
    """Known per-unit content: waveforms (C x T), spike times (ms), sessions, PETH, geometry."""
    rng = np.random.default_rng(3)
    return {
        "Waveform": [rng.normal(size=(N_CH, N_T)) for _ in range(N_UNITS)],
        "SpikeTimes": [np.sort(rng.uniform(0, 1e4, 20 + k)) for k in range(N_UNITS)],
        "SessionIndex": [1, 1, 2, 2, 3],
        "PETH": [rng.random(12) for _ in range(N_UNITS)],
        "Xcoords": np.array([0.0, 32.0, 250.0, 282.0, 0.0, 32.0]),
        "Ycoords": np.array([0.0, 0.0, 0.0, 0.0, 15.0, 15.0]),
        "Kcoords": np.array([1, 1, 2, 2, 1, 1]),
    }


def write_v7(path, units):
    """A v7 file as MATLAB's save writes it: a 1 x N struct array."""
    dtype = [(name, object) for name in units]
    arr = np.zeros((1, N_UNITS), dtype=dtype)
    for k in range(N_UNITS):
        for name, value in units.items():
            if name in ("Xcoords", "Ycoords", "Kcoords"):
                arr[0, k][name] = value[None, :]  # row vector per unit
            elif name == "SessionIndex":
                arr[0, k][name] = np.array([[value[k]]], dtype=float)
            elif name == "Waveform":
                arr[0, k][name] = value[k]
            else:
                arr[0, k][name] = value[k][:, None]
    savemat(path, {"spikeInfo": arr}, format="5")


def write_v73(path, units):
    """A v7.3 (HDF5) file laid out as MATLAB does: the struct array is a group whose fields
    are N x 1 datasets of object references into '#refs#'; matrices stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        group = f.create_group("spikeInfo")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        count = 0
        for name, value in units.items():
            field = group.create_dataset(name, (N_UNITS, 1), dtype=h5py.ref_dtype)
            for k in range(N_UNITS):
                if name in ("Xcoords", "Ycoords", "Kcoords"):
                    matlab = value[None, :].astype(float)
                elif name == "SessionIndex":
                    matlab = np.array([[value[k]]], dtype=float)
                elif name == "Waveform":
                    matlab = value[k]
                else:
                    matlab = value[k][:, None]
                ds = refs.create_dataset(f"r{count}", data=np.ascontiguousarray(matlab.T))
                count += 1
                field[k, 0] = ds.ref
    with open(path, "r+b") as f:  # MATLAB's text header in the user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


@pytest.mark.parametrize("writer", [write_v7, write_v73], ids=["v7", "v7.3"])
def test_round_trip(tmp_path, units, writer):
    """Both formats give the same folder, with the known content, loadable by kilomatch."""
    mat = tmp_path / "spikeInfo.mat"
    writer(mat, units)
    out = spikeinfo_to_folder(mat, tmp_path / "data")
    data = load_dataset(out)
    assert data.waveforms.shape == (N_UNITS, N_CH, N_T)
    for k in range(N_UNITS):
        assert np.allclose(data.waveforms[k], units["Waveform"][k], atol=1e-6)
        assert np.allclose(data.spike_times[k], units["SpikeTimes"][k])
    assert np.array_equal(data.session_index, units["SessionIndex"])
    assert np.allclose(data.channel_locations, np.column_stack([units["Xcoords"], units["Ycoords"]]))
    assert np.allclose(data.peth, np.stack(units["PETH"]))
    assert np.array_equal(data.channel_shanks, units["Kcoords"])


def test_waveform_shapes_must_agree(tmp_path, units):
    """A unit whose waveform has another shape is named."""
    mat = tmp_path / "spikeInfo.mat"
    units["Waveform"][3] = np.zeros((N_CH + 1, N_T))
    write_v7(mat, units)
    with pytest.raises(KilomatchError, match="Waveform of unit 3"):
        spikeinfo_to_folder(mat, tmp_path / "bad")


def test_missing_field_and_nonempty_output(tmp_path, units):
    mat = tmp_path / "spikeInfo.mat"
    write_v73(mat, {k: v for k, v in units.items() if k != "SpikeTimes"})
    with pytest.raises(KilomatchError, match="SpikeTimes"):
        spikeinfo_to_folder(mat, tmp_path / "x")
    write_v73(mat, units)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(KilomatchError, match="not empty"):
        spikeinfo_to_folder(mat, tmp_path / "full")


def test_cli(tmp_path, units):
    mat = tmp_path / "spikeInfo.mat"
    write_v73(mat, units)
    proc = subprocess.run([sys.executable, "-m", "kilomatch.io", str(mat), str(tmp_path / "d")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d" / "waveform_all.npy").is_file()
    proc = subprocess.run([sys.executable, "-m", "kilomatch.io", str(tmp_path / "none.mat"),
                           str(tmp_path / "e")], capture_output=True, text=True)
    assert proc.returncode == 2 and "not found" in proc.stderr
