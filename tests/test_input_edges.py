"""Inputs a fuzzing pass found ending in a foreign traceback, running out of memory or doing
something silently: each now gives one KilomatchError naming the culprit, or runs."""

import numpy as np
import pytest

import kilomatch
from kilomatch import KilomatchError
from kilomatch.curation import _position_cut
from kilomatch.export import clear_previous
from kilomatch.load import load_dataset
from kilomatch.settings import from_dict

from test_load import problems_of, write_folder


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "data")


def test_units_at_one_position_are_no_position_gap():
    """scipy reads a distance of about 0 as no edge: three units at one position left the
    minimum spanning tree empty and the split at position gaps raised numpy's ValueError."""
    assert _position_cut(np.full((3, 2), [5.0, 100.0]), np.full((3, 3), 0.9), 0.5, 7.0) is None
    # a gap is still cut where it is: two at one place, two 30 um away, alike less across
    pos = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 30.0], [0.0, 30.0]])
    sim = np.full((4, 4), 0.9)
    sim[:2, 2:] = sim[2:, :2] = 0.55
    assert _position_cut(pos, sim, 0.5, 7.0).tolist() == [False, False, True, True]


def test_every_channel_at_one_position_named(folder):
    locs = np.load(folder / "channel_locations.npy")
    np.save(folder / "channel_locations.npy", np.tile(locs[:1], (len(locs), 1)))
    text, _ = problems_of(folder)
    assert "channel_locations.npy" in text and "same position" in text


@pytest.mark.parametrize("last", [2**40, 20240103])
def test_session_numbers_far_apart_named_without_listing_them_all(folder, last):
    """The missing sessions were listed as a set of 1..max: a date as a session number took
    gigabytes before the message, 2^40 ran out of memory."""
    np.save(folder / "session_index.npy", np.array([1, 1, 2, 2, last, last], np.int64))
    text, _ = problems_of(folder)
    assert "without gaps" in text and "missing 3, 4, 5" in text and "..." in text


def test_missing_sessions_listed_in_order(folder):
    np.save(folder / "session_index.npy", np.array([1, 1, 3, 3, 6, 6]))
    text, _ = problems_of(folder)
    assert "missing 2, 4, 5" in text


@pytest.mark.parametrize("bad", [np.nan, 0.5])
def test_channel_shanks_must_be_whole_numbers(folder, bad):
    """NaN became shank -9223372036854775808, 0.2 and 0.7 one shank."""
    shanks = np.zeros(8)
    shanks[3] = bad
    np.save(folder / "channel_shanks.npy", shanks)
    text, _ = problems_of(folder)
    assert "channel_shanks.npy" in text and "whole numbers" in text and "3" in text


def test_two_spike_files_of_one_unit_named(folder):
    """Unit5.npy and Unit05.npy were both unit 5: the directory's order chose one."""
    np.save(folder / "spike_times" / "Unit05.npy", np.array([1.0, 2.0]))
    text, _ = problems_of(folder)
    assert "Unit05.npy and Unit5.npy" in text and "unit 5" in text


@pytest.mark.parametrize("changes, words", [
    ({"seed": 2**32 - 1}, ["'seed'", "2147483647"]),
    ({"autoCorr": {"binwidth": 1e-6}}, ["autoCorr.window", "autoCorr.binwidth", "bins"]),
    ({"ISI": {"window": 1e9}}, ["ISI.window", "bins"]),
])
def test_settings_out_of_reach_refused(tmp_path, changes, words):
    """A seed past 2^32 reached scikit-learn's check of random_state; 10^6 bins per unit
    asked numpy for 132 GB."""
    with pytest.raises(KilomatchError) as err:
        from_dict({"path_to_data": str(tmp_path / "d"), "output_folder": str(tmp_path / "o"),
                       **changes})
    for word in words:
        assert word in str(err.value), str(err.value)


def test_output_folder_holding_a_study_refused(folder, tmp_path):
    """Its channel_locations.npy and peth.npy would have been replaced by this run's."""
    other = write_folder(tmp_path / "other")
    before = (other / "channel_locations.npy").read_bytes()
    with pytest.raises(KilomatchError) as err:
        kilomatch.run({"path_to_data": str(folder), "output_folder": str(other)})
    assert "holds a study's input" in str(err.value) and "waveform_all.npy" in str(err.value)
    assert (other / "channel_locations.npy").read_bytes() == before


@pytest.mark.parametrize("name", ["kilomatch.log", "units.csv"])
def test_result_name_taken_by_a_folder_named_before_anything_is_cleared(folder, tmp_path, name):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    (out / "IdxCluster.npy").write_bytes(b"an earlier run's result")
    with pytest.raises(KilomatchError) as err:
        kilomatch.run({"path_to_data": str(folder), "output_folder": str(out)})
    assert name in str(err.value) and "folder" in str(err.value)
    assert (out / "IdxCluster.npy").read_bytes() == b"an earlier run's result"


def test_clearing_an_output_folder_removes_only_the_run_s_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("IdxCluster.npy", "MotionRound1.npz", ".units.csv.tmp123", ".notes.tmp.txt"):
        (out / name).write_bytes(b"x")
    (out / "MotionRound2.npz").mkdir()  # a folder of a result's pattern is not the run's
    (out / ".x.tmp45").mkdir()
    clear_previous(out)
    left = sorted(p.name for p in out.iterdir())
    assert left == [".notes.tmp.txt", ".x.tmp45", "MotionRound2.npz"]


@pytest.mark.parametrize("broken", ["gt_neuron", "gt_motion"])
def test_unreadable_ground_truth_does_not_fail_the_run(tmp_path, caplog, broken):
    """The simulator's ground truth only scores a run: an unreadable gt_neuron.npy (numpy's
    ValueError) or a 0-d gt_motion.npy (IndexError) ended the run before its results were
    written."""
    from kilomatch.simulate import simulate_to_folder

    data = tmp_path / "sim"
    simulate_to_folder(data, n_sessions=3, n_neurons=30, duration_s=60, seed=1)
    if broken == "gt_neuron":
        (data / "gt_neuron.npy").write_bytes(b"not an array")
    else:
        np.save(data / "gt_motion.npy", np.float64(3.0))
    out = tmp_path / "out"
    kilomatch.run({"path_to_data": str(data), "output_folder": str(out), "n_jobs": 1})
    assert (out / "Output.npz").is_file()
    if broken == "gt_neuron":
        assert any("gt_neuron.npy" in m.getMessage() and "not read" in m.getMessage()
                   for m in caplog.records)


def test_numpy_scalars_are_settings_of_their_kind(tmp_path):
    """A notebook's np.int64(5), read off an array, was refused as 'got "5"', a string."""
    s = from_dict({"path_to_data": str(tmp_path / "d"), "output_folder": str(tmp_path / "o"),
                   "seed": np.int64(5), "clustering": {"max_distance": np.float32(80)},
                   "debug": np.bool_(True)})
    assert s.seed == 5 and type(s.seed) is int
    assert s.clustering.max_distance == 80.0 and s.debug is True


def test_unsigned_numbers_beyond_int64_named_as_given(folder):
    """uint64 2^63 + 5 was named as -9223372036854775803, what the cast made of it."""
    np.save(folder / "session_index.npy", np.array([1, 1, 2, 2, 3, 2**63 + 5], np.uint64))
    text, _ = problems_of(folder)
    assert "9223372036854775813" in text and "units 5" in text and "-9223" not in text


def test_a_setting_given_twice_refused(tmp_path):
    """As a dotted key and inside its section: the last one took it, silently."""
    with pytest.raises(KilomatchError) as err:
        from_dict({"path_to_data": str(tmp_path / "d"), "output_folder": str(tmp_path / "o"),
                   "clustering.max_distance": 80, "clustering": {"max_distance": 100}})
    assert "'clustering.max_distance'" in str(err.value) and "twice" in str(err.value)


@pytest.mark.parametrize("points", [0, 1])
def test_peth_of_fewer_than_two_points_named(folder, points):
    np.save(folder / "peth.npy", np.ones((6, points)))
    text, _ = problems_of(folder)
    assert "peth.npy" in text and f"{points} points" in text


def test_float16_spike_times_warned(folder, caplog):
    """float16 rounds times past 2 s to whole ms: the ACG and ISI would be read off them."""
    np.save(folder / "spike_times" / "Unit2.npy", np.sort(np.random.default_rng(1).uniform(
        0, 6e4, 50)).astype(np.float16))
    load_dataset(folder)
    assert any("float16" in m.getMessage() and "units 2" in m.getMessage()
               for m in caplog.records)
