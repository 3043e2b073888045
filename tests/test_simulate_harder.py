"""Tests of the simulator's harder-data options (issue 12): spike-count noise of the mean
waveforms, SpikeInterface templates, sorter splits and merges; and of the amplitude-band recall
used to report them. Small runs only."""

import json
import sys

import numpy as np
import pytest

from kilomatch import metrics
from kilomatch.errors import KilomatchError
from kilomatch.load import load_dataset
from kilomatch.simulate import _neuron_train, simulate, simulate_to_folder

SMALL = dict(n_sessions=4, n_neurons=40, duration_s=60.0, peth_points=50)


# ---------------------------------------------------------------- spike-count noise

def test_mean_waveform_noise_falls_with_spike_count():
    """The noise left in a mean waveform has std waveform_noise_per_spike_uv / sqrt(spikes)."""
    per_spike = 40.0
    sim = simulate(**SMALL, waveform_noise_uv=0.0, waveform_noise_per_spike_uv=per_spike,
                   rate_sigma=1.5, seed=3)
    units = np.arange(sim.n_units)
    noise = sim.waveforms(units) - sim.waveforms(units, noise=False)
    measured = noise.reshape(sim.n_units, -1).std(axis=1)
    counts = np.array([sim.spike_times(k).size for k in units])
    assert counts.max() > 4 * counts.min(), "need a spread of spike counts"
    np.testing.assert_allclose(measured, per_spike / np.sqrt(counts), rtol=0.03)


def test_spike_count_noise_adds_to_the_fixed_noise():
    base = simulate(**SMALL, seed=2)
    more = simulate(**SMALL, waveform_noise_per_spike_uv=30.0, seed=2)
    np.testing.assert_array_equal(base.gt_neuron, more.gt_neuron)
    resid_base = base.waveforms([0]) - base.waveforms([0], noise=False)
    resid_more = more.waveforms([0]) - more.waveforms([0], noise=False)
    expected = np.hypot(base.params.waveform_noise_uv, 30.0 / np.sqrt(more.spike_times(0).size))
    assert resid_more.std() == pytest.approx(expected, rel=0.03)
    assert resid_base.std() == pytest.approx(base.params.waveform_noise_uv, rel=0.03)


def test_harder_parameters_written_only_when_set(tmp_path):
    """Defaults leave simulation.json (hence older folders) unchanged; set ones are recorded."""
    simulate_to_folder(tmp_path / "a", **SMALL, seed=1)
    simulate_to_folder(tmp_path / "b", **SMALL, p_split=0.2, seed=1)
    a = json.loads((tmp_path / "a" / "simulation.json").read_text())["params"]
    b = json.loads((tmp_path / "b" / "simulation.json").read_text())["params"]
    for name in ("waveform_noise_per_spike_uv", "waveform_source", "p_split", "p_merge"):
        assert name not in a
    assert b["p_split"] == 0.2


# ---------------------------------------------------------------- SpikeInterface templates

@pytest.fixture(scope="module")
def si_folder(tmp_path_factory):
    pytest.importorskip("spikeinterface")
    out = tmp_path_factory.mktemp("si") / "data"
    sim = simulate_to_folder(out, n_sessions=3, n_neurons=40, duration_s=30.0,
                             waveform_source="spikeinterface", drift_max_um=100.0,
                             turnover=0.0, p_present=1.0, waveform_noise_uv=0.0, seed=7)
    return sim, out


def test_spikeinterface_folder_loads(si_folder):
    sim, out = si_folder
    data = load_dataset(out)
    assert data.waveforms.shape[0] == sim.n_units > 20
    w = np.load(out / "waveform_all.npy", mmap_mode="r")
    # SpikeInterface's shape (trough at 44% of the window), not the two-source model's.
    peak = (w.max(axis=2) - w.min(axis=2)).argmax(axis=1)
    t_trough = w[np.arange(sim.n_units), peak].argmin(axis=1)
    assert np.all(np.abs(t_trough - round(0.44 * w.shape[2])) <= 2)


def test_spikeinterface_templates_follow_the_motion_convention(si_folder):
    """A neuron's footprint in session s sits at y0 + gt_motion[s] (module docstring): the
    amplitude-weighted depth of its waveform moves by the motion difference, with its sign."""
    sim, _ = si_folder
    w = sim.waveform_all
    ptt = w.max(axis=2) - w.min(axis=2)
    weight = ptt ** 4
    centroid = weight @ sim.channel_locations[:, 1] / weight.sum(axis=1)
    s0 = sim.unit_session
    gaps = []
    for m in np.unique(sim.gt_neuron):
        k = np.nonzero(sim.gt_neuron == m)[0]
        i, j = k[np.argmin(s0[k])], k[np.argmax(s0[k])]
        expected = sim.gt_motion[s0[j]] - sim.gt_motion[s0[i]]
        if abs(expected) > 30:
            gaps.append((centroid[j] - centroid[i], expected))
    got, expected = np.array(gaps).T
    assert got.size >= 10
    assert np.median(np.abs(got - expected)) < 4.0


def test_spikeinterface_source_without_spikeinterface(monkeypatch):
    monkeypatch.setitem(sys.modules, "spikeinterface.core", None)
    with pytest.raises(KilomatchError, match="spikeinterface"):
        simulate(**SMALL, waveform_source="spikeinterface")


def test_unknown_waveform_source():
    with pytest.raises(KilomatchError, match="waveform_source"):
        simulate(**SMALL, waveform_source="neuron")


# ---------------------------------------------------------------- sorter errors

@pytest.fixture(scope="module")
def sorted_badly():
    return simulate(n_sessions=4, n_neurons=120, duration_s=60.0, p_split=0.3, p_merge=0.2,
                    seed=5)


def test_split_halves_share_neuron_and_partition_its_spikes(sorted_badly):
    sim = sorted_badly
    srt = sim.sorter
    halves = np.nonzero(srt.split_part == 1)[0]
    assert halves.size >= 10
    for k in halves:
        (other,) = np.nonzero((srt.train_key == srt.train_key[k]) & (srt.split_part == 2))[0]
        assert sim.gt_neuron[other] == sim.gt_neuron[k]
        assert sim.session_index[other] == sim.session_index[k]
        a, b = sim.spike_times(k), sim.spike_times(other)
        whole = _neuron_train(sim.params, int(srt.train_key[k]), sim.neurons,
                              int(sim.gt_neuron[k]), float(sim.unit_rate_hz[k]))
        np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), whole)
        assert a.size and b.size
    # The two halves differ in amplitude, as after a cut of the amplitude distribution.
    assert np.all(srt.amp_factor[halves] > 1) and np.all(srt.amp_factor[srt.split_part == 2] < 1)


def test_merged_unit_is_its_larger_neuron(sorted_badly):
    sim = sorted_badly
    srt = sim.sorter
    merged = np.nonzero(srt.partner_neuron >= 0)[0]
    assert merged.size >= 5
    for k in merged:
        m, p, s = sim.gt_neuron[k], srt.partner_neuron[k], sim.session_index[k]
        assert p != m
        # The absorbed neuron has no unit of its own that session.
        assert not np.any((sim.gt_neuron == p) & (sim.session_index == s))
        own = _neuron_train(sim.params, int(srt.train_key[k]), sim.neurons, int(m),
                            float(sim.unit_rate_hz[k]))
        other = _neuron_train(sim.params, int(srt.partner_train_key[k]), sim.neurons, int(p),
                              float(srt.partner_rate_hz[k]))
        assert own.size >= other.size, "ground truth must be the neuron with more spikes"
        np.testing.assert_array_equal(sim.spike_times(k), np.sort(np.r_[own, other]))
        assert srt.partner_weight[k] == pytest.approx(other.size / (own.size + other.size))
    # The merged waveform is the spike-weighted mean of both neurons' waveforms that day (the
    # same study without sorter errors has each of them as a unit of its own).
    plain = simulate(n_sessions=4, n_neurons=120, duration_s=60.0, seed=5)
    for k in merged[:3]:
        alone = [np.nonzero((plain.gt_neuron == m) & (plain.session_index == sim.session_index[k]))[0]
                 for m in (sim.gt_neuron[k], srt.partner_neuron[k])]
        assert [a.size for a in alone] == [1, 1]
        w_own, w_partner = plain.waveforms(np.r_[alone[0], alone[1]], noise=False)
        w = srt.partner_weight[k]
        np.testing.assert_allclose(sim.waveforms([k], noise=False)[0],
                                   (1 - w) * w_own + w * w_partner, atol=1e-3)


def test_sorter_errors_keep_ground_truth_scorable(sorted_badly, tmp_path):
    """A perfect tracker (cluster = neuron) scores precision and recall 1: split halves never
    form a scored pair with each other, a merged unit counts as its larger neuron."""
    sim = sorted_badly
    scores = metrics.pair_scores(sim.gt_neuron, sim.gt_neuron, sim.session_index)
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert scores["n_conflicts"] > 0  # the split halves share a neuron within a session


# ---------------------------------------------------------------- amplitude-band recall

def test_recall_by_amplitude_counts_pairs_by_smaller_unit():
    cluster = np.array([1, 1, 1, 2, 2, -1, 3, 3])
    neuron = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    session = np.array([1, 2, 3, 1, 2, 3, 1, 1])       # neuron 2: same-session pair only
    amp = np.array([50, 300, 300, 100, 130, 500, 80, 90])
    bands = metrics.recall_by_amplitude(cluster, neuron, session, amp)
    assert [b["band"] for b in bands] == ["<60", "60-120", "120-250", ">=250"]
    assert [b["n_true_pairs"] for b in bands] == [2, 2, 1, 1]
    assert [b["n_found"] for b in bands] == [2, 1, 0, 1]
    assert [b["recall"] for b in bands] == [1.0, 0.5, 0.0, 1.0]
    total = sum(b["n_found"] for b in bands) / sum(b["n_true_pairs"] for b in bands)
    assert total == pytest.approx(metrics.pair_scores(cluster, neuron, session)["recall"])
    empty = metrics.recall_by_amplitude(cluster, neuron, session, amp, edges=(1000.0,))
    assert empty[1] == {"band": ">=1000", "n_true_pairs": 0, "n_found": 0, "recall": None}


def test_session_offsets_move_each_session_s_waveforms_by_its_samples():
    """session_offset_samples: every unit of a session is cut out the session's offset late
    (or early), on every channel; 0 (the default) leaves the waveforms as they were."""
    from kilomatch.features import shift_in_time
    from kilomatch.simulate import simulate
    base = simulate(n_sessions=4, n_neurons=30, seed=3)
    moved = simulate(n_sessions=4, n_neurons=30, seed=3, session_offset_samples=3)
    np.testing.assert_array_equal(base.session_offset, np.zeros(4))
    offset = moved.session_offset
    assert np.abs(offset).max() <= 3 and offset.any()
    units = np.arange(base.n_units)
    expected = shift_in_time(base.waveforms(units), -offset[base.session_index - 1])
    np.testing.assert_array_equal(moved.waveforms(units), expected)


def test_dead_channels_read_0_from_their_session_on():
    """dead_channel_share: that share of the channels dies, each in a session from 2 on, and
    reads 0 in every unit of that session and the later ones; the other channels and the
    earlier sessions are as without it."""
    from kilomatch.simulate import simulate
    base = simulate(n_sessions=4, n_neurons=30, seed=3)
    dying = simulate(n_sessions=4, n_neurons=30, seed=3, dead_channel_share=0.1)
    assert (base.channel_death == 5).all()
    death = dying.channel_death
    assert (death <= 4).sum() == round(0.1 * dying.n_channels) and death.min() >= 2
    units = np.arange(base.n_units)
    expected = base.waveforms(units)
    dead = death[None, :] <= base.session_index[:, None]
    expected[dead] = 0.0
    assert dead.any() and not dead[base.session_index == 1].any()
    np.testing.assert_array_equal(dying.waveforms(units), expected)
