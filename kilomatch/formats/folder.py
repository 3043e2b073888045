"""kilomatch's input folder: the one list of its file names and the one writer of it.

Layout (README 'Input folder')::

    waveform_all.npy       (N, C, T) mean waveforms, uV
    channel_locations.npy  (C, 2) channel x, y, um
    session_index.npy      (N,) session of each unit, 1..S
    peth.npy               (N, P) optional
    channel_shanks.npy     (C,) optional
    spike_times/Unit{k}.npy  spike times of unit k, ms

Converters may add their own files (``units_source.csv``, the simulator's ground truth).

:class:`FolderWriter` writes a folder atomically: every file goes into a hidden temporary folder
beside the target, which takes the target's place only once complete. A failed or interrupted
write leaves the old folder as it was, and replacing a folder leaves no file of the old one
(a stale ``spike_times/Unit{k}.npy`` past the new unit count would be refused by the loader; a
stale ``peth.npy`` would be read as current).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..atomic import temporary_name
from ..errors import KilomatchError

WAVEFORMS = "waveform_all.npy"
CHANNEL_LOCATIONS = "channel_locations.npy"
SESSION_INDEX = "session_index.npy"
PETH = "peth.npy"
CHANNEL_SHANKS = "channel_shanks.npy"
SPIKE_TIMES = "spike_times"
#: Written by the importers: unit, session, session_path, original_unit_id per kilomatch unit.
UNITS_SOURCE = "units_source.csv"

REQUIRED = (WAVEFORMS, CHANNEL_LOCATIONS, SESSION_INDEX)
OPTIONAL = (PETH, CHANNEL_SHANKS)
UNIT_FILE = re.compile(r"^Unit(\d+)\.npy$")


def unit_file(unit: int) -> str:
    """Name of unit ``unit``'s spike-time file inside ``spike_times/``."""
    return f"Unit{unit}.npy"


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


class FolderWriter:
    """Write an input folder ``out`` atomically; use as a context manager::

        with FolderWriter(out, overwrite=False, protect=[session_paths]) as w:
            w.save(CHANNEL_LOCATIONS, locations)
            w.save_spike_times(k, times)

    Files are written into ``.{name}.tmp{pid}`` beside ``out`` (same file system, so the final
    rename is atomic) and move into place when the block ends without an exception; on an
    exception the temporary folder is removed and ``out`` is untouched.

    out: the folder to write. When it exists and holds anything, it is replaced whole when
        ``overwrite`` is true or ``replaceable(out)`` says so (the simulator replaces its own
        earlier output); otherwise a KilomatchError is raised before anything is written.
    protect: paths that must not lie inside ``out`` (the inputs being converted: replacing
        ``out`` would delete them).
    not_empty_hint: added to the "not empty" message (why the folder is not replaceable).
    """

    def __init__(self, out, *, overwrite: bool = False, replaceable=None, protect=(),
                 not_empty_hint: str = ""):
        out = Path(out)
        self.out = out.resolve() if out.is_symlink() else out
        self.overwrite = overwrite
        self.replaceable = replaceable
        self.protect = [Path(p) for p in protect]
        self.not_empty_hint = not_empty_hint
        self.folder: Path | None = None

    def check(self) -> None:
        """Raise when ``out`` cannot be written; nothing is written."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise KilomatchError(f"output folder {out} is a file")
        for p in self.protect:
            if p.exists() and _is_within(p, out):
                raise KilomatchError(f"output folder {out} holds or is the input {p}; choose "
                                     "another folder (inputs are only read, never written)")
        if out.is_dir() and any(out.iterdir()) and not self.overwrite and not (
                self.replaceable is not None and self.replaceable(out)):
            raise KilomatchError(f"{out} exists and is not empty{self.not_empty_hint}; choose an "
                                 "empty folder or pass overwrite=True (--overwrite), which "
                                 "replaces the whole folder")

    def __enter__(self) -> "FolderWriter":
        self.check()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.folder = self.out.parent / temporary_name(self.out.name)
        if self.folder.exists():  # left by a killed run of a process with this id
            shutil.rmtree(self.folder)
        (self.folder / SPIKE_TIMES).mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            if issubclass(exc_type, OSError):
                # a full disk or a lost mount: one line naming the folder, not a traceback
                where = f" ({exc.filename})" if exc.filename else ""  # e.g. an input read
                raise KilomatchError(f"could not write {self.out}: {exc.strerror or exc}"
                                     f"{where}; nothing was written there") from exc
            return False
        try:
            self._commit()
        except OSError as err:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise KilomatchError(f"could not move the written folder into {self.out}: "
                                 f"{err.strerror or err}") from err
        return False

    def _commit(self) -> None:
        """Swap the complete temporary folder in; the old folder goes only once it is in."""
        out = self.out
        if not out.exists():
            os.rename(self.folder, out)
            return
        old = out.parent / f".{out.name}.old{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
        try:
            os.rename(self.folder, out)
        except BaseException:
            os.rename(old, out)
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        shutil.rmtree(old)

    def path(self, name: str) -> Path:
        """Where file ``name`` is being written (for writers that stream, e.g. a CSV writer)."""
        return self.folder / name

    def rows(self, name: str, shape: tuple, dtype=np.float32) -> "RowWriter":
        """A ``.npy`` of ``shape`` written in order, a block of rows at a time::

            with w.rows(WAVEFORMS, (N, C, T)) as out:
                out.write(block)          # (n, C, T), rows out.n_written .. +n

        Plain file writes, not a memory map: a full disk then raises OSError (a message)
        where a memory map would kill the process with SIGBUS.
        """
        return RowWriter(self.path(name), shape, dtype)

    def save(self, name: str, array: np.ndarray) -> None:
        """``np.save`` into the folder being written."""
        np.save(self.path(name), array)

    def save_spike_times(self, unit: int, times: np.ndarray) -> None:
        """Unit ``unit``'s spike times (ms) as ``spike_times/Unit{unit}.npy``."""
        np.save(self.folder / SPIKE_TIMES / unit_file(unit), times)

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text)


def write_npy_header(f, shape: tuple, dtype) -> None:
    """The ``.npy`` header of a C-order array of ``shape`` and ``dtype``, in the version
    np.save would choose, so that the rows written after it give np.save's bytes."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    try:
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:  # a header too long for version 1.0
        np.lib.format.write_array_header_2_0(f, header)


class RowWriter:
    """Write a C-order ``.npy`` of known ``shape`` row block by row block (see
    :meth:`FolderWriter.rows`); the file is the one ``np.save`` would write for the same array.
    Closing it before ``shape[0]`` rows were written is an error."""

    def __init__(self, path: Path, shape: tuple, dtype=np.float32):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.n_written = 0
        self._file = None

    def __enter__(self) -> "RowWriter":
        self._file = open(self.path, "wb")
        write_npy_header(self._file, self.shape, self.dtype)
        return self

    def write(self, block: np.ndarray) -> None:
        """Append rows ``n_written .. n_written + len(block) - 1``; block (n, *shape[1:])."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.n_written + len(block) > self.shape[0]:
            raise KilomatchError(f"{self.path.name}: a block of shape {block.shape} does not "
                                 f"fit rows {self.n_written}.. of {self.shape}")
        self._file.write(block.tobytes())
        self.n_written += len(block)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._file.close()
        if exc_type is None and self.n_written != self.shape[0]:
            raise KilomatchError(f"{self.path.name}: {self.n_written} of {self.shape[0]} rows "
                                 "were written")
        return False
