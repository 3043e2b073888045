"""Files written whole or not at all: a temporary file beside the target, renamed into place.

Small and free of heavy imports, so that the figure worker processes
(:mod:`kilomatch.figure_worker`) write their PNGs as the export writes its arrays.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import KilomatchError

# zlib level of the PNG figures: level 1 halves the encoding time of level 6 (Pillow's
# default), for files ~15% larger; these are figures of a few hundred kB.
PNG_COMPRESS_LEVEL = 1
FIGURE_DPI = 150


def temporary_name(name: str) -> str:
    """The name a file or folder ``name`` is written under until it is complete:
    '.{name}.tmp{pid}', beside it (one file system, so the rename into place is atomic)."""
    return f".{name}.tmp{os.getpid()}"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one :func:`temporary_name` gives (of any process): what a stopped
    run leaves, and a clean-up may remove."""
    return _TEMPORARY.fullmatch(name) is not None


_TEMPORARY = re.compile(r"\..+\.tmp\d+")


def atomic_write(path: Path, writer) -> None:
    """Call writer(file) on a temporary file beside ``path``, then rename it into place.

    A failed write (a full disk, a lost mount) raises KilomatchError naming ``path``; the file
    that was there is left as it was."""
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise KilomatchError(f"could not write {path}: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            tmp.unlink()


def save_png(fig, path: Path, dpi: int = FIGURE_DPI) -> None:
    """A matplotlib Figure as a PNG at ``path`` (atomically), with no timestamp or software
    name in it: the same figure gives the same bytes."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                             metadata={"Software": None},
                                             pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}))
