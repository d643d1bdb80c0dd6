"""Compiled per-SKU price references: how far each sale's unit price is from its SKU's usual one.

A price glitch (an item rung up at a hundredth or a hundred times its price) hardly moves a
window's mean ticket when the key sells items from cents to hundreds: the sale is ordinary among
all the key's tickets, and unusual only for its SKU. Each key keeps, for the SKUs it sells most, a
reference log price; a sale's deviation is its log unit price minus its SKU's reference, once the
reference is trusted (``TRUST`` sales more at its price, within ``SAME``, than at others, and
sales at its price over at least ``HOLD_MS`` of event time: a glitch's prices, rounded to the
same cents, must not become a reference that the SKU's normal sales then contradict).

The table is a frequent-items sketch of ``BUCKETS`` x ``WAYS`` slots per key, indexed by the SKU
hash: a SKU not in its bucket takes the slot of the resident with less evidence once that
evidence has worn off (each miss wears one sale off the weaker resident), so the SKUs a key sells
most stay while rare ones come and go. A sale at another price wears one sale off its SKU's
evidence (and one more than a factor ``e ** ADOPT`` away is not learned), one at the reference's
price adds one, up to ``CAP``: a glitch that hits some of a SKU's sales between normal ones leaves a
well-known reference trusted, a lasting new price (a repricing) replaces it after about ``CAP``
sales, and a SKU sold at all sorts of prices (customer tiers, tickets at wrong prices) is seldom
trusted, and then for a sale or two, so it reads little.

Sales are taken one by one in arrival order, so the deviations do not depend on how the stream is
batched. (A sale that proves late, its windows closed, has taught its SKU's reference all the same:
its price was one the SKU sold at.)
"""

from __future__ import annotations

import math

import numpy as np

from streamdetect._jit import compiled

BUCKETS = 64
WAYS = 2
SLOTS = BUCKETS * WAYS
TRUST = 3.0  # consistent sales before a reference is trusted
CAP = 20.0  # the evidence a reference holds at most (its learning rate is 1 / evidence)
ADOPT = math.log(3.0)  # a price beyond this log ratio of the reference is not learned as the SKU's price
SAME = math.log(1.05)  # prices this close count as one
HOLD_MS = 3_600_000.0  # how long sales must have held a price before its reference is trusted


def beyond_plausible(dev: np.ndarray) -> np.ndarray:
    """The part of each log price ratio beyond ``ADOPT`` (a factor three): within it a sale's price
    is one its SKU may well have (a customer's tier, a discount, a repricing), beyond it one that
    it should not (a decimal slip, another item's price).

    >>> beyond_plausible(np.log(np.array([0.01, 0.5, 1.0, 2.0, 10.0]))).round(2).tolist()
    [-3.51, 0.0, 0.0, 0.0, 1.2]
    """
    out: np.ndarray = np.where(dev > ADOPT, dev - ADOPT, np.where(dev < -ADOPT, dev + ADOPT, 0.0))
    return out


@compiled
def price_deviations(key_ids, ts_ms, sku_hash, log_price, tag, ref, n, since):
    """Each sale's log price ratio to its SKU's trusted reference (0 where none), learning the
    references sale by sale: ``tag``, ``ref``, ``n`` (its evidence) and ``since`` (the event time
    its price was first seen; -inf once sales have held it for ``HOLD_MS``) are ``(keys, SLOTS)``
    arrays. A sale with ``sku_hash`` 0 (no SKU) or a non-finite ``log_price`` neither reads nor
    teaches.

    >>> tag, ref, n, since = np.zeros((1, SLOTS), dtype=np.int64), *np.zeros((3, 1, SLOTS))
    >>> keys, sku = np.zeros(6, dtype=np.int64), np.full(6, np.uint64(12345))
    >>> ts = np.arange(6) * 1_200_000  # a sale every 20 minutes
    >>> price = np.log(np.array([10.0, 10.0, 10.0, 10.0, 0.1, 10.0]))
    >>> [round(float(d), 2) for d in price_deviations(keys, ts, sku, price, tag, ref, n, since)]
    [0.0, 0.0, 0.0, 0.0, -4.61, 0.0]
    """
    out = np.zeros(len(key_ids))
    for i in range(len(key_ids)):
        h = sku_hash[i]
        lp = log_price[i]
        if h == 0 or not math.isfinite(lp):
            continue
        k = key_ids[i]
        first = int(h % np.uint64(BUCKETS)) * WAYS
        t = np.int64(h >> np.uint64(2)) + 1  # never 0, which marks an empty slot
        slot = -1
        weak = first
        for s in range(first, first + WAYS):
            if tag[k, s] == t:
                slot = s
            if n[k, s] < n[k, weak]:
                weak = s
        if slot < 0:
            # A miss wears the weaker resident's evidence; its slot is taken once none is left.
            if n[k, weak] > 1.0:
                n[k, weak] -= 1.0
                continue
            tag[k, weak] = t
            ref[k, weak] = lp
            n[k, weak] = 1.0
            since[k, weak] = ts_ms[i]
            continue
        dev = lp - ref[k, slot]
        if n[k, slot] >= TRUST and since[k, slot] == -math.inf:
            out[i] = dev
        if abs(dev) <= SAME:
            ref[k, slot] += dev / (n[k, slot] + 1.0)
            n[k, slot] = min(n[k, slot] + 1.0, CAP)
            if ts_ms[i] - since[k, slot] >= HOLD_MS:
                since[k, slot] = -math.inf
        elif n[k, slot] > 1.0:
            if abs(dev) <= ADOPT:
                ref[k, slot] += dev / (n[k, slot] + 1.0)
            n[k, slot] -= 1.0
        else:  # nothing was left of the reference: the new price is the SKU's now (halfway to
            # it when close), and its hour of holding starts again
            ref[k, slot] = ref[k, slot] + dev / 2.0 if abs(dev) <= ADOPT else lp
            since[k, slot] = ts_ms[i]
    return out
