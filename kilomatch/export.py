"""Write results: plain arrays only, atomically, byte-for-byte reproducible.

Each file is written under a temporary name in the output folder and renamed into place, so a
killed run never leaves a half-written file under a real name. ``Output.npz`` is written last:
its presence marks a complete run. ``.npz`` archives carry a fixed timestamp so that two runs
of the same input give identical bytes (numpy's savez stamps the current time).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import logging
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .assemble import RunArrays
from .atomic import FIGURE_DPI, is_temporary, save_png
from .atomic import atomic_write as _atomic_write  # noqa: F401  (tests and review use it)
from .curation import REASONS
from .errors import KilomatchError
from .features import acg_lags
from .formats.folder import write_npy_header
from .results import Result
from .sorter_splits import same_session_pairs_in_clusters

log = logging.getLogger("kilomatch")

# Every result file kilomatch writes; an earlier run's copies are removed before a new run.
RESULT_FILES = (
    "auto_corr.npy", "isi.npy", "peth.npy", "waveforms.npy", "waveforms_corrected.npy",
    "waveform_channels.npy", "waveform_channels_corrected.npy", "locations.npy",
    "channel_locations.npy",
    "IdxCluster.npy", "ClusterMatrix.npy", "MatchedPairs.npy", "SimilarityWeights.npy",
    "SimilarityThreshold.npy", "SimilarityMatrix.npy", "motion.npy", "motion_linear.npy",
    "motion_depth.npy", "motion_depth_um.npy",
    "motion_ci.npy", "CandidatePairs.npz", "ClusteringResults.npz", "CurationResults.npz",
    "units.csv", "MatchTable.csv", "kilomatch_settings.json", "tracked_neurons.csv",
    "Output.npz",
)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _plain(value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError("refusing to write a Python-object array")  # would need allow_pickle
    return arr


def save_npy(path: Path, value) -> None:
    """``value`` an array, or an object with ``shape`` and ``blocks()`` (yielding (start,
    float32 rows) in order: channel_windows.StoredWaveforms), written a block at a time with
    the bytes the whole array would give."""
    if hasattr(value, "blocks"):
        _atomic_write(Path(path), lambda f: _write_blocks(f, value))
        return
    arr = _plain(value)
    _atomic_write(Path(path), lambda f: np.lib.format.write_array(f, arr, allow_pickle=False))


def _write_blocks(f, source) -> None:
    shape = (source.n_units,) + tuple(source.channels.shape[1:]) + (source.shape[2],)
    write_npy_header(f, shape, np.float32)
    for _, block in source.blocks():
        f.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())


# Float arrays larger than this are stored in .npz files without compression: their bits
# barely compress (by ~7%), and deflating them was most of the export's time at 10^5 units.
STORE_FLOATS_OVER_BYTES = 1 << 20
# zlib level of the compressed arrays: the candidate pairs' indices deflate at level 1 to
# 1.3 times the default level's size in a quarter of its time (16 s of the export at 10^5
# units, 28 M pairs)
DEFLATE_LEVEL = 1


def _deflate_level(info: zipfile.ZipInfo, level: int) -> None:
    """Set the zlib level of an entry opened for writing from a ZipInfo (zipfile reads it
    from the ZipInfo, not from the archive's compresslevel; renamed in Python 3.13)."""
    for name in ("compress_level", "_compresslevel"):
        try:
            setattr(info, name, level)
            return
        except AttributeError:
            continue


def save_npz(path: Path, arrays: dict) -> None:
    """.npz with fixed timestamps (deterministic bytes), loadable by np.load; integer, boolean
    and small arrays compressed. Each array is streamed into the archive, not copied first."""
    def writer(f):
        with zipfile.ZipFile(f, "w", allowZip64=True) as zf:
            for name, value in arrays.items():
                arr = _plain(value)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                _deflate_level(info, DEFLATE_LEVEL)
                if arr.dtype.kind in "fc" and arr.nbytes > STORE_FLOATS_OVER_BYTES:
                    info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=arr.nbytes > 1 << 30) as entry:
                    np.lib.format.write_array(entry, arr, allow_pickle=False)
    _atomic_write(Path(path), writer)


def save_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def save_json(path: Path, value) -> None:
    save_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def save_units_csv(path: Path, columns: dict) -> None:
    """Table with one row per unit; floats with 3 decimals."""
    names = list(columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    # Column by column on Python values (tolist): the same text as formatting numpy
    # scalars, several times faster (10^5 rows per file at 10^5 units).
    cells = []
    for k in names:
        c = np.asarray(columns[k])
        values = c.tolist()
        cells.append([f"{v:.3f}" for v in values] if c.dtype.kind == "f"
                     else [str(v) for v in values])
    w.writerows(zip(*cells))
    save_text(path, buf.getvalue())


def split_with(idx_cluster: np.ndarray, session: np.ndarray) -> np.ndarray:
    """(N,) str: for each unit, the other units of its session in its final cluster (kept as
    one neuron split by the sorter), joined by ';'; '' for every other unit. idx_cluster (N,)
    > 0 tracked, -1 unmatched; session (N,)."""
    idx = np.asarray(idx_cluster).reshape(-1)
    out = np.full(idx.size, "", dtype=object)
    pairs = same_session_pairs_in_clusters(np.where(idx > 0, idx, -1), session)
    for u in np.unique(pairs):
        others = np.concatenate([pairs[pairs[:, 0] == u, 1], pairs[pairs[:, 1] == u, 0]])
        out[u] = ";".join(str(int(v)) for v in np.sort(others))
    return out


def duplicate_of(duplicates) -> np.ndarray:
    """(N,) str: for each unit that duplicates another (duplicate_units.Duplicates of the
    run), the unit of its group with the most spikes; '' for every other unit."""
    twin = duplicates.twin
    out = np.full(twin.size, "", dtype=object)
    out[twin >= 0] = [str(int(v)) for v in twin[twin >= 0]]
    return out


def clear_previous(folder: Path) -> None:
    """Remove an earlier run's results (Output.npz first, so nothing looks complete)."""
    folder = Path(folder)
    paths = [folder / name for name in ("Output.npz",) + RESULT_FILES]
    paths += [*folder.glob("MotionRound*.npz"), *folder.glob("Figures/Shank*/*.png")]
    # a review page and curated results describe the earlier run's clusters
    paths += [folder / "curated" / "Output.npz", *folder.glob("curated/*.np[yz]"),
              *folder.glob("curated/*.csv"), *folder.glob("report/index.html"),
              *folder.glob("report/img/*.png")]
    # only what atomic_write leaves when a run is stopped: a user's '.notes.tmp.txt' stays
    paths += [path for path in folder.glob(".*.tmp*") if is_temporary(path.name)]
    for path in paths:
        if path.is_file() or path.is_symlink():  # a folder of such a name is not ours
            path.unlink()


def _column(x) -> np.ndarray:
    return np.asarray(x).reshape(-1, 1)


def dense_pair_matrix(n_units: int, pairs: np.ndarray, values, fill=np.nan,
                      dtype=np.float32) -> np.ndarray:
    """(N, N) symmetric matrix of a per-pair value; ``fill`` where no pair is listed."""
    m = np.full((n_units, n_units), fill, dtype=dtype)
    m[pairs[:, 0], pairs[:, 1]] = values
    m[pairs[:, 1], pairs[:, 0]] = values
    return m


def write_all(result: Result, arrays: RunArrays) -> list:
    """Write every result file of a run; Output.npz last. Returns the paths written.

    ``result`` is the run (:class:`kilomatch.results.Result`), ``arrays`` its result arrays
    in unit order (:func:`kilomatch.assemble.assemble`). Per-unit files cover every unit in
    input order; with several shanks, per-shank values (motion, weights, threshold) have a last
    axis of length n_shanks.
    """
    with _FileWriters(WRITE_THREADS) as write:
        return _write_all(result, arrays, write)


# Result files written at once by write_all: a writer waits mostly on zlib and the disk, with
# the GIL released (at 10^5 units the export took 39 s one file after the other).
WRITE_THREADS = 2


class _FileWriters:
    """Calls ``write(func, *args)`` in ``threads`` threads, at most that many files at a time:
    each file's arrays are made when it is handed over, so the bound also bounds the copies
    held at once. Leaving the block waits for every file; a writer's error is raised there
    or at the next hand-over."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self.pending = collections.deque()

    def __enter__(self):
        self.pool = ThreadPoolExecutor(self.threads)
        return self

    def __call__(self, func, *args) -> None:
        while len(self.pending) >= self.threads:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(func, *args))

    def wait(self) -> None:
        """Wait until every file handed over is written."""
        while self.pending:
            self.pending.popleft().result()

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return False


def _write_all(result: Result, arrays: RunArrays, write: _FileWriters) -> list:
    settings, units, a = result.settings, result.units, arrays
    multi = a.n_shanks > 1
    folder = Path(settings.output_folder)
    n = len(result.idx_cluster)
    written = []

    def put(name, value):
        write(save_npy, folder / name, value)
        written.append(folder / name)

    def put_npz(name, values):
        write(save_npz, folder / name, values)
        written.append(folder / name)

    put("auto_corr.npy", units.acg.astype(np.float32))
    put("isi.npy", units.isi.astype(np.float32))
    if units.peth is not None:
        put("peth.npy", units.peth.astype(np.float32))
    put("waveforms.npy", a.waveforms_to_write())
    put("waveforms_corrected.npy", a.waveforms_corrected)
    put("waveform_channels.npy", a.waveform_channels)
    put("waveform_channels_corrected.npy", a.waveform_channels_corrected)
    put("locations.npy", units.locations)
    put("channel_locations.npy", result.data.channel_locations)
    idx = result.idx_cluster
    put("IdxCluster.npy", _column(idx))
    put("MatchedPairs.npy", result.matched_pairs)

    put("SimilarityWeights.npy", a.weights if multi else _column(a.weights))
    put("SimilarityThreshold.npy", a.thresholds[None, :])
    put("motion.npy", a.motion if multi else _column(a.motion))
    threshold = a.thresholds if multi else np.float64(a.thresholds[0])
    put("motion_ci.npy", a.motion_ci)
    if a.motion_linear is not None:
        put("motion_linear.npy", a.motion_linear)
    if a.motion_depth is not None:
        put("motion_depth.npy", a.motion_depth)
        put("motion_depth_um.npy", a.motion_depth_um)

    before = a.idx_cluster_clustering
    candidate = {
        "pairs": a.pairs.astype(np.int64),
        "feature_names": a.feature_names,
        "features": a.pair_similarities.astype(np.float32),  # the file's key since 0.1
        "similarity": a.similarity.astype(np.float32),
        "good_match": a.good_match,
        "same_cluster_clustering": a.same_cluster_clustering,
        "same_cluster_final": a.same_cluster_final,
        "probability": a.probability,
        "pair_probability": a.pair_probability,
    }
    if multi:
        candidate["shank"] = a.pair_shank
    put_npz("CandidatePairs.npz", candidate)
    if n <= settings.dense_output_max_units:
        put("ClusterMatrix.npy", (idx[:, None] == idx[None, :]) & (idx[:, None] > 0))
        put("SimilarityMatrix.npy", dense_pair_matrix(n, a.pairs, a.similarity))
    else:
        log.info("%d units > dense_output_max_units (%d): ClusterMatrix.npy and "
                 "SimilarityMatrix.npy not written; the pairs are in CandidatePairs.npz and "
                 "MatchedPairs.npy", n, settings.dense_output_max_units)

    clustering = {
        "IdxCluster": before,
        "feature_names": a.feature_names,
        "weights": a.weights,
        "threshold": threshold,
        "n_iter": a.n_iter,
        "converged": a.converged,
        "corrected_depth": a.corrected_depth,
    }
    for shank, displacement, good in zip(a.shank_ids, a.round_motion, a.round_good_matches):
        suffix = f"_shank{shank}" if multi else ""
        clustering["motion_rounds_displacement" + suffix] = displacement
        clustering["motion_rounds_good_matches" + suffix] = good
    if multi:
        clustering["shank_ids"] = a.shank_ids
    put_npz("ClusteringResults.npz", clustering)
    if settings.save_intermediate_results:
        for shank, rounds in zip(a.shank_ids, a.rounds):
            suffix = f"_Shank{shank}" if multi else ""
            for k, r in enumerate(rounds, 1):
                put_npz(f"MotionRound{k}{suffix}.npz", {
                    "feature_names": np.array(r.feature_names), "pairs": r.pairs,
                    "features": r.pair_similarities.astype(np.float32),
                    "similarity": r.similarity.astype(np.float32),
                    "good_match": r.good_match,
                    "IdxCluster": r.idx_cluster,
                    "weights": r.weights,
                    "threshold": np.float64(r.threshold),
                    "motion": r.motion,
                    "motion_ci": r.motion_ci})
    put_npz("CurationResults.npz", {
        "IdxCluster_before": before,
        "IdxCluster_after_conflicts": a.idx_cluster_after_conflicts,
        "IdxCluster_before_join": a.idx_cluster_before_join,
        "IdxCluster_before_in_turn": a.idx_cluster_before_in_turn,
        "IdxCluster": idx,
        "removed_pairs": a.removed_pairs.astype(np.int64),
        "removed_reason": a.removed_reason.astype(np.int8),
        "removed_probability": a.removed_probability.astype(np.float32),
        "removed_distance_ratio": a.removed_distance_ratio.astype(np.float32),
        "kept_pairs": a.kept_pairs.astype(np.int64),
        "cut_probability": a.cut_probability if multi else np.float64(a.cut_probability[0]),
        "reason_names": np.array(REASONS),
        "split_threshold": a.split_thresholds if multi else np.float64(a.split_thresholds[0]),
        "split_on": a.split_on if multi else a.split_on[0],
        "amplitude_step": a.amplitude_steps if multi else np.float64(a.amplitude_steps[0]),
        # the sorter-split test of every pair of units of one session that shared a cluster
        # before curation, and the pairs kept together in a final cluster as one neuron
        "sorter_split_tested": a.splits.pairs.astype(np.int64),
        "sorter_split_coincidences": a.splits.coincidences.astype(np.int64),
        "sorter_split_expected": a.splits.expected.astype(np.float64),
        "sorter_split_posterior": a.splits.posterior.astype(np.float64),
        "sorter_split": a.splits.is_split.astype(bool),
        "sorter_split_pairs": same_session_pairs_in_clusters(
            np.where(idx > 0, idx, -1), result.data.session_index),
        # the same test of the pairs of one session as alike as a good match: those judged
        # one neuron were not counted as known non-matches by the match probability
        "alike_split_tested": a.alike_splits.pairs.astype(np.int64),
        "alike_split_coincidences": a.alike_splits.coincidences.astype(np.int64),
        "alike_split_expected": a.alike_splits.expected.astype(np.float64),
        "alike_split_posterior": a.alike_splits.posterior.astype(np.float64),
        "alike_split": a.alike_splits.is_split.astype(bool),
        # the shared-spike test of the pairs of one session (kilomatch.duplicate_units),
        # reported for the user: no step of the tracking uses it
        "duplicate_tested": a.duplicates.pairs.astype(np.int64),
        "duplicate_shared": a.duplicates.shared.astype(np.float64),
        "duplicate": a.duplicates.is_duplicate.astype(bool),
    })
    table = {"unit": np.arange(n), "session": result.data.session_index, "cluster": idx,
             "x": units.locations[:, 0], "y": units.locations[:, 1], "z": units.locations[:, 2],
             "amplitude": units.amplitude, "peak_channel": units.peak_channel,
             "corrected_y": a.corrected_depth, "match_confidence": a.match_confidence,
             "split_with": split_with(idx, result.data.session_index),
             "duplicate_of": duplicate_of(a.duplicates)}
    if units.firing_rate is not None:  # what autoCuration.rate_split reads (x 1000)
        table["firing_rate_hz"] = 1000.0 * units.firing_rate
    if units.noise_share is not None:  # what the match probability weighed Waveform against
        table["noise_share"] = units.noise_share
    if units.footprint_amplitude is not None:  # what the curation's amplitude steps compare
        table["footprint_amplitude"] = units.footprint_amplitude
    if multi:
        table["shank"] = units.shank
    save_units_csv(folder / "units.csv", table)
    written.append(folder / "units.csv")
    if a.match_table is not None:
        save_units_csv(folder / "MatchTable.csv", a.match_table)
        written.append(folder / "MatchTable.csv")
    save_json(folder / "kilomatch_settings.json", settings.to_dict())
    written.append(folder / "kilomatch_settings.json")

    # One row per tracked neuron (kilomatch.tracked), with the sorter's ids when imported.
    from .tracked import write_tracked_neurons
    written.append(write_tracked_neurons(folder, idx, result.data.session_index,
                                         settings.path_to_data, a.duplicates.twin))

    output = {
        "IdxCluster": idx, "MatchedPairs": result.matched_pairs,
        "SessionIndex": result.data.session_index, "Locations": units.locations,
        "CorrectedDepth": a.corrected_depth, "Motion": a.motion,
        "MotionCI": a.motion_ci,
        "SimilarityWeights": a.weights,
        "SimilarityThreshold": threshold,
        "FeatureNames": a.feature_names, "NumUnits": np.int64(n),
        "NumSessions": np.int64(result.data.n_sessions),
        "NumClusters": np.int64(idx.max() if (idx > 0).any() else 0)}
    if multi:
        output["Shank"] = units.shank
        output["ShankIds"] = a.shank_ids
    write.wait()
    save_npz(folder / "Output.npz", output)  # last: its presence marks a complete run
    written.append(folder / "Output.npz")
    return written


def save_figures(figures: dict, folder: Path, dpi: int = FIGURE_DPI) -> list:
    """Save matplotlib figures as PNG (atomically) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = folder / f"{name}.png"
        save_png(fig, path, dpi)
        paths.append(path)
    return paths


def load_output(folder) -> dict:
    """Read a finished run's output folder into a dict of arrays (for plots and notebooks).

    Keys: idx_cluster (N,), session (N,), corrected_depth (N,), locations (N, 3),
    waveforms, waveforms_corrected (N, n, T), waveform_channels(_corrected) (N, n),
    channel_locations (C, 2), auto_corr (N, L), acg_lags (L,) ms, peth (N, P) or None,
    pairs (P, 2) and similarity (P,), settings (dict).
    """
    folder = Path(folder)
    if not (folder / "Output.npz").is_file():
        raise KilomatchError(f"{folder} holds no finished kilomatch run (no Output.npz)")
    load = lambda name: np.load(folder / name, allow_pickle=False)  # noqa: E731
    settings = json.loads((folder / "kilomatch_settings.json").read_text())
    with np.load(folder / "Output.npz", allow_pickle=False) as z:
        out = {"idx_cluster": z["IdxCluster"], "session": z["SessionIndex"],
               "corrected_depth": z["CorrectedDepth"], "locations": z["Locations"]}
    with np.load(folder / "CandidatePairs.npz", allow_pickle=False) as z:
        out["pairs"], out["similarity"] = z["pairs"], z["similarity"]
    for name in ("waveforms", "waveforms_corrected", "waveform_channels",
                 "waveform_channels_corrected", "channel_locations", "auto_corr"):
        out[name] = load(f"{name}.npy")
    out["peth"] = load("peth.npy") if (folder / "peth.npy").is_file() else None
    out["acg_lags"] = acg_lags(settings["autoCorr"]["window"], settings["autoCorr"]["binwidth"])
    out["settings"] = settings
    return out
