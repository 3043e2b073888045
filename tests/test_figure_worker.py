"""The run's figures drawn by helper processes (kilomatch.figure_worker)."""

import sys

import pytest

import kilomatch
from kilomatch import figure_worker, pipeline
from kilomatch.simulate import simulate_to_folder

FIGURES = {"UnitDepth", "Motion", "SimilarityFeatures", "WeightedSimilarity",
           "MatchProbability", "FeatureScatter"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("figures") / "data"
    simulate_to_folder(folder, n_sessions=3, n_neurons=40, probe="NP1", seed=5)
    return folder


def _figures(study, out, monkeypatch, helpers: int) -> dict:
    """{png name: bytes} of a run whose figures go to ``helpers`` helper processes."""
    monkeypatch.setattr(pipeline, "figure_helpers", lambda n_jobs, n_units: helpers)
    kilomatch.run({"path_to_data": str(study), "output_folder": str(out), "n_jobs": 1,
                   "motionEstimation": {"n_bootstrap": 20}})
    return {p.stem: p.read_bytes() for p in (out / "Figures").glob("*.png")}


def test_helpers_draw_what_the_run_draws_and_a_failed_helper_loses_nothing(
        study, tmp_path, monkeypatch):
    """Figures drawn by two helper processes are byte for byte those the run draws itself,
    and when the helpers fail (here: they read their figures and exit with an error) the
    run draws their figures itself: every figure is there, the same bytes."""
    here = _figures(study, tmp_path / "here", monkeypatch, 0)
    assert set(here) >= FIGURES
    assert _figures(study, tmp_path / "helpers", monkeypatch, 2) == here
    monkeypatch.setattr(figure_worker, "HELPER_COMMAND", (
        sys.executable, "-c", "import sys; sys.stdin.buffer.read(); sys.exit(3)"))
    assert _figures(study, tmp_path / "failed", monkeypatch, 2) == here


def test_helpers_end_with_the_run_that_started_them():
    """Helpers of a run that stops before its figures (an error in a later step) are
    stopped, not left waiting for figures that never come."""
    workers = figure_worker.FigureWorkers()
    workers.start(2)
    procs = [proc for proc, _ in workers.helpers]
    assert len(procs) == 2 and all(proc.poll() is None for proc in procs)
    workers.close()
    assert all(proc.poll() is not None for proc in procs)
