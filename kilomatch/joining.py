"""The last curation step: final clusters that the match probability says are one neuron are
joined (docs/method.md, step 4).

IHDBSCAN's excess-of-mass selection keeps the most stable clusters of the similarity's
hierarchy. Where one neuron's units are tighter in pairs than across (two sessions of one
probe position against two of another, or a unit that looks a little less like the others),
it keeps the two halves as two clusters, or leaves some of the neuron's units in no cluster,
although every pair across is a likely match. The match probability (kilomatch.probability)
weighs each candidate pair on all its evidence; this step joins two groups (a final cluster,
or a unit in none) when it is sure of the whole of them:

- the two groups share no session, and every pair of units across is a candidate pair
  (one shank, corrected depths within clustering.max_distance), but for pairs whose sessions
  are further apart than clustering.max_session_gap (never candidates: the gap bounds the
  work, it is no evidence against a match);
- or they share sessions only through pairs of units that the refractory test judged one
  neuron split by the sorter (kilomatch.sorter_splits): a neuron split in some sessions
  leaves the second halves in a cluster of their own beside the neuron's cluster (on the
  suite's sorter-error study, 137 such pairs of groups in 15 runs, 1,862 true pairs and 2
  wrong ones across; benchmarks/RESULTS.md, "Session 52");
- every pair across is more likely a match than not (probability >= ``min_level``, 0.5),
  but at most ``low_share`` (0.1) of them: one odd pair among ten or more (a session whose
  waveforms the motion correction left less alike) no longer keeps a neuron's halves
  apart (benchmarks/RESULTS.md, "Session 52");
- the mean probability across (every pair) is at least ``mean_level`` (0.8), or at least
  ``interleaved_level`` (0.6) where the two groups' sessions interleave in time (neither
  group's sessions all come before the other's). A neuron followed by another at its place is
  what a join gets wrong most (the pair probability cannot tell the two from one neuron whose
  waveform changed a little); two groups recorded in turn cannot be that, and where the
  drift brings the probe back to an earlier position one neuron's units group by probe
  position, whose pairs across are less alike (benchmarks/RESULTS.md, "Session 53");
- their median amplitudes differ by no more than the step of amplitude the curation cuts
  whatever the probability (kilomatch.curation.AMPLITUDE_STEP_SURE, given as ``max_step``):
  the trees can be sure of two alike neurons several times apart in amplitude, and that cut,
  made before this step, could not undo the join (benchmarks/RESULTS.md, "Session 57");
- where their pairs across lie on average farther apart than the split at distance allows
  (autoCuration.split_distance_ratio spreads of one neuron's positions, the spread that
  split learned), the mean probability across is above its level
  (autoCuration.split_distance_probability, 0.9): that split comes first, and the join
  would otherwise undo its cuts at a mean of 0.8 (benchmarks/RESULTS.md, "Session 76").

Groups are joined highest mean first (average linkage on the probability), and a joined group
is tested again against the others with all its pairs across.

Groups recorded in turn (:func:`join_interleaved`, the curation's step 12). Two groups whose
sessions interleave in time and never coincide carry evidence no pair does: two neurons
alive over the span both groups cover would each have been recorded in most of its sessions,
and so both in some of them; one neuron seen in turn under two labels never is. With m the
share of sessions a neuron of like amplitude goes unseen (learned from the clusters,
:func:`kilomatch.time_gaps.unseen_by_amplitude`), T the sessions of that span and k those
with a unit of either group, two neurons give the pattern with likelihood
(m (1 - m))^k m^(2 (T - k)) and one neuron (1 - m)^k m^(T - k) (1/2)^k, its units labelled
either way (the 1/2: no credit for the labels falling so), a ratio (2 m)^k m^(T - k). With
the mean match probability q across as the prior, one neuron has probability
q / (q + (1 - q) (2 m)^k m^(T - k)). The join asks it to be sure (0.9) over a span of two
sessions or more, with q at least 0.2 (where the pairs deny a match the pattern more likely
comes from what the count does not model: a sorter that gives one neuron's spikes to a
neighbour's unit in some sessions). On SpikeInterface's templates, where one neuron's units
fall into two groups by the phase of the channel grid the drift puts it at, the pairs across
read 0.3-0.7. benchmarks/RESULTS.md, "Session 55".
"""

from __future__ import annotations

import heapq

import numpy as np

# join_interleaved: the least mean match probability across two groups recorded in turn that
# may be joined, and the least span of sessions both cover (module docstring)
INTERLEAVED_MIN_MEAN = 0.2
INTERLEAVED_MIN_OVERLAP = 2


def join_by_probability(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                        mean_level: float = 0.8, min_level: float = 0.5,
                        session: np.ndarray | None = None,
                        max_session_gap: int = 0,
                        split_pairs: np.ndarray | None = None,
                        low_share: float = 0.0,
                        interleaved_level: float | None = None,
                        log_amplitude: np.ndarray | None = None,
                        max_step: float = np.inf,
                        distance_ratio: np.ndarray | None = None,
                        max_distance_ratio: float = np.inf,
                        sure_level: float = 1.0) -> np.ndarray:
    """Final clusters (N,) (-1: in none, >= 0) after joining the groups the probability says
    are one neuron (module docstring). pairs: (P, 2) candidate pairs (i < j, units of
    different sessions); probability: (P,) their match probability; session: (N,) session of
    each unit (None: the pairs alone decide, every pair across must be a candidate);
    max_session_gap: the candidate pairs' session gap (0: none); split_pairs: (K, 2) pairs of
    units of one session judged one neuron split by the sorter (None: none), which two groups
    may share; low_share: the largest share of the pairs across two groups joined that may
    lie below min_level (0: none); interleaved_level: the mean level for two groups whose
    sessions interleave in time (None: mean_level; needs ``session``); log_amplitude: (N,)
    natural log of each unit's amplitude (uV), with max_step: two groups whose median log
    amplitudes differ by more than max_step are never joined (None or inf: no such limit);
    distance_ratio: (P,) each pair's distance over the spread of one neuron's positions
    (kilomatch.position_noise; non-finite: 0), with max_distance_ratio: two groups whose
    pairs across lie on average farther apart than that are joined only where their mean
    probability is above ``sure_level`` (the split at distance's own terms, which the join
    must not undo). Returns new labels (N,): -1 for units in no cluster; a cluster not
    joined keeps its units together (its number may change; kilomatch.clustering.renumber
    gives the final numbers)."""
    labels = np.asarray(labels, dtype=np.int64)
    group = _groups(labels)
    n_groups = int(group.max(initial=-1)) + 1
    guard = log_amplitude is not None and np.isfinite(max_step)
    sessions = _Sessions(group, n_groups, session, max_session_gap, split_pairs,
                         log_amplitude if guard else None)
    far = distance_ratio is not None and np.isfinite(max_distance_ratio)
    edges = _edges(group, n_groups, pairs, probability, min_level, low_share > 0, sessions,
                   distance_ratio if far else None)
    interleaved_level = mean_level if interleaved_level is None else interleaved_level

    def rank(g, h, c, t, n_low, r):
        # a step of amplitude the curation cuts whatever the probability says
        # (curation.AMPLITUDE_STEP_SURE) is not joined back by it
        if guard and _beyond_step(sessions.amplitude[g], sessions.amplitude[h], max_step):
            return None
        # nor are groups the split at distance would take apart again
        if far and r / c > max_distance_ratio and t / c <= sure_level:
            return None
        level = interleaved_level if sessions.interleaved(g, h) else mean_level
        return t / c if t / c >= level and n_low <= low_share * c else None

    owner = np.arange(n_groups)
    _link(edges, owner, sessions, rank)
    return _labels(group, owner)


def join_by_similarity(labels: np.ndarray, pairs: np.ndarray, similarity: np.ndarray,
                       threshold: float, session: np.ndarray, max_session_gap: int = 0,
                       split_pairs: np.ndarray | None = None,
                       log_amplitude: np.ndarray | None = None,
                       max_step: float = np.inf) -> np.ndarray:
    """The join of a run whose match probability could not be fitted (a small study: fewer than
    50 candidate pairs or known non-matches): final clusters (N,) after joining two groups that
    share no session and whose every pair across is a candidate pair with weighted similarity
    (P,) above ``threshold``, the curation's own split threshold. It is the converse of the
    split below that threshold: IHDBSCAN's excess-of-mass selection can keep one neuron's
    sessions as two clusters, or leave a unit out, where every pair across is well above it, and
    without a probability nothing else joins them (on 6-session studies of 15-25 neurons, a
    recall of 0.87-0.93; benchmarks/RESULTS.md, "Session 64"). Other arguments as
    :func:`join_by_probability`, whose rules apply with every pair across asked to be above the
    threshold."""
    above = (np.asarray(similarity, dtype=np.float64) > threshold).astype(np.float64)
    return join_by_probability(labels, pairs, above, 1.0, 0.5, session, max_session_gap,
                               split_pairs, 0.0, 1.0, log_amplitude, max_step)


def _beyond_step(log_a: np.ndarray, log_b: np.ndarray, max_step: float) -> bool:
    """Whether two groups' median log amplitudes (their units' (n,), (m,)) differ by more
    than ``max_step`` (inf: never)."""
    return bool(abs(np.median(log_a) - np.median(log_b)) > max_step)


def join_interleaved(labels: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                     session: np.ndarray, unseen, amplitude: np.ndarray, level: float = 0.9,
                     max_session_gap: int = 0, min_mean: float = INTERLEAVED_MIN_MEAN,
                     min_overlap: int = INTERLEAVED_MIN_OVERLAP,
                     max_step: float = np.inf,
                     step_amplitude: np.ndarray | None = None) -> np.ndarray:
    """Final clusters (N,) after joining groups (final clusters, or units in none) recorded
    in turn: their sessions interleave in time and never coincide, and the probability that
    they are one neuron is at least ``level`` (module docstring, "Groups recorded in turn").

    With q the mean match probability of the pairs across, T the sessions of the span both
    groups cover (from the later first session to the earlier last one), k those of them
    with a unit of either, and m the share of sessions a neuron of their median amplitude
    goes unseen (``unseen``, :func:`kilomatch.time_gaps.unseen_by_amplitude`), that
    probability is q / (q + (1 - q) (2 m)^k m^(T - k)).

    labels: (N,) clusters (-1 none); pairs: (P, 2) candidate pairs; probability: (P,) their
    match probability (non-finite: 0); session: (N,) consecutive session indices;
    amplitude: (N,) uV; max_session_gap: the candidate pairs' session gap (0: none). Two
    groups are joined only where every pair across within that gap is a candidate, q is at
    least ``min_mean``, T at least ``min_overlap`` and their median log amplitudes differ by
    at most ``max_step`` (as join_by_probability's; of ``step_amplitude`` (N,) uV when
    given, the amplitudes the curation compares, while ``amplitude`` says how often a
    neuron goes unseen); the most probable first, and a joined group is tested again with
    all its pairs across. level above 1: the labels as given.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if level > 1:
        return labels.copy()
    group = _groups(labels)
    n_groups = int(group.max(initial=-1)) + 1
    session = np.asarray(session, np.int64)
    sessions = _Sessions(group, n_groups, session, max_session_gap, amplitude=amplitude)
    compared = sessions.amplitude if step_amplitude is None else _Sessions(
        group, n_groups, None, max_session_gap, amplitude=step_amplitude).amplitude
    edges = _edges(group, n_groups, pairs, probability, min_mean, True, sessions)

    def rank(g, h, c, t, n_low, r):  # the probability of one neuron, or None: not joined
        # (r, the sum of the distance ratios across, is not read: groups recorded in turn
        # are often one neuron seen at two phases of the channel grid, farther apart)
        q = t / c
        a, b = sessions.of[g], sessions.of[h]
        lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
        span = hi - lo + 1
        if q < min_mean or span < min_overlap or not sessions.interleaved(g, h):
            return None
        # a step of amplitude the curation cuts whatever the probability says is not
        # joined back: the median amplitude of both groups (m, below) would then be the
        # larger neuron's, seen far more often than the smaller (a 59 uV neuron of two
        # sessions joined to a 298 uV one of five on a sparse study, 45 um apart across)
        if np.isfinite(max_step) and _beyond_step(
                np.log(compared[g]), np.log(compared[h]), max_step):
            return None
        both = np.concatenate([a, b])
        k = np.unique(both[(both >= lo) & (both <= hi)]).size
        m = float(unseen(np.median(np.concatenate([sessions.amplitude[g],
                                                   sessions.amplitude[h]]))))
        one = q / (q + (1 - q) * (2 * m) ** k * m ** (span - k))
        return one if one >= level else None

    owner = np.arange(n_groups)
    _link(edges, owner, sessions, rank)
    return _labels(group, owner)


def _edges(group: np.ndarray, n_groups: int, pairs: np.ndarray, probability: np.ndarray,
           min_level: float, count_low: bool, sessions: "_Sessions",
           ratio: np.ndarray | None = None) -> dict:
    """{(g, h): (pairs across, sum of their probability, pairs below min_level, sum of their
    distance ratios)}, g < h, of the pairs of groups with a pair across at ``min_level`` or
    more (with ``count_low`` the pairs below it are counted too, else they are not) whose
    counted pairs are all the pairs they can have (``sessions.whole``). ratio: (P,) each
    pair's distance ratio (non-finite: 0), or None (sums of 0)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    probability = np.asarray(probability, dtype=np.float64)
    if ratio is not None:
        ratio = np.nan_to_num(np.asarray(ratio), nan=0.0, posinf=0.0, neginf=0.0)
    # Two groups may ever be joined only when a likely pair joins them, so only the group
    # pairs of the likely pairs are counted; the unlikely pairs (most of the candidate pairs,
    # 28 M at 10^5 units) are looked up among those keys a block at a time.
    likely = probability >= min_level
    rows = np.flatnonzero(likely)
    ga, gb = group[pairs[rows, 0]], group[pairs[rows, 1]]
    across = ga != gb
    lo, hi = np.minimum(ga, gb)[across], np.maximum(ga, gb)[across]
    p = probability[rows][across]
    if p.size == 0:
        return {}
    key, row = np.unique(lo * n_groups + hi, return_inverse=True)
    row = row.reshape(-1)
    count = np.bincount(row, minlength=key.size)
    total = np.bincount(row, weights=p, minlength=key.size)
    far = np.zeros(key.size) if ratio is None else np.bincount(
        row, weights=ratio[rows][across], minlength=key.size)
    low = np.zeros(key.size, np.int64)
    if count_low:
        _count_unlikely(np.flatnonzero(~likely), pairs, probability, group, n_groups, key,
                        count, total, low, ratio, far)
    a, b = key // n_groups, key % n_groups
    edges = {}
    for i, j, c, t, n_low, r in zip(a.tolist(), b.tolist(), count.tolist(), total.tolist(),
                                    low.tolist(), far.tolist()):
        if sessions.whole(i, j, c):
            edges[(i, j)] = (c, t, n_low, r)
    return edges


class _Sessions:
    """The sessions of each group (and with ``amplitude`` (N,) its units' amplitudes, uV or
    their logs as given), how
    many candidate pairs two groups can have across, and how many of their pairs of one
    session are sorter splits."""

    def __init__(self, group: np.ndarray, n_groups: int, session, max_session_gap: int,
                 split_pairs=None, amplitude=None):
        self.size = np.bincount(group, minlength=n_groups)
        self.gap = int(max_session_gap or 0)
        self.of = self.amplitude = None
        order = np.argsort(group, kind="stable")
        cuts = np.cumsum(self.size)[:-1]
        if session is not None:
            self.of = dict(enumerate(np.split(np.asarray(session)[order], cuts)))
        if amplitude is not None:
            self.amplitude = dict(enumerate(np.split(
                np.asarray(amplitude, np.float64)[order], cuts)))
        self.splits: dict = {}  # group -> {other group: split pairs across}
        if split_pairs is not None and self.of is not None:
            split_pairs = np.asarray(split_pairs, np.int64).reshape(-1, 2)
            for g, h in zip(group[split_pairs[:, 0]].tolist(), group[split_pairs[:, 1]].tolist()):
                if g != h:
                    for x, y in ((g, h), (h, g)):
                        row = self.splits.setdefault(x, {})
                        row[y] = row.get(y, 0) + 1

    def possible(self, g: int, h: int) -> int:
        """Pairs across groups g and h that would be candidate pairs if the two were one
        neuron: those within the session gap. A pair of one session counts too (it is never
        a candidate), so groups that share a session are never whole, unless the pair is a
        sorter split: it is then no pair the two groups must have."""
        if self.of is None:
            return int(self.size[g] * self.size[h])
        gap = np.abs(np.subtract.outer(self.of[g], self.of[h]))
        n = int(gap.size if self.gap <= 0 else np.count_nonzero(gap <= self.gap))
        return n - self.splits.get(g, {}).get(h, 0)

    def interleaved(self, g: int, h: int) -> bool:
        """Whether the sessions of groups g and h interleave in time: neither group's all come
        before the other's (False without sessions)."""
        if self.of is None:
            return False
        a, b = self.of[g], self.of[h]
        return not (a.max() < b.min() or b.max() < a.min())

    def whole(self, g: int, h: int, count: int) -> bool:
        """Whether ``count`` counted pairs across g and h are all the pairs they can have."""
        return count > 0 and count == self.possible(g, h)

    def join(self, g: int, h: int) -> None:
        """h joins g."""
        self.size[g] += self.size[h]
        for per_group in (self.of, self.amplitude):
            if per_group is not None:
                per_group[g] = np.concatenate([per_group[g], per_group.pop(h)])
        for k, n in self.splits.pop(h, {}).items():
            self.splits[k].pop(h)  # k == g: their splits are now inside g
            if k != g:
                row = self.splits.setdefault(g, {})
                row[k] = row.get(k, 0) + n
                self.splits[k][g] = self.splits[k].get(g, 0) + n


BLOCK = 4_000_000  # unlikely pairs looked up at a time (a few 32 MB arrays)


def _count_unlikely(rows: np.ndarray, pairs: np.ndarray, probability: np.ndarray,
                    group: np.ndarray, n_groups: int, key: np.ndarray, count: np.ndarray,
                    total: np.ndarray, low: np.ndarray, ratio: np.ndarray | None,
                    far: np.ndarray) -> None:
    """Add the pairs ``rows`` (unlikely ones) across two groups of ``key`` (K,) sorted (lower
    group * n_groups + higher) to their count, total probability (a non-finite one as 0),
    low and far (the sum of their ``ratio`` (P,), None: none) (each (K,), in place)."""
    for at in range(0, rows.size, BLOCK):
        part = rows[at:at + BLOCK]
        ga, gb = group[pairs[part, 0]], group[pairs[part, 1]]
        k = np.minimum(ga, gb) * n_groups + np.maximum(ga, gb)
        slot = np.minimum(np.searchsorted(key, k), key.size - 1)
        hit = (key[slot] == k) & (ga != gb)
        slot = slot[hit]
        p = np.nan_to_num(probability[part][hit], nan=0.0, posinf=0.0, neginf=0.0)
        n = np.bincount(slot, minlength=key.size)  # every one of them is low
        count += n
        low += n
        total += np.bincount(slot, weights=p, minlength=key.size)
        if ratio is not None:
            far += np.bincount(slot, weights=ratio[part][hit], minlength=key.size)


def _groups(labels: np.ndarray) -> np.ndarray:
    """Group of each unit (N,): its cluster, or a group of its own for a unit in none (numbered
    after the clusters, in unit order)."""
    group = labels.copy()
    alone = np.flatnonzero(labels < 0)
    group[alone] = labels.max(initial=-1) + 1 + np.arange(alone.size)
    return group


def _link(edges: dict, owner: np.ndarray, sessions: _Sessions, rank) -> None:
    """Average linkage over ``edges`` {(g, h): (pairs across, sum of their probability, pairs
    below the least level, sum of their distance ratios)}, g < h, of pairs of groups whose
    pairs across are all the pairs they can have: ``rank(g, h, *edge)`` is a pair's
    priority, or None where it may not be joined; the pair of highest priority is joined
    first (h joins g). A joined group may be joined to a third only where its counted pairs
    across are still all the pairs it can have (a part with no edge to the third has none,
    which holds only where it can have none). Fills owner (G,): each group's surviving group
    (the lower number)."""
    neighbours: dict = {}
    for g, h in edges:
        neighbours.setdefault(g, set()).add(h)
        neighbours.setdefault(h, set()).add(g)
    heap = [(-r, g, h) for (g, h), e in edges.items()
            if (r := rank(g, h, *e)) is not None]
    heapq.heapify(heap)
    while heap:
        value, g, h = heapq.heappop(heap)
        e = edges.get((g, h))
        if e is None or -value != rank(g, h, *e):
            continue  # stale: one side was joined since
        del edges[(g, h)]
        sessions.join(g, h)
        kept = set()
        for k in sorted((neighbours[g] | neighbours[h]) - {g, h}):
            e_g = edges.pop((min(g, k), max(g, k)), (0, 0.0, 0, 0.0))
            e_h = edges.pop((min(h, k), max(h, k)), (0, 0.0, 0, 0.0))
            neighbours[k].discard(g)
            neighbours[k].discard(h)
            e = tuple(x + y for x, y in zip(e_g, e_h))
            if not sessions.whole(min(g, k), max(g, k), e[0]):
                continue
            edges[(min(g, k), max(g, k))] = e
            neighbours[k].add(g)
            kept.add(k)
            r = rank(min(g, k), max(g, k), *e)
            if r is not None:
                heapq.heappush(heap, (-r, min(g, k), max(g, k)))
        neighbours[g] = kept
        del neighbours[h]
        owner[h] = g
    for x in range(owner.size):  # owner[x] <= x: follow each chain to its surviving group
        owner[x] = owner[owner[x]]


def _labels(group: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Labels (N,) from each unit's group (N,) and each group's surviving group (G,): -1 for a
    unit alone in its group."""
    final = owner[group]
    size = np.bincount(final, minlength=owner.size)
    return np.where(size[final] > 1, final, -1)
