"""The bundled example: a small simulated study made on first use (deterministic, seed 0)."""

from __future__ import annotations

from pathlib import Path

# 5 sessions of about 100 units on a Neuropixels 1.0 probe, moderate rigid drift, with PETH.
EXAMPLE_PARAMS = dict(n_sessions=5, n_neurons=150, probe="NP1", seed=0)


def make_example(folder) -> Path:
    """Write the example dataset (input folder + ground truth) to ``folder``."""
    from .simulate import simulate_to_folder
    simulate_to_folder(folder, **EXAMPLE_PARAMS)
    return Path(folder)
