"""How far apart in space two units of one neuron can be, learned from each dataset.

A unit's estimated position carries noise that grows as its amplitude falls: the position
is fitted to amplitudes on the channels, and the fit of a small unit rests on channels near
the noise. After motion correction the distance between two units of one neuron is that
noise (and what the motion left), so its typical size at the pair's amplitudes is

    spread(a_i, a_j) = sqrt(floor^2 + k^2 (1 / a_i^2 + 1 / a_j^2))   (um; a in uV)

The two terms are learned from the pairs the match probability is sure of (p >= 0.9): the
median of the squared distance in bins of 1 / a_i^2 + 1 / a_j^2, fitted by non-negative
least squares. Medians, not a tail quantile: a few sure-looking wrong pairs (two alike
neighbours, the fault this guards against) sit in the tail and would widen a tail quantile
to their own distance. A pair's distance ratio is its distance over its spread: about 1 for
a typical match at any amplitude, so one limit on it serves large units, whose positions
are precise, and small ones, whose positions are not.

Given the units' sessions, each session adds its own variance w_s >= 0:

    spread_st(a_i, a_j)^2 = spread(a_i, a_j)^2 + w_s + w_t   (units of sessions s and t)

A fitted position shifts with where the neuron sits against the channel grid: two
sessions whose motion differs by a whole number of contact rows see each neuron at the same
phase and place it alike; a session part of a row off places every neuron a few um away, at
any amplitude. Recording quality also differs from day to day. w_s is the median of
d^2 - spread^2 - w_t over the pairs with a unit in session s (t the other unit's session),
less two standard errors of that median (so a session that differs by chance adds about
nothing), clipped at 0, found by turns (backfitting); the floor and k are then fitted again
to d^2 - w_s - w_t, and the w again, a few rounds in all (the pooled fit takes in part of
the sessions' variance), on at most SESSION_FIT_PAIRS pairs (a seeded draw). A session
never narrows the spread; one with fewer than SESSION_MIN_PAIRS pairs adds nothing.

Per session, not per pair of sessions: each session has many pairs, so its median is
stable; a pair of sessions often has a handful, and on a 24-session study the medians of
those few pairs, some of them of two neurons, widened the spread where they were wrong
pairs (benchmarks/RESULTS.md, "Session 44").

Given each unit's motion (its recorded depth less its corrected depth, um) and the depth P
after which the probe's contact layout repeats (:func:`grid_period`: 40 um on NP1's
staggered rows, 15 um on NP2), the phase of the grid at which two sessions see a neuron
adds its own variance, pooled over every pair of sessions:

    spread^2 += c sin^2(pi (m_i - m_j) / P)   (c >= 0, um^2; m_i, m_j the units' motion)

0 where the motions differ by a whole period (the same phase), c where they differ by half
of one. The floor, k and the sessions' variance are fitted as above, and c last: the slope
of the median excess d^2 - spread_st^2 against the phase term, in bins of that term, at
least 0. So the phase only widens the spread, where the pairs seen at other phases lie
farther apart than those seen at one: fitted with the floor and k, it also narrowed the
spread of small units at one phase, and the split at distance took apart true pairs
(benchmarks/RESULTS.md, "Session 75"). How far a neuron's fitted position moves with the
phase depends on the neuron (its distance from the probe, its place between the columns),
so no offset per phase corrects it; only its size is learned.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from .session_pairs import grouped_median

log = logging.getLogger("kilomatch")

# Candidate pairs of at least this probability describe the distance between matches.
SURE_PROBABILITY = 0.9
_N_BINS = 8
_MIN_PER_BIN = 10
_MIN_SURE = 50  # fewer sure pairs than this: the spread is not learned
SESSION_ROUNDS = 4  # fits of the floor and the sessions' variance in turn
SESSION_TURNS = 4  # turns of the sessions' medians within a round
SESSION_FIT_PAIRS = 200_000  # more pairs than this: the sessions' part is fitted on a draw
SESSION_MIN_PAIRS = 10  # a session with fewer pairs than this adds nothing
SESSION_CHANCE_SE = 2.0  # a session's median counts beyond this many standard errors
_N_PHASE_BINS = 3  # bins of the phase term sin^2(pi shift / P) in [0, 1]
GRID_MAX_ROWS = 4  # the layout's period is looked for up to this many rows of contacts
GRID_MIN_SHARE = 0.95  # share of contacts a shift by the period must land on a contact


@dataclass(frozen=True)
class PositionNoise:
    """spread(a_i, a_j)^2 = floor_um2 + k_um2_uv2 * (1 / a_i^2 + 1 / a_j^2), plus with
    ``session_um2`` (S,) (um^2, >= 0) the variance each unit's session adds, plus
    ``phase_um2`` (um^2, >= 0) times grid_phase(m_i - m_j, ``period_um``) for units
    corrected by motions m_i, m_j (um)."""

    floor_um2: float
    k_um2_uv2: float
    session_um2: np.ndarray | None = None
    phase_um2: float = 0.0
    period_um: float = 0.0

    def spread(self, amplitude_a: np.ndarray, amplitude_b: np.ndarray,
               session_a: np.ndarray | None = None, session_b: np.ndarray | None = None,
               shift: np.ndarray | None = None) -> np.ndarray:
        """Typical distance (um) between two units of one neuron of these amplitudes (uV),
        recorded in sessions ``session_a``, ``session_b`` (0-based; without them, or
        without ``session_um2``, the spread of any two sessions), whose motions differ by
        ``shift`` (um; without it, the spread at one phase of the grid)."""
        var = self.floor_um2 + self.k_um2_uv2 * _inverse_square_sum(amplitude_a, amplitude_b)
        if self.session_um2 is not None and session_a is not None and session_b is not None:
            var = var + self.session_um2[session_a] + self.session_um2[session_b]
        if self.phase_um2 > 0 and shift is not None:
            var = var + self.phase_um2 * grid_phase(shift, self.period_um)
        return np.sqrt(var)


def grid_period(channel_locations: np.ndarray, channel_shanks: np.ndarray | None = None
                ) -> float:
    """The depth (um) after which the contact layout repeats: the smallest multiple of the
    row pitch, up to GRID_MAX_ROWS rows, by which a shift in depth takes at least
    GRID_MIN_SHARE of the contacts that stay on the probe onto a contact at the same x (and
    shank). channel_locations (C, 2+) um; channel_shanks (C,) or None. 0 when none does
    (an irregular layout: the spread has no phase term) or with fewer than 3 rows."""
    loc = np.round(np.asarray(channel_locations, np.float64)[:, :2], 1)
    shank = np.zeros(len(loc)) if channel_shanks is None else np.asarray(channel_shanks)
    rows = np.unique(loc[:, 1])
    if rows.size < 3:
        return 0.0
    pitch = float(np.min(np.diff(rows)))
    contacts = set(zip(shank.tolist(), loc[:, 0].tolist(), loc[:, 1].tolist()))
    for n_rows in range(1, GRID_MAX_ROWS + 1):
        period = round(pitch * n_rows, 1)
        stays = loc[:, 1] + period <= rows[-1]
        if not stays.any():
            break
        lands = [(k, x, round(y + period, 1)) in contacts
                 for k, x, y in zip(shank[stays].tolist(), *loc[stays].T.tolist())]
        if np.mean(lands) >= GRID_MIN_SHARE:
            return period
    return 0.0


def grid_phase(shift: np.ndarray, period_um: float) -> np.ndarray:
    """sin^2(pi shift / period_um) (P,) in [0, 1] of motions differing by shift (P,) um: 0 at
    one phase of the contact grid, 1 at half a period apart; 0 everywhere without a period."""
    shift = np.asarray(shift, np.float64)
    if not period_um > 0:
        return np.zeros_like(shift)
    return np.square(np.sin(np.pi * shift / period_um))


def fit_position_noise(distance: np.ndarray, amplitude_a: np.ndarray, amplitude_b: np.ndarray,
                       session_a: np.ndarray | None = None, session_b: np.ndarray | None = None,
                       n_sessions: int = 0, shift: np.ndarray | None = None,
                       period_um: float = 0.0) -> PositionNoise | None:
    """PositionNoise from pairs of one neuron: distance (P,) um between the units' corrected
    positions, their amplitudes (P,) uV; with their sessions (P,) (0-based, below
    ``n_sessions``), each session's own variance (:func:`session_variance`); with the
    difference of their motions ``shift`` (P,) um and the layout's ``period_um``
    (:func:`grid_period`), the variance of the grid's phase. None with fewer than 50
    pairs, or when the fitted spread is 0."""
    distance = np.asarray(distance, np.float64)
    if distance.size < _MIN_SURE:
        return None
    u = _inverse_square_sum(amplitude_a, amplitude_b)
    d2 = np.square(distance)
    h = None if shift is None or not period_um > 0 else grid_phase(shift, period_um)
    noise = _fit_floor_and_k(d2, u)
    if noise is None:
        return None
    if session_a is None or session_b is None or n_sessions < 2:
        return _with_phase(noise, d2 - noise.floor_um2 - noise.k_um2_uv2 * u, h, period_um)
    session_a = np.asarray(session_a, np.int64)
    session_b = np.asarray(session_b, np.int64)
    if d2.size > SESSION_FIT_PAIRS:
        # the sessions' medians need hundreds of pairs each, not millions (10^5 units: 3 M
        # sure pairs; every round sorts them several times); a seeded draw keeps it exact
        keep = np.sort(np.random.default_rng(0).choice(d2.size, SESSION_FIT_PAIRS,
                                                         replace=False))
        d2, u, session_a, session_b = d2[keep], u[keep], session_a[keep], session_b[keep]
        h = None if h is None else h[keep]
    extra = np.zeros(n_sessions)
    for _ in range(SESSION_ROUNDS):
        refit = _fit_floor_and_k(d2 - extra[session_a] - extra[session_b], u)
        if refit is None:
            break
        noise = refit
        extra = session_variance(d2 - (noise.floor_um2 + noise.k_um2_uv2 * u),
                                 session_a, session_b, n_sessions, extra)
    noise = PositionNoise(noise.floor_um2, noise.k_um2_uv2, extra)
    excess = d2 - noise.floor_um2 - noise.k_um2_uv2 * u - extra[session_a] - extra[session_b]
    return _with_phase(noise, excess, h, period_um)


def _with_phase(noise: PositionNoise, excess: np.ndarray, h: np.ndarray | None,
                period_um: float) -> PositionNoise:
    """``noise`` with the grid's phase variance: the least-squares slope (um^2, clipped at
    0) of the median ``excess`` (P,) (d^2 less the spread's square, um^2) against the
    median phase term h (P,) in _N_PHASE_BINS bins of equal width that hold _MIN_PER_BIN
    pairs or more (two such bins at least; else none)."""
    if h is None:
        return noise
    which = np.minimum((h * _N_PHASE_BINS).astype(np.int64), _N_PHASE_BINS - 1)
    _, ys, count = grouped_median(excess, which)
    full = count >= _MIN_PER_BIN
    if full.sum() < 2:
        return noise
    hs, ys = grouped_median(h, which)[1][full], ys[full]
    if np.ptp(hs) <= 0:
        return noise
    slope = np.polyfit(hs, ys, 1)[0]
    return dataclasses.replace(noise, phase_um2=float(max(slope, 0.0)),
                               period_um=float(period_um))


def session_variance(excess: np.ndarray, session_a: np.ndarray, session_b: np.ndarray,
                     n_sessions: int, start: np.ndarray | None = None) -> np.ndarray:
    """(S,) variance (um^2, >= 0) each session adds to the spread, from the excess (P,) of
    each pair of one neuron (its squared distance minus its spread's square, um^2) and the
    sessions session_a, session_b (P,) (0-based) of its units: w_s = the median over the
    pairs with a unit in session s of excess - w_t (t the other unit's session), less
    SESSION_CHANCE_SE standard errors of that median, clipped at 0, by turns from
    ``start`` (S,) (zeros when None) for SESSION_TURNS turns; 0 for a session with fewer
    than SESSION_MIN_PAIRS pairs."""
    w = np.zeros(n_sessions) if start is None else np.array(start, np.float64)
    # each pair counted once for each of its two sessions
    own = np.concatenate([session_a, session_b])
    other = np.concatenate([session_b, session_a])
    twice = np.concatenate([excess, excess])
    count = np.bincount(own, minlength=n_sessions)
    for _ in range(SESSION_TURNS):
        value = twice - w[other]
        sessions, median, n = grouped_median(value, own)
        # less SESSION_CHANCE_SE standard errors of the median (normal approximation,
        # sd from the MAD): a session that differs only by chance adds about nothing
        mad = grouped_median(np.abs(value - median[np.searchsorted(sessions, own)]), own)[1]
        se = 1.2533 * 1.4826 * mad / np.sqrt(n)
        w = np.zeros(n_sessions)
        w[sessions] = np.maximum(median - SESSION_CHANCE_SE * se, 0.0)
        w[count < SESSION_MIN_PAIRS] = 0.0
    return w


def _inverse_square_sum(amplitude_a: np.ndarray, amplitude_b: np.ndarray) -> np.ndarray:
    """1 / a_i^2 + 1 / a_j^2 of two units' amplitudes (uV; floored at 1e-3), uV^-2."""
    return 1 / np.square(np.maximum(amplitude_a, 1e-3)) + \
        1 / np.square(np.maximum(amplitude_b, 1e-3))


def _fit_floor_and_k(d2: np.ndarray, u: np.ndarray) -> PositionNoise | None:
    """The binned fit: d2 (P,) squared distances (um^2) of pairs of 1/a_i^2 + 1/a_j^2 = u
    (P,); None when no bin is full or the spread comes out 0."""
    from scipy.optimize import nnls
    # bins of equal count in u; a bin's median of d^2 against its median u
    edges = np.quantile(u, np.linspace(0, 1, _N_BINS + 1)[1:-1])
    which = np.searchsorted(edges, u, side="right")
    xs, ys = [], []
    for k in range(_N_BINS):
        in_bin = which == k
        if in_bin.sum() >= _MIN_PER_BIN:
            xs.append(np.median(u[in_bin]))
            ys.append(np.median(d2[in_bin]))
    if not xs:
        return None
    (floor, k), _ = nnls(np.column_stack([np.ones(len(xs)), xs]), np.array(ys))
    if floor + k * np.min(xs) <= 0:
        return None
    return PositionNoise(float(floor), float(k))


def distance_ratio(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray,
                   noise: PositionNoise | None, session: np.ndarray | None = None,
                   unit_motion: np.ndarray | None = None) -> np.ndarray | None:
    """(Q,) distance between the units of each pair (Q, 2) over the spread of matches of
    their amplitudes (and sessions, ``session`` (N,) 0-based; and grid phases,
    ``unit_motion`` (N,) um, each unit's recorded less its corrected depth); positions
    (N, D) um, amplitude (N,) uV. None without a noise model."""
    if noise is None:
        return None
    a, b = pairs[:, 0], pairs[:, 1]
    distance = np.linalg.norm(positions[a] - positions[b], axis=1)
    sa, sb = (None, None) if session is None else (session[a], session[b])
    shift = None if unit_motion is None else unit_motion[a] - unit_motion[b]
    return distance / noise.spread(amplitude[a], amplitude[b], sa, sb, shift)


# Pairs whose distance ratios distance_ratio_of_many works out at a time: its temporaries
# (differences, amplitudes, sessions, shifts of each pair) stay near 200 MB at 10^5 units,
# whose 28 M candidate pairs at once raised the run's peak by 0.8 GB (8.4 GB against 7.6).
RATIO_BLOCK = 2_000_000


def distance_ratio_of_many(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray,
                           noise: PositionNoise | None, session: np.ndarray | None = None,
                           unit_motion: np.ndarray | None = None) -> np.ndarray | None:
    """:func:`distance_ratio` of many pairs (P, 2), RATIO_BLOCK at a time: (P,) float32, or
    None without a noise model."""
    if noise is None:
        return None
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), np.float32)
    for at in range(0, len(pairs), RATIO_BLOCK):
        out[at:at + RATIO_BLOCK] = distance_ratio(positions, amplitude,
                                                  pairs[at:at + RATIO_BLOCK], noise, session,
                                                  unit_motion)
    return out


def noise_of_pairs(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray,
                   session: np.ndarray | None = None, unit_motion: np.ndarray | None = None,
                   period_um: float = 0.0) -> PositionNoise | None:
    """PositionNoise from pairs (P, 2) taken to be one neuron each; positions (N, D) um,
    amplitude (N,) uV, session (N,) 0-based or None, unit_motion (N,) um (each unit's
    recorded less its corrected depth) or None, period_um the layout's (grid_period)
    (fit_position_noise)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    distance = np.linalg.norm(positions[a] - positions[b], axis=1)
    shift = None if unit_motion is None else unit_motion[a] - unit_motion[b]
    if session is None:
        return fit_position_noise(distance, amplitude[a], amplitude[b], shift=shift,
                                  period_um=period_um)
    session = np.asarray(session, np.int64)
    return fit_position_noise(distance, amplitude[a], amplitude[b], session[a], session[b],
                              int(session.max()) + 1 if session.size else 0, shift, period_um)


def learn_position_noise(positions: np.ndarray, amplitude: np.ndarray, pairs: np.ndarray,
                         probability: np.ndarray, session: np.ndarray | None = None,
                         unit_motion: np.ndarray | None = None, period_um: float = 0.0
                         ) -> PositionNoise | None:
    """PositionNoise from the candidate pairs (P, 2) whose match probability (P,) is at least
    SURE_PROBABILITY; positions (N, D) um, amplitude (N,) uV, session (N,) or None,
    unit_motion (N,) um or None, period_um (noise_of_pairs)."""
    return noise_of_pairs(positions, amplitude,
                          pairs[np.asarray(probability) >= SURE_PROBABILITY], session,
                          unit_motion, period_um)


def describe(noise: PositionNoise) -> str:
    """One line for the log: the floor, the spread at 50 uV, and what the sessions add."""
    text = "%.1f um floor, %.1f um at 50 uV" % (
        np.sqrt(noise.floor_um2), float(noise.spread(np.array([50.0]), np.array([50.0]))[0]))
    if noise.phase_um2 > 0:
        text += "; the grid's phase adds up to %.1f um (contacts repeat every %g um)" % (
            np.sqrt(noise.phase_um2), noise.period_um)
    if noise.session_um2 is not None and noise.session_um2.size:
        extra = noise.session_um2
        text += "; sessions add up to %.1f um (%d of %d add any)" % (
            np.sqrt(extra.max()), np.count_nonzero(extra), extra.size)
    return text


def learned_distance_ratio(positions: np.ndarray, amplitude: np.ndarray, candidates: np.ndarray,
                           candidate_probability: np.ndarray, pairs: np.ndarray,
                           session: np.ndarray | None = None,
                           unit_motion: np.ndarray | None = None, period_um: float = 0.0
                           ) -> np.ndarray | None:
    """(Q,) distance ratio of the ``pairs`` (Q, 2), with the spread learned from the candidate
    pairs (P, 2) and their match probability (P,); positions (N, D) um, amplitude (N,) uV,
    session (N,) 0-based or None, unit_motion (N,) um or None, period_um
    (noise_of_pairs). None when too few candidate pairs are sure matches to learn it."""
    noise = learn_position_noise(positions, amplitude, candidates, candidate_probability, session,
                                 unit_motion, period_um)
    if noise is None:
        log.info("position noise: too few sure matches to learn it; no cut rests on distance")
        return None
    log.info("position noise of matches: %s", describe(noise))
    return distance_ratio(positions, amplitude, pairs, noise, session, unit_motion)
