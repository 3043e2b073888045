"""Multi-shank probes: every shank tracked on its own, results merged in unit order."""

import numpy as np
import pytest

import kilomatch
from kilomatch import metrics
from kilomatch.simulate import simulate_to_folder


def _settings(data, out):
    return {"path_to_data": str(data), "output_folder": str(out), "n_jobs": 1,
            "motionEstimation": {"n_bootstrap": 50}}


@pytest.fixture(scope="module")
def four_shank(tmp_path_factory):
    folder = tmp_path_factory.mktemp("np2x4") / "data"
    simulate_to_folder(folder, n_sessions=3, n_neurons=90, probe="NP2-4shank", seed=21)
    out = tmp_path_factory.mktemp("np2x4_out")
    return folder, out, kilomatch.run(_settings(folder, out))


def _write_subset(src, dst, members):
    """The input folder of some units only (unit files renumbered, channels unchanged)."""
    (dst / "spike_times").mkdir(parents=True)
    np.save(dst / "waveform_all.npy", np.load(src / "waveform_all.npy")[members])
    np.save(dst / "session_index.npy", np.load(src / "session_index.npy")[members])
    np.save(dst / "peth.npy", np.load(src / "peth.npy")[members])
    for name in ("channel_locations.npy", "channel_shanks.npy"):
        np.save(dst / name, np.load(src / name))
    for k, unit in enumerate(members):
        np.save(dst / "spike_times" / f"Unit{k}.npy", np.load(src / "spike_times" / f"Unit{unit}.npy"))


def _same_partition(a, b):
    """Equal cluster structure up to the numbering of clusters."""
    pairs_a = {(i, j) for i in range(len(a)) for j in range(i + 1, len(a)) if a[i] > 0 and a[i] == a[j]}
    pairs_b = {(i, j) for i in range(len(b)) for j in range(i + 1, len(b)) if b[i] > 0 and b[i] == b[j]}
    return pairs_a == pairs_b and np.array_equal(a > 0, b > 0)


def test_each_shank_equals_its_units_alone(four_shank, tmp_path):
    """Per-shank clusters and motion in the combined run equal a run on that shank's units
    alone; no cluster spans two shanks; ids are unique across shanks."""
    folder, out, result = four_shank
    shank = np.load(folder / "channel_shanks.npy")[result.units.peak_channel]
    idx = result.idx_cluster
    assert len(result.shanks) == 4
    for c in np.unique(idx[idx > 0]):
        assert np.unique(shank[idx == c]).size == 1
    motion = np.load(out / "motion.npy")
    assert motion.shape == (3, 4)
    assert np.load(out / "SimilarityWeights.npy").shape == (2, 4)
    assert np.load(out / "SimilarityThreshold.npy").shape == (1, 4)
    for k, part in enumerate(result.shanks):
        members = np.flatnonzero(shank == part.shank)
        assert np.array_equal(members, part.units)
        alone_data = tmp_path / f"shank{part.shank}"
        _write_subset(folder, alone_data, members)
        alone = kilomatch.run(_settings(alone_data, tmp_path / f"out{part.shank}"), write=False)
        assert _same_partition(idx[members], alone.idx_cluster)
        assert np.allclose(motion[:, k], alone.motion.displacement())
        assert np.allclose(part.result.final.clustering.weights, alone.final.clustering.weights)


def test_multishank_outputs_and_figures(four_shank):
    """Global files cover all units in input order; figures come per shank."""
    folder, out, result = four_shank
    n = result.data.n_units
    assert np.load(out / "IdxCluster.npy").shape == (n, 1)
    assert np.load(out / "waveforms_corrected.npy").shape[0] == n
    with np.load(out / "Output.npz") as z:
        assert z["Shank"].shape == (n,) and list(z["ShankIds"]) == [0, 1, 2, 3]
    with np.load(out / "CandidatePairs.npz") as z:
        pairs, shank = z["pairs"], z["shank"]
        unit_shank = result.units.shank
        assert np.all(unit_shank[pairs[:, 0]] == shank) and np.all(unit_shank[pairs[:, 1]] == shank)
    for k in range(4):  # and the calibration figure where the shank had a probability
        fitted = result.shanks[k].result.curated.links is not None
        assert len(list((out / "Figures" / f"Shank{k}").glob("*.png"))) == 6 + fitted
    header = (out / "units.csv").read_text().splitlines()[0]
    assert header.endswith(",shank")
    # the default curation learns the match probability on every shank that has the pairs
    # to fit it (to confirm its cuts); NaN on the others
    with np.load(out / "CandidatePairs.npz") as z:
        for k in range(4):
            fitted = result.shanks[k].result.curated.links is not None
            assert np.isnan(z["probability"][z["shank"] == k]).all() != fitted
    assert (out / "MatchTable.csv").exists() == any(
        p.result.curated.links is not None for p in result.shanks)
    gt = np.load(folder / "gt_neuron.npy")
    assert metrics.pair_scores(result.idx_cluster, gt, result.data.session_index)["f1"] > 0.8


def test_given_motion_per_shank(four_shank, tmp_path):
    """A (S, n_shanks) motion file gives each shank its own column; a wrong width is refused."""
    folder, _, _ = four_shank
    given = np.arange(12, dtype=float).reshape(3, 4)
    path = tmp_path / "motion.npy"
    np.save(path, given)
    tree = _settings(folder, tmp_path / "out")
    tree["waveformCorrection"] = {"path_to_motion": str(path)}
    result = kilomatch.run(tree, write=False)
    for k, part in enumerate(result.shanks):
        assert np.allclose(part.result.motion.displacement(), given[:, k])
    np.save(path, given[:, :3])
    with pytest.raises(kilomatch.KilomatchError, match=r"\(3, 4\)"):
        kilomatch.run(tree, write=False)


def test_each_shank_learns_its_own_decay():
    """With decay_triangulation, each shank's units are located with the exponent learned
    from that shank alone (as a run on its units alone would), not from all shanks pooled:
    a shank whose footprints fall as 1/r and one whose fall as 1/r^2.5 get 1 and 2.5."""
    from kilomatch import features, pipeline
    rng = np.random.default_rng(8)
    k = np.arange(192)
    locs = np.column_stack([np.array([43.0, 11.0, 59.0, 27.0])[k % 4], 20.0 * (k % 96 // 2)])
    shank_of_channel = (k >= 96).astype(np.int64)
    locs[shank_of_channel == 1, 0] += 250.0  # a second shank 250 um over
    n = 120
    shank = np.repeat([0, 1], n // 2)
    src = np.column_stack([rng.uniform(0, 70, n) + 250.0 * shank, rng.uniform(100, 850, n),
                           rng.uniform(5, 50, n)])
    decay = np.where(shank == 1, 2.5, 1.0)
    d2 = ((src[:, None, :2] - locs[None]) ** 2).sum(-1) + src[:, 2:3] ** 2
    ptt = 2000.0 * 20.0 ** decay[:, None] / d2 ** (decay[:, None] / 2)
    ptt[shank[:, None] != shank_of_channel[None, :]] = 0.0
    peak = ptt.argmax(axis=1)
    near = features.nearest_channels(locs, peak, 20, shank_of_channel)
    live = np.ones(near.shape, bool)
    got = pipeline._decay_of_units(ptt, locs, near, live, shank, "decay_triangulation")
    np.testing.assert_allclose(got[shank == 0], 1.0, atol=0.05)
    np.testing.assert_allclose(got[shank == 1], 2.5, atol=0.05)
    assert (pipeline._decay_of_units(ptt, locs, near, live, shank,
                                     "monopolar_triangulation") == 1.0).all()


def test_a_shank_whose_units_all_come_from_the_first_sessions(four_shank, tmp_path):
    """A shank with no unit in the last session is still tracked over every session: its part
    of the run has the study's sessions, as its initial motion does (its motion had one
    session fewer and the run stopped on a broadcasting error), and the run gives each shank
    a motion for every session."""
    folder, out, result = four_shank
    shank = np.load(folder / "channel_shanks.npy")[result.units.peak_channel]
    session = np.load(folder / "session_index.npy")
    last = shank.max()
    members = np.flatnonzero(~((shank == last) & (session == session.max())))
    data = tmp_path / "data"
    _write_subset(folder, data, members)
    run = kilomatch.run(_settings(data, tmp_path / "out"))
    assert np.load(tmp_path / "out" / "motion.npy").shape == (3, 4)
    kept = members.size
    assert run.idx_cluster.shape == (kept,)
    # the other shanks track as they did with every unit
    again = result.idx_cluster[members]
    others = shank[members] != last
    assert _same_partition(run.idx_cluster[others], again[others])
