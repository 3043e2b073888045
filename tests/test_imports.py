"""The module graph has no cycle through the pipeline: the writers, figures and result types
import without it (the pipeline imports them, never the other way round)."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("module", ["kilomatch.export", "kilomatch.assemble",
                                    "kilomatch.results", "kilomatch.figures"])
def test_imports_without_the_pipeline(module):
    code = (f"import sys, {module}; "
            "sys.exit('kilomatch.pipeline' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr or f"{module} imported kilomatch.pipeline"


def test_result_types_keep_their_public_home():
    from kilomatch import pipeline, results
    for name in ("Result", "RoundResult", "UnitFeatures", "ShankPart", "shank_parts"):
        assert getattr(pipeline, name) is getattr(results, name)


def test_writers_do_not_import_the_clustering_libraries():
    """The writers and readers (export: report, apply-curation) start without scikit-learn,
    hdbscan and scipy.ndimage, about 2 s of imports that only a run needs (issue 15)."""
    code = ("import sys, kilomatch.export, kilomatch.review, kilomatch.manual_curation; "
            "sys.exit(' '.join(m for m in ('sklearn', 'hdbscan', 'pandas', 'scipy.ndimage') "
            "if m in sys.modules) or None)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
