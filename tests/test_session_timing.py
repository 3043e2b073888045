"""Sessions whose waveforms sit at other samples are found and shifted back
(kilomatch.session_timing, the setting align_sessions_in_time)."""

import numpy as np
import pytest

from kilomatch.features import shift_in_time
from kilomatch.session_timing import MIN_PAIRS, session_delays
from kilomatch.simulate import simulate_to_folder

# the log's words for the step under test
SHIFTED = "sit at other samples"


def _pairs_of_neurons(neuron, rng, wrong_share=0.2):
    """Every cross-session pair of units of one neuron, and a share of pairs of two
    neurons (what the initial motion also superposes)."""
    same = [(i, j) for i in range(neuron.size) for j in range(i + 1, neuron.size)
            if neuron[i] == neuron[j]]
    n_wrong = int(wrong_share * len(same))
    wrong = rng.integers(0, neuron.size, (n_wrong, 2))
    return np.concatenate([np.array(same), wrong])


def test_session_delays_are_recovered_from_pairs_of_one_neuron():
    """Units differ in their own trough sample (20-40); each session adds its delay. The
    delays come back exactly, against the median session, with a fifth of the pairs wrong."""
    rng = np.random.default_rng(3)
    n_sessions, n_neurons = 5, 40
    own = rng.integers(20, 41, n_neurons)
    true = np.array([0, 2, 0, -1, 3])
    session0 = np.repeat(np.arange(n_sessions), n_neurons)
    neuron = np.tile(np.arange(n_neurons), n_sessions)
    pairs = _pairs_of_neurons(neuron, rng)
    pairs = pairs[session0[pairs[:, 0]] != session0[pairs[:, 1]]]
    np.testing.assert_array_equal(
        session_delays(own[neuron] + true[session0], pairs, session0, n_sessions), true)
    # aligned sessions: no delay at all
    np.testing.assert_array_equal(session_delays(own[neuron], pairs, session0, n_sessions),
                                  np.zeros(n_sessions))


def test_a_session_tied_by_too_few_pairs_keeps_its_samples():
    """Session 3 (0-based 2) shares fewer than MIN_PAIRS pairs with any other: it is not
    judged, and does not move the others."""
    session0 = np.repeat([0, 1, 2], 30)
    trough = np.where(session0 == 2, 25, 20) + np.where(session0 == 1, 1, 0)
    first = np.arange(30)
    pairs = np.concatenate([np.column_stack([first, first + 30]),
                            np.column_stack([first[:MIN_PAIRS - 1], first[:MIN_PAIRS - 1] + 60])])
    np.testing.assert_array_equal(session_delays(trough, pairs, session0, 3), [0, 1, 0])


@pytest.fixture(scope="module")
def studies(tmp_path_factory, altered_copy):
    """A simulated study, and the same with sessions 2 and 4 cut out 2 samples later and 3
    samples earlier (edge values padded), as another export's alignment would."""
    root = tmp_path_factory.mktemp("timing")
    # dense, on 40 samples: where a shift of a few samples costs matches
    simulate_to_folder(root / "study", seed=31, n_sessions=4, n_neurons=200, n_samples=40,
                       drift_max_um=40.0, with_peth=False, duration_s=120.0)

    def shifted(waveforms, session):
        return shift_in_time(waveforms, -np.select([session == 2, session == 4], [2, -3], 0))
    return root / "study", altered_copy(root / "study", root / "shifted", shifted)


def test_sessions_cut_out_at_another_alignment_are_shifted_back(studies, track_study):
    """The delays of sessions 2 and 4 are found and named; the tracking scores as on the
    study as simulated, where without the alignment it scores lower."""
    study, shifted = studies
    _, f1_study, said = track_study(study, SHIFTED)
    assert said == []
    result, f1_aligned, said = track_study(shifted, SHIFTED)
    assert len(said) == 1
    assert "session 2: +2" in said[0] and "session 4: -3" in said[0]
    assert "session 1" not in said[0] and "session 3" not in said[0]
    np.testing.assert_array_equal(
        result.units.time_shift, np.select([result.units.session0 == 1,
                                            result.units.session0 == 3], [2, -3], 0))
    _, f1_off, said = track_study(shifted, SHIFTED, align_sessions_in_time=False)
    assert said == []
    assert f1_aligned >= f1_study - 0.01
    # 0.018 lower since the curation reads the learned decay's positions (session 60)
    assert f1_off < f1_aligned - 0.01


def test_an_aligned_study_is_tracked_as_without_the_step(studies, track_study):
    """Nothing moves on a study whose sessions share their alignment: the same clusters
    with the step on and off."""
    study, _ = studies
    on, _, _ = track_study(study, SHIFTED)
    off, _, _ = track_study(study, SHIFTED, align_sessions_in_time=False)
    assert on.units.time_shift is None
    np.testing.assert_array_equal(on.idx_cluster, off.idx_cluster)


def test_without_a_motion_no_session_is_judged(studies, track_study):
    """With the initial motion estimate off (and no motion given) the units superposed may
    be two neurons: no delay is fitted, even where sessions are shifted."""
    _, shifted = studies
    result, _, said = track_study(shifted, SHIFTED, motionEstimation={
        "n_bootstrap": 20, "initial_estimate": "none"})
    assert said == [] and result.units.time_shift is None


def test_a_motion_given_superposes_the_pairs(studies, track_study, tmp_path):
    """With the motion given (the simulation's own), the delays are found from the units it
    superposes, and the log says which motion that was."""
    _, shifted = studies
    np.save(tmp_path / "motion.npy", np.load(shifted / "gt_motion.npy").reshape(-1, 1))
    result, _, said = track_study(shifted, SHIFTED, waveformCorrection={
        "path_to_motion": str(tmp_path / "motion.npy")})
    assert len(said) == 1 and "unit pairs the motion given superposes" in said[0]
    assert "session 2: +2" in said[0] and "session 4: -3" in said[0]
