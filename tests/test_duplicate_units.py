"""Duplicate units (kilomatch.duplicate_units): two units of one session holding the same spikes."""

import csv

import numpy as np

from kilomatch import duplicate_units


def _train(rng, n, span_ms=60_000.0):
    """n spike times (ms), sorted, at least 2 ms apart."""
    return np.sort(rng.choice(int(span_ms / 2), n, replace=False) * 2.0)


def test_shared_spikes_counts_the_shorter_trains_spikes_within_the_lag():
    rng = np.random.default_rng(0)
    a = _train(rng, 1000)
    half = a[::2] + 0.2  # every other spike, placed 0.2 ms later by a second template
    assert duplicate_units.shared_spikes(a, half) == 1.0
    assert duplicate_units.shared_spikes(half, a) == 1.0
    # the same spikes 0.7 ms apart are not the same spike
    assert duplicate_units.shared_spikes(a, a[::2] + 0.7) == 0.0
    # an independent train of the same rate shares what chance gives (+-0.5 ms of 1000
    # spikes over 60 s: ~1.7%)
    assert duplicate_units.shared_spikes(a, _train(rng, 1000)) < 0.05
    assert duplicate_units.shared_spikes(a, np.empty(0)) == 0.0


def test_find_duplicates_groups_units_of_one_session_and_names_the_one_with_most_spikes():
    rng = np.random.default_rng(1)
    a = _train(rng, 1200)
    trains = [
        a,                                   # 0: a neuron
        a[rng.random(a.size) < 0.6] + 0.1,   # 1: 60% of its spikes again (a duplicate)
        _train(rng, 900),                    # 2: another neuron, same place
        a[rng.random(a.size) < 0.3] - 0.1,   # 3: a third unit of neuron 0's spikes
        a[rng.random(a.size) < 0.5],         # 4: its spikes in session 1: not a duplicate
        a[rng.random(a.size) < 0.7] + 0.2,   # 5: its spikes again but 40 um away
        np.concatenate([a[:200], _train(rng, 800) + 0.3]),  # 6: 20% shared
    ]
    session = np.array([0, 0, 0, 0, 1, 0, 0])
    positions = np.array([[0, 100], [1, 101], [2, 102], [0, 99], [0, 100], [0, 140], [3, 100]],
                         np.float64)
    found = duplicate_units.find_duplicates(trains, session, positions, 20.0, 0.5)
    assert {tuple(p) for p in found.duplicate_pairs().tolist()} == {(0, 1), (0, 3), (1, 3)}
    # every tested pair is of one session and within 20 um; (0, 5) is not tested
    assert np.all(session[found.pairs[:, 0]] == session[found.pairs[:, 1]])
    assert not {(0, 5), (0, 4)} & {tuple(p) for p in found.pairs.tolist()}
    # the group {0, 1, 3} is named by its unit with the most spikes
    np.testing.assert_array_equal(found.primary, [0, 0, 2, 0, 4, 5, 6])
    np.testing.assert_array_equal(found.secondary, [0, 1, 0, 1, 0, 0, 0])
    shared = dict(zip(map(tuple, found.pairs.tolist()), found.shared))
    assert 0.2 <= shared[(0, 6)] < 0.3  # 200 of its 1000 spikes, and a few by chance
    # a line above the share found leaves them apart; 0 tests nothing
    assert not duplicate_units.find_duplicates(trains, session, positions, 20.0,
                                               1.01).is_duplicate.any()
    off = duplicate_units.find_duplicates(trains, session, positions, 20.0, 0.0)
    assert len(off.pairs) == 0 and not off.secondary.any()


def _with_duplicates(folder, fraction, seed):
    """Add, to a simulated input folder, a duplicate of ``fraction`` of its units: same
    session and place, 60% of the spikes 0.1 ms later, and the waveform 0.25 ms later (a
    template aligned a few samples off, as Kilosort's duplicates often are: not as alike as
    a good match, so the sorter-split test of alike pairs does not see them). Returns
    {duplicate: original}."""
    rng = np.random.default_rng(seed)
    wf = np.load(folder / "waveform_all.npy")
    session = np.load(folder / "session_index.npy")
    gt = np.load(folder / "gt_neuron.npy")
    peth = np.load(folder / "peth.npy")
    originals = np.flatnonzero(rng.random(wf.shape[0]) < fraction)
    n = wf.shape[0]
    for k, u in enumerate(originals):
        times = np.load(folder / "spike_times" / f"Unit{u}.npy")
        np.save(folder / "spike_times" / f"Unit{n + k}.npy",
                times[rng.random(times.size) < 0.6] + 0.1)
    late = np.roll(wf[originals], 8, axis=2)  # 8 samples at 30 kHz
    late[:, :, :8] = 0.0
    np.save(folder / "waveform_all.npy", np.concatenate([wf, late]))
    for name, values in (("session_index", session), ("gt_neuron", gt), ("peth", peth)):
        np.save(folder / f"{name}.npy", np.concatenate([values, values[originals]]))
    (folder / "gt_locations.npy").unlink()
    return {n + k: int(u) for k, u in enumerate(originals)}


def test_a_sorters_duplicates_are_named_in_the_outputs(tmp_path):
    """A sorter's duplicate (a second unit holding the same spikes, at the same place) is one
    neuron with its original: units.csv names the original in ``duplicate_of`` (for a user
    who would otherwise count that neuron twice) and CurationResults.npz keeps the test.
    autoCuration.duplicate_share 0 turns the test off."""
    import kilomatch
    from kilomatch.simulate import simulate_to_folder

    data = tmp_path / "data"
    simulate_to_folder(data, n_sessions=3, n_neurons=60, duration_s=60.0, seed=5)
    twins = _with_duplicates(data, 0.3, seed=2)
    assert len(twins) > 30

    def run(out, share):
        kilomatch.run({"path_to_data": str(data), "output_folder": str(tmp_path / out),
                       "autoCuration": {"duplicate_share": share}})
        with open(tmp_path / out / "units.csv") as f:
            rows = list(csv.DictReader(f))
        with np.load(tmp_path / out / "CurationResults.npz") as z:
            found = {tuple(p) for p in z["duplicate_tested"][z["duplicate"]].tolist()}
            shared = z["duplicate_shared"][z["duplicate"]]
        clusters = np.array([int(r["cluster"]) for r in rows])
        return {int(r["unit"]): int(r["duplicate_of"]) for r in rows if r["duplicate_of"]}, \
            found, shared, clusters

    named, found, shared, clusters = run("with", 0.5)
    assert named == twins
    assert found == {(v, u) for u, v in twins.items()} and shared.min() >= 0.5
    named, found, _, clusters_off = run("without", 0.0)
    assert named == {} and found == set()
    # naming them changes no cluster
    np.testing.assert_array_equal(clusters, clusters_off)
