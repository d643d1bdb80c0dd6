"""Compiled round closing of :class:`~streamdetect.windows.WindowAggregator`.

Closing a round gathers its windows' aggregates, adds a zero window for every idle key without
data and orders the rows by key: about twenty small numpy operations whatever the round's size,
the larger part of a round's cost once the detector's own work was compiled
(:mod:`streamdetect._round_kernel`). :func:`close_round` does it in one loop, and
:func:`close_rounds` for every round a batch of events closes, in one call.
"""

from __future__ import annotations

import math

import numpy as np

from streamdetect._jit import compiled

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_1, _2, _4, _56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


@compiled(nrt=False)
def popcount(x):
    """Set bits of a 64-bit word (numpy's ``bitwise_count``).

    >>> int(popcount(np.uint64(0b1011)))
    3
    """
    x = x - ((x >> _1) & _M1)
    x = (x & _M2) + ((x >> _2) & _M2)
    x = (x + (x >> _4)) & _M4
    return (x * _H01) >> _56


@compiled
def close_round(slots, start, end, idle_ms, values, bits, last_ms, key_of_slot, last_data_end):
    """The round of windows starting at ``start``: the open windows in ``slots`` and a zero window
    for each key that had data within ``idle_ms`` of ``end`` and has none in this round; keys that
    had data are marked as having had it until ``end``.

    Returns ``(key_id, values, distinct, last_event)``, rows ordered by key id: ``values`` (fields,
    rows) with the max ticket of a window without one 0, ``distinct`` the linear-counting estimate
    of distinct SKUs from each window's bitmap (``windows.estimate_distinct``).
    """
    n_keys = len(last_data_end)
    has_data = np.zeros(n_keys, dtype=np.bool_)
    for s in slots:
        has_data[key_of_slot[s]] = True
    n_data = len(slots)
    n_zero = 0
    for k in range(n_keys):
        if last_data_end[k] > 0 and end - last_data_end[k] <= idle_ms and not has_data[k]:
            n_zero += 1
    n = n_data + n_zero
    key_id = np.empty(n, dtype=np.int64)
    source = np.full(n, -1, dtype=np.int64)  # the row's slot, -1 for a zero window
    for i in range(n_data):
        key_id[i] = key_of_slot[slots[i]]
        source[i] = slots[i]
    i = n_data
    for k in range(n_keys):
        if last_data_end[k] > 0 and end - last_data_end[k] <= idle_ms and not has_data[k]:
            key_id[i] = k
            i += 1
    order = np.argsort(key_id)  # a key has one window per round: no ties
    n_fields = values.shape[0]
    sketch = 64.0 * bits.shape[1]
    out = np.zeros((n_fields, n))
    keys = np.empty(n, dtype=np.int64)
    distinct = np.zeros(n)
    last = np.empty(n, dtype=np.int64)
    for r in range(n):
        i = order[r]
        keys[r] = key_id[i]
        s = source[i]
        if s < 0:
            last[r] = start
            continue
        for f in range(n_fields):
            out[f, r] = values[f, s]
        if not math.isfinite(out[2, r]):  # the max ticket of a window of returns only
            out[2, r] = 0.0
        ones = 0
        for w in range(bits.shape[1]):
            ones += int(popcount(bits[s, w]))
        zeros = max(sketch - ones, 0.5)  # a saturated bitmap means "about 7,800 or more"
        distinct[r] = sketch * math.log(sketch / zeros)
        last[r] = last_ms[s]
    for s in slots:
        last_data_end[key_of_slot[s]] = end
    return keys, out, distinct, last


@compiled(nrt=False)
def _evict(last_data_end, e, r, evict_before, evict_offsets, evict_keys):
    """Apply the evictions from the ``e``-th on that come before round ``r``; the next one's index."""
    while e < len(evict_before) and evict_before[e] <= r:
        for j in range(evict_offsets[e], evict_offsets[e + 1]):
            last_data_end[evict_keys[j]] = 0
        e += 1
    return e


@compiled
def close_rounds(
    starts, size_ms, slot_offsets, slots, idle_ms, values, bits, last_ms, key_of_slot, last_data_end,
    evict_before, evict_offsets, evict_keys,
):  # fmt: skip
    """:func:`close_round` for consecutive rounds (round ``r`` starts at ``starts[r]`` with the open
    windows ``slots[slot_offsets[r]:slot_offsets[r + 1]]``), in one call. The keys evicted before
    round ``r`` (``evict_keys[evict_offsets[e]:evict_offsets[e + 1]]`` for the ``e`` with
    ``evict_before[e] == r``; ``r`` may be the number of rounds) leave ``last_data_end`` there, as
    they did between the rounds. ``last_data_end`` is written as close_round writes it.

    Returns ``(offsets, key_id, values, distinct, last_event)``: round ``r`` is rows
    ``offsets[r]:offsets[r + 1]`` of the others, as close_round returns them.
    """
    n_rounds = len(starts)
    closed = []  # each round's close_round results, then copied into one set of rows
    offsets = np.zeros(n_rounds + 1, dtype=np.int64)
    e = 0
    for r in range(n_rounds):
        e = _evict(last_data_end, e, r, evict_before, evict_offsets, evict_keys)
        lo, hi = slot_offsets[r], slot_offsets[r + 1]
        closed.append(close_round(
            slots[lo:hi], starts[r], starts[r] + size_ms, idle_ms, values, bits, last_ms, key_of_slot, last_data_end
        ))  # fmt: skip
        offsets[r + 1] = offsets[r] + len(closed[r][0])
    _evict(last_data_end, e, n_rounds, evict_before, evict_offsets, evict_keys)
    total = offsets[n_rounds]
    out = np.empty((values.shape[0], total))
    keys = np.empty(total, dtype=np.int64)
    distinct = np.empty(total)
    last = np.empty(total, dtype=np.int64)
    for r in range(n_rounds):
        round_keys, round_values, round_distinct, round_last = closed[r]
        lo, hi = offsets[r], offsets[r + 1]
        keys[lo:hi] = round_keys
        out[:, lo:hi] = round_values
        distinct[lo:hi] = round_distinct
        last[lo:hi] = round_last
    return offsets, keys, out, distinct, last


@compiled(nrt=False)
def accumulate(slot_of, per_event, word, bit, ts, summed, maxed, values, bits, last_ms):
    """Add a batch's events into their open windows: event ``i`` into slot ``slot_of[i]``, its
    ``per_event[i, f]`` summed for the fields ``summed`` and maximised for ``maxed``, its SKU bit
    set, its time kept if the latest.

    One pass over the events instead of a per-window reduction (a ``bincount`` per field, a
    ufunc ``at`` per maximum) and a fancy-indexed update per field. The per-event values are
    fixed point (see ``WindowAggregator.add``), so the sums are exact in any order: the same
    windows as the reduction's, bit for bit.

    >>> values, bits, last = np.zeros((2, 1)), np.zeros((1, 1), dtype=np.uint64), np.zeros(1, dtype=np.int64)
    >>> slot_of, word, bit = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64), np.array([1, 4], dtype=np.uint64)
    >>> per_event, ts = np.array([[1.0, 5.0], [2.0, 3.0]]), np.array([7, 9])
    >>> accumulate(slot_of, per_event, word, bit, ts, np.array([0]), np.array([1]), values, bits, last)
    >>> values.ravel().tolist(), int(bits[0, 0]), int(last[0])
    ([3.0, 5.0], 5, 9)
    """
    for i in range(slot_of.shape[0]):
        s = slot_of[i]
        for f in summed:
            values[f, s] += per_event[i, f]
        for f in maxed:
            x = per_event[i, f]
            if x > values[f, s] or x != x:  # np.maximum's: a NaN wins
                values[f, s] = x
        bits[s, word[i]] |= bit[i]
        if ts[i] > last_ms[s]:
            last_ms[s] = ts[i]
