"""How well could the match probability be calibrated with a study's known non-matches?
(issue 12, item 3)

kilomatch calibrates its classifier's cross-fitted scores against the same-session pairs,
which stand for the candidates' non-matches, and there are few of them where matches and
non-matches meet. This script measures how much that number, and the calibration's
bootstrap averaging, limit the calibration, on the accuracy suite's datasets. For each
dataset kilomatch runs in this process (default settings plus the dataset's own, nothing
written); the scores of the candidate pairs of its fit and of its same-session pairs are
then calibrated again with kilomatch's own calibration
(``kilomatch.probability._fit_calibration``), against other sets of known non-matches taken
from ground truth:

- ``same-session``: the same-session pairs, as kilomatch (``kilomatch's run``: the run's own
  probability before its prior by session gap; ``same-session``: the same calibration again
  from the float32 scores a run keeps, the baseline of the rows below);
- ``every non-match``: every candidate pair of the fit that is not a match, the exact
  distribution the method assumes the same-session pairs follow;
- ``drawn x1`` (x2, x4): as many of those (twice, four times as many) as there are
  same-session pairs, drawn at random without replacement (``--draws`` times each);

each with the calibration kilomatch uses (``bagged``: the mean of isotonic fits on bootstrap
resamples) and with one isotonic fit (``one fit``). Each variant's probability of the fit's
candidate pairs is judged as accuracy.py judges a run (``kilomatch.metrics``: bins of 0.1
holding 50 pairs or more, missed when their share of matches lies more than 0.05 outside
the bin). The last table counts the datasets on which no bin is missed.

Run from the repository root::

    python benchmarks/calibration_limits.py --cache C [--datasets a,b] [--seed-offset N]
        [--draws 5] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import accuracy  # noqa: E402
import peers  # noqa: E402

from kilomatch import metrics  # noqa: E402
from kilomatch.linking import full_window  # noqa: E402
from kilomatch.probability import (_calibrated, _fit_calibration,  # noqa: E402
                                   _probability, CALIBRATION_BAGS)

MULTIPLES = (1, 2, 4)
CALIBRATIONS = (("bagged", CALIBRATION_BAGS), ("one fit", 0))


def fit_rows(pairs: np.ndarray, depth: np.ndarray, session: np.ndarray, max_distance: float,
             n_fitted: int) -> np.ndarray:
    """The candidate pairs (P, 2) the probability was fitted on: both units inside the span
    every session covers (kilomatch.linking.full_window), or every pair where that leaves too
    few (as kilomatch.linking.fit_links does). ``n_fitted``: the model's own count, checked."""
    inside = full_window(depth, session, max_distance)
    rows = np.flatnonzero(inside[pairs[:, 0]] & inside[pairs[:, 1]])
    if rows.size != n_fitted:
        rows = np.arange(len(pairs))
    if rows.size != n_fitted:
        raise RuntimeError(f"the fit's candidate pairs cannot be found again: {n_fitted} in "
                           f"the model, {rows.size} found")
    return rows


def misses_of(candidate_score: np.ndarray, truth: np.ndarray, negative_score: np.ndarray,
              prior: float, n_bags: int, seed: int = 0) -> int:
    """Bins missed by the probability of candidate pairs (scores (P,), truth (P,) bool) when
    the calibration takes ``negative_score`` (Q,) as its known non-matches."""
    score = np.r_[candidate_score, negative_score].astype(np.float64)
    cls = np.r_[np.ones(candidate_score.size, np.int8), np.zeros(negative_score.size, np.int8)]
    calibration = _fit_calibration(score, cls, seed, n_bags=n_bags)
    p = _probability(_calibrated(calibration, candidate_score.astype(np.float64)), prior)
    return len(metrics.calibration_misses(metrics.calibration_bins(p, truth))[1])


def limits(candidate_score: np.ndarray, truth: np.ndarray, same_session_score: np.ndarray,
           prior: float, draws: int = 5, seed: int = 0) -> dict:
    """Bins missed with each set of known non-matches and each calibration: {(set,
    calibration): misses (int), or the list of misses of every draw}. Sets as in the
    module's docstring; the draws are seeded with ``seed``."""
    non_match = candidate_score[~truth]
    rng = np.random.default_rng(seed)
    out = {}
    for label, bags in CALIBRATIONS:
        out[("same-session", label)] = misses_of(candidate_score, truth, same_session_score,
                                                 prior, bags)
        out[("every non-match", label)] = misses_of(candidate_score, truth, non_match, prior,
                                                    bags)
    for k in MULTIPLES:
        size = min(non_match.size, k * same_session_score.size)
        drawn = [rng.choice(non_match, size, replace=False) for _ in range(draws)]
        for label, bags in CALIBRATIONS:
            out[(f"drawn x{k}", label)] = [misses_of(candidate_score, truth, d, prior, bags, r)
                                           for r, d in enumerate(drawn)]
    return out


def run_dataset(key: str, args) -> dict:
    """Run kilomatch on one dataset in this process and measure its calibration limits."""
    import kilomatch

    name, description, sim_params, tool_settings = accuracy.DATASETS[key]
    label, seed = _common.with_seed_offset(f"{key}_{name}", sim_params["seed"], args.seed_offset)
    label, sim_params, data, info = _common.simulated(args.cache, label,
                                                      {**sim_params, "seed": seed})
    settings = peers.kilomatch_settings(data, Path(args.cache) / "runs" / label / "limits",
                                        tool_settings)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = kilomatch.run(settings, write=False)
    links = None if result.curated is None else getattr(result.curated, "links", None)
    if links is None:
        return {"dataset": label, "status": "no match probability"}
    model = links.model
    pairs = result.final.pairs
    rows = fit_rows(pairs, links.depth, links.session, result.settings.clustering.max_distance,
                    model.n_candidates)
    gt = np.load(Path(data) / "gt_neuron.npy").reshape(-1)
    a, b = gt[pairs[rows, 0]], gt[pairs[rows, 1]]
    truth = (a == b) & (a >= 0)
    found = limits(np.asarray(links.candidate_score[rows], np.float64), truth,
                   np.asarray(model.non_match_score, np.float64), model.prior, args.draws)
    # kilomatch's own probability of these pairs before the prior by session gap (its
    # calibration on the float64 scores; the recomputed rows above start from the float32
    # scores a run keeps, so a bin near its bound can come out otherwise)
    run_bins = metrics.calibration_bins(model.candidate_probability, truth)
    found = {("kilomatch's run", "bagged"): len(metrics.calibration_misses(run_bins)[1]),
             **found}
    print(f"dataset {label}: {model.n_non_matches} same-session pairs, {int((~truth).sum())} "
          f"candidate non-matches, {int(truth.sum())} matches", flush=True)
    return {"dataset": label, "status": "ok", "n_same_session": int(model.n_non_matches),
            "n_non_matches": int((~truth).sum()), "n_matches": int(truth.sum()),
            "prior": float(model.prior), "true_prior": float(truth.mean()),
            "misses": {f"{s} / {c}": v for (s, c), v in found.items()}}


def _cell(value) -> str:
    if isinstance(value, list):
        return f"{np.mean(value):.1f} ({sum(v == 0 for v in value)}/{len(value)} clean)"
    return str(value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="/tmp/kilomatch_bench")
    ap.add_argument("--datasets", default="", help="dataset keys or names (default: all)")
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--draws", type=int, default=5, help="random draws of each drawn set")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    keys = accuracy.select_datasets(args.datasets) or list(accuracy.DATASETS)
    header = _common.run_header(None, "none (not measured)")
    print(_common.header_text(header, args.markdown), end="\n\n", flush=True)
    results = [run_dataset(key, args) for key in keys]
    done = [r for r in results if r["status"] == "ok"]
    columns = ["kilomatch's run / bagged"] + [
        f"{s} / {c}" for s in ("same-session", "every non-match",
                               *[f"drawn x{k}" for k in MULTIPLES])
        for c, _ in CALIBRATIONS]
    print("\nbins missed (drawn sets: mean over the draws, and draws with none missed)\n")
    print(_common.format_table(["dataset", "same-session pairs", "candidate non-matches",
                                *columns],
                               [[r["dataset"], str(r["n_same_session"]), str(r["n_non_matches"]),
                                 *[_cell(r["misses"][c]) for c in columns]] for r in done],
                               args.markdown))
    clean = []
    for c in columns:
        values = [r["misses"][c] for r in done]
        n = sum(np.mean([v == 0 for v in x]) if isinstance(x, list) else x == 0 for x in values)
        clean.append([c, f"{n:.1f}" if any(isinstance(x, list) for x in values) else str(n),
                      str(len(done))])
    print("\ndatasets with no bin missed\n")
    print(_common.format_table(["known non-matches / calibration", "clean", "of"], clean,
                               args.markdown))
    skipped = [r["dataset"] for r in results if r["status"] != "ok"]
    if skipped:
        print(f"\nwithout a match probability (skipped): {', '.join(skipped)}")
    if args.json:
        _common.write_json(args.json, {"header": header, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
