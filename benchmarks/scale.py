"""Scale benchmark (issue 5): wall time and peak memory as studies grow.

Simulated Neuropixels 1.0 studies with a constant number of units per session (default 500)
and more and more sessions: about 2k, 10k, 30k and 100k units by default. For each size the
whole kilomatch pipeline runs in a fresh process; the table gives wall time and peak memory in
all, each step's time and the peak memory reached by the end of it, and the fitted growth
exponent of time against units. pyKilomatch 0.0.7, when installed, runs on the same sizes
until it fails or is stopped at the memory cap; later sizes are then skipped for it.

Run from the repository root, one size at a time if you like::

    python benchmarks/scale.py --sizes 2000,10000 --markdown
    python benchmarks/scale.py --tools kilomatch --sizes 30000 --mem-limit-gb 22

Spike trains are short (``--duration``, 120 s per session) so that the files stay small; the
waveforms are full-probe float32 (12.6 GB at 100k units), as a user's input would be.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common  # noqa: E402  (also puts the repository root on sys.path as a fallback)
import peers  # noqa: E402
import _measure  # noqa: E402
from _measure import measure, memory_method  # noqa: E402

COLUMNS = ["tool", "units", "sessions", "wall (s)", "peak mem (MB)", "F1", "status", "steps"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peers.add_run_arguments(ap, "600 and 1200 units (300 per session): checks the set-up only")
    ap.add_argument("--sizes", default="2000,10000,30000,100000",
                    help="comma-separated numbers of units (default: %(default)s)")
    ap.add_argument("--units-per-session", type=int, default=500)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds per session")
    args = ap.parse_args(argv)
    if args.mem_limit_gb is None:
        args.mem_limit_gb = 22.0  # the machine has 24 GB: stop a tool before it swaps or dies
    return args


def neurons_for(n_units: int, n_sessions: int, units_per_session: int, seed: int) -> int:
    """Number of simulated neurons that gives about ``units_per_session`` sorted units per
    session (neurons come and go, so it depends on the number of sessions): one cheap trial
    simulation (waveforms are lazy), then a proportional correction."""
    from kilomatch.simulate import simulate
    guess = 3 * units_per_session
    trial = simulate(n_sessions=n_sessions, n_neurons=guess, seed=seed, duration_s=1.0)
    per_session = trial.n_units / n_sessions
    return max(10, int(round(guess * units_per_session / max(per_session, 1.0))))


def dataset_for(n_units: int, args) -> tuple[str, dict]:
    n_sessions = max(2, int(round(n_units / args.units_per_session)))
    seed = 1000 + n_sessions
    params = {"n_sessions": n_sessions, "probe": "NP1", "seed": seed,
              "duration_s": args.duration, "drift_max_um": 40.0,
              "n_neurons": neurons_for(n_units, n_sessions, args.units_per_session, seed)}
    return f"scale_{n_units}", params


def run_kilomatch(data: Path, out: Path, args, overrides: dict | None = None) -> dict:
    """kilomatch in a fresh process (settings: defaults + ``overrides``), with its per-step
    statistics."""
    out.mkdir(parents=True, exist_ok=True)
    settings = peers.kilomatch_settings(data, out / "output", overrides)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    stats_file = out / "stats.json"
    if stats_file.exists():
        stats_file.unlink()
    cmd = [sys.executable, str(Path(__file__).with_name("_runner_kilomatch.py")),
           str(out / "settings.json"), str(stats_file)]
    limit = args.mem_limit_gb * 1024
    result = measure(cmd, timeout=args.timeout, mem_limit_mb=limit, log_dir=out)
    result["tool"] = "kilomatch"
    if stats_file.exists():
        stats = json.loads(stats_file.read_text())
        result["stages"] = stats["stages"]
        result["f1"] = stats["summary"].get("gt_f1")
    return result


def run_peer(tool: str, data: Path, out: Path, peers_py, args) -> dict:
    result = peers.run_tool(tool, data, out, peers_py, None, args.timeout,
                            args.mem_limit_gb * 1024)
    result["f1"] = peers.score(result, data)["f1"]
    return result


def steps_text(stages) -> str:
    if not stages:
        return ""
    def cpu(s):  # runs before the step log had CPU times have none
        return "" if s.get("cpu_seconds") is None else f" (CPU {s['cpu_seconds']:.0f} s)"
    return "; ".join(f"{s['stage']} {s['seconds']:.0f} s{cpu(s)} / "
                     f"{s['peak_memory_mb'] / 1024:.1f} GB"
                     for s in stages if s.get("peak_memory_mb") is not None)


def growth_exponent(rows: list) -> float | None:
    """Slope of log(wall time) against log(units) over the tool's successful sizes."""
    ok = [(r["units"], r["wall_s"]) for r in rows if r["status"] == "ok" and r["wall_s"]]
    if len(ok) < 2:
        return None
    n, t = np.log([u for u, _ in ok]), np.log([w for _, w in ok])
    return float(np.polyfit(n, t, 1)[0])


def main(argv=None) -> int:
    args = parse_args(argv)
    _measure.COLD_START = args.cold
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.smoke:  # two small sizes with a growing number of sessions
        sizes, args.units_per_session = [600, 1200], 300
    peers_py = peers.peers_python(args.peers_python)
    print(_common.header_text(_common.run_header(peers_py, memory_method()), args.markdown),
          end="\n\n", flush=True)
    rows, failed = [], set()
    for n_units in sizes:
        name, params = dataset_for(n_units, args)
        name, _, data, info = _common.simulated(args.cache, name, params)
        print(f"dataset {name}: {info['n_units']} units, {info['n_sessions']} sessions", flush=True)
        for tool in tools:
            out = Path(args.cache) / "runs" / name / tool
            if tool in failed:
                r = {"tool": tool, "status": "skipped: failed at a smaller size", "wall_s": None,
                     "peak_rss_mb": None}
            elif tool == "kilomatch":
                r = run_kilomatch(data, out, args)
            else:
                r = run_peer(tool, data, out, peers_py, args)
            if r["status"] != "ok" and tool != "kilomatch":
                failed.add(tool)
            r.update(units=info["n_units"], sessions=info["n_sessions"])
            print(f"  {peers.PEER_LABELS[tool]}: {r['status']}; {_common.fmt(r['wall_s'], 1)} s; "
                  f"{_common.fmt(r['peak_rss_mb'], 0)} MB", flush=True)
            rows.append(r)
    table = [[peers.PEER_LABELS[r["tool"]], str(r["units"]), str(r["sessions"]),
              _common.fmt(r["wall_s"], 1), _common.fmt(r["peak_rss_mb"], 0),
              _common.fmt(r.get("f1")), r["status"], steps_text(r.get("stages"))] for r in rows]
    print()
    print(_common.format_table(COLUMNS, table, args.markdown))
    for tool in tools:
        slope = growth_exponent([r for r in rows if r["tool"] == tool])
        if slope is not None:
            print(f"- {peers.PEER_LABELS[tool]}: wall time grows as N^{slope:.2f} "
                  f"(fit over its successful sizes)")
    if args.json:
        _common.write_json(args.json, {"rows": [{k: v for k, v in r.items()
                                                 if k not in ("idx_final", "idx_before_curation",
                                                              "motion")} for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
