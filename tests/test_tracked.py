"""tracked_neurons.csv: one row per tracked neuron, one column per session."""

import csv
import io

import numpy as np
import pytest

from kilomatch import KilomatchError
from kilomatch.tracked import read_sorter_ids, tracked_csv, write_tracked_neurons

IDX = np.array([2, 5, -1, 2, 5, 2, -1])
SESSION = np.array([1, 1, 1, 2, 3, 3, 3])


def _rows(text):
    return list(csv.reader(io.StringIO(text)))


def test_one_row_per_cluster_one_column_per_session_blank_when_not_seen():
    rows = _rows(tracked_csv(IDX, SESSION))
    assert rows[0] == ["cluster", "n_sessions", "session_1", "session_2", "session_3"]
    # unmatched units are no neuron; ids need not be contiguous (curated results)
    assert rows[1:] == [["2", "3", "0", "3", "5"], ["5", "2", "1", "", "4"]]


def test_sorter_ids_follow_each_session(tmp_path):
    (tmp_path / "units_source.csv").write_text(
        "unit,session,session_path,original_unit_id\n" + "".join(
            f"{k},{s},/data/day{s},{100 + k}\n" for k, s in enumerate(SESSION)))
    path = write_tracked_neurons(tmp_path, IDX, SESSION, tmp_path)
    rows = _rows(path.read_text())
    assert rows[0][2:4] == ["session_1", "session_1_sorter_id"]
    assert rows[2] == ["5", "2", "1", "101", "", "", "4", "104"]


def test_units_source_that_does_not_fit_the_run_is_an_error(tmp_path):
    (tmp_path / "units_source.csv").write_text(
        "unit,session,session_path,original_unit_id\n0,1,a,7\n")
    with pytest.raises(KilomatchError, match="units_source.csv lists 1 units but the run has 7"):
        read_sorter_ids(tmp_path, 7)
    assert read_sorter_ids(tmp_path / "elsewhere", 7) is None


def test_a_neuron_split_by_the_sorter_lists_both_units_in_its_session_cell(tmp_path):
    # units 0 and 4 of session 1 are one neuron kept as a sorter split (cluster 2)
    idx, session = np.array([2, 5, 2, 5, 2]), np.array([1, 1, 2, 2, 1])
    (tmp_path / "units_source.csv").write_text(
        "unit,session,session_path,original_unit_id\n" + "".join(
            f"{k},{s},/data/day{s},{100 + k}\n" for k, s in enumerate(session)))
    rows = _rows(write_tracked_neurons(tmp_path, idx, session, tmp_path).read_text())
    # n_sessions counts days, not units
    assert rows[1] == ["2", "2", "0;4", "100;104", "2", "102"]
    assert rows[2] == ["5", "2", "1", "101", "3", "103"]


def test_a_track_of_duplicate_units_names_the_track_it_duplicates():
    # cluster 3's units 4, 5, 6 duplicate (units.csv duplicate_of) units 0, 1, 2 of cluster 2
    # in two of its three sessions: its row names cluster 2; cluster 7 has one duplicate in
    # three units (under half) and cluster 2 itself duplicates nothing
    idx = np.array([2, 2, 2, 3, 3, 3, 7, 7, 7])
    session = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3])
    twin = np.array([-1, -1, -1, 0, 1, -1, -1, -1, 2])
    rows = _rows(tracked_csv(idx, session, twin=twin))
    assert rows[0][-1] == "duplicate_of_cluster"
    assert {r[0]: r[-1] for r in rows[1:]} == {"2": "", "3": "2", "7": ""}


def test_the_written_table_marks_the_duplicate_track(tmp_path):
    idx, session = np.array([4, 4, 9, 9]), np.array([1, 2, 1, 2])
    twin = np.array([-1, -1, 0, 1])
    rows = _rows(write_tracked_neurons(tmp_path, idx, session, None, twin).read_text())
    assert rows[1:] == [["4", "2", "0", "1", ""], ["9", "2", "2", "3", "4"]]


def test_duplicate_tracks_at_scale_match_the_rule_cluster_by_cluster():
    # random clusters and twins: the one-pass result against the rule applied per cluster
    from kilomatch.tracked import duplicate_tracks
    rng = np.random.default_rng(1)
    idx = rng.integers(-1, 40, 600)
    twin = np.where(rng.random(600) < 0.4, rng.integers(0, 600, 600), -1)
    expected = {}
    for c in np.unique(idx[idx > 0]):
        members = np.flatnonzero(idx == c)
        other = idx[twin[members][twin[members] >= 0]]
        other = other[(other > 0) & (other != c)]
        if other.size and 2 * other.size >= members.size:
            ids, counts = np.unique(other, return_counts=True)
            expected[int(c)] = int(ids[np.argmax(counts)])
    assert expected and duplicate_tracks(idx, twin) == expected


def test_a_duplicate_of_that_names_no_unit_is_one_error():
    from kilomatch.tracked import twin_of
    assert twin_of(["", "0", " 1 "]).tolist() == [-1, 0, 1]
    with pytest.raises(KilomatchError,
                       match=r"x/units.csv, row 3: duplicate_of is '7', not a unit index 0..2"):
        twin_of(["", "7", ""], "x/units.csv")
