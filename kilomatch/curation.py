"""Auto-curation of the final clusters (ALGORITHM.md s.7), recording every removed pair.

Arrays in, arrays out: the pipeline supplies every within-cluster pair with its weighted
similarity and whether it may link two units at all (different sessions, within max_distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

REASONS = ("same_session_conflict", "split_below_threshold")
CONFLICT, SPLIT = 0, 1


def within_cluster_pairs(labels: np.ndarray) -> np.ndarray:
    """Every pair (i < j) of units sharing a cluster (labels >= 0): (Q, 2) int64, sorted."""
    labels = np.asarray(labels)
    units = np.flatnonzero(labels >= 0)
    order = units[np.argsort(labels[units], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    chunks = [list(combinations(sorted(g.tolist()), 2)) for g in np.split(order, bounds) if g.size > 1]
    pairs = np.array([p for c in chunks for p in c], dtype=np.int64).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if pairs.size else pairs


@dataclass
class CurationResult:
    """labels: (N,) final clusters before renumbering (-1 none); removed_pairs: (R, 2) unit
    pairs taken apart; removed_reason: (R,) index into REASONS; labels_after_conflicts: (N,)."""

    labels: np.ndarray
    labels_after_conflicts: np.ndarray
    removed_pairs: np.ndarray
    removed_reason: np.ndarray


def _pair_lookup(pairs: np.ndarray, values: np.ndarray, n_units: int):
    """Symmetric sparse (N, N) lookup of a per-pair value."""
    m = sparse.coo_matrix((values, (pairs[:, 0], pairs[:, 1])), shape=(n_units, n_units)).tocsr()
    return m + m.T


def resolve_conflicts(labels, session, pairs, similarity):
    """While a cluster holds two units of one session, drop the conflicting unit with the
    lowest mean similarity to the rest of the cluster (ties: the higher unit index).

    Returns (labels, removed (R, 2)). ``pairs``/``similarity`` cover every within-cluster pair.
    """
    labels = np.array(labels, dtype=np.int64)
    n = labels.size
    sim = _pair_lookup(pairs, np.asarray(similarity, float), n).tolil()
    removed = []
    for c in np.unique(labels[labels >= 0]):
        members = list(np.flatnonzero(labels == c))
        while True:
            sess = session[members]
            uniq, counts = np.unique(sess, return_counts=True)
            clash = set(uniq[counts > 1].tolist())
            if not clash:
                break
            scores = []
            for u in members:
                if session[u] in clash:
                    others = [v for v in members if v != u]
                    scores.append((np.mean([sim[u, v] for v in others]), -u, u))
            _, _, worst = min(scores)
            members.remove(worst)
            labels[worst] = -1
            removed += [(min(worst, v), max(worst, v)) for v in members]
    return labels, np.array(removed, dtype=np.int64).reshape(-1, 2)


def split_clusters(labels, pairs, similarity, linkable, threshold):
    """Split each cluster into the connected components of its pairs that are linkable and
    above ``threshold``. Returns (labels with new cluster ids, removed (R, 2))."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    inside = (labels[pairs[:, 0]] == labels[pairs[:, 1]]) & (labels[pairs[:, 0]] >= 0)
    keep = inside & linkable & (np.asarray(similarity) > threshold)
    graph = sparse.coo_matrix((np.ones(keep.sum()), (pairs[keep, 0], pairs[keep, 1])),
                              shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    new = np.where(labels >= 0, comp, -1)
    broken = inside & (new[pairs[:, 0]] != new[pairs[:, 1]])
    return new, pairs[broken]


def dissolve_singletons(labels: np.ndarray) -> np.ndarray:
    """Clusters with one unit become -1."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    valid = labels >= 0
    counts = np.bincount(labels[valid]) if valid.any() else np.zeros(0, np.int64)
    lone = valid.copy()
    lone[valid] = counts[labels[valid]] == 1
    labels[lone] = -1
    return labels


def curate(labels, session, pairs, similarity, linkable, threshold,
           auto_split: bool = True) -> CurationResult:
    """Both curation steps, then dissolve single-unit clusters.

    labels: (N,) clusters from the final clustering; session: (N,); pairs: (Q, 2) every
    within-cluster pair; similarity: (Q,) weighted similarity; linkable: (Q,) bool.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    after_conflicts, removed_c = resolve_conflicts(labels, session, pairs, similarity)
    after_conflicts = dissolve_singletons(after_conflicts)
    removed_s = np.empty((0, 2), np.int64)
    final = after_conflicts
    if auto_split:
        final, removed_s = split_clusters(after_conflicts, pairs, similarity, linkable, threshold)
    final = dissolve_singletons(final)
    removed = np.vstack([removed_c, removed_s])
    reason = np.concatenate([np.full(len(removed_c), CONFLICT), np.full(len(removed_s), SPLIT)])
    return CurationResult(final, after_conflicts, removed, reason.astype(np.int8))
