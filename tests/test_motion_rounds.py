"""Motion rounds as pyDANT names them (max_iter, repeat_last_feature_set, stop_early) and a
user-given motion."""

import logging
import re

import numpy as np
import pytest

import kilomatch
from kilomatch import KilomatchError
from kilomatch.metrics import pair_scores
from kilomatch.pipeline import round_schedule
from kilomatch.settings import from_dict
from kilomatch.simulate import simulate_to_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rounds") / "data"
    simulate_to_folder(folder, n_sessions=4, n_neurons=60, seed=8, drift_max_um=40)
    return folder


def test_round_schedule():
    rounds = [["AutoCorr"], ["Waveform", "AutoCorr"]]
    s = from_dict({"motionEstimation": {"repeat_last_feature_set": False}})
    assert round_schedule(s, rounds) == rounds
    s = from_dict({"motionEstimation": {"max_iter": 5}})  # the default repeats the last set
    assert round_schedule(s, rounds) == rounds + [["Waveform", "AutoCorr"]] * 3
    s = from_dict({"motionEstimation": {"max_iter": 1}})
    assert round_schedule(s, rounds) == rounds[:1]


def test_pydant_settings_keys_load():
    s = from_dict({"motionEstimation": {"max_iter": 15, "repeat_last_feature_set": True,
                                        "stop_early": True},
                   "clustering": {"weight_tol": 1e-8},
                   "waveformCorrection": {"path_to_motion": ""}})
    assert s.motionEstimation.stop_early and s.waveformCorrection.path_to_motion == ""


def test_stop_early_says_why_and_keeps_best_round(data, tmp_path, caplog):
    """Repeating rounds stops as soon as the good matches stop increasing, and the log says so."""
    tree = {"path_to_data": str(data), "output_folder": str(tmp_path / "out"), "n_jobs": 1,
            "motionEstimation": {"repeat_last_feature_set": True, "stop_early": True,
                                 "max_iter": 10, "n_bootstrap": 20, "converged_um": 0}}
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run(tree)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "stopped early after round" in text
    assert len(result.rounds) < 10
    counts = [r.n_good for r, _ in result.rounds]
    assert counts[-1] <= max(counts[:-1])


def test_rounds_stop_when_the_motion_converged(data, tmp_path, caplog):
    """The rounds stop once a round moves no unit's corrected depth by more than
    motionEstimation.converged_um and the next would repeat its features (it would find the
    same matches); the motion kept is that round's, within that much of the motion the
    rounds reach when all of them run (converged_um 0)."""
    from kilomatch.pipeline import largest_move
    base = {"path_to_data": str(data), "n_jobs": 1,
            "motionEstimation": {"repeat_last_feature_set": True, "max_iter": 6,
                                 "n_bootstrap": 20}}
    every = kilomatch.run({**base, "output_folder": str(tmp_path / "every"),
                           "motionEstimation": {**base["motionEstimation"], "converged_um": 0}})
    assert len(every.rounds) == 6
    moves = [largest_move(a, b, every.units)
             for (_, a), (_, b) in zip(every.rounds, every.rounds[1:])]
    assert max(moves[1:]) < 1.0  # after the first change of features the motion settles
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        short = kilomatch.run({**base, "output_folder": str(tmp_path / "short")})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "converged after round" in text
    n = len(short.rounds)
    assert 2 <= n < 6
    assert largest_move(short.rounds[n - 2][1], short.rounds[n - 1][1], short.units) <= 1.0
    for k in range(n):  # the same rounds up to the stop
        assert np.array_equal(short.rounds[k][1].displacement(), every.rounds[k][1].displacement())
    assert largest_move(short.motion, every.motion, every.units) < 1.0


def test_given_motion_used_and_checked(data, tmp_path):
    """A given motion file skips estimation and is the motion written; a wrong shape is one
    clear error naming the file and the expected shape."""
    true = np.load(data / "gt_motion.npy")
    path = tmp_path / "motion_given.npy"
    np.save(path, true)
    tree = {"path_to_data": str(data), "output_folder": str(tmp_path / "out"), "n_jobs": 1,
            "waveformCorrection": {"path_to_motion": str(path)}}
    result = kilomatch.run(tree)
    assert result.rounds == []
    assert np.allclose(np.load(tmp_path / "out" / "motion.npy").ravel(), true)
    np.save(path, true[:-1])
    with pytest.raises(KilomatchError, match=r"motion_given.npy: motion must have shape \(4,\)"):
        kilomatch.run(tree)


def test_round_pair_arrays_kept_only_when_asked(data, tmp_path):
    """Each round's pairs are freed after use unless save_intermediate_results asks for the
    MotionRound files; the good-match counts are the same either way."""
    base = {"path_to_data": str(data), "n_jobs": 1,
            "motionEstimation": {"n_bootstrap": 20, "converged_um": 0,
                                 "repeat_last_feature_set": False}}
    lean = kilomatch.run({**base, "output_folder": str(tmp_path / "lean")})
    n_rounds = len(from_dict({}).motionEstimation.features)  # the default schedule: 3 rounds
    assert len(lean.rounds) == n_rounds
    assert all(r.pairs is None and r.n_good > 0 for r, _ in lean.rounds)
    # and its corrected waveforms: only the final clustering's copy outlives its round
    assert all(r.waveforms_corrected is None for r, _ in lean.rounds)
    assert not list((tmp_path / "lean").glob("MotionRound*"))
    full = kilomatch.run({**base, "output_folder": str(tmp_path / "full"),
                          "save_intermediate_results": True})
    assert [r.n_good for r, _ in lean.rounds] == [r.n_good for r, _ in full.rounds]
    assert sorted(p.name for p in (tmp_path / "full").glob("MotionRound*")) == [
        f"MotionRound{k}.npz" for k in range(1, n_rounds + 1)]
    for k, (r, _) in enumerate(full.rounds, 1):
        with np.load(tmp_path / "full" / f"MotionRound{k}.npz", allow_pickle=False) as z:
            assert z["pairs"].shape == r.pairs.shape and z["good_match"].sum() == r.n_good
    with np.load(tmp_path / "lean" / "ClusteringResults.npz") as z:
        assert list(z["motion_rounds_good_matches"]) == [r.n_good for r, _ in lean.rounds]


def test_rounds_stop_ihdbscan_at_their_own_tolerance_and_warm_start(data, tmp_path,
                                                                    monkeypatch):
    """The motion rounds run IHDBSCAN with motionEstimation.weight_tol, and a round with the
    last round's features starts from that round's final weights; the final clustering keeps
    clustering.weight_tol and equal starting weights."""
    from kilomatch import pipeline
    calls = []
    real = pipeline.ihdbscan

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((kwargs["weight_tol"], kwargs.get("weights"), result.weights))
        return result

    monkeypatch.setattr(pipeline, "ihdbscan", spy)
    tree = {"path_to_data": str(data), "output_folder": str(tmp_path / "out"), "n_jobs": 1,
            "motionEstimation": {"weight_tol": 0.002, "n_bootstrap": 20, "converged_um": 0,
                                 "repeat_last_feature_set": False},
            "clustering": {"weight_tol": 1e-7}}
    kilomatch.run(tree, write=False)
    assert [c[0] for c in calls] == [0.002, 0.002, 0.002, 1e-7]  # three rounds, then final
    assert calls[0][1] is None and calls[1][1] is None  # new feature sets: equal weights
    np.testing.assert_array_equal(calls[2][1], calls[1][2])  # round 3 repeats round 2's
    assert calls[3][1] is None


def test_waveform_similarity_in_bands_equals_the_whole_copy(data):
    """A motion round of many units corrects and compares their waveforms band by band of
    corrected depth (only a band's owners and their partners corrected at a time): the
    similarities are those of the whole corrected copy, and the band of a pair's two
    directions may differ."""
    from kilomatch import pipeline
    from kilomatch.settings import load as load_settings
    def settings(templates):
        return load_settings({"path_to_data": str(data), "output_folder": "/tmp/unused",
                              "waveformCorrection": {"n_templates": templates}})
    s = settings(1)
    d = pipeline.load_dataset(s.path_to_data)
    units = pipeline.unit_features(d, s)
    motion = pipeline.Motion.zero(d.n_sessions)
    motion.offset[:] = np.linspace(-20.0, 15.0, d.n_sessions)
    y = units.locations[:, 1]
    depth = y - motion.at(units.session0, y)
    pairs = pipeline.candidate_pairs(depth, units.session0, 100.0, units.shank)
    for templates in (1, 2):
        s = settings(templates)
        wfs, chans = pipeline.corrected_waveforms(units, d.channel_locations, motion,
                                                  s.waveformCorrection)
        whole = pipeline.waveform_similarity(wfs, chans, pairs)
        for band_units in (7, 10_000):
            banded = pipeline.waveform_similarity_in_bands(
                units, d.channel_locations, motion, s.waveformCorrection, None, depth, pairs,
                band_units)
            np.testing.assert_allclose(banded, whole, rtol=1e-5, atol=1e-5)
    band_of = np.argsort(np.argsort(depth, kind="stable")) * 15 // len(depth)
    assert (band_of[pairs[:, 0]] != band_of[pairs[:, 1]]).any()


def test_rounds_go_on_until_a_bend_is_followed(tmp_path, monkeypatch):
    """Tissue whose middle bulges by up to 100 um against the rest (a Gaussian bump of depth,
    on top of a rigid drift): each round's matches reach farther along the bump than the
    last, and after the three listed rounds the motion is still moving. By default the
    rounds go on until it has converged (7 rounds here) and recall goes 0.92 -> 0.99; with
    repeat_last_feature_set false the three rounds are all that run."""
    from kilomatch import simulate

    flat = simulate._apparent_depth

    def bulging(y0, rigid_s, slope_s, depth_ref, *rest):
        bump = 100.0 * np.sin(0.37 * np.asarray(rigid_s) + 1.1)
        u = (np.asarray(y0) - depth_ref) / 300.0
        return flat(y0, rigid_s, slope_s, depth_ref, *rest) + bump * np.exp(-u * u)

    monkeypatch.setattr(simulate, "_apparent_depth", bulging)
    folder = tmp_path / "data"
    simulate_to_folder(folder, n_sessions=6, n_neurons=250, duration_s=300.0, seed=8,
                       drift_max_um=60.0)
    gt, session = np.load(folder / "gt_neuron.npy"), np.load(folder / "session_index.npy")
    recall = {}
    for repeat in (False, True):
        tree = {"path_to_data": str(folder), "n_jobs": 1,
                "output_folder": str(tmp_path / f"out{repeat}")}
        if not repeat:  # the default repeats
            tree["motionEstimation"] = {"repeat_last_feature_set": False}
        result = kilomatch.run(tree, write=False)
        recall[repeat] = pair_scores(result.idx_cluster, gt, session)["recall"]
        # by default: more than the three listed, and converged before max_iter (15)
        assert 3 < len(result.rounds) < 15 if repeat else len(result.rounds) == 3
    assert recall[False] < 0.95 and recall[True] > 0.98


def test_a_round_set_aside_is_not_repeated(data, tmp_path, monkeypatch, caplog):
    """When the initial estimate sets a round's motion aside and the next round would repeat
    its features, that round would start from the same motion and find the same matches:
    the loop ends there instead of repeating it up to max_iter (15) times."""
    from kilomatch import motion_initial
    monkeypatch.setattr(motion_initial, "judge_round", lambda *args: False)
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run({"path_to_data": str(data), "n_jobs": 1,
                                "output_folder": str(tmp_path / "out")}, write=False)
    # round 1 (AutoCorr + PETH) and round 2 (Waveform + ...) differ; round 3 would repeat 2
    assert len(result.rounds) == 2
    assert "stopped after round 2: its motion was set aside" in caplog.text


def test_a_last_round_set_aside_is_named(data, tmp_path, monkeypatch, caplog):
    """When the last of max_iter rounds is set aside, the log says so, not that the motion
    was still moving after it (that round's motion was never taken)."""
    from kilomatch import motion_initial
    judge = motion_initial.judge_round
    monkeypatch.setattr(motion_initial, "judge_round",
                        lambda k, *args: k < 4 and judge(k, *args))
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run({"path_to_data": str(data), "n_jobs": 1,
                                "output_folder": str(tmp_path / "out"),
                                "motionEstimation": {"max_iter": 4, "converged_um": 0}},
                               write=False)
    assert len(result.rounds) == 4
    assert "ran 4 rounds (motionEstimation.max_iter): round 3's motion still moved" in caplog.text
    assert "round 4's was set aside" in caplog.text
    assert result.motion.choice.source == "round 3"


def test_matches_that_lie_off_the_motion_are_left_out_once_converged(tmp_path, caplog):
    """16 sessions of rigid drift with 30% turnover, about 20 units per session: with every
    good match counted, the rounds converge on a motion that puts sessions 1-5 28 um off the
    rest and bends by 20 um, since a few per cent of the matches join two neighbouring
    neurons 20-40 um apart (least squares gives them their full pull, and the matches found
    at a motion make that motion). With motionEstimation.off_pair_spreads 6 the rounds go on,
    once converged, without the matches that lie off the motion on their own: the motion
    ends within 2 um of the truth (RMS) and the log says how many matches were left out."""
    folder = tmp_path / "data"
    simulate_to_folder(folder, n_sessions=16, n_neurons=200, seed=1, drift_max_um=40,
                       turnover=0.3, p_present=0.8, duration_s=300.0)
    truth = np.load(folder / "gt_motion.npy")
    error = {}
    for spreads in (0, 6):
        with caplog.at_level(logging.INFO, logger="kilomatch"):
            caplog.clear()
            result = kilomatch.run({"path_to_data": str(folder), "n_jobs": 1,
                                    "output_folder": str(tmp_path / f"out{spreads}"),
                                    "motionEstimation": {"off_pair_spreads": spreads}},
                                   write=False)
        motion = result.motion.displacement()
        error[spreads] = float(np.sqrt(np.mean(((motion - motion.mean())
                                                - (truth - truth.mean())) ** 2)))
        assert ("good matches lie more than 6 x" in caplog.text) == (spreads == 6)
    assert error[0] > 10.0 and error[6] < 2.0


def test_rounds_that_stop_before_converging_leave_out_the_matches_off_the_motion(
        tmp_path, caplog):
    """A sparse study (16 sessions, about 20 units each, 30% turnover) whose round 2 is set
    aside against the initial estimate: the rounds stop with round 1's motion, before they
    converge. A third of round 1's good matches join two neurons recorded in turn, and its
    least-squares motion, linear on rigid drift, lay 9.6 um RMS off the truth. The kept
    motion is fitted again without the matches that lie off a robust fit of them: within
    1 um, and the log says how many were left out."""
    folder = tmp_path / "data"
    simulate_to_folder(folder, n_sessions=16, n_neurons=200, seed=37, drift_max_um=40,
                       turnover=0.3, p_present=0.8, duration_s=300.0)
    truth = np.load(folder / "gt_motion.npy")
    with caplog.at_level(logging.INFO, logger="kilomatch"):
        result = kilomatch.run({"path_to_data": str(folder), "n_jobs": 1,
                                "output_folder": str(tmp_path / "out")}, write=False)
    assert "motion estimation stopped after round 2" in caplog.text
    assert re.search(r"motion round 1: \d+ of \d+ good matches lie more than 6 x", caplog.text)
    motion = result.motion.displacement()
    error = np.sqrt(np.mean(((motion - motion.mean()) - (truth - truth.mean())) ** 2))
    assert not result.motion.linear and error < 1.0
