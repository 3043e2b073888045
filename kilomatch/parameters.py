"""Every setting, declared once: name, type, default, allowed values and meaning.

This table drives validation (:mod:`kilomatch.settings`), the settings table in README and the
default ``settings.json`` (``python -m kilomatch.parameters --json`` / ``--markdown``).
Names follow the reference port's ``settings.json`` so that its files load unchanged.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

FEATURES = ("Waveform", "AutoCorr", "ISI", "PETH", "Location")


@dataclass(frozen=True)
class Param:
    """One setting. ``kind`` is one of: path, bool, int, float, str, features, feature_rounds."""

    name: str  # dotted, e.g. "clustering.max_distance"
    kind: str
    default: object
    description: str
    min: float | None = None  # inclusive lower bound for numbers
    min_exclusive: bool = False
    max: float | None = None
    choices: tuple = field(default_factory=tuple)

    def allowed(self) -> str:
        """Human-readable statement of what values are allowed."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "features":
            return "a list of names from " + ", ".join(FEATURES)
        if self.kind == "feature_rounds":
            return "a list of lists of names from " + ", ".join(FEATURES)
        kind = {"path": "a path (string)", "optional_path": "a path (string), or \"\" for none",
                "bool": "true or false", "int": "an integer",
                "float": "a number", "str": "a string"}[self.kind]
        if self.min is not None and self.max is not None:
            return f"{kind} from {_number(self.min)} to {_number(self.max)}"
        if self.min is not None:
            return f"{kind} {'>' if self.min_exclusive else '>='} {_number(self.min)}"
        return kind


def _number(x) -> str:
    """A bound as written in the README: whole numbers in full (2147483647, not 2.14748e+09)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


PARAMETERS: tuple[Param, ...] = (
    Param("path_to_data", "path", "examples/example_data",
          "Input folder (waveform_all.npy, channel_locations.npy, session_index.npy, "
          "spike_times/, optional peth.npy). Relative paths resolve against the settings "
          "file's folder. Never written to."),
    Param("output_folder", "path", "examples/example_output",
          "Where results and Figures/ go. Created if missing; must differ from path_to_data "
          "and hold no study's input (waveform_all.npy, session_index.npy, spike_times/)."),
    Param("save_intermediate_results", "bool", False,
          "Also write each motion round's clustering (MotionRound{k}.npz)."),
    Param("n_jobs", "int", -1,
          "Worker processes for per-unit work, threads for the pair similarities and the "
          "match probability's fits and scoring, and, from 2 on, below 10,000 units, a thread "
          "that computes the ACGs and ISIs while the waveforms are read and two helper "
          "processes that draw the figures while the results are written; -1 uses every "
          "core. Results do not depend on it.",
          min=-1),
    Param("denoise_waveforms", "bool", True,
          "Project every channel of each mean waveform on the temporal components that the "
          "units' spikes rise above their noise in (learned from the input, 8-14 of 61-64 "
          "samples on the benchmarks) before anything is read from it, where that takes away "
          "0.04 or more of the median unit's waveform: most of a mean waveform's noise goes, "
          "the spikes stay (kilomatch.temporal_components); the log says what it found."),
    Param("centering_waveforms", "bool", False,
          "Shift each unit's waveform so the trough of its peak channel sits at sample "
          "ceil(T/2)-1 (edge values padded)."),
    Param("align_sessions_in_time", "bool", True,
          "Find sessions whose waveforms sit at other samples than the other sessions' (the "
          "trough samples of the unit pairs the initial motion superposes) and shift them back "
          "before they are compared; the log names them. Needs the initial motion estimate "
          "or a motion given; off with centering_waveforms."),
    Param("remove_channel_offsets", "bool", True,
          "Find sessions whose mean waveforms carry a constant offset on each channel (averaged "
          "from a recording that was not high-pass filtered: the units' baselines above 5% of "
          "their amplitude at the median) and subtract every unit's baseline there before "
          "anything is compared; the log names the sessions."),
    Param("flip_inverted_sessions", "bool", True,
          "Find sessions written with the opposite sign (over 75% of their units peaking "
          "positive where the sessions' median is under 25%) and multiply their waveforms by "
          "-1 before anything is compared; the log names them."),
    Param("fill_dead_channels", "bool", True,
          "Find channels that read a constant in every unit of a session although units of "
          "that session peak within 100 um (a site left out of that session's channel map, "
          "padded with 0) and fill them in from the live channels around them (Kriging) "
          "before anything is compared; the log names the sessions."),
    Param("blas_threads", "int", 1,
          "Threads of the BLAS library (the matrix products) during a run; 0 keeps the "
          "library's own count. 1 was the fastest measured, even on an idle machine (the "
          "products are many and small), and makes the output bytes independent of the "
          "machine's thread count. More cores: n_jobs.", min=0),
    Param("seed", "int", 0, "Seed of every random step (motion bootstrap).", min=0,
          max=2**31 - 1),
    Param("debug", "bool", False, "Show full tracebacks instead of one-line messages."),
    Param("dense_output_max_units", "int", 20000,
          "Write the dense N x N outputs (ClusterMatrix, SimilarityMatrix) only up to this many "
          "units; the sparse pair tables are always written.", min=0),
    Param("spikeLocation.location_algorithm", "str", "monopolar_triangulation",
          "How unit positions are estimated: 'monopolar_triangulation' fits a point source "
          "whose amplitude falls as 1/distance (the published method); "
          "'decay_triangulation' fits one whose amplitude falls as 1/distance^b, b learned "
          "once per shank from its units (kilomatch.features.shared_decay); "
          "'center_of_mass' takes the amplitude-weighted mean of the channel positions.",
          choices=("decay_triangulation", "monopolar_triangulation", "center_of_mass")),
    Param("spikeLocation.n_nearest_channels", "int", 20,
          "Channels around the peak channel used to locate a unit.", min=1),
    Param("waveformCorrection.n_nearest_channels", "int", 38,
          "Channels around the peak channel on which waveforms are compared and written.", min=1),
    Param("waveformCorrection.window_um", "float", 500.0,
          "Each unit's waveform is kept only on the channels of its shank within this distance "
          "(um) of its peak channel; the rest of the probe holds no signal and is dropped after "
          "reading, which keeps memory at 10^5 units. Must exceed the largest drift plus "
          "clustering.max_distance plus half the span of n_nearest_channels; see "
          "widen_window.",
          min=0, min_exclusive=True),
    Param("waveformCorrection.widen_window", "bool", True,
          "When the initial motion estimate (or the motion given) spans more than window_um "
          "allows, read the windows again at the width it needs (in steps of 50 um), with a "
          "line in the log; memory grows with the width. On 800 um of drift F1 rose from "
          "0.978-0.985 to 0.994-0.998 (benchmarks/RESULTS.md, 'Session 25'). False: keep "
          "window_um, with a warning."),
    Param("waveformCorrection.linear_correction", "bool", False,
          "Estimate depth-dependent (linear) motion instead of rigid motion in every round."),
    Param("waveformCorrection.linear_min_um", "float", 5.0,
          "With linear_correction off, each motion round also fits the depth-dependent "
          "(linear) motion and takes it where it places the units more than this many um from "
          "the rigid motion, relative to each other (95th percentile over the units; a shift "
          "or stretch that every session shares does not count), in 95% of resamples of the "
          "round's matches. A probe that drifts more at one end than the other is then "
          "corrected without a setting. 0: always rigid.",
          min=0),
    Param("waveformCorrection.bend_min_um", "float", 5.0,
          "Each motion round also fits, on top of its rigid or linear motion, a bend: a "
          "motion that depends on depth in a way no line follows (one part of the probe's "
          "tissue moving apart from another's), piecewise linear between knots 100 um apart, "
          "and keeps it where it moves the units more than this many um against each other "
          "(95th percentile over the units) and, fitted without them, lowers held-out "
          "matches' median distance by a quarter or more (5-fold cross-validation). The "
          "motion of each session at each depth is then written to motion_depth.npy. On "
          "studies whose upper and lower halves moved tens of um apart F1 rose from "
          "0.76-0.92 to 0.997-1.000; the accuracy suite did not change "
          "(benchmarks/RESULTS.md, 'Session 65'). 0: no bend.",
          min=0),
    Param("waveformCorrection.path_to_motion", "optional_path", "",
          "A motion.npy of shape (S,) or (S, n_shanks), in the sign convention of kilomatch's "
          "motion.npy, to use instead of estimating the motion; empty: estimate it."),
    Param("waveformCorrection.n_templates", "int", 1,
          "Reference probes waveforms are corrected to: 1 (mean position) or 2 (lowest and "
          "highest motion; the larger similarity of the two is used).", choices=(1, 2)),
    Param("autoCorr.window", "float", 300.0, "Autocorrelogram half-width (ms).",
          min=0, min_exclusive=True),
    Param("autoCorr.binwidth", "float", 1.0, "Autocorrelogram bin width (ms).",
          min=0, min_exclusive=True),
    Param("autoCorr.gaussian_sigma", "float", 5.0,
          "Gaussian smoothing of each side of the autocorrelogram (ms).", min=0),
    Param("ISI.window", "float", 100.0, "Inter-spike-interval histogram range (ms).",
          min=0, min_exclusive=True),
    Param("ISI.binwidth", "float", 1.0, "ISI histogram bin width (ms).",
          min=0, min_exclusive=True),
    Param("ISI.gaussian_sigma", "float", 1.0, "Gaussian smoothing of the ISI histogram (ms).",
          min=0),
    Param("motionEstimation.features", "feature_rounds",
          [["AutoCorr", "PETH"], ["Waveform", "AutoCorr", "PETH"],
           ["Waveform", "AutoCorr", "PETH"]],
          "One entry per motion round: the similarity features used to find matches in that "
          "round. Round 1 without Waveform copes with large drift."),
    Param("motionEstimation.max_iter", "int", 15,
          "Most motion rounds in all, when the last feature set is repeated.", min=1),
    Param("motionEstimation.repeat_last_feature_set", "bool", True,
          "After the listed rounds, repeat the last feature set until the motion has "
          "converged (motionEstimation.converged_um), up to max_iter rounds in all: a motion "
          "that no line follows (a bend) can take more rounds to reach than the three listed. "
          "False runs the listed rounds only."),
    Param("motionEstimation.stop_early", "bool", False,
          "Stop the motion rounds when a round finds no more good matches than the one before; "
          "the motion of the best round is kept."),
    Param("motionEstimation.converged_um", "float", 1.0,
          "The motion rounds stop when a round moves no unit's corrected depth by more than "
          "this (um) from the motion it started from and the next round would repeat its "
          "features: that round would find the same matches. 0: every round runs (max_iter "
          "of them while repeat_last_feature_set repeats the last set).", min=0),
    Param("motionEstimation.off_pair_spreads", "float", 6.0,
          "Once the motion rounds have converged, they go on without the good matches that "
          "lie more than this many robust spreads (1.4826 x the median absolute residual, at "
          "least 1 um) off a robust rigid fit of them (Tukey's biweight), unless other pairs "
          "of the same two sessions at that depth lie off alike, until the motion has "
          "converged again; rounds that stop before converging have their kept motion "
          "fitted again once without them. Matches of neighbouring neurons, tens of um apart "
          "(a few per cent on many sessions with turnover, up to a third on sparse studies), "
          "pull a least-squares motion by several um and can make it seem to depend on depth "
          "(benchmarks/RESULTS.md, 'Session 67', 'Session 69'). 0: every good match counts "
          "(least squares, as published).", min=0),
    Param("motionEstimation.weight_tol", "float", 1e-3,
          "IHDBSCAN of the motion rounds stops when no weight changes by more than this (the "
          "final clustering uses clustering.weight_tol): the motion needs the round's matches, "
          "and the last iterations move a few dozen of tens of thousands.", min=0),
    Param("motionEstimation.n_bootstrap", "int", 1000,
          "Bootstrap resamples of the matched pairs for the motion's 95% band.", min=0),
    Param("motionEstimation.initial_estimate", "str", "unit_density",
          "Motion the rounds start from and are checked against: 'unit_density' registers "
          "the sessions' amplitude-weighted densities of unit positions (no ACG, PETH or "
          "waveform needed; kilomatch.motion_initial); 'none' starts at zero motion and checks "
          "nothing (the published method).", choices=("unit_density", "none")),
    Param("motionEstimation.max_shift_um", "float", 1000.0,
          "Largest depth offset (um) between two sessions that the initial estimate searches. "
          "Two sessions farther apart are registered only through the sessions between them; "
          "at 300 um (the earlier default), studies whose sessions lay up to 800 um apart got "
          "a wrong motion (benchmarks/RESULTS.md, 'Session 25').",
          min=0, min_exclusive=True),
    Param("motionEstimation.initial_tolerance_um", "float", 10.0,
          "A round's motion that differs from the initial estimate by more than both 95% "
          "bands plus this (um) at some session is kept only if it superposes the sessions' "
          "units at least as well; otherwise it is set aside, with a warning.", min=0),
    Param("motionEstimation.min_match_fraction", "float", 0.25,
          "A round whose good matches are fewer than this fraction of the unit pairs the "
          "initial estimate superposes is set aside, with a warning.", min=0, max=1),
    Param("clustering.max_distance", "float", 100.0,
          "Largest motion-corrected depth difference (um) of two units that may be the same "
          "neuron; farther pairs are never compared.", min=0, min_exclusive=True),
    Param("clustering.max_session_gap", "int", 10,
          "Compare units only between sessions at most this many sessions apart (in session "
          "order); 0 compares every pair of sessions. A neuron is still tracked across any "
          "span through the sessions in between. Candidate pairs grow with the square of the "
          "number of sessions without it (2.6e8 pairs at 200 sessions of 500 units).", min=0),
    Param("clustering.features", "features", ["Waveform", "AutoCorr"],
          "Similarity features of the final clustering."),
    Param("clustering.method", "str", "similarity",
          "How the final clusters are made: 'similarity' is the published IHDBSCAN + LDA "
          "clustering of the weighted similarity, curated as set by autoCuration; "
          "'probability' clusters the candidate pairs by their match probability, learned "
          "from each dataset's own same-session pairs (README, \"Match probability\").",
          choices=("similarity", "probability")),
    Param("clustering.match_probability", "bool", False,
          "With clustering.method 'similarity': learn and report the per-pair match "
          "probability (CandidatePairs.npz probability, MatchTable.csv, units.csv "
          "match_confidence) even when autoCuration.cut_probability is 1; the clusters stay "
          "the similarity's. With the default cut_probability it is learned anyway."),
    Param("clustering.match_prior_by_gap", "bool", True,
          "The match probability's prior (the share of matches among candidate pairs) is "
          "found for each session gap from the evidence of that gap's pairs, at the same "
          "mean: pairs many sessions apart, where fewer neurons are still recorded, get a "
          "lower probability for the same evidence (README, \"Match probability\"). False: "
          "one prior for every gap."),
    Param("clustering.derived_non_matches", "bool", True,
          "Fit the match probability with known non-matches across sessions derived from "
          "sure matches (sure matches group units, clustering.derived_from says which; two "
          "units of one session in two groups make every pair of the two groups' units a "
          "known non-match, within clustering.max_session_gap), cross-fitted in two folds "
          "that keep each pair of groups in one, "
          "with one isotonic fit (README, \"Match probability\"). On the accuracy suite it "
          "raised F1 on five of six pairs of seeds and calibrated 95 of 120 runs against 82, "
          "without raising precision on "
          "high-turnover studies (benchmarks/RESULTS.md, \"Session 41\"); past 50 pairs of "
          "the two groups' units per same-session pair (or 5,000,000) a seeded random draw "
          "of them is taken. False: the same-session pairs alone, as up to session 40."),
    Param("clustering.derived_from", "str", "clustering",
          "With clustering.derived_non_matches, the sure matches that group units: "
          "'clustering' takes the final clustering's good matches (pairs of one cluster above "
          "its similarity threshold) and fits the probability once; 'probability' takes the "
          "pairs of probability 0.99 or more of a first fit and fits it a second time. On "
          "the accuracy suite 'clustering' raised F1 more (+0.017 against +0.013 over four "
          "pairs of seeds) at lower cost (benchmarks/RESULTS.md, \"Session 36\").",
          choices=("clustering", "probability")),
    Param("clustering.calibrate_to_clusters", "bool", True,
          "Report the match probability of each candidate pair of two units in final "
          "clusters calibrated to the clusters: mapped, in the same order, to the share of "
          "such pairs of its probability that the curated clusters hold together (the "
          "clusters' evidence beyond one pair counts); a unit in no cluster none of whose "
          "pairs reaches 0.5 counts as a cluster of its own, and a pair with any other unit "
          "in no cluster keeps its probability. The probability from the pair's own "
          "evidence, calibrated against the known non-matches alone, stays as "
          "pair_probability, and the curation decides on it. On the accuracy suite the "
          "calibrated probability left fewer decile bins off their range (115 of 120 runs "
          "clean, against 95; benchmarks/RESULTS.md, 'Session 43' and 'Session 49')."),
    Param("clustering.oversized_clusters", "str", "core",
          "What the final clustering makes of a cluster of HDBSCAN's tree with more units "
          "than sessions that never splits into two clusters, only sheds units one by one: "
          "'core' makes a cluster of its units that stay together longest, as many as there "
          "are sessions; 'noise' leaves all its units unmatched (hdbscan's max_cluster_size, "
          "the published method), which loses whole neurons chained to one more unit. The "
          "motion rounds keep 'noise'.", choices=("core", "noise")),
    Param("clustering.n_iter", "int", 10, "Most HDBSCAN + LDA iterations.", min=1),
    Param("clustering.weight_tol", "float", 1e-8,
          "Stop the HDBSCAN + LDA iterations when no weight changes by more than this.", min=0),
    Param("autoCuration.auto_split", "bool", True,
          "Split clusters into the connected components of their above-threshold pairs "
          "(each cut confirmed by the match probability, see autoCuration.cut_probability). "
          "Where the probability is asked for but too few pairs fit it (a small study), the "
          "cuts are confirmed by the final clustering's own two classes instead: the split "
          "cuts only below the similarity at which their LDA (equal priors) gives a match "
          "cut_probability. With cut_probability 1 every cut stands."),
    Param("autoCuration.link_probability", "float", 0.5,
          "With clustering.method 'probability': auto_split splits a cluster where the mean "
          "match probability between its groups of units is below this.", min=0, max=1),
    Param("autoCuration.split_threshold", "str", "equal_priors",
          "Threshold of the split: 'lda' is the LDA boundary with the classes' own priors "
          "(the published threshold; matches are rare, so it sits high and splits true "
          "neurons); 'equal_priors' is the boundary with equal priors, halfway between the "
          "mean similarity of matched and unmatched pairs.", choices=("equal_priors", "lda")),
    Param("autoCuration.position_split", "bool", True,
          "Take apart clusters that join two neurons recorded in turn: cut at the largest "
          "gap in motion-corrected position when the similarity drops across that cut "
          "(README, \"What is different\")."),
    Param("autoCuration.position_gap_um", "float", 7.0,
          "Smallest position gap (um) at which position_split may cut a cluster.", min=0),
    Param("autoCuration.location_algorithm", "str", "decay_triangulation",
          "How the unit positions that the curation's distances read (position_split, "
          "cut_distance_ratio, split_distance_ratio) are estimated, as "
          "spikeLocation.location_algorithm; the motion, the candidate pairs and the match "
          "probability keep spikeLocation's. 'decay_triangulation' (a second fit of every "
          "unit) places one neuron's units closer together, so that the distances tell two "
          "neighbours apart more surely; 'same' reads spikeLocation's positions (the "
          "curation before session 60).",
          choices=("same", "decay_triangulation", "monopolar_triangulation",
                   "center_of_mass")),
    Param("autoCuration.cut_probability", "float", 0.02,
          "A cut made by auto_split or position_split stands only where the mean match "
          "probability between its two sides is at most this (or at most the probability that "
          "90% of the same-session pairs, known non-matches, within 30% of "
          "clustering.max_distance of each other stay under, if higher): the "
          "probability, learned from the data's own same-session pairs, vetoes cuts between "
          "units that are probably one neuron (small units whose similarity is low). 1 keeps "
          "every cut and learns no probability for it (the curation of version 0.0.5).",
          min=0, max=1),
    Param("autoCuration.cut_distance_ratio", "float", 4.0,
          "A cut made by auto_split or position_split stands whatever its match probability "
          "when the units on its two sides are on average farther apart than this many times "
          "the typical distance between two units of one neuron at their amplitudes and "
          "sessions (learned from each dataset's sure matches, README \"Match "
          "probability\"). 0 turns it off.",
          min=0),
    Param("autoCuration.cut_pooled_level", "float", 0.05,
          "A cut made by auto_split or position_split is also undone where the pairs across "
          "it, pooled, are unlike non-matches: every pair across has a match probability no "
          "higher than most same-session pairs (known non-matches) get, yet a classifier score "
          "above their median, and Fisher's combination of the pairs' shares of known "
          "non-matches scoring at least as high is below this level; the two sides' median "
          "amplitudes agree (within the 99th percentile of one neuron's) and they are not "
          "farther apart than cut_distance_ratio. For small units, whose pairs the probability "
          "gives its floor one by one (README \"Match probability\"). 0 turns it off.",
          min=0, max=1),
    Param("autoCuration.rejoin_distance_ratio", "float", 4.0,
          "A cut made by auto_split (the similarity threshold) and left standing by the match "
          "probability is undone where its two sides are alike in all but their similarity: "
          "on average at most this many times the typical distance between two units of one "
          "neuron at their amplitudes apart (learned from the pairs the curated clusters "
          "hold), median amplitudes within the 90th percentile of one neuron's (1.2x at "
          "least), no pair across of match probability 0, and a pair across of consecutive "
          "sessions. For small units, whose waveforms correlate little even when matched "
          "(clustering.method 'similarity'). 0 turns it off.",
          min=0),
    Param("autoCuration.join_probability", "float", 0.8,
          "After the curation's splits (clustering.method 'similarity'): two final clusters, or "
          "units in none, are joined where they share no session (or share sessions only "
          "through pairs the refractory test judged one neuron split by the sorter, with "
          "autoCuration.keep_sorter_splits), every pair of units across is a candidate pair "
          "(but pairs more than clustering.max_session_gap sessions apart, never "
          "candidates), every pair across (but join_low_share of them) has match probability "
          "at least join_min_probability and their mean is at least this; the most probable "
          "first. "
          "IHDBSCAN can keep one neuron's units in two clusters, or leave some out. 0 turns "
          "it off. 0.9 was the earlier default: at 0.8, F1 rose on 16 of the accuracy suite's "
          "128 runs and fell on 2; from 0.8 to 0.7, precision fell on 10 "
          "(benchmarks/RESULTS.md, 'Session 20'). Where the probability is asked for but "
          "too few pairs fit it (a small study), the join asks every pair across to be above "
          "the split threshold instead (kilomatch.joining.join_by_similarity).",
          min=0, max=1),
    Param("autoCuration.join_interleaved_probability", "float", 0.6,
          "The mean match probability across two groups whose sessions interleave in time "
          "(neither group's all before the other's) at which autoCuration.join_probability "
          "joins them, in place of join_probability: such groups cannot be one neuron "
          "followed by another at its place, the join's most common error, and a drift that "
          "brings the probe back groups one neuron's units by probe position "
          "(benchmarks/RESULTS.md, 'Session 53'). Equal to join_probability: no difference.",
          min=0, max=1),
    Param("autoCuration.join_min_probability", "float", 0.5,
          "The least match probability of the pairs across two groups that "
          "autoCuration.join_probability joins (but autoCuration.join_low_share of them).",
          min=0, max=1),
    Param("autoCuration.join_low_share", "float", 0.1,
          "The largest share of the pairs across two groups that autoCuration.join_probability "
          "joins that may lie below autoCuration.join_min_probability (their mean still counts "
          "every pair): one odd pair among ten or more no longer keeps one neuron's halves "
          "apart. 0: every pair must reach it (the rule before session 52; benchmarks/"
          "RESULTS.md, 'Session 52').", min=0, max=1),
    Param("autoCuration.split_distance_ratio", "float", 5.0,
          "Step 5 of the curation (docs/method.md; clustering.method 'similarity'): split each "
          "cluster "
          "where its groups of units are on average farther apart than this many times the "
          "typical distance between two units of one neuron at their amplitudes, learned from "
          "the pairs the curated clusters hold, unless their match probability across is "
          "above autoCuration.split_distance_probability (in mean or median). The joins "
          "after it (autoCuration.join_probability) keep to it: two groups whose pairs across "
          "lie on average farther apart than this are joined only where their mean "
          "probability across is above split_distance_probability. 0 turns it "
          "off.",
          min=0),
    Param("autoCuration.split_distance_probability", "float", 0.9,
          "The split at distance (split_distance_ratio) stands unless the mean or the median "
          "match probability of the pairs across it is above this. 0.9: only where the "
          "probability is sure of one neuron is the distance overruled. 0.5: wherever the "
          "pairs across are more likely one neuron than two, which keeps a neuron whose "
          "amplitude changes 2-3x over days whole, and also a neighbour of 2-3x the "
          "amplitude that replaces it for a session: on the accuracy suite F1 sum +0.004 "
          "over 220 runs, but runs below precision 0.99 6 -> 11 (benchmarks/RESULTS.md, "
          "'Session 61').", min=0, max=1),
    Param("autoCuration.succession_probability", "float", 0.0,
          "Split a cluster where one neuron followed another at its place (clustering.method "
          "'similarity'): at a cut in time (units of the sessions up to one session against "
          "those after it) whose two sides hold two units or more, are each one neuron for "
          "sure (mean match probability 0.9 or more), have no pair that sure across, and "
          "whose mean match probability across is below this (pairs within "
          "clustering.max_session_gap). 0 (the default) turns it off: on the accuracy suite "
          "and on SpikeInterface's studies F1 was higher without it (benchmarks/RESULTS.md, "
          "'Session 15'); 0.3 was the earlier default.",
          min=0, max=1),
    Param("autoCuration.amplitude_step", "float", 1.5,
          "Split a cluster where one neuron followed another of other amplitude "
          "(clustering.method 'similarity'): at a cut in time (units of the sessions up to one "
          "session against those after it; a side may be one unit) where the two sides' "
          "median footprint amplitudes (units.csv footprint_amplitude) differ by more than "
          "this many times the 99th percentile of one "
          "neuron's absolute log amplitude ratio (learned from the pairs the clusters hold), "
          "and by a factor 1.5 at least, and the mean match probability across is below 0.5 "
          "(pairs within clustering.max_session_gap); where they differ by more than 2 times "
          "that step (in log amplitude: the step's factor squared), whatever the probability "
          "across. 0 turns it off.",
          min=0),
    Param("autoCuration.amplitude_split", "bool", True,
          "Split a cluster where the match probability and the amplitude both say it holds "
          "two neurons (clustering.method 'similarity'): groups of units whose mean match "
          "probability across is below the cut level of autoCuration.cut_probability "
          "(average linkage) and whose median footprint amplitudes (units.csv "
          "footprint_amplitude) differ by more than the 99th "
          "percentile of one neuron's absolute log amplitude ratio (learned from the pairs "
          "the clusters hold), and by a factor 1.5 at least. Catches a unit of another neuron "
          "that fills a session where a neuron was not recorded. false turns it off."),
    Param("autoCuration.rate_split", "bool", True,
          "Split a cluster where the match probability and the firing rate both say it holds "
          "two neurons (clustering.method 'similarity'), after the joins: groups of units "
          "whose mean match probability across is below 0.5 (average linkage) and whose "
          "median firing rates (spikes over the session's span; a neuron the sorter split "
          "counts at the sum of its units) differ by more than the 99th percentile of one "
          "neuron's absolute log rate ratio (learned from the pairs the clusters hold), and "
          "by a factor 1.5 at least (reason split_at_rate). Before that, a cluster is cut in "
          "time, whatever the probability, where its rate steps: the sides' median rates "
          "more than 3 times that limit apart (in log) and every rate of one side beyond the "
          "limit from every rate of the other (reason split_at_rate_step). Where the data's "
          "rates are not stable the learned limit is wide and little or nothing is cut. "
          "false turns both off."),
    Param("autoCuration.probability_split", "bool", False,
          "Split a cluster where groups of its units are, on average, below the cut level of "
          "autoCuration.cut_probability in match probability (average linkage), though the "
          "clustering's similarity proposed no cut there (clustering.method 'similarity'); "
          "each cut stands only where the veto of the similarity's cuts lets it (pooled "
          "evidence, amplitudes, distance), and only where the probability was fitted on "
          "autoCuration.probability_split_min_non_matches known non-matches or more. Off by "
          "default: on the accuracy suite it raised F1 and precision a little, on "
          "SpikeInterface's perfect-sorter studies it only took true pairs apart "
          "(benchmarks/RESULTS.md, sessions 48 and 49)."),
    Param("autoCuration.probability_split_min_non_matches", "int", 1000,
          "autoCuration.probability_split acts only where the match probability was fitted "
          "on at least this many known non-matches (same-session pairs and those derived "
          "from sure matches): its cut level (about 0.02) then rests on 20 or more of them. "
          "On a study of a few dozen units (187 same-session pairs) the probability was too "
          "crude for the split: it cut a third of the clusters, differently for two reads "
          "of one sorting.", min=0),
    Param("autoCuration.similarity_step", "float", 1.0,
          "Last split of the curation (clustering.method 'similarity'), for one neuron followed "
          "by another at its place: each cluster of three sessions or more is cut in time "
          "(units of the sessions up to one session against those after it; a side may be "
          "one unit) where its candidate pairs across the cut are less alike than its pairs "
          "within either side by more than this (mean Fisher z of Waveform + 0.3 AutoCorr, "
          "each pair read against the median of the clusters' pairs in the same two "
          "sessions), at the cut where they differ most; each side is tried again. 0 turns "
          "it off (benchmarks/RESULTS.md, 'Session 37', 'Session 44').",
          min=0),
    Param("autoCuration.lone_end_gap", "int", 3,
          "After the similarity step (clustering.method 'similarity'): a cluster's only unit "
          "of its first or last session that lies this many sessions or more from every "
          "other unit of the cluster, and whose match probability with each of them is below "
          "0.1, is taken out of it (one neuron recorded once, then another at its place some "
          "sessions later; reason split_lone_end). The cut at gaps in time (autoCuration."
          "time_gap_probability) reads gaps of this many sessions or more. 0 turns both off "
          "(benchmarks/RESULTS.md, 'Session 50').", min=0),
    Param("autoCuration.time_gap_probability", "float", 0.02,
          "After the lone units (clustering.method 'similarity'): a cluster is cut in time "
          "at a gap of autoCuration.lone_end_gap sessions or more (no unit of it in between) "
          "where the probability that the two sides are one neuron is below this level: the "
          "median match probability of its candidate pairs across (one sure pair across "
          "does not hold the two), and with autoCuration.time_gap_unseen the sessions between "
          "in which that neuron would have gone unseen (one neuron, then after the gap another "
          "at its place; reason split_at_time_gap); 0 turns it off (benchmarks/RESULTS.md, "
          "'Session 51', 'Session 54').", min=0, max=1),
    Param("autoCuration.time_gap_unseen", "bool", True,
          "The cut at gaps in time (autoCuration.time_gap_probability) also reads the gap "
          "itself where the median match probability q across is below 0.3: a neuron there "
          "all along went unseen in each of the g sessions between, and the share m of "
          "sessions in which a neuron of like amplitude goes unseen is learned from the "
          "clusters, so the probability of one neuron is q m^g / (q m^g + 1 - q). false reads "
          "q alone (false with time_gap_probability 0.05 is the cut of sessions 51-53) "
          "(benchmarks/RESULTS.md, 'Session 54')."),
    Param("autoCuration.join_in_turn_probability", "float", 0.9,
          "Step 12 of the curation (docs/method.md; clustering.method 'similarity'): join two "
          "groups (final "
          "clusters, or units in none) recorded in turn, whose sessions interleave in time "
          "over a span of two sessions or more and never coincide, where the probability that "
          "they are one neuron is at least this. Two neurons alive over the span would both "
          "have been recorded in some of its sessions: with q the mean match probability "
          "across (at least 0.2), m the share of sessions a neuron of like amplitude goes "
          "unseen (learned from the clusters), T the span's sessions and k those with a unit, "
          "that probability is q / (q + (1 - q) (2m)^k m^(T - k)). Every pair across within "
          "clustering.max_session_gap must be a candidate, and the groups' median amplitudes "
          "may differ by no more than the step of amplitude the curation cuts whatever the "
          "probability says. 0 turns it off (benchmarks/RESULTS.md, 'Session 55', "
          "'Session 69').", min=0, max=1),
    Param("autoCuration.move_units", "bool", True,
          "After the other steps of the curation but the last (clustering.method "
          "'similarity'; autoCuration.amplitude_outlier_probability), move a unit to another "
          "cluster where the mean match probability of its candidate pairs "
          "into its own cluster is below 0.5 and into the other at least 0.9 over two pairs "
          "or more, and the other cluster has no unit of its session (reason "
          "moved_to_other_cluster): a neuron's units left in the cluster of a neighbour it "
          "was chained to, in the sessions where the neighbour alone was recorded. false "
          "turns it off (benchmarks/RESULTS.md, 'Session 70')."),
    Param("autoCuration.amplitude_outlier_probability", "float", 0.3,
          "Last of the curation (clustering.method 'similarity'): take a unit out of its "
          "cluster of three units or more where its footprint amplitude lies beyond every "
          "other unit's of the cluster, farther from their median than one neuron's units lie "
          "apart (the 99th percentile, learned from the clusters) and at least 1.35x, and "
          "the mean match probability of its candidate pairs with them is below this (reason "
          "split_amplitude_outlier): a neuron recorded once, in the cluster of a neighbour "
          "that went unseen in that session. 0 turns it off (benchmarks/RESULTS.md, "
          "'Session 78').", min=0, max=1),
    Param("autoCuration.keep_sorter_splits", "bool", True,
          "Keep both units of one session in a cluster when their spike trains show they are "
          "one neuron that the sorter split in two (almost no spikes of one within the "
          "refractory period of the other, kilomatch.sorter_splits), and leave such pairs out "
          "of the match probability's known non-matches (every pair of one session as alike "
          "as a good match is tested for that, in a cluster or not); false: the same-session "
          "conflict step always keeps one unit per session (the published curation)."),
    Param("autoCuration.refractory_ms", "float", 1.5,
          "Refractory period (ms) of the sorter-split test: spikes of two units at lags from "
          "0.5 ms to this are counted; a neuron fires no two spikes that close.", min=0.5,
          min_exclusive=True, max=10),
    Param("autoCuration.duplicate_share", "float", 0.5,
          "Two units of one session at most split_max_distance_um apart that share at least "
          "this share of the smaller one's spikes (within 0.5 ms) are duplicates: one neuron "
          "whose spikes the sorter counted twice (kilomatch.duplicate_units). Both are still "
          "tracked, each as a unit of its own; units.csv names, in duplicate_of, the unit of "
          "the group with the most spikes. 0 turns the test off.", min=0, max=1),
    Param("autoCuration.split_max_distance_um", "float", 20.0,
          "Two units of one session whose estimated positions are farther apart than this "
          "(um) are never kept as one neuron split by the sorter, whatever their spike "
          "trains, and are not tested as duplicates (duplicate_share).", min=0),
)

BY_NAME = {p.name: p for p in PARAMETERS}

# Keys that settings files written for the reference port carry but kilomatch does not need:
# accepted so that those files load unchanged, then ignored with a note.
LEGACY = {
    "motionEstimation.n_iter": "the reference port needs it to run; kilomatch's motion rounds "
                               "are set by motionEstimation.features",
}


def default_dict() -> dict:
    """Nested dict of every default, in table order."""
    out: dict = {}
    for p in PARAMETERS:
        node = out
        *parents, leaf = p.name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(json.dumps(p.default))  # a copy
    return out


def _short(description: str) -> str:
    """First sentence of a description, for a one-line comment."""
    return description.split(". ")[0].rstrip(".")


def default_settings_text() -> str:
    """The default settings.json: JSON with a comment after every setting (loadable by the
    reference port's reader too)."""
    lines = ["// kilomatch settings. Every key, its default and meaning: README, 'Settings'.",
             "// Relative paths resolve against this file's folder."]

    def render(tree: dict, prefix: str, indent: int):
        items = list(tree.items())
        for k, (key, value) in enumerate(items):
            pad = " " * (4 * indent)
            comma = "," if k < len(items) - 1 else ""
            name = prefix + key
            if isinstance(value, dict) and name not in BY_NAME:
                lines.append(f'{pad}"{key}": {{')
                render(value, name + ".", indent + 1)
                lines.append(f"{pad}}}{comma}")
            else:
                lines.append(f'{pad}"{key}": {json.dumps(value)}{comma}'
                             f"  // {_short(BY_NAME[name].description)}")

    lines.append("{")
    render(default_dict(), "", 1)
    lines.append("}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """README table of every setting."""
    rows = ["| setting | default | allowed | meaning |", "|---|---|---|---|"]
    for p in PARAMETERS:
        default = json.dumps(p.default)
        rows.append(f"| `{p.name}` | `{default}` | {p.allowed()} | {p.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown_table())
    else:
        sys.stdout.write(default_settings_text())
