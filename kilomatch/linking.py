"""Final clusters from the match probability: link, cluster, report (issue 12).

The probability of every candidate pair (:mod:`kilomatch.probability`) is fitted on each
probe or shank. With clustering.method 'probability' it replaces the weighted similarity:
HDBSCAN runs on the distance 1 / (2 p) (the published similarity-to-distance map applied to
S = atanh(2p - 1)), and :func:`kilomatch.curation.curate_by_probability` splits and resolves
conflicts by probability. Either way each unit's match confidence and the MatchTable rows are
computed here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import derived_non_matches as dnm
from .clustering import sparse_hdbscan
from .probability import (LazyEvidence, MatchModel, _chunks, fit_cluster_calibration,
                          fit_match_probability, pair_evidence, prior_by_gap,
                          same_session_pairs, with_gap_prior)

log = logging.getLogger("kilomatch")

# Similarity features the probability always uses; PETH only when the settings list it.
# Shape: the Pearson r of the two units' mean waveforms on their own peak channels, as
# recorded (UnitFeatures.peak_waveform): evidence only, never a clustering feature.
EVIDENCE_FEATURES = ("Waveform", "AutoCorr", "ISI", "Shape")
_P_FLOOR = 1e-6  # keeps 1 / (2p) finite: a pair of p = 0 is as far as a pair can be


@dataclass
class ProbabilityLinks:
    """What the match probability adds to a track: the model, each candidate pair's
    probability (P,), the evidence's column names, HDBSCAN's clusters of the probability (N,)
    (the clusters before curation when ``made_clusters``), and each unit's match confidence
    (N,) in its final cluster (NaN for units in no final cluster)."""

    model: MatchModel
    feature_names: list
    candidate_probability: np.ndarray
    # (L, F) Fisher z per evidence feature of the candidate pairs of probability at least
    # MATCH_TABLE_MIN_PROBABILITY (MatchTable's rows, in_match_table), in pair order
    candidate_similarity: np.ndarray
    labels: np.ndarray | None  # None when the probability did not make the clusters
    match_confidence: np.ndarray | None = None
    made_clusters: bool = False  # the final clusters rest on the probability
    # (P,) float32 classifier score of each candidate pair before calibration (cross-fitted
    # where the fit saw the pair, the fold models' mean elsewhere): MatchModel.non_match_share
    candidate_score: np.ndarray | None = None
    # (G + 1,) the match prior of each session gap (probability.prior_by_gap), None when one
    # prior serves every gap; session: (N,) of each unit, to read a pair's gap
    gap_prior: np.ndarray | None = None
    session: np.ndarray | None = None
    # (N,) motion-corrected depth (um) of each unit and the anchor distance (um): pairs
    # farther apart in depth read probability 0 (no_match_beyond_anchor)
    depth: np.ndarray | None = None
    anchor_um: float = np.inf
    # (N,) x (um) of each unit across the probe and the lateral bound (um): pairs farther
    # apart across the probe read probability 0 too (no_match_beyond_anchor)
    lateral: np.ndarray | None = None
    lateral_um: float = np.inf
    # (P,) each candidate pair's probability from its own evidence (calibrated against the
    # known non-matches) when calibrate_to_clusters has mapped candidate_probability to the
    # final clusters; None when it has not (candidate_probability is then that probability)
    pair_probability: np.ndarray | None = None

    @property
    def own_probability(self) -> np.ndarray:
        """(P,) each candidate pair's probability from its own evidence: pair_probability
        where calibrate_to_clusters mapped candidate_probability, else that."""
        return (self.candidate_probability if self.pair_probability is None
                else self.pair_probability)

    def table_rows(self) -> np.ndarray:
        """(P,) bool: the MatchTable rows (candidate_similarity's, in pair order), the pairs
        of probability or pair probability >= MATCH_TABLE_MIN_PROBABILITY."""
        return in_match_table(self.candidate_probability) | in_match_table(self.own_probability)


def evidence_features(final_names: list) -> list:
    """The similarity features of the probability: Waveform, AutoCorr, ISI, Shape, and PETH
    when the final clustering lists it."""
    return list(EVIDENCE_FEATURES) + (["PETH"] if "PETH" in final_names else [])


def probability_distance(p: np.ndarray) -> np.ndarray:
    """HDBSCAN distance of pairs of probability p: 1 / (2p), in [0.5, inf)."""
    return 0.5 / np.maximum(np.asarray(p, np.float64), _P_FLOOR)


def cluster_by_probability(n_units: int, pairs: np.ndarray, p: np.ndarray,
                           max_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels (N,) (-1 none) of the candidate graph at distance 1 / (2p)."""
    return sparse_hdbscan(n_units, pairs, probability_distance(p), max_cluster_size)


def match_confidence(n_units: int, pairs: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per unit, the lowest probability with another unit of its final cluster: (N,), NaN for
    units in no cluster. pairs (Q, 2): every within-cluster pair, with its probability p (Q,);
    a pair of unknown probability (NaN: two units a join put together that are no candidate
    pair) says nothing about either unit."""
    known = np.isfinite(p)
    pairs, p = pairs[known], np.asarray(p)[known]
    out = np.full(n_units, np.inf)
    np.minimum.at(out, pairs[:, 0], p)
    np.minimum.at(out, pairs[:, 1], p)
    out[np.isinf(out)] = np.nan
    return out


def candidate_rows(pairs: np.ndarray, query: np.ndarray, n_units: int) -> np.ndarray:
    """The row (Q,) int64 of each ``query`` pair (Q, 2) among ``pairs`` (P, 2) sorted by
    (i, j), -1 where it is not one of them."""
    if not len(pairs):
        return np.full(len(query), -1, np.int64)
    key = pairs[:, 0].astype(np.int64) * n_units + pairs[:, 1]
    q = query[:, 0].astype(np.int64) * n_units + query[:, 1]
    at = np.minimum(np.searchsorted(key, q), key.size - 1)
    return np.where(key[at] == q, at, -1)


def pair_lookup(pairs: np.ndarray, values: np.ndarray, query: np.ndarray, n_units: int):
    """values (P,) of ``pairs`` (P, 2) sorted by (i, j), at the ``query`` pairs (Q, 2):
    (found (Q,) bool, value (Q,), NaN where not found)."""
    at = candidate_rows(pairs, query, n_units)
    found = at >= 0
    value = np.full(len(query), np.nan)
    value[found] = values[at[found]]
    return found, value


# The anchor of the prior: pairs farther apart in corrected depth than this share of
# clustering.max_distance are taken to hold no match.
ANCHOR_SHARE = 0.3
# Pairs farther apart across the probe (x) than this many times the anchor hold no match
# either: x does not drift, but it is estimated less well than depth (NP1's four columns
# span 48 um; over 143 runs, 105 of the suite, 6 SpikeInterface and 32 sparse studies, no
# true pair lay more than 29 um apart in x). Where same-session pairs are few, the trees
# cannot learn the lateral distance: on 32 sparse studies of 16 sessions 102 pairs more
# than 60 um apart across read 0.5 or more (12 on the 105 suite runs), and two ended
# in a cluster (benchmarks/RESULTS.md, "Session 68").
LATERAL_ANCHOR_FACTOR = 2.0


def fit_links(pairs: np.ndarray, similarities, positions: np.ndarray, amplitude: np.ndarray,
              n_spikes: np.ndarray, session: np.ndarray, shank: np.ndarray,
              max_distance: float, max_cluster_size: int, seed: int = 0,
              with_clusters: bool = True, not_non_matches: np.ndarray | None = None,
              gap_prior: bool = False, derived: bool = False,
              sure: np.ndarray | None = None, max_session_gap: int = 0,
              noise_share: np.ndarray | None = None):
    """Fit the match probability on one probe or shank and cluster by it.

    pairs: (P, 2) candidate pairs; similarities: callable, (Q, 2) pairs -> (Q, F) Fisher z of
    the evidence features; positions: (N, 3) motion-corrected x, y, z um; amplitude (N,) uV;
    n_spikes, session, shank: (N,). Returns (ProbabilityLinks, evidence function (Q, 2) ->
    (Q, K)), or None when there are too few pairs to fit (the caller keeps the similarity
    path). The probability's own clusters (HDBSCAN of every candidate pair again) only
    ``with_clusters``: the similarity path does not use them. not_non_matches: (J, 2)
    same-session pairs (i < j) known to be one neuron (sorter splits), left out of the
    non-matches. gap_prior: each pair's probability at the prior of its session gap
    (probability.prior_by_gap), not the one prior of every candidate pair. derived: fit a
    second time with known non-matches across sessions derived from the first fit's sure
    matches (kilomatch.derived_non_matches, fit_with_derived). sure: with ``derived``, (P,)
    bool, the candidate pairs that group units for the derivation instead (the final
    clustering's good matches): the probability is then fitted once, with the derived
    pairs. max_session_gap: the candidate pairs' largest session gap (0: any); derived pairs
    farther apart are left out. noise_share: (N,) share of each unit's waveform variance that
    is noise (kilomatch.waveform_noise), for the evidence's column of the Waveform similarity
    against the noise; None leaves the column out.
    """
    n = positions.shape[0]

    def evidence(q):
        return pair_evidence(similarities(q), positions, amplitude, n_spikes, q, noise_share)

    depth = positions[:, 1]
    non = same_session_pairs(depth, session, max_distance, shank)
    if not_non_matches is not None and len(not_non_matches):
        # A unit the sorter split in two gives a same-session pair as alike as a match: among
        # the non-matches it would tell the classifier that such evidence is not a match
        # (on sorter-error data every match of that look came out underconfident).
        drop = np.sort(np.asarray(not_non_matches, np.int64), axis=1)
        non = non[~np.isin(non[:, 0] * n + non[:, 1], drop[:, 0] * n + drop[:, 1])]
    # the candidates' evidence is read in chunks where it is used, not held whole
    similarity_of_candidates = similarities(pairs)
    x_cand = LazyEvidence(similarity_of_candidates, positions, amplitude, n_spikes, pairs,
                          noise_share)
    x_non = evidence(non)
    inside = full_window(depth, session, max_distance)
    # int32 rows where they fit: 28 M of them at 10^5 units
    fit_c = np.flatnonzero(inside[pairs[:, 0]] & inside[pairs[:, 1]]).astype(
        np.int32 if len(pairs) < 2**31 else np.int64)
    fit_n = np.flatnonzero(inside[non[:, 0]] & inside[non[:, 1]])
    if min(fit_c.size, fit_n.size) < 200:  # a short span of units: fit on every pair
        fit_c, fit_n = np.arange(len(pairs)), np.arange(len(non))
    # Matches stay within a few um after motion correction: pairs farther apart than 30% of
    # max_distance hold no match, which fixes the share of matches (the prior). (A wider
    # anchor holds more same-session pairs, and their count is what limits the estimate.)
    far = ANCHOR_SHARE * max_distance
    anchor, anchor_non = _far_apart(depth, pairs, fit_c, far), _far_apart(depth, non, fit_n, far)

    def fit_once(fit_seed):
        """One cross-fitted probability, drawn with fit_seed: (model, p (P,), score (P,)
        float32), or None when there are too few pairs."""
        def with_derived(sure_pairs):
            return fit_with_derived(x_cand, x_non[fit_n], non[fit_n], fit_c, sure_pairs, pairs,
                                    evidence, depth, session, inside, anchor, anchor_non,
                                    max_distance, far, fit_seed, max_session_gap)

        # Given sure pairs, the derived non-matches are known before any fit: one fit with them.
        model = with_derived(np.asarray(sure, bool)) if derived and sure is not None else None
        if model is None:
            model = fit_match_probability(x_cand, x_non[fit_n], anchor, anchor_non, fit_seed,
                                          candidate_rows=fit_c)
            if model is None:
                return None
        p, score = _every_pair(model, pairs, fit_c, similarity_of_candidates, positions,
                               amplitude, n_spikes, noise_share)
        if derived and sure is None:
            again = with_derived(p >= dnm.SURE_PROBABILITY)
            if again is not None:
                model = again
                p, score = _every_pair(model, pairs, fit_c, similarity_of_candidates,
                                       positions, amplitude, n_spikes, noise_share)
        return model, p, score

    first = fit_once(seed)
    if first is None:
        return None
    model, p, score = first
    # one further fit at a time (each holds its own probability of every pair until summed)
    n_fits = PROBABILITY_FITS if fit_c.size <= FITS_MAX_PAIRS else 1
    model = _mean_of_fits(model, p, fit_n.size, (fit_once(seed + FIT_SEED_STRIDE * r)
                                                 for r in range(1, n_fits)))
    # The known non-matches' level (MatchModel.non_match_level, the cut veto's floor) is read
    # among the same-session pairs within the anchor: beyond it a pair's probability is 0 by
    # premise (no_match_beyond_anchor), and the trees' noise there says nothing of the pairs
    # a cut takes apart, units of one cluster a few um apart.
    model.non_match_probability = model.non_match_probability[:fit_n.size][~anchor_non]
    by_gap = None
    if gap_prior:
        gap = session_gap(session, pairs)
        by_gap = prior_by_gap(p, gap, model.prior, rows=fit_c)
        log.info("match prior by session gap (1, 2, ...): %s",
                 " ".join(f"{v:.3f}" for v in by_gap[1:]))
        for part in _chunks(len(p)):  # in place, a block at a time (28 M pairs at 10^5)
            p[part] = with_gap_prior(p[part], model.prior, by_gap, gap[part])
        del gap
    lateral, lateral_um = positions[:, 0], LATERAL_ANCHOR_FACTOR * far
    no_match_beyond_anchor(p, depth, pairs, far, lateral, lateral_um)
    labels = cluster_by_probability(n, pairs, p, max_cluster_size) if with_clusters else None
    # only MatchTable's rows keep their evidence: all of it is 2 GB at 10^5 units
    links = ProbabilityLinks(model, [], p,
                             similarity_of_candidates[in_match_table(p)], labels,
                             candidate_score=score, gap_prior=by_gap,
                             session=np.asarray(session), depth=depth, anchor_um=far,
                             lateral=lateral, lateral_um=lateral_um)
    return links, evidence


# The probability is the mean of this many cross-fits, each with its own folds and draws
# (training rows, thinning, derived non-matches, calibration), seeded seed + FIT_SEED_STRIDE
# * r. One fit's probability of a pair moves with its draws: settings seed 1 in place of 0
# moved F1 on 55 of 64 sparse studies (mean change 0.0040) and lowered it on 37. The mean of
# three moved it 0.0017 and raised F1 at both seeds: 64 sparse studies 63.69 -> 63.81 (29
# up, 8 down) at seed 0, 63.61 -> 63.75 at seed 1; 189 runs of nine fresh suite offsets
# 188.555 -> 188.602 (36 up, 25 down); SpikeInterface's six 5.966 -> 5.973
# (benchmarks/RESULTS.md, "Session 73"). Five in place of three: 357 suite runs (+37000 to
# +53000) 356.325 -> 356.370 (precision and recall both up), runs below precision 0.99 10
# -> 9; 64 sparse studies 63.829 -> 63.842 (below 0.99: 3 -> 2); 22 mixes 21.915 ->
# 21.931; SpikeInterface's 20 perfect-sorter studies 19.898 -> 19.900 (one up, one down);
# the speed study 7.5 s -> 8.3 s (benchmarks/RESULTS.md, "Session 77"). The score
# (MatchModel.score, the non-match share of within_cluster_share) stays the first fit's: the
# fits' scores are on scales of their own. A fit of more than FITS_MAX_PAIRS candidate pairs
# is made once: its draws are of many more rows, and three fits tripled the match
# probability's time at 10k units (CPU 19 s -> 56 s; the speed study's 63,000 pairs: its run
# 5.1 s -> 6.3 s).
PROBABILITY_FITS = 5
FIT_SEED_STRIDE = 7919
FITS_MAX_PAIRS = 500_000


def _mean_of_fits(model: MatchModel, p: np.ndarray, n_same: int, more) -> MatchModel:
    """The first fit's model, its probability averaged with the other fits' ``more`` (an
    iterable of (model, p, score) or None): p (P,) in place, the same-session pairs'
    cross-fitted probability (the first n_same of non_match_probability) as well, and
    MatchModel.predict then the mean of every fit's models (MatchModel.members)."""
    non = None  # made with the first further fit: a fit made once (10^5 units) copies nothing
    for fit in more:
        if fit is None:
            continue
        member, p_r, _ = fit
        if non is None:
            non = model.non_match_probability[:n_same].astype(np.float64)
        p += p_r
        non += member.non_match_probability[:n_same]
        # only the models stay: the probabilities are in the sums, and the score's non-match
        # share is read off the first fit alone
        member.candidate_probability = member.non_match_probability = None
        member.non_match_score = None
        model.members.append(member)
        del fit, p_r
    if model.members:
        p /= 1 + len(model.members)
        model.non_match_probability = non / (1 + len(model.members))
        log.info("match probability: the mean of %d cross-fits, each with its own folds and "
                 "draws", 1 + len(model.members))
    return model


def _every_pair(model, pairs, fit_c, similarity_of_candidates, positions, amplitude,
                n_spikes, noise_share=None) -> tuple:
    """The probability (P,) and classifier score (P,) float32 of every candidate pair (P, 2):
    a fitted pair's (rows ``fit_c``) from the models that did not see it, the others' from
    the fold models' mean. Takes the model's candidate scores (held once, in the links: 100
    MB at 10^5 units)."""
    p = np.empty(len(pairs))
    p[fit_c] = model.candidate_probability
    rest = np.ones(len(pairs), bool)
    rest[fit_c] = False
    score = np.empty(len(pairs), np.float32)
    score[fit_c] = model.candidate_score
    model.candidate_score = None
    if rest.any():
        rest_score = model.score(LazyEvidence(similarity_of_candidates[rest], positions,
                                              amplitude, n_spikes, pairs[rest],
                                              noise_share))
        p[rest] = model.probability(rest_score)
        score[rest] = rest_score
    return p, score


def fit_with_derived(x_cand, x_same, same, fit_c, sure, pairs, evidence, depth, session, usable,
                     anchor, anchor_same, max_distance, far, seed, max_session_gap=0):
    """The match probability fitted with known non-matches derived from sure matches
    (kilomatch.derived_non_matches), or None when there are none.

    x_cand: the candidates' evidence (LazyEvidence); x_same (Q, K), same (Q, 2): the fit's
    same-session pairs; fit_c: the candidate rows of the fit; sure (P,) bool: the candidate
    pairs (P, 2) that group units (a first fit's probability, before the prior by gap, of
    dnm.SURE_PROBABILITY or more, or the pairs given); evidence: pairs ->
    their evidence; depth, session, usable (N,): corrected depth (um), session, inside the
    fit's window; anchor, anchor_same: the candidates' and same-session pairs' rows farther
    apart than the prior's anchor ``far`` (um); max_session_gap: the candidates' largest
    session gap (0: any), beyond which nothing is derived.

    The derived pairs add to the same-session pairs, each same-session pair and its derived
    pairs weighing 1 together; every pair of two groups falls in one fold
    (dnm.group_folds); the derived pairs beyond the anchor train the trees thinned as the
    candidates there are (probability._thinned: most derived pairs lie there); the calibration
    is one isotonic fit (averaging bootstrap fits blurs the step from non-matches to
    matches, and with this many known non-matches it no longer pays, benchmarks/RESULTS.md,
    "Session 35"); the prior stays the same-session pairs' estimate."""
    from .probability import match_prior

    group = dnm.sure_groups(depth.size, pairs, sure)
    derived, weight, same_weight = dnm.derive(same, group, session, depth, usable,
                                              max_distance, seed, max_session_gap)
    if not len(derived):
        return None
    log.info("match probability: %d known non-matches across sessions derived from %d sure "
             "pairs (%d groups of units); fitted with them", len(derived),
             int(np.count_nonzero(sure)), int(group.max()) + 1)
    anchor_derived = _far_apart(depth, derived, None, far)
    # Two folds, not three: with the derived pairs each fold still trains on more known
    # non-matches than three folds of the same-session pairs alone, and the fit takes the
    # time of the plain one (three folds: 0.15 s more of 3.3 s on the speed study). On the
    # accuracy suite two folds calibrated 96 of 120 runs against three folds' 90, for 0.0002
    # less of F1 per dataset (benchmarks/RESULTS.md, "Session 41").
    n_folds = 2
    fold = np.r_[dnm.group_folds(pairs, group, n_folds, seed, rows=fit_c),
                 dnm.group_folds(same, group, n_folds, seed),
                 dnm.group_folds(derived, group, n_folds, seed)]
    # the derived pairs' evidence a block at a time into one array (at once, the blocks'
    # copies and the stacking held it three times: 1.3 M pairs at 10^5 units); most derived
    # pairs are candidate pairs, whose similarities the final clustering already holds (the
    # rest are computed)
    x_non = np.empty((len(x_same) + len(derived), x_same.shape[1]))
    x_non[:len(x_same)] = x_same
    row = candidate_rows(pairs, derived, depth.size)
    for a in range(0, len(derived), dnm.BLOCK):
        b = min(a + dnm.BLOCK, len(derived))
        out, rows = x_non[len(x_same) + a:len(x_same) + b], row[a:b]
        known = rows >= 0
        if known.any():
            out[known] = x_cand[rows[known]]
        if not known.all():
            out[~known] = evidence(derived[a:b][~known])
    return fit_match_probability(x_cand, x_non, anchor,
                                 np.r_[anchor_same, anchor_derived], seed, n_folds=n_folds,
                                 candidate_rows=fit_c, non_weight=np.r_[same_weight, weight],
                                 fold=fold, prior=match_prior(anchor, anchor_same),
                                 n_bags=0,
                                 thin_non=np.r_[np.zeros(len(same), bool), anchor_derived])


def no_match_beyond_anchor(p: np.ndarray, depth: np.ndarray, pairs: np.ndarray,
                           anchor_um: float, lateral: np.ndarray | None = None,
                           lateral_um: float = np.inf) -> np.ndarray:
    """Set to 0, in place, the probability p (P,) of the pairs (P, 2) whose corrected depths
    (N,) um differ by more than ``anchor_um``, or their x positions ``lateral`` (N,) um by
    more than ``lateral_um`` (LATERAL_ANCHOR_FACTOR); returns p.

    The prior is estimated on the premise that those pairs hold no match, so the model
    gives them none. The trees alone put them about the non-matches' level with noise
    around it, and the noise above it reads as a probability: on 24 sessions, where a few
    hundred same-session pairs face 13,000 candidates, a thousand non-matches 40-100 um
    apart got 0.1-0.3 (benchmarks/RESULTS.md, "Session 19")."""
    p[_far_apart(depth, pairs, None, anchor_um)] = 0.0
    if lateral is not None and np.isfinite(lateral_um):
        p[_far_apart(lateral, pairs, None, lateral_um)] = 0.0
    return p


def session_gap(session: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """|session_i - session_j| of each pair (P, 2): (P,) int32, a block of pairs at a time
    (the int64 temporaries of 28 M pairs took 0.7 GB at 10^5 units)."""
    session = np.asarray(session, np.int64)
    out = np.empty(len(pairs), np.int32)
    for part in _chunks(len(pairs)):
        q = pairs[part]
        out[part] = np.abs(session[q[:, 1]] - session[q[:, 0]])
    return out


def _far_apart(depth: np.ndarray, pairs: np.ndarray, rows: np.ndarray | None, far: float,
               block: int = 1 << 20) -> np.ndarray:
    """(n,) bool: the pairs pairs[rows] (rows (n,); None: every pair) whose depths (N,) um
    differ by more than ``far``, a block of rows at a time (the pairs' depths of 28 M
    candidate pairs took 1 GB)."""
    n = len(pairs) if rows is None else len(rows)
    out = np.empty(n, dtype=bool)
    for start in range(0, n, block):
        part = pairs[start:start + block] if rows is None else pairs[rows[start:start + block]]
        out[start:start + block] = np.abs(depth[part[:, 1]] - depth[part[:, 0]]) > far
    return out


def full_window(depth: np.ndarray, session: np.ndarray, max_distance: float) -> np.ndarray:
    """(N,) bool: units whose window of +-max_distance (um) of corrected depth lies where
    every session has units. Near the ends of the span, drift leaves some sessions without
    partners at one side, so candidate pairs there are fewer at large distances than
    same-session pairs; comparing the two sets only inside keeps that out of the fit."""
    sessions = np.unique(session)
    low = max(depth[session == k].min() for k in sessions) + max_distance
    high = min(depth[session == k].max() for k in sessions) - max_distance
    return (depth >= low) & (depth <= high)


def within_cluster_probability(links: ProbabilityLinks, evidence, pairs: np.ndarray,
                               q_pairs: np.ndarray, linkable: np.ndarray, n_units: int):
    """Probability (Q,) of every within-cluster pair: the cross-fitted one for candidate
    pairs, the fold models' mean for other linkable pairs (at their session gap's prior when
    the links have one), 0 for pairs that cannot link."""
    found, p = pair_lookup(pairs, links.candidate_probability, q_pairs, n_units)
    rest = np.flatnonzero(~found & linkable)
    if rest.size:
        p[rest] = links.model.predict(evidence(q_pairs[rest]))
        if links.gap_prior is not None:
            p[rest] = with_gap_prior(p[rest], links.model.prior, links.gap_prior,
                                     session_gap(links.session, q_pairs[rest]))
        if links.depth is not None:
            p[rest] = no_match_beyond_anchor(p[rest], links.depth, q_pairs[rest],
                                             links.anchor_um, links.lateral, links.lateral_um)
    p[~linkable] = 0.0
    return p


def within_cluster_share(links: ProbabilityLinks, evidence, pairs: np.ndarray,
                         q_pairs: np.ndarray, linkable: np.ndarray, n_units: int,
                         probability: np.ndarray) -> np.ndarray:
    """Per within-cluster pair (Q, 2), the share of known non-matches whose classifier score
    is at least the pair's (MatchModel.non_match_share): (Q,) in (0, 1], small where the pair
    looks unlike a non-match. Candidate pairs read their score, other linkable pairs the fold
    models' mean; pairs that cannot link read NaN (no evidence). Only pairs whose
    probability (Q,) is at most the known non-matches' median keep their share: there the
    calibration gives small units' matches about the value of most non-matches (its low
    end); the probability has ranked the others already, and they read 1."""
    found, score = pair_lookup(pairs, links.candidate_score, q_pairs, n_units)
    rest = np.flatnonzero(~found & linkable)
    if rest.size:
        score[rest] = links.model.score(evidence(q_pairs[rest])).astype(np.float32)
    share = np.full(len(q_pairs), np.nan)
    ok = np.asarray(linkable, bool)
    share[ok] = links.model.non_match_share(score[ok])
    share[ok & (np.asarray(probability) > links.model.non_match_level(0.5))] = 1.0
    return share


MATCH_TABLE_MIN_PROBABILITY = 0.05
# Fewer candidate pairs than this held together by the final clusters, or in two of them,
# and the probability stays as the pairs' evidence gave it (calibrate_to_clusters)
MIN_PAIRS_TO_CALIBRATE = 20
# A unit in no cluster whose every candidate pair is below this is a neuron of its own for
# calibrate_to_clusters: the evidence and the clusters agree on it (one half: no pair more
# likely a match than not).
ALONE_BELOW = 0.5


def units_alone(labels: np.ndarray, pairs: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Units in no final cluster (labels (N,) -1) none of whose candidate pairs (P, 2) has
    probability p (P,) of ALONE_BELOW or more (NaN: none known): (N,) bool. A unit left out
    of its cluster despite a likely match (two units of one session, a sorter's split) is
    not one of them: the clusters did not judge its identity, the session conflict did."""
    best = np.zeros(len(labels))
    for part in _chunks(len(pairs)):
        for side in (0, 1):
            np.fmax.at(best, pairs[part, side], p[part])
    return (np.asarray(labels) < 0) & (best < ALONE_BELOW)


def calibrate_to_clusters(links: ProbabilityLinks, evidence, pairs: np.ndarray,
                          labels: np.ndarray) -> bool:
    """Map the match probability of each candidate pair of two units in final clusters to the
    share of such pairs of that probability that the final clusters hold together (docs/
    method.md, section 9): a monotone map (probability.fit_cluster_calibration), so those
    pairs keep their order and every unit its weakest link, but the clusters' evidence
    beyond one pair (the other units of a neuron) now counts. A unit in no cluster none of
    whose pairs reaches ALONE_BELOW (units_alone) is a cluster of its own: its pairs count
    as held apart (without it, pairs of such units at the pair probability's floor, about
    the match prior, read 0.1-0.2 on high-turnover studies, where none was a match). A pair
    with any other unit in no cluster keeps its probability: no cluster judged it. The pair
    probability is calibrated against the known non-matches, which are not quite like the
    candidates' non-matches (benchmarks/RESULTS.md, "Session 34"); the share held together
    is what the curated clusters made of the pairs. On the accuracy suite it left fewer
    decile bins off their range ("Session 43", "Session 49").

    links: the shank's ProbabilityLinks, changed in place (candidate_probability,
    match_confidence, the MatchTable rows and their evidence; the probability before goes
    to pair_probability); evidence: (Q, 2) pairs -> their evidence (linking.fit_links),
    for MatchTable rows the map adds; pairs: (P, 2) the candidate pairs; labels: (N,) the
    final clusters (-1: in none). False, and nothing changed, when fewer than
    MIN_PAIRS_TO_CALIBRATE such pairs are held together or in two clusters."""
    p = links.candidate_probability
    first, second = labels[pairs[:, 0]], labels[pairs[:, 1]]
    alone = units_alone(labels, pairs, p)
    judged = (np.isfinite(p) & ((first >= 0) | alone[pairs[:, 0]])
              & ((second >= 0) | alone[pairs[:, 1]]))
    together = judged & (first == second) & (first >= 0)
    held = int(np.count_nonzero(together))
    apart = int(np.count_nonzero(judged)) - held
    if min(held, apart) < MIN_PAIRS_TO_CALIBRATE:
        log.info("match probability not calibrated to the final clusters: %d candidate pairs "
                 "held together, %d in two clusters (fewer than %d)", held, apart,
                 MIN_PAIRS_TO_CALIBRATE)
        return False
    calibration = fit_cluster_calibration(p[judged], together[judged])
    q = p.copy()
    for part in _chunks(len(q)):
        ok = judged[part]
        q[part][ok] = calibration.predict(p[part][ok])
    rows = in_match_table(p)
    added = in_match_table(q) & ~rows
    if added.any():  # their evidence, in pair order among the rows kept
        table = rows | added
        sims = np.empty((int(table.sum()), links.candidate_similarity.shape[1]),
                        links.candidate_similarity.dtype)
        was = rows[table]
        sims[was] = links.candidate_similarity
        sims[~was] = evidence(pairs[added])[:, :sims.shape[1]]
        links.candidate_similarity = sims
    confidence = links.match_confidence
    if confidence is not None:
        confidence = confidence.copy()
        ok = np.isfinite(confidence)
        confidence[ok] = calibration.predict(confidence[ok])
    links.pair_probability, links.candidate_probability = p, q
    links.match_confidence = confidence
    log.info("match probability calibrated to the final clusters: %d candidate pairs held "
             "together, %d in two clusters; %d MatchTable rows", held, apart,
             int(np.count_nonzero(rows | added)))
    return True


def in_match_table(p: np.ndarray) -> np.ndarray:
    """(P,) bool: the candidate pairs of probability p (P,) that MatchTable.csv lists (and
    whose evidence ProbabilityLinks keeps, in this order)."""
    return p >= MATCH_TABLE_MIN_PROBABILITY


def match_table(parts: list, idx_cluster: np.ndarray, session_index: np.ndarray,
                positions: np.ndarray, amplitude: np.ndarray | None = None) -> dict | None:
    """Columns of MatchTable.csv: one row per candidate pair of probability >= 0.05 (or of
    pair probability >= 0.05, where calibrate_to_clusters mapped the probability), over
    every shank, in global unit ids (ordered by unit pair). parts: (global unit ids (n,),
    candidate pairs (P, 2) in local ids, ProbabilityLinks) per shank; idx_cluster,
    session_index (N,); positions (N, 3) motion-corrected x, y, z um; amplitude (N,) uV,
    or None to leave the amplitude columns out. None when no part has a probability."""
    rows = []
    for members, pairs, links in parts:
        if links is None:
            continue
        keep = links.table_rows()
        rows.append((members[pairs[keep]], links.candidate_probability[keep],
                     links.candidate_similarity, links.feature_names,
                     links.own_probability[keep]))
    if not rows:
        return None
    names = rows[0][3]
    pairs = np.vstack([r[0] for r in rows]).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]
    a, b = pairs[:, 0], pairs[:, 1]
    table = {"unit_a": a, "unit_b": b, "session_a": session_index[a],
             "session_b": session_index[b],
             "probability": np.concatenate([r[1] for r in rows])[order],
             "pair_probability": np.concatenate([r[4] for r in rows])[order]}
    sims = np.vstack([r[2] for r in rows]).reshape(-1, len(names))[order]
    for k, name in enumerate(names):
        table[name] = sims[:, k]
    diff = positions[a] - positions[b]
    table["distance_um"] = np.linalg.norm(diff, axis=1)
    table["dy_um"] = np.abs(diff[:, 1])
    if amplitude is not None:
        # Both units' amplitudes, so that a reader can see a pair whose amplitudes differ
        # several times: one neuron's units mostly lie within 1.6x (95-100% of the true
        # pairs of each dataset of the accuracy suite, at most 1.2% beyond 2x), and
        # the probability can be sure of two alike neurons of very different amplitude,
        # where no known non-match as alike taught it otherwise (benchmarks/RESULTS.md,
        # "Session 57").
        table["amplitude_a_uv"] = np.asarray(amplitude, np.float64)[a]
        table["amplitude_b_uv"] = np.asarray(amplitude, np.float64)[b]
    same = (idx_cluster[a] == idx_cluster[b]) & (idx_cluster[a] > 0)
    table["same_final_cluster"] = np.where(same, "yes", "no")
    return table
