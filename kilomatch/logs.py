"""The ``kilomatch`` logger: one console handler for every entry point, and the run's own
``kilomatch.log`` beside its results."""

from __future__ import annotations

import json
import logging
import platform
import sys
import threading
import warnings
from importlib import metadata
from pathlib import Path

log = logging.getLogger("kilomatch")

_CONSOLE_FORMAT = "kilomatch: %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FILE = "kilomatch.log"
# The libraries whose versions can change a result (written at the top of kilomatch.log).
_LIBRARIES = ("numpy", "scipy", "scikit-learn", "hdbscan")


def versions() -> dict:
    """{name: version} of kilomatch, Python and the numerical libraries it runs on."""
    from . import __version__
    out = {"kilomatch": __version__, "Python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def setup_logging(stream=None, level: int = logging.INFO) -> logging.Handler:
    """The one console handler of the ``kilomatch`` logger (added once; stdout by default).

    Returns the handler, so a caller that added it can remove it."""
    for handler in log.handlers:  # ours, or one the user set up in a notebook
        if not isinstance(handler, RunLog):
            return handler
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > level:
        log.setLevel(level)
    return handler


class RunLog(logging.Handler):
    """Every ``kilomatch`` record (INFO and up) of one run, made in the thread that started
    it, for ``kilomatch.log``, and every Python warning raised during the run (numpy,
    scikit-learn, ...), which still also goes to the console as usual.

    Records are kept in memory until :meth:`open` names the output folder (it is made only once
    the input has been checked), then written there as they come. Use as a context manager."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(_FILE_FORMAT))
        # Only this thread's records: studies run in threads of one process (a batch worker)
        # must not write into each other's logs.
        self._thread = threading.get_ident()
        self.addFilter(lambda record: record.thread == self._thread)
        self._pending = []
        self._file = None
        self._showwarning = None
        self.path = None
        self.n_warnings = 0

    def note(self, message: str, *args) -> None:
        """A line for the log file only (not the console): versions, settings."""
        self.handle(log.makeRecord(log.name, logging.INFO, "", 0, message, args, None))

    def describe_run(self, settings) -> None:
        """The file's header: versions, and the settings that differ from the defaults."""
        self.note("versions: %s", ", ".join(f"{k} {v}" for k, v in versions().items()))
        changed = settings.changed()
        self.note("settings that differ from the defaults (the rest: README, 'Settings'):")
        for name, value in changed.items():
            self.note("    %s = %s", name, json.dumps(value, default=str))

    def _capture_warning(self, message, category, filename, lineno, file=None, line=None):
        self.handle(log.makeRecord(log.name, logging.WARNING, filename, lineno,
                                   "%s: %s (%s:%d)", (category.__name__, message, filename,
                                                     lineno), None))
        self._showwarning(message, category, filename, lineno, file, line)

    def open(self, folder) -> Path:
        """Start ``folder/kilomatch.log`` afresh with the records so far."""
        self.path = Path(folder) / LOG_FILE
        self._file = open(self.path, "w", encoding="utf-8")
        for line in self._pending:
            self._file.write(line + "\n")
        self._pending = []
        self._file.flush()
        return self.path

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.n_warnings += 1
        line = self.format(record)
        if self._file is None:
            self._pending.append(line)
        else:
            self._file.write(line + "\n")
            self._file.flush()

    def __enter__(self):
        log.addHandler(self)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        self._showwarning, warnings.showwarning = warnings.showwarning, self._capture_warning
        return self

    def __exit__(self, *exc):
        warnings.showwarning = self._showwarning
        self.note("%d warning%s in this run%s", self.n_warnings,
                  "" if self.n_warnings == 1 else "s", " (above)" if self.n_warnings else "")
        log.removeHandler(self)
        if self._file is not None:
            self._file.close()
            self._file = None
        return False
