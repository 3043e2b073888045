"""Ground-truth simulator of chronic Neuropixels recordings, for testing and benchmarking.

A population of neurons sits beside a probe. Across sessions (days) the probe moves relative to
the tissue, neurons appear and disappear, the spike sorter misses some of them, and amplitudes,
shapes and firing rates change a little from day to day. Each sorted unit gets a mean waveform on
every channel, a spike train and (optionally) a PETH; the neuron behind every unit is known.

Motion sign convention (kilomatch-wide)
---------------------------------------
A neuron at true depth ``y0`` appears, in session ``s``, at probe depth::

    y = y0 + gt_motion[s] + gt_motion_linear[s] * (y0 - depth_ref)

``depth_ref`` is the centre of the probe's depth span (saved in ``simulation.json`` as
``depth_ref_um``). Both ``gt_motion`` and ``gt_motion_linear`` have mean 0 over sessions, so the
"true" depth is the session-average apparent depth. With ``bend_step_um`` > 0 a third term,
neither rigid nor linear, adds ``gt_motion_bend[s] * tanh((y0 - depth_ref) / bend_width_um) / 2``
(mean 0 over sessions too): the tissue above the middle moves apart from the tissue below.
kilomatch's ``motion.npy`` uses the same sign: ``motion[s]`` is the apparent shift of unit
depths in session ``s``.

Physics, in short
-----------------
- Extracellular potential of each neuron = two point sources in a homogeneous medium (1/r): a
  somatic sink (trough, then repolarisation peak) and a weaker, opposite-sign dendritic source
  offset mostly along the probe axis. Distances are mildly anisotropic per neuron, so two
  neurons at the same place still have different footprints.
- With distance the spike is low-passed (its Gaussian widths grow, area kept) and delayed, as
  the high frequencies of the current fall off faster through tissue; an extra exponential
  far-field attenuation stands for the cancellation by the cell's return currents (a pure
  point source decays too slowly), giving footprints ~100-150 um tall as on real probes.
- Motion is applied by evaluating the footprint at the moved positions, never by shifting
  arrays, so sub-pitch drift changes the waveforms the way a real probe shift would.
- Spike trains are renewal processes with a dead time (refractory period), gamma-distributed
  free intervals and, for some neurons, bursts; per-neuron parameters are stable across days so
  the autocorrelogram carries identity.

Harder data (all off by default; see the last section of this module)
---------------------------------------------------------------------
- ``waveform_noise_per_spike_uv``: a mean waveform averages n spikes, so the background noise
  left in it has std ``waveform_noise_per_spike_uv / sqrt(n)``: units with few spikes have
  noisier means. Added on top of ``waveform_noise_uv``.
- ``waveform_source="spikeinterface"``: the footprints come from SpikeInterface's
  ``generate_templates`` (exponential decay from an ellipsoid, one waveform shape per neuron)
  instead of the two-source model, placed at the same apparent positions, so the motion ground
  truth and its sign are the same. Needs the optional extra ``spikeinterface``.
- ``p_split`` / ``p_merge``: sorter errors within a session. A split unit's spikes are shared
  at random between two units of the same neuron (amplitudes 10% apart, as when a sorter cuts
  an amplitude distribution); both keep that neuron as ground truth, and same-session pairs
  are never scored (``metrics.pair_scores``). A merge joins a unit with its nearest neighbour
  of the session (within ``_MERGE_DISTANCE_UM``): one unit whose spikes are both trains and
  whose mean waveform is their spike-count-weighted mean; its ground truth is the neuron with
  more spikes (scoring then counts it as that neuron; the other neuron is absent that day), and
  so are its position in ``gt_locations`` and its PETH.

Randomness: every random quantity comes from ``np.random.default_rng([seed, stream, ...])`` with a
fixed stream number, so the result depends only on the parameters, never on chunk sizes or on
which units were asked for first. Same parameters => byte-identical folder.

CLI::

    python -m kilomatch.simulate OUT --sessions 5 --neurons 150 --probe NP1 --drift 50 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kilomatch.checks import Spec, check_table
from kilomatch.cli import command_logging, run_command
from kilomatch.errors import KilomatchError
from kilomatch.formats.folder import (CHANNEL_LOCATIONS, CHANNEL_SHANKS, PETH, SESSION_INDEX,
                                      WAVEFORMS, FolderWriter)

__all__ = [
    "PROBES",
    "SimulationParams",
    "Neurons",
    "Simulation",
    "probe_geometry",
    "simulate_motion",
    "spike_train",
    "simulate",
    "write_simulation",
    "simulate_to_folder",
    "main",
]

PROBES = ("NP1", "NP2", "NP2-4shank")
WAVEFORM_SOURCES = ("model", "spikeinterface")

FORMAT_VERSION = 1
_META_FILE = "simulation.json"

# Independent random streams (second entry of the seed list). Never renumber: it changes outputs.
_S_MOTION, _S_POPULATION, _S_PRESENCE, _S_SESSION, _S_ORDER = 1, 2, 3, 4, 5
_S_NOISE, _S_SPIKES, _S_PETH = 6, 7, 8
_S_COUNT_NOISE, _S_SI, _S_SORTER = 9, 10, 11
_S_SESSION_OFFSET = 12
_S_DEAD_CHANNELS = 13
_S_BEND = 14

# Units rendered together when writing/rendering waveforms (memory ~ chunk * C * T * 4 B * ~4).
_RENDER_CHUNK = 64
# Channels rendered per candidate when only the peak amplitude is needed (detection, scaling).
_N_NEAR = 24

def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Generator for one named stream; keys are small non-negative ints (stream, index...)."""
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

@dataclass
class SimulationParams:
    """Every knob of the simulator, with its default. Lengths in um, times in ms unless the
    name says s or Hz. What each means and what it may be: :data:`SIMULATION_PARAMETERS`
    (``python -m kilomatch.simulate --help`` shows it too).
    """

    n_sessions: int = 5
    n_neurons: int = 150
    probe: str = "NP1"
    n_samples: int = 64
    sampling_rate_hz: float = 30000.0
    x_margin_um: float = 60.0
    z_min_um: float = 5.0
    z_max_um: float = 80.0
    edge_margin_um: float = 40.0
    p_narrow: float = 0.25
    # drift
    drift_step_um: float = 10.0
    drift_max_um: float | None = None
    jump_prob: float = 0.0
    jump_um: float = 0.0
    linear_drift: float = 0.0
    bend_step_um: float = 0.0
    bend_width_um: float = 150.0
    # presence
    p_present: float = 0.9
    turnover: float = 0.05
    detection_threshold_uv: float = 50.0
    # waveforms
    amp_at_20um_uv: float = 250.0
    amp_sigma: float = 0.5
    amp_max_uv: float = 350.0
    soma_radius_um: float = 10.0
    attenuation_um: float = 120.0
    lowpass_ms_per_um: float = 0.001
    delay_ms_per_um: float = 0.001
    trough_sample_jitter: float = 1.2
    amplitude_jitter: float = 0.1
    shape_jitter: float = 0.03
    time_jitter_samples: float = 0.3
    session_offset_samples: int = 0
    dead_channel_share: float = 0.0
    waveform_noise_uv: float = 2.0
    # spike trains
    duration_s: float = 600.0
    rate_median_hz: float = 4.0
    rate_sigma: float = 0.9
    rate_min_hz: float = 0.5
    rate_max_hz: float = 30.0
    rate_jitter: float = 0.1
    refractory_min_ms: float = 1.5
    refractory_max_ms: float = 2.5
    p_burst: float = 0.25
    spike_train_model: str = "renewal"
    # PETH
    with_peth: bool = True
    peth_points: int = 100
    peth_jitter: float = 0.1
    peth_noise: float = 0.05
    # harder data (issue 12)
    waveform_noise_per_spike_uv: float = 0.0
    waveform_source: str = "model"
    p_split: float = 0.0
    p_merge: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        """Raise KilomatchError listing every bad parameter (:data:`SIMULATION_PARAMETERS`,
        then the relations between parameters)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["probe"] = _canonical_probe(self.probe) or self.probe
        check_table(values, SIMULATION_PARAMETERS, "Bad SimulationParams")
        p = []
        if self.z_min_um > self.z_max_um:
            p.append(f"need z_min_um <= z_max_um, got {self.z_min_um}, {self.z_max_um}")
        if not self.rate_min_hz <= self.rate_median_hz <= self.rate_max_hz:
            p.append("need rate_min_hz <= rate_median_hz <= rate_max_hz, got "
                     f"{self.rate_min_hz}, {self.rate_median_hz}, {self.rate_max_hz}")
        if self.refractory_min_ms > self.refractory_max_ms:
            p.append("need refractory_min_ms <= refractory_max_ms, got "
                     f"{self.refractory_min_ms}, {self.refractory_max_ms}")
        if p:
            raise KilomatchError.from_problems(p, "Bad SimulationParams")


def _fraction(name: str, help: str) -> Spec:
    return Spec(name, "float", help, min=0, max=1)


def _at_least_0(name: str, help: str) -> Spec:
    return Spec(name, "float", help, min=0)


def _above_0(name: str, help: str) -> Spec:
    return Spec(name, "float", help, min=0, min_exclusive=True)


#: One entry per field of SimulationParams: name, kind and allowed range, meaning (with unit).
SIMULATION_PARAMETERS: tuple[Spec, ...] = (
    # population and probe
    Spec("n_sessions", "int", "number of sessions (days)", min=1),
    Spec("n_neurons", "int", "distinct neurons near the probe over the whole experiment (some "
         "are never sorted: too far, too small, or missed)", min=1),
    Spec("probe", "str", "NP1 (384 ch, 4 staggered columns, 20 um rows), NP2 (384 ch, 2 columns "
         "32 um apart, 15 um rows) or NP2-4shank (4 shanks 250 um apart, 96 ch each, 2 columns x "
         "48 rows at 15 um)", choices=PROBES),
    Spec("n_samples", "int", "samples per mean waveform", min=16),
    _above_0("sampling_rate_hz", "sampling rate of the waveforms (Hz)"),
    _at_least_0("x_margin_um", "neurons lie up to this far (um) beyond the outermost columns of "
                "their shank"),
    _at_least_0("z_min_um", "smallest distance (um) of a soma from the probe plane"),
    _at_least_0("z_max_um", "largest distance (um) of a soma from the probe plane"),
    _at_least_0("edge_margin_um", "after drift, every soma stays at least this far (um) from the "
                "ends of the probe's channel span"),
    _fraction("p_narrow", "fraction of narrow-spiking neurons (~0.3 ms trough-to-peak; others "
              "~0.7 ms)"),
    # drift
    _at_least_0("drift_step_um", "std (um) of the rigid random-walk step between consecutive "
                "sessions"),
    Spec("drift_max_um", "float", "if set, the rigid walk (jumps included) is rescaled so that "
         "max - min equals this (um); a flat walk is replaced by a unit-step walk first",
         min=0, none_ok=True),
    _fraction("jump_prob", "probability, per step between sessions, of a sudden jump"),
    _at_least_0("jump_um", "size (um) of a jump (random sign)"),
    _at_least_0("linear_drift", "std of the per-step change of the depth slope term (um per um "
                "of depth), a random walk like the rigid term; 0 = rigid motion only"),
    _at_least_0("bend_step_um", "std (um) of the per-step change of a bend: the tissue above the "
                "probe's middle moves by half of it and the tissue below by minus half, "
                "through a smooth step (tanh) of half-width bend_width_um; a random walk with "
                "mean 0, like the rigid term. Neither rigid nor linear in depth (uneven motion "
                "along the probe, e.g. two brain regions). 0 = off"),
    _above_0("bend_width_um", "half-width (um) of the bend's step around the probe's middle"),
    # presence and detection
    _fraction("p_present", "probability that a neuron alive in a session is sorted in it"),
    _fraction("turnover", "per-session probability that a neuron disappears (as many appear); "
              "0 = every neuron lives through all sessions"),
    _at_least_0("detection_threshold_uv", "a unit whose peak-to-trough amplitude (uV, largest "
                "over channels, noiseless) is below this is not sorted"),
    # waveforms
    _above_0("amp_at_20um_uv", "median trough amplitude (uV) a soma gives at 20 um (source "
             "strength)"),
    _at_least_0("amp_sigma", "log-normal sigma of the source strength across neurons"),
    _above_0("amp_max_uv", "cap on the trough amplitude (uV) at the nearest channel"),
    _at_least_0("soma_radius_um", "softens 1/r near the source: r = sqrt(d^2 + radius^2) (um)"),
    _at_least_0("attenuation_um", "length constant (um) of an extra exp(-(r - 20 um) / "
                "attenuation_um) decay on top of 1/r: the cell's return currents cancel the far "
                "field, which keeps footprints ~100-150 um tall as on real probes; 0 = pure 1/r"),
    _at_least_0("lowpass_ms_per_um", "Gaussian low-pass width (ms) added per um of distance"),
    _at_least_0("delay_ms_per_um", "spike delay (ms) per um of distance"),
    _at_least_0("trough_sample_jitter", "per-neuron std (samples) of the trough position around "
                "round(0.44 * n_samples)"),
    _at_least_0("amplitude_jitter", "log-normal sigma of the day-to-day amplitude change"),
    _at_least_0("shape_jitter", "log-normal sigma of the day-to-day change of temporal widths"),
    _at_least_0("time_jitter_samples", "std (samples) of the day-to-day trough-time shift"),
    Spec("session_offset_samples", "int", "largest offset (samples) of a session's waveforms: "
         "each session is cut out an integer number of samples in [-K, K] late or early (edge "
         "values padded), as a sorter or an export with another alignment would; 0: aligned",
         min=0),
    Spec("dead_channel_share", "float", "share of the channels that stop recording over the "
         "study: each dies in a session drawn from 2..S and reads 0 in every unit of that "
         "session and the later ones, as a sorting whose channel map leaves out a failed site "
         "(padded to the whole probe) would; 0: none", min=0.0, max=1.0),
    _at_least_0("waveform_noise_uv", "std (uV) of the noise added to every mean-waveform "
                "sample"),
    # spike trains
    _above_0("duration_s", "recording duration per session (s); short for big runs"),
    _above_0("rate_median_hz", "median of the log-normal firing rates (Hz)"),
    _at_least_0("rate_sigma", "log-normal sigma of the firing rates"),
    _above_0("rate_min_hz", "firing rates are clipped to [rate_min_hz, rate_max_hz] (Hz)"),
    Spec("rate_max_hz", "float", "firing rates are clipped to [rate_min_hz, rate_max_hz] (Hz)",
         min=0, min_exclusive=True, max=200, max_exclusive=True),
    _at_least_0("rate_jitter", "log-normal sigma of the day-to-day rate change"),
    _above_0("refractory_min_ms", "per-neuron dead time (ms) is uniform in [refractory_min_ms, "
             "refractory_max_ms]"),
    Spec("refractory_max_ms", "float", "per-neuron dead time (ms) is uniform in "
         "[refractory_min_ms, refractory_max_ms]", min=0, min_exclusive=True, max=5),
    _fraction("p_burst", "fraction of bursting neurons (bursts of 2-5 spikes at 3-8 ms "
              "intervals)"),
    # PETH
    Spec("with_peth", "bool", "write peth.npy"),
    Spec("peth_points", "int", "length P of each PETH", min=2),
    _at_least_0("peth_jitter", "day-to-day change of the response bumps (log amplitude sigma; "
                "centres move by 0.1 * peth_jitter * P points std)"),
    _at_least_0("peth_noise", "noise std relative to sqrt(baseline * response) (Poisson-like)"),
    Spec("spike_train_model", "str", "'renewal' (dead time, gamma-shaped intervals, bursts) "
         "or 'poisson': homogeneous Poisson trains at each unit's rate, so the autocorrelogram "
         "is flat and carries no identity beyond the rate", choices=("renewal", "poisson")),
    # harder data (issue 12; the defaults leave every simulation unchanged)
    _at_least_0("waveform_noise_per_spike_uv", "background noise std (uV) of one spike's "
                "waveform: a unit with n spikes gets noise of std this / sqrt(n) on its mean "
                "waveform, on top of waveform_noise_uv; 0 = off (real AP-band noise ~10-20 uV)"),
    Spec("waveform_source", "str", "'model' (the two-source model) or 'spikeinterface' "
         "(spikeinterface.core.generate_templates)", choices=WAVEFORM_SOURCES),
    _fraction("p_split", "probability that the sorter splits a sorted unit into two units of "
              "the same neuron in a session"),
    _fraction("p_merge", "probability that the sorter merges a sorted unit with its nearest "
              "neighbour of the session (within 40 um) into one unit"),
    Spec("seed", "int", "seed of every random stream; same seed and parameters give a "
         "byte-identical folder", min=0),
)


def _canonical_probe(name) -> str | None:
    if not isinstance(name, str):
        return None
    key = name.strip().lower().replace("_", "-").replace(".0", "")
    return {"np1": "NP1", "np2": "NP2", "np2-4shank": "NP2-4shank",
            "np2-4-shank": "NP2-4shank"}.get(key)


# --------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------

def probe_geometry(probe: str) -> tuple[np.ndarray, np.ndarray]:
    """Channel positions and shank ids of a probe.

    Returns
    -------
    locations : (C, 2) float64, x and y (depth along the shank, 0 at the lowest row) in um.
    shanks : (C,) int64 shank id per channel (0-based; all 0 for single-shank probes).
    """
    name = _canonical_probe(probe)
    if name == "NP1":
        # 192 rows at 20 um; two channels per row, columns alternate (43, 11) / (59, 27) so
        # the four columns are staggered (checkerboard), as on a Neuropixels 1.0 shank.
        rows = np.repeat(np.arange(192), 2)
        x = np.tile(np.array([43.0, 11.0, 59.0, 27.0]), 96)
        return np.column_stack([x, rows * 20.0]), np.zeros(384, dtype=np.int64)
    if name == "NP2":
        rows = np.repeat(np.arange(192), 2)
        x = np.tile(np.array([27.0, 59.0]), 192)
        return np.column_stack([x, rows * 15.0]), np.zeros(384, dtype=np.int64)
    if name == "NP2-4shank":
        # 96 channels per shank (2 columns x 48 rows, 15 um), shanks 250 um apart.
        rows = np.repeat(np.arange(48), 2)
        one = np.column_stack([np.tile(np.array([27.0, 59.0]), 48), rows * 15.0])
        loc = np.concatenate([one + np.array([250.0 * k, 0.0]) for k in range(4)])
        return loc, np.repeat(np.arange(4, dtype=np.int64), 96)
    raise KilomatchError(f"probe must be one of {PROBES}, got {probe!r}")


# --------------------------------------------------------------------------------------------
# Motion
# --------------------------------------------------------------------------------------------

def simulate_motion(params: SimulationParams, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-session probe motion.

    Returns
    -------
    rigid : (S,) float64 um, apparent depth shift of every unit in each session, mean 0.
    slope : (S,) float64 um/um, depth-proportional term (see module docstring), mean 0.
    """
    S = params.n_sessions
    # Always draw every array, whatever the settings, so that e.g. turning jumps on does not
    # change the underlying walk.
    z = rng.standard_normal(S - 1)
    jump_on = rng.random(S - 1) < params.jump_prob
    jump_sign = np.where(rng.random(S - 1) < 0.5, -1.0, 1.0)
    zk = rng.standard_normal(S - 1)

    steps = params.drift_step_um * z + jump_on * jump_sign * params.jump_um
    rigid = np.concatenate([[0.0], np.cumsum(steps)])
    if params.drift_max_um is not None and S > 1:
        span = np.ptp(rigid)
        if span <= 1e-12:
            # Flat walk (no step noise, no jumps): give the requested range a random-walk shape.
            rigid = np.concatenate([[0.0], np.cumsum(z)])
            span = np.ptp(rigid)
        if span > 1e-12:
            rigid = rigid * (params.drift_max_um / span)
    rigid = rigid - rigid.mean()

    slope = np.concatenate([[0.0], np.cumsum(params.linear_drift * zk)])
    slope = slope - slope.mean()
    return rigid, slope


def simulate_bend(params: SimulationParams, rng: np.random.Generator) -> np.ndarray:
    """(S,) um, mean 0: per session, how much farther the tissue above the probe's middle
    moves than the tissue below (``bend_step_um``; zeros when 0)."""
    steps = params.bend_step_um * rng.standard_normal(max(params.n_sessions - 1, 0))
    bend = np.concatenate([[0.0], np.cumsum(steps)])
    return bend - bend.mean()


def _apparent_depth(y0, rigid_s, slope_s, depth_ref, bend_s=0.0, bend_width=1.0):
    """Depth on the probe of tissue at true depth y0 in a session (broadcasts). um."""
    return (y0 + rigid_s + slope_s * (y0 - depth_ref)
            + 0.5 * bend_s * np.tanh((y0 - depth_ref) / bend_width))


def _true_depth_range(ch_y, rigid, slope, depth_ref, margin):
    """Interval of true depths whose apparent depth stays within the margin in every session."""
    lo_probe, hi_probe = ch_y.min() + margin, ch_y.max() - margin
    scale = 1.0 + slope  # apparent = y0 * scale + (rigid - slope * ref): increasing in y0
    lo = np.max((lo_probe - rigid + slope * depth_ref) / scale)
    hi = np.min((hi_probe - rigid + slope * depth_ref) / scale)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# Neurons
# --------------------------------------------------------------------------------------------

@dataclass
class Neurons:
    """Fixed per-neuron properties; every field is an (M,) array (M = n_neurons)."""

    x: np.ndarray            # true soma position, um (y = true depth y0, z = off the plane)
    y: np.ndarray
    z: np.ndarray
    shank: np.ndarray        # int, shank the neuron sits by
    dend_dx: np.ndarray      # dendritic source offset from the soma, um
    dend_dy: np.ndarray
    dend_dz: np.ndarray
    dend_ratio: np.ndarray   # dendritic source strength relative to the soma (opposite sign)
    dend_delay_ms: np.ndarray
    dend_width_ms: np.ndarray
    aniso_y: np.ndarray      # distances along y are divided by this (footprint elongation)
    narrow: np.ndarray       # bool, narrow-spiking
    t0_ms: np.ndarray        # trough time in the waveform window
    trough_ms: np.ndarray    # Gaussian sigma of the trough
    peak_delay_ms: np.ndarray  # trough-to-peak time
    peak_ms: np.ndarray      # Gaussian sigma of the repolarisation peak
    peak_ratio: np.ndarray   # peak height / trough depth
    strength: np.ndarray     # source strength q, uV * um (amplitude = q / r before low-pass)
    rate_hz: np.ndarray
    refractory_ms: np.ndarray
    gamma_shape: np.ndarray  # shape of the gamma-distributed free inter-event interval
    burst_prob: np.ndarray   # probability an event is a burst (0 for non-bursting neurons)
    burst_max: np.ndarray    # int, largest burst size (2..5)
    burst_isi_ms: np.ndarray
    first: np.ndarray        # int, first and last session alive (0-based, inclusive)
    last: np.ndarray
    peth_centre: np.ndarray  # (M, 3) response bumps, in PETH points
    peth_width: np.ndarray   # (M, 3)
    peth_amp: np.ndarray     # (M, 3) relative to baseline; 0 = unused bump
    si: dict | None = None   # waveform_source="spikeinterface": name -> (M,) template params


def _draw_neurons(params: SimulationParams, ch: np.ndarray, shanks: np.ndarray,
                  y_range: tuple[float, float], rng: np.random.Generator) -> Neurons:
    """Draw the population (everything but the amplitude cap and presence)."""
    M = params.n_neurons
    fs_ms = params.sampling_rate_hz / 1000.0
    n_shanks = int(shanks.max()) + 1
    shank = rng.integers(0, n_shanks, M)
    # x limits per shank: the columns' span widened by the margin.
    xmin = np.array([ch[shanks == k, 0].min() for k in range(n_shanks)]) - params.x_margin_um
    xmax = np.array([ch[shanks == k, 0].max() for k in range(n_shanks)]) + params.x_margin_um
    x = xmin[shank] + rng.random(M) * (xmax - xmin)[shank]
    y = rng.uniform(y_range[0], y_range[1], M)
    z = rng.uniform(params.z_min_um, params.z_max_um, M)

    # Dendritic source: mostly towards the surface (+y), 25-90 um away, 10-40 % of the soma.
    toward_surface = rng.random(M) < 0.7
    dend_dy = np.where(toward_surface, 1.0, -1.0) * rng.uniform(25.0, 90.0, M)
    dend_dx = rng.normal(0.0, 8.0, M)
    dend_dz = rng.normal(0.0, 5.0, M)
    dend_ratio = rng.uniform(0.1, 0.4, M)
    dend_delay = rng.uniform(0.05, 0.25, M)
    dend_width = rng.uniform(0.15, 0.35, M)
    aniso = np.exp(rng.uniform(np.log(0.8), np.log(1.25), M))

    narrow = rng.random(M) < params.p_narrow
    # Narrow (fast-spiking): sharp trough, peak ~0.3 ms later, relatively large peak.
    # Broad (regular-spiking): wider trough, slow repolarisation peak ~0.7 ms later.
    trough = np.where(narrow, rng.uniform(0.06, 0.09, M), rng.uniform(0.09, 0.14, M))
    peak_delay = np.where(narrow, np.clip(rng.normal(0.30, 0.04, M), 0.2, 0.42),
                          np.clip(rng.normal(0.70, 0.08, M), 0.5, 0.95))
    peak_w = np.where(narrow, rng.uniform(0.08, 0.14, M), rng.uniform(0.18, 0.32, M))
    peak_ratio = np.where(narrow, rng.uniform(0.35, 0.7, M), rng.uniform(0.2, 0.45, M))
    centre = round(0.44 * params.n_samples)
    t0 = (centre + params.trough_sample_jitter * rng.standard_normal(M)) / fs_ms

    strength = params.amp_at_20um_uv * 20.0 * np.exp(params.amp_sigma * rng.standard_normal(M))

    rate = np.clip(params.rate_median_hz * np.exp(params.rate_sigma * rng.standard_normal(M)),
                   params.rate_min_hz, params.rate_max_hz)
    refractory = rng.uniform(params.refractory_min_ms, params.refractory_max_ms, M)
    gamma_shape = np.exp(rng.uniform(np.log(0.7), np.log(2.5), M))
    bursting = rng.random(M) < params.p_burst
    burst_prob = np.where(bursting, rng.uniform(0.2, 0.6, M), 0.0)
    burst_max = rng.integers(2, 6, M)
    burst_isi = rng.uniform(3.0, 8.0, M)

    # PETH: 1-3 smooth bumps, excitatory (70 %) or inhibitory.
    P = params.peth_points
    n_bumps = rng.integers(1, 4, M)
    used = np.arange(3)[None, :] < n_bumps[:, None]
    pc = rng.uniform(0.2, 0.8, (M, 3)) * P
    pw = rng.uniform(0.03, 0.12, (M, 3)) * P
    excit = rng.random((M, 3)) < 0.7
    pa = np.where(excit, rng.uniform(0.3, 2.0, (M, 3)), -rng.uniform(0.2, 0.8, (M, 3)))
    pa = np.where(used, pa, 0.0)

    return Neurons(
        x=x, y=y, z=z, shank=shank.astype(np.int64), dend_dx=dend_dx, dend_dy=dend_dy,
        dend_dz=dend_dz, dend_ratio=dend_ratio, dend_delay_ms=dend_delay,
        dend_width_ms=dend_width, aniso_y=aniso, narrow=narrow, t0_ms=t0, trough_ms=trough,
        peak_delay_ms=peak_delay, peak_ms=peak_w, peak_ratio=peak_ratio, strength=strength,
        rate_hz=rate, refractory_ms=refractory, gamma_shape=gamma_shape, burst_prob=burst_prob,
        burst_max=burst_max.astype(np.int64), burst_isi_ms=burst_isi,
        first=np.zeros(M, np.int64), last=np.zeros(M, np.int64),
        peth_centre=pc, peth_width=pw, peth_amp=pa)


def _draw_lifetimes(params: SimulationParams, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous presence interval per neuron: first, last session (0-based, inclusive), (M,).

    Steady-state turnover h: n0 neurons alive in session 1, about h * n0 new ones per later
    session, each living a geometric number of sessions (hazard h). n0 = M / (1 + h (S - 1)).
    """
    M, S, h = params.n_neurons, params.n_sessions, params.turnover
    u_initial, u_birth, u_life = rng.random(M), rng.random(M), rng.random(M)
    initial = u_initial < 1.0 / (1.0 + h * (S - 1))
    born = 1 + np.floor(u_birth * (S - 1)).astype(np.int64) if S > 1 else np.zeros(M, np.int64)
    first = np.where(initial, 0, born)
    if h <= 0.0:
        life = np.full(M, S, dtype=np.int64)
    elif h >= 1.0:
        life = np.ones(M, dtype=np.int64)
    else:  # inverse-CDF geometric, >= 1
        life = 1 + np.floor(np.log1p(-u_life) / np.log1p(-h))
        life = np.minimum(life, S).astype(np.int64)
    last = np.minimum(S - 1, first + life - 1)
    return first.astype(np.int64), last.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Waveform rendering
# --------------------------------------------------------------------------------------------

@dataclass
class _Sources:
    """What is needed to render n waveforms; every field (n,) float64 (positions in um)."""

    sx: np.ndarray
    sy: np.ndarray
    sz: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray
    aniso: np.ndarray
    strength: np.ndarray
    dend_ratio: np.ndarray
    t0: np.ndarray
    trough: np.ndarray
    peak_delay: np.ndarray
    peak: np.ndarray
    peak_ratio: np.ndarray
    dend_delay: np.ndarray
    dend_width: np.ndarray
    si: dict | None = None   # name -> (n,) generate_templates parameters (spikeinterface source)

    def take(self, sl) -> "_Sources":
        """The sources of a slice or index array of the units."""
        return _Sources(**{f.name: getattr(self, f.name)[sl] for f in dataclasses.fields(self)
                           if f.name != "si"},
                        si=None if self.si is None else {k: v[sl] for k, v in self.si.items()})


def _distance(px, py, pz, chx, chy, aniso, r0):
    """Softened, anisotropic distance from n sources to channels.

    px, py, pz, aniso: (n,); chx, chy: (n, K) or (1, K). Returns (n, K) um.
    """
    ddx = chx - px[:, None]
    ddy = (chy - py[:, None]) / aniso[:, None]
    return np.sqrt(ddx * ddx + ddy * ddy + (pz * pz + r0 * r0)[:, None])


def _pulse(t, centre, sigma, blur, height):
    """Low-passed Gaussian pulses.

    A Gaussian of width sigma blurred by a Gaussian of width blur is a Gaussian of width
    sqrt(sigma^2 + blur^2) with the same area, so its height drops by sigma / that width.
    t: (T,) ms; centre, blur, height: (n, K); sigma: (n, 1). Returns (n, K, T) float32.
    """
    s_eff = np.sqrt(sigma * sigma + blur * blur)
    h = (height * (sigma / s_eff)).astype(np.float32)
    a = (-0.5 / (s_eff * s_eff)).astype(np.float32)
    out = t[None, None, :] - centre.astype(np.float32)[:, :, None]
    out *= out
    out *= a[:, :, None]
    np.exp(out, out=out)
    out *= h[:, :, None]
    return out


def _render(src: _Sources, chx, chy, t, params: SimulationParams) -> np.ndarray:
    """Noiseless mean waveforms of n units on K channels.

    chx, chy: (n, K) or (1, K) channel positions, um; t: (T,) float32 sample times, ms.
    Returns (n, K, T) float32, uV.
    """
    if src.si is not None:
        return _render_si(src, chx, chy, t, params)
    r0, lp, dl = params.soma_radius_um, params.lowpass_ms_per_um, params.delay_ms_per_um
    col = lambda a: a[:, None]  # noqa: E731  (n,) -> (n, 1)
    # Somatic sink: trough then repolarisation peak, both scaled by q / r.
    r = _distance(src.sx, src.sy, src.sz, chx, chy, src.aniso, r0)
    amp = col(src.strength) / r * _attenuation(r, params.attenuation_um)
    out = _pulse(t, col(src.t0) + dl * r, col(src.trough), lp * r, -amp)
    out += _pulse(t, col(src.t0 + src.peak_delay) + dl * r, col(src.peak), lp * r,
                  col(src.peak_ratio) * amp)
    # Dendritic return current: opposite sign, slower, a little later.
    rd = _distance(src.dx, src.dy, src.dz, chx, chy, src.aniso, r0)
    out += _pulse(t, col(src.t0 + src.dend_delay) + dl * rd, col(src.dend_width), lp * rd,
                  col(src.strength * src.dend_ratio) / rd * _attenuation(rd, params.attenuation_um))
    return out


def _attenuation(r, length_um):
    """Extra far-field decay exp(-(r - 20) / length), 1 at 20 um; 1 everywhere if length = 0."""
    if length_um <= 0:
        return 1.0
    return np.exp(-(r - 20.0) / length_um)


def _sources(nr: Neurons, neuron, y_soma, y_dend, amp_gain, width_gain, time_shift_ms
             ) -> _Sources:
    """Sources of units = (neuron, session) with apparent depths already computed. (n,)."""
    si = None if nr.si is None else _si_unit_params(nr.si, neuron, width_gain)
    return _Sources(si=si,
        sx=nr.x[neuron], sy=y_soma, sz=nr.z[neuron],
        dx=nr.x[neuron] + nr.dend_dx[neuron], dy=y_dend,
        dz=np.maximum(nr.z[neuron] + nr.dend_dz[neuron], 1.0),
        aniso=nr.aniso_y[neuron], strength=nr.strength[neuron] * amp_gain,
        dend_ratio=nr.dend_ratio[neuron], t0=nr.t0_ms[neuron] + time_shift_ms,
        trough=nr.trough_ms[neuron] * width_gain,
        peak_delay=nr.peak_delay_ms[neuron] * width_gain,
        peak=nr.peak_ms[neuron] * width_gain, peak_ratio=nr.peak_ratio[neuron],
        dend_delay=nr.dend_delay_ms[neuron] * width_gain,
        dend_width=nr.dend_width_ms[neuron] * width_gain)


def _nearest_channels(px, py, ch, k):
    """Indices (n, k) of the k channels nearest to points (px, py) in the probe plane."""
    k = min(k, ch.shape[0])
    d2 = (ch[None, :, 0] - px[:, None]) ** 2 + (ch[None, :, 1] - py[:, None]) ** 2
    if k == ch.shape[0]:
        return np.broadcast_to(np.arange(k), d2.shape).copy()
    return np.argpartition(d2, k - 1, axis=1)[:, :k]


def _near_stats(src: _Sources, ch, t, params, chunk=2048):
    """Trough depth and peak-to-trough (largest over the channels nearest the soma), (n,) uV."""
    n = src.sx.shape[0]
    trough = np.empty(n)
    ptt = np.empty(n)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        part = src.take(slice(a, b))
        idx = _nearest_channels(part.sx, part.sy, ch, _N_NEAR)
        w = _render(part, ch[idx, 0], ch[idx, 1], t, params)
        trough[a:b] = -w.min(axis=(1, 2))
        ptt[a:b] = (w.max(axis=2) - w.min(axis=2)).max(axis=1)
    return trough, ptt


# --------------------------------------------------------------------------------------------
# Spike trains and PETHs
# --------------------------------------------------------------------------------------------

def spike_train(rng: np.random.Generator, rate_hz: float, duration_ms: float,
                refractory_ms: float, gamma_shape: float = 1.0, burst_prob: float = 0.0,
                burst_max: int = 2, burst_isi_ms: float = 5.0) -> np.ndarray:
    """Spike times (n,) float64 ms in [0, duration_ms), sorted, no interval < refractory_ms.

    Events form a renewal process: each interval is a dead time plus a gamma-distributed free
    time. An event is a single spike, or with probability burst_prob a burst of 2..burst_max
    spikes at ~burst_isi_ms. The dead time covers the longest possible burst plus the refractory
    period, so the refractory period holds across events too. The mean rate is rate_hz unless
    the dead time leaves no room (then a little lower).
    """
    mean_size = 1.0 + burst_prob * ((2 + burst_max) / 2.0 - 1.0)
    event_interval = 1000.0 / (rate_hz / mean_size)   # ms
    longest_burst = (burst_max - 1) * 1.5 * burst_isi_ms if burst_prob > 0 else 0.0
    dead = refractory_ms + longest_burst
    free = max(event_interval - dead, 0.25 * event_interval)
    mean_iv = dead + free
    n_exp = duration_ms / mean_iv
    n_draw = int(n_exp * 1.1 + 5.0 * np.sqrt(n_exp) + 10)
    start = rng.uniform(0.0, mean_iv)
    pieces = [start + np.cumsum(dead + rng.gamma(gamma_shape, free / gamma_shape, n_draw))]
    while pieces[-1][-1] < duration_ms:  # rare: the first batch fell short
        pieces.append(pieces[-1][-1] + np.cumsum(
            dead + rng.gamma(gamma_shape, free / gamma_shape, n_draw)))
    events = np.concatenate(pieces)
    events = events[events < duration_ms]
    if burst_prob <= 0 or events.size == 0:
        return events
    n_ev = events.size
    is_burst = rng.random(n_ev) < burst_prob
    sizes = np.where(is_burst, rng.integers(2, burst_max + 1, n_ev), 1)
    # Intra-burst intervals, jittered but kept above the refractory period and below 1.5x.
    iv = burst_isi_ms * np.exp(0.1 * rng.standard_normal(int(sizes.sum())))
    iv = np.clip(iv, refractory_ms + 0.3, 1.5 * burst_isi_ms)
    starts = np.cumsum(sizes) - sizes
    iv[starts] = 0.0                      # the first spike of each event sits on the event
    cs = np.cumsum(iv)
    offsets = cs - np.repeat(cs[starts], sizes)
    times = np.repeat(events, sizes) + offsets
    return np.sort(times[times < duration_ms])


def _neuron_train(params: SimulationParams, key: int, nr: Neurons, m: int, rate_hz: float
                  ) -> np.ndarray:
    """Spike train (n,) float64 ms of neuron m at rate_hz, from spike stream ``key``."""
    g = _rng(params.seed, _S_SPIKES, key)
    duration_ms = params.duration_s * 1000.0
    times = np.empty(0)
    # Poisson: a renewal process with no dead time, exponential intervals and no bursts.
    shape = ((0.0, 1.0, 0.0, 2, 5.0) if params.spike_train_model == "poisson" else
             (float(nr.refractory_ms[m]), float(nr.gamma_shape[m]), float(nr.burst_prob[m]),
              int(nr.burst_max[m]), float(nr.burst_isi_ms[m])))
    # A sorter would not report a unit without spikes: redraw the (rare) near-empty train.
    for _ in range(20):
        times = spike_train(g, rate_hz, duration_ms, *shape)
        if times.size >= 2:
            break
    return times.astype(np.float64)


def _peth(nr: Neurons, neuron, rate_hz, params: SimulationParams, rng) -> np.ndarray:
    """PETHs (n, P) float32, Hz: baseline = the unit's rate, plus the neuron's bumps."""
    n, P = neuron.size, params.peth_points
    amp = nr.peth_amp[neuron] * np.exp(params.peth_jitter * rng.standard_normal((n, 3)))
    centre = nr.peth_centre[neuron] + 0.1 * params.peth_jitter * P * rng.standard_normal((n, 3))
    width = nr.peth_width[neuron]
    x = np.arange(P, dtype=np.float64)
    bumps = np.exp(-0.5 * ((x[None, None, :] - centre[:, :, None]) / width[:, :, None]) ** 2)
    base = rate_hz[:, None]
    profile = base * np.maximum(1.0 + (amp[:, :, None] * bumps).sum(axis=1), 0.0)
    noise = params.peth_noise * np.sqrt(base * np.maximum(profile, 0.05 * base))
    out = np.maximum(profile + noise * rng.standard_normal((n, P)), 0.0)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Simulation:
    """A simulated experiment. Light arrays are held; waveforms and spike trains are made on
    demand (``waveforms``, ``iter_waveforms``, ``waveform_all``, ``spike_times``), always the
    same for the same parameters.

    Per-unit arrays have N rows (units of all sessions, sorted by session, random order within
    a session); sessions are 1..S in ``session_index`` and 0-based in ``unit_session``.
    """

    params: SimulationParams
    channel_locations: np.ndarray = dataclasses.field(repr=False)   # (C, 2) float64 um
    channel_shanks: np.ndarray = dataclasses.field(repr=False)      # (C,) int64
    depth_ref_um: float
    gt_motion: np.ndarray = dataclasses.field(repr=False)           # (S,) um, mean 0
    gt_motion_linear: np.ndarray = dataclasses.field(repr=False)    # (S,) um/um, mean 0
    session_index: np.ndarray = dataclasses.field(repr=False)       # (N,) int64, 1..S
    gt_neuron: np.ndarray = dataclasses.field(repr=False)           # (N,) int64
    gt_locations: np.ndarray = dataclasses.field(repr=False)        # (N, 3) um, soma x, y, z
    peth: np.ndarray | None = dataclasses.field(repr=False)         # (N, P) float32 Hz
    neurons: Neurons = dataclasses.field(repr=False)
    unit_rate_hz: np.ndarray = dataclasses.field(repr=False)        # (N,) rate in the session
    unit_amp_gain: np.ndarray = dataclasses.field(repr=False)       # (N,) day amplitude factor
    unit_width_gain: np.ndarray = dataclasses.field(repr=False)     # (N,) day width factor
    unit_time_shift_ms: np.ndarray = dataclasses.field(repr=False)  # (N,) day trough shift
    unit_dend_depth: np.ndarray = dataclasses.field(repr=False)     # (N,) apparent dendrite y
    sorter: SorterErrors | None = dataclasses.field(default=None, repr=False)  # p_split/p_merge
    gt_motion_bend: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (S,) um

    @property
    def n_units(self) -> int:
        return int(self.session_index.shape[0])

    @property
    def n_sessions(self) -> int:
        return int(self.params.n_sessions)

    @property
    def n_channels(self) -> int:
        return int(self.channel_locations.shape[0])

    @property
    def unit_session(self) -> np.ndarray:
        """(N,) int64 0-based session of each unit."""
        return self.session_index - 1

    def _time_axis(self) -> np.ndarray:
        return (np.arange(self.params.n_samples) * (1000.0 / self.params.sampling_rate_hz)
                ).astype(np.float32)

    def _unit_sources(self, units: np.ndarray) -> _Sources:
        return _sources(self.neurons, self.gt_neuron[units], self.gt_locations[units, 1],
                        self.unit_dend_depth[units], self.unit_amp_gain[units],
                        self.unit_width_gain[units], self.unit_time_shift_ms[units])

    @cached_property
    def unit_spike_count(self) -> np.ndarray:
        """(N,) int64 number of spikes of each unit (draws every spike train once)."""
        return np.array([self.spike_times(k).size for k in range(self.n_units)], np.int64)

    def waveforms(self, units, noise: bool = True) -> np.ndarray:
        """Mean waveforms of the given units, (n, C, T) float32 uV, on every channel.

        noise=False gives the noiseless waveforms (the noise of unit k is always the same).
        """
        units = np.atleast_1d(np.asarray(units, dtype=np.int64))
        if units.size and (units.min() < 0 or units.max() >= self.n_units):
            raise KilomatchError(f"unit indices must be in 0..{self.n_units - 1}")
        ch = self.channel_locations
        t = self._time_axis()
        out = np.empty((units.size, self.n_channels, self.params.n_samples), np.float32)
        for a in range(0, units.size, _RENDER_CHUNK):
            part = units[a:a + _RENDER_CHUNK]
            out[a:a + part.size] = _render(self._unit_sources(part), ch[None, :, 0],
                                           ch[None, :, 1], t, self.params)
        if self.sorter is not None:
            self.sorter.mix_partners(out, units, self.neurons, ch, t, self.params)
        if noise and self.params.waveform_noise_uv > 0:
            shape = (self.n_channels, self.params.n_samples)
            for i, k in enumerate(units):
                g = _rng(self.params.seed, _S_NOISE, int(k))
                out[i] += np.float32(self.params.waveform_noise_uv) * g.standard_normal(
                    shape, dtype=np.float32)
        if noise and self.params.waveform_noise_per_spike_uv > 0:
            _add_count_noise(out, units, self.unit_spike_count, self.params)
        if self.params.session_offset_samples > 0:
            from .features import shift_in_time
            out = shift_in_time(out, -self.session_offset[self.session_index[units] - 1])
        if self.params.dead_channel_share > 0:
            out[self.channel_death[None, :] <= self.session_index[units][:, None]] = 0.0
        return out

    @cached_property
    def channel_death(self) -> np.ndarray:
        """(C,) int64 session (1-based) from which each channel reads 0: a share
        dead_channel_share of the channels, drawn at random, die in a session uniform in
        2..S; the others never (S + 1)."""
        s = int(self.params.n_sessions)
        out = np.full(self.n_channels, s + 1, np.int64)
        n_dead = int(round(self.params.dead_channel_share * self.n_channels))
        if n_dead == 0 or s < 2:
            return out
        g = _rng(self.params.seed, _S_DEAD_CHANNELS)
        out[g.permutation(self.n_channels)[:n_dead]] = g.integers(2, s + 1, n_dead)
        return out

    @cached_property
    def session_offset(self) -> np.ndarray:
        """(S,) int64 samples each session's waveforms sit late (negative: early), uniform in
        [-session_offset_samples, session_offset_samples] (all 0 by default)."""
        k = int(self.params.session_offset_samples)
        if k == 0:
            return np.zeros(self.params.n_sessions, np.int64)
        return _rng(self.params.seed, _S_SESSION_OFFSET).integers(
            -k, k + 1, self.params.n_sessions).astype(np.int64)

    def iter_waveforms(self, chunk: int = 256, start: int = 0, stop: int | None = None):
        """Yield (a, b, waveforms of units a..b-1) over units start..stop-1, chunk at a time."""
        stop = self.n_units if stop is None else min(stop, self.n_units)
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            yield a, b, self.waveforms(np.arange(a, b))

    @cached_property
    def waveform_all(self) -> np.ndarray:
        """(N, C, T) float32 uV, all units (only for runs that fit in memory)."""
        return self.waveforms(np.arange(self.n_units))

    def spike_times(self, unit: int) -> np.ndarray:
        """Spike times of one unit, (n,) float64 ms, sorted."""
        k = int(unit)
        if not 0 <= k < self.n_units:
            raise KilomatchError(f"unit index must be in 0..{self.n_units - 1}, got {unit}")
        if self.sorter is not None:
            return self.sorter.spike_times(k, self.neurons, int(self.gt_neuron[k]),
                                           float(self.unit_rate_hz[k]), self.params)
        return _neuron_train(self.params, k, self.neurons, int(self.gt_neuron[k]),
                             float(self.unit_rate_hz[k]))

    def summary(self) -> dict:
        """Counts for a quick look (JSON-friendly)."""
        counts = np.bincount(self.gt_neuron, minlength=self.params.n_neurons)
        return {
            "n_units": self.n_units,
            "n_sessions": self.n_sessions,
            "n_channels": self.n_channels,
            "n_neurons_sorted": int(np.count_nonzero(counts)),
            "n_neurons_in_several_sessions": int(np.count_nonzero(counts >= 2)),
            "units_per_session": np.bincount(self.session_index, minlength=self.n_sessions + 1
                                             )[1:].tolist(),
            "motion_range_um": float(np.ptp(self.gt_motion)),
        }


def simulate(params: SimulationParams | None = None, **overrides) -> Simulation:
    """Simulate an experiment in memory (waveforms and spike trains are made on demand).

    params: SimulationParams (defaults if None); overrides: field=value replacing fields.
    """
    params = _with_overrides(params, overrides)
    params.validate()
    seed, S = params.seed, params.n_sessions
    ch, shanks = probe_geometry(params.probe)
    depth_ref = 0.5 * (ch[:, 1].min() + ch[:, 1].max())

    rigid, slope = simulate_motion(params, _rng(seed, _S_MOTION))
    if np.any(1.0 + slope <= 0.2):
        raise KilomatchError("linear_drift is too large: the depth slope term folds the probe "
                             f"(min 1 + slope = {np.min(1 + slope):.3f}); lower linear_drift")
    bend = simulate_bend(params, _rng(seed, _S_BEND))
    lo, hi = _true_depth_range(ch[:, 1], rigid, slope, depth_ref,
                               params.edge_margin_um + 0.5 * float(np.abs(bend).max()))
    if not lo < hi:
        raise KilomatchError(
            f"drift too large for probe {params.probe}: after a motion range of "
            f"{np.ptp(rigid):.1f} um and edge_margin_um={params.edge_margin_um}, no depth stays "
            "on the probe in every session; lower drift_step_um / drift_max_um / jump_um")

    nr = _draw_neurons(params, ch, shanks, (lo, hi), _rng(seed, _S_POPULATION))
    if params.waveform_source == "spikeinterface":
        nr.si = _draw_si_params(params.n_neurons, _rng(seed, _S_SI))
    nr.first, nr.last = _draw_lifetimes(params, _rng(seed, _S_PRESENCE, 0))
    t = (np.arange(params.n_samples) * (1000.0 / params.sampling_rate_hz)).astype(np.float32)
    M = params.n_neurons

    # Cap the source strength so the nearest-channel trough at the true position <= amp_max.
    every = np.arange(M)
    one = np.ones(M)
    src0 = _sources(nr, every, nr.y, nr.y + nr.dend_dy, one, one, np.zeros(M))
    trough0, _ = _near_stats(src0, ch, t, params)
    nr.strength = nr.strength * np.minimum(1.0, params.amp_max_uv / np.maximum(trough0, 1e-9))

    # Day-to-day variation, for every (neuron, session) slot: (M, S).
    g = _rng(seed, _S_SESSION)
    amp_gain = np.exp(params.amplitude_jitter * g.standard_normal((M, S)))
    width_gain = np.exp(params.shape_jitter * g.standard_normal((M, S)))
    time_shift = params.time_jitter_samples * g.standard_normal((M, S)) * (
        1000.0 / params.sampling_rate_hz)
    rate = np.clip(nr.rate_hz[:, None] * np.exp(params.rate_jitter * g.standard_normal((M, S))),
                   0.5 * params.rate_min_hz, params.rate_max_hz)

    # Candidates: alive and not missed by the sorter; then the detection threshold.
    sess = np.arange(S)
    alive = (nr.first[:, None] <= sess[None, :]) & (sess[None, :] <= nr.last[:, None])
    not_missed = _rng(seed, _S_PRESENCE, 1).random((M, S)) < params.p_present
    cand_m, cand_s = np.nonzero(alive & not_missed)           # sorted by neuron, then session
    y_soma = _apparent_depth(nr.y[cand_m], rigid[cand_s], slope[cand_s], depth_ref,
                             bend[cand_s], params.bend_width_um)
    y_dend = _apparent_depth(nr.y[cand_m] + nr.dend_dy[cand_m], rigid[cand_s], slope[cand_s],
                             depth_ref, bend[cand_s], params.bend_width_um)
    src = _sources(nr, cand_m, y_soma, y_dend, amp_gain[cand_m, cand_s],
                   width_gain[cand_m, cand_s], time_shift[cand_m, cand_s])
    _, ptt = _near_stats(src, ch, t, params)
    keep = ptt >= params.detection_threshold_uv

    # Units: by session; within a session in random order (so order says nothing of identity).
    order_parts = []
    kept = np.nonzero(keep)[0]
    for s in range(S):
        in_s = kept[cand_s[kept] == s]
        order_parts.append(in_s[_rng(seed, _S_ORDER, s).permutation(in_s.size)])
    sel = np.concatenate(order_parts) if order_parts else np.zeros(0, np.int64)
    sorter = None
    if params.p_split > 0 or params.p_merge > 0:
        cand = _Candidates(m=cand_m, s=cand_s, y=y_soma, y_dend=y_dend,
                           amp_gain=amp_gain[cand_m, cand_s], width_gain=width_gain[cand_m, cand_s],
                           time_shift_ms=time_shift[cand_m, cand_s], rate_hz=rate[cand_m, cand_s])
        sel, sorter = _sorter_errors(params, sel, cand, nr)
    um, us = cand_m[sel], cand_s[sel]
    unit_amp_gain = amp_gain[um, us] * (1.0 if sorter is None else sorter.amp_factor)

    peth = None
    if params.with_peth:
        peth = _peth(nr, um, rate[um, us], params, _rng(seed, _S_PETH))

    return Simulation(
        params=params, channel_locations=ch, channel_shanks=shanks, depth_ref_um=float(depth_ref),
        gt_motion=rigid, gt_motion_linear=slope, gt_motion_bend=bend,
        session_index=(us + 1).astype(np.int64), gt_neuron=um.astype(np.int64),
        gt_locations=np.column_stack([nr.x[um], y_soma[sel], nr.z[um]]),
        peth=peth, neurons=nr, unit_rate_hz=rate[um, us], unit_amp_gain=unit_amp_gain,
        unit_width_gain=width_gain[um, us], unit_time_shift_ms=time_shift[um, us],
        unit_dend_depth=y_dend[sel], sorter=sorter)


def _with_overrides(params: SimulationParams | None, overrides: dict) -> SimulationParams:
    params = SimulationParams() if params is None else params
    if not isinstance(params, SimulationParams):
        raise KilomatchError(f"params must be a SimulationParams, got {type(params).__name__}")
    names = {f.name for f in dataclasses.fields(SimulationParams)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise KilomatchError(f"unknown simulation parameter(s) {bad}; known: {sorted(names)}")
    return dataclasses.replace(params, **overrides) if overrides else dataclasses.replace(params)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _json_params(params: SimulationParams) -> dict:
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if f.name in _HARDER_PARAMS and v == f.default:
            continue  # written only when set, so that older simulations stay byte-identical
        out[f.name] = v.item() if isinstance(v, np.generic) else v
    return out


def _write_waveforms(sim: Simulation, writer: FolderWriter, block_units: int = 1024) -> None:
    """Write (N, C, T) float32 a block of units at a time: memory stays at one block even for
    10^5 units (tens of GB on disk)."""
    shape = (sim.n_units, sim.n_channels, sim.params.n_samples)
    with writer.rows(WAVEFORMS, shape, np.float32) as out:
        for _, _, block in sim.iter_waveforms(chunk=block_units):
            out.write(block)


def write_simulation(sim: Simulation, out_dir, overwrite: bool = False) -> Path:
    """Write the kilomatch input folder plus ground truth; returns the folder path.

    Files: channel_locations.npy (C,2) f8; waveform_all.npy (N,C,T) f4 uV, written a block of units
    at a time; session_index.npy (N,) i8 1..S; spike_times/Unit{k}.npy (n,) f8 ms;
    peth.npy (N,P) f4 (with_peth); channel_shanks.npy (C,) i8 (multi-shank probes only);
    gt_neuron.npy (N,) i8; gt_motion.npy (S,) f8 um; gt_motion_linear.npy (S,) f8 um/um;
    gt_motion_bend.npy (S,) f8 um (bend_step_um > 0 only); gt_locations.npy (N,3) f8 um;
    simulation.json (parameters, depth_ref_um, counts).
    A previous simulation in the folder is replaced whole; any other non-empty folder only with
    overwrite=True, which replaces it whole too. Atomic: see
    :class:`~kilomatch.formats.folder.FolderWriter`.
    """
    out = Path(out_dir)
    p = sim.params
    counts = np.bincount(sim.session_index, minlength=p.n_sessions + 1)[1:]
    if np.any(counts == 0):
        empty = (np.nonzero(counts == 0)[0] + 1).tolist()
        raise KilomatchError(
            f"session(s) {empty} have no sorted unit, but the input format needs units in every "
            "session 1..S; raise n_neurons or p_present, or lower detection_threshold_uv")
    writer = FolderWriter(out, overwrite=overwrite, replaceable=_is_simulation,
                          not_empty_hint=" and is not a kilomatch simulation (no "
                                         f"{_META_FILE})")
    with writer:
        writer.save(CHANNEL_LOCATIONS, np.ascontiguousarray(sim.channel_locations, np.float64))
        writer.save(SESSION_INDEX, sim.session_index.astype(np.int64))
        if sim.peth is not None:
            writer.save(PETH, sim.peth.astype(np.float32))
        if int(sim.channel_shanks.max()) > 0:
            writer.save(CHANNEL_SHANKS, sim.channel_shanks.astype(np.int64))
        writer.save("gt_neuron.npy", sim.gt_neuron.astype(np.int64))
        writer.save("gt_motion.npy", sim.gt_motion.astype(np.float64))
        writer.save("gt_motion_linear.npy", sim.gt_motion_linear.astype(np.float64))
        if p.bend_step_um > 0:
            writer.save("gt_motion_bend.npy", sim.gt_motion_bend.astype(np.float64))
        writer.save("gt_locations.npy", sim.gt_locations.astype(np.float64))
        _write_waveforms(sim, writer)
        for k in range(sim.n_units):
            writer.save_spike_times(k, sim.spike_times(k))
        writer.write_text(_META_FILE, json.dumps(_metadata(sim), indent=2, sort_keys=True)
                          + "\n")
    return writer.out


def _is_simulation(folder: Path) -> bool:
    """A folder this module wrote (which it replaces without overwrite=True)."""
    return (folder / _META_FILE).is_file()


def _metadata(sim: Simulation) -> dict:
    """simulation.json: parameters, depth reference, motion convention and counts."""
    return {
        "format_version": FORMAT_VERSION,
        "generator": "kilomatch.simulate",
        "params": _json_params(sim.params),
        "depth_ref_um": sim.depth_ref_um,
        "motion_convention": "unit depth in session s = y0 + gt_motion[s] + "
                             "gt_motion_linear[s] * (y0 - depth_ref_um)"
                             + (" + gt_motion_bend[s] * tanh((y0 - depth_ref_um) / "
                                "bend_width_um) / 2; all three" if sim.params.bend_step_um > 0
                                else "; both") + " mean 0",
        "channel_shanks_base": 0,
        **sim.summary(),
    }


def simulate_to_folder(out_dir, params: SimulationParams | None = None, *,
                       overwrite: bool = False, **overrides) -> Simulation:
    """simulate() then write_simulation(); returns the Simulation."""
    sim = simulate(params, **overrides)
    write_simulation(sim, out_dir, overwrite=overwrite)
    return sim


# --------------------------------------------------------------------------------------------
# Harder data (issue 12): spike-count noise, SpikeInterface templates, sorter errors
# --------------------------------------------------------------------------------------------

_HARDER_PARAMS = ("waveform_noise_per_spike_uv", "waveform_source", "p_split", "p_merge",
                  "bend_step_um", "bend_width_um")
# A sorter merges only units whose peak positions are this close (um, in the probe plane).
_MERGE_DISTANCE_UM = 40.0
# Amplitude gap between the two halves of a split unit (fraction): +-5%.
_SPLIT_AMP_STEP = 0.1
# Ranges of generate_templates' per-unit parameters, as SpikeInterface documents its defaults
# (alpha is not drawn: it follows the neuron's source strength, see _si_unit_params).
_SI_RANGES = {"depolarization_ms": (0.09, 0.14), "repolarization_ms": (0.5, 0.8),
              "recovery_ms": (1.0, 1.5), "positive_amplitude": (0.1, 0.25),
              "smooth_ms": (0.03, 0.07), "spatial_decay": (10.0, 45.0),
              "propagation_speed": (250.0, 350.0), "ellipse_shrink": (0.4, 1.0),
              "ellipse_angle": (0.0, 2 * np.pi), "spatial_power": (1.5, 2.5)}
_SI_WIDTHS = ("depolarization_ms", "repolarization_ms", "recovery_ms")


def _add_count_noise(out, units, spike_count, params) -> None:
    """Add, in place, noise of std waveform_noise_per_spike_uv / sqrt(n_spikes) to each unit's
    mean waveform. out: (n, C, T) float32 uV; units: (n,) unit indices; spike_count: (N,)."""
    shape = out.shape[1:]
    for i, k in enumerate(units):
        std = params.waveform_noise_per_spike_uv / np.sqrt(max(int(spike_count[k]), 1))
        g = _rng(params.seed, _S_COUNT_NOISE, int(k))
        out[i] += np.float32(std) * g.standard_normal(shape, dtype=np.float32)


def _draw_si_params(n_neurons: int, rng: np.random.Generator) -> dict:
    """Per-neuron generate_templates parameters: name -> (M,) float64, uniform in _SI_RANGES."""
    return {name: rng.uniform(lo, hi, n_neurons) for name, (lo, hi) in _SI_RANGES.items()}


def _si_unit_params(si: dict, neuron, width_gain) -> dict:
    """Template parameters of units (neuron, session): the day's width change applies to the
    waveform's phases. Returns name -> (n,)."""
    out = {name: v[neuron] for name, v in si.items()}
    for name in _SI_WIDTHS:
        out[name] = out[name] * width_gain
    return out


def _render_si(src: _Sources, chx, chy, t, params: SimulationParams) -> np.ndarray:
    """Noiseless mean waveforms from SpikeInterface's generate_templates, (n, K, T) float32 uV.

    The template's amplitude at distance r is alpha * exp(-r / spatial_decay); alpha is set so
    that the source strength q gives q / 20 uV at 20 um, as in the two-source model, so the
    amplitude cap and detection threshold mean the same. chx, chy: (n, K) or (1, K) um.
    """
    try:
        from spikeinterface.core import generate_templates
    except ImportError as err:
        raise KilomatchError(
            "waveform_source='spikeinterface' needs SpikeInterface: pip install "
            f"'kilomatch[spikeinterface]' ({err})") from None
    n, T = src.sx.shape[0], t.shape[0]
    fs = params.sampling_rate_hz
    n_before = round(0.44 * T)
    # SpikeInterface needs room after the trough for repolarisation and recovery (up to
    # 2.3 ms): render a longer window and keep the first T samples.
    ms_before, ms_after = n_before * 1000.0 / fs, (T - n_before) * 1000.0 / fs + 3.0
    alpha = src.strength / 20.0 * np.exp(20.0 / src.si["spatial_decay"])
    out = np.empty((n, chx.shape[1], T), np.float32)
    for i in range(n):
        row = min(i, chx.shape[0] - 1)
        unit_params = {name: v[i:i + 1] for name, v in src.si.items()}
        unit_params["alpha"] = alpha[i:i + 1]
        tpl = generate_templates(
            np.column_stack([chx[row], chy[row]]).astype(np.float64),
            np.array([[src.sx[i], src.sy[i], src.sz[i]]]), fs, ms_before, ms_after, seed=0,
            unit_params=unit_params, mode="ellipsoid", spatial_profile="exponential")
        out[i] = tpl[0, :T].T
    return out


@dataclass
class _Candidates:
    """(neuron, session) slots that pass the sorter and detection: every field (n_cand,)."""

    m: np.ndarray
    s: np.ndarray
    y: np.ndarray
    y_dend: np.ndarray
    amp_gain: np.ndarray
    width_gain: np.ndarray
    time_shift_ms: np.ndarray
    rate_hz: np.ndarray


@dataclass(eq=False)
class SorterErrors:
    """Splits and merges of a simulation; every field is (N,), one row per unit.

    train_key: spike stream of the unit's own train (a candidate slot index). split_part: 0
    whole, 1 / 2 the half keeping the spikes whose uniform draw is below / above split_frac.
    amp_factor: amplitude factor of a split half (1 elsewhere). partner_*: the second neuron
    of a merged unit (partner_neuron -1 if none), its position, day gains, rate and train
    stream; partner_weight: its share of the merged unit's spikes.
    """

    train_key: np.ndarray
    split_part: np.ndarray
    split_frac: np.ndarray
    amp_factor: np.ndarray
    partner_neuron: np.ndarray
    partner_y: np.ndarray
    partner_y_dend: np.ndarray
    partner_amp_gain: np.ndarray
    partner_width_gain: np.ndarray
    partner_time_shift_ms: np.ndarray
    partner_rate_hz: np.ndarray
    partner_train_key: np.ndarray
    partner_weight: np.ndarray

    def spike_times(self, k: int, nr: Neurons, neuron: int, rate_hz: float,
                    params: SimulationParams) -> np.ndarray:
        """Spike times (n,) float64 ms of unit k: its share of a split, or both merged trains."""
        key = int(self.train_key[k])
        times = _neuron_train(params, key, nr, neuron, rate_hz)
        part = int(self.split_part[k])
        if part:
            below = _rng(params.seed, _S_SORTER, 2, key).random(times.size) < self.split_frac[k]
            times = times[below if part == 1 else ~below]
        if self.partner_neuron[k] >= 0:
            other = _neuron_train(params, int(self.partner_train_key[k]), nr,
                                  int(self.partner_neuron[k]), float(self.partner_rate_hz[k]))
            times = np.sort(np.concatenate([times, other]))
        return times

    def mix_partners(self, out, units, nr: Neurons, ch, t, params) -> None:
        """Replace, in place, each merged unit's waveform by the spike-weighted mean of its two
        neurons. out: (n, C, T) float32 noiseless waveforms of ``units``."""
        rows = np.nonzero(self.partner_neuron[units] >= 0)[0]
        if rows.size == 0:
            return
        k = units[rows]
        src = _sources(nr, self.partner_neuron[k], self.partner_y[k], self.partner_y_dend[k],
                       self.partner_amp_gain[k], self.partner_width_gain[k],
                       self.partner_time_shift_ms[k])
        other = _render(src, ch[None, :, 0], ch[None, :, 1], t, params)
        w = self.partner_weight[k].astype(np.float32)[:, None, None]
        out[rows] = (1 - w) * out[rows] + w * other


def _sorter_errors(params: SimulationParams, sel: np.ndarray, cand: _Candidates, nr: Neurons
                   ) -> tuple[np.ndarray, SorterErrors]:
    """Apply p_merge then p_split within each session.

    sel: (N0,) candidate slots of the sorted units, by session. Returns the candidate slot of
    each new unit (N,), by session, random order within a session (a merged unit is its
    neuron with more spikes), and the SorterErrors of those units.
    """
    rows, parts, fracs, partners, weights = [], [], [], [], []
    for s in range(params.n_sessions):
        units = sel[cand.s[sel] == s]
        g = _rng(params.seed, _S_SORTER, 0, s)
        u_merge, u_split = g.random(units.size), g.random(units.size)
        frac = g.uniform(0.3, 0.7, units.size)
        x, y, shank = nr.x[cand.m[units]], cand.y[units], nr.shank[cand.m[units]]
        partner = np.full(units.size, -1, np.int64)   # -2: absorbed into its partner's unit
        weight = np.zeros(units.size)                  # the partner's share of the spikes
        used = np.zeros(units.size, bool)
        for i in g.permutation(units.size):
            if used[i] or u_merge[i] >= params.p_merge:
                continue
            d = np.hypot(x - x[i], y - y[i])
            d[used | (shank != shank[i])] = np.inf
            d[i] = np.inf
            j = int(np.argmin(d))
            if d[j] > _MERGE_DISTANCE_UM:
                continue
            count = {k: _neuron_train(params, int(units[k]), nr, int(cand.m[units[k]]),
                                      float(cand.rate_hz[units[k]])).size for k in (i, j)}
            main, other = (i, j) if count[i] >= count[j] else (j, i)
            used[i] = used[j] = True
            partner[main], partner[other] = units[other], -2
            weight[main] = count[other] / max(count[main] + count[other], 1)
        s_rows, s_parts, s_fracs, s_partners, s_weights = [], [], [], [], []
        for i, c in enumerate(units):
            if partner[i] == -2:
                continue
            halves = (1, 2) if partner[i] == -1 and u_split[i] < params.p_split else (0,)
            for part in halves:
                s_rows.append(c), s_parts.append(part), s_fracs.append(frac[i])
                s_partners.append(partner[i]), s_weights.append(weight[i])
        order = _rng(params.seed, _S_SORTER, 1, s).permutation(len(s_rows))
        for lst, acc in ((s_rows, rows), (s_parts, parts), (s_fracs, fracs),
                         (s_partners, partners), (s_weights, weights)):
            acc.extend(np.asarray(lst)[order].tolist())
    rows_a = np.asarray(rows, np.int64)
    part_a = np.asarray(parts, np.int8)
    partner_a = np.asarray(partners, np.int64)
    has = partner_a >= 0
    p = np.where(has, partner_a, 0)
    amp_factor = np.choose(part_a, [1.0, 1.0 + _SPLIT_AMP_STEP / 2, 1.0 - _SPLIT_AMP_STEP / 2])
    sorter = SorterErrors(
        train_key=rows_a, split_part=part_a, split_frac=np.asarray(fracs, np.float64),
        amp_factor=amp_factor, partner_neuron=np.where(has, cand.m[p], -1),
        partner_y=cand.y[p], partner_y_dend=cand.y_dend[p], partner_amp_gain=cand.amp_gain[p],
        partner_width_gain=cand.width_gain[p], partner_time_shift_ms=cand.time_shift_ms[p],
        partner_rate_hz=cand.rate_hz[p], partner_train_key=p,
        partner_weight=np.asarray(weights, np.float64))
    return rows_a, sorter


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

# Short aliases for the most used settings (each field also has --field-name / --field_name).
_ALIASES = {"n_sessions": ["--sessions"], "n_neurons": ["--neurons"],
            "drift_max_um": ["--drift"], "n_samples": ["--samples"],
            "duration_s": ["--duration"]}


def _optional_float(text: str):
    if text.strip().lower() in ("none", "null", ""):
        return None
    return float(text)


def _build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m kilomatch.simulate",
        description="Write a simulated kilomatch input folder with ground truth. "
                    "--drift sets drift_max_um (total rigid motion range, um).")
    ap.add_argument("out", help="output folder")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the folder (all of it) even if it is not a previous simulation")
    ap.add_argument("--quiet", action="store_true", help="print nothing")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks")
    specs = {s.name: s for s in SIMULATION_PARAMETERS}
    for f in dataclasses.fields(SimulationParams):
        spec = specs[f.name]
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        flags += _ALIASES.get(f.name, [])
        kw = {"dest": f.name, "default": f.default,
              "help": f"{spec.help}; {spec.allowed()} (default: {f.default})".replace("%", "%%")}
        if spec.kind == "bool":
            ap.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif spec.none_ok:
            ap.add_argument(*flags, type=_optional_float, metavar="FLOAT|none", **kw)
        else:
            ap.add_argument(*flags, type={"int": int, "float": float, "str": str}[spec.kind],
                            **kw)
    return ap


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimulationParams)}
    t0 = time.perf_counter()

    def body():
        with command_logging(sys.stderr):
            sim = simulate_to_folder(args.out, SimulationParams(**kw), overwrite=args.overwrite)
        if not args.quiet:
            s = sim.summary()
            print(f"wrote {args.out}: {s['n_units']} units, {s['n_sessions']} sessions, "
                  f"{s['n_neurons_sorted']} neurons ({s['n_neurons_in_several_sessions']} in >1 "
                  f"session), motion range {s['motion_range_um']:.1f} um, "
                  f"{time.perf_counter() - t0:.1f} s")

    return run_command(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
