"""Build kilomatch's input folder from spike-sorting outputs, one per session.

Three kinds of session are read, all sessions of one call being of one kind:

- **Kilosort / phy folders** (:func:`import_phy`): units chosen by their labels, mean waveforms
  computed from the raw recording named in ``params.py`` (the correct route; see below).
- **SpikeInterface** (:func:`import_spikeinterface`): a saved ``SortingAnalyzer`` per session,
  with its ``templates`` extension (``pip install "kilomatch[spikeinterface]"``).
- **NWB** (:func:`import_nwb`): the ``units`` table of an NWB file per session
  (``pip install "kilomatch[nwb]"``).

Each writes the folder described in README 'Input folder' (``waveform_all.npy``,
``channel_locations.npy``, ``session_index.npy`` 1..S in the order the sessions are given,
``spike_times/Unit{k}.npy`` in ms, ``channel_shanks.npy`` when the probe has several shanks) and
``units_source.csv`` (unit, session, session_path, original_unit_id), which maps every kilomatch
unit back to the session and unit id of the user's own sorting. Every session is read and checked
(one probe geometry for all, at least one usable unit each) before any waveform is computed;
waveforms are written session by session through a memory map, so memory holds one session's
spike times and one unit's snippets at a time.

Why not Kilosort's templates
----------------------------
Kilosort sorts whitened data (X_w = W @ X, channels x time) and its ``templates.npy`` are
whitened. Unwhitening needs the matrix W Kilosort whitened with. Kilosort 2.5 and 3 do not save
it: the whitening_mat.npy / whitening_mat_inv.npy they write for phy are a scaled identity
(0.005 I and its inverse), not W and its inverse, so "unwhitened" KS2.5/3 templates keep the
whitening's spatial sharpening and have wrong amplitudes and footprints, silently, and the
footprints are exactly what kilomatch compares across days. Mean waveforms are therefore
computed from the raw recording. Only when no raw file is reachable, and only for Kilosort 4,
which saves W itself (``whitening_mat_dat.npy``; its templates are the mean whitened waveforms
of the clusters' spikes, in the data's scale), are the templates unwhitened with W, with a loud
warning; Kilosort 2.5/3 (or unknown) outputs without a raw file are refused. ``temp_wh.dat``,
Kilosort's whitened copy of the data, is never read as the raw recording.

Command line::

    python -m kilomatch.importers {phy,spikeinterface,nwb} OUT SESSION1 SESSION2 ... [options]
"""

from __future__ import annotations

import argparse
import ast
import csv
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import KilomatchError

log = logging.getLogger("kilomatch")

__all__ = [
    "import_phy",
    "import_spikeinterface",
    "import_nwb",
    "read_params_py",
    "SessionUnits",
    "write_input_folder",
    "main",
]

#: uV per bit of Neuropixels 1.0 AP data as Open Ephys saves it (int16). Not right for other
#: probes or acquisition systems: SpikeGLX NP1.0 at AP gain 500 is 1.2e6 / 1024 / 500 =
#: 2.34375 uV/bit (imAiRangeMax / imMaxInt / gain * 1e6 from the .meta file).
NP1_GAIN_UV = 0.195
SOURCE_FILE = "units_source.csv"
UNIT_CHOICES = ("good", "all_but_noise", "all")
# Files an import writes (removed first when overwriting a folder).
_OUR_FILES = ("waveform_all.npy", "channel_locations.npy", "session_index.npy",
              "channel_shanks.npy", "peth.npy", SOURCE_FILE)
_TMP_WAVEFORMS = "waveform_all.partial.npy"
# Markers of a Kilosort 4 output folder (KS2.5/3 leave rez.mat and none of these).
_KS4_MARKERS = ("kilosort4.log", "ops.npy", "whitening_mat_dat.npy", "kept_spikes.npy",
                "spike_detection_templates.npy")
# Kilosort's whitened (and, from KS2.5 on, drift-corrected) copy of the data, never a raw file.
_WHITENED_COPY = "temp_wh.dat"
# Kilosort's template length and trough sample (nt0 = 61, nt0min = 20).
_KS_NT0, _KS_NT0MIN = 61, 20


# --------------------------------------------------------------------------------------------
# The common writer
# --------------------------------------------------------------------------------------------

@dataclass
class SessionUnits:
    """One session, read and checked; its waveforms are made only when written.

    path: the session as given (file or folder).
    channel_locations: (C, 2) x, y in um (y = depth).
    channel_shanks: (C,) int shank id per channel, or None for a single shank.
    unit_ids: original unit ids, in the order the units are written.
    n_samples: T, samples per waveform.
    spike_times_ms: one array of spike times in ms per unit.
    waveforms: callable yielding one (C, T) array in uV per unit, in unit order.
    """

    path: Path
    channel_locations: np.ndarray
    channel_shanks: np.ndarray | None
    unit_ids: list
    n_samples: int
    spike_times_ms: list
    waveforms: Callable[[], Iterator[np.ndarray]]


def _where(index: int, path) -> str:
    return f"session {index} ({path})"


def _geometry_difference(a: SessionUnits, b: SessionUnits) -> str | None:
    """How b's channels differ from a's, or None when they are the same."""
    la, lb = a.channel_locations, b.channel_locations
    if la.shape != lb.shape:
        return f"{lb.shape[0]} channels against {la.shape[0]}"
    far = np.flatnonzero(np.abs(la - lb).max(axis=1) > 1e-3)
    if far.size:
        c = int(far[0])
        return (f"{far.size} channel positions differ, first channel {c} at "
                f"({lb[c, 0]:g}, {lb[c, 1]:g}) um against ({la[c, 0]:g}, {la[c, 1]:g}) um")
    sa = np.zeros(la.shape[0], np.int64) if a.channel_shanks is None else a.channel_shanks
    sb = np.zeros(lb.shape[0], np.int64) if b.channel_shanks is None else b.channel_shanks
    # Shank labels may be numbered differently; the partition into shanks must be the same.
    pairs = set(zip(sa.tolist(), sb.tolist()))
    if len(pairs) != len(set(sa.tolist())) or len(pairs) != len(set(sb.tolist())):
        return "the channels are grouped into shanks differently"
    return None


def check_sessions(sessions: list[SessionUnits]) -> None:
    """One probe geometry and one waveform length for all sessions; raise naming the odd ones."""
    ref = sessions[0]
    problems = []
    for k, s in enumerate(sessions[1:], 2):
        diff = _geometry_difference(ref, s)
        if diff:
            problems.append(f"{_where(k, s.path)} has a different channel geometry from "
                            f"{_where(1, ref.path)}: {diff}")
        elif s.n_samples != ref.n_samples:
            problems.append(f"{_where(k, s.path)} has waveforms of {s.n_samples} samples, "
                            f"{_where(1, ref.path)} of {ref.n_samples}; all sessions need the "
                            "same waveform length")
    if problems:
        hint = ("kilomatch tracks units on one probe: sort every session with the same probe, "
                "channel map and channels (no channel dropped in one session only)")
        err = KilomatchError.from_problems(problems, header="Sessions do not share one probe "
                                           "geometry")
        raise KilomatchError(f"{err}\n{hint}", problems)


def _prepare_output(out_dir, overwrite: bool, sources: list[Path]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KilomatchError(f"output folder {out} is a file")
    for src in sources:
        if src.exists() and out.exists() and out.resolve() == src.resolve():
            raise KilomatchError(f"output folder {out} is one of the sessions; choose another "
                                 "folder (sessions are only read, never written)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise KilomatchError(f"{out} exists and is not empty; choose an empty folder or pass "
                                 "overwrite=True (--overwrite)")
        for name in _OUR_FILES + (_TMP_WAVEFORMS,):
            (out / name).unlink(missing_ok=True)
        if (out / "spike_times").is_dir():
            for f in (out / "spike_times").glob("Unit*.npy"):
                f.unlink()
    (out / "spike_times").mkdir(parents=True, exist_ok=True)
    return out


def _write_units(sessions: list[SessionUnits], out: Path, tmp: Path, shape: tuple) -> None:
    """Waveforms into tmp (N, C, T) float32, a session at a time; spike_times/UnitK.npy."""
    n_ch, n_t = shape[1], shape[2]
    wf = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    del wf
    start = 0
    for k, s in enumerate(sessions, 1):
        n = len(s.unit_ids)
        wf = np.lib.format.open_memmap(tmp, mode="r+")
        i = -1
        for i, w in enumerate(s.waveforms()):
            if i >= n:
                break
            w = np.asarray(w, dtype=np.float32)
            if w.shape != (n_ch, n_t):  # pragma: no cover - readers check this
                raise KilomatchError(f"{_where(k, s.path)}: unit {s.unit_ids[i]} has a waveform "
                                     f"of shape {w.shape}, expected {(n_ch, n_t)}")
            if not np.isfinite(w).all():
                raise KilomatchError(f"{_where(k, s.path)}: the waveform of unit "
                                     f"{s.unit_ids[i]} holds NaN or Inf")
            wf[start + i] = w
        if i + 1 != n:  # pragma: no cover - internal consistency
            raise KilomatchError(f"{_where(k, s.path)}: {i + 1} waveforms for {n} units")
        wf.flush()
        del wf
        for i in range(n):
            times = np.sort(np.asarray(s.spike_times_ms[i], dtype=np.float64).ravel())
            np.save(out / "spike_times" / f"Unit{start + i}.npy", times)
        start += n
        log.info("%s: %d units", _where(k, s.path), n)


def write_input_folder(sessions: list[SessionUnits], out_dir, overwrite: bool = False) -> Path:
    """Write kilomatch's input folder (and units_source.csv) from checked sessions.

    waveform_all.npy is written under a temporary name, session by session through a memory
    map, and renamed last: a folder holding waveform_all.npy is complete.
    """
    check_sessions(sessions)
    out = _prepare_output(out_dir, overwrite, [s.path for s in sessions])
    n_units = sum(len(s.unit_ids) for s in sessions)
    n_ch, n_t = sessions[0].channel_locations.shape[0], sessions[0].n_samples
    tmp = out / _TMP_WAVEFORMS
    try:
        _write_units(sessions, out, tmp, (n_units, n_ch, n_t))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    np.save(out / "channel_locations.npy",
            np.ascontiguousarray(sessions[0].channel_locations, dtype=np.float64))
    np.save(out / "session_index.npy",
            np.repeat(np.arange(1, len(sessions) + 1), [len(s.unit_ids) for s in sessions]
                      ).astype(np.int64))
    shanks = sessions[0].channel_shanks
    if shanks is not None and np.unique(shanks).size > 1:
        np.save(out / "channel_shanks.npy", np.asarray(shanks, dtype=np.int64))
    with open(out / SOURCE_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["unit", "session", "session_path", "original_unit_id"])
        unit = 0
        for k, s in enumerate(sessions, 1):
            path = str(Path(s.path).resolve())
            for uid in s.unit_ids:
                writer.writerow([unit, k, path, uid])
                unit += 1
    os.replace(tmp, out / "waveform_all.npy")
    return out


def _check_session_list(sessions, kind: str) -> list[Path]:
    if isinstance(sessions, (str, os.PathLike)):
        raise KilomatchError(f"{kind}: give a list of session paths, in session order (got one "
                             f"path: {sessions})")
    paths = [Path(p) for p in sessions]
    if len(paths) < 2:
        raise KilomatchError(f"{kind}: tracking needs at least two sessions, got {len(paths)}")
    seen = {}
    for k, p in enumerate(paths, 1):
        key = str(p.resolve())
        if key in seen:
            raise KilomatchError(f"{_where(k, p)} is the same as session {seen[key]}; give each "
                                 "session once")
        seen[key] = k
    return paths


def _no_unit(index: int, path, why: str) -> KilomatchError:
    return KilomatchError(f"{_where(index, path)}: no usable unit: {why}")


# --------------------------------------------------------------------------------------------
# Kilosort / phy
# --------------------------------------------------------------------------------------------

def _literal(node, source: str):
    """A literal's value; a plain (non-raw) string holding backslashes is read as raw, so a
    Windows path such as "C:\\new\\data.bin" written without escaping keeps its backslashes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        seg = ast.get_source_segment(source, node) or ""
        if "\\" in seg and "\\\\" not in seg and seg[:1] in "'\"":  # not escaped
            try:
                return ast.literal_eval("r" + seg)
            except (ValueError, SyntaxError):
                pass
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, source) for e in node.elts]
    return ast.literal_eval(node)


_ASSIGN = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(.+?)\s*$")


def read_params_py(path) -> dict:
    """The assignments of a phy ``params.py`` whose values are Python literals.

    The file is parsed, never executed: each ``name = value`` is read with ast.literal_eval;
    assignments that are not literals are left out. Strings with backslashes are read as raw
    strings (Windows paths); a file that is not valid Python as a whole is read line by line.
    """
    path = Path(path)
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise KilomatchError(f"{path}: not a readable params.py ({err})") from None
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in Windows paths
        try:
            tree = ast.parse(source, filename=str(path))
        except (SyntaxError, ValueError):
            tree = None
        if tree is not None:
            for node in tree.body:
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)):
                    try:
                        out[node.targets[0].id] = _literal(node.value, source)
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        continue
            return out
        for line in source.splitlines():
            match = _ASSIGN.match(line.split("#")[0] if "'" not in line and '"' not in line
                                  else line)
            if not match:
                continue
            name, text = match.groups()
            for attempt in (("r" + text) if text[:1] in "'\"" else text, text):
                try:
                    out[name] = ast.literal_eval(attempt)
                    break
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
    return out


def _read_tsv_labels(path: Path) -> dict:
    """{cluster id: label} from a phy cluster_*.tsv (header, then id<TAB>label)."""
    labels = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        return labels
    header = [h.strip() for h in rows[0]]
    col = 1
    for name in ("group", "KSLabel"):
        if name in header:
            col = header.index(name)
    for row in rows[1:]:
        if len(row) <= col or not row[0].strip():
            continue
        try:
            cid = int(float(row[0]))
        except ValueError:
            raise KilomatchError(f"{path}: cluster id {row[0]!r} is not a number") from None
        labels[cid] = row[col].strip().lower()
    return labels


def _phy_labels(folder: Path) -> tuple[dict, list[str]]:
    """Cluster labels: cluster_KSLabel.tsv overridden by cluster_group.tsv (phy curation)."""
    labels, used = {}, []
    for name in ("cluster_KSLabel.tsv", "cluster_group.tsv"):
        if (folder / name).is_file():
            labels.update(_read_tsv_labels(folder / name))
            used.append(name)
    return labels, used


class _RawBinary:
    """Flat binary recording(s) (samples x n_channels, interleaved), memory-mapped; several
    files are read as one recording, concatenated in time."""

    def __init__(self, files: list[Path], dtype, n_channels: int, offset: int, where: str):
        self.maps, starts = [], [0]
        itemsize = np.dtype(dtype).itemsize
        for f in files:
            size = f.stat().st_size - offset
            if size <= 0 or size % (itemsize * n_channels):
                raise KilomatchError(
                    f"{where}: {f} holds {f.stat().st_size} bytes, not a whole number of samples "
                    f"of n_channels_dat={n_channels} channels of {np.dtype(dtype).name} after "
                    f"offset={offset}; check n_channels_dat, dtype and offset in params.py")
            n = size // (itemsize * n_channels)
            self.maps.append(np.memmap(f, dtype=dtype, mode="r", offset=offset,
                                       shape=(n, n_channels)))
            starts.append(starts[-1] + n)
        self.starts = np.array(starts)
        self.n_samples = int(self.starts[-1])

    def read(self, a: int, b: int) -> np.ndarray:
        """Samples a..b-1 (0 <= a < b <= n_samples), all channels."""
        k = int(np.searchsorted(self.starts, a, side="right")) - 1
        if b <= self.starts[k + 1]:
            return self.maps[k][a - self.starts[k]:b - self.starts[k]]
        parts = []
        while a < b:
            stop = min(b, int(self.starts[k + 1]))
            parts.append(self.maps[k][a - self.starts[k]:stop - self.starts[k]])
            a, k = stop, k + 1
        return np.concatenate(parts)


def _raw_candidates(folder: Path, dat_path) -> list[list[Path]]:
    """For each raw file named by dat_path: where to look for it (as written, relative to the
    folder, or by its name in the folder, for sortings moved from another machine)."""
    entries = dat_path if isinstance(dat_path, (list, tuple)) else [dat_path]
    out = []
    for entry in entries:
        entry = str(entry)
        p = Path(entry)
        tries = [p] if p.is_absolute() else [folder / p]
        name = re.split(r"[\\/]", entry)[-1]
        if name and folder / name not in tries:
            tries.append(folder / name)
        out.append(tries)
    return out


def _find_raw(folder: Path, params: dict) -> tuple[list[Path] | None, str]:
    """The raw files, or None and what was tried."""
    if "dat_path" not in params or not params["dat_path"]:
        return None, "params.py names no dat_path"
    found, tried = [], []
    for tries in _raw_candidates(folder, params["dat_path"]):
        hit = next((t for t in tries if t.is_file()), None)
        if hit is None:
            tried += [str(t) for t in tries]
            return None, "not found at " + ", ".join(tried)
        if hit.name.lower() == _WHITENED_COPY:
            return None, (f"dat_path names {hit}, Kilosort's whitened copy of the data, from "
                          "which mean waveforms would be whitened too; point dat_path to the "
                          "original recording")
        found.append(hit)
    return found, ""


def _is_kilosort4(folder: Path) -> bool:
    return any((folder / name).exists() for name in _KS4_MARKERS)


def _load_plain(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise KilomatchError(f"{where}: {path.name} is not a readable .npy array ({err})") from None


def _phy_sos(highpass_hz, fs: float, where: str):
    if highpass_hz is None or highpass_hz <= 0:
        return None
    if not highpass_hz < fs / 2:
        raise KilomatchError(f"{where}: highpass_hz={highpass_hz} must be below half the sample "
                             f"rate ({fs / 2:g} Hz)")
    from scipy.signal import butter
    return butter(3, highpass_hz, btype="highpass", fs=fs, output="sos")


def _mean_from_raw(raw: _RawBinary, spikes: np.ndarray, chan_rows: np.ndarray, n_before: int,
                   n_after: int, pad: int, sos, gain_uv: float) -> np.ndarray:
    """(C, T) mean waveform in uV of the given spike samples.

    Windows pad samples wider than the snippet on both sides are summed; filtering is linear,
    so filtering the mean window equals averaging the filtered windows, at the cost of one
    filter run. The filter runs forward and backward (zero phase) on the wide window so that
    its edge effects stay out of the snippet; then each channel's median over the window
    (its baseline) is subtracted.
    """
    width = n_before + n_after + 2 * pad
    acc = np.zeros((width, raw.maps[0].shape[1]), dtype=np.float64)
    for s in spikes:
        a = int(s) - n_before - pad
        acc += raw.read(a, a + width)
    mean = acc[:, chan_rows] / max(len(spikes), 1)
    if sos is not None:
        from scipy.signal import sosfiltfilt
        mean = sosfiltfilt(sos, mean, axis=0)
    mean -= np.median(mean, axis=0, keepdims=True)
    return (mean[pad:pad + n_before + n_after].T * gain_uv).astype(np.float32)


def _ks4_template_waveforms(folder: Path, where: str, spike_index: list,
                            spike_templates: np.ndarray, n_before: int, n_after: int,
                            n_ch: int, gain_uv: float):
    """Callable yielding Kilosort 4 templates unwhitened, in uV, cut to the n_before/n_after
    window around the trough (sample nt0min = 20 of KS4's 61), 0 outside.

    KS4 whitens the filtered data as X_w = W @ X (channels x time) with W saved in
    whitening_mat_dat.npy; a template (time x channels) is the mean whitened waveform of its
    cluster's spikes, in the data's scale. So waveform = template @ inv(W).T, in bits. A unit
    whose spikes use several templates (phy merges) gets their spike-weighted mean.
    """
    missing = [n for n in ("templates.npy", "whitening_mat_dat.npy")
               if not (folder / n).is_file()]
    if missing:
        raise KilomatchError(f"{where}: no raw recording, and the Kilosort 4 files needed to "
                             f"unwhiten its templates are missing: {', '.join(missing)} "
                             "(whitening_mat_dat.npy is the matrix KS4 whitened with)")
    templates = _load_plain(folder / "templates.npy", where)
    wdat = _load_plain(folder / "whitening_mat_dat.npy", where).astype(np.float64)
    if templates.ndim != 3 or wdat.shape != (n_ch, n_ch):
        raise KilomatchError(f"{where}: templates.npy {templates.shape} or whitening_mat_dat.npy "
                             f"{wdat.shape} do not fit {n_ch} channels")
    ind = None
    if (folder / "templates_ind.npy").is_file():
        ind = _load_plain(folder / "templates_ind.npy", where).astype(np.int64)
    if ind is None and templates.shape[2] != n_ch:
        raise KilomatchError(f"{where}: templates.npy has {templates.shape[2]} channels, "
                             f"channel_positions.npy {n_ch}")
    if spike_templates.size and spike_templates.max() >= templates.shape[0]:
        raise KilomatchError(f"{where}: spike_templates.npy names template "
                             f"{spike_templates.max()} but templates.npy holds "
                             f"{templates.shape[0]}")
    unwhiten = np.linalg.inv(wdat).T
    nt0 = templates.shape[1]
    trough = int(_KS_NT0MIN * nt0 / _KS_NT0)   # KS4's default nt0min = int(20 * nt / 61)

    def dense(t: int) -> np.ndarray:
        if ind is None:
            return templates[t].astype(np.float64)
        full = np.zeros((nt0, n_ch))
        cols = ind[t]
        ok = cols >= 0
        full[:, cols[ok]] = templates[t][:, ok]
        return full

    def waves():
        for idx in spike_index:
            tids, counts = np.unique(spike_templates[idx], return_counts=True)
            acc = np.zeros((nt0, n_ch))
            for t, c in zip(tids.tolist(), counts.tolist()):
                acc += c * dense(int(t))
            wave = (acc / counts.sum()) @ unwhiten       # (nt0, C) in bits
            out = np.zeros((n_before + n_after, n_ch))
            for j in range(n_before + n_after):
                src = trough - n_before + j
                if 0 <= src < nt0:
                    out[j] = wave[src]
            out -= np.median(out, axis=0, keepdims=True)
            yield (out.T * gain_uv).astype(np.float32)

    return waves


def _read_phy_session(folder, index: int, *, units: str, n_spikes: int, seed: int,
                      gain_uv: float, highpass_hz, n_before: int, n_after: int) -> SessionUnits:
    folder = Path(folder)
    where = _where(index, folder)
    if not folder.is_dir():
        raise KilomatchError(f"{where}: not a folder; a Kilosort/phy session is the output "
                             "folder holding params.py, spike_times.npy, channel_map.npy, ...")
    required = ("params.py", "spike_times.npy", "channel_map.npy", "channel_positions.npy")
    missing = [n for n in required if not (folder / n).is_file()]
    if not (folder / "spike_clusters.npy").is_file() and not (folder / "spike_templates.npy").is_file():
        missing.append("spike_clusters.npy (or spike_templates.npy)")
    if missing:
        raise KilomatchError(f"{where}: not a Kilosort/phy output folder: missing "
                             f"{', '.join(missing)}")
    params = read_params_py(folder / "params.py")
    try:
        fs = float(params["sample_rate"])
        if not fs > 0:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise KilomatchError(f"{where}: params.py needs sample_rate > 0 (Hz), got "
                             f"{params.get('sample_rate')!r}") from None

    samples = _load_plain(folder / "spike_times.npy", where).ravel().astype(np.int64)
    templates_file = folder / "spike_templates.npy"
    spike_templates = (_load_plain(templates_file, where).ravel().astype(np.int64)
                       if templates_file.is_file() else None)
    if (folder / "spike_clusters.npy").is_file():
        clusters = _load_plain(folder / "spike_clusters.npy", where).ravel().astype(np.int64)
    else:
        clusters = spike_templates
    if clusters.size != samples.size:
        raise KilomatchError(f"{where}: spike_times.npy has {samples.size} spikes but the "
                             f"cluster file has {clusters.size}")
    positions = _load_plain(folder / "channel_positions.npy", where).astype(np.float64)
    chan_map = _load_plain(folder / "channel_map.npy", where).ravel().astype(np.int64)
    if positions.ndim != 2 or positions.shape[1] < 2 or positions.shape[0] != chan_map.size:
        raise KilomatchError(f"{where}: channel_positions.npy has shape {positions.shape}, "
                             f"expected ({chan_map.size}, 2) like channel_map.npy")
    shanks = None
    if (folder / "channel_shanks.npy").is_file():
        shanks = _load_plain(folder / "channel_shanks.npy", where).ravel().astype(np.int64)
        if shanks.size != chan_map.size:
            raise KilomatchError(f"{where}: channel_shanks.npy has {shanks.size} entries for "
                                 f"{chan_map.size} channels")

    # Units by label.
    present = np.unique(clusters)
    if units == "all":
        ids = present
    else:
        labels, used = _phy_labels(folder)
        if not used:
            raise KilomatchError(f"{where}: neither cluster_group.tsv nor cluster_KSLabel.tsv: "
                                 f"units='{units}' needs labels; use units='all' to take every "
                                 "cluster")
        if units == "good":
            ids = np.array([c for c in present.tolist() if labels.get(c) == "good"], np.int64)
        else:
            ids = np.array([c for c in present.tolist() if labels.get(c) != "noise"], np.int64)
        if ids.size == 0:
            raise _no_unit(index, folder, f"none of its {present.size} clusters is "
                           + ("labelled 'good'" if units == "good" else "other than 'noise'")
                           + f" in {' / '.join(reversed(used))}")
    order = np.argsort(clusters, kind="stable")
    bounds = np.searchsorted(clusters[order], np.stack([ids, ids + 1]))
    spike_index = [np.sort(order[a:b]) for a, b in zip(bounds[0], bounds[1])]

    raw_files, why = _find_raw(folder, params)
    n_ch = chan_map.size
    if raw_files is None:
        if not _is_kilosort4(folder):
            raise KilomatchError(
                f"{where}: the raw recording is not reachable ({why}; set dat_path in "
                "params.py or put the file next to it), and this is not a Kilosort 4 output. "
                "kilomatch computes mean waveforms from the raw data and will not use Kilosort "
                "2.5/3 templates instead: they are whitened, and the whitening_mat_inv.npy saved "
                "next to them is not the inverse of the whitening Kilosort applied, so "
                "'unwhitened' templates have wrong amplitudes and footprints, silently.")
        if spike_templates is None:
            raise KilomatchError(f"{where}: no raw recording and no spike_templates.npy")
        log.warning(
            "WARNING %s: raw recording not reachable (%s). Using Kilosort 4's templates, "
            "unwhitened with whitening_mat_dat.npy, instead of mean waveforms from the raw data: "
            "they are model fits, smoother than real mean waveforms and only as long as "
            "Kilosort's templates. Make the raw file reachable for correct waveforms.",
            where, why)
        waves = _ks4_template_waveforms(folder, where, spike_index, spike_templates,
                                        n_before, n_after, n_ch, gain_uv)
        times = [samples[idx] / fs * 1000.0 for idx in spike_index]
        return SessionUnits(folder, positions[:, :2], shanks, ids.tolist(), n_before + n_after,
                            times, waves)

    for key in ("n_channels_dat",):
        if not isinstance(params.get(key), int) or params[key] < 1:
            raise KilomatchError(f"{where}: params.py needs {key} (an integer >= 1), got "
                                 f"{params.get(key)!r}")
    n_dat = params["n_channels_dat"]
    try:
        dtype = np.dtype(params.get("dtype", "int16"))
    except TypeError:
        raise KilomatchError(f"{where}: params.py dtype {params.get('dtype')!r} is not a "
                             "numpy dtype") from None
    offset = int(params.get("offset", 0) or 0)
    if chan_map.min() < 0 or chan_map.max() >= n_dat:
        raise KilomatchError(f"{where}: channel_map.npy names rows up to {chan_map.max()} but "
                             f"the raw file has n_channels_dat={n_dat}")
    raw = _RawBinary(raw_files, dtype, n_dat, offset, where)
    if samples.size and (samples.min() < 0 or samples.max() >= raw.n_samples):
        raise KilomatchError(f"{where}: spike times run to sample {samples.max()} but the raw "
                             f"recording has {raw.n_samples} samples; check dat_path, "
                             "n_channels_dat, dtype and offset in params.py")
    hp_filtered = bool(params.get("hp_filtered", False))
    sos = None if hp_filtered else _phy_sos(highpass_hz, fs, where)
    pad = n_before + n_after
    lo, hi = n_before + pad, raw.n_samples - n_after - pad

    keep, chosen = [], []
    for uid, idx in zip(ids.tolist(), spike_index):
        s = samples[idx]
        s = s[(s >= lo) & (s <= hi)]
        if s.size == 0:
            log.warning("%s: unit %s left out: none of its %d spikes lies far enough from the "
                        "ends of the recording to cut a waveform", where, uid, idx.size)
            continue
        rng = np.random.default_rng([int(seed), int(uid) % (1 << 62)])
        pick = rng.choice(s.size, size=min(n_spikes, s.size), replace=False)
        keep.append((uid, idx))
        chosen.append(np.sort(s[pick]))
    if not keep:
        raise _no_unit(index, folder, "no selected unit has a spike away from the recording's "
                       "ends")

    def waves():
        for s in chosen:
            yield _mean_from_raw(raw, s, chan_map, n_before, n_after, pad, sos, gain_uv)

    times = [samples[idx] / fs * 1000.0 for _, idx in keep]
    return SessionUnits(folder, positions[:, :2], shanks, [u for u, _ in keep],
                        n_before + n_after, times, waves)


def _check_common(units, n_spikes, n_before, n_after, gain_uv):
    if units not in UNIT_CHOICES:
        raise KilomatchError(f"units must be one of {', '.join(UNIT_CHOICES)}, got {units!r}")
    if not isinstance(n_spikes, (int, np.integer)) or isinstance(n_spikes, bool) or n_spikes < 1:
        raise KilomatchError(f"n_spikes must be an integer >= 1, got {n_spikes!r}")
    for name, v in (("n_before", n_before), ("n_after", n_after)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise KilomatchError(f"{name} must be an integer >= 1, got {v!r}")
    try:
        ok = bool(np.isfinite(float(gain_uv)) and float(gain_uv) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(gain_uv, bool):
        raise KilomatchError(f"gain_uv must be a number > 0 (uV per bit), got {gain_uv!r}")


def import_phy(sessions, out_dir, *, units: str = "good", n_spikes: int = 500, seed: int = 0,
               gain_uv: float | None = None, highpass_hz: float | None = 300.0,
               n_before: int | None = None, n_after: int | None = None,
               overwrite: bool = False) -> Path:
    """Kilosort / phy output folders (one per session, in session order) -> input folder.

    units: "good" (label good), "all_but_noise" (every cluster not labelled noise) or "all".
        Labels come from cluster_group.tsv (phy's curation) where it has one, else from
        cluster_KSLabel.tsv.
    Mean waveforms come from the raw recording named by dat_path in params.py (a path, or a
    list of files read as one recording; relative paths resolve against the folder, and a file
    of that name in the folder is used when the path does not exist, as after moving a
    sorting). The file is memory-mapped as n_channels_dat interleaved channels of dtype after
    offset bytes; channel_map.npy picks the sorted channels' rows and channel_positions.npy
    gives their positions. For each unit up to n_spikes spikes are drawn at random (seeded by
    seed and the cluster id, so a unit's waveform does not depend on the others), the windows
    n_before + n_after samples around each spike (default 20 + 41 = 61, Kilosort's template
    length with the trough at sample 20) are averaged, high-pass filtered at highpass_hz
    (3rd-order Butterworth, zero phase, on a window three times as wide; skipped when params.py
    says hp_filtered = True, or with highpass_hz=None), the baseline (median) is removed and
    the result is scaled to uV by gain_uv.
    gain_uv: uV per bit. Default 0.195, right for Neuropixels 1.0 AP data saved by Open Ephys
        only: set it for anything else (SpikeGLX NP1.0 at AP gain 500: 2.34375 =
        imAiRangeMax / imMaxInt / gain * 1e6 from the .meta file). The same value is used for
        every session; a wrong gain scales all amplitudes alike.
    Spike times: spike_times.npy (samples) / sample_rate * 1000 ms, every spike of the unit.
    Without a reachable raw file: Kilosort 4 templates (for units made of several templates,
    their spike-weighted mean), unwhitened with the whitening matrix KS4 saved
    (whitening_mat_dat.npy), with a loud warning; Kilosort 2.5/3 (or unknown) outputs are
    refused, see the module docstring.
    Returns the output folder; refuses a non-empty one unless overwrite=True.
    """
    n_before = _KS_NT0MIN if n_before is None else n_before
    n_after = _KS_NT0 - _KS_NT0MIN if n_after is None else n_after
    gain_uv = NP1_GAIN_UV if gain_uv is None else gain_uv
    _check_common(units, n_spikes, n_before, n_after, gain_uv)
    paths = _check_session_list(sessions, "import_phy")
    read = [_read_phy_session(p, k, units=units, n_spikes=int(n_spikes), seed=int(seed),
                              gain_uv=float(gain_uv), highpass_hz=highpass_hz,
                              n_before=int(n_before), n_after=int(n_after))
            for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)


# --------------------------------------------------------------------------------------------
# SpikeInterface
# --------------------------------------------------------------------------------------------

def _need(module: str, extra: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise KilomatchError(f"this importer needs {module}: pip install \"kilomatch[{extra}]\""
                             ) from None


def _shanks_by_position(channel_xy: np.ndarray, contact_xy: np.ndarray, contact_shank,
                        where: str) -> np.ndarray | None:
    """Shank id per channel, matching contacts to channels by position."""
    shank = np.asarray(contact_shank).astype(str)
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
    si = _need("spikeinterface.core", "spikeinterface")
    path = Path(path)
    where = _where(index, path)
    if not path.exists():
        raise KilomatchError(f"{where}: not found")
    try:
        analyzer = si.load_sorting_analyzer(path, load_extensions=False)  # loaded on use
    except Exception as err:  # SpikeInterface raises many kinds
        raise KilomatchError(f"{where}: not a saved SpikeInterface SortingAnalyzer "
                             f"({type(err).__name__}: {err})") from None
    ext = analyzer.get_extension("templates")
    if ext is None:
        raise KilomatchError(f"{where}: the analyzer has no 'templates' extension; compute it "
                             "(analyzer.compute(['random_spikes', 'templates'])) and save")
    unit_ids = list(analyzer.unit_ids)
    if not unit_ids:
        raise _no_unit(index, path, "the analyzer's sorting holds no unit")
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
    paths = _check_session_list(sessions, "import_spikeinterface")
    read = [_read_si_session(p, k, gain_uv=gain_uv) for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)


# --------------------------------------------------------------------------------------------
# NWB
# --------------------------------------------------------------------------------------------

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
    pynwb = _need("pynwb", "nwb")
    path = Path(path)
    where = _where(index, path)
    if not path.is_file():
        raise KilomatchError(f"{where}: not a file; an NWB session is one .nwb file")
    try:
        io = pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True)
    except Exception as err:
        raise KilomatchError(f"{where}: not a readable NWB file ({type(err).__name__}: "
                             f"{err})") from None
    with io:
        try:
            nwb = io.read()
        except Exception as err:
            raise KilomatchError(f"{where}: not a readable NWB file ({type(err).__name__}: "
                                 f"{err})") from None
        units = nwb.units
        if units is None or len(units.id) == 0:
            raise _no_unit(index, path, "the file has no units table, or it is empty")
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
            raise _no_unit(index, path, f"no unit has its peak on electrode groups "
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

    return SessionUnits(path, xy[rows], shanks, unit_ids, n_t, times, waves)


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
    paths = _check_session_list(sessions, "import_nwb")
    read = [_read_nwb_session(p, k, electrode_groups=electrode_groups,
                              waveform_unit=waveform_unit) for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kilomatch.importers",
        description="Build a kilomatch input folder from one spike sorting per session "
                    "(sessions in order).")
    sub = p.add_subparsers(dest="kind", required=True)

    def common(sp):
        sp.add_argument("out", help="folder to write")
        sp.add_argument("sessions", nargs="+", help="one per session, in session order")
        sp.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
        sp.add_argument("--debug", action="store_true", help="show full tracebacks")

    phy = sub.add_parser("phy", help="Kilosort / phy output folders")
    common(phy)
    phy.add_argument("--units", choices=UNIT_CHOICES, default="good",
                     help="which clusters: good, all_but_noise or all (default good)")
    phy.add_argument("--n-spikes", type=int, default=500, help="spikes averaged per unit")
    phy.add_argument("--seed", type=int, default=0, help="seed of the spike subsets")
    phy.add_argument("--gain-uv", type=float, default=None,
                     help=f"uV per bit (default {NP1_GAIN_UV}: Neuropixels 1.0 via Open Ephys)")
    phy.add_argument("--highpass-hz", type=float, default=300.0,
                     help="high-pass cutoff; 0 for none (not applied when params.py says "
                          "hp_filtered = True)")
    phy.add_argument("--n-before", type=int, default=None, help="samples before the spike (20)")
    phy.add_argument("--n-after", type=int, default=None, help="samples from the spike on (41)")

    si = sub.add_parser("spikeinterface", help="saved SpikeInterface SortingAnalyzers")
    common(si)
    si.add_argument("--gain-uv", type=float, default=None,
                    help="uV per unit, only for analyzers not scaled to uV")

    nwb = sub.add_parser("nwb", help="NWB files with a units table")
    common(nwb)
    nwb.add_argument("--electrode-groups", nargs="+", default=None,
                     help="keep only these electrode groups (one probe)")
    nwb.add_argument("--waveform-unit", default=None,
                     help="unit of waveform_mean (volts, millivolts, microvolts)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    handler = None
    if not log.handlers:  # show progress and warnings (the templates fallback) on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kilomatch: %(message)s"))
        log.addHandler(handler)
        level = log.level
        log.setLevel(logging.INFO)
    try:
        if args.kind == "phy":
            out = import_phy(args.sessions, args.out, units=args.units, n_spikes=args.n_spikes,
                             seed=args.seed, gain_uv=args.gain_uv,
                             highpass_hz=args.highpass_hz or None, n_before=args.n_before,
                             n_after=args.n_after, overwrite=args.overwrite)
        elif args.kind == "spikeinterface":
            out = import_spikeinterface(args.sessions, args.out, gain_uv=args.gain_uv,
                                        overwrite=args.overwrite)
        else:
            out = import_nwb(args.sessions, args.out, electrode_groups=args.electrode_groups,
                             waveform_unit=args.waveform_unit, overwrite=args.overwrite)
    except KilomatchError as err:
        if args.debug:
            raise
        print(f"kilomatch: error: {err}", file=sys.stderr)
        return 2
    finally:
        if handler is not None:
            log.removeHandler(handler)
            log.setLevel(level)
    with open(Path(out) / SOURCE_FILE) as f:
        n = sum(1 for _ in f) - 1
    print(f"wrote {out} ({n} units from {len(args.sessions)} sessions; {SOURCE_FILE} maps them "
          "to your unit ids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
