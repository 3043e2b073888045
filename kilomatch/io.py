"""Convert a Kilomatch / DANT MATLAB ``spikeInfo.mat`` into kilomatch's input folder.

``spikeInfo`` is a struct array, one element per unit, with fields SessionIndex, Waveform
(channels x samples, uV), SpikeTimes (ms), Xcoords, Ycoords, Kcoords (per channel; the same for
every unit) and optional PETH. Both MATLAB formats are read: v7.3 (HDF5, via h5py) and the
older v7 (via scipy.io.loadmat).

Command line::

    python -m kilomatch.io spikeInfo.mat OUT_FOLDER [--variable spikeInfo] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import KilomatchError

REQUIRED_FIELDS = ("SessionIndex", "Waveform", "SpikeTimes", "Xcoords", "Ycoords")


def _read_v73(path: Path, variable: str) -> dict:
    """Fields of a v7.3 struct array -> {field: list of arrays, one per unit}."""
    import h5py
    with h5py.File(path, "r") as f:
        if variable not in f:
            raise KilomatchError(f"{path}: no variable '{variable}' (found: {', '.join(f.keys())})")
        group = f[variable]
        if not isinstance(group, h5py.Group):
            raise KilomatchError(f"{path}: '{variable}' is not a struct array")
        out = {}
        for name, refs in group.items():
            refs = np.asarray(refs).ravel()
            if refs.dtype != h5py.ref_dtype:
                continue  # not a per-unit field
            # MATLAB stores column-major: h5py shows every matrix transposed.
            out[name] = [np.asarray(f[r]).T for r in refs]
        return out


def _read_v7(path: Path, variable: str) -> dict:
    """Fields of a v7 (or older) struct array -> {field: list of arrays, one per unit}."""
    from scipy.io import loadmat
    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=True)
    except (ValueError, NotImplementedError, OSError) as err:
        raise KilomatchError(f"{path}: not a readable MATLAB file ({err})") from None
    if variable not in mat:
        names = [k for k in mat if not k.startswith("__")]
        raise KilomatchError(f"{path}: no variable '{variable}' (found: {', '.join(names)})")
    arr = np.asarray(mat[variable]).ravel()
    if arr.dtype.names is None:
        raise KilomatchError(f"{path}: '{variable}' is not a struct array")
    return {name: [np.asarray(unit[name]) for unit in arr] for name in arr.dtype.names}


def read_spikeinfo(path, variable: str = "spikeInfo") -> dict:
    """Read a spikeInfo.mat (v7.3 or v7) -> {field: list of per-unit arrays}."""
    path = Path(path)
    if not path.is_file():
        raise KilomatchError(f"spikeInfo file not found: {path}")
    import h5py
    fields = _read_v73(path, variable) if h5py.is_hdf5(path) else _read_v7(path, variable)
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise KilomatchError(f"{path}: '{variable}' lacks the fields {', '.join(missing)}")
    return fields


def _per_channel(values: list, field: str, n_channels: int, path: Path) -> np.ndarray:
    """One per-channel vector that must be the same for every unit."""
    first = np.asarray(values[0], dtype=np.float64).ravel()
    if first.size != n_channels:
        raise KilomatchError(f"{path}: {field} of unit 0 has {first.size} entries but the "
                             f"waveforms have {n_channels} channels")
    for k, v in enumerate(values[1:], 1):
        if not np.array_equal(np.asarray(v, dtype=np.float64).ravel(), first):
            raise KilomatchError(f"{path}: {field} of unit {k} differs from unit 0; all units "
                                 "must share one probe geometry")
    return first


def spikeinfo_to_folder(mat_path, out_dir, variable: str = "spikeInfo",
                        overwrite: bool = False) -> Path:
    """Write kilomatch's input folder from a spikeInfo.mat; returns the folder.

    Units keep their order (unit k of the struct array is Unit{k}.npy). Waveforms are written
    as (N, C, T) float32 uV; channel_shanks.npy only when Kcoords names more than one shank.
    """
    mat_path, out = Path(mat_path), Path(out_dir)
    fields = read_spikeinfo(mat_path, variable)
    n = len(fields["Waveform"])
    if n == 0:
        raise KilomatchError(f"{mat_path}: '{variable}' holds no units")
    waveforms = [np.asarray(w, dtype=np.float32) for w in fields["Waveform"]]
    shape = waveforms[0].shape
    for k, w in enumerate(waveforms):
        if w.ndim != 2 or w.shape != shape:
            raise KilomatchError(f"{mat_path}: Waveform of unit {k} has shape {w.shape}; every "
                                 f"unit needs channels x samples = {shape}")
    n_channels = shape[0]
    x = _per_channel(fields["Xcoords"], "Xcoords", n_channels, mat_path)
    y = _per_channel(fields["Ycoords"], "Ycoords", n_channels, mat_path)
    sessions = np.array([np.asarray(v).ravel()[0] for v in fields["SessionIndex"]])
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise KilomatchError(f"{out} exists and is not empty; choose an empty folder or pass "
                             "overwrite=True (--overwrite)")
    (out / "spike_times").mkdir(parents=True, exist_ok=True)
    np.save(out / "waveform_all.npy", np.stack(waveforms))
    np.save(out / "channel_locations.npy", np.column_stack([x, y]))
    np.save(out / "session_index.npy", sessions.astype(np.int64))
    for k, times in enumerate(fields["SpikeTimes"]):
        np.save(out / "spike_times" / f"Unit{k}.npy", np.asarray(times, dtype=np.float64).ravel())
    if "PETH" in fields:
        peth = [np.asarray(p, dtype=np.float64).ravel() for p in fields["PETH"]]
        if len({p.size for p in peth}) != 1:
            raise KilomatchError(f"{mat_path}: PETH lengths differ between units")
        np.save(out / "peth.npy", np.stack(peth))
    if "Kcoords" in fields:
        shanks = _per_channel(fields["Kcoords"], "Kcoords", n_channels, mat_path)
        if np.unique(shanks).size > 1:
            np.save(out / "channel_shanks.npy", shanks.astype(np.int64))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kilomatch.io",
                                     description="spikeInfo.mat -> kilomatch input folder")
    parser.add_argument("mat", help="spikeInfo.mat (MATLAB v7.3 or v7)")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--variable", default="spikeInfo", help="struct array's name")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args(argv)
    try:
        out = spikeinfo_to_folder(args.mat, args.out, args.variable, args.overwrite)
    except KilomatchError as err:
        print(f"kilomatch: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
