"""Batch runs: many studies on a Dask cluster or in this process, resumable, and each study's
files byte-identical to a plain run of its settings."""

import csv
import json
import logging
import os
import sys
import threading
from pathlib import Path

import pytest

import kilomatch
from kilomatch import KilomatchError, batch, fingerprint
from kilomatch.cli import main
from kilomatch.logs import RunLog
from kilomatch.simulate import simulate_to_folder

# Small and quick: one motion round, no bootstrap, few clustering iterations.
FAST = {"n_jobs": 1, "motionEstimation": {"features": [["Waveform", "AutoCorr"]],
                                          "n_bootstrap": 0},
        "clustering": {"n_iter": 3}}


def _write_settings(path: Path, data, out, **extra) -> Path:
    path.write_text(json.dumps({"path_to_data": str(data), "output_folder": str(out),
                                **FAST, **extra}))
    return path


def _result_bytes(folder: Path) -> dict:
    """Every file a run wrote (kilomatch.log aside: it holds times), as bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "kilomatch.log"}


def _summary_rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Three simulated studies (3 sessions x 30 neurons); the third lacks a spike-time file."""
    root = tmp_path_factory.mktemp("batch")
    paths = []
    for k in range(3):
        data = root / f"data{k}"
        simulate_to_folder(data, n_sessions=3, n_neurons=30, probe="NP1", seed=10 + k)
        paths.append(_write_settings(root / f"study{k}.json", data, root / f"out{k}"))
    (root / "data2" / "spike_times" / "Unit3.npy").unlink()
    return root, paths


@pytest.fixture(scope="module")
def cluster_batch(studies):
    """The three studies on a LocalCluster of 2 worker processes; each finished study's bytes."""
    distributed = pytest.importorskip("distributed")
    root, paths = studies
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        outcomes = kilomatch.run_many(paths, client, progress=False)
    return outcomes, {k: _result_bytes(root / f"out{k}") for k in (0, 1)}


def test_cluster_batch_reports_each_study(studies, cluster_batch):
    """Two studies done, the invalid one failed with its message; the summary says so; each
    study's log is in its own output folder and holds only that study."""
    root, paths = studies
    outcomes, _ = cluster_batch
    assert [o.status for o in outcomes] == ["done", "done", "failed"]
    assert "spike_times/Unit3.npy: missing" in outcomes[2].error and "data2" in outcomes[2].error
    assert all(o.units > 0 and o.clusters > 0 and o.matched_pairs > 0 for o in outcomes[:2])
    rows = _summary_rows(root / "batch_summary.csv")  # beside the first settings file
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert rows[0]["settings"] == str(paths[0])
    assert "spike_times/Unit3.npy: missing" in rows[2]["error"]
    assert float(rows[0]["peak_memory_mb"]) > 0 and float(rows[0]["wall_time_s"]) > 0
    for k in (0, 1):
        text = (root / f"out{k}" / "kilomatch.log").read_text()
        assert f"data{k}" in text and f"data{1 - k}" not in text


def test_batch_files_equal_a_plain_run(studies, cluster_batch):
    """A plain run of each settings file rewrites the same bytes the cluster wrote (the
    fingerprint and kilomatch_settings.json included)."""
    root, paths = studies
    _, written = cluster_batch
    for k in (0, 1):
        kilomatch.run(str(paths[k]))
        assert _result_bytes(root / f"out{k}") == written[k]
        assert fingerprint.FINGERPRINT_FILE in written[k]


def test_rerun_skips_done_studies_and_finishes_the_rest(studies, cluster_batch, monkeypatch):
    """With Dask absent, ``--workers 1`` runs in this process: the finished studies are skipped
    (whether made by the batch or by a plain run), an interrupted one is run again and gives
    the same bytes, the invalid one fails again, and the exit status says so."""
    root, paths = studies
    _, written = cluster_batch
    (root / "out1" / "Output.npz").unlink()  # as if the batch had been killed
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    summary = root / "rerun.csv"
    code = main([str(p) for p in paths] + ["--workers", "1", "--summary", str(summary),
                                           "--no-progress"])
    assert code == 1
    assert [r["status"] for r in _summary_rows(summary)] == ["skipped", "done", "failed"]
    assert _summary_rows(summary)[0]["units"] == str(cluster_batch[0][0].units)
    assert _result_bytes(root / "out1") == written[1]
    with pytest.raises(KilomatchError, match=r"kilomatch\[dask\]"):
        kilomatch.run_many(paths[:2], workers=2, force=True, summary=summary, progress=False)


def test_force_reruns_a_done_study(studies, cluster_batch):
    root, paths = studies
    _, written = cluster_batch
    before = (root / "out0" / "Output.npz").stat().st_mtime_ns
    summary = root / "force.csv"
    assert main(["batch", str(paths[0]), "--workers", "1", "--summary", str(summary),
                 "--no-progress"]) == 0
    assert _summary_rows(summary)[0]["status"] == "skipped"
    assert main(["batch", str(paths[0]), "--workers", "1", "--force", "--summary", str(summary),
                 "--no-progress"]) == 0
    assert _summary_rows(summary)[0]["status"] == "done"
    assert (root / "out0" / "Output.npz").stat().st_mtime_ns != before
    assert _result_bytes(root / "out0") == written[0]


def test_same_output_folder_is_an_error_before_anything_runs(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    a = _write_settings(tmp_path / "a.json", data, tmp_path / "shared")
    b = _write_settings(tmp_path / "b.json", data, tmp_path / "shared")
    with pytest.raises(KilomatchError) as err:
        kilomatch.run_many([a, b], workers=1)
    assert str(a) in str(err.value) and str(b) in str(err.value)
    assert main([str(a), str(b), "--workers", "1"]) == 2
    assert "both write to output_folder" in capsys.readouterr().err
    assert not (tmp_path / "shared").exists() and not (tmp_path / "batch_summary.csv").exists()


def test_fingerprint_tells_a_finished_run_from_a_changed_one(tmp_path):
    """A study is done only with Output.npz, the same settings and unchanged input files
    (size or modification time)."""
    data = tmp_path / "data"
    (data / "spike_times").mkdir(parents=True)
    (data / "waveform_all.npy").write_bytes(b"x" * 10)
    (data / "spike_times" / "Unit0.npy").write_bytes(b"y")
    settings = kilomatch.load_settings({"path_to_data": str(data),
                                        "output_folder": str(tmp_path / "out")})
    (tmp_path / "out").mkdir()
    fingerprint.record(settings)
    assert "no complete run" in fingerprint.why_not_done(settings)
    (tmp_path / "out" / "Output.npz").write_bytes(b"")
    assert fingerprint.why_not_done(settings) is None
    assert "settings changed" in fingerprint.why_not_done(settings.replace(seed=1))
    unit = data / "spike_times" / "Unit0.npy"
    os.utime(unit, ns=(unit.stat().st_atime_ns, unit.stat().st_mtime_ns + 10**9))
    assert "input files" in fingerprint.why_not_done(settings)
    fingerprint.record(settings)
    assert fingerprint.why_not_done(settings) is None
    (data / "spike_times" / "Unit1.npy").write_bytes(b"z")
    assert "input files" in fingerprint.why_not_done(settings)


@pytest.mark.parametrize("n_studies, workers, n_jobs, memory, cores", [
    (10, None, None, None, 2), (1, None, None, None, 8), (10, None, None, 16, 32),
    (3, 8, None, None, 4), (4, 2, 1, None, 8)])
def test_local_cluster_fits_the_machine(n_studies, workers, n_jobs, memory, cores):
    """Worker processes x jobs per study never exceed the cores; memory is shared out."""
    total = 64 * 2**30
    memory = None if memory is None else memory * 2**30
    n_workers, jobs, per_worker = batch.local_cluster_size(
        n_studies, workers, n_jobs, memory, cores=cores, total_memory=total)
    assert 1 <= n_workers <= max(1, min(n_studies if workers is None else workers, cores))
    assert n_workers * jobs <= cores
    assert n_workers * per_worker <= total
    if memory is not None:
        assert per_worker == memory
    if n_jobs is not None:
        assert jobs <= n_jobs


def test_run_logs_of_two_threads_stay_apart(tmp_path):
    """Studies run in threads of one worker process each keep their own kilomatch.log."""
    log = logging.getLogger("kilomatch")
    barrier = threading.Barrier(2)

    def study(name):
        folder = tmp_path / name
        folder.mkdir()
        with RunLog() as run_log:
            run_log.open(folder)
            barrier.wait()
            for k in range(20):
                log.info("%s line %d", name, k)

    threads = [threading.Thread(target=study, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, other in (("a", "b"), ("b", "a")):
        text = (tmp_path / name / "kilomatch.log").read_text()
        assert text.count(f"{name} line") == 20 and f"{other} line" not in text


def test_bad_settings_file_is_one_failed_study(tmp_path, capsys):
    """A settings file that does not load is reported as that study's failure, with the
    setting named; the summary goes beside the first settings file."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"clustering": {"max_distanse": 50}}')
    missing = tmp_path / "missing.json"
    assert main([str(bad), str(missing), "--workers", "1", "--no-progress"]) == 1
    rows = _summary_rows(tmp_path / "batch_summary.csv")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "clustering.max_distance" in rows[0]["error"]
    assert "not found" in rows[1]["error"] and str(missing) in rows[1]["error"]
