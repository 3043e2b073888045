"""Real-sorter chain benchmark (issue 13): from raw recordings to tracked neurons.

One neuron population is recorded over several sessions with SpikeInterface's generator:
its template model (``generate_templates``) at each neuron's position shifted by the session's
rigid probe drift, its Poisson spike trains (``generate_sorting``, refractory), its noise
(``NoiseGeneratorRecording``), neurons appearing and disappearing between sessions, saved as
int16 with a gain (uV per bit), on an NP1-like probe built with probeinterface without shank ids.
Each session is then sorted by a real sorter through ``spikeinterface.sorters.run_sorter``
(mountainsort5; Kilosort 4 as well where ``kilosort`` is importable), in its own process, and
taken the two ways users have it:

- a phy folder holding the raw int16 ``.bin`` (``spikeinterface.exporters.export_to_phy`` of an
  analyzer on the raw recording), imported with ``kilomatch import phy --units all --gain-uv G``;
- a saved SortingAnalyzer on the high-pass filtered recording, with its ``templates``,
  imported with ``kilomatch import spikeinterface``.

Both go through kilomatch (default settings) and pyKilomatch 0.0.7 (``benchmarks/peers.py``).
Scoring: each sorted unit takes the neuron SpikeInterface's ``compare_sorter_to_ground_truth``
matches it to (Hungarian match, agreement >= 0.5); a unit matched to no neuron is the same as
no other unit, so every pair it is put in counts as wrong (``kilomatch.metrics.pair_scores``).
That counts a sorter's partial units (a neuron's spikes split over two units, agreement below
0.5) as neurons of their own, so the table also scores the tracking over the matched units
alone ("matched units: P / R / F1"): the neurons the sorter found, each in the sessions where
it found them. The Hungarian match gives a neuron one unit per session, so a sorter's
duplicate (a second unit holding the same spikes, as Kilosort 4 leaves: kilomatch's
``units.csv`` ``duplicate_of``) is "matched to no neuron" too; "best match: P / R / F1"
scores every unit by the neuron it agrees with most (``best_match_21``, agreement >= 0.5,
several units of one session may share a neuron), where tracking a duplicate with its neuron
is right.
Motion error: RMS against the true per-session displacement (``kilomatch.metrics``); kilomatch is
also run given the true motion (what a perfect motion would give).

The sorter ``truth`` is a perfect sorter: each session's units are its neurons' true spike
trains, taken the same two ways. It separates what the tracking loses on SpikeInterface's
waveforms and drift (a second waveform source besides kilomatch's simulator) from what the
sorter's errors cost, in about a minute per study; ``--seed-offset N`` makes fresh studies
of the same kinds (folders ``<study>_seed+N``).

Run from the repository root (sortings and recordings are cached and reused)::

    python benchmarks/sorted_study.py --cache /tmp/kilomatch_sorted --peers-python PY
    python benchmarks/sorted_study.py --studies drift150 --markdown
    python benchmarks/sorted_study.py --studies turnover8,dense6 --sorters truth \
        --routes spikeinterface --tools kilomatch,pydant --markdown   # the two harder studies
    python benchmarks/sorted_study.py --sorters truth --routes spikeinterface --tools kilomatch \
        --seed-offset 100 --markdown     # perfect sorting, fresh studies, kilomatch only

Sessions are cached under ``CACHE/<study>/session<k>/``: ``raw/`` (the recording),
``gt/`` (the true spike trains), ``<sorter>/`` (run_sorter's folder), ``<sorter>_analyzer/``,
``<sorter>_phy/``; imported folders and tool runs under ``CACHE/<study>/<sorter>_<route>/``.
A session is re-made when its parameters or this file's simulation code change
(``raw/study.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (also puts the repository root on sys.path as a fallback)
import peers  # noqa: E402
from _measure import memory_method  # noqa: E402

from kilomatch import metrics  # noqa: E402
from spikeinterface.core import create_sorting_analyzer  # noqa: E402
from spikeinterface.exporters import export_to_phy  # noqa: E402
from spikeinterface.preprocessing import highpass_filter  # noqa: E402
from spikeinterface.sorters import run_sorter  # noqa: E402
from kilomatch.formats.folder import UNITS_SOURCE  # noqa: E402

# The recording's sampling rate (Hz) and the window the templates are generated on (ms):
# SpikeInterface's waveform needs ~2.3 ms after the trough for repolarisation and recovery.
FS_HZ = 30000.0
MS_BEFORE, MS_AFTER = 1.5, 3.0
ROUTES = ("phy", "spikeinterface")
# The perfect sorter: the true spike trains, saved as a sorter's output would be.
TRUTH = "truth"
SORTERS = ("mountainsort5", "kilosort4", TRUTH)
# Importable module of each sorter (a sorter whose module is missing is skipped).
SORTER_MODULES = {"mountainsort5": "mountainsort5", "kilosort4": "kilosort",
                  TRUTH: "spikeinterface"}
# Sorter parameters of the benchmark: mountainsort5's whitening seeded; its detection and
# snippet neighbourhoods at 100 um instead of 200-250 um, which makes its PCAs (full SVDs of
# spikes x (samples * channels)) several times cheaper on 96 channels.
SORTER_PARAMS = {"mountainsort5": {"whitening_seed": 0, "scheme2_phase1_detect_channel_radius": 100,
                                   "snippet_mask_radius": 100}}
# NP1's four staggered contact columns (um): even rows use the first two, odd rows the last two.
_NP1_X = ((43.0, 11.0), (59.0, 27.0))
_NP1_PITCH_UM = 20.0


@dataclass(frozen=True)
class StudyParams:
    """One simulated study. Distances in um, times in s, amplitudes in uV."""

    n_sessions: int = 4
    n_channels: int = 96            # NP1-like: 2 contacts per row, 20 um rows
    duration_s: float = 60.0
    n_neurons: int = 60
    drift_max_um: float = 40.0      # range of the rigid per-session displacement
    p_late_start: float = 0.15      # neurons first seen after session 1 (turnover)
    p_early_end: float = 0.15       # neurons last seen before the last session
    amp_range_uv: tuple = (50.0, 250.0)   # peak amplitude on the nearest contact (log-uniform)
    z_range_um: tuple = (15.0, 45.0)      # distance of the neurons from the probe plane
    rate_median_hz: float = 5.0
    noise_uv: float = 10.0
    gain_uv: float = 2.34375        # uV per bit (SpikeGLX NP1.0 at AP gain 500)
    seed: int = 1300


# The benchmark's studies: moderate drift (issue 13) and large drift (issue 17, item 3), run
# by default; and two harder ones, run when named (``--studies turnover8,dense6``; with the
# perfect sorter about 2 min each, with mountainsort5 a sort per session): many sessions with
# high turnover and small units, and a dense population whose neurons lie 10-60 um from the
# probe (SpikeInterface's sharp templates then change their peak amplitude with the channel
# grid's phase from one session to the next).
STUDIES = {
    "drift150": ("4 sessions x 60 s, 96 channels, 60 neurons, 150 um range of rigid drift",
                 StudyParams(drift_max_um=150.0, seed=1302)),
    "drift40": ("4 sessions x 60 s, 96 channels, 60 neurons, 40 um range of rigid drift",
                StudyParams(drift_max_um=40.0, seed=1301)),
    "turnover8": ("8 sessions x 40 s, 96 channels, 100 neurons of 40-200 uV, 30% starting "
                  "late and 30% ending early, 80 um range of rigid drift",
                  StudyParams(n_sessions=8, duration_s=40.0, n_neurons=100,
                              amp_range_uv=(40.0, 200.0), p_late_start=0.3, p_early_end=0.3,
                              drift_max_um=80.0, seed=1401)),
    "dense6": ("6 sessions x 40 s, 96 channels, 140 neurons 10-60 um from the probe, 40 um "
               "range of rigid drift",
               StudyParams(n_sessions=6, duration_s=40.0, n_neurons=140, drift_max_um=40.0,
                           z_range_um=(10.0, 60.0), seed=1402)),
}
DEFAULT_STUDIES = ("drift150", "drift40")
# The CI-sized study of tests/test_sorted_chain.py.
CI_STUDY = StudyParams(n_sessions=3, n_channels=32, duration_s=20.0, n_neurons=14,
                       drift_max_um=30.0, amp_range_uv=(80.0, 250.0), rate_median_hz=8.0,
                       seed=1313)


# ----------------------------------------------------------------------------- simulation

def make_probe(n_channels: int):
    """An NP1-like linear probe (probeinterface.Probe): n_channels contacts, two per 20 um row,
    12 um square contacts, device channel k = contact k; no shank ids (as ``set_contacts``
    leaves them)."""
    from probeinterface import Probe

    rows = np.arange(n_channels) // 2
    x = np.array([_NP1_X[r % 2][k % 2] for k, r in enumerate(rows)])
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=np.column_stack([x, rows * _NP1_PITCH_UM]), shapes="square",
                       shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(n_channels))
    return probe


@dataclass(frozen=True)
class Population:
    """The neurons of a study and their sessions.

    xyz: (M, 3) um, position at zero displacement (y is depth, z the distance from the probe
    plane); motion: (S,) um, the true rigid displacement of each session, mean 0 (a neuron at
    depth y appears at y + motion[s], kilomatch's sign convention); present: (S, M) bool;
    rates: (S, M) Hz; unit_params: generate_templates parameters, name -> (M,).
    """

    xyz: np.ndarray
    motion: np.ndarray
    present: np.ndarray
    rates: np.ndarray
    unit_params: dict


def make_population(p: StudyParams, channel_xy: np.ndarray) -> Population:
    """Draw the neurons (seeded by p.seed): positions that stay on the probe in every session,
    template parameters, amplitudes, rates, lifetimes, and the per-session drift."""
    from spikeinterface.core.generate import default_unit_params_range

    rng = np.random.default_rng([p.seed, 1])
    S, M = p.n_sessions, p.n_neurons
    u = rng.uniform(0.0, 1.0, S)
    u[0], u[-1] = 0.0, 1.0                      # the range is exactly drift_max_um
    motion = u * p.drift_max_um
    motion -= motion.mean()
    y_lo = channel_xy[:, 1].min() + 30.0 - motion.min()
    y_hi = channel_xy[:, 1].max() - 30.0 - motion.max()
    xyz = np.column_stack([rng.uniform(channel_xy[:, 0].min() - 10, channel_xy[:, 0].max() + 10, M),
                           rng.uniform(y_lo, y_hi, M), rng.uniform(*p.z_range_um, M)])
    params = {name: rng.uniform(lo, hi, M) for name, (lo, hi) in default_unit_params_range.items()
              if name != "alpha"}
    # alpha is the amplitude at the source; scale it so the nearest contact sees the drawn peak.
    nearest = np.sqrt(((xyz[:, None, :2] - channel_xy[None]) ** 2).sum(-1)).min(1)
    d = np.hypot(nearest, xyz[:, 2])
    amp = np.exp(rng.uniform(*np.log(p.amp_range_uv), M))
    params["alpha"] = amp * np.exp(d / params["spatial_decay"])
    start = np.where(rng.random(M) < p.p_late_start, rng.integers(1, S, M), 0)
    end = np.where(rng.random(M) < p.p_early_end, rng.integers(0, S - 1, M), S - 1)
    end = np.maximum(start, end)
    s = np.arange(S)[:, None]
    present = (s >= start) & (s <= end)
    base = p.rate_median_hz * np.exp(0.6 * rng.standard_normal(M))
    rates = np.clip(base * np.exp(0.2 * rng.standard_normal((S, M))), 0.5, 30.0)
    return Population(xyz, motion, present, rates, params)


def session_recording(p: StudyParams, pop: Population, session: int):
    """Session ``session`` (0-based): (int16 recording with gain and probe, ground-truth
    sorting whose unit ids are neuron ids)."""
    from spikeinterface.core import (InjectTemplatesRecording, NoiseGeneratorRecording,
                                     generate_sorting, generate_templates)
    from spikeinterface.preprocessing import scale

    probe = make_probe(p.n_channels)
    ids = np.flatnonzero(pop.present[session])
    where = pop.xyz[ids] + np.array([0.0, pop.motion[session], 0.0])
    templates = generate_templates(probe.contact_positions, where, FS_HZ, MS_BEFORE, MS_AFTER,
                                   seed=0, unit_params={k: v[ids] for k, v in
                                                        pop.unit_params.items()})
    sorting = generate_sorting(num_units=ids.size, sampling_frequency=FS_HZ,
                               durations=[p.duration_s], firing_rates=pop.rates[session, ids],
                               refractory_period_ms=3.0, seed=p.seed * 100 + session)
    sorting = sorting.rename_units(ids)
    noise = NoiseGeneratorRecording(p.n_channels, FS_HZ, [p.duration_s],
                                    noise_levels=p.noise_uv, strategy="on_the_fly",
                                    seed=p.seed * 100 + 50 + session)
    n_spikes = sorting.to_spike_vector().size
    jitter = np.random.default_rng([p.seed, 2, session]).normal(1.0, 0.05, n_spikes)
    signal = InjectTemplatesRecording(sorting, templates, nbefore=int(MS_BEFORE * FS_HZ / 1000),
                                      amplitude_factor=jitter, parent_recording=noise)
    recording = scale(signal, gain=1.0 / p.gain_uv, dtype="int16")
    recording.set_channel_gains(p.gain_uv)
    recording.set_channel_offsets(0.0)
    recording.set_probe(probe, in_place=True)
    return recording, sorting


def _simulation_key(p: StudyParams) -> dict:
    """What a cached session was made from: the parameters and the simulation code."""
    import hashlib
    import inspect

    code = "".join(inspect.getsource(f) for f in (make_probe, make_population,
                                                   session_recording))
    key = {"params": dataclasses.asdict(p),
           "code_sha256": hashlib.sha256(code.encode()).hexdigest()}
    # as read back from its JSON stamp (tuples become lists): compared with the tuples, a
    # cached session never matched, and every run simulated and sorted it again
    return json.loads(json.dumps(key))


def write_sessions(p: StudyParams, folder) -> Population:
    """Write every session's raw recording (``session<k>/raw``) and true spike trains
    (``session<k>/gt``) under ``folder``, unless the cache already holds them; also
    ``gt_motion.npy`` (S,) um. Returns the population."""
    from spikeinterface.core import load

    folder = Path(folder)
    probe = make_probe(p.n_channels)
    pop = make_population(p, probe.contact_positions)
    key = _simulation_key(p)
    for s in range(p.n_sessions):
        sdir = folder / f"session{s + 1}"
        stamp = sdir / "raw" / "study.json"
        if stamp.exists() and json.loads(stamp.read_text()) == key:
            continue
        if sdir.exists():
            shutil.rmtree(sdir)
        recording, gt = session_recording(p, pop, s)
        recording.save(folder=sdir / "raw", format="binary", n_jobs=1, progress_bar=False)
        gt.save(folder=sdir / "gt")
        load(sdir / "raw")  # fails here, not later, if the copy is unreadable
        stamp.write_text(json.dumps(key))
    np.save(folder / "gt_motion.npy", pop.motion)
    return pop


# ----------------------------------------------------------------------------- sorting

def sorter_available(sorter: str) -> bool:
    return importlib.util.find_spec(SORTER_MODULES[sorter]) is not None


def sort_session(recording, folder, sorter="mountainsort5", **sorter_params):
    """Sort one session; save it as a SortingAnalyzer and as a phy folder (README recipe)."""
    sorting = run_sorter(sorter, recording, folder=f"{folder}/{sorter}", **sorter_params)
    # A SortingAnalyzer on the high-pass filtered data, with its templates (mean waveforms).
    analyzer = create_sorting_analyzer(sorting, highpass_filter(recording), seed=0,
                                       format="binary_folder", folder=f"{folder}/{sorter}_analyzer")
    analyzer.compute({"random_spikes": {"seed": 0}, "templates": {}})
    # A phy folder holding the raw (int16) recording, from an analyzer on it kept in memory.
    raw = create_sorting_analyzer(sorting, recording, seed=0)
    raw.compute({"random_spikes": {"seed": 0}, "templates": {}})
    export_to_phy(raw, f"{folder}/{sorter}_phy", compute_pc_features=False,
                  compute_amplitudes=False)


def _sort_main(session_dir: str, sorter: str) -> int:
    """The sorting subprocess: one session, one sorter (run_sorter's memory is given back
    to the system when it ends)."""
    from spikeinterface.core import load

    session_dir = Path(session_dir)
    for part in ("", "_analyzer", "_phy"):
        shutil.rmtree(session_dir / f"{sorter}{part}", ignore_errors=True)
    with _true_sorting() if sorter == TRUTH else contextlib.nullcontext():
        sort_session(load(session_dir / "raw"), session_dir, sorter, progress_bar=False,
                     **SORTER_PARAMS.get(sorter, {}))
    (session_dir / f"{sorter}_phy" / "sorted.json").write_text(
        (session_dir / "raw" / "study.json").read_text())
    return 0


@contextlib.contextmanager
def _true_sorting():
    """Within the block, sort_session (the README recipe, as written) sorts perfectly: its
    run_sorter answers the session's true spike trains (``<session>/gt``)."""
    global run_sorter
    from spikeinterface.core import load
    real = run_sorter
    run_sorter = lambda _sorter, _recording, folder, **_: load(Path(folder).parent / "gt")  # noqa: E731
    try:
        yield
    finally:
        run_sorter = real


def _sorter_env(sorter: str) -> dict:
    """The environment of a sorting process: for mountainsort5, BLAS and OpenMP on one thread
    (its PCAs, full SVDs, run 10 times slower when BLAS threads outnumber free cores);
    Kilosort 4 keeps torch's threads (one per core)."""
    env = dict(os.environ)
    if sorter == "mountainsort5":
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = "1"
    return env


def sort_sessions(folder, n_sessions: int, sorter: str, log=print) -> None:
    """Sort each session in its own process, one at a time, unless its sorting is cached
    (made from the same raw recording)."""
    for s in range(1, n_sessions + 1):
        sdir = Path(folder) / f"session{s}"
        done = sdir / f"{sorter}_phy" / "sorted.json"
        if done.exists() and done.read_text() == (sdir / "raw" / "study.json").read_text():
            continue
        log(f"  sorting session {s} with {sorter} ...")
        proc = subprocess.run([sys.executable, __file__, "_sort", str(sdir), sorter],
                              capture_output=True, text=True, env=_sorter_env(sorter))
        if proc.returncode != 0:
            raise RuntimeError(f"{sorter} failed on {sdir}: "
                               f"{peers.last_error_line(proc.stderr)}\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- import, truth

def session_folder(route: str, sorter: str) -> str:
    """Where a session's sorting is, per route: Kilosort 4 writes its own phy folder (with
    ``params.py`` naming the raw file), other sorters' phy folders come from export_to_phy."""
    if route == "phy" and sorter == "kilosort4":
        return f"{sorter}/sorter_output"
    return f"{sorter}_{'phy' if route == 'phy' else 'analyzer'}"


def import_route(route: str, folder, n_sessions: int, sorter: str, out, gain_uv: float) -> Path:
    """Import the sessions' sortings by ``route`` through ``kilomatch import`` (the function
    the command line calls) into ``out`` (replaced)."""
    from kilomatch.importers import main as import_main

    sessions = [str(Path(folder) / f"session{s}" / session_folder(route, sorter))
                for s in range(1, n_sessions + 1)]
    argv = [route, str(out), *sessions, "--overwrite"]
    if route == "phy":
        argv += ["--units", "all", "--gain-uv", repr(gain_uv)]
    if import_main(argv) != 0:
        raise RuntimeError(f"kilomatch import {' '.join(argv)} failed")
    return Path(out)


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def sorted_unit_keys(data, route: str) -> list[tuple[int, str]]:
    """(session, SpikeInterface unit id as text) of each unit of an imported folder, in unit
    order; a phy route's cluster ids are mapped back through export_to_phy's
    cluster_si_unit_ids.tsv (Kilosort's own folders have none: there the ids are the same)."""
    with open(Path(data) / UNITS_SOURCE, newline="") as f:
        rows = list(csv.DictReader(f))
    maps = {}
    keys = []
    for row in rows:
        uid = row["original_unit_id"]
        path = Path(row["session_path"]) / "cluster_si_unit_ids.tsv"
        if route == "phy" and path.exists():
            if path not in maps:
                maps[path] = {r["cluster_id"]: r["si_unit_id"] for r in _read_tsv(path)}
            uid = maps[path][uid]
        keys.append((int(row["session"]), str(uid)))
    return keys


def match_session(gt_dir, sorter_dir) -> dict:
    """{sorted unit id as text: true neuron id, or -1} from compare_sorter_to_ground_truth
    (Hungarian match of agreement >= 0.5: one unit per neuron), the same for its best match
    ("best": each unit's neuron of highest agreement, at least 0.5, several units per neuron
    allowed), and the session's counts."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import load
    from spikeinterface.sorters import read_sorter_folder

    gt = load(gt_dir)
    if Path(sorter_dir).name == TRUTH:  # the perfect sorter's units are the neurons
        ids = [str(u) for u in gt.unit_ids]
        return {"match": {u: int(u) for u in ids}, "best": {u: int(u) for u in ids},
                "n_neurons": len(ids), "n_units": len(ids), "n_matched": len(ids)}
    tested = read_sorter_folder(sorter_dir)
    comp = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True, match_score=0.5)
    match = {str(k): int(v) for k, v in comp.hungarian_match_21.items()}
    best = {str(k): int(v) for k, v in comp.best_match_21.items()}
    return {"match": match, "best": best, "n_neurons": len(gt.unit_ids),
            "n_units": len(tested.unit_ids), "n_matched": sum(v != -1 for v in match.values())}


def write_truth(data, route: str, matches: list[dict], motion: np.ndarray) -> np.ndarray:
    """Write ``gt_neuron.npy`` (N,) (the matched neuron; a unique negative id for a unit
    matched to none), ``gt_neuron_best.npy`` (N,) (the best-matched neuron, when the matches
    carry it; peers.score scores that too) and ``gt_motion.npy`` (S,) um into an imported
    folder; returns the matched neuron ids."""
    keys = sorted_unit_keys(data, route)

    def labels(kind):
        out = np.array([matches[s - 1][kind].get(uid, -1) for s, uid in keys], np.int64)
        unmatched = out == -1
        out[unmatched] = -1 - np.flatnonzero(unmatched)
        return out

    gt = labels("match")
    np.save(Path(data) / "gt_neuron.npy", gt)
    if all("best" in m for m in matches):
        np.save(Path(data) / "gt_neuron_best.npy", labels("best"))
    np.save(Path(data) / "gt_motion.npy", np.asarray(motion, np.float64))
    return gt


def route_agreement(a: np.ndarray, keys_a: list, b: np.ndarray, keys_b: list) -> dict:
    """How alike two routes' final clusters are, over the units both imported: pair
    precision / recall / F1 of route a's clusters taking route b's as the truth (an unmatched
    unit of b is alone), and the units imported by one route only."""
    where_b = {k: i for i, k in enumerate(keys_b)}
    both = [(i, where_b[k]) for i, k in enumerate(keys_a) if k in where_b]
    ia, ib = (np.array(x, np.int64) for x in zip(*both))
    truth = b[ib].copy()
    alone = truth == -1
    truth[alone] = -1 - np.flatnonzero(alone)
    sessions = np.array([keys_a[i][0] for i in ia])
    s = metrics.pair_scores(a[ia], truth, sessions)
    return {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"],
            "identical": bool(s["f1"] == 1.0),
            "only_a": len(keys_a) - len(both), "only_b": len(keys_b) - len(both)}


# ----------------------------------------------------------------------------- study

TRUE_MOTION = "kilomatch, true motion given"


def run_study(name: str, p: StudyParams, description: str, args, peers_py, log=print) -> dict:
    """Simulate (or reuse), sort, import both ways, run every tool, score. Returns the study's
    record (sessions, rows, agreement between routes). With ``args.seed_offset``, the study's
    seed is moved by it and it is named ``<name>_seed+<offset>``."""
    name, seed = _common.with_seed_offset(name, p.seed, args.seed_offset)
    p = dataclasses.replace(p, seed=seed)
    folder = Path(args.cache) / name
    folder.mkdir(parents=True, exist_ok=True)
    log(f"study {name}: {description}")
    pop = write_sessions(p, folder)
    n = min(args.first_sessions or p.n_sessions, p.n_sessions)
    motion = pop.motion[:n]
    if n < p.n_sessions:
        log(f"  using the first {n} of its {p.n_sessions} sessions")
    record = {"study": name, "description": description, "params": dataclasses.asdict(p),
              "n_sessions_used": n, "motion_um": motion.tolist(), "sorters": {}}
    for sorter in args.sorters:
        if not sorter_available(sorter):
            log(f"  {sorter}: skipped ({SORTER_MODULES[sorter]} is not importable)")
            record["sorters"][sorter] = {"skipped": f"{SORTER_MODULES[sorter]} not importable"}
            continue
        sort_sessions(folder, n, sorter, log)
        matches = [match_session(folder / f"session{s}" / "gt", folder / f"session{s}" / sorter)
                   for s in range(1, n + 1)]
        sessions = [{k: m[k] for k in ("n_neurons", "n_units", "n_matched")} for m in matches]
        log("  per session (neurons / units found / matched): " + ", ".join(
            f"{m['n_neurons']}/{m['n_units']}/{m['n_matched']}" for m in sessions))
        rows, finals = [], {}
        for route in args.routes:
            data = import_route(route, folder, n, sorter,
                                folder / f"{sorter}_{route}" / "input", p.gain_uv)
            write_truth(data, route, matches, motion)
            finals[route] = rows_for_route(route, data, args, peers_py, rows, log)
        agreement = None
        if len(finals) == 2 and all(v is not None for v in finals.values()):
            (ra, (ia, ka)), (rb, (ib, kb)) = finals.items()
            agreement = route_agreement(ia, ka, ib, kb)
            log(f"  routes {ra} vs {rb}: pair F1 {agreement['f1']:.3f} "
                f"(identical: {agreement['identical']})")
        record["sorters"][sorter] = {"sessions": sessions, "rows": rows,
                                     "route_agreement": agreement}
    return record


def rows_for_route(route, data, args, peers_py, rows, log):
    """Run kilomatch, kilomatch given the true motion and the peers on one imported folder;
    append a scored row per run to ``rows``. Returns kilomatch's (final ids, unit keys), or
    None when it did not finish."""
    runs = [(t, t, peers.PEER_LABELS[t]) for t in args.tools]
    if "kilomatch" in args.tools:
        runs.insert(1, ("kilomatch", "kilomatch_true_motion", TRUE_MOTION))
    out = None
    for tool, run_name, label in runs:
        overrides = None
        if run_name == "kilomatch_true_motion":
            overrides = {"waveformCorrection": {"path_to_motion": str(data / "gt_motion.npy")}}
        log(f"  {route}: running {label} ...")
        result = peers.run_tool(tool, data, data.parent / run_name, peers_py, overrides,
                                args.timeout)
        scores = peers.score(result, data)
        log(f"    {result['status']}; F1 {_common.fmt(scores['f1'])}, motion RMS "
            f"{_common.fmt(scores['motion_rms_um'], 2)} um")
        rows.append({"route": route, "label": label, **scores, "status": result["status"],
                     "notes": result["notes"], "n_units": int(np.load(data / "gt_neuron.npy").size),
                     "motion": None if result["motion"] is None else result["motion"].tolist()})
        if run_name == "kilomatch" and result["idx_final"] is not None:
            out = (result["idx_final"], sorted_unit_keys(data, route))
    return out


COLUMNS = ["study", "sorter", "route", "tool", "units", "precision", "recall", "F1",
           "F1 before curation", "matched units: P / R / F1", "best match: P / R / F1",
           "calibration bins missed", "motion RMS (um)", "status"]


def scores_cell(row: dict, key: str) -> str:
    """Precision / recall / F1 of one of peers.score's extra scores ("matched_only": over the
    units matched to a neuron; "best_match": every unit by its best-matched neuron), or '-'."""
    m = row.get(key)
    if not m:
        return "-"
    return " / ".join(_common.fmt(m[k]) for k in ("precision", "recall", "f1"))


def table(records: list) -> list:
    rows = []
    for rec in records:
        for sorter, res in rec["sorters"].items():
            for r in res.get("rows", []):
                rows.append([rec["study"], sorter, r["route"], r["label"], str(r["n_units"]),
                             _common.fmt(r["precision"]), _common.fmt(r["recall"]),
                             _common.fmt(r["f1"]), _common.fmt(r["f1_before"]),
                             scores_cell(r, "matched_only"), scores_cell(r, "best_match"),
                             peers.calibration_cell(r.get("calibration")),
                             _common.fmt(r["motion_rms_um"], 2), r["status"]])
    return rows


def session_table(records: list) -> list:
    rows = []
    for rec in records:
        for sorter, res in rec["sorters"].items():
            for s, m in enumerate(res.get("sessions", []), 1):
                rows.append([rec["study"], sorter, str(s),
                             f"{rec['motion_um'][s - 1]:+.1f}", str(m["n_neurons"]),
                             str(m["n_units"]), str(m["n_matched"])])
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", default=",".join(DEFAULT_STUDIES),
                    help=f"comma-separated, from {','.join(STUDIES)} (default: "
                         f"{','.join(DEFAULT_STUDIES)})")
    ap.add_argument("--sorters", default=",".join(SORTERS),
                    help="comma-separated (default: all; one whose package is missing is "
                         "skipped)")
    ap.add_argument("--routes", default=",".join(ROUTES), help="phy, spikeinterface or both")
    ap.add_argument("--tools", default="kilomatch,pykilomatch",
                    help="from kilomatch,pykilomatch,pydant (default kilomatch,pykilomatch)")
    ap.add_argument("--cache", default="/tmp/kilomatch_sorted",
                    help="recordings, sortings, imported folders and runs (default %(default)s)")
    ap.add_argument("--peers-python", default=None, help="Python of the peers' environment")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per tool run")
    ap.add_argument("--first-sessions", type=int, default=None, metavar="N",
                    help="use only the first N sessions of each study (the simulation, and "
                         "so the cache, stay the same)")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="add this to every study's seed: fresh studies of the same kinds, "
                         "named <study>_seed+<offset>")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    args = ap.parse_args(argv)
    for name, allowed in (("studies", STUDIES), ("sorters", SORTERS), ("routes", ROUTES),
                          ("tools", peers.TOOLS)):
        items = [t.strip() for t in getattr(args, name).split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad:
            ap.error(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
        setattr(args, name, items)
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_sort":
        return _sort_main(*argv[1:])
    args = parse_args(argv)
    peers_py = peers.peers_python(args.peers_python)
    header = _common.run_header(peers_py, memory_method())
    print(_common.header_text(header, args.markdown), end="\n\n", flush=True)
    records = [run_study(name, STUDIES[name][1], STUDIES[name][0], args, peers_py,
                         lambda text: print(text, flush=True))
               for name in args.studies]
    print()
    print(_common.format_table(["study", "sorter", "session", "true motion (um)",
                                "neurons present", "units found", "units matched"],
                               session_table(records), args.markdown))
    print()
    print(_common.format_table(COLUMNS, table(records), args.markdown))
    for rec in records:
        for sorter, res in rec["sorters"].items():
            a = res.get("route_agreement")
            if a:
                print(f"\n{rec['study']} / {sorter}: phy vs spikeinterface route, pair F1 "
                      f"{a['f1']:.3f} (precision {a['precision']:.3f}, recall "
                      f"{a['recall']:.3f}); units in one route only: {a['only_a']}, "
                      f"{a['only_b']}")
    if args.json:
        _common.write_json(args.json, {"header": header, "studies": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
