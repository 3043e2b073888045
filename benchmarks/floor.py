"""The floor (issue 15): how long the unavoidable work of a study takes when done once, plainly,
and each kilomatch step's time as a multiple of its part of that floor.

The floor is one pass of what no implementation of the method can skip:

- **read**: the small input files, every unit's spike times, and one pass over the waveforms;
- **peak channels**: peak-to-trough per channel and its argmax, on the blocks as they are read;
- **channel sets**: each unit's waveform kept on its channel window (``window_um``);
- **candidate pairs**: units of different sessions at most ``max_distance`` apart in depth
  (peak-channel depth, no motion), at most ``max_session_gap`` sessions apart;
- **waveform products**: one grouped matrix product for the waveform correlations: pairs are
  grouped by the first unit's compared channels (its ``n_nearest_channels`` nearest its peak),
  and each group is one product of its units' standardised waveforms against its partners';
- **ACGs**: every unit's spike-time differences up to the window, binned (no smoothing).

Each part is written here with plain numpy, independently of kilomatch's own step (the
candidate pairs excepted: kilomatch's ``candidate_pairs`` is already one sort and one sweep). The
floor computes the same amount of arithmetic as the method's first pass, not its exact values.

kilomatch then runs on the same folder in a fresh process (``--no-run``: the last run's step
log is reused) and the table gives each step's wall and CPU time and its multiple of the floor:

    load              -> read
    features          -> peak channels + channel sets + ACGs
    motion rounds     -> candidate pairs + waveform products (one pass; the method runs one per
                         round, three by default)
    final clustering  -> candidate pairs + waveform products
    curation, export, figures: no floor part (shown against the whole floor)

CPU times are those of the main process only (kilomatch's ``n_jobs`` workers are not counted:
use ``--n-jobs 1`` to compare CPU times). On a busy machine compare CPU times, not wall times.

Run from the repository root::

    python benchmarks/floor.py                       # the speed.py study (~1,600 units) and 10k
    python benchmarks/floor.py --studies speed --n-jobs 1 --markdown
    python benchmarks/floor.py --studies 10000,100000  # 100k: ~10 GB of input, 11 GB to run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common  # noqa: E402  (also puts the repository root on sys.path as a fallback)
import scale  # noqa: E402
import speed  # noqa: E402

from kilomatch import channel_windows, features  # noqa: E402
from kilomatch.formats import folder as names  # noqa: E402
from kilomatch.load import iter_rows  # noqa: E402
from kilomatch.parameters import default_dict  # noqa: E402
from kilomatch.similarity import candidate_pairs  # noqa: E402

STEP_FLOORS = {
    "load": ["read"],
    "features": ["peak channels", "channel sets", "ACGs"],
    "motion rounds": ["candidate pairs", "waveform products"],
    "final clustering": ["candidate pairs", "waveform products"],
}
PARTS = ["read", "peak channels", "channel sets", "candidate pairs", "waveform products", "ACGs"]
COLUMNS = ["step", "wall (s)", "CPU (s)", "floor parts", "floor wall (s)", "floor CPU (s)",
           "x floor"]


class Clock:
    """Wall and CPU seconds spent in named parts (a part may be entered many times)."""

    def __init__(self):
        self.wall = dict.fromkeys(PARTS, 0.0)
        self.cpu = dict.fromkeys(PARTS, 0.0)

    @contextmanager
    def part(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        yield
        self.wall[name] += time.perf_counter() - w
        self.cpu[name] += time.process_time() - c


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def acg_counts(t: np.ndarray, n_bins: int, binwidth: float) -> np.ndarray:
    """Counts of positive spike-time differences (ms) per bin up to n_bins: (n_bins + 1,)."""
    ends = np.searchsorted(t, t + (n_bins + 0.5) * binwidth, side="right")
    counts = ends - np.arange(t.size) - 1
    first = np.repeat(np.arange(t.size), counts)
    starts = np.cumsum(counts) - counts
    second = first + 1 + np.arange(first.size) - np.repeat(starts, counts)
    return np.bincount(np.rint((t[second] - t[first]) / binwidth).astype(np.int64),
                       minlength=n_bins + 1)[:n_bins + 1]


def measure_floor(folder: Path, settings: dict | None = None) -> Clock:
    """Time the floor's parts on one input folder (see the module docstring)."""
    s = default_dict()
    for key, value in (settings or {}).items():
        s[key] = {**s[key], **value} if isinstance(value, dict) else value
    folder = Path(folder)
    clock = Clock()
    with clock.part("read"):
        locations = np.load(folder / names.CHANNEL_LOCATIONS)
        session = np.load(folder / names.SESSION_INDEX)
        if (folder / names.PETH).is_file():
            np.load(folder / names.PETH)
        spikes = [np.load(folder / names.SPIKE_TIMES / f"Unit{k}.npy").astype(np.float64)
                  for k in range(session.size)]
        waveforms = np.load(folder / names.WAVEFORMS, mmap_mode="r")
    n, c, t = waveforms.shape
    wc = s["waveformCorrection"]
    with clock.part("channel sets"):
        windows = channel_windows.window_table(locations, None, wc["window_um"],
                                               wc["n_nearest_channels"])
        values = np.empty((n, windows.shape[1], t), np.float32)
    peak = np.empty(n, np.int64)
    blocks = iter_rows(waveforms)
    while True:
        with clock.part("read"):
            start, block = next(blocks, (None, None))
        if block is None:
            break
        rows = slice(start, start + block.shape[0])
        with clock.part("peak channels"):
            peak[rows] = np.argmax(block.max(axis=2) - block.min(axis=2), axis=1)
        with clock.part("channel sets"):
            values[rows] = np.take_along_axis(block, windows[peak[rows]][:, :, None], axis=1)
    del blocks

    cl = s["clustering"]
    with clock.part("candidate pairs"):
        pairs = candidate_pairs(locations[peak, 1], session, cl["max_distance"], None,
                                cl["max_session_gap"])

    with clock.part("waveform products"):
        compared = features.nearest_channels(locations, np.arange(c), wc["n_nearest_channels"])
        slot = np.full((c, c), -1, np.int64)  # slot[p, ch]: ch's place in the window of peak p
        np.put_along_axis(slot, windows, np.arange(windows.shape[1])[None, :], axis=1)
        flat = values.reshape(-1, t)
        width = windows.shape[1]

        def rows_on(units, chans):
            s_ = slot[peak[units]][:, chans]
            out = flat[units[:, None] * width + np.maximum(s_, 0)]
            out[s_ < 0] = 0.0
            return _standardize(out.reshape(units.size, -1))

        key = peak[pairs[:, 0]]
        order = np.argsort(key, kind="stable")
        products = np.empty(len(pairs), np.float32)
        for idx in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
            if not idx.size:
                continue
            chans = compared[key[idx[0]]]
            own, own_pos = np.unique(pairs[idx, 0], return_inverse=True)
            other, other_pos = np.unique(pairs[idx, 1], return_inverse=True)
            products[idx] = (rows_on(own, chans) @ rows_on(other, chans).T)[own_pos, other_pos]

    ac = s["autoCorr"]
    with clock.part("ACGs"):
        n_bins = int(np.floor(ac["window"] / ac["binwidth"] + 1e-9))
        acg = np.empty((n, n_bins + 1))
        for k, times in enumerate(spikes):
            acg[k] = acg_counts(times, n_bins, ac["binwidth"])
    clock.n_units, clock.n_pairs = n, len(pairs)
    return clock


def step_rows(stages: list, clock: Clock) -> list:
    """Table rows: each step's wall and CPU time, its floor parts and its multiple of them."""
    total_wall, total_cpu = sum(clock.wall.values()), sum(clock.cpu.values())
    rows = []
    for st in stages:
        parts = STEP_FLOORS.get(st["stage"])
        f_wall = sum(clock.wall[p] for p in parts) if parts else total_wall
        f_cpu = sum(clock.cpu[p] for p in parts) if parts else total_cpu
        cpu = st.get("cpu_seconds")
        basis = (cpu, f_cpu) if cpu is not None else (st["seconds"], f_wall)
        rows.append([st["stage"], _common.fmt(st["seconds"], 2), _common.fmt(cpu, 2),
                     " + ".join(parts) if parts else "(whole floor)", _common.fmt(f_wall, 2),
                     _common.fmt(f_cpu, 2), _common.fmt(basis[0] / basis[1], 1)
                     if basis[1] > 0 else "-"])
    run_wall = sum(st["seconds"] for st in stages)
    cpus = [st.get("cpu_seconds") for st in stages]
    run_cpu = sum(cpus) if None not in cpus else None
    basis = (run_cpu, total_cpu) if run_cpu is not None else (run_wall, total_wall)
    rows.append(["all steps", _common.fmt(run_wall, 2), _common.fmt(run_cpu, 2), "whole floor",
                 _common.fmt(total_wall, 2), _common.fmt(total_cpu, 2),
                 _common.fmt(basis[0] / basis[1], 1)])
    return rows


def study(name: str, args) -> tuple[str, Path]:
    """(dataset name, folder) of 'speed' or a number of units (scale.py's studies)."""
    if name == "speed":
        dataset, params = speed.DATASET
    else:
        dataset, params = scale.dataset_for(int(name), args)
    return dataset, _common.simulated(args.cache, dataset, params)[2]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", default="speed,10000",
                    help="'speed' (speed.py's ~1,600 units) and/or numbers of units of "
                         "scale.py's studies, comma-separated (default: %(default)s; 100000 "
                         "needs ~11 GB)")
    ap.add_argument("--cache", default=_common.DEFAULT_CACHE)
    ap.add_argument("--n-jobs", type=int, default=None,
                    help="kilomatch's n_jobs (default: its settings' default); 1 to compare "
                         "CPU times with the single-process floor")
    ap.add_argument("--no-run", action="store_true",
                    help="reuse the step log of the last kilomatch run in the cache")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", help="also write every number to this file")
    # scale.py's study generator reads these
    ap.add_argument("--units-per-session", type=int, default=500)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--mem-limit-gb", type=float, default=22.0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(_common.header_text(_common.run_header(None, "-"), args.markdown), end="\n\n",
          flush=True)
    report = {}
    for name in [x.strip() for x in args.studies.split(",") if x.strip()]:
        dataset, folder = study(name, args)
        out = Path(args.cache) / "runs" / dataset / "kilomatch_floor"
        overrides = {} if args.n_jobs is None else {"n_jobs": args.n_jobs}
        if not args.no_run:
            print(f"running kilomatch on {dataset} ...", flush=True)
            r = scale.run_kilomatch(folder, out, args, overrides)
            if r["status"] != "ok":
                print(f"  kilomatch: {r['status']}", flush=True)
                continue
        stats_file = out / "stats.json"
        if not stats_file.exists():
            print(f"  no step log in {stats_file}: run without --no-run", flush=True)
            continue
        stages = json.loads(stats_file.read_text())["stages"]
        print(f"timing the floor on {dataset} ...", flush=True)
        clock = measure_floor(folder)
        print(f"\n{dataset}: {clock.n_units} units, {clock.n_pairs} candidate pairs at zero "
              "motion. Floor parts (wall / CPU s): " + ", ".join(
                  f"{p} {clock.wall[p]:.2f} / {clock.cpu[p]:.2f}" for p in PARTS))
        print("x floor: the step's CPU time over its floor parts' CPU time (wall over wall "
              "when the run has no CPU times)\n")
        print(_common.format_table(COLUMNS, step_rows(stages, clock), args.markdown), flush=True)
        report[dataset] = {"units": clock.n_units, "pairs": clock.n_pairs, "stages": stages,
                           "floor_wall_s": clock.wall, "floor_cpu_s": clock.cpu}
    if args.json:
        _common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
