"""What a run was made from, recorded beside its results so that a finished study can be
recognised and skipped (``kilomatch batch``) instead of being run again.

The fingerprint holds the effective settings and, for the input folder (and a given motion
file), the number of files, their total size and a SHA-256 digest of every file's relative
path, size (bytes) and modification time (ns). File contents are not read: hashing 10 GB of
waveforms would cost more than many runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import __version__
from .errors import KilomatchError

FINGERPRINT_FILE = "input_fingerprint.json"
COMPLETE_FILE = "Output.npz"  # written last by export: its presence marks a complete run


def _file_listing(root: Path) -> list:
    """(relative posix path, size, mtime_ns) of every file under ``root`` (or of ``root``
    itself when it is a file), sorted by path so the listing does not depend on the order
    the file system returns."""
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    rows = []
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    st = entry.stat(follow_symlinks=True)
                    rel = Path(entry.path).relative_to(root).as_posix()
                    rows.append((rel, st.st_size, st.st_mtime_ns))
    rows.sort()
    return rows


def _describe_files(path: Path) -> dict:
    """Count, total bytes and digest of the files at ``path`` (a folder or a file)."""
    try:
        rows = _file_listing(path)
    except OSError as err:
        raise KilomatchError(f"cannot list the input files of {path}: {err}") from None
    digest = hashlib.sha256()
    for rel, size, mtime in rows:
        digest.update(f"{rel}\t{size}\t{mtime}\n".encode("utf-8"))
    return {"path": str(path), "files": len(rows), "bytes": int(sum(r[1] for r in rows)),
            "sha256": digest.hexdigest()}


def compute(settings) -> dict:
    """The fingerprint of a run of ``settings`` (a :class:`kilomatch.settings.Settings`) on the
    input files as they are now: a small JSON-able dict."""
    given_motion = settings.waveformCorrection.path_to_motion
    return {
        "kilomatch_version": __version__,
        "settings": settings.to_dict(),
        "inputs": _describe_files(Path(settings.path_to_data)),
        "motion_file": _describe_files(Path(given_motion)) if given_motion else None,
    }


def record(settings) -> Path:
    """Write the fingerprint of ``settings`` into its output folder (atomically). Called by the
    pipeline before any result is written, so it is in place before ``Output.npz``."""
    from .export import save_json
    path = Path(settings.output_folder) / FINGERPRINT_FILE
    save_json(path, compute(settings))
    return path


def why_not_done(settings) -> str | None:
    """None when ``settings.output_folder`` holds a complete run made with these settings from
    these input files; else why the study must run (one short phrase)."""
    folder = Path(settings.output_folder)
    if not (folder / COMPLETE_FILE).is_file():
        return f"no complete run in {folder} (no {COMPLETE_FILE})"
    try:
        recorded = json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {FINGERPRINT_FILE} in {folder}"
    current = compute(settings)
    for key, what in (("settings", "the settings changed"),
                      ("inputs", f"the input files in {settings.path_to_data} changed"),
                      ("motion_file", "the motion file changed"),
                      ("kilomatch_version", "it was made by another kilomatch version")):
        if recorded.get(key) != current[key]:
            return what
    return None
