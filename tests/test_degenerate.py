"""Degenerate but legal data runs to the end, with warnings that name the units involved."""

import logging
import re
import shutil

import numpy as np
import pytest

import kilomatch
from kilomatch.simulate import simulate_to_folder


def _run(data, out, caplog):
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run({"path_to_data": str(data), "output_folder": str(out), "n_jobs": 1,
                                "motionEstimation": {"n_bootstrap": 50}})
    return result, "\n".join(r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("degenerate") / "data"
    simulate_to_folder(folder, n_sessions=3, n_neurons=40, seed=11)
    return folder


def test_odd_units_and_a_lone_session(base, tmp_path, caplog):
    """Units with 0 and 1 spike, unsorted spikes, a flat waveform and an added session holding
    one unrelated unit: the run finishes, warns about each by unit or session, and the lone
    session's motion is left at the reference."""
    data = tmp_path / "data"
    shutil.copytree(base, data)
    np.save(data / "spike_times" / "Unit0.npy", np.array([]))
    np.save(data / "spike_times" / "Unit1.npy", np.array([12.5]))
    times = np.load(data / "spike_times" / "Unit4.npy")
    np.save(data / "spike_times" / "Unit4.npy", times[::-1].copy())
    wf = np.load(data / "waveform_all.npy")
    wf[2] = 0.0
    sessions = np.load(data / "session_index.npy")
    n = len(sessions)
    # One extra unit in a new session: a waveform far from everything, at the probe's top.
    extra = np.zeros((1,) + wf.shape[1:], np.float32)
    extra[0, -1, 20:30] = -80.0
    np.save(data / "waveform_all.npy", np.concatenate([wf, extra]))
    np.save(data / "session_index.npy", np.append(sessions, sessions.max() + 1))
    np.save(data / "spike_times" / f"Unit{n}.npy", np.sort(np.random.default_rng(0).uniform(0, 6e5, 500)))
    if (data / "peth.npy").exists():
        peth = np.load(data / "peth.npy")
        np.save(data / "peth.npy", np.vstack([peth, np.ones((1, peth.shape[1]))]))
    for name in ("gt_neuron.npy", "gt_motion.npy"):
        (data / name).unlink()

    result, log = _run(data, tmp_path / "out", caplog)
    assert "units 0, 1 have fewer than 2 spikes" in log
    assert "units 4" in log and "sorted" in log
    assert "units 2 have flat" in log
    lone = sessions.max() + 1
    assert f"sessions {lone} hold a single unit" in log
    assert f"sessions {lone} have no match chain" in log
    assert result.motion.displacement()[lone - 1] == 0.0
    assert result.idx_cluster[n] == -1
    assert (tmp_path / "out" / "Output.npz").is_file()


def test_nothing_matches_gives_empty_valid_outputs(tmp_path, caplog):
    """Two sessions whose units are 1 mm apart: no candidate pair, every unit unmatched, every
    output file written and readable."""
    data = tmp_path / "far"
    (data / "spike_times").mkdir(parents=True)
    locs = np.column_stack([np.tile([0.0, 32.0], 60), np.repeat(np.arange(60) * 20.0, 2)])
    wf = np.zeros((2, 120, 30), np.float32)
    wf[0, 4, 10:14] = -100
    wf[1, 110, 10:14] = -100
    np.save(data / "waveform_all.npy", wf)
    np.save(data / "channel_locations.npy", locs)
    np.save(data / "session_index.npy", np.array([1, 2]))
    rng = np.random.default_rng(1)
    for k in range(2):
        np.save(data / "spike_times" / f"Unit{k}.npy", np.sort(rng.uniform(0, 1e5, 300)))
    result, log = _run(data, tmp_path / "out", caplog)
    out = tmp_path / "out"
    assert np.all(np.load(out / "IdxCluster.npy") == -1)
    assert np.load(out / "MatchedPairs.npy").shape == (0, 2)
    with np.load(out / "CandidatePairs.npz") as z:
        assert z["pairs"].shape == (0, 2)
    assert np.all(np.load(out / "motion.npy") == 0)
    assert "no matched pairs" in log
    assert len(list((out / "Figures").glob("*.png"))) == 6
    assert result.summary["clusters"] == 0


def test_too_small_channel_window_is_named(base, tmp_path, caplog):
    """Motion plus max_distance plus the compared channels' reach beyond
    waveformCorrection.window_um: the windows are widened, with a line in the log; with
    widen_window off the run finishes and a warning names the setting and a value that
    fits; the default window gives neither."""
    for widen in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kilomatch"):
            kilomatch.run({"path_to_data": str(base), "output_folder": str(tmp_path / f"{widen}"),
                           "n_jobs": 1, "motionEstimation": {"n_bootstrap": 0},
                           "waveformCorrection": {"window_um": 150.0, "widen_window": widen}})
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert ("raise waveformCorrection.window_um to at least" in text) != widen
        assert ("channel windows widened from waveformCorrection.window_um = 150 um" in
                text) == widen
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kilomatch"):
        kilomatch.run({"path_to_data": str(base), "output_folder": str(tmp_path / "b"),
                       "n_jobs": 1, "motionEstimation": {"n_bootstrap": 0}})
    assert "window_um" not in "\n".join(r.getMessage() for r in caplog.records)


def _trains(folder):
    return [np.load(p) for p in sorted((folder / "spike_times").glob("Unit*.npy"))]


def test_spike_times_in_seconds_or_samples_are_named(base):
    from kilomatch.load import spike_time_unit_hint
    ms = _trains(base)
    assert spike_time_unit_hint(ms) is None
    assert "look like seconds" in spike_time_unit_hint([t / 1000 for t in ms])
    assert "look like samples" in spike_time_unit_hint([t * 30 for t in ms])
    # neurons firing slowly, but in ms, with some short intervals: no warning
    rng = np.random.default_rng(0)
    slow = []
    for _ in range(20):
        t = rng.uniform(0, 6e6, 300)  # 0.05 Hz for 100 min
        slow.append(np.sort(np.r_[t, t[:10] + 4.0]))  # 3% of intervals 4 ms (bursts)
    assert spike_time_unit_hint(slow) is None


def test_a_run_on_spike_times_in_seconds_warns(base, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(base, data)
    for path in (data / "spike_times").glob("Unit*.npy"):
        np.save(path, np.load(path) / 1000)
    _, log = _run(data, tmp_path / "out", caplog)
    assert f"{data}/spike_times: the spike times look like seconds, not ms" in log


def test_waveforms_in_volts_are_named(base, tmp_path, caplog):
    from kilomatch.load import amplitude_unit_hint
    assert amplitude_unit_hint(np.array([0.0, 40.0, 80.0, 300.0])) is None
    assert "look like V or mV" in amplitude_unit_hint(np.array([0.0, 4e-5, 8e-5, 3e-4]))
    data = tmp_path / "data"
    shutil.copytree(base, data)
    np.save(data / "waveform_all.npy", np.load(data / "waveform_all.npy") * 1e-6)
    _, log = _run(data, tmp_path / "out", caplog)
    assert f"{data}/waveform_all.npy: the waveforms look like V or mV, not uV" in log


def test_a_session_in_other_units_is_named(base, tmp_path, caplog):
    """One session's waveforms 5x the others' (ADC bits instead of uV) are named, with the
    factor; sessions within 1.5x of each other, as on every study at hand, are not."""
    from kilomatch.load import session_amplitude_hint
    session = np.repeat([1, 2, 3, 4], 20)
    amplitude = np.tile(np.linspace(40, 300, 20), 4)
    assert session_amplitude_hint(amplitude * np.array([1, 1.4, 0.7, 1])[session - 1],
                                  session) is None
    said = session_amplitude_hint(amplitude * np.array([1, 1, 5.13, 1])[session - 1], session)
    assert "session 3: 5.1x" in said and "session 1" not in said
    said = session_amplitude_hint(amplitude * np.array([0.2, 1, 1, 1])[session - 1], session)
    assert "session 1: 0.2x" in said
    data = tmp_path / "data"
    shutil.copytree(base, data)
    waveforms = np.load(data / "waveform_all.npy")
    index = np.load(data / "session_index.npy").ravel()
    waveforms[index == 2] *= 5.13
    np.save(data / "waveform_all.npy", waveforms)
    _, log = _run(data, tmp_path / "out", caplog)
    assert f"{data}/waveform_all.npy: the units of some sessions are far larger" in log
    # three sessions: the median of their medians is pulled up, to 3.4x here
    assert "(session 2: 3.4x the sessions' median" in log


def test_channel_positions_in_mm_are_refused(base, tmp_path):
    """Channel positions in mm (sites 0.016-0.04 apart) put every unit within
    max_distance of every other and read the probe as one site (F1 0.999 -> 0.19 on a suite
    study, with no warning): the load refuses them, naming the file and the fix."""
    data = tmp_path / "data"
    shutil.copytree(base, data)
    np.save(data / "channel_locations.npy", np.load(data / "channel_locations.npy") / 1000)
    with pytest.raises(kilomatch.KilomatchError, match=r"channel_locations.npy: neighbouring "
                                                       r"channels are 0.0\d+ apart.*mm"):
        kilomatch.run({"path_to_data": str(data), "output_folder": str(tmp_path / "out")})
    assert not (tmp_path / "out" / "Output.npz").exists()


def test_swapped_channel_columns_are_named(base, tmp_path, caplog):
    """x and y swapped (the probe 48 um deep and 3,840 um wide) is named; a probe of eight
    short shanks side by side, wider than deep as a whole but deeper than wide on each
    shank, is not."""
    from kilomatch.load import depth_axis_hint
    locs = np.load(base / "channel_locations.npy")
    assert depth_axis_hint(locs) is None
    assert "columns swapped" in depth_axis_hint(locs[:, ::-1])
    shank = np.repeat(np.arange(8), 12)
    short = np.column_stack([shank * 250.0 + np.tile([0.0, 32.0], 48),
                             np.tile(np.repeat(np.arange(6) * 15.0, 2), 8)])
    assert depth_axis_hint(short, shank) is None
    assert "columns swapped" in depth_axis_hint(short[:, ::-1], shank)
    data = tmp_path / "data"
    shutil.copytree(base, data)
    np.save(data / "channel_locations.npy", locs[:, ::-1].copy())
    _, log = _run(data, tmp_path / "out", caplog)
    assert f"{data}/channel_locations.npy: the channels span" in log


def _peak_amplitudes(base):
    """The base study's waveforms (N, C, T), peak-to-trough amplitudes (N, C), peak channels
    (N,) and channel positions (C, 2)."""
    wf = np.load(base / "waveform_all.npy")
    ptt = wf.max(axis=2) - wf.min(axis=2)
    return wf, ptt, ptt.argmax(axis=1), np.load(base / "channel_locations.npy")


def _named_with_locations(base, tmp_path, caplog, locations, said: list, not_said: str):
    """Run a copy of the base study whose channel_locations.npy is ``locations``, and the
    base study itself: each of ``said`` is in the first log, ``not_said`` not in the
    second. Returns the copy's folder."""
    data = tmp_path / "data"
    shutil.copytree(base, data)
    np.save(data / "channel_locations.npy", locations)
    _, log = _run(data, tmp_path / "out", caplog)
    for text in said:
        assert text in log
    caplog.clear()
    _, log = _run(base, tmp_path / "out_base", caplog)
    assert not_said not in log
    return data


def test_channel_positions_in_another_order_are_named(base, tmp_path, caplog):
    """Channel positions listed in another order than the waveforms' channels (F1 0.999 ->
    0.56 on a suite study, with no warning): the units' amplitude no longer falls with
    distance from their peak channel, and the log says so; in the right order it does. One
    session's waveforms on channels in another order (0.999 -> 0.82) is named by session."""
    from kilomatch.load import amplitude_falloff
    wf, ptt, peak, locs = _peak_amplitudes(base)
    order = np.random.default_rng(1).permutation(len(locs))
    assert np.nanmedian(amplitude_falloff(ptt, peak, locs)) > 0.3
    assert abs(np.nanmedian(amplitude_falloff(ptt, peak, locs[order]))) < 0.05
    data = _named_with_locations(
        base, tmp_path, caplog, locs[order],
        ["amplitude does not fall with distance from their peak channel",
         "channel_locations.npy likely lists the channels in another order"],
        "does not fall with distance")
    session = np.load(base / "session_index.npy").ravel()
    wf[session == 2] = wf[session == 2][:, order]
    np.save(data / "channel_locations.npy", locs)
    np.save(data / "waveform_all.npy", wf)
    caplog.clear()
    _, log = _run(data, tmp_path / "out_session", caplog)
    assert re.search(r"sessions 2 \(-?0\.0\d\): the units' amplitude does not fall", log)


def test_positions_mixed_up_between_neighbouring_channels_are_named(base, tmp_path, caplog):
    """Positions permuted within blocks of 8 channels (F1 0.999 -> 0.915 on a suite study,
    with no warning: the amplitude still falls from 50 um to 100-200 um): near its peak a
    unit's amplitude no longer falls with distance, and the log says so; in the right order
    it does not."""
    from kilomatch.load import local_order
    _, ptt, peak, locs = _peak_amplitudes(base)
    block = np.concatenate([k + np.random.default_rng(k).permutation(8)
                            for k in range(0, len(locs), 8)])
    assert np.nanmedian(local_order(ptt, peak, locs)) < -0.5
    assert np.nanmedian(local_order(ptt, peak, locs[block])) > -0.3
    _named_with_locations(
        base, tmp_path, caplog, locs[block],
        ["near their peak channel the units' amplitude does not fall with distance",
         "channel_locations.npy likely gives neighbouring channels each other's"],
        "near their peak channel")


def test_a_session_given_twice_is_named(base, tmp_path, caplog):
    """A study whose last session is a copy of another (the same files listed twice) tracks
    every unit of it into its copy, perfectly, with no word: the log names the two
    sessions; the study as simulated (no unit identical across sessions) is not named."""
    from kilomatch.load import repeated_sessions_hint
    wf = np.load(base / "waveform_all.npy")
    session = np.load(base / "session_index.npy").ravel()
    ptt = wf.max(axis=2) - wf.min(axis=2)
    assert repeated_sessions_hint(ptt, session - 1) is None
    data = tmp_path / "data"
    shutil.copytree(base, data)
    copy = np.flatnonzero(session == 2)
    np.save(data / "waveform_all.npy", np.concatenate([wf, wf[copy]]))
    np.save(data / "session_index.npy", np.concatenate([session, np.full(copy.size, 4)]))
    for k, unit in enumerate(copy, len(session)):
        shutil.copy(data / "spike_times" / f"Unit{unit}.npy",
                    data / "spike_times" / f"Unit{k}.npy")
    for name in ("peth.npy", "gt_neuron.npy", "gt_locations.npy"):
        if (data / name).exists():
            values = np.load(data / name)
            np.save(data / name, np.concatenate([values, values[copy]]))
    _, log = _run(data, tmp_path / "out", caplog)
    assert f"sessions 2 and 4 ({copy.size} units) hold units with identical waveforms" in log


def test_units_sharing_one_spike_train_are_named(base, tmp_path, caplog):
    """Each session's spikes saved for every unit of it (a loop that saves the same array):
    every ACG of a session alike, precision 1.000 -> 0.881 on h_si_templates with no word. The
    log names the units; the study as simulated (no two trains alike) is not named."""
    from kilomatch.load import shared_spike_trains
    trains = _trains(base)
    assert not shared_spike_trains(trains).any()
    session = np.load(base / "session_index.npy").ravel()
    first = {s: int(np.flatnonzero(session == s)[0]) for s in np.unique(session)}
    same = [trains[first[s]] for s in session]
    assert shared_spike_trains(same).all()
    data = tmp_path / "data"
    shutil.copytree(base, data)
    for k, t in enumerate(same):
        np.save(data / "spike_times" / f"Unit{k}.npy", t)
    _, log = _run(data, tmp_path / "out", caplog)
    assert f"units 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... ({len(same)} in all) have spike trains " \
           "identical to another unit's" in log


def test_a_sparse_study_whose_every_candidate_pair_is_one_neuron_keeps_its_clusters(tmp_path,
                                                                                  caplog):
    """15 neurons over 3.8 mm in 3 sessions: no two neurons lie within max_distance, so every
    candidate pair is a match and IHDBSCAN has no non-match to set its threshold against.
    Every clustered pair is then a good match: the run keeps all 18 true pairs (with an
    infinite threshold the curation split every cluster apart: 0 matched pairs)."""
    from kilomatch import metrics
    data = tmp_path / "sparse"
    simulate_to_folder(data, n_sessions=3, n_neurons=15, seed=10)
    result, log = _run(data, tmp_path / "out", caplog)
    assert "every candidate pair is in a cluster" in log
    scores = metrics.pair_scores(result.idx_cluster, np.load(data / "gt_neuron.npy"),
                                 np.load(data / "session_index.npy"))
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0


def _small_study(tmp_path, caplog, n_neurons, seed, settings=None, sessions=6):
    """A study of a few neurons (benchmarks/small_studies.py's shapes): its result, log, pair
    scores and CurationResults.npz."""
    from kilomatch import metrics
    data = tmp_path / f"small{seed}"
    if not data.exists():
        simulate_to_folder(data, n_sessions=sessions, n_neurons=n_neurons, duration_s=300.0,
                           seed=seed)
    out = tmp_path / f"out{seed}_{len(settings or {})}"
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        caplog.clear()
        result = kilomatch.run({"path_to_data": str(data), "output_folder": str(out),
                                "n_jobs": 1, **(settings or {})})
    log = "\n".join(r.getMessage() for r in caplog.records)
    scores = metrics.pair_scores(result.idx_cluster, np.load(data / "gt_neuron.npy"),
                                 np.load(data / "session_index.npy"))
    return result, log, scores, dict(np.load(out / "CurationResults.npz"))


def test_a_study_too_small_for_the_probability_confirms_its_splits_by_the_clustering(
        tmp_path, caplog):
    """Studies too small to fit the match probability: the split below the threshold cuts
    only where the final clustering's own two classes (LDA) give a match a posterior of at
    most autoCuration.cut_probability. 25 neurons in 6 sessions keep all 136 true pairs
    (the split at the equal-prior threshold took apart 18 of them); 15 neurons in 3
    sessions lose the one wrong pair, two units 30 um apart at a similarity of 0.18 against
    a threshold of 1.17 (no split at all kept it). A run that asks for no probability
    (autoCuration.cut_probability 1, as the published curation) cuts at the threshold."""
    result, log, scores, cur = _small_study(tmp_path, caplog, 25, 43)
    assert "too few pairs to fit the match probability" in log
    assert "no match probability to confirm the split's cuts" in log
    below = list(cur["reason_names"]).index("split_below_threshold")
    assert not np.any(cur["removed_reason"] == below)
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0
    unconfirmed = {"autoCuration": {"cut_probability": 1}}
    result, log, scores, cur = _small_study(tmp_path, caplog, 25, 43, unconfirmed)
    assert "no match probability to confirm" not in log
    assert np.count_nonzero(cur["removed_reason"] == below) == 18
    result, log, scores, cur = _small_study(tmp_path, caplog, 15, 9, sessions=3)
    assert "no match probability to confirm the split's cuts" in log
    assert np.any(cur["removed_reason"] == below)
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0


def test_a_study_too_small_for_the_probability_joins_by_the_similarity(tmp_path, caplog):
    """15 neurons in 6 sessions, no probability: IHDBSCAN keeps one neuron's sessions as two
    clusters whose every pair across is above the split threshold; the join by the weighted
    similarity makes them one (recall 0.925 without it)."""
    result, log, scores, cur = _small_study(tmp_path, caplog, 15, 18)
    assert "too few pairs to fit the match probability" in log
    assert "joined by the weighted similarity" in log
    before = cur["IdxCluster_before_join"]
    assert len(np.unique(before[before > 0])) > len(np.unique(result.idx_cluster[
        result.idx_cluster > 0]))
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0
