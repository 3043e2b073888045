"""The benchmarks' scoring of a run against ground truth (benchmarks/peers.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
peers = pytest.importorskip("peers")


def test_a_real_sorters_unmatched_units_are_left_out_of_the_matched_units_score(tmp_path):
    # Units 0, 1: neuron 0 on days 1, 2; 3, 4: neuron 1; unit 2 (day 2) matched no neuron
    # (a negative id of its own, as benchmarks/sorted_study.py writes). The run puts unit 2
    # with neuron 1's day-1 unit and leaves neuron 1's day-2 unit alone.
    np.save(tmp_path / "gt_neuron.npy", np.array([0, 0, -3, 1, 1]))
    np.save(tmp_path / "session_index.npy", np.array([1, 2, 2, 1, 2]))
    idx = np.array([1, 1, 2, 2, 3])
    row = peers.score({"idx_final": idx, "idx_before_curation": idx, "motion": None,
                       "notes": []}, tmp_path)
    # Every unit: 1 of 2 pairs made is right, 1 of 2 true pairs found.
    assert (row["precision"], row["recall"]) == (0.5, 0.5)
    # Matched units only: the one pair made is right; neuron 1's pair is still missed.
    m = row["matched_only"]
    assert (m["precision"], m["recall"], m["n_units"]) == (1.0, 0.5, 4)


def test_no_matched_units_score_when_every_unit_is_a_neuron(tmp_path):
    np.save(tmp_path / "gt_neuron.npy", np.array([0, 0, 1]))
    np.save(tmp_path / "session_index.npy", np.array([1, 2, 2]))
    idx = np.array([1, 1, 2])
    row = peers.score({"idx_final": idx, "idx_before_curation": idx, "motion": None,
                       "notes": []}, tmp_path)
    assert row["f1"] == 1.0 and row["matched_only"] is None


def test_a_sorters_duplicate_is_its_neuron_in_the_best_match_score(tmp_path):
    # Units 0, 1: neuron 0 on days 1, 2; unit 2 (day 2) holds neuron 0's spikes again (a
    # duplicate: the Hungarian match gave neuron 0 to unit 1, so unit 2 is "no neuron"
    # there; its best match is neuron 0). The run tracks all three together.
    np.save(tmp_path / "gt_neuron.npy", np.array([0, 0, -3]))
    np.save(tmp_path / "gt_neuron_best.npy", np.array([0, 0, 0]))
    np.save(tmp_path / "session_index.npy", np.array([1, 2, 2]))
    idx = np.array([1, 1, 1])
    row = peers.score({"idx_final": idx, "idx_before_curation": idx, "motion": None,
                       "notes": []}, tmp_path)
    # Hungarian: pair (0, 2) counts wrong; best match: both pairs across days are right
    assert (row["precision"], row["recall"]) == (0.5, 1.0)
    b = row["best_match"]
    assert (b["precision"], b["recall"], b["n_units"]) == (1.0, 1.0, 3)
    # a run that leaves the duplicate out misses a true pair by the best match
    idx = np.array([1, 1, -1])
    row = peers.score({"idx_final": idx, "idx_before_curation": idx, "motion": None,
                       "notes": []}, tmp_path)
    assert row["f1"] == 1.0 and row["best_match"]["recall"] == 0.5


def test_kilomatchs_probability_is_judged_against_the_truth(tmp_path):
    # 60 candidate pairs at p 0.95 of which 45 are one neuron (0.75: a miss below [0.9, 1]),
    # 60 at p 0.05 of which none is, 10 at p 0.5 (too few to judge); a unit of no neuron
    # (id -1) is nobody's match, not even another's of no neuron.
    n = 20
    gt = np.r_[np.arange(n), np.arange(n), -np.ones(2 * n, int)]
    session = np.r_[np.ones(n, int), np.full(n, 2), np.ones(n, int), np.full(n, 2)]
    same = np.column_stack([np.arange(n), np.arange(n) + n])        # 20 true pairs
    other = np.column_stack([np.arange(n), (np.arange(n) + 1) % n + n])  # 20 non-matches
    nobody = np.column_stack([np.arange(2 * n, 3 * n), np.arange(3 * n, 4 * n)])  # ids -1
    pairs = np.vstack([same, same, same[:5], other[:15], other, other, nobody, nobody[:10]])
    p = np.r_[np.full(45, 0.95), np.full(15, 0.95), np.full(40, 0.05), np.full(20, 0.05),
              np.full(10, 0.5)]
    out = tmp_path / "run" / "output"
    out.mkdir(parents=True)
    np.savez(out / "CandidatePairs.npz", pairs=pairs, probability=p)
    np.save(tmp_path / "gt_neuron.npy", gt)
    np.save(tmp_path / "session_index.npy", session)
    idx = np.arange(gt.size)
    row = peers.score({"tool": "kilomatch", "run_dir": str(tmp_path / "run"),
                       "idx_final": idx, "idx_before_curation": idx, "motion": None,
                       "notes": []}, tmp_path)
    cal = row["calibration"]
    assert cal["judged"] == 2
    assert [(m["low"], m["n_pairs"], m["true_fraction"]) for m in cal["misses"]] == [
        (0.9, 60, 0.75)]
    assert peers.calibration_cell(cal) == "1/2 (0.00 by chance): [0.9,1.0) 0.75"
    assert peers.calibration_cell({"judged": 3, "misses": []}) == "0/3"
    # were the probabilities exact, the 60 pairs at 0.95 would miss [0.9, 1.0] (50 true or
    # fewer) with chance 0.00074 (binomial), the 60 at 0.05 (10 true or more) too
    assert abs(cal["expected_misses"] - 2 * 0.000738) < 1e-5
    assert abs(cal["clean_chance"] - (1 - cal["expected_misses"])) < 1e-4
    # a peer's run, or a run without a probability, has none
    assert peers.score({"tool": "pykilomatch", "run_dir": str(tmp_path / "run"),
                        "idx_final": idx, "idx_before_curation": idx, "motion": None,
                        "notes": []}, tmp_path)["calibration"] is None
    assert peers.calibration_cell(None) == "-"


def test_repeated_speed_runs_are_judged_by_their_median_and_highest_memory():
    speed = pytest.importorskip("speed")

    def run(tool, wall, memory, status="ok"):
        return {"tool": tool, "wall_s": wall, "peak_rss_mb": memory, "status": status}

    # One slow kilomatch run of three (a busy machine) must not decide the verdict, nor may
    # one small peak memory hide a larger one.
    ours = speed.combined([run("kilomatch", 5.0, 400), run("kilomatch", 9.0, 450),
                           run("kilomatch", 4.6, 420)])
    ref = speed.combined([run("pykilomatch", 100.0, 1900), run("pykilomatch", 101.0, 1950),
                          run("pykilomatch", 99.0, 1920)])
    assert (ours["wall_s"], ours["peak_rss_mb"]) == (5.0, 450)
    assert ours["wall_runs_s"] == [5.0, 9.0, 4.6]
    verdict = speed.verdicts({"kilomatch": ours, "pykilomatch": ref})
    assert verdict["speed"].startswith("PASS (20.0x")
    assert verdict["memory"].startswith("PASS (450 MB")
    # A failed run is not averaged away: the tool's result is that failure.
    failed = speed.combined([run("kilomatch", 5.0, 400), run("kilomatch", None, None, "crashed")])
    assert failed["status"] == "crashed"
    assert speed.verdicts({"kilomatch": failed, "pykilomatch": ref})["speed"].startswith("n/a")


def _run_rows(f1s: dict, before: dict | None = None, missed: tuple = ()) -> dict:
    return {k: {"dataset": k, "tool": "kilomatch", "status": "ok", "f1": v, "precision": 1.0,
                "f1_before": (before or {}).get(k, v),
                "calibration": {"judged": 3, "misses": [{"low": 0.8}] if k in missed else []}}
            for k, v in f1s.items()}


def test_design_comparison_pairs_runs_by_dataset_and_counts_where_the_candidate_fell():
    """benchmarks/compare.py: each (base, candidate) pair is one run of the suite; a dataset
    is matched by name within a pair and by its kind (name without the seed offset) across
    pairs, a failed run is left out of its pair, and curation that lowered F1 is named."""
    compare = pytest.importorskip("compare")
    run1 = (_run_rows({"a_x": 0.90, "b_y": 0.80}),
            _run_rows({"a_x": 0.95, "b_y": 0.70}, before={"b_y": 0.75}, missed=("a_x",)))
    run2 = (_run_rows({"a_x_seed+1000": 0.90, "b_y_seed+1000": 0.80, "c_z_seed+1000": 1.0}),
            _run_rows({"a_x_seed+1000": 0.85, "b_y_seed+1000": 0.80, "c_z_seed+1000": 1.0}))
    run2[1]["c_z_seed+1000"]["status"] = "failed"
    out = compare.compare([run1, run2])
    assert out["sum_changes"] == pytest.approx([-0.05, -0.05])
    assert out["lower_in"] == 2
    assert out["pairs"][1]["left_out"] == ["c_z_seed+1000"]
    assert out["per_kind"]["a_x"] == {"mean": pytest.approx(0.0), "fell": 1, "rose": 1, "n": 2}
    assert out["per_kind"]["b_y"]["fell"] == 1 and out["per_kind"]["b_y"]["n"] == 2
    first = out["pairs"][0]
    assert first["candidate"]["curation_lowers"] == ["b_y"]
    assert (first["base"]["calibration_clean"], first["candidate"]["calibration_clean"]) == (2, 1)
    # the wrong pairs summed by kind; a JSON from before they were counted shows none
    assert first["base"]["wrong_pairs"] is None
    for row, kinds in zip(run1[1].values(), ([3, 1, 0], [2, 0, 1])):
        row["wrong_pairs"] = dict(zip(compare.WRONG_PAIR_KINDS, kinds))
    assert compare.compare([run1])["pairs"][0]["candidate"]["wrong_pairs"] == [5, 1, 1]
