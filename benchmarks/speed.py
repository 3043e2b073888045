"""Speed benchmark for the requirement (issue 15; the first speed issue asked for 5x):

    On an 8-session NP1 dataset of about 1,600 units, the whole run is at least 20x faster in
    wall time than pyKilomatch 0.0.7 on the same data in the same benchmark run, with lower
    peak memory.

The dataset is simulated once (fixed seed) into the cache folder. kilomatch, pyKilomatch 0.0.7
and (if installed) pyDANT 1.1.4 run one after the other, each in a fresh subprocess; wall time
covers the whole process (start-up and imports included) and peak memory is that of the whole
process tree (see _measure.py).

Run from the repository root::

    python benchmarks/speed.py
    python benchmarks/speed.py --markdown --json /tmp/speed.json
    python benchmarks/speed.py --smoke          # tiny data, to check the set-up only
    python benchmarks/speed.py --repeat 3       # each tool 3 times, in turn; the medians

On a shared or virtual machine one run of the same code can vary by 20% or more (seen on an
AMD EPYC cloud machine: 5.3-6.9 s for one kilomatch run); ``--repeat N`` runs the tools in
turn N times (kilomatch, pyKilomatch, kilomatch, ...) and judges each tool by its median
wall time and its highest peak memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (also puts the repository root on sys.path as a fallback)
import peers  # noqa: E402
import _measure  # noqa: E402
from _measure import memory_method  # noqa: E402

# 8 sessions on NP1, 40 um of rigid drift; 410 neurons give ~1,600 sorted units.
DATASET = ("speed_np1_1600", {"n_sessions": 8, "n_neurons": 410, "probe": "NP1",
                              "drift_max_um": 40.0, "seed": 2024})

REQUIRED_SPEEDUP = 20.0
REFERENCE = "pykilomatch"

COLUMNS = ["tool", "wall (s)", "peak mem (MB)", "speed-up (x)", "memory ratio", "F1",
           "status"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="kilomatch vs pyKilomatch 0.0.7: wall time and "
                                             "peak memory on ~1,600 units")
    peers.add_run_arguments(ap, "tiny dataset (3 sessions x 40 neurons): checks the set-up only")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run the tools in turn N times; each tool is judged by its median wall "
                         "time and its highest peak memory (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be 1 or more")
    return args


def combined(runs: list) -> dict:
    """One tool's N runs as one result: the last run's fields, with ``wall_s`` the median wall
    time of the runs, ``peak_rss_mb`` their highest peak memory and ``wall_runs_s`` each run's
    wall time; the status of the first run that was not ok, if any (then no median)."""
    out = dict(runs[-1])
    failed = [r for r in runs if r["status"] != "ok"]
    walls = [r["wall_s"] for r in runs]
    out["wall_runs_s"] = walls
    if failed:
        out.update({k: failed[0][k] for k in ("status", "wall_s", "peak_rss_mb")})
        return out
    out["wall_s"] = float(np.median(walls))
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def ratio(numerator, denominator):
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def verdicts(by_tool: dict) -> dict:
    """PASS / FAIL of the two criteria, comparing kilomatch with pyKilomatch 0.0.7."""
    ours, ref = by_tool.get("kilomatch"), by_tool.get(REFERENCE)
    if ours is None or ref is None:
        missing = "not run"
        return {"speed": missing, "memory": missing}
    if ours["status"] != "ok" or ref["status"] != "ok":
        why = "n/a: kilomatch failed" if ours["status"] != "ok" else \
            f"n/a: pyKilomatch {ref['status']}"
        return {"speed": why, "memory": why}
    speedup = ratio(ref["wall_s"], ours["wall_s"])
    speed = "PASS" if speedup >= REQUIRED_SPEEDUP else "FAIL"
    memory = "PASS" if ours["peak_rss_mb"] < ref["peak_rss_mb"] else "FAIL"
    return {"speed": f"{speed} ({speedup:.1f}x, need >= {REQUIRED_SPEEDUP:g}x)",
            "memory": f"{memory} ({ours['peak_rss_mb']:.0f} MB vs {ref['peak_rss_mb']:.0f} MB)"}


def table_rows(results: list, ours: dict | None) -> list:
    """Cells of every tool; ratios are the tool's time / memory over kilomatch's."""
    rows = []
    for r in results:
        speedup = ratio(r["wall_s"], ours["wall_s"]) if ours else None
        mem_ratio = ratio(r["peak_rss_mb"], ours["peak_rss_mb"]) if ours else None
        rows.append([peers.PEER_LABELS[r["tool"]], _common.fmt(r["wall_s"], 1),
                     _common.fmt(r["peak_rss_mb"], 0), _common.fmt(speedup, 1),
                     _common.fmt(mem_ratio, 2), _common.fmt(r["f1"]), r["status"]])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    _measure.COLD_START = args.cold
    tools = [t.strip().lower() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in peers.TOOLS]
    if unknown:
        sys.exit(f"unknown tool(s) {unknown}; choose from {', '.join(peers.TOOLS)}")
    peers_py = peers.peers_python(args.peers_python)
    if peers_py is None:
        print("note: no peers Python found (--peers-python / KILOMATCH_PEERS_PYTHON); "
              "pyKilomatch and pyDANT are skipped", flush=True)
    header = _common.run_header(peers_py, memory_method())
    print(_common.header_text(header, args.markdown), end="\n\n", flush=True)

    name, sim_params, data, info = _common.simulated(args.cache, *DATASET, smoke=args.smoke)
    print(f"dataset {name}: {info['n_units']} units, {info['n_sessions']} sessions, "
          f"NP1, motion range {info['motion_range_um']:.0f} um", flush=True)

    limit = None if args.mem_limit_gb is None else args.mem_limit_gb * 1024
    runs = {tool: [] for tool in tools}
    for round_ in range(args.repeat):
        for tool in tools:
            of = f" (run {round_ + 1} of {args.repeat})" if args.repeat > 1 else ""
            print(f"  running {peers.PEER_LABELS[tool]}{of} ...", flush=True)
            r = peers.run_tool(tool, data, Path(args.cache) / "runs" / name / tool, peers_py,
                               None, args.timeout, limit)
            r.update(peers.score(r, data))
            print(f"    {r['status']}; {_common.fmt(r['wall_s'], 1)} s; "
                  f"{_common.fmt(r['peak_rss_mb'], 0)} MB", flush=True)
            runs[tool].append(r)
    results = [combined(runs[tool]) for tool in tools]

    by_tool = {r["tool"]: r for r in results}
    verdict = verdicts(by_tool)
    print()
    print(_common.header_text(header, args.markdown), end="\n\n")
    print(f"dataset: {name}, {info['n_units']} units, {info['n_sessions']} sessions, NP1"
          + (" (SMOKE: not the required size)" if args.smoke else ""))
    print("speed-up = tool wall time / kilomatch wall time; memory ratio = tool peak memory / "
          "kilomatch peak memory\n")
    print(_common.format_table(COLUMNS, table_rows(results, by_tool.get("kilomatch")),
                               args.markdown))
    bullet = "- " if args.markdown else ""
    if args.repeat > 1:
        print(f"\nwall time and speed-up: the median of {args.repeat} runs of each tool, run in "
              "turn; peak memory: the highest of them")
        for r in results:
            walls = ", ".join(_common.fmt(w, 1) for w in r["wall_runs_s"])
            print(f"{bullet}{peers.PEER_LABELS[r['tool']]}: {walls} s")
    print(f"\n{bullet}{REQUIRED_SPEEDUP:g}x faster than pyKilomatch 0.0.7: {verdict['speed']}")
    print(f"{bullet}lower peak memory than pyKilomatch 0.0.7: {verdict['memory']}")
    notes = _common.notes_text(results, args.markdown)
    if notes:
        print("\n" + notes)
    if args.json:
        payload = {"header": header, "dataset": {"name": name, "simulation": sim_params, **info},
                   "verdict": verdict,
                   "results": [{k: v for k, v in r.items()
                                if k not in ("idx_final", "idx_before_curation", "motion")}
                               for r in results]}
        _common.write_json(args.json, payload)
    passed = verdict["speed"].startswith("PASS") and verdict["memory"].startswith("PASS")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
