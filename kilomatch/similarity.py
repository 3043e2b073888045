"""Candidate pairs and their similarities (docs/method.md, sections 3 and 4).

Only candidate pairs exist: units of different sessions whose motion-corrected depths differ
by at most ``max_distance``. Every similarity is a Fisher z (atanh of a Pearson r, r clipped to
+-R_MAX); a constant feature vector (e.g. the zero ACG of a unit with one spike) has z = 0.
"""

from __future__ import annotations

import numpy as np

from .channel_windows import LocalWaveforms
from .parallel import for_each_in_threads

# Below this many pairs, one thread: starting threads costs more than it saves.
MIN_PAIRS_THREADED = 50_000

R_MAX = 1 - 1e-6  # Pearson r is clipped here before atanh (z <= 7.25)


def candidate_pairs(depth: np.ndarray, session: np.ndarray, max_distance: float,
                    group: np.ndarray | None = None, max_session_gap: int = 0,
                    chunk_pairs: int = 20_000_000) -> np.ndarray:
    """Pairs (i < j) of units in different sessions with |depth_i - depth_j| <= max_distance.

    depth: (N,) corrected depth in um; session: (N,) session ids; group: optional (N,) ids
    (e.g. shank) that must also agree; max_session_gap > 0 keeps only pairs whose sessions
    differ by at most that much. Returns (P, 2) int64, sorted by (i, j). No N x N array:
    with a session gap smaller than the study, each pair of sessions close enough is searched
    on its own (the work grows with the pairs kept, not with all pairs within max_distance,
    ten times more at 200 sessions and a gap of 10); otherwise all units are searched at once
    in chunks of about ``chunk_pairs`` pairs.
    """
    depth = np.asarray(depth, dtype=np.float64)
    session = np.asarray(session).astype(np.int64)
    if depth.size and 0 < max_session_gap < np.ptp(session):
        return _pairs_by_session(depth, session, max_distance, group, max_session_gap)
    order = np.argsort(depth, kind="stable")
    d = depth[order]
    hi = np.searchsorted(d, _reach(d, max_distance), side="right")
    counts = hi - np.arange(d.size) - 1
    ends = np.cumsum(counts)
    parts = []
    first = 0
    while first < d.size:
        done = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, done + chunk_pairs, side="right")))
        last = min(last, d.size)
        c = counts[first:last]
        a = np.repeat(np.arange(first, last), c)
        # Offsets 1..count within each run give the partner's sorted position.
        starts = np.cumsum(c) - c
        b = a + 1 + (np.arange(a.size) - np.repeat(starts, c))
        i, j = order[a], order[b]
        keep = (session[i] != session[j]) & (np.abs(depth[i] - depth[j]) <= max_distance)
        if group is not None:
            keep &= group[i] == group[j]
        parts.append(np.column_stack([i[keep], j[keep]]))
        first = last
    return _sorted_pairs(parts, depth.size)


def _reach(sorted_depth: np.ndarray, max_distance: float) -> np.ndarray:
    """Upper ends of the depth searches: a hair wide, so that the exact test afterwards
    (|d_i - d_j| <= max_distance) decides; the float sum d + max can round either way."""
    return sorted_depth + max_distance * (1 + 1e-9) + 1e-9


def _pairs_by_session(depth, session, max_distance, group, max_session_gap) -> np.ndarray:
    """candidate_pairs for 0 < max_session_gap < the span of sessions: each (group, session)
    block against the blocks of the same group up to max_session_gap sessions later."""
    group = np.zeros(depth.size, np.int64) if group is None else np.asarray(group)
    order = np.lexsort((depth, session, group))
    block = np.flatnonzero((np.diff(session[order]) != 0) | (np.diff(group[order]) != 0)) + 1
    members = np.split(order, block)
    first = order[np.concatenate([[0], block])] if order.size else order
    parts = []
    for k, mine in enumerate(members):
        for later in range(k + 1, len(members)):
            u = first[later]
            if group[u] != group[first[k]] or session[u] - session[first[k]] > max_session_gap:
                break  # blocks are sorted by (group, session)
            theirs = members[later]
            p, q = _within(depth[mine], depth[theirs], max_distance)
            parts.append(np.column_stack([mine[p], theirs[q]]))
    return _sorted_pairs(parts, depth.size)


def _within(a: np.ndarray, b: np.ndarray, max_distance: float) -> tuple:
    """Positions (p, q) of every a[p], b[q] with |a[p] - b[q]| <= max_distance; a and b are
    sorted depths (um)."""
    lo = np.searchsorted(b, -_reach(-a, max_distance), side="left")
    hi = np.searchsorted(b, _reach(a, max_distance), side="right")
    count = hi - lo
    p = np.repeat(np.arange(a.size), count)
    q = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(p.size)
    keep = np.abs(a[p] - b[q]) <= max_distance
    return p[keep], q[keep]


def _sorted_pairs(parts: list, n_units: int) -> np.ndarray:
    """Pairs from parts of (n, 2) unit ids: each as (lower, higher), sorted, int64 (P, 2)."""
    # Sorted by (i, j) through one int64 key: pairs are distinct, so this is the lexicographic
    # order, and one sort of P keys costs a quarter of a two-key lexsort. The keys are made
    # part by part (no (P, 2) copy of the parts), with two-operand minimum and maximum: a
    # reduction along rows of two columns was 0.4 s of 7 M pairs.
    key = np.concatenate([np.minimum(p[:, 0], p[:, 1]).astype(np.int64) * n_units
                          + np.maximum(p[:, 0], p[:, 1]) for p in parts]) if parts else (
        np.empty(0, np.int64))
    key.sort()
    pairs = np.empty((key.size, 2), np.int64)
    np.divmod(key, n_units, out=(pairs[:, 0], pairs[:, 1]))
    return pairs


def within_blocks(depth: np.ndarray, block: np.ndarray, max_distance: float) -> np.ndarray:
    """Pairs (i < j) of units of one block (e.g. one session and shank) with |depth_i -
    depth_j| <= max_distance: (Q, 2) int64, sorted. depth (N,) um; block (N,) ids."""
    depth = np.asarray(depth, dtype=np.float64)
    block = np.asarray(block)
    order = np.lexsort((depth, block))
    parts = []
    for mine in np.split(order, np.flatnonzero(np.diff(block[order]) != 0) + 1):
        p, q = _within(depth[mine], depth[mine], max_distance)
        keep = p < q
        parts.append(np.column_stack([mine[p[keep]], mine[q[keep]]]))
    return _sorted_pairs(parts, depth.size)


def fisher_z(r: np.ndarray) -> np.ndarray:
    """atanh of r clipped to +-R_MAX; NaN (undefined r) becomes 0."""
    # one fresh array, then in place: at 10^5 units r has 28 M entries
    r = np.array(r, dtype=np.float64)
    np.nan_to_num(r, copy=False, nan=0.0)
    np.clip(r, -R_MAX, R_MAX, out=r)
    return np.arctanh(r, out=r)


# Rows whose norms _standardize finds at once.
NORM_ROWS = 4096


def _standardize(x: np.ndarray, dtype=np.float64, overwrite: bool = False) -> np.ndarray:
    """Rows to zero mean and unit norm, so a dot product is the Pearson r. Constant rows -> 0.

    With ``overwrite`` a fresh array of ``dtype`` is standardised in place (no copies of
    the gathered waveforms)."""
    # one fresh array, centred in place (the same values as x - mean): each whole-size
    # temporary of the units' ACGs is 141 MB at 30k units, first touched page by page
    x = np.asarray(x, dtype=dtype) if overwrite else np.array(x, dtype=dtype)
    x -= x.mean(axis=-1, keepdims=True)
    # row norms a block of rows at a time: each row's norm as one call over all rows gives it
    # (a row is summed on its own), without its squares held for every row at once
    norm = np.empty(x.shape[:-1] + (1,), dtype=x.dtype)
    for start in range(0, x.shape[0], NORM_ROWS):
        norm[start:start + NORM_ROWS] = np.linalg.norm(x[start:start + NORM_ROWS], axis=-1,
                                                       keepdims=True)
    np.divide(x, norm, out=x, where=norm > 0)
    x[~(norm > 0)[..., 0]] = 0.0
    return x


def feature_similarity(feature: np.ndarray, pairs: np.ndarray,
                       unit_order: np.ndarray | None = None, block: int = 128) -> np.ndarray:
    """Fisher z of the Pearson r between the two units' feature vectors: (N, L), (P, 2) -> (P,).

    Pairs are taken by blocks of ``block`` first units, consecutive in ``unit_order`` (e.g.
    units sorted by depth, so that a block's partners are few and shared): each block is one
    matrix product of its units against the union of their partners, instead of one gather
    of two L-vectors per pair.
    """
    f = _standardize(feature)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not pairs.size:
        return np.zeros(0)
    rank = np.arange(f.shape[0])
    if unit_order is not None:
        rank[np.asarray(unit_order)] = np.arange(f.shape[0])
    out = _products_by_group(rank[pairs[:, 0]] // block, pairs[:, 0], pairs[:, 1],
                             lambda _, units: f[units])
    return fisher_z(out)


def waveform_similarity(waveforms, channels: np.ndarray, pairs: np.ndarray,
                        templates: int = 1) -> np.ndarray:
    """Waveform similarity of each pair: (P,) Fisher z.

    waveforms: corrected waveforms as LocalWaveforms, a list of K of them (K reference probes),
    or full-probe arrays (N, C, T) / (K, N, C, T); channels: (N, n) nearest channels of each
    unit, or (K, N, n). For pair (i, j): Z_ij correlates both units over i's channels (all
    samples flattened), Z_ji over j's channels; S = max(Z_ij, Z_ji), and the max over
    reference probes.
    """
    probes, channels = _as_probes(waveforms, channels)
    best = np.full(pairs.shape[0], -np.inf)
    for wf, ch in zip(probes, channels):
        sets = np.unique(ch, axis=0, return_inverse=True)  # once for both directions
        r = np.maximum(_directed_corr(wf, sets, pairs[:, 0], pairs[:, 1]),
                       _directed_corr(wf, sets, pairs[:, 1], pairs[:, 0]))
        best = np.maximum(best, r)
    return fisher_z(best)


def directed_correlation(waveforms: LocalWaveforms, channels: np.ndarray, own: np.ndarray,
                         other: np.ndarray) -> np.ndarray:
    """Pearson r of units own[p] and other[p] (p,) over own's channels (channels: (N, n) each
    unit's compared channels), one direction of :func:`waveform_similarity`: (p,)."""
    return _directed_corr(waveforms, np.unique(channels, axis=0, return_inverse=True), own,
                          other)


def _as_probes(waveforms, channels) -> tuple[list, np.ndarray]:
    """Waveforms as a list of LocalWaveforms (one per reference probe), channels (K, N, n)."""
    channels = np.asarray(channels)
    if isinstance(waveforms, LocalWaveforms):
        return [waveforms], channels.reshape((-1,) + channels.shape[-2:])
    if isinstance(waveforms, (list, tuple)):
        return list(waveforms), channels.reshape((-1,) + channels.shape[-2:])
    arr = np.asarray(waveforms)
    if arr.ndim == 3:
        arr, channels = arr[None], channels[None]
    return [LocalWaveforms.from_full(a) for a in arr], channels


def _standardized_on(wf: LocalWaveforms, units: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Waveforms of ``units`` (n,) on ``channels`` ((c,) shared or (n, c) per unit),
    flattened, zero mean and unit norm: (n, c*T)."""
    return _standardize(wf.on(units, channels).reshape(units.size, -1), dtype=np.float32,
                        overwrite=True)


def _directed_corr(wf: LocalWaveforms, sets: tuple, own: np.ndarray, other: np.ndarray):
    """Pearson r of units own[p] and other[p] on own's channels; sets: the distinct channel
    sets (M, n) and the set of each unit (N,).

    Units with the same channel set (on a regular probe: the same peak channel) are handled
    together: their partners are read once and all correlations come from one matrix product,
    instead of one gather per unit.
    """
    if own.size == 0:
        return np.zeros(0)
    sets, set_of_unit = sets
    wf.window_index()  # found once here, not by several threads at once
    wf.slot_moments()  # the same
    return _products_by_group(set_of_unit.ravel()[own], own, other,
                              lambda keys, units: _standardized_on(wf, units, sets[keys]),
                              lambda keys, units: _scaled_on(wf, units, sets[keys]))


def _scaled_on(wf: LocalWaveforms, units: np.ndarray, channels: np.ndarray) -> tuple:
    """Waveforms of ``units`` (n,) on ``channels`` ((c,) shared or (n, c) per unit),
    flattened but not centred: (n, c*T), and the inverse of each row's centred norm (n,) (0
    for constant rows).

    The partners of a group need no centring: the owners' rows have zero mean, so their
    product with a partner's row is the same with or without the partner's mean; dividing
    by its centred norm gives Pearson's r. That saves writing every partner row twice. The
    norm comes from the units' per-channel moments (LocalWaveforms.slot_moments), not from
    the gathered rows: a unit is a partner in many groups."""
    slot = wf.slots(units, channels)
    x = wf.at_slots(units, slot).reshape(units.size, -1)
    sums, squares = wf.slot_moments()
    inside = slot >= 0
    at = (units[:, None], np.maximum(slot, 0))
    total = np.where(inside, sums[at], 0.0).sum(axis=1)
    square = np.where(inside, squares[at], 0.0).sum(axis=1)
    centred = np.maximum(square - total * total / max(x.shape[1], 1), 0.0)
    # a constant row leaves only rounding in ``centred``: r is 0 there, as _standardize has it
    scale = np.divide(1.0, np.sqrt(centred), out=np.zeros_like(centred),
                      where=centred > 1e-9 * np.maximum(square, 1e-300))
    return x, scale


# Rows (owners and partners) that _products_by_group reads at once for several groups: one
# call of ``rows`` for a batch of small groups instead of one per group, so that a thread
# works in a few long numpy calls (many short ones made two threads wait on each other for
# the GIL: no gain from the second core at 1,615 units).
BATCH_ROWS = 512


def _products_by_group(key: np.ndarray, own: np.ndarray, other: np.ndarray, rows,
                       partner_rows=None) -> np.ndarray:
    """Dot products of the rows of units own[p] and other[p]: (P,).

    Pairs sharing a ``key`` (P,) are taken together: their units are read once and every
    product comes from one matrix product, instead of one gather of two rows per pair.
    ``rows(keys, units) -> (n, L)`` reads units (n,) each under its group's key (n,), for
    several groups at once (BATCH_ROWS). ``partner_rows(keys, units) -> ((n, L), (n,))``, if
    given, reads the other units' rows with a factor each product is multiplied by.
    """
    out = np.zeros(own.size)
    order = stable_order(key)
    groups = np.split(order, np.flatnonzero(np.diff(key[order])) + 1)
    n_units = int(max(own.max(), other.max())) + 1

    def batch_products(batch):
        owners = np.concatenate([b[1] for b in batch])
        partners = np.concatenate([b[3] for b in batch])
        keys = np.array([key[b[0][0]] for b in batch])
        mine = rows(np.repeat(keys, [b[1].size for b in batch]), owners)
        partner_keys = np.repeat(keys, [b[3].size for b in batch])
        theirs, factor = (rows(partner_keys, partners), None) if partner_rows is None else \
            partner_rows(partner_keys, partners)
        o = p = 0
        for idx, group_owners, own_pos, group_partners, other_pos in batch:
            n_own, n_partners = group_owners.size, group_partners.size
            out[idx] = _tiled_products(mine[o:o + n_own], theirs[p:p + n_partners], own_pos,
                                       other_pos,
                                       None if factor is None else factor[p:p + n_partners])
            o, p = o + n_own, p + n_partners

    def products(chunk):
        seen = np.zeros(n_units, dtype=bool)
        place = np.empty(n_units, dtype=np.int64)
        batch, held = [], 0
        for idx in chunk:
            owners, own_pos = _distinct(own[idx], seen, place)
            partners, other_pos = _distinct(other[idx], seen, place)
            batch.append((idx, owners, own_pos, partners, other_pos))
            held += owners.size + partners.size
            if held >= BATCH_ROWS:
                batch_products(batch)
                batch, held = [], 0
        if batch:
            batch_products(batch)

    for_each_in_threads(products, groups, None if own.size >= MIN_PAIRS_THREADED else 1)
    return out


# Owners per tile of a group's products: each tile is multiplied only by the span of partner
# rows its pairs reach.
TILE_UNITS = 32


def _tiled_products(mine: np.ndarray, theirs: np.ndarray, own_pos: np.ndarray,
                    other_pos: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """Products of rows mine[own_pos[p]] and theirs[other_pos[p]] (times factor[other_pos[p]]
    if given): (n, L), (m, L), (p,), (p,) -> (p,).

    The owners are taken TILE_UNITS at a time, each tile against only the partner rows from
    the first to the last its pairs reach. Units are stored session by session, so with
    clustering.max_session_gap a tile's partners are the few sessions near its own, not all
    of them: with 200 sessions and a gap of 10 a whole-group product computed about ten
    products for each one used (the waveform correlations grew as N^2 with the sessions).
    """
    if mine.shape[0] <= TILE_UNITS:
        values = (mine @ theirs.T)[own_pos, other_pos]
        return values if factor is None else values * factor[other_pos]
    order = stable_order(own_pos)
    tile = own_pos[order] // TILE_UNITS
    bounds = np.flatnonzero(np.diff(tile)) + 1
    starts = np.concatenate([[0], bounds])
    low = np.minimum.reduceat(other_pos[order], starts)
    high = np.maximum.reduceat(other_pos[order], starts) + 1
    values = np.empty(own_pos.size)
    for part, lo, hi in zip(np.split(order, bounds), low, high):
        first = own_pos[part[0]] // TILE_UNITS * TILE_UNITS
        block = mine[first:first + TILE_UNITS] @ theirs[lo:hi].T
        values[part] = block[own_pos[part] - first, other_pos[part] - lo]
    return values if factor is None else values * factor[other_pos]


def stable_order(key: np.ndarray) -> np.ndarray:
    """np.argsort(key, kind="stable") of integer keys (n,), the same permutation, faster
    for keys in [0, 2**15): numpy sorts 16-bit integers stably by radix, in one pass,
    where int64 keys take a merge sort (7 M pairs' group numbers: 0.8 s -> 0.2 s)."""
    key = np.asarray(key)
    if key.size and key.dtype.kind in "iu" and 0 <= key.min() and key.max() < 2**15:
        key = key.astype(np.int16)
    return np.argsort(key, kind="stable")


def _distinct(units: np.ndarray, seen: np.ndarray, place: np.ndarray) -> tuple:
    """np.unique(units, return_inverse=True) by marking, without sorting: (u,) ascending and
    (n,) each unit's place in it. seen: all-False bool scratch (left all False), place: int
    scratch, both longer than the largest unit id."""
    seen[units] = True
    found = np.flatnonzero(seen)
    seen[found] = False
    place[found] = np.arange(found.size)
    return found, place[units]


LOCATION_SCALE_UM = 10.0


def location_similarity(positions: np.ndarray, pairs: np.ndarray,
                        scale_um: float = LOCATION_SCALE_UM) -> np.ndarray:
    """Closeness of the two units' motion-corrected positions as a Fisher z: (N, 3) um -> (P,).

    r = exp(-d / scale) with d the 3-D distance, so d = 0 gives the clip value (z 7.25),
    d = scale gives r = 0.37 (z 0.39) and units 50 um apart r < 0.01 (z ~ 0).
    """
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    return fisher_z(np.exp(-d / scale_um))


def weighted_similarity(similarities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """S = sum_f w_f S_f: per-feature similarities (P, F) and weights (F,) -> (P,)."""
    return np.asarray(similarities, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)
