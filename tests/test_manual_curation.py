"""apply-curation: a reviewer's decisions change exactly the clusters they name."""

import csv
import json

import numpy as np
import pytest

import kilomatch
from kilomatch import KilomatchError
from kilomatch.cli import main
from kilomatch.export import save_npz, save_units_csv
from kilomatch.manual_curation import apply_decisions, parse_decisions

#          unit: 0  1  2  3  4  5  6  7  8  9
IDX = np.array([1, 2, 3, -1, 1, 2, 3, 1, 4, 4])
SESSION = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 4])
# clusters: 1 = {0, 4, 7} (sessions 1, 2, 3), 2 = {1, 5}, 3 = {2, 6}, 4 = {8, 9} (sessions 3, 4)


def _apply(*decisions, shank=None):
    return apply_decisions(IDX, SESSION, parse_decisions({"decisions": list(decisions)}),
                           shank).idx_cluster


def test_reject_split_merge_accept_change_exactly_the_named_clusters():
    new = _apply({"cluster": 3, "action": "reject"},
                 {"cluster": 1, "action": "split", "units": [7]},
                 {"cluster": 4, "action": "merge", "with": [2], "note": "same neuron"})
    # 3 rejected; 7 leaves 1 alone (one unit: unmatched); 2 and 4 become one cluster, id 2
    assert new.tolist() == [1, 2, -1, -1, 1, 2, -1, -1, 2, 2]


def test_split_units_form_a_new_cluster_after_the_largest_id():
    new = _apply({"cluster": 1, "action": "split", "units": [4, 7]},
                 {"cluster": 2, "action": "accept"})
    assert new.tolist() == [-1, 2, 3, -1, 5, 2, 3, 5, 4, 4]


@pytest.mark.parametrize("decision, message", [
    ({"cluster": 1, "action": "merge", "with": 2},
     r"decision 1 \(merge cluster 1, with \[2\]\): would put units 0 and 1, both of session 1"),
    ({"cluster": 9, "action": "reject"}, r"decision 1 \(reject cluster 9\): no cluster 9"),
    ({"cluster": 1, "action": "split", "units": [5]}, "unit 5 is not in cluster 1"),
    ({"cluster": 1, "action": "split", "units": [42]}, "no unit 42"),
    ({"cluster": 1, "action": "split", "units": [0, 4, 7]}, "every unit of cluster 1"),
    ({"cluster": 1, "action": "rename"}, "unknown action 'rename'"),
    ({"cluster": 1, "action": "merge"}, "a merge needs 'with'"),
])
def test_decision_that_contradicts_the_data_is_an_error_naming_it(decision, message):
    with pytest.raises(KilomatchError, match=message):
        _apply(decision)


def test_a_cluster_holding_a_sorter_split_merges_with_one_from_other_sessions():
    # cluster 1 = {0, 3, 4, 7}: units 0 and 3 of session 1 are one neuron the sorter split,
    # kept by the curation. Cluster 4 = {8, 9} (sessions 3, 4) shares session 3 with unit 7,
    # so 7 is split off first; the merge then joins the days and keeps both halves
    idx = IDX.copy()
    idx[3] = 1
    decisions = parse_decisions({"decisions": [
        {"cluster": 1, "action": "split", "units": [7]},
        {"cluster": 1, "action": "merge", "with": [4]}]})
    new = apply_decisions(idx, SESSION, decisions).idx_cluster
    assert new[0] == new[3] == new[4] == new[8] == new[9] > 0
    # a session seen in both clusters is still a conflict, named by a unit of each
    with pytest.raises(KilomatchError, match="would put units 0 and 1, both of session 1"):
        apply_decisions(idx, SESSION, parse_decisions(
            {"decisions": [{"cluster": 1, "action": "merge", "with": [2]}]}))


def test_rejected_cluster_takes_no_other_decision_and_shanks_stay_apart():
    with pytest.raises(KilomatchError, match=r"decision 2 .* contradicts decision 1"):
        _apply({"cluster": 2, "action": "reject"}, {"cluster": 4, "action": "merge", "with": 2})
    with pytest.raises(KilomatchError, match="different shanks"):
        _apply({"cluster": 3, "action": "merge", "with": 4},
               shank=np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1]))


@pytest.fixture()
def output_folder(tmp_path):
    """The result files apply-curation reads, as a run writes them."""
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "IdxCluster.npy", IDX[:, None])
    save_npz(out / "Output.npz", {"IdxCluster": IDX, "SessionIndex": SESSION,
                                  "MatchedPairs": np.zeros((0, 2), np.int64),
                                  "NumClusters": np.int64(4)})
    save_npz(out / "CurationResults.npz", {
        "IdxCluster": IDX, "removed_pairs": np.array([[3, 9]]),
        "removed_reason": np.array([0], np.int8),
        "reason_names": np.array(["same_session_conflict", "split_below_threshold"])})
    save_units_csv(out / "units.csv", {"unit": np.arange(10), "session": SESSION,
                                       "cluster": IDX, "y": np.linspace(0, 90, 10)})
    (out / "kilomatch_settings.json").write_text(json.dumps({"path_to_data": str(tmp_path)}))
    (tmp_path / "units_source.csv").write_text(
        "unit,session,session_path,original_unit_id\n" + "".join(
            f"{k},{s},day{s},{200 + k}\n" for k, s in enumerate(SESSION)))
    return out


def test_apply_curation_writes_curated_folder_idempotently(output_folder, tmp_path):
    automatic = {p.name: p.read_bytes() for p in output_folder.iterdir() if p.is_file()}
    curation = tmp_path / "curation.json"
    curation.write_text(json.dumps({"decisions": [
        {"cluster": 1, "action": "split", "units": [7]},
        {"cluster": 3, "action": "merge", "with": 4}]}))
    assert main(["apply-curation", str(output_folder), str(curation)]) == 0
    cur = output_folder / "curated"
    first = {p.name: p.read_bytes() for p in cur.iterdir()}
    assert sorted(first) == ["CurationResults.npz", "IdxCluster.npy", "MatchedPairs.npy",
                             "Output.npz", "tracked_neurons.csv", "units.csv"]
    kilomatch.apply_curation(output_folder, curation)
    assert {p.name: p.read_bytes() for p in cur.iterdir()} == first
    # the automatic results are untouched
    assert {p.name: p.read_bytes() for p in output_folder.iterdir() if p.is_file()} == automatic

    idx = np.load(cur / "IdxCluster.npy", allow_pickle=False).ravel()
    assert idx.tolist() == [1, 2, 3, -1, 1, 2, 3, -1, 3, 3]
    units = list(csv.DictReader(open(cur / "units.csv")))
    assert [int(r["cluster"]) for r in units] == idx.tolist()
    assert units[9]["y"] == "90.000"
    with np.load(cur / "CurationResults.npz", allow_pickle=False) as z:
        reasons = z["reason_names"].tolist()
        manual = z["removed_reason"] == reasons.index("manual")
        assert sorted(map(tuple, z["removed_pairs"][manual].tolist())) == [(0, 7), (4, 7)]
        assert z["removed_pairs"][~manual].tolist() == [[3, 9]]  # the automatic one, kept
        assert sorted(map(tuple, z["added_pairs"].tolist())) == [(2, 8), (2, 9), (6, 8),
                                                                 (6, 9)]
        assert z["manual_action"].tolist() == ["split", "merge"]
    with np.load(cur / "Output.npz", allow_pickle=False) as z:
        assert z["NumClusters"] == 3
        assert len(z["MatchedPairs"]) == 1 + 1 + 6
    rows = list(csv.reader(open(cur / "tracked_neurons.csv")))
    assert rows[3] == ["3", "4", "2", "202", "6", "206", "8", "208", "9", "209"]


def test_bad_curation_file_is_one_error_line(output_folder, tmp_path, capsys):
    curation = tmp_path / "curation.json"
    curation.write_text('{"decisions": [{"cluster": 2, "action": "merge", "with": 3}]}')
    assert main(["apply-curation", str(output_folder), str(curation)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kilomatch: error: decision 1 (merge cluster 2, with [3]): would put")
    assert not (output_folder / "curated" / "Output.npz").exists()
    curation.write_text("{not json")
    assert main(["apply-curation", str(output_folder), str(curation)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_a_new_run_removes_the_earlier_runs_review_and_curated_results(output_folder, tmp_path):
    """They describe the earlier run's clusters: kept, they would silently disagree."""
    from kilomatch.export import clear_previous
    curation = tmp_path / "curation.json"
    curation.write_text('{"decisions": [{"cluster": 3, "action": "reject"}]}')
    kilomatch.apply_curation(output_folder, curation)
    (output_folder / "report" / "img").mkdir(parents=True)
    (output_folder / "report" / "index.html").write_text("<html></html>")
    (output_folder / "report" / "img" / "cluster_1.png").write_bytes(b"png")
    clear_previous(output_folder)
    left = [p for p in output_folder.rglob("*") if p.is_file()]
    assert left == []


def test_curated_match_confidence_follows_the_new_clusters(output_folder, tmp_path):
    """After a split and a merge, units.csv's match_confidence is the lowest candidate-pair
    probability inside each unit's new cluster; untouched clusters keep theirs."""
    conf = np.array([0.5, 0.8, 0.6, np.nan, 0.5, 0.8, 0.6, 0.5, 0.7, 0.7])
    save_units_csv(output_folder / "units.csv", {"unit": np.arange(10), "session": SESSION,
                                                 "cluster": IDX, "match_confidence": conf})
    pairs = np.array([[0, 4], [0, 7], [4, 7], [1, 5], [2, 6], [8, 9], [2, 8], [6, 9]])
    prob = np.array([0.9, 0.5, 0.55, 0.8, 0.6, 0.7, 0.4, 0.3])
    save_npz(output_folder / "CandidatePairs.npz", {"pairs": pairs[::-1], "probability":
                                                    prob[::-1]})
    curation = tmp_path / "curation.json"
    curation.write_text(json.dumps({"decisions": [
        {"cluster": 1, "action": "split", "units": [7]},
        {"cluster": 3, "action": "merge", "with": 4}]}))
    kilomatch.apply_curation(output_folder, curation)
    rows = list(csv.DictReader(open(output_folder / "curated" / "units.csv")))
    got = [r["match_confidence"] for r in rows]
    # 0, 4: cluster 1 without 7 -> 0.9; 1, 5 untouched -> 0.8; 3, 7 unmatched -> nan;
    # cluster 3 = {2, 6, 8, 9}: 2 -> min(0.6, 0.4), 6 -> min(0.6, 0.3), 8 -> min(0.7, 0.4),
    # 9 -> min(0.7, 0.3)
    assert got == ["0.900", "0.800", "0.400", "nan", "0.900", "0.800", "0.300", "nan",
                   "0.400", "0.300"]


@pytest.mark.parametrize("name", ["CurationResults.npz", "units.csv", "CandidatePairs.npz"])
def test_missing_result_file_is_one_error_naming_it(output_folder, tmp_path, name):
    save_units_csv(output_folder / "units.csv", {
        "unit": np.arange(10), "session": SESSION, "cluster": IDX,
        "match_confidence": np.full(10, 0.5)})
    save_npz(output_folder / "CandidatePairs.npz", {"pairs": np.array([[0, 4]]),
                                                    "probability": np.array([0.9])})
    (output_folder / name).unlink()
    with pytest.raises(KilomatchError, match=rf"{name}: missing"):
        kilomatch.apply_curation(output_folder, {"decisions": [
            {"cluster": 1, "action": "split", "units": [7]}]})


def test_curated_tracked_neurons_still_name_a_duplicate_track(output_folder, tmp_path):
    # units 2 and 6 (cluster 3) duplicate units 1 and 5 (cluster 2) in the run's units.csv
    save_units_csv(output_folder / "units.csv", {
        "unit": np.arange(10), "session": SESSION, "cluster": IDX, "y": np.linspace(0, 90, 10),
        "duplicate_of": np.array(["", "", "1", "", "", "", "5", "", "", ""], dtype=object)})
    curation = tmp_path / "curation.json"
    curation.write_text(json.dumps({"decisions": [
        {"cluster": 1, "action": "split", "units": [7]}]}))
    assert main(["apply-curation", str(output_folder), str(curation)]) == 0
    rows = list(csv.reader(open(output_folder / "curated" / "tracked_neurons.csv")))
    assert rows[0][-1] == "duplicate_of_cluster"
    assert {r[0]: r[-1] for r in rows[1:]}["3"] == "2"
    assert {r[0]: r[-1] for r in rows[1:]}["2"] == ""
