"""Figures of a run, returned as matplotlib figures (export.save_figures writes them).

Each figure is drawn from its inputs (:mod:`kilomatch.figure_inputs`: small arrays, no
matplotlib) by :func:`draw`; the functions named for a figure take a
:class:`kilomatch.results.Result` and return that one Figure with labelled axes and units.
Figures are built without pyplot, so no backend is switched and nothing is left open in a
notebook; they display there as they are.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import figure_inputs as inputs_of
from .figure_inputs import matched_units_by_session  # noqa: F401  (public here too)

MATCH_COLOR, OTHER_COLOR = "tab:red", "tab:gray"


def _margins(fig, left=0.8, right=0.25, bottom=0.6, top=0.45, wspace=None):
    """Fixed margins in inches around the axes. tight_layout measured every tick label to place
    them, about a third of the figures' drawing time; these labels' sizes are known."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace)


def _stairs(ax, histogram, color, label):
    """A filled histogram ((counts, edges) of np.histogram) drawn as one outline: a
    bar per bin costs a patch each to lay out and draw, which made the histogram figures
    most of the figures step."""
    counts, edges = histogram
    ax.stairs(counts, edges, fill=True, color=color, alpha=0.7, label=label)


def draw_unit_depth(d: dict):
    """Unit depth per session, before and after motion correction. Units of one tracked neuron
    are joined by a line across sessions; unmatched units are grey."""
    idx, sess = d["idx_cluster"], d["session"]
    fig = Figure(figsize=(11, 6))
    axes = fig.subplots(1, 2, sharey=True)
    colors = matplotlib.colormaps["tab20"](np.arange(20))
    for ax, depth, title in ((axes[0], d["depth"], "probe depth (before correction)"),
                             (axes[1], d["corrected_depth"], "corrected depth")):
        lone = idx <= 0
        ax.scatter(sess[lone], depth[lone], s=6, c="0.75", label="unmatched", zorder=1)
        matched = np.flatnonzero(idx > 0)
        matched = matched[np.lexsort((sess[matched], idx[matched]))]
        # One polyline per tracked neuron through its sessions, drawn as one collection.
        bounds = np.flatnonzero(np.diff(idx[matched])) + 1
        lines = [np.column_stack([sess[m], depth[m]]) for m in np.split(matched, bounds) if m.size]
        # one (K, 4) array: a list of K colours is parsed colour by colour (0.1 s at 1,600 units)
        line_colors = colors[idx[matched[np.r_[0, bounds]]] % 20] if matched.size else "none"
        ax.add_collection(LineCollection(lines, colors=line_colors, linewidths=0.8, zorder=2))
        ax.scatter(sess[matched], depth[matched], s=6, c=colors[idx[matched] % 20], zorder=3)
        ax.plot([], [], "-o", ms=2.5, lw=0.8, color=colors[1], label="tracked neuron")
        ax.autoscale_view()
        ax.set_xlabel("session")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
    axes[0].set_ylabel("depth along the probe (um)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle("Unit depth per session")
    _margins(fig, top=0.75, wspace=0.06)
    return fig


def draw_motion(d: dict):
    """Estimated motion per session with its 95% bootstrap band, each round's estimate, the
    initial estimate from unit positions (when used), and any warning about them."""
    sessions = d["sessions"]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for k, (values, set_aside) in enumerate(d["rounds"], 1):
        label = f"round {k}" + (" (set aside)" if set_aside else "")
        ax.plot(sessions, values, ":" if set_aside else "-", lw=0.8, alpha=0.6, label=label)
    if d["initial"] is not None:
        ax.plot(sessions, d["initial"], "--", color="tab:purple", lw=1.2,
                label="initial estimate (unit positions)")
    ax.fill_between(sessions, d["ci_low"], d["ci_high"], color="k", alpha=0.2,
                    label="95% band")
    ax.plot(sessions, d["final"], "k.-", label=f"final (at {d['ref_depth']:.0f} um)"
            if d["linear"] else "final")
    for (q, at, values), style in zip(d["ends"], ((0, (4, 2)), (0, (1, 1.5)), (0, (6, 1, 1, 1)))):
        ax.plot(sessions, values, color="k", ls=style, lw=1.0,
                label=f"final at {at:.0f} um ({q}th percentile of unit depths)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("session")
    ax.set_ylabel("motion (um, apparent shift of unit depths)")
    ax.set_title(d["title"], fontsize=9)
    ax.legend(fontsize=7, loc="best")
    _margins(fig, top=0.55)
    lines = d["warnings"]
    if lines:
        # Below the axes, so that it never hides the curves.
        fig.set_figheight(4.5 + 0.12 * (len(lines) + 1))
        fig.subplots_adjust(bottom=(0.12 * 4.5 + 0.12 * (len(lines) + 1)) / fig.get_figheight())
        fig.text(0.01, 0.01, "\n".join(["WARNING"] + lines), fontsize=6.5, color="tab:red",
                 va="bottom", ha="left")
    return fig


def draw_similarity_features(d: dict):
    """Each feature's similarity (Fisher z) for matched vs unmatched candidate pairs."""
    features = d["features"]
    fig = Figure(figsize=(4 * len(features), 3.5))
    axes = fig.subplots(1, len(features), squeeze=False)
    for ax, f in zip(axes[0], features):
        for key, color in (("unmatched", OTHER_COLOR), ("matched", MATCH_COLOR)):
            if f[key] is not None:
                _stairs(ax, f[key], color, key)
        ax.set_xlabel(f"{f['name']} similarity (Fisher z)")
        ax.set_title(f"{f['name']}: weight {f['weight']:.2f}")
    axes[0, 0].set_ylabel("density")
    if d["any_pairs"]:
        axes[0, 0].legend(fontsize=8)
    _margins(fig, left=0.7, wspace=0.22)
    return fig


def draw_weighted_similarity(d: dict):
    """Weighted similarity of candidate pairs with the LDA threshold."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    _stairs(ax, d["unmatched"], OTHER_COLOR, "unmatched pairs")
    _stairs(ax, d["matched"], MATCH_COLOR, "matched pairs")
    if np.isfinite(d["threshold"]):
        ax.axvline(d["threshold"], color="k", ls="--",
                   label=f"LDA threshold {d['threshold']:.2f}")
    if d["any_pairs"]:
        ax.set_yscale("log")
    ax.set_xlabel("weighted similarity (Fisher z units)")
    ax.set_ylabel("pairs")
    ax.set_title("Weighted similarity of candidate pairs")
    ax.legend(fontsize=8)
    _margins(fig)
    return fig


def draw_match_probability(d: dict):
    """Share of the units of session a that are tracked into session b: matrix, and its mean
    against the distance between sessions. (The file keeps pyKilomatch's name,
    MatchProbability.png; it counts the final clusters, it is not the per-pair match
    probability of MatchTable.csv, whose check is MatchProbability_calibration.png.)"""
    share = d["share"]
    n_s = share.shape[0]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    im = axes[0].imshow(share, vmin=0, vmax=1, cmap="viridis", origin="lower",
                        extent=(0.5, n_s + 0.5, 0.5, n_s + 0.5))
    fig.colorbar(im, ax=axes[0], label="share of session a's units")
    axes[0].set_xlabel("session b")
    axes[0].set_ylabel("session a")
    axes[0].set_title("Units of session a tracked into session b")
    gaps = np.arange(1, n_s)
    a, b = np.meshgrid(np.arange(n_s), np.arange(n_s), indexing="ij")
    curve = [share[np.abs(a - b) == g].mean() for g in gaps]
    axes[1].plot(gaps, curve, "o-")
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("distance between sessions (sessions)")
    axes[1].set_ylabel("share of units tracked")
    axes[1].set_title("Units tracked against the distance between sessions")
    _margins(fig, left=0.7, wspace=0.3)
    return fig


def draw_feature_scatter(d: dict):
    """Pairwise scatter of the similarity features, matched vs unmatched pairs."""
    names, z, same = d["names"], d["similarities"], d["same"]
    combos = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))] or [(0, 0)]
    fig = Figure(figsize=(4.5 * len(combos), 4))
    axes = fig.subplots(1, len(combos), squeeze=False)
    for ax, (a, b) in zip(axes[0], combos):
        for mask, color, label in ((~same, OTHER_COLOR, "unmatched"),
                                   (same, MATCH_COLOR, "matched")):
            ax.scatter(z[mask, a], z[mask, b], s=2, c=color, alpha=0.5, label=label)
        ax.set_xlabel(f"{names[a]} similarity (z)")
        ax.set_ylabel(f"{names[b]} similarity (z)")
    axes[0, 0].legend(fontsize=8, markerscale=4)
    fig.suptitle("Similarity features of candidate pairs")
    _margins(fig, left=0.7, top=0.7, wspace=0.3)
    return fig


def draw_probability_calibration(bins: dict):
    """Reliability of the match probability against ground truth: per probability decile
    (metrics.calibration_bins), the fraction of candidate pairs that are one neuron; the
    pair probability's too (dashed) where the reported one is calibrated to the clusters."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color=OTHER_COLOR, lw=1, label="perfect calibration")
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color=OTHER_COLOR, alpha=0.15,
                    label="within 0.05")
    if "pair" in bins:  # before calibrate_to_clusters: the pair's own evidence
        pair = bins["pair"]
        sel = pair["n_pairs"] >= 50
        ax.plot(pair["mean_probability"][sel], pair["true_fraction"][sel], "s--",
                color=OTHER_COLOR, ms=4, label="pair probability, bins of >= 50 pairs")
    enough = bins["n_pairs"] >= 50
    for sel, style, label in ((enough, "o-", "match probability, bins of >= 50 pairs"),
                              (~enough & (bins["n_pairs"] > 0), "x",
                               "match probability, bins of < 50 pairs")):
        ax.plot(bins["mean_probability"][sel], bins["true_fraction"][sel], style,
                color=MATCH_COLOR, label=label)
    for x, y, n in zip(bins["mean_probability"], bins["true_fraction"], bins["n_pairs"]):
        if n:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("match probability (mean of the decile bin)")
    ax.set_ylabel("fraction of the bin's pairs that are one neuron")
    ax.set_title("Match probability vs ground truth")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


DRAW = {"UnitDepth": draw_unit_depth, "Motion": draw_motion,
        "SimilarityFeatures": draw_similarity_features,
        "WeightedSimilarity": draw_weighted_similarity,
        "MatchProbability": draw_match_probability, "FeatureScatter": draw_feature_scatter,
        "MatchProbability_calibration": draw_probability_calibration}


def draw(name: str, inputs: dict):
    """The figure ``name`` (a key of DRAW, a key of figure_inputs.figure_inputs) drawn from
    its inputs."""
    return DRAW[name](inputs)


def unit_depth(result):
    """UnitDepth.png of a Result (:func:`draw_unit_depth`)."""
    return draw_unit_depth(inputs_of.unit_depth(result))


def motion(result):
    """Motion.png of a Result (:func:`draw_motion`)."""
    return draw_motion(inputs_of.motion(result))


def similarity_features(result):
    """SimilarityFeatures.png of a Result (:func:`draw_similarity_features`)."""
    return draw_similarity_features(inputs_of.similarity_features(result))


def weighted_similarity(result):
    """WeightedSimilarity.png of a Result (:func:`draw_weighted_similarity`)."""
    return draw_weighted_similarity(inputs_of.weighted_similarity(result))


def match_probability(result):
    """MatchProbability.png of a Result (:func:`draw_match_probability`)."""
    return draw_match_probability(inputs_of.match_probability(result))


def feature_scatter(result, max_points: int = inputs_of.SCATTER_POINTS):
    """FeatureScatter.png of a Result (:func:`draw_feature_scatter`)."""
    return draw_feature_scatter(inputs_of.feature_scatter(result, max_points))


def probability_calibration(result, gt_neuron: np.ndarray):
    """MatchProbability_calibration.png of a Result against ground truth (N,) neuron ids
    (:func:`draw_probability_calibration`)."""
    return draw_probability_calibration(inputs_of.probability_calibration(result, gt_neuron))


def plot_all(result, gt_neuron: np.ndarray | None = None) -> dict:
    """Every figure of a run, by file name (without .png); with ground truth (N,) neuron ids
    and a match probability, its calibration too."""
    return {name: draw(name, d)
            for name, d in inputs_of.figure_inputs(result, gt_neuron).items()}


def _probe_traces(ax, waveforms, channels, channel_locations, colors, title):
    """Each unit's waveform drawn at its channels' positions on the probe (x, y um)."""
    span = np.ptp(channel_locations[:, 0]) or 1.0
    width = 0.8 * min(np.diff(np.unique(channel_locations[:, 0])).min(initial=span), 30.0)
    height = 2.0 * max(np.diff(np.unique(channel_locations[:, 1])).min(initial=20.0), 10.0)
    scale = height / max(np.ptp(waveforms), 1e-9)
    t = np.linspace(-width / 2, width / 2, waveforms.shape[2])
    for wf, ch, color in zip(waveforms, channels, colors):
        # one collection per unit: hundreds of single lines make the figure slow to draw
        x0, y0 = channel_locations[ch, 0][:, None], channel_locations[ch, 1][:, None]
        traces = np.stack([x0 + t[None, :], y0 + wf * scale], axis=-1)
        ax.add_collection(LineCollection(traces, colors=[color], linewidths=0.8))
    ax.autoscale_view()
    ax.set_xlabel("x (um)")
    ax.set_ylabel("depth (um)")
    ax.set_title(title)


def plot_cluster(output, cluster_id: int, figsize=(15, 9)):
    """One tracked neuron across its sessions (like the MATLAB visualizeCluster).

    ``output``: an output folder, the dict of :func:`kilomatch.export.load_output`, or a
    :class:`kilomatch.results.Result` written to disk. Panels: waveforms on the nearest
    channels before and after motion correction, ACGs, PETHs (when present), depth per session
    and the similarity between the cluster's units (``output["pair_label"]`` names the value
    when ``output["similarity"]`` holds another one, such as a match probability). Colours
    are sessions.
    """
    from .export import load_output
    if not isinstance(output, dict):
        folder = getattr(getattr(output, "settings", None), "output_folder", output)
        output = load_output(folder)
    from .errors import KilomatchError
    idx = output["idx_cluster"]
    units = np.flatnonzero(idx == cluster_id)
    if units.size == 0:
        raise KilomatchError(f"no cluster {cluster_id}: clusters are 1..{idx.max(initial=0)}")
    units = units[np.argsort(output["session"][units], kind="stable")]
    sessions = output["session"][units]
    n_sessions = int(output["session"].max())
    if n_sessions <= 10:  # distinct hues; a sequential map's light end vanishes on white
        colors = [matplotlib.colormaps["tab10"](session - 1) for session in sessions]
    else:
        colors = [matplotlib.colormaps["viridis"](0.9 * (session - 1) / (n_sessions - 1))
                  for session in sessions]
    fig = Figure(figsize=figsize)
    axes = fig.subplots(2, 3)
    locs = output["channel_locations"]
    _probe_traces(axes[0, 0], output["waveforms"][units], output["waveform_channels"][units],
                  locs, colors, "waveforms (before correction)")
    _probe_traces(axes[0, 1], output["waveforms_corrected"][units],
                  output["waveform_channels_corrected"][units], locs, colors,
                  "waveforms (motion-corrected)")
    ax = axes[0, 2]
    for u, color, session in zip(units, colors, sessions):
        ax.plot(output["acg_lags"], output["auto_corr"][u], color=color, lw=0.8,
                label=f"session {session}")
    ax.set_xlabel("lag (ms)")
    ax.set_ylabel("autocorrelogram (max 1)")
    ax.set_title("ACG")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    if output["peth"] is not None:
        for u, color in zip(units, colors):
            ax.plot(output["peth"][u], color=color, lw=0.8)
        ax.set_xlabel("PETH bin")
        ax.set_ylabel("PETH (as given)")
        ax.set_title("PETH")
    else:
        ax.text(0.5, 0.5, "no PETH in the input", ha="center", va="center")
        ax.set_axis_off()
    ax = axes[1, 1]
    ax.plot(sessions, output["locations"][units, 1], "o--", color="0.5", label="probe depth")
    ax.plot(sessions, output["corrected_depth"][units], "o-", color="k", label="corrected depth")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("session")
    ax.set_ylabel("depth (um)")
    ax.set_title("depth per session")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    sim = np.full((units.size, units.size), np.nan)
    pos = {u: k for k, u in enumerate(units)}
    pairs, values = output["pairs"], output["similarity"]
    inside = np.isin(pairs[:, 0], units) & np.isin(pairs[:, 1], units)
    for (a, b), v in zip(pairs[inside], values[inside]):
        sim[pos[a], pos[b]] = sim[pos[b], pos[a]] = v
    _pair_matrix(ax, sim, [f"s{session}\nu{unit}" for session, unit in zip(sessions, units)],
                 output.get("pair_label", "weighted similarity"), output.get("pair_threshold"))
    fig.suptitle(f"Cluster {cluster_id}: units {', '.join(map(str, units))}")
    # fixed margins: tight_layout costs most of the drawing time of a report's many figures
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.08, top=0.9, wspace=0.3, hspace=0.38)
    return fig


def _pair_matrix(ax, values, labels, label, threshold=None):
    """Symmetric (M, M) pair values with each cell written in; with a threshold, cells below
    it are red and above it blue (diverging around it), so a weak link stands out. An
    infinite threshold (a study whose candidate pairs were all clustered sets none) is
    drawn as no threshold."""
    from matplotlib.colors import TwoSlopeNorm
    finite = values[np.isfinite(values)]
    if threshold is not None and not np.isfinite(threshold):
        threshold = None
    if threshold is not None and finite.size:
        low = min(finite.min(), threshold) - 1e-6
        high = max(finite.max(), threshold) + 1e-6
        im = ax.imshow(values, cmap="RdBu", norm=TwoSlopeNorm(threshold, low, high))
        ax.figure.colorbar(im, ax=ax, label=f"threshold {threshold:.2f}")
    else:
        im = ax.imshow(values, cmap="magma")
        ax.figure.colorbar(im, ax=ax)
    if len(labels) <= 12:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                shade = im.norm(v)  # white text on the dark ends of either map
                dark = abs(shade - 0.5) > 0.3 if threshold is not None else shade < 0.6
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="w" if dark else "k")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(label)
