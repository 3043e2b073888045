"""Saved SpikeInterface SortingAnalyzers -> kilomatch's input folder
(:func:`import_spikeinterface`; ``pip install "kilomatch[spikeinterface]"``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import KilomatchError
from .sessions import (SessionUnits, check_session_list, foreign_errors, need_module,
                       no_unit, session_name, write_input_folder)


def _shanks_by_position(channel_xy: np.ndarray, contact_xy: np.ndarray, contact_shank,
                        where: str) -> np.ndarray | None:
    """Shank id per channel, matching contacts to channels by position.

    None when the probe carries no shank ids: probeinterface leaves `shank_ids` None for
    probes built with `set_contacts` or `generate_linear_probe`."""
    if contact_shank is None:
        return None
    shank = np.asarray(contact_shank).astype(str).ravel()
    if shank.size == 0 or np.all(shank == ""):
        return None
    codes = np.unique(shank, return_inverse=True)[1].ravel()
    out = np.empty(channel_xy.shape[0], np.int64)
    for c, xy in enumerate(channel_xy):
        d = np.abs(contact_xy[:, :2] - xy[:2]).max(axis=1)
        j = int(np.argmin(d))
        if d[j] > 1e-3:
            raise KilomatchError(f"{where}: channel {c} at {tuple(xy)} matches no probe contact")
        out[c] = codes[j]
    return out


def _read_si_session(path, index: int, *, gain_uv: float | None) -> SessionUnits:
    si = need_module("spikeinterface.core", "spikeinterface")
    path = Path(path)
    where = session_name(index, path)
    if not path.exists():
        raise KilomatchError(f"{where}: not found")
    with foreign_errors(where, "a saved SpikeInterface SortingAnalyzer"):
        analyzer = si.load_sorting_analyzer(path, load_extensions=False)  # loaded on use
    ext = analyzer.get_extension("templates")
    if ext is None:
        raise KilomatchError(f"{where}: the analyzer has no 'templates' extension; compute it "
                             "(analyzer.compute(['random_spikes', 'templates'])) and save")
    unit_ids = list(analyzer.unit_ids)
    if not unit_ids:
        raise no_unit(index, path, "the analyzer's sorting holds no unit")
    templates = np.asarray(ext.get_data(operator="average"), dtype=np.float32)  # (U, T, C)
    in_uv = getattr(analyzer, "return_in_uV", None)
    if in_uv is None:
        in_uv = getattr(analyzer, "return_scaled", True)
    scale = 1.0
    if not in_uv:
        if gain_uv is None:
            raise KilomatchError(f"{where}: the analyzer's templates are in raw units (it was made "
                                 "without scaling to uV); pass gain_uv (uV per unit)")
        scale = float(gain_uv)
    locs = np.asarray(analyzer.get_channel_locations(), dtype=np.float64)[:, :2]
    shanks = None
    try:
        probegroup = analyzer.get_probegroup()
    except Exception:  # no probe attached
        probegroup = None
    if probegroup is not None and len(probegroup.probes) > 1:
        raise KilomatchError(f"{where}: the analyzer holds {len(probegroup.probes)} probes; "
                             "kilomatch tracks one probe per run (make one analyzer per probe)")
    if probegroup is not None and probegroup.probes:
        probe = probegroup.probes[0]
        shanks = _shanks_by_position(locs, np.asarray(probe.contact_positions),
                                     probe.shank_ids, where)
    if templates.shape[0] != len(unit_ids) or templates.shape[2] != locs.shape[0]:
        raise KilomatchError(f"{where}: templates of shape {templates.shape} do not fit "
                             f"{len(unit_ids)} units x {locs.shape[0]} channels")
    fs = float(analyzer.sampling_frequency)
    sorting = analyzer.sorting
    n_seg = sorting.get_num_segments()
    seg_start = np.concatenate([[0], np.cumsum([analyzer.get_num_samples(segment_index=k)
                                                for k in range(n_seg)])])
    times = []
    for u in unit_ids:
        parts = [np.asarray(sorting.get_unit_spike_train(u, segment_index=k), np.int64)
                 + seg_start[k] for k in range(n_seg)]
        times.append(np.concatenate(parts) / fs * 1000.0)

    def waves():
        for k in range(len(unit_ids)):
            yield (templates[k].T * scale).astype(np.float32)

    ids = [u.item() if isinstance(u, np.generic) else u for u in unit_ids]
    return SessionUnits(path, locs, shanks, ids, templates.shape[1], times, waves)


def import_spikeinterface(sessions, out_dir, *, gain_uv: float | None = None,
                          overwrite: bool = False) -> Path:
    """Saved SpikeInterface SortingAnalyzers (folders or .zarr, one per session, in order) ->
    input folder.

    Every unit of each analyzer is taken (select units beforehand with
    analyzer.select_units). Mean waveforms: the 'templates' extension's average (uV when the
    analyzer scales to uV, the default; else pass gain_uv). Positions and shanks: the probe
    attached to the recording. Spike times: the sorting's spike trains, segments one after the
    other, in ms. Multi-segment recordings are laid end to end.
    Needs ``pip install "kilomatch[spikeinterface]"``.
    """
    paths = check_session_list(sessions, "import_spikeinterface")
    read = [_read_si_session(p, k, gain_uv=gain_uv) for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)
