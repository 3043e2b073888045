"""A first motion estimate that needs no functional identity, and the checks of the motion
rounds against it (issue 17).

Every session has its units' positions and amplitudes. A neuron keeps its place in the
tissue and, roughly, its amplitude, so the amplitude-weighted density of units over
(log amplitude, x, depth) in one session is the density of another session shifted along the
probe by the difference of their motions. Each pair of sessions is registered by
cross-correlating these densities over depth shifts (as activity-based registration does with
spike densities: Kilosort, DREDge); the pairwise offsets are then solved for one displacement per
session by robust (iteratively reweighted) least squares. With depth-dependent motion, blocks
of the probe are registered on their own and a line is fitted through their displacements.

This does not use ACGs, ISIs, PETHs or waveforms, so it holds where those say little (short
sessions, low rates, no task) and it gives the motion rounds a start that is not zero.
Conventions follow :mod:`kilomatch.motion`: ``motion[s]`` is the apparent shift (um) of unit
depths in session s, with mean 0 over sessions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree

from .motion import Motion, solve_pair_offsets

log = logging.getLogger("kilomatch")

# Density grid. Depth: 2 um bins smoothed by 5 um, about the scatter of a neuron's estimated
# depth across sessions (the peak is refined below the bin). x: 15 um bins smoothed by 8 um
# (the columns of NP1/NP2 are 16-32 um apart). Log amplitude: bins of 0.25 smoothed by 0.2,
# wider than the day-to-day amplitude change, narrow enough to tell a 60 uV unit from a
# 200 uV one at the same place.
DEPTH_BIN_UM, DEPTH_SIGMA_UM = 2.0, 5.0
X_BIN_UM, X_SIGMA_UM = 15.0, 8.0
LOG_AMP_BIN, LOG_AMP_SIGMA = 0.25, 0.2
# Two units of different sessions are counted as the same neuron by position alone when their
# corrected positions are mutual nearest neighbours this close (um).
MATCH_RADIUS_UM = 10.0
# A round's motion that disagrees with the initial estimate is set aside only when, on the
# session pairs where they disagree, it lines the units up less than this fraction as well.
# On well-populated sessions a wrong offset (more than the 10 um tolerance away) keeps under
# a quarter of the correlation (Gaussian smoothing of 5 um); where few units leave the
# densities ambiguous, two offsets score alike and the round's matches should decide.
SUPPORT_RATIO = 0.5
# Depth blocks of the depth-dependent estimate: units of each block are registered on their own.
N_DEPTH_BLOCKS = 3
# A session with fewer units than this cannot be registered: one unit lines up with any other
# unit of its size somewhere within the shifts searched.
MIN_UNITS = 5


@dataclass
class Registration:
    """Pairwise registration of the sessions' unit densities.

    pairs: (Q, 2) 0-based sessions (a, b), a < b; shifts: (L,) um, the depth shifts tried;
    correlation: (Q, L) normalised cross-correlation of session b's density shifted by each
    shift against session a's (peaks where shift = motion_b - motion_a).
    """

    pairs: np.ndarray
    shifts: np.ndarray
    correlation: np.ndarray

    def support(self, displacement: np.ndarray, sessions=None) -> float:
        """Mean correlation of the session pairs at the offsets a motion (S,) implies: how well
        it superposes the sessions' units; with ``sessions`` (0-based), only the pairs that
        touch them. Offsets outside the searched range count 0."""
        offsets = displacement[self.pairs[:, 1]] - displacement[self.pairs[:, 0]]
        touch = (np.ones(len(self.pairs), bool) if sessions is None
                 else np.isin(self.pairs, sessions).any(axis=1))
        values = [np.interp(d, self.shifts, c, left=0.0, right=0.0)
                  for d, c, t in zip(offsets, self.correlation, touch) if t]
        return float(np.mean(values)) if values else 0.0


@dataclass
class InitialMotion:
    """The initial estimate: ``motion`` (with a band), the registration it came from and how
    many unit pairs it superposes (``implied_matches``). ``units``: the units' x, depth (N,)
    um and 0-based sessions (N,) it was made from, and the session pairs registered (Q, 2),
    so that a depth-dependent motion can be judged unit by unit (None: not kept)."""

    motion: Motion
    registration: Registration
    implied_matches: int
    units: tuple | None = None

    def superposed(self, motion: Motion, sessions: np.ndarray) -> int | None:
        """How many unit pairs of the session pairs that touch ``sessions`` (0-based) a
        motion superposes (:func:`superposed_pairs`, each unit at its own depth's motion);
        None when the units are not kept."""
        if self.units is None:
            return None
        x, depth, session0, pairs = self.units
        touch = pairs[np.isin(pairs, sessions).any(axis=1)]
        return implied_matches(x, depth, session0, motion.offset.size,
                               motion.at(session0, depth), touch)


def session_pairs(n_sessions: int, max_session_gap: int) -> np.ndarray:
    """(Q, 2) pairs of 0-based sessions a < b at most max_session_gap apart (0: all)."""
    a, b = np.triu_indices(n_sessions, k=1)
    keep = (b - a <= max_session_gap) if max_session_gap > 0 else np.ones(a.size, bool)
    return np.column_stack([a[keep], b[keep]])


def density_edges(x: np.ndarray, amplitude: np.ndarray, depth_range: tuple) -> tuple:
    """Bin edges (log amplitude, x um, depth um) shared by every session's density."""
    log_amp = np.log(np.maximum(amplitude, 1.0))
    return (np.arange(log_amp.min() - 2 * LOG_AMP_SIGMA,
                      log_amp.max() + 2 * LOG_AMP_SIGMA + LOG_AMP_BIN, LOG_AMP_BIN),
            np.arange(x.min() - 2 * X_SIGMA_UM, x.max() + 2 * X_SIGMA_UM + X_BIN_UM, X_BIN_UM),
            np.arange(depth_range[0], depth_range[1] + DEPTH_BIN_UM, DEPTH_BIN_UM))


def unit_density(x: np.ndarray, depth: np.ndarray, amplitude: np.ndarray, edges: tuple
                 ) -> np.ndarray:
    """(A, X, D) amplitude-weighted density of one session's units over log amplitude, x and
    depth (bins ``edges``), smoothed over amplitude and x (over depth by
    :func:`register_sessions`, where it is cheaper). x, depth: (n,) um; amplitude: (n,) uV."""
    # Larger units are localised better and are seen in more sessions: weigh them more, but
    # only by the square root so that a few big units do not decide alone.
    weight = np.sqrt(np.maximum(amplitude, 0.0))
    points = np.column_stack([np.log(np.maximum(amplitude, 1.0)), x, depth])
    density = np.histogramdd(points, bins=edges, weights=weight)[0].astype(np.float32)
    density = gaussian_filter1d(density, LOG_AMP_SIGMA / LOG_AMP_BIN, axis=0, mode="constant")
    return gaussian_filter1d(density, X_SIGMA_UM / X_BIN_UM, axis=1, mode="constant")


def register_sessions(x: np.ndarray, depth: np.ndarray, amplitude: np.ndarray,
                      session0: np.ndarray, n_sessions: int, pairs: np.ndarray,
                      max_shift_um: float) -> Registration:
    """Normalised cross-correlation over depth shifts of the unit densities of every session
    pair ``pairs`` (Q, 2). x, depth: (N,) um; amplitude: (N,) uV; session0: (N,) 0-based.
    Shifts run from -max_shift_um to +max_shift_um in DEPTH_BIN_UM steps."""
    edges = density_edges(x, amplitude, (float(depth.min()) - max_shift_um,
                                         float(depth.max()) + max_shift_um))
    n_depth = edges[2].size - 1
    lag = int(np.ceil(max_shift_um / DEPTH_BIN_UM))
    size = 1 << int(np.ceil(np.log2(n_depth + lag + 1)))  # no wrap-around within +-lag
    # Depth smoothing of both densities, as one Gaussian of variance 2 sigma^2 on the product;
    # it leaves nothing above `keep` frequencies, which need not be stored (memory at scale).
    freq = np.fft.rfftfreq(size, d=DEPTH_BIN_UM)
    smooth = np.exp(-(2 * np.pi * freq * DEPTH_SIGMA_UM) ** 2)
    keep = max(int(np.count_nonzero(smooth > 1e-9)), 2)
    smooth = smooth[:keep]
    spectra = []
    for s in range(n_sessions):
        mine = session0 == s
        density = unit_density(x[mine], depth[mine], amplitude[mine], edges)
        spectra.append(np.fft.rfft(density.reshape(-1, n_depth), n=size, axis=-1)[:, :keep])

    def correlate(a, b):  # sum_y A(y) B(y + s) for every s: the inverse transform of conj(A) B
        return np.fft.irfft((np.conj(spectra[a]) * spectra[b]).sum(axis=0) * smooth, n=size)

    norms = np.sqrt([max(correlate(s, s)[0], 0.0) for s in range(n_sessions)])
    lags = np.arange(-lag, lag + 1)
    correlation = np.zeros((len(pairs), lags.size))
    for q, (a, b) in enumerate(pairs):
        if norms[a] > 0 and norms[b] > 0:
            correlation[q] = correlate(a, b)[lags % size] / (norms[a] * norms[b])
    return Registration(pairs, lags * DEPTH_BIN_UM, correlation)


def _peak(shifts: np.ndarray, values: np.ndarray) -> float:
    """Shift of the highest value, refined by a parabola through it and its neighbours."""
    k = int(np.argmax(values))
    if 0 < k < values.size - 1:
        left, mid, right = values[k - 1:k + 2]
        curve = left - 2 * mid + right
        if curve < 0:
            return float(shifts[k] + 0.5 * (left - right) / curve * (shifts[1] - shifts[0]))
    return float(shifts[k])


def best_registration(reg: Registration, n_sessions: int, usable: np.ndarray,
                      units: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`solve_registration` from two starts, all pairs weighted by their peaks and no
    motion, and the solution that superposes the sessions' units better: with ``units`` (x,
    depth (N,) um, 0-based sessions (N,)), the one that superposes more unit pairs
    (:func:`implied_matches` over ``reg.pairs``), then the higher
    :meth:`Registration.support`; the first on a tie.

    Where many pairs' peaks lock onto the wrong units, the reweighting from all pairs can
    settle on a motion that superposes the units worse than none (j_many_sessions +22000,
    24 sessions: blocks of sessions 221 um apart, support 0.035 against 0.134 from no
    motion, which lands within 1.2 um of the truth); a large drift is found from the first
    start. Units before support: support is the mean over session pairs, each counted
    alike, and on sparse studies (16 sessions of about 20 units) a wrong solution lined the
    many distant pairs' few units up by chance a little better than the truth did (0.147
    against 0.144, sessions 1-3 placed 150 um off) while it superposed fewer units (483
    against 551; in 3 of 32 such studies the two criteria chose differently, the units'
    count right each time; benchmarks/RESULTS.md, "Session 68")."""
    found = [solve_registration(reg, n_sessions, usable, start=start)
             for start in (None, np.zeros(n_sessions))]
    if np.array_equal(found[0][0], found[1][0]):
        return found[0]  # nothing to choose

    def score(displacement):
        support = reg.support(displacement)
        if units is None:
            return (support,)
        x, depth, session0 = units
        return (implied_matches(x, depth, session0, n_sessions, displacement[session0],
                                reg.pairs), support)

    return max(found, key=lambda solution: score(solution[0]))  # the first on a tie


def solve_registration(reg: Registration, n_sessions: int, usable: np.ndarray,
                       n_iter: int = 10, start: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per-session displacement (S,) um, mean 0, and its 95% half-width (S,) um, from the
    peaks of the pairwise correlations, by least squares reweighted against outlying pairs.
    Only pairs of ``usable`` (S,) bool sessions count; the others stay at 0.

    A pair's weight is its peak correlation (how alike the two sessions' units are) times a
    Tukey weight of its residual, so a pair whose peak locked onto the wrong units is dropped.
    The first weights are the peaks alone, or with ``start`` (S,) um the Tukey weights of
    the residuals from that motion.
    """
    offsets = np.array([_peak(reg.shifts, c) for c in reg.correlation])
    a, b = reg.pairs[:, 0], reg.pairs[:, 1]
    strength = np.maximum(reg.correlation.max(axis=1, initial=0.0), 0.0) * (usable[a] & usable[b])
    weight = strength.copy() if start is None else strength * _tukey(
        offsets - (start[b] - start[a]), strength)
    displacement = np.zeros(n_sessions)
    for _ in range(n_iter):
        displacement = solve_pair_offsets(a, b, offsets, weight, n_sessions)
        new = strength * _tukey(offsets - (displacement[b] - displacement[a]), strength)
        if np.allclose(new, weight):
            break
        weight = new
    residual = offsets - (displacement[b] - displacement[a])
    used = weight > 0
    # Half-width: the weighted residual spread of the pairs touching each session, shrunk by
    # how many pairs tie it to the others (the pairwise offsets share errors, so floor it).
    sq = np.bincount(np.r_[a, b], np.r_[weight, weight] * np.r_[residual, residual] ** 2,
                     n_sessions)
    w = np.bincount(np.r_[a, b], np.r_[weight, weight], n_sessions)
    n = np.bincount(np.r_[a[used], b[used]], minlength=n_sessions)
    spread = np.sqrt(np.divide(sq, w, out=np.zeros(n_sessions), where=w > 0))
    half = 1.96 * spread / np.sqrt(np.maximum(n, 1)) + DEPTH_BIN_UM
    return displacement, half


def _tukey(residual: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Tukey's biweight of pairwise residuals (um), at 4.685 robust scales: the median
    absolute residual of the pairs weighted by their peak ``strength`` (as they count in
    the fit), never below the depth smoothing's reach.

    Weighted, because where sessions share few units most session pairs' peaks are chance
    alignments: on sparse studies (16 sessions of about 20 units, 30% turnover) the plain
    median residual, even from the true motion, was tens of um and every pair kept its
    weight: the estimate lay 14-276 um off the truth on 9 of 32 studies, and 13-147 um off
    on j_many_sessions at four of the suite's five seed offsets and at +22000. The pairs
    that share units peak higher, and they then set the scale (with the choice of
    best_registration, all 32 within 1.9 um and j within 1.3 um; benchmarks/RESULTS.md,
    "Session 68")."""
    size = np.abs(residual)
    counted = strength > 0
    # by hand: np.quantile takes weights only from numpy 2.0, and the project allows 1.24
    if counted.any():
        order = np.argsort(size[counted], kind="stable")
        ranked, cumulative = size[counted][order], np.cumsum(strength[counted][order])
        middle = float(ranked[np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    else:
        middle = float(np.median(size))
    scale = max(4.685 * 1.4826 * middle, 2 * DEPTH_SIGMA_UM)
    return np.clip(1 - (residual / scale) ** 2, 0, None) ** 2


def superposed_pairs(x: np.ndarray, depth: np.ndarray, session0: np.ndarray, n_sessions: int,
                     displacement_of_unit: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Unit pairs of the session pairs ``pairs`` that the motion superposes: mutual nearest
    neighbours in (x, corrected depth) closer than MATCH_RADIUS_UM. x, depth: (N,) um;
    displacement_of_unit: (N,) um, each unit's motion. Returns (K, 2) int64 unit indices,
    the first of the earlier session."""
    corrected = np.column_stack([x, depth - displacement_of_unit])
    members = [np.flatnonzero(session0 == s) for s in range(n_sessions)]
    trees = [cKDTree(corrected[m]) if m.size else None for m in members]
    found_pairs = []
    for a, b in pairs:
        if trees[a] is None or trees[b] is None:
            continue
        dist_ab, near_b = trees[b].query(corrected[members[a]],
                                         distance_upper_bound=MATCH_RADIUS_UM)
        _, near_a = trees[a].query(corrected[members[b]], distance_upper_bound=MATCH_RADIUS_UM)
        found = np.flatnonzero(np.isfinite(dist_ab))
        mutual = found[near_a[near_b[found]] == found]
        found_pairs.append(np.column_stack([members[a][mutual], members[b][near_b[mutual]]]))
    return (np.concatenate(found_pairs).astype(np.int64) if found_pairs
            else np.empty((0, 2), np.int64))


def implied_matches(x: np.ndarray, depth: np.ndarray, session0: np.ndarray, n_sessions: int,
                    displacement_of_unit: np.ndarray, pairs: np.ndarray) -> int:
    """How many unit pairs the motion superposes (:func:`superposed_pairs`): a count of the
    matches a matching round should find."""
    return len(superposed_pairs(x, depth, session0, n_sessions, displacement_of_unit, pairs))


def initial_motion(x: np.ndarray, depth: np.ndarray, amplitude: np.ndarray,
                   session0: np.ndarray, n_sessions: int, max_shift_um: float,
                   max_session_gap: int = 0, linear: bool = False) -> InitialMotion:
    """Initial motion of every session from its units' positions and amplitudes alone.

    x, depth: (N,) um, uncorrected unit positions; amplitude: (N,) uV; session0: (N,) 0-based.
    max_shift_um: largest depth offset between two sessions searched. Rigid unless ``linear``:
    then each of N_DEPTH_BLOCKS depth blocks is registered alone and p_s(y) = slope_s * y +
    offset_s is fitted through the blocks' displacements (session 1's slope 0, as in
    :func:`kilomatch.motion.estimate_motion`).
    """
    pairs = session_pairs(n_sessions, max_session_gap)
    reg = register_sessions(x, depth, amplitude, session0, n_sessions, pairs, max_shift_um)
    usable = np.bincount(session0, minlength=n_sessions) >= MIN_UNITS
    displacement, half = best_registration(reg, n_sessions, usable, (x, depth, session0))
    motion = Motion.zero(n_sessions)
    motion.offset = displacement
    if linear:
        _fit_depth_blocks(motion, x, depth, amplitude, session0, pairs, max_shift_um, usable)
    shown = motion.displacement()
    motion.ci_low, motion.ci_high = shown - half, shown + half
    # Registered: enough units, and some other session's units line up with them.
    lined_up = (reg.correlation.max(axis=1, initial=0.0) > 0) & usable[pairs].all(axis=1)
    tied = np.zeros(n_sessions, bool)
    tied[pairs[lined_up].ravel()] = True
    motion.tied = tied
    if (~tied).any():
        log.warning("sessions %s hold fewer than %d units or none that line up with another "
                    "session's: the initial motion estimate leaves them at 0",
                    ", ".join(str(s + 1) for s in np.flatnonzero(~tied)), MIN_UNITS)
        motion.offset[~tied] = motion.slope[~tied] = 0.0
        motion.ci_low[~tied] = motion.ci_high[~tied] = 0.0
    unit_disp = motion.at(session0, depth)
    return InitialMotion(motion, reg, implied_matches(x, depth, session0, n_sessions, unit_disp,
                                                     pairs), (x, depth, session0, pairs))


def _fit_depth_blocks(motion: Motion, x, depth, amplitude, session0, pairs,
                      max_shift_um, usable) -> None:
    """Depth-dependent motion: each block's rigid displacement, then a line per session."""
    n_sessions = motion.offset.size
    # Blocks in rigidly corrected depth, so that each holds the same neurons in every session.
    corrected = depth - motion.offset[session0]
    edges = np.quantile(corrected, np.linspace(0, 1, N_DEPTH_BLOCKS + 1))
    centres, values = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (corrected >= lo) & (corrected <= hi)
        if np.bincount(session0[inside], minlength=n_sessions)[usable].min() < 3:
            continue  # too few units in some session to register this block
        reg = register_sessions(x[inside], depth[inside], amplitude[inside], session0[inside],
                                n_sessions, pairs, max_shift_um)
        block, _ = best_registration(reg, n_sessions, usable,
                                      (x[inside], depth[inside], session0[inside]))
        centres.append(float(np.median(depth[inside])))
        values.append(block)
    if len(centres) < 2:
        return  # rigid it stays
    centres, values = np.array(centres), np.array(values)  # (B,), (B, S)
    design = np.column_stack([centres, np.ones_like(centres)])
    (slope, offset), *_ = np.linalg.lstsq(design, values, rcond=None)
    # A slope common to every session is a stretch of the tissue, not motion: session 1's is 0.
    slope = slope - slope[0]
    motion.slope, motion.offset = slope, offset - offset.mean()
    motion.ref_depth = float(np.mean(depth))


# ----------------------------------------------------------------------------- round checks

@dataclass
class MotionChoice:
    """Which motion estimate the motion rounds kept, and why.

    source: "initial estimate", "round k" or "zero"; why: one sentence; initial: the initial
    estimate (None when switched off); implied_matches: unit pairs it superposes;
    set_aside: {round k: reason} for rounds whose motion was not taken; warnings: what the
    log said at warning level, for the figure.
    """

    source: str
    why: str
    initial: Motion | None = None
    implied_matches: int | None = None
    set_aside: dict = None
    warnings: list = None
    kept_although: set = None  # rounds kept although they differ from the initial estimate

    def __post_init__(self):
        self.set_aside = {} if self.set_aside is None else self.set_aside
        self.warnings = [] if self.warnings is None else self.warnings
        self.kept_although = set() if self.kept_although is None else self.kept_although

    def keep_round(self, k: int, n_matches: int) -> None:
        """The motion used is round k's, from n_matches good matches."""
        self.source = f"round {k}"
        self.why = f"round {k}'s {n_matches} good matches"
        if k in self.kept_although:
            self.why += ", kept although it differs from the initial estimate (see warnings)"
        elif self.initial is not None:
            self.why += ", consistent with the initial estimate"

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)


def half_width(motion: Motion) -> np.ndarray:
    """(S,) half-width (um) of a motion's 95% band around its displacement."""
    shown = motion.displacement()
    return np.maximum(motion.ci_high - shown, shown - motion.ci_low)


def largest_disagreement(candidate: Motion, initial: Motion, tolerance_um: float
                         ) -> tuple[float, int, np.ndarray]:
    """Where a round's motion lies outside the initial estimate by more than both bands and
    ``tolerance_um``: the difference (um) at the worst session, that session (0-based; -1
    when they agree) and every such session. Compared at
    the round's reference depth, over the sessions the round ties, after removing the median
    difference (each motion's mean-0 gauge is its own)."""
    tied = candidate.tied & initial.tied
    if not tied.any():
        return 0.0, -1, np.empty(0, np.int64)
    depth = candidate.ref_depth
    diff = candidate.displacement() - (initial.slope * depth + initial.offset)
    diff = diff - np.median(diff[tied])  # robust: one session off must not move the rest
    excess = np.abs(diff) - half_width(candidate) - half_width(initial) - tolerance_um
    excess[~tied] = -np.inf
    worst = int(np.argmax(excess))
    return float(np.abs(diff[worst])), worst if excess[worst] > 0 else -1, np.flatnonzero(
        excess > 0)


def fill_untied(candidate: Motion, initial: Motion) -> None:
    """Sessions that a round's matches do not tie to the others take the initial estimate
    (in the round's gauge) instead of 0."""
    loose = ~candidate.tied & initial.tied
    if not loose.any() or not (candidate.tied & initial.tied).any():
        return
    depth = candidate.ref_depth
    init_disp = initial.slope * depth + initial.offset
    both = candidate.tied & initial.tied
    gauge = np.mean(candidate.displacement()[both] - init_disp[both])
    candidate.slope[loose] = initial.slope[loose]
    candidate.offset[loose] = initial.offset[loose] + gauge
    shown = candidate.displacement()
    half = half_width(initial)
    candidate.ci_low[loose] = shown[loose] - half[loose]
    candidate.ci_high[loose] = shown[loose] + half[loose]


def judge_round(k: int, candidate: Motion, n_matches: int, kept: str, start: InitialMotion,
                choice: MotionChoice, tolerance_um: float, min_match_fraction: float) -> bool:
    """Whether round k's motion (from n_matches good matches) replaces the motion kept so far
    (named ``kept``). Every reason to doubt it is a warning; ``choice`` records the verdict."""
    if n_matches == 0:
        reason = f"round {k} found no good matches"
    elif n_matches < min_match_fraction * start.implied_matches:
        reason = (f"round {k} found {n_matches} good matches, far fewer than the "
                  f"{start.implied_matches} unit pairs the initial estimate superposes "
                  f"(motionEstimation.min_match_fraction = {min_match_fraction:g})")
    else:
        gap, worst, where = largest_disagreement(candidate, start.motion, tolerance_um)
        if worst < 0:
            fill_untied(candidate, start.motion)
            return True
        ours = start.registration.support(candidate.displacement(), where)
        theirs = start.registration.support(start.motion.displacement(), where)
        text = (f"round {k}'s motion differs from the initial estimate by {gap:.1f} um at "
                f"session {worst + 1}, more than their 95% bands and "
                f"motionEstimation.initial_tolerance_um = {tolerance_um:g} allow")
        if ours >= SUPPORT_RATIO * theirs:
            choice.kept_although.add(k)
            choice.warn(f"{text}; there it lines the sessions' units up about as well "
                        f"(support {ours:.3f} vs {theirs:.3f}), so its {n_matches} good "
                        f"matches decide: round {k}'s motion is kept")
            fill_untied(candidate, start.motion)
            return True
        # The support shifts whole sessions: it cannot credit a motion that differs along
        # the probe. Where the tissue moves unevenly (one part of the probe more than
        # another), the rigid estimate lines up the part that holds most units and leaves
        # the rest tens of um off, while the round's depth-dependent motion lines up both.
        # Such a round is kept when, unit by unit, it superposes at least as many pairs over
        # all the sessions, and at least SUPPORT_RATIO as many where the two disagree.
        if candidate.linear and start.units is not None:
            mine = start.superposed(candidate, np.arange(candidate.offset.size))
            init = start.implied_matches  # the same count for the initial estimate
            mine_there = start.superposed(candidate, where)
            init_there = start.superposed(start.motion, where)
            if mine >= init > 0 and mine_there >= SUPPORT_RATIO * init_there:
                choice.kept_although.add(k)
                choice.warn(f"{text}, and there lines the sessions' units up less well as "
                            f"whole sessions (support {ours:.3f} vs {theirs:.3f}); but its "
                            f"motion depends on depth, and unit by unit it superposes {mine} "
                            f"unit pairs against the initial estimate's {init} ({mine_there} "
                            f"against {init_there} there), so its {n_matches} good matches "
                            f"decide: round {k}'s motion is kept")
                fill_untied(candidate, start.motion)
                return True
        reason = (f"{text}, and there lines the sessions' units up far less well (support "
                  f"{ours:.3f} vs {theirs:.3f})")
    choice.set_aside[k] = reason
    choice.warn(f"{reason}: its motion is set aside, the {kept} is kept")
    return False


def start_motion(locations: np.ndarray, amplitude: np.ndarray, session0: np.ndarray,
                 n_sessions: int, s) -> tuple[InitialMotion | None, MotionChoice]:
    """The motion the rounds start from, per the settings ``s``: the initial estimate
    (locations: (N, 3) um; amplitude: (N,) uV), or None to start at zero
    (motionEstimation.initial_estimate = 'none'). Also the MotionChoice the rounds fill in."""
    me = s.motionEstimation
    if me.initial_estimate == "none":
        return None, MotionChoice("zero", "no round was run")
    start = initial_motion(locations[:, 0], locations[:, 1], amplitude, session0, n_sessions,
                           me.max_shift_um, s.clustering.max_session_gap,
                           s.waveformCorrection.linear_correction)
    shown = start.motion.displacement()
    log.info("initial motion from unit positions and amplitudes: range %.1f um, %d unit pairs "
             "superposed, support %.3f", float(np.ptp(shown)), start.implied_matches,
             start.registration.support(shown))
    return start, MotionChoice("initial estimate", "no round was run", start.motion,
                               start.implied_matches)


def summary_of_choices(choices: list, per_shank: bool) -> dict:
    """Run-summary entries ``motion_source`` and ``motion_why`` from (shank, MotionChoice or
    None) pairs; a given motion (no choice) adds nothing."""
    known = [(shank, c) for shank, c in choices if c is not None]
    if not known:
        return {}
    if not per_shank:
        return {"motion_source": known[0][1].source, "motion_why": known[0][1].why}
    return {"motion_source": "; ".join(f"shank {k}: {c.source}" for k, c in known),
            "motion_why": "; ".join(f"shank {k}: {c.why}" for k, c in known)}
