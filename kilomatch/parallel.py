"""Per-unit work split in blocks of units over ``n_jobs`` worker processes.

Results never depend on ``n_jobs``: blocks are contiguous unit ranges, each computed by the same
code, and put back in unit order.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

# Below this many units, starting worker processes costs more than it saves. Features alone,
# fresh process, idle 2-core machine (benchmarks/RESULTS.md, "Session 7"): 2,012 units 2.0-3.3 s
# in workers against 0.8 s here; 10,285 units 6.5 s against 5.3-6.3 s; 29,304 units 12.4-13.8 s
# against 14.0-16.9 s.
MIN_UNITS_PARALLEL = 10_000

# Most worker processes one study may use, set by a batch that runs several studies at once on
# one machine (None: no limit). Per thread, so studies in threads of one process keep theirs.
_JOB_LIMIT = contextvars.ContextVar("kilomatch_job_limit", default=None)


# Threads of this process for the pair similarities, the Kriging correction and the match
# probability's scoring (for_each_in_threads, probability._scoring_threads), set for a run
# from n_jobs.
_PAIR_THREADS = contextvars.ContextVar("kilomatch_pair_threads", default=1)


def pair_threads() -> int:
    """Threads the current run's threaded steps may use (pair similarities, Kriging
    correction, the probability's scoring)."""
    return _PAIR_THREADS.get()


@contextlib.contextmanager
def threads_for_pairs(n_jobs: int):
    """Within the block, the threaded steps (pair_threads) run in n_workers(n_jobs) threads
    (results do not depend on it: each piece of work is computed alone and written to its own
    part of the output)."""
    token = _PAIR_THREADS.set(n_workers(n_jobs))
    try:
        yield
    finally:
        _PAIR_THREADS.reset(token)


def for_each_in_threads(work, items: list, threads: int | None = None) -> None:
    """Call ``work(chunk)`` on chunks of ``items`` in threads of this process (pair_threads()
    of them unless given; one: in this thread). For work that releases the GIL (numpy) and
    writes its own part of an output: nothing is copied to a worker, and results do not
    depend on the thread count. Several chunks per thread, so that one thread's large items
    do not leave the others idle."""
    threads = pair_threads() if threads is None else threads
    if threads < 2 or len(items) < 2:
        work(items)
        return
    from concurrent.futures import ThreadPoolExecutor
    chunks = [items[i::threads * 4] for i in range(threads * 4)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, chunks))


def started(func, background: bool):
    """A function giving ``func()``'s result: computed from now on in a thread of its own
    (background), or when the function is called. An exception is raised by that call."""
    if not background:
        return func
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(1, thread_name_prefix="kilomatch")
    future = pool.submit(func)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return future.result


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def n_workers(n_jobs: int) -> int:
    """Worker count for an n_jobs setting (-1: every core), within the batch's limit."""
    cores = os.cpu_count() or 1
    limit = _JOB_LIMIT.get()
    if limit is not None:
        cores = min(cores, limit)
    if n_jobs is None or n_jobs == 0:
        return 1
    return cores if n_jobs < 0 else min(int(n_jobs), cores)


@contextlib.contextmanager
def limit_jobs(limit: int | None):
    """Within the block, every ``n_jobs`` uses at most ``limit`` worker processes (results do
    not depend on it, so the settings written with the results stay as given)."""
    token = _JOB_LIMIT.set(None if limit is None else max(1, int(limit)))
    try:
        yield
    finally:
        _JOB_LIMIT.reset(token)


def _take(values, idx):
    if isinstance(values, np.ndarray):
        return values[idx]
    return [values[k] for k in idx]


def in_worker_processes(n_units: int, n_jobs: int) -> bool:
    """Whether map_units runs per-unit work of ``n_units`` units in worker processes."""
    return n_workers(n_jobs) > 1 and n_units >= MIN_UNITS_PARALLEL


# Units per block of map_units in this process at least: a 1,615-unit study in one block
# locates its units in 0.06 s instead of 0.08 s in seven.
IN_PROCESS_BLOCK = 4096


def map_units(func, n_units: int, n_jobs: int = 1, desc: str | None = None,
              per_unit: tuple = (), block: int | None = None) -> np.ndarray:
    """Apply ``func(*block_args) -> (len(block), ...) array`` to blocks of units and stack the
    results in unit order. ``per_unit``: arrays or lists indexed by unit; each call receives
    only its block's rows, so workers never get a copy of the whole dataset. Put constants in
    ``func`` with functools.partial.
    """
    workers = n_workers(n_jobs)
    in_workers = in_worker_processes(n_units, n_jobs)
    if block is None:
        # Small blocks only to share the work among workers: in this process each block
        # repeats its fixed costs (a unit location fit's iterations over the block), so
        # blocks are large and only as many as the progress bar needs.
        block = (max(64, -(-n_units // (workers * 8))) if in_workers
                 else max(IN_PROCESS_BLOCK, -(-n_units // 20)))
    blocks = [np.arange(a, min(a + block, n_units)) for a in range(0, n_units, block)]
    if not blocks:
        return np.empty((0,))
    tasks = ([_take(values, idx) for values in per_unit] for idx in blocks)
    tasks = tqdm(tasks, total=len(blocks), desc=desc, disable=None, leave=False)
    if not in_workers:
        parts = [func(*args) for args in tasks]
    else:
        global _workers_started
        _workers_started = True
        parts = Parallel(n_jobs=workers)(delayed(func)(*args) for args in tasks)
    return np.concatenate(parts, axis=0)


_workers_started = False


def release_workers() -> None:
    """Stop the worker processes map_units started, which joblib keeps for reuse (300 s
    idle): each holds a Python with numpy and the step's imports, about 170 MB counted in a
    run's memory until then (the rest of a run works in threads)."""
    global _workers_started
    if not _workers_started:
        return
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)
    _workers_started = False
