"""Compare accuracy runs of two designs, run by run:
``python benchmarks/compare.py BASE.json CANDIDATE.json [BASE2.json CANDIDATE2.json ...]``.

Each pair of files is one accuracy.py run (``--json``) of the baseline and of the candidate on
the same data (same ``--seed-offset``) and the same settings seed (``--kilomatch-settings
'{"seed": N}'``). One pair is not enough to decide: with the settings seed alone (0 -> 1)
the suite's sum of F1 moved by up to 0.026 and one dataset's F1 by up to 0.018
(benchmarks/RESULTS.md, "Session 33"). Give several pairs (data offsets x settings seeds); the script prints, for
each pair, the sum of F1 of both, the runs whose calibration missed no bin, the datasets
with precision below 0.99, those where curation lowered F1 and the wrong pairs by kind
(accuracy.py's column; "-" for a JSON without it); then, per dataset, the mean
change of F1 over the pairs and in how many pairs it fell. Datasets are matched by name;
one missing or failed on either side is left out of that pair and named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _common  # (also puts the repository root on sys.path as a fallback)
from kilomatch.metrics import WRONG_PAIR_KINDS  # noqa: E402

PRECISION_TARGET = 0.99


def load_results(path) -> dict:
    """{dataset: result row} of kilomatch's rows in one accuracy.py JSON."""
    try:
        rows = json.loads(Path(path).read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not an accuracy.py --json file ({err})")
    return {r["dataset"]: r for r in rows if r.get("tool", "kilomatch") == "kilomatch"}


def _ok(row) -> bool:
    return row is not None and row.get("status", "ok") == "ok" and row.get("f1") is not None


def _clean(row) -> bool:
    calibration = row.get("calibration") or {}
    return bool(calibration.get("judged")) and not calibration.get("misses")


def _summary(rows: list) -> dict:
    return {"f1_sum": sum(r["f1"] for r in rows),
            "calibration_clean": sum(_clean(r) for r in rows),
            # the runs a probability exact pair by pair would leave clean, binomial noise
            # alone (peers.calibration's clean_chance; runs judged before it had none)
            "calibration_clean_if_exact": sum((r.get("calibration") or {}).get("clean_chance", 0.0)
                                              for r in rows),
            "precision_below": [r["dataset"] for r in rows
                                if r.get("precision") is not None
                                and r["precision"] < PRECISION_TARGET],
            "curation_lowers": [r["dataset"] for r in rows
                                if r.get("f1_before") is not None
                                and r["f1"] < r["f1_before"] - 1e-9],
            "wrong_pairs": _wrong_pairs(rows)}


def _wrong_pairs(rows: list) -> list | None:
    """The rows' wrong pairs summed per kind (succession, interleaved, same session:
    kilomatch.metrics.wrong_pairs_by_kind), or None when a row lacks them (a JSON from
    before session 47)."""
    counts = [r.get("wrong_pairs") for r in rows]
    if not counts or any(c is None for c in counts):
        return None
    return [sum(c[k] for c in counts) for k in WRONG_PAIR_KINDS]


def compare_pair(base: dict, candidate: dict) -> dict:
    """One run of each design ({dataset: row}): both sides' summaries over the datasets
    both ran, each such dataset's F1 change (candidate - base), and the datasets left out."""
    shared = [k for k in base if _ok(base[k]) and _ok(candidate.get(k))]
    left_out = sorted((set(base) | set(candidate)) - set(shared))
    return {"base": _summary([base[k] for k in shared]),
            "candidate": _summary([candidate[k] for k in shared]),
            "change": {k: candidate[k]["f1"] - base[k]["f1"] for k in shared},
            "left_out": left_out}


def compare(pairs: list) -> dict:
    """Several (base, candidate) runs: each pair's compare_pair, and per kind of dataset
    (its name without the seed offset) the mean F1 change and the number of pairs where it
    fell, over the pairs that ran it."""
    each = [compare_pair(b, c) for b, c in pairs]
    changes: dict = {}
    for one in each:
        for dataset, change in one["change"].items():
            changes.setdefault(_common.without_seed_offset(dataset), []).append(change)
    per_kind = {k: {"mean": sum(v) / len(v), "fell": sum(x < -1e-9 for x in v),
                    "rose": sum(x > 1e-9 for x in v), "n": len(v)}
                for k, v in sorted(changes.items())}
    sums = [one["candidate"]["f1_sum"] - one["base"]["f1_sum"] for one in each]
    return {"pairs": each, "per_kind": per_kind, "sum_changes": sums,
            "lower_in": sum(s < -1e-9 for s in sums)}


def report(result: dict, names: list) -> str:
    lines = ["| pair | F1 sum, base | F1 sum, candidate | change | calibration clean "
             "(base / candidate) | precision < 0.99 (candidate) | curation lowers F1 "
             "(candidate) | wrong pairs: succession / interleaved / same session (base -> "
             "candidate) |", "|---|---|---|---|---|---|---|---|"]
    for name, one, change in zip(names, result["pairs"], result["sum_changes"]):
        b, c = one["base"], one["candidate"]
        lines.append(f"| {name} | {b['f1_sum']:.4f} | {c['f1_sum']:.4f} | {change:+.4f} | "
                     f"{b['calibration_clean']} / {c['calibration_clean']} | "
                     f"{', '.join(c['precision_below']) or 'none'} | "
                     f"{', '.join(c['curation_lowers']) or 'none'} | "
                     f"{_kinds(b['wrong_pairs'])} -> {_kinds(c['wrong_pairs'])} |")
    for name, one in zip(names, result["pairs"]):
        if one["left_out"]:
            lines.append(f"\n{name}: left out (missing or failed on one side): "
                         + ", ".join(one["left_out"]))
    n = len(result["pairs"])
    exact = [one["candidate"].get("calibration_clean_if_exact", 0.0) for one in result["pairs"]]
    if any(exact):
        lines += ["", "Calibration clean were every probability exact (binomial noise alone, "
                  "candidate): " + ", ".join(f"{name} {x:.1f}" for name, x in zip(names, exact))
                  + "."]
    lines += ["", f"The candidate's sum is lower in {result['lower_in']} of {n} pairs.", "",
              "| dataset | mean F1 change | pairs where it fell / rose / ran |",
              "|---|---|---|"]
    for kind, v in result["per_kind"].items():
        lines.append(f"| {kind} | {v['mean']:+.4f} | {v['fell']} / {v['rose']} / {v['n']} |")
    return "\n".join(lines)


def _kinds(counts: list | None) -> str:
    return "-" if counts is None else " / ".join(map(str, counts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="BASE.json CANDIDATE.json, one pair per run")
    args = parser.parse_args(argv)
    if len(args.files) % 2:
        print("compare.py: give the files in pairs, BASE.json CANDIDATE.json", file=sys.stderr)
        return 2
    pairs, names = [], []
    for base, candidate in zip(args.files[::2], args.files[1::2]):
        pairs.append((load_results(base), load_results(candidate)))
        names.append(f"{Path(base).name} vs {Path(candidate).name}")
    print(report(compare(pairs), names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
