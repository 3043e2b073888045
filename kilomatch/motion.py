"""Probe motion across sessions from matched unit pairs (docs/method.md, section 6).

Convention: p_s(d) = slope_s * d + offset_s is the apparent shift (um) of a unit at probe depth
d in session s; a unit's corrected depth is y - p_s(y). Offsets have mean 0 over the sessions
that are tied to the others by matches; with linear motion the first session's slope is 0.
Both are exact linear least-squares solutions (no random start); the 95% band comes from a
seeded bootstrap over pairs. Where tissue moves in a way no line follows, a bend f_s(d),
piecewise linear in depth, is added on top (fit_bend): p_s(d) = slope_s * d + offset_s +
f_s(d).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve

log = logging.getLogger("kilomatch")


@dataclass
class Motion:
    """Per-session motion. offset, slope, ci_low, ci_high: (S,) um (slope: um per um).

    ``ci_low``/``ci_high`` bound the displacement at ``ref_depth`` (the mean depth of the
    matched pairs). ``n_pairs``: matched pairs touching each session. ``tied``: sessions whose
    motion is determined by matches (others are left at 0). ``choice``: for the motion a run
    kept, which estimate it is and why (kilomatch.motion_initial.MotionChoice), else None.
    """

    offset: np.ndarray
    slope: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_pairs: np.ndarray
    tied: np.ndarray
    ref_depth: float = 0.0
    choice: object = None
    # Depth-dependent motion that no line follows (fit_bend): knots (K,) um and the bend of
    # each session at them (S, K) um, linear between knots and flat beyond; None: none.
    knots: np.ndarray | None = None
    bend: np.ndarray | None = None

    @classmethod
    def zero(cls, n_sessions: int) -> "Motion":
        z = np.zeros(n_sessions)
        return cls(z, z.copy(), z.copy(), z.copy(), np.zeros(n_sessions, np.int64),
                   np.zeros(n_sessions, bool))

    @property
    def sloped(self) -> bool:
        """Whether some session's motion has a slope (the linear part, bend aside)."""
        return bool(np.any(self.slope != 0))

    @property
    def linear(self) -> bool:
        """Whether the motion depends on depth (a slope, or a bend)."""
        return self.sloped or self.bend is not None

    def at(self, session0: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Displacement (um) of units in 0-based sessions ``session0`` at probe depths ``depth``."""
        out = self.slope[session0] * depth + self.offset[session0]
        if self.bend is not None:
            out = out + bend_at(self.knots, self.bend, session0, depth)
        return out

    def displacement(self) -> np.ndarray:
        """(S,) displacement at ``ref_depth``: what motion.npy holds."""
        return self.slope * self.ref_depth + self.offset + self.bend_at_ref()

    def take_band(self, band: "Motion") -> None:
        """Take the 95% band of ``band``, a fit of this motion's rigid or linear part: the
        band moves with this motion's bend at ref_depth (a bootstrap of the line, not of
        the bend)."""
        self.ci_low = band.ci_low + self.bend_at_ref()
        self.ci_high = band.ci_high + self.bend_at_ref()

    def bend_at_ref(self) -> np.ndarray:
        """(S,) the bend at ``ref_depth`` (zeros without a bend)."""
        n = self.offset.size
        if self.bend is None:
            return np.zeros(n)
        return bend_at(self.knots, self.bend, np.arange(n), np.full(n, self.ref_depth))


def _bincount_rows(index: np.ndarray, weights: np.ndarray, length: int) -> np.ndarray:
    """np.bincount(index, row, length) of every row of ``weights`` (n, G): (n, length). One
    call for all rows, each bin summed in the same order as a call per row (same bits)."""
    n = weights.shape[0]
    flat = (index[None, :] + (np.arange(n) * length)[:, None]).ravel()
    return np.bincount(flat, weights.ravel(), n * length).reshape(n, length)


def _laplacian(a: np.ndarray, b: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """sum over pairs of w * (e_b - e_a)(e_b - e_a)^T for each row of w (n, G): (n, k, k),
    built by counting."""
    diag = _bincount_rows(a, w, k) + _bincount_rows(b, w, k)
    off = _bincount_rows(a * k + b, w, k * k).reshape(-1, k, k)
    lap = np.zeros_like(off)
    lap[:, np.arange(k), np.arange(k)] = diag
    return lap - off - off.transpose(0, 2, 1)


def _normal_equations(a, b, k, linear, sums):
    """A^T W A (n, K, K) and A^T W dy (n, K) of the pair equations of n fits, without
    forming A.

    a, b: (G,) sessions of each equation (a pair of units, or all pairs of one session pair);
    sums: (n, G) arrays w, w*dy and, when linear, w*mid, w*mid^2, w*mid*dy, summed over the
    pairs each equation stands for. Unknowns: offsets (k,), then (linear) slopes of sessions
    2..k (session 1's slope is 0): K = k or 2k - 1.
    """
    w, w_dy = sums[0], sums[1]
    lap = _laplacian(a, b, w, k)
    rhs = _bincount_rows(b, w_dy, k) - _bincount_rows(a, w_dy, k)
    if not linear:
        return lap, rhs
    w_mid, w_mid2, w_mid_dy = sums[2], sums[3], sums[4]
    lap_d = _laplacian(a, b, w_mid, k)
    lap_dd = _laplacian(a, b, w_mid2, k)
    rhs_d = _bincount_rows(b, w_mid_dy, k) - _bincount_rows(a, w_mid_dy, k)
    ata = np.concatenate([np.concatenate([lap, lap_d], axis=2),
                          np.concatenate([lap_d, lap_dd], axis=2)], axis=1)
    keep = np.r_[0:k, k + 1:2 * k]
    return ata[:, keep][:, :, keep], np.concatenate([rhs, rhs_d], axis=1)[:, keep]


def _solve(a, b, k, linear, sums) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n, k) with mean 0 and slopes (n, k) solving the weighted pair equations
    (_normal_equations) of each of n fits."""
    ata, atb = _normal_equations(a, b, k, linear, sums)
    # Minimum-norm solution: fixes the free constant of the offsets. (numpy's lstsq takes
    # one system at a time; the loop is a tenth of a bootstrap's time.)
    sol = np.stack([np.linalg.lstsq(m, r, rcond=None)[0] for m, r in zip(ata, atb)])
    off = sol[:, :k]
    slope = (np.concatenate([np.zeros((len(sol), 1)), sol[:, k:]], axis=1) if linear
             else np.zeros_like(off))
    # Offsets are only defined up to a constant: report them with mean 0.
    return off - off.mean(axis=1, keepdims=True), slope


def _pair_terms(dy: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """Per pair, the factors of its weight in the sums of _normal_equations: (5, M); a rigid
    fit reads the first two."""
    return np.vstack([np.ones_like(dy), dy, mid, mid * mid, mid * dy])


def solve_pair_offsets(a: np.ndarray, b: np.ndarray, offset: np.ndarray, weight: np.ndarray,
                       n_sessions: int) -> np.ndarray:
    """Rigid displacement (S,) um, mean 0, best fitting weighted pairwise offsets:
    minimises sum weight * (p_b - p_a - offset)^2 over 0-based session pairs (a, b)."""
    weight = np.asarray(weight, np.float64)
    return _solve(a, b, n_sessions, False, (weight[None], (weight * offset)[None]))[0][0]


NO_PAIRS = "no matched pairs to estimate motion from: motion left at 0 for every session"


class _PairEquations:
    """The pair equations of estimate_motion, set up once for any number of fits: the pairs
    of different sessions tied to the largest group of sessions by matches, summed per pair of
    sessions. ``tied`` (S,) bool is None when no pair ties two sessions. Setting them up warns
    of sessions left untied (once, whatever the fits)."""

    def __init__(self, pairs: np.ndarray, depth: np.ndarray, session0: np.ndarray,
                 n_sessions: int, warn: bool = True):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.n_sessions, self.tied = n_sessions, None
        self.n_pairs = np.zeros(n_sessions, np.int64)
        if pairs.shape[0] == 0:
            if warn:
                log.warning(NO_PAIRS)
            return
        sa, sb = session0[pairs[:, 0]], session0[pairs[:, 1]]
        keep = sa != sb
        pairs, sa, sb = pairs[keep], sa[keep], sb[keep]
        dy = depth[pairs[:, 1]] - depth[pairs[:, 0]]
        mid = 0.5 * (depth[pairs[:, 0]] + depth[pairs[:, 1]])
        self.n_pairs = np.bincount(np.concatenate([sa, sb]), minlength=n_sessions)

        # Sessions tied to the largest group of sessions by matches; the rest stay at 0.
        graph = sparse.coo_matrix((np.ones(sa.size), (sa, sb)), shape=(n_sessions, n_sessions))
        _, comp = connected_components(graph, directed=False)
        sizes = np.bincount(comp)
        main = np.argmax(sizes)
        tied = (comp == main) & (sizes[comp] > 1)
        if not tied.any():
            if warn:
                log.warning(NO_PAIRS)
            return
        if (~tied).any() and warn:
            log.warning("sessions %s have no match chain to the others: their motion is left "
                        "at 0 (the reference)", ", ".join(str(s + 1) for s in np.flatnonzero(~tied)))
        use = tied[sa] & tied[sb]
        sa, sb, dy, mid = sa[use], sb[use], dy[use], mid[use]
        # Renumber tied sessions 0..K-1 so the gauge is fixed among them only.
        index = -np.ones(n_sessions, np.int64)
        index[tied] = np.arange(tied.sum())
        self.k = int(tied.sum())
        ia, ib = index[sa], index[sb]
        # The equations depend on the pairs only through sums over each pair of sessions, so
        # every fit (and each of a bootstrap's) solves one equation per session pair.
        self.group, self.at = np.unique(ia * self.k + ib, return_inverse=True)
        self.ga, self.gb = self.group // self.k, self.group % self.k
        self.terms = _pair_terms(dy, mid)
        self.ref_depth = float(mid.mean())
        self.size = dy.size
        self.tied = tied

    def fit(self, linear: bool, pair_weight: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and slopes (n, K) of the tied sessions in each of n fits, each pair
        counted ``pair_weight`` (n, size) times (None: one fit, each pair once)."""
        weight = np.ones((1, self.size)) if pair_weight is None else pair_weight
        sums = [_bincount_rows(self.at, t[None, :] * weight, self.group.size)
                for t in self.terms[:5 if linear else 2]]
        return _solve(self.ga, self.gb, self.k, linear, sums)

    def resamples(self, rng: np.random.Generator, n: int):
        """Weights (m, size) of n resamples of the pairs with replacement, m at a time (each
        pair's count, as a multinomial with equal probabilities gives, drawn ten times
        faster); the draws are those of n resamples drawn one by one."""
        step = max(1, RESAMPLE_COUNTS // max(self.size, 1))
        for start in range(0, n, step):
            m = min(step, n - start)
            draws = rng.integers(0, self.size, (m, self.size))
            draws += (np.arange(m) * self.size)[:, None]
            yield np.bincount(draws.ravel(), minlength=m * self.size).reshape(
                m, self.size).astype(np.float64)

    def motions(self, linear: bool, pair_weight: np.ndarray | None = None) -> list:
        """The Motion (no band) of each of n fits, each pair counted ``pair_weight`` (n, size)
        times (None: one fit, each pair once)."""
        n = 1 if pair_weight is None else len(pair_weight)
        out = [Motion.zero(self.n_sessions) for _ in range(n)]
        for motion in out:
            motion.n_pairs = self.n_pairs
        if self.tied is None:
            return out
        offsets, slopes = self.fit(linear, pair_weight)
        for motion, offset, slope in zip(out, offsets, slopes):
            motion.offset[self.tied], motion.slope[self.tied] = offset, slope
            motion.tied = self.tied
            motion.ref_depth = self.ref_depth if linear else 0.0
        return out

    def motion(self, linear: bool) -> Motion:
        """The Motion of one fit of every pair once (no band)."""
        return self.motions(linear)[0]


# Pair counts of the bootstrap resamples held at once (8 bytes each): 8 MB.
RESAMPLE_COUNTS = 1 << 20


def estimate_motion(pairs: np.ndarray, depth: np.ndarray, session0: np.ndarray, n_sessions: int,
                    linear: bool = False, n_bootstrap: int = 1000, seed: int = 0) -> Motion:
    """Motion from matched pairs.

    pairs: (M, 2) unit indices of good matches; depth: (N,) unit y in um (uncorrected);
    session0: (N,) 0-based session of each unit. Rigid: p minimises
    sum ((y_B - y_A) - (p_sB - p_sA))^2. Linear: p_s(d) = k_s d + b_s with d the pair's mean
    depth and k_1 = 0. Sessions without a match chain to the others keep motion 0 (a warning
    names them).
    """
    return _fitted(_PairEquations(pairs, depth, session0, n_sessions), linear, n_bootstrap,
                   seed)


def _fitted(eq: _PairEquations, linear: bool, n_bootstrap: int, seed: int) -> Motion:
    """The motion of the pair equations ``eq`` with its seeded bootstrap band
    (estimate_motion)."""
    motion = eq.motion(linear)
    if eq.tied is None:
        return motion
    tied, k = eq.tied, eq.k
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        disp = []
        for weight in eq.resamples(rng, n_bootstrap):
            off_b, slope_b = eq.fit(linear, weight)
            disp.append(slope_b * motion.ref_depth + off_b)
        disp = np.concatenate(disp)
        lo, hi = np.percentile(disp, [2.5, 97.5], axis=0)
        motion.ci_low[tied], motion.ci_high[tied] = lo, hi
    base = motion.displacement()
    motion.ci_low[~tied] = base[~tied]
    motion.ci_high[~tied] = base[~tied]
    return motion


def linear_excess(rigid: Motion, linear: Motion, depth: np.ndarray, session0: np.ndarray
                  ) -> float:
    """How far (um) a linear motion places the units from a rigid one, relative to each other:
    the 95th percentile over the units of the sessions both tie of |d_s(y)|, where d_s(y) is
    the difference of the two motions of session s at depth y less its mean over the sessions
    (a shift or stretch that every session shares moves no unit against another, and each
    fit fixes its own gauge). depth (N,) um, session0 (N,) 0-based. 0 when nothing is tied."""
    tied = rigid.tied & linear.tied
    if not tied.any():
        return 0.0
    slope = linear.slope - rigid.slope
    offset = linear.offset - rigid.offset
    slope = slope - slope[tied].mean()
    offset = offset - offset[tied].mean()
    units = tied[session0]
    s = session0[units]
    return float(np.percentile(np.abs(slope[s] * depth[units] + offset[s]), 95))


# Resamples of the pairs that test a linear motion (motion_by_model): its excess over the
# rigid one must hold in 95% of them.
LINEAR_BOOTSTRAP = 100


def _excess_of(eq: _PairEquations, depth: np.ndarray, session0: np.ndarray,
               pair_weight: np.ndarray | None = None) -> list:
    """linear_excess of the linear over the rigid fit of the pair equations ``eq`` in each
    of n fits, each pair counted ``pair_weight`` (n, size) times (None: one fit, each pair
    once): n floats."""
    return [linear_excess(rigid, linear, depth, session0) for rigid, linear in
            zip(eq.motions(False, pair_weight), eq.motions(True, pair_weight))]


def motion_by_model(pairs: np.ndarray, depth: np.ndarray, session0: np.ndarray,
                    n_sessions: int, linear_min_um: float, n_bootstrap: int = 1000,
                    seed: int = 0) -> tuple[Motion, float]:
    """The rigid motion of ``pairs`` (estimate_motion), or the linear one where it places the
    units more than ``linear_min_um`` um apart from the rigid (linear_excess) in 95% of
    LINEAR_BOOTSTRAP resamples of the pairs (seeded by ``seed``); 0: always rigid. Returns the
    motion and the excess's 5th percentile over the resamples (um; the excess of the pairs
    themselves where it is not above ``linear_min_um``, which no resample is then tested for).

    Why: on a probe that drifts more at one end than the other, a rigid motion leaves tens of
    um of error at the ends and loses matches there; on rigid drift the linear fit adds noise
    only (0.1-0.9 um on the accuracy suite's final matches) and the matches it moves change
    the clusters for no gain. Why the resamples: a round whose matches hold many wrong pairs
    (the ACG round of a study whose rates change from day to day) gives noisy slopes, an
    excess of 6 um from rigid drift, which the resamples do not uphold."""
    eq = _PairEquations(pairs, depth, session0, n_sessions)  # set up (and warned) once
    excess = 0.0
    if linear_min_um > 0 and eq.tied is not None:
        excess = _excess_of(eq, depth, session0)[0]
        if excess > linear_min_um:
            rng = np.random.default_rng(seed)
            excess = float(np.percentile(
                [e for weight in eq.resamples(rng, LINEAR_BOOTSTRAP)
                 for e in _excess_of(eq, depth, session0, weight)], 5))
    use_linear = linear_min_um > 0 and excess > linear_min_um
    return _fitted(eq, use_linear, n_bootstrap, seed), excess


# Iterations of robust_motion's reweighting, its biweight's reach in robust spreads, and
# the least weight a pair keeps (a session whose every pair lies far off is still placed
# by them, not left to the solver's minimum norm).
ROBUST_ITERATIONS = 10
ROBUST_REACH = 4.685
ROBUST_MIN_WEIGHT = 1e-3


def robust_motion(pairs: np.ndarray, depth: np.ndarray, session0: np.ndarray,
                  n_sessions: int, linear: bool, floor_um: float = 1.0) -> Motion:
    """The rigid or linear motion (no band) of matched pairs (M, 2) fitted by iteratively
    reweighted least squares: each pair weighs Tukey's biweight of its residual
    (pair_residuals) at ROBUST_REACH robust spreads (1.4826 x the median absolute residual,
    at least ``floor_um``), ROBUST_MIN_WEIGHT at least, ROBUST_ITERATIONS times from the
    plain fit.

    Why: a round's good matches can hold many pairs of two neurons, tens of um apart (a
    third of them on a sparse study of 16 sessions of about 20 units with turnover, where
    two neurons recorded in turn share a cluster). They pull a least-squares fit by 8-9 um
    and tilt it (a linear motion 20 um from the rigid one on rigid drift), and its
    residuals then hide which pairs lie off it; the biweight gives them no weight.
    depth: (N,) um, uncorrected; session0: (N,) 0-based."""
    eq = _PairEquations(pairs, depth, session0, n_sessions, warn=False)  # the round warns
    motion = eq.motion(linear)
    if eq.tied is None:
        return motion
    used = None
    for _ in range(ROBUST_ITERATIONS):
        residual = pair_residuals(motion, pairs, depth, session0)
        if used is None:  # the equations' pairs: across sessions, both tied, in order
            used = np.isfinite(residual)
        size = np.abs(residual[used])
        reach = ROBUST_REACH * max(1.4826 * float(np.median(size)), floor_um)
        weight = np.clip(1.0 - (residual[used] / reach) ** 2, 0.0, None) ** 2
        motion = eq.motions(linear, np.maximum(weight, ROBUST_MIN_WEIGHT)[None])[0]
    return motion


def pair_residuals(motion: Motion, pairs: np.ndarray, depth: np.ndarray,
                   session0: np.ndarray) -> np.ndarray:
    """(M,) um: how far each pair's depths lie apart once ``motion`` is taken out,
    (y_B - y_A) - (p_sB(d) - p_sA(d)) at the pair's mean depth d; nan for a pair within one
    session or with an untied session, which no fit reads. pairs: (M, 2) unit indices."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    sa, sb = session0[pairs[:, 0]], session0[pairs[:, 1]]
    ya, yb = depth[pairs[:, 0]], depth[pairs[:, 1]]
    mid = 0.5 * (ya + yb)
    residual = (yb - ya) - (motion.at(sb, mid) - motion.at(sa, mid))
    return np.where((sa != sb) & motion.tied[sa] & motion.tied[sb], residual, np.nan)


# A pair that lies off the motion is kept where at least this many other pairs of the same
# two sessions, within BEND_KNOT_UM of its depth, lie off it alike (their median residual
# within the same limit of its own): tissue that moves unevenly shifts neighbours' pairs
# together, while a match of two neurons lies off on its own.
OFF_PAIR_NEIGHBOURS = 2


def off_pairs(residual: np.ndarray, pairs: np.ndarray, depth: np.ndarray,
              session0: np.ndarray, spreads: float, floor_um: float = 1.0
              ) -> tuple[np.ndarray, float]:
    """Which pairs (M, 2) lie off the motion on their own: (M,) bool, and the spread (um).

    A pair is off where its residual (pair_residuals, (M,) um; nan: never off) is more than
    ``spreads`` spreads from 0, the spread being 1.4826 x the median absolute residual (a
    normal's sd; the residuals centre on 0 by the fit), at least ``floor_um``; unless
    OFF_PAIR_NEIGHBOURS other pairs of the same two sessions within BEND_KNOT_UM of its mean
    depth have a median residual within that limit of its own."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    finite = np.isfinite(residual)
    counted = np.abs(residual[finite])
    spread = max(1.4826 * float(np.median(counted)) if counted.size else 0.0, floor_um)
    limit = spreads * spread
    off = np.zeros(residual.shape, bool)
    off[finite] = np.abs(residual[finite]) > limit
    if not off.any():
        return off, spread
    # each pair oriented from the lower session to the higher, its residual with it
    sa, sb = session0[pairs[:, 0]], session0[pairs[:, 1]]
    low, high = np.minimum(sa, sb), np.maximum(sa, sb)
    oriented = np.where(sa <= sb, residual, -residual)
    mid = 0.5 * (depth[pairs[:, 0]] + depth[pairs[:, 1]])
    # one sorted key per pair: its two sessions, then its depth, the sessions' blocks of
    # keys far enough apart that no depth window reaches across two
    span = float(np.ptp(mid[finite])) + 4 * BEND_KNOT_UM
    key = (low * (int(session0.max()) + 1) + high) * span + mid
    order = np.flatnonzero(finite)
    order = order[np.argsort(key[order], kind="stable")]
    sorted_key = key[order]
    for i in np.flatnonzero(off):
        lo, hi = np.searchsorted(sorted_key, [key[i] - BEND_KNOT_UM, key[i] + BEND_KNOT_UM],
                                 side="right")
        near = order[lo:hi]
        near = near[near != i]
        if near.size >= OFF_PAIR_NEIGHBOURS and \
                abs(np.median(oriented[near]) - oriented[i]) <= limit:
            off[i] = False
    return off, spread


# ------------------------------------------------------------------------------ bend

# Knots of the bend, this far apart (um): about the reach of one neuron's footprint, so a
# bend is followed within a few neurons' heights.
BEND_KNOT_UM = 100.0
# How strongly neighbouring knots of one session are pulled together, and every knot towards
# 0, in units of one matched pair's weight: a knot that few pairs reach follows its
# neighbours, and one that none reaches (or a session no pair ties) stays at 0.
BEND_SMOOTHING, BEND_RIDGE = 4.0, 0.05
# A bend is kept only where, fitted without them, it predicts held-out pairs: their median
# absolute residual from the rigid or linear motion must fall by this share (5-fold
# cross-validation over the pairs). A round whose matches are mostly of other neurons (the
# ACG round where ACGs say little, or turnover) gives a bend of 10-27 um that resamples of
# the same pairs uphold but that predicts held-out pairs worse than none (shares -0.02 to
# -0.73 on the accuracy suite); the bends of tissue that moves unevenly predict them far
# better (0.31-0.85, most 0.55-0.73). benchmarks/RESULTS.md, "Session 65".
BEND_MIN_GAIN = 0.25
BEND_FOLDS = 5


def _hat(knots: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left knot index (n,) and the weight (n,) of the right knot of each depth; flat beyond
    the end knots. knots: (K,) um, evenly spaced, K >= 2 (fit_bend makes 3 or more)."""
    pos = np.clip((depth - knots[0]) / (knots[1] - knots[0]), 0.0, knots.size - 1.0)
    left = np.minimum(np.floor(pos).astype(np.int64), knots.size - 2)
    return left, pos - left


def bend_at(knots: np.ndarray, bend: np.ndarray, session0: np.ndarray, depth: np.ndarray
            ) -> np.ndarray:
    """The bend (um) of units in sessions ``session0`` at depths ``depth``: (n,)."""
    left, w = _hat(knots, depth)
    return bend[session0, left] * (1 - w) + bend[session0, left + 1] * w


def _bend_system(sa, sb, mid, knots, n_sessions):
    """Sparse design (M, S*K) of the pair equations residual = f_sb(mid) - f_sa(mid)."""
    k = knots.size
    left, w = _hat(knots, mid)
    m = mid.size
    rows = np.repeat(np.arange(m), 4)
    cols = np.column_stack([sb * k + left, sb * k + left + 1, sa * k + left, sa * k + left + 1])
    vals = np.column_stack([1 - w, w, -(1 - w), -w])
    return sparse.csr_matrix((vals.ravel(), (rows, cols.ravel())), shape=(m, n_sessions * k))


def _bend_penalty(n_sessions: int, k: int):
    """BEND_SMOOTHING x D^T D (first differences along the knots of each session) +
    BEND_RIDGE x I: sparse (S*K, S*K)."""
    d = sparse.diags([-np.ones(k - 1), np.ones(k - 1)], [0, 1], shape=(k - 1, k))
    one = BEND_SMOOTHING * (d.T @ d) + BEND_RIDGE * sparse.identity(k)
    return sparse.kron(sparse.identity(n_sessions), one).tocsc()


def _solve_bend(design, residual, weight, penalty, tied, k):
    """The bend (S, K) of weighted pair equations, each knot's mean over the tied sessions 0
    (a bend every session shares moves no unit against another). Sparse: the equations tie
    only the knots of sessions that share pairs, so hundreds of sessions stay cheap."""
    aw = sparse.diags(weight) @ design
    ata = (design.T @ aw).tocsc() + penalty
    sol = np.asarray(spsolve(ata, aw.T @ residual)).reshape(-1, k)
    sol[tied] -= sol[tied].mean(axis=0)
    sol[~tied] = 0.0
    return sol


def bend_excess(bend: np.ndarray, knots: np.ndarray, depth: np.ndarray, session0: np.ndarray,
                tied: np.ndarray) -> float:
    """How far (um) a bend moves the units against each other: the 95th percentile over the
    units of the tied sessions of |bend|."""
    units = tied[session0]
    if not units.any():
        return 0.0
    return float(np.percentile(np.abs(bend_at(knots, bend, session0[units], depth[units])), 95))


def held_out_gain(design, residual: np.ndarray, penalty: np.ndarray, tied: np.ndarray, k: int,
                  seed: int) -> float:
    """Share by which a bend fitted without them lowers the median absolute residual of
    held-out pairs (BEND_FOLDS-fold cross-validation over the pairs, seeded): 1 - median
    |residual - prediction| / median |residual|; negative when it predicts them worse."""
    fold = np.random.default_rng(seed).permutation(residual.size) % BEND_FOLDS
    prediction = np.zeros(residual.size)
    for f in range(BEND_FOLDS):
        held = fold == f
        bend = _solve_bend(design, residual, (~held).astype(np.float64), penalty, tied, k)
        prediction[held] = design[held] @ bend.ravel()
    before = float(np.median(np.abs(residual)))
    return 1.0 - float(np.median(np.abs(residual - prediction))) / max(before, 1e-9)


def fit_bend(pairs: np.ndarray, depth: np.ndarray, session0: np.ndarray, base: Motion,
             min_um: float, seed: int = 0) -> tuple[Motion, float, float]:
    """``base`` with a bend added where the matches ask for one: the motion that no line
    follows (the tissue of one part of the probe moving apart from another's), fitted to the
    pairs' residuals from ``base`` as a piecewise-linear function of depth per session (knots
    BEND_KNOT_UM apart, neighbours pulled together, each knot's mean over the sessions 0).
    Kept where it moves the units more than ``min_um`` against each other (bend_excess) and
    predicts held-out pairs (held_out_gain at least BEND_MIN_GAIN).

    pairs: (M, 2) unit indices of good matches; depth: (N,) um (uncorrected); session0: (N,)
    0-based. Returns the motion (``base`` itself when no bend is kept), the excess (um) and
    the held-out gain (nan where not tested)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    tied = base.tied
    n_sessions = base.offset.size
    if min_um <= 0 or pairs.shape[0] == 0 or tied.sum() < 2:
        return base, 0.0, np.nan
    sa, sb = session0[pairs[:, 0]], session0[pairs[:, 1]]
    keep = (sa != sb) & tied[sa] & tied[sb]
    if not keep.any():
        return base, 0.0, np.nan
    pairs, sa, sb = pairs[keep], sa[keep], sb[keep]
    mid = 0.5 * (depth[pairs[:, 0]] + depth[pairs[:, 1]])
    residual = pair_residuals(base, pairs, depth, session0)  # finite: the pairs kept
    lo, hi = float(mid.min()), float(mid.max())
    knots = lo + BEND_KNOT_UM * np.arange(int(np.ceil((hi - lo) / BEND_KNOT_UM)) + 1)
    if knots.size < 3:
        return base, 0.0, np.nan  # too short a span to bend: a line follows it
    design = _bend_system(sa, sb, mid, knots, n_sessions)
    penalty = _bend_penalty(n_sessions, knots.size)
    bend = _solve_bend(design, residual, np.ones(residual.size), penalty, tied, knots.size)
    excess = bend_excess(bend, knots, depth, session0, tied)
    if excess <= min_um:
        return base, excess, np.nan
    gain = held_out_gain(design, residual, penalty, tied, knots.size, seed)
    if gain < BEND_MIN_GAIN:
        return base, excess, gain
    out = replace(base, knots=knots, bend=bend)
    if not base.linear:
        out.ref_depth = float(mid.mean())  # a rigid motion's reference depth is moot (0)
    out.take_band(base)
    return out, excess, gain
