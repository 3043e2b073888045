"""End to end: simulated study in, tracked neurons and every output file out."""

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import kilomatch
from kilomatch import metrics, parallel
from kilomatch.curation import within_cluster_pairs
from kilomatch.simulate import simulate_to_folder

SIM = dict(n_sessions=4, n_neurons=70, probe="NP1", seed=3)


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim") / "data"
    simulate_to_folder(folder, **SIM)
    return folder


def _folder_state(folder: Path) -> dict:
    """Every entry under ``folder`` (hidden ones too) with its bytes; None for folders."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def sim_folder_state(sim_folder):
    """The input folder as simulated, before any run."""
    return _folder_state(sim_folder)


def _settings(data, out, **extra):
    tree = {"path_to_data": str(data), "output_folder": str(out), "n_jobs": 1,
            "motionEstimation": {"n_bootstrap": 200}, "clustering": {"match_probability": True}}
    for key, value in extra.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@pytest.fixture(scope="module")
def run_result(sim_folder, sim_folder_state, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return kilomatch.run(_settings(sim_folder, out)), out


def test_matches_ground_truth(run_result, sim_folder):
    """F1 of matched pairs >= 0.90 and precision >= 0.95 on a moderate-drift NP1 study.

    On this dataset kilomatch scores about F1 0.97 / precision 0.99 (seed 3). A broken stage
    (wrong motion sign, wrong channels, random clustering) drops F1 far below 0.9, while the
    margin absorbs harmless numeric differences between platforms and library versions.
    """
    result, _ = run_result
    gt = np.load(sim_folder / "gt_neuron.npy")
    scores = metrics.pair_scores(result.idx_cluster, gt, result.data.session_index)
    assert scores["f1"] >= 0.90, scores
    assert scores["precision"] >= 0.95, scores
    assert scores["n_conflicts"] == 0
    true_motion = np.load(sim_folder / "gt_motion.npy")
    assert metrics.motion_rms_error(result.motion.displacement(), true_motion) < 3.0


def test_outputs_plain_arrays_with_documented_shapes(run_result):
    """Every result loads with allow_pickle=False and has the shape the README gives."""
    result, out = run_result
    n, s = result.data.n_units, result.data.n_sessions
    load = lambda name: np.load(out / name, allow_pickle=False)  # noqa: E731
    idx = load("IdxCluster.npy")
    assert idx.shape == (n, 1)
    assert set(np.unique(idx)) <= {-1} | set(range(1, idx.max() + 1))
    assert np.array_equal(np.unique(idx[idx > 0]), np.arange(1, idx.max() + 1))
    assert load("motion.npy").shape == (s, 1)
    assert load("locations.npy").shape == (n, 3)
    assert load("waveforms.npy").shape == (n, 38, result.units.waveforms.shape[2])
    assert load("waveforms_corrected.npy").shape == load("waveforms.npy").shape
    assert load("waveform_channels.npy").shape == (n, 38)
    assert load("ClusterMatrix.npy").shape == (n, n)
    assert load("SimilarityMatrix.npy").shape == (n, n)
    assert load("SimilarityWeights.npy").shape == (2, 1)
    assert load("SimilarityThreshold.npy").shape == (1, 1)
    pairs = load("MatchedPairs.npy")
    assert np.all(idx[pairs[:, 0], 0] == idx[pairs[:, 1], 0])
    cm = load("ClusterMatrix.npy")
    assert np.array_equal(cm, cm.T)
    # Off-diagonal: the matched pairs both ways; diagonal: units that are in a cluster.
    assert cm.sum() == 2 * len(pairs) + (idx > 0).sum()
    for name in ("Output.npz", "ClusteringResults.npz", "CurationResults.npz",
                 "CandidatePairs.npz"):
        with np.load(out / name, allow_pickle=False) as z:
            for key in z.files:
                assert z[key].dtype != object
    with np.load(out / "Output.npz") as z:
        assert np.array_equal(z["IdxCluster"], idx.ravel())
    with np.load(out / "CurationResults.npz") as z:
        # The split used the equal-prior threshold (default): below the LDA's own threshold,
        # since matches are the rarer class; every removed pair has a listed reason.
        assert list(z["reason_names"]) == ["same_session_conflict", "split_below_threshold",
                                           "split_at_position_gap",
                                           "split_average_probability", "split_at_distance",
                                           "split_at_succession", "split_at_amplitude_step",
                                           "split_unlinked", "split_at_similarity_step",
                                           "split_at_amplitude", "split_at_low_probability",
                                           "split_lone_end", "split_at_time_gap",
                                           "split_at_rate", "split_at_rate_step",
                                           "moved_to_other_cluster",
                                           "split_amplitude_outlier"]
        assert z["split_threshold"] < load("SimilarityThreshold.npy")[0, 0]
        assert str(z["split_on"]) == "similarity"
        # the step of amplitude that cut clusters in time: a ratio of amplitudes (not its log),
        # 1.5 at least (curation.AMPLITUDE_STEP_MIN_FACTOR)
        assert 1.5 <= float(z["amplitude_step"]) < 10
        # Curation took pairs apart on this study (else nothing below is checked), and the
        # removed pairs are exactly those together before curation and apart after it, each
        # listed once with a known reason.
        removed, reason = z["removed_pairs"], z["removed_reason"]
        assert len(removed) > 0 and reason.shape == (len(removed),)
        assert set(reason.tolist()) <= {0, 1, 2}
        before = z["IdxCluster_before"]
        assert np.array_equal(z["IdxCluster"], idx.ravel())
        # the sorter-split test covers every same-session pair of a cluster before curation
        tested = z["sorter_split_tested"]
        sess = result.data.session_index
        assert np.all(sess[tested[:, 0]] == sess[tested[:, 1]])
        assert np.all(before[tested[:, 0]] == before[tested[:, 1]])
        for key in ("sorter_split_coincidences", "sorter_split_expected",
                    "sorter_split_posterior", "sorter_split"):
            assert z[key].shape == (len(tested),)
        kept_split = z["sorter_split_pairs"]
        assert np.all(sess[kept_split[:, 0]] == sess[kept_split[:, 1]])
        assert np.all(idx[kept_split[:, 0], 0] == idx[kept_split[:, 1], 0])

    def together(labels):
        return {tuple(p) for p in within_cluster_pairs(np.where(labels > 0, labels, -1))}

    taken_apart = together(before) - together(idx.ravel())
    assert len({tuple(p) for p in removed.tolist()}) == len(removed)
    assert {tuple(p) for p in removed.tolist()} == taken_apart
    lines = (out / "units.csv").read_text().splitlines()
    assert lines[0] == ("unit,session,cluster,x,y,z,amplitude,peak_channel,corrected_y,"
                        "match_confidence,split_with,duplicate_of,firing_rate_hz,noise_share,"
                        "footprint_amplitude")
    assert len(lines) == n + 1
    figures = sorted(p.name for p in (out / "Figures").glob("*.png"))
    assert figures == sorted(f"{k}.png" for k in ("UnitDepth", "Motion", "SimilarityFeatures",
                                                    "WeightedSimilarity", "MatchProbability",
                                                    "FeatureScatter",
                                                    "MatchProbability_calibration"))


def test_units_csv_reports_each_units_noise_share(run_result, sim_folder, true_noise_share):
    """units.csv's noise_share (what the match probability weighs the Waveform similarity
    against) is the simulator's own: its noise variance over each unit's variance on its 38
    channels of highest amplitude, within 15% for nine units in ten."""
    import csv

    from kilomatch.simulate import simulate
    _, out = run_result
    truth = true_noise_share(simulate(**SIM))[0]
    rows = list(csv.DictReader(open(out / "units.csv")))
    reported = np.array([float(r["noise_share"]) for r in rows])
    judged = truth > 0.005  # the column has 3 decimals
    assert judged.sum() > 20
    assert np.mean(np.abs(reported[judged] / truth[judged] - 1) < 0.15) >= 0.9


def test_units_csv_reports_each_units_firing_rate(run_result, sim_folder):
    """units.csv's firing_rate_hz (what autoCuration.rate_split reads) is the unit's spike
    count over its session's span, from the earliest to the latest spike of any unit of that
    session; with the simulator's sessions of 600 s that is within 1% of the count over 600
    s."""
    import csv
    _, out = run_result
    rows = list(csv.DictReader(open(out / "units.csv")))
    session = np.load(sim_folder / "session_index.npy").ravel()
    spikes = [np.load(sim_folder / "spike_times" / f"Unit{k}.npy") for k in range(len(rows))]
    span = {s: max(t[-1] for t, q in zip(spikes, session) if q == s)
            - min(t[0] for t, q in zip(spikes, session) if q == s) for s in set(session)}
    expected = np.array([1000.0 * len(t) / span[q] for t, q in zip(spikes, session)])
    reported = np.array([float(r["firing_rate_hz"]) for r in rows])
    np.testing.assert_allclose(reported, expected, atol=0.0005)
    np.testing.assert_allclose(reported, [len(t) / 600.0 for t in spikes], rtol=0.01)


def test_probability_is_calibrated_on_a_simulated_study(run_result, sim_folder):
    """Among candidate pairs given probability in [a, b), the share of true matches lies in
    [a - 0.05, b + 0.05] for each decile bin holding >= 50 pairs (issue 12, item 3); the
    estimated share of matches is within 0.03 of the true one."""
    result, _ = run_result
    gt = np.load(sim_folder / "gt_neuron.npy")
    pairs = result.final.pairs
    truth = gt[pairs[:, 0]] == gt[pairs[:, 1]]
    links = result.curated.links
    bins = metrics.calibration_bins(links.candidate_probability, truth)
    judged, misses = metrics.calibration_misses(bins)
    assert judged >= 2, bins
    assert not misses, misses
    assert abs(links.model.prior - truth.mean()) < 0.03


def test_probability_calibrated_to_the_clusters_changes_no_cluster(run_result, sim_folder,
                                                                   tmp_path):
    """clustering.calibrate_to_clusters maps the reported probability only: the clusters and
    the curation's record are those of the pair probability, which stays as
    pair_probability (what the run without the map reports as probability)."""
    result, out = run_result
    off = kilomatch.run(_settings(sim_folder, tmp_path, **{"clustering.calibrate_to_clusters":
                                                           False}))
    np.testing.assert_array_equal(off.idx_cluster, result.idx_cluster)
    on_pairs, off_pairs = (np.load(d / "CandidatePairs.npz") for d in (out, tmp_path))
    np.testing.assert_array_equal(on_pairs["pair_probability"], off_pairs["probability"])
    np.testing.assert_array_equal(off_pairs["pair_probability"], off_pairs["probability"])
    assert not np.array_equal(on_pairs["probability"], on_pairs["pair_probability"])
    on_cur, off_cur = (np.load(d / "CurationResults.npz") for d in (out, tmp_path))
    np.testing.assert_array_equal(on_cur["removed_probability"], off_cur["removed_probability"])
    # the same weakest link per unit, read in the reported probability
    p, pairs = on_pairs["probability"], on_pairs["pairs"]
    idx = result.idx_cluster
    held = (idx[pairs[:, 0]] == idx[pairs[:, 1]]) & (idx[pairs[:, 0]] > 0)
    conf = result.curated.links.match_confidence
    for unit in np.flatnonzero(np.isfinite(conf))[:50]:
        mine = held & ((pairs[:, 0] == unit) | (pairs[:, 1] == unit))
        assert np.isclose(conf[unit], p[mine].min(), atol=1e-6)


def test_probability_split_needs_enough_known_non_matches(sim_folder, tmp_path, monkeypatch,
                                                           caplog):
    """autoCuration.probability_split is asked for only where the probability was fitted on
    probability_split_min_non_matches known non-matches or more, and the log says when not."""
    from kilomatch import curation
    asked = []
    split = curation.split_by_probability

    def recorded(labels, *args, **kwargs):
        asked.append(len(labels))
        return split(labels, *args, **kwargs)

    monkeypatch.setattr(curation, "split_by_probability", recorded)
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        kilomatch.run(_settings(sim_folder, tmp_path / "few", **{
            "autoCuration.probability_split": True,
            "autoCuration.probability_split_min_non_matches": 10 ** 9}))
    assert not asked
    assert "probability_split not used" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        kilomatch.run(_settings(sim_folder, tmp_path / "any", **{
            "autoCuration.probability_split": True,
            "autoCuration.probability_split_min_non_matches": 0}))
    assert asked
    assert "probability_split not used" not in caplog.text


def test_curation_records_why_with_the_probability(run_result):
    """Each removed pair carries its match probability; pairs kept by the probability were
    together before curation and stay together."""
    _, out = run_result
    with np.load(out / "CurationResults.npz") as z:
        removed, p, kept = z["removed_pairs"], z["removed_probability"], z["kept_pairs"]
        before, idx = z["IdxCluster_before"], z["IdxCluster"]
        level = float(z["cut_probability"])
    assert p.shape == (len(removed),) and np.all((p >= 0) & (p <= 1))
    assert 0.02 <= level < 1
    assert kept.ndim == 2 and kept.shape[1] == 2
    assert np.all(before[kept[:, 0]] == before[kept[:, 1]])
    assert np.all((idx[kept[:, 0]] == idx[kept[:, 1]]) & (idx[kept[:, 0]] > 0))


def test_curation_records_each_removed_pairs_distance_ratio(run_result):
    """Each removed pair carries its distance over the spread of matches at its amplitudes
    (CurationResults.npz removed_distance_ratio); the groups taken apart by the split at
    distance lie above autoCuration.split_distance_ratio on average."""
    result, out = run_result
    with np.load(out / "CurationResults.npz") as z:
        removed, ratio = z["removed_pairs"], z["removed_distance_ratio"]
        reason, names = z["removed_reason"], list(z["reason_names"])
    assert ratio.shape == (len(removed),) and np.all(ratio >= 0)
    at_distance = reason == names.index("split_at_distance")
    if at_distance.any():
        assert ratio[at_distance].mean() > result.settings.autoCuration.split_distance_ratio


def test_sparse_pairs_agree_with_dense_matrix(run_result):
    """SimilarityMatrix holds exactly the candidate pairs' weighted similarity, NaN elsewhere."""
    _, out = run_result
    dense = np.load(out / "SimilarityMatrix.npy")
    with np.load(out / "CandidatePairs.npz") as z:
        pairs, sim = z["pairs"], z["similarity"]
    assert np.allclose(dense[pairs[:, 0], pairs[:, 1]], sim)
    assert np.isfinite(dense).sum() == 2 * len(pairs)


def test_probability_outputs_agree(run_result):
    """CandidatePairs.probability, MatchTable.csv and units.csv's match_confidence tell the
    same story as the final clusters."""
    import csv
    result, out = run_result
    idx = np.load(out / "IdxCluster.npy")[:, 0]
    with np.load(out / "CandidatePairs.npz") as z:
        pairs, p, final = z["pairs"], z["probability"], z["same_cluster_final"]
        pair_p = z["pair_probability"]
    assert p.shape == (len(pairs),) and np.all((p >= 0) & (p <= 1))
    # pairs the final clusters join are mostly probable ones, and vice versa
    assert np.median(p[final]) > 0.5 and np.median(p[~final]) < 0.5
    rows = list(csv.DictReader(open(out / "MatchTable.csv")))
    # PETH is evidence only where clustering.features lists it (not by default)
    assert list(rows[0]) == ["unit_a", "unit_b", "session_a", "session_b", "probability",
                             "pair_probability", "Waveform", "AutoCorr", "ISI", "Shape",
                             "distance_um", "dy_um", "amplitude_a_uv", "amplitude_b_uv",
                             "same_final_cluster"]
    assert len(rows) == int(((p >= 0.05) | (pair_p >= 0.05)).sum())
    units = list(csv.DictReader(open(out / "units.csv")))
    for row in rows[:50]:
        a, b = int(row["unit_a"]), int(row["unit_b"])
        assert (row["same_final_cluster"] == "yes") == (idx[a] == idx[b] and idx[a] > 0)
        # each unit's own amplitude, as units.csv has it
        assert (row["amplitude_a_uv"], row["amplitude_b_uv"]) == (
            units[a]["amplitude"], units[b]["amplitude"])
    conf = np.array([float(u["match_confidence"]) for u in units])
    assert np.array_equal(np.isnan(conf), idx <= 0)
    assert np.all(conf[idx > 0] >= 0) and np.all(conf[idx > 0] <= 1)


def test_probability_method_clusters_by_probability(sim_folder, run_result, tmp_path):
    """clustering.method 'probability': the clusters and their curation rest on the
    probability (same probability as the default run, which only reports it), and the
    result still matches the ground truth."""
    _, out1 = run_result
    out = tmp_path / "out"
    result = kilomatch.run(_settings(sim_folder, out, **{"clustering.method": "probability"}))
    assert result.curated.links.made_clusters
    with np.load(out / "CandidatePairs.npz") as z, np.load(out1 / "CandidatePairs.npz") as z1:
        # the same pair probability; the reported one reads each run's own clusters
        assert np.array_equal(z["pair_probability"], z1["pair_probability"])
    with np.load(out / "CurationResults.npz") as z:
        assert str(z["split_on"]) == "probability" and z["split_threshold"] == 0.5
        assert set(z["removed_reason"].tolist()) <= {0, 2, 3}
    gt = np.load(sim_folder / "gt_neuron.npy")
    scores = metrics.pair_scores(result.idx_cluster, gt, result.data.session_index)
    assert scores["f1"] >= 0.90 and scores["precision"] >= 0.95, scores


def _digest(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_byte_identical_reruns_whatever_n_jobs(sim_folder, run_result, tmp_path, monkeypatch):
    """Same input and settings give byte-identical result files, with 1 or 2 workers (worker
    processes for the units; threads for the pair similarities, the Kriging correction and the
    probability's scoring)."""
    from kilomatch import similarity
    _, out1 = run_result
    monkeypatch.setattr(parallel, "MIN_UNITS_PARALLEL", 0)  # force the worker processes (and the
    # correction's threads)
    monkeypatch.setattr(similarity, "MIN_PAIRS_THREADED", 0)  # and the threads
    out2 = tmp_path / "out2"
    tree = _settings(sim_folder, out2)
    tree["n_jobs"] = 2
    kilomatch.run(tree)
    a, b = _digest(out1), _digest(out2)
    for name in ("kilomatch_settings.json", "input_fingerprint.json"):  # hold folder and n_jobs
        a.pop(name), b.pop(name)
    a.pop("kilomatch.log"), b.pop("kilomatch.log")  # the log holds times
    assert a.keys() == b.keys()
    different = [name for name in a if a[name] != b[name]]
    assert not different


def test_byte_identical_whatever_the_machine_blas_threads(sim_folder, tmp_path):
    """The run sets BLAS's thread count itself (blas_threads 1), so a machine set to two
    threads writes the bytes of one set to one. With blas_threads 0 (the library's own count)
    Output.npz and the similarity files differ in their last bits."""
    from threadpoolctl import threadpool_limits
    digests = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            kilomatch.run(_settings(sim_folder, tmp_path / f"out{threads}"))
        digests.append(_digest(tmp_path / f"out{threads}"))
    a, b = digests
    for name in ("kilomatch_settings.json", "input_fingerprint.json", "kilomatch.log"):
        a.pop(name), b.pop(name)
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []


def test_depth_dependent_drift_is_corrected_with_default_settings(tmp_path):
    """A probe that drifts 0.02 um/um more in some sessions than in others (tens of um between
    its ends): with default settings the rounds take the linear motion, its slopes those of
    the simulation (kilomatch's slopes are relative to session 1), and motion_linear.npy is
    written; with waveformCorrection.linear_min_um 0 (and no bend, bend_min_um 0, which
    would follow the slope itself) the motion stays rigid and no motion_linear.npy is
    written."""
    data = tmp_path / "data"
    simulate_to_folder(data, **{**SIM, "linear_drift": 0.02})
    truth = np.load(data / "gt_motion_linear.npy")
    result = kilomatch.run(_settings(data, tmp_path / "out"))
    assert result.motion.linear
    np.testing.assert_allclose(result.motion.slope, truth - truth[0], atol=0.002)
    assert np.load(tmp_path / "out" / "motion_linear.npy").shape == (SIM["n_sessions"], 2)
    rigid = kilomatch.run(_settings(data, tmp_path / "rigid",
                                    **{"waveformCorrection.linear_min_um": 0,
                                       "waveformCorrection.bend_min_um": 0}))
    assert not rigid.motion.linear
    assert not (tmp_path / "rigid" / "motion_linear.npy").exists()


def test_run_log_beside_results(run_result):
    """The output folder says how it was made: versions, the settings that differ from the
    defaults, the load, every step with its time and memory, the summary."""
    result, out = run_result
    text = (out / "kilomatch.log").read_text()
    assert f"versions: kilomatch {kilomatch.__version__}, Python " in text
    assert "n_jobs = 1" in text and "motionEstimation.n_bootstrap = 200" in text
    assert "clustering.max_distance =" not in text  # left at its default
    assert "loaded" in text and "done:" in text
    for row in result.stages:
        assert re.search(rf"step {row['stage']}: \d+\.\d s \(CPU \d+\.\d s\), peak memory so "
                         r"far \d", text)
        assert 0 <= row["cpu_seconds"]
    assert [row["stage"] for row in result.stages] == [
        "load", "features", "motion rounds", "final clustering", "match probability",
        "curation", "export", "figures"]


def test_input_folder_untouched(sim_folder, sim_folder_state, run_result):
    """The run only reads the input folder: no file added (temporary ones are named
    '.{name}.tmp{pid}'), changed or removed."""
    assert _folder_state(sim_folder) == sim_folder_state


def test_missing_peth_said_once_and_run_goes_on(sim_folder, tmp_path, caplog):
    """PETH listed but no peth.npy: one message, and the run completes without PETH."""
    data = tmp_path / "nopeth"
    data.mkdir()
    for p in sim_folder.iterdir():
        if p.name != "peth.npy":
            (data / p.name).symlink_to(p)
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run(_settings(data, tmp_path / "out"))
    notes = [r for r in caplog.records if "without PETH" in r.getMessage()]
    assert len(notes) == 1
    assert all("PETH" not in r.feature_names for r, _ in result.rounds)
    assert (tmp_path / "out" / "Output.npz").is_file()


def test_killed_run_leaves_nothing_that_looks_complete(sim_folder, tmp_path, monkeypatch):
    """A failure half way through writing: no Output.npz, no half-written file, and the
    earlier run's results are not left looking current."""
    out = tmp_path / "out"
    kilomatch.run(_settings(sim_folder, out))
    assert (out / "Output.npz").is_file()
    from kilomatch import export
    real = export.save_npz

    def failing(path, arrays):
        if Path(path).name == "CurationResults.npz":
            raise OSError("disk full (injected)")
        return real(path, arrays)

    monkeypatch.setattr(export, "save_npz", failing)
    with pytest.raises(OSError, match="injected"):
        kilomatch.run(_settings(sim_folder, out))
    names = {p.name for p in out.iterdir()}
    assert "Output.npz" not in names
    assert "CurationResults.npz" not in names
    assert not [n for n in names if ".tmp" in n]
    monkeypatch.setattr(export, "save_npz", real)
    kilomatch.run(_settings(sim_folder, out))  # a rerun replaces everything cleanly
    assert (out / "Output.npz").is_file()


def test_cli_bad_settings_exit_code_and_message(tmp_path):
    """Bad settings: exit status 2, the message on stderr, no traceback."""
    path = tmp_path / "settings.json"
    path.write_text('{"clustering": {"max_distanse": 50}}')
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "mainKilomatch.py"),
                           str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "clustering.max_distance" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_input_lists_problems_and_debug_shows_traceback(tmp_path):
    """A bad data folder: exit 2 with every problem named; --debug shows the traceback."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "spike_times").mkdir()
    settings = tmp_path / "settings.json"
    settings.write_text('{"path_to_data": "data", "output_folder": "out"}')
    main = str(Path(__file__).parents[1] / "mainKilomatch.py")
    proc = subprocess.run([sys.executable, main, str(settings)], capture_output=True, text=True)
    assert proc.returncode == 2
    for name in ("waveform_all.npy", "channel_locations.npy", "session_index.npy"):
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # checks come before any work or output
    proc = subprocess.run([sys.executable, main, str(settings), "--debug"], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "KilomatchError" in proc.stderr


def test_command_line_sets_up_the_garbage_collector(tmp_path):
    """The command line (main() of the process, sys.argv) raises the garbage collector's
    thresholds and freezes its objects before the process exits, so the exit does not
    traverse them; main() called with arguments from Python (a test, a notebook) leaves the
    collector as it was."""
    code = ("import gc, sys; from kilomatch.cli import main; before = gc.get_threshold(); "
            "main(['no_such_settings.json']); print(gc.get_threshold() == before, "
            "gc.get_freeze_count()); sys.argv = ['kilomatch', 'no_such_settings.json']; "
            "code = main(); print(code, gc.get_threshold(), gc.get_freeze_count() > 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.stdout.splitlines() == ["True 0", "2 (10000, 10, 10) True"], proc.stderr


def test_plot_cluster_from_output_folder(run_result):
    """plot_cluster draws a tracked neuron from the output folder; an unknown id is named."""
    result, out = run_result
    ids, counts = np.unique(result.idx_cluster[result.idx_cluster > 0], return_counts=True)
    cluster = int(ids[np.argmax(counts)])
    fig = kilomatch.plot_cluster(out, cluster)
    titles = [ax.get_title() for ax in fig.axes]
    assert "ACG" in titles and "PETH" in titles and "depth per session" in titles
    depth_ax = fig.axes[titles.index("depth per session")]
    assert len(depth_ax.lines[1].get_xdata()) == counts.max()  # one point per unit
    with pytest.raises(kilomatch.KilomatchError, match="no cluster 99999"):
        kilomatch.plot_cluster(out, 99999)


def test_csv_tables_format_each_value_as_numpy_does(tmp_path):
    """units.csv and MatchTable.csv are written column by column; each cell is still the
    text of its numpy value: floats with 3 decimals (float32 as its float64 value, nan, inf,
    -0.0), integers, booleans and strings as str() gives them."""
    from kilomatch.export import save_units_csv
    columns = {
        "f64": np.array([0.0005, 2.0015, -0.0, np.nan, np.inf, 1e12 / 3]),
        "f32": np.array([0.1, 1.0005, -2.5, 3e-4, 7.0, 123456.789], dtype=np.float32),
        "int": np.array([0, -1, 2**40, 3, 4, 5], dtype=np.int64),
        "flag": np.array([True, False, True, True, False, False]),
        "text": np.array(["", "3;4", "a,b", "x", "y", 'q"z'], dtype=object)}
    save_units_csv(tmp_path / "t.csv", columns)
    rows = list(__import__("csv").reader(open(tmp_path / "t.csv", newline="")))
    assert rows[0] == list(columns)
    for r, row in enumerate(rows[1:]):
        assert row == [f"{c[r]:.3f}" if c.dtype.kind == "f" else str(c[r])
                       for c in columns.values()]


@pytest.mark.parametrize("seed", [0, 1])
def test_match_probability_figure_counts_units_matched_in_each_other_session(seed):
    """MatchProbability.png's matrix: entry (a, b) counts the units of session a whose cluster
    has a unit in session b (a sorter split's two halves both count), brute force over units;
    zero diagonal; untracked units never count."""
    from kilomatch.figures import matched_units_by_session
    rng = np.random.default_rng(seed)
    n_sessions = 5
    session = rng.integers(0, n_sessions, 120)
    idx = rng.integers(-2, 30, 120)
    idx[idx < 1] = -1
    expect = np.zeros((n_sessions, n_sessions))
    for u in range(120):
        for b in range(n_sessions):
            if idx[u] > 0 and b != session[u] and np.any((idx == idx[u]) & (session == b)):
                expect[session[u], b] += 1
    np.testing.assert_array_equal(matched_units_by_session(idx, session, n_sessions), expect)


@pytest.mark.parametrize("n_jobs", [1, 2, -1])
def test_per_unit_work_in_this_process_runs_in_large_blocks(n_jobs):
    """Below MIN_UNITS_PARALLEL the per-unit work runs in this process, in blocks of
    IN_PROCESS_BLOCK (or a twentieth of the units, for the progress bar) whatever n_jobs is:
    the small blocks that share work among workers only repeated each block's fixed costs
    here (the location fit's iterations). Results in unit order."""
    sizes = []

    def work(values):
        sizes.append(len(values))
        return values * 2

    n = parallel.MIN_UNITS_PARALLEL - 1
    out = parallel.map_units(work, n, n_jobs, per_unit=(np.arange(n),))
    np.testing.assert_array_equal(out, np.arange(n) * 2)
    block = parallel.IN_PROCESS_BLOCK
    assert sizes == [block] * (n // block) + [n % block]
    sizes.clear()
    parallel.map_units(work, 200_000, 1, per_unit=(np.zeros(200_000),))
    assert sizes == [10_000] * 20


def test_spike_features_beside_the_waveform_read_are_the_same(sim_folder, tmp_path,
                                                              monkeypatch):
    """With two cores the ACGs and ISIs are computed in a thread while the waveforms are read
    (parallel.started); every unit feature is the one computed in line, and the thread did
    the work."""
    from kilomatch import pipeline
    data = pipeline.load_dataset(sim_folder)
    computed_in = []
    spike_features = pipeline._spike_features

    def recorded(*args, **kwargs):
        computed_in.append(threading.current_thread() is threading.main_thread())
        return spike_features(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_spike_features", recorded)
    made = []
    for n_jobs in (1, 2):
        s = kilomatch.settings.load(_settings(sim_folder, tmp_path / "out", n_jobs=n_jobs))
        made.append(pipeline.unit_features(data, s))
    assert computed_in[0] and not computed_in[-1]
    for name in ("acg", "isi", "locations", "amplitude", "peak_channel", "peak_waveform"):
        np.testing.assert_array_equal(getattr(made[0], name), getattr(made[1], name))
    np.testing.assert_array_equal(made[0].waveforms.values, made[1].waveforms.values)


def test_started_gives_the_result_or_the_error_of_its_thread():
    """parallel.started: the result computed in a thread of its own (or in line), and an
    exception raised there comes out of the call that asks for the result."""
    for background in (False, True):
        assert parallel.started(lambda: 41 + 1, background)() == 42

        def fails():
            raise ValueError("from the thread")

        get = parallel.started(fails, background)
        with pytest.raises(ValueError, match="from the thread"):
            get()


def test_locating_units_with_their_nearest_channels_given():
    """locate_units with the nearest channels found beforehand (once for every block) gives
    the positions it finds on its own."""
    from kilomatch import features
    rng = np.random.default_rng(3)
    locs = np.column_stack([np.tile([16.0, 48.0], 40), np.repeat(np.arange(40) * 20.0, 2)])
    ptt = rng.uniform(1, 50, (30, 80)).astype(np.float32)
    peak = np.argmax(ptt, axis=1)
    near = features.nearest_channels(locs, peak, 12)
    np.testing.assert_array_equal(features.locate_units(ptt, locs, peak, 12, channels=near),
                                  features.locate_units(ptt, locs, peak, 12))


def test_corrected_waveforms_in_place_with_two_reference_probes(sim_folder, tmp_path):
    """in_place writes the last reference probe's correction over the units' window copy and
    gives the same corrected copies as making them apart: the first probe's correction
    still reads the original."""
    from kilomatch import pipeline
    s = kilomatch.settings.load(_settings(sim_folder, tmp_path / "out",
                                          **{"waveformCorrection.n_templates": 2}))
    data = pipeline.load_dataset(s.path_to_data)
    units = pipeline.unit_features(data, s)
    wc = s.waveformCorrection
    motion = pipeline.given_motion(np.linspace(-20.0, 20.0, data.n_sessions))
    apart, chans_apart = pipeline.corrected_waveforms(units, data.channel_locations, motion, wc)
    window = units.waveforms.values
    made, chans = pipeline.corrected_waveforms(units, data.channel_locations, motion, wc,
                                               in_place=True)
    assert made[1].values is window and made[0].values is not window
    for a, b in zip(apart, made):
        np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(chans_apart, chans)


def test_narrow_track_keeps_the_outputs_and_leaves_a_callers_units_alone(sim_folder, tmp_path):
    """track(narrow=True), as the pipeline runs it, keeps the waveforms on the written
    channels only once nothing compares them, and every written array is the same as with
    the whole windows kept; track's default leaves the caller's units untouched."""
    from kilomatch import pipeline
    from kilomatch.assemble import assemble
    s = kilomatch.settings.load(_settings(sim_folder, tmp_path / "out"))
    data = pipeline.load_dataset(s.path_to_data)
    rounds, final_names = pipeline.feature_rounds(s, data.peth is not None)
    arrays = []
    for narrow in (False, True):
        units = pipeline.unit_features(data, s)
        window = units.waveforms
        result = pipeline.track(data, units, s, rounds, final_names, narrow=narrow)
        n_near = s.waveformCorrection.n_nearest_channels
        if narrow:
            assert units.waveforms.values.shape[1] == n_near < window.values.shape[1]
            assert result.final.waveforms_corrected[0].values.shape[1] == n_near
        else:
            assert units.waveforms is window and window.values.shape[1] > n_near
        a = assemble(result)
        arrays.append((a.waveforms.copy(), a.waveforms_corrected.copy(), a.pairs.copy(),
                       a.probability.copy(), a.pair_similarities.copy()))
    for whole, narrow in zip(*arrays):
        np.testing.assert_array_equal(whole, narrow)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_returns_heap_blocks_to_the_system():
    """Blocks freed below glibc's mapping threshold stay in the process until released (the
    motion rounds left 0.8 GB so at 10^5 units); release_freed_memory hands them back."""
    code = """
import sys
import numpy as np
from kilomatch.pipeline import release_freed_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
big = np.ones(4_000_000); del big  # a freed mapping raises the threshold to 32 MB
blocks = [np.ones(1_000_000) for _ in range(60)]  # 8 MB each: from the heap now
last = blocks[-1]; del blocks
held = rss()
release_freed_memory()
print(held - rss())
"""
    # glibc's own settings fix the mapping threshold (dask's workers set
    # MALLOC_TRIM_THRESHOLD_, which earlier tests leave in this process's environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(kilomatch.__file__).parent.parent, check=True, env=env)
    assert int(out.stdout) > 300e6


def _double(values):
    return values * 2


def test_release_workers_stops_the_processes_map_units_started():
    """Worker processes map_units started are gone after release_workers (joblib would keep
    them, and their memory, for 300 s); their results are the ones in this process."""
    psutil = pytest.importorskip("psutil")

    def workers():  # not joblib's resource trackers, which stay (a few MB)
        out = []
        for c in psutil.Process().children(recursive=True):
            try:
                if "LokyProcess" in " ".join(c.cmdline()) and c.status() != "zombie":
                    out.append(c)
            except psutil.NoSuchProcess:
                pass
        return out

    n = parallel.MIN_UNITS_PARALLEL
    out = parallel.map_units(_double, n, 2, per_unit=(np.arange(n),))
    np.testing.assert_array_equal(out, np.arange(n) * 2)
    assert workers()
    parallel.release_workers()
    assert not workers()


def test_export_writes_output_npz_after_every_other_file_and_stops_on_a_writer_error(
        run_result, tmp_path, monkeypatch):
    """The result files are written in threads (export._FileWriters); Output.npz, whose
    presence marks a complete run, is still begun only once every other file is in place,
    and a file that cannot be written stops the export before Output.npz, with its error."""
    import copy
    import threading

    from kilomatch import export
    from kilomatch.assemble import assemble
    result, _ = run_result
    result = copy.copy(result)
    result.settings = result.settings.replace(output_folder=str(tmp_path / "again"))
    result.settings.output_folder.mkdir()
    finished, started_output, lock = [], [], threading.Lock()
    real = export._atomic_write

    def recording(path, writer):
        if path.name == "Output.npz":
            started_output.append(list(finished))
        real(path, writer)
        with lock:
            finished.append(path.name)

    monkeypatch.setattr(export, "_atomic_write", recording)
    written = export.write_all(result, assemble(result))
    assert written[-1].name == "Output.npz"
    others = {p.name for p in written[:-1] if p.suffix in (".npy", ".npz")}
    assert started_output and others <= set(started_output[0])

    def failing(path, writer):
        if path.name == "CandidatePairs.npz":
            raise OSError("disk full")
        real(path, writer)

    (result.settings.output_folder / "Output.npz").unlink()
    monkeypatch.setattr(export, "_atomic_write", failing)
    with pytest.raises(OSError, match="disk full"):
        export.write_all(result, assemble(result))
    assert not (result.settings.output_folder / "Output.npz").exists()


def test_shape_is_the_peak_channels_waveform_as_recorded(sim_folder, tmp_path):
    """The probability's Shape evidence compares each unit's mean waveform on its own peak
    channel, as recorded (no Kriging: a session at another phase of the channel grid
    keeps its temporal shape there, while its interpolated footprint differs): the Pearson
    r of the two units' peak-channel waveforms, as a Fisher z."""
    from kilomatch import pipeline
    from kilomatch.similarity import fisher_z
    s = kilomatch.settings.load(_settings(sim_folder, tmp_path / "out"))
    data = pipeline.load_dataset(s.path_to_data)
    units = pipeline.unit_features(data, s)
    raw = np.load(sim_folder / "waveform_all.npy")
    ptt = raw.max(axis=2) - raw.min(axis=2)
    peak = ptt.argmax(axis=1)
    np.testing.assert_array_equal(units.peak_waveform, raw[np.arange(len(raw)), peak])
    pairs = np.array([[0, 1], [2, 7], [5, 3]])
    got = pipeline.pair_similarities(units, ["Shape"], pairs, units.locations[:, 1])[:, 0]
    expect = [np.corrcoef(raw[a, peak[a]], raw[b, peak[b]])[0, 1] for a, b in pairs]
    np.testing.assert_allclose(got, fisher_z(np.array(expect)), rtol=1e-6, atol=1e-9)
    # a subset of units keeps each one's own
    part = pipeline.subset_units(units, np.array([4, 2]))
    np.testing.assert_array_equal(part.peak_waveform, units.peak_waveform[[4, 2]])
    # units made by hand without it: one clear message, not a traceback from numpy
    units.peak_waveform = None
    with pytest.raises(kilomatch.KilomatchError, match="peak_waveform"):
        pipeline.pair_similarities(units, ["Shape"], pairs, units.locations[:, 1])


def test_curation_compares_the_footprint_amplitudes_units_csv_reports(sim_folder, tmp_path,
                                                                     monkeypatch):
    """The curation's comparisons of amplitude (its steps and gaps, the joins' guards) read
    each unit's footprint amplitude, the one units.csv reports as footprint_amplitude, and its
    signal-to-noise reads the peak channel's (units.csv amplitude): the footprint is steady
    where a neuron's place against the channel grid changes its peak by 2-3x."""
    import csv
    from kilomatch import curation, joining
    seen = {}
    curate, join = curation.curate, joining.join_by_probability

    def recorded_curate(*args, compared_amplitude=None, **kwargs):
        seen["peak"], seen["curate"] = args[16], compared_amplitude
        return curate(*args, compared_amplitude=compared_amplitude, **kwargs)

    def recorded_join(*args, **kwargs):
        seen["join"] = args[10]
        return join(*args, **kwargs)

    monkeypatch.setattr(curation, "curate", recorded_curate)
    monkeypatch.setattr(joining, "join_by_probability", recorded_join)
    out = tmp_path / "out"
    kilomatch.run(_settings(sim_folder, out))
    with open(out / "units.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    footprint = np.array([float(r["footprint_amplitude"]) for r in rows])
    peak = np.array([float(r["amplitude"]) for r in rows])
    assert not np.allclose(footprint, peak, rtol=0.05)
    np.testing.assert_allclose(seen["curate"], footprint, rtol=1e-3)
    np.testing.assert_allclose(seen["peak"], peak, rtol=1e-3)
    np.testing.assert_allclose(seen["join"], curation.log_amplitude_of(footprint), atol=1e-3)
