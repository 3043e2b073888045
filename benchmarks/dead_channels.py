"""Channels that stop recording over a study: kilomatch with and without ``fill_dead_channels``.

Each study of the accuracy suite chosen is simulated again with a share of its channels dying
over the sessions (``dead_channel_share``: each dies in a session drawn from 2..S and reads 0
in every unit from then on, as a sorting whose channel map leaves the failed site out, padded
to the probe, would). kilomatch runs on each with the setting on (the default) and off (the
tracking before session 27), in this process, default settings otherwise; the table gives
precision / recall / F1 of matched pairs against the ground truth, and how many of the
(session, channel) pairs made dead were found.

Run from the repository root::

    python benchmarks/dead_channels.py
    python benchmarks/dead_channels.py --datasets a,h --shares 0.1 --seed-offset 1000
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from accuracy import DATASETS  # noqa: E402

import kilomatch  # noqa: E402
from kilomatch import metrics  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="a,d,e,g,h,j,p",
                    help="accuracy suite keys (default: a,d,e,g,h,j,p)")
    ap.add_argument("--shares", default="0.05,0.1,0.25",
                    help="shares of the channels that die over each study")
    ap.add_argument("--seed-offset", type=int, default=0, help="fresh studies of the same kinds")
    ap.add_argument("--cache", default="/tmp/kilomatch_bench", help="folder for simulated data")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return ap.parse_args(argv)


def run(folder: Path, fill: bool) -> tuple:
    """(precision, recall, F1, (S, C) dead channels found or None) of one default run."""
    logging.disable(logging.WARNING)  # the dead channels are counted here instead
    try:
        r = kilomatch.run({"path_to_data": str(folder), "fill_dead_channels": fill},
                          write=False)
    finally:
        logging.disable(logging.NOTSET)
    gt = np.load(folder / "gt_neuron.npy", allow_pickle=False).ravel()
    s = metrics.pair_scores(r.idx_cluster, gt, r.data.session_index)
    return s["precision"], s["recall"], s["f1"], r.units.dead_channels


def made_dead(folder: Path) -> np.ndarray:
    """(S, C) bool: channels the simulation made dead in each session (simulation.json)."""
    from kilomatch.simulate import simulate
    import json
    params = json.loads((folder / "simulation.json").read_text())["params"]
    sim = simulate(**params)
    s = np.arange(1, sim.params.n_sessions + 1)
    return sim.channel_death[None, :] <= s[:, None]


def main(argv=None) -> int:
    args = parse_args(argv)
    shares = [float(x) for x in args.shares.split(",")]
    header = ["dataset", "dead share", "P / R / F1 filled", "P / R / F1 not filled",
              "dead found / made"]
    rows = []
    for key in args.datasets.split(","):
        name, _, params, _ = DATASETS[key]
        for share in shares:
            study, seed = _common.with_seed_offset(f"{key}_{name}_dead{share:g}",
                                                   params["seed"], args.seed_offset)
            folder = _common.ensure_dataset(args.cache, study, {
                **params, "seed": seed, "dead_channel_share": share}, verbose=False)
            on, off = run(folder, True), run(folder, False)
            truth = made_dead(folder)
            found = np.zeros_like(truth) if on[3] is None else on[3]
            rows.append([study, f"{share:g}", " / ".join(_common.fmt(v) for v in on[:3]),
                         " / ".join(_common.fmt(v) for v in off[:3]),
                         f"{int((found & truth).sum())} (+{int((found & ~truth).sum())}) / "
                         f"{int(truth.sum())}"])
            print("  " + "  ".join(rows[-1]), flush=True)
    print()
    print(_common.header_text(_common.run_header(None, "-"), args.markdown), end="\n\n")
    print(_common.format_table(header, rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
