"""Channels that stop recording in some sessions are found and filled in
(kilomatch.dead_channels, the setting fill_dead_channels)."""

import numpy as np
import pytest

from kilomatch.dead_channels import fill_dead, find_dead
from kilomatch.simulate import simulate_to_folder

# the log's words for the step under test
FILLED = "stopped recording"


def _np1_column(n_channels=48):
    """NP1-like sites: two columns, 20 um apart along the probe, staggered (um)."""
    k = np.arange(n_channels)
    return np.column_stack([np.where(k % 4 < 2, 0.0, 16.0) + 32.0 * (k % 2),
                            20.0 * (k // 2)])


def _footprint(locs, source, n_samples=30):
    """A unit's waveform on every site (C, T) uV: a trough whose size falls with the distance
    to the point source ``source`` (x, y, z) um."""
    d = np.sqrt(((locs - source[:2]) ** 2).sum(axis=1) + source[2] ** 2)
    shape = -np.exp(-0.5 * ((np.arange(n_samples) - 10) / 2.0) ** 2)
    return (3000.0 / d)[:, None] * shape[None, :]


def _ptt(waveforms):
    return waveforms.max(axis=2) - waveforms.min(axis=2)


def test_a_channel_silent_in_every_unit_of_a_session_is_dead_there():
    """Channel 20 reads 0 in every unit of session 1 (0-based), two of which peak next to
    it: dead in session 1 only. Zeros far from every unit's peak, sparse waveforms and a
    channel silent in some units of a session only are not dead."""
    locs = _np1_column()
    sources = [np.array([16.0, y, 20.0]) for y in (150.0, 230.0, 300.0)]
    waveforms = np.stack([_footprint(locs, src) for src in sources] * 2)  # (6, C, T)
    session0 = np.repeat([0, 1], 3)
    waveforms[3:, 20] = 0.0
    waveforms[:, 42:] = 0.0          # far from every unit (> 100 um from the nearest peak)
    waveforms[0, 30] = 0.0           # silent in one unit of session 0, live in the others
    ptt = _ptt(waveforms)
    peak = ptt.argmax(axis=1)
    dead = find_dead(ptt, session0, 2, locs, peak)
    assert dead.shape == (2, locs.shape[0])
    np.testing.assert_array_equal(np.flatnonzero(dead[1]), [20])
    assert not dead[0].any()
    # sparse waveforms, 0 beyond 45 um of each unit's peak (a sorter's sparsity radius): the
    # channels no unit reaches are no dead sites; channel 20 still is
    from_peak = np.linalg.norm(locs[peak][:, None, :] - locs[None, :, :], axis=2)
    sparse = np.where(from_peak <= 45.0, ptt, 0.0)
    dead = find_dead(sparse, session0, 2, locs, peak)
    np.testing.assert_array_equal(np.flatnonzero(dead[1]), [20])
    assert not dead[0].any()


def test_a_dead_channel_is_filled_in_from_its_live_neighbours():
    """The filled-in values of a dead channel come close to what it would have recorded:
    within a quarter of the peak-to-trough there (it read 0; a peak right under the site
    cannot be restored by any interpolation of its neighbours); the live channels
    are left as they were."""
    locs = _np1_column()
    truth = np.stack([_footprint(locs, np.array([x, y, 25.0]))
                      for x, y in ((10.0, 200.0), (40.0, 215.0), (20.0, 260.0))])
    values = truth.astype(np.float32).copy()
    values[:, 21] = 0.0
    channels = np.tile(np.arange(locs.shape[0]), (3, 1))
    dead = np.zeros((1, locs.shape[0]), dtype=bool)
    dead[0, 21] = True
    changed = fill_dead(values, channels, np.zeros(3, np.int64), dead, locs)
    assert changed.all()
    want = _ptt(truth)[:, 21]
    got = _ptt(values)[:, 21]
    assert np.all(np.abs(got - want) < 0.25 * want), (got, want)
    live = np.arange(locs.shape[0]) != 21
    np.testing.assert_array_equal(values[:, live], truth[:, live].astype(np.float32))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """A simulated study, and the same with a tenth of its channels dying over the sessions
    (the simulator's dead_channel_share: each reads 0 from its session of death on, as a
    padded channel map would)."""
    root = tmp_path_factory.mktemp("dead")
    params = dict(seed=37, n_sessions=4, n_neurons=150, n_samples=40, drift_max_um=20.0,
                  with_peth=False, duration_s=120.0)
    simulate_to_folder(root / "study", **params)
    simulate_to_folder(root / "dying", dead_channel_share=0.1, **params)
    return root / "study", root / "dying"


def test_dying_channels_are_named_and_filled(studies, track_study):
    """Sessions 2-4 are named; with the channels filled in the tracking scores near the
    study as simulated, and higher than without."""
    study, dying = studies
    clean, f1_study, said = track_study(study, FILLED)
    assert said == [] and clean.units.dead_channels is None
    filled, f1_filled, said = track_study(dying, FILLED)
    assert len(said) == 1 and "session 1:" not in said[0]
    assert "session 2:" in said[0] and "session 4:" in said[0]
    assert not filled.units.dead_channels[0].any() and filled.units.dead_channels[3].any()
    _, f1_off, said = track_study(dying, FILLED, fill_dead_channels=False)
    assert said == []
    assert f1_filled >= f1_study - 0.01
    assert f1_off < f1_filled - 0.01, (f1_off, f1_filled, f1_study)
