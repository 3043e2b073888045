"""Match probability of candidate pairs, learned from each dataset's own non-matches.

Two units of one session (and one shank) are different neurons by definition, so the
same-session pairs within ``clustering.max_distance`` are a sample of non-matches, at every
distance, amplitude and spike count the data holds. The cross-session candidate pairs are a
mixture of non-matches, drawn from that same distribution, and matches. A classifier that
tells the two sets of pairs apart, calibrated by isotonic regression (the mean of bootstrap
fits), estimates the density ratio r(x) = f_candidate(x) / f_non(x) of the pairs' evidence
x; with pi the fraction of matches among candidate pairs,

    P(match | x) = 1 - (1 - pi) / r(x).

pi is estimated, not assumed: in a region that holds no match (the caller's anchor, e.g.
pairs whose corrected depths are far apart) the candidate pairs are all non-matches, so their
share there is (1 - pi) times the non-matches' share. The estimate is as good as the number
of same-session pairs allows (a few hundred give +-0.05).

The classifier is gradient-boosted trees on the evidence (similarities, motion-corrected
position differences, amplitude and amplitude ratio, spike count), so that it sees how
similarity depends on signal-to-noise, which no single threshold on a weighted similarity can.
Every pair's probability comes from models that did not see it (cross-fitting). Arrays in,
arrays out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .parallel import for_each_in_threads, pair_threads
from .waveform_noise import beyond_noise

log = logging.getLogger("kilomatch")

# Columns of the evidence besides the similarity features (see pair_evidence); given the
# units' noise shares, one more last: the Waveform similarity against the noise
# (waveform_noise.beyond_noise).
POSITION_COLUMNS = ("dx_um", "dy_um", "dz_um", "distance_um")
UNIT_COLUMNS = ("log_amplitude_min", "log_amplitude_ratio", "log_spikes_min")
N_EXTRA = len(POSITION_COLUMNS) + len(UNIT_COLUMNS)


def same_session_pairs(depth: np.ndarray, session: np.ndarray, max_distance: float,
                       shank: np.ndarray | None = None) -> np.ndarray:
    """Pairs (i < j) of units of one session (and shank) with |depth_i - depth_j| <=
    max_distance: (Q, 2) int64, sorted. depth (N,) um; session, shank (N,) ids."""
    from .similarity import within_blocks
    group = np.asarray(session, dtype=np.int64)
    if shank is not None:
        group = group * (int(np.max(shank, initial=0)) + 1) + np.asarray(shank, np.int64)
    return within_blocks(depth, group, max_distance)


def pair_evidence(similarities: np.ndarray, positions: np.ndarray, amplitude: np.ndarray,
                  n_spikes: np.ndarray, pairs: np.ndarray,
                  noise_share: np.ndarray | None = None) -> np.ndarray:
    """Evidence of each pair for the classifier: (P, F + N_EXTRA [+ 1]) float64.

    similarities: (P, F) Fisher z per feature, the first Waveform; positions: (N, 3)
    motion-corrected x, y, z um; amplitude: (N,) uV; n_spikes: (N,); noise_share: (N,) share
    of each unit's waveform variance that is noise (waveform_noise.noise_share), or None.
    Columns: the F similarities, |dx|, |dy|, |dz| and the distance (um), log10 of the smaller
    amplitude, |log10 amplitude ratio|, log10 of the smaller spike count (+1), and with
    noise_share the Waveform similarity measured against the two units' noise
    (waveform_noise.beyond_noise).
    """
    a, b = pairs[:, 0], pairs[:, 1]
    diff = np.abs(positions[a] - positions[b])
    # The distance as a column of its own: trees split one column at a time, and with few
    # same-session pairs they could not learn from |dx|, |dy|, |dz| apart that two alike
    # waveforms 15-30 um apart in space are two neurons (on high-turnover data such pairs got
    # probability 1).
    distance = np.sqrt(np.sum(diff ** 2, axis=1))
    amp = np.log10(np.maximum(np.asarray(amplitude, np.float64), 1e-3))
    spikes = np.log10(np.asarray(n_spikes, np.float64) + 1)
    columns = [similarities, diff, distance, np.minimum(amp[a], amp[b]),
               np.abs(amp[a] - amp[b]), np.minimum(spikes[a], spikes[b])]
    if noise_share is not None:
        columns.append(beyond_noise(similarities[:, 0], noise_share[a], noise_share[b]))
    return np.column_stack(columns)


class LazyEvidence:
    """pair_evidence of every candidate pair, computed when rows are read (``x[rows]``: an
    index array, a bool mask or a slice -> (n, F + N_EXTRA)), so that the (P, F + N_EXTRA)
    matrix is never held whole (2 GB at 10^5 units). Rows read are the same values as rows of
    the whole matrix: each row depends on its own pair only."""

    def __init__(self, similarities: np.ndarray, positions: np.ndarray, amplitude: np.ndarray,
                 n_spikes: np.ndarray, pairs: np.ndarray, noise_share: np.ndarray | None = None):
        self.similarities, self.pairs = similarities, pairs
        self.units = (positions, amplitude, n_spikes)
        self.noise_share = noise_share

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, rows) -> np.ndarray:
        return pair_evidence(self.similarities[rows], *self.units, self.pairs[rows],
                             self.noise_share)


@dataclass
class MatchModel:
    """A fitted match probability: the fold models, the calibration, the match prior.

    prior: estimated fraction of matches among candidate pairs; n_candidates, n_non_matches:
    pairs the fit saw; candidate_probability: (P,) cross-fitted probability of each candidate
    pair (each from the model that did not train on it).
    """

    models: list
    calibration: object
    prior: float
    n_candidates: int
    n_non_matches: int
    candidate_probability: np.ndarray
    non_match_probability: np.ndarray = field(repr=False, default=None)
    bin_edges: list = field(repr=False, default=None)  # each fold model's (bin_edges)
    raw_models: list = field(repr=False, default=None)  # each fold model's on_raw_evidence
    # the classifier's cross-fitted scores before calibration, float32: (P,) of the candidate
    # pairs the fit saw and (Q,) of the same-session pairs, sorted. The calibration gives
    # most non-matches and many small units' matches about one value (its low end); the
    # scores still rank them (kilomatch.curation pools them over a unit's pairs: non_match_share)
    candidate_score: np.ndarray = field(repr=False, default=None)
    non_match_score: np.ndarray = field(repr=False, default=None)
    # further fits of the same pairs with other folds and draws (kilomatch.linking
    # PROBABILITY_FITS): predict is the mean of every fit's probability
    members: list = field(repr=False, default_factory=list)

    def non_match_level(self, quantile: float = 0.9) -> float:
        """The probability that known non-matches (the same-session pairs, cross-fitted) stay
        below in the given share: where this dataset's probability of a non-match lies. It is
        above 0 when the prior is overestimated (few same-session pairs) and every
        non-match gets some probability. (kilomatch.linking.fit_links keeps only the pairs
        within the prior's anchor in ``non_match_probability``.)"""
        p = self.non_match_probability
        return float(np.quantile(p, quantile)) if p is not None and len(p) else 0.0

    def predict(self, evidence: np.ndarray) -> np.ndarray:
        """Probability of pairs none of the models trained on: (P, K) -> (P,), from the mean
        score of the fold models (the mean of that over the members' fits, when there are
        members)."""
        if not len(evidence):
            return np.zeros(0)
        p = self.probability(self.score(evidence))
        for member in self.members:
            p += member.probability(member.score(evidence))
        return p / (1 + len(self.members))

    def probability(self, score: np.ndarray) -> np.ndarray:
        """Match probability (P,) of the fold models' mean scores (P,) (:meth:`score`)."""
        return _probability(_calibrated(self.calibration, score), self.prior)

    def score(self, evidence: np.ndarray) -> np.ndarray:
        """The fold models' mean score (before calibration) of pairs: (P, K) -> (P,)."""
        score = np.zeros(len(evidence))
        raw = self.raw_models or [None] * len(self.models)
        with _scoring_threads():
            for rows in _chunks(len(evidence)):
                x = evidence[rows]
                score[rows] = np.mean([_score(m, e, r, x) for m, e, r in
                                       zip(self.models, self.bin_edges, raw)], axis=0)
        return score

    def non_match_share(self, score: np.ndarray) -> np.ndarray:
        """Share of the same-session pairs (known non-matches) whose cross-fitted score is at
        least each of ``score`` (K,): (K,) in (0, 1], the tail p-value of a non-match with that
        score (one more non-match counted at the score, so never 0). All 1 without scores."""
        null = self.non_match_score
        score = np.asarray(score, np.float64)
        if null is None or not len(null):
            return np.ones(score.size)
        at_least = null.size - np.searchsorted(null, score.astype(np.float32), side="left")
        return (at_least + 1.0) / (null.size + 1.0)


def _probability(g: np.ndarray, prior: float) -> np.ndarray:
    """P(match) from the calibrated share g of candidates (balanced classes): the density
    ratio is g / (1 - g)."""
    g = np.clip(g, 1e-9, 1 - 1e-9)
    return np.clip(1.0 - (1.0 - prior) * (1 - g) / g, 0.0, 1.0)


def _one_thread():
    """The trees on one thread: on a shared machine OpenMP's spinning threads made the fit
    ten times slower; the small fits here gain little from more (results are the same)."""
    from threadpoolctl import threadpool_limits
    _tree_classifier()  # the limits reach only thread pools already loaded: scikit-learn's
    return threadpool_limits(1)


def _scoring_threads():
    """Scoring (the trees' predictions, every candidate pair: 25 M at 10^5 units) in the run's
    n_jobs threads: each pair is scored on its own, so the scores do not depend on it."""
    from threadpoolctl import threadpool_limits
    _tree_classifier()  # as in _one_thread
    return threadpool_limits(pair_threads(), user_api="openmp")


# Histogram bins per evidence column. 63, not 255: the suite's F1 stayed within 0.007 and the
# fit is faster.
N_BINS = 63


def _tree_classifier():
    """scikit-learn's HistGradientBoostingClassifier, imported on first use (with it, the
    OpenMP runtime its trees run on)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    return HistGradientBoostingClassifier


# Number of trees and learning rate: 60 at 0.1, and for a large fit (THIN_MIN_ROWS pairs
# beyond the anchor or more, whose far pairs are thinned, below) 40 at 0.15, a third less of
# its time; the accuracy suite was unchanged within its seed noise with both (benchmarks/
# RESULTS.md, "Session 38"). Small fits keep 60 trees: on the toy studies of the tests,
# 40 ranked the matches a little worse.
TREES = (60, 0.1)
TREES_LARGE = (40, 0.15)


def _classifier(seed: int, trees: tuple = TREES):
    # No early stopping: it would hold out a random validation set; a fixed number of
    # shallow, regularised trees keeps the density ratio smooth where pairs are few.
    n_trees, learning_rate = trees
    return _tree_classifier()(
        max_iter=n_trees, learning_rate=learning_rate, max_leaf_nodes=15, min_samples_leaf=40,
        max_bins=N_BINS, l2_regularization=1.0, early_stopping=False, random_state=seed)


def bin_edges(x: np.ndarray, weight: np.ndarray, n_bins: int = N_BINS) -> list:
    """The classifier's own bin edges of weighted data, found faster: a list of K increasing
    arrays, one per column of x (n, K); a value v falls in bin i when edges[i-1] < v <=
    edges[i].

    As scikit-learn's histogram gradient boosting bins weighted data (1.8): the distinct
    values' midpoints when there are at most ``n_bins``, else the weighted percentiles at
    100 i / n_bins (i = 1 .. n_bins - 1) by the averaged inverted CDF. It finds them one
    percentile at a time, sorting the column again for each: 11 s of the step's 32 s at 10k
    units. Here one sort per column gives them all (the same edges: every bin holds data, so
    the trees, and every prediction, are the same). The sort need not be stable (numpy's
    default is six times faster on this machine's AVX-512): with every weight positive, the
    order of tied values moves no edge in exact arithmetic (the CDF at the end of a run of
    ties, and before it, is the run's whole weight whatever its order). In floating point
    the sums can differ in their last bit with that order, which numpy's sort may choose
    differently on another CPU; an edge moves only if a percentile falls within that bit of
    the end of a run of ties (with the stable sort and without, the speed study's outputs
    and, with the same-session pairs alone, the 20 suite datasets' CandidatePairs.npz at
    seed 0 were byte-identical, benchmarks/RESULTS.md, "Session 41")."""
    levels = np.arange(1, n_bins) / n_bins
    edges = []
    for column in np.asarray(x, np.float64).T:
        order = np.argsort(column)
        values = column[order]
        distinct = values[np.r_[True, values[1:] != values[:-1]]]  # sorted already
        if distinct.size <= 1:
            edges.append(np.zeros(0))
            continue
        if distinct.size <= n_bins:
            found = 0.5 * (distinct[:-1] + distinct[1:])
        else:
            cdf = np.cumsum(weight[order])
            rank = levels * cdf[-1]
            at = np.minimum(np.searchsorted(cdf, rank, side="left"), values.size - 1)
            above = cdf[at] - rank > np.finfo(np.float64).eps
            after = values[np.minimum(at + 1, values.size - 1)]
            found = np.unique(np.where(above, values[at], 0.5 * (values[at] + after)))
        edges.append(found)
    return edges


def to_bins(x: np.ndarray, edges: list) -> np.ndarray:
    """Bin index of every value of x (n, K) by its column's edges (bin_edges): (n, K)
    float64. Trees split on order only, so the classifier on bin indices is the classifier
    on these bins; with fewer distinct values than its own bin count it bins nothing."""
    out = np.empty(np.shape(x), np.float64)
    for k, e in enumerate(edges):
        out[:, k] = np.searchsorted(e, x[:, k], side="left")
    return out


def on_raw_evidence(model, edges: list):
    """A copy of ``model``, fitted on bin indices (to_bins with ``edges``), that scores the
    evidence itself, with the same result: each split "bin index <= t" becomes "value <=
    edges[floor(t)]" (a value's bin index, the number of edges below it, is at most k exactly
    when the value is at most edges[k]; +inf past the last edge). Binning every scored pair
    (7 M at 30k units, ten columns each) cost about as much as a third of the trees'
    predictions. None when the model is not laid out as expected (scikit-learn's trees are
    private): the caller bins. For finite evidence only: a NaN would follow the trees'
    missing-value branch, while to_bins puts it in the last bin."""
    import copy
    try:
        raw = copy.deepcopy(model)
        for trees in raw._predictors:
            for tree in trees:
                nodes = tree.nodes
                split = (nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)
                for i in np.flatnonzero(split):
                    e = edges[int(nodes["feature_idx"][i])]
                    k = int(np.floor(nodes["num_threshold"][i]))
                    nodes["num_threshold"][i] = e[k] if 0 <= k < e.size else (
                        np.inf if k >= e.size else -np.inf)
    except (AttributeError, KeyError, ValueError, TypeError, IndexError):
        return None
    return raw


# training rows on which the raw-evidence copy must score as the model does before it is used
RAW_CHECK_ROWS = 4096


def _checked_raw(model, edges: list, raw, x: np.ndarray):
    """``raw`` (on_raw_evidence's copy) if it scores the first training rows x (n, K) exactly
    as the model scores their bins, else None: it rewrites scikit-learn's private trees, and
    a layout that changed without an error must not change a probability."""
    if raw is None:
        return None
    rows = x[:RAW_CHECK_ROWS]
    rows = rows[np.isfinite(rows).all(axis=1)]
    if not np.array_equal(raw.predict_proba(rows), model.predict_proba(to_bins(rows, edges))):
        log.warning("the probability's trees are not laid out as expected: scoring bins "
                    "the evidence (slower, same values)")
        return None
    return raw


def _score(model, edges: list, raw, x: np.ndarray) -> np.ndarray:
    """Score (n,) of evidence x (n, K) by a model fitted on bin indices: through its
    on_raw_evidence copy ``raw`` when there is one and x is finite, else on to_bins(x)."""
    if raw is not None and np.isfinite(x).all():
        return raw.predict_proba(x)[:, 1]
    return model.predict_proba(to_bins(x, edges))[:, 1]


def _balanced_weight(y: np.ndarray) -> np.ndarray:
    """Sample weights giving both classes of y (0/1) the same total."""
    w_neg, w_pos = _class_weights(y)
    return np.where(y == 1, w_pos, w_neg)


def _balanced(weight: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row weights (n,) scaled so that each class of y (0/1) weighs n / 2 in all.
    (_balanced_weight is this for weights of 1, in another order of float operations that
    today's fits keep, byte for byte.)"""
    out = np.asarray(weight, np.float64).copy()
    for cls in (True, False):
        rows = (y == 1) == cls
        total = out[rows].sum()
        if total > 0:
            out[rows] *= 0.5 * y.size / total
    return out


def _class_weights(y: np.ndarray) -> tuple[float, float]:
    """The weight of one row of class 0 and of class 1 in y (n,) 0/1 that gives both classes
    the same total (n / 2 each)."""
    n_pos = max(int(np.count_nonzero(y == 1)), 1)
    n_neg = max(int(y.size - np.count_nonzero(y == 1)), 1)
    return 0.5 / n_neg * y.size, 0.5 / n_pos * y.size


# Rows of evidence the classifier scores at once: bounds the copies (binned, and the
# classifier's own) to ~100 MB however many pairs there are (25 M at 10^5 units).
CHUNK_ROWS = 1_000_000


def _chunks(n: int) -> list:
    """Consecutive slices of at most CHUNK_ROWS covering range(n)."""
    return [slice(a, min(a + CHUNK_ROWS, n)) for a in range(0, n, CHUNK_ROWS)]


# Each fold's trees train on at most this many rows, drawn with the seed. The suite's and the
# speed study's fits are under 200,000 rows in all (the largest: 185,000), so they train on
# every row either way. At 10^5 units (29 M rows), 200,000 left the probability at the mercy
# of the draw: with the same evidence but 564 fewer known non-matches, 22,000 of
# the 660,000 true pairs moved by more than 0.3 and F1 0.996 -> 0.993. With 1,000,000, a third
# fewer true pairs moved that much between two seeds at 10k units, and at 10^5 units F1 was
# 0.995, its probability 0.5 or more on more true pairs and on fewer wrong ones; the fit
# takes 5 s more at 10k units, 12 s at 10^5 (benchmarks/RESULTS.md, "Session 70").
MAX_TRAIN_ROWS = 1_000_000


def fit_match_probability(candidates: np.ndarray, non_matches: np.ndarray,
                          anchor: np.ndarray, anchor_non: np.ndarray, seed: int = 0,
                          n_folds: int = 3, max_train: int = MAX_TRAIN_ROWS,
                          candidate_rows: np.ndarray | None = None,
                          non_weight: np.ndarray | None = None,
                          fold: np.ndarray | None = None, prior: float | None = None,
                          n_bags: int | None = None,
                          thin_non: np.ndarray | None = None) -> MatchModel | None:
    """Fit the match probability of candidate pairs against same-session non-matches.

    candidates: (P, K) evidence of the cross-session candidate pairs, an array or a
    LazyEvidence (only the rows ``candidate_rows`` when given: it is not copied); non_matches: (Q, K) evidence of
    same-session pairs; anchor, anchor_non: (P,), (Q,) bool (P: the rows used), pairs that
    cannot be matches (e.g. corrected depths too far apart), from which the prior is
    estimated. Every row gets a fold; the model of fold k trains on at most ``max_train`` rows
    of the other folds (drawn with ``seed``; in a large fit the candidate rows in the anchor
    are thinned first, _thinned), classes weighted equally, and scores fold k's rows. The
    cross-fitted scores are then calibrated to the share of candidates by isotonic
    regression, the mean of bootstrap fits (_fit_calibration; a monotone map, so it keeps
    the ranking). Returns None when either set is too small to fit (fewer than 50 rows).

    For known non-matches derived from sure matches (kilomatch.derived_non_matches):
    non_weight (Q,) weighs each non-match row in the trees and in the calibration (each class
    still weighs half); fold (P' + Q,) int8 of the rows used, candidates first: each row's
    fold, -1 for a random one (derived_non_matches.group_folds); prior: the share of matches, when it is not
    to be estimated from these rows' anchor; n_bags: the calibration's bootstrap fits
    (None: CALIBRATION_BAGS; 0: one isotonic fit); thin_non (Q,) bool: the non-match rows
    thinned as the candidates beyond the anchor are (derived pairs beyond it, as many as
    the candidates there: one smooth density as well).
    """
    rows = np.arange(len(candidates)) if candidate_rows is None else np.asarray(candidate_rows)
    n_c, n_n = len(rows), len(non_matches)
    if n_c < 50 or n_n < 50:
        return None
    rng = np.random.default_rng(seed)

    def evidence(idx):
        """Rows idx (sorted) of the candidates' rows followed by the non-matches, float64."""
        cut = np.searchsorted(idx, n_c)
        return np.vstack([candidates[rows[idx[:cut]]],
                          non_matches[idx[cut:] - n_c]]).astype(np.float64, copy=False)

    y = np.r_[np.ones(n_c, np.int8), np.zeros(n_n, np.int8)]
    # the same shuffle as of the int64 fold numbers (it moves positions, not values): 1 byte each
    drawn = rng.permutation((np.arange(y.size) % n_folds).astype(np.int8))
    if fold is None:
        fold = drawn
    else:
        fold = np.where(fold >= 0, fold, drawn)
        del drawn
    row_weight = None if non_weight is None else RowWeight(n_c, non_weight)
    usable, far = _thinned(anchor, n_n, seed, thin_non)
    score = np.empty(y.size)
    with _one_thread():
        models, edges, raw = _cross_fit(evidence, y, fold, n_folds, max_train, rng, seed,
                                        score, row_weight, usable, far)
    calibration = _fit_calibration(score, y, seed,
                                   CALIBRATION_BAGS if n_bags is None else n_bags,
                                   weight=row_weight)
    if prior is None:
        prior = match_prior(anchor, anchor_non)
    log.info("match probability: %d candidate pairs, %d same-session pairs; estimated "
             "fraction of matches among candidate pairs %.4f", n_c, n_n, prior)
    candidate_score = score[:n_c].astype(np.float32)
    non_score = np.sort(score[n_c:].astype(np.float32))
    # the scores become the probabilities in place, a block at a time: the whole arrays'
    # copies and temporaries took the fit's memory 0.6 GB above its cross-fit at 10^5 units
    probability = score
    for part in _chunks(score.size):
        probability[part] = _probability(calibration.predict(score[part]), prior)
    return MatchModel(models, calibration, prior, n_c, n_n, probability[:n_c],
                      probability[n_c:], edges, raw, candidate_score, non_score)


# The trees train on one in THIN_ANCHOR of the candidate pairs beyond the prior's anchor
# (each weighing THIN_ANCHOR) when there are at least THIN_MIN_ROWS of them (a large fit,
# which also takes TREES_LARGE): those pairs hold no match, so their evidence is one smooth
# density, and they are most of the candidates (70%, 44,000 pairs on the speed study).
# Every pair is still scored and calibrated. Fewer are fitted fast anyway, and each then
# counts (on the 20 s sorted sessions of tests/test_sorted_chain.py, thinned trees moved the
# two input routes' clusters apart). THIN_ANCHOR 1: every pair.
THIN_ANCHOR = 3
THIN_MIN_ROWS = 10_000


def _thinned(anchor: np.ndarray, n_non: int, seed: int,
             thin_non: np.ndarray | None = None) -> tuple:
    """The rows the trees may train on and the thinned ones: ((P + Q,) bool, (P + Q,) bool),
    or (None, None) for every row at its own weight. The candidate rows beyond the anchor
    (P,), when there are THIN_MIN_ROWS of them or more, are thinned to one in THIN_ANCHOR,
    drawn with ``seed`` (CHUNK_ROWS at a time: the same draws as at once, without a float
    per pair, 25 M at 10^5 units); each kept one weighs THIN_ANCHOR (_tree_weight). The
    non-match rows that ``thin_non`` (Q,) marks are thinned with them."""
    if THIN_ANCHOR <= 1 or np.count_nonzero(anchor) < THIN_MIN_ROWS:
        return None, None
    far = np.r_[np.asarray(anchor, bool),
                np.zeros(n_non, bool) if thin_non is None else np.asarray(thin_non, bool)]
    rng = np.random.default_rng([seed, 11])
    usable = ~far
    for part in _chunks(far.size):
        usable[part] |= rng.random(part.stop - part.start) * THIN_ANCHOR < 1
    return usable, far


class RowWeight:
    """The weights of a fit's rows, the candidates' (n_candidates, all 1) then the
    non-matches' (Q,), without an array of the candidates' ones (216 MB at 10^5 units):
    indexed by a slice or an index array, it gives those rows' weights (n,) float64."""

    def __init__(self, n_candidates: int, non_weight: np.ndarray):
        self.n_candidates = int(n_candidates)
        self.non_weight = np.asarray(non_weight, np.float64)

    def __len__(self) -> int:
        return self.n_candidates + self.non_weight.size

    def __getitem__(self, rows) -> np.ndarray:
        rows = (np.arange(*rows.indices(len(self))) if isinstance(rows, slice)
                else np.asarray(rows))
        out = np.ones(rows.size)
        non = rows >= self.n_candidates
        out[non] = self.non_weight[rows[non] - self.n_candidates]
        return out


def _tree_weight(train: np.ndarray, y: np.ndarray, row_weight: np.ndarray | None,
                 far: np.ndarray | None) -> np.ndarray:
    """Weights (n,) of the training rows ``train`` (n,): their own weights (row_weight, else
    1), THIN_ANCHOR times for a thinned row (``far``), each class scaled to half the total."""
    if far is None:
        return (_balanced_weight(y[train]) if row_weight is None
                else _balanced(row_weight[train], y[train]))
    weight = (np.ones(train.size) if row_weight is None
              else np.asarray(row_weight[train], np.float64).copy())
    weight[far[train]] *= THIN_ANCHOR
    return _balanced(weight, y[train])


# The calibration (score -> share of candidates, classes weighted equally) is the mean of
# CALIBRATION_BAGS isotonic regressions, each on a Poisson bootstrap of the pairs, on the
# scores pooled into at most CALIBRATION_BINS bins of equal count. One isotonic regression
# on a few hundred same-session pairs is a staircase whose steps follow their noise: a step
# 10-20% too high gives a block of non-matches probability 0.1-0.2, one too low a block of
# matches 0.5 (benchmarks/RESULTS.md, "Session 14"). The mean of the bootstrap fits is
# still monotone, so the ranking of the pairs is kept.
CALIBRATION_BINS = 4096
CALIBRATION_BAGS = 20
DISTINCT_MAX_ROWS = 1_000_000  # fits this small look for a bin per distinct score


@dataclass
class Calibration:
    """A monotone map of classifier scores to the share of candidates g (balanced classes):
    linear between ``knots`` (K,) increasing scores, constant beyond the ends; ``share`` (K,)
    non-decreasing, in [0, 1]."""

    knots: np.ndarray
    share: np.ndarray

    def predict(self, score: np.ndarray) -> np.ndarray:
        """g (n,) of scores (n,)."""
        return np.interp(np.asarray(score, np.float64), self.knots, self.share)


def _score_bins(score: np.ndarray, y: np.ndarray, n_bins: int,
                weight: np.ndarray | None = None) -> tuple:
    """Pool the scores (n,) into at most n_bins bins of about equal count (tied scores never
    split; a bin per distinct score where there are at most n_bins of them): (knots (K,) mean
    score of each non-empty bin, counts (2, K) of class 0 and 1, each row counted with its
    ``weight`` (n,) when given), CHUNK_ROWS at a time (one partitioned copy of the scores for
    the edges)."""
    distinct = np.unique(score) if score.size <= DISTINCT_MAX_ROWS else None
    if distinct is not None and distinct.size <= n_bins:
        edges = distinct[:-1]  # a bin per distinct score: the fit on every row
    else:
        ranks = np.linspace(0, score.size - 1, n_bins + 1).astype(np.int64)[1:-1]
        edges = np.unique(np.partition(score, ranks)[ranks]) if ranks.size else np.zeros(0)
    n_slots = edges.size + 1
    counts = np.zeros((2, n_slots))
    total = np.zeros(n_slots)
    rows = np.zeros(n_slots)
    for part in _chunks(score.size):
        slot = np.searchsorted(edges, score[part], side="left")
        total += np.bincount(slot, weights=score[part], minlength=n_slots)
        ones = y[part] == 1
        w = None if weight is None else weight[part]
        counts[1] += np.bincount(slot[ones], None if w is None else w[ones], n_slots)
        counts[0] += np.bincount(slot[~ones], None if w is None else w[~ones], n_slots)
        rows += np.bincount(slot, minlength=n_slots)
    # a bin's knot is the mean of its rows' scores, whatever they weigh (divided by the
    # weighted count, the knots left their order: the calibration read garbage)
    used = rows > 0
    return total[used] / rows[used], counts[:, used]


def _fit_calibration(score: np.ndarray, y: np.ndarray, seed: int = 0,
                     n_bags: int = CALIBRATION_BAGS, n_bins: int = CALIBRATION_BINS,
                     weight: np.ndarray | None = None) -> Calibration:
    """The calibration of cross-fitted scores (n,) of class y (n,) 0/1 (1: candidate): the
    mean over ``n_bags`` Poisson bootstraps (seeded; 0: one fit on the pairs as they are) of
    an isotonic regression of the class on the binned scores, each class weighted to the same
    total. scikit-learn's fit on every row held ~10 copies of its input (2.7 GB for the 27 M
    rows at 10^5 units); on the bins it holds a few thousand rows."""
    from sklearn.isotonic import IsotonicRegression
    knots, counts = _score_bins(np.asarray(score, np.float64), np.asarray(y), n_bins, weight)
    rng = np.random.default_rng([seed, 7])
    x = np.r_[knots, knots]
    cls = np.r_[np.zeros(knots.size), np.ones(knots.size)]
    share = np.zeros(knots.size)
    draws = [counts] if n_bags <= 0 else [rng.poisson(counts) for _ in range(n_bags)]
    for drawn in draws:
        totals = np.maximum(drawn.sum(axis=1), 1)
        weight = np.r_[drawn[0] * (0.5 / totals[0]), drawn[1] * (0.5 / totals[1])]
        keep = weight > 0
        fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            x[keep], cls[keep], sample_weight=weight[keep])
        share += fit.predict(knots)
    return Calibration(knots, share / len(draws))


def fit_cluster_calibration(probability: np.ndarray, together: np.ndarray,
                            n_bins: int = CALIBRATION_BINS) -> Calibration:
    """The share of candidate pairs that the final clusters hold together, as a monotone
    function of the pairs' match probability: an isotonic regression of ``together`` (P,)
    bool on ``probability`` (P,) finite, over at most n_bins bins of about equal count (a
    bin per distinct probability where there are few). Its ``predict`` maps any probability
    to that share (kilomatch.linking.calibrate_to_clusters)."""
    from sklearn.isotonic import IsotonicRegression
    knots, counts = _score_bins(np.asarray(probability, np.float64),
                                np.asarray(together, np.int8), n_bins)
    rows = counts.sum(axis=0)
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        knots, counts[1] / rows, sample_weight=rows)
    return Calibration(knots, fit.predict(knots))


def _calibrated(calibration, score: np.ndarray) -> np.ndarray:
    """calibration.predict of scores (n,), CHUNK_ROWS at a time (bounded copies)."""
    out = np.empty(score.size)
    for part in _chunks(score.size):
        out[part] = calibration.predict(score[part])
    return out


def _cross_fit(evidence, y, fold, n_folds, max_train, rng, seed, score,
               row_weight=None, usable=None, far=None) -> tuple:
    """Fit one classifier per fold on the other folds; fill ``score`` (n,) of each fold's
    rows from the model that did not see them (``evidence(rows)``: those rows' evidence).
    Returns the models, each one's bin edges (bin_edges of its training rows) and each
    one's on_raw_evidence copy. usable, far: _thinned's rows (None: every row, TREES); a
    thinned fit trains on the usable rows only, with TREES_LARGE.

    The folds are fitted in threads, one per fold when the run has two cores or more (the
    trees' own loops release the GIL: three fits of 200,000 rows take 4.2 s one after the
    other, 2.7 s in two threads); every fold's training rows are drawn first, in fold order,
    so the models do not depend on the threads."""
    trains = []
    for k in range(n_folds):
        train = np.flatnonzero(fold != k if usable is None else (fold != k) & usable)
        if train.size > max_train:
            train = np.sort(rng.choice(train, max_train, replace=False))
        trains.append(train)
    fitted = [None] * n_folds
    trees = TREES if far is None else TREES_LARGE  # a thinned fit is a large one

    def fit(folds):
        from threadpoolctl import threadpool_limits
        # OpenMP's thread count is set per thread: this one's trees on one thread, as
        # _one_thread has it for the calling thread
        with threadpool_limits(1, user_api="openmp"):
            for k in folds:
                train = trains[k]
                weight = _tree_weight(train, y, row_weight, far)
                x = evidence(train)
                edges = bin_edges(x, weight)
                model = _classifier(seed + k, trees).fit(to_bins(x, edges), y[train],
                                                  sample_weight=weight)
                fitted[k] = (model, edges, _checked_raw(model, edges,
                                                        on_raw_evidence(model, edges), x))

    # one thread per fold once there are two cores: with two threads for three folds the
    # third fit ran alone after the first two (0.56 s on the speed study; all three side by
    # side 0.50 s)
    for_each_in_threads(fit, list(range(n_folds)), n_folds if pair_threads() > 1 else 1)
    models, edges, raw = (list(column) for column in zip(*fitted))
    with _scoring_threads():
        for k in range(n_folds):
            test = np.flatnonzero(fold == k)
            for part in _chunks(test.size):
                score[test[part]] = _score(models[k], edges[k], raw[k], evidence(test[part]))
    return models, edges, raw


def match_prior(anchor: np.ndarray, anchor_non: np.ndarray) -> float:
    """Fraction of matches among candidate pairs: in a region that holds no match (``anchor``
    (P,) of the candidates, ``anchor_non`` (Q,) of the same-session pairs) the candidates are
    all non-matches, so their share there is (1 - pi) times the non-matches' share."""
    share_non = float(np.mean(anchor_non)) if len(anchor_non) else 0.0
    if share_non <= 0:
        return 0.0
    return float(np.clip(1.0 - np.mean(anchor) / share_non, 0.0, 1.0 - 1e-6))


# prior_by_gap: the likelihood ratio's log is clipped (a pair of p 1 or 0 reads +-30) and
# binned for the EM; a gap of fewer pairs than GAP_PRIOR_MIN_PAIRS takes the gap before's share
GAP_PRIOR_LOGIT = 30.0
GAP_PRIOR_BINS = 2048
GAP_PRIOR_ITERATIONS = 500
GAP_PRIOR_MIN_PAIRS = 100


def prior_by_gap(p: np.ndarray, gap: np.ndarray, prior: float,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """Fraction of matches among the candidate pairs of each session gap: (G + 1,) for gaps
    0 .. G (G the largest in ``gap``; entry 0 unused, as gap 1's). p (P,): the pairs'
    probability at the one ``prior`` of every gap; gap (P,) int >= 1; rows: the pairs to
    learn from (None: all), read CHUNK_ROWS at a time.

    Neurons stop being recorded (or sorted) as days pass, so a pair many sessions apart is
    less often a match than a pair of neighbouring sessions with the same evidence; one prior
    for all gaps overstates the long gaps' (on high-turnover studies pairs given 0.1-0.3 were
    matches in 1-5%). Each gap's share is found as a classifier's outputs are moved to a new
    prior (Saerens et al. 2002, Neural Computation 14: 21-41): with the evidence's likelihood
    ratio fixed, the share pi_g whose probabilities average to pi_g (EM). The shares keep the
    pairs' weighted mean at ``prior``: the estimate from the pairs far apart
    (match_prior) sets the level, the evidence at each gap only how it is spread over the
    gaps. (The far-apart pairs of one gap cannot set that gap's share: their error, shared
    by all gaps through the same-session pairs, is of the size of a long gap's share.)
    Gaps of fewer than GAP_PRIOR_MIN_PAIRS pairs take the gap before's share."""
    gap = np.asarray(gap)
    n_gaps = int(gap.max(initial=0))
    out = np.full(n_gaps + 1, float(prior))
    if n_gaps < 1 or not 0 < prior < 1:
        return out
    # the likelihood ratio's logit, binned: EM on (gap, bin) counts, not on every pair
    edges = np.linspace(-GAP_PRIOR_LOGIT, GAP_PRIOR_LOGIT, GAP_PRIOR_BINS + 1)
    counts = np.zeros((n_gaps + 1) * GAP_PRIOR_BINS)
    total = np.zeros(GAP_PRIOR_BINS)
    n_rows = len(p) if rows is None else len(rows)
    for part in _chunks(n_rows):
        take = part if rows is None else rows[part]
        q = np.asarray(p[take], np.float64)
        with np.errstate(divide="ignore"):
            logit = np.log(q) - np.log1p(-q)
        logit = np.clip(logit - np.log(prior / (1 - prior)), -GAP_PRIOR_LOGIT, GAP_PRIOR_LOGIT)
        slot = np.clip(np.searchsorted(edges, logit, side="right") - 1, 0, GAP_PRIOR_BINS - 1)
        counts += np.bincount(np.asarray(gap[take], np.int64) * GAP_PRIOR_BINS + slot,
                              minlength=counts.size)
        total += np.bincount(slot, weights=logit, minlength=GAP_PRIOR_BINS)
    counts = counts.reshape(n_gaps + 1, GAP_PRIOR_BINS)
    ratio = np.exp(total / np.maximum(counts.sum(axis=0), 1))
    n = counts.sum(axis=1)
    share = np.full(n_gaps + 1, float(prior))
    for g in range(1, n_gaps + 1):
        if n[g] < GAP_PRIOR_MIN_PAIRS:
            share[g] = share[g - 1] if g > 1 else prior
            continue
        pi = float(prior)
        for _ in range(GAP_PRIOR_ITERATIONS):
            k = pi / (1 - pi) * ratio
            new = float(np.sum(counts[g] * k / (1 + k)) / n[g])
            new = min(max(new, 1e-9), 1 - 1e-6)
            if abs(new - pi) < 1e-9:
                break
            pi = new
        share[g] = pi
    level = float(np.sum(n[1:] * share[1:]) / max(np.sum(n[1:]), 1))
    out[1:] = np.clip(share[1:] * prior / level, 0.0, 1.0 - 1e-6)
    out[0] = out[1]
    return out


def with_gap_prior(p: np.ndarray, prior: float, gap_prior: np.ndarray,
                   gap: np.ndarray) -> np.ndarray:
    """Probabilities p (P,) fitted with one prior, moved to the prior of each pair's session
    gap (P,) (gap_prior, prior_by_gap; gaps past its end take its last entry): the odds
    scale by the two priors' odds, so the evidence's likelihood ratio is kept."""
    p = np.asarray(p, np.float64)
    if not 0 < prior < 1 or gap_prior.size < 2:
        return p
    g = gap_prior[np.clip(np.asarray(gap, np.int64), 1, gap_prior.size - 1)]
    g = np.clip(g, 0.0, 1.0 - 1e-6)
    scale = g / (1 - g) * (1 - prior) / prior
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = p / (1 - p) * scale
        out = odds / (1 + odds)
    out[p >= 1] = 1.0
    out[(p <= 0) | (scale <= 0)] = 0.0
    return np.clip(out, 0.0, 1.0)
