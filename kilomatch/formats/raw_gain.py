"""uV per bit of a raw recording, from what the acquisition software saved beside it.

Two sources are read; anything else needs the user's ``--gain-uv``:

- **SpikeGLX**: the ``.meta`` text file of the same stem as the ``.bin`` (``run_g0_t0.imec0.ap.bin``
  -> ``run_g0_t0.imec0.ap.meta``), ``key=value`` lines. uV per bit =
  ``imAiRangeMax / imMaxInt / gain * 1e6``. The gain: Neuropixels 1.0 ``~imroTbl`` entries are
  ``(chan bank refid apgain lfgain aphipass)`` and hold each channel's gains; other probes'
  entries hold none: ``imChan0apGain`` (``imChan0lfGain`` for an ``.lf.bin``) where SpikeGLX
  wrote it, else the fixed gain of 80 of Neuropixels 2.0. ``imMaxInt`` is absent from old 1.0 files: 512 there (10-bit ADC), 8192 for 2.0.
- **Open Ephys** (binary format): ``structure.oebin``, JSON, in the recording folder two levels
  above ``continuous/<stream folder>/continuous.dat``; the stream whose ``folder_name`` is the
  raw file's folder gives ``bit_volts`` (and ``units``) per channel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import KilomatchError

# imroTbl header types of Neuropixels 2.0 probes (fixed gain); 1.0 entries carry their gains.
_NP2_GAIN = 80.0
_NP1_MAX_INT, _NP2_MAX_INT = 512, 8192
# Open Ephys 'units' of bit_volts -> uV.
_OE_UNITS = {"uv": 1.0, "µv": 1.0, "mv": 1e3, "v": 1e6}


def read_spikeglx_meta(path: Path) -> dict:
    """The ``key=value`` lines of a SpikeGLX .meta file; ``~`` keys (tables) keep their text."""
    meta = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            meta[key.strip().lstrip("~")] = value.strip()
    return meta


def _imro_entries(text: str) -> tuple[list[str], list[list[str]]]:
    """'(0,384)(0 0 0 500 250 1)...' -> header fields, entries' fields."""
    parts = [p for p in text.strip().strip("()").split(")(")]
    if not parts or not parts[0]:
        return [], []
    return parts[0].split(","), [p.split() for p in parts[1:]]


def spikeglx_gain_uv(meta_path: Path, rows: np.ndarray, where: str) -> float:
    """uV per bit of the imec stream described by ``meta_path`` on raw rows ``rows``."""
    meta = read_spikeglx_meta(meta_path)
    lf = ".lf." in meta_path.name.lower()

    def fail(why: str) -> KilomatchError:
        return KilomatchError(f"{where}: {meta_path}: {why}; pass --gain-uv (uV per bit)")

    if meta.get("typeThis", "imec") != "imec":
        raise fail(f"a SpikeGLX {meta['typeThis']} stream, not an imec probe stream")
    try:
        range_max = float(meta["imAiRangeMax"])
    except (KeyError, ValueError):
        raise fail("no readable imAiRangeMax") from None
    header, entries = _imro_entries(meta.get("imroTbl", ""))
    np1 = bool(entries) and all(len(e) == 6 for e in entries)  # chan bank refid apgain lfgain hp
    key = "imChan0lfGain" if lf else "imChan0apGain"
    if np1:  # per channel; imChan0apGain would be channel 0's only
        wanted = {str(r) for r in rows.tolist()}
        on = [e for e in entries if e[0] in wanted] or entries
        gains = sorted({e[4 if lf else 3] for e in on})
    elif key in meta:
        gains = [meta[key]]
    elif entries:
        gains = [_NP2_GAIN]
    else:
        raise fail("neither imChan0apGain nor an imroTbl")
    try:
        values = [float(g) for g in gains]
    except ValueError:
        raise fail(f"gain {gains} is not a number") from None
    if len(values) > 1:
        raise fail(f"the sorted channels have different gains ({', '.join(gains)}); kilomatch "
                   "scales all channels by one gain")
    if not values[0] > 0:
        raise fail(f"gain {values[0]} is not > 0")
    try:
        max_int = float(meta.get("imMaxInt", _NP1_MAX_INT if np1 else _NP2_MAX_INT))
    except ValueError:
        raise fail(f"imMaxInt {meta['imMaxInt']!r} is not a number") from None
    return range_max / max_int / values[0] * 1e6


def openephys_gain_uv(oebin: Path, raw: Path, rows: np.ndarray, where: str) -> float:
    """uV per bit of the continuous stream in ``raw``'s folder, on raw rows ``rows``."""
    def fail(why: str) -> KilomatchError:
        return KilomatchError(f"{where}: {oebin}: {why}; pass --gain-uv (uV per bit)")

    try:
        info = json.loads(oebin.read_text())
        streams = list(info["continuous"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise fail(f"not a readable Open Ephys structure.oebin ({type(err).__name__}: {err})"
                   ) from None
    folder = raw.parent.name
    stream = next((s for s in streams if isinstance(s, dict)
                   and str(s.get("folder_name", "")).strip("/\\") == folder), None)
    if stream is None:
        raise fail(f"no continuous stream with folder_name {folder!r}")
    channels = stream.get("channels") or []
    if not channels or rows.max() >= len(channels):
        raise fail(f"stream {folder!r} lists {len(channels)} channels; the sorting uses raw rows "
                   f"up to {rows.max()}")
    try:
        picked = {(float(channels[r]["bit_volts"]),
                   str(channels[r].get("units", "uV")).strip().lower()) for r in rows.tolist()}
    except (KeyError, TypeError, ValueError):
        raise fail(f"stream {folder!r}: a channel without a numeric bit_volts") from None
    if len(picked) > 1:
        raise fail(f"the sorted channels of stream {folder!r} have different bit_volts "
                   f"({sorted(picked)}); kilomatch scales all channels by one gain")
    bit_volts, units = picked.pop()
    if units not in _OE_UNITS or not bit_volts > 0:
        raise fail(f"bit_volts {bit_volts} in units {units!r} is not a gain kilomatch reads")
    return bit_volts * _OE_UNITS[units]


def recorded_gain_uv(raw_files: list[Path], rows: np.ndarray, where: str
                     ) -> tuple[float, str] | None:
    """(uV per bit, the file it came from) for the raw recording, or None when neither a
    SpikeGLX .meta nor an Open Ephys structure.oebin belongs to it. Several files read as one
    recording must agree."""
    found = []
    for raw in raw_files:
        meta = raw.with_suffix(".meta")
        oebin = raw.parent.parent.parent / "structure.oebin"
        if meta.is_file():
            found.append((spikeglx_gain_uv(meta, rows, where), str(meta)))
        elif raw.parent.parent.name == "continuous" and oebin.is_file():
            found.append((openephys_gain_uv(oebin, raw, rows, where), str(oebin)))
        else:
            return None
    gains = {round(g, 12) for g, _ in found}
    if len(gains) > 1:
        raise KilomatchError(f"{where}: the raw files have different gains "
                             + ", ".join(f"{g:g} uV/bit ({src})" for g, src in found)
                             + "; pass --gain-uv (uV per bit)")
    return found[0]
