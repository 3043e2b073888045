"""Each unit's waveform on a window of channels around its peak channel.

A mean waveform holds signal only within a few hundred um of its peak channel; the rest of the
probe is noise. Keeping every unit on all C channels costs N x C x T floats (9.8 GB for 10^5
NP1 units of 64 samples), twice once corrected. Instead each unit keeps the W channels nearest
its peak channel (W ~ 100 on NP1 for the default 500 um radius), read once from the input and
then reused by every step: Kriging correction, waveform similarity and the written outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import KilomatchError
from .features import channel_distances, nearest_channels, shift_rows
from .load import advise_ranges, mapped_file
from .temporal_components import project


def window_table(channel_locations: np.ndarray, channel_shanks: np.ndarray | None,
                 radius_um: float, min_channels: int = 1) -> np.ndarray:
    """For every channel, the W channels nearest it, nearest first: (C, 2) um -> (C, W) int64.

    W is the most channels of one shank within ``radius_um`` of any channel (so a channel in
    the middle of a shank sees its whole +-radius neighbourhood; one at the tip sees the W
    nearest, reaching farther up). Channels of other shanks come after every channel of the
    same shank. Ties in distance go to the lower channel index. W is at least
    ``min_channels`` (and at most C).
    """
    d = channel_distances(channel_locations, channel_shanks)
    n_window = int(max(min_channels, (d <= radius_um).sum(axis=1).max()))
    return nearest_channels(channel_locations, np.arange(len(d)), n_window, channel_shanks)


# Units whose waveforms LocalWaveforms.slot_moments converts to float64 at a time (~6 MB
# on NP1 windows).
MOMENT_UNITS = 128


@dataclass
class LocalWaveforms:
    """Waveforms of N units, each on its own window of W channels of a C-channel probe.

    values: (N, W, T) float32 uV; channels: (N, W) int64 probe channel of each window slot;
    n_channels: C. Channels outside a unit's window read as 0 (no signal there).
    """

    values: np.ndarray
    channels: np.ndarray
    n_channels: int
    # (distinct windows (M, W), window of each unit (N,), slot of each channel in each
    # distinct window (M, C) int32, -1 outside): found once and shared by the corrected copies
    # and subsets, which keep the windows (finding them sorts N rows of W channels).
    windows: tuple | None = field(default=None, repr=False, compare=False)
    moments: tuple | None = field(default=None, repr=False, compare=False)  # slot_moments()

    @classmethod
    def from_full(cls, waveforms: np.ndarray) -> "LocalWaveforms":
        """Every unit on every channel: (N, C, T) -> LocalWaveforms with W = C."""
        w = np.asarray(waveforms, dtype=np.float32)
        n, c, _ = w.shape
        return cls(w, np.broadcast_to(np.arange(c), (n, c)), c)

    @property
    def n_units(self) -> int:
        return self.values.shape[0]

    @property
    def shape(self) -> tuple:
        """(N, C, T): the shape of the full-probe array these values stand for."""
        return (self.values.shape[0], self.n_channels, self.values.shape[2])

    def window_index(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct windows (M, W) and the window of each unit (N,) int64."""
        if self.windows is None:
            table, of = np.unique(self.channels, axis=0, return_inverse=True)
            lookup = np.full((table.shape[0], self.n_channels), -1, dtype=np.int32)
            np.put_along_axis(lookup, table,
                              np.arange(table.shape[1], dtype=np.int32)[None, :], axis=1)
            self.windows = (table, of.ravel().astype(np.int64), lookup)
        return self.windows[:2]

    def slots(self, units: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Window slot of each (unit, channel), -1 where the channel is outside the window.

        units: (n,); channels: (c,) shared or (n, c) per unit -> (n, c) int32.
        """
        units = np.asarray(units, dtype=np.int64)
        channels = np.asarray(channels, dtype=np.int64)
        _, window_of = self.window_index()
        lookup = self.windows[2]
        rows = window_of[units][:, None]
        return lookup[rows, channels if channels.ndim == 2 else channels[None, :]]

    def on(self, units: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Waveforms of ``units`` on ``channels`` ((c,) shared or (n, c)): (n, c, T) float32,
        zero on channels outside a unit's window."""
        units = np.asarray(units, dtype=np.int64)
        return self.at_slots(units, self.slots(units, channels))

    def at_slots(self, units: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """Waveforms of ``units`` (n,) at window slots (n, c) (-1: outside, read as 0):
        (n, c, T) float32."""
        w = self.values.shape[1]
        flat = self.values.reshape(-1, self.values.shape[2])
        # np.take, not flat[index]: the same rows, gathered about 3x faster (the partners'
        # gathers of the waveform similarity were ~10% of a 30k-unit run's CPU)
        out = np.take(flat, units[:, None] * w + np.maximum(slot, 0), axis=0)
        out[slot < 0] = 0.0
        return out

    def slot_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Sum and sum of squares over time of each unit's waveform on each window slot:
        ((N, W), (N, W)) float64, found once per copy (a unit's moments on any set of
        channels are sums of these, instead of a pass over its gathered samples each time
        it is some unit's partner)."""
        if self.moments is None:
            n, w, t = self.values.shape
            sums, squares = np.empty((n, w)), np.empty((n, w))
            # one float64 buffer of MOMENT_UNITS units, filled block after block: a new
            # float64 copy per block had the kernel zero fresh pages for each (0.1-0.2 s of
            # the speed study's run, in five calls)
            buffer = np.empty((min(n, MOMENT_UNITS), w, t))
            for start in range(0, n, MOMENT_UNITS):
                block = buffer[:min(MOMENT_UNITS, n - start)]
                np.copyto(block, self.values[start:start + MOMENT_UNITS])
                sums[start:start + MOMENT_UNITS] = block.sum(axis=2)
                squares[start:start + MOMENT_UNITS] = np.einsum("nwt,nwt->nw", block, block)
            self.moments = (sums, squares)
        return self.moments

    def subset(self, members: np.ndarray) -> "LocalWaveforms":
        """The units ``members`` (same probe)."""
        windows = None if self.windows is None else (
            self.windows[0], self.windows[1][members], self.windows[2])
        return LocalWaveforms(self.values[members], self.channels[members], self.n_channels,
                              windows)

    def narrowed(self, channels: np.ndarray) -> "LocalWaveforms":
        """The units on ``channels`` (N, n) only (each unit its own row): (N, n, T) values that
        read on those channels exactly as this copy does (0 where a channel is outside the
        window). A run keeps this for its outputs once no comparison needs the whole window."""
        channels = np.asarray(channels, dtype=np.int64)
        return LocalWaveforms(self.on(np.arange(self.n_units), channels), channels,
                              self.n_channels)

    def full(self) -> np.ndarray:
        """(N, C, T) float32 with zeros outside the windows (for small data and tests)."""
        out = np.zeros(self.shape, dtype=np.float32)
        rows = np.arange(self.n_units)[:, None]
        out[rows, self.channels] = self.values
        return out


class StoredWaveforms:
    """The units' original waveforms on channels (N, n), read again from the input when
    asked for, block by block, instead of held (1.0 GB at 10^5 NP1 units, needed only when
    ``waveforms.npy`` is written). They read exactly as ``LocalWaveforms.narrowed(channels)``
    of the window copy made from the same input: 0 on channels outside a unit's window.

    source: the input's waveforms (N, C, T), memory-mapped or in memory; outside: (N, n) bool,
    the channels outside each unit's window (LocalWaveforms.slots < 0); time_shift: (N,) int
    samples each unit was moved earlier when the window copy was made
    (UnitFeatures.time_shift), or None; projection: (T, T) the temporal projection the window
    copy was read through (UnitFeatures.temporal_projection), or None.
    """

    def __init__(self, source, channels: np.ndarray, outside: np.ndarray, n_channels: int,
                 time_shift: np.ndarray | None = None, projection: np.ndarray | None = None):
        self.source, self.outside, self.time_shift = source, outside, time_shift
        self.projection = projection
        self.channels = np.asarray(channels, dtype=np.int64)
        self.n_channels = n_channels

    @classmethod
    def of_window_copy(cls, window: LocalWaveforms, source, channels: np.ndarray,
                       time_shift: np.ndarray | None = None,
                       projection: np.ndarray | None = None) -> "StoredWaveforms":
        """The units of ``window`` (made from ``source``) on ``channels`` (N, n)."""
        channels = np.asarray(channels, dtype=np.int64)
        outside = window.slots(np.arange(window.n_units), channels) < 0
        return cls(source, channels, outside, window.n_channels, time_shift, projection)

    @property
    def n_units(self) -> int:
        return self.channels.shape[0]

    @property
    def shape(self) -> tuple:
        """(N, C, T), as LocalWaveforms.shape."""
        return (self.n_units, self.n_channels, self.source.shape[2])

    def blocks(self, block: int = 2048):
        """Yield (start, (b, n, T) float32) over the units in order."""
        first = slice(0, min(block, self.n_units))
        advise_spans(self.source, first, self.channels[first])
        for start in range(0, self.n_units, block):
            rows = slice(start, min(start + block, self.n_units))
            channels = self.channels[rows]
            after = slice(rows.stop, min(rows.stop + block, self.n_units))
            advise_spans(self.source, after, self.channels[after])  # read while this is used
            values = _read_channels(self.source, rows, channels)
            values = project(values, self.projection)  # as the window copy: projected first
            if self.time_shift is not None:
                shift_rows(values, self.time_shift[rows])
            values[self.outside[rows]] = 0.0
            yield start, values

    @property
    def values(self) -> np.ndarray:
        """(N, n, T) float32, gathered on each call (not kept)."""
        out = np.empty((self.n_units, self.channels.shape[1], self.shape[2]), np.float32)
        for start, block in self.blocks():
            out[start:start + block.shape[0]] = block
        return out

    def on(self, units: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """As LocalWaveforms.on."""
        return LocalWaveforms(self.values, self.channels, self.n_channels).on(units, channels)


def advise_spans(source, rows: slice, channels: np.ndarray) -> None:
    """Tell the OS that _read_channels will read these units' spans of channels soon
    (load.advise_ranges), so that it reads them from the disk in the background. Nothing for
    an array in memory."""
    if not mapped_file(source):
        return
    low, high = channels.min(axis=1), channels.max(axis=1) + 1
    row_bytes, channel_bytes = source.strides[0], source.strides[1]
    units = np.arange(rows.start, rows.stop)
    advise_ranges(source.filename, zip(source.offset + units * row_bytes + low * channel_bytes,
                                       (high - low) * channel_bytes))


def _read_channels(source, rows: slice, channels: np.ndarray) -> np.ndarray:
    """source[rows] (b, C, T) on each unit's channels (b, n): (b, n, T) float32. From a
    memory-mapped .npy, each unit's span of channels is read from the file alone (a tenth of
    its bytes on NP1; reading whole rows was 10 GB at 10^5 units, and mapping them would
    keep every page resident)."""
    t = source.shape[2]
    if not mapped_file(source):
        return reduce_block(np.asarray(source[rows], dtype=np.float32), channels)
    low, high = channels.min(axis=1), channels.max(axis=1) + 1
    width = int((high - low).max())
    span = np.zeros((channels.shape[0], width, t), dtype=source.dtype)
    row_bytes, channel_bytes = source.strides[0], source.strides[1]
    gone = KilomatchError(f"{source.filename}: the input's waveforms, read again to write "
                          "waveforms.npy, were moved, removed or cut short during the run; "
                          "leave the input folder in place until the run ends")
    try:
        with open(source.filename, "rb") as f:
            for k, unit in enumerate(range(rows.start, rows.stop)):
                part = memoryview(span[k, :high[k] - low[k]]).cast("B")
                f.seek(source.offset + unit * row_bytes + int(low[k]) * channel_bytes)
                if f.readinto(part) != part.nbytes:
                    raise gone
    except OSError as err:
        raise gone from err
    return reduce_block(span, channels - low[:, None]).astype(np.float32, copy=False)


def reduce_block(block: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """A block of full-probe waveforms on each unit's window: (n, C, T), (n, W) -> (n, W, T).

    Indexed by unit and channel, so each (unit, channel) row of T samples is copied whole:
    np.take_along_axis with a (n, W, 1) index built an index per sample (3-7x slower)."""
    block = np.asarray(block)  # a memory-mapped block gives a plain array
    return block[np.arange(block.shape[0])[:, None], channels]
