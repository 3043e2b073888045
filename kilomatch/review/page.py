"""Write the review page of a finished run: ``OUTPUT/report/index.html`` and ``report/img/``.

The page reads nothing at view time: the cluster table is JSON embedded in the page, the CSS
and script are inlined, and figures are PNG files beside it (loaded lazily), so it opens from
disk, offline, and can be copied elsewhere as one folder. Only the output folder is read; the
pipeline is not run again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import KilomatchError
from ..tracked import twin_of
from .clusters import FLAGS, doubtful_cuts, doubtful_groups, summarize_clusters
from .links import read_links

log = logging.getLogger("kilomatch")

REPORT_FOLDER = "report"
IMAGE_FOLDER = "img"
# Cluster figures: inches, dots per inch and font size; about 770 x 510 pixels, shown at their
# own size beside the table, so that the labels stay readable.
CLUSTER_FIGSIZE = (9.6, 6.4)
CLUSTER_DPI = 80
CLUSTER_FONT = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8}
RUN_FIGURES = ("UnitDepth", "Motion", "WeightedSimilarity", "SimilarityFeatures",
               "MatchProbability", "FeatureScatter")


def _template(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _units_columns(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """From the run's units.csv, read once: amplitude (N,) uV, duplicate_of (N,) int (-1
    where blank) and firing_rate_hz (N,), each of the last two None for a run written before
    that column existed."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "amplitude" not in rows[0]:
        raise KilomatchError(f"{path} has no amplitude column")

    amplitude = _numbers(rows, "amplitude", path)
    duplicate_of = twin_of([r["duplicate_of"] for r in rows], path) \
        if rows and "duplicate_of" in rows[0] else None
    rate = _numbers(rows, "firing_rate_hz", path) \
        if rows and "firing_rate_hz" in rows[0] else None
    return amplitude, duplicate_of, rate


def _numbers(rows: list, column: str, path: Path) -> np.ndarray:
    """(N,) float: ``column`` of units.csv's rows, or one error naming the row."""
    values = []
    for k, r in enumerate(rows):
        text = r[column].strip()
        try:
            values.append(float(text))
        except ValueError:
            raise KilomatchError(f"{path}, row {k + 2}: {column} is {text!r}, not a "
                                 "number") from None
    return np.array(values, dtype=float)


def _curation_cuts(folder: Path, idx: np.ndarray) -> dict | None:
    """The curation's doubtful cuts (:func:`kilomatch.review.clusters.doubtful_cuts`) from
    the run's CurationResults.npz; None when the run wrote none, or no probability."""
    path = folder / "CurationResults.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        needed = ("removed_pairs", "removed_probability", "removed_reason", "reason_names")
        if any(k not in z.files for k in needed):
            return None
        return doubtful_cuts(idx, *(z[k] for k in needed))


def _output_for_figures(folder: Path, links) -> dict:
    """The run's arrays for :func:`kilomatch.figures.plot_cluster`, with the page's links."""
    from ..export import load_output
    out = load_output(folder)
    out["pairs"], out["similarity"], out["pair_label"] = links.pairs, links.value, links.label
    if links.threshold.size:
        out["pair_threshold"] = float(np.median(links.threshold))
    return out


def save_small_png(fig, path: Path, dpi: int = CLUSTER_DPI, colors: int = 64) -> None:
    """Save a figure as a palette PNG of ``colors`` colours (atomically): line plots need few
    colours, and a palette image is about a third of the size of a full-colour one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from ..atomic import atomic_write
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    image = image.convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT,
                                          dither=Image.Dither.NONE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def render_cluster_figures(folder: Path, cluster_ids: list, img: Path, links) -> None:
    """Save ``img/cluster_{id}.png`` for each id (one worker's share)."""
    from ..figures import plot_cluster
    import matplotlib
    out = _output_for_figures(folder, links)
    with matplotlib.rc_context(CLUSTER_FONT):
        for cid in cluster_ids:
            save_small_png(plot_cluster(out, cid, figsize=CLUSTER_FIGSIZE),
                           img / f"cluster_{cid}.png")


def _render_all(folder: Path, cluster_ids: list, img: Path, links, n_jobs: int) -> None:
    from ..parallel import n_workers
    workers = n_workers(n_jobs)
    if workers == 1 or len(cluster_ids) < 50:
        render_cluster_figures(folder, cluster_ids, img, links)
        return
    from joblib import Parallel, delayed
    shares = [cluster_ids[k::workers] for k in range(workers)]
    Parallel(n_jobs=workers)(delayed(render_cluster_figures)(folder, share, img, links)
                             for share in shares)


def _summary(output: dict, rows: list, links, settings: dict) -> list:
    idx = output["IdxCluster"].reshape(-1)
    motion = np.asarray(output["Motion"], dtype=np.float64)
    flagged = {f: sum(f in r["flags"] for r in rows) for f in FLAGS}
    return [
        ["units", int(output["NumUnits"])],
        ["sessions", int(output["NumSessions"])],
        ["tracked neurons (clusters)", len(rows)],
        ["units in a cluster", int((idx > 0).sum())],
        ["unmatched units", int((idx <= 0).sum())],
        ["matched pairs", int(len(output["MatchedPairs"]))],
        ["motion range", f"{np.ptp(motion, axis=0).max():.1f} \u00b5m" if motion.size else "-"],
        ["link strength", f"{links.label}, threshold {float(np.median(links.threshold)):.2f}"
         if links.threshold.size else links.label],
        ["features", ", ".join(str(f) for f in output["FeatureNames"])],
        ["flagged", ", ".join(f"{n} {f}" for f, n in flagged.items())],
        ["input folder", settings.get("path_to_data", "")],
    ]


def _copy_run_figures(folder: Path, img: Path) -> list:
    """Copy the run's figures beside the page; returns [{src, title}] in a fixed order."""
    found = sorted((folder / "Figures").glob("**/*.png"),
                   key=lambda p: (p.parent.name, RUN_FIGURES.index(p.stem)
                                  if p.stem in RUN_FIGURES else len(RUN_FIGURES), p.name))
    figures = []
    for path in found:
        rel = path.relative_to(folder / "Figures")
        name = "run_" + "_".join(rel.with_suffix("").parts) + ".png"
        shutil.copyfile(path, img / name)
        title = " / ".join(rel.with_suffix("").parts)
        figures.append({"src": f"{IMAGE_FOLDER}/{name}", "title": title})
    return figures


def page_html(data: dict) -> str:
    """The page: template with the CSS, script and ``data`` (as JSON) inlined."""
    payload = json.dumps(data, separators=(",", ":"), sort_keys=False)
    payload = payload.replace("</", "<\\/")  # the JSON must not end its <script> element
    html = _template("template.html")
    return (html.replace("__CSS__", _template("report.css"))
                .replace("__JS__", _template("report.js"))
                .replace("__TITLE__", _html_text(data["folder"]))
                .replace("__DATA__", payload))


def _html_text(text: str) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def build_report(output_folder, n_jobs: int = 1, figures: bool = True) -> Path:
    """Write ``output_folder/report/index.html`` and its images; returns the page's path.

    n_jobs: worker processes for the per-cluster figures (-1: every core). figures=False
    writes the page without drawing cluster figures (the table alone; for quick looks).
    """
    from ..export import save_text
    folder = Path(output_folder)
    if not (folder / "Output.npz").is_file():
        raise KilomatchError(f"{folder} holds no finished kilomatch run (no Output.npz)")
    settings = json.loads((folder / "kilomatch_settings.json").read_text(encoding="utf-8"))
    with np.load(folder / "Output.npz", allow_pickle=False) as z:
        output = {k: z[k] for k in z.files}
    links = read_links(folder, settings)
    idx = output["IdxCluster"].reshape(-1)
    positions = np.column_stack([output["Locations"][:, 0], output["CorrectedDepth"]])
    amplitude, duplicate_of, rate = _units_columns(folder / "units.csv")
    gap = float(settings.get("autoCuration", {}).get("position_gap_um", 7.0))
    rows = summarize_clusters(idx, output["SessionIndex"], positions, amplitude, links, gap,
                              duplicate_of, _curation_cuts(folder, idx),
                              doubtful_groups(idx, links), rate)

    report = folder / REPORT_FOLDER
    img = report / IMAGE_FOLDER
    img.mkdir(parents=True, exist_ok=True)
    if figures:
        for stale in img.glob("cluster_*.png"):  # an earlier report's clusters may be gone
            stale.unlink()
        log.info("report: drawing %d cluster figures into %s", len(rows), img)
        _render_all(folder, [r["id"] for r in rows], img, links, n_jobs)
    data = {
        "folder": str(folder.resolve()),
        "summary": _summary(output, rows, links, settings),
        "figures": _copy_run_figures(folder, img),
        "link": {"kind": links.kind, "label": links.label,
                 "threshold": round(float(np.median(links.threshold)), 3)
                 if links.threshold.size else None,
                 "threshold_label": links.threshold_label},
        "flags": FLAGS,
        "clusters": rows,
    }
    page = report / "index.html"
    save_text(page, page_html(data))
    size = sum(p.stat().st_size for p in report.rglob("*") if p.is_file())
    log.info("report: %s (%d clusters, %.1f MB with its images)", page, len(rows), size / 1e6)
    return page


def main(argv=None) -> int:
    """``kilomatch report OUTPUT_FOLDER [--n-jobs N] [--debug]``."""
    import argparse
    from ..cli import run_command, setup_logging
    p = argparse.ArgumentParser(
        prog="kilomatch report",
        description="Write OUTPUT_FOLDER/report/index.html: a page to review every tracked "
                    "neuron and record accept / reject / split / merge decisions as "
                    "curation.json (then: kilomatch apply-curation OUTPUT_FOLDER curation.json).")
    p.add_argument("output_folder", help="a finished run's output folder")
    p.add_argument("--n-jobs", type=int, default=1,
                   help="worker processes drawing the cluster figures (-1: every core)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    setup_logging()
    return run_command(lambda: build_report(args.output_folder, n_jobs=args.n_jobs) and None,
                       debug=args.debug)
