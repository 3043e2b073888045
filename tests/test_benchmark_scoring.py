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
