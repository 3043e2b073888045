"""Saved SpikeInterface SortingAnalyzers -> kilomatch's input folder
(:func:`import_spikeinterface`; ``pip install "kilomatch[spikeinterface]"``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..checks import name_items
from ..errors import KilomatchError
from .sessions import (SessionUnits, check_session_list, foreign_errors, need_module,
                       no_unit, session_name, write_input_folder)

log = logging.getLogger("kilomatch")


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
    with foreign_errors(where, "a SortingAnalyzer with a readable 'templates' extension"):
        ext = analyzer.get_extension("templates")
    if ext is None:
        raise KilomatchError(f"{where}: the analyzer has no 'templates' extension; compute it "
                             "(analyzer.compute(['random_spikes', 'templates'])) and save")
    unit_ids = list(analyzer.unit_ids)
    if not unit_ids:
        raise no_unit(index, path, "the analyzer's sorting holds no unit")
    with foreign_errors(where, "a SortingAnalyzer with readable templates"):
        templates = np.asarray(ext.get_data(operator="average"), dtype=np.float64)  # (U, T, C)
        locs = np.asarray(analyzer.get_channel_locations(), dtype=np.float64)[:, :2]
    gain, offset = _template_scale(analyzer, gain_uv, locs.shape[0], where)
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
    times, keep, empty = [], [], []
    for k, u in enumerate(unit_ids):
        parts = [np.asarray(sorting.get_unit_spike_train(u, segment_index=s), np.int64)
                 + seg_start[s] for s in range(n_seg)]
        spikes = np.concatenate(parts)
        if spikes.size == 0:   # its template is NaN or zero: nothing to track it by
            empty.append(u)
            continue
        keep.append(k)
        times.append(spikes / fs * 1000.0)
    if empty:
        log.warning("%s: units %s have no spike in the analyzer's sorting; left out", where,
                    name_items(empty))
    if not keep:
        raise no_unit(index, path, "no unit of the analyzer's sorting has a spike")

    def waves():
        for k in keep:
            yield (templates[k].T * gain[:, None] + offset[:, None]).astype(np.float32)

    ids = [u.item() if isinstance(u, np.generic) else u for u in (unit_ids[k] for k in keep)]
    return SessionUnits(path, locs, shanks, ids, templates.shape[1], times, waves,
                        "the probe attached to the analyzer's recording")


def _template_scale(analyzer, gain_uv: float | None, n_channels: int, where: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset) per channel taking the analyzer's templates to uV: none when it scaled
    to uV (``return_in_uV``, called ``return_scaled`` before SpikeInterface 0.103); else the
    user's gain_uv, else the recording's gain_to_uV / offset_to_uV the analyzer saved."""
    in_uv = getattr(analyzer, "return_in_uV", None)
    if in_uv is None:
        in_uv = getattr(analyzer, "return_scaled", True)
    if in_uv:
        return np.ones(n_channels), np.zeros(n_channels)
    if gain_uv is not None:
        log.info("%s: templates in raw units; gain %g uV per unit, from --gain-uv", where,
                 gain_uv)
        return np.full(n_channels, float(gain_uv)), np.zeros(n_channels)
    try:
        gain = np.asarray(analyzer.get_recording_property("gain_to_uV"), dtype=np.float64)
        offset = np.asarray(analyzer.get_recording_property("offset_to_uV"), dtype=np.float64)
    except Exception:  # older analyzers: no recording properties saved
        gain = offset = np.array(None)
    if gain.shape != (n_channels,) or not np.all(np.isfinite(gain) & (gain > 0)):
        raise KilomatchError(f"{where}: the analyzer's templates are in raw units (made with "
                             "return_in_uV=False) and its recording saved no gain_to_uV; pass "
                             "--gain-uv (uV per unit; gain_uv= in Python)")
    if offset.shape != (n_channels,) or not np.all(np.isfinite(offset)):
        offset = np.zeros(n_channels)
    shown = (f"{gain[0]:g}" if np.unique(gain).size == 1
             else f"{gain.min():g} to {gain.max():g}")
    log.info("%s: templates in raw units; gain %s uV per unit, from the recording's gain_to_uV "
             "saved in the analyzer", where, shown)
    return gain, offset


def import_spikeinterface(sessions, out_dir, *, gain_uv: float | None = None,
                          overwrite: bool = False) -> Path:
    """Saved SpikeInterface SortingAnalyzers (folders or .zarr, one per session, in order) ->
    input folder.

    Every unit of each analyzer that has a spike is taken (select units beforehand with
    analyzer.select_units). Mean waveforms: the 'templates' extension's average (uV when the
    analyzer scales to uV, the default; else scaled by gain_uv, or when that is None by the
    recording's gain_to_uV and offset_to_uV saved in the analyzer, logged). Positions and shanks: the probe
    attached to the recording. Spike times: the sorting's spike trains, segments one after the
    other, in ms. Multi-segment recordings are laid end to end.
    Needs ``pip install "kilomatch[spikeinterface]"``.
    """
    paths = check_session_list(sessions, "import_spikeinterface")
    read = [_read_si_session(p, k, gain_uv=gain_uv) for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)
