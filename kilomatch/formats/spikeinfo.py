"""Convert a Kilomatch / DANT MATLAB ``spikeInfo.mat`` into kilomatch's input folder.

``spikeInfo`` is a struct array, one element per unit, with fields SessionIndex, Waveform
(channels x samples, uV), SpikeTimes (ms), Xcoords, Ycoords, Kcoords (per channel; the same for
every unit) and optional PETH. Both MATLAB formats are read: v7.3 (HDF5, via h5py) and the
older v7 (via scipy.io.loadmat).

Command line: ``python -m kilomatch.io`` (:mod:`kilomatch.io` re-exports this module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checks import as_integers, as_vector
from ..errors import KilomatchError
from .folder import CHANNEL_LOCATIONS, CHANNEL_SHANKS, PETH, SESSION_INDEX, WAVEFORMS, FolderWriter

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
    Refuses a non-empty folder unless ``overwrite`` (which replaces it whole); atomic (see
    :class:`~kilomatch.formats.folder.FolderWriter`).
    """
    mat_path = Path(mat_path)
    writer = FolderWriter(out_dir, overwrite=overwrite, protect=[mat_path])
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
    sessions = as_integers([np.asarray(v).ravel()[0] for v in fields["SessionIndex"]],
                           f"{mat_path}: SessionIndex")
    spike_times = [as_vector(np.asarray(t, dtype=np.float64), f"{mat_path}: SpikeTimes of unit "
                             f"{k}", "spikes") for k, t in enumerate(fields["SpikeTimes"])]
    peth = None
    if "PETH" in fields:
        peth = [np.asarray(p, dtype=np.float64).ravel() for p in fields["PETH"]]
        if len({p.size for p in peth}) != 1:
            raise KilomatchError(f"{mat_path}: PETH lengths differ between units")
    shanks = None
    if "Kcoords" in fields:
        shanks = _per_channel(fields["Kcoords"], "Kcoords", n_channels, mat_path)
    with writer:
        writer.save(WAVEFORMS, np.stack(waveforms))
        writer.save(CHANNEL_LOCATIONS, np.column_stack([x, y]))
        writer.save(SESSION_INDEX, sessions)
        for k, times in enumerate(spike_times):
            writer.save_spike_times(k, times)
        if peth is not None:
            writer.save(PETH, np.stack(peth))
        if shanks is not None and np.unique(shanks).size > 1:
            writer.save(CHANNEL_SHANKS, shanks.astype(np.int64))
    return writer.out
