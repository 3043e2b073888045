"""The three hdbscan internals kilomatch uses, called by keyword in one place.

Why not ``hdbscan.HDBSCAN``: its public API clusters points or a dense precomputed distance
matrix. kilomatch has only a sparse graph of candidate pairs (units of nearby depth in
different sessions); every other pair is infinitely far, and that graph is usually
disconnected. The public API cannot take it: a dense N x N matrix is 10^10 entries at 10^5
units; with ``np.inf`` for the missing pairs, hdbscan 0.8's dense minimum spanning tree (Prim)
cannot cross an all-infinite cut and returns a tree that does not span, which condensing then
fails on or loops over; with a large finite distance instead, the result depends on the order
in which the tied far merges happen, i.e. on unit order. So kilomatch builds the minimum
spanning tree of the sparse graph itself and hands hdbscan only the steps after it: the single-
linkage tree of one connected MST, its condensing, and the excess-of-mass selection. Those live
in hdbscan's private modules ``_hdbscan_linkage`` and ``_hdbscan_tree``, whose signatures may
change in any release: pyproject.toml bounds hdbscan below the next minor version, every call
here passes arguments by keyword (so a renamed or reordered argument fails loudly instead of
silently meaning something else), and tests/test_clustering.py checks the result against public
``hdbscan.HDBSCAN`` on dense matrices.
"""

from __future__ import annotations

import numpy as np

try:
    from hdbscan._hdbscan_linkage import label as _label
    from hdbscan._hdbscan_tree import compute_stability as _compute_stability
    from hdbscan._hdbscan_tree import condense_tree as _condense_tree
    from hdbscan._hdbscan_tree import get_clusters as _get_clusters
except ImportError as err:  # pragma: no cover - depends on the installed hdbscan
    raise ImportError(f"kilomatch needs hdbscan 0.8.x (>=0.8.33, <0.9) for its internals "
                      f"_hdbscan_linkage and _hdbscan_tree: {err}") from err


def condensed_tree(mst: np.ndarray, min_cluster_size: int = 2) -> np.ndarray:
    """hdbscan's condensed tree of one connected set of points from its MST.

    mst: (n - 1, 3) edges [i, j, distance] in local point ids 0..n-1, sorted by distance.
    Returns hdbscan's structured array (parent, child, lambda_val, child_size); the root is
    cluster n, and clusters are numbered from n with parents before children.
    """
    hierarchy = _label(L=np.ascontiguousarray(mst, dtype=np.float64))
    return _condense_tree(hierarchy=hierarchy, min_cluster_size=int(min_cluster_size))


def select_clusters(tree: np.ndarray, max_cluster_size: int = 0) -> np.ndarray:
    """Flat labels (N,) (-1 noise, 0..K-1) by excess of mass from a condensed tree; clusters of
    more than ``max_cluster_size`` points (0: no limit) are not selected, their children are."""
    stability = _compute_stability(condensed_tree=tree)
    with np.errstate(divide="ignore", invalid="ignore"):  # membership strengths at lambda = 0
        labels, _, _ = _get_clusters(
            tree=tree, stability=stability, cluster_selection_method="eom",
            allow_single_cluster=False, match_reference_implementation=False,
            cluster_selection_epsilon=0.0, max_cluster_size=int(max_cluster_size))
    return np.asarray(labels, dtype=np.int64)
