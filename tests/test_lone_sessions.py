"""A session of other neurons is named: the share of each session's units tracked to another
session (kilomatch.lone_sessions)."""

import logging
import shutil

import numpy as np
import pytest

import kilomatch
from kilomatch.lone_sessions import lone_sessions, tracked_share
from kilomatch.simulate import simulate_to_folder


def test_tracked_share_counts_clusters_that_span_sessions():
    """Units of a cluster spanning two sessions are tracked; a cluster of one session's units
    (a sorter split kept together) and unmatched units (-1, 0) are not."""
    idx = np.array([1, 1, 2, 2, 3, -1, 0, 3, 4])
    session = np.array([1, 2, 1, 1, 3, 2, 3, 1, 3])
    share, count = tracked_share(idx, session, 3)
    # session 1: units 0 (cluster 1, spans 1-2), 2 and 3 (cluster 2, session 1 only),
    # 7 (cluster 3, spans 1-3) -> 2 of 4; session 2: units 1 (tracked) and 5 (-1) -> 1 of 2;
    # session 3: units 4 (cluster 3, tracked), 6 (0), 8 (cluster 4 alone) -> 1 of 3
    np.testing.assert_array_equal(count, [4, 2, 3])
    np.testing.assert_allclose(share, [2 / 4, 1 / 2, 1 / 3])


def test_rule_names_a_session_far_below_the_others_only():
    count = np.array([50, 50, 50, 50, 50])
    # a session at a tenth of the others' share is named
    assert lone_sessions(np.array([0.8, 0.7, 0.08, 0.75, 0.9]), count) == [3]
    # at half of it (the first session of a high-turnover study), not
    assert lone_sessions(np.array([0.8, 0.7, 0.40, 0.75, 0.9]), count) == []
    # little tracked anywhere (median under 0.2): nothing to compare with
    assert lone_sessions(np.array([0.15, 0.1, 0.01, 0.12, 0.18]), count) == []
    # a session of 5 units is too few to judge, and does not count in the others' median
    few = np.array([50, 50, 5, 50, 50])
    assert lone_sessions(np.array([0.8, 0.7, 0.0, 0.75, 0.9]), few) == []


def _replace_session(study, other, session, out):
    """``study`` with the units of its ``session`` replaced by those of ``other``'s (other
    neurons at the same probe), written as an input folder."""
    out.mkdir()
    (out / "spike_times").mkdir()
    sess = {k: np.load(d / "session_index.npy") for k, d in (("a", study), ("b", other))}
    wave = {k: np.load(d / "waveform_all.npy") for k, d in (("a", study), ("b", other))}
    units = [("b" if s == session else "a", u)
             for s in range(1, int(sess["a"].max()) + 1)
             for u in np.flatnonzero(sess["b" if s == session else "a"] == s)]
    folder = {"a": study, "b": other}
    np.save(out / "session_index.npy", np.array([sess[k][u] for k, u in units]))
    np.save(out / "waveform_all.npy", np.stack([wave[k][u] for k, u in units]))
    shutil.copy(study / "channel_locations.npy", out / "channel_locations.npy")
    for i, (k, u) in enumerate(units):
        shutil.copy(folder[k] / "spike_times" / f"Unit{u}.npy",
                    out / "spike_times" / f"Unit{i}.npy")
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("lone")
    kw = dict(n_sessions=4, n_neurons=60, drift_max_um=40.0, with_peth=False, duration_s=120.0)
    study = root / "study"
    other = root / "other"
    simulate_to_folder(study, seed=21, **kw)
    simulate_to_folder(other, seed=22, **kw)
    return study, _replace_session(study, other, 3, root / "replaced")


def _warnings(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        kilomatch.run({"path_to_data": str(folder), "n_jobs": 1,
                       "motionEstimation": {"n_bootstrap": 20}}, write=False)
    return [r.getMessage() for r in caplog.records if "tracked to another session" in
            r.getMessage()]


def test_a_session_of_other_neurons_is_named(studies, caplog):
    """Session 3 holds another study's units: the run finishes and warns, naming session 3
    and its share; the study as simulated gives no such warning."""
    study, replaced = studies
    assert _warnings(study, caplog) == []
    caplog.clear()
    found = _warnings(replaced, caplog)
    assert len(found) == 1
    assert "few units of session 3 are" in found[0]
    assert "session 3:" in found[0] and "Motion.png" in found[0]
