"""Run one command in a fresh process and measure its wall time and peak memory.

The tools being compared start worker processes (joblib / loky), so the memory of the whole
process tree counts, not only that of the main process. With psutil installed, the tree's summed
resident memory (RSS) is polled every ``poll_s`` seconds and the largest sum is reported. RSS
sums count pages shared between processes (e.g. the numpy libraries of every worker) once per
process, so they slightly overstate the tree's use; the same rule applies to every tool.

Without psutil, the command runs under a small wrapper process that reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak RSS of the largest single process
of the tree (workers are not summed). The ``memory_method`` entry of the result says which of the
two was used.

Used as a module by the benchmark scripts; it can also be run by hand::

    python benchmarks/_measure.py [--mem-limit-gb 8] [--timeout 600] -- CMD ARG...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

METHOD_PSUTIL = "psutil: summed RSS of the process tree, polled"
METHOD_RUSAGE = "getrusage: peak RSS of the largest single process (psutil missing)"

_WRAPPER_FLAG = "--rusage-wrapper"
_RUSAGE_PREFIX = "@@measure-ru-maxrss-kb="


def memory_method() -> str:
    """Which memory measurement :func:`measure` uses in this environment."""
    return METHOD_PSUTIL if psutil is not None else METHOD_RUSAGE


def _tail(path: Path, n_lines: int) -> str:
    """Last ``n_lines`` non-empty lines of a text file ('' if it is missing), without the
    getrusage wrapper's report line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines()
             if ln.strip() and not ln.startswith(_RUSAGE_PREFIX)]
    return "\n".join(lines[-n_lines:])


def _tree_rss_bytes(proc) -> int:
    """Summed RSS of a psutil process and all its descendants (processes that vanish while
    being read are skipped)."""
    try:
        members = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _kill_group(popen: subprocess.Popen) -> None:
    """Kill the process group that ``popen`` leads (it was started in its own session, so the
    group holds exactly the command and the workers it started)."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wrapped(cmd: list) -> list:
    """The command run under the getrusage wrapper (this file, run as a script)."""
    return [sys.executable, str(Path(__file__).resolve()), _WRAPPER_FLAG, "--", *cmd]


def _rusage_from_stderr(stderr_path: Path) -> float | None:
    """Peak RSS (MB) that the wrapper wrote on the last matching stderr line."""
    try:
        lines = stderr_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(_RUSAGE_PREFIX):
            kb = float(line[len(_RUSAGE_PREFIX):])
            # ru_maxrss is in kB on Linux, in bytes on macOS.
            return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)
    return None


# Drop the OS page cache before each measured command (the scripts' --cold): every tool then
# reads its input from the disk, as on a study's first run, not from whatever earlier runs left
# in memory (at 30k units kilomatch's load took 2.6 s from memory, 7.8 s from a cold disk).
COLD_START = False


def drop_page_cache() -> str | None:
    """Write dirty pages out and drop Linux's page cache (needs root). None when done, else a
    note saying why not."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as err:
        return (f"page cache not dropped ({err.strerror or err}): the input may have been read "
                "from memory")
    return None


def measure(cmd, env=None, timeout=None, mem_limit_mb=None, log_dir=None,
            poll_s: float = 0.1, tail_lines: int = 20, cwd=None) -> dict:
    """Run ``cmd`` (a list of strings) in a new process and measure it.

    Parameters
    ----------
    cmd : list[str]
        The command; it runs in its own session / process group.
    env : dict, optional
        Full environment of the command (default: this process's environment).
    timeout : float, optional
        Seconds after which the whole tree is killed (status 'stopped: timeout').
    mem_limit_mb : float, optional
        Kill the whole tree when its summed RSS exceeds this (status 'stopped: memory').
        Needs psutil; ignored (with a note) without it.
    log_dir : path, optional
        Keep the full output in ``log_dir/stdout.txt`` and ``log_dir/stderr.txt``
        (default: temporary files, deleted afterwards).
    poll_s : float
        Interval between memory samples (psutil only).

    Returns
    -------
    dict with wall_s, peak_rss_mb, returncode, status ('ok', 'failed (exit N)',
    'stopped: timeout', 'stopped: memory'), stdout_tail, stderr_tail, memory_method, notes.
    """
    cmd = [str(c) for c in cmd]
    notes = []
    if COLD_START:
        note = drop_page_cache()
        if note:
            notes.append(note)
    use_psutil = psutil is not None
    if mem_limit_mb is not None and not use_psutil:
        notes.append("memory cap ignored: it needs psutil")
        mem_limit_mb = None
    run_cmd = cmd if use_psutil else _wrapped(cmd)

    tmp = None
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kilomatch_measure_")
        log_dir = tmp.name
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"

    status = None
    peak_bytes = 0
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        t0 = time.perf_counter()
        popen = subprocess.Popen(run_cmd, stdout=out_f, stderr=err_f, env=env, cwd=cwd,
                                 start_new_session=True)
        proc = psutil.Process(popen.pid) if use_psutil else None
        while popen.poll() is None:
            if use_psutil:
                peak_bytes = max(peak_bytes, _tree_rss_bytes(proc))
                if mem_limit_mb is not None and peak_bytes > mem_limit_mb * 2**20:
                    status = "stopped: memory"
            if timeout is not None and time.perf_counter() - t0 > timeout:
                status = "stopped: timeout"
            if status is not None:
                _kill_group(popen)
                popen.wait()
                break
            # waits for the end of the command, or poll_s at most: a plain sleep counted up to
            # poll_s after the command's end in its wall time (0.05 s on average, 1% of a 5 s
            # run)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=poll_s)
        wall_s = time.perf_counter() - t0
        returncode = popen.wait()
        # Workers that outlived the main process belong to its group: end them too.
        _kill_group(popen)

    if use_psutil:
        peak_mb = peak_bytes / 2**20
    else:
        peak_mb = _rusage_from_stderr(err_path)
    if status is None:
        status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    result = {
        "wall_s": wall_s,
        "peak_rss_mb": peak_mb,
        "returncode": returncode,
        "status": status,
        "stdout_tail": _tail(out_path, tail_lines),
        "stderr_tail": _tail(err_path, tail_lines),
        "memory_method": METHOD_PSUTIL if use_psutil else METHOD_RUSAGE,
        "notes": notes,
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def _wrapper_main(cmd: list) -> int:
    """Run ``cmd`` as a child and report the peak RSS of the largest process of its tree."""
    import resource

    code = subprocess.call(cmd)
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stderr.write(f"\n{_RUSAGE_PREFIX}{kb}\n")
    return code


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == [_WRAPPER_FLAG, "--"]:
        return _wrapper_main(argv[2:])
    ap = argparse.ArgumentParser(description="Measure wall time and peak memory of a command.")
    ap.add_argument("--timeout", type=float, default=None, help="seconds")
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="stop the command when its process tree exceeds this")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARG...")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    limit = None if args.mem_limit_gb is None else args.mem_limit_gb * 1024
    result = measure(cmd, timeout=args.timeout, mem_limit_mb=limit)
    print(json.dumps(result, indent=2))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
