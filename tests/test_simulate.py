"""Tests of the ground-truth simulator (kilomatch.simulate). Small runs only."""

import json

import numpy as np
import pytest

from kilomatch.errors import KilomatchError
from kilomatch.simulate import (
    SimulationParams,
    main,
    probe_geometry,
    simulate,
    simulate_motion,
    simulate_to_folder,
    spike_train,
    write_simulation,
)

SMALL = dict(n_sessions=4, n_neurons=40, duration_s=60.0, peth_points=50)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "data"
    sim = simulate_to_folder(out, **SMALL, seed=1)
    return sim, out


# ---------------------------------------------------------------- determinism

def test_same_seed_identical_arrays_and_files(tmp_path):
    a = simulate_to_folder(tmp_path / "a", **SMALL, seed=5)
    b = simulate_to_folder(tmp_path / "b", **SMALL, seed=5)
    for name in ("session_index", "gt_neuron", "gt_motion", "gt_locations", "peth"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                     if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                     if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_different_seed_differs():
    a = simulate(**SMALL, seed=0)
    b = simulate(**SMALL, seed=1)
    assert not np.array_equal(a.gt_motion, b.gt_motion)
    n = min(a.n_units, b.n_units)
    assert not np.array_equal(a.waveforms(np.arange(3)), b.waveforms(np.arange(3)))
    assert a.n_units != b.n_units or not np.array_equal(a.gt_neuron[:n], b.gt_neuron[:n])


def test_waveforms_do_not_depend_on_which_units_are_asked():
    sim = simulate(**SMALL, seed=2)
    all_w = sim.waveform_all
    some = np.array([sim.n_units - 1, 3, 0])
    np.testing.assert_array_equal(sim.waveforms(some), all_w[some])
    np.testing.assert_array_equal(sim.spike_times(4), sim.spike_times(4))


# ---------------------------------------------------------------- folder format

def test_folder_format(small_folder):
    sim, out = small_folder
    S, N = sim.params.n_sessions, sim.n_units
    loc = np.load(out / "channel_locations.npy")
    assert loc.shape == (384, 2) and loc.dtype == np.float64
    wf = np.load(out / "waveform_all.npy", mmap_mode="r")
    assert wf.shape == (N, 384, 64) and wf.dtype == np.float32
    si = np.load(out / "session_index.npy")
    assert si.dtype == np.int64 and si.shape == (N,)
    assert np.array_equal(np.unique(si), np.arange(1, S + 1))
    assert np.all(np.diff(si) >= 0), "units must be sorted by session"
    peth = np.load(out / "peth.npy")
    assert peth.shape == (N, 50) and peth.dtype == np.float32 and np.all(peth >= 0)
    assert not (out / "channel_shanks.npy").exists()
    files = sorted((out / "spike_times").glob("Unit*.npy"))
    assert len(files) == N
    for k in range(N):
        t = np.load(out / "spike_times" / f"Unit{k}.npy")
        assert t.dtype == np.float64 and t.ndim == 1 and t.size >= 2
        assert np.all(np.diff(t) >= sim.params.refractory_min_ms - 1e-9)
        assert t[0] >= 0 and t[-1] < sim.params.duration_s * 1000.0
    gt = np.load(out / "gt_neuron.npy")
    assert gt.dtype == np.int64 and gt.shape == (N,)
    assert np.load(out / "gt_motion.npy").shape == (S,)
    assert np.load(out / "gt_motion_linear.npy").shape == (S,)
    assert np.load(out / "gt_locations.npy").shape == (N, 3)
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["params"]["n_sessions"] == S and meta["n_units"] == N
    assert meta["depth_ref_um"] == pytest.approx(0.5 * (loc[:, 1].min() + loc[:, 1].max()))
    np.testing.assert_array_equal(wf[:5], sim.waveforms(np.arange(5)))


def test_rewrite_replaces_previous_simulation_but_protects_other_data(tmp_path):
    out = tmp_path / "d"
    simulate_to_folder(out, **dict(SMALL, n_neurons=60), seed=0)
    sim = simulate_to_folder(out, **SMALL, seed=0, with_peth=False)
    assert len(list((out / "spike_times").glob("Unit*.npy"))) == sim.n_units
    assert not (out / "peth.npy").exists()
    other = tmp_path / "real"
    other.mkdir()
    np.save(other / "waveform_all.npy", np.zeros((1, 2, 3), np.float32))
    with pytest.raises(KilomatchError):
        simulate_to_folder(other, **SMALL)


def test_write_refuses_a_session_without_units(tmp_path):
    sim = simulate(**SMALL, p_present=0.0)
    assert sim.n_units == 0
    with pytest.raises(KilomatchError, match="no sorted unit"):
        simulate_to_folder(tmp_path / "empty", **SMALL, p_present=0.0)


# ---------------------------------------------------------------- identity and presence

def test_units_and_neurons_consistent(small_folder):
    sim, _ = small_folder
    pairs = np.column_stack([sim.gt_neuron, sim.session_index])
    assert np.unique(pairs, axis=0).shape[0] == sim.n_units, "a neuron twice in one session"
    counts = np.bincount(sim.gt_neuron)
    assert np.any(counts >= 2), "no neuron present in more than one session"
    nr = sim.neurons
    s0 = sim.unit_session
    assert np.all((nr.first[sim.gt_neuron] <= s0) & (s0 <= nr.last[sim.gt_neuron]))
    assert sim.summary()["n_neurons_in_several_sessions"] > 0


def test_waveforms_carry_identity_across_sessions():
    """A neuron's waveform in two sessions correlates better than two nearby neurons' do."""
    sim = simulate(n_sessions=2, n_neurons=150, drift_step_um=5.0, turnover=0.0, duration_s=5.0,
                   seed=11)
    wf = sim.waveform_all
    ch = sim.channel_locations
    pk = (wf.max(axis=2) - wf.min(axis=2)).argmax(axis=1)
    c = np.empty((sim.n_units, sim.n_units))
    for i in range(sim.n_units):  # correlate on the 38 channels nearest unit i's peak channel
        near = np.argsort(np.sum((ch - ch[pk[i]]) ** 2, axis=1), kind="stable")[:38]
        x = wf[:, near, :].reshape(sim.n_units, -1)
        x = x - x.mean(axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c[i] = x @ x[i]
    same_neuron = sim.gt_neuron[:, None] == sim.gt_neuron[None, :]
    cross = sim.session_index[:, None] != sim.session_index[None, :]
    dy = np.abs(sim.gt_locations[:, None, 1] - sim.gt_locations[None, :, 1])
    assert c[same_neuron & cross].mean() > 0.9
    assert c[same_neuron & cross].mean() > c[~same_neuron & cross & (dy < 30)].mean() + 0.2


def test_no_turnover_no_misses_no_threshold_gives_full_grid():
    sim = simulate(**SMALL, turnover=0.0, p_present=1.0, detection_threshold_uv=0.0)
    assert sim.n_units == SMALL["n_neurons"] * SMALL["n_sessions"]


def test_turnover_makes_neurons_appear_and_disappear():
    sim = simulate(n_sessions=10, n_neurons=200, turnover=0.3, duration_s=10.0)
    nr = sim.neurons
    assert np.any(nr.first > 0) and np.any(nr.last < 9)
    fewer = simulate(n_sessions=10, n_neurons=200, turnover=0.3, p_present=0.5, duration_s=10.0)
    assert fewer.n_units < 0.7 * sim.n_units


def test_detection_threshold_applies():
    thr = 120.0
    sim = simulate(**SMALL, detection_threshold_uv=thr, amplitude_jitter=0.0)
    w = sim.waveforms(np.arange(sim.n_units), noise=False)
    ptt = (w.max(axis=2) - w.min(axis=2)).max(axis=1)
    assert np.all(ptt >= thr - 1e-3)
    assert sim.n_units < simulate(**SMALL, detection_threshold_uv=0.0).n_units


# ---------------------------------------------------------------- waveform physics

def test_waveform_shape_and_amplitudes_realistic():
    sim = simulate(n_sessions=3, n_neurons=120, duration_s=5.0, waveform_noise_uv=0.0, seed=4)
    w = sim.waveform_all
    ptt = w.max(axis=2) - w.min(axis=2)
    pk = ptt.argmax(axis=1)
    wp = w[np.arange(sim.n_units), pk]                     # (N, T) on the peak channel
    trough = -wp.min(axis=1)
    assert 30 < np.percentile(trough, 5) and np.percentile(trough, 95) < 500
    t_trough = wp.argmin(axis=1)
    assert np.all((t_trough >= 22) & (t_trough <= 34))
    # Trough-to-peak time separates narrow (~0.3 ms) from broad (~0.7 ms) neurons.
    ttp = np.array([np.argmax(x[i:]) for x, i in zip(wp, t_trough)]) / 30.0
    narrow = sim.neurons.narrow[sim.gt_neuron]
    assert 0.2 < np.median(ttp[narrow]) < 0.45 and 0.5 < np.median(ttp[~narrow]) < 0.9
    # Amplitude decays with distance from the soma along the probe.
    d = np.abs(sim.channel_locations[None, :, 1] - sim.gt_locations[:, 1:2])
    near = np.where(d < 30, ptt, np.nan)
    far = np.where((d > 150) & (d < 200), ptt, np.nan)
    assert np.all(np.nanmean(near, axis=1) > 3 * np.nanmean(far, axis=1))


def test_two_neurons_at_the_same_place_differ():
    sim = simulate(n_sessions=1, n_neurons=2, turnover=0.0, p_present=1.0,
                   detection_threshold_uv=0.0, waveform_noise_uv=0.0, duration_s=5.0)
    nr = sim.neurons
    for f in ("x", "z", "y"):
        getattr(nr, f)[1] = getattr(nr, f)[0]
    sim.gt_locations[1] = sim.gt_locations[0]
    w = sim.waveforms([0, 1], noise=False)
    r = np.corrcoef(w[0].ravel(), w[1].ravel())[0, 1]
    assert r < 0.99


# ---------------------------------------------------------------- motion

def test_motion_convention_exact_in_gt_locations():
    sim = simulate(**SMALL, drift_step_um=20.0, linear_drift=0.01, seed=3)
    nr, s = sim.neurons, sim.unit_session
    y0 = nr.y[sim.gt_neuron]
    expect = y0 + sim.gt_motion[s] + sim.gt_motion_linear[s] * (y0 - sim.depth_ref_um)
    np.testing.assert_allclose(sim.gt_locations[:, 1], expect, atol=1e-9)
    assert abs(sim.gt_motion.mean()) < 1e-9 and abs(sim.gt_motion_linear.mean()) < 1e-12
    assert np.ptp(sim.gt_motion_linear) > 0


def test_bend_moves_the_upper_tissue_apart_from_the_lower(tmp_path):
    """bend_step_um: units well above the probe's middle move by +bend/2 on top of the rigid
    and linear terms, units well below by -bend/2 (the convention simulation.json states);
    off by default, and then no gt_motion_bend.npy is written."""
    sim = simulate(**SMALL, drift_step_um=20.0, linear_drift=0.01, bend_step_um=25.0,
                   bend_width_um=100.0, seed=3)
    nr, s = sim.neurons, sim.unit_session
    y0 = nr.y[sim.gt_neuron]
    rest = y0 + sim.gt_motion[s] + sim.gt_motion_linear[s] * (y0 - sim.depth_ref_um)
    bend = sim.gt_locations[:, 1] - rest
    np.testing.assert_allclose(
        bend, 0.5 * sim.gt_motion_bend[s] * np.tanh((y0 - sim.depth_ref_um) / 100.0), atol=1e-9)
    assert abs(sim.gt_motion_bend.mean()) < 1e-9 and np.ptp(sim.gt_motion_bend) > 10
    far = np.abs(y0 - sim.depth_ref_um) > 300
    np.testing.assert_allclose(np.abs(bend[far]), 0.5 * np.abs(sim.gt_motion_bend[s][far]),
                               rtol=0.01)
    write_simulation(sim, tmp_path / "bent")
    np.testing.assert_array_equal(np.load(tmp_path / "bent" / "gt_motion_bend.npy"),
                                  sim.gt_motion_bend)
    assert "gt_motion_bend" in json.loads(
        (tmp_path / "bent" / "simulation.json").read_text())["motion_convention"]
    plain = simulate(**SMALL, drift_step_um=20.0, linear_drift=0.01, seed=3)
    assert not plain.gt_motion_bend.any()
    write_simulation(plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / "gt_motion_bend.npy").exists()


@pytest.mark.parametrize("probe", ["NP1", "NP2"])
def test_waveform_centre_of_mass_follows_motion(probe):
    """The ptt^2-weighted depth centre of a neuron's waveform moves by the gt_motion change."""
    sim = simulate(n_sessions=4, n_neurons=40, probe=probe, drift_max_um=40.0, turnover=0.0,
                   p_present=1.0, amplitude_jitter=0.0, shape_jitter=0.0,
                   time_jitter_samples=0.0, waveform_noise_uv=0.0, duration_s=5.0, seed=3)
    ch = sim.channel_locations
    w = sim.waveform_all
    ptt = w.max(axis=2) - w.min(axis=2)
    pk = ptt.argmax(axis=1)
    window = np.abs(ch[None, :, 1] - ch[pk, 1][:, None]) <= 100
    wt = np.where(window, ptt ** 2, 0.0)
    com = (wt * ch[None, :, 1]).sum(axis=1) / wt.sum(axis=1)
    errs = []
    for m in np.unique(sim.gt_neuron):
        ks = np.nonzero(sim.gt_neuron == m)[0]
        if ks.size < 2:
            continue
        moved = com[ks] - com[ks[0]]
        expect = sim.gt_motion[sim.unit_session[ks]] - sim.gt_motion[sim.unit_session[ks[0]]]
        errs.append(np.abs(moved - expect)[1:])
    errs = np.concatenate(errs)
    assert np.ptp(sim.gt_motion) == pytest.approx(40.0)
    assert errs.size > 20 and np.mean(errs) < 3.0


def test_drift_max_jumps_and_rigid_walk():
    p = SimulationParams(n_sessions=8, drift_step_um=5.0, drift_max_um=70.0)
    rigid, slope = simulate_motion(p, np.random.default_rng(0))
    assert np.ptp(rigid) == pytest.approx(70.0) and abs(rigid.mean()) < 1e-9
    assert np.all(slope == 0)
    p = SimulationParams(n_sessions=8, drift_step_um=0.0, jump_prob=1.0, jump_um=30.0)
    rigid, _ = simulate_motion(p, np.random.default_rng(0))
    np.testing.assert_allclose(np.abs(np.diff(rigid)), 30.0)
    p = SimulationParams(n_sessions=8, drift_step_um=0.0, drift_max_um=50.0)
    rigid, _ = simulate_motion(p, np.random.default_rng(0))
    assert np.ptp(rigid) == pytest.approx(50.0)


def test_too_much_drift_is_an_error():
    with pytest.raises(KilomatchError, match="drift"):
        simulate(**dict(SMALL, probe="NP2-4shank"), drift_max_um=800.0)


# ---------------------------------------------------------------- probes

def test_np1_geometry():
    loc, shanks = probe_geometry("NP1")
    assert loc.shape == (384, 2) and np.all(shanks == 0)
    assert sorted(np.unique(loc[:, 0])) == [11.0, 27.0, 43.0, 59.0]
    assert np.array_equal(np.unique(np.diff(np.unique(loc[:, 1]))), [20.0])
    # staggered: a row holds two columns, the next row the other two
    assert set(loc[loc[:, 1] == 0, 0]) == {11.0, 43.0}
    assert set(loc[loc[:, 1] == 20, 0]) == {27.0, 59.0}


def test_np2_geometry():
    loc, shanks = probe_geometry("NP2")
    assert loc.shape == (384, 2) and np.all(shanks == 0)
    xs = np.unique(loc[:, 0])
    assert xs.size == 2 and xs[1] - xs[0] == 32.0
    assert np.array_equal(np.unique(np.diff(np.unique(loc[:, 1]))), [15.0])


def test_four_shank_geometry_and_file(tmp_path):
    loc, shanks = probe_geometry("NP2-4shank")
    assert loc.shape == (384, 2)
    assert np.array_equal(np.bincount(shanks), [96] * 4)
    left = [loc[shanks == k, 0].min() for k in range(4)]
    np.testing.assert_allclose(np.diff(left), 250.0)
    assert np.array_equal(np.unique(np.diff(np.unique(loc[:, 1]))), [15.0])
    sim = simulate_to_folder(tmp_path / "d", **dict(SMALL, probe="NP2-4shank"))
    cs = np.load(tmp_path / "d" / "channel_shanks.npy")
    assert cs.dtype == np.int64 and np.array_equal(cs, shanks)
    # Each unit's peak channel is on the shank its neuron sits by.
    w = sim.waveform_all
    pk = (w.max(axis=2) - w.min(axis=2)).argmax(axis=1)
    assert np.mean(shanks[pk] == sim.neurons.shank[sim.gt_neuron]) > 0.95


# ---------------------------------------------------------------- spike trains

def _acg(t, window=100.0):
    """Histogram (1 ms bins) of positive spike-time differences below window ms, normalised."""
    lags = []
    for j in range(1, 60):
        d = t[j:] - t[:-j]
        d = d[d < window]
        if d.size == 0:
            break
        lags.append(d)
    h = np.histogram(np.concatenate(lags) if lags else [], bins=np.arange(0, window + 1))[0]
    h = np.convolve(h.astype(float), np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2), "same")
    return h / max(h.max(), 1e-12)


def test_acg_carries_identity():
    sim = simulate(n_sessions=2, n_neurons=40, turnover=0.0, p_present=1.0,
                   detection_threshold_uv=0.0, duration_s=200.0, seed=7)
    acg, n_spikes = {}, {}
    for k in range(sim.n_units):
        key = (int(sim.gt_neuron[k]), int(sim.unit_session[k]))
        t = sim.spike_times(k)
        acg[key], n_spikes[key] = _acg(t), t.size
    # Too few spikes make a flat, meaningless ACG: compare well-sampled neurons only.
    neurons = sorted(m for m, s in acg if s == 0 and min(n_spikes[(m, 0)], n_spikes[(m, 1)]) > 400)
    assert len(neurons) > 15
    same = [np.corrcoef(acg[(m, 0)], acg[(m, 1)])[0, 1] for m in neurons]
    diff = [np.corrcoef(acg[(m, 0)], acg[(n, 1)])[0, 1]
            for i, m in enumerate(neurons) for n in neurons[i + 1:i + 4]]
    assert np.mean(same) > np.mean(diff) + 0.3


def test_spike_train_rate_refractory_and_bursts():
    g = np.random.default_rng(0)
    t = spike_train(g, rate_hz=10.0, duration_ms=100_000.0, refractory_ms=2.0, gamma_shape=1.0)
    assert abs(t.size / 100.0 - 10.0) < 1.0
    assert np.all(np.diff(t) >= 2.0)
    tb = spike_train(g, rate_hz=5.0, duration_ms=200_000.0, refractory_ms=2.0, burst_prob=0.5,
                     burst_max=4, burst_isi_ms=5.0)
    isi = np.diff(tb)
    assert np.all(isi >= 2.0) and np.all(np.diff(tb) >= 0)
    assert abs(tb.size / 200.0 - 5.0) < 0.8
    # A clear intra-burst mode at 3.5-8 ms that a non-bursting train lacks.
    assert np.mean((isi > 3.5) & (isi < 8.0)) > 0.2
    assert np.mean((np.diff(t) > 3.5) & (np.diff(t) < 8.0)) < 0.1


def test_peth_stable_per_neuron():
    sim = simulate(n_sessions=2, n_neurons=30, turnover=0.0, p_present=1.0,
                   detection_threshold_uv=0.0, duration_s=5.0, seed=8)
    z = sim.peth - sim.peth.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    a = z[sim.session_index == 1][np.argsort(sim.gt_neuron[sim.session_index == 1])]
    b = z[sim.session_index == 2][np.argsort(sim.gt_neuron[sim.session_index == 2])]
    c = a @ b.T
    assert np.mean(np.diag(c)) > np.mean(c[~np.eye(len(c), dtype=bool)]) + 0.5


# ---------------------------------------------------------------- arguments and CLI

@pytest.mark.parametrize("bad", [dict(probe="NP3"), dict(p_present=1.5), dict(n_sessions=0),
                                 dict(seed=-1), dict(no_such_param=1),
                                 dict(drift_max_um=-5.0), dict(duration_s="long"),
                                 dict(rate_min_hz=5.0, rate_median_hz=1.0)])
def test_bad_arguments(bad):
    with pytest.raises(KilomatchError):
        simulate(**bad)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main([str(out), "--sessions", "3", "--neurons", "20", "--probe", "NP2", "--drift", "30",
               "--seed", "2", "--duration-s", "5", "--no-with-peth", "--waveform_noise_uv", "1"])
    assert rc == 0 and "units" in capsys.readouterr().out
    meta = json.loads((out / "simulation.json").read_text())
    p = meta["params"]
    assert (p["n_sessions"], p["n_neurons"], p["probe"], p["drift_max_um"], p["seed"]) == (
        3, 20, "NP2", 30.0, 2)
    assert p["with_peth"] is False and p["waveform_noise_uv"] == 1.0
    assert not (out / "peth.npy").exists()
    assert np.ptp(np.load(out / "gt_motion.npy")) == pytest.approx(30.0)
    assert main([str(tmp_path / "bad"), "--probe", "NP9"]) == 2
