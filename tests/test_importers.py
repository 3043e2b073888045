"""Importers: Kilosort/phy folders, SpikeInterface analyzers and NWB files -> input folder.

Inputs are built in their real formats from the simulator: a raw int16 recording holding each
unit's (noiseless) waveform at its spike times on top of noise, so the waveforms recovered by
the importers can be checked against the truth.
"""

import csv
import logging
import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from kilomatch import KilomatchError
from kilomatch.importers import (SOURCE_FILE, import_nwb, import_phy, import_spikeinterface,
                                 main, read_params_py)
from kilomatch.load import load_dataset
from kilomatch.simulate import simulate

FS = 30000.0
GAIN = 0.195            # uV per bit of the synthetic raw files
N_BEFORE, N_AFTER = 28, 36   # snippet around a spike = the simulator's 64 samples
NP1_CH = np.arange(96, 160)  # a 64-channel slice of the Neuropixels 1.0 probe


def read_source(out):
    with open(out / SOURCE_FILE, newline="") as f:
        return list(csv.DictReader(f))


def corr(got, truth):
    """Correlation of two (C, T) waveforms on the truth's footprint (channels with at least a
    tenth of its peak-to-peak amplitude), where the signal is, not the noise."""
    ptp = np.ptp(truth, axis=1)
    on = ptp >= 0.1 * ptp.max()
    return np.corrcoef(np.ravel(got[on]), np.ravel(truth[on]))[0, 1]


def pick_units(sim, session, channels, min_ptp=60.0):
    """Units of a session whose peak is inside the channel slice, with their noiseless
    waveforms on the slice (n, C, T) and their spike samples."""
    units = np.flatnonzero(sim.session_index == session)
    wf = sim.waveforms(units, noise=False)
    ptp = np.ptp(wf, axis=2)
    peak = ptp.argmax(axis=1)
    inside = np.isin(peak, channels[4:-4]) & (ptp[:, channels].max(axis=1) >= min_ptp)
    n = int(sim.params.duration_s * FS)
    chosen, truth, samples = [], [], []
    for k in np.flatnonzero(inside):
        s = np.unique(np.round(sim.spike_times(units[k]) * FS / 1000.0).astype(np.int64))
        s = s[(s >= N_BEFORE) & (s < n - N_AFTER)]
        if s.size >= 15:
            chosen.append(int(units[k]))
            truth.append(wf[k][channels])
            samples.append(s)
    return chosen, np.array(truth), samples


def synth_traces(truth, samples, n_samples, n_rows, rows, rng, noise_uv=2.0):
    """(n_samples, n_rows) float32 bits: noise plus each unit's waveform at its spikes, the
    sorted channel i on raw row rows[i]."""
    data = rng.normal(0.0, noise_uv / GAIN, (n_samples, n_rows)).astype(np.float32)
    for w, s in zip(truth, samples):
        bits = (w.T / GAIN).astype(np.float32)
        for t in s:
            data[t - N_BEFORE:t + N_AFTER, rows] += bits
    return data


@pytest.fixture(scope="module")
def np1_sim():
    return simulate(n_sessions=2, n_neurons=60, duration_s=4.0, probe="NP1", seed=4,
                    with_peth=False, p_present=1.0, turnover=0.0)


def write_phy(folder, sim, session, *, hp_filtered=True, dat_path="recording.bin", seed=0):
    """A Kilosort/phy folder with a raw int16 file; returns the truth by cluster id."""
    folder.mkdir(parents=True)
    units, truth, samples = pick_units(sim, session, NP1_CH)
    rng = np.random.default_rng(seed)
    n = int(sim.params.duration_s * FS)
    n_dat = NP1_CH.size + 2                      # two extra rows (sync, reference)
    rows = rng.permutation(n_dat)[:NP1_CH.size]  # kilosort channel i = raw row rows[i]
    data = synth_traces(truth, samples, n, n_dat, rows, rng)
    if not hp_filtered:  # DC offsets and a slow wave, which the high-pass must remove
        t = np.arange(n) / FS
        data += rng.uniform(-400, 400, n_dat).astype(np.float32)
        data += (150 * np.sin(2 * np.pi * 3.0 * t)).astype(np.float32)[:, None]
    np.clip(np.round(data), -32768, 32767).astype("<i2").tofile(folder / "recording.bin")

    ids = (5 + 3 * rng.permutation(len(units))).tolist()
    noise_id, mua_id = 1, 2
    all_s = list(samples) + [np.sort(rng.choice(np.arange(200, n - 200), 40, replace=False)),
                             np.sort(rng.choice(np.arange(200, n - 200), 30, replace=False))]
    all_c = ids + [noise_id, mua_id]
    spike_s = np.concatenate(all_s)
    spike_c = np.concatenate([np.full(s.size, c) for s, c in zip(all_s, all_c)])
    order = np.argsort(spike_s, kind="stable")
    np.save(folder / "spike_times.npy", spike_s[order].astype(np.uint64)[:, None])
    np.save(folder / "spike_clusters.npy", spike_c[order].astype(np.int32))
    np.save(folder / "spike_templates.npy", spike_c[order].astype(np.uint32))
    np.save(folder / "channel_map.npy", rows.astype(np.int32)[:, None])
    np.save(folder / "channel_positions.npy", sim.channel_locations[NP1_CH])
    # Kilosort's labels: one unit 'mua' (curated back to good), the noise cluster 'good'.
    ks = {c: "good" for c in ids} | {ids[0]: "mua", noise_id: "good", mua_id: "mua"}
    (folder / "cluster_KSLabel.tsv").write_text(
        "cluster_id\tKSLabel\n" + "".join(f"{c}\t{v}\n" for c, v in ks.items()))
    (folder / "cluster_group.tsv").write_text(
        f"cluster_id\tgroup\n{ids[0]}\tgood\n{noise_id}\tnoise\n")
    (folder / "params.py").write_text(
        f"dat_path = {dat_path!r}\nn_channels_dat = {n_dat}\ndtype = 'int16'\noffset = 0\n"
        f"sample_rate = {FS}\nhp_filtered = {hp_filtered}\n")
    return {c: (w, s) for c, w, s in zip(ids, truth, samples)}, mua_id


@pytest.mark.parametrize("hp_filtered", [True, False], ids=["hp_filtered", "raw_highpassed"])
def test_phy_round_trip(tmp_path, np1_sim, hp_filtered):
    """Waveforms from the raw file match the truth; positions, spike times, labels, ids."""
    truths = []
    for s in (1, 2):
        # Session 2 names its raw file by a path from another machine: found by its name.
        dat = "recording.bin" if s == 1 else r"D:\sorting\mouse1\recording.bin"
        truths.append(write_phy(tmp_path / f"day{s}", np1_sim, s, hp_filtered=hp_filtered,
                                dat_path=dat, seed=s))
    out = import_phy([tmp_path / "day1", tmp_path / "day2"], tmp_path / "out", gain_uv=GAIN)
    data = load_dataset(out)
    source = read_source(out)
    n1, n2 = len(truths[0][0]), len(truths[1][0])
    assert data.n_units == len(source) == n1 + n2
    assert data.session_index.tolist() == [1] * n1 + [2] * n2
    assert np.array_equal(data.channel_locations, np1_sim.channel_locations[NP1_CH])
    assert not (out / "channel_shanks.npy").exists()
    sos = butter(3, 300.0, btype="highpass", fs=FS, output="sos")
    for row in source:
        k, s, uid = int(row["unit"]), int(row["session"]), int(row["original_unit_id"])
        assert row["session_path"] == str((tmp_path / f"day{s}").resolve())
        truth, samples = truths[s - 1][0][uid]
        assert np.allclose(data.spike_times[k], samples / FS * 1000.0, rtol=0, atol=1e-9)
    # default window: 20 + 41 samples (Kilosort's); compare with the truth in its own window
    assert data.waveforms.shape[1:] == (NP1_CH.size, 61)
    out2 = import_phy([tmp_path / "day1", tmp_path / "day2"], tmp_path / "out2",
                      n_before=N_BEFORE, n_after=N_AFTER, gain_uv=GAIN)
    data2 = load_dataset(out2)
    for row in read_source(out2):
        k, s, uid = int(row["unit"]), int(row["session"]), int(row["original_unit_id"])
        truth = truths[s - 1][0][uid][0]
        if not hp_filtered:  # compare with the truth filtered the same way (zero phase)
            padded = np.pad(truth, ((0, 0), (300, 300)))
            truth = sosfiltfilt(sos, padded, axis=1)[:, 300:-300]
        got = np.asarray(data2.waveforms[k])
        assert corr(got, truth) > 0.99, (s, uid)
        assert np.ptp(got) == pytest.approx(np.ptp(truth), rel=0.05), (s, uid)
    # labels: the noise cluster (KS 'good', curated 'noise') and the mua cluster are left out
    ids = {int(r["original_unit_id"]) for r in source}
    assert 1 not in ids and 2 not in ids
    out3 = import_phy([tmp_path / "day1", tmp_path / "day2"], tmp_path / "out3",
                      units="all_but_noise", n_spikes=5, gain_uv=GAIN)
    ids3 = [int(r["original_unit_id"]) for r in read_source(out3)]
    assert 2 in ids3 and 1 not in ids3 and len(ids3) == len(source) + 2


def test_phy_kilosort4_templates_without_raw(tmp_path, np1_sim, caplog):
    """No raw file, Kilosort 4: templates (whitened mean waveforms, X_w = W @ X) unwhitened
    with the matrix KS4 saved (whitening_mat_dat.npy), loudly; whitening_mat_inv.npy unused."""
    folders, truths = [], []
    rng = np.random.default_rng(0)
    c = NP1_CH.size
    for s in (1, 2):
        folder = tmp_path / f"ks4_{s}"
        truth, _ = write_phy(folder, np1_sim, s, seed=s)
        (folder / "recording.bin").unlink()
        (folder / "kilosort4.log").write_text("Kilosort4 version 4.1\n")
        n_templates = int(np.load(folder / "spike_templates.npy").max()) + 1
        # a local, non-symmetric whitening matrix, as KS4's (row j whitens channel j)
        wdat = np.eye(c) + 0.3 * np.triu(rng.normal(size=(c, c)) / c ** 0.5, 1)
        templates = np.zeros((n_templates, 61, c), np.float32)
        for uid, (w, _) in truth.items():
            window = np.zeros((61, c))
            window[:64 - 8] = (w.T / GAIN)[8:]                  # truth sample 28 at sample 20
            templates[uid] = (wdat @ window.T).T                 # whitened, time x channels
        np.save(folder / "templates.npy", templates)
        np.save(folder / "whitening_mat_dat.npy", wdat)
        np.save(folder / "whitening_mat_inv.npy", 200.0 * np.eye(c))  # must not be used
        folders.append(folder)
        truths.append(truth)
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        out = import_phy(folders, tmp_path / "out", gain_uv=GAIN)
    assert "Kilosort 4" in caplog.text and "raw recording not reachable" in caplog.text
    data = load_dataset(out)
    assert data.n_units == sum(len(t) for t in truths)
    for row in read_source(out):
        k, s, uid = int(row["unit"]), int(row["session"]), int(row["original_unit_id"])
        truth = truths[s - 1][uid][0]
        got = np.asarray(data.waveforms[k])[:, :56]
        expect = truth[:, 8:]
        expect = expect - np.median(np.pad(expect, ((0, 0), (0, 5))), axis=1, keepdims=True)
        assert corr(got, expect) > 0.999
        assert np.ptp(got) == pytest.approx(np.ptp(expect), rel=0.01)


def test_phy_whitened_copy_is_not_raw(tmp_path):
    """dat_path naming Kilosort's whitened temp_wh.dat is not taken for the raw data."""
    a = tiny_phy(tmp_path / "a")
    (a / "raw.dat").rename(a / "temp_wh.dat")
    (a / "params.py").write_text((a / "params.py").read_text().replace("raw.dat", "temp_wh.dat"))
    with pytest.raises(KilomatchError, match=r"session 1 .*temp_wh.dat.*whitened"):
        import_phy([a, tiny_phy(tmp_path / "b")], tmp_path / "out", gain_uv=GAIN)


# --------------------------------------------------------------------------------------------
# Errors (small hand-made phy folders)
# --------------------------------------------------------------------------------------------

def tiny_phy(folder, *, positions=None, groups=None, raw=True, n_ch=8):
    """An 8-channel, 1 s phy folder with two clusters (ids 3, 4) of random spikes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    n = 30000
    if raw:
        rng.integers(-50, 50, (n, n_ch)).astype("<i2").tofile(folder / "raw.dat")
    s = np.sort(rng.choice(np.arange(100, n - 100), 60, replace=False))
    np.save(folder / "spike_times.npy", s.astype(np.int64))
    np.save(folder / "spike_clusters.npy", np.repeat([3, 4], 30))
    np.save(folder / "channel_map.npy", np.arange(n_ch))
    pos = np.column_stack([np.zeros(n_ch), 20.0 * np.arange(n_ch)]) if positions is None else positions
    np.save(folder / "channel_positions.npy", pos)
    groups = groups or {3: "good", 4: "good"}
    (folder / "cluster_group.tsv").write_text(
        "cluster_id\tgroup\n" + "".join(f"{c}\t{g}\n" for c, g in groups.items()))
    (folder / "params.py").write_text(
        f"dat_path = 'raw.dat'\nn_channels_dat = {n_ch}\ndtype = 'int16'\noffset = 0\n"
        "sample_rate = 30000.0\nhp_filtered = False\n")
    return folder


def test_phy_tiny_ok_and_output_folder_rules(tmp_path):
    a, b = tiny_phy(tmp_path / "a"), tiny_phy(tmp_path / "b")
    out = import_phy([a, b], tmp_path / "out", gain_uv=GAIN)
    data = load_dataset(out)
    assert data.n_units == 4 and data.waveforms.shape == (4, 8, 61)
    with pytest.raises(KilomatchError, match="not empty"):
        import_phy([a, b], tmp_path / "out", gain_uv=GAIN)
    c = tiny_phy(tmp_path / "c", groups={3: "good", 4: "mua"})
    # fewer units: no stale files left
    import_phy([a, c], tmp_path / "out", overwrite=True, gain_uv=GAIN)
    assert load_dataset(tmp_path / "out").n_units == 3
    with pytest.raises(KilomatchError, match="at least two sessions"):
        import_phy([a], tmp_path / "out1", gain_uv=GAIN)
    with pytest.raises(KilomatchError, match="same as session 1"):
        import_phy([a, a], tmp_path / "out1", gain_uv=GAIN)


def test_phy_raw_split_in_files_reads_as_one(tmp_path):
    """dat_path as a list: the files are one recording, a window may straddle two files."""
    a = tiny_phy(tmp_path / "a")
    b = tiny_phy(tmp_path / "b")
    raw = np.fromfile(b / "raw.dat", dtype="<i2").reshape(-1, 8)
    spikes = np.load(b / "spike_times.npy")
    cut = int(spikes[10]) + 3                 # inside a snippet
    raw[:cut].tofile(b / "part1.dat")
    raw[cut:].tofile(b / "part2.dat")
    (b / "raw.dat").unlink()
    text = (b / "params.py").read_text().replace("'raw.dat'", "['part1.dat', 'part2.dat']")
    (b / "params.py").write_text(text)
    data = load_dataset(import_phy([a, b], tmp_path / "out", gain_uv=GAIN))
    assert np.allclose(data.waveforms[:2], data.waveforms[2:], atol=1e-5)


def test_error_different_geometry_names_session(tmp_path):
    """A session on other channel positions (another probe or bank: most of its channels
    elsewhere), or whose map leaves out more than a quarter of the channels, is named."""
    pos = np.column_stack([np.zeros(8), 20.0 * np.arange(8)])
    elsewhere = pos.copy()
    elsewhere[2:, 1] += 1000.0
    a = tiny_phy(tmp_path / "a")
    b = tiny_phy(tmp_path / "b")
    c = tiny_phy(tmp_path / "c", positions=elsewhere)
    with pytest.raises(KilomatchError) as err:
        import_phy([a, b, c], tmp_path / "out", gain_uv=GAIN)
    msg = str(err.value)
    assert f"session 3 ({c})" in msg and "channel 2" in msg and "session 2" not in msg
    d = tiny_phy(tmp_path / "d", n_ch=5, positions=pos[:5])
    with pytest.raises(KilomatchError, match=r"session 2 \(.*d\).*5 channels against 8"):
        import_phy([a, d], tmp_path / "out", gain_uv=GAIN)
    assert not (tmp_path / "out").exists()


def test_a_session_without_some_channels_is_padded(tmp_path, caplog):
    """Session 2 sorted with channel 5 left out of its map (a site that failed): the input
    folder holds every channel, session 2's units read 0 on channel 5 and as sorted on the
    others; the log names the session and the channel."""
    pos = np.column_stack([np.zeros(8), 20.0 * np.arange(8)])
    keep = np.delete(np.arange(8), 5)
    a = tiny_phy(tmp_path / "a")
    d = tiny_phy(tmp_path / "d", n_ch=7, positions=pos[keep])
    twin = tiny_phy(tmp_path / "e", n_ch=7, positions=pos[keep])
    as_sorted = load_dataset(import_phy([d, twin], tmp_path / "as_sorted", gain_uv=GAIN))
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        out = import_phy([a, d], tmp_path / "out", gain_uv=GAIN)
    said = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert len(said) == 1 and f"session 2 ({d})" in said[0] and "(0, 100) um" in said[0]
    data = load_dataset(out)
    np.testing.assert_allclose(data.channel_locations, pos)
    second = np.asarray(data.waveforms[data.session_index == 2])
    assert second.shape == (2, 8, 61)
    assert np.all(second[:, 5] == 0)
    np.testing.assert_array_equal(second[:, keep],
                                  np.asarray(as_sorted.waveforms[as_sorted.session_index == 1]))
def test_error_no_usable_unit_names_session(tmp_path):
    a = tiny_phy(tmp_path / "a")
    b = tiny_phy(tmp_path / "b", groups={3: "noise", 4: "mua"})
    with pytest.raises(KilomatchError, match=r"session 2 \(.*b\): no usable unit"):
        import_phy([a, b], tmp_path / "out", gain_uv=GAIN)
    with pytest.raises(KilomatchError, match=r"session 2 \(.*c\): no usable unit"):
        import_phy([a, tiny_phy(tmp_path / "c", groups={3: "noise", 4: "noise"})],
                   tmp_path / "out", units="all_but_noise", gain_uv=GAIN)


def test_error_missing_raw_kilosort25_refuses_templates(tmp_path):
    a = tiny_phy(tmp_path / "a", raw=False)
    np.save(a / "templates.npy", np.zeros((5, 61, 8), np.float32))
    np.save(a / "whitening_mat_inv.npy", np.eye(8))
    b = tiny_phy(tmp_path / "b")
    with pytest.raises(KilomatchError) as err:
        import_phy([a, b], tmp_path / "out", gain_uv=GAIN)
    msg = str(err.value)
    assert f"session 1 ({a})" in msg and "not reachable" in msg
    assert "whitening_mat_inv.npy" in msg and "Kilosort 2.5/3" in msg


def test_error_wrong_kind_of_path(tmp_path):
    a = tiny_phy(tmp_path / "a")
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(KilomatchError, match=r"session 2 \(.*notes.txt\): not a folder"):
        import_phy([a, stray], tmp_path / "out", gain_uv=GAIN)
    with pytest.raises(KilomatchError, match=r"session 1 .*not a Kilosort/phy output folder"):
        import_phy([tmp_path, a], tmp_path / "out", gain_uv=GAIN)
    with pytest.raises(KilomatchError, match="list of session paths"):
        import_phy(str(a), tmp_path / "out", gain_uv=GAIN)


def test_params_py_is_parsed_not_run(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("x")
    p = tmp_path / "params.py"
    p.write_text(f"import os\nboom = os.remove({str(marker)!r})\ndat_path = ['a.bin', 'b.bin']\n"
                 "sample_rate = 30000.\nhp_filtered = True\n")
    params = read_params_py(p)
    assert marker.exists()
    assert params == {"dat_path": ["a.bin", "b.bin"], "sample_rate": 30000.0,
                      "hp_filtered": True}
    # Windows paths: unescaped (even with a \x that is not valid Python), and escaped
    p.write_text('dat_path = "D:\\new\\x1\\rec.bin"\nn_channels_dat = 385\n')
    assert read_params_py(p) == {"dat_path": "D:\\new\\x1\\rec.bin", "n_channels_dat": 385}
    p.write_text('dat_path = "D:\\new\\rec.bin"\nsample_rate = 3e4\n')
    assert read_params_py(p)["dat_path"] == "D:\\new\\rec.bin"
    p.write_text('dat_path = "D:\\\\new\\\\rec.bin"\n')
    assert read_params_py(p)["dat_path"] == "D:\\new\\rec.bin"


def test_cli(tmp_path, capsys):
    a, b = tiny_phy(tmp_path / "a"), tiny_phy(tmp_path / "b")
    assert main(["phy", str(tmp_path / "out"), str(a), str(b), "--units", "all",
                 "--n-spikes", "10", "--gain-uv", "2.34375"]) == 0
    assert "4 units" in capsys.readouterr().out
    assert main(["phy", str(tmp_path / "out"), str(a), str(b), "--gain-uv", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "kilomatch.importers", "phy",
                          str(tmp_path / "out"), str(a), str(b), "--overwrite",
                          "--gain-uv", "0.195"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert load_dataset(tmp_path / "out").n_units == 4


# --------------------------------------------------------------------------------------------
# SpikeInterface
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*not serializable")
def test_spikeinterface_round_trip(tmp_path):
    si = pytest.importorskip("spikeinterface.core")
    probeinterface = pytest.importorskip("probeinterface")
    sim = simulate(n_sessions=2, n_neurons=60, duration_s=4.0, probe="NP2-4shank", seed=2,
                   with_peth=False, p_present=1.0, turnover=0.0)
    ch = np.flatnonzero((sim.channel_shanks <= 1) & (sim.channel_locations[:, 1] >= 150)
                        & (sim.channel_locations[:, 1] < 450))
    locs = sim.channel_locations[ch]
    rng = np.random.default_rng(0)
    n = int(sim.params.duration_s * FS)
    truths, paths = [], []
    for s in (1, 2):
        units, truth, samples = pick_units(sim, s, ch)
        traces = synth_traces(truth, samples, n, ch.size, np.arange(ch.size), rng)
        rec = si.NumpyRecording([np.clip(np.round(traces), -32768, 32767).astype(np.int16)],
                                sampling_frequency=FS)
        rec.set_channel_gains(GAIN)
        rec.set_channel_offsets(0.0)
        probe = probeinterface.Probe(ndim=2, si_units="um")
        probe.set_contacts(positions=locs, shapes="square", shape_params={"width": 12},
                           shank_ids=sim.channel_shanks[ch].astype(str))
        probe.set_device_channel_indices(np.arange(ch.size))
        attached = rec.set_probe(probe)        # a new recording before SI 0.104, in place after
        rec = rec if attached is None else attached
        ids = [10 * s + k for k in range(len(units))]
        sorting = si.NumpySorting.from_unit_dict({u: x for u, x in zip(ids, samples)}, FS)
        folder = tmp_path / f"analyzer{s}"
        analyzer = si.create_sorting_analyzer(sorting, rec, format="memory", sparse=False)
        analyzer.compute("random_spikes", max_spikes_per_unit=500, seed=0)
        analyzer.compute("templates", ms_before=1.0, ms_after=1.0)
        nbefore = analyzer.get_extension("templates").nbefore
        analyzer.save_as(format="binary_folder", folder=folder)
        truths.append({u: (w, x) for u, w, x in zip(ids, truth, samples)})
        paths.append(folder)
    out = import_spikeinterface(paths, tmp_path / "out")
    data = load_dataset(out)
    assert np.array_equal(data.channel_locations, locs)
    shanks = np.load(out / "channel_shanks.npy")
    assert np.array_equal(shanks, sim.channel_shanks[ch])
    shift = nbefore - N_BEFORE            # template sample j = truth sample j - shift
    for row in read_source(out):
        k, s, uid = int(row["unit"]), int(row["session"]), int(row["original_unit_id"])
        truth, samples = truths[s - 1][uid]
        got = np.asarray(data.waveforms[k])
        t = got.shape[1]
        lo, hi = max(shift, 0), min(t, N_BEFORE + N_AFTER + shift)
        assert corr(got[:, lo:hi], truth[:, lo - shift:hi - shift]) > 0.99
        assert np.ptp(got[:, lo:hi]) == pytest.approx(np.ptp(truth), rel=0.05)
        assert np.allclose(data.spike_times[k], samples / FS * 1000.0, rtol=0, atol=1e-9)
    assert data.n_units == sum(len(t) for t in truths)


def test_spikeinterface_wrong_path(tmp_path):
    pytest.importorskip("spikeinterface.core")
    a, b = tiny_phy(tmp_path / "a"), tiny_phy(tmp_path / "b")
    with pytest.raises(KilomatchError, match=r"session 1 .*not a saved SpikeInterface"):
        import_spikeinterface([a, b], tmp_path / "out")


# --------------------------------------------------------------------------------------------
# NWB
# --------------------------------------------------------------------------------------------

def write_nwb(path, sim, session, channels, *, volts=True, rel=True):
    pynwb = pytest.importorskip("pynwb")
    from datetime import datetime, timezone
    units = np.flatnonzero(sim.session_index == session)
    wf = sim.waveforms(units)[:, channels]
    nwb = pynwb.NWBFile(session_description="simulated", identifier=f"day{session}",
                        session_start_time=datetime(2024, 1, session, tzinfo=timezone.utc))
    device = nwb.create_device(name="Neuropixels")
    group = nwb.create_electrode_group(name="probe0", description="NP1", location="cortex",
                                       device=device)
    locs = sim.channel_locations[channels]
    for x, y in locs:
        if rel:
            nwb.add_electrode(group=group, location="cortex", rel_x=float(x), rel_y=float(y))
        else:
            nwb.add_electrode(group=group, location="cortex", x=float(x), y=float(y), z=0.0)
    ids, truth = [], {}
    for k, u in enumerate(units):
        uid = 100 * session + k
        times = sim.spike_times(u)
        w = wf[k].T * (1e-6 if volts else 1.0)                 # (samples, electrodes)
        nwb.add_unit(id=uid, spike_times=times / 1000.0, waveform_mean=w,
                     electrodes=list(range(channels.size)))
        ids.append(uid)
        truth[uid] = (wf[k], times)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return truth


def test_nwb_round_trip(tmp_path, np1_sim, caplog):
    pytest.importorskip("pynwb")
    ch = np.arange(0, 384, 3)                 # a third of the channels keeps the files small
    t1 = write_nwb(tmp_path / "day1.nwb", np1_sim, 1, ch)
    # day 2: waveforms in uV declared as volts, positions as x, y
    t2 = write_nwb(tmp_path / "day2.nwb", np1_sim, 2, ch, volts=False, rel=False)
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        out = import_nwb([tmp_path / "day1.nwb", tmp_path / "day2.nwb"], tmp_path / "out")
    assert "read as uV" in caplog.text and "no rel_x/rel_y" in caplog.text
    data = load_dataset(out)
    assert np.array_equal(data.channel_locations, np1_sim.channel_locations[ch])
    truths = [t1, t2]
    assert data.n_units == len(t1) + len(t2)
    for row in read_source(out):
        k, s, uid = int(row["unit"]), int(row["session"]), int(row["original_unit_id"])
        w, times = truths[s - 1][uid]
        assert np.allclose(data.waveforms[k], w, rtol=1e-5, atol=1e-4)
        assert np.allclose(data.spike_times[k], times, rtol=1e-12, atol=1e-9)


def test_nwb_errors(tmp_path, np1_sim):
    pytest.importorskip("pynwb")
    ch = np.arange(0, 384, 3)
    write_nwb(tmp_path / "a.nwb", np1_sim, 1, ch)
    write_nwb(tmp_path / "b.nwb", np1_sim, 2, ch[:80])
    with pytest.raises(KilomatchError, match=r"session 2 \(.*b.nwb\).*80 channels against 128"):
        import_nwb([tmp_path / "a.nwb", tmp_path / "b.nwb"], tmp_path / "out")
    with pytest.raises(KilomatchError, match=r"session 2 \(.*\): not a file"):
        import_nwb([tmp_path / "a.nwb", tmp_path], tmp_path / "out")
    (tmp_path / "c.nwb").write_text("not hdf5")
    with pytest.raises(KilomatchError, match=r"session 2 \(.*c.nwb\): not a readable NWB"):
        import_nwb([tmp_path / "a.nwb", tmp_path / "c.nwb"], tmp_path / "out")


def test_spikeinterface_probe_without_shank_ids():
    """probeinterface leaves shank_ids None (generate_linear_probe, set_contacts without
    shank_ids); that means one shank, not an IndexError."""
    probeinterface = pytest.importorskip("probeinterface")
    from kilomatch.formats.spikeinterface import _shanks_by_position
    probe = probeinterface.generate_linear_probe(num_elec=8)
    xy = np.asarray(probe.contact_positions)
    assert _shanks_by_position(xy, xy, probe.shank_ids, "session 1") is None


def test_missing_channels_of_a_multi_shank_probe_are_padded_on_their_shank(tmp_path):
    """Two shanks; session 2 lacks a channel of shank 1 and lists its shanks under other
    labels: it is written on the whole probe with the first session's shank labels, 0 on
    the missing channel. A session whose shanks split the channels otherwise is not padded."""
    from kilomatch.formats.sessions import SessionUnits, pad_to_probe, whole_probe
    locs = np.column_stack([np.tile([0.0, 250.0], 4), np.repeat(20.0 * np.arange(4), 2)])
    shanks = np.tile([0, 1], 4)
    keep = np.delete(np.arange(8), 3)  # channel 3: shank 1

    def session(k, chans, labels):
        return SessionUnits(tmp_path / f"s{k}", locs[chans], labels, [0], 5, [np.zeros(3)],
                            lambda: iter([np.ones((chans.size, 5), np.float32)]))

    first = session(1, np.arange(8), shanks)
    second = session(2, keep, 7 - shanks[keep])  # labels 7 and 6 for shanks 0 and 1
    whole, whole_shanks = whole_probe([first, second])
    padded = pad_to_probe(whole, whole_shanks, second, 2)
    np.testing.assert_array_equal(padded.channel_locations, locs)
    np.testing.assert_array_equal(padded.channel_shanks, shanks)
    w = next(padded.waveforms())
    assert w.shape == (8, 5) and np.all(w[3] == 0) and np.all(w[keep] == 1)
    mixed = session(3, keep, np.zeros(keep.size, np.int64))  # one shank for both columns
    assert pad_to_probe(whole, whole_shanks, mixed, 3) is mixed
    # the largest session lacks channel 3, which session 2 (other labels) holds: the whole
    # probe takes it under the label of its shank
    _, joined = whole_probe([session(4, keep, shanks[keep]),
                             session(5, np.arange(7), 7 - shanks[:7])])
    np.testing.assert_array_equal(joined, shanks[np.r_[keep, 3]])
