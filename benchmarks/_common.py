"""Helpers shared by the benchmark scripts: machine description, cached simulated datasets,
plain-text / Markdown tables, JSON output."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Fallback for a plain checkout: the repository root, after any installed kilomatch.
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

DEFAULT_CACHE = "/tmp/kilomatch_bench"


# ----------------------------------------------------------------------------- machine

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        import psutil
        return psutil.virtual_memory().total / 2**30
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """CPU model, logical cores, memory, OS and Python of this machine."""
    mem = _memory_gb()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": None if mem is None else round(mem, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def run_header(peers_python: str | None, memory_method: str) -> dict:
    """Everything printed at the top of a benchmark: machine, date, command, versions."""
    import kilomatch

    return {
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv),
        "cwd": os.getcwd(),
        "kilomatch_version": kilomatch.__version__,
        "peers_python": peers_python,
        "memory_method": memory_method,
    }


def header_text(header: dict, markdown: bool = False) -> str:
    """The header as lines of text (Markdown list items with ``markdown``)."""
    m = header["machine"]
    mem = "?" if m["memory_gb"] is None else f"{m['memory_gb']:.1f} GB"
    lines = [
        f"machine: {m['cpu']}, {m['cores']} logical cores, {mem} RAM, {m['os']}",
        f"date: {header['date']}",
        f"command: {header['command']}  (in {header['cwd']})",
        f"kilomatch {header['kilomatch_version']} (Python {m['python']}); "
        f"peers Python: {header['peers_python'] or 'none (peers skipped)'}",
        f"peak memory: {header['memory_method']}",
    ]
    if markdown:
        return "\n".join(f"- {line}" for line in lines)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- datasets

def _cache_key(params: dict) -> dict:
    """What a cached dataset must match: its parameters and the simulator's source (so that a
    change of kilomatch/simulate.py regenerates the data)."""
    import kilomatch.simulate

    source = Path(kilomatch.simulate.__file__).read_bytes()
    return {"params": params, "simulate_py_sha256": hashlib.sha256(source).hexdigest()}


def ensure_dataset(cache, name: str, params: dict, verbose: bool = True) -> Path:
    """The simulated input folder ``cache/data/name``, generated once with
    ``kilomatch.simulate.simulate_to_folder(**params)`` and reused while its parameters and the
    simulator are unchanged (recorded in ``cache/data/name.key.json``)."""
    from kilomatch.simulate import simulate_to_folder

    folder = Path(cache) / "data" / name
    key_file = folder.with_name(name + ".key.json")
    key = _cache_key(params)
    if (folder / "gt_neuron.npy").exists() and key_file.exists() \
            and json.loads(key_file.read_text()) == key:
        if verbose:
            print(f"dataset {name}: cached in {folder}", flush=True)
        return folder
    if verbose:
        print(f"dataset {name}: simulating into {folder} ...", flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    simulate_to_folder(folder, overwrite=True, **params)
    key_file.write_text(json.dumps(key, indent=2) + "\n")
    return folder


# --smoke: the same datasets, tiny, to check the set-up quickly.
SMOKE = {"n_sessions": 3, "n_neurons": 40}


def with_seed_offset(name: str, seed: int, offset: int) -> tuple[str, int]:
    """A fresh study of the same kind (``--seed-offset``): (name, seed) unchanged at 0, else
    (``<name>_seed+<offset>``, seed + offset)."""
    if not offset:
        return name, seed
    return f"{name}_seed+{offset}", seed + offset


def without_seed_offset(name: str) -> str:
    """The kind of a study named by :func:`with_seed_offset`, the same at every offset:
    'o_turnover_low_amplitude_seed+1000' -> 'o_turnover_low_amplitude'."""
    return name.split("_seed+", 1)[0]


def simulated(cache, name: str, params: dict, smoke: bool = False) -> tuple:
    """(name, params, folder, summary) of a cached simulated dataset; with ``smoke`` its tiny
    version, named ``<name>_smoke``."""
    if smoke:
        name, params = name + "_smoke", {**params, **SMOKE}
    folder = ensure_dataset(cache, name, params)
    return name, params, folder, dataset_summary(folder)


def dataset_summary(folder) -> dict:
    """Units, sessions and neurons of a simulated folder (from simulation.json)."""
    meta = json.loads((Path(folder) / "simulation.json").read_text())
    return {k: meta.get(k) for k in ("n_units", "n_sessions", "n_neurons_sorted",
                                      "n_neurons_in_several_sessions", "motion_range_um")}


# ----------------------------------------------------------------------------- tables

def fmt(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(header: list, rows: list, markdown: bool = False) -> str:
    """A table of strings: aligned plain text, or Markdown with ``markdown``."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def notes_text(results: list, markdown: bool = False) -> str:
    """The distinct notes (workarounds etc.) of every tool, one line each."""
    seen = {}
    for r in results:
        for note in r.get("notes", []):
            seen.setdefault((r["tool"], note), None)
    if not seen:
        return ""
    bullet = "- " if markdown else "  "
    lines = ["Notes:"] + [f"{bullet}{tool}: {note}" for tool, note in seen]
    return "\n".join(lines)


def write_json(path, payload: dict) -> None:
    """Write ``payload`` as indented JSON (numpy arrays must be converted by the caller)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
