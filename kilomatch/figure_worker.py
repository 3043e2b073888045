"""The run's figures, drawn by helper processes while the run writes its results.

Drawing the figures is about a second of single-threaded matplotlib work (import, layout,
rasterizing, PNG encoding) at any size of study, and it holds the GIL, so a thread cannot
draw them beside the export. :class:`FigureWorkers` starts helper processes when the
output folder is made; at low priority, each imports matplotlib and draws a first figure
while the run computes, then receives figure inputs (:mod:`kilomatch.figure_inputs`, a few
MB), draws its share and writes the PNGs atomically. Whatever a helper did not draw,
:meth:`FigureWorkers.finish` draws in the calling process, so a figure is never lost to a
failed helper.

A helper is ``python -m kilomatch.figure_worker``: a fresh interpreter that imports no
user module (unlike multiprocessing's spawn, which re-runs an unguarded script).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("kilomatch")

# The helper's command line (tests replace it with one that fails).
HELPER_COMMAND = (sys.executable, "-m", "kilomatch.figure_worker")
# Seconds a helper may take to draw its share before it is stopped and the figures are
# drawn here instead.
TIMEOUT_S = 300.0


def _helper_environment() -> dict:
    """The caller's environment, with this kilomatch first on the helper's import path (a
    checkout on sys.path may not be the installed one) and one thread per numerical library
    (the run's own threads share the cores)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


class FigureWorkers:
    """Helper processes that draw a run's figures: :meth:`start` them early, :meth:`send`
    the figures once the results are known, :meth:`finish` when the results are written.
    With no helper (none asked for, or none could start) the figures are drawn in a thread
    of this process while it writes the results."""

    def __init__(self):
        self.helpers = []
        self.shares, self.sent, self.thread, self.failure = [], [], None, None

    def start(self, n: int) -> None:
        """Start ``n`` helpers (each imports matplotlib at once, on a core the run leaves
        idle most of the time)."""
        env = _helper_environment() if n > 0 else None
        for _ in range(n):
            errors = tempfile.TemporaryFile()
            try:
                proc = subprocess.Popen(list(HELPER_COMMAND),
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=errors, env=env)
            except OSError as err:
                errors.close()
                log.info("figure helper not started (%s): figures are drawn in this process",
                         err)
                break
            self.helpers.append((proc, errors))

    def send(self, jobs: list) -> None:
        """Hand ``jobs`` [(png path, figure name, inputs)] to the helpers, or draw them here,
        in a thread either way: the caller goes on writing the results."""
        if not self.helpers:
            self.shares = [list(jobs)]
            target = self._draw_here
        else:
            self.shares = _shares(jobs, len(self.helpers))
            payloads = [pickle.dumps(share, protocol=pickle.HIGHEST_PROTOCOL)
                        for share in self.shares]
            self.sent = [False] * len(self.helpers)

            def target():
                # a helper reads its share once its imports are done
                for k, ((proc, _), payload) in enumerate(zip(self.helpers, payloads)):
                    try:
                        proc.stdin.write(payload)
                        proc.stdin.close()
                        self.sent[k] = True
                    except OSError:  # the helper is gone: finish draws its share here
                        pass
        self.thread = threading.Thread(target=target, name="figures", daemon=True)
        self.thread.start()

    def _draw_here(self) -> None:
        try:
            draw_jobs(self.shares[0])
        except BaseException as err:  # raised again by finish, in the caller's thread
            self.failure = err

    def finish(self) -> None:
        """Wait until every figure sent is written; a helper's share that it did not draw
        (it failed or timed out) is drawn here."""
        if self.thread is None:
            return
        self.thread.join()
        if not self.helpers:
            if self.failure is not None:
                raise self.failure
            return
        missing = []
        for (proc, errors), share, sent in zip(self.helpers, self.shares, self.sent):
            try:
                code = proc.wait(TIMEOUT_S) if sent else "not reached"
            except subprocess.TimeoutExpired:
                code = "timed out"
            if code != 0:
                errors.seek(0)
                detail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
                log.info("figure helper failed (%s%s): its figures are drawn in this process",
                         code, f": {detail[0]}" if detail else "")
                missing += share
        self.close()
        draw_jobs(missing)

    def close(self) -> None:
        """Stop every helper (a run that failed before its figures)."""
        for proc, errors in self.helpers:
            self._stop(proc, errors)
        self.helpers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _stop(proc, errors) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        errors.close()


# Relative cost of drawing each figure (seconds on the speed study): the shares are
# balanced by it.
COST = {"UnitDepth": 3.0, "MatchProbability": 1.5, "WeightedSimilarity": 1.5,
        "FeatureScatter": 1.2, "Motion": 1.0, "SimilarityFeatures": 1.0,
        "MatchProbability_calibration": 1.2}


def _shares(jobs: list, n: int) -> list:
    """``jobs`` split into max(n, 1) lists of about equal cost (largest first to the least
    loaded), each in the jobs' order."""
    n = max(n, 1)
    load = [0.0] * n
    owner = {}
    for k in sorted(range(len(jobs)), key=lambda k: -COST.get(jobs[k][1], 1.0)):
        h = load.index(min(load))
        owner[k] = h
        load[h] += COST.get(jobs[k][1], 1.0)
    return [[job for k, job in enumerate(jobs) if owner[k] == h] for h in range(n)]


def draw_jobs(jobs: list) -> None:
    """Draw and write each (png path, figure name, inputs) in this process."""
    if not jobs:  # matplotlib is not imported for nothing: a third of a second
        return
    from .atomic import save_png
    from .figures import draw
    for path, name, inputs in jobs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_png(draw(name, inputs), Path(path))


def _warm_up() -> None:
    """Draw a small figure of the artists the run's figures use, to no file: matplotlib
    loads its fonts and fills its caches on the first figure it draws (a quarter of a
    helper's drawing on the speed study), which then happens before the inputs arrive."""
    import io

    import numpy as np
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3, 2))
    axes = fig.subplots(1, 2)
    axes[0].scatter([1, 2], [1, 2], s=2, label="a")
    axes[0].stairs([1, 2], [0, 1, 2], fill=True, label="b")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[0].set_title("title")
    image = axes[1].imshow(np.eye(2))
    fig.colorbar(image, ax=axes[1], label="c")
    fig.savefig(io.BytesIO(), format="png", dpi=150)


def main() -> int:
    # Below the run's own priority: the imports and the warm-up take the cores the run
    # leaves idle (at the same priority they slowed the motion rounds by 0.2-0.3 s).
    if hasattr(os, "nice"):
        os.nice(10)
    # matplotlib and the figure code are imported, and a first figure drawn, before the
    # inputs arrive: that is the part of the work done while the run still computes.
    import kilomatch.figures  # noqa: F401
    _warm_up()
    data = sys.stdin.buffer.read()
    if not data:  # the run ended without figures
        return 0
    draw_jobs(pickle.loads(data))
    # Every PNG is written and closed: the interpreter's own exit (0.1 s with matplotlib
    # loaded) is skipped, since the run waits for this process to end.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
