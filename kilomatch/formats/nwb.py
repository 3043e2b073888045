"""NWB files with a units table -> kilomatch's input folder (:func:`import_nwb`, via pynwb;
``pip install "kilomatch[nwb]"``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import KilomatchError
from .sessions import (SessionUnits, check_session_list, foreign_errors, need_module,
                       no_unit, session_name, write_input_folder)

log = logging.getLogger("kilomatch")

_VOLT_SCALE_UV = {"volts": 1e6, "volt": 1e6, "v": 1e6, "millivolts": 1e3, "mv": 1e3,
                  "microvolts": 1.0, "uv": 1.0, "µv": 1.0}


def _column(table, name):
    return np.asarray(table[name].data[:]) if name in table.colnames else None


def _ragged(table, name: str) -> list:
    """A ragged column of an NWB table (spike_times, electrodes) as one array per row, read
    from its flat data and index (for electrodes: row numbers of the electrodes table)."""
    col = table[name]
    if hasattr(col, "target"):  # a VectorIndex: cumulative ends into its target's data
        ends = np.asarray(col.data[:], dtype=np.int64)
        flat = np.asarray(col.target.data[:])
        starts = np.concatenate([[0], ends[:-1]])
        return [flat[a:b] for a, b in zip(starts, ends)]
    return [np.atleast_1d(np.asarray(v)) for v in col.data[:]]


def _read_nwb_session(path, index: int, *, electrode_groups, waveform_unit) -> SessionUnits:
    pynwb = need_module("pynwb", "nwb")
    path = Path(path)
    where = session_name(index, path)
    if not path.is_file():
        raise KilomatchError(f"{where}: not a file; an NWB session is one .nwb file")
    with foreign_errors(where, "a readable NWB file"):
        io = pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True)
    with io:
        with foreign_errors(where, "a readable NWB file"):
            nwb = io.read()
        units = nwb.units
        if units is None or len(units.id) == 0:
            raise no_unit(index, path, "the file has no units table, or it is empty")
        if "waveform_mean" not in units.colnames:
            raise KilomatchError(f"{where}: the units table has no waveform_mean column")
        elec = nwb.electrodes
        if elec is None or len(elec.id) == 0:
            raise KilomatchError(f"{where}: the file has no electrodes table")
        cols = elec.colnames
        if "rel_x" in cols and "rel_y" in cols:
            xy = np.column_stack([_column(elec, "rel_x"), _column(elec, "rel_y")])
        elif "x" in cols and "y" in cols:
            log.warning("%s: electrodes have no rel_x/rel_y; using x/y as positions on the "
                        "probe (they must be in um along the probe, y = depth)", where)
            xy = np.column_stack([_column(elec, "x"), _column(elec, "y")])
        else:
            raise KilomatchError(f"{where}: the electrodes table has neither rel_x/rel_y nor "
                                 "x/y columns: the channel positions are unknown")
        xy = xy.astype(np.float64)
        groups = None
        if "group_name" in cols:
            groups = _column(elec, "group_name").astype(str)
        elif "group" in cols:
            groups = np.array([g.name for g in elec["group"].data[:]])
        rows = np.arange(xy.shape[0])
        if electrode_groups:
            wanted = [str(g) for g in electrode_groups]
            if groups is None:
                raise KilomatchError(f"{where}: electrode_groups given but the electrodes "
                                     "table has no groups")
            unknown = sorted(set(wanted) - set(groups.tolist()))
            if unknown:
                raise KilomatchError(f"{where}: no electrode group {', '.join(unknown)} (found: "
                                     f"{', '.join(sorted(set(groups.tolist())))})")
            rows = np.flatnonzero(np.isin(groups, wanted))
        if not np.isfinite(xy[rows]).all():
            raise KilomatchError(f"{where}: NaN electrode positions")
        shank_col = next((c for c in ("shank", "shank_id", "shank_ids") if c in cols), None)
        shanks = None
        if shank_col is not None:
            shanks = np.unique(_column(elec, shank_col).astype(str),
                               return_inverse=True)[1].ravel()[rows]
        elif groups is not None and np.unique(groups[rows]).size > 1:
            shanks = np.unique(groups[rows], return_inverse=True)[1].ravel()

        data = units["waveform_mean"].data
        shape = tuple(data.shape)
        if len(shape) != 3:
            raise KilomatchError(f"{where}: waveform_mean has shape {shape}; kilomatch needs "
                                 "(units, samples, electrodes), a mean waveform per electrode")
        n_rows = xy.shape[0]
        elec_col = _ragged(units, "electrodes") if "electrodes" in units.colnames else None
        per_unit_elec = shape[2] != n_rows
        if per_unit_elec and elec_col is None:
            raise KilomatchError(f"{where}: waveform_mean has {shape[2]} electrodes but the "
                                 f"electrodes table has {n_rows} rows and the units table has no "
                                 "electrodes column to say which")
        unit = waveform_unit or getattr(units, "waveform_unit", None) or "volts"
        scale = _VOLT_SCALE_UV.get(str(unit).strip().lower())
        if scale is None:
            raise KilomatchError(f"{where}: waveform unit {unit!r} is not one of "
                                 f"{', '.join(_VOLT_SCALE_UV)}; pass waveform_unit")
        sample = np.abs(np.asarray(data[0], dtype=np.float64))
        if scale == 1e6 and waveform_unit is None and np.nanmax(sample) > 1.0:
            log.warning("%s: waveform_mean is declared in volts but reaches %.3g: read as uV "
                        "(pass waveform_unit to say otherwise)", where, float(np.nanmax(sample)))
            scale = 1.0

        ids = np.asarray(units.id[:])
        keep, channels = [], []
        row_pos = {int(r): i for i, r in enumerate(rows)}
        for i in range(len(ids)):
            if per_unit_elec:
                e = np.asarray(elec_col[i], dtype=np.int64).ravel()
                if e.size != shape[2]:
                    raise KilomatchError(f"{where}: unit {ids[i]} has {e.size} electrodes but "
                                         f"waveform_mean {shape[2]}")
            else:
                e = np.arange(n_rows)
            w = np.asarray(data[i], dtype=np.float64)
            peak = int(e[int(np.argmax(np.ptp(w, axis=0)))])
            if peak in row_pos:
                keep.append(i)
                channels.append(e)
        if not keep:
            raise no_unit(index, path, f"no unit has its peak on electrode groups "
                           f"{', '.join(electrode_groups or [])}")
        if "spike_times" not in units.colnames:
            raise KilomatchError(f"{where}: the units table has no spike_times column")
        spikes = _ragged(units, "spike_times")
        times = [np.asarray(spikes[i], dtype=np.float64) * 1000.0 for i in keep]
        unit_ids = [int(ids[i]) for i in keep]
    n_t = shape[1]

    def waves():
        with pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True) as io2:
            d = io2.read().units["waveform_mean"].data
            for i, e in zip(keep, channels):
                w = np.asarray(d[i], dtype=np.float64) * scale    # (T, E)
                full = np.zeros((n_rows, n_t))
                full[e] = w.T
                yield full[rows].astype(np.float32)

    return SessionUnits(path, xy[rows], shanks, unit_ids, n_t, times, waves,
                        "the electrodes table")


def import_nwb(sessions, out_dir, *, electrode_groups=None, waveform_unit: str | None = None,
               overwrite: bool = False) -> Path:
    """NWB files (one per session, in order) -> input folder, via pynwb.

    Units: every row of the file's units table (with electrode_groups, only units whose
    largest waveform lies on those groups' electrodes, and only those electrodes as channels:
    use it to pick one probe of a file with several). Waveforms: the units table's
    waveform_mean, (units, samples, electrodes) as NWB lays it out, one electrode per row of the
    electrodes table (or per entry of the unit's electrodes, the rest 0). NWB's unit for
    waveforms is volts unless the table says otherwise; values above 1 declared as volts are
    read as uV with a warning; waveform_unit ("volts", "millivolts", "microvolts") overrides.
    Positions: rel_x, rel_y of the electrodes table (on the probe, um), else x, y with a
    warning. Shanks: a shank / shank_id column, else the electrode groups when there are
    several. Spike times: spike_times (s) * 1000 ms. Needs ``pip install "kilomatch[nwb]"``.
    """
    paths = check_session_list(sessions, "import_nwb")
    read = [_read_nwb_session(p, k, electrode_groups=electrode_groups,
                              waveform_unit=waveform_unit) for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)
