"""The ``kilomatch`` logger: one console handler for every entry point, and the run's own
``kilomatch.log`` beside its results."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

log = logging.getLogger("kilomatch")

_CONSOLE_FORMAT = "kilomatch: %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FILE = "kilomatch.log"


def setup_logging(stream=None, level: int = logging.INFO) -> logging.Handler:
    """The one console handler of the ``kilomatch`` logger (added once; stdout by default).

    Returns the handler, so a caller that added it can remove it."""
    for handler in log.handlers:  # ours, or one the user set up in a notebook
        if not isinstance(handler, RunLog):
            return handler
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    handler._kilomatch_console = True
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > level:
        log.setLevel(level)
    return handler


class RunLog(logging.Handler):
    """Every ``kilomatch`` record (INFO and up) of one run, made in the thread that started
    it, for ``kilomatch.log``.

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
        self.path = None

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
        return self

    def __exit__(self, *exc):
        log.removeHandler(self)
        if self._file is not None:
            self._file.close()
            self._file = None
        return False
