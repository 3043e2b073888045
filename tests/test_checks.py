"""Shared input checks (kilomatch.checks) and the declared table of simulation parameters."""

import dataclasses

import numpy as np
import pytest

from kilomatch import KilomatchError
from kilomatch.checks import Spec, as_integers, as_vector, check_finite, collect, value_problem
from kilomatch.simulate import SIMULATION_PARAMETERS, SimulationParams


@pytest.mark.parametrize("shape", [(5,), (5, 1), (1, 5)])
def test_as_vector_takes_columns_and_rows(shape):
    assert np.array_equal(as_vector(np.arange(5).reshape(shape), "x"), np.arange(5))


def test_as_vector_names_the_file_for_other_shapes():
    with pytest.raises(KilomatchError, match=r"spike_times.npy: expected shape \(n,\) .*\(5, 2\)"):
        as_vector(np.zeros((5, 2)), "spike_times.npy", "n")
    assert as_vector(np.zeros((0, 0)), "x").shape == (0,)   # MATLAB's empty matrix


def test_as_integers_whole_floats_and_named_entries():
    got = as_integers(np.array([[1.0], [2.0], [3.0]]), "labels")
    assert got.dtype == np.int64 and got.tolist() == [1, 2, 3]
    with pytest.raises(KilomatchError, match="labels: must hold whole numbers; units 1, 3 are"):
        as_integers([1.0, 2.5, 3.0, np.nan], "labels", "units")
    with pytest.raises(KilomatchError, match="dtype <U1 is not integer"):
        as_integers(np.array(["a", "b"]), "labels")


def test_check_finite_names_rows_and_collect_gathers():
    a = np.zeros((6, 2))
    a[4, 1] = np.inf
    problems = []
    assert collect(problems, check_finite, a, "locs.npy", "at channels") is None
    assert problems == ["locs.npy: NaN or Inf at channels 4"]
    assert collect(problems, check_finite, a[:4], "locs.npy") is not None and len(problems) == 1


@pytest.mark.parametrize("spec, good, bad", [
    (Spec("n", "int", "", min=1), [1, np.int64(7)], [0, 1.0, True, "3", None]),
    (Spec("x", "float", "", min=0, min_exclusive=True), [0.5, 2, np.float32(1)],
     [0, -1.0, np.nan, np.inf, False, "1"]),
    (Spec("p", "float", "", min=0, max=1), [0, 1, 0.3], [1.01, -0.01]),
    (Spec("r", "float", "", max=200, max_exclusive=True), [199.9], [200, 300]),
    (Spec("d", "float", "", min=0, none_ok=True), [None, 3.0], [-1.0]),
    (Spec("b", "bool", ""), [True, np.bool_(False)], [1, "yes"]),
    (Spec("s", "str", "", choices=("a", "b")), ["a"], ["c", 1]),
])
def test_spec_allows_exactly_its_range(spec, good, bad):
    for value in good:
        assert value_problem(spec, value) is None, value
    for value in bad:
        problem = value_problem(spec, value)
        assert problem is not None and problem.startswith(f"{spec.name} must be "), value


def test_every_simulation_parameter_is_declared_once():
    names = [s.name for s in SIMULATION_PARAMETERS]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in dataclasses.fields(SimulationParams)}
    SimulationParams().validate()


def test_simulation_parameter_messages_name_each_problem():
    with pytest.raises(KilomatchError) as err:
        SimulationParams(p_present=1.5, n_sessions=0, with_peth="no", probe="NP3").validate()
    text = str(err.value)
    assert len(err.value.problems) == 4
    assert "p_present must be a finite number >= 0 and <= 1, got 1.5" in text
    assert "n_sessions must be an integer >= 1, got 0" in text
    assert "with_peth must be true or false" in text and "probe must be one of 'NP1'" in text
    SimulationParams(probe="np2_4shank").validate()   # aliases are accepted
    with pytest.raises(KilomatchError, match="rate_min_hz <= rate_median_hz"):
        SimulationParams(rate_min_hz=5.0, rate_median_hz=1.0).validate()
    with pytest.raises(KilomatchError, match="z_min_um <= z_max_um"):
        SimulationParams(z_min_um=50.0, z_max_um=10.0).validate()
