"""Units moved to the cluster their match probability says they belong to."""

import logging

import numpy as np

import kilomatch
from kilomatch import curation
from kilomatch.metrics import pair_scores
from kilomatch.simulate import simulate_to_folder
from kilomatch.unit_moves import move_units


def _chained(p_across=0.15, b_sessions=(2, 3, 4), into_b=1.0):
    """Neuron X recorded in sessions 0-6 (units 0-6) and neuron Y in sessions 2-6 (units 7-11).
    The clustering chained them; the conflict step took Y's units of ``b_sessions`` out into
    cluster 1, and Y's units of the other sessions stay in cluster 0 with X. Every pair of
    units of different sessions is a candidate: 1.0 within a neuron (``into_b`` between Y's
    units in cluster 0 and those in cluster 1), ``p_across`` across the two neurons."""
    session = np.r_[np.arange(7), np.arange(2, 7)]
    neuron = np.r_[np.zeros(7, int), np.ones(5, int)]
    labels = np.zeros(12, np.int64)
    labels[7:][np.isin(session[7:], b_sessions)] = 1
    i, j = np.triu_indices(12, 1)
    keep = session[i] != session[j]
    pairs = np.column_stack([i[keep], j[keep]])
    same = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    probability = np.where(same, 1.0, p_across)
    y_across = same & (neuron[pairs[:, 0]] == 1) & (labels[pairs[:, 0]] != labels[pairs[:, 1]])
    probability[y_across] = into_b
    return labels, pairs, probability, session, neuron


def test_a_neurons_units_left_with_a_neighbour_move_to_its_cluster():
    labels, pairs, probability, session, neuron = _chained()
    new, moved, removed = move_units(labels, pairs, probability, session)
    # Y's units of sessions 5 and 6 (units 10, 11) join the rest of Y
    assert moved.tolist() == [10, 11]
    assert new[neuron == 0].tolist() == [0] * 7 and new[neuron == 1].tolist() == [1] * 5
    # the pairs they left behind: each with X's seven units (not with each other)
    assert len(removed) == 14 and set(removed[:, 0]) <= set(range(7))


def test_no_move_without_sure_pairs_or_into_an_occupied_session():
    labels, pairs, probability, session, neuron = _chained()
    # the other cluster only likely (0.8 < 0.9): a small unit's matches, nothing moves
    weak = _chained(into_b=0.8)
    assert move_units(*weak[:4])[1].size == 0
    # their own cluster not unlikely (mean 0.5 or more): nothing moves
    close = _chained(p_across=0.45)
    assert move_units(*close[:4])[1].size == 0
    # the other cluster holds a unit of the session already: a second unit of Y in session 5
    # (unit 12, a sorter split) sits in cluster 1, so unit 10 stays; unit 11 moves
    session12 = np.r_[session, 5]
    neuron12 = np.r_[neuron, 1]
    i, j = np.triu_indices(13, 1)
    keep = session12[i] != session12[j]
    pairs12 = np.column_stack([i[keep], j[keep]])
    p12 = np.where(neuron12[pairs12[:, 0]] == neuron12[pairs12[:, 1]], 1.0, 0.15)
    new, moved, _ = move_units(np.r_[labels, 1], pairs12, p12, session12)
    assert moved.tolist() == [11] and new[10] == 0 and new[12] == 1
    # one sure pair into the other cluster is not enough
    single = _chained(b_sessions=(2,))
    assert move_units(*single[:4])[1].size == 0


def test_sparse_study_a_neighbours_units_leave_the_cluster_of_a_chained_neuron(tmp_path, caplog):
    """Sparse study seed 41 (16 sessions of about 20 units, 30% turnover): the clustering
    chained two neurons at one place, of 60-90 uV, both recorded in sessions 7, 11 and 12.
    The conflict step took one neuron's units of those sessions out, but its units of
    sessions 9, 10 and 13 stayed with the other neuron (18 wrong pairs, precision 0.961):
    their pairs into their cluster read 0.04-0.21 against the second neuron, 1.0 into the
    units taken out. They move, and precision reaches 0.998."""
    folder = tmp_path / "data"
    simulate_to_folder(folder, n_sessions=16, n_neurons=200, seed=41, drift_max_um=40,
                       turnover=0.3, p_present=0.8, duration_s=300.0)
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run({"path_to_data": str(folder), "n_jobs": 1,
                                "output_folder": str(tmp_path / "out")}, write=False)
    assert "units moved to the cluster their pairs are sure of" in caplog.text
    truth, session = np.load(folder / "gt_neuron.npy"), np.load(folder / "session_index.npy")
    assert pair_scores(result.idx_cluster, truth, session)["precision"] >= 0.99
    cur = result.curated
    moved = cur.removed_pairs[cur.removed_reason == curation.MOVED]
    assert len(moved) and (truth[moved[:, 0]] != truth[moved[:, 1]]).mean() > 0.5
