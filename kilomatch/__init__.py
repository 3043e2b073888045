"""kilomatch: track the same neurons across days of chronic high-density recordings.

Run the whole pipeline with :func:`run` (a settings file, a dict, or nothing for defaults),
many studies with :func:`run_many` (here or on a Dask cluster), or call the stages one by one: :mod:`load`, :mod:`features`, :mod:`similarity`,
:mod:`clustering`, :mod:`motion`, :mod:`correction`, :mod:`curation`, :mod:`export`.
"""

from .errors import KilomatchError
from .settings import Settings, load as load_settings

__version__ = "0.1.0"


def run(settings=None, **kwargs):
    """Run the whole pipeline; see :func:`kilomatch.pipeline.run`."""
    from .pipeline import run as _run
    return _run(settings, **kwargs)


def run_many(settings_list, client=None, **kwargs):
    """Run many studies, in this process or on a Dask cluster; see
    :func:`kilomatch.batch.run_many`."""
    from .batch import run_many as _run_many
    return _run_many(settings_list, client, **kwargs)


def plot_cluster(output, cluster_id: int):
    """Figure of one tracked neuron across sessions; see :func:`kilomatch.figures.plot_cluster`."""
    from .figures import plot_cluster as _plot
    return _plot(output, cluster_id)


def report(output_folder, **kwargs):
    """Write ``output_folder/report/index.html``, the page to review a run and record
    decisions; see :func:`kilomatch.review.build_report`."""
    from .review import build_report
    return build_report(output_folder, **kwargs)


def apply_curation(output_folder, curation):
    """Apply a reviewer's ``curation.json`` to a run (results in ``output_folder/curated/``);
    see :func:`kilomatch.manual_curation.apply_curation`."""
    from .manual_curation import apply_curation as _apply
    return _apply(output_folder, curation)


__all__ = ["run", "run_many", "plot_cluster", "report", "apply_curation", "load_settings",
           "Settings", "KilomatchError", "__version__"]
