"""What a run produces, as plain dataclasses: per-unit features, one matching round, the run's
result and its shanks. The pipeline builds them; the writers and figures read them. This module
imports no stage, so every module may import it without a cycle.

N units, P candidate pairs, F similarity features, S sessions, T samples, W window channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # names for the annotations only
    from .channel_windows import LocalWaveforms
    from .clustering import ClusteringResult
    from .curation import CurationResult
    from .load import Dataset
    from .motion import Motion
    from .settings import Settings


@dataclass
class UnitFeatures:
    """Per-unit features of the whole dataset (N units, C channels, T samples).

    waveforms: LocalWaveforms, each unit on its channel window, (N, W, T) float32 uV (shifted
    in time by ``time_shift``); peak_channel: (N,); amplitude: (N,) uV;
    locations: (N, 3) um; acg: (N, L); isi: (N, B); peth: (N, P) or None;
    session0: (N,) 0-based session; shank: (N,) shank of the peak channel (0 when one shank);
    peak_waveform: (N, T) float32 uV, each unit's waveform on its own peak channel as recorded
    (the match probability's Shape evidence), None if not made; window_um: the reach (um) of
    the channel windows of ``waveforms`` (waveformCorrection.window_um, or wider when the
    motion needed it), None if not known; time_shift: (N,) int64 samples each unit was moved
    earlier as it was read (centering_waveforms, align_sessions_in_time), None for none;
    dead_channels: (S, C) bool, the channels found dead in each session and filled in
    (kilomatch.dead_channels), None when none were; offset_sessions: (S,) bool, the
    sessions whose units had their channel offsets subtracted (kilomatch.channel_offsets),
    None when none had; inverted_sessions: (S,) bool, the sessions turned back to the
    others' sign (kilomatch.polarity), None when none was; noise_share: (N,) share of each
    unit's waveform variance near its peak that is noise (kilomatch.waveform_noise), None if
    not measured; temporal_projection: (T, T) float32, the projection every waveform was read
    through (denoise_waveforms, kilomatch.temporal_components), None for none. The waveforms
    here, the peak waveforms included, are the projected ones. curation_locations: (N, 3) um,
    the positions the curation's distances read when autoCuration.location_algorithm
    differs from spikeLocation's, None when they read ``locations``. firing_rate: (N,) spikes
    per ms, each unit's count over its session's span (kilomatch.firing_rates.unit_rates; the
    span over every unit of the session, all shanks), None if not computed.
    footprint_amplitude: (N,) uV, each unit's amplitude summed over the channels near its
    peak (features.footprint_amplitude), the amplitude the curation compares between units;
    None if not computed (the curation then compares ``amplitude``).
    """

    waveforms: LocalWaveforms
    peak_channel: np.ndarray
    amplitude: np.ndarray
    locations: np.ndarray
    acg: np.ndarray
    isi: np.ndarray
    peth: np.ndarray | None
    session0: np.ndarray
    shank: np.ndarray
    peak_waveform: np.ndarray | None = None
    window_um: float | None = None
    time_shift: np.ndarray | None = None
    dead_channels: np.ndarray | None = None
    offset_sessions: np.ndarray | None = None
    inverted_sessions: np.ndarray | None = None
    noise_share: np.ndarray | None = None
    temporal_projection: np.ndarray | None = None
    curation_locations: np.ndarray | None = None
    firing_rate: np.ndarray | None = None
    footprint_amplitude: np.ndarray | None = None

    def compared_amplitude(self) -> np.ndarray:
        """(N,) uV: the amplitude the curation compares between units (the footprint's,
        else the peak channel's)."""
        return self.amplitude if self.footprint_amplitude is None else self.footprint_amplitude


@dataclass
class RoundResult:
    """One matching pass at a given motion: candidate pairs, their similarities, clustering.

    pair_similarities: (P, F) Fisher z similarity of each pair for each of ``feature_names``
    (the columns the weights combine into ``clustering.similarity``)."""

    feature_names: list
    motion: Motion
    pairs: np.ndarray               # (P, 2)
    pair_similarities: np.ndarray   # (P, F) Fisher z per feature
    clustering: ClusteringResult
    corrected_depth: np.ndarray     # (N,) um
    waveforms_corrected: list | None = None  # K LocalWaveforms (N, W, T)
    channels_corrected: np.ndarray | None = None   # (K, N, n)
    good_count: int | None = field(default=None, repr=False)  # kept by drop_pair_arrays

    @property
    def pair_features(self) -> np.ndarray:
        """Former name of :attr:`pair_similarities` (kept for existing notebooks)."""
        return self.pair_similarities

    @property
    def n_good(self) -> int:
        """Number of good matches (kept when the pair arrays are dropped)."""
        if self.clustering.good is None:
            return self.good_count
        return int(self.clustering.good.sum())

    def drop_pair_arrays(self) -> None:
        """Free the per-pair arrays (P can be 10^8 at scale); counts and weights stay."""
        self.good_count = self.n_good
        self.pairs = self.pair_similarities = None
        self.clustering.similarity = self.clustering.good = None
        self.waveforms_corrected = self.channels_corrected = None


@dataclass
class Result:
    """What a run returns (and writes). idx_cluster: (N,) -1 or 1..K; matched_pairs: (M, 2).

    With several shanks, ``shanks`` holds each shank's own Result and motion, rounds, final
    and curated are None here (see :func:`shank_parts`).
    """

    settings: Settings
    data: Dataset
    units: UnitFeatures
    motion: Motion | None
    rounds: list
    final: RoundResult | None
    curated: CurationResult | None
    idx_cluster: np.ndarray
    matched_pairs: np.ndarray
    run_time_s: float = 0.0
    summary: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)  # per step: wall and CPU seconds, peak memory (MB)
    shanks: list = field(default_factory=list)  # ShankPart per shank, when more than one
    # the shared-spike test of the pairs of units of one session (duplicate_units.Duplicates,
    # every unit of the probe), None when the run was not made by pipeline.run
    duplicates: object = None


@dataclass
class ShankPart:
    """One shank of a multi-shank run: its id, its units' global indices, and its own Result
    (motion, weights, threshold, curation), computed on its units alone."""

    shank: int
    units: np.ndarray
    result: Result


def shank_parts(result: Result) -> list:
    """The shanks of a result; a single-shank run is one part holding every unit."""
    if result.shanks:
        return result.shanks
    return [ShankPart(0, np.arange(result.data.n_units), result)]
