"""``tracked_neurons.csv``: one row per tracked neuron (final cluster), one column per session.

This is the table a user joins to behaviour data: row = neuron, ``session_k`` = the kilomatch
unit (row of ``units.csv``, index into every per-unit output) seen in session k, blank when the
neuron was not seen that day; when the sorter split the neuron into two units that day and
both were kept (autoCuration.keep_sorter_splits), the cell lists both, joined by ';'. When
the input folder came from an importer, its ``units_source.csv`` also gives the sorter's own
unit id of each unit; a ``session_k_sorter_id`` column then follows each ``session_k``.
The last column, ``duplicate_of_cluster``, names another row when at least half of this
row's units are duplicates of that row's units (units.csv ``duplicate_of``): most often one
neuron whose spikes the sorter counted twice, tracked twice; look at both rows before
dropping one. Unmatched units (cluster -1) belong to no neuron and are not rows here (they
are in ``units.csv``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .errors import KilomatchError

FILE_NAME = "tracked_neurons.csv"
SOURCE_FILE = "units_source.csv"  # written by kilomatch.importers


def read_sorter_ids(input_folder, n_units: int) -> list | None:
    """The sorter's unit id of each of the ``n_units`` units from ``input_folder/units_source.csv``
    (strings, in unit order), or None when the folder has no such file (input not imported)."""
    path = Path(input_folder) / SOURCE_FILE
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"unit", "original_unit_id"} <= set(rows[0]):
        raise KilomatchError(f"{path}: expected the columns unit and original_unit_id, found "
                             f"{', '.join(rows[0])}")
    if len(rows) != n_units:
        raise KilomatchError(f"{path} lists {len(rows)} units but the run has {n_units}")
    for k, row in enumerate(rows):
        if row["unit"].strip() != str(k):
            raise KilomatchError(f"{path}: row {k + 2} is unit {row['unit']!r}, expected {k} "
                                 "(units in order 0..N-1)")
    return [row["original_unit_id"] for row in rows]


def cluster_members(idx: np.ndarray, session: np.ndarray) -> list:
    """(cluster id, its units sorted by session) of every cluster (idx > 0), by increasing id."""
    matched = np.flatnonzero(idx > 0)
    order = matched[np.lexsort((session[matched], idx[matched]))]
    bounds = np.flatnonzero(np.diff(idx[order])) + 1
    return [(int(idx[m[0]]), m) for m in np.split(order, bounds)] if order.size else []


def duplicate_tracks(idx_cluster: np.ndarray, twin: np.ndarray) -> dict:
    """{cluster C: cluster D} for every tracked neuron C at least half of whose units are
    duplicates of units of another tracked neuron D (the most of them; the lower id on a
    tie). idx_cluster: (N,) > 0 tracked; twin: (N,) int, the unit each unit duplicates
    (units.csv duplicate_of), -1 for a unit that duplicates none.

    A sorter that counts a neuron's spikes twice in every session (Kilosort 4 does, on some
    neurons) gives two tracks of one neuron: a user who counts neurons counts it twice."""
    idx = np.asarray(idx_cluster, np.int64).reshape(-1)
    twin = np.asarray(twin, np.int64).reshape(-1)
    # one pass over the units, not one per cluster (20k clusters at 10^5 units)
    units = np.flatnonzero((idx > 0) & (twin >= 0))
    own, other = idx[units], idx[twin[units]]
    keep = (other > 0) & (other != own)
    if not keep.any():
        return {}
    own, other = own[keep], other[keep]
    base = int(idx.max()) + 1
    code, count = np.unique(own * base + other, return_counts=True)
    own, other = code // base, code % base
    size = np.bincount(idx[idx > 0], minlength=base)
    duplicated = np.bincount(own, weights=count, minlength=base)
    order = np.lexsort((other, -count, own))  # per cluster: most duplicates, then lowest id
    first = order[np.r_[True, own[order][1:] != own[order][:-1]]]
    return {int(c): int(d) for c, d in zip(own[first], other[first])
            if 2 * duplicated[c] >= size[c]}


def twin_of(duplicate_of, where="units.csv") -> np.ndarray:
    """(N,) int64 from units.csv's duplicate_of column (N strings, one per row): the unit
    0..N-1 each names, -1 where blank (or -1). Any other value is a KilomatchError naming
    ``where`` and the row. The one reader of that column (apply-curation, the report)."""
    n = len(duplicate_of)
    out = np.full(n, -1, np.int64)
    for k, value in enumerate(duplicate_of):
        text = str(value).strip()
        try:
            out[k] = int(text) if text else -1
        except ValueError:
            out[k] = n  # not an integer: refused below
        if not -1 <= out[k] < n:
            raise KilomatchError(f"{where}, row {k + 2}: duplicate_of is {text!r}, not a unit "
                                 f"index 0..{n - 1}")
    return out


def tracked_table(idx_cluster, session, sorter_ids=None,
                  twin: np.ndarray | None = None) -> tuple[list, list]:
    """Header and rows of ``tracked_neurons.csv``.

    idx_cluster: (N,) cluster of each unit, > 0 for a tracked neuron, -1 unmatched (ids need not
    be contiguous). session: (N,) session of each unit, 1..S. sorter_ids: None or N strings.
    Rows are clusters in increasing id: ``cluster, n_sessions, session_1, ...`` with blank
    cells for sessions where the neuron was not seen. Two units of one session in a cluster (a
    neuron the sorter split, kept by the curation) share the cell, joined by ';' in increasing
    unit order (their sorter ids likewise); n_sessions counts sessions, not units. With
    ``twin`` (N,) (:func:`duplicate_tracks`), a last column ``duplicate_of_cluster``.
    """
    idx = np.asarray(idx_cluster).reshape(-1)
    session = np.asarray(session).reshape(-1)
    n_sessions = int(session.max(initial=0))
    header = ["cluster", "n_sessions"]
    for s in range(1, n_sessions + 1):
        header.append(f"session_{s}")
        if sorter_ids is not None:
            header.append(f"session_{s}_sorter_id")
    width = 2 if sorter_ids is not None else 1
    duplicated = None if twin is None else duplicate_tracks(idx, twin)
    if duplicated is not None:
        header.append("duplicate_of_cluster")
    rows = []
    for cid, members in cluster_members(idx, session):
        cells = [[] for _ in range(width * n_sessions)]
        seen = session[members]
        for u, s in zip(members, seen):  # members are sorted by (session, unit)
            cells[width * (s - 1)].append(str(int(u)))
            if sorter_ids is not None:
                cells[width * (s - 1) + 1].append(str(sorter_ids[u]))
        rows.append([str(cid), str(np.unique(seen).size)] + [";".join(c) for c in cells])
        if duplicated is not None:
            rows[-1].append(str(duplicated.get(cid, "")))
    return header, rows


def tracked_csv(idx_cluster, session, sorter_ids=None, twin=None) -> str:
    """The text of ``tracked_neurons.csv`` (see :func:`tracked_table`)."""
    header, rows = tracked_table(idx_cluster, session, sorter_ids, twin)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_tracked_neurons(folder, idx_cluster, session, input_folder=None,
                          twin=None) -> Path:
    """Write ``folder/tracked_neurons.csv`` atomically; sorter ids come from
    ``input_folder/units_source.csv`` when it exists; ``twin`` (N,): see
    :func:`duplicate_tracks`. Returns the path."""
    from .export import save_text
    idx = np.asarray(idx_cluster).reshape(-1)
    sorter_ids = None if input_folder is None else read_sorter_ids(input_folder, idx.size)
    path = Path(folder) / FILE_NAME
    save_text(path, tracked_csv(idx, session, sorter_ids, twin))
    return path
