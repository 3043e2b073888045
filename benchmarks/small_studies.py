"""Small studies: kilomatch on studies of 15-40 neurons, at many seeds.

A lab whose probe holds few well-isolated units (or that tracks only its 'good' ones) gives
kilomatch studies far smaller than the suite's. There the match probability often cannot be
fitted (fewer than 50 known non-matches) and the run falls back on the weighted similarity;
in the sparsest ones no two neurons lie within ``clustering.max_distance``, so every
candidate pair is a match. This runs seven such shapes (6, 3 or 4 sessions; 15, 25 or 40
neurons; one with 60 um of drift, one with SpikeInterface's templates) at each seed of ``--seeds`` and reports precision, recall
and F1 of matched pairs after and before curation, and whether the probability was fitted.

Run from the repository root::

    python benchmarks/small_studies.py --seeds 0-39 --cache /tmp/small --markdown
    python benchmarks/small_studies.py --seeds 0-9 --json small.json

Each run is a fresh ``kilomatch.run`` in this process with default settings (``--settings``
adds a JSON object of settings); the simulated folders are cached under ``--cache/data``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common  # noqa: E402  (also puts the repository root on sys.path as a fallback)

_BASE = {"n_sessions": 6, "duration_s": 300.0, "seed": 5}
SHAPES = {
    "n15": {"n_neurons": 15},
    "n25": {"n_neurons": 25},
    "n40": {"n_neurons": 40},
    "n15_s3": {"n_neurons": 15, "n_sessions": 3},
    "n40_s3": {"n_neurons": 40, "n_sessions": 3},
    "n25_s4_drift60": {"n_neurons": 25, "n_sessions": 4, "drift_max_um": 60.0},
    "n25_si": {"n_neurons": 25, "waveform_source": "spikeinterface"},
}


def seeds_of(text: str) -> list:
    """'0-9' or '0,3,7' (or both: '0-4,9') -> a list of seed offsets."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def run_study(cache: Path, study: str, offset: int, params: dict, settings: dict) -> dict:
    """Simulate ``params`` (``kilomatch.simulate`` parameters, seed included; cached under
    ``cache/data/<study>_seed+<offset>``) and run kilomatch on it in this process with
    ``settings``; its scores after and before curation, as one dict."""
    import kilomatch
    from kilomatch import metrics

    name = f"{study}_seed+{offset}"
    data = _common.ensure_dataset(cache, name, params, verbose=False)
    out = cache / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    try:
        kilomatch.run({"path_to_data": str(data), "output_folder": str(out), **settings})
    except Exception as e:  # a failed run is a result: it counts as F1 0, and says why
        return {"study": study, "seed_offset": offset, "units": None, "precision": 0.0,
                "recall": 0.0, "f1": 0.0, "f1_before": 0.0, "probability_fitted": False,
                "wall_s": round(time.perf_counter() - start, 2),
                "error": f"{type(e).__name__}: {e}"}
    wall = time.perf_counter() - start
    gt, session = np.load(data / "gt_neuron.npy"), np.load(data / "session_index.npy")
    after = metrics.score_run(out, data)  # with motion_rms_um where the motion is (S,)
    with np.load(out / "ClusteringResults.npz") as z:
        before = metrics.pair_scores(z["IdxCluster"], gt, session)
    with np.load(out / "CandidatePairs.npz") as z:
        fitted = bool(np.isfinite(z["probability"]).any())
    return {"study": study, "seed_offset": offset, "units": int(len(gt)),
            "precision": after["precision"], "recall": after["recall"], "f1": after["f1"],
            "f1_before": before["f1"], "probability_fitted": fitted,
            "motion_rms_um": after.get("motion_rms_um"), "wall_s": round(wall, 2)}


SUMMARY_HEADER = ["study", "runs", "F1 mean", "F1 min", "F1 before curation, mean",
                  "precision < 0.99", "curation lowers F1", "no probability", "failed"]


def summary_rows(results: list, studies=SHAPES) -> list:
    """Per study (of ``studies``, in their order): runs, F1 mean and min, runs below precision
    0.99, runs where curation lowers F1, runs without a fitted probability, failed runs
    (counted at F1 0)."""
    rows = []
    for study in studies:
        rs = [r for r in results if r["study"] == study]
        if not rs:
            continue
        f1 = np.array([r["f1"] for r in rs])
        rows.append([study, str(len(rs)), _common.fmt(float(f1.mean())),
                     _common.fmt(float(f1.min())),
                     _common.fmt(float(np.mean([r["f1_before"] for r in rs]))),
                     str(sum(r["precision"] < 0.99 for r in rs)),
                     str(sum(r["f1"] < r["f1_before"] - 1e-9 for r in rs)),
                     str(sum(not r["probability_fitted"] for r in rs)),
                     str(sum("error" in r for r in rs))])
    return rows


def study_params(shape: str, offset: int) -> dict:
    """The simulation parameters of one study of SHAPES at seed offset ``offset``."""
    params = {**_BASE, **SHAPES[shape]}
    params["seed"] += offset
    return params


def run_studies(argv, doc: str, studies, params_of, cache_name: str) -> int:
    """The command line of a script that runs kilomatch on simulated ``studies`` (names, in
    order) at many seed offsets: ``params_of(study, offset)`` gives each one's simulation
    parameters. Prints one line per run and a table per study; --json writes every run."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-9", help="seed offsets, e.g. 0-39 or 0,5,9")
    ap.add_argument("--studies", default=",".join(studies),
                    help=f"comma-separated, of {', '.join(studies)}")
    ap.add_argument("--cache", default=str(Path(_common.DEFAULT_CACHE) / cache_name),
                    help="data and run folders")
    ap.add_argument("--settings", default="{}", help="JSON object of kilomatch settings")
    ap.add_argument("--json", help="write every run's scores here")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    chosen = args.studies.split(",")
    unknown = [s for s in chosen if s not in studies]
    if unknown:
        ap.error(f"unknown studies {unknown}; choose from {', '.join(studies)}")
    settings = json.loads(args.settings)
    logging.getLogger("kilomatch").setLevel(logging.WARNING)
    cache = Path(args.cache)
    results = []
    for offset in seeds_of(args.seeds):
        for study in chosen:
            r = run_study(cache, study, offset, params_of(study, offset), settings)
            results.append(r)
            if "error" in r:
                print(f"{study} +{offset}: failed: {r['error']}", flush=True)
                continue
            motion = r.get("motion_rms_um")
            print(f"{study} +{offset}: P {r['precision']:.3f} R {r['recall']:.3f} "
                  f"F1 {r['f1']:.3f} (before curation {r['f1_before']:.3f})"
                  f"{'' if motion is None else f', motion {motion:.2f} um off'}"
                  f"{'' if r['probability_fitted'] else ', no probability'}", flush=True)
    print(_common.header_text(_common.run_header(None, "none"), args.markdown))
    print(_common.format_table(SUMMARY_HEADER, summary_rows(results, studies), args.markdown))
    if args.json:
        _common.write_json(args.json, {"settings": settings, "results": results})
    return 0


def main(argv=None) -> int:
    return run_studies(argv, __doc__, SHAPES, study_params, "small")


if __name__ == "__main__":
    sys.exit(main())
