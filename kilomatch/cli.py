"""Command line: ``kilomatch [SETTINGS]`` (same as ``python mainKilomatch.py [SETTINGS]``) and
its sub-commands ``kilomatch COMMAND ...`` (see :data:`COMMANDS`).

Every entry point (this one, ``python -m kilomatch.importers``, ``python -m kilomatch.simulate``,
...) ends bad input or settings the same way: one ``kilomatch: error: ...`` message on stderr
and exit status 2, without a traceback (``--debug`` shows it). Use :func:`run_command` for a new
entry point and :func:`setup_logging` for its console log.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

from .errors import KilomatchError
from .logs import log, setup_logging
from .parameters import BY_NAME

# Sub-commands: name -> (module, function taking argv and returning an exit code, help).
# The module is imported only when its command is used.
COMMANDS = {
    "run": ("kilomatch.cli", "run_main", "run one study (the default: kilomatch SETTINGS)"),
    "import": ("kilomatch.importers", "main",
               "build an input folder from phy, SpikeInterface or NWB sessions"),
    "spikeinfo": ("kilomatch.io", "main", "build an input folder from a spikeInfo.mat"),
    "simulate": ("kilomatch.simulate", "main",
                 "write a simulated input folder with ground truth"),
    "batch": ("kilomatch.batch", "batch_main",
              "run many studies, here or on a Dask cluster (the default with several settings "
              "files or a folder)"),
    "report": ("kilomatch.review", "main", "write OUTPUT/report/index.html to review a run"),
    "apply-curation": ("kilomatch.manual_curation", "main",
                       "apply a reviewer's curation.json; results in OUTPUT/curated/"),
}

def run_command(body, debug=False) -> int:
    """Call ``body()`` (which returns an exit code or None) the way every entry point does:
    a KilomatchError becomes one ``kilomatch: error: ...`` line and exit status 2 (re-raised
    when ``debug`` is true, or returns true when it is a callable, asked only then); Ctrl-C
    ends with 130."""
    try:
        code = body()
    except KilomatchError as err:
        if debug() if callable(debug) else debug:
            raise
        print(f"kilomatch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kilomatch: interrupted; Output.npz was not written, so the results are incomplete",
              file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


@contextlib.contextmanager
def command_logging(stream=None):
    """The console log of one command (:func:`setup_logging`), taken away again at its end when
    this command added it, so that a later command or test writes to its own stream."""
    before = list(log.handlers)
    handler = setup_logging(stream)
    try:
        yield handler
    finally:
        if handler not in before:
            log.removeHandler(handler)


def _parser() -> argparse.ArgumentParser:
    commands = ", ".join(f"'{name}' ({help_})" for name, (_, _, help_) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="kilomatch", description="Track neurons across sessions.",
        epilog=f"Sub-commands: {commands}. 'kilomatch COMMAND --help' says more.")
    p.add_argument("settings", nargs="?", default="settings.json",
                   help="settings file (JSON with comments); default ./settings.json. Several "
                        "files or a folder run them all ('kilomatch batch --help')")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def ensure_example(settings) -> None:
    """Make the bundled example dataset when the default settings point to it and it is missing."""
    default = Path(BY_NAME["path_to_data"].default)
    base = settings.source.resolve().parent if settings.source else Path.cwd()
    if settings.path_to_data == (base / default).resolve() and not settings.path_to_data.exists():
        from .example import make_example
        print(f"kilomatch: the example dataset is made on first use: writing {settings.path_to_data}",
              flush=True)
        make_example(settings.path_to_data)


def run_main(argv=None) -> int:
    """``kilomatch [run] [SETTINGS] [--debug]``: one study."""
    args = _parser().parse_args(argv)
    state = {"debug": args.debug}

    def body():
        from .settings import load
        settings = load(args.settings)
        state["debug"] = state["debug"] or settings.debug
        ensure_example(settings)
        from .pipeline import run
        run(settings)

    return run_command(body, debug=lambda: state["debug"])


def _names_many_studies(argv) -> bool:
    """Several settings files, or a folder of them: a batch."""
    given = [a for a in argv if not a.startswith("-")]
    return len(given) > 1 or any(Path(a).is_dir() for a in given)


def main(argv=None) -> int:
    """Dispatch ``kilomatch COMMAND ...`` to the command's module; anything else runs a study.

    Called without ``argv`` (the command line: ``kilomatch``, ``python mainKilomatch.py``)
    the call is the whole process: :func:`start_of_process` sets it up and
    :func:`before_exit` makes its end quick."""
    as_process = argv is None
    if as_process:
        start_of_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and _names_many_studies(argv):
        argv = ["batch"] + argv
    if argv and argv[0] in COMMANDS:
        module, function, _ = COMMANDS[argv[0]]
        code = getattr(importlib.import_module(module), function)(argv[1:])
    else:
        code = run_main(argv)
    if as_process:
        before_exit()
    return code


# How many new objects the garbage collector lets each generation gain before it looks for
# reference cycles (Python's default: 700, 10, 10). A run's arrays hold no cycles, but the
# libraries it imports (scikit-learn, pandas, hdbscan, matplotlib) make ~200k objects: with
# the default a 1,600-unit run made ~520 collections, 4 of them over every object, 0.9-1.0 s
# in all on a loaded machine; with these, 40 collections and 0.3 s (same peak memory).
COLLECTOR_THRESHOLDS = (10_000, 10, 10)


def start_of_process() -> None:
    """For a process that is one kilomatch command: the garbage collector's thresholds
    (COLLECTOR_THRESHOLDS). Not for a library call, whose process is the caller's."""
    import gc
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def before_exit() -> None:
    """For a process that ends next: put every object out of the garbage collector's reach.
    The interpreter's exit otherwise traverses them all once more (~170k objects with
    scikit-learn, pandas and matplotlib loaded: 0.2-0.5 s of a 1,600-unit run's wall time).
    Nothing is lost: results and kilomatch.log are closed by then, and the system takes the
    memory back at exit. Not for a process that goes on (frozen objects are never collected)."""
    import gc
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
