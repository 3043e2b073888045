"""Iterative HDBSCAN + LDA ("IHDBSCAN") on the sparse candidate-pair graph
(docs/method.md, section 5).

With min_samples = 1 the mutual-reachability distance equals the distance itself, so HDBSCAN
depends only on the minimum spanning tree of the distance graph. The MST of the candidate-pair
graph, with its components joined by edges of infinite length, is exactly the MST of a dense
matrix in which non-candidate pairs are infinitely far: no N x N array is needed. The tree is
then condensed and clusters selected by excess of mass with hdbscan's own routines.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from .similarity import weighted_similarity

# hdbscan (which imports scikit-learn, pandas and scipy.stats: about 2 s) is imported when a
# clustering first runs, not by the readers and writers (export, report, apply-curation) that
# need only this module's label helpers.

log = logging.getLogger("kilomatch")


def similarity_to_distance(similarity: np.ndarray) -> np.ndarray:
    """D = 1 / (1 + tanh(S)) of weighted similarities S, in (0.5, inf)."""
    # in one fresh array (the same values): each IHDBSCAN iteration made three of P floats
    d = np.tanh(np.asarray(similarity, dtype=np.float64))
    d += 1.0
    return np.divide(1.0, d, out=d)


def sparse_mst(n_units: int, pairs: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Minimum spanning forest (E, 3) [i, j, d] of the pair graph, sorted by d (ties by i, j).

    pairs: (P, 2) unit indices; distance: (P,). The forest is built by Kruskal's rule in
    slices of increasing distance ("filter-Kruskal"): the shortest few x N edges first, then
    slices twice as large. Before each slice, the edges whose units the forest already joins are
    dropped: they close a cycle in which every other edge is strictly shorter, so no minimum
    spanning tree holds them. Most candidate pairs are dropped that way before they are ever
    sorted (at 10k units about 10% of them are sorted, against all of them in one call of
    scipy's minimum_spanning_tree, which sorted 28 M edges each IHDBSCAN iteration at 10^5
    units). Each slice's graph keeps the edges' (row, column) order, so equal distances are
    broken as one call over the whole graph breaks them: the forest is the same.
    """
    if not pairs.shape[0]:
        return np.empty((0, 3))
    first = np.asarray(pairs[:, 0], dtype=np.int64)
    second = np.asarray(pairs[:, 1], dtype=np.int64)
    distance = np.asarray(distance, dtype=np.float64)
    first_size = max(1, int(MST_FIRST_SLICE * n_units))
    # The slice boundaries are order statistics of the distances: one partition finds them
    # all (a full sort of 28 M distances per IHDBSCAN iteration was most of this function).
    ranks, size = [], first_size
    while (ranks[-1] if ranks else 0) + size < distance.size:
        ranks.append((ranks[-1] if ranks else 0) + size)
        size *= 2
    boundary = dict(zip(ranks, np.partition(distance, ranks)[ranks])) if ranks else {}
    tree = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    remaining = np.arange(distance.size)
    size, done = first_size, 0
    while remaining.size:
        if done + size >= distance.size:
            edges, remaining = remaining, remaining[:0]
        else:
            shorter = distance[remaining] < boundary[done + size]
            edges, remaining = remaining[shorter], remaining[~shorter]
        tree = _spanning_forest(n_units, np.concatenate([tree[0], first[edges]]),
                                np.concatenate([tree[1], second[edges]]),
                                np.concatenate([tree[2], distance[edges]]))
        done, size = done + size, 2 * size
        if remaining.size:
            joined = sparse.coo_matrix((np.ones(tree[0].size), (tree[0], tree[1])),
                                       shape=(n_units, n_units))
            component = connected_components(joined, directed=False)[1]
            remaining = remaining[component[first[remaining]] != component[second[remaining]]]
    edges = np.column_stack(tree).astype(np.float64)
    # Sort by length, ties by (i, j): the hierarchy must not depend on storage order.
    return edges[np.lexsort((edges[:, 1], edges[:, 0], edges[:, 2]))]


# Edges in the first slice of sparse_mst, per unit; later slices double.
MST_FIRST_SLICE = 4


def _spanning_forest(n_units: int, first: np.ndarray, second: np.ndarray,
                     distance: np.ndarray) -> tuple:
    """scipy's minimum spanning forest of the edges (first[e], second[e], distance[e]):
    (rows, columns, distances) of its edges."""
    graph = sparse.csr_matrix((distance, (first, second)), shape=(n_units, n_units))
    tree = minimum_spanning_tree(graph, overwrite=True).tocoo()
    return tree.row.astype(np.int64), tree.col.astype(np.int64), tree.data


def condensed_forest(n_units: int, mst: np.ndarray):
    """Condensed tree of the whole graph in which disconnected parts are infinitely far apart.

    The root (id n_units) splits at lambda = 0 (infinite distance) into all connected
    components at once: each component of two or more units is a child cluster, each lone unit
    falls out as noise. (Joining the components by infinite edges one after another would
    instead nest spurious clusters of lone units at the same height.)
    """
    ends = mst[:, :2].astype(np.int64)
    graph = sparse.coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])),
                              shape=(n_units, n_units))
    n_comp, comp = connected_components(graph, directed=False)
    from .hdbscan_tree import condensed_tree
    if n_comp == 1:
        return condensed_tree(mst)  # connected: the usual tree, whose root is not selectable
    dtype = [("parent", np.intp), ("child", np.intp), ("lambda_val", np.float64),
             ("child_size", np.intp)]
    parts = []
    root, next_id = n_units, n_units + 1
    edge_order = np.argsort(comp[ends[:, 0]], kind="stable")  # each component's edges, in order
    edge_bounds = np.searchsorted(comp[ends[edge_order, 0]], np.arange(n_comp + 1))
    order = np.argsort(comp, kind="stable")
    local = np.empty(n_units, np.int64)
    for c, members in enumerate(np.split(order, np.flatnonzero(np.diff(comp[order])) + 1)):
        n_c = members.size
        if n_c == 1:
            parts.append(np.array([(root, members[0], 0.0, 1)], dtype=dtype))
            continue
        local[members] = np.arange(n_c)
        edges = mst[edge_order[edge_bounds[c]:edge_bounds[c + 1]]]
        edges[:, :2] = local[edges[:, :2].astype(np.int64)]
        sub = condensed_tree(edges)
        # Local ids: points 0..n_c-1, clusters n_c.. (root n_c); give the clusters fresh
        # global ids from next_id, keeping their order (hdbscan needs parents before children).
        rows = np.empty(len(sub) + 1, dtype=dtype)
        rows[0] = (root, next_id, 0.0, n_c)
        child = sub["child"]
        point = child < n_c
        rows["parent"][1:] = next_id + sub["parent"] - n_c
        rows["child"][1:] = np.where(point, members[np.where(point, child, 0)],
                                     next_id + child - n_c)
        rows["lambda_val"][1:] = sub["lambda_val"]
        rows["child_size"][1:] = sub["child_size"]
        parts.append(rows)
        next_id += int(max(sub["parent"].max(), sub["child"].max())) - n_c + 1
    return np.concatenate(parts)


def core_of_oversized(tree: np.ndarray, n_units: int, max_cluster_size: int) -> np.ndarray:
    """A condensed tree (hdbscan's structured array) in which every leaf cluster of more than
    ``max_cluster_size`` units gets a child cluster: its units that stay in it longest, as
    many as the limit allows (those falling out at a lambda above that of the
    (max_cluster_size + 1)-th last one), born at that lambda.

    Why: a leaf shrinks by shedding single units, which condensing does not count as a split,
    so a leaf over the size limit is never selected and has no child to select instead: all
    its units become noise. On the accuracy suite that was most of the recall HDBSCAN lost:
    a neuron seen in every session (S units, the limit) chained to one more unit, a unit of
    another neuron or of its own neuron split by the sorter, and the whole neuron went
    unmatched (benchmarks/RESULTS.md, "Session 11"). The core is what the limit asks for: a
    group of at most S units, the most tightly bound ones, bound together longer than to
    the rest. Leaves within the limit, and clusters with child clusters, are left as they are.
    """
    if max_cluster_size <= 0 or len(tree) == 0:
        return tree
    is_cluster = tree["child"] >= n_units
    parents = tree["parent"][is_cluster]
    big = tree["child"][is_cluster & (tree["child_size"] > max_cluster_size)]
    leaves = big[~np.isin(big, parents)]
    if leaves.size == 0:
        return tree
    tree = tree.copy()
    rows = np.flatnonzero(~is_cluster & np.isin(tree["parent"], leaves))
    # each leaf's units, the last to fall out first
    rows = rows[np.lexsort((-tree["lambda_val"][rows], tree["parent"][rows]))]
    next_id = int(max(tree["parent"].max(), tree["child"].max())) + 1
    born = []
    for leaf_rows in np.split(rows, np.flatnonzero(np.diff(tree["parent"][rows])) + 1):
        lam = tree["lambda_val"][leaf_rows]
        birth = lam[max_cluster_size]  # the leaf holds max_cluster_size units from here on
        core = leaf_rows[lam > birth]  # (fewer where units fall out together at birth)
        if core.size < 2:
            continue
        born.append((tree["parent"][leaf_rows[0]], next_id, birth, core.size))
        tree["parent"][core] = next_id  # ids above their parent's: hdbscan's order holds
        next_id += 1
    if not born:
        return tree
    return np.concatenate([tree, np.array(born, dtype=tree.dtype)])


def hdbscan_from_mst(mst: np.ndarray, n_units: int, max_cluster_size: int = 0,
                     oversized: str = "noise") -> np.ndarray:
    """Cluster labels (N,) (-1 = noise, 0..K-1) from a minimum spanning forest, by excess of
    mass with min_cluster_size 2 (hdbscan's own condensing and selection). oversized
    'core': a leaf cluster over ``max_cluster_size`` keeps its core
    (:func:`core_of_oversized`); 'noise': its units are noise (hdbscan's, the published)."""
    if n_units < 2:
        return -np.ones(n_units, np.int64)
    from .hdbscan_tree import select_clusters
    tree = condensed_forest(n_units, mst)
    if oversized == "core":
        tree = core_of_oversized(tree, n_units, max_cluster_size)
    return select_clusters(tree, max_cluster_size)


def sparse_hdbscan(n_units: int, pairs: np.ndarray, distance: np.ndarray,
                   max_cluster_size: int = 0, oversized: str = "noise") -> np.ndarray:
    """HDBSCAN (min_samples=1, min_cluster_size=2, EOM) of units given only candidate pairs.

    pairs: (P, 2); distance: (P,). Pairs not listed are infinitely far apart; oversized: as
    in :func:`hdbscan_from_mst`.
    Returns labels (N,): -1 for units in no cluster, clusters numbered by lowest unit.
    """
    labels = hdbscan_from_mst(sparse_mst(n_units, pairs, distance), n_units, max_cluster_size,
                              oversized)
    return renumber(labels, start=0)


def renumber(labels: np.ndarray, start: int = 1) -> np.ndarray:
    """Clusters renumbered start, start+1, ... in order of their lowest unit; -1 kept."""
    labels = np.asarray(labels)
    out = -np.ones(labels.shape, np.int64)
    valid = labels >= 0
    if valid.any():
        ids, first, inverse = np.unique(labels[valid], return_index=True, return_inverse=True)
        # rank of each cluster's first appearance: the new number of the cluster
        rank = np.empty(ids.size, np.int64)
        rank[np.argsort(first)] = np.arange(ids.size)
        out[valid] = rank[inverse.ravel()] + start
    return out


def combine_labels(labels_by_part: list, members_by_part: list, n_units: int) -> np.ndarray:
    """Cluster labels of disjoint sets of units (each -1 none, >= 0 clusters) -> one labelling
    of all ``n_units``: 1..K, unique across parts, numbered by lowest unit; -1 kept."""
    out = -np.ones(n_units, np.int64)
    offset = 0
    for labels, members in zip(labels_by_part, members_by_part):
        labels = np.asarray(labels)
        out[members[labels >= 0]] = labels[labels >= 0] + offset
        offset += int(labels.max(initial=-1)) + 1
    return renumber(out, start=1)


def same_cluster(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(P,) bool: both units of a pair in one cluster (not -1)."""
    a, b = labels[pairs[:, 0]], labels[pairs[:, 1]]
    return (a == b) & (a >= 0)


def lda_weights(similarities: np.ndarray, matched: np.ndarray,
                moments: PairMoments | None = None):
    """Weights and threshold from a two-class LDA of the pairs' similarity vectors.

    similarities: (P, F) Fisher z per feature; matched: (P,) bool; moments: those of all P
    rows (pair_moments(similarities)), when the caller runs several LDAs on the same pairs.
    Returns (weights (F,), threshold) with weights the LDA coefficients normalised to sum 1
    and threshold the weighted similarity on the LDA boundary; None when the classes cannot
    be separated (one class empty or sum of coefficients not positive).
    """
    if matched.all() or not matched.any():
        return None
    x = np.asarray(similarities, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coef, intercept = _lda_lsqr(x, matched, pair_moments(x) if moments is None else moments)
    total = coef.sum()
    if not np.isfinite(total) or total <= 0:
        return None
    return coef / total, float(-intercept / total)


# Rows of the (P, F) similarities read at a time for their moments: each block is copied
# once to be centred (64 MB at 5 features), never the whole class (28 M pairs at 10^5 units).
LDA_BLOCK_ROWS = 1 << 21


@dataclass
class PairMoments:
    """Count, mean (F,) and biased covariance (F, F) of a set of (F,) similarity vectors."""

    n: int
    mean: np.ndarray
    cov: np.ndarray


def pair_moments(x: np.ndarray, rows: np.ndarray | None = None,
                 block: int | None = None) -> PairMoments:
    """Moments of the rows x[rows] of (P, F) float64 (rows: sorted indices; None: all),
    read ``block`` rows at a time: the sum first, then the products of the rows centred on
    their mean (two passes, so nothing cancels however far the mean is from 0)."""
    block = LDA_BLOCK_ROWS if block is None else block
    if rows is None:
        n = x.shape[0]
        blocks = [slice(start, start + block) for start in range(0, n, block)]
    else:
        n = rows.size
        blocks = [rows[start:start + block] for start in range(0, n, block)]
    total = np.zeros(x.shape[1])
    for part in blocks:
        total += np.add.reduce(x[part], axis=0)
    mean = total / n
    scatter = np.zeros((x.shape[1], x.shape[1]))
    for part in blocks:
        centred = x[part] - mean
        scatter += centred.T @ centred
    return PairMoments(n, mean, scatter / n)


def _lda_lsqr(x: np.ndarray, matched: np.ndarray,
              moments: PairMoments) -> tuple[np.ndarray, float]:
    """Two-class LDA by least squares (scikit-learn's solver 'lsqr' to rounding;
    tests/test_clustering.py compares them): (P, F), (P,) bool and the moments of all P rows
    -> coefficients (F,) and intercept of the decision function matched - unmatched.

    Written here, not scikit-learn's class: on millions of pairs its input checks and per-row
    class sums took most of its time, and it cannot reuse moments between iterations.
    The priors are the class fractions; the covariance is the priors-weighted sum of each
    class's biased covariance; lstsq copes with collinear features. Only the smaller class
    (the matched pairs: 2-5% of them) is read; the other's moments are those of all pairs
    less its own, about the mean of all pairs, which lies between the two classes' means:
    IHDBSCAN's iterations change only the classes, so the whole (P, F) array is read once
    per clustering, not copied twice per iteration (6.7 s of a 30k-unit run's rounds).
    """
    from scipy import linalg
    matched = np.asarray(matched, dtype=bool)
    small = bool(np.count_nonzero(matched) * 2 <= matched.size)  # True: the matched class
    read = pair_moments(x, np.flatnonzero(matched if small else ~matched))
    # the other class: its deviations from the overall mean sum to minus the read class's
    n_other = moments.n - read.n
    shift = read.mean - moments.mean
    other_shift = -shift * (read.n / n_other)
    other_cov = ((moments.n * moments.cov - read.n * (read.cov + np.outer(shift, shift)))
                 / n_other - np.outer(other_shift, other_shift))
    other = PairMoments(n_other, moments.mean + other_shift, other_cov)
    classes = (other, read) if small else (read, other)  # (unmatched, matched)
    counts = np.array([c.n for c in classes])
    priors = counts.astype(np.float64) / float(moments.n)
    means = np.array([c.mean for c in classes])
    cov = priors[0] * classes[0].cov + priors[1] * classes[1].cov
    coef = linalg.lstsq(cov, means.T)[0].T
    intercept = -0.5 * np.diag(np.dot(means, coef.T)) + np.log(priors)
    return coef[1] - coef[0], float(intercept[1] - intercept[0])


@dataclass
class ClusteringResult:
    """Outcome of IHDBSCAN on candidate pairs.

    labels: (N,) cluster of each unit (-1 none, 0..K-1); weights: (F,); threshold: weighted
    similarity on the LDA boundary; similarity: (P,) weighted similarity of each pair;
    good: (P,) pairs in one cluster and above threshold; n_iter: iterations run; converged:
    the weights stopped moving; cycle: the period of the cycle they entered instead (0: none).
    """

    labels: np.ndarray
    weights: np.ndarray
    threshold: float
    similarity: np.ndarray
    good: np.ndarray
    n_iter: int
    converged: bool
    cycle: int = 0  # period of the weights' cycle the iterations stopped at (0: none)


def ihdbscan(n_units: int, pairs: np.ndarray, similarities: np.ndarray, max_cluster_size: int,
             n_iter: int = 10, weight_tol: float = 1e-8,
             weights: np.ndarray | None = None, oversized: str = "noise") -> ClusteringResult:
    """Iterate HDBSCAN on D = 1/(1+tanh(S)) and LDA re-weighting of the similarity features.

    similarities: (P, F) Fisher z similarity of each candidate pair for each feature;
    max_cluster_size: number of sessions (a neuron appears at most once per session);
    oversized: what becomes of a leaf cluster over that size (:func:`hdbscan_from_mst`).
    """
    n_feat = similarities.shape[1]
    w = np.full(n_feat, 1.0 / n_feat) if weights is None else np.asarray(weights, float)
    threshold = np.inf
    labels = -np.ones(n_units, np.int64)
    converged = False
    it = cycle = 0
    fits = [(w, threshold)]  # weights and threshold after each iteration (0: the start)
    matched = fit = moments = None
    for it in range(1, n_iter + 1):
        similarity = weighted_similarity(similarities, w)
        labels = sparse_hdbscan(n_units, pairs, similarity_to_distance(similarity),
                                max_cluster_size, oversized)
        before, matched = matched, same_cluster(labels, pairs)
        if before is None or not np.array_equal(before, matched):
            # the LDA is a function of the matched pairs alone: the same pairs give the same
            # weights, bit for bit (the last iteration of a converged run, ~0.7 s at 30k units)
            if moments is None:  # the similarities do not change between iterations
                moments = pair_moments(np.asarray(similarities, dtype=np.float64))
            fit = lda_weights(similarities, matched, moments)
        if fit is None:
            if matched.size and matched.all():
                # Every candidate pair is in a cluster (a small, sparse study: no two neurons
                # within clustering.max_distance): nothing reads as a non-match, so no
                # boundary is drawn and every clustered pair is a good match. (An infinite
                # threshold left no good match for the motion and the curation cut every
                # cluster apart.)
                threshold = -np.inf
                log.info("IHDBSCAN: every candidate pair is in a cluster (none to set a "
                         "threshold against): all of them are good matches")
                break
            log.warning("IHDBSCAN iteration %d: no separable matches; weights kept", it)
            break
        new_w, threshold = fit
        change = np.max(np.abs(new_w - w))
        w = new_w
        if change <= weight_tol:
            converged = True
            break
        fits.append((w, threshold))
        earlier = [j for j in range(it) if np.array_equal(fits[j][0], w)]
        if earlier and it < n_iter:
            # The weights are those of iteration j, and each iteration is a function of the
            # weights alone, so iterations j+1 .. it repeat for ever: take the weights and
            # threshold iteration n_iter would end with (the same result, without the work).
            j = earlier[0]
            cycle = it - j
            w, threshold = fits[j + 1 + (n_iter - j - 1) % cycle]
            log.debug("IHDBSCAN: iteration %d repeats iteration %d; stopped", it, j)
            break
    similarity = weighted_similarity(similarities, w)
    if not converged and np.isfinite(threshold):
        # The last LDA moved the weights: cluster once more so labels match weights.
        labels = sparse_hdbscan(n_units, pairs, similarity_to_distance(similarity),
                                max_cluster_size, oversized)
    good = same_cluster(labels, pairs) & (similarity > threshold)
    return ClusteringResult(labels, w, threshold, similarity, good, it, converged, cycle)
