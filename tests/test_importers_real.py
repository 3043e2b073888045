"""Importers on folders as the upstream tools write them.

SpikeInterface analyzers and ``export_to_phy`` folders are written by SpikeInterface itself,
bombcell's labels by bombcell's own writer. Kilosort 4 (torch), SpikeGLX and Open Ephys do not
run in CI: their files are written here the way those tools write them, each helper saying
where that layout comes from.
"""

import contextlib
import csv
import json
import logging
import subprocess
import re
import sys
import warnings

import numpy as np
import pytest

from kilomatch import KilomatchError
from kilomatch.formats.raw_gain import spikeglx_gain_uv
from kilomatch.importers import SOURCE_FILE, import_phy, import_spikeinterface, main
from kilomatch.load import load_dataset

FS = 30000.0
N_CH = 12


def read_source(out):
    with open(out / SOURCE_FILE, newline="") as f:
        return list(csv.DictReader(f))


def corr(a, b):
    return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]


# --------------------------------------------------------------------------------------------
# Synthetic raw data (for the formats whose tools do not run in CI)
# --------------------------------------------------------------------------------------------

def raw_session(n_dat=N_CH + 1, n_samples=60000, seed=0):
    """int16 samples x n_dat (the last row a sync channel), three units of distinct footprints
    at known samples; returns (data, {cluster id: spike samples})."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 8, (n_samples, n_dat))
    t = np.arange(-20, 41)
    shape = -np.exp(-0.5 * (t / 4.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 12) / 6.0) ** 2)
    spikes = {}
    for cid, peak in ((0, 3), (1, 6), (2, 9)):
        s = np.sort(rng.choice(np.arange(300, n_samples - 300, 80), 120, replace=False))
        foot = np.exp(-0.5 * ((np.arange(N_CH) - peak) / 1.5) ** 2) * 300.0
        for x in s:
            data[x - 20:x + 41, :N_CH] += shape[:, None] * foot[None, :]
        spikes[cid] = s
    return np.round(data).astype("<i2"), spikes


def write_kilosort4(results, raw_path, dat_path, *, column_spikes=False, seed=0,
                    labels=("good", "good", "mua")):
    """A Kilosort 4 results folder as kilosort.io.save_to_phy (KS 4.0) writes it, with the raw
    file at raw_path and params.py naming dat_path.

    KS4 writes: channel_map.npy (C,) int32 and channel_positions.npy (C, 2) float32 from the
    probe; whitening_mat_dat.npy (the real whitening matrix), whitening_mat.npy (0.005 I) and
    whitening_mat_inv.npy; spike_times.npy (n,) int64, spike_templates.npy and
    spike_clusters.npy (n,) (the same values), amplitudes.npy; templates.npy (K, 61, C),
    templates_ind.npy (K, C); cluster_ContamPct.tsv, cluster_Amplitude.tsv and
    cluster_KSLabel.tsv ("cluster_id<TAB>KSLabel", then "id<TAB>good|mua"), copied to
    cluster_group.tsv with the same KSLabel header; params.py as "key = value" lines with
    dat_path the resolved POSIX path in quotes, hp_filtered = False; kilosort4.log. Older
    sortings (and SpikeInterface's reader) save spike_times as (n, 1): column_spikes.
    """
    data, spikes = raw_session(seed=seed)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(raw_path)
    results.mkdir(parents=True, exist_ok=True)
    np.save(results / "channel_map.npy", np.arange(N_CH, dtype=np.int32))
    np.save(results / "channel_positions.npy",
            np.column_stack([np.tile([0.0, 32.0], N_CH // 2), 20.0 * np.arange(N_CH)]
                            ).astype(np.float32))
    np.save(results / "whitening_mat_dat.npy", np.eye(N_CH, dtype=np.float32))
    np.save(results / "whitening_mat.npy", 0.005 * np.eye(N_CH, dtype=np.float32))
    np.save(results / "whitening_mat_inv.npy", 200.0 * np.eye(N_CH, dtype=np.float32))
    st = np.concatenate(list(spikes.values())).astype(np.int64)
    clu = np.concatenate([np.full(s.size, c) for c, s in spikes.items()]).astype(np.int32)
    order = np.argsort(st, kind="stable")
    st, clu = st[order], clu[order]
    np.save(results / "spike_times.npy", st[:, None] if column_spikes else st)
    np.save(results / "spike_templates.npy", clu)
    np.save(results / "spike_clusters.npy", clu)
    np.save(results / "amplitudes.npy", np.ones(st.size, np.float32))
    np.save(results / "templates.npy", np.zeros((3, 61, N_CH), np.float32))
    np.save(results / "templates_ind.npy", np.tile(np.arange(N_CH), (3, 1)))
    for stype, values in (("ContamPct", ["0.0"] * 3), ("Amplitude", ["50.0"] * 3),
                          ("KSLabel", list(labels))):
        text = f"cluster_id\t{stype}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values))
        (results / f"cluster_{stype}.tsv").write_text(text)
    (results / "cluster_group.tsv").write_text((results / "cluster_KSLabel.tsv").read_text())
    (results / "params.py").write_text(
        f"dat_path = '{dat_path}'\nn_channels_dat = {N_CH + 1}\ndtype = 'int16'\noffset = 0\n"
        "sample_rate = 30000\nhp_filtered = False\n")
    (results / "kilosort4.log").write_text("kilosort.run_kilosort: Kilosort version 4.0.30\n")
    return spikes


NP1_META = dict(
    # Keys and table formats of a SpikeGLX 2023 imec AP .meta for a Neuropixels 1.0 probe
    # (SpikeGLX Metadata_30 documentation): imroTbl entries (chan bank refid apgain lfgain
    # aphipass), imAiRangeMax in V, imMaxInt the ADC's maximum.
    acqApLfSy="384,384,1", appVersion="20230815", fileName="C:/data/run_g0/run_g0_t0.imec0.ap.bin",
    fileSizeBytes="0", imAiRangeMax="0.6", imAiRangeMin="-0.6", imDatPrb_pn="PRB_1_4_0480_1",
    imDatPrb_type="0", imMaxInt="512", imSampRate="30000", nSavedChans="385",
    snsApLfSy="384,0,1", snsSaveChanSubset="all", typeThis="imec")


def write_spikeglx_meta(path, *, ap_gain=500, np2=False, drop=(), extra=None):
    """A SpikeGLX imec .meta: key=value lines, tables as ~key=(header)(entry)(entry)..."""
    meta = dict(NP1_META)
    if np2:  # Neuropixels 2.0 single shank: fixed gain 80, 14-bit ADC
        meta.update(imAiRangeMax="0.62", imAiRangeMin="-0.62", imDatPrb_pn="NP2000",
                    imDatPrb_type="21", imMaxInt="8192")
        imro = "(21,384)" + "".join(f"({c} 0 0 {c})" for c in range(384))
    else:
        imro = "(0,384)" + "".join(f"({c} 0 0 {ap_gain} 250 1)" for c in range(384))
    meta.update(extra or {})
    for key in drop:
        meta.pop(key, None)
    lines = [f"{k}={v}" for k, v in meta.items()]
    lines += ["~imroTbl=" + imro,
              "~snsChanMap=(384,0,1)" + "".join(f"(AP{c};{c}:{c})" for c in range(384))
              + "(SY0;384:384)"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Kilosort 4 folders, SpikeGLX and Open Ephys gains
# --------------------------------------------------------------------------------------------

def test_kilosort4_moved_from_another_machine(tmp_path, caplog):
    """KS4's default layout (<data>/kilosort4/) with dat_path from another machine: the raw
    file is found one folder up; in the other session, sorted elsewhere, it is the only .bin
    beside params.py. Both are logged. spike_times (n,) and (n, 1); cluster_KSLabel.tsv."""
    day1 = tmp_path / "day1"
    write_kilosort4(day1 / "kilosort4", day1 / "run_g0_t0.imec0.ap.bin",
                    "/home/someone/data/day1/run_g0_t0.imec0.ap.bin")
    write_spikeglx_meta(day1 / "run_g0_t0.imec0.ap.meta")
    day2 = tmp_path / "day2"
    write_kilosort4(day2, day2 / "copied.bin", "D:/sorting/day2/run_g0_t0.imec0.ap.bin",
                    column_spikes=True, seed=1)
    write_spikeglx_meta(day2 / "copied.meta")
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        out = import_phy([day1 / "kilosort4", day2], tmp_path / "out")
    text = caplog.text
    assert "folder above params.py" in text and "only raw file beside params.py" in text
    assert "gain 2.34375 uV/bit, from" in text and "run_g0_t0.imec0.ap.meta" in text
    data = load_dataset(out)
    source = read_source(out)
    assert [r["original_unit_id"] for r in source] == ["0", "1"] * 2   # KSLabel good only
    assert data.waveforms.shape == (4, N_CH, 61)
    # footprints where the units were put, amplitude 300 bits x 2.34375 uV/bit
    peaks = np.ptp(np.asarray(data.waveforms), axis=2).argmax(axis=1)
    assert peaks.tolist() == [3, 6, 3, 6]
    ptp = np.ptp(np.asarray(data.waveforms), axis=2).max(axis=1)
    assert np.allclose(ptp, 300 * 1.4 * 2.34375, rtol=0.1)
    spikes = write_kilosort4(tmp_path / "again", tmp_path / "again.bin", "x")  # same seed
    assert np.allclose(data.spike_times[0], spikes[0] / FS * 1000.0)


@pytest.mark.parametrize("case,expect", [
    (dict(), 0.6 / 512 / 500 * 1e6),                                   # NP1, gain 500
    (dict(ap_gain=250), 0.6 / 512 / 250 * 1e6),
    (dict(drop=("imMaxInt",)), 0.6 / 512 / 500 * 1e6),                 # before SpikeGLX 2019
    (dict(np2=True), 0.62 / 8192 / 80 * 1e6),                          # NP2: fixed gain 80
    (dict(np2=True, extra=dict(imChan0apGain="100")), 0.62 / 8192 / 100 * 1e6),  # newer files
], ids=["np1", "np1_gain250", "np1_old", "np2", "np2_imChan0apGain"])
def test_spikeglx_gain(tmp_path, case, expect):
    """uV per bit from the .meta, checked against neo's SpikeGLX reader where installed."""
    meta = write_spikeglx_meta(tmp_path / "run_g0_t0.imec0.ap.meta", **case)
    got = spikeglx_gain_uv(meta, np.arange(N_CH), "session 1")
    assert got == pytest.approx(expect, rel=1e-12)
    try:
        from neo.rawio.spikeglxrawio import extract_stream_info, read_meta_file
    except ImportError:
        return
    if "drop" in case:  # neo reads only imMaxInt-less NP1 files, with the same 512
        return
    info = extract_stream_info(meta, read_meta_file(meta))
    assert got == pytest.approx(float(info["channel_gains"][0]), rel=1e-9)


def test_openephys_gain(tmp_path, caplog):
    """An Open Ephys binary recording: continuous.dat in
    <Record Node>/experiment1/recording1/continuous/<stream>/, structure.oebin (JSON) in
    recording1 listing each stream's folder_name and its channels' bit_volts and units."""
    rec1 = tmp_path / "Record Node 101" / "experiment1" / "recording1"
    stream = "Neuropix-PXI-100.ProbeA-AP"
    raw = rec1 / "continuous" / stream / "continuous.dat"
    sessions = []
    for day in (1, 2):
        folder = tmp_path / f"ks{day}"
        write_kilosort4(folder, raw, raw.as_posix(), seed=day)
        sessions.append(folder)
    channels = [{"channel_name": f"CH{c + 1}", "description": "", "identifier": "",
                 "history": "", "bit_volts": 0.1949999928474426, "units": "uV"}
                for c in range(N_CH)]
    channels.append({"channel_name": "SYNC", "bit_volts": 1.0, "units": ""})
    oebin = {"GUI version": "0.6.7",
             "continuous": [{"folder_name": stream + "/", "sample_rate": FS,
                             "source_processor_name": "Neuropix-PXI",
                             "source_processor_id": 100, "stream_name": "ProbeA-AP",
                             "num_channels": N_CH + 1, "channels": channels}],
             "events": [], "spikes": []}
    (rec1 / "structure.oebin").write_text(json.dumps(oebin, indent=4))
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        out = import_phy(sessions, tmp_path / "out")
    assert "gain 0.195 uV/bit, from" in caplog.text and "structure.oebin" in caplog.text
    with_gain = import_phy(sessions, tmp_path / "out2", gain_uv=0.195)
    assert np.allclose(load_dataset(out).waveforms, load_dataset(with_gain).waveforms,
                       rtol=1e-6)
    # a sorted row whose bit_volts differs: one gain cannot scale them all
    channels[5]["bit_volts"] = 0.5
    (rec1 / "structure.oebin").write_text(json.dumps(oebin))
    with pytest.raises(KilomatchError, match=r"session 1 .*structure.oebin.*different "
                                             r"bit_volts.*--gain-uv"):
        import_phy(sessions, tmp_path / "out3")


def test_gain_unknown_is_an_error_naming_the_flag(tmp_path):
    a = tmp_path / "a"
    write_kilosort4(a, a / "data.bin", "data.bin")
    b = tmp_path / "b"
    write_kilosort4(b, b / "data.bin", "data.bin", seed=1)
    with pytest.raises(KilomatchError, match=r"session 1 \(.*a\): the gain of .*data.bin is "
                                             r"unknown.*data.meta.*--gain-uv"):
        import_phy([a, b], tmp_path / "out")
    write_spikeglx_meta(a / "data.meta", extra=dict(typeThis="nidq"))
    with pytest.raises(KilomatchError, match=r"session 1 .*data.meta: a SpikeGLX nidq stream"):
        import_phy([a, b], tmp_path / "out")
    # Kilosort 4 without its raw file: templates could stand in, but their gain is unknown
    (a / "data.bin").unlink()
    with pytest.raises(KilomatchError, match=r"session 1 .*raw recording is not reachable.*"
                                             r"--gain-uv"):
        import_phy([a, b], tmp_path / "out")


def test_unsorted_overrides_no_kilosort_label(tmp_path, two_ks4):
    """phy writes 'unsorted' for clusters nobody curated: Kilosort's label stands."""
    for folder in two_ks4:
        (folder / "cluster_group.tsv").write_text("cluster_id\tgroup\n0\tunsorted\n"
                                                  "1\tnoise\n2\tgood\n")
    out = import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)
    assert [r["original_unit_id"] for r in read_source(out)] == ["0", "2"] * 2


# --------------------------------------------------------------------------------------------
# bombcell
# --------------------------------------------------------------------------------------------

def write_bombcell_labels(folder, labels):
    """cluster_bc_unitType.tsv written by bombcell itself: save_utils.save_quality_metric_tsv,
    called as bombcell's save step calls it (unit types GOOD, MUA, NOISE, NON-SOMA, ...)."""
    save_utils = pytest.importorskip("bombcell.save_utils")
    save_utils.save_quality_metric_tsv(np.array(labels), np.arange(len(labels)), str(folder),
                                       "cluster_bc_unitType.tsv",
                                       ("cluster_id", "bc_unitType"))


def test_bombcell_labels_select_units(tmp_path):
    folders = []
    for day, labels in ((1, ["GOOD", "NOISE", "MUA"]), (2, ["NON-SOMA", "GOOD", "GOOD"])):
        folder = tmp_path / f"day{day}"
        write_kilosort4(folder, folder / "data.bin", "data.bin", seed=day)
        write_bombcell_labels(folder, labels)
        folders.append(folder)
    ids = lambda out: [(r["session"], r["original_unit_id"]) for r in read_source(out)]
    out = import_phy(folders, tmp_path / "good", units="bombcell_good", gain_uv=1.0)
    assert ids(out) == [("1", "0"), ("2", "1"), ("2", "2")]
    out = import_phy(folders, tmp_path / "not_noise", units="bombcell_all_but_noise",
                     gain_uv=1.0)
    assert ids(out) == [("1", "0"), ("1", "2"), ("2", "0"), ("2", "1"), ("2", "2")]
    # Kilosort's own labels are still the default
    out = import_phy(folders, tmp_path / "ks", gain_uv=1.0)
    assert ids(out) == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    (folders[1] / "cluster_bc_unitType.tsv").unlink()
    with pytest.raises(KilomatchError, match=r"session 2 .*bombcell_good.*"
                                             r"cluster_bc_unitType.tsv is missing"):
        import_phy(folders, tmp_path / "x", units="bombcell_good", gain_uv=1.0)


# --------------------------------------------------------------------------------------------
# Clear errors: every failure a real folder can cause names the session and the file
# --------------------------------------------------------------------------------------------

@pytest.fixture
def two_ks4(tmp_path):
    folders = []
    for day in (1, 2):
        folder = tmp_path / f"day{day}"
        write_kilosort4(folder, folder / "data.bin", "data.bin", seed=day)
        folders.append(folder)
    return folders


def test_error_truncated_bin(tmp_path, two_ks4):
    raw = two_ks4[1] / "data.bin"
    size = raw.stat().st_size
    with open(raw, "r+b") as f:
        f.truncate(size - 7)               # a copy cut off mid-sample
    with pytest.raises(KilomatchError, match=r"session 2 .*data.bin holds \d+ bytes, not a "
                                             r"whole number of samples"):
        import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)
    with open(raw, "r+b") as f:
        f.truncate(size // 2 // 26 * 26)   # cut off at a whole sample: spikes past its end
    with pytest.raises(KilomatchError, match=r"session 2 .*spike_times.npy runs to sample "
                                             r"\d+ .*data.bin holds \d+ samples"):
        import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)


@pytest.mark.parametrize("dtype", ["int12", "object", "str", "<U4", "datetime64"])
def test_error_params_dtype(tmp_path, two_ks4, dtype):
    params = two_ks4[0] / "params.py"
    params.write_text(params.read_text().replace("'int16'", repr(dtype)))
    with pytest.raises(KilomatchError, match=r"session 1 .*params.py dtype .* is not a "
                                             r"numeric sample type"):
        import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)


def test_error_missing_raw_without_kilosort4_fallback(tmp_path, two_ks4):
    """No raw file anywhere, and a Kilosort 2.5 folder (no kilosort4.log, no
    whitening_mat_dat.npy): refused, naming dat_path."""
    for name in ("data.bin", "kilosort4.log", "whitening_mat_dat.npy"):
        (two_ks4[0] / name).unlink()
    with pytest.raises(KilomatchError, match=r"session 1 .*dat_path 'data.bin' not found at "
                                             r".*not a Kilosort 4 output"):
        import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)


def test_unit_with_no_spikes_left_out(tmp_path, two_ks4, caplog):
    """KS4 labels every template; one left without spikes is left out with a warning."""
    for folder in two_ks4:
        for name in ("cluster_KSLabel.tsv", "cluster_group.tsv"):
            with open(folder / name, "a") as f:
                f.write("3\tgood\n")
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        out = import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)
    assert "clusters 3, labelled in" in caplog.text and "no spike" in caplog.text
    assert [r["original_unit_id"] for r in read_source(out)] == ["0", "1"] * 2


def test_a_channel_left_out_of_one_map_is_padded(tmp_path, two_ks4, caplog):
    """Session 2 sorted with its last channel left out (its channel_map.npy and positions
    shorter): imported on the whole probe, that channel 0 in its units, the session named."""
    folder = two_ks4[1]
    np.save(folder / "channel_map.npy", np.arange(N_CH - 1, dtype=np.int32))
    pos = np.load(folder / "channel_positions.npy")
    np.save(folder / "channel_positions.npy", pos[:-1])
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        out = import_phy(two_ks4, tmp_path / "out", gain_uv=1.0)
    assert re.search(r"session 2 \(.*day2\): its channel map leaves out 1 of the 12 channels",
                     caplog.text)
    data = load_dataset(out)
    assert data.waveforms.shape[1] == N_CH
    second = np.asarray(data.waveforms[data.session_index == 2])
    assert np.all(second[:, -1] == 0) and np.all(np.ptp(second[:, 0], axis=1) > 0)


def test_same_channels_in_another_order_are_reordered(tmp_path, two_ks4, caplog):
    """Session 2 sorted with a channel map listing the same channels in another order: its
    waveforms are put in session 1's channel order."""
    plain = load_dataset(import_phy(two_ks4, tmp_path / "plain", gain_uv=1.0))
    folder = two_ks4[1]
    order = np.random.default_rng(0).permutation(N_CH)
    for name in ("channel_map.npy", "channel_positions.npy"):
        np.save(folder / name, np.load(folder / name)[order])
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        data = load_dataset(import_phy(two_ks4, tmp_path / "out", gain_uv=1.0))
    assert "session 2" in caplog.text and "reordered by position" in caplog.text
    assert np.array_equal(data.channel_locations, plain.channel_locations)
    assert np.allclose(data.waveforms, plain.waveforms, atol=1e-4)


@pytest.mark.parametrize("entry", [["import", "phy"], ["-m", "kilomatch.importers", "phy"]],
                         ids=["kilomatch_import", "python_m"])
def test_cli_errors_without_traceback(tmp_path, two_ks4, entry):
    with open(two_ks4[1] / "data.bin", "r+b") as f:
        f.truncate(1000)
    cmd = ([sys.executable, "-m", "kilomatch.cli"] + entry if entry[0] == "import"
           else [sys.executable] + entry)
    run = subprocess.run(cmd + [str(tmp_path / "out"), *map(str, two_ks4), "--gain-uv", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    last = run.stderr.splitlines()[-1]      # after the log's progress lines
    assert last.startswith("kilomatch: error: session 2") and "data.bin" in last
    assert "Traceback" not in run.stderr
    # the gain is asked for by its flag
    assert main(["phy", str(tmp_path / "out"), *map(str, two_ks4)]) == 2


# --------------------------------------------------------------------------------------------
# SpikeInterface: analyzers and export_to_phy, written by SpikeInterface itself
# --------------------------------------------------------------------------------------------

SI_GAIN = 0.5   # uV per bit of the int16 recordings below


@pytest.fixture(scope="module")
def si_recording():
    """SpikeInterface's ground-truth generator (its template model and noise) on a linear probe
    from probeinterface's generate_linear_probe, which has no shank ids; stored as int16 with a
    gain, two segments."""
    si = pytest.importorskip("spikeinterface.core")
    pi = pytest.importorskip("probeinterface")
    probe = pi.generate_linear_probe(num_elec=16, ypitch=20)
    probe.set_device_channel_indices(np.arange(16))
    assert probe.shank_ids is None
    rec, sorting = si.generate_ground_truth_recording(
        durations=[3.0, 2.0], sampling_frequency=FS, num_units=5, probe=probe, seed=3,
        noise_kwargs=dict(noise_levels=3.0, strategy="tile_pregenerated"))
    segs = [np.round(rec.get_traces(segment_index=k) / SI_GAIN).astype(np.int16)
            for k in range(2)]
    return segs, rec.channel_ids, probe, sorting


def si_int16(segs, channel_ids, probe, gain=True):
    si = pytest.importorskip("spikeinterface.core")
    rec = si.NumpyRecording(segs, sampling_frequency=FS, channel_ids=channel_ids)
    if gain:
        rec.set_channel_gains(SI_GAIN)
        rec.set_channel_offsets(0.0)
    attached = rec.set_probe(probe)        # a new recording before SI 0.104, in place after
    return rec if attached is None else attached


def si_analyzer(sorting, rec, *, in_uv=True):
    si = pytest.importorskip("spikeinterface.core")
    with _quiet():
        try:
            analyzer = si.create_sorting_analyzer(sorting, rec, format="memory", sparse=False,
                                                  return_in_uV=in_uv)
        except TypeError:  # SpikeInterface before 0.103 called it return_scaled
            analyzer = si.create_sorting_analyzer(sorting, rec, format="memory", sparse=False,
                                                  return_scaled=in_uv)
        analyzer.compute("random_spikes", max_spikes_per_unit=10000, seed=0)
        analyzer.compute("templates")
    return analyzer


@contextlib.contextmanager
def _quiet():
    """SpikeInterface's warnings (not serializable, progress) are not what is tested here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_spikeinterface_folder_zarr_segments_raw_units(tmp_path, si_recording, caplog):
    """One sorting saved twice: a binary-folder analyzer scaled to uV and a .zarr analyzer in
    raw units (return_in_uV=False), scaled on import by the gain_to_uV it saved. Two segments
    laid end to end; a probe without shank ids is one shank."""
    segs, channel_ids, probe, sorting = si_recording
    rec = si_int16(segs, channel_ids, probe)
    with _quiet():
        si_analyzer(sorting, rec).save_as(format="binary_folder", folder=tmp_path / "a")
        si_analyzer(sorting, rec, in_uv=False).save_as(format="zarr", folder=tmp_path / "b.zarr")
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        out = import_spikeinterface([tmp_path / "a", tmp_path / "b.zarr"], tmp_path / "out")
    assert "gain 0.5 uV per unit, from the recording's gain_to_uV" in caplog.text
    data = load_dataset(out)
    n = len(sorting.unit_ids)
    assert data.n_units == 2 * n and not (out / "channel_shanks.npy").exists()
    assert np.array_equal(data.channel_locations, np.asarray(probe.contact_positions))
    wf = np.asarray(data.waveforms)
    assert np.allclose(wf[:n], wf[n:], atol=1e-3) and np.ptp(wf) > 20
    first = segs[0].shape[0]
    for k, u in enumerate(sorting.unit_ids):
        expect = np.concatenate([sorting.get_unit_spike_train(u, segment_index=0),
                                 sorting.get_unit_spike_train(u, segment_index=1) + first])
        assert np.allclose(data.spike_times[k], expect / FS * 1000.0)
        assert np.allclose(data.spike_times[n + k], expect / FS * 1000.0)
    # --gain-uv overrides the saved gain
    out2 = import_spikeinterface([tmp_path / "a", tmp_path / "b.zarr"], tmp_path / "out2",
                                 gain_uv=1.0)
    assert np.allclose(np.asarray(load_dataset(out2).waveforms)[n:], wf[n:] * 2, atol=1e-3)


def test_spikeinterface_no_gain_and_empty_unit(tmp_path, si_recording, caplog):
    """A recording with no gain, templates in raw units: an error naming --gain-uv. A unit
    without spikes is left out with a warning."""
    si = pytest.importorskip("spikeinterface.core")
    segs, channel_ids, probe, sorting = si_recording
    with _quiet():
        si_analyzer(sorting, si_int16(segs, channel_ids, probe, gain=False), in_uv=False
                    ).save_as(format="binary_folder", folder=tmp_path / "nogain")
        si_analyzer(sorting, si_int16(segs, channel_ids, probe)).save_as(
            format="binary_folder", folder=tmp_path / "a")
    with pytest.raises(KilomatchError, match=r"session 2 \(.*nogain\): the analyzer's templates "
                                             r"are in raw units .*--gain-uv"):
        import_spikeinterface([tmp_path / "a", tmp_path / "nogain"], tmp_path / "out")
    trains = {u: [sorting.get_unit_spike_train(u, segment_index=k) for k in range(2)]
              for u in sorting.unit_ids}
    trains["silent"] = [np.array([], np.int64)] * 2
    with_empty = si.NumpySorting.from_unit_dict(
        [{u: t[k] for u, t in trains.items()} for k in range(2)], FS)
    with _quiet():
        si_analyzer(with_empty, si_int16(segs, channel_ids, probe)).save_as(
            format="binary_folder", folder=tmp_path / "empty")
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        out = import_spikeinterface([tmp_path / "a", tmp_path / "empty"], tmp_path / "out")
    assert "units silent have no spike" in caplog.text
    assert "silent" not in {r["original_unit_id"] for r in read_source(out)}
    assert load_dataset(out).n_units == 2 * len(sorting.unit_ids)


def test_export_to_phy_with_and_without_raw_copy(tmp_path, si_recording, monkeypatch):
    """phy folders written by spikeinterface.exporters.export_to_phy: with the raw copy
    (recording.dat) and without it (dat_path = the saved recording's own binary file).
    Every cluster is 'unsorted' there, so --units good finds none and says why."""
    si = pytest.importorskip("spikeinterface.core")
    exporters = pytest.importorskip("spikeinterface.exporters")
    # export_to_phy computes template similarity (similar_templates.npy, which kilomatch does
    # not read) with numba when installed: ~30 s of compiling per run on CI's cores. Its own
    # numpy version gives the same numbers.
    similarity = pytest.importorskip("spikeinterface.postprocessing.template_similarity")
    if hasattr(similarity, "_compute_similarity_matrix_numpy"):
        monkeypatch.setattr(similarity, "_compute_similarity_matrix",
                            similarity._compute_similarity_matrix_numpy)
    segs, channel_ids, probe, sorting = si_recording
    one = si.select_segment_sorting(sorting, 0)
    rec = si_int16(segs[:1], channel_ids, probe)
    with _quiet():
        saved = rec.save(folder=tmp_path / "rec", format="binary")
        analyzer = si_analyzer(one, saved)
        exporters.export_to_phy(analyzer, tmp_path / "phy_copy", copy_binary=True,
                                compute_amplitudes=False, compute_pc_features=False,
                                verbose=False)
        exporters.export_to_phy(analyzer, tmp_path / "phy_nocopy", copy_binary=False,
                                compute_amplitudes=False, compute_pc_features=False,
                                verbose=False)
    sessions = [tmp_path / "phy_copy", tmp_path / "phy_nocopy"]
    ext = analyzer.get_extension("templates")
    nbefore, nafter = ext.nbefore, ext.nafter
    out = import_phy(sessions, tmp_path / "out", units="all", gain_uv=SI_GAIN,
                     highpass_hz=None, n_before=nbefore, n_after=nafter)
    data = load_dataset(out)
    n = len(one.unit_ids)
    wf = np.asarray(data.waveforms)
    assert data.n_units == 2 * n and np.allclose(wf[:n], wf[n:])
    templates = ext.get_data(operator="average")          # (units, samples, channels) uV
    for k in range(n):
        t = templates[k].T - np.median(templates[k].T, axis=1, keepdims=True)
        assert corr(wf[k], t) > 0.99
        assert np.ptp(wf[k]) == pytest.approx(np.ptp(t), rel=0.05)
    assert np.allclose(data.spike_times[0],
                       one.get_unit_spike_train(one.unit_ids[0]) / FS * 1000.0)
    with pytest.raises(KilomatchError, match=r"session 1 .*no usable unit.*'unsorted'.*"
                                             r"--units all"):
        import_phy(sessions, tmp_path / "out2", gain_uv=SI_GAIN)
    # an in-memory recording exported without the copy leaves dat_path = None
    with _quiet():
        exporters.export_to_phy(si_analyzer(one, rec), tmp_path / "phy_none",
                                copy_binary=False, compute_amplitudes=False,
                                compute_pc_features=False, verbose=False)
    with pytest.raises(KilomatchError, match=r"session 2 .*phy_none.*not reachable \(params.py "
                                             r"names no dat_path"):
        import_phy([sessions[0], tmp_path / "phy_none"], tmp_path / "out3", units="all",
                   gain_uv=SI_GAIN)
