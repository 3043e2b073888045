"""Fixtures shared by the test modules."""

import logging
import shutil

import numpy as np
import pytest

import kilomatch
from kilomatch import metrics


@pytest.fixture
def track_study(caplog):
    """track_study(folder, phrase, **settings) -> (Result, F1, the warnings holding phrase):
    one quick run (one job, 20 bootstrap draws) on a simulated folder, scored against its
    ground truth."""
    def run(folder, phrase, **settings):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kilomatch"):
            r = kilomatch.run({"path_to_data": str(folder), "n_jobs": 1,
                               "motionEstimation": {"n_bootstrap": 20}, **settings},
                              write=False)
        gt = np.load(folder / "gt_neuron.npy").ravel()
        f1 = metrics.pair_scores(r.idx_cluster, gt, r.data.session_index)["f1"]
        return r, f1, [m.getMessage() for m in caplog.records if phrase in m.getMessage()]
    return run


@pytest.fixture(scope="session")
def altered_copy():
    """altered_copy(study, folder, change) -> folder: a copy of a simulated study whose
    waveforms are change(waveforms (N, C, T), session (N,) 1-based)."""
    def make(study, folder, change):
        shutil.copytree(study, folder)
        waveforms = np.load(study / "waveform_all.npy")
        session = np.load(study / "session_index.npy").ravel()
        np.save(folder / "waveform_all.npy", change(waveforms, session))
        return folder
    return make
