"""One summary per tracked neuron (cluster) for review: what it spans, its weakest link, its
nearest competitor and what looks suspicious."""

from __future__ import annotations

import numpy as np

from ..tracked import cluster_members
from .links import Links

# A link is "near the threshold" when it sits in the lowest NEAR_FRACTION of the way from
# the threshold to the median link inside clusters: the weakest links the run still kept.
NEAR_FRACTION = 0.25
# A cut of the curation is doubtful when the mean match probability of its pairs across is
# at least this: the pairs are then more likely one neuron than two. On the accuracy suite
# (300 runs) such cuts held 314 of the 1,228 true matches the curation took apart, in 170
# cuts (0.6 per run), against 6.5% true among all its removals; they held 400 wrong pairs
# too (benchmarks/RESULTS.md, "Session 61").
CUT_FLAG_PROBABILITY = 0.5
# Two groups of a cluster are doubtful when the mean match probability of the pairs between
# them is below this: by its pairs the cluster is then more likely two neurons than one. On
# the accuracy suite (300 runs, 42,866 clusters) 491 clusters were flagged (1.6 per run);
# the pairs across their two groups held 222 of the 614 wrong pairs of all the clusters, and
# 1,604 of their 549,962 true ones (before autoCuration.rate_split; benchmarks/RESULTS.md,
# "Session 62").
GROUP_FLAG_PROBABILITY = 0.5
FLAGS = {
    "gap": "seen in sessions that are not consecutive (the neuron is missing in between)",
    "jump": "its motion-corrected position moves more than autoCuration.position_gap_um "
            "between two sessions in which it is seen",
    "near": "its weakest link is close to the threshold",
    "duplicate": "holds a unit that shares most of its spikes with another unit of its "
                 "session (units.csv duplicate_of): the sorter counted that neuron twice, and "
                 "this cluster may track it a second time",
    "cut": "the curation took units apart from this cluster (CurationResults.npz) whose "
           f"mean match probability across is {CUT_FLAG_PROBABILITY:g} or more: more likely "
           "one neuron than two; compare it with the cluster or unit it was cut from, and "
           "merge them if they are one neuron",
    "groups": "its units fall in two groups (average linkage on the match probability) whose "
              f"mean match probability across is below {GROUP_FLAG_PROBABILITY:g}: by its "
              "pairs, more likely two neurons than one; look at the smaller group, and split "
              "it off if it is another neuron",
}


def _weakest_inside(idx: np.ndarray, links: Links):
    """Per cluster id (array index): the lowest link value inside it and that link's
    threshold (NaN where no pair of its units was compared)."""
    a, b = links.pairs[:, 0], links.pairs[:, 1]
    inside = (idx[a] == idx[b]) & (idx[a] > 0)
    size = int(idx.max(initial=0)) + 1
    lowest = np.full(size, np.inf)
    np.minimum.at(lowest, idx[a[inside]], links.value[inside])
    lowest[np.isinf(lowest)] = np.nan
    threshold = np.full(size, np.nan)
    hit = inside & (links.value == lowest[np.where(idx[a] > 0, idx[a], 0)])
    threshold[idx[a[hit]]] = links.threshold[hit]
    return lowest, threshold, links.value[inside]


def _competitors(idx: np.ndarray, links: Links):
    """Per cluster id: the strongest link from one of its units to a unit outside it, as
    (value, other unit); value NaN and unit -1 when there is none."""
    a, b = links.pairs[:, 0], links.pairs[:, 1]
    outside = ~((idx[a] == idx[b]) & (idx[a] > 0))
    own = np.concatenate([a[outside], b[outside]])
    other = np.concatenate([b[outside], a[outside]])
    value = np.concatenate([links.value[outside], links.value[outside]])
    keep = idx[own] > 0
    own, other, value = own[keep], other[keep], value[keep]
    size = int(idx.max(initial=0)) + 1
    best_value, best_unit = np.full(size, np.nan), np.full(size, -1, np.int64)
    if own.size:
        # strongest first, then lowest unit, so ties resolve the same way every run
        order = np.lexsort((other, -value, idx[own]))
        first = order[np.r_[True, np.diff(idx[own][order]) != 0]]
        best_value[idx[own[first]]] = value[first]
        best_unit[idx[own[first]]] = other[first]
    return best_value, best_unit


def doubtful_cuts(idx, removed_pairs, removed_probability, removed_reason, reason_names,
                  level: float = CUT_FLAG_PROBABILITY) -> dict:
    """The curation's cuts that the match probability doubts, per cluster.

    The pairs the curation took apart (``removed_pairs`` (R, 2) units, their pair
    probability (R,) (NaN where none), ``removed_reason`` (R,) index into ``reason_names``)
    are grouped by the two sides they join now: two clusters of ``idx`` (N,), or a cluster
    and an unmatched unit (each such unit its own side). Same-session conflicts are left out
    (two units of one session are two neurons, or a sorter split kept whole elsewhere), and
    so are pairs whose units are in one cluster again (a later join or a reviewer's merge).
    A group whose mean probability (over its pairs that have one) is at least ``level`` is
    a doubtful cut. Returns {cluster id: [{"cluster": the other cluster or None, "unit": a
    unit on the other side, "probability": mean, "pairs": count, "reason": its most
    frequent reason}, ...] by decreasing probability}.
    """
    idx = np.asarray(idx).reshape(-1)
    pairs = np.asarray(removed_pairs, np.int64).reshape(-1, 2)
    probability = np.asarray(removed_probability, np.float64).reshape(-1)
    reason = np.asarray(removed_reason, np.int64).reshape(-1)
    names = [str(n) for n in reason_names]
    keep = np.isfinite(probability)
    if "same_session_conflict" in names:
        keep &= reason != names.index("same_session_conflict")
    a, b, p, why = pairs[keep, 0], pairs[keep, 1], probability[keep], reason[keep]
    # a side: a cluster id (> 0), or -1 - unit for an unmatched unit
    side_a = np.where(idx[a] > 0, idx[a], -1 - a)
    side_b = np.where(idx[b] > 0, idx[b], -1 - b)
    apart = (side_a != side_b) & ((side_a > 0) | (side_b > 0))
    a, b, p, why = a[apart], b[apart], p[apart], why[apart]
    side_a, side_b = side_a[apart], side_b[apart]
    if not a.size:
        return {}
    swap = side_a > side_b  # each pair as (lower side, higher side)
    lo, hi = np.where(swap, side_b, side_a), np.where(swap, side_a, side_b)
    unit_lo, unit_hi = np.where(swap, b, a), np.where(swap, a, b)
    groups, first, group = np.unique(np.column_stack([lo, hi]), axis=0, return_index=True,
                                     return_inverse=True)
    group = group.reshape(-1)
    count = np.bincount(group, minlength=len(groups))
    mean = np.bincount(group, weights=p, minlength=len(groups)) / count
    # each group's most frequent reason (the lowest index on a tie)
    by_reason = np.zeros((len(groups), max(len(names), int(why.max()) + 1)), np.int64)
    np.add.at(by_reason, (group, why), 1)
    common = by_reason.argmax(axis=1)
    out: dict = {}
    for g in np.flatnonzero(mean >= level):
        for own, other, unit in ((groups[g, 0], groups[g, 1], unit_hi[first[g]]),
                                 (groups[g, 1], groups[g, 0], unit_lo[first[g]])):
            if own <= 0:  # an unmatched unit has no row of its own
                continue
            out.setdefault(int(own), []).append({
                "cluster": int(other) if other > 0 else None, "unit": int(unit),
                "probability": round(float(mean[g]), 3), "pairs": int(count[g]),
                "reason": names[int(common[g])]})
    for cuts in out.values():
        cuts.sort(key=lambda c: (-c["probability"], c["unit"]))
    return out


def doubtful_groups(idx, links: Links, level: float = GROUP_FLAG_PROBABILITY) -> dict:
    """The clusters that the match probability would rather see as two neurons.

    Each cluster of ``idx`` (N,) with two units or more is parted in two by average linkage
    on the match probability of its pairs (``links``: its last merge); pairs that were never
    compared (beyond clustering.max_distance or max_session_gap) count as 0 there, as in the
    curation's split by average link. The cluster is flagged when the mean probability of
    the compared pairs across the two groups is below ``level``: uncompared pairs alone do
    not flag a cluster that spans many sessions. Runs without a probability (links of
    weighted similarity) have none. Returns {cluster id: {"units": the smaller group's units
    (sorted; on a tie, the group without the cluster's first unit), "probability": the mean
    across, "pairs": the compared pairs across, "uncompared": the pairs across never
    compared}}.
    """
    if links.kind != "probability":
        return {}
    from scipy.cluster.hierarchy import linkage, to_tree
    from scipy.spatial.distance import squareform

    from ..curation import _cluster_members, _cluster_similarity, clusters_below
    labels = np.where(np.asarray(idx).reshape(-1) > 0, np.asarray(idx).reshape(-1), -1)
    value = np.nan_to_num(links.value)
    # a cluster whose compared pairs are all at the level or above cannot hold two groups
    # whose compared pairs across are below it on average
    maybe = clusters_below(labels, links.pairs, value, level)
    out = {}
    for cid, (units, rows) in zip(maybe, _cluster_members(labels, links.pairs, maybe)):
        prob = _cluster_similarity(units, links.pairs[rows], value[rows])
        compared = _cluster_similarity(units, links.pairs[rows], np.ones(rows.size)) > 0
        distance = 1.0 - prob
        np.fill_diagonal(distance, 0.0)
        root = to_tree(linkage(squareform(distance, checks=False), method="average"))
        first = np.zeros(units.size, bool)
        first[root.get_left().pre_order()] = True
        across = np.triu(first[:, None] != first[None, :], 1)
        seen = across & compared
        if not seen.any() or prob[seen].mean() >= level:
            continue
        # the smaller group; on a tie the one without the cluster's first unit
        small = first if (first.sum(), first[0]) < ((~first).sum(), not first[0]) else ~first
        out[int(cid)] = {"units": units[small].tolist(),
                         "probability": round(float(prob[seen].mean()), 3),
                         "pairs": int(seen.sum()), "uncompared": int((across & ~compared).sum())}
    return out


def _largest_jump(units: np.ndarray, positions: np.ndarray) -> float:
    """Largest distance (um) between the positions of consecutive units (in session order)."""
    if units.size < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(positions[units], axis=0), axis=1).max())


def summarize_clusters(idx, session, positions, amplitude, links: Links,
                       position_gap_um: float, duplicate_of: np.ndarray | None = None,
                       cuts: dict | None = None, groups: dict | None = None,
                       rate: np.ndarray | None = None) -> list:
    """One dict per cluster, by increasing id, ready for the page's JSON.

    idx, session: (N,) cluster (-1 unmatched) and session (1..S) of each unit. positions:
    (N, 2) motion-corrected x, depth (um). amplitude: (N,) uV. duplicate_of: (N,) the unit
    each unit duplicates (kilomatch.duplicate_units), -1 for none; None: not known. cuts:
    the curation's doubtful cuts (:func:`doubtful_cuts`), or None. groups: the clusters the
    probability sees as two groups (:func:`doubtful_groups`), or None. rate: (N,) firing
    rate (Hz) of each unit, or None (a unit's row then has None in its place). Values are
    rounded for the page.
    """
    idx = np.asarray(idx).reshape(-1)
    session = np.asarray(session).reshape(-1)
    duplicate = None if duplicate_of is None else np.asarray(duplicate_of).reshape(-1) >= 0
    lowest, lowest_threshold, inside_values = _weakest_inside(idx, links)
    best_value, best_unit = _competitors(idx, links)
    typical = float(np.median(inside_values)) if inside_values.size else np.nan
    rows = []
    for cid, units in cluster_members(idx, session):
        seen = session[units]
        # a neuron the sorter split holds two units of one session: count days, not units
        n_days = np.unique(seen).size
        flags = []
        if seen[-1] - seen[0] + 1 > n_days:
            flags.append("gap")
        jump = _largest_jump(units, positions)
        if jump > position_gap_um:
            flags.append("jump")
        weakest, cut = lowest[cid], lowest_threshold[cid]
        # no finite threshold (every candidate pair clustered): no link is near it
        if (np.isfinite(weakest) and np.isfinite(cut)
                and weakest < cut + NEAR_FRACTION * max(typical - cut, 0.0)):
            flags.append("near")
        if duplicate is not None and duplicate[units].any():
            flags.append("duplicate")
        doubtful = [] if cuts is None else cuts.get(cid, [])
        if doubtful:
            flags.append("cut")
        two = None if groups is None else groups.get(cid)
        if two is not None:
            flags.append("groups")
        competitor = None
        if best_unit[cid] >= 0:
            other = int(best_unit[cid])
            competitor = {"unit": other, "value": round(float(best_value[cid]), 3),
                          "cluster": int(idx[other]) if idx[other] > 0 else None}
        rows.append({
            "id": cid,
            "first": int(seen[0]), "last": int(seen[-1]), "n_sessions": int(n_days),
            "depth": round(float(positions[units, 1].mean()), 1),
            "amplitude": round(float(np.mean(amplitude[units])), 1),
            "weakest": None if not np.isfinite(weakest) else round(float(weakest), 3),
            "jump": round(jump, 1),
            "competitor": competitor,
            "cut": doubtful,
            "groups": two,
            "flags": flags,
            "units": [[int(u), int(s), round(float(positions[u, 1]), 1),
                       round(float(amplitude[u]), 1),
                       None if rate is None else round(float(rate[u]), 2)]
                      for u, s in zip(units, seen)],
        })
    return rows
