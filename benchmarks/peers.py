"""Run kilomatch and its peers (pyKilomatch 0.0.7, pyDANT 1.1.4) on one input folder.

Every tool runs in a fresh subprocess (a tiny runner script), measured by :mod:`_measure`, so a
crash or a memory blow-up of one tool never stops the others. The peers run with a separate
Python environment (``--peers-python`` / ``KILOMATCH_PEERS_PYTHON``, default
``/tmp/peers/bin/python``); they are never imported here.

Each ``run_*`` function returns a dict::

    tool, status, notes, wall_s, peak_rss_mb, memory_method, run_dir,
    idx_final (N,) int: final cluster ids, -1 = unmatched (None if not produced),
    idx_before_curation (N,) int: cluster ids of the final clustering before auto-curation,
    motion (S,) float: motion in kilomatch's convention (see below), or None.

Where the tools write their results (all in ``output_folder``, units in input order):

- kilomatch: final ids ``IdxCluster.npy`` (N, 1); ids before curation: key ``IdxCluster`` of
  ``ClusteringResults.npz``; motion ``motion.npy`` (S, 1), or with linear correction
  ``motion_linear.npy`` (S, 2: slope, offset).
- pyKilomatch / pyDANT: final ids ``IdxCluster.npy`` (N,); ids before curation: key
  ``idx_cluster_hdbscan`` of ``ClusteringResults.npz`` (their autoCuration does not rewrite it);
  motion ``motion_constant.npy`` (S,), ``motion_linear.npy`` (S,), ``motion_linear_scale.npy``.

All use -1 for "not in a cluster" and 1..K for clusters (the peers' HDBSCAN labels are shifted
to start at 1). Motion convention: kilomatch's ``motion[s]`` is the apparent shift of unit depths
in session s (observed y = true y + motion[s]); the peers use the same sign (their corrected
depth is y - motion), with ``motion_s(d) = scale * linear[s] * d + constant[s]``. To compare
rigid and linear estimates on an equal footing, every tool's motion is evaluated at the same
reference depth (``depth_ref_um`` of simulation.json, else the middle of the channels' depth
span) and its mean is removed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
# Fallback for a plain checkout: the repository root, after any installed kilomatch.
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from _measure import measure  # noqa: E402

# The venv benchmarks/README.md sets up (.peers at the repository root), else a shared one.
DEFAULT_PEERS_PYTHON = str(Path(__file__).resolve().parents[1] / ".peers" / "bin" / "python")
FALLBACK_PEERS_PYTHON = "/tmp/peers/bin/python"
TOOLS = ("kilomatch", "pykilomatch", "pydant")
PEER_MODULES = {"pykilomatch": "pyKilomatch", "pydant": "pyDANT"}
PEER_LABELS = {"kilomatch": "kilomatch", "pykilomatch": "pyKilomatch 0.0.7",
               "pydant": "pyDANT 1.1.4"}


# ----------------------------------------------------------------------------- settings

def peer_default_settings() -> dict:
    """The settings file shipped with the peers' repository (jiumao2/pyDANT settings.json, the
    version matching pyDANT 1.1.4), as a dict. Paths are filled in per run."""
    return {
        "path_to_data": "",
        "output_folder": "",
        "save_intermediate_results": True,
        "n_jobs": -1,
        "centering_waveforms": False,
        "spikeLocation": {"location_algorithm": "monopolar_triangulation",
                          "n_nearest_channels": 20},
        "waveformCorrection": {"n_nearest_channels": 38, "linear_correction": False,
                               "n_templates": 1},
        "autoCorr": {"window": 300, "binwidth": 1, "gaussian_sigma": 5},
        "ISI": {"window": 100, "binwidth": 1, "gaussian_sigma": 1},
        "motionEstimation": {"features": [["AutoCorr", "PETH"],
                                          ["Waveform", "AutoCorr", "PETH"],
                                          ["Waveform", "AutoCorr", "PETH"]]},
        "clustering": {"max_distance": 100, "features": ["Waveform", "AutoCorr"], "n_iter": 10},
        "autoCuration": {"auto_split": True},
    }


def set_dotted(tree: dict, dotted: str, value) -> None:
    """tree["a"]["b"] = value for dotted = "a.b" (sections are created when missing)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def apply_overrides(settings: dict, overrides: dict | None) -> dict:
    """A copy of ``settings`` with ``overrides`` applied; keys may be dotted
    ("clustering.n_iter") or nested dicts."""
    out = copy.deepcopy(settings)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and key in out and isinstance(out[key], dict):
            out[key] = apply_overrides(out[key], value)
        else:
            set_dotted(out, key, copy.deepcopy(value))
    return out


def _drop_peth(settings: dict) -> dict:
    """Remove PETH from every feature list (for data without peth.npy)."""
    out = copy.deepcopy(settings)
    rounds = out["motionEstimation"]["features"]
    out["motionEstimation"]["features"] = [[f for f in r if f != "PETH"] for r in rounds]
    out["clustering"]["features"] = [f for f in out["clustering"]["features"] if f != "PETH"]
    return out


def pykilomatch_settings(data, output, overrides=None) -> tuple[dict, list]:
    """Settings for pyKilomatch 0.0.7 and the list of workarounds applied to them.

    pyKilomatch 0.0.7 crashes on the default settings; three changes make it run:
    - centering_waveforms: true (with false, preprocess returns an undefined variable),
    - motionEstimation.n_iter (read by its clustering loop, missing from the settings file;
      a large value means the LDA weights are updated in every iteration),
    - waveformCorrection.linear_correction: true (its rigid-motion bootstrap indexes None).
    """
    s = apply_overrides(peer_default_settings(), overrides)
    s["path_to_data"], s["output_folder"] = str(data), str(output)
    notes = []
    if not s["centering_waveforms"]:
        s["centering_waveforms"] = True
        notes.append("workaround: centering_waveforms=true (false crashes preprocess)")
    if "n_iter" not in s["motionEstimation"]:
        s["motionEstimation"]["n_iter"] = 1000
        notes.append("workaround: motionEstimation.n_iter=1000 (key required by its clustering)")
    if not s["waveformCorrection"]["linear_correction"]:
        s["waveformCorrection"]["linear_correction"] = True
        notes.append("workaround: waveformCorrection.linear_correction=true "
                     "(rigid bootstrap indexes None)")
    if not (Path(data) / "peth.npy").exists():
        s = _drop_peth(s)
        notes.append("no peth.npy: PETH removed from the feature lists")
    return s, notes


def pydant_settings(data, output, overrides=None) -> tuple[dict, list]:
    """Settings for pyDANT 1.1.4: its own defaults (settings.json of its repository)."""
    s = apply_overrides(peer_default_settings(), overrides)
    s["path_to_data"], s["output_folder"] = str(data), str(output)
    notes = []
    if not (Path(data) / "peth.npy").exists():
        s = _drop_peth(s)
        notes.append("no peth.npy: PETH removed from the feature lists")
    return s, notes


def kilomatch_settings(data, output, overrides=None) -> dict:
    """kilomatch settings: its defaults plus ``overrides`` (it drops PETH itself when the data
    has no peth.npy)."""
    s = apply_overrides({}, overrides)
    s["path_to_data"], s["output_folder"] = str(data), str(output)
    return s


# ----------------------------------------------------------------------------- environment

def peers_python(cli_value: str | None = None) -> str | None:
    """The peers' Python: ``cli_value``, else $KILOMATCH_PEERS_PYTHON, else the default path if
    it exists, else None (peers are skipped)."""
    for candidate in (cli_value, os.environ.get("KILOMATCH_PEERS_PYTHON")):
        if candidate:
            return candidate
    for candidate in (DEFAULT_PEERS_PYTHON, FALLBACK_PEERS_PYTHON):
        if Path(candidate).exists():
            return candidate
    return None


@lru_cache(maxsize=None)
def peer_missing(python: str | None, tool: str) -> str | None:
    """None if ``tool`` can be imported by ``python``, else the reason it cannot."""
    if python is None:
        return "no peers Python (use --peers-python or KILOMATCH_PEERS_PYTHON)"
    if not Path(python).exists() and shutil.which(python) is None:
        return f"peers Python {python} not found"
    module = PEER_MODULES[tool]
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True,
                           env=tool_env())
    if probe.returncode != 0:
        return f"{module} cannot be imported by {python}: {last_error_line(probe.stderr)}"
    return None


def tool_env() -> dict:
    """Environment of every tool: non-interactive matplotlib, unbuffered output."""
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ----------------------------------------------------------------------------- outputs

def last_error_line(text: str) -> str:
    """The last line that looks like a Python exception (else the last non-empty line)."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text or "") if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else ""


def depth_reference(data) -> float:
    """Depth at which motion is compared: simulation.json's depth_ref_um, else the middle of
    the channels' depth span."""
    data = Path(data)
    meta = data / "simulation.json"
    if meta.exists():
        ref = json.loads(meta.read_text()).get("depth_ref_um")
        if ref is not None:
            return float(ref)
    y = np.load(data / "channel_locations.npy")[:, 1]
    return float((y.min() + y.max()) / 2)


def _load_labels(path: Path, key: str | None = None):
    """(N,) int64 labels from a .npy, or from ``key`` of a .npz; None if unavailable."""
    if not path.exists():
        return None
    try:
        if key is None:
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                if key not in z.files:
                    return None
                arr = z[key]
    except (OSError, ValueError):
        return None
    return np.asarray(arr).reshape(-1).astype(np.int64)


def _centered(motion) -> np.ndarray:
    m = np.asarray(motion, dtype=np.float64).reshape(-1)
    return m - m.mean()


def read_kilomatch_outputs(output, depth_ref: float) -> dict:
    """Final ids, ids before curation and motion (at ``depth_ref``) of a kilomatch run."""
    output = Path(output)
    motion = None
    if (output / "motion_linear.npy").exists():
        slope_offset = np.load(output / "motion_linear.npy", allow_pickle=False)
        motion = _centered(slope_offset[:, 0] * depth_ref + slope_offset[:, 1])
    elif (output / "motion.npy").exists():
        motion = _centered(np.load(output / "motion.npy", allow_pickle=False))
    return {
        "idx_final": _load_labels(output / "IdxCluster.npy"),
        "idx_before_curation": _load_labels(output / "ClusteringResults.npz", "IdxCluster"),
        "motion": motion,
    }


def read_peer_outputs(output, depth_ref: float) -> dict:
    """Final ids, ids before curation and motion (at ``depth_ref``) of a pyKilomatch / pyDANT
    run. Their motion: scale * linear[s] * depth + constant[s], same sign as kilomatch."""
    output = Path(output)
    motion = None
    files = [output / f"motion_{k}.npy" for k in ("constant", "linear", "linear_scale")]
    if all(f.exists() for f in files):
        constant, linear, scale = (np.load(f, allow_pickle=False) for f in files)
        motion = _centered(float(scale) * np.asarray(linear) * depth_ref + np.asarray(constant))
    return {
        "idx_final": _load_labels(output / "IdxCluster.npy"),
        "idx_before_curation": _load_labels(output / "ClusteringResults.npz",
                                            "idx_cluster_hdbscan"),
        "motion": motion,
    }


# ----------------------------------------------------------------------------- running

def _status(measured: dict, outputs: dict) -> str:
    """One status string: ok / crashed: <last error> / stopped: ... / failed: no output."""
    status = measured["status"]
    if status.startswith("failed"):
        error = last_error_line(measured["stderr_tail"]) or last_error_line(
            measured["stdout_tail"])
        return f"crashed: {error}" if error else status
    if status == "ok" and outputs["idx_final"] is None:
        return "failed: no IdxCluster.npy written"
    return status


def _run_tool(tool: str, cmd: list, out, settings: dict, notes: list, depth_ref: float,
              reader, timeout=None, mem_limit_mb=None) -> dict:
    """Write settings, run ``cmd`` measured, read the outputs. ``out`` is the run folder:
    settings.json, stdout.txt, stderr.txt and output/ (removed first, so that nothing from an
    earlier run is read)."""
    out = Path(out)
    output = Path(settings["output_folder"])
    if output.exists():
        shutil.rmtree(output)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    measured = measure(cmd + [str(settings_path)], env=tool_env(), timeout=timeout,
                       mem_limit_mb=mem_limit_mb, log_dir=out)
    outputs = reader(output, depth_ref)
    return {
        "tool": tool,
        "status": _status(measured, outputs),
        "notes": notes + measured["notes"],
        "wall_s": measured["wall_s"],
        "peak_rss_mb": measured["peak_rss_mb"],
        "memory_method": measured["memory_method"],
        "run_dir": str(out),
        **outputs,
    }


def skipped(tool: str, reason: str) -> dict:
    """Result row of a tool that was not run."""
    return {"tool": tool, "status": f"skipped: {reason}", "notes": [], "wall_s": None,
            "peak_rss_mb": None, "memory_method": None, "run_dir": None,
            "idx_final": None, "idx_before_curation": None, "motion": None}


@lru_cache(maxsize=None)
def compile_kilomatch() -> None:
    """Byte-compile the kilomatch package this interpreter imports, once, as ``pip install``
    does for an installed package (the peers' are). From a checkout under
    PYTHONDONTWRITEBYTECODE=1 every timed run would otherwise compile kilomatch's modules
    again (0.1-0.3 s of a 6 s run)."""
    import compileall
    import importlib.util
    spec = importlib.util.find_spec("kilomatch")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def run_kilomatch(data, out, settings_overrides=None, timeout=None, mem_limit_mb=None,
                  python: str | None = None) -> dict:
    """Run kilomatch (with ``python``, default this interpreter) on ``data``; results in
    ``out``/output."""
    if python is None:
        compile_kilomatch()
    settings = kilomatch_settings(data, Path(out) / "output", settings_overrides)
    cmd = [python or sys.executable, str(BENCH_DIR / "_runner_kilomatch.py")]
    return _run_tool("kilomatch", cmd, out, settings, [], depth_reference(data),
                     read_kilomatch_outputs, timeout, mem_limit_mb)


def _run_peer(tool: str, data, out, python, settings_overrides, timeout, mem_limit_mb,
              verbose) -> dict:
    missing = peer_missing(python, tool)
    if missing:
        return skipped(tool, missing)
    make = pykilomatch_settings if tool == "pykilomatch" else pydant_settings
    settings, notes = make(data, Path(out) / "output", settings_overrides)
    if verbose:
        for note in notes:
            print(f"  [{PEER_LABELS[tool]}] {note}", flush=True)
    cmd = [python, str(BENCH_DIR / "_runner_peer.py"), tool]
    return _run_tool(tool, cmd, out, settings, notes, depth_reference(data),
                     read_peer_outputs, timeout, mem_limit_mb)


def run_pykilomatch(data, out, python, settings_overrides=None, timeout=None,
                    mem_limit_mb=None, verbose=True) -> dict:
    """Run pyKilomatch 0.0.7 with the peers' ``python`` (workarounds applied and printed)."""
    return _run_peer("pykilomatch", data, out, python, settings_overrides, timeout,
                     mem_limit_mb, verbose)


def run_pydant(data, out, python, settings_overrides=None, timeout=None, mem_limit_mb=None,
               verbose=True) -> dict:
    """Run pyDANT 1.1.4 (``runDANT``) with the peers' ``python``."""
    return _run_peer("pydant", data, out, python, settings_overrides, timeout, mem_limit_mb,
                     verbose)


def add_run_arguments(ap, smoke_help: str) -> None:
    """The command-line options every benchmark script shares."""
    import _common
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help="comma-separated, from kilomatch,pykilomatch,pydant (default: all)")
    ap.add_argument("--cache", default=_common.DEFAULT_CACHE,
                    help="folder for simulated data and run outputs (default: %(default)s)")
    ap.add_argument("--peers-python", default=None,
                    help="Python of the peers' environment (default: $KILOMATCH_PEERS_PYTHON, "
                         f"else {DEFAULT_PEERS_PYTHON} if it exists)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per tool run")
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="stop a tool whose process tree exceeds this much memory")
    ap.add_argument("--cold", action="store_true",
                    help="drop the OS page cache before each tool run (Linux, as root), so "
                         "that every tool reads its input from the disk")
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")


def run_tool(tool: str, data, out, peers_py=None, settings_overrides=None, timeout=None,
             mem_limit_mb=None) -> dict:
    """Dispatch to run_kilomatch / run_pykilomatch / run_pydant by name. Never raises for a
    tool's own failure: the status says what happened."""
    try:
        if tool == "kilomatch":
            return run_kilomatch(data, out, settings_overrides, timeout, mem_limit_mb)
        if tool == "pykilomatch":
            return run_pykilomatch(data, out, peers_py, settings_overrides, timeout,
                                   mem_limit_mb)
        if tool == "pydant":
            return run_pydant(data, out, peers_py, settings_overrides, timeout, mem_limit_mb)
    except Exception as err:  # a bug in reading outputs must not stop the table
        return skipped(tool, f"benchmark error: {type(err).__name__}: {err}")
    raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(TOOLS)}")


# ----------------------------------------------------------------------------- scoring

@lru_cache(maxsize=2)
def unit_amplitudes(data: str) -> np.ndarray:
    """(N,) amplitude (uV) of every unit of the input folder ``data`` (kilomatch.metrics)."""
    from kilomatch import metrics

    return metrics.unit_amplitudes(np.load(Path(data) / "waveform_all.npy", mmap_mode="r"))


def extra_score(idx: np.ndarray, neurons: np.ndarray, sessions: np.ndarray) -> dict:
    """Pair precision, recall and F1 of the clusters ``idx`` (N,) against ``neurons`` (N,),
    and the units scored (n_units): peers.score's scores besides the first."""
    from kilomatch import metrics

    s = metrics.pair_scores(idx, neurons, sessions)
    return {"precision": s["precision"], "recall": s["recall"], "f1": s["f1"],
            "n_units": int(np.size(idx))}


def calibration(output, gt_neuron: np.ndarray) -> dict | None:
    """How well kilomatch's match probability is calibrated (issue 12, item 3): its candidate
    pairs (``output``/CandidatePairs.npz) binned by probability in tenths
    (kilomatch.metrics.calibration_bins) against ground truth ``gt_neuron`` (N,; negative:
    a unit of no neuron). Returns
    {"judged": bins of 50 pairs or more, "misses": those whose true fraction lies more than
    0.05 outside the bin (kilomatch.metrics.calibration_misses), "expected_misses": the
    misses binomial noise alone would give if every probability were exact, and
    "clean_chance": the chance of no miss then (kilomatch.metrics.calibration_miss_chance)},
    or None when the run wrote no probability (e.g. autoCuration.cut_probability 1)."""
    from kilomatch import metrics

    path = Path(output) / "CandidatePairs.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if "probability" not in z.files:
            return None
        pairs, p = z["pairs"], z["probability"]
    gt = np.asarray(gt_neuron).reshape(-1)
    known = np.isfinite(p)
    a, b = gt[pairs[known, 0]], gt[pairs[known, 1]]
    truth = (a == b) & (a >= 0)  # a unit of no neuron (a real sorter's, id < 0) matches none
    judged, misses = metrics.calibration_misses(metrics.calibration_bins(p[known], truth))
    chance = metrics.calibration_miss_chance(p[known])
    chance = chance[np.isfinite(chance)]
    return {"judged": judged, "misses": misses, "expected_misses": float(chance.sum()),
            "clean_chance": float(np.prod(1.0 - chance))}


def calibration_cell(cal: dict | None) -> str:
    """A table's cell for :func:`calibration`: "-" without a probability, else "missed of
    judged", the misses binomial noise alone would give an exact probability (when the
    record has them) and the missed bins' true fractions, e.g. "1/4 (0.31 by chance):
    [0.5,0.6) 0.75"."""
    if cal is None:
        return "-"
    text = f"{len(cal['misses'])}/{cal['judged']}"
    if cal.get("expected_misses") is not None:
        text += f" ({cal['expected_misses']:.2f} by chance)"
    details = ", ".join(f"[{m['low']:.1f},{m['high']:.1f}) {m['true_fraction']:.2f}"
                        for m in cal["misses"])
    return f"{text}: {details}" if details else text


def score(result: dict, data, bands: bool = False) -> dict:
    """Pair precision / recall / F1 (final and before curation), with ``bands`` the recall of
    the final clusters per amplitude band of the pair's smaller unit (``recall_bands``: one
    dict per band of ``kilomatch.metrics.AMPLITUDE_BANDS_UV``; reads every waveform), the
    calibration of kilomatch's match probability (``calibration``, :func:`calibration`), the
    wrong pairs by how their two neurons lie in time (``wrong_pairs``,
    kilomatch.metrics.wrong_pairs_by_kind), and motion RMS error (um) of one run against the
    ground truth in ``data`` (kilomatch.metrics)."""
    from kilomatch import metrics

    data = Path(data)
    gt = np.load(data / "gt_neuron.npy", allow_pickle=False)
    sessions = np.load(data / "session_index.npy", allow_pickle=False)
    row = {"precision": None, "recall": None, "f1": None, "f1_before": None,
           "recall_bands": None, "motion_rms_um": None, "matched_only": None,
           "best_match": None, "calibration": None, "wrong_pairs": None}

    def usable(labels):
        return labels is not None and labels.size == gt.size

    if usable(result["idx_final"]):
        s = metrics.pair_scores(result["idx_final"], gt, sessions)
        row.update(precision=s["precision"], recall=s["recall"], f1=s["f1"])
        row["wrong_pairs"] = metrics.wrong_pairs_by_kind(result["idx_final"], gt, sessions)
        if bands:
            row["recall_bands"] = metrics.recall_by_amplitude(
                result["idx_final"], gt, sessions, unit_amplitudes(str(data)))
    elif result["idx_final"] is not None:
        result["notes"].append(f"IdxCluster has {result['idx_final'].size} entries, "
                               f"expected {gt.size}")
    if usable(result["idx_before_curation"]):
        row["f1_before"] = metrics.pair_scores(result["idx_before_curation"], gt, sessions)["f1"]
    matched = gt.reshape(-1) >= 0
    if usable(result["idx_final"]) and not matched.all():
        # A real sorter's output: units matched to no neuron (negative ids) left out, so that
        # the score is that of the tracking of the neurons the sorter found, not of how many
        # partial or merged units it made (each of those counts as a neuron of its own above).
        row["matched_only"] = extra_score(result["idx_final"][matched],
                                          gt.reshape(-1)[matched], sessions.reshape(-1)[matched])
    best_path = data / "gt_neuron_best.npy"
    if usable(result["idx_final"]) and best_path.exists():
        # every unit by the neuron it agrees with most (benchmarks/sorted_study.py): a
        # sorter's duplicates of a neuron are that neuron here, not units of no neuron
        best = np.load(best_path, allow_pickle=False).reshape(-1)
        row["best_match"] = {**extra_score(result["idx_final"], best, sessions),
                             "n_units": int((best >= 0).sum())}
    if result.get("tool") == "kilomatch" and result.get("run_dir"):
        row["calibration"] = calibration(Path(result["run_dir"]) / "output", gt)
    gt_motion_path = data / "gt_motion.npy"
    if result["motion"] is not None and gt_motion_path.exists():
        gt_motion = np.load(gt_motion_path, allow_pickle=False).reshape(-1)
        if result["motion"].size == gt_motion.size:
            row["motion_rms_um"] = metrics.motion_rms_error(result["motion"], gt_motion)
    return row
