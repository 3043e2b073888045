"""Held-out mixes: kilomatch on combinations of simulator settings the suite never makes.

The accuracy suite varies one or two things per dataset, and the method's choices were made
on it. These studies combine them in ways no dataset of the suite does, to show whether a
change holds beyond the shapes it was chosen on: SpikeInterface's templates on an NP2 probe
over 12 sessions; Poisson spike trains whose rates change from day to day (the ACG and ISI
carry no identity) without PETHs; faint units with noisy mean waveforms and sudden jumps of
the probe over 16 sessions; SpikeInterface's templates under a bend and a depth-dependent
drift; 500 neurons at 25 kHz with 82-sample waveforms (Kilosort's); sorter errors with
SpikeInterface's templates and turnover; and session 68's sparse studies (16 sessions, 30%
turnover, 80% of the neurons sorted in a session). Precision, recall and F1 of matched pairs
after and before curation, and the motion error, per run; a table per study.

Run from the repository root::

    python benchmarks/mixes.py --seeds 0-1 --cache /tmp/mixes --markdown
    python benchmarks/mixes.py --studies sparse16 --seeds 0-63 --json sparse.json

Each run is a fresh ``kilomatch.run`` in this process with default settings (``--settings``
adds a JSON object of settings); the simulated folders are cached under ``--cache/data``.
A mix's simulation seed is its base seed plus the seed offset.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import small_studies  # noqa: E402

MIXES = {
    "np2_si_12": dict(n_sessions=12, n_neurons=300, probe="NP2", waveform_source="spikeinterface",
                      turnover=0.2, p_present=0.85, drift_max_um=80.0, seed=7000),
    "poisson_70": dict(n_sessions=10, n_neurons=250, spike_train_model="poisson", rate_jitter=0.5,
                       with_peth=False, drift_max_um=60.0, p_present=0.7, seed=7000),
    "faint_jumps": dict(n_sessions=16, n_neurons=250, amp_at_20um_uv=60.0, jump_prob=0.2,
                        jump_um=50.0, waveform_noise_per_spike_uv=30.0, drift_max_um=100.0,
                        turnover=0.15, seed=7000),
    "si_bend_linear": dict(n_sessions=8, n_neurons=300, waveform_source="spikeinterface",
                           bend_step_um=15.0, linear_drift=0.01, drift_max_um=60.0, seed=7000),
    "ks_like_dense": dict(n_sessions=8, n_neurons=500, sampling_rate_hz=25000.0, n_samples=82,
                          drift_max_um=40.0, turnover=0.1, seed=7000),
    "si_sorter_turnover": dict(n_sessions=10, n_neurons=300, waveform_source="spikeinterface",
                               p_split=0.08, p_merge=0.04, turnover=0.25, p_present=0.85,
                               drift_max_um=50.0, seed=7000),
    "sparse16": dict(n_sessions=16, n_neurons=200, drift_max_um=40.0, turnover=0.3,
                     p_present=0.8, duration_s=300.0, seed=0),
}


def mix_params(mix: str, offset: int) -> dict:
    """The simulation parameters of one mix at seed offset ``offset``."""
    params = dict(MIXES[mix])
    params["seed"] += offset
    return params


def main(argv=None) -> int:
    return small_studies.run_studies(argv, __doc__, MIXES, mix_params, "mixes")


if __name__ == "__main__":
    sys.exit(main())
