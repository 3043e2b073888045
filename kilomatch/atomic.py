"""Files written whole or not at all: a temporary file beside the target, renamed into place.

Small and free of heavy imports, so that the figure worker processes
(:mod:`kilomatch.figure_worker`) write their PNGs as the export writes its arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import KilomatchError

# zlib level of the PNG figures: level 1 halves the encoding time of level 6 (Pillow's
# default), for files ~15% larger; these are figures of a few hundred kB.
PNG_COMPRESS_LEVEL = 1
FIGURE_DPI = 150


def atomic_write(path: Path, writer) -> None:
    """Call writer(file) on a temporary file beside ``path``, then rename it into place.

    A failed write (a full disk, a lost mount) raises KilomatchError naming ``path``; the file
    that was there is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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
