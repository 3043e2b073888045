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


@pytest.fixture
def true_noise_share():
    """true_noise_share(sim, n_near=38) -> (share (N,), noisy waveforms (N, C, T), their
    peak-to-trough (N, C)): the simulator's noise variance per sample (fixed plus spike-count
    noise) over the variance of each noisy mean waveform on its n_near channels of highest
    peak-to-trough, what kilomatch.waveform_noise.noise_share should read."""
    from kilomatch import features

    def share(sim, n_near=38):
        noisy = sim.waveforms(np.arange(sim.n_units))
        p = sim.params
        noise = p.waveform_noise_uv ** 2 + p.waveform_noise_per_spike_uv ** 2 / np.maximum(
            sim.unit_spike_count, 1)
        ptt = features.peak_to_trough(noisy)
        near = np.argsort(-ptt, axis=1, kind="stable")[:, :n_near]
        rows = np.arange(sim.n_units)[:, None]
        return noise / noisy[rows, near].reshape(sim.n_units, -1).var(axis=1), noisy, ptt
    return share
