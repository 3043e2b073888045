"""One spike sorting per session -> kilomatch's input folder (shared by the phy,
SpikeInterface and NWB readers).

A reader turns each session into :class:`SessionUnits` (checked, waveforms made on demand);
:func:`write_input_folder` checks that all sessions share one probe and writes the folder, plus
``units_source.csv`` (unit, session, session_path, original_unit_id), which maps every
kilomatch unit back to the session and unit id of the user's own sorting. Waveforms are written
session by session through a memory map, so memory holds one session's spike times and one
unit's snippets at a time.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import KilomatchError
from .folder import (CHANNEL_LOCATIONS, CHANNEL_SHANKS, SESSION_INDEX, UNITS_SOURCE, WAVEFORMS,
                     FolderWriter)

log = logging.getLogger("kilomatch")


@dataclass
class SessionUnits:
    """One session, read and checked; its waveforms are made only when written.

    path: the session as given (file or folder).
    channel_locations: (C, 2) x, y in um (y = depth).
    channel_shanks: (C,) int shank id per channel, or None for a single shank.
    unit_ids: original unit ids, in the order the units are written.
    n_samples: T, samples per waveform.
    spike_times_ms: one array of spike times in ms per unit.
    waveforms: callable yielding one (C, T) array in uV per unit, in unit order.
    geometry_source: where the channels came from, named when sessions differ (e.g.
        "channel_map.npy, channel_positions.npy").
    """

    path: Path
    channel_locations: np.ndarray
    channel_shanks: np.ndarray | None
    unit_ids: list
    n_samples: int
    spike_times_ms: list
    waveforms: Callable[[], Iterator[np.ndarray]]
    geometry_source: str = ""


def session_name(index: int, path) -> str:
    """How messages name a session: "session 2 (path)"."""
    return f"session {index} ({path})"


def _geometry_difference(a: SessionUnits, b: SessionUnits) -> str | None:
    """How b's channels differ from a's, or None when they are the same."""
    la, lb = a.channel_locations, b.channel_locations
    if la.shape != lb.shape:
        return f"{lb.shape[0]} channels against {la.shape[0]}"
    far = np.flatnonzero(np.abs(la - lb).max(axis=1) > 1e-3)
    if far.size:
        c = int(far[0])
        return (f"{far.size} channel positions differ, first channel {c} at "
                f"({lb[c, 0]:g}, {lb[c, 1]:g}) um against ({la[c, 0]:g}, {la[c, 1]:g}) um")
    sa = np.zeros(la.shape[0], np.int64) if a.channel_shanks is None else a.channel_shanks
    sb = np.zeros(lb.shape[0], np.int64) if b.channel_shanks is None else b.channel_shanks
    if not _same_partition(sa, sb):
        return "the channels are grouped into shanks differently"
    return None


def _same_partition(labels_a, labels_b) -> bool:
    """Whether two shank labellings of the same channels group them alike: shank labels may
    be numbered differently, one label of a per label of b and back."""
    a, b = np.asarray(labels_a).tolist(), np.asarray(labels_b).tolist()
    pairs = len(set(zip(a, b)))
    return pairs == len(set(a)) == len(set(b))


def align_channels(ref: SessionUnits, s: SessionUnits, index: int) -> SessionUnits:
    """s with its channels put in ref's order when it holds the same channel positions in
    another order (a sorting made with a channel map listing them differently); else s as it
    is, for :func:`check_sessions` to judge."""
    la, lb = ref.channel_locations, s.channel_locations
    if la.shape != lb.shape or np.abs(la - lb).max(initial=0) <= 1e-3:
        return s
    order = _find_positions(lb, la)  # s's channel at each of ref's positions
    if (order < 0).any() or np.unique(order).size != order.size:
        return s
    log.info("%s lists the channels of %s in another order%s; reordered by position",
             session_name(index, s.path), session_name(1, ref.path),
             f" ({s.geometry_source})" if s.geometry_source else "")
    source = s.waveforms
    return replace(s, channel_locations=la.copy(),
                   channel_shanks=None if s.channel_shanks is None else s.channel_shanks[order],
                   waveforms=lambda: (np.asarray(w)[order] for w in source()))


# A session sorted with a channel map that leaves out this share of the probe's channels or
# more is more likely another probe, bank or map than sites that failed: named, not padded.
MIN_CHANNEL_SHARE = 0.75


def _find_positions(whole: np.ndarray, locs: np.ndarray) -> np.ndarray:
    """Index in ``whole`` (C, 2) um of each channel of ``locs`` (c, 2) at the same position
    (within 1e-3 um), -1 where none is."""
    dist = np.abs(whole[:, None, :] - locs[None, :, :]).max(axis=2)  # (C, c)
    idx = dist.argmin(axis=0) if len(whole) else np.full(len(locs), -1)
    found = dist[idx, np.arange(len(locs))] <= 1e-3 if len(whole) else np.zeros(len(locs), bool)
    return np.where(found, idx, -1)


def whole_probe(sessions: list[SessionUnits]) -> tuple[np.ndarray, np.ndarray | None]:
    """The channels of all sessions together: the session with the most channels in its own
    order, then any channel another session holds at a position none before it has.
    Returns ((C, 2) um, (C,) shank ids or None)."""
    order = sorted(range(len(sessions)), key=lambda k: -len(sessions[k].channel_locations))
    first = sessions[order[0]]
    locs = np.asarray(first.channel_locations, dtype=np.float64)
    shanks = None if first.channel_shanks is None else np.asarray(first.channel_shanks)
    for k in order[1:]:
        s = sessions[k]
        idx = _find_positions(locs, s.channel_locations)
        new = idx < 0
        if new.any() and (shanks is None) == (s.channel_shanks is None):
            locs = np.concatenate([locs, s.channel_locations[new]])
            if shanks is not None:
                # its own shank labels, under the probe's labels where channels they share
                # say which those are
                own = np.asarray(s.channel_shanks)
                named = dict(zip(own[~new].tolist(), shanks[idx[~new]].tolist()))
                shanks = np.concatenate([shanks, [named.get(x, x) for x in own[new].tolist()]])
    return locs, shanks


def pad_to_probe(locs: np.ndarray, shanks: np.ndarray | None, s: SessionUnits,
                 index: int) -> SessionUnits:
    """s on the whole probe (whole_probe) when its channel map leaves out some of the
    probe's channels, each missing channel written as 0 in every unit of the session (the
    run finds such channels and fills them in from their neighbours: fill_dead_channels);
    else s as it is, for :func:`check_sessions` to judge."""
    own = np.asarray(s.channel_locations, dtype=np.float64)
    if own.shape == locs.shape and np.abs(own - locs).max(initial=0) <= 1e-3:
        return s
    idx = _find_positions(locs, own)
    if ((idx < 0).any() or np.unique(idx).size != idx.size
            or len(own) < MIN_CHANNEL_SHARE * len(locs)
            or (shanks is None) != (s.channel_shanks is None)):
        return s
    if shanks is not None and not _same_partition(s.channel_shanks, shanks[idx]):
        return s
    missing = np.setdiff1d(np.arange(len(locs)), idx)
    log.warning("%s: its channel map leaves out %d of the %d channels the sessions hold "
                "together (first at (%g, %g) um%s): they are written as 0 for its units, and "
                "the run fills them in from the channels around them (fill_dead_channels)",
                session_name(index, s.path), missing.size, len(locs), locs[missing[0], 0],
                locs[missing[0], 1], f"; {s.geometry_source}" if s.geometry_source else "")
    source, n_channels = s.waveforms, len(locs)

    def padded():
        for w in source():
            w = np.asarray(w, dtype=np.float32)
            out = np.zeros((n_channels, w.shape[1]), dtype=np.float32)
            out[idx] = w
            yield out

    return replace(s, channel_locations=locs.copy(),
                   channel_shanks=None if shanks is None else shanks.copy(), waveforms=padded)


def check_sessions(sessions: list[SessionUnits]) -> None:
    """One probe geometry and one waveform length for all sessions; raise naming the odd ones."""
    ref = sessions[0]
    problems = []
    for k, s in enumerate(sessions[1:], 2):
        diff = _geometry_difference(ref, s)
        if diff:
            source = f" ({s.geometry_source})" if s.geometry_source else ""
            problems.append(f"{session_name(k, s.path)} has a different channel geometry"
                            f"{source} from {session_name(1, ref.path)}: {diff}")
        elif s.n_samples != ref.n_samples:
            problems.append(f"{session_name(k, s.path)} has waveforms of {s.n_samples} "
                            f"samples, {session_name(1, ref.path)} of {ref.n_samples}; all "
                            "sessions need the same waveform length")
    if problems:
        hint = ("kilomatch tracks units on one probe: sort every session with the same probe "
                "and channel positions (a session whose channel map leaves out fewer than "
                f"{1 - MIN_CHANNEL_SHARE:.0%} of the sessions' channels is padded with 0 there)")
        err = KilomatchError.from_problems(problems, header="Sessions do not share one probe "
                                           "geometry")
        raise KilomatchError(f"{err}\n{hint}", problems)


def _write_units(sessions: list[SessionUnits], writer: FolderWriter, shape: tuple) -> None:
    """Waveforms (N, C, T) float32, a unit at a time (memory stays at one session's reader);
    spike times."""
    n_ch, n_t = shape[1], shape[2]
    start = 0
    with writer.rows(WAVEFORMS, shape, np.float32) as wf:
        for k, s in enumerate(sessions, 1):
            n = len(s.unit_ids)
            i = -1
            for i, w in enumerate(s.waveforms()):
                if i >= n:
                    break
                w = np.asarray(w, dtype=np.float32)
                if w.shape != (n_ch, n_t):  # pragma: no cover - readers check this
                    raise KilomatchError(f"{session_name(k, s.path)}: unit {s.unit_ids[i]} has "
                                         f"a waveform of shape {w.shape}, expected "
                                         f"{(n_ch, n_t)}")
                if not np.isfinite(w).all():
                    raise KilomatchError(f"{session_name(k, s.path)}: the waveform of unit "
                                         f"{s.unit_ids[i]} holds NaN or Inf")
                wf.write(w[None])
            if i + 1 != n:  # pragma: no cover - internal consistency
                raise KilomatchError(f"{session_name(k, s.path)}: {i + 1} waveforms for {n} "
                                     "units")
            for i in range(n):
                writer.save_spike_times(start + i, np.sort(np.asarray(s.spike_times_ms[i],
                                                                      dtype=np.float64).ravel()))
            start += n
            log.info("%s: %d units", session_name(k, s.path), n)


def write_input_folder(sessions: list[SessionUnits], out_dir, overwrite: bool = False) -> Path:
    """Write kilomatch's input folder (and units_source.csv) from checked sessions; returns it.

    Refuses a non-empty ``out_dir`` unless ``overwrite`` (which replaces it whole), and one that
    holds a session. Atomic: see :class:`~kilomatch.formats.folder.FolderWriter`.
    """
    sessions = sessions[:1] + [align_channels(sessions[0], s, k)
                               for k, s in enumerate(sessions[1:], 2)]
    locs, shanks = whole_probe(sessions)
    sessions = [pad_to_probe(locs, shanks, s, k) for k, s in enumerate(sessions, 1)]
    check_sessions(sessions)
    writer = FolderWriter(out_dir, overwrite=overwrite, protect=[s.path for s in sessions])
    n_units = sum(len(s.unit_ids) for s in sessions)
    n_ch, n_t = sessions[0].channel_locations.shape[0], sessions[0].n_samples
    with writer:
        _write_units(sessions, writer, (n_units, n_ch, n_t))
        writer.save(CHANNEL_LOCATIONS,
                    np.ascontiguousarray(sessions[0].channel_locations, dtype=np.float64))
        writer.save(SESSION_INDEX,
                    np.repeat(np.arange(1, len(sessions) + 1),
                              [len(s.unit_ids) for s in sessions]).astype(np.int64))
        shanks = sessions[0].channel_shanks
        if shanks is not None and np.unique(shanks).size > 1:
            writer.save(CHANNEL_SHANKS, np.asarray(shanks, dtype=np.int64))
        with open(writer.path(UNITS_SOURCE), "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["unit", "session", "session_path", "original_unit_id"])
            unit = 0
            for k, s in enumerate(sessions, 1):
                path = str(Path(s.path).resolve())
                for uid in s.unit_ids:
                    rows.writerow([unit, k, path, uid])
                    unit += 1
    return writer.out


def check_session_list(sessions, kind: str) -> list[Path]:
    if isinstance(sessions, (str, os.PathLike)):
        raise KilomatchError(f"{kind}: give a list of session paths, in session order (got one "
                             f"path: {sessions})")
    paths = [Path(p) for p in sessions]
    if len(paths) < 2:
        raise KilomatchError(f"{kind}: tracking needs at least two sessions, got {len(paths)}")
    seen = {}
    for k, p in enumerate(paths, 1):
        key = str(p.resolve())
        if key in seen:
            raise KilomatchError(f"{session_name(k, p)} is the same as session {seen[key]}; "
                                 "give each session once")
        seen[key] = k
    return paths


def no_unit(index: int, path, why: str) -> KilomatchError:
    return KilomatchError(f"{session_name(index, path)}: no usable unit: {why}")


def need_module(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise KilomatchError(f"this importer needs {module}: pip install \"kilomatch[{extra}]\""
                             ) from None


@contextlib.contextmanager
def foreign_errors(where: str, what: str):
    """Any error of a third-party reader inside the block becomes one KilomatchError: "{where}:
    not {what} (its type: its message)"."""
    try:
        yield
    except KilomatchError:
        raise
    except Exception as err:  # third-party readers raise many kinds
        raise KilomatchError(f"{where}: not {what} ({type(err).__name__}: {err})") from None
