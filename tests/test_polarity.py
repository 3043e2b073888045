"""Sessions written with the opposite sign are found and turned back (kilomatch.polarity,
the setting flip_inverted_sessions)."""

import numpy as np
import pytest

from kilomatch.polarity import inverted_sessions, positive_peaked
from kilomatch.simulate import simulate_to_folder

# the log's words for the step under test
INVERTED = "opposite sign"


def test_a_session_of_mostly_positive_units_is_inverted_only_among_negative_ones():
    """Session 2 (0-based 1) has 9 of 10 units peaking positive, the others 1 of 10: it is
    inverted. A study whose sessions all peak positive, or one where half do, is left alone."""
    session0 = np.repeat(np.arange(4), 10)
    positive = np.zeros(40, bool)
    positive[[0, 25, 35]] = True
    positive[10:19] = True
    np.testing.assert_array_equal(inverted_sessions(positive, session0, 4),
                                  [False, True, False, False])
    assert not inverted_sessions(np.ones(40, bool), session0, 4).any()
    half = np.isin(session0, [1, 2])
    assert not inverted_sessions(half, session0, 4).any()
    trough = -np.exp(-0.5 * ((np.arange(30) - 10) / 2.0) ** 2)
    np.testing.assert_array_equal(positive_peaked(np.stack([trough, -trough])), [False, True])


@pytest.fixture(scope="module")
def studies(tmp_path_factory, altered_copy):
    """A simulated study, and the same with session 3's waveforms multiplied by -1."""
    root = tmp_path_factory.mktemp("polarity")
    simulate_to_folder(root / "study", seed=43, n_sessions=4, n_neurons=150, n_samples=40,
                       drift_max_um=20.0, with_peth=False, duration_s=120.0)
    return root / "study", altered_copy(root / "study", root / "inverted",
                                        lambda w, session: np.where(
                                            (session == 3)[:, None, None], -w, w))


def test_an_inverted_session_is_named_and_turned_back(studies, track_study):
    """Session 3 is named and turned back: the same clusters as the study as simulated;
    without the step, fewer matches."""
    study, inverted = studies
    clean, f1_study, said = track_study(study, INVERTED)
    assert said == [] and clean.units.inverted_sessions is None
    result, f1_flipped, said = track_study(inverted, INVERTED)
    assert len(said) == 1 and "session 3:" in said[0] and "session 1:" not in said[0]
    np.testing.assert_array_equal(result.units.inverted_sessions, [False, False, True, False])
    np.testing.assert_array_equal(result.idx_cluster, clean.idx_cluster)
    _, f1_off, said = track_study(inverted, INVERTED, flip_inverted_sessions=False)
    assert said == [] and f1_off < f1_flipped - 0.01, (f1_off, f1_flipped, f1_study)
