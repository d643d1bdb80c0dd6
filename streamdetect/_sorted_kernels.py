"""A compiled update of a sorted window of scores.

SPOT keeps its recent scores sorted, and each learning batch overwrites a few hundred of the
oldest with as many new ones. With numpy that was a delete and an insert, each a copy of the whole
window, with their index arithmetic around them: a fortieth of the pipeline's time. One merging
pass does it.
"""

from __future__ import annotations

import numpy as np

from streamdetect._jit import compiled


@compiled
def replace_sorted(kept, gone, new):
    """``kept`` (sorted) with one occurrence of each of ``gone`` removed and ``new`` merged in
    (``gone`` and ``new`` sorted), and whether every value of ``gone`` was found in ``kept`` (if
    not, the merge is incomplete and the caller sorts afresh).

    >>> out, ok = replace_sorted(np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 5.0]), np.array([0.5, 2.0, 9.0]))
    >>> out.tolist(), ok
    ([0.5, 1.0, 2.0, 2.0, 9.0], True)
    >>> replace_sorted(np.array([1.0, 2.0]), np.array([3.0]), np.array([0.5]))[1]
    False
    """
    size = kept.shape[0] - gone.shape[0] + new.shape[0]
    out = np.empty(max(size, 0))
    g = 0
    j = 0
    o = 0
    for i in range(kept.shape[0]):
        v = kept[i]
        if g < gone.shape[0] and v == gone[g]:
            g += 1
            continue
        while j < new.shape[0] and new[j] < v:
            if o == size:
                return out, False
            out[o] = new[j]
            o += 1
            j += 1
        if o == size:  # a value of `gone` that `kept` does not hold: no room left
            return out, False
        out[o] = v
        o += 1
    while j < new.shape[0]:
        if o == size:
            return out, False
        out[o] = new[j]
        o += 1
        j += 1
    return out, g == gone.shape[0] and o == size
