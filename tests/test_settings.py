"""Settings: defaults, the reference port's files, and one clear error per mistake."""

import json

import pytest

from kilomatch import KilomatchError
from kilomatch.parameters import PARAMETERS, default_settings_text, markdown_table
from kilomatch.settings import from_dict, load

# A settings file as written for the reference port (pyKilomatch): comments of every kind,
# Windows paths with doubled backslashes, trailing commas, and its extra motionEstimation.n_iter.
REFERENCE_STYLE = r"""
{
    // path to the data folder
    "path_to_data": "C:\\Users\\lab\\data",  # a hash comment too
    "output_folder": "C:\\Users\\lab\\kilomatch_output",
    "save_intermediate_results": false,
    "n_jobs": 8,
    "centering_waveforms": true,
    /* block comment */
    "spikeLocation": {"location_algorithm": "monopolar_triangulation", "n_nearest_channels": 20},
    "waveformCorrection": {"n_nearest_channels": 38, "linear_correction": true, "n_templates": 1},
    "autoCorr": {"window": 300, "binwidth": 1, "gaussian_sigma": 5},
    "ISI": {"window": 100, "binwidth": 1, "gaussian_sigma": 1},
    "motionEstimation": {"n_iter": 1000,
        "features": [["AutoCorr", "PETH"], ["Waveform", "AutoCorr", "PETH"]],},
    "clustering": {"max_distance": 100, "features": ["Waveform", "AutoCorr"], "n_iter": 10},
    "autoCuration": {"auto_split": true},
}
"""


def test_published_defaults():
    """Defaults are the published ones (seed description / docs/method.md)."""
    s = from_dict({})
    assert s.spikeLocation.n_nearest_channels == 20
    assert s.spikeLocation.location_algorithm == "monopolar_triangulation"
    assert s.waveformCorrection.n_nearest_channels == 38
    assert s.waveformCorrection.linear_correction is False
    assert s.waveformCorrection.n_templates == 1
    assert (s.autoCorr.window, s.autoCorr.binwidth, s.autoCorr.gaussian_sigma) == (300, 1, 5)
    assert (s.ISI.window, s.ISI.binwidth, s.ISI.gaussian_sigma) == (100, 1, 1)
    assert s.motionEstimation.features == [["AutoCorr", "PETH"], ["Waveform", "AutoCorr", "PETH"],
                                           ["Waveform", "AutoCorr", "PETH"]]
    assert s.clustering.max_distance == 100
    assert s.clustering.features == ["Waveform", "AutoCorr"]
    assert s.clustering.n_iter == 10
    assert s.autoCuration.auto_split is True
    assert s["clustering.max_distance"] == 100


def test_reference_port_file_loads_unchanged(tmp_path):
    """A file written for the reference port loads: comments, Windows paths, its extra key."""
    path = tmp_path / "settings.json"
    path.write_text(REFERENCE_STYLE)
    s = load(path)
    assert str(s.path_to_data) == "C:\\Users\\lab\\data"
    assert s.n_jobs == 8 and s.centering_waveforms is True
    assert s.waveformCorrection.linear_correction is True
    assert len(s.motionEstimation.features) == 2
    assert any("motionEstimation.n_iter" in note for note in s.notes)


def test_relative_paths_resolve_against_settings_folder(tmp_path, monkeypatch):
    """Relative paths are taken from the settings file's folder, not the working directory."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "settings.json").write_text('{"path_to_data": "data", "output_folder": "../out"}')
    monkeypatch.chdir(tmp_path)
    s = load(folder / "settings.json")
    assert s.path_to_data == (folder / "data").resolve()
    assert s.output_folder == (tmp_path / "out").resolve()


def test_default_settings_file_matches_table(tmp_path):
    """The shipped settings.json is the one the table generates, and loads to the defaults."""
    from pathlib import Path
    shipped = Path(__file__).parents[1] / "settings.json"
    assert shipped.read_text() == default_settings_text()
    s = load(shipped)
    defaults = from_dict({})
    for p in PARAMETERS:
        if p.kind != "path":
            assert s[p.name] == defaults[p.name], p.name


def test_readme_lists_every_setting():
    """README's settings table is the generated one."""
    from pathlib import Path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert markdown_table() in readme


@pytest.mark.parametrize("tree, words", [
    ({"clustering": {"max_distanse": 50}}, ["clustering.max_distanse", "clustering.max_distance"]),
    ({"n_job": 2}, ["'n_job'", "n_jobs"]),
    ({"n_jobs": "4"}, ["n_jobs", "integer", '"4"']),
    ({"waveformCorrection": {"linear_correction": "yes"}}, ["linear_correction", "true or false"]),
    ({"clustering": {"features": ["Waveform", "Autocorr"]}}, ["Autocorr", "AutoCorr"]),
    ({"motionEstimation": {"features": [["Waveform"], ["PETH", "Spikes"]]}}, ["round 2", "Spikes"]),
    ({"motionEstimation": {"features": ["Waveform"]}}, ["motionEstimation.features"]),
    ({"waveformCorrection": {"n_templates": 3}}, ["n_templates", "one of 1, 2", "3"]),
    ({"autoCorr": {"window": 0}}, ["autoCorr.window", "> 0"]),
    ({"ISI": {"binwidth": -1}}, ["ISI.binwidth", "> 0"]),
    ({"autoCorr": {"window": 2, "binwidth": 5}}, ["autoCorr.binwidth", "larger than"]),
    ({"spikeLocation": {"location_algorithm": "grid"}}, ["location_algorithm", "center_of_mass"]),
    ({"clustering": {"max_distance": float("nan")}}, ["clustering.max_distance"]),
])
def test_bad_setting_named(tree, words):
    """Each mistake gives one KilomatchError that names the key and what is allowed."""
    with pytest.raises(KilomatchError) as err:
        from_dict(tree)
    for word in words:
        assert word in str(err.value)


def test_every_problem_reported_at_once():
    """Several mistakes are listed together, not only the first."""
    with pytest.raises(KilomatchError) as err:
        from_dict({"n_job": 1, "seed": -1, "clustering": {"n_iter": 0}})
    assert len(err.value.problems) == 3
    text = str(err.value)
    assert "n_job" in text and "seed" in text and "clustering.n_iter" in text


def test_output_folder_equal_to_data_refused(tmp_path):
    with pytest.raises(KilomatchError, match="output_folder"):
        from_dict({"path_to_data": str(tmp_path), "output_folder": str(tmp_path)})


def test_invalid_json_message(tmp_path):
    """A broken file names itself; a single-backslash Windows path gets a hint."""
    path = tmp_path / "settings.json"
    path.write_text('{"path_to_data": "C:\\data\\x", }')
    with pytest.raises(KilomatchError) as err:
        load(path)
    assert str(path) in str(err.value) and "backslash" in str(err.value)


def test_settings_are_read_only_and_replace_checks():
    s = from_dict({})
    with pytest.raises(AttributeError):
        s.n_jobs = 3
    t = s.replace(**{"clustering.max_distance": 50})
    assert t.clustering.max_distance == 50 and s.clustering.max_distance == 100
    with pytest.raises(KilomatchError):
        s.replace(**{"clustering.max_distance": -5})
    json.dumps(t.to_dict())  # plain JSON


def test_setting_texts_state_the_curation_constants_they_describe():
    """The settings' texts (README table, settings.json) repeat some of kilomatch.curation's
    fixed constants in words; a change of a constant must change the text with it."""
    from kilomatch import curation
    from kilomatch.parameters import PARAMETERS
    text = {p.name: p.description.replace("\n", " ") for p in PARAMETERS}

    def percentile(q):
        return f"{round(100 * q)}th percentile"

    step = text["autoCuration.amplitude_step"]
    assert f"a factor {curation.AMPLITUDE_STEP_MIN_FACTOR:g} at least" in step
    assert f"below {curation.AMPLITUDE_STEP_PROBABILITY:g}" in step
    assert f"more than {curation.AMPLITUDE_STEP_SURE:g} times that step" in step
    assert percentile(curation.POOLED_AMPLITUDE_QUANTILE) in step
    assert percentile(curation.POOLED_AMPLITUDE_QUANTILE) in text["autoCuration.cut_pooled_level"]
    default = {p.name: p.default for p in PARAMETERS}
    assert default["autoCuration.split_distance_probability"] == \
        curation.DISTANCE_SPLIT_PROBABILITY
    rejoin = text["autoCuration.rejoin_distance_ratio"]
    assert f"({curation.REJOIN_AMPLITUDE_MIN_FACTOR:g}x at least)" in rejoin
    assert percentile(curation.REJOIN_AMPLITUDE_QUANTILE) in rejoin
