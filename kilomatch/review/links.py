"""The strength of every candidate link of a finished run, read in one place.

A run that learned a match probability per pair stores it as ``probability`` in
``CandidatePairs.npz`` (whichever ``clustering.method`` made the clusters); older runs, and
runs too small to fit it (NaN), have only the weighted similarity. The report shows the
probability when the run has it, else the similarity, and says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KilomatchError


@dataclass
class Links:
    """Candidate pairs and how strongly each links its two units.

    pairs: (P, 2) unit indices. value: (P,) match probability (0..1) or weighted similarity
    (Fisher z units). threshold: (P,) the value at which the run keeps a link (the same for
    every pair, except per shank). kind: "probability" or "similarity"; label: how the page
    names the value; threshold_label: where the threshold comes from.
    """

    pairs: np.ndarray
    value: np.ndarray
    threshold: np.ndarray
    kind: str
    label: str
    threshold_label: str


def _per_pair(values, n_pairs: int, shank_of_pair, shank_ids) -> np.ndarray:
    """(P,) threshold of each pair from one value, or from one per shank (multi-shank runs)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 1:
        return np.full(n_pairs, values[0])
    if shank_of_pair is None or shank_ids is None:
        raise KilomatchError("the run has a threshold per shank but CandidatePairs.npz has no "
                             "shank of each pair")
    return values[np.searchsorted(np.asarray(shank_ids), shank_of_pair)]


def read_links(folder, settings: dict) -> Links:
    """The links of the run in ``folder`` (its ``settings``: kilomatch_settings.json)."""
    folder = Path(folder)
    path = folder / "CandidatePairs.npz"
    if not path.is_file():
        raise KilomatchError(f"{path} is missing: the report needs the run's candidate pairs")
    with np.load(path, allow_pickle=False) as z:
        pairs = z["pairs"].reshape(-1, 2).astype(np.int64)
        shank_of_pair = z["shank"] if "shank" in z.files else None
        # a run too small to fit the probability stores it as NaN: its links are similarities
        if "probability" in z.files and np.isfinite(z["probability"]).all():
            value, kind = z["probability"].astype(np.float64), "probability"
        else:
            value, kind = z["similarity"].astype(np.float64), "similarity"
    shank_ids = None
    with np.load(folder / "Output.npz", allow_pickle=False) as z:
        if "ShankIds" in z.files:
            shank_ids = z["ShankIds"]
    if kind == "probability":
        cut = settings.get("autoCuration", {}).get("link_probability", 0.5)
        threshold_label = "the run's autoCuration.link_probability"
    elif settings.get("autoCuration", {}).get("auto_split", True):
        # the curation cut every cluster at this value: a link near it is the weakest kept
        with np.load(folder / "CurationResults.npz", allow_pickle=False) as z:
            cut = z["split_threshold"]
        threshold_label = "the curation's split threshold"
    else:
        cut = np.load(folder / "SimilarityThreshold.npy", allow_pickle=False)
        threshold_label = "the LDA threshold (SimilarityThreshold.npy)"
    threshold = _per_pair(cut, len(pairs), shank_of_pair, shank_ids)
    label = "match probability" if kind == "probability" else "weighted similarity"
    return Links(pairs, value, threshold, kind, label, threshold_label)
