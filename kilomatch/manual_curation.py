"""Apply a reviewer's decisions (``curation.json``) to a finished run.

The automatic results stay as they are; the curated ones go to ``OUTPUT/curated/``. The file
(docs/review.md) is ``{"decisions": [...]}``, each decision a dict with ``cluster`` (an id of
the run's ``IdxCluster.npy``) and ``action``:

- ``accept``: the cluster is right (recorded, changes nothing);
- ``reject``: its units become unmatched;
- ``split`` with ``units``: those units leave the cluster and form a new cluster of their own
  (a part left with one unit is unmatched). Several splits of one cluster make several new
  clusters;
- ``merge`` with ``with`` (a cluster id, or a list of them): the clusters become one, with the
  smallest id.

Any other field (``note``, ``reviewer``, ...) is kept in the file and ignored here. Untouched
clusters keep their id, so curated ids are not contiguous; new clusters from splits take ids
after the run's largest, in the order of the decisions. Everything depends only on the run's
automatic results and the file: applying the same file twice writes the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import KilomatchError

ACTIONS = ("accept", "reject", "split", "merge")
CURATED_FOLDER = "curated"
MANUAL_REASON = "manual"


@dataclass
class Decision:
    """One reviewer decision. number: 1-based position in the file (for messages)."""

    number: int
    cluster: int
    action: str
    units: tuple = ()
    merge_with: tuple = ()

    def __str__(self) -> str:
        extra = (f", units {list(self.units)}" if self.units else "") + (
            f", with {list(self.merge_with)}" if self.merge_with else "")
        return f"decision {self.number} ({self.action} cluster {self.cluster}{extra})"


@dataclass
class ManualResult:
    """idx_cluster: (N,) curated cluster of each unit (-1 unmatched); removed_pairs (R, 2) and
    added_pairs (A, 2): unit pairs (i < j) the decisions took apart or joined."""

    idx_cluster: np.ndarray
    removed_pairs: np.ndarray
    added_pairs: np.ndarray


def _integer(value, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise KilomatchError(f"{where}: {what} must be an integer, found {value!r}")
    return int(value)


def parse_decisions(tree, source: str = "curation.json") -> list:
    """Decisions from the loaded JSON ``tree``; a malformed entry is an error naming it."""
    if not isinstance(tree, dict) or not isinstance(tree.get("decisions"), list):
        raise KilomatchError(f'{source}: expected {{"decisions": [...]}} at the top level')
    out = []
    for number, entry in enumerate(tree["decisions"], 1):
        where = f"{source}: decision {number} ({json.dumps(entry)})"
        if not isinstance(entry, dict) or "cluster" not in entry or "action" not in entry:
            raise KilomatchError(f"{where}: needs a cluster and an action")
        action = entry["action"]
        if action not in ACTIONS:
            raise KilomatchError(f"{where}: unknown action {action!r}; use one of "
                                 f"{', '.join(ACTIONS)}")
        cluster = _integer(entry["cluster"], "cluster", where)
        units, merge_with = (), ()
        if action == "split":
            if not isinstance(entry.get("units"), list) or not entry["units"]:
                raise KilomatchError(f"{where}: a split needs a non-empty list of units that "
                                     "leave the cluster")
            units = tuple(_integer(u, "a unit", where) for u in entry["units"])
        if action == "merge":
            other = entry.get("with")
            other = other if isinstance(other, list) else [other]
            if other == [None] or not other:
                raise KilomatchError(f"{where}: a merge needs 'with': a cluster id (or a list)")
            merge_with = tuple(_integer(c, "'with'", where) for c in other)
        out.append(Decision(number, cluster, action, units, merge_with))
    return out


def read_decisions(path) -> list:
    """Decisions of a ``curation.json`` file."""
    path = Path(path)
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KilomatchError(f"{path}: no such curation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KilomatchError(f"{path}: not valid JSON ({err})") from None
    return parse_decisions(tree, str(path))


class _Groups:
    """Union of cluster ids; a group is named by its smallest id."""

    def __init__(self):
        self.parent = {}

    def find(self, c: int) -> int:
        self.parent.setdefault(c, c)
        while self.parent[c] != c:
            self.parent[c] = self.parent[self.parent[c]]
            c = self.parent[c]
        return c

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        self.parent[max(a, b)] = min(a, b)


def _check(decisions: list, idx: np.ndarray) -> None:
    """Refer only to existing clusters and their units; a cluster accepted or rejected takes
    no other decision."""
    clusters = set(np.unique(idx[idx > 0]).tolist())
    about = {}  # cluster -> decisions that name it
    for d in decisions:
        for c in (d.cluster, *d.merge_with):
            if c not in clusters:
                raise KilomatchError(f"{d}: no cluster {c} in this run (ids as in "
                                     "IdxCluster.npy)")
            about.setdefault(c, []).append(d)
        if d.action == "merge" and d.cluster in d.merge_with:
            raise KilomatchError(f"{d}: a cluster cannot merge with itself")
    for c, named in about.items():
        verdict = next((d for d in named if d.action in ("accept", "reject")), None)
        other = next((d for d in named if d is not verdict), None)
        if verdict is not None and other is not None:
            raise KilomatchError(f"{other} contradicts {verdict}: a cluster that is accepted "
                                 "or rejected takes no other decision")
    leaving = {}
    for d in (d for d in decisions if d.action == "split"):
        members = set(np.flatnonzero(idx == d.cluster).tolist())
        for u in d.units:
            if u < 0 or u >= idx.size:
                raise KilomatchError(f"{d}: no unit {u} (units are 0..{idx.size - 1})")
            if u not in members:
                raise KilomatchError(f"{d}: unit {u} is not in cluster {d.cluster} (it is in "
                                     f"{'no cluster' if idx[u] < 0 else f'cluster {idx[u]}'})")
            if u in leaving:
                raise KilomatchError(f"{d}: unit {u} already leaves in {leaving[u]}")
            leaving[u] = d
        if members <= {u for u, e in leaving.items() if e.cluster == d.cluster}:
            raise KilomatchError(f"{d}: every unit of cluster {d.cluster} would leave; use "
                                 "reject to unmatch them all")


def apply_decisions(idx_cluster, session, decisions: list, shank=None) -> ManualResult:
    """Curated clusters from the automatic ones and the reviewer's decisions.

    idx_cluster: (N,) automatic clusters (> 0; -1 unmatched). session: (N,) session of each
    unit. shank: (N,) shank of each unit, or None. Splits are applied first, then merges (of
    what is left of each cluster), then rejects. A decision that contradicts the data (an
    unknown cluster or unit, a merge that would put two units of one session or of two shanks
    together) is a KilomatchError naming it.
    """
    idx = np.asarray(idx_cluster).reshape(-1).astype(np.int64)
    session = np.asarray(session).reshape(-1)
    _check(decisions, idx)
    new = idx.copy()
    next_id = int(idx.max(initial=0)) + 1
    for d in decisions:
        if d.action == "split":
            new[list(d.units)] = next_id
            next_id += 1
    groups = _Groups()
    members = {}  # group id -> units, kept up to date as groups join
    for d in (d for d in decisions if d.action == "merge"):
        for other in d.merge_with:
            a, b = groups.find(d.cluster), groups.find(other)
            if a == b:
                continue
            units_a = members.get(a, np.flatnonzero(new == a))
            units_b = members.get(b, np.flatnonzero(new == b))
            both = np.concatenate([units_a, units_b])
            # a cluster may already hold two units of one session (a sorter split kept by
            # the curation); only a session seen in both clusters is a conflict
            shared = np.intersect1d(session[units_a], session[units_b])
            if shared.size:
                s = int(shared[0])
                pair = (units_a[session[units_a] == s][0], units_b[session[units_b] == s][0])
                raise KilomatchError(
                    f"{d}: would put units {pair[0]} and {pair[1]}, both of session {s}, in "
                    "one cluster")
            if shank is not None and np.unique(np.asarray(shank)[both]).size > 1:
                raise KilomatchError(f"{d}: clusters {a} and {b} are on different shanks")
            groups.union(a, b)
            members[groups.find(a)] = both
    for group, units in members.items():
        new[units] = group
    for d in decisions:
        if d.action == "reject":
            new[idx == d.cluster] = -1
    # a part left with a single unit is no longer a tracked neuron
    ids, counts = np.unique(new[new > 0], return_counts=True)
    new[np.isin(new, ids[counts == 1])] = -1
    from .pipeline import matched_pairs
    before, after = matched_pairs(idx), matched_pairs(new)
    return ManualResult(new, _pair_difference(before, after), _pair_difference(after, before))


def _pair_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of the (., 2) pair array ``a`` not in ``b``, in the order of ``a``."""
    from .curation import pairs_in
    a = np.asarray(a, np.int64).reshape(-1, 2)
    return a[~pairs_in(a, b)]


def _decision_arrays(decisions: list) -> dict:
    """The decisions as plain arrays for CurationResults.npz."""
    split_units = [(k, u) for k, d in enumerate(decisions) for u in d.units]
    merge_with = [(k, c) for k, d in enumerate(decisions) for c in d.merge_with]
    return {
        "manual_cluster": np.array([d.cluster for d in decisions], np.int64),
        "manual_action": np.array([d.action for d in decisions], dtype="<U6"),
        "manual_split_units": np.array(split_units, np.int64).reshape(-1, 2),
        "manual_merge_with": np.array(merge_with, np.int64).reshape(-1, 2),
    }


def _curated_confidence(idx: np.ndarray, new: np.ndarray, confidence: np.ndarray,
                        folder: Path) -> np.ndarray:
    """match_confidence (N,) after the decisions: kept for units whose cluster kept its
    members, recomputed for the others from the run's candidate-pair probabilities
    (CandidatePairs.npz), NaN for units left unmatched or with no scored pair in their new
    cluster. A pair the reviewer joined that was never a candidate has no probability and
    does not count."""
    from .curation import within_cluster_pairs
    from .linking import match_confidence, pair_lookup
    moved = new != idx
    touched = (np.isin(new, new[moved]) | np.isin(idx, idx[moved])) & (new > 0)
    out = confidence.astype(np.float64).copy()
    out[new <= 0] = np.nan
    if not touched.any():
        return out
    path = folder / "CandidatePairs.npz"
    if not path.is_file():
        raise KilomatchError(f"{path}: missing; apply-curation needs it to recompute "
                             "match_confidence for the clusters the decisions change")
    with np.load(path, allow_pickle=False) as z:
        if "probability" not in z.files:
            out[touched] = np.nan
            return out
        pairs, p = z["pairs"].astype(np.int64), z["probability"].astype(np.float64)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))  # pair_lookup wants them sorted by (i, j)
    pairs, p = pairs[order], p[order]
    q = within_cluster_pairs(np.where(touched, new, -1))
    found, value = pair_lookup(pairs, p, q, idx.size)
    keep = found & np.isfinite(value)
    out[touched] = match_confidence(idx.size, q[keep], value[keep])[touched]
    return out


def _curated_units_csv(folder: Path, idx: np.ndarray, new: np.ndarray
                       ) -> tuple[str, np.ndarray | None]:
    """The text of the run's ``units.csv`` with its cluster column replaced by the curated
    clusters ``new``, and its match_confidence column, when it has one, by
    :func:`_curated_confidence`; and the unit each unit duplicates from its duplicate_of
    column (tracked.twin_of), None for a run written before that column existed."""
    from .tracked import twin_of
    path = folder / "units.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) - 1 != idx.size:
        raise KilomatchError(f"{path} has {len(rows) - 1} units, IdxCluster.npy {idx.size}")
    column = rows[0].index("cluster")
    conf_column = rows[0].index("match_confidence") if "match_confidence" in rows[0] else None
    if conf_column is not None:
        confidence = _curated_confidence(
            idx, new, np.array([float(r[conf_column]) for r in rows[1:]]), folder)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(rows[0])
    for k, (row, c) in enumerate(zip(rows[1:], new)):
        row[column] = str(int(c))
        if conf_column is not None:
            row[conf_column] = f"{confidence[k]:.3f}"  # as export.save_units_csv writes it
        writer.writerow(row)
    twin = None
    if "duplicate_of" in rows[0]:
        column = rows[0].index("duplicate_of")
        twin = twin_of([row[column] for row in rows[1:]], path)
    return buf.getvalue(), twin


def apply_curation(output_folder, curation) -> Path:
    """Apply ``curation`` (a curation.json path, or its loaded dict) to the run in
    ``output_folder`` and write ``output_folder/curated/``: IdxCluster.npy, MatchedPairs.npy,
    units.csv, tracked_neurons.csv, CurationResults.npz (the automatic curation plus the
    manual decisions, reason ``manual``) and Output.npz, last. Returns the curated folder."""
    from .export import save_npy, save_npz, save_text
    from .tracked import read_sorter_ids, tracked_csv
    folder = Path(output_folder)
    if not (folder / "Output.npz").is_file():
        raise KilomatchError(f"{folder} holds no finished kilomatch run (no Output.npz)")
    for name in ("CurationResults.npz", "units.csv"):
        if not (folder / name).is_file():
            raise KilomatchError(f"{folder / name}: missing; apply-curation needs the run's "
                                 "result files as kilomatch wrote them")
    decisions = (parse_decisions(curation) if isinstance(curation, dict)
                 else read_decisions(curation))
    with np.load(folder / "Output.npz", allow_pickle=False) as z:
        output = {k: z[k] for k in z.files}
    with np.load(folder / "CurationResults.npz", allow_pickle=False) as z:
        automatic = {k: z[k] for k in z.files}
    idx = output["IdxCluster"].reshape(-1)
    manual = apply_decisions(idx, output["SessionIndex"], decisions, output.get("Shank"))
    new = manual.idx_cluster

    reasons = [str(r) for r in automatic["reason_names"]]
    code = reasons.index(MANUAL_REASON) if MANUAL_REASON in reasons else len(reasons)
    if code == len(reasons):
        reasons.append(MANUAL_REASON)
    results = dict(automatic)
    results.update({
        "IdxCluster_automatic": idx,
        "IdxCluster": new,
        "removed_pairs": np.vstack([automatic["removed_pairs"].reshape(-1, 2),
                                    manual.removed_pairs]).astype(np.int64),
        "removed_reason": np.concatenate([
            automatic["removed_reason"],
            np.full(len(manual.removed_pairs), code)]).astype(np.int8),
        "reason_names": np.array(reasons),
        # a removal decided by hand has no match probability nor distance ratio
        **{key: np.concatenate([
            automatic.get(key, np.full(len(automatic["removed_reason"]), np.nan)),
            np.full(len(manual.removed_pairs), np.nan)]).astype(np.float32)
           for key in ("removed_probability", "removed_distance_ratio")},
        "added_pairs": manual.added_pairs,
        "added_reason": np.full(len(manual.added_pairs), code, np.int8),
        **_decision_arrays(decisions),
    })
    settings = json.loads((folder / "kilomatch_settings.json").read_text(encoding="utf-8"))
    input_folder = Path(settings.get("path_to_data", ""))
    sorter_ids = read_sorter_ids(input_folder, idx.size) if input_folder.is_dir() else None
    from .pipeline import matched_pairs
    pairs = matched_pairs(new)
    output.update({"IdxCluster": new, "MatchedPairs": pairs,
                   "NumClusters": np.int64(np.unique(new[new > 0]).size)})

    out = folder / CURATED_FOLDER
    out.mkdir(exist_ok=True)
    if (out / "Output.npz").exists():  # first, so nothing looks complete while we write
        (out / "Output.npz").unlink()
    save_npy(out / "IdxCluster.npy", new.reshape(-1, 1))
    save_npy(out / "MatchedPairs.npy", pairs)
    units_text, twin = _curated_units_csv(folder, idx, new)
    save_text(out / "units.csv", units_text)
    save_text(out / "tracked_neurons.csv",
              tracked_csv(new, output["SessionIndex"], sorter_ids, twin))
    save_npz(out / "CurationResults.npz", results)
    save_npz(out / "Output.npz", output)
    import logging
    changed = np.unique(np.concatenate([idx[new != idx], new[new != idx]]))
    logging.getLogger("kilomatch").info(
        "applied %d decisions: %d units changed cluster (clusters %s); %d pairs taken apart, "
        "%d joined; results in %s", len(decisions), int((new != idx).sum()),
        ", ".join(map(str, changed[changed > 0].tolist())) or "none",
        len(manual.removed_pairs), len(manual.added_pairs), out)
    return out


def main(argv=None) -> int:
    """``kilomatch apply-curation OUTPUT_FOLDER curation.json [--debug]``."""
    import argparse
    from .cli import run_command, setup_logging
    p = argparse.ArgumentParser(
        prog="kilomatch apply-curation",
        description="Apply a reviewer's curation.json to a finished run; results go to "
                    "OUTPUT_FOLDER/curated/ (the automatic results are kept).")
    p.add_argument("output_folder", help="a finished run's output folder")
    p.add_argument("curation", help="curation.json (docs/review.md describes it)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    setup_logging()
    return run_command(lambda: apply_curation(args.output_folder, args.curation) and None,
                       debug=args.debug)
