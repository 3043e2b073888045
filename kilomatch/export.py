"""Write results: plain arrays only, atomically, byte-for-byte reproducible.

Each file is written under a temporary name in the output folder and renamed into place, so a
killed run never leaves a half-written file under a real name. ``Output.npz`` is written last:
its presence marks a complete run. ``.npz`` archives carry a fixed timestamp so that two runs
of the same input give identical bytes (numpy's savez stamps the current time).
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

# Every result file kilomatch writes; an earlier run's copies are removed before a new run.
RESULT_FILES = (
    "auto_corr.npy", "isi.npy", "peth.npy", "waveforms.npy", "waveforms_corrected.npy",
    "waveform_channels.npy", "waveform_channels_corrected.npy", "locations.npy",
    "IdxCluster.npy", "ClusterMatrix.npy", "MatchedPairs.npy", "SimilarityWeights.npy",
    "SimilarityThreshold.npy", "SimilarityMatrix.npy", "motion.npy", "motion_linear.npy",
    "motion_ci.npy", "CandidatePairs.npz", "ClusteringResults.npz", "CurationResults.npz",
    "units.csv", "kilomatch_settings.json", "Output.npz",
)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _atomic_write(path: Path, writer) -> None:
    """Call writer(file) on a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _plain(value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError("refusing to write a Python-object array")  # would need allow_pickle
    return arr


def save_npy(path: Path, value) -> None:
    arr = _plain(value)
    _atomic_write(Path(path), lambda f: np.lib.format.write_array(f, arr, allow_pickle=False))


def save_npz(path: Path, arrays: dict) -> None:
    """Compressed .npz with fixed timestamps (deterministic bytes), loadable by np.load."""
    def writer(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, _plain(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
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
    n = len(next(iter(columns.values())))
    cols = [np.asarray(columns[k]) for k in names]
    for r in range(n):
        w.writerow([f"{c[r]:.3f}" if c.dtype.kind == "f" else str(c[r]) for c in cols])
    save_text(path, buf.getvalue())


def clear_previous(folder: Path) -> None:
    """Remove an earlier run's results (Output.npz first, so nothing looks complete)."""
    folder = Path(folder)
    for name in ("Output.npz",) + RESULT_FILES:
        path = folder / name
        if path.is_file():
            path.unlink()
    for path in folder.glob("MotionRound*.npz"):
        path.unlink()
    for path in folder.glob(".*.tmp*"):
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


def write_all(result) -> list:
    """Write every result file of a :class:`kilomatch.pipeline.Result`; Output.npz last.

    Returns the paths written.
    """
    s, units, final = result.settings, result.units, result.final
    folder = Path(s.output_folder)
    n = units.waveforms.shape[0]
    written = []

    def put(name, value):
        save_npy(folder / name, value)
        written.append(folder / name)

    wc = s.waveformCorrection
    from .features import nearest_channels  # local: keeps export importable on its own
    locs = result.data.channel_locations
    ch_raw = nearest_channels(locs, units.peak_channel, wc.n_nearest_channels)
    ch_corr = final.channels_corrected[0]
    rows = np.arange(n)[:, None]
    put("auto_corr.npy", units.acg.astype(np.float32))
    put("isi.npy", units.isi.astype(np.float32))
    if units.peth is not None:
        put("peth.npy", units.peth.astype(np.float32))
    put("waveforms.npy", units.waveforms[rows, ch_raw])
    put("waveforms_corrected.npy", final.waveforms_corrected[0][rows, ch_corr])
    put("waveform_channels.npy", ch_raw)
    put("waveform_channels_corrected.npy", ch_corr)
    put("locations.npy", units.locations)
    put("IdxCluster.npy", _column(result.idx_cluster))
    put("MatchedPairs.npy", result.matched_pairs)
    cl = final.clustering
    put("SimilarityWeights.npy", _column(cl.weights))
    put("SimilarityThreshold.npy", np.array([[cl.threshold]]))
    motion = result.motion
    put("motion.npy", _column(motion.displacement()))
    put("motion_ci.npy", np.column_stack([motion.ci_low, motion.ci_high]))
    if s.waveformCorrection.linear_correction:
        put("motion_linear.npy", np.column_stack([motion.slope, motion.offset]))
    names = np.array(final.feature_names)
    same = final.clustering.labels[final.pairs]
    idx = result.idx_cluster
    save_npz(folder / "CandidatePairs.npz", {
        "pairs": final.pairs.astype(np.int64),
        "feature_names": names,
        "features": final.pair_features.astype(np.float32),
        "similarity": cl.similarity.astype(np.float32),
        "good_match": cl.good,
        "same_cluster_clustering": (same[:, 0] == same[:, 1]) & (same[:, 0] >= 0),
        "same_cluster_final": (idx[final.pairs[:, 0]] == idx[final.pairs[:, 1]])
        & (idx[final.pairs[:, 0]] > 0),
    })
    written.append(folder / "CandidatePairs.npz")
    if n <= s.dense_output_max_units:
        put("ClusterMatrix.npy", (idx[:, None] == idx[None, :]) & (idx[:, None] > 0))
        put("SimilarityMatrix.npy", dense_pair_matrix(n, final.pairs, cl.similarity))
    else:
        import logging
        logging.getLogger("kilomatch").info(
            "%d units > dense_output_max_units (%d): ClusterMatrix.npy and SimilarityMatrix.npy "
            "not written; the pairs are in CandidatePairs.npz and MatchedPairs.npy", n,
            s.dense_output_max_units)
    rounds = result.rounds
    clustering = {
        "IdxCluster": _hdbscan_ids(cl.labels),
        "feature_names": names,
        "weights": cl.weights,
        "threshold": np.float64(cl.threshold),
        "n_iter": np.int64(cl.n_iter),
        "converged": np.bool_(cl.converged),
        "corrected_depth": final.corrected_depth,
        "motion_rounds_displacement": np.array([m.displacement() for _, m in rounds]).reshape(
            len(rounds), result.data.n_sessions),
        "motion_rounds_good_matches": np.array([int(r.clustering.good.sum()) for r, _ in rounds],
                                               dtype=np.int64),
    }
    save_npz(folder / "ClusteringResults.npz", clustering)
    written.append(folder / "ClusteringResults.npz")
    if s.save_intermediate_results:
        for k, (r, m) in enumerate(rounds, 1):
            save_npz(folder / f"MotionRound{k}.npz", {
                "feature_names": np.array(r.feature_names), "pairs": r.pairs,
                "features": r.pair_features.astype(np.float32),
                "similarity": r.clustering.similarity.astype(np.float32),
                "good_match": r.clustering.good, "IdxCluster": _hdbscan_ids(r.clustering.labels),
                "weights": r.clustering.weights, "threshold": np.float64(r.clustering.threshold),
                "motion": m.displacement(), "motion_ci": np.column_stack([m.ci_low, m.ci_high])})
    from .curation import REASONS
    cur = result.curated
    save_npz(folder / "CurationResults.npz", {
        "IdxCluster_before": _hdbscan_ids(cl.labels),
        "IdxCluster_after_conflicts": _hdbscan_ids(cur.labels_after_conflicts),
        "IdxCluster": idx,
        "removed_pairs": cur.removed_pairs,
        "removed_reason": cur.removed_reason,
        "reason_names": np.array(REASONS),
    })
    written.append(folder / "CurationResults.npz")
    save_units_csv(folder / "units.csv", {
        "unit": np.arange(n), "session": result.data.session_index, "cluster": idx,
        "x": units.locations[:, 0], "y": units.locations[:, 1], "z": units.locations[:, 2],
        "amplitude": units.amplitude, "peak_channel": units.peak_channel,
        "corrected_y": final.corrected_depth})
    written.append(folder / "units.csv")
    save_json(folder / "kilomatch_settings.json", s.to_dict())
    written.append(folder / "kilomatch_settings.json")
    # Last: its presence marks a complete run.
    save_npz(folder / "Output.npz", {
        "IdxCluster": idx, "MatchedPairs": result.matched_pairs,
        "SessionIndex": result.data.session_index, "Locations": units.locations,
        "CorrectedDepth": final.corrected_depth, "Motion": motion.displacement(),
        "MotionCI": np.column_stack([motion.ci_low, motion.ci_high]),
        "SimilarityWeights": cl.weights, "SimilarityThreshold": np.float64(cl.threshold),
        "FeatureNames": names, "NumUnits": np.int64(n),
        "NumSessions": np.int64(result.data.n_sessions),
        "NumClusters": np.int64(idx.max() if (idx > 0).any() else 0)})
    written.append(folder / "Output.npz")
    return written


def _hdbscan_ids(labels: np.ndarray) -> np.ndarray:
    """0-based HDBSCAN labels -> 1..K with -1 kept, numbered by lowest unit."""
    from .clustering import renumber
    return renumber(labels, start=1)


def save_figures(figures: dict, folder: Path, dpi: int = 150) -> list:
    """Save matplotlib figures as PNG (atomically) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = folder / f"{name}.png"
        _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                  metadata={"Software": None}))
        paths.append(path)
    return paths
