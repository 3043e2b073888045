"""Kilosort / phy output folders -> kilomatch's input folder (:func:`import_phy`).

Units are chosen by their labels; mean waveforms are computed from the raw recording named in
``params.py`` (the correct route; see below); spike times are ``spike_times.npy`` in ms.

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
"""

from __future__ import annotations

import ast
import csv
import logging
import re
import warnings
from pathlib import Path

import numpy as np

from ..checks import Spec, as_vector, check_table, name_items
from ..errors import KilomatchError
from .raw_gain import recorded_gain_uv
from .sessions import (SessionUnits, check_session_list, no_unit, session_name,
                       write_input_folder)

log = logging.getLogger("kilomatch")

#: Which clusters are units: by phy / Kilosort label (cluster_group.tsv over
#: cluster_KSLabel.tsv), every cluster, or by bombcell's label (cluster_bc_unitType.tsv).
UNIT_CHOICES = ("good", "all_but_noise", "all", "bombcell_good", "bombcell_all_but_noise")
_BOMBCELL_FILE, _BOMBCELL_COLUMN = "cluster_bc_unitType.tsv", "bc_unitType"
# File extensions Kilosort 4 takes for a raw recording (kilosort.io.find_binary).
_RAW_SUFFIXES = (".bin", ".dat", ".raw", ".bat")
# Markers of a Kilosort 4 output folder (KS2.5/3 leave rez.mat and none of these).
_KS4_MARKERS = ("kilosort4.log", "ops.npy", "whitening_mat_dat.npy", "kept_spikes.npy",
                "spike_detection_templates.npy")
# Kilosort's whitened (and, from KS2.5 on, drift-corrected) copy of the data, never a raw file.
_WHITENED_COPY = "temp_wh.dat"
# Named when a session's channels differ from the first session's.
_GEOMETRY_FILES = "channel_map.npy, channel_positions.npy"
# Kilosort's template length and trough sample (nt0 = 61, nt0min = 20).
_KS_NT0, _KS_NT0MIN = 61, 20


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


def _read_tsv_labels(path: Path, where: str, columns=("group", "KSLabel")) -> dict:
    """{cluster id: label, lower case} from a phy cluster_*.tsv (header, then id<TAB>label);
    the label is the first of ``columns`` in the header, else the second column."""
    labels = {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise KilomatchError(f"{where}: {path.name} is not a readable tab-separated table "
                             f"({err})") from None
    if not rows:
        return labels
    header = [h.strip() for h in rows[0]]
    col = next((header.index(c) for c in columns if c in header), 1)
    for row in rows[1:]:
        if len(row) <= col or not row[0].strip():
            continue
        try:
            cid = int(float(row[0]))
        except ValueError:
            raise KilomatchError(f"{where}: {path.name}: cluster id {row[0]!r} is not a "
                                 "number") from None
        labels[cid] = row[col].strip().lower()
    return labels


def _phy_labels(folder: Path, where: str, units: str) -> tuple[dict, list[str]]:
    """Cluster labels and the files they came from: bombcell's for the bombcell_* choices,
    else cluster_KSLabel.tsv overridden by cluster_group.tsv (phy curation). 'unsorted' in
    cluster_group.tsv (phy's "not curated", and what export_to_phy writes for every cluster)
    overrides nothing."""
    if units.startswith("bombcell_"):
        path = folder / _BOMBCELL_FILE
        if not path.is_file():
            raise KilomatchError(f"{where}: --units {units} needs bombcell's labels, but "
                                 f"{path.name} is missing (run bombcell on this sorting, or "
                                 "choose --units good, all_but_noise or all)")
        return _read_tsv_labels(path, where, (_BOMBCELL_COLUMN,)), [path.name]
    labels, used = {}, []
    for name in ("cluster_KSLabel.tsv", "cluster_group.tsv"):
        if (folder / name).is_file():
            labels.update({c: v for c, v in _read_tsv_labels(folder / name, where).items()
                           if v != "unsorted" or c not in labels})
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
            try:
                self.maps.append(np.memmap(f, dtype=dtype, mode="r", offset=offset,
                                           shape=(n, n_channels)))
            except OSError as err:   # unreadable: permissions, a file being written
                raise KilomatchError(f"{where}: {f} cannot be read ({err})") from None
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


def _raw_candidates(folder: Path, entry: str) -> list[tuple[Path, str]]:
    """Where to look for one raw file named in dat_path, each with why it is looked for there:
    as written (relative to the folder), by its name in the folder (a sorting moved from
    another machine), by its name one folder up (Kilosort 4 writes its results to
    <data folder>/kilosort4 by default)."""
    p = Path(entry)
    tries = [(p if p.is_absolute() else folder / p, "")]
    name = re.split(r"[\\/]", entry)[-1]
    if name:
        tries += [(folder / name, "a file of that name beside params.py"),
                  (folder.parent / name, "a file of that name in the folder above params.py, "
                   "where Kilosort 4's default results folder puts the data")]
    seen, out = set(), []
    for path, why in tries:
        if path not in seen:
            seen.add(path)
            out.append((path, why))
    return out


def _lone_raw_file(folder: Path) -> Path | None:
    """The one raw-looking file beside params.py (not Kilosort's whitened copy), or None."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file()
             and f.suffix.lower() in _RAW_SUFFIXES and f.name.lower() != _WHITENED_COPY]
    return files[0] if len(files) == 1 else None


def _find_raw(folder: Path, params: dict, where: str) -> tuple[list[Path] | None, str]:
    """The raw files, or None and what was tried. Every file not found where dat_path says is
    logged with where it was found instead."""
    dat_path = params.get("dat_path")
    if not dat_path or dat_path == "None":
        # export_to_phy writes dat_path = 'None' for a recording with no binary file of its own
        return None, "params.py names no dat_path"
    entries = [str(e) for e in (dat_path if isinstance(dat_path, (list, tuple)) else [dat_path])]
    found, tried = [], []
    for entry in entries:
        tries = _raw_candidates(folder, entry)
        hit = next(((t, why) for t, why in tries if t.is_file()), None)
        if hit is None and len(entries) == 1:
            lone = _lone_raw_file(folder)
            if lone is not None:
                hit = (lone, "the only raw file beside params.py")
        if hit is None:
            tried += [str(t) for t, _ in tries]
            return None, f"dat_path {entry!r} not found at " + ", ".join(tried)
        path, why = hit
        if path.name.lower() == _WHITENED_COPY:
            return None, (f"dat_path names {path}, Kilosort's whitened copy of the data, from "
                          "which mean waveforms would be whitened too; point dat_path to the "
                          "original recording")
        if why:
            log.warning("%s: params.py's dat_path %r does not exist here; using %s (%s)",
                        where, entry, path, why)
        found.append(path)
    return found, ""


def _raw_dtype(params: dict, where: str) -> np.dtype:
    """params.py's dtype of the raw samples: an integer or float type (int16 if not given)."""
    text = params.get("dtype", "int16")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        dtype = None
    if dtype is None or dtype.kind not in "iuf":
        raise KilomatchError(f"{where}: params.py dtype {text!r} is not a numeric sample type "
                             "(int16, uint16, int32, float32, ...)")
    return dtype


def _session_gain(gain_uv: float | None, raw_files: list[Path], chan_map: np.ndarray,
                  where: str) -> float:
    """uV per bit: the user's, else the one the acquisition software saved beside the raw
    file; logged with where it came from. No default: a wrong gain scales every amplitude."""
    if gain_uv is not None:
        log.info("%s: gain %g uV/bit, from --gain-uv", where, gain_uv)
        return gain_uv
    found = recorded_gain_uv(raw_files, chan_map, where)
    if found is None:
        raise KilomatchError(
            f"{where}: the gain of {raw_files[0]} is unknown: no SpikeGLX "
            f"{raw_files[0].with_suffix('.meta').name} beside it and no Open Ephys "
            "structure.oebin above it; pass --gain-uv (uV per bit; gain_uv= in Python), e.g. "
            "0.195 for Neuropixels 1.0 saved by Open Ephys")
    gain, source = found
    log.info("%s: gain %g uV/bit, from %s", where, gain, source)
    return gain


def _is_kilosort4(folder: Path) -> bool:
    return any((folder / name).exists() for name in _KS4_MARKERS)


def _load_plain(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise KilomatchError(f"{where}: {path.name} is not a readable .npy array ({err})") from None


def _load_vector(folder: Path, name: str, where: str) -> np.ndarray:
    """A per-spike or per-channel file: (n,) or Kilosort's (n, 1) -> (n,)."""
    return as_vector(_load_plain(folder / name, where), f"{where}: {name}", "n")


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
                      gain_uv: float | None, highpass_hz, n_before: int, n_after: int) -> SessionUnits:
    folder = Path(folder)
    where = session_name(index, folder)
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

    samples = _load_vector(folder, "spike_times.npy", where).astype(np.int64)
    templates_file = folder / "spike_templates.npy"
    spike_templates = (_load_vector(folder, templates_file.name, where).astype(np.int64)
                       if templates_file.is_file() else None)
    cluster_file = "spike_clusters.npy"
    if (folder / cluster_file).is_file():
        clusters = _load_vector(folder, cluster_file, where).astype(np.int64)
    else:
        cluster_file, clusters = templates_file.name, spike_templates
    if clusters.size != samples.size:
        raise KilomatchError(f"{where}: spike_times.npy has {samples.size} spikes but "
                             f"{cluster_file} has {clusters.size}")
    positions = _load_plain(folder / "channel_positions.npy", where).astype(np.float64)
    chan_map = _load_vector(folder, "channel_map.npy", where).astype(np.int64)
    if positions.ndim != 2 or positions.shape[1] < 2 or positions.shape[0] != chan_map.size:
        raise KilomatchError(f"{where}: channel_positions.npy has shape {positions.shape}, "
                             f"expected ({chan_map.size}, 2) like channel_map.npy")
    shanks = None
    if (folder / "channel_shanks.npy").is_file():
        shanks = _load_vector(folder, "channel_shanks.npy", where).astype(np.int64)
        if shanks.size != chan_map.size:
            raise KilomatchError(f"{where}: channel_shanks.npy has {shanks.size} entries for "
                                 f"{chan_map.size} channels")

    # Units by label.
    present = np.unique(clusters)
    if units == "all":
        ids = present
    else:
        labels, used = _phy_labels(folder, where, units)
        if not used:
            raise KilomatchError(f"{where}: neither cluster_group.tsv nor cluster_KSLabel.tsv: "
                                 f"units='{units}' needs labels; use units='all' to take every "
                                 "cluster")
        good = units.endswith("_good") or units == "good"
        if good:
            ids = np.array([c for c in present.tolist() if labels.get(c) == "good"], np.int64)
        else:
            ids = np.array([c for c in present.tolist() if labels.get(c) != "noise"], np.int64)
        empty = sorted(c for c, v in labels.items() if c not in set(present.tolist())
                       and (v == "good" if good else v != "noise"))
        if empty:
            log.warning("%s: clusters %s, labelled in %s, have no spike in the cluster file; "
                        "left out", where, name_items(empty), " / ".join(used))
        if ids.size == 0:
            hint = ""
            if set(labels.values()) <= {"unsorted"}:
                hint = (" (every label is 'unsorted', as spikeinterface's export_to_phy writes "
                        "them: use --units all, or curate in phy first)")
            raise no_unit(index, folder, f"none of its {present.size} clusters is "
                           + ("labelled 'good'" if good else "other than 'noise'")
                           + f" in {' / '.join(reversed(used))}{hint}")
    order = np.argsort(clusters, kind="stable")
    bounds = np.searchsorted(clusters[order], np.stack([ids, ids + 1]))
    spike_index = [np.sort(order[a:b]) for a, b in zip(bounds[0], bounds[1])]

    raw_files, why = _find_raw(folder, params, where)
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
        if gain_uv is None:
            raise KilomatchError(f"{where}: the raw recording is not reachable ({why}), so "
                                 "neither its SpikeGLX .meta nor its Open Ephys structure.oebin "
                                 "gives the gain: pass --gain-uv (uV per bit; gain_uv= in Python)")
        log.info("%s: gain %g uV/bit, from --gain-uv", where, gain_uv)
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
                            times, waves, _GEOMETRY_FILES)

    for key in ("n_channels_dat",):
        if not isinstance(params.get(key), int) or params[key] < 1:
            raise KilomatchError(f"{where}: params.py needs {key} (an integer >= 1), got "
                                 f"{params.get(key)!r}")
    n_dat = params["n_channels_dat"]
    dtype = _raw_dtype(params, where)
    offset = params.get("offset", 0) or 0
    if isinstance(offset, float) and offset.is_integer():
        offset = int(offset)
    if not isinstance(offset, int) or offset < 0:
        raise KilomatchError(f"{where}: params.py offset {offset!r} is not a byte count >= 0")
    if chan_map.min() < 0 or chan_map.max() >= n_dat:
        raise KilomatchError(f"{where}: channel_map.npy names rows up to {chan_map.max()} but "
                             f"the raw file has n_channels_dat={n_dat}")
    raw = _RawBinary(raw_files, dtype, n_dat, offset, where)
    if samples.size and (samples.min() < 0 or samples.max() >= raw.n_samples):
        raise KilomatchError(
            f"{where}: spike_times.npy runs to sample {samples.max()} (min {samples.min()}) but "
            f"the raw recording {', '.join(str(f) for f in raw_files)} holds {raw.n_samples} "
            "samples: a truncated or different raw file, or wrong n_channels_dat, dtype or "
            "offset in params.py")
    gain_uv = _session_gain(gain_uv, raw_files, chan_map, where)
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
        raise no_unit(index, folder, "no selected unit has a spike away from the recording's "
                       "ends")

    def waves():
        for s in chosen:
            yield _mean_from_raw(raw, s, chan_map, n_before, n_after, pad, sos, gain_uv)

    times = [samples[idx] / fs * 1000.0 for _, idx in keep]
    return SessionUnits(folder, positions[:, :2], shanks, [u for u, _ in keep],
                        n_before + n_after, times, waves, _GEOMETRY_FILES)


# import_phy's own arguments (the sessions' contents are checked by the reader).
_PHY_ARGS = (
    Spec("units", "str", "which clusters are units", choices=UNIT_CHOICES),
    Spec("n_spikes", "int", "spikes averaged per unit", min=1),
    Spec("n_before", "int", "samples before the spike", min=1),
    Spec("n_after", "int", "samples from the spike on", min=1),
    Spec("gain_uv", "float", "uV per bit of the raw file", min=0, min_exclusive=True),
)


def import_phy(sessions, out_dir, *, units: str = "good", n_spikes: int = 500, seed: int = 0,
               gain_uv: float | None = None, highpass_hz: float | None = 300.0,
               n_before: int | None = None, n_after: int | None = None,
               overwrite: bool = False) -> Path:
    """Kilosort / phy output folders (one per session, in session order) -> input folder.

    units: "good" (label good), "all_but_noise" (every cluster not labelled noise) or "all".
        Labels come from cluster_group.tsv (phy's curation) where it has one other than
        'unsorted', else from cluster_KSLabel.tsv. "bombcell_good" and
        "bombcell_all_but_noise" select on bombcell's cluster_bc_unitType.tsv instead (GOOD;
        anything but NOISE).
    Mean waveforms come from the raw recording named by dat_path in params.py (a path, or a
    list of files read as one recording; relative paths resolve against the folder). When the
    path does not exist (a sorting moved from another machine), a file of that name beside
    params.py, then in the folder above it (Kilosort 4's default layout), then the only raw
    file (.bin, .dat, .raw) beside params.py is used, with a warning naming it. The file is memory-mapped as n_channels_dat interleaved channels of dtype after
    offset bytes; channel_map.npy picks the sorted channels' rows and channel_positions.npy
    gives their positions. For each unit up to n_spikes spikes are drawn at random (seeded by
    seed and the cluster id, so a unit's waveform does not depend on the others), the windows
    n_before + n_after samples around each spike (default 20 + 41 = 61, Kilosort's template
    length with the trough at sample 20) are averaged, high-pass filtered at highpass_hz
    (3rd-order Butterworth, zero phase, on a window three times as wide; skipped when params.py
    says hp_filtered = True, or with highpass_hz=None), the baseline (median) is removed and
    the result is scaled to uV by gain_uv.
    gain_uv: uV per bit, for every session. None (default): each session's gain is read from
        the SpikeGLX .meta beside its raw file or from Open Ephys's structure.oebin
        (:mod:`kilomatch.formats.raw_gain`), and the log says which; a session with neither
        is an error asking for gain_uv (no silent default: a wrong gain scales all amplitudes).
    Spike times: spike_times.npy (samples) / sample_rate * 1000 ms, every spike of the unit.
    Without a reachable raw file: Kilosort 4 templates (for units made of several templates,
    their spike-weighted mean), unwhitened with the whitening matrix KS4 saved
    (whitening_mat_dat.npy), with a loud warning; Kilosort 2.5/3 (or unknown) outputs are
    refused, see the module docstring.
    Returns the output folder; refuses a non-empty one unless overwrite=True.
    """
    n_before = _KS_NT0MIN if n_before is None else n_before
    n_after = _KS_NT0 - _KS_NT0MIN if n_after is None else n_after
    args = dict(units=units, n_spikes=n_spikes, n_before=n_before, n_after=n_after,
                gain_uv=gain_uv)
    check_table(args, [s for s in _PHY_ARGS if args[s.name] is not None],
                "Bad import_phy arguments")
    paths = check_session_list(sessions, "import_phy")
    read = [_read_phy_session(p, k, units=units, n_spikes=int(n_spikes), seed=int(seed),
                              gain_uv=None if gain_uv is None else float(gain_uv),
                              highpass_hz=highpass_hz,
                              n_before=int(n_before), n_after=int(n_after))
            for k, p in enumerate(paths, 1)]
    return write_input_folder(read, out_dir, overwrite)
