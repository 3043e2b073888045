"""Tests of kilomatch.clustering (docs/method.md, section 5).

The key test: HDBSCAN on the sparse candidate-pair graph equals hdbscan.HDBSCAN on the dense
matrix in which non-candidate pairs are infinitely far (np.inf) and the diagonal is 0.
"""

import itertools
import warnings

import hdbscan
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from kilomatch.clustering import (
    core_of_oversized,
    ihdbscan,
    lda_weights,
    renumber,
    same_cluster,
    similarity_to_distance,
    sparse_hdbscan,
)
from kilomatch.similarity import candidate_pairs


def dense_hdbscan(n_units, pairs, distance, max_cluster_size):
    """The reference: hdbscan on a dense matrix, inf for non-candidate pairs, 0 on the diagonal.

    Only usable on a connected candidate graph: hdbscan 0.8.x's dense MST (Prim) cannot cross
    an all-inf cut (it returns a non-spanning tree; condense_tree then fails or loops)."""
    d = np.full((n_units, n_units), np.inf)
    np.fill_diagonal(d, 0.0)
    d[pairs[:, 0], pairs[:, 1]] = distance
    d[pairs[:, 1], pairs[:, 0]] = distance
    model = hdbscan.HDBSCAN(metric="precomputed", min_samples=1, min_cluster_size=2,
                            max_cluster_size=max_cluster_size)
    return model.fit(d).labels_


def components(n_units, pairs):
    """Connected-component id of every unit in the candidate-pair graph."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_units,) * 2)
    return connected_components(graph, directed=False)[1]


def reference_hdbscan(n_units, pairs, distance, max_cluster_size, far=1e12):
    """Dense hdbscan in which non-candidate pairs are infinitely far, for any graph.

    At distance inf (lambda = 0) units without any candidate pair fall out as noise and the
    root splits into the connected components of two or more units at once. With a single
    such component, that component is the root: plain dense hdbscan on it. With several, each
    is a (non-root) cluster born at lambda 0 that EOM may keep or split: hdbscan is run on the
    component's dense matrix plus two anchor points ``far`` away, which makes the component a
    non-root cluster born at lambda 1/far ~ 0. (hdbscan itself cannot take the whole dense
    matrix: see dense_hdbscan; and with a large finite distance instead of inf its result
    depends on the order of the tied far merges.)"""
    comp = components(n_units, pairs)
    real = [c for c in np.unique(comp) if np.sum(comp == c) >= 2]
    labels = -np.ones(n_units, np.int64)
    next_label = 0
    for c in real:
        units = np.flatnonzero(comp == c)
        m = units.size
        index = -np.ones(n_units, np.int64)
        index[units] = np.arange(m)
        sel = comp[pairs[:, 0]] == c
        sub_pairs = np.column_stack([index[pairs[sel, 0]], index[pairs[sel, 1]]])
        if len(real) == 1:
            lab = dense_hdbscan(m, sub_pairs, distance[sel], max_cluster_size)
        else:
            d = np.full((m + 2, m + 2), np.inf)
            d[sub_pairs[:, 0], sub_pairs[:, 1]] = distance[sel]
            d[sub_pairs[:, 1], sub_pairs[:, 0]] = distance[sel]
            d[:m, m:] = d[m:, :m] = far
            d[m, m + 1] = d[m + 1, m] = 1.0
            np.fill_diagonal(d, 0.0)
            lab = hdbscan.HDBSCAN(metric="precomputed", min_samples=1, min_cluster_size=2,
                                  max_cluster_size=max_cluster_size).fit(d).labels_
            assert lab[m] == lab[m + 1] >= 0 and not np.any(lab[:m] == lab[m])
            lab = lab[:m]
        for k in np.unique(lab[lab >= 0]):
            labels[units[lab == k]] = next_label
            next_label += 1
    return labels


def simulated_units(rng, n_neurons, n_sessions, depth_range=(0.0, 2000.0), presence=0.7):
    """Neurons at random depths, each seen in a random subset of sessions with a little
    drift. Units are ordered by session as in real data. Returns depth, session, neuron (N,)."""
    depth, session, neuron = [], [], []
    y = rng.uniform(*depth_range, n_neurons)
    for s in range(n_sessions):
        for k in range(n_neurons):
            if rng.random() < presence:
                depth.append(y[k] + rng.normal(0, 5))
                session.append(s)
                neuron.append(k)
    return np.array(depth), np.array(session), np.array(neuron)


def planted_distance(rng, pairs, neuron):
    """Real-looking distances: same neuron -> high similarity, others low (continuous, no ties)."""
    same = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    s = np.where(same, rng.normal(2.0, 0.5, len(pairs)), rng.normal(0.0, 0.7, len(pairs)))
    return similarity_to_distance(s)


# ---------------------------------------------------------------- sparse == dense

@pytest.mark.parametrize("seed", range(5))
def test_sparse_hdbscan_equals_dense_random_distances(seed):
    """A few hundred units, candidate pairs within 100 um across sessions, random distances:
    sparse_hdbscan gives exactly the dense hdbscan partition (max_cluster_size = S)."""
    rng = np.random.default_rng(seed)
    n, n_sessions = 300, 6
    depth = rng.uniform(0, 2000, n)
    session = rng.integers(0, n_sessions, n)
    pairs = candidate_pairs(depth, session, 100.0)
    assert np.all(components(n, pairs) == 0)  # connected: the dense reference is usable
    dist = similarity_to_distance(rng.normal(0.0, 1.5, len(pairs)))
    got = sparse_hdbscan(n, pairs, dist, n_sessions)
    ref = dense_hdbscan(n, pairs, dist, n_sessions)
    assert (ref >= 0).sum() > 50 and ref.max() > 20  # non-trivial clustering
    np.testing.assert_array_equal(renumber(got), renumber(ref))


@pytest.mark.parametrize("seed,max_cluster_size", [(10, 5), (11, 5), (12, 0), (13, 3)])
def test_sparse_hdbscan_equals_dense_planted_neurons(seed, max_cluster_size):
    """Simulated neurons tracked over 5 sessions with realistic (planted) similarities on a
    connected candidate graph: sparse and dense partitions are identical, also with no size
    limit (0) or a tighter one."""
    rng = np.random.default_rng(seed)
    depth, session, neuron = simulated_units(rng, 90, 5, (0.0, 1000.0))
    n = len(depth)
    pairs = candidate_pairs(depth, session, 100.0)
    assert np.all(components(n, pairs) == 0) and 200 < n < 400
    dist = planted_distance(rng, pairs, neuron)
    got = sparse_hdbscan(n, pairs, dist, max_cluster_size)
    ref = dense_hdbscan(n, pairs, dist, max_cluster_size)
    assert ref.max() >= 2 and (ref >= 0).sum() > 50  # several clusters, many units in them
    np.testing.assert_array_equal(renumber(got), renumber(ref))


def disconnected_study(seed, isolated_first):
    """Three depth bands 1.3 mm apart (no candidate pair between them) plus three units with
    no candidate at all, placed first (session 1, like real data) or last in unit order."""
    rng = np.random.default_rng(seed)
    parts = [simulated_units(rng, 25, 4, (b, b + 300.0)) for b in (0.0, 1300.0, 2600.0)]
    order = rng.permutation(sum(len(p[0]) for p in parts))
    depth = np.concatenate([p[0] for p in parts])[order]
    session = np.concatenate([p[1] for p in parts])[order]
    neuron = np.concatenate([p[2] + 100 * k for k, p in enumerate(parts)])[order]
    lone_depth, lone_session, lone_neuron = [5000.0, 7000.0, 9000.0], [0, 0, 1], [-1, -2, -3]
    if isolated_first:
        cat = lambda a, b: np.concatenate([b, a])  # noqa: E731
    else:
        cat = lambda a, b: np.concatenate([a, b])  # noqa: E731
    depth, session = cat(depth, lone_depth), cat(session, lone_session)
    neuron = cat(neuron, lone_neuron)
    pairs = candidate_pairs(depth, session, 100.0)
    return depth, pairs, planted_distance(rng, pairs, neuron)


@pytest.mark.parametrize("seed", range(20, 23))
def test_sparse_hdbscan_equals_dense_disconnected_components(seed):
    """Several components (3 bands, 3 lone units last in unit order): the sparse partition
    equals the dense run with inf between components; no cluster spans two components."""
    depth, pairs, dist = disconnected_study(seed, isolated_first=False)
    n = len(depth)
    comp = components(n, pairs)
    assert len(np.unique(comp)) >= 6
    got = sparse_hdbscan(n, pairs, dist, 4)
    np.testing.assert_array_equal(renumber(got), renumber(reference_hdbscan(n, pairs, dist, 4)))
    for c in np.unique(got[got >= 0]):
        assert np.unique(comp[got == c]).size == 1


def test_reference_for_disconnected_graphs_matches_hdbscan_with_far_distances():
    """Check of the test's own reference: with lone units last in unit order (where the tied
    far merges are harmless), reference_hdbscan equals plain hdbscan on a dense matrix with a
    huge finite distance (1e12) for non-candidate pairs."""
    for seed in range(20, 23):
        depth, pairs, dist = disconnected_study(seed, isolated_first=False)
        n = len(depth)
        d = np.full((n, n), 1e12)
        np.fill_diagonal(d, 0.0)
        d[pairs[:, 0], pairs[:, 1]] = d[pairs[:, 1], pairs[:, 0]] = dist
        far = hdbscan.HDBSCAN(metric="precomputed", min_samples=1, min_cluster_size=2,
                              max_cluster_size=4).fit(d).labels_
        np.testing.assert_array_equal(renumber(reference_hdbscan(n, pairs, dist, 4)),
                                      renumber(far))


@pytest.mark.parametrize("seed", range(20, 23))
def test_sparse_hdbscan_equals_dense_disconnected_lone_units_first(seed):
    """Same study with the lone units first in unit order (session-1 units come first in real
    data): the partition must not depend on where units without candidates sit."""
    depth, pairs, dist = disconnected_study(seed, isolated_first=True)
    n = len(depth)
    got = sparse_hdbscan(n, pairs, dist, 4)
    np.testing.assert_array_equal(renumber(got), renumber(reference_hdbscan(n, pairs, dist, 4)))


def test_units_without_candidate_pairs_are_never_clustered():
    """Units 0 and 1 have no candidate pair: they are noise, the two real components are
    clusters: expected [-1, -1, 0, 0, 1, 1, 1]."""
    pairs = np.array([[2, 3], [4, 5], [5, 6]])
    got = sparse_hdbscan(7, pairs, np.array([0.6, 0.7, 0.8]), 3)
    np.testing.assert_array_equal(got, [-1, -1, 0, 0, 1, 1, 1])


def test_lone_units_do_not_cost_real_matches():
    """Pairs (0, 1) and (4, 5) are the only candidates; units 2, 3 have none. With
    max_cluster_size 3 both real pairs are clusters: expected [0, 0, -1, -1, 1, 1]."""
    pairs = np.array([[0, 1], [4, 5]])
    got = sparse_hdbscan(6, pairs, np.array([0.6, 0.7]), 3)
    np.testing.assert_array_equal(got, [0, 0, -1, -1, 1, 1])


def test_sparse_hdbscan_no_pairs_and_labels_numbered_by_lowest_unit():
    """No candidate pairs -> every unit is noise; otherwise labels are 0..K-1 in order of each
    cluster's lowest unit."""
    np.testing.assert_array_equal(sparse_hdbscan(4, np.empty((0, 2), np.int64), np.empty(0)),
                                  [-1, -1, -1, -1])
    rng = np.random.default_rng(3)
    depth, session, neuron = simulated_units(rng, 40, 4, (0.0, 500.0))
    pairs = candidate_pairs(depth, session, 100.0)
    got = sparse_hdbscan(len(depth), pairs, planted_distance(rng, pairs, neuron), 4)
    firsts = [np.flatnonzero(got == c)[0] for c in range(got.max() + 1)]
    assert got.max() > 5 and firsts == sorted(firsts)
    assert set(np.unique(got[got >= 0])) == set(range(got.max() + 1))


# ---------------------------------------------------------------- renumber, same_cluster

def test_renumber_by_lowest_unit_from_one():
    """Clusters are renumbered 1, 2, ... in order of their lowest unit; -1 stays -1."""
    labels = np.array([7, 7, -1, 2, 9, 2, -1, 9, 0])
    np.testing.assert_array_equal(renumber(labels), [1, 1, -1, 2, 3, 2, -1, 3, 4])
    np.testing.assert_array_equal(renumber(labels, start=0), [0, 0, -1, 1, 2, 1, -1, 2, 3])
    np.testing.assert_array_equal(renumber(np.array([-1, -1])), [-1, -1])


def test_same_cluster_excludes_noise():
    """A pair is in one cluster only if both labels are equal and not -1."""
    labels = np.array([0, 0, -1, -1, 1])
    pairs = np.array([[0, 1], [2, 3], [1, 4], [0, 2]])
    np.testing.assert_array_equal(same_cluster(labels, pairs), [True, False, False, False])


def test_similarity_to_distance_closed_form():
    """D = 1 / (1 + tanh(S)): 1 at S=0, decreasing to 0.5 for large S."""
    s = np.array([0.0, 1.0, -1.0, 20.0])
    np.testing.assert_allclose(similarity_to_distance(s), 1 / (1 + np.tanh(s)))
    assert similarity_to_distance(np.array([20.0]))[0] == pytest.approx(0.5)


# ---------------------------------------------------------------- LDA

def closed_form_lda(x, y):
    """Two-class LDA: pooled within-class covariance (maximum likelihood, denominator n, as in
    scikit-learn's svd solver) and class-frequency priors -> (coef (F,), intercept)."""
    x0, x1 = x[~y], x[y]
    m0, m1 = x0.mean(0), x1.mean(0)
    cov = ((x0 - m0).T @ (x0 - m0) + (x1 - m1).T @ (x1 - m1)) / len(x)
    inv = np.linalg.inv(cov)
    coef = inv @ (m1 - m0)
    intercept = -0.5 * (m1 @ inv @ m1 - m0 @ inv @ m0) + np.log(len(x1) / len(x0))
    return coef, intercept


def test_lda_weights_closed_form_and_threshold_between_means():
    """Separable 2-feature data: weights = LDA coefficients / their sum (sum 1), threshold =
    weighted similarity where the decision function is 0, between the class means of S."""
    rng = np.random.default_rng(40)
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    x0 = rng.multivariate_normal([0.0, 0.0], cov, 400)
    x1 = rng.multivariate_normal([4.0, 2.0], cov, 60)
    x = np.vstack([x0, x1])
    y = np.r_[np.zeros(400, bool), np.ones(60, bool)]
    w, thr = lda_weights(x, y)
    coef, intercept = closed_form_lda(x, y)
    np.testing.assert_allclose(w, coef / coef.sum(), rtol=1e-8)
    assert w.sum() == pytest.approx(1.0)
    assert thr == pytest.approx(-intercept / coef.sum(), rel=1e-8)
    assert (x0 @ w).mean() < thr < (x1 @ w).mean()
    # Points with weighted similarity exactly thr lie on the boundary: decision function 0.
    for a in (-3.0, 0.0, 5.0):
        p = np.array([a, (thr - w[0] * a) / w[1]])
        assert p @ coef + intercept == pytest.approx(0.0, abs=1e-8)
    # and the LDA's own classification agrees with S > thr.
    s = x @ w
    assert np.array_equal(s > thr, x @ coef + intercept > 0)


@pytest.mark.parametrize("n_pairs,n_features,collinear,fraction", [
    (200_000, 2, False, 0.05), (5_000, 3, True, 0.05), (300, 1, False, 0.05),
    (50, 4, False, 0.05), (20_000, 3, False, 0.7)])
def test_lda_is_scikit_learns_lsqr(n_pairs, n_features, collinear, fraction):
    """kilomatch's own two-class LDA gives scikit-learn's solver='lsqr' coefficients and
    intercept to rounding, reading only the smaller class (fraction: of matched pairs) and
    taking the other's moments as all pairs' less its own (issue 15). The features sit far
    from 0 (as Fisher z of similar units do), where moments about 0 would lose digits."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from kilomatch.clustering import _lda_lsqr, pair_moments
    rng = np.random.default_rng(n_pairs)
    x = rng.normal(size=(n_pairs, n_features)) * np.linspace(3.0, 0.5, n_features) + 40.0
    y = rng.random(n_pairs) < fraction
    x[y] += 1.5 * np.linspace(1.0, -0.5, n_features)
    x[rng.random(n_pairs) < 0.01, 0] = -0.0
    if collinear:
        x[:, -1] = x[:, 0]
    ref = LinearDiscriminantAnalysis(solver="lsqr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(x, y)
        coef, intercept = _lda_lsqr(x, y, pair_moments(x))
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(coef, ref.coef_.ravel(), rtol=1e-9, atol=1e-12 * scale)
    assert intercept == pytest.approx(ref.intercept_[0], rel=1e-9, abs=1e-9 * scale)


@pytest.mark.parametrize("labels", [np.ones(20, bool), np.zeros(20, bool)])
def test_lda_weights_single_class_is_none(labels):
    """With only one class there is no boundary: None."""
    x = np.random.default_rng(41).normal(size=(20, 3))
    assert lda_weights(x, labels) is None


# ---------------------------------------------------------------- IHDBSCAN

def planted_study(seed, n_neurons=18, n_sessions=5):
    """Units of a neuron in different sessions with high similarity (informative features 0, 1;
    feature 2 is noise), everything else low; some neurons miss sessions, a few units are
    alone (one session only). All cross-session pairs are candidates."""
    rng = np.random.default_rng(seed)
    session, neuron = [], []
    for k in range(n_neurons):
        seen = rng.random(n_sessions) < 0.8
        if k < 3:
            seen[:] = False
            seen[rng.integers(n_sessions)] = True  # a lone unit
        elif seen.sum() < 2:
            seen[:2] = True
        for s in np.flatnonzero(seen):
            session.append(s)
            neuron.append(k)
    session, neuron = np.array(session), np.array(neuron)
    pairs = np.array([(i, j) for i, j in itertools.combinations(range(len(session)), 2)
                      if session[i] != session[j]])
    same = neuron[pairs[:, 0]] == neuron[pairs[:, 1]]
    f = np.column_stack([
        np.where(same, rng.normal(2.5, 0.3, len(pairs)), rng.normal(0.0, 0.3, len(pairs))),
        np.where(same, rng.normal(2.0, 0.3, len(pairs)), rng.normal(0.2, 0.3, len(pairs))),
        rng.normal(0.5, 0.3, len(pairs)),
    ])
    return session, neuron, pairs, same, f


@pytest.mark.parametrize("seed", [50, 51])
def test_ihdbscan_recovers_planted_groups(seed):
    """IHDBSCAN finds exactly the planted neurons (lone units are -1), its good matches are
    exactly the same-neuron pairs, weights sum to 1 and the noise feature gets the least."""
    session, neuron, pairs, same, f = planted_study(seed)
    n = len(session)
    res = ihdbscan(n, pairs, f, max_cluster_size=5)
    expect = neuron.copy()
    counts = np.bincount(neuron)
    expect[counts[neuron] == 1] = -1
    np.testing.assert_array_equal(renumber(res.labels), renumber(expect))
    np.testing.assert_array_equal(res.good, same)
    assert res.weights.sum() == pytest.approx(1.0)
    assert abs(res.weights[2]) < min(res.weights[0], res.weights[1])
    assert res.similarity[~same].max() < res.threshold < res.similarity[same].min()
    np.testing.assert_allclose(res.similarity, f @ res.weights)
    assert res.converged and 1 <= res.n_iter <= 10


@pytest.mark.parametrize("n_iter", [10, 11, 12])
def test_ihdbscan_stopped_at_a_cycle_ends_as_every_iteration_would(n_iter, monkeypatch):
    """When the weights come back to an earlier iteration's, IHDBSCAN stops and takes the
    weights, threshold and labels the last of n_iter iterations would give. The LDA is replaced
    by a step that sends each clustering to the next of three weight vectors, a cycle of period
    3 from iteration 1: w_i = W[(i - 1) % 3], threshold (i - 1) % 3."""
    from kilomatch import clustering
    session, neuron, pairs, same, f = planted_study(50)
    n = len(session)
    cycle = [np.array([0.2, 0.0, 0.8]), np.array([0.0, 0.2, 0.8]), np.array([0.1, 0.1, 0.8])]

    def matched(w):
        labels = sparse_hdbscan(n, pairs, similarity_to_distance(f @ w), 5)
        return same_cluster(labels, pairs).tobytes()

    state = {matched(w): k for k, w in enumerate(cycle)}
    assert len(state) == 3 and matched(np.full(3, 1 / 3)) not in state
    calls = []

    def next_weights(similarities, is_matched, moments=None):
        k = state.get(is_matched.tobytes(), -1)  # -1: the equal starting weights
        calls.append(k)
        return cycle[(k + 1) % 3], float((k + 1) % 3)

    monkeypatch.setattr(clustering, "lda_weights", next_weights)
    res = ihdbscan(n, pairs, f, max_cluster_size=5, n_iter=n_iter)
    last = (n_iter - 1) % 3
    np.testing.assert_array_equal(res.weights, cycle[last])
    assert res.threshold == float(last) and not res.converged and res.cycle == 3
    np.testing.assert_array_equal(
        res.labels, sparse_hdbscan(n, pairs, similarity_to_distance(f @ cycle[last]), 5))
    assert len(calls) == 4  # iteration 4 repeats iteration 1


def test_ihdbscan_without_matches_keeps_weights():
    """When HDBSCAN finds no cluster (no candidate pairs at all), the weights stay equal, the
    threshold is inf and no pair is good."""
    res = ihdbscan(5, np.empty((0, 2), np.int64), np.empty((0, 3)), max_cluster_size=3)
    np.testing.assert_array_equal(res.labels, -1)
    np.testing.assert_allclose(res.weights, [1 / 3] * 3)
    assert res.threshold == np.inf and res.good.size == 0 and not res.converged


def test_ihdbscan_with_every_candidate_pair_clustered_keeps_them_all_as_good_matches():
    """A small, sparse study: each neuron's units are the only candidates of one another, so
    HDBSCAN clusters every candidate pair and no pair is left to draw an LDA boundary against.
    Then nothing reads as a non-match: the threshold is -inf and every pair is a good match
    (an inf threshold gave the motion no match and the curation cut every cluster apart)."""
    rng = np.random.default_rng(7)
    session = np.tile(np.arange(3), 4)  # 4 neurons x 3 sessions
    neuron = np.repeat(np.arange(4), 3)
    pairs = np.array([(i, j) for i, j in itertools.combinations(range(12), 2)
                      if neuron[i] == neuron[j]])
    f = rng.normal(2.0, 0.3, (len(pairs), 2))
    res = ihdbscan(12, pairs, f, max_cluster_size=3)
    np.testing.assert_array_equal(renumber(res.labels), renumber(neuron))
    assert res.threshold == -np.inf
    assert res.good.all()
    np.testing.assert_allclose(res.weights, [0.5, 0.5])


# ---------------------------------------------------------------- the spanning forest

@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_sparse_mst_is_scipys_forest_of_the_whole_graph(seed, ties, monkeypatch):
    """sparse_mst builds the forest slice by slice, dropping edges the forest already joins;
    it must give exactly the forest of one scipy call on the whole graph (same edges, same tie
    breaks), on graphs with several slices, disconnected parts and (ties) many equal
    distances."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    from kilomatch import clustering
    monkeypatch.setattr(clustering, "MST_FIRST_SLICE", 0.1)  # slices of 40, 80, 160... edges
    rng = np.random.default_rng(seed)
    n = 400
    depth = np.where(np.arange(n) < n // 2, rng.uniform(0, 900, n), rng.uniform(1200, 2000, n))
    pairs = candidate_pairs(depth, rng.integers(0, 8, n), 120.0)
    assert len(pairs) > 12 * n
    dist = (rng.integers(1, 6, len(pairs)).astype(float) if ties
            else similarity_to_distance(rng.normal(0.0, 1.5, len(pairs))))
    tree = minimum_spanning_tree(csr_matrix((dist, (pairs[:, 0], pairs[:, 1])),
                                            shape=(n, n))).tocoo()
    ref = np.column_stack([tree.row, tree.col, tree.data]).astype(float)
    ref = ref[np.lexsort((ref[:, 1], ref[:, 0], ref[:, 2]))]
    got = clustering.sparse_mst(n, pairs, dist)
    assert components(n, pairs).max() >= 1  # at least two parts
    np.testing.assert_array_equal(got, ref)


def test_pair_moments_in_blocks_are_numpys_and_ihdbscan_reads_all_pairs_once(monkeypatch):
    """pair_moments reads the (P, F) similarities a block at a time (no copy of a class's
    28 M rows at 10^5 units): count, mean and biased covariance equal numpy's for all rows
    and for a class's rows, whatever the block. IHDBSCAN computes all pairs' moments once
    per clustering, however many LDAs it runs."""
    from kilomatch import clustering
    from kilomatch.clustering import pair_moments
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, 3)) * [2.0, 1.0, 0.5] + [1.0, -2.0, 30.0]
    matched = rng.random(5000) < 0.1
    x[matched] += 1.0
    for rows in (None, np.flatnonzero(matched), np.flatnonzero(~matched)):
        part = x if rows is None else x[rows]
        for block in (7, 1000, 4999, 5000, 1 << 21):
            got = pair_moments(x, rows, block=block)
            assert got.n == len(part)
            np.testing.assert_allclose(got.mean, part.mean(0), rtol=1e-13)
            np.testing.assert_allclose(got.cov, np.cov(part.T, bias=True), rtol=1e-11,
                                       atol=1e-13)
    monkeypatch.setattr(clustering, "LDA_BLOCK_ROWS", 333)
    blocked = lda_weights(x, matched)
    monkeypatch.undo()
    whole = lda_weights(x, matched)
    np.testing.assert_allclose(blocked[0], whole[0], rtol=1e-10)
    assert blocked[1] == pytest.approx(whole[1], rel=1e-10)

    session, _, pairs, _, f = planted_study(50)
    calls = []
    real = clustering.pair_moments
    monkeypatch.setattr(clustering, "pair_moments",
                        lambda x, rows=None, block=None: calls.append(rows is None) or real(
                            x, rows, block))
    res = ihdbscan(len(session), pairs, f, max_cluster_size=5, weight_tol=0.0,
                   weights=np.array([0.1, 0.1, 0.8]))  # a poor start: the matches change
    assert res.n_iter >= 2 and calls.count(True) == 1 and calls.count(False) >= 2


def test_an_oversized_cluster_that_only_sheds_units_keeps_its_core():
    """A neuron seen in all 4 sessions (units 0-3, tightly bound) chained to one more unit
    (4) is a leaf of 5 units over the size limit (4) that never splits: hdbscan's selection
    ('noise', the published) leaves all five unmatched; 'core' keeps the neuron, the chained
    unit stays out. A leaf within the limit (units 5-7) and a cluster that splits into two
    (8-13: two neurons of 3 units, after shedding unit 14) are the same either way."""
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4],
                      [5, 6], [6, 7],
                      [8, 9], [9, 10], [11, 12], [12, 13], [10, 11], [10, 14]])
    dist = np.array([0.60, 0.61, 0.62, 0.90,
                     0.70, 0.71,
                     0.60, 0.61, 0.60, 0.62, 0.95, 0.99])
    published = sparse_hdbscan(15, pairs, dist, 4)
    core = sparse_hdbscan(15, pairs, dist, 4, oversized="core")
    assert np.all(published[:5] == -1)
    np.testing.assert_array_equal(core[:5] >= 0, [True, True, True, True, False])
    assert np.unique(core[:4]).size == 1
    np.testing.assert_array_equal(renumber(core[5:]), renumber(published[5:]))
    assert np.unique(core[8:11]).size == 1 and np.unique(core[11:14]).size == 1
    assert core[8] != core[11]
    # a leaf whose units fall out together at the limit keeps only those above it
    tied = sparse_hdbscan(15, pairs, np.r_[0.60, 0.62, 0.62, dist[3:]], 3, "core")
    np.testing.assert_array_equal(tied[:5] >= 0, [True, True, False, False, False])
    # no size limit: nothing to do
    tree = np.array([(5, 6, 1.0, 5)], dtype=[("parent", np.intp), ("child", np.intp),
                                             ("lambda_val", np.float64),
                                             ("child_size", np.intp)])
    assert core_of_oversized(tree, 5, 0) is tree
