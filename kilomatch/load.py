"""Load and check the input folder (format: README 'Input folder').

Every check runs before any heavy work and every problem is reported together, each naming
the file, unit or session at fault. Arrays load with ``allow_pickle=False``; the folder is only
read, never written.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import as_integers, as_vector, check_finite, collect, name_items
from .errors import KilomatchError
from .features import channel_distances, nearest_channels, peak_to_trough
from .formats.folder import (CHANNEL_LOCATIONS, CHANNEL_SHANKS, PETH, REQUIRED, SESSION_INDEX,
                             SPIKE_TIMES, UNIT_FILE, WAVEFORMS, unit_file)

log = logging.getLogger("kilomatch")


@dataclass
class Dataset:
    """One study's units, all sessions together.

    waveforms: (N, C, T) mean waveforms in uV (float32; memory-mapped when loaded from disk);
        None in a per-shank part of a run, whose units carry their own (channel windows).
    channel_locations: (C, 2) channel x, y in um; y is depth.
    session_index: (N,) int64 session of each unit, 1..S.
    spike_times: N arrays of spike times in ms, sorted.
    peth: (N, P) float64 peri-event time histograms, or None.
    channel_shanks: (C,) shank id per channel, or None.
    """

    waveforms: np.ndarray
    channel_locations: np.ndarray
    session_index: np.ndarray
    spike_times: list
    peth: np.ndarray | None = None
    channel_shanks: np.ndarray | None = None
    path: Path | None = None
    # False when load_dataset left the finiteness of the waveforms to the reader of the
    # features (pipeline.unit_features checks it in its own pass over the file)
    waveforms_checked: bool = True
    # the study's number of sessions where its units need not show it: a per-shank part,
    # whose units may all come from the first sessions (None: the largest session index)
    sessions: int | None = None

    @property
    def n_units(self) -> int:
        return int(self.session_index.shape[0])

    @property
    def n_sessions(self) -> int:
        if self.sessions is not None:
            return int(self.sessions)
        return int(self.session_index.max()) if self.session_index.size else 0

    @property
    def n_channels(self) -> int:
        return int(self.channel_locations.shape[0])


# The header numpy writes for a plain 1-D array (np.save of a vector), e.g. of spike times.
_VECTOR_HEADER = re.compile(r"\{'descr': '([<>|=][a-z]\d+)', 'fortran_order': False, "
                            r"'shape': \((\d+),\), \} *\n")


def read_vector_npy(path: Path) -> np.ndarray | None:
    """A 1-D .npy array saved by numpy (format 1.0, a plain dtype), read without np.load's
    parsing of the header as Python, which was most of the time to read one small file (one
    per unit of spike times). None for any other file: np.load reads (and checks) those."""
    with open(path, "rb") as f:
        head = f.read(128)
        if head[:8] != b"\x93NUMPY\x01\x00" or len(head) < 10:
            return None
        end = 10 + int.from_bytes(head[8:10], "little")
        match = _VECTOR_HEADER.fullmatch(head[10:end].decode("latin1")) if end <= 128 else None
        if match is None:
            return None
        try:
            dtype = np.dtype(match.group(1))
        except TypeError:
            return None
        n = int(match.group(2))
        f.seek(end)
        arr = np.fromfile(f, dtype=dtype, count=n)
    return arr if arr.size == n else None


def _load_npy(path: Path, problems: list, mmap: bool = False):
    """np.load with allow_pickle=False; a problem message instead of a numpy traceback."""
    try:
        arr = None if mmap else read_vector_npy(path)
        if arr is None:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "object" in str(err).lower():
            problems.append(f"{path}: holds Python objects (dtype=object); save a plain numeric "
                            "array (np.asarray(x, dtype=float)) - inputs load with allow_pickle=False")
        else:
            problems.append(f"{path}: not a readable .npy array ({err})")
        return None
    except (OSError, EOFError) as err:
        problems.append(f"{path}: cannot be read as .npy ({err})")
        return None
    if isinstance(arr, np.lib.npyio.NpzFile):  # pragma: no cover - .npz renamed to .npy
        problems.append(f"{path}: is an .npz archive, expected a single .npy array")
        return None
    if arr.dtype.kind not in "biuf":
        problems.append(f"{path}: dtype {arr.dtype} is not numeric")
        return None
    return arr


def mapped_file(arr) -> bool:
    """Whether ``arr`` is a C-ordered memory map of a file whose bytes can be read directly.
    Copy-on-write maps ("c") may hold changes that are not in the file: those read as arrays."""
    return (isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap)
            and bool(arr.filename) and arr.flags.c_contiguous and arr.mode != "c")


# Bytes of waveforms read at once from a memory-mapped input (READ_BLOCK_BYTES // row bytes
# units, at least one). The blocks are read into two buffers made once and used in turn: a
# fresh buffer per block had the kernel zero new pages for every byte of the file (the
# speed study's 159 MB, read as one block: 0.3 s of a 4.5 s run on a virtual machine,
# against 0.05 s to copy it into pages already in use).
READ_BLOCK_BYTES = 8 << 20


def block_rows(arr: np.ndarray) -> int:
    """Rows per block of :func:`iter_rows` for ``arr``: READ_BLOCK_BYTES of them, at least 1."""
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * max(arr.itemsize, 4)
    return max(1, READ_BLOCK_BYTES // max(row_bytes, 1))


def iter_rows(arr: np.ndarray, block: int | None = None):
    """Yield (start, rows) over the first axis, each block an in-memory float32 array of at
    most ``block`` rows (None: block_rows(arr)). A block is valid until the next one is asked
    for (its buffer is then read into again) and is not to be written into (for an in-memory
    float32 input it is a view).

    A memory-mapped .npy (as loaded here) is read with plain file reads: the pages go to the
    OS cache, not into this process, so reading 10 GB of waveforms does not count 10 GB of
    resident memory (touching a memory map would keep every page mapped until it is closed).
    """
    n = arr.shape[0]
    block = block_rows(arr) if block is None else int(block)
    if mapped_file(arr):
        from concurrent.futures import ThreadPoolExecutor
        size = (min(block, n),) + arr.shape[1:]
        raw = [np.empty(size, dtype=arr.dtype) for _ in range(2 if n > block else 1)]
        same = arr.dtype == np.float32  # native float32: the raw buffer is the block
        out = None if same else np.empty(size, dtype=np.float32)

        def read(f, start, buffer):
            return _read_into(f, arr, start, buffer[:min(block, n - start)])

        # The next block is read in a thread while the caller works on this one: the read
        # waits on the disk with the GIL released (30k units' 3.8 GB of waveforms from a cold
        # disk: the features step took 22.6 s reading then working, 14.7 s side by side).
        with open(arr.filename, "rb") as f, ThreadPoolExecutor(1) as reader:
            pending = reader.submit(read, f, 0, raw[0]) if n else None
            try:
                for k, start in enumerate(range(0, n, block)):
                    rows = pending.result()
                    # the other buffer: the caller is done with the block read into it
                    pending = (reader.submit(read, f, start + block, raw[(k + 1) % len(raw)])
                               if start + block < n else None)
                    if not same:  # to float32, in a buffer made once too
                        np.copyto(out[:rows.shape[0]], rows, casting="unsafe")
                        rows = out[:rows.shape[0]]
                    yield start, rows
            finally:
                if pending is not None:  # the caller stopped early: let the read end first
                    pending.cancel() or pending.exception()
        return
    for start in range(0, n, block):
        yield start, np.asarray(arr[start:start + block], dtype=np.float32)


def read_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` (sorted ints) of ``arr`` as one in-memory float32 array; from a
    memory-mapped .npy with plain file reads, as :func:`iter_rows` (touching the map would
    count every page read as resident memory: 2,000 NP1 units' 200 MB)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not mapped_file(arr):
        return np.asarray(arr[rows], dtype=np.float32)
    raw = np.empty((rows.size,) + arr.shape[1:], dtype=arr.dtype)
    with open(arr.filename, "rb") as f:
        for k, row in enumerate(rows):
            _read_into(f, arr, int(row), raw[k:k + 1])
    return raw if raw.dtype == np.float32 else raw.astype(np.float32)


def _read_into(f, arr: np.ndarray, start: int, rows: np.ndarray) -> np.ndarray:
    """Fill ``rows`` (an array of arr's dtype, its length in rows) with the rows of the
    memory-mapped .npy ``arr`` from row ``start``, by a plain read of its open file ``f``;
    returns ``rows``."""
    row_bytes = arr.strides[0] if arr.ndim > 1 else arr.itemsize
    f.seek(arr.offset + start * row_bytes)
    f.readinto(memoryview(rows).cast("B"))
    return rows


def judge_rows(ptt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which units are all finite, and which are flat (every channel constant in time), from
    their peak-to-trough per channel (n, C) (features.peak_to_trough: max - min over time):
    ((n,) bool, (n,) bool). A NaN or Inf sample makes its channel's NaN or Inf (max and min
    carry NaN), so the reader of the features, which computes it anyway, checks the
    waveforms at no extra cost; NaN units are not flat."""
    return np.isfinite(ptt).all(axis=1), ptt.max(axis=1, initial=0) == 0


def scan_waveforms(arr: np.ndarray, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """judge_rows over a possibly memory-mapped (N, C, T) array, in one read of it:
    ((N,) bool finite, (N,) bool flat)."""
    finite = np.empty(arr.shape[0], dtype=bool)
    flat = np.empty(arr.shape[0], dtype=bool)
    for start, block in iter_rows(arr, chunk_rows):
        rows = slice(start, start + block.shape[0])
        finite[rows], flat[rows] = judge_rows(peak_to_trough(block))
    return finite, flat


def non_finite_problem(path, finite: np.ndarray) -> str:
    """The error naming the units (N,) bool ``finite`` says are not."""
    return (f"{path}: NaN or Inf in the waveforms of units "
            f"{name_items(np.flatnonzero(~finite))}")


# Channel positions in um: the densest probe in use (Neuropixels Ultra) has its sites 6 um
# apart, Neuropixels 1.0 and 2.0 15-32 um. Neighbours under 1 apart are positions in mm (or
# m): with them every unit lies within clustering.max_distance of every other, and the
# Kriging and the unit locations read the whole probe as one site (a_rigid_np1 in mm:
# F1 0.999 -> 0.19, with no warning).
MIN_CHANNEL_PITCH_UM = 1.0
# y is the depth along the probe: on a shank the sites span far more depth than width
# (Neuropixels: 3,840 um by 48). A probe whose x spans over this many times its y, on every
# shank, has its columns swapped; the motion would then be looked for across the probe.
SWAPPED_SPAN_RATIO = 2.0


def channel_pitch(channel_locations: np.ndarray) -> float:
    """Median distance (um) from each distinct channel position (C, 2) to the nearest other
    one; 0 with fewer than two distinct positions."""
    distinct = np.unique(np.asarray(channel_locations, np.float64), axis=0)
    if distinct.shape[0] < 2:
        return 0.0
    d = np.linalg.norm(distinct[:, None, :] - distinct[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


def channel_unit_problem(channel_locations: np.ndarray, where) -> str | None:
    """The error when the channel positions (C, 2) look like mm or m, not um, else None."""
    pitch = channel_pitch(channel_locations)
    if not 0 < pitch < MIN_CHANNEL_PITCH_UM:
        return None
    return (f"{where}: neighbouring channels are {pitch:.3g} apart (median): channel "
            "positions must be in um, and these look like mm or m (multiply mm by 1000); "
            f"no probe has sites under {MIN_CHANNEL_PITCH_UM:g} um apart")


def depth_axis_hint(channel_locations: np.ndarray,
                    channel_shanks: np.ndarray | None = None) -> str | None:
    """A sentence when the channel positions (C, 2) span more width (x) than depth (y) on
    every shank (``channel_shanks`` (C,); None: one shank), by over SWAPPED_SPAN_RATIO,
    else None."""
    locs = np.asarray(channel_locations, np.float64)
    shanks = np.zeros(len(locs)) if channel_shanks is None else np.asarray(channel_shanks)
    spans = [np.ptp(locs[shanks == k], axis=0) for k in np.unique(shanks)]
    if not all(x > SWAPPED_SPAN_RATIO * y for x, y in spans):
        return None
    x, y = np.max(spans, axis=0)
    return (f"the channels span {x:.0f} um in x and {y:.0f} um in y on each shank: y must be "
            "the depth along the probe, where the motion is looked for; are the two columns "
            "swapped?")


# A unit's amplitude falls with distance from its peak channel. Over the channels within
# 50 um of the peak its mean peak-to-trough amplitude exceeds that over the channels 100-200
# um away by 0.35-0.57 of the peak's (median over units; 192 simulated and sorted studies,
# a quarter of their channels dead included), by 0.27 or more in every session of them.
# Channel positions listed in another order than the waveforms' channels give -0.01-0.00
# (any random order, the same studies) and cost
# most matches (a_rigid_np1: F1 0.999 -> 0.56, with no warning); one session's waveforms on
# channels in another order cost a_rigid_np1 0.999 -> 0.82 (precision 0.90), the log then
# blaming that session's timing and motion.
FALLOFF_NEAR_UM = 50.0
FALLOFF_FAR_UM = (100.0, 200.0)
MIN_FALLOFF = 0.1
UNITS_FOR_FALLOFF = 100  # the hint reads at most this many units per session, evenly spaced
FALLOFF_MIN_UNITS = 5  # a session is judged on this many usable units at least
_FALLOFF_CHUNK = 2048

# Near the peak too: over the LOCAL_CHANNELS channels nearest each unit's peak, the rank
# correlation of amplitude with distance is -0.59 or lower in every session of 118 studies
# (103 simulated: the suite's seeds and dead-channel variants; 15 imported from
# SpikeInterface; median over units, dead channels filled in), -0.16 to +0.06 with the
# positions permuted within blocks of 8 channels, which the fall to 100-200 um does not see
# (a_rigid_np1: F1 0.999 -> 0.915).
LOCAL_CHANNELS = 8
MAX_LOCAL_ORDER = -0.4


def amplitude_falloff(ptt: np.ndarray, peak: np.ndarray, channel_locations: np.ndarray,
                      channel_shanks: np.ndarray | None = None) -> np.ndarray:
    """Each unit's (mean amplitude within FALLOFF_NEAR_UM of its peak channel, the peak
    left out, minus mean amplitude FALLOFF_FAR_UM away) / peak amplitude: ptt (n, C) uV,
    peak (n,) channel -> (n,), NaN for a unit with no channel at either distance or a flat
    one. Channels of other shanks are at no distance."""
    out = np.full(ptt.shape[0], np.nan)
    distances = channel_distances(channel_locations, channel_shanks)
    for start in range(0, ptt.shape[0], _FALLOFF_CHUNK):
        rows = slice(start, start + _FALLOFF_CHUNK)
        d = distances[peak[rows]]  # (n, C) um
        amp = np.asarray(ptt[rows], np.float64)
        top = amp[np.arange(amp.shape[0]), peak[rows]]
        near = (d > 0) & (d <= FALLOFF_NEAR_UM)
        far = (d > FALLOFF_FAR_UM[0]) & (d <= FALLOFF_FAR_UM[1])
        mean_near = np.where(near, amp, 0.0).sum(axis=1) / np.maximum(near.sum(axis=1), 1)
        mean_far = np.where(far, amp, 0.0).sum(axis=1) / np.maximum(far.sum(axis=1), 1)
        usable = (top > 0) & near.any(axis=1) & far.any(axis=1)
        out[rows] = np.where(usable, (mean_near - mean_far) / np.where(top > 0, top, 1.0),
                             np.nan)
    return out


def local_order(ptt: np.ndarray, peak: np.ndarray, channel_locations: np.ndarray,
                channel_shanks: np.ndarray | None = None) -> np.ndarray:
    """Each unit's Spearman rank correlation of amplitude with distance over the
    LOCAL_CHANNELS channels nearest its peak channel (the peak left out): ptt (n, C) uV, peak
    (n,) -> (n,), NaN where either is constant."""
    near = nearest_channels(channel_locations, peak, LOCAL_CHANNELS + 1, channel_shanks)[:, 1:]
    distance = channel_distances(channel_locations, channel_shanks)[peak[:, None], near]
    amplitude = np.take_along_axis(np.asarray(ptt, np.float64), near, axis=1)
    ranked = []
    for x in (amplitude, distance):
        r = np.argsort(np.argsort(x, axis=1, kind="stable"), axis=1, kind="stable")
        r = r.astype(np.float64)
        ranked.append(r - r.mean(axis=1, keepdims=True))
    a, d = ranked
    norm = np.sqrt((a ** 2).sum(axis=1) * (d ** 2).sum(axis=1))
    return np.where(norm > 0, (a * d).sum(axis=1) / np.where(norm > 0, norm, 1.0), np.nan)


def _session_medians(values: np.ndarray, session0: np.ndarray) -> tuple:
    """Sessions (1-based) with FALLOFF_MIN_UNITS finite values or more, and their medians."""
    sessions, medians = [], []
    for k in np.unique(session0):
        v = values[session0 == k]
        v = v[np.isfinite(v)]
        if v.size >= FALLOFF_MIN_UNITS:
            sessions.append(int(k) + 1)
            medians.append(float(np.median(v)))
    return sessions, np.array(medians)


def channel_order_hint(ptt: np.ndarray, peak: np.ndarray, channel_locations: np.ndarray,
                       channel_shanks: np.ndarray | None, session0: np.ndarray) -> str | None:
    """A sentence when the units' amplitude does not fall with distance from their peak
    channel (the median amplitude_falloff under MIN_FALLOFF), or, that being right, not near
    it (the median local_order above MAX_LOCAL_ORDER), in every session or in some sessions
    (session0 (N,) 0-based), else None. Reads UNITS_FOR_FALLOFF units per session at most."""
    session0 = np.asarray(session0)
    rows = [np.zeros(0, np.int64)]
    for k in np.unique(session0):
        members = np.flatnonzero(session0 == k)
        spaced = np.linspace(0, members.size - 1, min(members.size, UNITS_FOR_FALLOFF))
        rows.append(members[np.unique(spaced.astype(np.int64))])
    rows = np.concatenate(rows)
    sessions, falloff = _session_medians(
        amplitude_falloff(ptt[rows], peak[rows], channel_locations, channel_shanks),
        session0[rows])
    low = falloff < MIN_FALLOFF
    if not low.any():
        return _local_order_hint(ptt[rows], peak[rows], channel_locations, channel_shanks,
                                 session0[rows])
    told = (f"the units' amplitude does not fall with distance from their peak channel "
            f"(the channels within {FALLOFF_NEAR_UM:g} um of it carry %s of the peak's "
            f"amplitude more than those {FALLOFF_FAR_UM[0]:g}-{FALLOFF_FAR_UM[1]:g} um away, "
            "0.27 or more in every session of the 189 studies at hand)")
    return _order_sentence(
        sessions, falloff, low, np.median(falloff) < MIN_FALLOFF, told,
        f": {CHANNEL_LOCATIONS} likely lists the channels in another order than {WAVEFORMS}; "
        "unit locations, motion and waveform similarity are then wrong",
        f"their waveforms' channels likely follow another channel order than "
        f"{CHANNEL_LOCATIONS} and the other sessions' (their units then match wrongly or not "
        "at all)")


def _local_order_hint(ptt, peak, channel_locations, channel_shanks, session0) -> str | None:
    """channel_order_hint's sentence on the amplitudes near the peak channel (local_order)."""
    sessions, order = _session_medians(
        local_order(ptt, peak, channel_locations, channel_shanks), session0)
    mixed = order > MAX_LOCAL_ORDER
    told = ("near their peak channel the units' amplitude does not fall with distance (its "
            f"rank correlation with distance over the {LOCAL_CHANNELS} nearest channels is %s; "
            "-0.59 or lower in every session of the 118 studies at hand)")
    return _order_sentence(
        sessions, order, mixed, np.median(order) > MAX_LOCAL_ORDER if order.size else False,
        told,
        f": {CHANNEL_LOCATIONS} likely gives neighbouring channels each other's positions (a "
        "channel map applied to the wrong channels within groups of channels); unit "
        "locations, motion and waveform similarity are then wrong",
        f"their waveforms' channels likely follow another channel order than "
        f"{CHANNEL_LOCATIONS} near each channel")


def _order_sentence(sessions: list, medians: np.ndarray, bad: np.ndarray, median_bad: bool,
                    told: str, whole: str, some: str) -> str | None:
    """The sentence of a channel-order statistic judged per session (sessions, their medians
    and whether each is ``bad``): None when no session is; ``told`` (its %s the value) and
    ``whole`` when every session is, or the median over them is (``median_bad``); else the
    bad sessions named, ``told``, the other sessions' median and ``some``."""
    if not bad.any():
        return None
    if bad.all() or median_bad:
        return told % f"{np.median(medians):.2f}" + whole
    named = ", ".join(f"{k} ({v:.2f})" for k, v, is_bad in zip(sessions, medians, bad)
                      if is_bad)
    return (f"sessions {named}: " + told % "the value in brackets" + ", where the other "
            f"sessions' median is {np.median(medians[~bad]):.2f}: " + some)


def identical_groups(arrays: list) -> list:
    """Groups of 2 or more positions in ``arrays`` whose arrays are identical to the bit:
    found by a hash of their bytes, each checked against its group's first (one that only
    collided with it is left out). A list of int arrays, in no particular order."""
    hashes = np.array([hash(a.tobytes()) for a in arrays], dtype=np.int64)
    order = np.argsort(hashes, kind="stable")
    groups = []
    for group in np.split(order, np.flatnonzero(np.diff(hashes[order])) + 1):
        same = [k for k in group[1:] if np.array_equal(arrays[k], arrays[group[0]])]
        if same:
            groups.append(np.array([group[0], *same]))
    return groups


# Two sessions sharing this share of their units with identical waveforms (the smaller
# session's units) are one session given twice: a mean waveform is never the same to the
# last bit in two recordings. Tracking then "finds" every unit of it again, perfectly.
REPEATED_SHARE = 0.5
REPEATED_MIN_UNITS = 5


def repeated_sessions_hint(ptt: np.ndarray, session0: np.ndarray) -> str | None:
    """A sentence naming the pairs of sessions (session0 (N,) 0-based) that hold the same
    units: at least REPEATED_SHARE of the smaller session's units (REPEATED_MIN_UNITS or
    more) with a peak-to-trough row ptt (N, C) identical to the bit to one of the other
    session's; else None. Flat units are left out."""
    ptt = np.asarray(ptt)
    session0 = np.asarray(session0)
    live = np.flatnonzero(ptt.max(axis=1, initial=0) > 0)
    shared = {}
    for group in identical_groups([ptt[k] for k in live]):
        sessions = np.unique(session0[live[group]])
        for i, a in enumerate(sessions):
            for b in sessions[i + 1:]:
                shared[(int(a), int(b))] = shared.get((int(a), int(b)), 0) + 1
    counts = np.bincount(session0, minlength=int(session0.max(initial=0)) + 1)
    named = [f"{a + 1} and {b + 1} ({n} units)" for (a, b), n in sorted(shared.items())
             if n >= REPEATED_MIN_UNITS and n >= REPEATED_SHARE * min(counts[a], counts[b])]
    if not named:
        return None
    return (f"sessions {'; '.join(named)} hold units with identical waveforms, to the last "
            "bit: the same session given twice? Its units are then tracked into their own "
            "copy")


# Mean waveforms in uV: units' peak-to-trough amplitudes run from tens to hundreds of uV
# (30-1,000 on the accuracy suite and the sorters' outputs). Under 1 uV at the median they
# are in V or mV.
MIN_MEDIAN_AMPLITUDE_UV = 1.0


def amplitude_unit_hint(amplitude: np.ndarray) -> str | None:
    """A sentence when the units' amplitudes (N,) (peak-to-trough on the peak channel, read
    as uV) look like V or mV, else None. Flat units (amplitude 0) are left out."""
    amplitude = np.asarray(amplitude, np.float64)
    amplitude = amplitude[amplitude > 0]
    if amplitude.size == 0:
        return None
    median = float(np.median(amplitude))
    if median >= MIN_MEDIAN_AMPLITUDE_UV:
        return None
    return (f"the waveforms look like V or mV, not uV: the units' median peak-to-trough "
            f"amplitude is {median:.3g} uV; kilomatch reads uV (multiply V by 1e6, mV by "
            "1e3): the tracking does not depend on the scale, but the amplitudes it reports "
            "(units.csv, the figures) would be off by as much")


# A session's median unit amplitude lies within 0.67-1.43x of the sessions' median on the
# accuracy suite and the sorters' outputs (207 studies). Beyond this factor its waveforms are
# likely in other units than the others' (ADC bits, a gain not applied): one session 5x too
# large was misregistered by 130 um, its amplitudes being compared across sessions
# (benchmarks/RESULTS.md, "Session 26").
SESSION_AMPLITUDE_FACTOR = 3.0


def session_amplitude_hint(amplitude: np.ndarray, session_index: np.ndarray,
                           min_units: int = 10) -> str | None:
    """A sentence naming the sessions whose units' median amplitude is over
    SESSION_AMPLITUDE_FACTOR times, or under its inverse, the median of the sessions' medians,
    else None. amplitude: (N,) uV; session_index: (N,) 1-based; sessions of fewer than
    ``min_units`` units are not judged."""
    amplitude = np.asarray(amplitude, np.float64)
    session_index = np.asarray(session_index)
    sessions, counts = np.unique(session_index, return_counts=True)
    sessions = sessions[counts >= min_units]
    if len(sessions) < 3:  # with two, neither could be told from the other
        return None
    medians = np.array([np.median(amplitude[session_index == k]) for k in sessions])
    typical = float(np.median(medians))
    if typical <= 0:
        return None
    ratio = medians / typical
    factor = SESSION_AMPLITUDE_FACTOR
    odd = np.flatnonzero((ratio > factor) | (ratio < 1 / factor))
    if odd.size == 0:
        return None
    listed = ", ".join(f"session {sessions[k]}: {ratio[k]:.2g}x" for k in odd)
    return (f"the units of some sessions are far larger or smaller than the others' ({listed} "
            f"the sessions' median unit amplitude of {typical:.0f} uV): were their waveforms "
            "saved in other units (ADC bits, a gain not applied)? The initial motion estimate "
            "compares amplitudes across sessions, and such a session may be misregistered")


def warn_flat(flat: np.ndarray) -> None:
    """Log the units (N,) bool ``flat`` marks."""
    if flat.any():
        log.warning("units %s have flat (all-constant) waveforms: their waveform similarity is 0",
                    name_items(np.flatnonzero(flat)))


def check_session_index(session_index, n_units: int, where: str = SESSION_INDEX) -> list:
    """Problems with a session index vector (empty list when valid)."""
    problems: list[str] = []
    s = collect(problems, as_vector, session_index, where, str(n_units))
    if s is None:
        return problems
    if s.shape[0] != n_units:
        problems.append(f"{where}: has {s.shape[0]} entries but {WAVEFORMS} has {n_units} "
                        "units; give one session number per unit")
    if s.size == 0:
        return problems + [f"{where}: is empty"]
    s = collect(problems, as_integers, s, where, "units")
    if s is None:
        return problems
    values = np.unique(s)
    if values[0] < 1:
        problems.append(f"{where}: sessions are numbered from 1, found {values[0]}"
                        + (" (0-based? add 1)" if values[0] == 0 else ""))
    elif values[-1] != values.size or values[0] != 1:
        problems.append(f"{where}: sessions must run 1..S without gaps; missing "
                        f"{name_items(_missing_sessions(values))}")
    if values.size < 2:
        problems.append(f"{where}: only one session ({values[0]}); tracking needs at least two")
    return problems


def _missing_sessions(values: np.ndarray, limit: int = 10) -> list:
    """The first ``limit`` numbers of 1..max(values) missing from the sorted distinct session
    numbers ``values`` (all >= 1), and '...' for more: without listing 1..max (a date as a
    session number, 20240101, would take gigabytes)."""
    values = np.asarray(values, np.int64)
    missing: list = []
    expected = 1
    for value in values.tolist():
        while expected < value and len(missing) <= limit:
            missing.append(expected)
            expected += 1
        if len(missing) > limit:
            break
        expected = value + 1
    return missing[:limit] + (["..."] if len(missing) > limit else [])


def load_dataset(path, need_peth: bool = True, scan_waveforms_now: bool = True) -> Dataset:
    """Read and check an input folder; raise one KilomatchError listing every problem.

    Without ``scan_waveforms_now`` the waveforms' values are not read here (their shape is
    checked): the caller checks them as it reads them (``Dataset.waveforms_checked`` False;
    pipeline.unit_features does), which saves a read of the largest file.

    Warnings (not errors) are logged for degenerate but legal data: units with fewer than two
    spikes, unsorted spike times (sorted here), flat waveforms.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise KilomatchError(f"path_to_data not found: {folder} (set 'path_to_data' in the "
                             "settings to the folder holding waveform_all.npy)")
    problems: list[str] = []
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    for name in missing:
        problems.append(f"{folder / name}: required file is missing")
    spike_dir = folder / SPIKE_TIMES
    if not spike_dir.is_dir():
        problems.append(f"{spike_dir}: required folder is missing (one UnitK.npy of "
                        "spike times in ms per unit, K = 0..N-1)")

    def read(name, **kwargs):
        if not (folder / name).is_file():
            return None
        return _load_npy(folder / name, problems, **kwargs)

    waveforms = read(WAVEFORMS, mmap=True)
    locs = read(CHANNEL_LOCATIONS)
    sessions = read(SESSION_INDEX)
    peth = read(PETH) if need_peth else None
    shanks = read(CHANNEL_SHANKS)

    n_units = None
    if waveforms is not None:
        if waveforms.ndim != 3:
            problems.append(f"{folder / WAVEFORMS}: expected 3 dimensions (units, "
                            f"channels, samples), got shape {waveforms.shape}")
            waveforms = None
        else:
            n_units = waveforms.shape[0]
            if n_units == 0:
                problems.append(f"{folder / WAVEFORMS}: holds no units")
            if 0 in waveforms.shape[1:]:
                problems.append(f"{folder / WAVEFORMS}: shape {waveforms.shape} has no "
                                "channels or no samples; expected (units, channels, samples)")
                waveforms = None  # nothing to read
    if locs is not None:
        if locs.ndim != 2 or locs.shape[1] != 2:
            problems.append(f"{folder / CHANNEL_LOCATIONS}: expected shape (channels, 2) "
                            f"of x, y in um, got {locs.shape}")
            locs = None
        elif locs.shape[0] == 0:
            problems.append(f"{folder / CHANNEL_LOCATIONS}: lists no channels")
            locs = None
        else:
            locs = collect(problems, check_finite, locs, str(folder / CHANNEL_LOCATIONS),
                           "at channels")
            problem = None if locs is None else channel_unit_problem(
                locs, folder / CHANNEL_LOCATIONS)
            if problem:
                problems.append(problem)
            elif locs is not None and locs.shape[0] > 1 and \
                    np.unique(np.asarray(locs, np.float64), axis=0).shape[0] < 2:
                problems.append(f"{folder / CHANNEL_LOCATIONS}: every channel is at the same "
                                f"position {tuple(np.asarray(locs[0]).tolist())}; give each "
                                "channel's x, y on the probe in um")
    if waveforms is not None and locs is not None and waveforms.shape[1] != locs.shape[0]:
        # SpikeInterface's templates are (units, samples, channels): the likeliest mix-up
        swapped = (waveforms.ndim == 3 and waveforms.shape[2] == locs.shape[0])
        problems.append(f"{folder / WAVEFORMS}: has {waveforms.shape[1]} channels but "
                        f"{CHANNEL_LOCATIONS} has {locs.shape[0]}; both must list the same "
                        "channels" + (f" (its shape {tuple(waveforms.shape)} looks like "
                                      "(units, samples, channels): save it as (units, "
                                      "channels, samples), e.g. np.transpose(w, (0, 2, 1)))"
                                      if swapped else ""))
    flat = None
    if waveforms is not None and n_units and scan_waveforms_now:
        finite, flat = scan_waveforms(waveforms)
        if not finite.all():
            problems.append(non_finite_problem(folder / WAVEFORMS, finite))
    if sessions is not None and n_units is not None:
        problems += check_session_index(sessions, n_units, str(folder / SESSION_INDEX))
    if peth is not None and n_units is not None:
        if peth.ndim != 2 or peth.shape[0] != n_units:
            problems.append(f"{folder / PETH}: expected shape ({n_units}, points), one row "
                            f"per unit, got {peth.shape}")
        elif peth.shape[1] < 2:
            problems.append(f"{folder / PETH}: {peth.shape[1]} points per unit; a PETH is "
                            "compared by its shape over time and needs two points or more")
        else:
            collect(problems, check_finite, peth, str(folder / PETH), "in the PETH of units")
    if shanks is not None:
        shanks = collect(problems, as_integers, shanks, str(folder / CHANNEL_SHANKS),
                         "channels")
    if shanks is not None and locs is not None and shanks.shape[0] != locs.shape[0]:
        problems.append(f"{folder / CHANNEL_SHANKS}: expected {locs.shape[0]} entries "
                        f"(one per channel), got {shanks.shape[0]}")

    spike_times = None
    if spike_dir.is_dir() and n_units is not None:
        spike_times = _load_spike_times(spike_dir, n_units, problems)

    if problems:
        raise KilomatchError.from_problems(problems, header=f"Invalid input in {folder}")

    data = Dataset(
        waveforms=waveforms,
        channel_locations=np.asarray(locs, dtype=np.float64),
        session_index=as_integers(sessions, str(folder / SESSION_INDEX)),
        spike_times=spike_times,
        peth=None if peth is None else np.asarray(peth, dtype=np.float64),
        channel_shanks=None if shanks is None else shanks.astype(np.int64),
        path=folder,
        waveforms_checked=scan_waveforms_now,
    )
    warn_degenerate(data, flat)
    return data


def advise_will_need(paths: list) -> None:
    """Tell the OS that these files will be read soon, so that it reads them from the disk in
    the background while the caller reads them one by one: 30k units' spike-time files,
    from a cold disk, loaded in 3.7 s instead of 10.4-12.5 s (2.6 s from the OS cache)."""
    for path in paths:
        advise_ranges(path, [(0, 0)])


def advise_ranges(path, ranges) -> None:
    """posix_fadvise WILLNEED on byte ranges (offset, length) of a file (length 0: to its
    end): the OS reads them ahead, in the background. Does nothing where the OS has no such
    call; a file that cannot be opened is left to its reader to name."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        for offset, length in ranges:
            advise(fd, int(offset), int(length), os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _load_spike_times(spike_dir: Path, n_units: int, problems: list) -> list | None:
    found = {}
    twice = {}
    # sorted: which file of a unit is read must not depend on the directory's order
    for entry in sorted(spike_dir.iterdir()):
        match = UNIT_FILE.match(entry.name)
        if match:
            k = int(match.group(1))
            if k in found:
                twice.setdefault(k, [found[k].name]).append(entry.name)
            found[k] = entry
    for k, names in twice.items():
        problems.append(f"{spike_dir}: {' and '.join(names)} are both the spike times of unit "
                        f"{k}; keep one file per unit")
    missing = [k for k in range(n_units) if k not in found]
    extra = sorted(k for k in found if k >= n_units)
    if missing:
        # Named by file, as every other input error: the first one in full.
        more = (f"; also missing: {name_items(unit_file(k) for k in missing[1:])}"
                if len(missing) > 1 else "")
        problems.append(f"{spike_dir / unit_file(missing[0])}: missing, the spike times of unit "
                        f"{missing[0]}{more} (expected {unit_file(0)} .. "
                        f"{unit_file(n_units - 1)}, one file per unit)")
    if extra:
        problems.append(f"{spike_dir}: holds more units than {WAVEFORMS} ({n_units}): "
                        f"{unit_file(extra[0])}"
                        + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
    if missing:
        return None
    times = []
    unsorted = []
    half = []
    advise_will_need([found[k] for k in range(n_units)])
    for k in range(n_units):
        path = found[k]
        arr = _load_npy(path, problems)
        if arr is not None:
            arr = collect(problems, as_vector, arr, f"{path} (spike times of unit {k}, ms)",
                          "spikes")
        if arr is None:
            times.append(None)
            continue
        if arr.dtype == np.float16:
            half.append(k)
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            problems.append(f"{path}: NaN or Inf spike times (unit {k})")
        if arr.size > 1 and np.any(np.diff(arr) < 0):
            arr = np.sort(arr)
            unsorted.append(k)
        times.append(arr)
    if unsorted:
        log.warning("spike times of units %s were not sorted; sorted them", name_items(unsorted))
    if half:
        # float16 holds 11 bits: past 2 s (2,048 ms) its times are whole ms, past 65.5 s inf
        log.warning("%s: spike times of units %s are float16, which rounds times beyond 2 s to "
                    "whole ms or more and cannot hold 65.5 s; save them as float64",
                    spike_dir, name_items(half))
    return times


# Spike times in ms, as recorded from neurons: the median interspike interval lies between a
# few ms and a few s, and some intervals are short (3-14% under 10 ms on the accuracy suite,
# 5-8% on mountainsort5's and Kilosort 4's sortings of SpikeInterface's recordings). Times in
# s make the median under 1 ms (a 1 kHz neuron); times in samples (30 kHz) leave almost no
# interval under 10 "ms" (0.33 ms, inside every neuron's refractory period: 0.03% on Kilosort
# 4's sorting, 0.1-0.3% for the suite's Poisson trains, which have no dead time). Only a
# warning: neurons firing at 0.2 Hz without bursts would look like samples too.
SECONDS_MEDIAN_ISI_MS = 1.0
SAMPLES_SHORT_ISI_MS = 10.0
SAMPLES_SHORT_SHARE = 5e-3
SAMPLES_MEDIAN_ISI_MS = 300.0
UNITS_FOR_TIME_UNIT = 500  # the hint reads at most this many units, evenly spaced (a median of
# 500 units' medians is as sure a sign as one of 2,000, at a quarter of the 0.1 s)


def spike_time_unit_hint(spike_times: list) -> str | None:
    """A sentence when the spike times (N arrays, read as ms) look like seconds or samples,
    else None: from the median over units of each unit's median interspike interval, and the
    share of all intervals under 10 ms."""
    units = [t for t in spike_times if t.size > 2]
    if not units:
        return None
    step = max(1, len(units) // UNITS_FOR_TIME_UNIT)
    medians, short, total = [], 0, 0
    for t in units[::step]:
        isi = np.diff(t)
        medians.append(np.median(isi))
        short += int(np.count_nonzero(isi < SAMPLES_SHORT_ISI_MS))
        total += isi.size
    median = float(np.median(medians))
    share = short / total
    if median < SECONDS_MEDIAN_ISI_MS:
        return (f"the spike times look like seconds, not ms: the median interspike interval is "
                f"{median:.3g} ms (a neuron firing at {1000 / max(median, 1e-9):.0f} Hz); "
                "kilomatch reads ms (multiply seconds by 1000), and its ACG and ISI "
                "similarities are meaningless otherwise")
    if share < SAMPLES_SHORT_SHARE and median > SAMPLES_MEDIAN_ISI_MS:
        return (f"the spike times look like samples, not ms: {100 * share:.3f}% of interspike "
                f"intervals are under {SAMPLES_SHORT_ISI_MS:g} ms (3-14% in recordings in ms) "
                f"and the median is {median:.0f} ms; kilomatch reads ms (divide samples by the "
                "sampling rate in kHz, 30 for Neuropixels), and its ACG and ISI similarities "
                "are meaningless otherwise")
    return None


def shared_spike_trains(spike_times: list) -> np.ndarray:
    """(N,) bool: the unit's spike train (2 spikes or more) is identical, to the bit, to
    another unit's. Two neurons never fire at the same instants, spike after spike; a
    whole session's spikes saved for each of its units (a loop that saves the same array)
    do, and so would units a sorter duplicated whole."""
    trains = np.array([k for k, t in enumerate(spike_times) if t.size >= 2], dtype=np.int64)
    shared = np.zeros(len(spike_times), dtype=bool)
    for group in identical_groups([spike_times[k] for k in trains]):
        shared[trains[group]] = True
    return shared


def warn_degenerate(data: Dataset, flat: np.ndarray | None = None) -> None:
    """Log degenerate but legal units: too few spikes, flat waveforms (``flat`` (N,) bool from
    scan_waveforms; None: not known yet), lone units per session; spike times that look
    like seconds or samples (spike_time_unit_hint); units sharing one spike train
    (shared_spike_trains); channel columns that look swapped (depth_axis_hint)."""
    few = [k for k, t in enumerate(data.spike_times) if t.size < 2]
    if few:
        log.warning("units %s have fewer than 2 spikes: their ACG and ISI are zero and carry no "
                    "similarity", name_items(few))
    hint = spike_time_unit_hint(data.spike_times)
    if hint:
        log.warning("%s/%s: %s", data.path, SPIKE_TIMES, hint)
    shared = np.flatnonzero(shared_spike_trains(data.spike_times))
    if shared.size:
        log.warning("%s/%s: units %s have spike trains identical to another unit's, to the "
                    "bit: each unit needs its own spike times (a session's spikes saved for "
                    "each of its units? units a sorter duplicated?); their ACG and ISI "
                    "similarities mean nothing",
                    data.path, SPIKE_TIMES, name_items(shared))
    hint = depth_axis_hint(data.channel_locations, data.channel_shanks)
    if hint:
        log.warning("%s/%s: %s", data.path, CHANNEL_LOCATIONS, hint)
    if flat is not None:
        warn_flat(flat)
    counts = np.bincount(data.session_index, minlength=data.n_sessions + 1)[1:]
    lone = np.flatnonzero(counts == 1) + 1
    if lone.size:
        log.warning("sessions %s hold a single unit", name_items(lone))


def load_given_motion(path, n_sessions: int, n_shanks: int = 1) -> np.ndarray:
    """A user-given motion file (waveformCorrection.path_to_motion): (S,), (S, 1) or
    (S, n_shanks) um in the sign convention of motion.npy -> (S, n_shanks) float64."""
    path = Path(path)
    if not path.is_file():
        raise KilomatchError(f"setting 'waveformCorrection.path_to_motion': file not found: {path}")
    problems: list[str] = []
    arr = _load_npy(path, problems)
    if problems:
        raise KilomatchError.from_problems(problems)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n_sessions or arr.shape[1] not in (1, n_shanks):
        shapes = f"({n_sessions},)" + (f" or ({n_sessions}, {n_shanks})" if n_shanks > 1 else "")
        raise KilomatchError(f"{path}: motion must have shape {shapes}: one value per session"
                             f"{' and shank' if n_shanks > 1 else ''}; got {arr.shape}")
    if not np.isfinite(arr).all():
        raise KilomatchError(f"{path}: motion holds NaN or Inf")
    return np.repeat(arr.astype(np.float64), n_shanks // arr.shape[1], axis=1)
