"""One summary per tracked neuron (cluster) for review: what it spans, its weakest link, its
nearest competitor and what looks suspicious."""

from __future__ import annotations

import numpy as np

from ..tracked import cluster_members
from .links import Links

# A link is "near the threshold" when it sits in the lowest NEAR_FRACTION of the way from
# the threshold to the median link inside clusters: the weakest links the run still kept.
NEAR_FRACTION = 0.25
FLAGS = {
    "gap": "seen in sessions that are not consecutive (the neuron is missing in between)",
    "jump": "its motion-corrected position moves more than autoCuration.position_gap_um "
            "between two sessions in which it is seen",
    "near": "its weakest link is close to the threshold",
    "duplicate": "holds a unit that shares most of its spikes with another unit of its "
                 "session (units.csv duplicate_of): the sorter counted that neuron twice, and "
                 "this cluster may track it a second time",
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


def _largest_jump(units: np.ndarray, positions: np.ndarray) -> float:
    """Largest distance (um) between the positions of consecutive units (in session order)."""
    if units.size < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(positions[units], axis=0), axis=1).max())


def summarize_clusters(idx, session, positions, amplitude, links: Links,
                       position_gap_um: float, duplicate_of: np.ndarray | None = None) -> list:
    """One dict per cluster, by increasing id, ready for the page's JSON.

    idx, session: (N,) cluster (-1 unmatched) and session (1..S) of each unit. positions:
    (N, 2) motion-corrected x, depth (um). amplitude: (N,) uV. duplicate_of: (N,) the unit
    each unit duplicates (kilomatch.duplicate_units), -1 for none; None: not known. Values
    are rounded for the page.
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
        if np.isfinite(weakest) and weakest < cut + NEAR_FRACTION * max(typical - cut, 0.0):
            flags.append("near")
        if duplicate is not None and duplicate[units].any():
            flags.append("duplicate")
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
            "flags": flags,
            "units": [[int(u), int(s), round(float(positions[u, 1]), 1),
                       round(float(amplitude[u]), 1)] for u, s in zip(units, seen)],
        })
    return rows
