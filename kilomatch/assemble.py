"""The arrays a run writes, put together from its shanks in input unit order.

Each shank of a multi-shank probe is tracked on its own (``Result.shanks``); the result files
cover every unit. :func:`assemble` gathers the per-shank values into global arrays (cluster ids
unique across shanks, unit ids global, per-shank values on a last axis of length n_shanks) so
that :mod:`kilomatch.export` only has to write them. A single-shank run is one part.

N units, n compared channels, T samples, S sessions, F similarity features, P candidate pairs,
R removed pairs, K shanks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .channel_windows import LocalWaveforms, StoredWaveforms
from .clustering import combine_labels, renumber, same_cluster
from .duplicate_units import Duplicates
from .features import nearest_channels
from .linking import match_table
from .results import Result, shank_parts
from .sorter_splits import SplitEvidence


@dataclass
class RoundArrays:
    """One motion round of one shank, in global unit ids (for MotionRound{k}.npz)."""

    feature_names: list
    pairs: np.ndarray               # (P, 2)
    pair_similarities: np.ndarray   # (P, F) Fisher z
    similarity: np.ndarray          # (P,) weighted
    good_match: np.ndarray          # (P,) bool
    idx_cluster: np.ndarray         # (N_shank,) 1..K, -1 none (the round's HDBSCAN labels)
    weights: np.ndarray             # (F,)
    threshold: float
    motion: np.ndarray              # (S,) um
    motion_ci: np.ndarray           # (S, 2) um


@dataclass
class RunArrays:
    """Every array of the result files, in input unit order.

    Per-unit: waveforms (gathered from unit_waveforms when read), waveforms_corrected (N, n, T)
    float32 uV; waveform_channels,
    waveform_channels_corrected (N, n); corrected_depth (N,) um; idx_cluster_clustering (N,)
    final clustering before curation, idx_cluster_after_conflicts, idx_cluster_before_join
    (N,) (the curated clusters before the probability joined any) and
    idx_cluster_before_in_turn (N,) (before the curation joined groups recorded in turn),
    all 1..K or -1.
    Per shank (last axis K when K > 1, else dropped): weights (F[, K]), thresholds (K,),
    n_iter (K,) and converged (K,) of IHDBSCAN,
    motion (S[, K]) um, motion_ci (S, 2[, K]) um, motion_linear (S, 2[, K]) or None,
    motion_depth (S, D[, K]) um, the whole motion of each session (rigid or linear, and its
    bend) at the depths motion_depth_um (D,) um, or both None when no shank's motion bends,
    split_thresholds (K,) and split_on (K,) str ('similarity' or 'probability': what the
    removals and split thresholds are measured in), amplitude_steps (K,) (the ratio of two
    sides' median amplitudes beyond which a cluster was cut in time; inf where no such cut
    was tried). Match probability (kilomatch.linking,
    NaN where a shank had too few pairs to fit it): probability (P,) of each candidate pair,
    pair_probability (P,) the same from the pair's evidence alone (before
    linking.calibrate_to_clusters; the probability where that did not run),
    match_confidence (N,) of each unit in its final cluster, match_table (columns of
    MatchTable.csv, or None when no shank has a probability). Candidate pairs of every shank: pairs (P, 2), pair_similarities
    (P, F), similarity (P,), good_match (P,), pair_shank (P,), same_cluster_clustering and
    same_cluster_final (P,) (both units in one cluster before / after curation). Curation: removed_pairs (R, 2),
    removed_reason (R,), removed_probability (R,) (NaN without a probability),
    removed_distance_ratio (R,) (distance over the spread of matches, NaN without), kept_pairs
    (J, 2) (cut by a split, kept together by the probability), cut_probability (K,) (the
    mean probability below which a cut stood; NaN when no probability confirmed the cuts);
    splits: the sorter-split test of the same-session pairs of the clusters
    (kilomatch.sorter_splits.SplitEvidence, in global unit ids; empty when it was off);
    alike_splits: the same test of the pairs of one session as alike as a good match, whose
    splits were left out of the match probability's known non-matches; duplicates: the
    shared-spike test of the pairs of one session (kilomatch.duplicate_units.Duplicates).
    Motion rounds per shank: round_motion (list of (rounds, S)),
    round_good_matches (list of (rounds,)), rounds (list of lists of RoundArrays, filled only
    when the round pair arrays were kept).
    """

    shank_ids: np.ndarray
    feature_names: np.ndarray
    unit_waveforms: LocalWaveforms
    waveform_channels: np.ndarray
    waveforms_corrected: np.ndarray
    waveform_channels_corrected: np.ndarray
    corrected_depth: np.ndarray
    weights: np.ndarray
    thresholds: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    motion: np.ndarray
    motion_ci: np.ndarray
    motion_linear: np.ndarray | None
    motion_depth: np.ndarray | None
    motion_depth_um: np.ndarray | None
    pairs: np.ndarray
    pair_similarities: np.ndarray
    similarity: np.ndarray
    good_match: np.ndarray
    pair_shank: np.ndarray
    same_cluster_clustering: np.ndarray
    same_cluster_final: np.ndarray
    idx_cluster_clustering: np.ndarray
    idx_cluster_after_conflicts: np.ndarray
    idx_cluster_before_join: np.ndarray
    idx_cluster_before_in_turn: np.ndarray
    removed_pairs: np.ndarray
    removed_reason: np.ndarray
    removed_probability: np.ndarray
    removed_distance_ratio: np.ndarray
    kept_pairs: np.ndarray
    cut_probability: np.ndarray
    splits: SplitEvidence
    alike_splits: SplitEvidence
    duplicates: Duplicates
    split_thresholds: np.ndarray
    split_on: np.ndarray
    amplitude_steps: np.ndarray
    probability: np.ndarray
    pair_probability: np.ndarray
    match_confidence: np.ndarray
    match_table: dict | None
    round_motion: list
    round_good_matches: list
    rounds: list

    @property
    def n_shanks(self) -> int:
        return len(self.shank_ids)

    @property
    def waveforms(self) -> np.ndarray:
        """(N, n, T) float32 uV: each unit's waveform on ``waveform_channels``, gathered when
        read so that this copy exists only while it is written (about 1 GB at 10^5 units),
        or the units' own values when a run already kept them on those channels only."""
        return _on_channels(self.unit_waveforms, self.waveform_channels)

    def waveforms_to_write(self):
        """What waveforms.npy is written from: the units' stored waveforms, read block by
        block (channel_windows.StoredWaveforms), when a run let them go; else ``waveforms``."""
        w = self.unit_waveforms
        if isinstance(w, StoredWaveforms) and np.array_equal(w.channels, self.waveform_channels):
            return w
        return self.waveforms


def _on_channels(waveforms: LocalWaveforms, channels: np.ndarray) -> np.ndarray:
    """Every unit's waveform on its channels (N, n): (N, n, T), without a copy when the
    windows are those channels (LocalWaveforms.narrowed)."""
    if np.array_equal(waveforms.channels, channels):
        return waveforms.values
    return waveforms.on(np.arange(waveforms.n_units), channels)


def output_channels(peak_channel: np.ndarray, channel_locations: np.ndarray,
                    n_nearest: int) -> np.ndarray:
    """The channels ``waveforms.npy`` holds: the n_nearest nearest each unit's peak, (N, n)."""
    return nearest_channels(channel_locations, peak_channel, n_nearest)


# Depths at which motion_depth.npy gives a bent motion: half the bend's knot spacing apart.
DEPTH_GRID_UM = 50.0


def depth_grid(depth: np.ndarray) -> np.ndarray:
    """(D,) um: every DEPTH_GRID_UM over the units' depths ``depth`` (N,) um."""
    lo = np.floor(depth.min() / DEPTH_GRID_UM) * DEPTH_GRID_UM
    hi = np.ceil(depth.max() / DEPTH_GRID_UM) * DEPTH_GRID_UM
    return np.arange(lo, hi + DEPTH_GRID_UM / 2, DEPTH_GRID_UM)


def motion_on_grid(motion, grid: np.ndarray) -> np.ndarray:
    """(S, D) um: the motion of each session at each depth of ``grid`` (D,) um, with mean 0
    over the sessions at every depth (a shift or stretch that every session shares moves no
    unit against another; each part of the motion fixes its gauge its own way)."""
    n = motion.offset.size
    sessions = np.repeat(np.arange(n), grid.size)
    out = motion.at(sessions, np.tile(grid, n)).reshape(n, grid.size)
    return out - out.mean(axis=0)


def _stack_shanks(values: list) -> np.ndarray:
    """Per-shank arrays side by side on a last axis; one shank keeps its own shape."""
    return values[0] if len(values) == 1 else np.stack(values, axis=-1)


def assemble(result: Result) -> RunArrays:
    """The arrays :func:`kilomatch.export.write_all` writes, from a run's (per-shank) results."""
    units, data = result.units, result.data
    parts = shank_parts(result)
    n = units.waveforms.shape[0]
    n_near = result.settings.waveformCorrection.n_nearest_channels
    locs = data.channel_locations

    # Per-unit values that each shank computed on its own units, put back in unit order.
    ch_raw = output_channels(units.peak_channel, locs, n_near)
    depth = np.zeros(n)
    # one part holding every unit in order: its arrays are the run's own, no copies
    whole = len(parts) == 1 and np.array_equal(parts[0].units, np.arange(n))
    if whole:
        final = parts[0].result.final  # no copy of the waveforms when kept narrowed
        ch_corr = final.channels_corrected[0]
        wf_corr = _on_channels(final.waveforms_corrected[0], ch_corr)
        depth[:] = final.corrected_depth
    else:
        ch_corr = np.zeros((n, min(n_near, len(locs))), np.int64)
        wf_corr = np.zeros((n, ch_corr.shape[1], units.waveforms.shape[2]), np.float32)
        for part in parts:
            final = part.result.final
            ch = final.channels_corrected[0]
            ch_corr[part.units] = ch
            wf_corr[part.units] = _on_channels(final.waveforms_corrected[0], ch)
            depth[part.units] = final.corrected_depth

    clusterings = [p.result.final.clustering for p in parts]
    motions = [p.result.motion for p in parts]
    curated = [p.result.curated for p in parts]
    members = [p.units for p in parts]
    # written when the motion of some shank is linear (linear_correction, or chosen by a
    # round: waveformCorrection.linear_min_um)
    linear = result.settings.waveformCorrection.linear_correction or any(
        m.linear for m in motions)
    # written when the motion of some shank bends (waveformCorrection.bend_min_um)
    grid = depth_grid(units.locations[:, 1]) if any(m.bend is not None for m in motions) \
        else None
    if whole:
        pairs = parts[0].result.final.pairs  # unit ids are already global
    else:
        pairs = np.vstack([p.units[p.result.final.pairs] for p in parts]).reshape(-1, 2)
    # Clusters before curation: those of the probability where it made them.
    made = [k.links is not None and k.links.made_clusters for k in curated]
    before = combine_labels([k.links.labels if m else c.labels
                             for c, k, m in zip(clusterings, curated, made)], members, n)
    confidence = np.full(n, np.nan)
    for part, c in zip(parts, curated):
        if c.links is not None:
            confidence[part.units] = c.links.match_confidence
    positions = np.column_stack([units.locations[:, 0], depth, units.locations[:, 2]])
    return RunArrays(
        shank_ids=np.array([p.shank for p in parts]),
        feature_names=np.array(parts[0].result.final.feature_names),
        unit_waveforms=units.waveforms,
        waveform_channels=ch_raw,
        waveforms_corrected=wf_corr,
        waveform_channels_corrected=ch_corr,
        corrected_depth=depth,
        weights=_stack_shanks([c.weights for c in clusterings]),
        thresholds=np.array([c.threshold for c in clusterings]),
        n_iter=np.array([c.n_iter for c in clusterings]),
        converged=np.array([c.converged for c in clusterings]),
        motion=_stack_shanks([m.displacement() for m in motions]),
        motion_ci=_stack_shanks([np.column_stack([m.ci_low, m.ci_high]) for m in motions]),
        motion_linear=_stack_shanks([np.column_stack([m.slope, m.offset]) for m in motions])
        if linear else None,
        motion_depth=_stack_shanks([motion_on_grid(m, grid) for m in motions])
        if grid is not None else None,
        motion_depth_um=grid,
        pairs=pairs,
        pair_similarities=_joined([p.result.final.pair_similarities for p in parts]),
        similarity=_joined([c.similarity for c in clusterings]),
        good_match=_joined([c.good for c in clusterings]),
        pair_shank=_joined([np.broadcast_to(np.int64(p.shank), len(p.result.final.pairs))
                            for p in parts]),
        same_cluster_clustering=same_cluster(before, pairs),
        same_cluster_final=same_cluster(result.idx_cluster, pairs),
        idx_cluster_clustering=before,
        idx_cluster_after_conflicts=combine_labels(
            [c.labels_after_conflicts for c in curated], members, n),
        idx_cluster_before_join=combine_labels(
            [c.labels if c.labels_before_join is None else c.labels_before_join
             for c in curated], members, n),
        idx_cluster_before_in_turn=combine_labels(
            [c.labels if c.labels_before_in_turn is None else c.labels_before_in_turn
             for c in curated], members, n),
        removed_pairs=np.vstack([p.units[c.removed_pairs]
                                 for p, c in zip(parts, curated)]).reshape(-1, 2),
        removed_reason=np.concatenate([c.removed_reason for c in curated]),
        removed_probability=_per_removed_pair(curated, "removed_probability"),
        removed_distance_ratio=_per_removed_pair(curated, "removed_distance_ratio"),
        cut_probability=np.array([c.cut_probability for c in curated]),
        kept_pairs=np.vstack([p.units[c.kept_pairs]
                              for p, c in zip(parts, curated)]).reshape(-1, 2),
        splits=_splits([(p.units, c.splits) for p, c in zip(parts, curated)]),
        alike_splits=_splits([(p.units, c.alike_splits) for p, c in zip(parts, curated)]),
        duplicates=Duplicates.none(n) if result.duplicates is None else result.duplicates,
        split_thresholds=np.array([c.threshold for c in curated]),
        split_on=np.array(["probability" if m else "similarity" for m in made]),
        amplitude_steps=np.exp([c.amplitude_step for c in curated]),
        probability=np.concatenate([
            np.full(len(p.result.final.pairs), np.nan) if c.links is None
            else c.links.candidate_probability for p, c in zip(parts, curated)]
        ).astype(np.float32),
        pair_probability=np.concatenate([
            np.full(len(p.result.final.pairs), np.nan) if c.links is None
            else c.links.own_probability for p, c in zip(parts, curated)]
        ).astype(np.float32),
        match_confidence=confidence,
        match_table=match_table([(p.units, p.result.final.pairs, c.links)
                                 for p, c in zip(parts, curated)], result.idx_cluster,
                                data.session_index, positions, units.amplitude),
        round_motion=[np.array([m.displacement() for _, m in p.result.rounds]).reshape(
            len(p.result.rounds), data.n_sessions) for p in parts],
        round_good_matches=[np.array([r.n_good for r, _ in p.result.rounds], dtype=np.int64)
                            for p in parts],
        rounds=[[_round_arrays(r, m, p.units) for r, m in p.result.rounds
                 if r.pairs is not None] for p in parts],
    )


def _joined(arrays: list) -> np.ndarray:
    """The shanks' arrays one after another; for one shank the array itself, not a copy
    (a run of 10^5 units on one shank has 28 M candidate pairs)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _splits(parts: list) -> SplitEvidence:
    """The sorter-split tests of every shank ((members (n,), SplitEvidence or None) each) in
    global unit ids; the split share is that of the first shank that tested a pair."""
    tested = [(m, e) for m, e in parts if e is not None and len(e.pairs)]
    if not tested:
        return SplitEvidence.empty()
    return SplitEvidence(
        np.vstack([m[e.pairs] for m, e in tested]),
        np.concatenate([e.coincidences for _, e in tested]),
        np.concatenate([e.expected for _, e in tested]),
        np.concatenate([e.posterior for _, e in tested]),
        np.concatenate([e.is_split for _, e in tested]), tested[0][1].split_share)


def _round_arrays(r, motion, members: np.ndarray) -> RoundArrays:
    """A kept motion round in global unit ids; its HDBSCAN labels numbered 1..K by lowest unit."""
    return RoundArrays(list(r.feature_names), members[r.pairs], r.pair_similarities,
                       r.clustering.similarity, r.clustering.good,
                       renumber(r.clustering.labels, start=1), r.clustering.weights,
                       float(r.clustering.threshold), motion.displacement(),
                       np.column_stack([motion.ci_low, motion.ci_high]))


def _per_removed_pair(curated: list, name: str) -> np.ndarray:
    """(R,) the CurationResult attribute ``name`` of every removed pair over the shanks, NaN
    where a shank has none."""
    return np.concatenate([np.full(len(c.removed_pairs), np.nan) if getattr(c, name) is None
                           else getattr(c, name) for c in curated])
