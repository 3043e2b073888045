"""The whole run, as a list of plain steps: load, features, motion rounds, final clustering,
curation, export. Every step is also importable on its own (see each module)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import (amplitude_outliers, channel_offsets, channel_windows, correction, curation,
               dead_channels, duplicate_units, export, features, fingerprint, firing_rates,
               joining, linking, lone_ends, lone_sessions, motion_initial, parallel, polarity,
               position_noise, session_timing, similarity_step, sorter_splits,
               temporal_components, time_gaps, unit_moves, waveform_noise)
from .assemble import assemble, output_channels
from .clustering import combine_labels, ihdbscan, renumber, same_cluster
from .errors import KilomatchError
from .figure_inputs import figure_inputs
from .figure_worker import FigureWorkers, draw_jobs
from .logs import LOG_FILE, RunLog, setup_logging
from .formats.folder import SESSION_INDEX, SPIKE_TIMES, WAVEFORMS
from .load import (Dataset, amplitude_unit_hint, block_rows, channel_order_hint, iter_rows,
                   judge_rows, load_dataset, load_given_motion, non_finite_problem,
                   repeated_sessions_hint, session_amplitude_hint, warn_flat)
from .motion import (BEND_MIN_GAIN, Motion, estimate_motion, fit_bend, motion_by_model,
                     off_pairs, pair_residuals, robust_motion)
from .parallel import map_units, n_workers, threads_for_pairs
# The result types are defined in kilomatch.results and stay importable from here.
from .results import Result, RoundResult, ShankPart, UnitFeatures, shank_parts  # noqa: F401
from .settings import Settings, load as load_settings
from .similarity import (candidate_pairs, directed_correlation, feature_similarity, fisher_z,
                         location_similarity, waveform_similarity, weighted_similarity)

log = logging.getLogger("kilomatch")


# ----------------------------------------------------------------------------- steps

def feature_rounds(s: Settings, has_peth: bool) -> tuple[list, list]:
    """Feature lists of the motion rounds and of the final clustering, without PETH when the
    data has none (said once)."""
    rounds = [list(r) for r in s.motionEstimation.features]
    final = list(s.clustering.features)
    if not has_peth and any("PETH" in r for r in rounds + [final]):
        log.info("PETH is listed in the settings but %s has no peth.npy: going on without PETH",
                 s.path_to_data)
        rounds = [[f for f in r if f != "PETH"] for r in rounds]
        final = [f for f in final if f != "PETH"]
    empty = [k + 1 for k, r in enumerate(rounds) if not r]
    if empty or not final:
        where = f"motionEstimation.features round {empty}" if empty else "clustering.features"
        raise KilomatchError(f"setting '{where}' lists only PETH, and there is no peth.npy: "
                             "add Waveform, AutoCorr or ISI")
    return rounds, final


def unit_features(data: Dataset, s: Settings) -> UnitFeatures:
    """Peak channel, amplitude, location, ACG, ISI of every unit (docs/method.md, section 2),
    and each unit's waveform on its channel window, read block by block from the input."""
    n, c, t = data.waveforms.shape
    acg_args = (s.autoCorr.window, s.autoCorr.binwidth, s.autoCorr.gaussian_sigma)
    isi_args = (s.ISI.window, s.ISI.binwidth, s.ISI.gaussian_sigma)
    # The ACGs (Python loops over spike trains) and the waveform read below (numpy on large
    # arrays, which lets the GIL go) overlap on a second core: 0.4 s of the features' 0.9 s
    # at 1,615 units. With worker processes (map_units), the workers take the ACGs.
    spike_features = parallel.started(
        partial(map_units, partial(_spike_features, acg_args=acg_args, isi_args=isi_args),
                data.n_units, s.n_jobs, "ACG and ISI", (data.spike_times,)),
        background=n_workers(s.n_jobs) > 1 and not parallel.in_worker_processes(n, s.n_jobs))
    windows = _window_table(data, s, s.waveformCorrection.window_um)
    ptt = np.empty((n, c), dtype=np.float32)
    peak = np.empty(n, dtype=np.int64)
    values = np.empty((n, windows.shape[1], t), dtype=np.float32)
    share = np.zeros(n)  # each unit's baseline level, over its amplitude (channel_offsets)
    noise = np.empty(n)  # each unit's share of noise near its peak (waveform_noise)
    far_order = waveform_noise.farthest_first(data.channel_locations)
    positive = np.zeros(n, dtype=bool)  # peaks positive on its peak channel (polarity)
    finite = np.ones(n, dtype=bool)
    flat = np.zeros(n, dtype=bool)
    n_blocks = -(-n // block_rows(data.waveforms))
    projection = denoising_projection(data, s)
    for start, block in tqdm(iter_rows(data.waveforms), total=n_blocks, desc="reading waveforms",
                             disable=None, leave=False):
        rows = slice(start, start + block.shape[0])
        block = temporal_components.project(block, projection)
        ptt[rows] = features.peak_to_trough(block)
        if not data.waveforms_checked:  # the loader left it to this read of the file
            finite[rows], flat[rows] = judge_rows(ptt[rows])
        peak[rows] = features.peak_channels(ptt[rows])[0]
        values[rows] = _on_windows(block, peak[rows], windows)
        noise[rows] = waveform_noise.noise_share(block, ptt[rows], peak[rows], far_order,
                                                 s.waveformCorrection.n_nearest_channels)
        if s.remove_channel_offsets:
            share[rows] = channel_offsets.offset_share(
                channel_offsets.edge_baseline(values[rows]),
                ptt[rows][np.arange(block.shape[0]), peak[rows]])
        positive[rows] = polarity.positive_peaked(block[np.arange(block.shape[0]), peak[rows]])
    source = data.path / WAVEFORMS if data.path is not None else WAVEFORMS
    if not finite.all():
        raise KilomatchError(non_finite_problem(source, finite))
    warn_flat(flat)
    unit_windows = windows[peak]
    offsets, inverted = _correct_sessions(data, s, share, positive, values)
    dead = _fill_dead_channels(data, s, ptt, peak, values, unit_windows)
    amplitude = ptt[np.arange(n), peak].astype(np.float64)
    footprint = features.footprint_amplitude(ptt, peak, data.channel_locations,
                                             data.channel_shanks)
    for hint in (amplitude_unit_hint(amplitude),
                 session_amplitude_hint(amplitude, data.session_index),
                 channel_order_hint(ptt, peak, data.channel_locations, data.channel_shanks,
                                    data.session_index - 1),
                 repeated_sessions_hint(ptt, data.session_index - 1)):
        if hint:
            log.warning("%s: %s", source, hint)
    waveforms = channel_windows.LocalWaveforms(values, unit_windows, c)
    nearest = features.nearest_channels(data.channel_locations, peak,
                                        s.spikeLocation.n_nearest_channels)
    shank = (np.zeros(data.n_units, np.int64) if data.channel_shanks is None
             else data.channel_shanks[peak])
    algorithm = s.spikeLocation.location_algorithm
    locate = partial(_locate_all, ptt, peak, nearest, dead, data, s.n_jobs, shank)
    locations = locate(algorithm, "spikeLocation")
    # the curation's distances may read positions of another estimate (autoCuration.
    # location_algorithm): the learned decay places one neuron's units closer together
    curation_locations = None
    if s.autoCuration.location_algorithm not in ("same", algorithm):
        curation_locations = locate(s.autoCuration.location_algorithm, "autoCuration")
    both = spike_features()
    parallel.release_workers()  # no later step uses them
    n_acg = features.acg_lags(*acg_args[:2]).size
    # The temporal shape on the peak channel, as recorded, for the probability's Shape
    # evidence: Kriging cannot restore a footprint sampled at another phase of the channel
    # grid (docs/method.md, section 7), but the peak channel's shape barely changes there.
    slot = np.argmax(waveforms.channels == peak[:, None], axis=1)
    peak_waveform = values[np.arange(n), slot]  # (N, T): a copy, not a view
    time_shift = None
    if s.centering_waveforms:
        time_shift = features.centring_shift(peak_waveform)
        features.shift_rows(values, time_shift)
        features.shift_rows(peak_waveform, time_shift)
    return UnitFeatures(waveforms, peak, amplitude, locations, both[:, :n_acg], both[:, n_acg:],
                        data.peth, data.session_index - 1, shank, peak_waveform,
                        s.waveformCorrection.window_um, time_shift, dead, offsets, inverted,
                        noise, projection, curation_locations,
                        firing_rates.unit_rates(data.spike_times, data.session_index - 1),
                        footprint)


def denoising_projection(data: Dataset, s: Settings) -> np.ndarray | None:
    """The (T, T) projection of the mean waveforms on their temporal components
    (kilomatch.temporal_components), None when denoise_waveforms is off, when there is too
    little to learn it from, or when it would take away less than MIN_SHARE_REMOVED of the
    median unit's waveform (clean waveforms: nothing to gain); the log says which."""
    if not s.denoise_waveforms:
        return None
    projection, removed = temporal_components.learn_projection(
        data.waveforms, n_near=s.waveformCorrection.n_nearest_channels)
    t = data.waveforms.shape[2]
    if projection is None:
        log.info("denoise_waveforms: too few waveforms to learn their temporal components "
                 "from; the waveforms are read as they are")
        return None
    k = temporal_components.n_components(projection)
    if removed < temporal_components.MIN_SHARE_REMOVED:
        log.info("denoise_waveforms: %d of the %d temporal components hold the spikes, the "
                 "rest %.3f of the median unit's waveform (under %.2f): the waveforms are read "
                 "as they are", k, t, removed, temporal_components.MIN_SHARE_REMOVED)
        return None
    log.info("denoise_waveforms: the mean waveforms are read on the %d of their %d temporal "
             "components that hold the spikes; the rest, %.3f of the median unit's waveform, "
             "is left out as noise", k, t, removed)
    return projection


def _flagged_sessions(data: Dataset, enabled: bool, find, describe) -> np.ndarray | None:
    """The (S,) bool sessions ``find(session0, n_sessions)`` flags, named in the log by
    ``describe(sessions, session0)``; None when the step is off or flags none."""
    if not enabled:
        return None
    session0 = data.session_index - 1
    sessions = find(session0, data.n_sessions)
    if not sessions.any():
        return None
    log.warning(describe(sessions, session0))
    return sessions


def _correct_sessions(data: Dataset, s: Settings, share: np.ndarray, positive: np.ndarray,
                      values: np.ndarray) -> tuple:
    """Subtract the baselines of the sessions whose waveforms carry an offset on each
    channel (kilomatch.channel_offsets; remove_channel_offsets; ``share``: (N,) each unit's
    offset_share) and turn back the sessions of the opposite sign (kilomatch.polarity;
    flip_inverted_sessions; ``positive``: (N,) bool units peaking positive), in ``values``
    (N, W, T), in place. Returns the (S,) bool sessions of each, or None for none."""
    offsets = _flagged_sessions(
        data, s.remove_channel_offsets,
        lambda session0, n: channel_offsets.sessions_with_offsets(share, session0, n),
        lambda found, session0: channel_offsets.describe_offsets(found, share, session0))
    inverted = _flagged_sessions(
        data, s.flip_inverted_sessions,
        lambda session0, n: polarity.inverted_sessions(positive, session0, n),
        lambda found, session0: polarity.describe_inverted(found, positive, session0))
    _undo_session_faults(values, data.session_index - 1, offsets, inverted)
    return offsets, inverted


def _undo_session_faults(values: np.ndarray, session0: np.ndarray,
                         offsets: np.ndarray | None, inverted: np.ndarray | None,
                         chunk: int = 2048) -> None:
    """In place on the units' windows (N, W, T): subtract each unit's baselines in the
    ``offsets`` sessions and multiply the ``inverted`` sessions' units by -1 ((S,) bool
    each, or None), as _correct_sessions judged them when the input was first read."""
    if offsets is not None:
        units = offsets[session0]
        for start in range(0, len(units), chunk):
            rows = np.flatnonzero(units[start:start + chunk]) + start
            if rows.size:
                values[rows] -= channel_offsets.edge_baseline(values[rows])[:, :, None]
    if inverted is not None:
        values[np.flatnonzero(inverted[session0])] *= -1


def _fill_dead_channels(data: Dataset, s: Settings, ptt: np.ndarray, peak: np.ndarray,
                        values: np.ndarray, unit_windows: np.ndarray) -> np.ndarray | None:
    """Find the channels dead in each session and fill them in on the units' windows
    (kilomatch.dead_channels; fill_dead_channels). ``values`` (N, W, T) on ``unit_windows``
    (N, W), ``ptt`` (N, C) and ``peak`` (N,) are updated in place where a unit changed (its
    peak may move onto a filled channel, which lies in its window). Returns the (S, C) dead
    table, or None when no channel is dead."""
    if not s.fill_dead_channels:
        return None
    session0 = data.session_index - 1
    dead = dead_channels.find_dead(ptt, session0, data.n_sessions, data.channel_locations,
                                   peak)
    if not dead.any():
        return None
    log.warning(dead_channels.describe_dead(dead))
    changed = np.flatnonzero(dead_channels.fill_dead(values, unit_windows, session0, dead,
                                                     data.channel_locations))
    filled = values[changed]
    ptt[changed[:, None], unit_windows[changed]] = filled.max(axis=2) - filled.min(axis=2)
    peak[changed] = features.peak_channels(ptt[changed])[0]
    return dead


def _window_table(data: Dataset, s: Settings, window_um: float) -> np.ndarray:
    """(C, W) channels of the window around each channel (channel_windows.window_table)."""
    return channel_windows.window_table(
        data.channel_locations, data.channel_shanks, window_um,
        min_channels=max(s.waveformCorrection.n_nearest_channels,
                         s.spikeLocation.n_nearest_channels))


def _on_windows(block: np.ndarray, peak: np.ndarray, windows: np.ndarray,
                time_shift: np.ndarray | None = None) -> np.ndarray:
    """A block of full-probe waveforms (n, C, T) on the windows of their peak channels (n,):
    (n, W, T), each unit moved ``time_shift`` (n,) samples earlier when given."""
    values = channel_windows.reduce_block(block, windows[peak])
    if time_shift is not None:
        features.shift_rows(values, time_shift)
    return values


def align_sessions_in_time(data: Dataset, units: UnitFeatures, s: Settings,
                           displacement_of_unit: np.ndarray | None) -> np.ndarray:
    """Shift the waveforms of sessions that sit at other samples than the others' back in
    time (kilomatch.session_timing; units changed in place). displacement_of_unit: (N,) um,
    each unit's motion (the initial estimate or the motion given), which says which units of
    two sessions are superposed; None: no motion is known, and nothing is judged. Returns
    the (S,) delays in samples (all 0: nothing moved)."""
    delays = np.zeros(data.n_sessions, np.int64)
    if (not s.align_sessions_in_time or s.centering_waveforms or units.peak_waveform is None
            or displacement_of_unit is None):
        # Without a motion, the units superposed are mostly two neurons: their trough
        # samples differ in ways that fitted false delays of 1-2 samples on large drift.
        return delays
    # units of different shanks are never superposed: shanks set far apart in x
    x = units.locations[:, 0] + 1e6 * units.shank
    pairs = motion_initial.superposed_pairs(
        x, units.locations[:, 1], units.session0, data.n_sessions, displacement_of_unit,
        motion_initial.session_pairs(data.n_sessions, s.clustering.max_session_gap))
    delays = session_timing.session_delays(features.trough_samples(units.peak_waveform),
                                           pairs, units.session0, data.n_sessions)
    if not delays.any():
        return delays
    log.warning(session_timing.describe_delays(
        delays, len(pairs), "the motion given" if s.waveformCorrection.path_to_motion
        else "the initial motion estimate"))
    shift = delays[units.session0]
    features.shift_rows(units.waveforms.values, shift)
    units.waveforms.moments = None  # made from the values before the shift
    features.shift_rows(units.peak_waveform, shift)
    units.time_shift = shift if units.time_shift is None else units.time_shift + shift
    return delays


def window_needed(displacement: np.ndarray, channel_locations: np.ndarray,
                  s: Settings) -> float:
    """Channel window (um) that a motion (S,) um needs: a unit's corrected peak and its
    compared channels must stay inside its window. The motion's range, plus
    clustering.max_distance, plus the reach of waveformCorrection.n_nearest_channels around
    a peak (median over the channels)."""
    locs = np.asarray(channel_locations, dtype=np.float64)
    n = min(s.waveformCorrection.n_nearest_channels, len(locs))
    farthest = features.nearest_channels(locs, np.arange(len(locs)), n)[:, -1]
    reach = float(np.median(np.linalg.norm(locs[farthest] - locs, axis=1)))
    return float(np.ptp(displacement)) + s.clustering.max_distance + reach


def widen_windows(data: Dataset, units: UnitFeatures, s: Settings, displacements: list) -> None:
    """Read every unit's channel window again, wider, when the motions (S,) um of
    ``displacements`` (the initial estimates or the motion given, one per shank) need more
    than the windows reach (waveformCorrection.widen_window; units changed in place).

    On 800 um of drift the 500 um windows cut the compared channels of units far from their
    match, and recall fell to 0.97 (benchmarks/RESULTS.md, "Session 25")."""
    if not s.waveformCorrection.widen_window or not displacements or data.waveforms is None:
        return
    widest = max(displacements, key=np.ptp)  # the need grows with the range alone
    needed = window_needed(widest, data.channel_locations, s)
    if needed <= units.window_um:
        return
    width = float(np.ceil(needed / 50) * 50)
    windows = _window_table(data, s, width)
    n, c, t = data.waveforms.shape
    log.info("the %s spans %.0f um: channel windows widened from "
             "waveformCorrection.window_um = %.0f um to %.0f um (%d channels, %.2f GB of "
             "waveforms; waveformCorrection.widen_window)",
             "motion given" if s.waveformCorrection.path_to_motion else
             "initial motion estimate", float(np.ptp(widest)), units.window_um, width,
             windows.shape[1], n * windows.shape[1] * t * 4 / 1e9)
    values = np.empty((n, windows.shape[1], t), dtype=np.float32)
    for start, block in iter_rows(data.waveforms):
        rows = slice(start, start + block.shape[0])
        block = temporal_components.project(block, units.temporal_projection)
        values[rows] = _on_windows(block, units.peak_channel[rows], windows,
                                   None if units.time_shift is None else units.time_shift[rows])
    _undo_session_faults(values, units.session0, units.offset_sessions,
                         units.inverted_sessions)
    if units.dead_channels is not None:
        dead_channels.fill_dead(values, windows[units.peak_channel], units.session0,
                                units.dead_channels, data.channel_locations)
    units.waveforms = channel_windows.LocalWaveforms(values, windows[units.peak_channel], c)
    units.window_um = width


def _locate_all(ptt, peak, nearest, dead, data, n_jobs, shank, algorithm,
                section) -> np.ndarray:
    """(N, 3) um positions of every unit by ``algorithm``, from (N, C) ptt, (N,) peak
    channels, (N, m) the channels nearest each peak and (S, C) dead channels (or None);
    ``section`` names the settings that asked (spikeLocation or autoCuration) in the log."""
    # The learned decay leaves a dead channel's filled-in value out of its fits (the value
    # flattens the footprint and moved units 10-20 um); the monopole keeps it: without it,
    # nothing improved on the suite's dying-channel study (benchmarks/RESULTS.md, "Session 59")
    live = (np.ones(nearest.shape, bool) if dead is None or algorithm != "decay_triangulation"
            else ~dead[data.session_index[:, None] - 1, nearest])
    decay = _decay_of_units(ptt, data.channel_locations, nearest, live, shank, algorithm,
                            section)
    locate = partial(_locate_block, channel_locations=data.channel_locations,
                     algorithm=algorithm)
    label = "locating units" if section == "spikeLocation" else "locating units (curation)"
    return map_units(locate, data.n_units, n_jobs, label, (ptt, peak, nearest, live, decay))


def _decay_of_units(ptt, channel_locations, nearest, live, shank, algorithm,
                    section="spikeLocation") -> np.ndarray:
    """(N,) decay exponent each unit is located with: with ``decay_triangulation``, that of
    its shank's units (features.shared_decay; per shank, so that a shank is located as its
    units alone would be), logged with the settings ``section`` that asked; 1 (unused)
    otherwise."""
    decay = np.ones(len(shank))
    if algorithm != "decay_triangulation":
        return decay
    shanks = np.unique(shank)
    for k in shanks:
        mine = np.flatnonzero(shank == k)
        decay[mine] = features.shared_decay(ptt[mine], channel_locations, nearest[mine],
                                            live[mine])
        log.info("unit positions%s: amplitude falls as 1 / distance^%.2f, the median of %d "
                 "units' fits (%s.location_algorithm = decay_triangulation)",
                 "" if len(shanks) == 1 else f" on shank {k}", decay[mine[0]],
                 min(mine.size, features.DECAY_FIT_UNITS), section)
    return decay


def _locate_block(ptt, peak, nearest, live, decay, channel_locations, algorithm):
    """Locations of a block of units: (n, C) ptt, (n,) peak channels, (n, m) the channels
    nearest each peak, (n, m) whether each recorded and (n,) the decay exponent to fit
    with -> (n, 3) um."""
    out = np.empty((len(peak), 3))
    for value in np.unique(decay):  # one per shank
        rows = np.flatnonzero(decay == value)
        out[rows] = features.locate_units(ptt[rows], channel_locations, peak[rows],
                                          nearest.shape[1], algorithm, channels=nearest[rows],
                                          live=None if live[rows].all() else live[rows],
                                          decay=float(value))
    return out


def _spike_features(spike_times, acg_args, isi_args):
    """ACG and ISI of a block of units side by side: (n, L + B)."""
    return np.hstack([features.auto_correlograms(spike_times, *acg_args),
                      features.isi_histograms(spike_times, *isi_args)])


def reference_shifts(motion: Motion, units: UnitFeatures, n_templates: int) -> list:
    """Per reference probe, each unit's Kriging shift p_s(y) - p_ref (um): list of (N,)."""
    disp = motion.at(units.session0, units.locations[:, 1])
    if n_templates == 1:
        return [disp]
    session_disp = motion.displacement()
    return [disp - session_disp.min(), disp - session_disp.max()]


def match_units(units: UnitFeatures, channel_locations: np.ndarray, s: Settings,
                motion: Motion, feature_names: list, n_sessions: int,
                kinv: np.ndarray | None = None, weight_tol: float | None = None,
                weights: np.ndarray | None = None, waveforms: tuple | None = None,
                keep_waveforms: bool = True, oversized: str | None = None) -> RoundResult:
    """Candidate pairs at the given motion, their similarities, and IHDBSCAN from ``weights``
    (F,) (None: equal), stopped when no weight moves by more than weight_tol (None:
    clustering.weight_tol).

    waveforms: the corrected waveforms at this motion, if already made (corrected_waveforms'
    pair); keep_waveforms False lets them go before IHDBSCAN (a motion round needs them only
    for its similarities: 2.6 GB at 10^5 units), leaving the result's fields None.
    oversized: what becomes of a cluster over the size limit (clustering.hdbscan_from_mst;
    None: clustering.oversized_clusters)."""
    oversized = s.clustering.oversized_clusters if oversized is None else oversized
    y = units.locations[:, 1]
    corrected = y - motion.at(units.session0, y)
    pairs = candidate_pairs(corrected, units.session0, s.clustering.max_distance, units.shank,
                            s.clustering.max_session_gap)
    wf_corr, ch_corr = (None, None) if waveforms is None else waveforms
    if wf_corr is None and "Waveform" in feature_names:
        if not keep_waveforms and units.waveforms.values.nbytes > BAND_BYTES:
            wf_corr = partial(waveform_similarity_in_bands, units, channel_locations, motion,
                              s.waveformCorrection, kinv, corrected)
        else:
            wf_corr, ch_corr = corrected_waveforms(units, channel_locations, motion,
                                                   s.waveformCorrection, kinv)
    similarities = pair_similarities(units, feature_names, pairs, corrected, wf_corr, ch_corr)
    if not keep_waveforms:
        wf_corr = ch_corr = None
    result = ihdbscan(len(y), pairs, similarities, max_cluster_size=n_sessions,
                      n_iter=s.clustering.n_iter,
                      weight_tol=s.clustering.weight_tol if weight_tol is None else weight_tol,
                      weights=weights, oversized=oversized)
    return RoundResult(list(feature_names), motion, pairs, similarities, result, corrected,
                       wf_corr, ch_corr)


def pair_similarities(units: UnitFeatures, names: list, pairs: np.ndarray,
                      corrected_depth: np.ndarray, waveforms_corrected=None,
                      channels_corrected=None) -> np.ndarray:
    """(P, F) similarity of each pair for each named feature (Fisher z). The waveforms: the
    corrected copies and channels, or a function of the pairs giving their Waveform column.
    "Shape" compares the units' peak-channel waveforms as recorded (units.peak_waveform)."""
    # filled column by column: stacking F columns at the end held them twice (28 M pairs)
    out = np.empty((len(pairs), len(names)))
    for k, name in enumerate(names):
        if name == "Waveform" and callable(waveforms_corrected):
            out[:, k] = waveforms_corrected(pairs)
        elif name == "Waveform":
            out[:, k] = waveform_similarity(waveforms_corrected, channels_corrected, pairs)
        elif name == "Location":
            positions = np.column_stack([units.locations[:, 0], corrected_depth,
                                         units.locations[:, 2]])
            out[:, k] = location_similarity(positions, pairs)
        else:
            if name == "Shape" and units.peak_waveform is None:
                raise KilomatchError("the Shape similarity needs UnitFeatures.peak_waveform "
                                     "(each unit's waveform on its peak channel, (N, T)), "
                                     "which pipeline.unit_features fills")
            matrix = {"AutoCorr": units.acg, "ISI": units.isi, "PETH": units.peth,
                      "Shape": units.peak_waveform}[name]
            out[:, k] = feature_similarity(matrix, pairs, np.argsort(corrected_depth))
    return out


def corrected_waveforms(units: UnitFeatures, channel_locations: np.ndarray, motion: Motion,
                        wc, kinv=None, rows: np.ndarray | None = None,
                        in_place: bool = False) -> tuple[list, np.ndarray]:
    """Kriging-corrected waveforms, one LocalWaveforms per reference probe (K), and each
    unit's nearest channels around its corrected peak channel (K, N, n); of the units
    ``rows`` (m,) only, in that order, when given.

    in_place: the last reference probe's correction is written over ``units.waveforms``'
    values (all units), for a caller that has no further use of the original window copy
    (2.6 GB at 10^5 NP1 units): ``units.waveforms`` no longer holds the original after."""
    if kinv is None:
        kinv = correction.kriging_inverse(channel_locations)
    wfs, chans = [], []
    shifts = reference_shifts(motion, units, wc.n_templates)
    for k, shift in enumerate(shifts):
        last = in_place and k == len(shifts) - 1
        corrected = correction.correct_local(units.waveforms, channel_locations, shift, kinv,
                                             rows, units.waveforms.values if last else None)
        slot = np.argmax(features.peak_to_trough(corrected.values), axis=1)
        peak = corrected.channels[np.arange(corrected.n_units), slot]
        wfs.append(corrected)
        chans.append(features.nearest_channels(channel_locations, peak, wc.n_nearest_channels))
    return wfs, np.stack(chans)


# A motion round whose units' channel-window waveforms take more than this corrects and
# compares them in bands of corrected depth of about this size (each band's owners with the
# partners their pairs reach), letting each band go before the next: at 10^5 NP1 units a
# whole corrected copy is 2.6 GB beside the original. Smaller studies keep one copy (a band's
# edge is corrected twice).
BAND_BYTES = 1 << 30


def waveform_similarity_in_bands(units: UnitFeatures, channel_locations: np.ndarray,
                                 motion: Motion, wc, kinv, corrected_depth: np.ndarray,
                                 pairs: np.ndarray, band_units: int | None = None) -> np.ndarray:
    """Waveform similarity of each pair (P,) as :func:`similarity.waveform_similarity` gives
    it from the whole corrected copy, computed band by band: the units in bands of corrected
    depth (N,) um of ~band_units each (default: BAND_BYTES of waveforms) own the directions
    of their pairs, and each band corrects only its owners and their partners. A unit's
    correction does not depend on the others corrected with it: the values differ from the
    whole copy's only in the last bits (products grouped otherwise). Units near a band's edge
    are corrected twice."""
    n = len(corrected_depth)
    order = np.argsort(corrected_depth, kind="stable")
    band_of = np.empty(n, np.int32)
    if band_units is None:
        band_units = max(1, BAND_BYTES * n // max(units.waveforms.values.nbytes, 1))
    n_bands = max(1, -(-n // band_units))
    band_of[order] = np.arange(n, dtype=np.int64) * n_bands // n
    band_pair = band_of[pairs]  # (P, 2): the band owning each direction
    best = np.full(len(pairs), -np.inf)  # max over directions and reference probes
    for band in range(n_bands):
        owned = band_pair == band  # (P, 2)
        rows = np.unique(np.concatenate([np.flatnonzero(band_of == band),
                                         pairs[owned[:, 0], 1], pairs[owned[:, 1], 0]]))
        local = np.full(n, -1, np.int64)
        local[rows] = np.arange(rows.size)
        wfs, chans = corrected_waveforms(units, channel_locations, motion, wc, kinv, rows)
        for wf, ch in zip(wfs, chans):
            for side in (0, 1):
                p = np.flatnonzero(owned[:, side])
                best[p] = np.maximum(best[p], directed_correlation(
                    wf, ch, local[pairs[p, side]], local[pairs[p, 1 - side]]))
        del wfs, chans
    return fisher_z(best)


def iterations(clustering) -> str:
    """'3 iterations', '1 iteration, not converged': IHDBSCAN's run, for the log."""
    n = clustering.n_iter
    if clustering.converged:
        end = ""
    elif clustering.cycle:
        end = f", weights cycling with period {clustering.cycle}: the last of n_iter taken"
    else:
        end = ", not converged"
    return f"{n} iteration{'' if n == 1 else 's'}{end}"


def good_pairs(result: RoundResult) -> np.ndarray:
    """(M, 2) pairs in one cluster with similarity above the LDA threshold."""
    return result.pairs[result.clustering.good]


def round_schedule(s: Settings, rounds: list) -> list:
    """Feature sets of the motion rounds: the listed ones, then (repeat_last_feature_set) the
    last one again, at most max_iter rounds in all."""
    me = s.motionEstimation
    schedule = list(rounds)
    if me.repeat_last_feature_set:
        schedule += [rounds[-1]] * max(0, me.max_iter - len(rounds))
    return schedule[:me.max_iter]


def motion_rounds(units: UnitFeatures, channel_locations, s: Settings, rounds: list,
                  n_sessions: int, kinv=None, initial=None) -> tuple[Motion, list]:
    """Run the motion loop: each round matches units at the current motion, then re-estimates
    the motion from that round's good matches. The loop starts from the initial estimate
    (motionEstimation.initial_estimate, kilomatch.motion_initial) and sets aside, with a
    warning, a round whose matches are missing or too few or whose motion the unit positions
    contradict. The rounds listed (``rounds``) run, then (repeat_last_feature_set) the last
    feature set again, until a round moves no unit's corrected depth by more than
    converged_um or max_iter rounds have run; a round set aside also ends the loop when the
    next would repeat it. With stop_early the loop ends when a round finds no more good
    matches than the round before, keeping the best round's motion. The motion returned
    carries a MotionChoice
    (``motion.choice``): which estimate it is and why. ``initial``: what
    motion_initial.start_motion returns for these units, when the caller has made it."""
    me = s.motionEstimation
    schedule = round_schedule(s, rounds)
    if initial is None:
        initial = motion_initial.start_motion(units.locations, units.amplitude,
                                              units.session0, n_sessions, s)
    start, choice = initial
    motion = Motion.zero(n_sessions) if start is None else start.motion
    history = []
    best = None
    polishing = False  # whether the rounds leave out the matches off the motion
    # The round's band is what it is checked with; a small bootstrap is enough for that.
    round_bootstrap = 0 if start is None else min(me.n_bootstrap, 100)
    why = f"ran the {len(schedule)} rounds asked for"
    if len(schedule) > len(rounds):
        why = (f"ran {len(schedule)} rounds (motionEstimation.max_iter) and the motion was still "
               f"moving by more than motionEstimation.converged_um = {me.converged_um:g} um")
    weights = None
    # the bar counts the listed rounds and grows by one for each repeat: a study that
    # converges after round 3 reads 3/3, not 3/15
    bar = tqdm(total=min(len(rounds), len(schedule)), desc="motion rounds", disable=None)
    for k, names in enumerate(schedule, 1):
        if k > bar.total:
            bar.total = k
            bar.refresh()
        # a round with the last one's features starts from its weights (fewer iterations)
        warm = weights if history and history[-1][0].feature_names == list(names) else None
        # hdbscan's own selection: the motion needs the sure matches only, and the units a
        # core adds moved it (0.6 um on c_nonrigid) and with it the probability's
        # calibration, for no gain (benchmarks/RESULTS.md, "Session 11")
        result = match_units(units, channel_locations, s, motion, names, n_sessions, kinv,
                             me.weight_tol, warm, keep_waveforms=False, oversized="noise")
        bar.update(1)
        weights = result.clustering.weights
        matches = good_pairs(result)
        n_candidates = len(result.pairs)
        if not s.save_intermediate_results:  # else written as MotionRound{k}.npz
            result.drop_pair_arrays()
        if me.stop_early and best is not None and len(matches) <= best[0]:
            why = (f"stopped early after round {k}: {len(matches)} good matches, not more than "
                   f"round {best[1]}'s {best[0]}")
            history.append((result, motion))
            break
        candidate, fitted = round_motion(matches, units, n_sessions, s, k, round_bootstrap,
                                         spreads=me.off_pair_spreads if polishing else 0.0)
        history.append((result, candidate))
        release_freed_memory()  # the round's per-pair blocks, before the next round's arrays
        log.info("motion round %d (%s): %d candidate pairs, %d good matches (IHDBSCAN %s), "
                 "motion range %.1f um", k, "+".join(names), n_candidates, len(matches),
                 iterations(result.clustering), float(np.ptp(candidate.displacement())))
        kept = "initial estimate" if best is None else f"motion of round {best[1]}"
        # the next round would repeat this one's features: from the same motion, it would
        # find the same matches
        repeats = k < len(schedule) and list(schedule[k]) == list(names)
        if start is None or motion_initial.judge_round(
                k, candidate, len(matches), kept, start, choice, me.initial_tolerance_um,
                me.min_match_fraction):
            moved = largest_move(motion, candidate, units)
            motion = candidate
            best = (len(matches), k, fitted)
            converged = repeats and me.converged_um > 0 and moved <= me.converged_um
            if converged and not polishing and me.off_pair_spreads > 0:
                # Converged with every good match. Matches of two neighbouring neurons pull a
                # least-squares motion by several um, and the rounds can settle there (the
                # matches found at a motion make that motion); left out earlier, they stop a
                # bend from being followed, as the pairs it has not reached yet lie off it.
                # So from here the rounds leave out the matches that lie off the motion,
                # until it has converged again (benchmarks/RESULTS.md, "Session 67").
                polishing = True
                trimmed, kept_pairs = round_motion(matches, units, n_sessions, s, k,
                                                   round_bootstrap, me.off_pair_spreads,
                                                   first=candidate)
                if len(kept_pairs) < len(matches) and (
                        start is None or motion_initial.judge_round(
                            k, trimmed, len(matches), f"motion of round {k}", start, choice,
                            me.initial_tolerance_um, me.min_match_fraction)):
                    history[-1] = (result, trimmed)
                    motion = trimmed
                    best = (len(matches), k, kept_pairs)
                    continue
            if converged:
                why = (f"converged after round {k}: no unit's corrected depth moved by more than "
                       f"{moved:.2f} um (motionEstimation.converged_um {me.converged_um:g}), so "
                       f"round {k + 1}, with the same features, would find the same matches")
                break
        elif repeats:  # set aside: the next round would start from the same motion
            why = (f"stopped after round {k}: its motion was set aside, and round {k + 1}, "
                   f"with the same features from the same motion, would find the same matches")
            break
        elif k == len(schedule) > len(rounds):
            # the last of max_iter rounds, set aside; round k - 1 was kept (had it been set
            # aside, the loop would have stopped there) and had not converged
            why = (f"ran {k} rounds (motionEstimation.max_iter): round {k - 1}'s motion still "
                   f"moved by more than motionEstimation.converged_um = {me.converged_um:g} um, "
                   f"and round {k}'s was set aside")
    bar.close()
    if best is not None and not polishing and me.off_pair_spreads > 0:
        # The rounds stopped before they converged (a round set aside, or max_iter), so the
        # kept round's motion still rests on every good match: fitted again without those
        # that lie off it, where the initial estimate does not contradict the result
        # (sparse studies: a third of a round's matches of two neurons left it 4-10 um off).
        trimmed, kept_pairs = round_motion(best[2], units, n_sessions, s, best[1],
                                           round_bootstrap, me.off_pair_spreads, first=motion)
        if len(kept_pairs) < len(best[2]) and (
                start is None or motion_initial.judge_round(
                    best[1], trimmed, best[0], f"motion of round {best[1]}", start, choice,
                    me.initial_tolerance_um, me.min_match_fraction)):
            history[best[1] - 1] = (history[best[1] - 1][0], trimmed)
            motion = trimmed
            best = (best[0], best[1], kept_pairs)
    log.info("motion estimation %s; motion from %s", why,
             f"round {best[1]}" if best else choice.source)
    if best is not None:
        choice.keep_round(best[1], best[0])
        if me.n_bootstrap > 0:
            # Only the motion that is kept needs its full confidence band.
            band = estimate_motion(best[2], units.locations[:, 1], units.session0, n_sessions,
                                   linear=s.waveformCorrection.linear_correction or
                                   motion.sloped,  # the band is of the line, not the bend
                                   n_bootstrap=me.n_bootstrap, seed=s.seed)
            motion.take_band(band)
            if start is not None:
                motion_initial.fill_untied(motion, start.motion)
    elif start is not None:
        choice.warn("no motion round found matches that support a motion: the motion is the "
                    "initial estimate, from the units' positions and amplitudes alone; check "
                    "Motion.png")
        choice.why = "no round's matches supported a motion"
    motion.choice = choice
    return motion, history


# How many times a round's motion is fitted again without the matches that lie off it.
OFF_PAIR_PASSES = 3


def round_motion(matches: np.ndarray, units: UnitFeatures, n_sessions: int, s: Settings,
                 k: int, n_bootstrap: int, spreads: float = 0.0,
                 first: Motion | None = None) -> tuple[Motion, np.ndarray]:
    """Motion of round k from its good matches (M, 2), and the matches it rests on: linear
    with waveformCorrection.linear_correction, else rigid, or linear where the linear fit
    places the units more than waveformCorrection.linear_min_um apart from the rigid one
    (kilomatch.motion.motion_by_model), with a bend where the matches ask for one
    (round_bend). With ``spreads`` > 0 (motionEstimation.off_pair_spreads, once the rounds
    have converged or stopped), the matches that lie that many robust spreads off a robust
    rigid fit of them (kilomatch.motion.robust_motion) on their own
    (kilomatch.motion.off_pairs) are left out and the motion fitted again. ``first``: the
    fit of these matches with this n_bootstrap, when the caller has made (and logged) it."""
    if first is None:
        motion, notes = _round_fit(matches, units, n_sessions, s, k, n_bootstrap)
    else:
        motion, notes = first, []
    n_matches = len(matches)
    depth = units.locations[:, 1]
    # Matches of two neighbouring neurons (tens of um apart, a few per cent of a round's on
    # turnover) pull a least-squares motion by several um and can make it seem to depend on
    # depth (benchmarks/RESULTS.md, "Session 67"). The first fit is pulled towards them, so
    # the pairs are looked at again from the fit without them, OFF_PAIR_PASSES times at most.
    for _ in range(OFF_PAIR_PASSES if spreads > 0 else 0):
        # Read off a robust rigid fit (linear where the settings ask for it): the least-
        # squares fit leans towards the pairs to find, and a linear one, with twice the
        # unknowns, tilts towards them on a sparse study even when fitted robustly (on
        # rigid drift, true pairs 20-28 um off it). Tissue that moves unevenly moves
        # neighbouring pairs alike, which off_pairs keeps.
        base = robust_motion(matches, depth, units.session0, n_sessions,
                             s.waveformCorrection.linear_correction)
        off, spread = off_pairs(pair_residuals(base, matches, depth, units.session0),
                                matches, depth, units.session0, spreads)
        if not off.any():
            break
        matches = matches[~off]
        motion, notes = _round_fit(matches, units, n_sessions, s, k, n_bootstrap)
    if len(matches) < n_matches:
        log.info("motion round %d: %d of %d good matches lie more than %g x %.1f um off the "
                 "round's robust fit (motionEstimation.off_pair_spreads): the motion is fitted "
                 "without them", k, n_matches - len(matches), n_matches, spreads, spread)
    for level, message in notes:
        log.log(level, message)
    return motion, matches


def _round_fit(matches: np.ndarray, units: UnitFeatures, n_sessions: int, s: Settings,
               k: int, n_bootstrap: int) -> tuple[Motion, list]:
    """round_motion's fit of the matches (M, 2) given, and what the log should say of it:
    a list of (level, message)."""
    wc = s.waveformCorrection
    depth = units.locations[:, 1]
    if wc.linear_correction:
        motion = estimate_motion(matches, depth, units.session0, n_sessions, linear=True,
                                 n_bootstrap=n_bootstrap, seed=s.seed)
        return round_bend(motion, matches, units, s, k, [])
    motion, excess = motion_by_model(matches, depth, units.session0, n_sessions,
                                     wc.linear_min_um, n_bootstrap, s.seed)
    if motion.linear:
        notes = [(logging.INFO, f"motion round {k}: the motion depends on depth: fitted "
                  f"linear, it places the units {excess:.1f} um from the rigid fit (95th "
                  f"percentile over the units, in 95% of resamples of the matches), more than "
                  f"waveformCorrection.linear_min_um = {wc.linear_min_um:g}; the round's motion "
                  f"is linear")]
    else:
        notes = [(logging.DEBUG, f"motion round {k}: the linear fit places the units "
                  f"{excess:.1f} um from the rigid one: the motion is rigid")]
    return round_bend(motion, matches, units, s, k, notes)


def round_bend(motion: Motion, matches: np.ndarray, units: UnitFeatures, s: Settings,
               k: int, notes: list) -> tuple[Motion, list]:
    """Round k's ``motion`` with the bend its matches (M, 2) ask for, if any
    (kilomatch.motion.fit_bend, waveformCorrection.bend_min_um), and ``notes`` (a list of
    (level, message) for the log) with what was found."""
    wc = s.waveformCorrection
    if wc.bend_min_um <= 0:
        return motion, notes
    bent, excess, gain = fit_bend(matches, units.locations[:, 1], units.session0, motion,
                                  wc.bend_min_um, s.seed)
    if bent.bend is not None:
        notes.append((logging.INFO, f"motion round {k}: the matches ask for a bend that no "
                      f"line follows: it moves the units {excess:.1f} um against each other "
                      f"(95th percentile over the units), more than "
                      f"waveformCorrection.bend_min_um = {wc.bend_min_um:g}, and fitted without "
                      f"them it changes held-out pairs' median distance by {-100 * gain:+.0f}%; "
                      f"the round's motion bends"))
    elif np.isfinite(gain):
        notes.append((logging.INFO, f"motion round {k}: a bend would move the units "
                      f"{excess:.1f} um against each other, but fitted without them it changes "
                      f"held-out pairs' median distance by {-100 * gain:+.0f}% (a fall of "
                      f"{100 * BEND_MIN_GAIN:.0f}% is needed): no bend"))
    return bent, notes


def largest_move(before: Motion, after: Motion, units: UnitFeatures) -> float:
    """Largest change (um) of any unit's motion (its Kriging shift and corrected depth)
    from ``before`` to ``after``."""
    y = units.locations[:, 1]
    return float(np.abs(after.at(units.session0, y) - before.at(units.session0, y)).max(
        initial=0.0))


def given_motion(values: np.ndarray) -> Motion:
    """Motion from user-given displacements (S,) (no band: it is not estimated here)."""
    motion = Motion.zero(values.shape[0])
    motion.offset = np.asarray(values, dtype=np.float64).copy()
    motion.ci_low, motion.ci_high = motion.offset.copy(), motion.offset.copy()
    motion.tied[:] = True
    return motion


def within_cluster_similarity(units: UnitFeatures, final: RoundResult, labels: np.ndarray,
                              s: Settings):
    """Every within-cluster pair, its weighted similarity and whether it may link (Q arrays)."""
    pairs = curation.within_cluster_pairs(labels)
    depth = final.corrected_depth
    similarities = pair_similarities(units, final.feature_names, pairs, depth,
                                     final.waveforms_corrected, final.channels_corrected)
    similarity = weighted_similarity(similarities, final.clustering.weights)
    return pairs, similarity, may_link(units, depth, pairs, s.clustering.max_distance)


def may_link(units: UnitFeatures, depth: np.ndarray, pairs: np.ndarray,
             max_distance: float) -> np.ndarray:
    """(Q,) bool: the pair may be one neuron at all (different sessions, same shank,
    corrected depths (N,) um at most max_distance apart)."""
    a, b = pairs[:, 0], pairs[:, 1]
    return ((units.session0[a] != units.session0[b]) & (units.shank[a] == units.shank[b])
            & (np.abs(depth[a] - depth[b]) <= max_distance))


def matched_pairs(idx_cluster: np.ndarray) -> np.ndarray:
    """(M, 2) every pair of units sharing a final cluster."""
    return curation.within_cluster_pairs(np.where(idx_cluster > 0, idx_cluster, -1))


def warn_if_window_too_small(motion: Motion, channel_locations: np.ndarray,
                             s: Settings, window_um: float) -> float:
    """Warn when the motion is too large for the channel windows, which reach ``window_um``
    (UnitFeatures.window_um): a unit's corrected peak and its compared channels must stay
    inside its window (:func:`window_needed`). Returns the margin (um) left; negative means
    some waveform comparisons lose channels."""
    needed = window_needed(motion.displacement(), channel_locations, s)
    if needed > window_um:
        log.warning("the estimated motion (range %.0f um) with clustering.max_distance %.0f um "
                    "and the compared channels needs %.0f um of channel window, more than the "
                    "%.0f um the windows reach (waveformCorrection.window_um, widen_window): "
                    "raise waveformCorrection.window_um to at least %.0f",
                    np.ptp(motion.displacement()), s.clustering.max_distance, needed,
                    window_um, np.ceil(needed / 50) * 50)
    return window_um - needed


def track(data: Dataset, units: UnitFeatures, s: Settings, rounds: list, final_names: list,
          given: np.ndarray | None = None, kinv=None, stages: "Stages | None" = None,
          narrow: bool = False, initial=None) -> Result:
    """Motion, final clustering and curation of one set of units (a probe or one shank).

    narrow: keep only what the outputs need of the channel-window waveforms (2 x 2.6 GB at
    10^5 units) once nothing compares them: the final correction is written over the
    window copy, ``units.waveforms`` becomes the originals on the channels of
    ``waveforms.npy`` (read again from the input when written, see _narrowed_original),
    and the final corrected copy is kept on the channels of ``waveforms_corrected.npy`` at
    the end (the first reference probe). The pipeline's own runs do; ``units`` is changed
    in place, so a caller that reuses it leaves it False. initial: the initial motion
    estimate of these units (motion_initial.start_motion), when the caller has made it."""
    note = stages.done if stages is not None else (lambda name: None)
    if given is not None:
        log.info("motion read from %s: estimation skipped", s.waveformCorrection.path_to_motion)
        motion, history = given_motion(given), []
    else:
        motion, history = motion_rounds(units, data.channel_locations, s, rounds,
                                        data.n_sessions, kinv, initial)
    note("motion rounds")
    warn_if_window_too_small(motion, data.channel_locations, s, units.window_um)
    # outputs always carry corrected waveforms, and the probability compares them; every
    # later comparison reads the corrected copy, so a narrowing run corrects the original
    # window copy in place once its written channels are kept aside
    original = _narrowed_original(units, data, s) if narrow else None
    waveforms = corrected_waveforms(units, data.channel_locations, motion,
                                    s.waveformCorrection, kinv, in_place=narrow)
    if narrow:
        units.waveforms = original
    final = match_units(units, data.channel_locations, s, motion, final_names, data.n_sessions,
                        kinv, waveforms=waveforms)
    final.waveforms_corrected, final.channels_corrected = waveforms
    log.info("final clustering (%s): %d candidate pairs, %d clusters (IHDBSCAN %s)",
             "+".join(final_names), len(final.pairs), int(final.clustering.labels.max()) + 1,
             iterations(final.clustering))
    note("final clustering")
    fitted = splits = alike = known = None
    similarity_path = s.clustering.method != "probability"
    if similarity_path:  # before the probability: its non-matches leave the splits out
        splits = find_sorter_splits(final.clustering.labels, units, data, s)
    if needs_probability(s):
        known = None if splits is None else splits.split_pairs()
        alike = find_alike_splits(units, final, data, s)
        if alike is not None and alike.is_split.any():
            found = alike.split_pairs()
            known = found if known is None else np.unique(np.vstack([known, found]), axis=0)
        fitted = fit_probability(data, units, final, s, final_names, known)
        note("match probability")
    if not similarity_path and fitted is not None:
        cur = link_by_probability(units, final, s, *fitted, data=data)
        cur.alike_splits = alike
        if s.clustering.calibrate_to_clusters:
            linking.calibrate_to_clusters(cur.links, fitted[1], final.pairs, cur.labels)
        note("curation")
        if narrow:
            _narrow_corrected(final)
        idx = renumber(cur.labels, start=1)
        return Result(s, data, units, motion, history, final, cur, idx, matched_pairs(idx))
    labels = final.clustering.labels
    q_pairs, q_sim, q_link = within_cluster_similarity(units, final, labels, s)
    ac = s.autoCuration
    threshold = final.clustering.threshold
    matched = same_cluster(labels, final.pairs)
    if ac.split_threshold == "equal_priors":
        threshold = curation.equal_prior_threshold(final.clustering.similarity, matched)
    xy = curation_positions(units, final)
    positions = xy if ac.position_split else None
    q_p, q_share, cut = None, None, ac.cut_probability
    if fitted is not None:
        q_p = linking.within_cluster_probability(fitted[0], fitted[1], final.pairs, q_pairs,
                                                 q_link, len(labels))
        if ac.cut_pooled_level > 0:
            q_share = linking.within_cluster_share(fitted[0], fitted[1], final.pairs, q_pairs,
                                                   q_link, len(labels), q_p)
        if cut < 1:  # a cut between parts as probable as known non-matches is not vetoed
            cut = max(cut, fitted[0].model.non_match_level(NON_MATCH_QUANTILE))
    probability_split = ac.probability_split and fitted is not None
    if probability_split and fitted[0].model.n_non_matches < ac.probability_split_min_non_matches:
        probability_split = False
        log.info("autoCuration.probability_split not used: the match probability was fitted "
                 "on %d known non-matches, fewer than autoCuration."
                 "probability_split_min_non_matches (%d)", fitted[0].model.n_non_matches,
                 ac.probability_split_min_non_matches)
    # the amplitudes the curation compares (steps, gaps, the joins' guards) are the
    # footprints', steady across the grid; its spreads of position read the peak's (SNR)
    compared = units.compared_amplitude()
    # a fitted position moves with the phase of the channel grid the neuron is seen at: the
    # spreads of position widen with the difference of two units' motion (position_noise)
    unit_motion = curation_depth(units) - xy[:, 1]
    period = position_noise.grid_period(data.channel_locations, data.channel_shanks)
    ratio = None if fitted is None else position_noise.learned_distance_ratio(
        xy, units.amplitude, final.pairs, fitted[0].candidate_probability, q_pairs,
        units.session0, unit_motion, period)
    # the settings ask for a match probability but the study is too small to fit one
    unfitted = fitted is None and needs_probability(s)
    split_below = None
    if ac.auto_split and unfitted and ac.cut_probability < 1:
        # the probability that should confirm the split's cuts could not be fitted (a small
        # study): unconfirmed, the split took apart true pairs of one neuron as often as
        # wrong ones; the clustering's own two classes confirm them instead, at the same
        # level (benchmarks/RESULTS.md, "Session 64"). The published curation asks for no
        # probability and keeps every cut.
        split_below = curation.sure_split_threshold(final.clustering.similarity, matched,
                                                    ac.cut_probability)
        log.info("no match probability to confirm the split's cuts (too few pairs to fit "
                 "it): autoCuration.auto_split cuts below %.3g, where the clustering's two "
                 "classes give a match %g (autoCuration.cut_probability), not at %.3g",
                 split_below, ac.cut_probability, threshold)
    cur = curation.curate(labels, units.session0, q_pairs, q_sim, q_link, threshold,
                          ac.auto_split, positions, ac.position_gap_um, q_p, cut,
                          None if splits is None else splits.split_pairs(), ratio,
                          ac.cut_distance_ratio or np.inf, ac.split_distance_ratio or np.inf,
                          xy, units.amplitude, ac.succession_probability,
                          s.clustering.max_session_gap, q_share, ac.cut_pooled_level,
                          ac.amplitude_step, ac.rejoin_distance_ratio, ac.amplitude_split,
                          probability_split, ac.split_distance_probability, split_below,
                          compared_amplitude=compared, unit_motion=unit_motion,
                          grid_period_um=period)
    cur.splits, cur.alike_splits = splits, alike
    cur.cut_probability = cut if q_p is not None else float("nan")
    cur.labels_before_join = cur.labels
    if fitted is not None and ac.join_probability > 0:
        # the split at distance's spread reads the candidate pairs' distances: two groups
        # it would take apart again are not joined on terms short of its own
        far = position_noise.distance_ratio_of_many(xy, units.amplitude, final.pairs,
                                                    cur.split_position_noise, units.session0,
                                                    unit_motion)
        cur.labels = joining.join_by_probability(
            cur.labels, final.pairs, fitted[0].candidate_probability, ac.join_probability,
            ac.join_min_probability, units.session0, s.clustering.max_session_gap, known,
            ac.join_low_share, ac.join_interleaved_probability,
            curation.log_amplitude_of(compared),
            curation.AMPLITUDE_STEP_SURE * cur.amplitude_step, far,
            ac.split_distance_ratio or np.inf, ac.split_distance_probability)
        log.info("joined by the match probability (autoCuration.join_probability %g): %d "
                 "clusters -> %d, %d units in no cluster joined one", ac.join_probability,
                 *_join_counts(cur.labels_before_join, cur.labels))
    elif unfitted and ac.join_probability > 0 and np.isfinite(threshold):
        # the probability was asked for but the study is too small to fit it: the join
        # rests on the threshold the curation split at (not in the published curation,
        # which asks for no probability)
        cur.labels = joining.join_by_similarity(
            cur.labels, final.pairs, final.clustering.similarity, threshold, units.session0,
            s.clustering.max_session_gap, known, curation.log_amplitude_of(compared),
            curation.AMPLITUDE_STEP_SURE * cur.amplitude_step)
        log.info("joined by the weighted similarity (no match probability; every pair "
                 "across above the split threshold %.3g): %d clusters -> %d, %d units in no "
                 "cluster joined one", threshold, *_join_counts(cur.labels_before_join,
                                                                 cur.labels))
    if ac.similarity_step > 0:
        split_similarity_steps(cur, final, units.session0, ac.similarity_step)
    if fitted is not None and ac.lone_end_gap > 0:
        split_lone_end_units(cur, final.pairs, fitted[0].candidate_probability,
                             units.session0, ac.lone_end_gap)
    if fitted is not None and ac.lone_end_gap > 0 and ac.time_gap_probability > 0:
        split_at_time_gaps(cur, final.pairs, fitted[0].candidate_probability, units.session0,
                           ac.lone_end_gap, ac.time_gap_probability,
                           units.amplitude if ac.time_gap_unseen else None)
    if fitted is not None and ac.join_in_turn_probability > 0:
        join_groups_in_turn(cur, final.pairs, fitted[0].candidate_probability,
                            units.session0, units.amplitude, s.clustering.max_session_gap,
                            ac.join_in_turn_probability,
                            curation.AMPLITUDE_STEP_SURE * cur.amplitude_step, compared)
    if fitted is not None and ac.rate_split:
        split_at_rates(cur, final.pairs, fitted[0].candidate_probability, units.session0,
                       units.firing_rate)
    if fitted is not None and ac.move_units:
        move_to_other_clusters(cur, final.pairs, fitted[0].candidate_probability,
                               units.session0)
    if fitted is not None and ac.amplitude_outlier_probability > 0:
        split_amplitude_outliers(cur, final.pairs, fitted[0].candidate_probability, compared,
                                 ac.amplitude_outlier_probability)
    if fitted is not None:  # the probability is reported; the similarity made the clusters
        cur.links = fitted[0]

        def probability_of(query):
            # a pair of the final clustering's clusters is one of q_pairs, any other one a
            # join made (a candidate pair): either way it has its probability already
            found, p = linking.pair_lookup(q_pairs, q_p, query, len(labels))
            p[~found] = linking.pair_lookup(final.pairs, cur.links.candidate_probability,
                                            query[~found], len(labels))[1]
            return p

        kept = curation.within_cluster_pairs(cur.labels)
        kept = kept[across_sessions(kept, units.session0)]
        cur.links.match_confidence = linking.match_confidence(len(labels), kept,
                                                              probability_of(kept))
        cur.removed_probability = probability_of(cur.removed_pairs)
        if s.clustering.calibrate_to_clusters:  # the curation above read the pair probability
            linking.calibrate_to_clusters(cur.links, fitted[1], final.pairs, cur.labels)
    if ratio is not None or cur.split_distance_ratio is not None:
        # the split at distance's own removals carry the ratio it used
        cur.removed_distance_ratio = np.full(len(cur.removed_pairs), np.nan)
        for rows, r in ((cur.removed_reason != curation.DISTANCE, ratio),
                        (cur.removed_reason == curation.DISTANCE, cur.split_distance_ratio)):
            if r is not None:
                cur.removed_distance_ratio[rows] = linking.pair_lookup(
                    q_pairs, r, cur.removed_pairs[rows], len(labels))[1]
    note("curation")
    if narrow:
        _narrow_corrected(final)
    idx = renumber(cur.labels, start=1)
    return Result(s, data, units, motion, history, final, cur, idx, matched_pairs(idx))


def split_similarity_steps(cur: curation.CurationResult, final: RoundResult,
                           session: np.ndarray, step: float) -> None:
    """The split after the joins (kilomatch.similarity_step): each cluster of ``cur.labels``
    cut in time where its candidate pairs across are less alike than those within by more
    than ``step``; ``cur`` is updated in place (labels, removed pairs and their reason)."""
    value = similarity_step.step_similarity(final.pair_similarities, final.feature_names)
    if value is None:
        return
    labels, removed, steps = similarity_step.split_at_similarity_step(
        cur.labels, final.pairs, value, session, step)
    if steps.size:
        log.info("split at a step of similarity in time (autoCuration.similarity_step %g): %d "
                 "clusters, %d pairs taken apart", step, steps.size, len(removed))
    _take_apart(cur, labels, removed, curation.SIMILARITY_STEP)


def split_lone_end_units(cur: curation.CurationResult, pairs: np.ndarray,
                         probability: np.ndarray, session: np.ndarray, min_gap: int) -> None:
    """The lone units at the ends of ``cur.labels``' clusters, far in time from the rest and
    linked to it by no pair of match probability 0.1 or more, taken out (kilomatch.
    lone_ends); ``cur`` is updated in place (labels, removed pairs and their reason)."""
    labels, removed = lone_ends.split_lone_ends(cur.labels, pairs, probability, session,
                                                min_gap)
    if len(removed):
        log.info("lone units at the ends of clusters taken out (autoCuration.lone_end_gap "
                 "%d): %d units, %d pairs taken apart", min_gap,
                 int(np.count_nonzero((cur.labels >= 0) & (labels < 0))), len(removed))
    _take_apart(cur, labels, removed, curation.LONE_END)


def split_at_time_gaps(cur: curation.CurationResult, pairs: np.ndarray,
                       probability: np.ndarray, session: np.ndarray, min_gap: int,
                       level: float, amplitude: np.ndarray | None = None) -> None:
    """The clusters of ``cur.labels`` cut at gaps of ``min_gap`` sessions or more across which
    the probability of one neuron (the median match probability across, and with
    ``amplitude`` (N,) uV the sessions it went unseen) is below ``level``
    (kilomatch.time_gaps); ``cur`` is updated in place (labels, removed pairs and their
    reason)."""
    labels, removed = time_gaps.split_at_gaps(cur.labels, pairs, probability, session,
                                              min_gap, level, amplitude)
    if len(removed):
        log.info("clusters cut at gaps in time (autoCuration.time_gap_probability %g, gaps of "
                 "%d sessions or more): %d clusters, %d pairs taken apart", level, min_gap,
                 int(np.unique(cur.labels[removed[:, 0]]).size), len(removed))
    _take_apart(cur, labels, removed, curation.TIME_GAP)


def split_at_rates(cur: curation.CurationResult, pairs: np.ndarray, probability: np.ndarray,
                   session: np.ndarray, rate: np.ndarray) -> None:
    """The curation's clusters split in time where the firing rate steps beyond doubt, then
    where the match probability and the firing rate both say two neurons
    (kilomatch.firing_rates); ``cur`` is updated in place (labels, removed pairs and their
    reasons)."""
    log_rate, limit = firing_rates.rate_spread(cur.labels, session, rate)
    labels, removed = firing_rates.split_rate_steps(cur.labels, session, log_rate, limit)
    if np.isfinite(limit):
        log.info("split in time at a step of firing rate (autoCuration.rate_split): %d clusters, "
                 "%d pairs taken apart (median rates more than %.2fx apart, %g times one "
                 "neuron's spread, and every rate of one side beyond that spread from the "
                 "other's, whatever the match probability)",
                 int(np.unique(cur.labels[removed[:, 0]]).size), len(removed),
                 np.exp(firing_rates.RATE_STEP_SURE * limit), firing_rates.RATE_STEP_SURE)
    _take_apart(cur, labels, removed, curation.RATE_STEP)
    labels, removed, limit = firing_rates.split_at_rates(cur.labels, pairs, probability,
                                                         session, rate, limit=limit)
    if np.isfinite(limit):
        log.info("split where the match probability and the firing rate both say two neurons "
                 "(autoCuration.rate_split): one neuron's rates within %.2fx (the clusters' "
                 "99th percentile, 1.5x at least); %d clusters, %d pairs taken apart (mean "
                 "match probability across below %g, median rates farther apart)",
                 np.exp(limit), int(np.unique(cur.labels[removed[:, 0]]).size), len(removed),
                 firing_rates.RATE_SPLIT_PROBABILITY)
    _take_apart(cur, labels, removed, curation.RATE)


def move_to_other_clusters(cur: curation.CurationResult, pairs: np.ndarray,
                           probability: np.ndarray, session: np.ndarray) -> None:
    """The curation's step before the last: units whose pairs are unlikely into their own
    cluster and sure into another that has no unit of their session move there
    (kilomatch.unit_moves); ``cur`` is updated in place (labels, and the pairs with the
    cluster each unit left as removed pairs)."""
    labels, moved, removed = unit_moves.move_units(cur.labels, pairs, probability, session)
    if moved.size:
        log.info("units moved to the cluster their pairs are sure of (autoCuration.move_units): "
                 "%d units, mean match probability into their own cluster below %g, into the "
                 "other at least %g over %d pairs or more", moved.size, unit_moves.MOVE_UNLIKELY,
                 unit_moves.MOVE_SURE, unit_moves.MOVE_MIN_PAIRS)
    _take_apart(cur, labels, removed, curation.MOVED)


def split_amplitude_outliers(cur: curation.CurationResult, pairs: np.ndarray,
                             probability: np.ndarray, amplitude: np.ndarray,
                             max_probability: float) -> None:
    """The curation's last step: units whose footprint ``amplitude`` (N,) uV lies off the rest
    of their cluster and whose mean match probability with it is below ``max_probability``
    taken out (kilomatch.amplitude_outliers); ``cur`` is updated in place (labels, removed
    pairs and their reason)."""
    labels, out, removed = amplitude_outliers.split_amplitude_outliers(
        cur.labels, pairs, probability, curation.log_amplitude_of(amplitude), max_probability)
    if out.size:
        log.info("units taken out of their cluster at an amplitude off the rest "
                 "(autoCuration.amplitude_outlier_probability): %d units, footprint "
                 "amplitude beyond the rest's by one neuron's spread and %gx at least, mean "
                 "match probability with them below %g", out.size,
                 amplitude_outliers.MIN_FACTOR, max_probability)
    _take_apart(cur, labels, removed, curation.AMPLITUDE_OUTLIER)


def join_groups_in_turn(cur: curation.CurationResult, pairs: np.ndarray,
                        probability: np.ndarray, session: np.ndarray, amplitude: np.ndarray,
                        max_session_gap: int, level: float, max_step: float = np.inf,
                        compared: np.ndarray | None = None) -> None:
    """The curation's join of groups of ``cur.labels`` recorded in turn (sessions that
    interleave in time and never coincide) joined where the probability that they are one
    neuron, from the pairs across and the sessions in which neither would have been seen
    (at their peak ``amplitude`` (N,) uV), is at least ``level``, and their median log
    ``compared`` amplitudes (N,) uV (None: ``amplitude``) differ by at most ``max_step``
    (kilomatch.joining.join_interleaved); ``cur.labels`` is updated in place."""
    before = cur.labels_before_in_turn = cur.labels
    unseen = time_gaps.unseen_by_amplitude(before, session, amplitude)
    cur.labels = joining.join_interleaved(before, pairs, probability, session, unseen,
                                          amplitude, level, max_session_gap,
                                          max_step=max_step, step_amplitude=compared)
    counts = _join_counts(before, cur.labels)
    if counts[0] != counts[1] or counts[2]:
        log.info("groups recorded in turn joined (autoCuration.join_in_turn_probability %g): "
                 "%d clusters -> %d, %d units in no cluster joined one", level, *counts)


def _join_counts(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int]:
    """What a join did to clusters (N,) (-1 none): clusters before, clusters after, units in
    no cluster before that are in one after."""
    return (int(np.unique(before[before >= 0]).size), int(np.unique(after[after >= 0]).size),
            int(np.count_nonzero((before < 0) & (after >= 0))))


def _take_apart(cur: curation.CurationResult, labels: np.ndarray, removed: np.ndarray,
                reason: int) -> None:
    """A split after curation.curate: ``cur`` takes the new labels (N,), and the pairs it
    took apart (R, 2) join the removed pairs with their reason (an index into
    curation.REASONS)."""
    cur.labels = labels
    cur.removed_pairs = np.concatenate([cur.removed_pairs, removed])
    cur.removed_reason = np.concatenate([cur.removed_reason, np.full(
        len(removed), reason, cur.removed_reason.dtype)])


def _narrowed_original(units: UnitFeatures, data: Dataset, s: Settings):
    """The units' original waveforms on the channels written out only (waveforms.npy):
    nothing compares them once the final correction is made, so they are read again from
    the input when written (1.0 GB at 10^5 units), or kept narrowed where the data have no
    waveforms of their own to read (a shank's subset)."""
    channels = output_channels(units.peak_channel, data.channel_locations,
                               s.waveformCorrection.n_nearest_channels)
    if data.waveforms is None or units.dead_channels is not None \
            or units.offset_sessions is not None or units.inverted_sessions is not None:
        # read again, dead channels would be 0 and offsets back: keep the corrected copy
        return units.waveforms.narrowed(channels)
    return channel_windows.StoredWaveforms.of_window_copy(
        units.waveforms, data.waveforms, channels, units.time_shift,
        units.temporal_projection)  # as unit_features read them


def _narrow_corrected(final: RoundResult) -> None:
    """The final corrected waveforms on the channels written out only (first reference
    probe): nothing compares them after the curation."""
    channels = final.channels_corrected[:1]
    final.waveforms_corrected = [final.waveforms_corrected[0].narrowed(channels[0])]
    final.channels_corrected = channels


def find_duplicate_units(data: Dataset, units: UnitFeatures,
                         s: Settings) -> duplicate_units.Duplicates:
    """The shared-spike test of the pairs of units of one session (kilomatch.duplicate_units,
    autoCuration.duplicate_share; 0: none tested)."""
    ac = s.autoCuration
    found = duplicate_units.find_duplicates(data.spike_times, units.session0, units.locations,
                                            ac.split_max_distance_um, ac.duplicate_share,
                                            units.shank)
    n = int(found.secondary.sum())
    if n:
        log.info("duplicate units: %d units share at least %.0f%% of their spikes (within "
                 "%g ms) with a unit of their session at most %g um away: one neuron whose "
                 "spikes the sorter counted twice, each tracked as a unit of its own (units.csv "
                 "duplicate_of names them)", n, 100 * ac.duplicate_share,
                 duplicate_units.DUPLICATE_LAG_MS, ac.split_max_distance_um)
    return found


def find_sorter_splits(labels: np.ndarray, units: UnitFeatures, data: Dataset, s: Settings):
    """The refractory test of the same-session pairs of the clusters ``labels`` (N,)
    (kilomatch.sorter_splits), or None when autoCuration.keep_sorter_splits is off."""
    if not s.autoCuration.keep_sorter_splits:
        return None
    splits = sorter_splits.find_splits(labels, units.session0, data.spike_times,
                                       s.autoCuration.refractory_ms, units.locations,
                                       s.autoCuration.split_max_distance_um, units.amplitude)
    if len(splits.pairs):
        log.info("sorter splits: %d of %d pairs of units of one session in a cluster look like "
                 "one neuron split by the sorter (estimated share %.2f); both units are kept",
                 int(splits.is_split.sum()), len(splits.pairs), splits.split_share)
    return splits


def find_alike_splits(units: UnitFeatures, final: RoundResult, data: Dataset,
                      s: Settings) -> sorter_splits.SplitEvidence | None:
    """The refractory test of the pairs of units of one session alike enough to be a good
    match across sessions (sorter_splits.alike_pairs, at the final clustering's weights and
    threshold): the pairs it judges one neuron are left out of the match probability's
    non-matches with the splits inside clusters. None when autoCuration.keep_sorter_splits
    is off or the final clustering has no threshold."""
    ac = s.autoCuration
    threshold = final.clustering.threshold
    if not ac.keep_sorter_splits or not np.isfinite(threshold):
        return None
    depth = final.corrected_depth

    def similarity(q):
        z = pair_similarities(units, final.feature_names, q, depth, final.waveforms_corrected,
                              final.channels_corrected)
        return weighted_similarity(z, final.clustering.weights)

    pairs = sorter_splits.alike_pairs(units.locations, units.session0, similarity, threshold,
                                      ac.split_max_distance_um, units.shank)
    if not len(pairs):
        return sorter_splits.SplitEvidence.empty()
    # tested on their own: the share of splits among these alike pairs is not that among
    # a cluster's pairs of one session (the curation's test, find_sorter_splits)
    found = sorter_splits.judge_pairs(pairs, data.spike_times, units.session0, ac.refractory_ms,
                                      units.locations, ac.split_max_distance_um, units.amplitude)
    log.info("sorter splits: %d of %d pairs of units of one session as alike as a good match "
             "look like one neuron split by the sorter (estimated share %.2f); they are not "
             "counted as known non-matches", int(found.is_split.sum()), len(pairs),
             found.split_share)
    return found


# Share of the same-session pairs (non-matches) whose probability sets the lowest level at
# which the probability may veto a cut (autoCuration.cut_probability).
NON_MATCH_QUANTILE = 0.9


def needs_probability(s: Settings) -> bool:
    """Whether a run learns the match probability: asked for, clustering by it, or a split of
    the curation that must be confirmed by it (autoCuration.cut_probability below 1)."""
    ac = s.autoCuration
    confirm = ac.cut_probability < 1 and (ac.auto_split or ac.position_split)
    return s.clustering.method == "probability" or s.clustering.match_probability or confirm


class Columns:
    """Columns (P,) each, read as one (P, F) array where rows are taken (``c[rows]``: an
    index array, a bool mask or a slice -> (n, F) float64), without a (P, F) copy."""

    def __init__(self, columns: list, n_rows: int):
        self.columns, self.n_rows = columns, n_rows

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple:
        return (self.n_rows, len(self.columns))

    def __getitem__(self, rows) -> np.ndarray:
        if not self.columns:
            return np.zeros((self.n_rows, 0))[rows]
        out = None
        for k, column in enumerate(self.columns):
            values = column[rows]
            if out is None:
                out = np.empty((values.shape[0], len(self.columns)))
            out[:, k] = values
        return out


def fit_probability(data: Dataset, units: UnitFeatures, final: RoundResult, s: Settings,
                    final_names: list, sorter_splits: np.ndarray | None = None):
    """The match probability of the final candidate pairs (kilomatch.linking): (links,
    evidence function), or None when the data are too few to fit it. sorter_splits: (J, 2)
    same-session pairs the refractory test judged one neuron (find_sorter_splits), left out
    of the known non-matches."""
    names = linking.evidence_features(final_names)
    depth = final.corrected_depth

    def similarities(q):
        if q is not final.pairs:
            return pair_similarities(units, names, q, depth, final.waveforms_corrected,
                                      final.channels_corrected)
        # the final clustering already holds some of the candidate pairs' similarities:
        # those columns are read from it, not copied (0.45 GB at 10^5 units)
        new = [n for n in names if n not in final.feature_names]
        extra = pair_similarities(units, new, q, depth, final.waveforms_corrected,
                                   final.channels_corrected)
        return Columns([final.pair_similarities[:, final.feature_names.index(n)]
                        if n in final.feature_names else extra[:, new.index(n)]
                        for n in names], len(q))

    positions = np.column_stack([units.locations[:, 0], depth, units.locations[:, 2]])
    n_spikes = np.array([len(t) for t in data.spike_times])
    fitted = linking.fit_links(final.pairs, similarities, positions, units.amplitude, n_spikes,
                               units.session0, units.shank, s.clustering.max_distance,
                               data.n_sessions, s.seed,
                               with_clusters=s.clustering.method == "probability",
                               not_non_matches=sorter_splits,
                               gap_prior=s.clustering.match_prior_by_gap,
                               derived=s.clustering.derived_non_matches,
                               sure=(final.clustering.good
                                     if s.clustering.derived_from == "clustering" else None),
                               max_session_gap=s.clustering.max_session_gap,
                               noise_share=units.noise_share)
    if fitted is None:
        log.warning("too few pairs to fit the match probability: no probability is reported "
                    "and the final clusters come from the weighted similarity")
        return None
    fitted[0].feature_names = names
    return fitted


def _cluster_probability(units, final, s, labels, links, evidence):
    """Every within-cluster pair of ``labels`` (Q, 2) and its match probability (Q,)."""
    q_pairs = curation.within_cluster_pairs(labels)
    q_link = may_link(units, final.corrected_depth, q_pairs, s.clustering.max_distance)
    return q_pairs, linking.within_cluster_probability(links, evidence, final.pairs, q_pairs,
                                                       q_link, len(labels))


def final_confidence(units, final, s, labels, links, evidence) -> np.ndarray:
    """Match confidence (N,) of the final clusters ``labels`` (linking.match_confidence)."""
    pairs, p = _cluster_probability(units, final, s, labels, links, evidence)
    other = across_sessions(pairs, units.session0)
    return linking.match_confidence(len(labels), pairs[other], p[other])


def across_sessions(pairs: np.ndarray, session: np.ndarray) -> np.ndarray:
    """(Q,) bool: which pairs (Q, 2) join units of different sessions. Two units of one
    session in a final cluster are a kept sorter split, not a match, and have no match
    probability: match confidence leaves them out."""
    return session[pairs[:, 0]] != session[pairs[:, 1]]


def curation_depth(units: UnitFeatures) -> np.ndarray:
    """(N,) um: each unit's recorded depth as the curation's positions read it
    (autoCuration.location_algorithm; before motion correction)."""
    locations = units.locations if units.curation_locations is None else \
        units.curation_locations
    return locations[:, 1]


def curation_positions(units: UnitFeatures, final: RoundResult) -> np.ndarray:
    """(N, 2) um: each unit's x and motion-corrected depth as the curation's distances read
    them: from ``units.curation_locations`` (autoCuration.location_algorithm) when set, the
    depth corrected by the final motion as ``final.corrected_depth`` is; else the units'
    locations and ``final.corrected_depth``."""
    if units.curation_locations is None:
        return np.column_stack([units.locations[:, 0], final.corrected_depth])
    x, y = units.curation_locations[:, 0], units.curation_locations[:, 1]
    return np.column_stack([x, y - final.motion.at(units.session0, y)])


def link_by_probability(units: UnitFeatures, final: RoundResult, s: Settings, links,
                        evidence, data: Dataset | None = None) -> curation.CurationResult:
    """Final clusters and curation from the match probability (clustering.method
    'probability'); with ``data`` (for its spike times) sorter splits are kept as set by
    autoCuration.keep_sorter_splits."""
    links.made_clusters = True
    q_pairs, q_p = _cluster_probability(units, final, s, links.labels, links, evidence)
    ac = s.autoCuration
    positions = curation_positions(units, final)
    splits = None if data is None else find_sorter_splits(links.labels, units, data, s)
    cur = curation.curate_by_probability(
        links.labels, units.session0, q_pairs, q_p, ac.link_probability, ac.auto_split,
        positions if ac.position_split else None, ac.position_gap_um,
        None if splits is None else splits.split_pairs())
    cur.splits = splits
    links.match_confidence = final_confidence(units, final, s, cur.labels, links, evidence)
    cur.links = links
    return cur


def subset_dataset(data: Dataset, members: np.ndarray) -> Dataset:
    """The units ``members`` of a dataset (same channels and sessions: a shank whose units
    all come from the first sessions still has every session, as its initial motion does)."""
    return Dataset(None, data.channel_locations, data.session_index[members],
                   [data.spike_times[k] for k in members],
                   None if data.peth is None else data.peth[members], data.channel_shanks,
                   data.path, sessions=data.n_sessions)


def subset_units(units: UnitFeatures, members: np.ndarray) -> UnitFeatures:
    """Per-unit features of the units ``members``."""
    rest = (None if v is None else v[members] for v in (
        units.peak_channel, units.amplitude, units.locations, units.acg, units.isi,
        units.peth, units.session0, units.shank, units.peak_waveform))
    return UnitFeatures(units.waveforms.subset(members), *rest, units.window_um,
                        None if units.time_shift is None else units.time_shift[members],
                        units.dead_channels, units.offset_sessions, units.inverted_sessions,
                        None if units.noise_share is None else units.noise_share[members],
                        units.temporal_projection,
                        None if units.curation_locations is None
                        else units.curation_locations[members],
                        None if units.firing_rate is None else units.firing_rate[members],
                        None if units.footprint_amplitude is None
                        else units.footprint_amplitude[members])


def merge_shanks(s: Settings, data: Dataset, units: UnitFeatures, parts: list) -> Result:
    """One result over every unit from per-shank results: cluster ids made unique across
    shanks (numbered in order of their lowest unit), -1 kept; per-shank details stay in
    ``shanks``."""
    idx = combine_labels([np.where(p.result.idx_cluster > 0, p.result.idx_cluster - 1, -1)
                          for p in parts], [p.units for p in parts], data.n_units)
    return Result(s, data, units, None, [], None, None, idx, matched_pairs(idx), shanks=parts)


# ----------------------------------------------------------------------------- run

def run(settings=None, *, write: bool = True) -> Result:
    """Run kilomatch: ``settings`` is a path to a settings file, a dict, or Settings.

    Returns a :class:`Result`; with ``write`` the outputs go to ``output_folder``, with the
    run's log in ``output_folder/kilomatch.log``.
    """
    t0 = time.perf_counter()
    setup_logging()
    with RunLog() as run_log, FigureWorkers() as figure_workers:
        s = load_settings(settings)
        with _blas_threads(s.blas_threads), threads_for_pairs(s.n_jobs):
            return _run(s, t0, write, run_log, figure_workers)


def _blas_threads(n: int):
    """Limit BLAS to ``n`` threads for the run (0: leave it). The last bits of the Kriging and
    similarity products depend on the thread count, so a fixed count also fixes the bytes."""
    if n <= 0:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(n, user_api="blas")


def _run(settings, t0: float, write: bool, run_log: RunLog,
         figure_workers: FigureWorkers) -> Result:
    stages = Stages()
    s = load_settings(settings)
    run_log.describe_run(s)
    for note in s.notes:
        log.info(note)
    listed = [f for r in s.motionEstimation.features for f in r] + list(s.clustering.features)
    # the waveforms' values are checked as unit_features reads them: one read of the file
    data = load_dataset(s.path_to_data, need_peth="PETH" in listed, scan_waveforms_now=False)
    log.info("loaded %d units, %d sessions, %d channels from %s", data.n_units, data.n_sessions,
             data.n_channels, data.path)
    rounds, final_names = feature_rounds(s, data.peth is not None)
    given = None
    if s.waveformCorrection.path_to_motion:
        n_shanks = 1 if data.channel_shanks is None else np.unique(data.channel_shanks).size
        given = load_given_motion(s.waveformCorrection.path_to_motion, data.n_sessions, n_shanks)
    if write:
        _check_output(s)
    stages.done("load")

    units = unit_features(data, s)  # raises on NaN waveforms: before the output is touched
    duplicates = find_duplicate_units(data, units, s)
    kinv = correction.kriging_inverse(data.channel_locations)
    if write:
        _prepare_output(s)
        run_log.open(s.output_folder)
        fingerprint.record(s)  # before any result, so a batch can tell a finished study
        figure_workers.start(figure_helpers(s.n_jobs, data.n_units))
    stages.done("features")
    shanks = np.unique(units.shank)
    # Columns of a given motion follow the probe's shanks, some of which may hold no unit.
    probe_shanks = [0] if data.channel_shanks is None else np.unique(data.channel_shanks).tolist()

    def given_for(shank):
        return None if given is None else given[:, probe_shanks.index(shank)]

    initials = initial_estimates(units, data.n_sessions, s, shanks, given is not None)
    align_sessions_in_time(data, units, s, _unit_displacement(units, shanks, initials,
                                                               given_for))
    widen_windows(data, units, s, [given_for(k) for k in shanks] if given is not None else
                  [st.motion.displacement() for st, _ in initials.values() if st is not None])
    if shanks.size == 1:
        result = track(data, units, s, rounds, final_names, given_for(shanks[0]), kinv, stages,
                       narrow=True, initial=initials.get(shanks[0]))
    else:
        parts = []
        for shank in shanks:
            members = np.flatnonzero(units.shank == shank)
            log.info("shank %d: %d units, tracked on their own", shank, members.size)
            part = track(subset_dataset(data, members), subset_units(units, members), s, rounds,
                         final_names, given_for(shank), kinv, narrow=True,
                         initial=initials.get(shank))
            parts.append(ShankPart(int(shank), members, part))
        units.waveforms = _narrowed_original(units, data, s)
        result = merge_shanks(s, data, units, parts)
        stages.done("tracking every shank")
    result.duplicates = duplicates
    result.run_time_s = time.perf_counter() - t0
    result.summary = summarize(result)
    lone_sessions.warn_lone_sessions(result.idx_cluster, data.session_index, data.n_sessions)
    if write:
        # The figures are drawn by helper processes (or a thread) while the export writes
        # (kilomatch.figure_worker); "figures" is then the time after the export.
        figure_workers.send(figure_jobs(result, data, s))
        export.write_all(result, assemble(result))
        stages.done("export")
        figure_workers.finish()
        stages.done("figures")
        result.run_time_s = time.perf_counter() - t0
        result.summary["run_time_s"] = round(result.run_time_s, 2)
    result.stages = stages.rows
    log.info(format_summary(result.summary))
    return result


def initial_estimates(units: UnitFeatures, n_sessions: int, s: Settings, shanks: np.ndarray,
                      motion_given: bool) -> dict:
    """{shank: motion_initial.start_motion of its units}, made before the tracking so that
    the channel windows can be widened to the motion first; empty when the motion is given."""
    if motion_given:
        return {}
    out = {}
    for shank in shanks:
        mine = units.shank == shank if shanks.size > 1 else slice(None)
        out[shank] = motion_initial.start_motion(units.locations[mine], units.amplitude[mine],
                                                 units.session0[mine], n_sessions, s)
    return out


def _unit_displacement(units: UnitFeatures, shanks: np.ndarray, initials: dict,
                       given_for) -> np.ndarray | None:
    """(N,) um: each unit's motion, from its shank's initial estimate or the motion given
    (given_for(shank): (S,) um or None); 0 where neither is known; None when no shank has
    either (motionEstimation.initial_estimate 'none')."""
    out, known = np.zeros(units.session0.size), False
    for shank in shanks:
        mine = units.shank == shank
        given, start = given_for(shank), initials.get(shank, (None, None))[0]
        if given is not None:
            out[mine] = np.asarray(given, dtype=np.float64)[units.session0[mine]]
        elif start is not None:
            out[mine] = start.motion.at(units.session0[mine], units.locations[mine, 1])
        known = known or given is not None or start is not None
    return out if known else None


def figure_jobs(result: Result, data: Dataset, s: Settings) -> list:
    """Every figure of a run as (png path, figure name, inputs): in ``output_folder/Figures``
    (one folder per shank when the shanks were tracked apart), with the calibration figure
    when the data carry ground truth."""
    figure_folder = Path(s.output_folder) / "Figures"
    gt = _ground_truth_neurons(data)
    jobs = []
    for part in shank_parts(result):
        where = figure_folder / f"Shank{part.shank}" if result.shanks else figure_folder
        inputs = figure_inputs(part.result, None if gt is None else gt[part.units])
        jobs += [(where / f"{name}.png", name, d) for name, d in inputs.items()]
    return jobs


# Helpers pay where the export is short and the figures are most of the run's end: at
# 1,615 units the export takes 0.2 s and the figures 1 s. At 10^5 units the export's 21 s
# hide the figures drawn in a thread, and two helpers' 150-230 MB count against the
# memory at the run's peak (7.5 -> 7.8 GB).
FIGURE_HELPERS_MAX_UNITS = 10_000


def figure_helpers(n_jobs: int, n_units: int) -> int:
    """Helper processes for the figures: two when the run may use two cores or more (the
    figures split about evenly between them) and the study holds at most
    FIGURE_HELPERS_MAX_UNITS units, else none (a thread draws them)."""
    return 2 if n_workers(n_jobs) >= 2 and n_units <= FIGURE_HELPERS_MAX_UNITS else 0


def _check_output(s: Settings) -> None:
    """Refuse an output folder inside the input folder, one that holds another study's input
    (its results would replace that study's channel_locations.npy and peth.npy), and one
    where a result's name is taken by a folder (before any heavy work)."""
    out = Path(s.output_folder)
    data = Path(s.path_to_data).resolve()
    if out.resolve() == data or data in out.resolve().parents:
        raise KilomatchError(f"output_folder {out} lies inside path_to_data {data}: the input "
                             "folder is never written to; choose another output_folder")
    # the input files no result shares a name with
    inputs = [name for name in (WAVEFORMS, SESSION_INDEX, SPIKE_TIMES) if (out / name).exists()]
    if inputs:
        raise KilomatchError(f"output_folder {out} holds a study's input ({', '.join(inputs)}): "
                             "its results would replace that study's files; choose another "
                             "output_folder")
    taken = [name for name in (LOG_FILE,) + export.RESULT_FILES if (out / name).is_dir()]
    if taken:
        raise KilomatchError(f"output_folder {out}: {', '.join(taken)} "
                             f"{'is a folder' if len(taken) == 1 else 'are folders'}, "
                             "where the run writes a file of that name; move or rename it")


def _prepare_output(s: Settings) -> None:
    out = Path(s.output_folder)
    _check_output(s)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "Figures").mkdir(exist_ok=True)
    except OSError as err:
        raise KilomatchError(f"cannot create output_folder {out}: {err}") from None
    export.clear_previous(out)


def summarize(r: Result) -> dict:
    idx = r.idx_cluster
    summary = {
        "units": int(r.data.n_units),
        "sessions": int(r.data.n_sessions),
        "clusters": int(idx.max()) if (idx > 0).any() else 0,
        "units_in_clusters": int((idx > 0).sum()),
        "matched_pairs": int(len(r.matched_pairs)),
        "motion_range_um": round(max(float(np.ptp(p.result.motion.displacement()))
                                     for p in shank_parts(r)), 2),
        "run_time_s": round(r.run_time_s, 2),
    }
    summary.update(motion_initial.summary_of_choices(
        [(p.shank, p.result.motion.choice) for p in shank_parts(r)], bool(r.shanks)))
    gt = _ground_truth_scores(r)
    if gt:
        summary.update(gt)
    return summary


def _ground_truth_neurons(data: Dataset) -> np.ndarray | None:
    """A simulator's true neuron of each unit (N,), when the data folder has one that fits."""
    path = data.path
    if path is None or not (Path(path) / "gt_neuron.npy").is_file():
        return None
    gt = _ground_truth_file(Path(path) / "gt_neuron.npy")
    return gt if gt is not None and gt.shape == (data.n_units,) and \
        gt.dtype.kind in "iuf" and np.isfinite(gt).all() else None


def _ground_truth_file(path: Path) -> np.ndarray | None:
    """A simulator's ground-truth array, or None with a warning when it cannot be read: it
    only scores the run, which must not fail on it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("%s: not read (%s); the run is not scored against it", path, err)
        return None


def _ground_truth_scores(r: Result) -> dict:
    """Accuracy against a simulator's ground truth, when the data folder has one."""
    gt = _ground_truth_neurons(r.data)
    if gt is None:
        return {}
    from . import metrics
    path = r.data.path
    scores = metrics.pair_scores(r.idx_cluster, gt, r.data.session_index)
    out = {f"gt_{k}": round(float(scores[k]), 4) for k in ("precision", "recall", "f1")}
    true = _ground_truth_file(Path(path) / "gt_motion.npy") \
        if (Path(path) / "gt_motion.npy").is_file() else None
    if true is not None and true.ndim >= 1 and true.dtype.kind in "iuf" and \
            np.isfinite(true).all() and true.shape[0] == r.data.n_sessions:
        try:
            errors = [metrics.motion_rms_error(p.result.motion.displacement(), true)
                      for p in shank_parts(r)]
        except KilomatchError as err:
            log.warning("%s: not compared with the motion (%s)", Path(path) / "gt_motion.npy",
                        err)
        else:
            out["gt_motion_rms_um"] = round(float(np.sqrt(np.mean(np.square(errors)))), 3)
    return out


def format_summary(summary: dict) -> str:
    lines = ["done: " + ", ".join(f"{summary[k]} {k.replace('_', ' ')}" for k in
                                  ("units", "sessions", "clusters", "matched_pairs")),
             f"      run time {summary['run_time_s']:.1f} s, motion range "
             f"{summary['motion_range_um']} um"]
    if "motion_source" in summary:
        lines.append(f"      motion: {summary['motion_source']} ({summary['motion_why']})")
    if "gt_f1" in summary:
        lines.append(f"      accuracy vs ground truth: precision {summary['gt_precision']:.3f}, "
                     f"recall {summary['gt_recall']:.3f}, F1 {summary['gt_f1']:.3f}"
                     + (f", motion RMS error {summary['gt_motion_rms_um']:.2f} um"
                        if "gt_motion_rms_um" in summary else ""))
    return "\n".join(lines)


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far (MB), where the platform tells."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_freed_memory() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim; elsewhere nothing).

    Arrays below glibc's mapping threshold (up to 32 MB: the blocks of the blocked loops)
    come from the heap, and what they leave free stays in this process: 0.8 GB after each
    motion round at 10^5 units, counted in the peak of every later step, whose large arrays
    are mapped apart from the heap."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


class Stages:
    """Wall time, CPU time of this process (its n_jobs workers not counted: on a busy machine
    the one to compare) and peak memory at the end of each step, logged and kept in
    Result.stages."""

    def __init__(self):
        self.rows = []
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def done(self, name: str) -> None:
        release_freed_memory()
        now, cpu = time.perf_counter(), time.process_time()
        peak = peak_memory_mb()
        self.rows.append({"stage": name, "seconds": round(now - self._last, 3),
                          "cpu_seconds": round(cpu - self._last_cpu, 3),
                          "peak_memory_mb": None if peak is None else round(peak, 1)})
        log.info("step %s: %.1f s (CPU %.1f s)%s", name, now - self._last, cpu - self._last_cpu,
                 "" if peak is None else f", peak memory so far {peak / 1024:.2f} GB")
        self._last, self._last_cpu = now, cpu
