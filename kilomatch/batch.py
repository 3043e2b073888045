"""Many studies in one command: ``kilomatch batch SETTINGS...`` and :func:`run_many`.

Each study is one settings file run exactly as ``kilomatch SETTINGS`` runs it (same code, same
settings, so the same bytes in its output folder, whatever the number of workers). Studies run

- in this process, one after the other, with ``workers=1`` (no Dask needed);
- on a local ``dask.distributed`` cluster sized to the machine (the default): worker
  processes x jobs per study no more than the usable cores, memory split between workers;
- on an existing Dask cluster given by a ``Client`` or a scheduler address.

One study's failure never stops the others; each ends as ``done``, ``skipped`` (its output
folder already holds a complete run of the same settings and input files, see
:mod:`kilomatch.fingerprint`) or ``failed`` with its message, in ``batch_summary.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import fingerprint
from .errors import KilomatchError
from .logs import setup_logging
from .parallel import limit_jobs, usable_cores

log = logging.getLogger("kilomatch")

SUMMARY_FILE = "batch_summary.csv"
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class StudyOutcome:
    """One study of a batch: a row of ``batch_summary.csv``.

    wall_time_s in s; peak_memory_mb: peak resident memory (MB) of the process that ran the
    study and its child processes while it ran; counts are None when the study failed.
    """

    settings: str
    status: str
    units: int | None = None
    sessions: int | None = None
    clusters: int | None = None
    matched_pairs: int | None = None
    wall_time_s: float | None = None
    peak_memory_mb: float | None = None
    output_folder: str = ""
    error: str = ""
    traceback: str = ""  # of an unexpected error (a bug), shown with --debug; not in the CSV

    @property
    def ok(self) -> bool:
        return self.status in (DONE, SKIPPED)


CSV_COLUMNS = [f.name for f in fields(StudyOutcome) if f.name != "traceback"]


# ----------------------------------------------------------------------------- one study

class PeakMemory:
    """Peak resident memory (MB) of this process and its children while the block runs,
    sampled every 0.1 s (psutil, which Dask brings); without psutil, the process's peak so far.
    """

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak_mb = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self, process, psutil):
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        self.peak_mb = max(self.peak_mb or 0.0, total / 2**20)

    def _loop(self, process, psutil):
        while not self._stop.wait(self.interval_s):
            self._sample(process, psutil)

    def __enter__(self):
        try:
            import psutil
        except ImportError:
            return self
        process = psutil.Process()
        self._sample(process, psutil)
        self._thread = threading.Thread(target=self._loop, args=(process, psutil), daemon=True)
        self._thread.start()
        self._psutil = (process, psutil)
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            from .pipeline import peak_memory_mb
            self.peak_mb = peak_memory_mb()
        else:
            self._stop.set()
            self._thread.join()
            self._sample(*self._psutil)
        if self.peak_mb is not None:
            self.peak_mb = round(self.peak_mb, 1)
        return False


class _NotATerminal(io.TextIOBase):
    """stderr that says it is not a terminal, so the pipeline's own progress bars stay quiet
    while the batch's bar over studies runs (anything else written still reaches stderr)."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self):
        return False

    def writable(self):
        return True

    def write(self, text):
        return self._stream.write(text)

    def flush(self):
        self._stream.flush()


_quiet_lock = threading.Lock()
_quiet_count = 0


@contextlib.contextmanager
def _quiet_study():
    """While a study runs in this thread, its INFO lines go only to its own kilomatch.log (the
    console shows its warnings), and the pipeline's progress bars are off."""
    global _quiet_count
    console = setup_logging()
    thread = threading.get_ident()

    def keep(record):
        return record.thread != thread or record.levelno >= logging.WARNING

    console.addFilter(keep)
    with _quiet_lock:
        if _quiet_count == 0:
            sys.stderr = _NotATerminal(sys.stderr)
        _quiet_count += 1
    try:
        yield
    finally:
        console.removeFilter(keep)
        with _quiet_lock:
            _quiet_count -= 1
            if _quiet_count == 0 and isinstance(sys.stderr, _NotATerminal):
                sys.stderr = sys.stderr._stream


def _counts_of_finished(folder: Path) -> dict:
    """Units, sessions, clusters and matched pairs of the complete run in ``folder``."""
    import numpy as np
    with np.load(folder / fingerprint.COMPLETE_FILE, allow_pickle=False) as z:
        return {"units": int(z["NumUnits"]), "sessions": int(z["NumSessions"]),
                "clusters": int(z["NumClusters"]), "matched_pairs": int(len(z["MatchedPairs"]))}


def thread_counts() -> dict:
    """Threads of the BLAS and OpenMP libraries a run uses, in this process: user API
    ('blas', 'openmp') -> count."""
    from threadpoolctl import threadpool_info
    from . import pipeline  # noqa: F401  (loads the libraries a run uses)
    counts = {}
    for lib in threadpool_info():
        counts[lib["user_api"]] = max(counts.get(lib["user_api"], 1), lib["num_threads"])
    return counts


@contextlib.contextmanager
def _same_threads(counts: dict | None):
    """Give BLAS and OpenMP the thread counts of the process that started the batch (at most
    the cores here). The last bits of the Kriging and similarity products depend on BLAS's
    thread count, and Dask starts workers with one thread: without this a study would not
    give the bytes of a plain run."""
    if not counts:
        yield
        return
    from threadpoolctl import threadpool_limits
    from . import pipeline  # noqa: F401  (the libraries must be loaded to be limited)
    cores = usable_cores()
    with threadpool_limits({api: min(n, cores) for api, n in counts.items()}):
        yield


def run_study(label: str, settings, force: bool = False, job_limit: int | None = None,
              threads: dict | None = None) -> StudyOutcome:
    """Run one study (a loaded :class:`kilomatch.settings.Settings`) unless its output folder
    already holds a complete run of the same settings and inputs (``force`` runs it anyway).
    Never raises for the study's own errors: they end up in the outcome. ``job_limit``: most
    worker processes the study's ``n_jobs`` may use; ``threads``: BLAS/OpenMP thread counts
    to use (:func:`thread_counts` of the submitting process)."""
    from .pipeline import run
    t0 = time.perf_counter()
    out = StudyOutcome(label, FAILED, output_folder=str(settings.output_folder))
    with PeakMemory() as peak, _quiet_study(), _same_threads(threads):
        try:
            reason = None if force else fingerprint.why_not_done(settings)
            if not force and reason is None:
                out.status = SKIPPED
                counts = _counts_of_finished(Path(settings.output_folder))
            else:
                with limit_jobs(job_limit):
                    result = run(settings)
                out.status = DONE
                counts = {k: result.summary[k]
                          for k in ("units", "sessions", "clusters", "matched_pairs")}
            for key, value in counts.items():
                setattr(out, key, value)
        except KilomatchError as err:
            out.error = str(err)
        except MemoryError:
            out.error = (f"out of memory (peak {peak.peak_mb} MB when last sampled): give each "
                         "worker more memory (--memory-per-worker) or run fewer at once")
        except Exception as err:  # a bug: reported, and the batch goes on
            out.error = (f"unexpected error {type(err).__name__}: {err} (a kilomatch bug; "
                         "--debug shows the traceback)")
            out.traceback = traceback.format_exc()
    out.wall_time_s = round(time.perf_counter() - t0, 2)
    out.peak_memory_mb = peak.peak_mb
    return out


def _run_study_on_worker(label, settings, force, job_limit, threads):
    """run_study on a Dask worker: without a set limit, each study uses the worker's usable
    cores divided by the studies it may run at once (its threads)."""
    if job_limit is None:
        from distributed import get_worker
        worker = get_worker()
        at_once = getattr(worker, "nthreads", None) or worker.state.nthreads
        job_limit = max(1, usable_cores() // max(1, at_once))
    return run_study(label, settings, force, job_limit, threads)


# ----------------------------------------------------------------------------- the batch

def settings_paths(entries) -> list:
    """Settings files of the command line: files as given, a folder gives its ``*.json`` files
    (sorted, not its subfolders)."""
    paths = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.json") if p.is_file())
            if not found:
                raise KilomatchError(f"folder {path} holds no settings file (*.json)")
            paths += found
        else:
            paths.append(path)
    return paths


def _load_all(entries) -> list:
    """(label, Settings or None, error) per study; labels are the settings paths, or
    ``settings #k`` for dicts."""
    from .settings import load
    studies = []
    for k, entry in enumerate(entries, 1):
        label = f"settings #{k}" if isinstance(entry, dict) else str(
            getattr(entry, "source", None) or entry)
        try:
            studies.append((label, load(entry), ""))
        except KilomatchError as err:
            studies.append((label, None, str(err)))
    return studies


def check_output_folders(studies) -> None:
    """Two studies writing to one output folder, or one writing into another's input folder,
    is an error found before anything runs."""
    problems, owner = [], {}
    for label, s, _ in studies:
        if s is None:
            continue
        folder = Path(s.output_folder).resolve()
        if folder in owner:
            problems.append(f"{owner[folder]} and {label} both write to output_folder {folder}; "
                            "give each study its own")
        else:
            owner[folder] = label
    for label, s, _ in studies:
        if s is None:
            continue
        data = Path(s.path_to_data).resolve()
        for folder, other in owner.items():
            if other != label and (folder == data or data in folder.parents):
                problems.append(f"{other} writes its results into {label}'s input folder "
                                f"{data}; choose another output_folder")
    if problems:
        raise KilomatchError.from_problems(
            problems, header="Studies of the batch would overwrite each other")


def local_cluster_size(n_studies: int, workers: int | None = None, n_jobs: int | None = None,
                       memory_per_worker: int | None = None, cores: int | None = None,
                       total_memory: int | None = None) -> tuple[int, int, int]:
    """(worker processes, jobs per study, memory per worker in bytes) of a local cluster:
    workers x jobs no more than the cores, each worker its share of the memory.

    Default: as many workers as studies, at most one per core and (with ``memory_per_worker``)
    at most as many as the memory holds; the cores left go to each study's n_jobs."""
    cores = cores or usable_cores()
    total_memory = total_memory or _total_memory()
    limit = cores if memory_per_worker is None else max(1, total_memory // memory_per_worker)
    if workers is None:
        workers = max(1, min(n_studies, cores, limit))
    workers = max(1, min(workers, cores))
    jobs = max(1, cores // workers)
    if n_jobs is not None and n_jobs > 0:
        jobs = min(jobs, n_jobs)
    memory = memory_per_worker or total_memory // workers
    return workers, jobs, int(memory)


def _total_memory() -> int:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil comes with Dask
        import os
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise KilomatchError('running studies in parallel needs Dask: pip install '
                             '"kilomatch[dask]", or run one at a time with --workers 1') from None
    return distributed


def _gb(n_bytes) -> str:
    return f"{n_bytes / 2**30:.1f} GB"


@contextlib.contextmanager
def _dask_client(client, scheduler, n_studies, workers, n_jobs, memory_per_worker):
    """(client, jobs per study or None) for the batch; a cluster made here is closed after."""
    if client is not None:
        yield client, n_jobs
        return
    distributed = _import_distributed()
    if scheduler:
        with distributed.Client(scheduler) as own:
            info = own.scheduler_info().get("workers", {})
            memory = sorted({w.get("memory_limit") for w in info.values()} - {None, 0})
            log.info("Dask cluster at %s: %d workers now, memory per worker %s", scheduler,
                     len(info), ", ".join(_gb(m) for m in memory) or "unlimited")
            yield own, n_jobs
        return
    if isinstance(memory_per_worker, str):
        from dask.utils import parse_bytes
        try:
            memory_per_worker = parse_bytes(memory_per_worker)
        except ValueError:
            raise KilomatchError(f"memory per worker {memory_per_worker!r} is not a size like "
                                 "16GB") from None
    n_workers, jobs, memory = local_cluster_size(n_studies, workers, n_jobs, memory_per_worker)
    log.info("local Dask cluster: %d worker processes x %d jobs per study (%d usable cores), "
             "%s memory per worker", n_workers, jobs, usable_cores(), _gb(memory))
    import dask
    # A study whose worker dies (out of memory) fails at once instead of being retried, and a
    # worker may start joblib processes for its study's n_jobs.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.worker.daemon": False}):
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                      memory_limit=memory, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as own:
            yield own, jobs


def run_many(settings_list, client=None, *, workers: int | None = None,
             scheduler: str | None = None, n_jobs: int | None = None,
             memory_per_worker=None, force: bool = False, summary=None,
             progress: bool = True) -> list:
    """Run many studies; returns one :class:`StudyOutcome` per study, in the order given.

    settings_list: settings files, folders of them, dicts or Settings. ``client``: a
    ``distributed.Client`` to run on; else ``scheduler`` (an address), else ``workers=1`` (in
    this process, no Dask) or a local cluster of ``workers`` processes (default: sized to the
    machine). ``n_jobs``: most worker processes each study may use (default: the cores each
    worker owns). ``memory_per_worker``: bytes or a string like "16GB" (local cluster).
    ``force``: run studies that are already done. ``summary``: where batch_summary.csv goes
    (default: beside the first settings file; the current folder for dicts).
    """
    from .settings import Settings
    if isinstance(settings_list, (str, Path, dict, Settings)):
        settings_list = [settings_list]
    entries = []
    for entry in settings_list:
        entries += settings_paths([entry]) if isinstance(entry, (str, Path)) else [entry]
    if not entries:
        raise KilomatchError("no settings files given")
    studies = _load_all(entries)
    check_output_folders(studies)
    summary = Path(summary) if summary is not None else _default_summary(entries[0])
    outcomes = [None] * len(studies)
    runnable = []
    for k, (label, s, error) in enumerate(studies):
        if s is None:
            outcomes[k] = StudyOutcome(label, FAILED, error=error)
        elif not force and _is_done(s):  # found here: no cluster is started for it
            outcomes[k] = run_study(label, s)
        else:
            runnable.append(k)
    setup_logging()
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    bar = tqdm(total=len(studies), desc="studies", unit="study", disable=None if progress else True)
    with bar, logging_redirect_tqdm(loggers=[log]):
        for k in range(len(studies)):
            if outcomes[k] is not None:
                _report(outcomes[k], bar)
        if client is None and scheduler is None and workers == 1:
            for k in runnable:
                label, s, _ = studies[k]
                outcomes[k] = run_study(label, s, force, n_jobs)
                _report(outcomes[k], bar)
        elif runnable:
            _run_on_dask(studies, runnable, outcomes, bar, client, scheduler, workers, n_jobs,
                         memory_per_worker, force)
    write_summary(summary, outcomes)
    counts = {status: sum(o.status == status for o in outcomes)
              for status in (DONE, SKIPPED, FAILED)}
    log.info("batch: %d done, %d skipped, %d failed; summary in %s", counts[DONE],
             counts[SKIPPED], counts[FAILED], summary)
    return outcomes


def _run_on_dask(studies, runnable, outcomes, bar, client, scheduler, workers, n_jobs,
                 memory_per_worker, force):
    distributed = _import_distributed()
    with _dask_client(client, scheduler, len(runnable), workers, n_jobs,
                      memory_per_worker) as (dask_client, jobs):
        tag = uuid.uuid4().hex[:8]
        threads = thread_counts()
        futures = {}
        for k in runnable:
            label, s, _ = studies[k]
            future = dask_client.submit(_run_study_on_worker, label, s, force, jobs, threads,
                                        pure=False, key=f"kilomatch-study-{k}-{tag}")
            futures[future] = k
        for future in distributed.as_completed(list(futures)):
            k = futures[future]
            try:
                outcomes[k] = future.result()
            except Exception as err:  # the worker died (memory) or the cluster went away
                label, s, _ = studies[k]
                outcomes[k] = StudyOutcome(
                    label, FAILED, output_folder=str(s.output_folder),
                    error=f"the Dask worker running it failed ({type(err).__name__}: {err}); "
                          "a worker killed for memory needs more memory per worker")
            _report(outcomes[k], bar)


def _is_done(settings) -> bool:
    try:
        return fingerprint.why_not_done(settings) is None
    except KilomatchError:  # unreadable input: the study's run reports it
        return False


def _report(outcome: StudyOutcome, bar) -> None:
    bar.update(1)
    if outcome.status == FAILED:
        log.warning("%s failed: %s", outcome.settings, outcome.error)
    else:
        log.info("%s %s: %s units, %s sessions, %s clusters, %s matched pairs (%.1f s)",
                 outcome.settings, outcome.status, outcome.units, outcome.sessions,
                 outcome.clusters, outcome.matched_pairs, outcome.wall_time_s or 0.0)


def _default_summary(first) -> Path:
    if isinstance(first, (str, Path)):
        return Path(first).resolve().parent / SUMMARY_FILE
    source = getattr(first, "source", None)
    return (Path(source).resolve().parent if source else Path.cwd()) / SUMMARY_FILE


def write_summary(path: Path, outcomes: list) -> Path:
    """``batch_summary.csv``: one row per study (CSV_COLUMNS), written atomically."""
    from .export import save_text
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for outcome in outcomes:
        row = asdict(outcome)
        row["error"] = " ".join(line.strip() for line in row["error"].splitlines())
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_text(path, buf.getvalue())
    except OSError as err:
        raise KilomatchError(f"cannot write the batch summary {path}: {err}") from None
    return path


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kilomatch batch",
        description="Run many studies (one settings file each). One study's failure does not "
                    "stop the others; a study whose output folder already holds a complete run "
                    "of the same settings and input files is skipped. Exit status 0 when every "
                    "study is done or skipped, 1 when one failed, 2 for a bad command.")
    p.add_argument("settings", nargs="+",
                   help="settings files, or folders of them (their *.json files)")
    p.add_argument("--workers", type=int, default=None,
                   help="studies run at once on a local Dask cluster (default: sized to the "
                        "machine); 1 runs them one after the other in this process, no Dask")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (tcp://host:8786)")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="most worker processes each study uses (default: the cores of its "
                        "worker); results do not depend on it")
    p.add_argument("--memory-per-worker", default=None, metavar="SIZE",
                   help="memory of each local worker, e.g. 16GB (fewer workers if the machine "
                        "holds less); default: the machine's memory shared among workers")
    p.add_argument("--force", action="store_true", help="run studies that are already done")
    p.add_argument("--summary", default=None, metavar="PATH",
                   help=f"where the summary goes (default: {SUMMARY_FILE} beside the first "
                        "settings file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true",
                   help="show full tracebacks (also of a study's unexpected error)")
    return p


def batch_main(argv=None) -> int:
    """``kilomatch batch SETTINGS... [options]``."""
    from .cli import run_command
    args = _parser().parse_args(argv)

    def body():
        if args.workers is not None and args.workers < 1:
            raise KilomatchError(f"--workers must be 1 or more, got {args.workers}")
        outcomes = run_many(args.settings, workers=args.workers, scheduler=args.scheduler,
                            n_jobs=args.n_jobs, memory_per_worker=args.memory_per_worker,
                            force=args.force, summary=args.summary,
                            progress=not args.no_progress)
        if args.debug:
            for outcome in outcomes:
                if outcome.traceback:
                    print(f"{outcome.settings}:\n{outcome.traceback}", file=sys.stderr)
        return 0 if all(o.ok for o in outcomes) else 1

    return run_command(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(batch_main())
