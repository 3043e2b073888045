"""The split at a step of similarity in time (kilomatch.similarity_step)."""

from types import SimpleNamespace

import numpy as np
import pytest

from kilomatch import curation
from kilomatch.pipeline import split_similarity_steps
from kilomatch.similarity_step import (AUTOCORR_WEIGHT, cut_steps, session_pair_baseline,
                                       split_at_similarity_step, step_similarity)


def study(clusters):
    """Units of one cluster per entry of ``clusters`` [(sessions, value_of)], every pair of
    a cluster's units across sessions with similarity value_of(a, b) (a, b: the units'
    places in their cluster, a < b): (labels, session, pairs, value)."""
    labels, session, pairs, value = [], [], [], []
    for c, (sessions, value_of) in enumerate(clusters):
        first = len(labels)
        labels += [c] * len(sessions)
        session += list(sessions)
        for a in range(len(sessions)):
            for b in range(a + 1, len(sessions)):
                if sessions[a] != sessions[b]:
                    pairs.append((first + a, first + b))
                    value.append(value_of(a, b))
    return (np.array(labels), np.array(session), np.array(pairs, np.int64),
            np.array(value, np.float64))


def alike(a, b):
    return 1.8


def test_two_neurons_in_turn_are_cut_where_they_meet():
    # cluster 0: one neuron in sessions 0-2, another in 3-5; clusters 1-3: one neuron each
    labels, session, pairs, value = study(
        [(range(6), lambda a, b: 2.0 if (a < 3) == (b < 3) else 0.6)] + [(range(6), alike)] * 3)
    out, removed, steps = split_at_similarity_step(labels, pairs, value, session, 1.0)
    assert out[0] == out[1] == out[2] >= 0
    assert out[3] == out[4] == out[5] >= 0 and out[3] != out[0]
    assert (out[6:] == labels[6:]).all()
    assert removed.tolist() == [[i, j] for i in range(3) for j in range(3, 6)]
    assert steps == pytest.approx([-1.4])
    # a step smaller than asked for: nothing is cut
    out, removed, _ = split_at_similarity_step(labels, pairs, value, session, 1.5)
    assert (out == labels).all() and removed.shape == (0, 2)


def test_three_neurons_in_turn_take_two_cuts():
    # cluster 0: neurons in sessions 0-2, 3-5 and 6-8
    labels, session, pairs, value = study(
        [(range(9), lambda a, b: 2.0 if a // 3 == b // 3 else -0.5)] + [(range(9), alike)] * 3)
    out, removed, steps = split_at_similarity_step(labels, pairs, value, session, 1.0)
    assert len(np.unique(out[:9])) == 3
    assert all(len(np.unique(out[k:k + 3])) == 1 for k in (0, 3, 6))
    assert len(removed) == 27 and steps.size == 2
    assert all(i // 3 != j // 3 for i, j in removed)


def test_neurons_that_change_slowly_are_not_cut():
    # every neuron grows less alike to itself with the gap: pairs across any cut span larger
    # gaps than the pairs within, but are as alike as every neuron's at their sessions
    def fading(a, b):
        return 2.0 - 0.7 * abs(a - b)

    labels, session, pairs, value = study([(range(6), fading)] * 3)
    out, removed, steps = split_at_similarity_step(labels, pairs, value, session, 1.0)
    assert (out == labels).all() and removed.shape == (0, 2) and steps.size == 0
    rows = slice(0, 15)  # the first cluster's pairs
    assert cut_steps(np.arange(6), pairs[rows, 0], pairs[rows, 1], value[rows])[0] < -1.0


def members(labels, pairs):
    return [(np.flatnonzero(labels == c), np.flatnonzero(labels[pairs[:, 0]] == c))
            for c in np.unique(labels)]


def test_a_jump_that_changes_every_neuron_makes_no_cut():
    # the probe jumps between sessions 2 and 3: every neuron's pairs across the jump are 1.5
    # less alike than its pairs on either side (a step, not a line in the gap). Read
    # against the usual value of each pair of sessions, no neuron shows a step; read raw,
    # each would be cut
    def jump(a, b):
        return 2.5 if (a < 3) == (b < 3) else 1.0

    labels, session, pairs, value = study([(range(6), jump)] * 5)
    out, removed, steps = split_at_similarity_step(labels, pairs, value, session, 1.0)
    assert (out == labels).all() and removed.shape == (0, 2) and steps.size == 0
    rows = slice(0, 15)
    assert cut_steps(np.arange(6), pairs[rows, 0], pairs[rows, 1], value[rows])[0] < -1.0


def test_pairs_are_read_against_their_own_sessions_usual_similarity():
    # every neuron's pairs grow more alike with the gap (+0.3 per session: sessions far
    # apart at the same phase of the channel grid); cluster 0 holds two neurons whose pairs
    # across stay at 0.8. Raw, its step is 0.6 (no cut); against what the 20 other neurons
    # show in the same two sessions its pairs across fall 1.1 short (a little less, as the
    # medians of 21 pairs lean toward those of all pairs): it is cut, the others are not
    def rising(a, b):
        return 1.0 + 0.3 * (b - a)

    labels, session, pairs, value = study(
        [(range(6), lambda a, b: rising(a, b) if (a < 3) == (b < 3) else 0.8)]
        + [(range(6), rising)] * 20)
    rows = slice(0, 15)
    assert cut_steps(np.arange(6), pairs[rows, 0], pairs[rows, 1], value[rows])[0] > -1.0
    out, removed, steps = split_at_similarity_step(labels, pairs, value, session, 1.0)
    assert out[0] == out[1] == out[2] != out[3] == out[4] == out[5]
    assert (out[6:] == labels[6:]).all()
    assert steps == pytest.approx([-1.1], abs=0.05)


def test_the_baseline_of_few_pairs_leans_on_the_gap_and_on_all_pairs():
    # sessions 0 and 5 held by a single pair (0.0), the only one 5 sessions apart: its own
    # median counts 1 / (1 + 10) against the value at its gap, which counts its one pair
    # 1 / (1 + 10) against the median of all pairs (2.0)
    labels, session, pairs, value = study([(range(3), lambda a, b: 2.0)] * 4
                                          + [([0, 5], lambda a, b: 0.0)])
    rows, at_rows = session_pair_baseline(members(labels, pairs), pairs, value, session)
    baseline = np.full(len(pairs), np.nan)
    baseline[rows] = at_rows
    assert baseline[-1] == pytest.approx(2.0 * (10 / 11) ** 2)
    assert baseline[0] == pytest.approx(2.0)


def test_a_lone_unit_cut_off_leaves_every_cluster_and_two_sessions_are_never_cut():
    labels, session, pairs, value = study(
        [(range(4), lambda a, b: 0.2 if b == 3 else 2.0), ([0, 1], lambda a, b: -3.0)]
        + [(range(4), alike)] * 2)
    out, removed, _ = split_at_similarity_step(labels, pairs, value, session, 1.0)
    assert out[3] == -1 and out[0] == out[1] == out[2] == 0
    assert (out[4:] == labels[4:]).all()  # cluster 1: two sessions, no pair within a side
    assert removed.tolist() == [[0, 3], [1, 3], [2, 3]]


def test_step_similarity_weighs_the_autocorr_and_needs_the_waveform():
    sims = np.array([[1.0, 2.0], [0.5, -1.0]])
    assert step_similarity(sims, ["AutoCorr", "Waveform"]) == pytest.approx(
        [2.0 + AUTOCORR_WEIGHT * 1.0, -1.0 + AUTOCORR_WEIGHT * 0.5])
    assert step_similarity(sims[:, :1], ["Waveform"]) == pytest.approx([1.0, 0.5])
    assert step_similarity(sims, ["AutoCorr", "PETH"]) is None


def test_the_pipeline_step_records_the_pairs_it_takes_apart_and_why():
    labels, session, pairs, value = study(
        [(range(6), lambda a, b: 2.0 if (a < 3) == (b < 3) else 0.5)] + [(range(6), alike)] * 2)
    final = SimpleNamespace(pairs=pairs, feature_names=["Waveform", "AutoCorr"],
                            pair_similarities=np.column_stack([value, np.zeros(len(value))]))
    cur = curation.CurationResult(labels, labels, np.array([[20, 21]]),
                                  np.array([curation.SPLIT], np.int8))
    split_similarity_steps(cur, final, session, 1.0)
    assert cur.labels[0] != cur.labels[3]
    assert cur.removed_pairs[0].tolist() == [20, 21] and len(cur.removed_pairs) == 10
    assert cur.removed_reason.dtype == np.int8
    assert (cur.removed_reason[1:] == curation.SIMILARITY_STEP).all()
    assert curation.REASONS[curation.SIMILARITY_STEP] == "split_at_similarity_step"
