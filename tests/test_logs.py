"""kilomatch.log: what a result folder says about how it was made."""

import logging
import warnings
from importlib import metadata

import numpy as np

from kilomatch import __version__
from kilomatch.logs import RunLog, versions
from kilomatch.settings import from_dict

log = logging.getLogger("kilomatch")


def test_versions_are_the_installed_ones():
    got = versions()
    assert got["kilomatch"] == __version__
    for name in ("numpy", "scipy", "scikit-learn", "hdbscan"):
        assert got[name] == metadata.version(name)


def test_log_file_holds_versions_changed_settings_and_every_warning(tmp_path):
    """The header lists the versions and only the changed settings; kilomatch's own warnings
    and Python warnings from the libraries both reach the file, and are counted at the end."""
    settings = from_dict({"clustering": {"max_distance": 50}, "n_jobs": 1})
    with RunLog() as run_log:
        run_log.describe_run(settings)
        log.warning("window too small (test)")
        run_log.open(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            np.log(np.zeros(1))  # a RuntimeWarning raised inside numpy
        log.info("after the warnings")
    text = (tmp_path / "kilomatch.log").read_text()
    assert f"kilomatch {__version__}" in text and f"numpy {np.__version__}" in text
    assert "clustering.max_distance = 50" in text and "n_jobs = 1" in text
    assert "clustering.n_iter" not in text  # a default is not listed
    assert "WARNING window too small (test)" in text
    assert "WARNING RuntimeWarning: divide by zero" in text
    assert text.index("versions:") < text.index("window too small") < text.index("after the")
    assert text.rstrip().endswith("2 warnings in this run (above)")


def test_python_warnings_restored_after_the_run(tmp_path):
    before = warnings.showwarning
    with RunLog() as run_log:
        run_log.open(tmp_path)
    assert warnings.showwarning is before
