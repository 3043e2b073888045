"""Per-unit work split in blocks of units over ``n_jobs`` worker processes.

Results never depend on ``n_jobs``: blocks are contiguous unit ranges, each computed by the same
code, and put back in unit order.
"""

from __future__ import annotations

import os

import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

# Below this many units, starting worker processes costs more than it saves.
MIN_UNITS_PARALLEL = 2000


def n_workers(n_jobs: int) -> int:
    """Worker count for an n_jobs setting (-1: every core)."""
    cores = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        return 1
    return cores if n_jobs < 0 else min(int(n_jobs), cores)


def _take(values, idx):
    if isinstance(values, np.ndarray):
        return values[idx]
    return [values[k] for k in idx]


def map_units(func, n_units: int, n_jobs: int = 1, desc: str | None = None,
              per_unit: tuple = (), block: int | None = None) -> np.ndarray:
    """Apply ``func(*block_args) -> (len(block), ...) array`` to blocks of units and stack the
    results in unit order. ``per_unit``: arrays or lists indexed by unit; each call receives
    only its block's rows, so workers never get a copy of the whole dataset. Put constants in
    ``func`` with functools.partial.
    """
    workers = n_workers(n_jobs)
    if block is None:
        block = 256 if workers == 1 else max(64, -(-n_units // (workers * 8)))
    blocks = [np.arange(a, min(a + block, n_units)) for a in range(0, n_units, block)]
    if not blocks:
        return np.empty((0,))
    tasks = ([_take(values, idx) for values in per_unit] for idx in blocks)
    tasks = tqdm(tasks, total=len(blocks), desc=desc, disable=None, leave=False)
    if workers == 1 or n_units < MIN_UNITS_PARALLEL:
        parts = [func(*args) for args in tasks]
    else:
        parts = Parallel(n_jobs=workers)(delayed(func)(*args) for args in tasks)
    return np.concatenate(parts, axis=0)
