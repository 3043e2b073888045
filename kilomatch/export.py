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
    "channel_locations.npy",
    "IdxCluster.npy", "ClusterMatrix.npy", "MatchedPairs.npy", "SimilarityWeights.npy",
    "SimilarityThreshold.npy", "SimilarityMatrix.npy", "motion.npy", "motion_linear.npy",
    "motion_ci.npy", "CandidatePairs.npz", "ClusteringResults.npz", "CurationResults.npz",
    "units.csv", "MatchTable.csv", "kilomatch_settings.json", "Output.npz",
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
    for path in folder.glob("Figures/Shank*/*.png"):
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


def _stack_shanks(values: list) -> np.ndarray:
    """Per-shank arrays side by side on a last axis; one shank keeps its own shape."""
    return values[0] if len(values) == 1 else np.stack(values, axis=-1)


def _global_ids(labels_by_part: list, parts: list, n_units: int) -> np.ndarray:
    """Per-shank cluster labels (>= 0 clusters, -1 none) -> global 1..K, unique across shanks."""
    from .clustering import combine_labels
    return combine_labels(labels_by_part, [p.units for p in parts], n_units)


def write_all(result) -> list:
    """Write every result file of a :class:`kilomatch.pipeline.Result`; Output.npz last.

    Per-unit files cover every unit in input order. With several shanks, per-shank values
    (motion, weights, threshold) get a last axis of length n_shanks. Returns the paths written.
    """
    from .curation import REASONS
    from .features import nearest_channels
    from .linking import match_table
    from .pipeline import shank_parts
    s, units = result.settings, result.units
    parts = shank_parts(result)
    multi = len(parts) > 1
    folder = Path(s.output_folder)
    n = units.waveforms.shape[0]
    n_near = s.waveformCorrection.n_nearest_channels
    written = []

    def put(name, value):
        save_npy(folder / name, value)
        written.append(folder / name)

    def put_npz(name, arrays):
        save_npz(folder / name, arrays)
        written.append(folder / name)

    # Per-unit values that each shank computed on its own units, put back in unit order.
    locs = result.data.channel_locations
    ch_raw = nearest_channels(locs, units.peak_channel, n_near)
    ch_corr = np.zeros((n, min(n_near, len(locs))), np.int64)
    wf_corr = np.zeros((n, ch_corr.shape[1], units.waveforms.shape[2]), np.float32)
    depth = np.zeros(n)
    for part in parts:
        final = part.result.final
        ch = final.channels_corrected[0]
        ch_corr[part.units] = ch
        wf_corr[part.units] = final.waveforms_corrected[0].on(np.arange(len(ch)), ch)
        depth[part.units] = final.corrected_depth
    put("auto_corr.npy", units.acg.astype(np.float32))
    put("isi.npy", units.isi.astype(np.float32))
    if units.peth is not None:
        put("peth.npy", units.peth.astype(np.float32))
    put("waveforms.npy", units.waveforms.on(np.arange(n), ch_raw))
    put("waveforms_corrected.npy", wf_corr)
    put("waveform_channels.npy", ch_raw)
    put("waveform_channels_corrected.npy", ch_corr)
    put("locations.npy", units.locations)
    put("channel_locations.npy", locs)
    idx = result.idx_cluster
    put("IdxCluster.npy", _column(idx))
    put("MatchedPairs.npy", result.matched_pairs)

    clusterings = [p.result.final.clustering for p in parts]
    motions = [p.result.motion for p in parts]
    weights = _stack_shanks([c.weights for c in clusterings])
    thresholds = np.array([c.threshold for c in clusterings])
    put("SimilarityWeights.npy", weights if multi else _column(weights))
    put("SimilarityThreshold.npy", thresholds[None, :])
    displacement = _stack_shanks([m.displacement() for m in motions])
    put("motion.npy", displacement if multi else _column(displacement))
    motion_ci = _stack_shanks([np.column_stack([m.ci_low, m.ci_high]) for m in motions])
    threshold = thresholds if multi else np.float64(thresholds[0])
    put("motion_ci.npy", motion_ci)
    if s.waveformCorrection.linear_correction:
        put("motion_linear.npy", _stack_shanks([np.column_stack([m.slope, m.offset])
                                                for m in motions]))

    curated = [p.result.curated for p in parts]
    # Candidate pairs of every shank, in global unit ids.
    names = np.array(parts[0].result.final.feature_names)
    pairs = np.vstack([p.units[p.result.final.pairs] for p in parts]).reshape(-1, 2)
    similarity = np.concatenate([c.similarity for c in clusterings])
    # Clusters before curation: those of the probability when it made them.
    made = [k.links is not None and k.links.made_clusters for k in curated]
    before = _global_ids([k.links.labels if m else c.labels
                          for c, k, m in zip(clusterings, curated, made)], parts, n)
    same_before = (before[pairs[:, 0]] == before[pairs[:, 1]]) & (before[pairs[:, 0]] > 0)
    candidate = {
        "pairs": pairs.astype(np.int64),
        "feature_names": names,
        "features": np.vstack([p.result.final.pair_features for p in parts]).astype(np.float32),
        "similarity": similarity.astype(np.float32),
        "good_match": np.concatenate([c.good for c in clusterings]),
        "same_cluster_clustering": same_before,
        "same_cluster_final": (idx[pairs[:, 0]] == idx[pairs[:, 1]]) & (idx[pairs[:, 0]] > 0),
    }
    candidate["probability"] = np.concatenate([
        np.full(len(p.result.final.pairs), np.nan) if c.links is None
        else c.links.candidate_probability for p, c in zip(parts, curated)]).astype(np.float32)
    if multi:
        candidate["shank"] = np.concatenate([np.full(len(p.result.final.pairs), p.shank)
                                             for p in parts])
    put_npz("CandidatePairs.npz", candidate)
    if n <= s.dense_output_max_units:
        put("ClusterMatrix.npy", (idx[:, None] == idx[None, :]) & (idx[:, None] > 0))
        put("SimilarityMatrix.npy", dense_pair_matrix(n, pairs, similarity))
    else:
        import logging
        logging.getLogger("kilomatch").info(
            "%d units > dense_output_max_units (%d): ClusterMatrix.npy and SimilarityMatrix.npy "
            "not written; the pairs are in CandidatePairs.npz and MatchedPairs.npy", n,
            s.dense_output_max_units)

    clustering = {
        "IdxCluster": before,
        "feature_names": names,
        "weights": weights,
        "threshold": threshold,
        "n_iter": np.array([c.n_iter for c in clusterings]),
        "converged": np.array([c.converged for c in clusterings]),
        "corrected_depth": depth,
    }
    for part in parts:
        suffix = f"_shank{part.shank}" if multi else ""
        rounds = part.result.rounds
        clustering["motion_rounds_displacement" + suffix] = np.array(
            [m.displacement() for _, m in rounds]).reshape(len(rounds), result.data.n_sessions)
        clustering["motion_rounds_good_matches" + suffix] = np.array(
            [r.n_good for r, _ in rounds], dtype=np.int64)
    if multi:
        clustering["shank_ids"] = np.array([p.shank for p in parts])
    put_npz("ClusteringResults.npz", clustering)
    if s.save_intermediate_results:
        for part in parts:
            suffix = f"_Shank{part.shank}" if multi else ""
            for k, (r, m) in enumerate(part.result.rounds, 1):
                put_npz(f"MotionRound{k}{suffix}.npz", {
                    "feature_names": np.array(r.feature_names), "pairs": part.units[r.pairs],
                    "features": r.pair_features.astype(np.float32),
                    "similarity": r.clustering.similarity.astype(np.float32),
                    "good_match": r.clustering.good,
                    "IdxCluster": _hdbscan_ids(r.clustering.labels),
                    "weights": r.clustering.weights,
                    "threshold": np.float64(r.clustering.threshold),
                    "motion": m.displacement(),
                    "motion_ci": np.column_stack([m.ci_low, m.ci_high])})
    removed = np.vstack([p.units[c.removed_pairs] for p, c in zip(parts, curated)]).reshape(-1, 2)
    put_npz("CurationResults.npz", {
        "IdxCluster_before": before,
        "IdxCluster_after_conflicts": _global_ids([c.labels_after_conflicts for c in curated],
                                                  parts, n),
        "IdxCluster": idx,
        "removed_pairs": removed.astype(np.int64),
        "removed_reason": np.concatenate([c.removed_reason for c in curated]).astype(np.int8),
        "reason_names": np.array(REASONS),
        "split_threshold": np.array([c.threshold for c in curated]) if multi
        else np.float64(curated[0].threshold),
        # what removals and split_threshold are measured in
        "split_on": (np.array(["probability" if m else "similarity" for m in made]) if multi
                     else np.array("probability" if made[0] else "similarity")),
    })
    table = {"unit": np.arange(n), "session": result.data.session_index, "cluster": idx,
             "x": units.locations[:, 0], "y": units.locations[:, 1], "z": units.locations[:, 2],
             "amplitude": units.amplitude, "peak_channel": units.peak_channel,
             "corrected_y": depth}
    confidence = np.full(n, np.nan)
    for part, c in zip(parts, curated):
        if c.links is not None:
            confidence[part.units] = c.links.match_confidence
    table["match_confidence"] = confidence
    if multi:
        table["shank"] = units.shank
    save_units_csv(folder / "units.csv", table)
    written.append(folder / "units.csv")
    positions = np.column_stack([units.locations[:, 0], depth, units.locations[:, 2]])
    matches = match_table([(p.units, p.result.final.pairs, c.links)
                           for p, c in zip(parts, curated)], idx,
                          result.data.session_index, positions)
    if matches is not None:
        save_units_csv(folder / "MatchTable.csv", matches)
        written.append(folder / "MatchTable.csv")
    save_json(folder / "kilomatch_settings.json", s.to_dict())
    written.append(folder / "kilomatch_settings.json")
    output = {
        "IdxCluster": idx, "MatchedPairs": result.matched_pairs,
        "SessionIndex": result.data.session_index, "Locations": units.locations,
        "CorrectedDepth": depth, "Motion": displacement,
        "MotionCI": motion_ci,
        "SimilarityWeights": weights,
        "SimilarityThreshold": threshold,
        "FeatureNames": names, "NumUnits": np.int64(n),
        "NumSessions": np.int64(result.data.n_sessions),
        "NumClusters": np.int64(idx.max() if (idx > 0).any() else 0)}
    if multi:
        output["Shank"] = units.shank
        output["ShankIds"] = np.array([p.shank for p in parts])
    put_npz("Output.npz", output)  # last: its presence marks a complete run
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
        _atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=dpi,
                                                          metadata={"Software": None}))
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
        from .errors import KilomatchError
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
    from .features import acg_lags
    out["acg_lags"] = acg_lags(settings["autoCorr"]["window"], settings["autoCorr"]["binwidth"])
    out["settings"] = settings
    return out
